//! The volunteer role on a manual clock, against a real rendezvous on
//! loopback (a low proof-of-work): sessions renewed at an epoch boundary,
//! kept alive by pings, and a new credential registered when the old one
//! expires or the rendezvous no longer knows it.
//!
//! Time that matters to the protocol (epochs, credential expiry) moves
//! only when a test moves the clock; pings run on the rendezvous's timer.
//! Waits are bounded, as guards against a hang, never as assertions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{Clock, Epoch, ManualClock, PeerKey, SeededEntropy, SystemClock};
use anonmirror_mirror::hooks::{AnnouncementFilter, PopularityAggregator};
use anonmirror_mirror::metrics::MetricsSnapshot;
use anonmirror_node::demo::{
    Package, StaticServer, fetch_all, generate_repository, node_policy, wait_announced,
};
use anonmirror_node::volunteer::{CREDENTIAL, read_credential};
use anonmirror_node::{Node, NodeOptions, SharedEntropy};
use anonmirror_privacy::Level;
use anonmirror_rendezvous::{Client, Rendezvous, ServerConfig};

/// The epoch, the same for the rendezvous and the volunteer.
const EPOCH_SECS: u64 = 86_400;
/// How long a wait may take before the test counts as hung.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// An upstream, a rendezvous and one volunteer at level open, sharing a
/// manual clock; the volunteer holds the repository and has announced.
struct Swarm {
    clock: ManualClock,
    packages: Vec<Package>,
    rendezvous: Rendezvous,
    node: Node,
    state_dir: PathBuf,
    _upstream: StaticServer,
    _dir: tempfile::TempDir,
}

impl Swarm {
    /// The swarm, the rendezvous pinging every `ping` and dropping a
    /// session silent for `silence`.
    async fn start(ping: Duration, silence: Duration) -> Swarm {
        let s = Swarm::empty(ping, silence).await;
        fetch_all(s.node.gateway_addr, &s.packages)
            .await
            .expect("the volunteer fetches the repository");
        s.node.reannounce();
        wait_announced(&s.node).await.expect("announced");
        s
    }

