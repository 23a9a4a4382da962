//! The pieces of one attempt and who is fetching which, shared by its workers.

use std::sync::Mutex;

use anonmirror_core::ItemKey;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{Pieces, SwarmConfig};
use anonmirror_channel::noise::Channel;
use anonmirror_channel::transport::BoxStream;
use anonmirror_store::verify::{GROUP_SIZE, Tree};

/// Piece states, shared by the workers of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Pending,
    InFlight { holders: Vec<usize>, since: Instant },
    Done,
}

pub(crate) struct Sched {
    pub(crate) pieces: Vec<Piece>,
    /// The first piece not yet handed to the sink.
    pub(crate) next_deliver: usize,
    pub(crate) window: usize,
    /// Set when the attempt is over (complete or abandoned).
    pub(crate) finished: bool,
}

impl Sched {
    /// The next piece for `peer`: the first pending piece in the window,
    /// else the oldest piece in flight with a single other holder.
    pub(crate) fn claim(&mut self, peer: usize, now: Instant) -> Option<usize> {
        let end = self.pieces.len().min(self.next_deliver + self.window);
        for i in self.next_deliver..end {
            if self.pieces[i] == Piece::Pending {
                self.pieces[i] = Piece::InFlight {
                    holders: vec![peer],
                    since: now,
                };
                return Some(i);
            }
        }
        let steal = (self.next_deliver..end)
            .filter_map(|i| match &self.pieces[i] {
                Piece::InFlight { holders, since } if holders.len() == 1 && holders[0] != peer => {
                    Some((*since, i))
                }
                _ => None,
            })
            .min()
            .map(|(_, i)| i)?;
        if let Piece::InFlight { holders, .. } = &mut self.pieces[steal] {
            holders.push(peer);
        }
        Some(steal)
    }

    /// `peer` will not deliver `piece`.
    pub(crate) fn release(&mut self, piece: usize, peer: usize) {
        if let Piece::InFlight { holders, .. } = &mut self.pieces[piece] {
            holders.retain(|h| *h != peer);
            if holders.is_empty() {
                self.pieces[piece] = Piece::Pending;
            }
        }
    }

    /// Mark `piece` done; false if someone else finished it first.
    pub(crate) fn complete(&mut self, piece: usize) -> bool {
        if self.pieces[piece] == Piece::Done {
            return false;
        }
        self.pieces[piece] = Piece::Done;
        true
    }
}

pub(crate) struct Shared {
    pub(crate) item: ItemKey,
    pub(crate) tree: Tree,
    pub(crate) piece_size: u64,
    pub(crate) pieces: Pieces,
    pub(crate) progress: super::config::Progress,
    pub(crate) sched: Mutex<Sched>,
    /// Wakes idle workers when pieces return to the pool or the window moves.
    pub(crate) changed: Notify,
    /// Cancelled when the attempt is over: workers stop waiting on peers.
    pub(crate) stop: CancellationToken,
}

impl Shared {
    pub(crate) fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn piece_range(&self, piece: usize) -> (u64, u64) {
        let start = piece as u64 * self.piece_size;
        (start, (start + self.piece_size).min(self.tree.size()))
    }
}

/// A verified piece, on its way to the coordinator.
pub(crate) struct Done {
    pub(crate) piece: usize,
    pub(crate) bytes: Vec<u8>,
}

pub(crate) type PeerChannel = Channel<BoxStream>;

/// Bytes per piece under `config` (a whole number of chunk groups).
pub(crate) fn piece_size(config: &SwarmConfig) -> u64 {
    config.piece_size.div_ceil(GROUP_SIZE).max(1) * GROUP_SIZE
}
