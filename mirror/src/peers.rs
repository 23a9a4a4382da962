//! Where the gateway finds peers for an item: the rendezvous's signed
//! directory, matched locally ([`crate::directory`]) when its key is
//! pinned, else the rendezvous's anonymous lookup per item; minus peers
//! that recently failed this node.
//!
//! A peer that was blamed, stalled, could not be reached or lost a hedge
//! without sending a byte is set aside locally, with a backoff: first for
//! [`SET_ASIDE_FIRST`], twice as long at each failure in a row, at most
//! [`SET_ASIDE`]; a delivery clears it. Asking a failing peer again for the
//! next package would only wait for the same failure (and, when every peer
//! is stalled, make every package pay the hedge deadline), while one slow
//! moment must not cost a good peer ten minutes. Blamed peers are also
//! reported to the rendezvous, which counts strikes per session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anonmirror_channel::ChannelParams;
use anonmirror_core::Entropy as _;
use anonmirror_core::{Epoch, ItemKey, PeerKey, Sensitive};
use anonmirror_overlay::swarm::{Blame, PeerAddr};
use anonmirror_privacy::Level;
use async_trait::async_trait;

use crate::directory::{self, LocalDirectory};

/// How long a peer is set aside after its first failure in a row.
pub const SET_ASIDE_FIRST: Duration = Duration::from_secs(5);
/// The longest a failing peer is set aside.
pub const SET_ASIDE: Duration = Duration::from_secs(600);

/// A peer to try, with the channel parameters its session was opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Contact and session key.
    pub addr: PeerAddr,
    /// The level it serves at.
    pub level: Level,
    /// The epoch of its session.
    pub epoch: Epoch,
}

impl Candidate {
    /// The prologue parameters of a channel to it.
    pub fn params(&self) -> ChannelParams {
        ChannelParams::new(self.level, self.epoch)
    }
}

/// A source of candidates.
#[async_trait]
pub trait PeerSource: Send + Sync + 'static {
    /// Up to a handful of peers holding `item` (of `size` bytes) of
    /// `repository`, at least as fresh as `version`. Errors are logged by
    /// the source and give no candidates.
    async fn candidates(
        &self,
        repository: &str,
        version: u64,
        item: ItemKey,
        size: u64,
    ) -> Vec<Candidate>;

    /// A peer served bad data for `item`, at `offset..offset + len`.
    async fn report(&self, peer: &Candidate, item: ItemKey, offset: u64, len: u64);

    /// A peer stalled or could not be reached: nobody is to blame, but it
    /// is not asked again for a while.
    fn report_unavailable(&self, peer: &Candidate);

    /// A peer served its part of an item: its failures are forgiven.
    fn report_served(&self, peer: &Candidate);

    /// The package manager is at work (it fetched an index): a source may
    /// open channels to likely peers now, before the first item is asked.
    fn warm_up(&self) {}
}

/// Peers set aside after failing, with a backoff (see the module docs).
#[derive(Debug, Default)]
pub struct SetAside {
    /// Per peer: until when, and how many failures in a row.
    until: Mutex<HashMap<PeerKey, (Instant, u32)>>,
}

/// The most failures in a row remembered; past them a peer keeps getting
/// [`SET_ASIDE`], and a peer that stays silent is forgotten only when its
/// entry is pruned after its last set-aside ran out.
const MAX_FAILURES: u32 = 16;

impl SetAside {
    /// Set `peer` aside after one more failure: [`SET_ASIDE_FIRST`] after
    /// the first in a row, doubling, at most [`SET_ASIDE`].
    pub fn add(&self, peer: PeerKey) {
        self.add_at(peer, Instant::now());
    }

    fn add_at(&self, peer: PeerKey, now: Instant) {
        if let Ok(mut m) = self.until.lock() {
            // An entry whose time ran out long ago (a whole SET_ASIDE) is
            // history: the peer starts again from the first failure.
            m.retain(|_, (t, _)| *t + SET_ASIDE > now);
            let failures = m.get(&peer).map_or(0, |(_, f)| *f).saturating_add(1);
            let failures = failures.min(MAX_FAILURES);
            let wait = SET_ASIDE_FIRST
                .saturating_mul(1 << (failures - 1).min(20))
                .min(SET_ASIDE);
            m.insert(peer, (now + wait, failures));
        }
    }

