//! kill -9 under load, then restart: no token reusable, no credential
//! lost. Runs the built `anonmirror rendezvous` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_core::{Epoch, PeerKey, SeededEntropy};
use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire, Refusal};
use anonmirror_rendezvous::{Client, Error, Token};

fn spawn(state: &std::path::Path, listen: &str) -> (Child, std::net::SocketAddr, PeerKey) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anonmirror"))
        .args(["rendezvous", "--state-dir"])
        .arg(state)
        .args([
            "--listen",
            listen,
            "--pow-difficulty",
            "4",
            "--tokens-per-epoch",
            "64",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn anonmirror rendezvous");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("banner");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..3], ["rendezvous", "listening", "on"], "{line}");
    let addr = words[3].parse().expect("address");
    let key: PeerKey = words[5].parse().expect("key");
    (child, addr, key)
}

/// The `i`th made-up session: an onion contact, which the rendezvous
/// takes without a dial-back (a TCP contact would need a peer server).
fn ann(i: u32) -> AnnouncementWire {
    const BASE32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let tail: String = (0..8)
        .map(|d| char::from(BASE32[((u64::from(i) >> (5 * d)) & 31) as usize]))
        .collect();
    AnnouncementWire {
        contact: ContactWire::Onion {
            host: format!("{}{tail}.onion", "a".repeat(48)),
            port: 1,
        },
        key: PeerKey({
            let mut k = [0x5a; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k
        }),
        max_clients: 4,
        upload_rate: 1 << 20,
        region: None,
        snapshots: vec![],
        filter: vec![],
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn kill_9_under_load_then_restart_loses_no_spend_and_no_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (mut child, addr, key) = spawn(dir.path(), "127.0.0.1:0");
    let client = Client::new(addr, key);
    let epoch = Epoch::containing(now(), 86_400);

    let (creds, tokens) = rt.block_on(async {
        let mut creds = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        for i in 0..10 {
            let c = client
                .register(now(), 4, SeededEntropy::new(i))
                .await
                .expect("register");
            tokens.extend(client.buy_tokens(&c, now(), epoch, 40).await.expect("buy"));
            creds.push(c);
        }
        (creds, tokens)
    });

    // Load: 8 workers redeem tokens as fast as they can; every token the
    // rendezvous acknowledged is recorded. The process is killed mid-way.
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let tokens = Arc::new(tokens);
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for w in 0..8usize {
            let (client, tokens, acked) = (client.clone(), tokens.clone(), acked.clone());
            set.spawn(async move {
                let mut i = w;
                while i < tokens.len() {
                    match client.open_session(&tokens[i], ann(i as u32)).await {
                        Ok(s) => {
                            acked.lock().expect("lock").push(i);
                            s.close().await;
                        }
                        Err(_) => return,
                    }
                    i += 8;
                }
            });
        }
        // Kill once a good share is acknowledged, while workers still run.
        loop {
            if acked.lock().expect("lock").len() >= 100 {
                break;
            }
            while set.try_join_next().is_some() {}
            assert!(
                !set.is_empty(),
                "every worker stopped before the kill: {} acknowledged",
                acked.lock().expect("lock").len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        while set.join_next().await.is_some() {}
    });
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 100 && acked.len() < tokens.len(),
        "{}",
        acked.len()
    );

    // Restart on the same state; the key and credentials are the same.
    let (mut child, addr, key2) = spawn(dir.path(), "127.0.0.1:0");
    assert_eq!(key2, key, "the pinned key survives");
    let client = Client::new(addr, key);
    rt.block_on(async {
        for i in &acked {
            let again = client
                .open_session(&tokens[*i], ann(10_000 + *i as u32))
                .await;
            assert!(
                matches!(again, Err(Error::Refused(Refusal::TokenSpent))),
                "token {i} reusable after the crash: {again:?}"
            );
        }
        for c in &creds {
            // Each bought 40 of 64: 24 left, so buying works.
            client
                .buy_tokens(c, now(), epoch, 1)
                .await
                .expect("credential survived");
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}
