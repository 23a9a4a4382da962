//! What a job has published, and the requests that stream it.
//!
//! A job's downloads publish *feeds*: a work file, how many of its bytes
//! a reader may take, and the latest of them in memory ([`Recent`]). Each
//! request follows the job's current feed from where it stands, and is
//! cut short when the bytes it already sent belong to a lineage the
//! completed copy did not confirm.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anonmirror_core::{Entropy, ItemKey, OsEntropy};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::err::FetchError;
use crate::metrics::{Metrics, Source};

/// Bytes of a feed kept in memory once the work file holds them too.
pub(super) const RECENT_MAX: usize = 16 << 20;

/// Bytes published by one download.
#[derive(Clone, Debug)]
pub(super) struct Feed {
    /// The work file the bytes are written to.
    pub(super) path: Arc<PathBuf>,
    /// Where they come from, for the metrics.
    pub(super) source: Source,
    /// Bumped when bytes once published can no longer be vouched for: a
    /// request that sent bytes of another lineage is cut short.
    pub(super) lineage: u32,
    /// Bytes a reader may take: from `recent`, else from the file.
    pub(super) prefix: u64,
    /// The latest of them, in memory.
    pub(super) recent: Arc<Recent>,
}

/// The latest published bytes of a feed, in memory. Pieces leave only
/// once the work file holds them, and only while more than
/// [`RECENT_MAX`] bytes are kept.
#[derive(Debug, Default)]
pub(super) struct Recent(Mutex<RecentInner>);

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

    pub(super) fn push(&self, offset: u64, piece: Bytes) {
        let mut r = self.lock();
        r.bytes += piece.len();
        r.pieces.push_back((offset, piece));
    }

    /// Everything goes; returns the new generation.
    pub(super) fn reset(&self) -> u64 {
        let mut r = self.lock();
        r.generation += 1;
        r.pieces.clear();
        r.bytes = 0;
        r.generation
    }

    /// The work file holds bytes `..upto` of `generation`.
    pub(super) fn in_file(&self, generation: u64, upto: u64) {
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
    pub(super) fn get(&self, pos: u64, end: u64) -> Option<Bytes> {
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
pub(super) struct JobState {
    /// The download readers follow now.
    pub(super) feed: Option<Feed>,
    /// The latest lineage handed out.
    pub(super) lineage: u32,
    /// How the job ended, once it has.
    pub(super) done: Option<Result<(), FetchError>>,
}

/// One item being fetched.
#[derive(Debug)]
pub struct Job {
    key: ItemKey,
    size: u64,
    /// What the download published: a watch, so that every reader wakes
    /// on each new byte count (this is the job's progress, not a stop
    /// signal).
    pub(super) state: watch::Sender<JobState>,
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
    /// A job for `size` bytes of `key`, nothing published yet.
    pub(super) fn new(key: ItemKey, size: u64) -> Job {
        Job {
            key,
            size,
            state: watch::Sender::new(JobState::default()),
            files: Mutex::new(Vec::new()),
        }
    }

    /// The item.
    pub fn key(&self) -> ItemKey {
        self.key
    }

    /// The item's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path of a new work file under `dir`, removed with the job. The
    /// file itself is made by its writer's thread.
    pub(super) fn work_path(&self, dir: &Path) -> PathBuf {
        let mut name = [0u8; 12];
        OsEntropy.fill(&mut name);
        let path = dir.join(format!("job-{}", hex::encode(name)));
        if let Ok(mut f) = self.files.lock() {
            f.push(path.clone());
        }
        path
    }

    /// Change what the job has published, waking every reader.
    pub(super) fn publish(&self, f: impl FnOnce(&mut JobState)) {
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
                            let e = std::io::Error::other(FetchError::Unconfirmed);
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
                        Ok(()) => std::io::Error::other(FetchError::EndedShort),
                    };
                    return Some((Err(e), r));
                }
                if r.rx.changed().await.is_err() && r.job.state.borrow().done.is_none() {
                    return Some((Err(std::io::Error::other(FetchError::Vanished)), r));
                }
            }
        })
    }

    /// Wait until the job has ended.
    pub async fn finished(&self) -> Result<(), FetchError> {
        let mut rx = self.state.subscribe();
        loop {
            if let Some(done) = rx.borrow_and_update().done.clone() {
                return done;
            }
            if rx.changed().await.is_err() {
                return Err(FetchError::Vanished);
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
