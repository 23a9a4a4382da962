//! In Tor mode the daemon opens no direct connection to a non-loopback
//! address and resolves no name itself: traced with strace while its
//! gateway fetches from an upstream mirror on a non-loopback address
//! (reached through an exit) and from the same mirror as an onion service
//! (a name only Tor can resolve: the daemon hands it over unresolved).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anonmirror_node::demo::{StaticServer, generate_repository};
use anonmirror_node::http::get as http_get;

use crate::support::{PATIENCE, PEER_IP, on_tor_net};

#[test]
fn a_tor_mode_daemon_connects_only_to_tor_and_resolves_nothing() {
    on_tor_net(|net| async move {
        let strace = anonmirror_testnet::program_path("strace");
        if strace.is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "strace is missing: run scripts/test, which installs scripts/system-packages"
            );
            eprintln!("skipping: strace is missing");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("upstream");
        let packages = generate_repository(&root, 3, 5).expect("repository");
        let direct = StaticServer::start_at(root.clone(), SocketAddr::new(PEER_IP, 0))
            .await
            .expect("mirror on the peer address");
        // The same mirror as a Tor daemon's onion service.
        let onion_mirror = net
            .start_client("onion-mirror", &[(80, direct.addr)])
            .expect("onion mirror");
        let onion = onion_mirror.onions[0].clone();
        let node = dir.path().join("node");
        std::fs::create_dir_all(&node).expect("mkdir");
        let arti = node.join("arti.toml");
        std::fs::write(
            &arti,
            net.arti_config_toml(&node.join("state/arti"), &node.join("cache/arti")),
        )
        .expect("arti config");
        let policy = node.join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "level = \"off\"\n\n[paths]\nstate_dir = \"{state}\"\ncache_dir = \"{cache}\"\n\n\
                 [gateway]\nlisten = \"127.0.0.1:0\"\n\n\
                 [[repository]]\nname = \"direct\"\nkind = \"apt\"\nurl = \"{direct}\"\n\n\
                 [[repository]]\nname = \"onion\"\nkind = \"apt\"\nurl = \"http://{onion}/\"\n\n\
                 [transport]\nkind = \"tor\"\ndangerous_arti_config = \"{arti}\"\n",
                state = node.join("state").display(),
                cache = node.join("cache").display(),
                direct = direct.url(),
                arti = arti.display(),
            ),
        )
        .expect("policy");
        let trace = node.join("trace");
        let mut child = Command::new(strace.expect("strace"))
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=connect,sendto,sendmsg,openat,open",
                "-o",
            ])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_anonmirror"))
            .args(["daemon", "--policy"])
            .arg(&policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace the daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        let gateway = line
            .trim()
            .strip_prefix("gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        for repo in ["direct", "onion"] {
            for path in [
                "dists/demo/Release",
                "dists/demo/main/binary-all/Packages",
                &packages[0].path,
            ] {
                let url = format!("http://{gateway}/{repo}/{path}");
                let deadline = Instant::now() + PATIENCE;
                loop {
                    match tokio::time::timeout(Duration::from_secs(90), http_get(&url)).await {
                        Ok(Ok((status, _))) if status.is_success() => break,
                        other if Instant::now() < deadline => {
                            eprintln!("{repo}/{path}: not yet ({other:?})");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        other => panic!("{repo}/{path}: {other:?}"),
                    }
                }
            }
        }
        // The daemon is strace's child: stop it, and strace ends with it.
        let _ = Command::new("pkill")
            .args(["-TERM", "-P", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let text = std::fs::read_to_string(&trace).expect("trace");
        let connects: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("connect(") && l.contains("AF_INET"))
            .collect();
        assert!(
            connects.iter().any(|l| l.contains("127.0.0.1")),
            "the trace shows the daemon's connections to its Tor relays: {text}"
        );
        for l in &connects {
            let loopback = l.contains("inet_addr(\"127.") || l.contains("\"::1\"");
            assert!(
                loopback,
                "a direct connection off this machine's loopback: {l}"
            );
            assert!(!l.contains("htons(53)"), "a DNS query: {l}");
        }
        for l in text.lines() {
            assert!(
                !(l.contains("/etc/resolv.conf") || l.contains("/etc/hosts")),
                "the system resolver was used: {l}"
            );
            assert!(!l.contains("htons(53)"), "a DNS query: {l}");
        }
        assert!(
            !text.contains(&PEER_IP.to_string()),
            "the daemon went to the non-loopback mirror directly"
        );
        let used = std::fs::read_to_string(node.join("state").join("transport.txt"))
            .expect("transport.txt");
        assert!(used.contains("connections: tor (arti)"), "{used}");
    });
}
