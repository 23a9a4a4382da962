//! LAN discovery between hosts: volunteers and a client on one bridge
//! behind a home router (network namespaces, veth pairs, the router's
//! NAT beyond), mDNS for real (the `mdns-sd` responder in each host).
//!
//! The client has no rendezvous at all: it finds its neighbours on the
//! link and gets every package from them. The volunteers are behind the
//! router with no forward, so the rendezvous cannot reach them and they
//! serve their link only. A volunteer that did not opt in is never
//! found; a hostile neighbour's advertisements (another level, an address
//! beyond the link) are ignored.

use std::time::Duration;

use anonmirror_node::demo::{loopback_policy_for, rendezvous_config};
use anonmirror_node::{Node, NodeOptions};
use anonmirror_privacy::{Level, Repository, RepositoryKind};
use anonmirror_testnet::testbed::{Link, require_testbed};

use crate::support::{
    APT_PROGRAMS, AptClient, AptRepo, TestDir, check_files, mixed_specs, names, require,
};
use crate::testbed::{Place, World, wait_stored};

/// Waits (bounded) until `check` holds of `node`'s metrics.
fn wait_for(
    place: &Place,
    node: &Node,
    what: &str,
    check: impl Fn(&anonmirror_mirror::metrics::MetricsSnapshot) -> bool + Send + Sync,
) {
    place.block_on(async {
        for _ in 0..2400 {
            if check(&node.gateway().metrics().snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "{what}: never, metrics {:?}",
            node.gateway().metrics().snapshot()
        );
    });
}

#[test]
fn a_client_with_no_rendezvous_gets_every_package_from_volunteers_on_its_link() {
    if !require(APT_PROGRAMS) || !require_testbed() {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let world = World::new();
    let lan = world
        .bed
        .lan("homelan", Link::delay(Duration::ZERO))
        .expect("lan");
    let on_lan = |name: &str| Place::on(lan.host(name).expect("host on the lan"));
    let (v1, v2, quiet, neighbour, client) = (
        on_lan("v1"),
        on_lan("v2"),
        on_lan("quiet"),
        on_lan("neighbour"),
        on_lan("client"),
    );
    let nginx = world.nginx(repo.root());
    let repos = [Repository {
        name: "deb".to_owned(),
        kind: RepositoryKind::Apt,
        url: nginx.base_url(),
    }];
    let rv = world.start_rendezvous(dir.path());
    let rv_at = rendezvous_config(&rv);
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    let default_listen = anonmirror_privacy::Policy::defaults_for(Level::Open)
        .serve
        .listen;

    // Three volunteers at level open on its default listener, each filled
    // through its own gateway; two advertise on the link.
    let volunteer = |place: &Place, name: &str, advertise: bool| {
        let mut policy = loopback_policy_for(
            Level::Open,
            &dir.path().join(name),
            repos.to_vec(),
            rv_at.clone(),
        );
        policy.serve.listen = default_listen;
        policy.lan.advertise = advertise;
        policy.validate().expect("valid policy");
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
        // Announce what it holds now (rather than after the random delay
        // of an update).
        node.reannounce();
        node
    };
    let a = volunteer(&v1, "v1", true);
    let b = volunteer(&v2, "v2", true);
    let c = volunteer(&quiet, "quiet", false);

    // A hostile neighbour advertises a strict "volunteer" and one at an
    // address beyond the link (a documentation address on its interface,
    // so that its responder sends it; never dialled).
    neighbour
        .host
        .netns()
        .ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"])
        .expect("a second address");
    let hostile = neighbour
        .host
        .run(|| {
            let daemon = mdns_sd::ServiceDaemon::new().map_err(std::io::Error::other)?;
            let key = "cd".repeat(32);
            let ads = [
                ("strict", neighbour.host.addr().to_string()),
                ("open", "192.0.2.1".to_owned()),
            ];
            for (i, (level, ip)) in ads.iter().enumerate() {
                let txt = [("v", "1"), ("k", key.as_str()), ("l", level), ("e", "1")];
                let info = mdns_sd::ServiceInfo::new(
                    anonmirror_node::lan::SERVICE,
                    &format!("hostile{i}"),
                    &format!("hostile{i}.local."),
                    ip.as_str(),
                    7879,
                    &txt[..],
                )
                .map_err(std::io::Error::other)?;
                daemon.register(info).map_err(std::io::Error::other)?;
            }
            Ok(daemon)
        })
        .expect("hostile advertisements");

    // The client: a gateway only, no rendezvous, LAN discovery on.
    let mut policy = loopback_policy_for(
        Level::Off,
        &dir.path().join("client"),
        repos.to_vec(),
        rv_at.clone(),
    );
    policy.rendezvous = None;
    policy.lan.discover = true;
    policy.validate().expect("valid policy");
    let home = client
        .block_on(Node::start(policy, NodeOptions::default()))
        .expect("client node");
    // Both advertising volunteers found, both hostile advertisements seen
    // and ignored; the one that did not opt in is nowhere.
    wait_for(&client, &home, "two neighbours found", |m| {
        m.lan_peers == 2 && m.lan_ignored == 2
    });
    for (name, node) in [("v1", &a), ("v2", &b)] {
        let contact = std::fs::read_to_string(
            dir.path()
                .join(name)
                .join("state")
                .join(anonmirror_node::volunteer::CONTACT_FILE),
        )
        .expect("contact.txt");
        assert!(
            contact.contains("unreachable") && contact.contains("lan: advertised on this link"),
            "{contact}"
        );
        assert_eq!(node.gateway().metrics().snapshot().session_live, 0);
    }

    let base = format!("http://{}/deb", home.gateway_addr);
    let (path, key) = (dir.path().join("apt-client"), repo.key());
    client.run(|| {
        let apt = AptClient::new(&path, &base, repo.suite(), &key);
        apt.update();
        check_files(&apt.download(&names(&specs)), repo.packages());
    });
    wait_stored(&client, &home, repo.packages());
    let m = home.gateway().metrics().snapshot();
    assert_eq!(
        (m.fetched_from_peers, m.fetched_from_upstream, m.lan_peers),
        (total, 0, 2),
        "every package from the neighbours: {m:?}"
    );

    // A volunteer that stops withdraws its advertisement (an mDNS goodbye).
    v1.block_on(a.stop());
    wait_for(&client, &home, "the stopped volunteer withdrawn", |m| {
        m.lan_peers == 1
    });
    client.block_on(home.stop());
    v2.block_on(b.stop());
    quiet.block_on(c.stop());
    let _ = hostile.shutdown();
    world.rendezvous.block_on(rv.shutdown());
}
