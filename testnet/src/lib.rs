//! Test support: network namespaces, a testbed of hosts joined by links
//! with delay, rate and loss (and NAT routers), and a private Tor network.
//!
//! - [`testbed`]: hosts in namespaces of their own, each on a link to a
//!   core router; what crosses a network in the e2e tests and the
//!   benchmarks crosses one of these links.
//!
//! Tor-mode tests must show that a node reaches peers only through Tor,
//! and they cannot use the real Tor network (CI has no internet, and a
//! test must never send traffic off the machine). So this crate builds a
//! small Tor network of its own — 3 directory authorities, 2 middle relays
//! and 2 exits, all C tor on 127.0.0.1 — inside a network namespace that
//! holds only a loopback interface (and whatever addresses a test adds to
//! it): whatever a test does there, no packet can leave the machine.
//!
//! - [`Namespace`] ([`netns`]): one private network namespace for the whole
//!   test process; a thread enters it before it builds a runtime or spawns
//!   a process.
//! - [`TorNet`] ([`tornet`]): the network itself, C-tor clients with SOCKS
//!   ports and onion services ([`CTorClient`]), and an arti configuration
//!   for it in arti's own TOML format ([`TorNet::arti_config_toml`]).
//! - [`socks5_connect`]: a minimal SOCKS5 client, to use a C-tor client
//!   from a test.
//!
//! The recipe (options, timings, pitfalls) is ../shared/TOR-TESTNET.md.
//!
//! A test uses it like this (every test of a test binary shares the one
//! network, which takes about 20–30 s to come up):
//!
//! ```no_run
//! use std::time::Duration;
//! use anonmirror_testnet::{TorNet, require_tor, socks5_connect};
//!
//! if !require_tor() {
//!     return; // skipped, with the reason printed (never under CI=true)
//! }
//! // Moves this thread into the namespace, then starts the network once.
//! let net = TorNet::shared().expect("private Tor network");
//! let client = net.start_client("user", &[]).expect("tor client");
//! let stream = socks5_connect(client.socks, "127.0.0.1", 8080, Duration::from_secs(30));
//! // A tokio runtime built from here on runs inside the namespace too; an
//! // arti client gets `net.arti_config_toml(state_dir, cache_dir)`.
//! ```
//!
//! This crate is a dev-dependency only: nothing in a default build may
//! depend on it. It must never start a process outside the namespace nor
//! configure anything that points outside it, and every wait in it is
//! bounded. It has no arti dependency: arti is the code under test, and
//! its configuration is handed over as text.

#![forbid(unsafe_code)]

pub mod netns;
pub mod portmap;
mod process;
mod socks;
pub mod testbed;
pub mod tornet;

pub use netns::{Namespace, NetNs};
pub use process::program_path;
pub use socks::socks5_connect;
pub use testbed::{Host, Link, LinkCounters, Nat, Testbed, require_testbed};
pub use tornet::{CTorClient, TorNet};

/// Whether a private Tor network can run here: `tor`, `tor-gencert` and
/// `ip` are installed and this process may create a network namespace.
/// When not: under `CI=true` this panics (CI must never skip silently);
/// otherwise it prints why and returns false, and the test returns early.
pub fn require_tor() -> bool {
    let why = if let Some(missing) = missing(&["tor", "tor-gencert", "ip"]) {
        missing
    } else if let Err(e) = Namespace::shared() {
        format!("no private network namespace: {e}")
    } else {
        return true;
    };
    skip(&why)
}

/// Which of `programs` are not installed, as a reason to skip, if any.
pub(crate) fn missing(programs: &[&str]) -> Option<String> {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| program_path(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing: {} — run scripts/test, which installs scripts/system-packages",
            missing.join(", ")
        )
    })
}

/// A test cannot run here, for `why`: under `CI=true` that is a failure
/// (panics: CI never skips silently); otherwise it prints why and returns
/// false, for the test to return early.
pub(crate) fn skip(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    false
}
