//! A job's work file, written on a thread of its own.
//!
//! Downloads hand their bytes over a bounded queue to a thread of the
//! runtime's blocking pool, which makes the file, writes it in order
//! ([`WorkFile`]), hashes it when asked to, and tells the feed's
//! [`Recent`] how far the file holds the bytes, so that memory can let
//! them go.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use anonmirror_store::verify::ItemHasher;
use bytes::Bytes;

use crate::job::feed::Recent;
use crate::workfile::WorkFile;

/// Writes queued for a work file's thread before the download waits.
pub(super) const WRITES_QUEUED: usize = 16;

/// What a work file's thread is told.
pub(super) enum Write {
    /// The next bytes of the file.
    Bytes(Bytes),
    /// Start over from byte 0.
    Reset,
}

/// The thread writing a job's work file, in order, hashing as it goes
/// when given an [`ItemHasher`].
pub(super) struct WorkWriter {
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
    pub(super) fn spawn(
        path: PathBuf,
        recent: Arc<Recent>,
        hasher: Option<ItemHasher>,
    ) -> WorkWriter {
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
    pub(super) fn send_blocking(&self, w: Write) -> std::io::Result<()> {
        match &self.tx {
            Some(tx) => tx.send(w).map_err(|_| self.stopped()),
            None => Err(self.stopped()),
        }
    }

    /// Queue `w`, waiting off the runtime's threads while the queue is
    /// full.
    pub(super) async fn send(&self, w: Write) -> std::io::Result<()> {
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
    pub(super) async fn finish(mut self) -> std::io::Result<Option<ItemHasher>> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t
                .await
                .map_err(|e| std::io::Error::other(format!("the work file writer: {e}")))?,
            None => Ok(None),
        }
    }
}
