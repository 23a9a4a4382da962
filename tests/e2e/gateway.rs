//! The gateway with real package managers: apt and pacman fetch through
//! anonmirror nodes (in this process, on 127.0.0.1) from a real nginx
//! upstream and from volunteer peers found at a real rendezvous.
//!
//! Every downloaded file is checked against the repository's own index
//! (the fixtures' `check_file`), and the nodes' metrics and nginx's access
//! log say where the bytes came from.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_node::demo::{loopback_policy, wait_announced};
use anonmirror_node::{Node, NodeOptions};
use anonmirror_privacy::{Level, Repository, RepositoryKind};
use anonmirror_rendezvous::{Rendezvous, ServerConfig};

use crate::support::{
    self, APT_PROGRAMS, AptClient, AptRepo, Nginx, NginxOptions, PACMAN_PROGRAMS, Package,
    PacmanClient, PacmanRepo, PkgSpec, TestDir, check_files, mixed_specs, names, require,
};

/// The notify secret of the test rendezvous.
const NOTIFY_SECRET: [u8; 32] = [7; 32];

/// A rendezvous and nodes on one runtime that keeps running while the test
/// thread drives apt or pacman.
struct Swarm {
    rt: tokio::runtime::Runtime,
    rendezvous: Option<Rendezvous>,
    nodes: Vec<Node>,
    dir: std::path::PathBuf,
    repos: Vec<Repository>,
}

impl Swarm {
    fn new(dir: &std::path::Path, repos: Vec<Repository>) -> Swarm {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut cfg = ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            dir.join("rendezvous"),
            Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
            Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
        );
        cfg.credentials.pow_difficulty = 8;
        cfg.notify_secret_hash = Some(*blake3::hash(&NOTIFY_SECRET).as_bytes());
        let rendezvous = rt.block_on(Rendezvous::start(cfg)).expect("rendezvous");
        Swarm {
            rt,
            rendezvous: Some(rendezvous),
            nodes: Vec::new(),
            dir: dir.to_path_buf(),
            repos,
        }
    }

    fn rendezvous(&self) -> &Rendezvous {
        self.rendezvous.as_ref().expect("running")
    }

    /// A node at `level`; returns its index.
    fn node(&mut self, level: Level) -> usize {
        let i = self.nodes.len();
        let policy = loopback_policy(
            level,
            &self.dir.join(format!("node{i}")),
            self.repos.clone(),
            self.rendezvous(),
        );
        let opts = NodeOptions {
            pow_difficulty: 8,
            ..NodeOptions::default()
        };
        let node = self.rt.block_on(Node::start(policy, opts)).expect("node");
        self.nodes.push(node);
        i
    }

    /// An apt client in the test directory's `name`, pointed at node `i`'s
    /// gateway.
    fn apt(&self, i: usize, name: &str, repo: &AptRepo) -> AptClient {
        AptClient::new(
            &self.dir.join(name),
            &self.base(i, "deb"),
            repo.suite(),
            &repo.key(),
        )
    }

    fn base(&self, i: usize, repo: &str) -> String {
        format!("http://{}/{repo}", self.nodes[i].gateway_addr)
    }

    /// Announce anew what node `i` holds, and wait until it has.
    fn announce(&self, i: usize) {
        let before = self.metrics(i).sessions_opened;
        self.nodes[i].reannounce();
        self.rt.block_on(async {
            for _ in 0..200 {
                if self.metrics(i).sessions_opened > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            wait_announced(&self.nodes[i]).await.expect("announced");
        });
    }

    fn metrics(&self, i: usize) -> anonmirror_mirror::metrics::MetricsSnapshot {
        self.nodes[i].gateway().metrics().snapshot()
    }

    /// Wait until node `i`'s store holds every one of `packages`.
    fn wait_stored(&self, i: usize, packages: &[Package]) {
        let store = self.nodes[i].gateway().fetcher().store().clone();
        self.rt.block_on(support::wait_stored(&store, packages));
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        let rendezvous = self.rendezvous.take();
        self.rt.block_on(async move {
            for n in nodes {
                n.stop().await;
            }
            if let Some(r) = rendezvous {
                r.shutdown().await;
            }
        });
    }
}

