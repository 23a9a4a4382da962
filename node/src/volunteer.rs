//! The volunteer role: sessions with the rendezvous, the selection of
//! what to announce, and the peer server of each session.
//!
//! Per session (DESIGN.md §4–§5):
//!
//! 1. a credential (registered with a proof-of-work, kept in the state
//!    directory, dropped and registered anew when the rendezvous no longer
//!    knows it or it is past its validity);
//! 2. two tokens for the epoch: one pays for a popularity report (from the
//!    held, current, allowed items, randomized with the node's permanent
//!    memo), one opens the session;
//! 3. the selection pipeline decides the announcement, and the peer
//!    server serves exactly it: an item held but not announced (denied,
//!    below the level's floor, over the budget) is answered `NotFound`,
//!    as one never heard of, so that probing learns nothing the
//!    announcement does not say; padding (announced, not held) is fetched
//!    before the session opens ([`PADDING_FETCH_LIMIT`]), so that held and
//!    padding items are answered alike; one still missing is fetched when
//!    first asked for;
//! 4. a peer server with a fresh Noise key for the session, within the
//!    policy's limits; serving over TCP, a forward of its port asked of the
//!    home router (PCP, NAT-PMP: [`crate::mapping`]) and the rendezvous's
//!    dial-back to the address it sees: only a contact that dial-back
//!    reached is announced, and a node nobody can reach announces nothing
//!    and says why (`status`, [`CONTACT_FILE`] for `audit`);
//! 5. the announcement follows the store: the first change is announced
//!    after a random delay ([`UPDATE_DELAY_SECS`]) with every change made
//!    meanwhile, updates at least [`UPDATE_GAP_SECS`] apart and at most
//!    [`MAX_UPDATES_PER_EPOCH`] an epoch, in place in the same session;
//! 6. the session stays open, answering pings, until the epoch ends, a
//!    repository's snapshot changes (its indexes are fetched again, new
//!    versions of held packages prefetched, and a new session announces the
//!    new selection), or it fails (reconnect after a jittered backoff, with
//!    fresh tokens).
//!
//! Nothing a session carries is linked to another: a new token, a new
//! Noise key, and a new announcement every time.
//!
//! Time comes from the node's [`Clock`] (epochs, credential expiry) and
//! randomness from its [`Entropy`](anonmirror_core::Entropy), so the role runs on a manual clock in
//! tests. It stops when the node's [`CancellationToken`] is cancelled; its
//! prefetches run in the node's [`TaskTracker`] and stop with it too.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anonmirror_announce::snapshot::LevelPeers;
use anonmirror_announce::{
    Aggregator, CurrentIndex, PermanentMemo, PopularitySnapshot, ReportParams, encode_report,
    select,
};
use anonmirror_core::{Clock, Epoch, ItemKey, Sensitive};
use anonmirror_mirror::Gateway;
use anonmirror_mirror::job::Want;
use anonmirror_mirror::metrics::ContactState;
use anonmirror_mirror::peers::RendezvousPeers;
use anonmirror_mirror::upstream::join;
use anonmirror_rendezvous::msg::ReachOutcome;
// The channel, the transports, the store and the peer server.
use anonmirror_channel::{ChannelParams, Listener, StaticKeypair, TcpTransport};
use anonmirror_overlay::server::ServerConfig;
use anonmirror_privacy::{Level, Policy};
use anonmirror_rendezvous::credential::ClientCredential;
use anonmirror_rendezvous::{Backoff, Client, SessionEvent};
use anonmirror_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::carrier::Serving;
use crate::err::{Error, Result};
use crate::mapping::PortMap;
use crate::options::SharedEntropy;

/// The inventory the last selection saw, in the state directory.
pub const AUDIT_INVENTORY: &str = "inventory.txt";
/// The current index the last selection saw.
pub const AUDIT_INDEX: &str = "index.txt";
/// The popularity snapshot the last selection used (announce's `AMPS`).
pub const AUDIT_POPULARITY: &str = "popularity.amps";
/// The credential (hex and expiry), in the state directory.
pub const CREDENTIAL: &str = "credential";
/// How often this session's announcement followed the store this epoch
/// (`epoch E updates N`), in the state directory, for `anonmirror audit`.
pub const UPDATES_FILE: &str = "announce-updates.txt";

/// The first change to what the store holds is announced after a delay
/// drawn uniformly from this range (seconds), together with every change
/// made meanwhile: the update's time places a download only within a few
/// minutes, and a burst of downloads goes out as one update.
pub const UPDATE_DELAY_SECS: std::ops::RangeInclusive<u64> = 60..=300;

/// Updates of one session's announcement are at least this far apart
/// (the rendezvous drops a session that updates more than once a minute).
pub const UPDATE_GAP_SECS: u64 = 300;

/// Updates of one session's announcement per epoch, at most: an observer
/// of the directory sees at most this many moments a day at which the
/// node's holdings changed.
pub const MAX_UPDATES_PER_EPOCH: u32 = 48;

/// How peers reach this node (its contact, or why it has none), in the
/// state directory, for `anonmirror audit`.
pub const CONTACT_FILE: &str = "contact.txt";

/// The longest a session waits for its padding to be fetched before it
/// opens.
pub const PADDING_FETCH_LIMIT: Duration = Duration::from_secs(300);

/// How long a volunteer the rendezvous could not reach serves only its
/// link (`lan.advertise`) before it tries the dial-back again.
pub const LINK_ONLY_RETRY: Duration = Duration::from_secs(600);

