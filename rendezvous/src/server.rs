//! The rendezvous server: the thin tokio driver around the sans-I/O parts.
//!
//! Two long-lived owners, each taking commands over a bounded channel and
//! answering by oneshot:
//!
//! - the key/credential owner (`KeyMgr`) owns the redb [`Store`] and the
//!   epoch keys. It rotates keys (current and next published, previous
//!   still accepted, older ones retired with their spent sets), sweeps
//!   credentials, and spends token nonces in batches: it drains every
//!   queued spend into one durable commit before answering any of them,
//!   so concurrent redemptions of one token are decided in one place and
//!   exactly one wins. redb calls run on blocking threads.
//! - the session owner (`SessionMgr`) owns the [`SessionTable`] and each
//!   live session's drop signal; it expires silent sessions at their
//!   deadline (tokio time, so tests can pause it) and fans out
//!   `SnapshotChanged`: every push goes to every session, so it is encoded
//!   once and sent on one `broadcast` channel that each session task
//!   subscribes to, not queued per session (a per-session queue cost
//!   ~3 KiB a session, a third of a live session's memory).
//!
//! Each connection runs in its own task: Noise NK handshake, then the
//! first transport message says what it is for ([`crate::msg`]). Token
//! signatures are checked on the connection's task (pure, parallel); only
//! the nonce goes to the key owner.
//!
//! Logs carry no credential, token, contact or item key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{Clock, Epoch, ItemKey, OsEntropy, PeerKey};
use anonmirror_overlay::transport::BoxStream;
use anonmirror_overlay::{Channel, ChannelParams, StaticKeypair};
use anonmirror_privacy::Level;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::credential::{CredentialConfig, CredentialRecord};
use crate::directory::{PublishedCounts, SigningKey, Snapshot};
use crate::err::{Error, Result};
use crate::hooks::{FilterCheck, ReportSink};
use crate::msg::{
    Announcement, ByteBuf, Candidate, Down, MAX_COUNTS, MAX_PART, PublishedKey, Sig, Up,
};
use crate::pow::Stamp;
use crate::refusal::Refusal;
use crate::session::{Query, ReportOutcome, SessionConfig, SessionId, SessionTable};
use crate::store::{Row, Store};
use crate::token::{IssuerKey, Scheme, TokenScheme, token_key_id};
use crate::upstream::{WatchConfig, Watcher};

/// The epoch bound into every rendezvous channel's prologue. Rendezvous
/// channels are not per-epoch (a client at an epoch boundary must still
/// reach it; tokens carry their key's epoch instead), and this value, never
/// a real epoch, keeps them apart from peer channels.
pub const RENDEZVOUS_EPOCH: Epoch = Epoch(u64::MAX);

/// The prologue parameters of every rendezvous channel.
pub fn channel_params() -> ChannelParams {
    ChannelParams::new(Level::Off, RENDEZVOUS_EPOCH)
}

/// How long a push may take to reach a session before the session is
/// considered dead and dropped: the push deadline.
pub const PUSH_DEADLINE: Duration = Duration::from_secs(1);

/// The rendezvous's configuration.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen (port 0: any).
    pub listen: SocketAddr,
    /// Where the redb store lives.
    pub state_dir: PathBuf,
    /// Epoch length (token keys rotate at epoch boundaries).
    pub epoch_secs: u64,
    /// Credential rules.
    pub credentials: CredentialConfig,
    /// Session rules.
    pub sessions: SessionConfig,
    /// BLAKE3 of the distribution's notify secret; `None` refuses notify.
    pub notify_secret_hash: Option<[u8; 32]>,
    /// Announcement filter test (announce/'s, plugged by the root package).
    pub filter: Arc<dyn FilterCheck>,
    /// Popularity aggregator (announce/'s, plugged by the root package).
    pub reports: Arc<dyn ReportSink>,
    /// Wall clock for credentials and epochs.
    pub clock: Arc<dyn Clock>,
    /// Handshake and first-message timeout.
    pub handshake_timeout: Duration,
    /// How often credentials are swept and keys rotated.
    pub maintenance_interval: Duration,
    /// Upstream indexes to watch for new snapshots (none: only `notify`).
    pub upstream: WatchConfig,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("epoch_secs", &self.epoch_secs)
            .field("credentials", &self.credentials)
            .field("sessions", &self.sessions)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults (DESIGN.md §4) for a store in `state_dir`, listening on
    /// `listen`, with the given hooks.
    pub fn new(
        listen: SocketAddr,
        state_dir: PathBuf,
        filter: Arc<dyn FilterCheck>,
        reports: Arc<dyn ReportSink>,
    ) -> Self {
        ServerConfig {
            listen,
            state_dir,
            epoch_secs: 86_400,
            credentials: CredentialConfig::default(),
            sessions: SessionConfig::default(),
            notify_secret_hash: None,
            filter,
            reports,
            clock: Arc::new(anonmirror_core::SystemClock),
            handshake_timeout: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(60),
            upstream: WatchConfig::default(),
        }
    }

    fn check(&self) -> Result<()> {
        if self.epoch_secs == 0 {
            return Err(Error::Config {
                key: "epoch_secs",
                reason: "must be at least 1".into(),
            });
        }
        if self.credentials.pow_difficulty > crate::pow::MAX_DIFFICULTY {
            return Err(Error::Config {
                key: "pow_difficulty",
                reason: format!("at most {}", crate::pow::MAX_DIFFICULTY),
            });
        }
        self.upstream.check()?;
        if self.sessions.silence <= self.sessions.ping_interval {
            return Err(Error::Config {
                key: "silence",
                reason: "must exceed the ping interval".into(),
            });
        }
        Ok(())
    }
}

