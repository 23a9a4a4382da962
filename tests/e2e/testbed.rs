//! The gateway between hosts: real apt and pacman on a home host of the
//! testbed (a link with delay and a rate cap), the mirror (nginx), the
//! rendezvous and a volunteer each on hosts of their own.
//!
//! What is checked is behaviour, never time: packages come from the peer;
//! the rendezvous learns no item; with the volunteer dead (still listed in
//! the home's directory) and then with the rendezvous down, apt still gets
//! every package, from the mirror.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_node::demo::{loopback_policy_for, rendezvous_config, wait_announced};
use anonmirror_node::{Node, NodeOptions};
use anonmirror_privacy::{Level, RendezvousConfig, Repository, RepositoryKind};
use anonmirror_rendezvous::{Rendezvous, ServerConfig};
use anonmirror_testnet::testbed::{Host, Link, Testbed, require_testbed};
use tokio::runtime::Runtime;

use crate::support::{
    self, APT_PROGRAMS, AptClient, AptRepo, Nginx, NginxOptions, PACMAN_PROGRAMS, Package,
    PacmanClient, PacmanRepo, TestDir, check_files, mixed_specs, names, require,
};

/// The home's link: 20 ms round trips to every other host, 8 MiB/s.
fn home_link() -> Link {
    Link::round_trip(Duration::from_millis(20)).rate(8 << 20)
}

/// A host with the runtime its nodes (or its rendezvous) run on.
pub(crate) struct Place {
    pub(crate) host: Host,
    rt: Runtime,
}

impl Place {
    fn new(bed: &Testbed, name: &str, link: Link) -> Place {
        Place::on(bed.host(name, link).expect("host"))
    }

    /// A place on `host` (one behind a NAT router).
    pub(crate) fn on(host: Host) -> Place {
        let rt = host.runtime().expect("runtime");
        Place { host, rt }
    }

    /// Runs `fut` to completion on a thread inside the host (what it binds
    /// and dials directly, before spawning, is the host's too).
    pub(crate) fn block_on<T: Send>(&self, fut: impl Future<Output = T> + Send) -> T {
        self.host
            .run(|| Ok(self.rt.block_on(fut)))
            .expect("inside the host")
    }

    /// Runs `f` (apt, pacman) on a thread inside the host.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.host.run(|| Ok(f())).expect("inside the host")
    }

    /// A node at `level` in `dir`: its gateway on the host's 127.0.0.1,
    /// its peer server on the host's address.
    fn node(
        &self,
        level: Level,
        dir: &std::path::Path,
        repos: &[Repository],
        rv: &RendezvousConfig,
    ) -> Node {
        let mut policy = loopback_policy_for(level, dir, repos.to_vec(), rv.clone());
        policy.serve.listen = SocketAddr::new(self.host.addr().into(), 0);
        let opts = NodeOptions {
            pow_difficulty: 8,
            ..NodeOptions::default()
        };
        self.block_on(Node::start(policy, opts)).expect("node")
    }
}

/// The testbed of both tests: mirror, rendezvous, volunteer, home.
pub(crate) struct World {
    pub(crate) bed: Testbed,
    mirror: Host,
    pub(crate) rendezvous: Place,
    volunteer: Place,
    home: Place,
}

impl World {
    pub(crate) fn new() -> World {
        let bed = Testbed::new().expect("testbed");
        let mirror = bed
            .host("mirror", Link::delay(Duration::ZERO))
            .expect("mirror");
        let rendezvous = Place::new(&bed, "rendezvous", Link::delay(Duration::ZERO));
        let volunteer = Place::new(&bed, "volunteer", Link::delay(Duration::ZERO));
        let home = Place::new(&bed, "home", home_link());
        World {
            bed,
            mirror,
            rendezvous,
            volunteer,
            home,
        }
    }

    /// nginx on the mirror host, serving `root`.
    pub(crate) fn nginx(&self, root: &std::path::Path) -> Nginx {
        let listen = self.mirror.addr().into();
        self.mirror
            .run(|| {
                Ok(Nginx::start(
                    root,
                    NginxOptions {
                        listen,
                        ..NginxOptions::default()
                    },
                ))
            })
            .expect("nginx on the mirror host")
    }

