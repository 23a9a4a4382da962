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
//! `max(HEDGE_FLOOR, u)` to deliver their first bytes, and afterwards the
//! upstream starts whenever the peers' own pace predicts a finish later
//! than `now + u`. While only the upstream's latency is known (index files
//! are small), peers get `max(HEDGE_FLOOR, 4·t₀)`; before any answer from
//! the upstream at all, [`HEDGE_UNKNOWN`]. Peers that do not even answer
//! the handshake within a few round trips of their own connection
//! ([`swarm::handshake_allowance`]) are left sooner: with none left, the
//! upstream starts at once.
//!
//! Completed items are linked into the store and the work files removed.
//! Every byte was hashed once on its way: the swarm checks chunk groups
//! and the whole SHA-256; an upstream download's writer hashes SHA-256
//! and the tree as it writes ([`ItemHasher`]). Either way the store gets
//! a [`Verified`] proof and does not read the file again.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_channel::transport::Transport;
use anonmirror_core::{Entropy, ItemKey, OsEntropy, Sensitive};
use anonmirror_overlay::swarm::{self, Outcome, Pieces, Sink, SwarmConfig};
use anonmirror_store::Origin;
use anonmirror_store::Store;
use anonmirror_store::Verified;
use anonmirror_store::verify::ItemHasher;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{Metrics, Source};
use crate::peers::{Candidate, PeerSource, blamed_range};
use crate::upstream::Upstream;
use crate::workfile::WorkFile;

/// The least time peers get before the upstream is hedged in.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(200);
/// The hedge deadline before the upstream's speed is known.
pub const HEDGE_UNKNOWN: Duration = Duration::from_secs(2);
/// How often a running swarm's progress is compared with the upstream's.
const HEDGE_TICK: Duration = Duration::from_millis(50);
/// Bytes of a feed kept in memory once the work file holds them too.
const RECENT_MAX: usize = 16 << 20;
/// Writes queued for a work file's thread before the download waits.
const WRITES_QUEUED: usize = 16;

/// Which side of the race finished first.
enum Raced {
    Swarm(Result<swarm::SwarmReport, swarm::SwarmError>),
    Hedge(PathBuf, Verified),
}

/// Bytes published by one download.
#[derive(Clone, Debug)]
struct Feed {
    path: Arc<PathBuf>,
    source: Source,
    lineage: u32,
    /// Bytes a reader may take: from `recent`, else from the file.
    prefix: u64,
    recent: Arc<Recent>,
}

/// The latest published bytes of a feed, in memory. Pieces leave only
/// once the work file holds them, and only while more than
/// [`RECENT_MAX`] bytes are kept.
#[derive(Debug, Default)]
struct Recent(Mutex<RecentInner>);