    /// The swarm with a volunteer that holds nothing yet: it announces
    /// nothing.
    async fn empty(ping: Duration, silence: Duration) -> Swarm {
        let dir = tempfile::tempdir().expect("tempdir");
        // Near the real time, so the repository's dates look sane to the
        // gateway; the clock moves only when a test says so.
        let clock = ManualClock::at_unix(SystemClock.unix_secs());
        let packages: Vec<Package> =
            generate_repository(&dir.path().join("upstream"), 6, 7).expect("repository");
        let upstream = StaticServer::start(dir.path().join("upstream"))
            .await
            .expect("upstream");
        let mut cfg = ServerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            dir.path().join("rendezvous"),
            Arc::new(AnnouncementFilter),
            Arc::new(PopularityAggregator::default()),
        );
        cfg.clock = Arc::new(clock.clone());
        cfg.epoch_secs = EPOCH_SECS;
        cfg.credentials.pow_difficulty = 4;
        cfg.maintenance_interval = Duration::from_millis(50);
        cfg.sessions.ping_interval = ping;
        cfg.sessions.silence = silence;
        // The volunteer's updates are minutes apart on the manual clock,
        // which the tests move faster than the rendezvous's own timer.
        cfg.sessions.update_gap = Duration::from_millis(100);
        let rendezvous = Rendezvous::start(cfg).await.expect("rendezvous");
        let volunteer_dir = dir.path().join("volunteer");
        let mut policy = node_policy(Level::Open, &volunteer_dir, &upstream.url(), &rendezvous);
        policy.announce.epoch_secs = EPOCH_SECS;
        let state_dir = policy.paths.state_dir.clone();
        let opts = NodeOptions {
            pow_difficulty: 4,
            clock: Arc::new(clock.clone()),
            entropy: SharedEntropy::new(SeededEntropy::new(11)),
            ..NodeOptions::default()
        };
        let node = Node::start(policy, opts).await.expect("node");
        Swarm {
            clock,
            packages,
            rendezvous,
            node,
            state_dir,
            _upstream: upstream,
            _dir: dir,
        }
    }

    /// The session keys the rendezvous's directory lists now.
    async fn listed(&self) -> Vec<PeerKey> {
        let c = Client::new(self.rendezvous.local_addr(), self.rendezvous.key());
        let snapshot = c
            .directory(None, &self.rendezvous.directory_key())
            .await
            .expect("directory");
        snapshot.peers.iter().map(|a| a.key).collect()
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.node.gateway().metrics().snapshot()
    }

    fn epoch(&self) -> Epoch {
        Epoch::containing(self.clock.unix_secs(), EPOCH_SECS)
    }

    /// Move the clock to one second into the next epoch.
    fn to_next_epoch(&self) {
        let now = self.clock.unix_secs();
        let next = (now / EPOCH_SECS + 1) * EPOCH_SECS + 1;
        self.clock.advance(Duration::from_secs(next - now));
    }

    /// The credential the volunteer keeps.
    fn credential(&self) -> Option<[u8; 32]> {
        read_credential(&self.state_dir.join(CREDENTIAL)).map(|c| c.credential)
    }

    /// One session listed, under a key other than `old`, and open on the
    /// volunteer's side.
    async fn wait_for_new_session(&self, old: PeerKey) -> PeerKey {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while tokio::time::Instant::now() < deadline {
            let listed = self.listed().await;
            if self.metrics().session_live == 1 && listed.len() == 1 && listed[0] != old {
                return listed[0];
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new session within the hang guard");
    }

    async fn stop(self) {
        self.node.stop().await;
        self.rendezvous.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_is_renewed_at_the_epoch_boundary() {
    let s = Swarm::start(Duration::from_secs(30), Duration::from_secs(90)).await;
    let first = s.listed().await;
    assert_eq!(first.len(), 1, "one session listed: {first:?}");
    let epoch = s.epoch();
    assert_eq!(s.node.summary().expect("selection").epoch, epoch);
    let opened = s.metrics().sessions_opened;

    s.to_next_epoch();
    let renewed = s.wait_for_new_session(first[0]).await;
    assert_ne!(renewed, first[0], "a new session key");
    assert_eq!(
        s.node.summary().expect("selection").epoch,
        epoch.next(),
        "the new session announces for the new epoch"
    );
    assert!(s.metrics().sessions_opened > opened);
    assert_eq!(
        s.rendezvous.session_count().await.expect("count"),
        1,
        "the old session ended"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_the_session_alive() {
    // Pinged every second, dropped after two of silence: many deadlines
    // pass while the test waits.
    let s = Swarm::start(Duration::from_secs(1), Duration::from_secs(2)).await;
    let first = s.listed().await;
    assert_eq!(first.len(), 1, "one session listed: {first:?}");
    let opened = s.metrics().sessions_opened;
    // Within the epoch, the wall clock moving changes nothing either.
    let now = s.clock.unix_secs();
    let left = EPOCH_SECS - now % EPOCH_SECS;
    s.clock
        .advance(Duration::from_secs(left.saturating_sub(60).min(3_600)));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        s.listed().await,
        first,
        "the same session is still listed after several ping deadlines"
    );
    assert_eq!(s.metrics().sessions_opened, opened, "no session reopened");
    assert_eq!(s.metrics().session_live, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_is_replaced_by_a_new_registration() {
    let s = Swarm::start(Duration::from_secs(30), Duration::from_secs(90)).await;
    let first = s.listed().await;
    assert_eq!(first.len(), 1, "one session listed: {first:?}");
    let old = s.credential().expect("a credential is kept");
    // Past the credential's 30 days (and so into a later epoch).
    s.clock.advance(Duration::from_secs(31 * 86_400));
    let renewed = s.wait_for_new_session(first[0]).await;
    assert_ne!(renewed, first[0]);
    let new = s.credential().expect("a credential is kept");
    assert_ne!(new, old, "a new credential was registered");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_the_rendezvous_forgot_is_replaced_by_a_new_registration() {
    let s = Swarm::start(Duration::from_secs(30), Duration::from_secs(90)).await;
    let first = s.listed().await;
    assert_eq!(first.len(), 1, "one session listed: {first:?}");
    // A credential the rendezvous never issued, valid for a long time
    // by its own account: what the volunteer holds after the rendezvous
    // lost its state.
    let forgotten = [0x5a; 32];
    let expires = s.clock.unix_secs() + 20 * 86_400;
    std::fs::write(
        s.state_dir.join(CREDENTIAL),
        format!("{} {expires}\n", hex(&forgotten)),
    )
    .expect("write the credential");
    assert_eq!(s.credential(), Some(forgotten));
    s.node.reannounce();
    let renewed = s.wait_for_new_session(first[0]).await;
    assert_ne!(renewed, first[0]);
    let new = s.credential().expect("a credential is kept");
    assert_ne!(new, forgotten, "a new credential was registered");
    s.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The announcement listed now for the volunteer: its session key and
/// which of `packages` it claims.
async fn claimed(s: &Swarm, packages: &[Package]) -> Option<(PeerKey, Vec<bool>)> {
    use anonmirror_rendezvous::FilterCheck;
    let c = Client::new(s.rendezvous.local_addr(), s.rendezvous.key());
    let snapshot = c
        .directory(None, &s.rendezvous.directory_key())
        .await
        .expect("directory");
    let a = snapshot.peers.first()?;
    let holds = packages
        .iter()
        .map(|p| {
            AnnouncementFilter.holds(&a.filter, s.epoch(), &anonmirror_core::ItemKey(p.sha256))
        })
        .collect();
    Some((a.key, holds))
}

/// Moves the clock a minute at a time, letting the volunteer's two-second
/// tick see each step, until `done`; returns the seconds moved. The clock
/// moves at most `limit`.
async fn advance_until<F: std::future::Future<Output = bool>>(
    s: &Swarm,
    limit: Duration,
    mut done: impl FnMut() -> F,
) -> Option<Duration> {
    let mut moved = Duration::ZERO;
    loop {
        // Several ticks of the volunteer's timer per step.
        for _ in 0..60 {
            if done().await {
                return Some(moved);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if moved >= limit {
            return None;
        }
        s.clock.advance(Duration::from_secs(60));
        moved += Duration::from_secs(60);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_that_started_empty_announces_what_it_fetched_within_minutes() {
    let s = Swarm::empty(Duration::from_secs(30), Duration::from_secs(90)).await;
    let (first, second) = s.packages.split_at(3);
    // At level open an empty announcement opens a session all the same.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while s.metrics().session_live == 0 || claimed(&s, &s.packages).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (key, holds) = claimed(&s, &s.packages).await.expect("listed");
    assert_eq!(holds, [false; 6], "nothing held, nothing claimed");
    let claims = |want: [bool; 6]| {
        let s = &s;
        move || async move {
            claimed(s, &s.packages)
                .await
                .is_some_and(|(_, h)| h == want)
        }
    };

    // It fetches half of the repository through its own gateway: the
    // session announces it within ten minutes of the clock, in place.
    fetch_all(s.node.gateway_addr, first).await.expect("fetch");
    let moved = advance_until(
        &s,
        Duration::from_secs(600),
        claims([true, true, true, false, false, false]),
    )
    .await
    .expect("announced within ten minutes");
    // Not at once: the first change waits a random delay of at least a
    // minute, so the announcement does not time the download.
    assert!(moved >= Duration::from_secs(60), "{moved:?}");

    // The other half, a second update.
    fetch_all(s.node.gateway_addr, second).await.expect("fetch");
    advance_until(&s, Duration::from_secs(600), claims([true; 6]))
        .await
        .expect("updated within ten minutes");
    let (same, _) = claimed(&s, &s.packages).await.expect("listed");
    assert_eq!(same, key, "the same session, updated in place");
    assert_eq!(s.metrics().sessions_opened, 1);
    let updates =
        std::fs::read_to_string(s.state_dir.join(anonmirror_node::volunteer::UPDATES_FILE))
            .expect("updates recorded");
    assert_eq!(updates.trim(), format!("epoch {} updates 2", s.epoch().0));
    s.stop().await;
}