    /// The rendezvous, on its host's address.
    pub(crate) fn start_rendezvous(&self, dir: &std::path::Path) -> Rendezvous {
        let mut cfg = ServerConfig::new(
            SocketAddr::new(self.rendezvous.host.addr().into(), 0),
            dir.join("rendezvous"),
            Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
            Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
        );
        cfg.credentials.pow_difficulty = 8;
        self.rendezvous
            .block_on(Rendezvous::start(cfg))
            .expect("rendezvous")
    }
}

/// Waits until `node`'s store holds every one of `packages`.
pub(crate) fn wait_stored(place: &Place, node: &Node, packages: &[Package]) {
    let store = node.gateway().fetcher().store().clone();
    place.block_on(support::wait_stored(&store, packages));
}

/// Closes the volunteer's session and announces anew what it holds now;
/// returns once the new session is open.
fn announce(place: &Place, node: &Node) {
    let opened = || node.gateway().metrics().snapshot().sessions_opened;
    let before = opened();
    node.reannounce();
    place
        .block_on(async {
            for _ in 0..400 {
                if opened() > before {
                    return wait_announced(node).await;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the volunteer did not open a new session");
        })
        .expect("announced");
}

fn package_requests(nginx: &Nginx, packages: &[Package]) -> usize {
    nginx
        .requests()
        .iter()
        .filter(|r| {
            packages
                .iter()
                .any(|p| r.path == format!("/{}", p.url_path))
        })
        .count()
}

#[test]
fn apt_between_hosts_gets_packages_from_a_peer_and_from_the_mirror_when_peers_fail() {
    if !require(APT_PROGRAMS) || !require_testbed() {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let world = World::new();
    let nginx = world.nginx(repo.root());
    let repos = [Repository {
        name: "deb".to_owned(),
        kind: RepositoryKind::Apt,
        url: nginx.base_url(),
    }];
    let rv = world.start_rendezvous(dir.path());
    let rv_at = rendezvous_config(&rv);
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    let apt = |place: &Place, node: &Node, name: &str| {
        let base = format!("http://{}/deb", node.gateway_addr);
        let (path, key) = (dir.path().join(name), repo.key());
        place.run(|| {
            let apt = AptClient::new(&path, &base, repo.suite(), &key);
            apt.update();
            check_files(&apt.download(&names(&specs)), repo.packages());
        });
    };

    // Home, 20 ms away, up before any volunteer: it watches the directory.
    let home = world
        .home
        .node(Level::Off, &dir.path().join("home"), &repos, &rv_at);

    // The volunteer fetches the set from the mirror, then announces it.
    let v = world
        .volunteer
        .node(Level::Open, &dir.path().join("volunteer"), &repos, &rv_at);
    apt(&world.volunteer, &v, "apt-volunteer");
    wait_stored(&world.volunteer, &v, repo.packages());
    announce(&world.volunteer, &v);
    assert_eq!(package_requests(&nginx, repo.packages()), specs.len());

    // The rendezvous sends the home the new directory (no node ever polls
    // it: checked below).
    world.home.block_on(async {
        for _ in 0..2400 {
            if home.gateway().metrics().snapshot().directory_peers > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the home node never heard of the volunteer");
    });
    // Every package from the peer, none from the mirror, and the
    // rendezvous learned no item.
    apt(&world.home, &home, "apt-home");
    // Counted when each download ends, just after its last byte went
    // out: once every package is stored, all are counted.
    wait_stored(&world.home, &home, repo.packages());
    let m = home.gateway().metrics().snapshot();
    assert_eq!(
        (m.fetched_from_peers, m.fetched_from_upstream),
        (total, 0),
        "{m:?}"
    );
    // The mirror may have seen a hedge (an item queued behind others on
    // the peer's channel looks slow), never more than one per item.
    assert!(package_requests(&nginx, repo.packages()) <= 2 * specs.len());
    assert_eq!(rv.served().lookups(), 0);
    assert_eq!(
        rv.served().directory_polls(),
        0,
        "every node watched the directory"
    );
    world.home.block_on(home.stop());

    // A second home node learns of the volunteer from the directory, then
    // the volunteer dies: apt gets every package from the mirror.
    let home2 = world
        .home
        .node(Level::Off, &dir.path().join("home2"), &repos, &rv_at);
    world.home.block_on(async {
        for _ in 0..200 {
            // The directory has been fetched once the node knows its peer.
            if home2.gateway().metrics().snapshot().directory_peers > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the home node never fetched the directory");
    });
    world.volunteer.block_on(v.stop());
    apt(&world.home, &home2, "apt-home2");
    // Counted when each download ends, just after its last byte went
    // out: once every package is stored, all are counted.
    wait_stored(&world.home, &home2, repo.packages());
    let m = home2.gateway().metrics().snapshot();
    assert_eq!(
        (m.fetched_from_peers, m.fetched_from_upstream),
        (0, total),
        "{m:?}"
    );
    world.home.block_on(home2.stop());

    // The rendezvous down too: still every package, from the mirror.
    world.rendezvous.block_on(rv.shutdown());
    let home3 = world
        .home
        .node(Level::Off, &dir.path().join("home3"), &repos, &rv_at);
    apt(&world.home, &home3, "apt-home3");
    // Counted when each download ends, just after its last byte went
    // out: once every package is stored, all are counted.
    wait_stored(&world.home, &home3, repo.packages());
    let m = home3.gateway().metrics().snapshot();
    assert_eq!(
        (m.fetched_from_peers, m.fetched_from_upstream),
        (0, total),
        "{m:?}"
    );
    world.home.block_on(home3.stop());
}

#[test]
fn pacman_between_hosts_gets_packages_from_a_peer() {
    if !require(PACMAN_PROGRAMS) || !require_testbed() {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = PacmanRepo::build(&dir.path().join("www"), "anontest", "x86_64", &specs);
    let world = World::new();
    let nginx = world.nginx(repo.root());
    let repos = [Repository {
        name: "arch".to_owned(),
        kind: RepositoryKind::Pacman,
        url: nginx.base_url(),
    }];
    let rv = world.start_rendezvous(dir.path());
    let rv_at = rendezvous_config(&rv);
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    let pacman = |place: &Place, node: &Node, name: &str| {
        let server = PacmanRepo::server(&format!("http://{}/arch", node.gateway_addr));
        let path = dir.path().join(name);
        place.run(|| {
            let client = PacmanClient::new(&path, repo.name(), repo.arch(), &server);
            client.sync();
            check_files(&client.download(&names(&specs)), repo.packages());
        });
    };
    let v = world
        .volunteer
        .node(Level::Open, &dir.path().join("volunteer"), &repos, &rv_at);
    pacman(&world.volunteer, &v, "pacman-volunteer");
    wait_stored(&world.volunteer, &v, repo.packages());
    announce(&world.volunteer, &v);
    let home = world
        .home
        .node(Level::Off, &dir.path().join("home"), &repos, &rv_at);
    pacman(&world.home, &home, "pacman-home");
    // Counted when each download ends, just after its last byte went
    // out: once every package is stored, all are counted.
    wait_stored(&world.home, &home, repo.packages());
    let m = home.gateway().metrics().snapshot();
    assert_eq!(
        (m.fetched_from_peers, m.fetched_from_upstream),
        (total, 0),
        "{m:?}"
    );
    assert_eq!(package_requests(&nginx, repo.packages()), specs.len());
    world.home.block_on(home.stop());
    world.volunteer.block_on(v.stop());
    world.rendezvous.block_on(rv.shutdown());
}

#[test]
fn volunteers_behind_a_nat_router_are_announced_only_where_a_dial_back_reaches_them() {
    use anonmirror_mirror::metrics::ContactState;
    use anonmirror_rendezvous::msg::ReachOutcome;
    if !require(APT_PROGRAMS) || !require_testbed() {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let world = World::new();
    // Two volunteers behind one home router, on the default `serve.listen`
    // of level open (0.0.0.0:7879): the router forwards its port 7879 to
    // the first, as a port mapping or a forward set by hand would.
    let router = world
        .bed
        .nat("router", Link::delay(Duration::ZERO))
        .expect("nat");
    let default_listen = anonmirror_privacy::Policy::defaults_for(Level::Open)
        .serve
        .listen;
    assert!(default_listen.ip().is_unspecified());
    let port = default_listen.port();
    let forwarded = Place::on(
        router
            .host("forwarded", Link::delay(Duration::ZERO))
            .expect("host"),
    );
    let unforwarded = Place::on(
        router
            .host("unforwarded", Link::delay(Duration::ZERO))
            .expect("host"),
    );
    router
        .forward(port, &forwarded.host, port)
        .expect("forward");
    // A third behind a router of its own that grants port forwards over
    // PCP (a port-mapping server on the router, installing each forward
    // it grants): nobody forwards anything by hand.
    let router2 = world
        .bed
        .nat("router2", Link::delay(Duration::ZERO))
        .expect("nat");
    let mapped = Place::on(
        router2
            .host("mapped", Link::delay(Duration::ZERO))
            .expect("host"),
    );
    let router2_place = Place::on(router2.router().clone());
    let forwarder = router2.forwarder();
    let public2 = router2.public_addr();
    let portmap = router2_place
        .block_on(anonmirror_testnet::portmap::PortMapServer::start(
            std::net::Ipv4Addr::UNSPECIFIED,
            anonmirror_testnet::portmap::Speaks::Pcp,
            public2,
            u32::MAX,
            Box::new(move |client, internal, external| {
                forwarder
                    .forward(external, client, internal)
                    .expect("forward");
            }),
        ))
        .expect("port-mapping server");
    // A fourth behind a third router that speaks only UPnP IGD (SSDP on
    // its inner address, SOAP AddPortMapping), as many home routers do.
    let router3 = world
        .bed
        .nat("router3", Link::delay(Duration::ZERO))
        .expect("nat");
    let upnp = Place::on(
        router3
            .host("upnp", Link::delay(Duration::ZERO))
            .expect("host"),
    );
    let inner = {
        let [a, b, c, _] = upnp.host.addr().octets();
        std::net::Ipv4Addr::new(a, b, c, 1)
    };
    let router3_place = Place::on(router3.router().clone());
    let forwarder3 = router3.forwarder();
    let public3 = router3.public_addr();
    let igd = router3_place
        .block_on(anonmirror_testnet::portmap::IgdServer::start(
            inner,
            false,
            Box::new(move |client, internal, external| {
                forwarder3
                    .forward(external, client, internal)
                    .expect("forward");
            }),
        ))
        .expect("UPnP IGD");

    let nginx = world.nginx(repo.root());
    let repos = [Repository {
        name: "deb".to_owned(),
        kind: RepositoryKind::Apt,
        url: nginx.base_url(),
    }];
    let rv = world.start_rendezvous(dir.path());
    let rv_at = rendezvous_config(&rv);
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    let volunteer = |place: &Place, name: &str| {
        let mut policy = loopback_policy_for(
            Level::Open,
            &dir.path().join(name),
            repos.to_vec(),
            rv_at.clone(),
        );
        policy.serve.listen = default_listen;
        let opts = NodeOptions {
            pow_difficulty: 8,
            ..NodeOptions::default()
        };
        let node = place.block_on(Node::start(policy, opts)).expect("node");
        let base = format!("http://{}/deb", node.gateway_addr);
        let (path, key) = (dir.path().join(format!("apt-{name}")), repo.key());
        place.run(|| {
            let apt = AptClient::new(&path, &base, repo.suite(), &key);
            apt.update();
            check_files(&apt.download(&names(&specs)), repo.packages());
        });
        wait_stored(place, &node, repo.packages());
        node
    };
    let a = volunteer(&forwarded, "forwarded");
    let b = volunteer(&unforwarded, "unforwarded");
    let c = volunteer(&mapped, "mapped");
    let d = volunteer(&upnp, "upnp");
    announce(&forwarded, &a);
    announce(&mapped, &c);
    announce(&upnp, &d);
    assert_eq!(
        igd.requests()
            .first()
            .map(|r| (r.protocol, r.internal_port, r.lifetime > 0)),
        Some(("UPnP", port, true)),
        "the fourth volunteer asked its router over UPnP"
    );
    assert_eq!(
        portmap
            .requests()
            .iter()
            .map(|r| (r.protocol, r.internal_port, r.lifetime > 0))
            .next(),
        Some(("PCP", port, true)),
        "the volunteer asked its router for a forward"
    );
    // The second one's dial-back reaches the first through the forward:
    // another key answers, so it announces nothing, and says why.
    b.reannounce();
    let contact_of =
        |node: &Node| ContactState::from_code(node.gateway().metrics().snapshot().contact);
    unforwarded.block_on(async {
        for _ in 0..2400 {
            // (A dial-back while the first one's listener was between
            // sessions found nothing there: refused. Now it is up.)
            if contact_of(&b) == ContactState::Unreachable(ReachOutcome::HandshakeFailed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the unforwarded volunteer never found itself unreachable");
    });
    assert_eq!(contact_of(&a), ContactState::Reached);
    assert_eq!(contact_of(&c), ContactState::Reached);
    assert_eq!(contact_of(&d), ContactState::Reached);
    assert_eq!(
        contact_of(&b),
        ContactState::Unreachable(ReachOutcome::HandshakeFailed)
    );
    assert_eq!(b.gateway().metrics().snapshot().session_live, 0);
    let audit = std::fs::read_to_string(
        dir.path()
            .join("unforwarded/state")
            .join(anonmirror_node::volunteer::CONTACT_FILE),
    );
    assert!(
        audit.as_deref().is_ok_and(|t| t.contains("unreachable")),
        "{audit:?}"
    );

    // The directory lists the first, third and fourth, at their
    // routers' public addresses and forwarded ports: never a private or
    // unspecified address, and never the second.
    let client = anonmirror_rendezvous::Client::new(rv.local_addr(), rv.key());
    let pinned = rv.directory_key();
    let snap = world
        .home
        .block_on(client.directory(None, &pinned))
        .expect("directory");
    let mut contacts: Vec<_> = snap.peers.iter().map(|p| p.contact.socket_addr()).collect();
    contacts.sort();
    let mut expected = vec![
        Some(SocketAddr::new(router.public_addr().into(), port)),
        Some(SocketAddr::new(public2.into(), port)),
        Some(SocketAddr::new(public3.into(), port)),
    ];
    expected.sort();
    assert_eq!(
        contacts, expected,
        "the reachable three, at their routers' addresses"
    );

    // A home elsewhere gets every package from the reachable volunteers.
    let home = world
        .home
        .node(Level::Off, &dir.path().join("home"), &repos, &rv_at);
    world.home.block_on(async {
        for _ in 0..2400 {
            if home.gateway().metrics().snapshot().directory_peers == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the home node never heard of the volunteers");
    });
    let base = format!("http://{}/deb", home.gateway_addr);
    let (path, key) = (dir.path().join("apt-home"), repo.key());
    world.home.run(|| {
        let apt = AptClient::new(&path, &base, repo.suite(), &key);
        apt.update();
        check_files(&apt.download(&names(&specs)), repo.packages());
    });
    wait_stored(&world.home, &home, repo.packages());
    let m = home.gateway().metrics().snapshot();
    assert_eq!(
        (
            m.fetched_from_peers,
            m.fetched_from_upstream,
            m.directory_peers
        ),
        (total, 0, 3),
        "{m:?}"
    );
    world.home.block_on(home.stop());
    unforwarded.block_on(b.stop());
    forwarded.block_on(a.stop());
    // The session ends with the daemon: its forward is removed.
    mapped.block_on(c.stop());
    upnp.block_on(d.stop());
    assert_eq!(
        igd.requests().last().map(|r| (r.protocol, r.lifetime)),
        Some(("UPnP", 0)),
        "the UPnP forward is deleted too"
    );
    assert_eq!(
        portmap.requests().last().map(|r| (r.protocol, r.lifetime)),
        Some(("PCP", 0)),
        "{:?}",
        portmap.requests()
    );
    world.rendezvous.block_on(rv.shutdown());
}