/// What the volunteer's last selection decided (for `demo` and logs;
/// `anonmirror audit` shows the whole pipeline).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The level.
    pub level: Level,
    /// The epoch.
    pub epoch: Epoch,
    /// Items held.
    pub held: usize,
    /// Items announced (held and padding).
    pub announced: usize,
    /// Announced items not held.
    pub padding: usize,
    /// I(A), bits.
    pub exposure_bits: f64,
    /// Whether the announcement was within the exposure budget (and so
    /// made).
    pub within_budget: bool,
}

/// The volunteer role of a node (started by [`crate::node::Node::start`]).
pub(crate) struct Volunteer {
    /// How peers reach it.
    pub(crate) serving: Serving,
    /// arti, which hosts its onion services.
    #[cfg(feature = "onion-service")]
    pub(crate) arti: Option<Arc<anonmirror_channel::transport::tor::TorTransport>>,
    pub(crate) policy: Policy,
    /// Leading zero bits of the registration proof-of-work.
    pub(crate) pow_difficulty: u8,
    pub(crate) entropy: SharedEntropy,
    pub(crate) client: Client,
    pub(crate) store: Store,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) peers: Option<Arc<RendezvousPeers>>,
    /// Volunteers on the link, when LAN discovery is on: told this node's
    /// own session key, as `peers` is.
    pub(crate) lan: Option<Arc<anonmirror_mirror::lan::LanPeers>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) state_dir: PathBuf,
    /// The node's stop signal.
    pub(crate) cancel: CancellationToken,
    /// Where prefetches run, so that the node waits for them.
    pub(crate) prefetches: TaskTracker,
    /// "Announce again now" (not a stop signal).
    pub(crate) reannounce: Arc<tokio::sync::Notify>,
    pub(crate) summary: Arc<std::sync::Mutex<Option<Summary>>>,
    /// Tokens bought and not spent: a session that failed before it was
    /// opened (Tor not ready, the rendezvous unreachable) hands its token
    /// back, so that retries do not use up the credential's quota for the
    /// epoch.
    pub(crate) spare: std::sync::Mutex<Vec<anonmirror_rendezvous::Token>>,
    /// The epoch whose popularity report was accepted: one report an
    /// epoch, however often sessions are opened.
    pub(crate) reported: std::sync::Mutex<Option<Epoch>>,
}

/// Why a session ended without failing.
enum Ended {
    /// Announce again now (new epoch, new snapshot).
    Reopen,
    /// Nothing to announce this epoch (nothing held, or over the budget):
    /// try again after this long, or once what the store holds changed
    /// (its [`Store::changes`] at the selection).
    Withheld(Duration, u64),
    /// The node is stopping.
    Stopping,
}

impl Volunteer {
    /// Where this session's peers connect: `serve.listen`, or a fresh
    /// onion service (whose port is `serve.listen`'s, or the default peer
    /// port where that is 0: nothing binds it, and an onion service's port
    /// must be fixed).
    async fn peer_listener(&self) -> Result<PeerListener> {
        let onion_port = match self.policy.serve.listen.port() {
            0 => anonmirror_privacy::PEER_PORT,
            p => p,
        };
        match self.serving {
            #[cfg(feature = "onion-service")]
            Serving::ArtiOnion => {
                let arti = self
                    .arti
                    .as_ref()
                    .ok_or_else(|| Error::Internal("no arti to host the onion service".into()))?;
                let l = arti
                    .host_onion_service(onion_port)
                    .await
                    .map_err(|e| Error::transport("launching this session's onion service", e))?;
                Ok(PeerListener::Onion(l))
            }
            Serving::DaemonOnion => {
                let l = anonmirror_channel::transport::control::DaemonOnionListener::launch(
                    &self.policy.transport.control,
                    onion_port,
                )
                .await
                .map_err(|e| {
                    Error::transport("asking the Tor daemon for this session's onion service", e)
                })?;
                Ok(PeerListener::DaemonOnion(l))
            }
            _ => {
                let l = TcpTransport
                    .listen(&anonmirror_core::Contact::Tcp(self.policy.serve.listen))
                    .await
                    .map_err(|e| {
                        Error::transport(
                            format!("listening for peers on {}", self.policy.serve.listen),
                            e,
                        )
                    })?;
                Ok(PeerListener::Tcp(l))
            }
        }
    }

    /// Sessions, one after another, until the node stops.
    pub(crate) async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut entropy = self.entropy.clone();
        let mut served_before = 0u64;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let wait = match self.session(&mut served_before).await {
                Ok(Ended::Stopping) => return,
                Ok(Ended::Reopen) => {
                    backoff.reset();
                    continue;
                }
                Ok(Ended::Withheld(d, changes)) => {
                    if self.wait_for_holdings(d, changes).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    self.gateway.metrics().session(false);
                    let d = backoff.next_delay(&mut entropy);
                    tracing::info!(error = %e, retry_in = ?d, "session ended");
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.reannounce.notified() => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// After a withheld announcement: waits `d`, or until what the store
    /// holds changed since `changes` and the random delay of an update
    /// passed ([`Follow`]), or "announce again now". True if the node is
    /// stopping.
    async fn wait_for_holdings(&self, d: Duration, mut changes: u64) -> bool {
        let until = tokio::time::Instant::now() + d;
        // Nothing announced: only the delay counts.
        let mut follow = Follow::new(Vec::new(), 0);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return false,
                _ = self.reannounce.notified() => return false,
                _ = self.cancel.cancelled() => return true,
                _ = tick.tick() => {}
            }
            let at = self.clock.unix_secs();
            let now = self.store.changes();
            if now != changes {
                changes = now;
                follow.changed(at, &mut self.entropy.clone());
            }
            if follow.due.is_some_and(|t| at >= t) {
                return false;
            }
        }
    }