#[derive(Debug, Default)]
struct RecentInner {
    /// Counts resets: the writer's reports of an earlier generation no
    /// longer say anything about the file.
    generation: u64,
    pieces: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, offset: u64, piece: Bytes) {
        let mut r = self.lock();
        r.bytes += piece.len();
        r.pieces.push_back((offset, piece));
    }

    /// Everything goes; returns the new generation.
    fn reset(&self) -> u64 {
        let mut r = self.lock();
        r.generation += 1;
        r.pieces.clear();
        r.bytes = 0;
        r.generation
    }

    /// The work file holds bytes `..upto` of `generation`.
    fn in_file(&self, generation: u64, upto: u64) {
        let mut r = self.lock();
        if r.generation != generation {
            return;
        }
        while r.bytes > RECENT_MAX {
            match r.pieces.front() {
                Some((o, p)) if o + p.len() as u64 <= upto => {
                    r.bytes -= p.len();
                    r.pieces.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Bytes from `pos` up to `end` (exclusive) or the end of the piece
    /// holding `pos`, if memory still has it.
    fn get(&self, pos: u64, end: u64) -> Option<Bytes> {
        let r = self.lock();
        let i = r.pieces.partition_point(|(o, _)| *o <= pos);
        let (o, p) = r.pieces.get(i.checked_sub(1)?)?;
        let from = usize::try_from(pos - o).ok()?;
        if from >= p.len() {
            return None;
        }
        let to = usize::try_from(end.saturating_sub(*o)).map_or(p.len(), |e| e.min(p.len()));
        Some(p.slice(from..to))
    }
}

/// What a job has published.
#[derive(Clone, Debug, Default)]
struct JobState {
    feed: Option<Feed>,
    lineage: u32,
    done: Option<Result<(), String>>,
}

/// One item being fetched.
#[derive(Debug)]
pub struct Job {
    key: ItemKey,
    size: u64,
    state: watch::Sender<JobState>,
    files: Mutex<Vec<PathBuf>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Ok(files) = self.files.lock() {
            for f in files.iter() {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

impl Job {
    /// The item.
    pub fn key(&self) -> ItemKey {
        self.key
    }

    /// The item's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path of a new work file under `dir`, removed with the job. The
    /// file itself is made by its writer's thread ([`WorkWriter`]).
    fn work_path(&self, dir: &Path) -> PathBuf {
        let mut name = [0u8; 12];
        OsEntropy.fill(&mut name);
        let path = dir.join(format!("job-{}", hex::encode(name)));
        if let Ok(mut f) = self.files.lock() {
            f.push(path.clone());
        }
        path
    }

    fn publish(&self, f: impl FnOnce(&mut JobState)) {
        self.state.send_modify(f);
    }

    /// Stream `range` of the item as its bytes are published. Bytes are
    /// counted in `metrics` by the feed they came from. The stream ends
    /// with an error if the job fails or the bytes already sent turn out
    /// not to match the copy that completed.
    pub fn stream(
        self: &Arc<Self>,
        start: u64,
        end: u64,
        metrics: Arc<Metrics>,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        struct Reader {
            job: Arc<Job>,
            rx: watch::Receiver<JobState>,
            pos: u64,
            end: u64,
            sent: bool,
            lineage: Option<u32>,
            file: Option<(Arc<PathBuf>, tokio::fs::File)>,
            metrics: Arc<Metrics>,
        }
        let reader = Reader {
            rx: self.state.subscribe(),
            job: self.clone(),
            pos: start,
            end,
            sent: false,
            lineage: None,
            file: None,
            metrics,
        };
        futures_util::stream::unfold(reader, |mut r| async move {
            loop {
                if r.pos >= r.end {
                    return None;
                }
                let st = r.rx.borrow_and_update().clone();
                if let Some(feed) = &st.feed {
                    if r.lineage != Some(feed.lineage) {
                        if r.sent {
                            let e = std::io::Error::other(
                                "the bytes sent so far were not confirmed: transfer cut short",
                            );
                            return Some((Err(e), r));
                        }
                        r.lineage = Some(feed.lineage);
                    }
                    if feed.prefix > r.pos {
                        let until = feed.prefix.min(r.end);
                        if let Some(bytes) = feed.recent.get(r.pos, until) {
                            r.pos += bytes.len() as u64;
                            r.sent = true;
                            r.metrics.item_bytes(feed.source, bytes.len() as u64);
                            return Some((Ok(bytes), r));
                        }
                        let want = (until - r.pos).min(256 * 1024) as usize;
                        match read_at(&mut r.file, &feed.path, r.pos, want).await {
                            Ok(bytes) => {
                                r.pos += bytes.len() as u64;
                                r.sent = true;
                                r.metrics.item_bytes(feed.source, bytes.len() as u64);
                                return Some((Ok(bytes), r));
                            }
                            Err(e) => return Some((Err(e), r)),
                        }
                    }
                }
                if let Some(done) = &st.done {
                    let e = match done {
                        Err(e) => std::io::Error::other(e.clone()),
                        Ok(()) => std::io::Error::other("the job ended short of the item"),
                    };
                    return Some((Err(e), r));
                }
                if r.rx.changed().await.is_err() && r.job.state.borrow().done.is_none() {
                    return Some((Err(std::io::Error::other("the job vanished")), r));
                }
            }
        })
    }

    /// Wait until the job has ended.
    pub async fn finished(&self) -> Result<(), String> {
        let mut rx = self.state.subscribe();
        loop {
            if let Some(done) = rx.borrow_and_update().done.clone() {
                return done;
            }
            if rx.changed().await.is_err() {
                return Err("the job vanished".to_owned());
            }
        }
    }
}

async fn read_at(
    file: &mut Option<(Arc<PathBuf>, tokio::fs::File)>,
    path: &Arc<PathBuf>,
    pos: u64,
    want: usize,
) -> std::io::Result<Bytes> {
    if file.as_ref().is_none_or(|(p, _)| !Arc::ptr_eq(p, path)) {
        *file = Some((path.clone(), tokio::fs::File::open(path.as_path()).await?));
    }
    let Some((_, f)) = file.as_mut() else {
        return Err(std::io::Error::other("no file"));
    };
    f.seek(std::io::SeekFrom::Start(pos)).await?;
    let mut buf = vec![0u8; want];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// What a work file's thread is told.
enum Write {
    Bytes(Bytes),
    /// Start over from byte 0.
    Reset,
}

/// The thread writing a job's work file, in order, hashing as it goes
/// when given an [`ItemHasher`].
struct WorkWriter {
    tx: Option<SyncSender<Write>>,
    thread: Option<tokio::task::JoinHandle<std::io::Result<Option<ItemHasher>>>>,
    /// Why the thread stopped, once it has failed.
    failure: Arc<Mutex<Option<String>>>,
}

impl WorkWriter {
    /// Makes the work file at `path` and writes what it is sent, on a
    /// thread of its own: creating a file can take a file system a
    /// millisecond or more (ext4 without a journal steps over every
    /// recently deleted inode), and readers meanwhile take the bytes from
    /// memory.
    fn spawn(path: PathBuf, recent: Arc<Recent>, hasher: Option<ItemHasher>) -> WorkWriter {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Write>(WRITES_QUEUED);
        // On the runtime's blocking pool: its threads are reused from job
        // to job.
        let failure = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        let thread = tokio::task::spawn_blocking(move || {
            let written = Self::run(&path, &rx, &recent, hasher);
            if let Err(e) = &written
                && let Ok(mut f) = failed.lock()
            {
                *f = Some(e.to_string());
            }
            written
        });
        WorkWriter {
            tx: Some(tx),
            thread: Some(thread),
            failure,
        }
    }

    /// The thread's work: make the file, write and hash what comes.
    fn run(
        path: &Path,
        rx: &std::sync::mpsc::Receiver<Write>,
        recent: &Recent,
        hasher: Option<ItemHasher>,
    ) -> std::io::Result<Option<ItemHasher>> {
        // Made here, off the request's path.
        let created = std::fs::File::create_new(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("creating it: {e}")))?;
        let mut file = WorkFile::open(path, created);
        let mut hasher = hasher;
        let mut generation = 0u64;
        for w in rx {
            match w {
                Write::Bytes(bytes) => {
                    file.write(&bytes)?;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&bytes);
                    }
                    recent.in_file(generation, file.flushed());
                }
                Write::Reset => {
                    file.reset()?;
                    generation += 1;
                    if let Some(h) = hasher.as_mut() {
                        *h = ItemHasher::new(h.size());
                    }
                }
            }
        }
        file.finish()?;
        Ok(hasher)
    }

    fn stopped(&self) -> std::io::Error {
        match self.failure.lock().ok().and_then(|f| f.clone()) {
            Some(why) => std::io::Error::other(format!("the work file writer stopped: {why}")),
            None => std::io::Error::other("the work file writer stopped"),
        }
    }

    /// Queue `w`, waiting on this thread while the queue is full.
    fn send_blocking(&self, w: Write) -> std::io::Result<()> {
        match &self.tx {
            Some(tx) => tx.send(w).map_err(|_| self.stopped()),
            None => Err(self.stopped()),
        }
    }

    /// Queue `w`, waiting off the runtime's threads while the queue is
    /// full.
    async fn send(&self, w: Write) -> std::io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(self.stopped());
        };
        match tx.try_send(w) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(w)) => {
                let tx = tx.clone();
                tokio::task::spawn_blocking(move || tx.send(w))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(|_| self.stopped())
            }
            Err(TrySendError::Disconnected(_)) => Err(self.stopped()),
        }
    }

    /// Wait for every write (and the file's data to be on disk); the
    /// hasher, if one was given, has seen every byte.
    async fn finish(mut self) -> std::io::Result<Option<ItemHasher>> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t
                .await
                .map_err(|e| std::io::Error::other(format!("the work file writer: {e}")))?,
            None => Ok(None),
        }
    }
}

