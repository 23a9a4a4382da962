//! The dependency DAG of DESIGN.md §2, checked against the real build
//! graph: `cargo metadata` for the workspace's own edges, and `cargo tree`
//! per package for what it pulls in (features resolved as when that package
//! is built alone).
//!
//! core ← privacy ← announce ← audit; core, privacy ← channel;
//! core ← store; channel, store ← overlay; channel ← rendezvous;
//! overlay, store, rendezvous, announce ← mirror ← node; the root
//! package ← all.
//! announce and overlay never import each other; audit and store never
//! pull in tokio's networking or arti; nothing depends on the root package.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo prints UTF-8")
}

/// The workspace's own dependency edges (normal, build and dev), by short
/// member name ("core", "overlay", …; "root" for the binary package).
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let json = run(cargo().args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]));
    let meta: serde_json::Value = serde_json::from_str(&json).expect("metadata is JSON");
    let short = |name: &str| -> String {
        match name.strip_prefix("anonmirror-") {
            Some(member) => member.to_owned(),
            None if name == "anonmirror" => "root".to_owned(),
            None => name.to_owned(),
        }
    };
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| short(p["name"].as_str().expect("name")))
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| short(d["name"].as_str().expect("dep name")))
                .filter(|d| members.contains(d))
                .collect();
            (short(p["name"].as_str().expect("name")), deps)
        })
        .collect()
}

/// Which workspace members each member may depend on directly (DESIGN.md §2).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("core", &[][..]),
        ("privacy", &["core"][..]),
        ("announce", &["core", "privacy"][..]),
        ("audit", &["core", "privacy", "announce"][..]),
        ("channel", &["core", "privacy"][..]),
        ("store", &["core"][..]),
        ("overlay", &["core", "privacy", "channel", "store"][..]),
        ("rendezvous", &["core", "privacy", "channel"][..]),
        (
            "mirror",
            &[
                "core",
                "privacy",
                "announce",
                "channel",
                "store",
                "overlay",
                "rendezvous",
            ][..],
        ),
        // The daemon's roles: everything below the command line.
        (
            "node",
            &[
                "core",
                "privacy",
                "announce",
                "channel",
                "store",
                "overlay",
                "rendezvous",
                "mirror",
                "audit",
            ][..],
        ),
        // Test support (namespaces, the testbed, a private Tor network):
        // depends on nothing of ours; only tests (root's dev-dependencies)
        // and the benchmarks use it.
        ("testnet", &[][..]),
        // Benchmarks measure the layers; they sit beside the root package.
        (
            "bench",
            &[
                "core",
                "privacy",
                "announce",
                "channel",
                "store",
                "overlay",
                "rendezvous",
                "mirror",
                "audit",
                "testnet",
            ][..],
        ),
        (
            "root",
            &[
                "core",
                "privacy",
                "announce",
                "channel",
                "store",
                "overlay",
                "rendezvous",
                "mirror",
                "node",
                "audit",
                "testnet",
            ][..],
        ),
    ])
}

#[test]
fn workspace_edges_follow_the_design_dag() {
    let edges = workspace_edges();
    let allowed = allowed();
    for (member, deps) in &edges {
        let ok = allowed.get(member.as_str()).unwrap_or_else(|| {
            panic!("member `{member}` is not in DESIGN.md §2; add it to the DAG")
        });
        for dep in deps {
            assert!(
                ok.contains(&dep.as_str()),
                "`{member}` depends on `{dep}`, which DESIGN.md §2 forbids (allowed: {ok:?})"
            );
        }
    }
    for member in allowed.keys() {
        assert!(
            edges.contains_key(*member),
            "member `{member}` is missing from the workspace"
        );
    }
}

/// Every package name and its enabled features in `package`'s normal
/// dependency closure, as cargo resolves it when building that package.
fn closure(package: &str) -> Vec<(String, BTreeSet<String>)> {
    let out = run(cargo().args([
        "tree",
        "--offline",
        "-p",
        package,
        "-e",
        "normal",
        "--prefix",
        "none",
        "-f",
        "{p}|{f}",
    ]));
    out.lines()
        .filter_map(|line| {
            let (pkg, features) = line.split_once('|')?;
            let name = pkg.split_whitespace().next()?.to_owned();
            let features = features
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect();
            Some((name, features))
        })
        .collect()
}

fn names(closure: &[(String, BTreeSet<String>)]) -> BTreeSet<&str> {
    closure.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn announce_and_overlay_never_import_each_other() {
    assert!(!names(&closure("anonmirror-announce")).contains("anonmirror-overlay"));
    assert!(!names(&closure("anonmirror-overlay")).contains("anonmirror-announce"));
}

/// Fails if `package` pulls in Tor, a networking crate or tokio's `net`.
fn assert_no_networking(package: &str) {
    for (name, features) in &closure(package) {
        assert!(
            !(name.starts_with("arti") || name.starts_with("tor-")),
            "{package} pulls in `{name}`: it must never reach Tor"
        );
        assert!(
            !["hyper", "reqwest", "axum", "mio", "socket2"].contains(&name.as_str()),
            "{package} pulls in the networking crate `{name}`"
        );
        if name == "tokio" {
            assert!(
                !features.contains("net"),
                "{package} pulls in tokio with its `net` feature"
            );
        }
    }
}

#[test]
fn audit_pulls_in_no_networking() {
    assert_no_networking("anonmirror-audit");
}

#[test]
fn the_store_pulls_in_no_networking() {
    assert_no_networking("anonmirror-store");
}

#[test]
fn the_check_sees_networking_where_it_is() {
    // Guards the checks above against passing vacuously (say, if the
    // output format of `cargo tree` changed): overlay does use tokio's net.
    let overlay = closure("anonmirror-overlay");
    let tokio = overlay
        .iter()
        .find(|(n, _)| n == "tokio")
        .expect("overlay depends on tokio");
    assert!(tokio.1.contains("net"));
    assert!(names(&closure("anonmirror-audit")).contains("anonmirror-announce"));
}

#[test]
fn nothing_depends_on_the_root_package() {
    for (member, deps) in workspace_edges() {
        assert!(
            !deps.contains("root"),
            "`{member}` depends on the root package"
        );
    }
}