    fn epoch(&self, now: u64) -> (Epoch, Duration) {
        let len = self.policy.announce.epoch_secs.max(1);
        let e = now / len;
        (Epoch(e), Duration::from_secs((e + 1) * len - now))
    }

    async fn credential(&self, now: u64) -> Result<ClientCredential> {
        let path = self.state_dir.join(CREDENTIAL);
        if let Some(c) = read_credential(&path)
            && c.usable(now)
        {
            return Ok(c);
        }
        tracing::info!("registering a new credential");
        let c = self
            .client
            .register(now, self.pow_difficulty, self.entropy.clone())
            .await
            .map_err(|source| Error::Rendezvous {
                what: "registering",
                source,
            })?;
        write_private(
            &path,
            format!("{} {}\n", hex::encode(c.credential), c.expires).as_bytes(),
        )
        .map_err(|e| Error::state(format!("saving the credential {}", path.display()), e))?;
        Ok(c)
    }

    fn memo(&self, params: &ReportParams) -> Result<PermanentMemo> {
        let path = self.state_dir.join("memo");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(m) = PermanentMemo::from_bytes(&bytes)
            && m.f() == params.f
        {
            return Ok(m);
        }
        // A memo is drawn once per peer and f; a new f needs new coins.
        let m = PermanentMemo::draw(params, &mut self.entropy.clone());
        write_private(&path, &m.to_bytes()).map_err(|e| {
            Error::state(format!("saving the permanent memo {}", path.display()), e)
        })?;
        Ok(m)
    }

    /// What `anonmirror audit` reads by default: this selection's
    /// inventory, index and popularity, owner-readable only (they say what
    /// this machine holds).
    fn keep_audit_inputs(
        &self,
        inventory: &[ItemKey],
        index: &CurrentIndex,
        snapshot: &PopularitySnapshot,
    ) {
        let files = [
            (
                AUDIT_INVENTORY,
                anonmirror_audit::inputs::write_inventory(inventory).into_bytes(),
            ),
            (
                AUDIT_INDEX,
                anonmirror_audit::inputs::write_index(index.entries()).into_bytes(),
            ),
            (AUDIT_POPULARITY, snapshot.to_bytes().unwrap_or_default()),
        ];
        for (name, bytes) in files {
            if let Err(e) = write_private(&self.state_dir.join(name), &bytes) {
                tracing::warn!(file = name, error = %e, "could not keep the audit's inputs");
            }
        }
    }

    fn current_index(&self) -> CurrentIndex {
        CurrentIndex::new(self.gateway.repos().flat_map(|r| r.entries()))
    }

    /// The popularity of the current items, from the counts the
    /// rendezvous published for the last epoch (verified against the
    /// pinned directory key); an empty snapshot while there are none, or
    /// when no directory key is pinned (then only `open`, whose floor is
    /// zero, announces anything).
    async fn snapshot(&self, epoch: Epoch, index: &CurrentIndex) -> PopularitySnapshot {
        let empty = |source: &str| PopularitySnapshot {
            epoch,
            prior: false,
            source: source.to_owned(),
            peers: 0,
            level_peers: LevelPeers::default(),
            params: None,
            z: 1.0,
            items: BTreeMap::new(),
        };
        let Some(key) = self
            .policy
            .rendezvous
            .as_ref()
            .and_then(|r| r.directory_key)
        else {
            return empty("no directory key pinned");
        };
        match self.client.popularity_counts(&key).await {
            Ok(Some(published)) => match Aggregator::from_bytes(&published.counts) {
                Ok(agg) if agg.epoch().0 == published.epoch => {
                    // Counted by package: each current item takes its
                    // package's estimate, whatever its version.
                    let universe = index.popularity_universe();
                    let level_peers = LevelPeers(published.level_peers);
                    let by_package =
                        tokio::task::spawn_blocking(move || agg.snapshot(&universe, level_peers))
                            .await
                            .unwrap_or_else(|_| empty("popularity estimation failed"));
                    index.items_by_package(by_package)
                }
                Ok(_) => empty("published counts disagree on their epoch"),
                Err(e) => {
                    tracing::warn!(error = %e, "published popularity counts unreadable");
                    empty("published counts unreadable")
                }
            },
            Ok(None) => empty("none published yet"),
            Err(e) => {
                tracing::info!(error = %e, "popularity counts unavailable");
                empty("unavailable")
            }
        }
    }

    /// `n` tokens of `epoch`: spare ones first (those of other epochs are
    /// dropped), the rest bought with `cred`.
    async fn tokens(
        &self,
        cred: &ClientCredential,
        now: u64,
        epoch: Epoch,
        n: usize,
    ) -> Result<Vec<anonmirror_rendezvous::Token>> {
        let mut have: Vec<anonmirror_rendezvous::Token> = match self.spare.lock() {
            Ok(mut spare) => {
                spare.retain(|t| t.epoch == epoch);
                let take = spare.len().min(n);
                spare.drain(..take).collect()
            }
            Err(_) => Vec::new(),
        };
        if have.len() == n {
            return Ok(have);
        }
        match self
            .client
            .buy_tokens(cred, now, epoch, n - have.len())
            .await
        {
            Ok(t) => {
                have.extend(t);
                Ok(have)
            }
            Err(e) => {
                // Not spent: kept for the next attempt.
                if let Ok(mut spare) = self.spare.lock() {
                    spare.extend(have);
                }
                use anonmirror_rendezvous::msg::Refusal;
                if let anonmirror_rendezvous::Error::Refused(
                    Refusal::UnknownCredential
                    | Refusal::CredentialExpired
                    | Refusal::CredentialBlacklisted,
                ) = e
                {
                    // Forget it: the next attempt registers anew.
                    let _ = std::fs::remove_file(self.state_dir.join(CREDENTIAL));
                }
                Err(Error::Rendezvous {
                    what: "buying tokens",
                    source: e,
                })
            }
        }
    }

