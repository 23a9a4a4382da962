//! What a swarm download tells its caller: who did what, and why it failed.

use std::collections::BTreeMap;
use std::time::Duration;

use anonmirror_core::{ItemKey, Sensitive};

use super::config::PeerAddr;
use anonmirror_store::verify::{Tree, Verified};

/// What a peer did wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blame {
    /// Bytes at this offset failed their chunk-group check.
    BadData {
        /// Offset of the failing chunk group.
        offset: u64,
    },
    /// Its outboard does not fit the size or the root, or describes other
    /// content than the index's (the whole item's SHA-256 failed).
    BadOutboard,
    /// It claimed another size than the index's.
    WrongSize {
        /// The size it claimed.
        claimed: u64,
    },
    /// It broke the protocol.
    Protocol(String),
}

/// How a peer's part in a download ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It served what it was asked until the item was complete.
    Served,
    /// It was never needed (the item completed first).
    Unused,
    /// It answered `Busy`.
    Busy,
    /// It does not hold the item.
    NotFound,
    /// It went silent: no answer to the handshake within its allowance,
    /// or nothing for the stall timeout; its pieces went to others.
    Stalled,
    /// It was still fetching, with nothing delivered, when faster peers
    /// completed the item.
    Slow,
    /// It could not be reached, refused the handshake, or closed.
    Unavailable(String),
    /// It answered an error.
    Refused(String),
    /// It misbehaved: dropped, and to be reported.
    Blamed(Blame),
}

/// Per-peer statistics of a download.
#[derive(Clone, Debug)]
pub struct PeerReport {
    /// The peer.
    pub peer: PeerAddr,
    /// Verified bytes it contributed (used or duplicated).
    pub bytes: u64,
    /// Time from its first request to its end.
    pub elapsed: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl PeerReport {
    /// Verified bytes per second.
    pub fn speed(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        }
    }
}

/// What a download did.
#[derive(Clone, Debug)]
pub struct SwarmReport {
    /// One entry per peer given, in the order given.
    pub peers: Vec<PeerReport>,
    /// The tree finally used (root and outboard verified against the
    /// index's SHA-256 when the download succeeded).
    pub tree: Option<Tree>,
    /// Times the download restarted because a tree turned out wrong.
    pub restarts: u32,
    /// On success: what the sink received was the item, every byte
    /// checked (see [`Verified`]).
    pub verified: Option<Verified>,
}

impl SwarmReport {
    /// Peers to report to the rendezvous: those blamed.
    pub fn culprits(&self) -> impl Iterator<Item = (&PeerAddr, &Blame)> {
        self.peers.iter().filter_map(|p| match &p.outcome {
            Outcome::Blamed(b) => Some((&p.peer, b)),
            _ => None,
        })
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    /// No peer could give a usable tree, or the peers ran out before the
    /// item was complete.
    #[error("item {item}: no peer could serve it ({})", summary(.report))]
    Exhausted {
        /// The item.
        item: Sensitive<ItemKey>,
        /// What each peer did.
        report: SwarmReport,
    },
    /// The sink failed (disk full, client gone) or could not restart.
    #[error("item {item}: the consumer failed: {source}")]
    Sink {
        /// The item.
        item: Sensitive<ItemKey>,
        /// The sink's error.
        #[source]
        source: std::io::Error,
        /// What each peer did.
        report: SwarmReport,
    },
}

impl SwarmError {
    /// What each peer did.
    pub fn report(&self) -> &SwarmReport {
        match self {
            SwarmError::Exhausted { report, .. } | SwarmError::Sink { report, .. } => report,
        }
    }
}

impl anonmirror_core::HasKind for SwarmError {
    fn kind(&self) -> anonmirror_core::ErrorKind {
        match self {
            SwarmError::Exhausted { .. } => anonmirror_core::ErrorKind::PeerUnavailable,
            SwarmError::Sink { .. } => anonmirror_core::ErrorKind::LocalIo,
        }
    }
}

pub(crate) fn summary(report: &SwarmReport) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in &report.peers {
        let k = match p.outcome {
            Outcome::Served => "served",
            Outcome::Unused => "unused",
            Outcome::Busy => "busy",
            Outcome::NotFound => "not found",
            Outcome::Stalled => "stalled",
            Outcome::Slow => "slow",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::Refused(_) => "refused",
            Outcome::Blamed(_) => "blamed",
        };
        *counts.entry(k).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
