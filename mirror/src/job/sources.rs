//! What every download of a fetcher shares: the places an item comes
//! from (the store, the peers, the upstream mirror) and how to use them.
//!
//! The three ways of getting an item add their methods to [`Sources`] in
//! files of their own: [`crate::job::peers`] (the swarm, raced against the
//! upstream hedge; where every job starts), [`crate::job::upstream`] and
//! [`crate::job::import`] (into the store).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_channel::transport::Transport;
use anonmirror_core::ItemKey;
use anonmirror_overlay::swarm::SwarmConfig;
use anonmirror_store::Store;

use crate::metrics::Metrics;
use crate::peers::PeerSource;
use crate::upstream::Upstream;

/// How downloads are made.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Where work files go: on the store's file system, so completed items
    /// are linked, not copied.
    pub work_dir: PathBuf,
    /// The swarm's settings (their channel parameters are replaced per
    /// peer set).
    pub swarm: SwarmConfig,
    /// Overrides the hedge deadline derived from the upstream estimate.
    pub hedge_after: Option<Duration>,
    /// What opens connections to peers (TCP, or Tor).
    pub dialer: Arc<dyn Transport>,
}

/// One item to fetch.
#[derive(Clone, Debug)]
pub struct Want {
    /// Its key.
    pub key: ItemKey,
    /// Its size.
    pub size: u64,
    /// Its repository's name (for the lookup).
    pub repository: String,
    /// The repository's snapshot version.
    pub version: u64,
    /// Its upstream URL.
    pub url: String,
}

/// The fetcher's sources, shared by its jobs' tasks.
pub(super) struct Sources {
    /// Where completed items are linked, and looked up first.
    pub(super) store: Store,
    /// The official mirror: the fallback, and the hedge.
    pub(super) upstream: Arc<Upstream>,
    /// Who finds peers for an item; none when the node uses no peers.
    pub(super) peers: Option<Arc<dyn PeerSource>>,
    /// Counts of bytes, items, hedges and blame.
    pub(super) metrics: Arc<Metrics>,
    /// How downloads are made.
    pub(super) config: FetchConfig,
}