    /// The selection over what the store holds now, recorded for the
    /// summary and the audit.
    fn select(
        &self,
        epoch: Epoch,
        index: &CurrentIndex,
        snapshot: &PopularitySnapshot,
    ) -> Result<anonmirror_announce::Selection> {
        let inventory: Vec<ItemKey> = self
            .store
            .list()
            .map_err(|source| Error::Store {
                what: "listing the store",
                source,
            })?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let selection = select(&self.policy, epoch, &inventory, index, snapshot);
        self.keep_audit_inputs(&inventory, index, snapshot);
        if let Ok(mut s) = self.summary.lock() {
            *s = Some(Summary {
                level: self.policy.level,
                epoch,
                held: inventory.len(),
                announced: selection.announced.len(),
                padding: selection.padding.len(),
                exposure_bits: selection.exposure.total(),
                within_budget: selection.within_budget,
            });
        }
        Ok(selection)
    }

    /// The announcement over what the store holds now, and what it
    /// announces, if it differs from `filter` (what the session announces)
    /// and is within the exposure budget; `None` keeps the session's
    /// announcement.
    fn reselect(
        &self,
        epoch: Epoch,
        index: &CurrentIndex,
        snapshot: &PopularitySnapshot,
        filter: &[u8],
    ) -> Option<(Vec<u8>, Announced)> {
        let selection = match self.select(epoch, index, snapshot) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the announcement cannot follow the store");
                return None;
            }
        };
        let Some(announcement) = selection.announcement.as_ref() else {
            tracing::info!(
                bits = selection.exposure.total(),
                "announcement kept: what is held now is over the exposure budget"
            );
            return None;
        };
        let bytes = announcement.to_bytes();
        (bytes != filter).then(|| (bytes, Announced::of(&selection)))
    }

    /// Fetches `padding` into the store (within the cache cap), for at
    /// most [`PADDING_FETCH_LIMIT`]; what is left is fetched when first
    /// asked for.
    async fn fetch_padding(&self, padding: &std::collections::BTreeSet<ItemKey>) {
        let items: Vec<ItemKey> = padding.iter().copied().collect();
        let n = items.len();
        let fetch = prefetch(self.gateway.clone(), items, self.cancel.clone());
        match tokio::time::timeout(PADDING_FETCH_LIMIT, fetch).await {
            Ok(()) => tracing::info!(padding = n, "padding fetched before it is announced"),
            Err(_) => tracing::info!(
                padding = n,
                "padding fetch cut short: the rest is fetched when first asked for"
            ),
        }
    }

    /// Writes [`UPDATES_FILE`] for the audit.
    fn record_updates(&self, epoch: Epoch, updates: u32) {
        let line = format!("epoch {} updates {updates}\n", epoch.0);
        if let Err(e) = write_private(&self.state_dir.join(UPDATES_FILE), line.as_bytes()) {
            tracing::warn!(error = %e, "could not record the announcement updates");
        }
    }

    async fn session(&self, served_before: &mut u64) -> Result<Ended> {
        let now = self.clock.unix_secs();
        let (epoch, epoch_left) = self.epoch(now);
        let cred = self.credential(now).await?;
        let report_due = self.reported.lock().map_or(true, |r| *r != Some(epoch));
        let mut tokens = self
            .tokens(&cred, now, epoch, 1 + usize::from(report_due))
            .await?;
        let mut index = self.current_index();
        let mut snapshot = self.snapshot(epoch, &index).await;
        let mut seen_changes = self.store.changes();
        let selection = self.select(epoch, &index, &snapshot)?;

        // The popularity report.
        let params =
            ReportParams::from_policy(&self.policy.popularity.randomization).map_err(|e| {
                Error::Config {
                    key: "popularity.randomization",
                    reason: e.to_string(),
                }
            })?;
        let memo = self.memo(&params)?;
        // By package, not file (`CurrentIndex::popularity_universe`).
        let held: HashSet<ItemKey> = index.popularity_keys(&selection.reportable);
        let universe = index.popularity_universe();
        let report = encode_report(
            &params,
            epoch,
            &memo,
            &universe,
            &held,
            &mut self.entropy.clone(),
        )
        .map_err(|e| Error::Internal(format!("encoding the popularity report: {e}")))?;
        if report_due && let Some(token) = tokens.pop() {
            match self.client.popularity(&token, report.to_bytes()).await {
                Ok(()) => {
                    if let Ok(mut r) = self.reported.lock() {
                        *r = Some(epoch);
                    }
                }
                Err(e) => tracing::info!(error = %e, "popularity report refused"),
            }
        }
        // The session's token: handed back below unless the rendezvous
        // took it (or refused it as a token).
        let Some(token) = tokens.pop() else {
            return Err(Error::Internal("no token left for the session".into()));
        };
        let keep = |token| {
            if let Ok(mut spare) = self.spare.lock() {
                spare.push(token);
            }
        };

        // Padding is fetched before it is announced (the report above
        // counts only what was held before): a peer asking for it gets the
        // same answer as for a held item, never a `NotFound` that tells
        // the two apart. What was fetched is no download of the user's:
        // the announcement does not follow it.
        if selection.announcement.is_some() && !selection.padding.is_empty() {
            self.fetch_padding(&selection.padding).await;
            seen_changes = self.store.changes();
        }
        let Some(announcement) = selection.announcement.as_ref() else {
            tracing::info!(
                bits = selection.exposure.total(),
                "announcement withheld this epoch (over the exposure budget or nothing to announce)"
            );
            keep(token);
            return Ok(Ended::Withheld(
                epoch_left.min(Duration::from_secs(300)),
                seen_changes,
            ));
        };

        // The peer server, with this session's key.
        let keypair =
            StaticKeypair::generate().map_err(|e| Error::Internal(format!("session key: {e}")))?;
        let listener = match self.peer_listener().await {
            Ok(l) => l,
            Err(e) => {
                keep(token);
                return Err(e);
            }
        };
        let local = match listener.local_contact() {
            Ok(c) => c,
            Err(e) => {
                keep(token);
                return Err(Error::transport("the peer listener's address", e));
            }
        };
        let public = keypair.public();
        // What the server serves: exactly the announcement, updated with
        // it (`Follow`).
        let announced = Arc::new(std::sync::RwLock::new(Announced::of(&selection)));
        let gateway = self.gateway.clone();
        let (prefetches, cancel) = (self.prefetches.clone(), self.cancel.clone());
        let missed = announced.clone();
        let on_miss: anonmirror_overlay::server::OnMiss = Arc::new(move |key: &ItemKey| {
            if missed.read().is_ok_and(|a| a.padding.contains(key)) {
                prefetches.spawn(prefetch(gateway.clone(), vec![*key], cancel.clone()));
            }
        });
        let served = announced.clone();
        let serves: anonmirror_overlay::server::Serves =
            Arc::new(move |key: &ItemKey| served.read().is_ok_and(|a| a.items.contains(key)));
        let server = anonmirror_overlay::server::spawn(
            listener,
            self.store.clone(),
            keypair,
            ChannelParams::new(self.policy.level, epoch),
            ServerConfig {
                max_clients: self.policy.serve.max_clients as usize,
                upload_rate: Some(self.policy.serve.upload_rate.bytes_per_sec()),
                on_miss: Some(on_miss),
                serves: Some(serves),
                ..ServerConfig::default()
            },
        )
        .map_err(|e| Error::transport("starting the peer server", e))?;

        // A TCP listener's own address (0.0.0.0, a private address behind
        // a router) is not what others reach: the rendezvous dials back
        // the address it sees, and only a contact it reached is announced.
        // Behind a router, a forward of the port (asked for with PCP or
        // NAT-PMP, if the policy lets it) is what makes it reachable.
        let mut port_map = None;
        let listen = match &local {
            anonmirror_core::Contact::Tcp(addr) => Some(*addr),
            _ => None,
        };
        let contact = match local {
            anonmirror_core::Contact::Tcp(addr) => {
                if self.policy.serve.map_port && !addr.ip().is_loopback() {
                    match PortMap::request(addr.port()).await {
                        Ok(m) => port_map = Some(m),
                        Err(e) => tracing::info!(error = %e, "no port forward from the router"),
                    }
                }
                let port = port_map.as_ref().map_or(addr.port(), |m| m.external_port);
                match self.reachable(port, public, epoch, port_map.as_ref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        keep(token);
                        if let Some(m) = port_map {
                            m.remove().await;
                        }
                        // Unreachable from outside, but its neighbours
                        // may still be served, if the policy says so.
                        let ended = match self.advertise(addr, public, epoch, true) {
                            Some(advertised) => {
                                tracing::info!(
                                    error = %e,
                                    "unreachable from other networks: serving this link only"
                                );
                                let ended = self.serve_link_only(&server, epoch_left).await;
                                advertised.stop().await;
                                Ok(ended)
                            }
                            None => Err(e),
                        };
                        server.shutdown().await;
                        return ended;
                    }
                }
            }
            onion => {
                self.set_contact(ContactState::Onion, None, None);
                onion
            }
        };
        let contact = match anonmirror_rendezvous::msg::ContactWire::try_from(contact) {
            Ok(c) => c,
            Err(_) => {
                keep(token);
                if let Some(m) = port_map {
                    m.remove().await;
                }
                server.shutdown().await;
                return Err(Error::Internal(
                    "a peer listener whose contact cannot be announced".into(),
                ));
            }
        };

        let mut snapshots: Vec<(String, u64)> = self
            .gateway
            .repos()
            .map(|r| (r.name.clone(), r.version()))
            .collect();
        snapshots.sort();
        let wire = anonmirror_rendezvous::msg::AnnouncementWire {
            contact,
            key: public,
            max_clients: self.policy.serve.max_clients,
            upload_rate: self.policy.serve.upload_rate.bytes_per_sec(),
            region: self.policy.announce.region.clone(),
            snapshots,
            // Never refused for its size (`_FILTER_FITS` below).
            filter: announcement.to_bytes(),
        };
        let mut follow = Follow::new(wire.filter.clone(), now);
        self.record_updates(epoch, 0);
        let mut live = match self.client.open_session(&token, wire).await {
            Ok(l) => l,
            Err(e) => {
                use anonmirror_rendezvous::msg::Refusal;
                // Refused as a token: spent, forged or retired. Anything
                // else (unreachable, a contact refused): try it again.
                if !matches!(
                    e,
                    anonmirror_rendezvous::Error::Refused(
                        Refusal::TokenSpent | Refusal::TokenInvalid | Refusal::TokenKeyRetired
                    )
                ) {
                    keep(token);
                }
                if let Some(m) = port_map {
                    m.remove().await;
                }
                server.shutdown().await;
                return Err(Error::Rendezvous {
                    what: "opening the session",
                    source: e,
                });
            }
        };
        self.gateway.metrics().session(true);
        self.set_own(Some(public));
        let advertised = listen.and_then(|addr| self.advertise(addr, public, epoch, false));
        tracing::info!(
            announced = selection.announced.len(),
            padding = selection.padding.len(),
            "session open"
        );

        let mut tick = tokio::time::interval(Duration::from_secs(2));
        // The epoch ends when the node's clock says so; the timer covers a
        // clock that moves on its own, the check at each tick one moved by
        // hand (or jumping, as a wall clock may).
        let epoch_end = now.saturating_add(epoch_left.as_secs());
        let deadline = tokio::time::sleep(epoch_left);
        tokio::pin!(deadline);
        let ended = loop {
            tokio::select! {
                ev = live.next_event() => match ev {
                    Ok(SessionEvent::Updated) => {}
                    Ok(SessionEvent::SnapshotChanged { repository, version }) => {
                        tracing::info!(%repository, version, "new snapshot pushed");
                        self.follow(&repository).await;
                        break Ok(Ended::Reopen);
                    }
                    Err(source) => break Err(Error::Rendezvous { what: "the session", source }),
                },
                _ = &mut deadline => break Ok(Ended::Reopen),
                _ = self.reannounce.notified() => break Ok(Ended::Reopen),
                // Announced but unreachable helps nobody: the session
                // ends, and the next one (after the usual backoff, so a
                // flapping Tor daemon does not burn the epoch's tokens)
                // gets a new listener.
                _ = server.unreachable() => {
                    break Err(Error::Tor(
                        "the peer listener is gone (its onion service stopped)".into(),
                    ));
                }
                _ = self.cancel.cancelled() => break Ok(Ended::Stopping),
                _ = tick.tick() => {
                    let n = server.stats().bytes_served.load(std::sync::atomic::Ordering::Relaxed);
                    self.gateway.metrics().set_served_to_peers(*served_before + n);
                    let at = self.clock.unix_secs();
                    if at >= epoch_end {
                        break Ok(Ended::Reopen);
                    }
                    let changes = self.store.changes();
                    if changes != seen_changes {
                        seen_changes = changes;
                        follow.changed(at, &mut self.entropy.clone());
                    }
                    if follow.due.is_some_and(|t| at >= t) {
                        follow.due = None;
                        // The index may have been learned since (a node
                        // that started empty fetched it with its first
                        // package): the popularity follows it.
                        let now_index = self.current_index();
                        if now_index.items() != index.items() {
                            snapshot = self.snapshot(epoch, &now_index).await;
                            index = now_index;
                        }
                        if let Some((filter, now_announced)) = self.reselect(epoch, &index, &snapshot, &follow.filter) {
                            if let Err(source) = live.update(filter.clone()).await {
                                break Err(Error::Rendezvous { what: "updating the announcement", source });
                            }
                            // Served from the moment it is announced; new
                            // padding fetched now, not when first asked.
                            let padding: Vec<ItemKey> = now_announced.padding.iter().copied().collect();
                            if !padding.is_empty() {
                                self.prefetches.spawn(prefetch(self.gateway.clone(), padding, self.cancel.clone()));
                            }
                            if let Ok(mut a) = announced.write() {
                                *a = now_announced;
                            }
                            follow.filter = filter;
                            follow.last = at;
                            follow.updates += 1;
                            self.record_updates(epoch, follow.updates);
                            tracing::info!(updates = follow.updates, "announcement updated: what this node holds changed");
                        }
                    }
                }
            }
        };
        live.close().await;
        let n = server
            .stats()
            .bytes_served
            .load(std::sync::atomic::Ordering::Relaxed);
        *served_before += n;
        self.gateway.metrics().set_served_to_peers(*served_before);
        if let Some(m) = port_map {
            m.remove().await;
        }
        if let Some(a) = advertised {
            a.stop().await;
        }
        server.shutdown().await;
        self.set_own(None);
        self.gateway.metrics().session(false);
        ended
    }

    /// This node's own session key (or none) for its gateway's peer
    /// sources: it never asks itself.
    fn set_own(&self, key: Option<anonmirror_core::PeerKey>) {
        if let Some(p) = &self.peers {
            p.set_own(key);
        }
        if let Some(l) = &self.lan {
            l.set_own(key);
        }
    }

    /// Advertises the peer server listening on `listen` (session `key`)
    /// on the link, if the policy says so and the listener can be reached
    /// from it; `link_only` when the rendezvous could not reach it (so
    /// that `audit` says it serves its neighbours only).
    fn advertise(
        &self,
        listen: std::net::SocketAddr,
        key: anonmirror_core::PeerKey,
        epoch: Epoch,
        link_only: bool,
    ) -> Option<crate::lan::Advertisement> {
        if !self.policy.lan.advertise {
            return None;
        }
        if listen.ip().is_loopback() {
            tracing::info!("lan.advertise: the peer listener is on loopback: nothing advertised");
            return None;
        }
        match crate::lan::Advertisement::start(listen.port(), key, self.policy.level, epoch) {
            Ok(a) => {
                let line = if link_only {
                    "lan: advertised on this link, which is all it serves (the rendezvous could not reach it)\n"
                } else {
                    "lan: advertised on this link too\n"
                };
                self.note_contact(line);
                tracing::info!(port = listen.port(), "advertised on the link (mDNS)");
                Some(a)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not advertise on the link");
                None
            }
        }
    }

    /// Serves the link only (its advertisement is up) until the epoch
    /// ends, [`LINK_ONLY_RETRY`] passed (a forward may have been made
    /// since: the dial-back is tried again), announce-again-now, or the
    /// node stops.
    async fn serve_link_only(
        &self,
        server: &anonmirror_overlay::server::ServerHandle,
        epoch_left: Duration,
    ) -> Ended {
        tokio::select! {
            _ = tokio::time::sleep(epoch_left.min(LINK_ONLY_RETRY)) => Ended::Reopen,
            _ = self.reannounce.notified() => Ended::Reopen,
            _ = server.unreachable() => Ended::Reopen,
            _ = self.cancel.cancelled() => Ended::Stopping,
        }
    }

    /// Appends `line` to [`CONTACT_FILE`] (written by `set_contact`).
    fn note_contact(&self, line: &str) {
        use std::io::Write as _;
        let path = self.state_dir.join(CONTACT_FILE);
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(error = %e, "could not record the contact for the audit");
        }
    }

    /// The TCP contact others reach the peer server by, at `port`: the
    /// address the rendezvous saw, once its dial-back completed a
    /// handshake with `key` there (the server must be running).
    async fn reachable(
        &self,
        port: u16,
        key: anonmirror_core::PeerKey,
        epoch: Epoch,
        port_map: Option<&PortMap>,
    ) -> Result<anonmirror_core::Contact> {
        let r = self
            .client
            .reach(port, key, self.policy.level, epoch)
            .await
            .map_err(|source| Error::Rendezvous {
                what: "asking the rendezvous to dial back",
                source,
            })?;
        match (r.outcome, r.seen) {
            (ReachOutcome::Reached, Some(ip)) => {
                let contact = anonmirror_core::Contact::Tcp(std::net::SocketAddr::new(ip, port));
                self.set_contact(ContactState::Reached, Some(&contact), port_map);
                Ok(contact)
            }
            (outcome, _) => {
                let outcome = match outcome {
                    // Reached, but with no address to announce.
                    ReachOutcome::Reached => ReachOutcome::NoAddress,
                    o => o,
                };
                self.set_contact(ContactState::Unreachable(outcome), None, port_map);
                Err(Error::Unreachable { port, outcome })
            }
        }
    }

    /// Records how peers reach this node: in the metrics (`status`) and in
    /// [`CONTACT_FILE`] (`audit`).
    fn set_contact(
        &self,
        state: ContactState,
        contact: Option<&anonmirror_core::Contact>,
        port_map: Option<&PortMap>,
    ) {
        self.gateway.metrics().contact(state);
        let forward = match port_map {
            Some(m) => format!(
                "; the router forwards port {} to it ({}, renewed while serving)",
                m.external_port, m.protocol
            ),
            None if self.serving == Serving::Tcp => {
                "; no forward from the router (none asked for, or PCP and NAT-PMP unanswered)"
                    .to_owned()
            }
            None => String::new(),
        };
        let line = match contact {
            Some(c) => format!("contact: {c}, {state}{forward}\n"),
            None => format!("contact: {state}{forward}\n"),
        };
        if let Err(e) = write_private(&self.state_dir.join(CONTACT_FILE), line.as_bytes()) {
            tracing::warn!(error = %e, "could not record the contact for the audit");
        }
    }

    /// A repository has a new snapshot: fetch its indexes again, and
    /// prefetch the new versions of packages held in their old version.
    async fn follow(&self, repository: &str) {
        let Some(repo) = self.gateway.repos().find(|r| r.name == repository).cloned() else {
            return;
        };
        let held: HashSet<ItemKey> = match self.store.list() {
            Ok(l) => l.into_iter().map(|(k, _)| k).collect(),
            Err(_) => return,
        };
        let held_names: HashSet<String> = repo
            .items()
            .iter()
            .filter(|i| held.contains(&i.key))
            .map(|i| i.name.clone())
            .collect();
        let refreshed = self.gateway.refresh(&repo).await;
        tracing::info!(repository, files = refreshed, "indexes fetched again");
        let newer: Vec<ItemKey> = repo
            .items()
            .iter()
            .filter(|i| held_names.contains(&i.name) && !held.contains(&i.key))
            .map(|i| i.key)
            .collect();
        if !newer.is_empty() {
            tracing::info!(repository, items = newer.len(), "prefetching new versions");
            prefetch(self.gateway.clone(), newer, self.cancel.clone()).await;
        }
    }
}

