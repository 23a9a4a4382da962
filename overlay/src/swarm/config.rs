//! What a swarm download needs to know: the peers and the knobs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_core::PeerKey;

use anonmirror_channel::noise::ChannelParams;
use anonmirror_core::Contact;

/// A peer to download from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// Where it listens.
    pub contact: Contact,
    /// Its Noise static key for this session.
    pub key: PeerKey,
}

/// How a download behaves.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Prologue parameters of every channel.
    pub params: ChannelParams,
    /// Bytes per piece; rounded up to a multiple of the chunk group.
    pub piece_size: u64,
    /// Pieces that may be claimed past the first undelivered one.
    pub window: usize,
    /// How long a piece is one peer's alone before an idle peer fetches it
    /// too.
    pub steal_after: Duration,
    /// Time allowed for a connection, and at most for its handshake (which
    /// gets less after a fast connection: see [`handshake_allowance`](super::handshake_allowance)).
    pub connect_timeout: Duration,
    /// Silence after which a peer counts as stalled.
    pub stall_timeout: Duration,
    /// Where piece buffers come from (and may be handed back to).
    pub pieces: Pieces,
    /// Counts the bytes verified so far, shared by clones: give each
    /// download a fresh one to watch its progress.
    pub progress: Progress,
    /// The channels shared between items (see [`ChannelPool`](super::ChannelPool)); `None`
    /// closes each channel with its item.
    pub pool: Option<super::ChannelPool>,
}

/// Bytes received and verified against the tree (chunk group by chunk
/// group) by a download's workers, before they are delivered in order: the
/// sign that peers are transferring, long before a whole piece is.
/// Pieces fetched twice (work stealing, a restart) count twice; while a
/// request waits on a shared channel behind other answers, the bytes the
/// channel moves for them count too (see [`ChannelPool`](super::ChannelPool)).
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<std::sync::atomic::AtomicU64>);

impl Progress {
    /// Bytes verified so far.
    pub fn verified(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.0
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Piece buffers kept for reuse, shared by clones.
///
/// A download takes its buffers here and passes each to its [`Sink`](super::Sink); a
/// sink that is done with one hands it back with [`Pieces::give_back`].
/// At most [`Pieces::KEEP`] are kept; a buffer is only reused for a piece
/// at least half its capacity, so small items never sit in large buffers.
#[derive(Clone, Debug, Default)]
pub struct Pieces(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pieces {
    /// Buffers kept at most (with 1 MiB pieces, 16 MiB).
    pub const KEEP: usize = 16;

    /// An empty buffer with room for `capacity` bytes.
    pub(crate) fn take(&self, capacity: usize) -> Vec<u8> {
        if let Ok(mut kept) = self.0.lock()
            && let Some(i) = kept
                .iter()
                .position(|b| b.capacity() >= capacity && b.capacity() / 2 <= capacity)
        {
            let mut buf = kept.swap_remove(i);
            buf.clear();
            return buf;
        }
        Vec::with_capacity(capacity)
    }

    /// Keep `buf` for a later piece (dropped if enough are kept).
    pub fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut kept) = self.0.lock()
            && kept.len() < Self::KEEP
        {
            kept.push(buf);
        }
    }

    /// Buffers kept now.
    pub fn kept(&self) -> usize {
        self.0.lock().map_or(0, |k| k.len())
    }
}

impl SwarmConfig {
    /// Defaults for `params`: 1 MiB pieces, a 64-piece window, a piece
    /// fetched twice after 1 s, 10 s to connect, 10 s of silence before a
    /// peer counts as stalled.
    pub fn new(params: ChannelParams) -> SwarmConfig {
        SwarmConfig {
            params,
            piece_size: 1 << 20,
            window: 64,
            steal_after: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            pieces: Pieces::default(),
            progress: Progress::default(),
            pool: None,
        }
    }
}
