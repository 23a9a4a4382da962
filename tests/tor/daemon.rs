//! The daemon in Tor mode: it refuses to start without Tor when the
//! level requires it, and it fetches through its gateway over Tor.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anonmirror"))
}

/// A strict policy over `transport` (extra `[transport]` lines), with a
/// rendezvous at an onion address.
fn strict_policy(dir: &Path, transport: &str) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "level = \"strict\"\n\n[paths]\nstate_dir = \"{}\"\ncache_dir = \"{}\"\n\n\
             [gateway]\nlisten = \"127.0.0.1:0\"\n\n\
             [rendezvous]\naddress = \"{}.onion:7880\"\nkey = \"{}\"\n\n\
             [transport]\n{transport}\n",
            dir.join("state").display(),
            dir.join("cache").display(),
            "e".repeat(56),
            "22".repeat(32),
        ),
    )
    .expect("write policy");
    path
}

/// A loopback address nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn run_daemon(policy: &Path) -> (bool, String) {
    let out = bin()
        .args(["daemon", "--policy"])
        .arg(policy)
        .output()
        .expect("run daemon");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Strict over a Tor daemon whose SOCKS port is closed: no start, and the
/// error says why and what would change it.
#[test]
fn strict_refuses_to_start_when_the_tor_daemon_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = strict_policy(
        dir.path(),
        &format!("kind = \"tor-socks\"\nsocks = \"{}\"", closed_port()),
    );
    let (ok, stderr) = run_daemon(&policy);
    assert!(!ok, "a strict daemon without Tor must not start: {stderr}");
    assert!(stderr.contains("Tor is unavailable"), "{stderr}");
    assert!(
        stderr.contains("nothing answers on the SOCKS port"),
        "{stderr}"
    );
    assert!(stderr.contains("allow_tcp_fallback"), "{stderr}");
    assert!(
        !dir.path().join("state").join("credential").exists(),
        "nothing was attempted"
    );
}

/// Strict over a Tor daemon whose SOCKS port answers but whose control
/// port does not: no start, since it could serve only through the
/// daemon's onion service, and the error names transport.control.
#[test]
fn strict_refuses_to_start_when_the_tor_daemon_cannot_host_its_onion_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Held open: the start only checks that the SOCKS port accepts.
    let socks = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let control = closed_port();
    let policy = strict_policy(
        dir.path(),
        &format!(
            "kind = \"tor-socks\"\nsocks = \"{}\"\ncontrol = \"{control}\"",
            socks.local_addr().expect("addr")
        ),
    );
    let (ok, stderr) = run_daemon(&policy);
    assert!(
        !ok,
        "a strict daemon that cannot serve must not start: {stderr}"
    );
    assert!(stderr.contains("needs an onion service"), "{stderr}");
    assert!(stderr.contains("transport.control"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the Tor daemon's control port {control}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("allow_tcp_fallback"), "{stderr}");
    assert!(
        !dir.path().join("state").join("credential").exists(),
        "nothing was attempted"
    );
}

/// Strict over arti with a broken arti configuration: no start, naming
/// the misspelt key (arti would otherwise ignore it silently).
#[test]
fn strict_refuses_to_start_when_arti_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let arti = dir.path().join("arti.toml");
    std::fs::write(&arti, "[address_filter]\nallow_local_adrs = true\n").expect("arti config");
    let policy = strict_policy(
        dir.path(),
        &format!(
            "kind = \"tor\"\nexperimental_arti_onion_service = true\n\
             dangerous_arti_config = \"{}\"",
            arti.display()
        ),
    );
    let (ok, stderr) = run_daemon(&policy);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("Tor is unavailable"), "{stderr}");
    assert!(stderr.contains("allow_local_adrs"), "{stderr}");
}