    /// `peer` delivered: it is usable at once and starts again from the
    /// first failure.
    pub fn clear(&self, peer: &PeerKey) {
        if let Ok(mut m) = self.until.lock() {
            m.remove(peer);
        }
    }

    /// Whether `peer` is set aside now.
    pub fn contains(&self, peer: &PeerKey) -> bool {
        self.contains_at(peer, Instant::now())
    }

    fn contains_at(&self, peer: &PeerKey, now: Instant) -> bool {
        self.until
            .lock()
            .map(|m| m.get(peer).is_some_and(|(t, _)| *t > now))
            .unwrap_or(false)
    }
}

/// How long a request waits for the gateway's first directory fetch to
/// end (it starts with the node, before the package manager's first
/// request, so this is rarely felt).
pub const FIRST_DIRECTORY_WAIT: Duration = Duration::from_secs(3);

/// Candidates from a rendezvous.
#[derive(Debug)]
pub struct RendezvousPeers {
    client: anonmirror_rendezvous::Client,
    region: Option<String>,
    want: u8,
    aside: SetAside,
    own: std::sync::Mutex<Option<PeerKey>>,
    reach_onions: bool,
    /// The pinned directory key: with it, candidates come from the local
    /// directory and no lookup is ever sent.
    pinned: Option<[u8; 32]>,
    directory: std::sync::RwLock<Option<Arc<LocalDirectory>>>,
    /// Whether a first fetch of the directory has ended (either way).
    attempted: tokio::sync::watch::Sender<bool>,
    /// Where the directory's size is shown.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Handed a few peers of the directory when the package manager is at
    /// work, to open channels to before any request.
    warm_up: Option<WarmUpHook>,
    /// When the last warm-up was.
    warmed: Mutex<Option<Instant>>,
    /// When a warm-up was asked for before any directory was there.
    warm_wanted: Mutex<Option<Instant>>,
}

/// Opens channels to the peers it is given (see
/// [`RendezvousPeers::with_warm_up`]).
pub type WarmUp = Arc<dyn Fn(Vec<Candidate>) + Send + Sync>;

/// A [`WarmUp`], shown by name only.
struct WarmUpHook(WarmUp);

impl std::fmt::Debug for WarmUpHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WarmUp")
    }
}

/// Peers a gateway opens channels to ahead of requests.
pub const WARM_PEERS: usize = 4;

/// The least time between two warm-ups (channels idle out after 20 s).
pub const WARM_EVERY: Duration = Duration::from_secs(10);

impl RendezvousPeers {
    /// Ask `client`, preferring `region`, for up to `want` peers.
    pub fn new(client: anonmirror_rendezvous::Client, region: Option<String>, want: u8) -> Self {
        RendezvousPeers {
            client,
            region,
            want,
            aside: SetAside::default(),
            own: std::sync::Mutex::new(None),
            reach_onions: false,
            pinned: None,
            directory: std::sync::RwLock::new(None),
            attempted: tokio::sync::watch::Sender::new(false),
            metrics: None,
            warm_up: None,
            warmed: Mutex::new(None),
            warm_wanted: Mutex::new(None),
        }
    }

    /// When the package manager is at work ([`PeerSource::warm_up`]: it
    /// fetched an index), hands `warm_up` up to [`WARM_PEERS`] peers of the
    /// directory (this node's region first), at most once per
    /// [`WARM_EVERY`], so that its first package request finds a channel
    /// open. An idle node dials nobody.
    pub fn with_warm_up(mut self, warm_up: WarmUp) -> Self {
        self.warm_up = Some(WarmUpHook(warm_up));
        self
    }

    /// Shows the directory's size in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Match items locally against the directory signed by `pinned`
    /// (kept fresh by [`RendezvousPeers::keep_directory`]) instead of a
    /// lookup per item.
    pub fn with_directory(mut self, pinned: [u8; 32]) -> Self {
        self.pinned = Some(pinned);
        self
    }

    /// Fetches the directory once and installs it; how many peers it
    /// lists. Without a pinned key there is nothing to fetch.
    pub async fn refresh_directory(&self) -> Result<usize, anonmirror_rendezvous::Error> {
        let Some(pinned) = self.pinned else {
            return Ok(0);
        };
        let fetched = self.client.directory(None, &pinned).await;
        let result = fetched.map(|snapshot| self.install(snapshot));
        self.attempted.send_replace(true);
        result
    }

