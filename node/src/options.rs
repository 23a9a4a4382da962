//! What the caller (the command line, a test) adds to the policy when it
//! starts a node: the proof-of-work, the hedge, and the clock and
//! randomness the node runs on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_core::{Clock, Entropy, OsEntropy, SystemClock};

/// What the command line adds to the policy.
#[derive(Clone)]
pub struct NodeOptions {
    /// Leading zero bits of the registration proof-of-work (at least the
    /// rendezvous's).
    pub pow_difficulty: u8,
    /// A fixed hedge deadline instead of the one derived from the
    /// upstream's speed.
    pub hedge_after: Option<Duration>,
    /// Peers asked for per lookup.
    pub lookup_want: u8,
    /// The wall clock: epochs, credential expiry, the store's last use,
    /// the metrics' history. A test moves a manual one by hand.
    pub clock: Arc<dyn Clock>,
    /// Randomness for the proof-of-work, the permanent memo, the
    /// popularity report and the reconnection backoff. A test may replay
    /// a seed; keys (Noise) always come from the operating system.
    pub entropy: SharedEntropy,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            pow_difficulty: 20,
            hedge_after: None,
            lookup_want: 4,
            clock: Arc::new(SystemClock),
            entropy: SharedEntropy::new(OsEntropy),
        }
    }
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("pow_difficulty", &self.pow_difficulty)
            .field("hedge_after", &self.hedge_after)
            .field("lookup_want", &self.lookup_want)
            .finish_non_exhaustive()
    }
}

/// One source of randomness shared by every task of a node (clones draw
/// from the same stream), so a node can be handed one [`Entropy`] and
/// still give each consumer an owned one.
#[derive(Clone)]
pub struct SharedEntropy(Arc<Mutex<dyn Entropy>>);

impl SharedEntropy {
    /// Share `entropy`.
    pub fn new(entropy: impl Entropy + 'static) -> Self {
        SharedEntropy(Arc::new(Mutex::new(entropy)))
    }
}

impl Entropy for SharedEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        // A panic while drawing leaves the stream as good as before.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).fill(dest);
    }
}

impl std::fmt::Debug for SharedEntropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedEntropy")
    }
}
