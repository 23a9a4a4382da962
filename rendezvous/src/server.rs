//! The rendezvous server: the thin tokio driver around the sans-I/O parts.
//!
//! Two long-lived owners, each taking commands over a bounded channel and
//! answering by oneshot:
//!
//! - the key/credential owner (`KeyMgr`, `server/key_owner.rs`) owns the
//!   redb [`Ledger`] and the epoch keys. It
//!   rotates keys (current and next published, previous still accepted,
//!   older ones retired with their spent sets), sweeps credentials, and
//!   spends token nonces in batches: it drains every queued spend into one durable
//!   commit before answering any of them, so concurrent redemptions of one
//!   token are decided in one place and exactly one wins. redb calls run
//!   on blocking threads.
//! - the session owner (`SessionMgr`, `server/session_owner.rs`) owns the
//!   [`SessionTable`] and each live
//!   session's stop signal; it expires silent sessions at their deadline
//!   (tokio time, so tests can pause it) and fans out `SnapshotChanged`:
//!   every push goes to every session, so it is encoded once and sent on
//!   one `broadcast` channel that each session task subscribes to, not
//!   queued per session (a per-session queue cost ~3 KiB a session, a
//!   third of a live session's memory).
//!
//! Each connection runs in its own task (`server/connection.rs`): Noise
//! NK handshake, then the first transport message says what it is for
//! ([`crate::msg`]). A one-shot request is answered in
//! `server/requests.rs`; a session runs in `server/live.rs` for as long as
//! it lives. Token signatures are checked on the connection's task (pure,
//! parallel); only the nonce goes to the key owner. What every connection
//! shares is in `server/shared.rs`, the configuration in
//! `server/config.rs`.
//!
//! Stopping is one [`CancellationToken`]: the owners, the accept loop and
//! the upstream watcher watch it, and each live session holds a child of
//! it, which the session owner cancels alone to drop that session.
//! [`Rendezvous::shutdown`] cancels it and waits for the tasks.
//!
//! Logs carry no credential, token, contact or item key.

use std::net::SocketAddr;
use std::sync::Arc;

use anonmirror_channel::transport::BoxStream;
use anonmirror_core::{Epoch, PeerKey};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::err::{Error, Result};
use crate::ledger::{Ledger, Row};
use crate::session::SessionTable;
use crate::token::Scheme;
use crate::upstream::Watcher;

mod config;
mod connection;
mod key_owner;
mod live;
mod reach;
mod requests;
mod session_owner;
mod shared;

pub use config::{PUSH_DEADLINE, RENDEZVOUS_EPOCH, ServerConfig, UPDATE_MIN_GAP, channel_params};
pub use connection::{WATCH_COALESCE, WATCH_MIN_GAP, WATCH_REFRESH, WATCH_SEND_LIMIT};
use connection::{accept_loop, upstream_watch};
use key_owner::{KeyCmd, blocking, key_owner, load_identity, load_ring};
pub use reach::{MAX_DIAL_BACKS, MAX_REACHED, MAX_REACHED_PER_ADDRESS, REACH_TIMEOUT, REACH_VALID};
use session_owner::{PUSH_QUEUE, SessionCmd, session_owner};
pub use shared::Served;
use shared::{Shared, push};

