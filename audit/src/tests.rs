use std::collections::BTreeMap;
use std::path::PathBuf;

use anonmirror_announce::IndexEntry;
use anonmirror_announce::snapshot::{Estimate, LevelPeers};
use anonmirror_privacy::Level;

use super::*;

const RENDEZVOUS: &str = "[rendezvous]\naddress = \"rendezvous.example.org:7880\"\n\
    key = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"\n\
    [[repository]]\nname = \"deb\"\nkind = \"apt\"\nurl = \"https://deb.example.org/debian/\"\n";

fn policy(level: &str, extra: &str) -> Policy {
    Policy::from_toml_str(&format!("level = \"{level}\"\n{extra}{RENDEZVOUS}"))
        .expect("valid policy")
}

fn key(i: u8) -> ItemKey {
    ItemKey([i; 32])
}

fn index(n: u8) -> CurrentIndex {
    CurrentIndex::new((1..=n).map(|i| IndexEntry {
        key: key(i),
        repo: "deb".into(),
        name: format!("pkg{i}"),
        version: "1".into(),
        no_announce: false,
    }))
}

fn snapshot(peers: u64, level_peers: LevelPeers, holders: &[(u8, f64)]) -> PopularitySnapshot {
    PopularitySnapshot {
        epoch: Epoch(7),
        prior: false,
        source: "popularity reports".into(),
        peers,
        level_peers,
        params: None,
        z: 3.0,
        items: holders
            .iter()
            .map(|(i, h)| {
                (
                    key(*i),
                    Estimate {
                        holders: *h,
                        se: 1.0,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The golden values of issue 5, through the whole audit.
#[test]
fn audit_golden_values() {
    let open = policy("open", "");
    let all_open = LevelPeers([0, 1_000, 0, 0]);
    let two_halves = snapshot(1_000, all_open, &[(1, 500.0), (2, 500.0)]);
    let r = audit(&open, Epoch(7), &[key(1), key(2)], &index(2), &two_halves).expect("audits");
    assert!((r.exposure_bits - 2.0).abs() < 1e-9, "{r:?}");
    assert!((r.anonymity_set - 250.0).abs() < 1e-6);

    let common = snapshot(1_000, all_open, &[(1, 990.0)]);
    let r = audit(&open, Epoch(7), &[], &index(1), &common).expect("audits");
    assert!((r.exposure.omitted_bits - 6.64).abs() < 0.005, "{r:?}");
    assert!((r.exposure_bits - 6.64).abs() < 0.005);

    let quarter = snapshot(1_000, LevelPeers([0, 250, 0, 0]), &[]);
    let r = audit(&open, Epoch(7), &[], &CurrentIndex::default(), &quarter).expect("audits");
    assert!((r.exposure_bits - 2.0).abs() < 1e-9);

    // p = 0 announced and p = 1 omitted: clamped to 1/N, log2 N bits each.
    let extremes = snapshot(
        1_024,
        LevelPeers([0, 1_024, 0, 0]),
        &[(1, 0.0), (2, 1_024.0)],
    );
    let r = audit(&open, Epoch(7), &[key(1)], &index(2), &extremes).expect("audits");
    assert!((r.exposure_bits - 20.0).abs() < 1e-9, "{r:?}");
    assert_eq!(r.credential, "no credential yet");
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Compare with a golden file; `UPDATE_GOLDEN=1` rewrites it (review the
/// diff before committing).
fn golden(name: &str, actual: &str) {
    let path = data(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs; rerun with UPDATE_GOLDEN=1 to review",
        path.display()
    );
}

#[test]
fn report_snapshots() {
    let idx = index(10);
    let holders: Vec<(u8, f64)> = (1..=10)
        .map(|i| (i, 1_000.0 - 100.0 * f64::from(i - 1)))
        .collect();
    let snap = snapshot(1_000, LevelPeers([100, 0, 500, 400]), &holders);
    let balanced = policy("balanced", "[serve]\ndeny = [\"pkg2\"]\n");
    let inventory = [1, 2, 9, 10, 77].map(key);
    let r = audit(&balanced, Epoch(8), &inventory, &idx, &snap).expect("audits");
    golden("balanced.txt", &r.to_text());
    golden("balanced.json", &r.to_json().expect("json"));

    let strict = Policy::from_toml_str_with_level(
        &format!("level = \"balanced\"\n[transport]\ndangerous_allow_clearnet = true\nkind = \"tcp\"\n{RENDEZVOUS}"),
        Level::Strict,
    )
    .expect("valid");
    let mut prior = snapshot(50, LevelPeers::default(), &[(1, 49.0), (2, 40.0)]);
    prior.prior = true;
    prior.source = "debian popcon by_inst".into();
    let r = audit(&strict, Epoch(8), &inventory, &idx, &prior).expect("audits");
    golden("strict-prior.txt", &r.to_text());
}

#[test]
fn the_transport_in_use_is_held_to_the_level() {
    use crate::InUse;
    let tor = InUse::parse(
        "connections: tor (arti)\nserving: onion service hosted by arti (a fresh address per session)\n",
    )
    .expect("parses");
    assert!(tor.shortfalls(Level::Strict).is_empty());
    assert!(tor.shortfalls(Level::Balanced).is_empty());
    let fallback = InUse::parse(
        "connections: tcp (fallback: Tor is unavailable: no SOCKS port)\nserving: tcp on 127.0.0.1:7879 (peers see this machine's address)\n",
    )
    .expect("parses");
    let w = fallback.shortfalls(Level::Strict);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("requires Tor") && w[0].contains("fallback"),
        "{w:?}"
    );
    assert_eq!(fallback.shortfalls(Level::Balanced).len(), 1);
    // Open says plainly what a TCP contact shows.
    let open = fallback.shortfalls(Level::Open);
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0].contains("IP address"), "{open:?}");
    assert!(tor.shortfalls(Level::Open).is_empty());
    assert_eq!(fallback.contact, None, "no session tried yet");
    let unreachable = InUse::parse(
        "connections: tcp\nserving: tcp on 0.0.0.0:7879\n\
         contact: none announced: unreachable from other hosts (the rendezvous's dial-back got no answer)\n",
    )
    .expect("parses");
    assert!(
        unreachable
            .contact
            .as_deref()
            .is_some_and(|c| c.contains("no answer")),
        "{unreachable:?}"
    );
    assert_eq!(
        InUse::parse("connections: tcp\n"),
        None,
        "both lines or nothing"
    );
}

#[test]
fn a_tor_daemons_onion_service_counts_as_onion_serving() {
    use crate::InUse;
    let daemon = InUse::parse(
        "connections: tor (SOCKS5 at 127.0.0.1:9050)\n\
         serving: onion service of the Tor daemon (a fresh address per session)\n",
    )
    .expect("parses");
    assert_eq!(daemon.connections, "tor (SOCKS5 at 127.0.0.1:9050)");
    assert_eq!(
        daemon.serving,
        "onion service of the Tor daemon (a fresh address per session)"
    );
    for level in Level::ALL {
        assert_eq!(daemon.shortfalls(level), Vec::<String>::new(), "{level}");
    }
    // Its control port failed and the policy let it fall back: strict
    // would not have, and says so.
    let fallback = InUse::parse(
        "connections: tor (SOCKS5 at 127.0.0.1:9050)\n\
         serving: tcp on 127.0.0.1:7879 (peers see this machine's address)\n",
    )
    .expect("parses");
    let w = fallback.shortfalls(Level::Strict);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("onion service only"), "{w:?}");
    assert_eq!(fallback.shortfalls(Level::Balanced).len(), 1);
}

#[test]
fn lan_discovery_says_what_the_neighbours_see() {
    let idx = index(2);
    let snap = snapshot(1_000, LevelPeers([0, 1_000, 0, 0]), &[(1, 900.0)]);
    let off = audit(&policy("open", ""), Epoch(7), &[], &idx, &snap).expect("audits");
    assert_eq!(off.lan, "off (nothing sent on the link)");
    assert!(!off.warnings.iter().any(|w| w.contains("LAN")), "{off:?}");
    let on = policy("open", "[lan]\nadvertise = true\ndiscover = true\n");
    let r = audit(&on, Epoch(7), &[], &idx, &snap).expect("audits");
    assert!(
        r.lan.contains("address, port, session key and level")
            && r.lan.contains("which packages this machine fetches"),
        "{}",
        r.lan
    );
    assert!(r.to_text().contains(&format!("lan:          {}", r.lan)));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.starts_with("LAN discovery is on")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn an_announcement_to_too_few_peers_fails_the_audit() {
    let balanced = policy("balanced", "");
    // 30 peers, 10 of them at balanced, the item held by 25: announcing
    // it leaves about 30 · 2^−(log2 3 + log2 30/25) ≈ 8 peers, below
    // balanced's minimum of 20.
    let few = snapshot(30, LevelPeers([0, 0, 10, 20]), &[(1, 25.0)]);
    let r = audit(&balanced, Epoch(7), &[key(1)], &index(1), &few).expect("audits");
    assert!(r.within_budget && r.announced == 1, "{r:?}");
    assert_eq!(r.anonymity_minimum, 20);
    assert!(r.anonymity_set < 20.0 && r.below_anonymity_minimum, "{r:?}");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("below level balanced's minimum of 20")),
        "{:?}",
        r.warnings
    );
    assert!(r.to_text().contains("(level minimum 20: BELOW)"));
    // Enough peers: the same announcement passes.
    let many = snapshot(3_000, LevelPeers([0, 0, 1_000, 2_000]), &[(1, 2_500.0)]);
    let r = audit(&balanced, Epoch(7), &[key(1)], &index(1), &many).expect("audits");
    assert!(
        r.anonymity_set >= 20.0 && !r.below_anonymity_minimum,
        "{r:?}"
    );
    // Nothing announced (nothing held, nothing popular): nothing to fail.
    let none = snapshot(30, LevelPeers([0, 0, 10, 20]), &[]);
    let r = audit(&balanced, Epoch(7), &[], &index(1), &none).expect("audits");
    assert!(r.announced == 0 && !r.below_anonymity_minimum, "{r:?}");
}
