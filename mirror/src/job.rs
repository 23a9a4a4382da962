//! Getting an item for the package manager: from the store, else from
//! peers, else from the upstream mirror, with a hedge between the last
//! two.
//!
//! One download runs per item however many requests want it (a *job*); it
//! runs on its own task, so a package manager that hangs up does not waste
//! what was fetched. Bytes land in a work file under the cache directory,
//! written on a blocking thread of the job's own, and every request
//! streams as far as its *feed* has published: the latest bytes from
//! memory (a reader that keeps up never reads the work file back), older
//! ones from the file:
//!
//! - **Peers** ([`anonmirror_overlay::swarm`]): only chunk-verified bytes
//!   are published, in order; the swarm withholds the last piece until the
//!   whole item's SHA-256 equals the index's.
//! - **Upstream, as the only source** (no peers, or peers failed before
//!   delivering anything): bytes are published as they arrive, as a plain
//!   mirror would pass them (the package manager checks them against its
//!   index as always); they are stored only if the SHA-256 of the whole
//!   file matches.
//! - **Upstream, as a hedge**: when peers have not delivered by the hedge
//!   deadline, the upstream starts in parallel into a second work file and
//!   publishes nothing until the whole file matched the SHA-256. The first
//!   complete verified copy wins; the other download is dropped.
//!
//! A request that has streamed bytes from one feed continues on the next
//! only if the bytes it sent are the same there (checked byte for byte when
//! a hedge wins; a swarm restart after a lying outboard is a new *lineage*):
//! otherwise the response is cut short, which every package manager treats
//! as a failed transfer to retry, never as a good file.
//!
//! # The hedge deadline
//!
//! From the upstream estimate (time to first byte `t₀`, rate `r`) and the
//! item size `s`: the upstream would take `u = t₀ + s/r`. Peers are given
//! `max(HEDGE_FLOOR, u + 2·t₀)` to verify their first bytes (the two round
//! trips a new channel costs before its request: connect and handshake,
//! `t₀` standing for a round trip), and afterwards the upstream starts
//! whenever the peers' own pace of verified bytes predicts a finish later
//! than `now + u`. Progress counts bytes received and checked against the
//! tree, not bytes delivered: a one-piece item delivers nothing until it is
//! whole. While only the upstream's latency is known (index files are
//! small), peers get `max(HEDGE_FLOOR, 6·t₀)`; before any answer from the
//! upstream at all, [`HEDGE_UNKNOWN`]. Peers that do not even answer the
//! handshake within a few round trips of their own connection
//! ([`handshake_allowance`](anonmirror_overlay::swarm::handshake_allowance))
//! are left sooner: with none left, the upstream starts at once. Peers that
//! lose the race without a verified byte are set aside with a backoff
//! ([`crate::peers::SetAside`]).
//!
//! Completed items are linked into the store and the work files removed.
//! Every byte was hashed once on its way: the swarm checks chunk groups
//! and the whole SHA-256; an upstream download's writer hashes SHA-256
//! and the tree as it writes
//! ([`ItemHasher`](anonmirror_store::verify::ItemHasher)). Either way
//! the store gets a [`Verified`](anonmirror_store::Verified)
//! proof and does not read the file again.
//!
//! # Files
//!
//! Each file adds one layer and uses only those below it:
//! `feed` (what a job publishes, and the requests streaming it), `writer`
//! (the work file's thread), `sources` (what every download shares),
//! `import` (into the store), `upstream` (the upstream as the only source
//! or as the hedge), `peers` (the swarm raced against the hedge, where
//! every job starts), and this file: the [`Fetcher`], one job per item.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_core::{ItemKey, Sensitive};
use anonmirror_store::Store;

use crate::metrics::Metrics;
use crate::peers::PeerSource;
use crate::upstream::Upstream;

mod feed;
mod import;
mod peers;
mod sources;
mod upstream;
mod writer;

#[cfg(test)]
mod tests;

pub use feed::Job;
pub use peers::{HEDGE_FLOOR, HEDGE_UNKNOWN};
pub use sources::{FetchConfig, Want};

use sources::Sources;

/// Runs jobs.
pub struct Fetcher {
    /// What every job's download uses.
    sources: Arc<Sources>,
    /// The job of each item being fetched, so that requests for it share
    /// one download.
    jobs: Mutex<HashMap<ItemKey, Arc<Job>>>,
    /// Every job's task, for [`Fetcher::drain`].
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher over `store`.
    pub fn new(
        store: Store,
        upstream: Arc<Upstream>,
        peers: Option<Arc<dyn PeerSource>>,
        metrics: Arc<Metrics>,
        config: FetchConfig,
    ) -> std::io::Result<Fetcher> {
        std::fs::create_dir_all(&config.work_dir)?;
        // Work files of a previous run are never complete items.
        if let Ok(rd) = std::fs::read_dir(&config.work_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("job-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Fetcher {
            sources: Arc::new(Sources {
                store,
                upstream,
                peers,
                metrics,
                config,
            }),
            jobs: Mutex::new(HashMap::new()),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Wait, at most `limit`, for the jobs under way to end: a package
    /// manager's last package is often still being linked into the store
    /// when the daemon is told to stop. Returns whether they all ended.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tasks.close();
        let ended = tokio::time::timeout(limit, self.tasks.wait()).await.is_ok();
        self.tasks.reopen();
        ended
    }

    /// The package manager is at work: peer sources may open channels to
    /// likely peers ahead of its requests ([`PeerSource::warm_up`]).
    pub fn warm_up(&self) {
        if let Some(p) = &self.sources.peers {
            p.warm_up();
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.sources.store
    }

    /// The job fetching `want`, started if none runs.
    pub fn job(self: &Arc<Self>, want: Want) -> Arc<Job> {
        self.job_if(want, false)
            .unwrap_or_else(|| unreachable!("a job is always started"))
    }

    /// The job fetching `want`, started if none runs, unless the store
    /// holds the item: then `None`. Asked under the lock that jobs are
    /// started and ended under (a job imports its item before it ends),
    /// so an item is never fetched twice because its first job ended
    /// between a caller's look at the store and its call here.
    pub fn job_unless_held(self: &Arc<Self>, want: Want) -> Option<Arc<Job>> {
        self.job_if(want, true)
    }

    fn job_if(self: &Arc<Self>, want: Want, unless_held: bool) -> Option<Arc<Job>> {
        let mut jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(p) => p.into_inner(),
        };
        if let Some(j) = jobs.get(&want.key) {
            return Some(j.clone());
        }
        // One metadata read (redb, from the page cache).
        if unless_held
            && matches!(self.sources.store.meta(&want.key), Ok(Some(m)) if m.size == want.size)
        {
            return None;
        }
        let job = Arc::new(Job::new(want.key, want.size));
        jobs.insert(want.key, job.clone());
        let me = self.clone();
        let j = job.clone();
        self.tasks.spawn(async move {
            let result = me.sources.drive(&j, &want).await;
            if let Err(e) = &result {
                tracing::info!(item = %Sensitive::new(want.key), error = %e, "fetch failed");
            }
            j.publish(|s| s.done = Some(result));
            if let Ok(mut jobs) = me.jobs.lock() {
                jobs.remove(&want.key);
            }
        });
        Some(job)
    }
}
