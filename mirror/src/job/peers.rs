//! The peers' side of a job: a swarm download from the candidates the
//! rendezvous found, raced against the upstream hedge.
//!
//! Every job starts here ([`Sources::drive`]): with no candidates it goes
//! to the upstream at once. The swarm publishes only chunk-verified bytes
//! through a [`FeedSink`]; when the peers are late (see the module docs
//! of [`crate::job`]) the upstream starts beside them as a hedge, and the
//! first complete verified copy wins. Peers' outcomes are reported to the
//! peer source: blame to the rendezvous, failures set aside.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anonmirror_overlay::swarm::{self, Outcome, Pieces, Sink};
use anonmirror_store::Origin;
use anonmirror_store::Verified;
use bytes::Bytes;
use tokio::time::Instant;

use crate::err::FetchError;
use crate::job::feed::{Feed, Job, Recent};
use crate::job::sources::{Sources, Want};
use crate::job::writer::{WorkWriter, Write};
use crate::metrics::Source;
use crate::peers::{Candidate, blamed_range};

/// The least time peers get before the upstream is hedged in.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(200);
/// The hedge deadline before the upstream's speed is known.
pub const HEDGE_UNKNOWN: Duration = Duration::from_secs(2);
/// How often a running swarm's progress is compared with the upstream's.
const HEDGE_TICK: Duration = Duration::from_millis(50);

/// Which side of the race finished first.
enum Raced {
    /// The swarm ended, delivered or not.
    Swarm(Result<swarm::SwarmReport, swarm::SwarmError>),
    /// The upstream's verified copy, at its work file.
    Hedge(PathBuf, Verified),
}

/// A piece's buffer, lent to the readers and the work file's writer as
/// [`Bytes`]; back to the swarm's [`Pieces`] once the last of them is done.
pub(super) struct Lent {
    buf: Vec<u8>,
    pieces: Pieces,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pieces.give_back(std::mem::take(&mut self.buf));
    }
}

impl Lent {
    pub(super) fn bytes(buf: Vec<u8>, pieces: &Pieces) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            pieces: pieces.clone(),
        })
    }
}

/// A swarm sink: each verified piece is published from memory at once and
/// written to the job's work file by its thread.
struct FeedSink {
    job: Arc<Job>,
    path: Arc<PathBuf>,
    recent: Arc<Recent>,
    offset: u64,
    writer: WorkWriter,
    pieces: Pieces,
}

impl FeedSink {
    fn new(job: Arc<Job>, path: PathBuf, source: Source, pieces: Pieces) -> FeedSink {
        let path = Arc::new(path);
        let recent = Arc::new(Recent::default());
        job.publish(|s| {
            s.feed = Some(Feed {
                path: path.clone(),
                source,
                lineage: s.lineage,
                prefix: 0,
                recent: recent.clone(),
            })
        });
        let writer = WorkWriter::spawn(path.as_path().to_owned(), recent.clone(), None);
        FeedSink {
            job,
            path,
            recent,
            offset: 0,
            writer,
            pieces,
        }
    }

    /// Wait for every write.
    async fn finish(self) -> std::io::Result<()> {
        self.writer.finish().await.map(|_| ())
    }
}

impl Sink for FeedSink {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        let bytes = Lent::bytes(bytes, &self.pieces);
        let n = bytes.len() as u64;
        self.recent.push(self.offset, bytes.clone());
        self.offset += n;
        let path = &self.path;
        self.job.publish(|s| {
            if let Some(f) = s.feed.as_mut().filter(|f| Arc::ptr_eq(&f.path, path)) {
                f.prefix += n;
            }
        });
        self.writer.send_blocking(Write::Bytes(bytes))
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.recent.reset();
        self.offset = 0;
        let path = &self.path;
        self.job.publish(|s| {
            if let Some(f) = s.feed.as_mut().filter(|f| Arc::ptr_eq(&f.path, path)) {
                if f.prefix > 0 {
                    s.lineage += 1;
                    f.lineage = s.lineage;
                }
                f.prefix = 0;
            }
        });
        self.writer.send_blocking(Write::Reset)
    }
}