    /// Matches requests against `snapshot` from now on; its usable peers.
    fn install(&self, snapshot: anonmirror_rendezvous::directory::Snapshot) -> usize {
        let (dir, left_out) = LocalDirectory::new(snapshot, tokio::time::Instant::now());
        if left_out > 0 {
            tracing::debug!(left_out, "directory entries not usable");
        }
        let n = dir.len();
        if let Some(m) = &self.metrics {
            m.directory(n);
        }
        let wanted = self.warm_wanted.lock().ok().and_then(|mut w| w.take());
        if wanted.is_some_and(|t| t.elapsed() < WARM_EVERY) {
            self.warm_from(&dir);
        }
        if let Ok(mut d) = self.directory.write() {
            *d = Some(Arc::new(dir));
        }
        n
    }

    /// Keeps the directory current until `cancel`: watched (the rendezvous
    /// sends it at each change), or, while a watch cannot be had, fetched
    /// every [`directory::REFRESH`] (a fifth more or less at random), a
    /// watch tried again at each.
    pub async fn keep_directory(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let Some(pinned) = self.pinned else {
            return;
        };
        loop {
            match self.client.watch_directory(None, &pinned).await {
                Ok(mut watch) => loop {
                    let next = tokio::select! {
                        n = watch.next() => n,
                        () = cancel.cancelled() => return,
                    };
                    match next {
                        Ok(snapshot) => {
                            let n = self.install(snapshot);
                            self.attempted.send_replace(true);
                            tracing::debug!(peers = n, "directory received");
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "directory watch ended");
                            break;
                        }
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "no directory watch: fetching it");
                    match self.refresh_directory().await {
                        Ok(n) => tracing::debug!(peers = n, "directory fetched"),
                        Err(e) => tracing::info!(error = %e, "directory fetch failed"),
                    }
                }
            }
            let fifth = directory::REFRESH.as_millis() as u64 / 5;
            let jitter = anonmirror_core::OsEntropy.below(2 * fifth + 1);
            let wait =
                directory::REFRESH - Duration::from_millis(fifth) + Duration::from_millis(jitter);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// The directory to match against: once the first fetch has ended (or
    /// [`FIRST_DIRECTORY_WAIT`] passed), the last one fetched, if it is
    /// not older than [`directory::MAX_AGE`].
    async fn current_directory(&self) -> Option<Arc<LocalDirectory>> {
        let mut attempted = self.attempted.subscribe();
        let _ = tokio::time::timeout(FIRST_DIRECTORY_WAIT, attempted.wait_for(|a| *a)).await;
        let dir = self.directory.read().ok()?.clone()?;
        (dir.fetched().elapsed() <= directory::MAX_AGE).then_some(dir)
    }

    /// Whether this node's connections can reach onion services (they go
    /// through Tor). Without, candidates with an onion contact are
    /// dropped from every answer rather than dialled in vain.
    pub fn reaching_onions(mut self, yes: bool) -> Self {
        self.reach_onions = yes;
        self
    }

    /// Whether `c` is worth dialling: not set aside, not this node's own
    /// session, and reachable over this node's connections.
    fn usable(&self, c: &Candidate, own: Option<PeerKey>) -> bool {
        !self.aside.contains(&c.addr.key)
            && Some(c.addr.key) != own
            && (self.reach_onions || !c.addr.contact.is_onion())
    }

    /// This node's own session key while it serves: never a candidate of
    /// its own lookups.
    pub fn set_own(&self, key: Option<PeerKey>) {
        if let Ok(mut own) = self.own.lock() {
            *own = key;
        }
    }

    /// The set-aside list (the gateway adds failing peers to it).
    pub fn aside(&self) -> &SetAside {
        &self.aside
    }
}

/// A rendezvous candidate as the overlay dials it.
pub fn from_rendezvous(c: &anonmirror_rendezvous::msg::CandidateWire) -> Option<Candidate> {
    Some(Candidate {
        addr: PeerAddr {
            contact: anonmirror_core::Contact::from(c.contact.clone()),
            key: c.key,
        },
        level: Level::from_wire_byte(c.level)?,
        epoch: Epoch(c.epoch),
    })
}

#[async_trait]
impl PeerSource for RendezvousPeers {
    async fn candidates(
        &self,
        repository: &str,
        version: u64,
        item: ItemKey,
        size: u64,
    ) -> Vec<Candidate> {
        if self.pinned.is_some() {
            let own = self.own.lock().ok().and_then(|o| *o);
            return match self.current_directory().await {
                Some(dir) => dir.holders(
                    repository,
                    version,
                    &item,
                    self.region.as_deref(),
                    usize::from(want_for(size, self.want)),
                    |c| self.usable(c, own),
                ),
                None => Vec::new(),
            };
        }
        match self
            .client
            .lookup(
                item,
                size,
                repository,
                version,
                self.region.as_deref(),
                want_for(size, self.want),
            )
            .await
        {
            Ok(found) => {
                tracing::debug!(found = found.len(), "lookup answered");
                let own = self.own.lock().ok().and_then(|o| *o);
                found
                    .iter()
                    .filter_map(from_rendezvous)
                    .filter(|c| self.usable(c, own))
                    .collect()
            }
            Err(e) => {
                tracing::info!(item = %Sensitive::new(item), error = %e, "lookup failed");
                Vec::new()
            }
        }
    }