/// Fetch `items` through the gateway's fetcher, one at a time, while the
/// store has room for them, until `cancel`.
async fn prefetch(gateway: Arc<Gateway>, items: Vec<ItemKey>, cancel: CancellationToken) {
    let store = gateway.fetcher().store().clone();
    for key in items {
        if cancel.is_cancelled() {
            return;
        }
        let Some((repo, item)) = gateway
            .repos()
            .find_map(|r| r.item_by_key(&key).map(|i| (r.clone(), i)))
        else {
            continue;
        };
        let Some(size) = item.size else {
            continue;
        };
        if store.used_bytes() + size > store.cap() {
            tracing::debug!("prefetch stopped at the cache cap");
            return;
        }
        if matches!(store.meta(&key), Ok(Some(_))) {
            continue;
        }
        let job = gateway.fetcher().job(Want {
            key,
            size,
            repository: repo.name.clone(),
            version: repo.version(),
            url: join(&repo.base, &item.path),
        });
        // Stopping leaves the download to the fetcher, which the node
        // drains.
        let finished = tokio::select! {
            f = job.finished() => f,
            _ = cancel.cancelled() => return,
        };
        if let Err(e) = finished {
            tracing::debug!(item = %Sensitive::new(key), error = %e, "prefetch failed");
        }
    }
}