/// A running rendezvous.
pub struct Rendezvous {
    local: SocketAddr,
    key: PeerKey,
    directory_key: [u8; 32],
    shared: Arc<Shared>,
    /// Cancelled to stop: by [`Rendezvous::shutdown`], or when dropped.
    stop: CancellationToken,
    /// The owners, the accept loop and the upstream watcher (the accept
    /// loop waits for its connections).
    tasks: JoinSet<()>,
    /// Streams from elsewhere than the TCP listener (an onion service):
    /// they carry no address, so a dial-back asked over one finds none.
    streams: mpsc::Sender<BoxStream>,
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("local", &self.local)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Rendezvous {
    /// Opens the ledger (creating keys on first start), binds, and starts
    /// serving.
    pub async fn start(cfg: ServerConfig) -> Result<Rendezvous> {
        cfg.check()?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| Error::Io {
            what: "creating the state directory",
            source,
        })?;
        let path = cfg.state_dir.join("rendezvous.redb");
        let ledger = Arc::new(blocking(move || Ledger::open(&path)).await?);
        let (noise, signing) = {
            let ledger = ledger.clone();
            blocking(move || load_identity(&ledger)).await?
        };
        let ring = load_ring(&ledger, &cfg).await?;
        let (ring_tx, ring_rx) = watch::channel(Arc::new(ring));
        let (key_tx, key_rx) = mpsc::channel(1024);
        let (session_tx, session_rx) = mpsc::channel(1024);
        let (pushes, _) = broadcast::channel(PUSH_QUEUE);
        let (directory_changed_tx, directory_changed) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| Error::Io {
                what: "binding the rendezvous listener",
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Io {
            what: "reading the listener's address",
            source,
        })?;
        let key = noise.public();
        let directory_key = signing.public();
        let epoch = Epoch::containing(cfg.clock.unix_secs(), cfg.epoch_secs);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            noise,
            signing,
            keys: ring_rx,
            key_tx,
            session_tx,
            pushes: pushes.clone(),
            scheme: Scheme::default(),
            stop: stop.clone(),
            served: Served::default(),
            directory_changed,
            watchers: Arc::new(tokio::sync::Semaphore::new(cfg.max_watchers)),
            watched: std::sync::Mutex::new(Vec::new()),
            reached: std::sync::Mutex::default(),
            dial_backs: tokio::sync::Semaphore::new(reach::MAX_DIAL_BACKS),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(key_owner(
            ledger,
            cfg.clone(),
            key_rx,
            ring_tx,
            stop.clone(),
        ));
        tasks.spawn(session_owner(
            SessionTable::new(cfg.sessions.clone(), epoch, cfg.filter.clone()),
            cfg.clone(),
            session_rx,
            pushes,
            directory_changed_tx,
            stop.clone(),
        ));
        if !cfg.upstream.indexes.is_empty() {
            let watcher = Watcher::new(cfg.upstream.clone())?;
            tasks.spawn(upstream_watch(watcher, shared.clone()));
        }
        let (streams, streams_rx) = mpsc::channel(64);
        tasks.spawn(accept_loop(listener, streams_rx, shared.clone()));
        tracing::info!(%local, key = %key, "rendezvous listening");
        Ok(Rendezvous {
            local,
            key,
            directory_key,
            shared,
            stop,
            tasks,
            streams,
        })
    }

    /// Where to hand streams that arrived some other way than the TCP
    /// listener (an onion service's): each is served like an accepted
    /// connection. Closed once the rendezvous shuts down.
    pub fn streams(&self) -> mpsc::Sender<BoxStream> {
        self.streams.clone()
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Its Noise static key, which peers pin.
    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// The directory signing key's public half, which clients pin.
    pub fn directory_key(&self) -> [u8; 32] {
        self.directory_key
    }

    /// Requests answered so far, by kind.
    pub fn served(&self) -> &Served {
        &self.shared.served
    }

    /// Live sessions now.
    pub async fn session_count(&self) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .session_tx
            .send(SessionCmd::Count(reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// Pushes `SnapshotChanged` to every live session (as an authenticated
    /// `notify` does); returns how many sessions it was queued for.
    pub async fn push(&self, repository: &str, version: u64) -> Result<usize> {
        push(&self.shared, repository.to_owned(), version).await
    }

    /// The complete stored state (every redb row), for audits and the
    /// unlinkability harness.
    pub async fn dump_ledger(&self) -> Result<Vec<Row>> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .key_tx
            .send(KeyCmd::Dump { reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Stops accepting, ends every session and the owners, and waits for
    /// them (the ledger's commits are all durable already).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Rendezvous {
    /// A rendezvous dropped without [`Rendezvous::shutdown`] stops all the
    /// same (its tasks are aborted with the `JoinSet` as well).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