fn apt_repo(nginx: &Nginx) -> Vec<Repository> {
    vec![Repository {
        name: "deb".to_owned(),
        kind: RepositoryKind::Apt,
        url: nginx.base_url(),
    }]
}

fn package_requests(nginx: &Nginx, packages: &[Package]) -> usize {
    let requests = nginx.requests();
    requests
        .iter()
        .filter(|r| {
            packages
                .iter()
                .any(|p| r.path == format!("/{}", p.url_path))
        })
        .count()
}

#[test]
fn apt_through_the_gateway_gets_packages_from_peers() {
    if !require(APT_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let mut swarm = Swarm::new(dir.path(), apt_repo(&nginx));
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();

    // The first volunteer is a client like any other: everything comes
    // from the upstream through its gateway.
    let v1 = swarm.node(Level::Open);
    let apt1 = swarm.apt(v1, "apt1", &repo);
    apt1.update();
    check_files(&apt1.download(&names(&specs)), repo.packages());
    swarm.wait_stored(v1, repo.packages());
    // Counted as each download ends: once every package is stored.
    assert_eq!(swarm.metrics(v1).fetched_from_upstream, total);
    swarm.announce(v1);
    assert_eq!(package_requests(&nginx, repo.packages()), specs.len());

    // A client at level off: every package from the peer, none from nginx.
    let c = swarm.node(Level::Off);
    let apt = swarm.apt(c, "apt", &repo);
    apt.update();
    check_files(&apt.download(&names(&specs)), repo.packages());
    swarm.wait_stored(c, repo.packages());
    let m = swarm.metrics(c);
    assert_eq!(m.fetched_from_peers, total, "{m:?}");
    assert_eq!(m.fetched_from_upstream, 0, "{m:?}");
    assert_eq!(m.blame_events, 0, "{m:?}");
    assert_eq!(package_requests(&nginx, repo.packages()), specs.len());
    // The rendezvous, curious, learned no item: the gateways matched the
    // packages against the directory they fetch whole.
    let served = swarm.rendezvous().served();
    assert_eq!(
        served.lookups(),
        0,
        "a lookup names its item to the rendezvous"
    );
    assert!(
        served.directories() >= 2,
        "each gateway fetched the directory"
    );
    // A second download comes from the client's own store.
    let again = apt.download(&["echo-tools"]);
    repo.package("echo-tools").check_file(&again[0]);
    assert!(swarm.metrics(c).from_store >= repo.package("echo-tools").size);
}

#[test]
fn pacman_through_the_gateway_gets_packages_from_peers() {
    if !require(PACMAN_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = PacmanRepo::build(&dir.path().join("www"), "anontest", "x86_64", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let repos = vec![Repository {
        name: "arch".to_owned(),
        kind: RepositoryKind::Pacman,
        url: nginx.base_url(),
    }];
    let mut swarm = Swarm::new(dir.path(), repos);
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    let client = |swarm: &Swarm, i: usize, name: &str| {
        PacmanClient::new(
            &dir.path().join(name),
            repo.name(),
            repo.arch(),
            &PacmanRepo::server(&swarm.base(i, "arch")),
        )
    };

    let v1 = swarm.node(Level::Open);
    let p1 = client(&swarm, v1, "pacman1");
    p1.sync();
    check_files(&p1.download(&names(&specs)), repo.packages());
    swarm.wait_stored(v1, repo.packages());
    swarm.announce(v1);

    let c = swarm.node(Level::Off);
    let p = client(&swarm, c, "pacman");
    p.sync();
    check_files(&p.download(&names(&specs)), repo.packages());
    swarm.wait_stored(c, repo.packages());
    let m = swarm.metrics(c);
    assert_eq!(m.fetched_from_peers, total, "{m:?}");
    assert_eq!(m.from_upstream, 0, "{m:?}");
    assert_eq!(package_requests(&nginx, repo.packages()), specs.len());
}

#[test]
fn a_corrupting_peer_is_blamed_and_apt_still_gets_correct_bytes() {
    if !require(APT_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let mut swarm = Swarm::new(dir.path(), apt_repo(&nginx));

    let v1 = swarm.node(Level::Open);
    let apt1 = swarm.apt(v1, "apt1", &repo);
    apt1.update();
    apt1.download(&["echo-tools"]);
    let victim = repo.package("echo-tools");
    swarm.wait_stored(v1, std::slice::from_ref(victim));
    // The volunteer's copy rots on disk (or the volunteer lies): one byte
    // in every chunk group.
    let stored = dir
        .path()
        .join("node0/cache/store/items")
        .join(&victim.sha256);
    let mut bytes = std::fs::read(&stored).expect("stored item");
    for i in (0..bytes.len()).step_by(16 * 1024) {
        bytes[i] ^= 0x01;
    }
    std::fs::write(&stored, &bytes).expect("corrupt");
    swarm.announce(v1);

    let c = swarm.node(Level::Off);
    let apt = swarm.apt(c, "apt", &repo);
    apt.update();
    let files = apt.download(&["echo-tools"]);
    victim.check_file(&files[0]);
    let m = swarm.metrics(c);
    assert_eq!(m.blame_events, 1, "{m:?}");
    assert_eq!(m.from_peers, 0, "{m:?}");
    assert_eq!(m.from_upstream, victim.size, "{m:?}");
}

#[test]
fn with_every_peer_stalled_packages_come_from_the_upstream() {
    if !require(APT_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let mut swarm = Swarm::new(dir.path(), apt_repo(&nginx));

    // A peer whose session is alive and whose announcement claims every
    // package, but which stalls: it answered the rendezvous's dial-back,
    // then accepts connections and never answers.
    let session = swarm
        .rt
        .block_on(stalled_session(swarm.rendezvous(), repo.packages()));

    let c = swarm.node(Level::Off);
    let apt = swarm.apt(c, "apt", &repo);
    apt.update();
    check_files(&apt.download(&names(&specs)), repo.packages());
    let m = swarm.metrics(c);
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    // What each source downloaded (a package read ahead and finished
    // before apt asked for it reaches apt from the store).
    assert_eq!(
        (m.fetched_from_upstream, m.fetched_from_peers, m.from_peers),
        (total, 0, 0),
        "{m:?}"
    );
    // The first package found the peer silent (past its handshake
    // allowance, or the hedge deadline, whichever came first); the peer
    // was then set aside, so the others went straight to the upstream.
    assert!(m.hedges <= 1, "{m:?}");
    assert_eq!(m.items_from_upstream, specs.len() as u64, "{m:?}");
    session.abort();
}

/// Opens a session at `rendezvous` for a peer on 127.0.0.1 claiming
/// `packages`, which answers the rendezvous's dial-back (the first
/// connection) and then stalls: it takes connections and never answers.
/// It keeps answering the session's pings; abort the task to end it.
async fn stalled_session(
    rendezvous: &Rendezvous,
    packages: &[Package],
) -> tokio::task::JoinHandle<()> {
    use anonmirror_announce::announcement::{Announcement, Layout};
    use anonmirror_core::{Epoch, ItemKey, OsEntropy};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let contact = listener.local_addr().expect("addr");
    let keypair = anonmirror_channel::StaticKeypair::generate().expect("key");
    let key = keypair.public();
    let client = anonmirror_rendezvous::Client::new(rendezvous.local_addr(), rendezvous.key());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let epoch = Epoch(now / 86_400);
    let cred = client.register(now, 8, OsEntropy).await.expect("register");
    let tokens = client
        .buy_tokens(&cred, now, epoch, 1)
        .await
        .expect("tokens");
    let items: std::collections::BTreeSet<ItemKey> = packages
        .iter()
        .map(|p| {
            let mut k = [0u8; 32];
            hex::decode_to_slice(&p.sha256, &mut k).expect("hex");
            ItemKey(k)
        })
        .collect();
    let filter = Announcement::build(
        Level::Open,
        epoch,
        Layout::for_capacity(items.len(), None),
        &items,
    );
    let params = anonmirror_channel::ChannelParams::new(Level::Open, epoch);
    let stall = tokio::spawn(async move {
        let mut held = Vec::new();
        let Ok((first, _)) = listener.accept().await else {
            return;
        };
        let _ = anonmirror_channel::accept(first, &keypair, &params, Duration::from_secs(5)).await;
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let reached = client
        .reach(contact.port(), key, Level::Open, epoch)
        .await
        .expect("reach");
    assert_eq!(
        reached.outcome,
        anonmirror_rendezvous::msg::ReachOutcome::Reached
    );
    let ann = anonmirror_rendezvous::msg::AnnouncementWire {
        contact: contact.into(),
        key,
        max_clients: 8,
        upload_rate: 1 << 20,
        region: None,
        // Fresher than any client: lookups never skip it for staleness.
        snapshots: vec![("deb".to_owned(), u64::MAX / 2)],
        filter: filter.to_bytes(),
    };
    let mut live = client.open_session(&tokens[0], ann).await.expect("session");
    tokio::spawn(async move {
        while live.next_event().await.is_ok() {}
        stall.abort();
    })
}

#[test]
fn an_index_update_pushed_mid_run_retires_the_old_version() {
    if !require(APT_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let mut repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let mut swarm = Swarm::new(dir.path(), apt_repo(&nginx));

    let v1 = swarm.node(Level::Open);
    let apt1 = swarm.apt(v1, "apt1", &repo);
    apt1.update();
    apt1.download(&names(&specs));
    swarm.wait_stored(v1, repo.packages());
    swarm.announce(v1);
    let old = repo.package("delta").clone();

    // The distribution publishes delta 1.1 and tells the rendezvous, which
    // pushes the change to the volunteer's live session.
    repo.publish(&PkgSpec::new("delta", "1.1-1", 700_001));
    let new = repo.package("delta").clone();
    assert_ne!(old.sha256, new.sha256);
    let opened = swarm.metrics(v1).sessions_opened;
    let client = anonmirror_rendezvous::Client::new(
        swarm.rendezvous().local_addr(),
        swarm.rendezvous().key(),
    );
    swarm
        .rt
        .block_on(client.notify(NOTIFY_SECRET, "deb", 2_000_000_000))
        .expect("notify");
    // The volunteer fetches the new index, prefetches the new version of
    // the package it held, and announces again: it holds both versions
    // but announces only the current one.
    swarm.wait_stored(v1, std::slice::from_ref(&new));
    swarm.rt.block_on(async {
        for _ in 0..400 {
            let s = swarm.nodes[v1].summary().expect("selected");
            if swarm.metrics(v1).sessions_opened > opened && s.held == specs.len() + 1 {
                assert_eq!(s.announced, specs.len(), "{s:?}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the volunteer did not announce the new snapshot");
    });

    // A client gets the new version from the peer, and the old one, no
    // longer in any index, only passes through from the upstream.
    let c = swarm.node(Level::Off);
    let apt = swarm.apt(c, "apt", &repo);
    apt.update();
    assert!(
        apt.available()
            .contains(&("delta".to_owned(), "1.1-1".to_owned()))
    );
    let files = apt.download(&["delta"]);
    new.check_file(&files[0]);
    let m = swarm.metrics(c);
    assert_eq!(m.from_peers, new.size, "{m:?}");
    let (status, body) = swarm
        .rt
        .block_on(anonmirror_node::http::get(&format!(
            "{}/{}",
            swarm.base(c, "deb"),
            old.url_path
        )))
        .expect("get");
    assert!(status.is_success());
    assert_eq!(body.len() as u64, old.size);
    let m = swarm.metrics(c);
    assert_eq!(m.from_peers, new.size, "{m:?}");
    assert_eq!(m.passthrough, old.size, "{m:?}");
}