/// The credential kept at `path`, if any.
pub fn read_credential(path: &Path) -> Option<ClientCredential> {
    let text = std::fs::read_to_string(path).ok()?;
    let (hex_cred, expires) = text.trim().split_once(' ')?;
    let mut credential = [0u8; 32];
    hex::decode_to_slice(hex_cred, &mut credential).ok()?;
    Some(ClientCredential {
        credential,
        expires: expires.parse().ok()?,
    })
}

/// Write a secret file readable by its owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Where a session's peers connect.
enum PeerListener {
    Tcp(anonmirror_channel::transport::TcpTransportListener),
    #[cfg(feature = "onion-service")]
    Onion(anonmirror_channel::transport::tor::OnionListener),
    /// The Tor daemon's onion service (`tor-socks`).
    DaemonOnion(anonmirror_channel::transport::control::DaemonOnionListener),
}

impl Listener for PeerListener {
    type Stream = anonmirror_channel::transport::BoxStream;

    async fn accept(
        &mut self,
    ) -> std::io::Result<(Self::Stream, Option<anonmirror_core::Contact>)> {
        match self {
            PeerListener::Tcp(l) => {
                let (s, from) = l.accept().await?;
                Ok((Box::new(s), from))
            }
            #[cfg(feature = "onion-service")]
            PeerListener::Onion(l) => l.accept().await,
            PeerListener::DaemonOnion(l) => {
                let (s, from) = l.accept().await?;
                Ok((Box::new(s), from))
            }
        }
    }

