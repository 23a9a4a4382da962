//! Channels kept open between items: a download's channel to a peer, once
//! it has no request outstanding, waits here for the next item from that
//! peer, so that item costs no TCP connect, no Noise handshake and no new
//! slow start, only its request's round trip.
//!
//! Like an HTTP client's keep-alive pool: one channel carries one item at
//! a time (concurrent items to one peer open more channels), idle channels
//! are reused newest first, at most [`ChannelPool::MAX_IDLE_PER_PEER`] wait
//! per peer, and none waits longer than [`ChannelPool::IDLE`] (well under
//! a peer server's idle timeout, after which it closes channels it serves:
//! a channel past it would fail its next request).
//!
//! Reuse links items only as a new connection to the same peer would: the
//! peer sees the same address and, over Tor, the same circuit, either way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_channel::ChannelParams;
use anonmirror_core::PeerKey;
use tokio::time::Instant;

use super::sched::PeerChannel;

/// The channels waiting for one peer session (with one set of channel
/// parameters), oldest first, each with when it started waiting.
type Waiting = Vec<(PeerChannel, Instant)>;

/// Idle channels by peer session and channel parameters; clones share
/// them.
#[derive(Clone, Default)]
pub struct ChannelPool {
    idle: Arc<Mutex<HashMap<(PeerKey, ChannelParams), Waiting>>>,
}

impl std::fmt::Debug for ChannelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ChannelPool {
    /// Idle channels kept per peer.
    pub const MAX_IDLE_PER_PEER: usize = 4;
    /// How long a channel may wait unused.
    pub const IDLE: Duration = Duration::from_secs(20);

    /// An idle channel to `peer` with `params`, newest first, if one is
    /// there and not past [`ChannelPool::IDLE`].
    pub(crate) fn take(&self, peer: &PeerKey, params: &ChannelParams) -> Option<PeerChannel> {
        let mut idle = self.idle.lock().ok()?;
        let key = (*peer, *params);
        let waiting = idle.get_mut(&key)?;
        let now = Instant::now();
        let mut found = None;
        while let Some((channel, since)) = waiting.pop() {
            if now.duration_since(since) < Self::IDLE {
                found = Some(channel);
                break;
            }
        }
        if waiting.is_empty() {
            idle.remove(&key);
        }
        found
    }

    /// Keeps `channel` (no request outstanding on it) for the next item
    /// from `peer`; the oldest waiting channel to that peer is closed if
    /// there are too many.
    pub(crate) fn put(&self, peer: &PeerKey, params: &ChannelParams, channel: PeerChannel) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        // Expired channels of every peer go now: the pool holds only live
        // ones (each is a socket and a peer's client slot).
        idle.retain(|_, waiting| {
            waiting.retain(|(_, since)| now.duration_since(*since) < Self::IDLE);
            !waiting.is_empty()
        });
        let waiting = idle.entry((*peer, *params)).or_default();
        waiting.push((channel, now));
        if waiting.len() > Self::MAX_IDLE_PER_PEER {
            waiting.remove(0);
        }
    }

    /// Idle channels now (all peers).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map_or(0, |idle| idle.values().map(Vec::len).sum())
    }
}