/// One epoch's token key, ready to sign and verify.
#[derive(Clone)]
struct RingKey {
    secret: Arc<IssuerKey>,
    public: Arc<<Scheme as TokenScheme>::Public>,
    key_id: [u8; 32],
    spki: Vec<u8>,
}

/// The keys in force: shared read-only with every connection.
#[derive(Clone, Default)]
struct KeyRing {
    current: u64,
    keys: BTreeMap<u64, RingKey>,
}

impl KeyRing {
    /// The key for redeeming a token with `key_id`: current or previous
    /// epoch only.
    fn accepting(&self, key_id: &[u8; 32]) -> Option<(u64, &RingKey)> {
        let prev = self.current.saturating_sub(1);
        [self.current, prev]
            .into_iter()
            .filter_map(|e| self.keys.get(&e).map(|k| (e, k)))
            .find(|(_, k)| k.key_id == *key_id)
    }

    fn published(&self) -> Vec<PublishedKey> {
        let lo = self.current.saturating_sub(1);
        self.keys
            .range(lo..=self.current.saturating_add(1))
            .map(|(e, k)| PublishedKey {
                epoch: *e,
                key: k.spki.clone(),
            })
            .collect()
    }
}

enum KeyCmd {
    Register {
        stamp_digest: [u8; 32],
        stamp_time: u64,
        reply: oneshot::Sender<Result<([u8; 32], u64)>>,
    },
    Buy {
        credential: [u8; 32],
        epoch: u64,
        n: u32,
        reply: oneshot::Sender<Result<Result<(), Refusal>>>,
    },
    Spend {
        epoch: u64,
        nonce: [u8; 32],
        reply: oneshot::Sender<Result<bool>>,
    },
    Dump {
        reply: oneshot::Sender<Result<Vec<Row>>>,
    },
}

enum SessionCmd {
    Open {
        ann: Announcement,
        /// Dropped (or fired) by the owner to end the session.
        drop: oneshot::Sender<()>,
        reply: oneshot::Sender<Result<SessionId, Refusal>>,
    },
    Heard(SessionId),
    Close(SessionId),
    Lookup {
        item: ItemKey,
        size: u64,
        repository: String,
        version: u64,
        region: Option<String>,
        want: usize,
        reply: oneshot::Sender<Vec<Candidate>>,
    },
    Directory {
        region: Option<String>,
        reply: oneshot::Sender<Vec<Announcement>>,
    },
    Report {
        key: PeerKey,
        reply: oneshot::Sender<ReportOutcome>,
    },
    Push {
        repository: String,
        version: u64,
        reply: oneshot::Sender<usize>,
    },
    Count(oneshot::Sender<usize>),
    /// Live sessions per declared level.
    Levels(oneshot::Sender<BTreeMap<u8, u64>>),
}

/// Shared by every connection task.
struct Shared {
    cfg: ServerConfig,
    noise: StaticKeypair,
    signing: SigningKey,
    keys: watch::Receiver<Arc<KeyRing>>,
    key_tx: mpsc::Sender<KeyCmd>,
    session_tx: mpsc::Sender<SessionCmd>,
    /// Encoded pushes (`SnapshotChanged`) for every live session; a session
    /// subscribes before it opens, so it misses none sent after.
    pushes: broadcast::Sender<Arc<[u8]>>,
    scheme: Scheme,
}