    fn local_contact(&self) -> std::io::Result<anonmirror_core::Contact> {
        match self {
            PeerListener::Tcp(l) => l.local_contact(),
            #[cfg(feature = "onion-service")]
            PeerListener::Onion(l) => l.local_contact(),
            PeerListener::DaemonOnion(l) => l.local_contact(),
        }
    }
}

/// The largest announcement the layout makes is the largest filter the
/// rendezvous takes.
const _FILTER_FITS: () = assert!(
    anonmirror_announce::announcement::ANNOUNCEMENT_HEADER_LEN
        + anonmirror_announce::announcement::MAX_ANNOUNCEMENT_BITS as usize / 8
        == anonmirror_rendezvous::msg::MAX_FILTER
);

/// What a session announces, which is all its peer server serves.
struct Announced {
    /// Held items and padding.
    items: HashSet<ItemKey>,
    /// Of which not held when selected: fetched before the session opens,
    /// or when first asked for.
    padding: HashSet<ItemKey>,
}

impl Announced {
    fn of(selection: &anonmirror_announce::Selection) -> Announced {
        Announced {
            items: selection.announced.iter().copied().collect(),
            padding: selection.padding.iter().copied().collect(),
        }
    }
}

/// How a session's announcement follows what the store holds: batched
/// and delayed at random (see [`UPDATE_DELAY_SECS`]).
struct Follow {
    /// The filter the session announces now.
    filter: Vec<u8>,
    /// When the next update is due (clock seconds), once a change waits.
    due: Option<u64>,
    /// When the session last announced (opened, or updated).
    last: u64,
    /// Updates this session made.
    updates: u32,
}

