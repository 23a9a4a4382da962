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
    /// How long a piece is another peer's alone before an idle peer may
    /// fetch it too.
    pub(crate) steal_after: std::time::Duration,
    /// Set when the attempt is over (complete or abandoned).
    pub(crate) finished: bool,
}

impl Sched {
    /// The next piece for `peer`: the first pending piece in the window,
    /// else the oldest piece in flight with a single other holder for at
    /// least `steal_after` (sooner, the holder is on time and a second copy
    /// only halves the bandwidth both get).
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
                Piece::InFlight { holders, since }
                    if holders.len() == 1
                        && holders[0] != peer
                        && now.saturating_duration_since(*since) >= self.steal_after =>
                {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sched(pieces: usize) -> Sched {
        Sched {
            pieces: vec![Piece::Pending; pieces],
            next_deliver: 0,
            window: 64,
            steal_after: Duration::from_secs(1),
            finished: false,
        }
    }

    #[test]
    fn pieces_go_in_order_and_are_fetched_twice_only_when_late() {
        let t0 = Instant::now();
        let mut s = sched(2);
        assert_eq!(s.claim(0, t0), Some(0));
        assert_eq!(s.claim(1, t0), Some(1));
        // Both on their way and on time: a third peer waits.
        assert_eq!(s.claim(2, t0 + Duration::from_millis(999)), None);
        // Late: the oldest is fetched a second time, and never a third.
        assert_eq!(s.claim(2, t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(s.claim(3, t0 + Duration::from_secs(5)), Some(1));
        assert_eq!(s.claim(4, t0 + Duration::from_secs(5)), None);
        // A peer never competes with itself.
        let mut s = sched(1);
        assert_eq!(s.claim(0, t0), Some(0));
        assert_eq!(s.claim(0, t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn a_released_piece_is_pending_again_for_anyone() {
        let t0 = Instant::now();
        let mut s = sched(1);
        assert_eq!(s.claim(0, t0), Some(0));
        s.release(0, 0);
        assert_eq!(s.claim(1, t0), Some(0));
        assert!(s.complete(0));
        assert!(!s.complete(0), "a second copy is not news");
    }
}