/// A running rendezvous.
pub struct Rendezvous {
    local: SocketAddr,
    key: PeerKey,
    directory_key: [u8; 32],
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Streams from elsewhere than the TCP listener (an onion service).
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

const META_NOISE_PUBLIC: &str = "noise_public";
const META_NOISE_SECRET: &str = "noise_secret";
const META_DIRECTORY_KEY: &str = "directory_pkcs8";

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

impl Rendezvous {
    /// Opens the store (creating keys on first start), binds, and starts
    /// serving.
    pub async fn start(cfg: ServerConfig) -> Result<Rendezvous> {
        cfg.check()?;
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| Error::Io {
            what: "creating the state directory",
            source,
        })?;
        let path = cfg.state_dir.join("rendezvous.redb");
        let store = Arc::new(blocking(move || Store::open(&path)).await?);
        let (noise, signing) = {
            let store = store.clone();
            blocking(move || load_identity(&store)).await?
        };
        let ring = load_ring(&store, &cfg).await?;
        let (ring_tx, ring_rx) = watch::channel(Arc::new(ring));
        let (key_tx, key_rx) = mpsc::channel(1024);
        let (session_tx, session_rx) = mpsc::channel(1024);
        let (pushes, _) = broadcast::channel(PUSH_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
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
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(key_owner(
            store,
            cfg.clone(),
            key_rx,
            ring_tx,
            stop_rx.clone(),
        ));
        tasks.spawn(session_owner(
            SessionTable::new(cfg.sessions.clone(), epoch, cfg.filter.clone()),
            cfg.clone(),
            session_rx,
            pushes,
            stop_rx.clone(),
        ));
        if !cfg.upstream.indexes.is_empty() {
            let watcher = Watcher::new(cfg.upstream.clone())?;
            tasks.spawn(upstream_watch(watcher, shared.clone(), stop_rx.clone()));
        }
        let (streams, streams_rx) = mpsc::channel(64);
        tasks.spawn(accept_loop(listener, streams_rx, shared.clone(), stop_rx));
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
    pub async fn dump_store(&self) -> Result<Vec<Row>> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .key_tx
            .send(KeyCmd::Dump { reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Stops accepting, ends every session and the owners, and waits for
    /// them (the store's commits are all durable already).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

fn load_identity(store: &Store) -> Result<(StaticKeypair, SigningKey)> {
    let noise = match (
        store.meta(META_NOISE_PUBLIC)?,
        store.meta(META_NOISE_SECRET)?,
    ) {
        (Some(p), Some(s)) => {
            let p: [u8; 32] = p
                .try_into()
                .map_err(|_| Error::store("stored Noise public key"))?;
            let s: [u8; 32] = s
                .try_into()
                .map_err(|_| Error::store("stored Noise secret key"))?;
            StaticKeypair::from_parts(PeerKey(p), s)?
        }
        _ => {
            let kp = StaticKeypair::generate()?;
            store.set_meta(META_NOISE_SECRET, &kp.secret_bytes())?;
            store.set_meta(META_NOISE_PUBLIC, kp.public().as_bytes())?;
            kp
        }
    };
    let signing = match store.meta(META_DIRECTORY_KEY)? {
        Some(d) => SigningKey::from_pkcs8(&d)?,
        None => {
            let d = SigningKey::generate_pkcs8()?;
            store.set_meta(META_DIRECTORY_KEY, &d)?;
            SigningKey::from_pkcs8(&d)?
        }
    };
    Ok((noise, signing))
}

fn ring_key(scheme: &Scheme, secret: IssuerKey) -> Result<RingKey> {
    let public = scheme.public(&secret)?;
    Ok(RingKey {
        key_id: scheme.key_id(&public)?,
        spki: scheme.public_to_bytes(&public)?,
        public: Arc::new(public),
        secret: Arc::new(secret),
    })
}

/// Loads stored keys, creates the current and next ones if missing, and
/// retires older than the previous epoch.
async fn load_ring(store: &Arc<Store>, cfg: &ServerConfig) -> Result<KeyRing> {
    let current = Epoch::containing(cfg.clock.unix_secs(), cfg.epoch_secs).0;
    let mut ring = KeyRing {
        current,
        keys: BTreeMap::new(),
    };
    rotate(store, &mut ring, current).await?;
    Ok(ring)
}

async fn rotate(store: &Arc<Store>, ring: &mut KeyRing, current: u64) -> Result<()> {
    let scheme = Scheme::default();
    ring.current = current;
    let oldest = current.saturating_sub(1);
    let s = store.clone();
    let retired = blocking(move || s.retire_before(oldest)).await?;
    if !retired.is_empty() {
        tracing::info!(
            count = retired.len(),
            "token keys retired with their spent sets"
        );
    }
    ring.keys.retain(|e, _| *e >= oldest);
    let s = store.clone();
    let stored = blocking(move || s.keys()).await?;
    for (e, der) in stored {
        if let std::collections::btree_map::Entry::Vacant(v) = ring.keys.entry(e) {
            v.insert(ring_key(&scheme, scheme.secret_from_bytes(&der)?)?);
        }
    }
    for e in [current, current.saturating_add(1)] {
        if ring.keys.contains_key(&e) {
            continue;
        }
        let s = store.clone();
        let secret = blocking(move || {
            let secret = scheme.generate()?;
            s.put_key(e, &scheme.secret_to_bytes(&secret)?)?;
            Ok(secret)
        })
        .await?;
        ring.keys.insert(e, ring_key(&scheme, secret)?);
        tracing::info!(epoch = e, "token key created");
    }
    Ok(())
}

async fn key_owner(
    store: Arc<Store>,
    cfg: ServerConfig,
    mut rx: mpsc::Receiver<KeyCmd>,
    ring_tx: watch::Sender<Arc<KeyRing>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ring = (**ring_tx.borrow()).clone();
    let mut tick = tokio::time::interval(cfg.maintenance_interval);
    loop {
        let cmd = tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let now = cfg.clock.unix_secs();
                let current = Epoch::containing(now, cfg.epoch_secs).0;
                if current != ring.current {
                    match rotate(&store, &mut ring, current).await {
                        Ok(()) => { let _ = ring_tx.send(Arc::new(ring.clone())); }
                        Err(e) => tracing::error!(error = %e, "rotating token keys failed"),
                    }
                }
                let (s, c, secs) = (store.clone(), cfg.credentials.clone(), cfg.epoch_secs);
                match blocking(move || s.sweep(now, current, secs, &c)).await {
                    Ok(swept) => tracing::debug!(?swept, "credential sweep"),
                    Err(e) => tracing::error!(error = %e, "credential sweep failed"),
                }
                continue;
            }
            cmd = rx.recv() => match cmd { Some(c) => c, None => break },
        };
        match cmd {
            KeyCmd::Spend {
                epoch,
                nonce,
                reply,
            } => {
                // Group commit: every spend already queued goes into the
                // same durable transaction.
                let mut batch = vec![(epoch, nonce)];
                let mut replies = vec![reply];
                let mut other = Vec::new();
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(KeyCmd::Spend {
                            epoch,
                            nonce,
                            reply,
                        }) => {
                            batch.push((epoch, nonce));
                            replies.push(reply);
                        }
                        Ok(c) => {
                            other.push(c);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let s = store.clone();
                let res = blocking(move || s.spend(&batch)).await;
                match res {
                    Ok(fresh) => {
                        for (r, f) in replies.into_iter().zip(fresh) {
                            let _ = r.send(Ok(f));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "spending tokens failed");
                        for r in replies {
                            let _ = r.send(Err(Error::Store(e.to_string())));
                        }
                    }
                }
                for c in other {
                    handle_key_cmd(&store, &cfg, c).await;
                }
            }
            c => handle_key_cmd(&store, &cfg, c).await,
        }
    }
    tracing::debug!("key owner stopped");
}

async fn handle_key_cmd(store: &Arc<Store>, cfg: &ServerConfig, cmd: KeyCmd) {
    let s = store.clone();
    match cmd {
        KeyCmd::Register {
            stamp_digest,
            stamp_time,
            reply,
        } => {
            let now = cfg.clock.unix_secs();
            let epoch = Epoch::containing(now, cfg.epoch_secs).0;
            let rec = CredentialRecord::new(now, epoch, &cfg.credentials);
            let mut credential = [0u8; 32];
            anonmirror_core::Entropy::fill(&mut OsEntropy, &mut credential);
            let r = blocking(move || {
                s.register(&stamp_digest, stamp_time, &credential, &rec)?;
                Ok((credential, rec.expires))
            })
            .await;
            let _ = reply.send(r);
        }
        KeyCmd::Buy {
            credential,
            epoch,
            n,
            reply,
        } => {
            let now = cfg.clock.unix_secs();
            let c = cfg.credentials.clone();
            let _ = reply.send(blocking(move || s.buy(&credential, now, epoch, n, &c)).await);
        }
        KeyCmd::Spend {
            epoch,
            nonce,
            reply,
        } => {
            let r = blocking(move || s.spend(&[(epoch, nonce)])).await;
            let _ = reply.send(r.map(|v| v.first().copied().unwrap_or(false)));
        }
        KeyCmd::Dump { reply } => {
            let _ = reply.send(blocking(move || s.dump()).await);
        }
    }
}

/// Pushes a session may fall behind by before it is dropped: one that
/// cannot take 16 pushes in a row is not keeping up, nor live in any
/// useful sense.
const PUSH_QUEUE: usize = 16;

async fn session_owner(
    mut table: SessionTable,
    cfg: ServerConfig,
    mut rx: mpsc::Receiver<SessionCmd>,
    pushes: broadcast::Sender<Arc<[u8]>>,
    mut stop: watch::Receiver<bool>,
) {
    // Each live session's drop signal: dropping it ends the session's task.
    let mut live: std::collections::HashMap<SessionId, oneshot::Sender<()>> = Default::default();
    // Lookups draw hundreds of small numbers each: batch the OS calls.
    let mut rng = crate::session::BufferedEntropy::new(OsEntropy);
    loop {
        let deadline = table
            .next_deadline()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let cmd = tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(deadline) => {
                for id in table.expire(Instant::now().into_std()) {
                    live.remove(&id);
                    tracing::debug!("session dropped: silent past its deadline");
                }
                continue;
            }
            cmd = rx.recv() => match cmd { Some(c) => c, None => break },
        };
        let now = Instant::now().into_std();
        match cmd {
            SessionCmd::Open { ann, drop, reply } => {
                table.set_epoch(Epoch::containing(cfg.clock.unix_secs(), cfg.epoch_secs));
                let r = table.open(ann, now, &mut rng);
                if let Ok(id) = r {
                    live.insert(id, drop);
                    tracing::debug!(live = table.len(), "session opened");
                }
                let _ = reply.send(r);
            }
            SessionCmd::Heard(id) => table.heard(id, now),
            SessionCmd::Close(id) => {
                if table.close(id) {
                    tracing::debug!(live = table.len(), "session closed");
                }
                live.remove(&id);
            }
            SessionCmd::Lookup {
                item,
                size,
                repository,
                version,
                region,
                want,
                reply,
            } => {
                let q = Query {
                    item: &item,
                    size,
                    repository: &repository,
                    version,
                    region: region.as_deref(),
                    want,
                };
                let _ = reply.send(table.lookup(&q, now, &mut rng));
            }
            SessionCmd::Directory { region, reply } => {
                let anns = table.announcements(region.as_deref());
                let _ = reply.send(anns);
            }
            SessionCmd::Report { key, reply } => {
                let out = table.report(&key, now);
                if let ReportOutcome::Dropped(id) = out {
                    live.remove(&id);
                    tracing::info!("session dropped after reports of bad data");
                }
                let _ = reply.send(out);
            }
            SessionCmd::Push {
                repository,
                version,
                reply,
            } => {
                let msg = Down::SnapshotChanged {
                    repository,
                    version,
                };
                // Every live session subscribed before it opened; one that
                // falls `PUSH_QUEUE` pushes behind drops itself.
                let queued = match msg.encode() {
                    Ok(bytes) => {
                        let _ = pushes.send(bytes.into());
                        table.len()
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "encoding a push failed");
                        0
                    }
                };
                tracing::info!(sessions = queued, "snapshot change pushed");
                let _ = reply.send(queued);
            }
            SessionCmd::Count(reply) => {
                let _ = reply.send(table.len());
            }
            SessionCmd::Levels(reply) => {
                let _ = reply.send(table.level_populations());
            }
        }
    }
    tracing::debug!("session owner stopped");
}

/// Polls the upstream indexes every interval and pushes each change to
/// every live session.
async fn upstream_watch(mut w: Watcher, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(w.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let now = shared.cfg.clock.unix_secs();
        let changes = tokio::select! {
            _ = stop.changed() => break,
            c = w.poll(now) => c,
        };
        for (repository, version) in changes {
            match push(&shared, repository, version).await {
                Ok(n) => tracing::debug!(sessions = n, "upstream change pushed"),
                Err(e) => {
                    tracing::debug!(error = %e, "upstream watcher stopping");
                    return;
                }
            }
        }
    }
    tracing::debug!("upstream watcher stopped");
}

async fn accept_loop(
    listener: TcpListener,
    mut streams: mpsc::Receiver<BoxStream>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let stream: BoxStream = tokio::select! {
            _ = stop.changed() => break,
            Some(s) = streams.recv() => s,
            r = listener.accept() => match r {
                Ok((stream, _addr)) => {
                    let _ = stream.set_nodelay(true);
                    Box::new(stream)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let shared = shared.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            // Everything before a session's loop (handshake, request,
            // redemption) runs boxed and is freed when done: the task
            // itself keeps only the loop, which a live session holds for
            // hours.
            let r = match Box::pin(connection(stream, shared, stop)).await {
                Ok(Some(mut live)) => live.run().await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    conns.shutdown().await;
}

async fn send(ch: &mut Channel<BoxStream>, msg: &Down) -> Result<()> {
    ch.send(&msg.encode()?).await?;
    Ok(())
}

fn refusal_of(e: &Error) -> Refusal {
    match e {
        Error::ProofOfWork(_) => Refusal::ProofOfWork,
        Error::Token("spent") => Refusal::TokenSpent,
        Error::Token("key not accepted") => Refusal::TokenKeyRetired,
        Error::Token(_) => Refusal::TokenInvalid,
        Error::Refused(r) => *r,
        Error::ShuttingDown => Refusal::ShuttingDown,
        Error::Store(_) | Error::Internal(_) | Error::Io { .. } => Refusal::Busy,
        _ => Refusal::BadRequest,
    }
}

/// A connection up to its answer, or up to a session's loop: `Some` is an
/// opened session, for the caller to [`LiveSession::run`].
async fn connection(
    stream: BoxStream,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Option<LiveSession>> {
    let t = shared.cfg.handshake_timeout;
    // The handshake and the first request are boxed: this future is
    // boxed by the caller anyway, but their states are large and only
    // one of them is alive at a time.
    let mut ch = Box::pin(anonmirror_overlay::accept(
        stream,
        &shared.noise,
        &channel_params(),
        t,
    ))
    .await?;
    let first = Box::pin(tokio::time::timeout(t, ch.recv()))
        .await
        .map_err(|_| Error::Gone("no request after the handshake"))??
        .ok_or(Error::Gone("closed before a request"))?;
    let up = match Up::decode(&first) {
        Ok(up) => up,
        Err(e) => {
            let _ = Box::pin(send(&mut ch, &Down::Refused(Refusal::BadRequest))).await;
            return Err(e);
        }
    };
    // A session lasts hours: the request's bytes (token and announcement,
    // decoded into `up`) must not stay in its task all that time.
    drop(first);
    let result = match up {
        Up::OpenSession {
            token,
            announcement,
        } => {
            return open_session(ch, shared, token, announcement, stop)
                .await
                .map(Some);
        }
        other => Box::pin(handle(&shared, other)).await,
    };
    match result {
        Ok(msgs) => {
            for m in msgs {
                Box::pin(send(&mut ch, &m)).await?;
            }
        }
        Err(e) => {
            Box::pin(send(&mut ch, &Down::Refused(refusal_of(&e)))).await?;
            tracing::debug!(error = %e, "request refused");
        }
    }
    let _ = Box::pin(ch.shutdown()).await;
    Ok(None)
}

async fn ask<T>(
    tx: &mpsc::Sender<impl Send>,
    make: impl FnOnce(oneshot::Sender<T>) -> SessionOrKey,
) -> Result<T> {
    let _ = tx;
    let (reply, rx) = oneshot::channel();
    match make(reply) {
        SessionOrKey::Key(tx, cmd) => tx.send(cmd).await.map_err(|_| Error::ShuttingDown)?,
        SessionOrKey::Session(tx, cmd) => tx.send(cmd).await.map_err(|_| Error::ShuttingDown)?,
    }
    rx.await.map_err(|_| Error::ShuttingDown)
}

enum SessionOrKey {
    Key(mpsc::Sender<KeyCmd>, KeyCmd),
    Session(mpsc::Sender<SessionCmd>, SessionCmd),
}

/// Verifies a token's signature under an accepted key and spends it.
async fn redeem(shared: &Shared, token: &[u8]) -> Result<Epoch> {
    let key_id = token_key_id(token).ok_or(Error::Token("malformed"))?;
    let ring = shared.keys.borrow().clone();
    let (epoch, key) = ring
        .accepting(&key_id)
        .ok_or(Error::Token("key not accepted"))?;
    let v = shared.scheme.verify(&key.public, token)?;
    let fresh = ask(&shared.key_tx, |reply| {
        SessionOrKey::Key(
            shared.key_tx.clone(),
            KeyCmd::Spend {
                epoch,
                nonce: v.nonce,
                reply,
            },
        )
    })
    .await??;
    if !fresh {
        return Err(Error::Token("spent"));
    }
    tracing::debug!("token redeemed");
    Ok(Epoch(epoch))
}

async fn push(shared: &Shared, repository: String, version: u64) -> Result<usize> {
    ask(&shared.session_tx, |reply| {
        SessionOrKey::Session(
            shared.session_tx.clone(),
            SessionCmd::Push {
                repository,
                version,
                reply,
            },
        )
    })
    .await
}

async fn handle(shared: &Arc<Shared>, up: Up) -> Result<Vec<Down>> {
    let cfg = &shared.cfg;
    match up {
        Up::Register(stamp) => register(shared, stamp).await,
        Up::Keys => Ok(vec![Down::Keys(shared.keys.borrow().published())]),
        Up::Issue {
            credential,
            epoch,
            requests,
        } => {
            let ring = shared.keys.borrow().clone();
            if epoch != ring.current {
                return Err(Error::Refused(Refusal::TokenKeyRetired));
            }
            let key = ring
                .keys
                .get(&epoch)
                .ok_or(Error::Refused(Refusal::TokenKeyRetired))?
                .clone();
            let n = requests.len() as u32;
            ask(&shared.key_tx, |reply| {
                SessionOrKey::Key(
                    shared.key_tx.clone(),
                    KeyCmd::Buy {
                        credential,
                        epoch,
                        n,
                        reply,
                    },
                )
            })
            .await??
            .map_err(Error::Refused)?;
            let scheme = shared.scheme;
            let responses = blocking(move || {
                requests
                    .iter()
                    .map(|r| scheme.issue(&key.secret, r).map(ByteBuf::from))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
            tracing::debug!(count = responses.len(), "tokens issued");
            Ok(vec![Down::Issued { epoch, responses }])
        }
        Up::Lookup {
            item,
            size,
            repository,
            version,
            region,
            want,
        } => {
            let peers = ask(&shared.session_tx, |reply| {
                SessionOrKey::Session(
                    shared.session_tx.clone(),
                    SessionCmd::Lookup {
                        item,
                        size,
                        repository,
                        version,
                        region,
                        want: usize::from(want),
                        reply,
                    },
                )
            })
            .await?;
            Ok(vec![Down::Peers(peers)])
        }
        Up::Directory { region } => {
            let peers = ask(&shared.session_tx, |reply| {
                SessionOrKey::Session(
                    shared.session_tx.clone(),
                    SessionCmd::Directory {
                        region: region.clone(),
                        reply,
                    },
                )
            })
            .await?;
            let now = cfg.clock.unix_secs();
            let snap = Snapshot {
                epoch: Epoch::containing(now, cfg.epoch_secs).0,
                generated: now,
                region,
                peers,
            };
            let (bytes, sig) = shared.signing.sign(&snap)?;
            let mut out = vec![Down::DirectoryHead {
                total: bytes.len() as u64,
                signature: Sig(sig),
            }];
            out.extend(
                bytes
                    .chunks(MAX_PART)
                    .map(|c| Down::DirectoryPart(ByteBuf::from(c.to_vec()))),
            );
            Ok(out)
        }
        Up::Report { session, .. } => {
            // The item and range are the client's evidence; the rendezvous
            // cannot check them (it holds no data), so only the strike
            // counts. They are deliberately not logged or kept.
            let out = ask(&shared.session_tx, |reply| {
                SessionOrKey::Session(
                    shared.session_tx.clone(),
                    SessionCmd::Report {
                        key: session,
                        reply,
                    },
                )
            })
            .await?;
            tracing::debug!(?out, "report");
            Ok(vec![Down::Ack])
        }
        Up::Notify {
            secret,
            repository,
            version,
        } => {
            let Some(want) = cfg.notify_secret_hash else {
                return Err(Error::Refused(Refusal::NotifyUnauthorized));
            };
            // blake3::Hash compares in constant time.
            if blake3::hash(&secret) != blake3::Hash::from_bytes(want) {
                return Err(Error::Refused(Refusal::NotifyUnauthorized));
            }
            push(shared, repository, version).await?;
            Ok(vec![Down::Ack])
        }
        Up::Popularity { token, report } => {
            let epoch = redeem(shared, &token).await?;
            cfg.reports
                .accept(epoch, &report)
                .map_err(|_| Error::Refused(Refusal::BadRequest))?;
            Ok(vec![Down::Ack])
        }
        Up::PopularityCounts => popularity_counts(shared).await,
        Up::Pong { .. } | Up::OpenSession { .. } => Err(Error::Protocol("out of place")),
    }
}

/// The signed counts of the last epoch that has any, with the live level
/// populations; `NoCounts` before any epoch has completed.
async fn popularity_counts(shared: &Arc<Shared>) -> Result<Vec<Down>> {
    let cfg = &shared.cfg;
    let now = cfg.clock.unix_secs();
    let current = Epoch::containing(now, cfg.epoch_secs);
    // Encoding a counting array takes a millisecond or so: off the runtime.
    let sink = cfg.reports.clone();
    let Some((epoch, counts)) = blocking(move || Ok(sink.publishable(current))).await? else {
        return Ok(vec![Down::NoCounts]);
    };
    let levels = ask(&shared.session_tx, |reply| {
        SessionOrKey::Session(shared.session_tx.clone(), SessionCmd::Levels(reply))
    })
    .await?;
    let mut level_peers = [0u64; 4];
    for (level, n) in levels {
        if let Some(slot) = level_peers.get_mut(usize::from(level)) {
            *slot = n;
        }
    }
    let published = PublishedCounts {
        epoch: epoch.0,
        generated: now,
        level_peers,
        counts: ByteBuf::from(counts),
    };
    let (bytes, sig) = shared.signing.sign_counts(&published)?;
    if bytes.len() as u64 > MAX_COUNTS {
        return Err(Error::Internal(
            "popularity counts exceed MAX_COUNTS".into(),
        ));
    }
    let mut out = vec![Down::CountsHead {
        total: bytes.len() as u64,
        signature: Sig(sig),
    }];
    out.extend(
        bytes
            .chunks(MAX_PART)
            .map(|c| Down::CountsPart(ByteBuf::from(c.to_vec()))),
    );
    tracing::debug!("popularity counts published");
    Ok(out)
}

async fn register(shared: &Arc<Shared>, stamp: Stamp) -> Result<Vec<Down>> {
    let now = shared.cfg.clock.unix_secs();
    let digest = stamp.check(
        &shared.noise.public(),
        now,
        shared.cfg.credentials.pow_difficulty,
    )?;
    let (credential, expires) = ask(&shared.key_tx, |reply| {
        SessionOrKey::Key(
            shared.key_tx.clone(),
            KeyCmd::Register {
                stamp_digest: digest,
                stamp_time: stamp.time,
                reply,
            },
        )
    })
    .await??;
    tracing::debug!("credential registered");
    Ok(vec![Down::Registered {
        credential,
        expires,
    }])
}

/// Opens a session: spends the token, enters the announcement in the
/// table and says so to the peer.
async fn open_session(
    mut ch: Channel<BoxStream>,
    shared: Arc<Shared>,
    token: ByteBuf,
    ann: Announcement,
    stop: watch::Receiver<bool>,
) -> Result<LiveSession> {
    if let Err(e) = Box::pin(redeem(&shared, &token)).await {
        Box::pin(send(&mut ch, &Down::Refused(refusal_of(&e)))).await?;
        return Err(e);
    }
    drop(token);
    let pushes = shared.pushes.subscribe();
    let (drop_tx, dropped) = oneshot::channel();
    let opened = Box::pin(ask(&shared.session_tx, |reply| {
        SessionOrKey::Session(
            shared.session_tx.clone(),
            SessionCmd::Open {
                ann,
                drop: drop_tx,
                reply,
            },
        )
    }))
    .await?;
    let id = match opened {
        Ok(id) => id,
        Err(r) => {
            Box::pin(send(&mut ch, &Down::Refused(r))).await?;
            return Err(Error::Refused(r));
        }
    };
    let sc = &shared.cfg.sessions;
    Box::pin(send(
        &mut ch,
        &Down::SessionOpened {
            ping_secs: sc.ping_interval.as_secs() as u32,
            silence_secs: sc.silence.as_secs() as u32,
        },
    ))
    .await?;
    let (tx, rx) = ch.split();
    Ok(LiveSession {
        tx,
        rx,
        shared,
        stop,
        pushes,
        dropped,
        id,
    })
}

/// An open session, as its task holds it for the session's whole life
/// (a hundred thousand of them at once): the channel's halves, the push
/// subscription and the owner's drop signal, nothing of the opening.
struct LiveSession {
    tx: anonmirror_overlay::noise::SendHalf<tokio::io::WriteHalf<BoxStream>>,
    rx: anonmirror_overlay::noise::RecvHalf<tokio::io::ReadHalf<BoxStream>>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    pushes: broadcast::Receiver<Arc<[u8]>>,
    dropped: oneshot::Receiver<()>,
    id: SessionId,
}

impl LiveSession {
    /// Pings, pongs and pushes until silence, close or shutdown.
    ///
    /// By reference: the caller's future holds the session once, and this
    /// one only the loop's own state (an `async fn` taking `self` by value
    /// keeps it twice).
    async fn run(&mut self) -> Result<()> {
        let (every, silence) = (
            self.shared.cfg.sessions.ping_interval,
            self.shared.cfg.sessions.silence,
        );
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        let mut last_heard = Instant::now();
        let mut nonce = 0u64;
        let mut buf = Vec::new();
        // The sends the loop makes now and then (a ping or a push every
        // few seconds at most) are boxed rather than kept inline in the
        // task's future.
        let result: Result<()> = loop {
            let silence_at = last_heard + silence;
            tokio::select! {
                _ = self.stop.changed() => {
                    let bye = Down::Refused(Refusal::ShuttingDown).encode()?;
                    let _ = Box::pin(self.tx.send(&bye)).await;
                    break Ok(());
                }
                _ = tokio::time::sleep_until(silence_at) => break Err(Error::Gone("silent past the ping deadline")),
                _ = ping.tick() => {
                    nonce = nonce.wrapping_add(1);
                    Box::pin(self.tx.send(&Down::Ping { nonce }.encode()?)).await?;
                }
                _ = &mut self.dropped => break Err(Error::Gone("dropped by the session owner")),
                msg = self.pushes.recv() => match msg {
                    Ok(m) => {
                        // The push deadline: a session that cannot take a push
                        // within it is dropped.
                        match Box::pin(tokio::time::timeout(PUSH_DEADLINE, self.tx.send(&m))).await {
                            Ok(r) => r?,
                            Err(_) => break Err(Error::Gone("missed the push deadline")),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        break Err(Error::Gone("fell a full push queue behind"));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        break Err(Error::Gone("dropped by the session owner"));
                    }
                },
                got = Box::pin(self.rx.recv_into(&mut buf)) => match got {
                    Ok(true) => {
                        match Up::decode(&buf) {
                            Ok(Up::Pong { .. }) => {
                                last_heard = Instant::now();
                                let _ = Box::pin(self.shared.session_tx.send(SessionCmd::Heard(self.id))).await;
                            }
                            Ok(_) => break Err(Error::Protocol("only pongs inside a session")),
                            Err(e) => break Err(e),
                        }
                    }
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e.into()),
                },
            }
        };
        let _ = Box::pin(self.shared.session_tx.send(SessionCmd::Close(self.id))).await;
        let _ = Box::pin(self.tx.shutdown()).await;
        result
    }
}