impl Sources {
    /// When the upstream starts beside the peers: a first deadline, and
    /// the time the upstream would take for the whole item, if known (see
    /// the module docs of [`crate::job`]).
    fn hedge_deadline(&self, size: u64) -> (Duration, Option<Duration>) {
        if let Some(d) = self.config.hedge_after {
            return (d, Some(d));
        }
        match self.upstream.estimate() {
            // Peers get what the upstream would take, plus the two round
            // trips a new channel costs before its request (connect and
            // handshake), a round trip being about the upstream's time to
            // first byte.
            Some(e) if e.samples > 0 => {
                let u = e.expected(size);
                ((u + e.first_byte * 2).max(HEDGE_FLOOR), Some(u))
            }
            // Only latency is known (from the index fetches): a few of
            // its round trips.
            Some(e) => ((e.first_byte * 6).max(HEDGE_FLOOR), None),
            None => (HEDGE_UNKNOWN, None),
        }
    }

    /// Fetch `want` for `job`: from peers, raced against the upstream
    /// hedge; from the upstream alone when no peer is found or peers
    /// failed before delivering anything.
    pub(super) async fn drive(
        self: &Arc<Self>,
        job: &Arc<Job>,
        want: &Want,
    ) -> Result<(), FetchError> {
        let asked = Instant::now();
        let candidates = match &self.peers {
            Some(p) => {
                p.candidates(&want.repository, want.version, want.key, want.size)
                    .await
            }
            None => Vec::new(),
        };
        tracing::debug!(
            candidates = candidates.len(),
            lookup_us = asked.elapsed().as_micros() as u64,
            "candidates"
        );
        if candidates.is_empty() {
            tracing::debug!("no peers: upstream");
            return self.upstream_primary(job, want).await;
        }
        // Peers of one level and epoch share one channel parameter set;
        // the first candidate's decides (a lookup answers one epoch).
        let params = candidates[0].params();
        let group: Vec<&Candidate> = candidates.iter().filter(|c| c.params() == params).collect();
        let addrs: Vec<swarm::PeerAddr> = group.iter().map(|c| c.addr.clone()).collect();
        let mut cfg = self.config.swarm.clone();
        cfg.params = params;
        // This download's own count of verified bytes, for the hedge.
        cfg.progress = swarm::Progress::default();
        let progress = cfg.progress.clone();
        let path = job.work_path(&self.config.work_dir);
        let mut sink = FeedSink::new(job.clone(), path.clone(), Source::Peers, cfg.pieces.clone());
        let (first_deadline, upstream_time) = self.hedge_deadline(want.size);
        let started = Instant::now();

        let transport = self.config.dialer.clone();
        let mut hedge: Option<tokio::task::JoinHandle<Result<(PathBuf, Verified), FetchError>>> =
            None;
        let raced = {
            let swarm_fut =
                swarm::download(&transport, &cfg, want.key, want.size, &addrs, &mut sink);
            tokio::pin!(swarm_fut);
            let mut tick = tokio::time::interval(HEDGE_TICK);
            loop {
                tokio::select! {
                    r = &mut swarm_fut => break Raced::Swarm(r),
                    r = async { hedge.as_mut().expect("guarded").await }, if hedge.is_some() => {
                        hedge = None;
                        match r {
                            Ok(Ok((up, proof))) => break Raced::Hedge(up, proof),
                            Ok(Err(e)) => tracing::info!(error = %e, "hedged upstream failed"),
                            Err(e) => tracing::info!(error = %e, "hedged upstream panicked"),
                        }
                    }
                    _ = tick.tick(), if hedge.is_none() => {
                        let verified = progress.verified();
                        if late(started.elapsed(), verified, want.size, first_deadline, upstream_time) {
                            tracing::debug!("peers are slow: hedging with the upstream");
                            self.metrics.hedge();
                            let me = self.clone();
                            let j = job.clone();
                            let w = want.clone();
                            hedge = Some(tokio::spawn(async move { me.upstream_hedge(&j, &w).await }));
                        }
                    }
                }
            }
        };
        let result = match raced {
            Raced::Swarm(r) => {
                tracing::debug!(
                    swarm_us = started.elapsed().as_micros() as u64,
                    "swarm done"
                );
                r
            }
            Raced::Hedge(up, proof) => {
                // The hedge won; the swarm was dropped with its future.
                // Its writes are waited for: what was published is
                // compared with the hedge's file.
                let _ = sink.finish().await;
                if progress.verified() == 0
                    && let Some(source) = &self.peers
                {
                    // Not one verified byte while the upstream fetched the
                    // whole item: set aside, with a backoff.
                    for c in &group {
                        source.report_unavailable(c);
                    }
                }
                self.switch_to_upstream(job, &path, up).await;
                return self.finish(job, want, Source::Upstream, &proof).await;
            }
        };
        let report = match &result {
            Ok(r) => r.clone(),
            Err(e) => e.report().clone(),
        };
        self.account(&group, want, &report).await;
        match result {
            Ok(report) => {
                sink.finish().await.map_err(FetchError::work_file)?;
                if let Some(h) = hedge {
                    h.abort();
                }
                tracing::debug!(
                    peers_us = started.elapsed().as_micros() as u64,
                    "item from peers"
                );
                self.metrics.item_completed(Source::Peers, want.size);
                match &report.verified {
                    Some(proof) => self.import(proof, &path, Origin::Peer).await,
                    None => Err(FetchError::NoProof),
                }
            }
            Err(e) => {
                let _ = sink.finish().await;
                tracing::info!(error = %e, "peers could not deliver: upstream");
                if let Some(h) = hedge {
                    match h.await {
                        Ok(Ok((up, proof))) => {
                            self.switch_to_upstream(job, &path, up).await;
                            return self.finish(job, want, Source::Upstream, &proof).await;
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(e) => return Err(FetchError::task(e)),
                    }
                }
                let published = job.state.borrow().feed.as_ref().map_or(0, |f| f.prefix);
                if published == 0 {
                    self.upstream_primary(job, want).await
                } else {
                    let (up, proof) = self.upstream_hedge(job, want).await?;
                    self.switch_to_upstream(job, &path, up).await;
                    self.finish(job, want, Source::Upstream, &proof).await
                }
            }
        }
    }

    /// Peers' outcomes: blame reported, failures set aside.
    async fn account(&self, group: &[&Candidate], want: &Want, report: &swarm::SwarmReport) {
        let Some(source) = &self.peers else {
            return;
        };
        let mut blamed = 0;
        for (c, r) in group.iter().zip(&report.peers) {
            match &r.outcome {
                Outcome::Blamed(b) => {
                    blamed += 1;
                    let (offset, len) = blamed_range(b, want.size);
                    source.report(c, want.key, offset, len).await;
                }
                Outcome::Stalled | Outcome::Unavailable(_) => {
                    // Not reported (nobody is to blame), but not asked again
                    // for a while.
                    source.report_unavailable(c);
                }
                Outcome::Served => source.report_served(c),
                _ => {}
            }
        }
        self.metrics.blamed(blamed);
    }

    /// The upstream won the hedge with the verified file at `up`: check
    /// that what peers published so far matches it, and switch every reader
    /// over.
    async fn switch_to_upstream(&self, job: &Arc<Job>, peer_path: &Path, up: PathBuf) {
        let published = job.state.borrow().feed.as_ref().map_or(0, |f| f.prefix);
        let same = if published == 0 {
            true
        } else {
            let (a, b) = (peer_path.to_path_buf(), up.clone());
            tokio::task::spawn_blocking(move || same_prefix(&a, &b, published))
                .await
                .unwrap_or(false)
        };
        let size = job.size();
        job.publish(|s| {
            if !same {
                s.lineage += 1;
            }
            s.feed = Some(Feed {
                path: Arc::new(up),
                source: Source::Upstream,
                lineage: s.lineage,
                prefix: size,
                recent: Arc::default(),
            });
        });
    }
}

/// Whether peers are late enough for the upstream to start beside them
/// (see the module docs), having verified `verified` bytes (received and
/// checked, delivered or not: a one-piece item delivers nothing until it
/// is whole) in `elapsed`.
pub(super) fn late(
    elapsed: Duration,
    verified: u64,
    size: u64,
    first_deadline: Duration,
    upstream_time: Option<Duration>,
) -> bool {
    if elapsed < first_deadline {
        return false;
    }
    if verified == 0 {
        return true;
    }
    upstream_time.is_some_and(|u| {
        let pace = elapsed.as_secs_f64() / verified as f64;
        let left = Duration::from_secs_f64(pace * (size - verified.min(size)) as f64);
        left > u
    })
}

fn same_prefix(a: &Path, b: &Path, len: u64) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut fa, mut fb) = (fa.take(len), fb.take(len));
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    let mut compared = 0u64;
    loop {
        let n = match fa.read(&mut ba) {
            // Equal only if all of `len` was there to compare.
            Ok(0) => return compared == len,
            Ok(n) => n,
            Err(_) => return false,
        };
        compared += n as u64;
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}