    async fn report(&self, peer: &Candidate, item: ItemKey, offset: u64, len: u64) {
        self.aside.add(peer.addr.key);
        if let Err(e) = self.client.report(peer.addr.key, item, offset, len).await {
            tracing::info!(error = %e, "report to the rendezvous failed");
        }
    }

    fn report_unavailable(&self, peer: &Candidate) {
        self.aside.add(peer.addr.key);
    }

    fn report_served(&self, peer: &Candidate) {
        self.aside.clear(&peer.addr.key);
    }

    fn warm_up(&self) {
        if self.warm_up.is_none() {
            return;
        }
        let dir = self.directory.read().ok().and_then(|d| d.clone());
        match dir.filter(|d| d.fetched().elapsed() <= directory::MAX_AGE) {
            Some(dir) => self.warm_from(&dir),
            // The first directory is on its way: warm up when it arrives.
            None => {
                if let Ok(mut wanted) = self.warm_wanted.lock() {
                    *wanted = Some(Instant::now());
                }
            }
        }
    }
}

impl RendezvousPeers {
    /// Offers the warm-up hook a few usable peers of `dir`, unless it was
    /// offered some within [`WARM_EVERY`].
    fn warm_from(&self, dir: &LocalDirectory) {
        let Some(WarmUpHook(warm_up)) = &self.warm_up else {
            return;
        };
        let Ok(mut warmed) = self.warmed.lock() else {
            return;
        };
        if warmed.is_some_and(|t| t.elapsed() < WARM_EVERY) {
            return;
        }
        *warmed = Some(Instant::now());
        let own = self.own.lock().ok().and_then(|o| *o);
        warm_up(dir.some(WARM_PEERS, self.region.as_deref(), |c| self.usable(c, own)));
    }
}

/// Peers worth asking for an item of `size` bytes: one per MiB piece, up
/// to `most` (each candidate counts against a peer's limit at the
/// rendezvous, so a small package asks for one).
pub fn want_for(size: u64, most: u8) -> u8 {
    let pieces = size.div_ceil(1 << 20).max(1);
    pieces.min(u64::from(most.max(1))) as u8
}

/// What to report for a blame: the failing range (the whole item when no
/// range is known).
pub fn blamed_range(blame: &Blame, size: u64) -> (u64, u64) {
    match blame {
        Blame::BadData { offset } => (
            *offset,
            anonmirror_store::verify::GROUP_SIZE.min(size - (*offset).min(size)),
        ),
        _ => (0, size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_items_ask_for_one_peer() {
        assert_eq!(want_for(5_000, 4), 1);
        assert_eq!(want_for(1 << 20, 4), 1);
        assert_eq!(want_for((1 << 20) + 1, 4), 2);
        assert_eq!(want_for(200 << 20, 4), 4);
        assert_eq!(want_for(200 << 20, 0), 1);
    }

    fn candidate(contact: anonmirror_core::Contact, key: u8) -> Candidate {
        Candidate {
            addr: PeerAddr {
                contact,
                key: PeerKey([key; 32]),
            },
            level: Level::Balanced,
            epoch: Epoch(1),
        }
    }

    #[test]
    fn onion_candidates_only_for_nodes_on_tor() {
        let client = anonmirror_rendezvous::Client::new(
            "127.0.0.1:1".parse().expect("addr"),
            PeerKey([1; 32]),
        );
        let tcp = candidate(
            anonmirror_core::Contact::Tcp("192.0.2.1:7879".parse().expect("addr")),
            2,
        );
        let onion = candidate(
            anonmirror_core::Contact::Onion {
                host: format!("{}.onion", "a".repeat(56)),
                port: 7879,
            },
            3,
        );
        let clearnet = RendezvousPeers::new(client.clone(), None, 4);
        assert!(clearnet.usable(&tcp, None));
        assert!(!clearnet.usable(&onion, None), "no Tor, no onion");
        let on_tor = RendezvousPeers::new(client, None, 4).reaching_onions(true);
        assert!(on_tor.usable(&tcp, None));
        assert!(on_tor.usable(&onion, None));
        assert!(
            !on_tor.usable(&onion, Some(PeerKey([3; 32]))),
            "never itself"
        );
        on_tor.aside().add(PeerKey([2; 32]));
        assert!(!on_tor.usable(&tcp, None), "set aside");
    }

    #[test]
    fn set_aside_peers_are_remembered() {
        let s = SetAside::default();
        let k = PeerKey([7; 32]);
        assert!(!s.contains(&k));
        s.add(k);
        assert!(s.contains(&k));
        assert!(!s.contains(&PeerKey([8; 32])));
        s.clear(&k);
        assert!(!s.contains(&k), "a delivery clears it");
    }

    #[test]
    fn failures_in_a_row_back_off_doubling_up_to_the_most() {
        let s = SetAside::default();
        let k = PeerKey([7; 32]);
        let t0 = Instant::now();
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            s.add_at(k, now);
            // Set aside just before its time runs out, free just after.
            let mut wait = Duration::ZERO;
            while s.contains_at(&k, now + wait) {
                wait += Duration::from_millis(500);
            }
            waits.push(wait);
            now += wait;
        }
        let secs: Vec<u64> = waits.iter().map(|w| w.as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        // A delivery starts it again from the first failure.
        s.clear(&k);
        s.add_at(k, now);
        assert!(s.contains_at(&k, now + Duration::from_secs(4)));
        assert!(!s.contains_at(&k, now + Duration::from_secs(6)));
        // So does a whole SET_ASIDE without failing.
        s.add_at(k, now + SET_ASIDE_FIRST); // second in a row: until now + 15 s
        let later = now + Duration::from_secs(15) + SET_ASIDE + Duration::from_secs(1);
        s.add_at(k, later);
        assert!(!s.contains_at(&k, later + Duration::from_secs(6)));
    }

    #[test]
    fn warm_up_offers_directory_peers_only_when_asked_and_at_most_every_ten_seconds() {
        use crate::directory::tests::{announcement, directory};
        let client = anonmirror_rendezvous::Client::new(
            "127.0.0.1:1".parse().expect("addr"),
            PeerKey([1; 32]),
        );
        let offered = Arc::new(Mutex::new(Vec::new()));
        let seen = offered.clone();
        let peers = RendezvousPeers::new(client, None, 4)
            .with_directory([0; 32])
            .with_warm_up(Arc::new(move |c: Vec<Candidate>| {
                seen.lock().expect("lock").push(c.len());
            }));
        let offers = || offered.lock().expect("lock").clone();
        // No directory yet: nobody to warm.
        peers.warm_up();
        assert!(offers().is_empty());
        let (dir, _) = directory((1..=6).map(|p| announcement(p, 9, &[p], None, 1)).collect());
        *peers.directory.write().expect("lock") = Some(Arc::new(dir));
        // Installing a directory dials nobody; the package manager's
        // activity does, four peers of it.
        assert!(offers().is_empty());
        peers.warm_up();
        assert_eq!(offers(), [WARM_PEERS]);
        // Again at once: nothing (the channels are still open).
        peers.warm_up();
        assert_eq!(offers(), [WARM_PEERS]);
        // Set-aside peers are not offered.
        *peers.warmed.lock().expect("lock") = None;
        for p in 1..=4u8 {
            peers.aside.add(PeerKey([p; 32]));
        }
        peers.warm_up();
        assert_eq!(offers(), [WARM_PEERS, 2]);
    }

    #[test]
    fn the_blamed_range_is_the_chunk_group_or_the_item() {
        let g = anonmirror_store::verify::GROUP_SIZE;
        assert_eq!(blamed_range(&Blame::BadData { offset: g }, 3 * g), (g, g));
        assert_eq!(blamed_range(&Blame::BadData { offset: g }, g + 5), (g, 5));
        assert_eq!(blamed_range(&Blame::BadOutboard, 9), (0, 9));
    }
}