/// A piece's buffer, lent to the readers and the work file's writer as
/// [`Bytes`]; back to the swarm's [`Pieces`] once the last of them is done.
struct Lent {
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
    fn bytes(buf: Vec<u8>, pieces: &Pieces) -> Bytes {
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

/// Runs jobs.
pub struct Fetcher {
    store: Store,
    upstream: Arc<Upstream>,
    peers: Option<Arc<dyn PeerSource>>,
    metrics: Arc<Metrics>,
    config: FetchConfig,
    jobs: Mutex<HashMap<ItemKey, Arc<Job>>>,
    /// Every job's task, for [`Fetcher::drain`].
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
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
            store,
            upstream,
            peers,
            metrics,
            config,
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

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The job fetching `want`, started if none runs.
    pub fn job(self: &Arc<Self>, want: Want) -> Arc<Job> {
        let mut jobs = match self.jobs.lock() {
            Ok(j) => j,
            Err(p) => p.into_inner(),
        };
        if let Some(j) = jobs.get(&want.key) {
            return j.clone();
        }
        let job = Arc::new(Job {
            key: want.key,
            size: want.size,
            state: watch::Sender::new(JobState::default()),
            files: Mutex::new(Vec::new()),
        });
        jobs.insert(want.key, job.clone());
        let me = self.clone();
        let j = job.clone();
        self.tasks.spawn(async move {
            let result = me.drive(&j, &want).await;
            if let Err(e) = &result {
                tracing::info!(item = %Sensitive::new(want.key), error = %e, "fetch failed");
            }
            j.publish(|s| s.done = Some(result));
            if let Ok(mut jobs) = me.jobs.lock() {
                jobs.remove(&want.key);
            }
        });
        job
    }

    fn hedge_deadline(&self, size: u64) -> (Duration, Option<Duration>) {
        if let Some(d) = self.config.hedge_after {
            return (d, Some(d));
        }
        match self.upstream.estimate() {
            Some(e) if e.samples > 0 => {
                let u = e.expected(size);
                (u.max(HEDGE_FLOOR), Some(u))
            }
            // Only latency is known (from the index fetches): a few of
            // its round trips.
            Some(e) => ((e.first_byte * 4).max(HEDGE_FLOOR), None),
            None => (HEDGE_UNKNOWN, None),
        }
    }

    async fn drive(self: &Arc<Self>, job: &Arc<Job>, want: &Want) -> Result<(), String> {
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
        let path = job.work_path(&self.config.work_dir);
        let mut sink = FeedSink::new(job.clone(), path.clone(), Source::Peers, cfg.pieces.clone());
        let (first_deadline, upstream_time) = self.hedge_deadline(want.size);
        let started = Instant::now();

        let transport = self.config.dialer.clone();
        let mut hedge: Option<tokio::task::JoinHandle<Result<(PathBuf, Verified), String>>> = None;
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
                        let prefix = job.state.borrow().feed.as_ref().map_or(0, |f| f.prefix);
                        if late(started.elapsed(), prefix, want.size, first_deadline, upstream_time) {
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
                if job
                    .state
                    .borrow()
                    .feed
                    .as_ref()
                    .is_some_and(|f| f.prefix == 0)
                    && let Some(source) = &self.peers
                {
                    // Not one byte by the deadline: not asked again soon.
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
                sink.finish()
                    .await
                    .map_err(|e| format!("writing the work file: {e}"))?;
                if let Some(h) = hedge {
                    h.abort();
                }
                tracing::debug!(
                    peers_us = started.elapsed().as_micros() as u64,
                    "item from peers"
                );
                self.metrics.item_completed(Source::Peers);
                match &report.verified {
                    Some(proof) => self.import(proof, &path, Origin::Peer).await,
                    None => Err("the swarm download ended without its proof".to_owned()),
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
                        Err(e) => return Err(e.to_string()),
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
        let size = job.size;
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

    /// The upstream as the only source: bytes published as they arrive,
    /// stored if the whole file matches.
    async fn upstream_primary(&self, job: &Arc<Job>, want: &Want) -> Result<(), String> {
        let path = job.work_path(&self.config.work_dir);
        let path = Arc::new(path);
        let recent = Arc::new(Recent::default());
        job.publish(|s| {
            if s.feed.as_ref().is_some_and(|f| f.prefix > 0) {
                s.lineage += 1;
            }
            s.feed = Some(Feed {
                path: path.clone(),
                source: Source::Upstream,
                lineage: s.lineage,
                prefix: 0,
                recent: recent.clone(),
            })
        });
        let proof = self
            .download_upstream(want, path.as_path().to_owned(), Some(&recent), |n| {
                job.publish(|s| {
                    if let Some(f) = s.feed.as_mut().filter(|f| Arc::ptr_eq(&f.path, &path)) {
                        f.prefix += n;
                    }
                })
            })
            .await?;
        let Some(proof) = proof else {
            // Passed on as received; not stored, not shared.
            tracing::info!(
                item = %Sensitive::new(want.key),
                "the upstream's file does not match the index: passed on, not stored"
            );
            return Ok(());
        };
        self.finish(job, want, Source::Upstream, &proof).await
    }

    /// The upstream as a hedge: returns the work file once the whole file
    /// matched the index.
    async fn upstream_hedge(
        &self,
        job: &Arc<Job>,
        want: &Want,
    ) -> Result<(PathBuf, Verified), String> {
        let path = job.work_path(&self.config.work_dir);
        match self
            .download_upstream(want, path.clone(), None, |_| {})
            .await?
        {
            Some(proof) => Ok((path, proof)),
            None => Err("the upstream's file does not match the index".to_owned()),
        }
    }

    /// GET the item into a new work file at `path` (through its own
    /// writer thread, which hashes it), each body frame handed to `recent`
    /// (when given) and announced to `progress` as it arrives. Returns the
    /// proof that the file is the item, or `None` when size or SHA-256
    /// differ from the index.
    async fn download_upstream(
        &self,
        want: &Want,
        path: PathBuf,
        recent: Option<&Arc<Recent>>,
        progress: impl Fn(u64),
    ) -> Result<Option<Verified>, String> {
        // The file is made while the request goes out.
        let writer = WorkWriter::spawn(
            path,
            recent.cloned().unwrap_or_default(),
            Some(ItemHasher::new(want.size)),
        );
        let resp = self
            .upstream
            .get_with(&want.url, &[])
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(format!("upstream answered {}", resp.status()));
        }
        let started = std::time::Instant::now();
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("upstream body: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if got + data.len() as u64 > want.size {
                // Longer than the index says: not the item.
                let _ = writer.finish().await;
                return Ok(None);
            }
            if let Some(r) = recent {
                r.push(got, data.clone());
            }
            got += data.len() as u64;
            progress(data.len() as u64);
            writer
                .send(Write::Bytes(data))
                .await
                .map_err(|e| format!("writing the work file: {e}"))?;
        }
        let hasher = writer
            .finish()
            .await
            .map_err(|e| format!("writing the work file: {e}"))?;
        self.upstream.observe_body(got, started.elapsed());
        Ok(hasher.and_then(|h| h.finish(want.key)))
    }

    /// Link the completed copy into the store and end the job.
    async fn finish(
        &self,
        job: &Arc<Job>,
        want: &Want,
        source: Source,
        proof: &Verified,
    ) -> Result<(), String> {
        let path = job
            .state
            .borrow()
            .feed
            .as_ref()
            .map(|f| f.path.as_path().to_path_buf())
            .ok_or("no feed")?;
        // Counted when the last byte is there, before the store links it.
        self.metrics.item_completed(source);
        let origin = match source {
            Source::Peers => Origin::Peer,
            _ => Origin::Upstream,
        };
        debug_assert_eq!(proof.key(), want.key);
        self.import(proof, &path, origin).await
    }

    async fn import(&self, proof: &Verified, path: &Path, origin: Origin) -> Result<(), String> {
        let store = self.store.clone();
        let (proof, path) = (proof.clone(), path.to_path_buf());
        match tokio::task::spawn_blocking(move || store.import_verified(&proof, &path, origin))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            // The package manager has its bytes either way; a full disk
            // only costs the cache.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not keep the item in the store");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether peers are late enough for the upstream to start beside
/// them (see the module docs).
fn late(
    elapsed: Duration,
    prefix: u64,
    size: u64,
    first_deadline: Duration,
    upstream_time: Option<Duration>,
) -> bool {
    if elapsed < first_deadline {
        return false;
    }
    if prefix == 0 {
        return true;
    }
    upstream_time.is_some_and(|u| {
        let pace = elapsed.as_secs_f64() / prefix as f64;
        let left = Duration::from_secs_f64(pace * (size - prefix.min(size)) as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream on 127.0.0.1 that answers one GET with `body`: half of
    /// it at once, the rest after `pause`.
    async fn slow_upstream(body: Vec<u8>, pause: Duration) -> String {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            let half = body.len() / 2;
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body[..half]).await;
            tokio::time::sleep(pause).await;
            let _ = s.write_all(&body[half..]).await;
            let _ = s.flush().await;
        });
        format!("http://{addr}/item")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_waits_for_a_download_under_way_to_be_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut body = vec![0u8; 300_000];
        OsEntropy.fill(&mut body);
        let key = ItemKey(
            ring::digest::digest(&ring::digest::SHA256, &body)
                .as_ref()
                .try_into()
                .expect("32 bytes"),
        );
        let url = slow_upstream(body.clone(), Duration::from_millis(300)).await;
        let store = Store::open(
            &dir.path().join("store"),
            1 << 30,
            Arc::new(anonmirror_core::SystemClock),
        )
        .expect("store");
        let fetcher = Arc::new(
            Fetcher::new(
                store.clone(),
                Arc::new(Upstream::new(Duration::from_secs(10))),
                None,
                Arc::new(Metrics::default()),
                FetchConfig {
                    work_dir: dir.path().join("store").join("tmp"),
                    swarm: SwarmConfig::new(anonmirror_channel::ChannelParams::new(
                        anonmirror_privacy::Level::Open,
                        anonmirror_core::Epoch(0),
                    )),
                    hedge_after: None,
                    dialer: Arc::new(anonmirror_channel::TcpTransport),
                },
            )
            .expect("fetcher"),
        );
        let job = fetcher.job(Want {
            key,
            size: body.len() as u64,
            repository: "r".into(),
            version: 1,
            url,
        });
        drop(job);
        // The upstream pauses mid-body: only a drain that waits sees the
        // item stored when it returns.
        assert!(
            fetcher.drain(Duration::from_secs(60)).await,
            "the job ended"
        );
        assert_eq!(
            store.meta(&key).expect("store").map(|m| m.size),
            Some(body.len() as u64)
        );
        // Jobs still run after a drain.
        assert!(fetcher.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_work_file_that_cannot_be_made_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("job-x");
        let writer = WorkWriter::spawn(path, Arc::new(Recent::default()), None);
        let mut sent = Ok(());
        // The thread fails at once; sends stop being taken soon after.
        for _ in 0..=WRITES_QUEUED {
            sent = writer.send(Write::Bytes(Bytes::from_static(b"x"))).await;
            if sent.is_err() {
                break;
            }
        }
        let finished = writer.finish().await;
        let e = finished.expect_err("no file to write");
        assert!(e.to_string().contains("creating it"), "{e}");
        if let Err(e) = sent {
            assert!(e.to_string().contains("creating it"), "{e}");
        }
    }

    #[test]
    fn a_lent_piece_goes_back_when_its_last_reader_is_done() {
        let pieces = Pieces::default();
        let bytes = Lent::bytes(vec![7u8; 1000], &pieces);
        let reader = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pieces.kept(), 0, "a reader still holds it");
        assert_eq!(&reader[..], &[7u8; 10]);
        drop(reader);
        assert_eq!(pieces.kept(), 1);
    }

    #[test]
    fn recent_bytes_leave_memory_only_once_in_the_file() {
        let r = Recent::default();
        let piece = |n: u8| Bytes::from(vec![n; RECENT_MAX / 2]);
        let half = (RECENT_MAX / 2) as u64;
        for i in 0..4u8 {
            r.push(u64::from(i) * half, piece(i));
        }
        // Slices within a piece, cut at the requested end.
        assert_eq!(r.get(10, 20).expect("held").len(), 10);
        assert_eq!(r.get(half - 1, 4 * half).expect("held").len(), 1);
        assert_eq!(r.get(half, 4 * half).expect("held")[0], 1);
        assert!(r.get(4 * half, 5 * half).is_none(), "not published");
        // Over the limit, but nothing is in the file yet: all kept.
        r.in_file(0, 0);
        assert!(r.get(0, 1).is_some());
        // The file holds three pieces: the oldest go until the limit holds.
        r.in_file(0, 3 * half);
        assert!(r.get(0, 1).is_none() && r.get(half, half + 1).is_none());
        assert!(r.get(2 * half, 2 * half + 1).is_some());
        // After a reset, the writer's reports of the old file mean nothing.
        let generation = r.reset();
        assert!(r.get(2 * half, 2 * half + 1).is_none());
        for i in 0..4u8 {
            r.push(u64::from(i) * half, piece(i + 10));
        }
        r.in_file(generation - 1, 4 * half);
        assert_eq!(r.get(0, 1).expect("kept")[0], 10);
        r.in_file(generation, 4 * half);
        assert!(r.get(0, 1).is_none());
        assert_eq!(r.get(3 * half, 3 * half + 1).expect("kept")[0], 13);
    }

    #[test]
    fn peers_are_late_by_the_deadline_or_by_their_pace() {
        let ms = Duration::from_millis;
        // Before the first deadline: never.
        assert!(!late(ms(100), 0, 1000, ms(200), Some(ms(50))));
        // After it with nothing delivered: always.
        assert!(late(ms(200), 0, 1000, ms(200), None));
        // Half delivered in 1 s: 1 s left, against an upstream of 0.5 s.
        assert!(late(ms(1000), 500, 1000, ms(200), Some(ms(500))));
        // … against an upstream of 2 s: keep the peers.
        assert!(!late(ms(1000), 500, 1000, ms(200), Some(ms(2000))));
        // Without a rate for the upstream, delivering peers are kept.
        assert!(!late(ms(1000), 1, 1000, ms(200), None));
    }
}