impl Follow {
    /// Following a session that announced `filter` at `last`.
    fn new(filter: Vec<u8>, last: u64) -> Follow {
        Follow {
            filter,
            due: None,
            last,
            updates: 0,
        }
    }

    /// The store changed at `now`: an update is due after a random delay,
    /// unless one is due already or the epoch's updates are used up.
    fn changed(&mut self, now: u64, entropy: &mut dyn anonmirror_core::Entropy) {
        if self.due.is_some() || self.updates >= MAX_UPDATES_PER_EPOCH {
            return;
        }
        let (lo, hi) = (*UPDATE_DELAY_SECS.start(), *UPDATE_DELAY_SECS.end());
        let delay = lo + entropy.below(hi - lo + 1);
        self.due = Some((now + delay).max(self.last + UPDATE_GAP_SECS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an observer of the directory sees of a burst of downloads:
    /// one update, at a random moment one to five minutes after the first
    /// of them, never sooner than five minutes after the last
    /// announcement, and no more than the epoch's cap of updates.
    #[test]
    fn a_burst_of_changes_is_one_update_at_a_random_delay_within_the_caps() {
        let mut entropy = anonmirror_core::SeededEntropy::new(17);
        let mut delays = std::collections::BTreeSet::new();
        for trial in 0..1000u64 {
            let opened = 1_000_000 + trial;
            let mut f = Follow::new(Vec::new(), opened);
            let first = opened + 400;
            f.changed(first, &mut entropy);
            let due = f.due.expect("an update is due");
            // More downloads before it is due do not move it.
            for later in 1..20 {
                f.changed(first + later, &mut entropy);
                assert_eq!(f.due, Some(due));
            }
            let delay = due - first;
            assert!(UPDATE_DELAY_SECS.contains(&delay), "{delay}");
            delays.insert(delay);
            // A change right after the session opened waits the gap.
            let mut g = Follow::new(Vec::new(), opened);
            g.changed(opened + 1, &mut entropy);
            assert!(g.due.expect("due") >= opened + UPDATE_GAP_SECS);
        }
        // The delay is drawn, not fixed: 1000 draws over 241 values.
        assert!(delays.len() > 200, "{}", delays.len());
        let mut capped = Follow::new(Vec::new(), 0);
        capped.updates = MAX_UPDATES_PER_EPOCH;
        capped.changed(10_000, &mut entropy);
        assert_eq!(capped.due, None, "no update past the epoch's cap");
    }
}
