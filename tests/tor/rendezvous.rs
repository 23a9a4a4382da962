//! The rendezvous as an onion service: a volunteer registers, buys a
//! token, redeems it for a session with an onion contact, and gets a push,
//! all over arti.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anonmirror_channel::Listener;
use anonmirror_channel::transport::Transport;
use anonmirror_core::{Clock, Epoch, ManualClock, PeerKey, SeededEntropy};
use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire};
use anonmirror_rendezvous::{
    Client, CollectingSink, Rendezvous, ServerConfig, SessionEvent, SortedKeysFilter,
};

use crate::support::{self, PATIENCE, on_tor_net};

const EPOCH_SECS: u64 = 86_400;

#[test]
fn the_rendezvous_serves_a_session_as_an_onion_service() {
    on_tor_net(|net| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::at_unix(100 * EPOCH_SECS + 1);
        let mut cfg = ServerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            dir.path().join("rendezvous"),
            Arc::new(SortedKeysFilter),
            Arc::new(CollectingSink::default()),
        );
        cfg.clock = Arc::new(clock.clone());
        cfg.epoch_secs = EPOCH_SECS;
        cfg.credentials.pow_difficulty = 4;
        let r = Rendezvous::start(cfg).await.expect("rendezvous");

        // Its onion service hands every stream to the rendezvous.
        let host = support::arti(net, &dir.path().join("host")).await;
        let mut listener = host.host_onion_service(7880).await.expect("onion service");
        let onion = listener.local_contact().expect("onion address");
        assert!(onion.is_onion(), "{onion}");
        let streams = r.streams();
        let forward = tokio::spawn(async move {
            while let Ok((s, from)) = listener.accept().await {
                assert!(from.is_none(), "an onion service never knows who connects");
                if streams.send(s).await.is_err() {
                    return;
                }
            }
        });

        let dialer: Arc<dyn Transport> =
            Arc::new(support::arti(net, &dir.path().join("peer")).await);
        let c = Client::with_dialer(onion, r.key(), dialer);
        // The first call waits until the new service is reachable.
        let deadline = Instant::now() + PATIENCE;
        let cred = loop {
            match c
                .register(clock.unix_secs(), 4, SeededEntropy::new(7))
                .await
            {
                Ok(cred) => break cred,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("not yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => panic!("no registration within {PATIENCE:?}: {e}"),
            }
        };
        let epoch = Epoch::containing(clock.unix_secs(), EPOCH_SECS);
        let tokens = c
            .buy_tokens(&cred, clock.unix_secs(), epoch, 1)
            .await
            .expect("a token");
        let mut session = c
            .open_session(&tokens[0], onion_ann('c', 9))
            .await
            .expect("the token buys a session");
        assert_eq!(r.session_count().await.expect("count"), 1);
        assert_eq!(r.push("core", 2).await.expect("push"), 1);
        let ev = tokio::time::timeout(Duration::from_secs(60), session.next_event())
            .await
            .expect("push in time")
            .expect("event");
        assert_eq!(
            ev,
            SessionEvent::SnapshotChanged {
                repository: "core".into(),
                version: 2
            }
        );
        let again = c.open_session(&tokens[0], onion_ann('d', 10)).await;
        assert!(again.is_err(), "a spent token buys nothing");
        forward.abort();
        r.shutdown().await;
    });
}

/// An announcement with an onion contact (`<56 × letter>.onion`).
fn onion_ann(letter: char, key: u8) -> AnnouncementWire {
    AnnouncementWire {
        contact: ContactWire::Onion {
            host: format!("{}.onion", letter.to_string().repeat(56)),
            port: 7879,
        },
        key: PeerKey([key; 32]),
        max_clients: 8,
        upload_rate: 1 << 20,
        region: None,
        snapshots: vec![("core".into(), 1)],
        filter: Vec::new(),
    }
}

/// `anonmirror rendezvous --onion-service-port`: the command prints its
/// onion address, a volunteer registers through it over arti, and after a
/// restart the address (and the Noise key) are the same, so a policy can
/// pin them.
#[test]
fn the_rendezvous_command_keeps_its_onion_address_across_restarts() {
    on_tor_net(|net| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let arti_config = dir.path().join("rendezvous-arti.toml");
        // The command keeps arti's files in its state directory whatever
        // the file says; only the network's authorities matter here.
        std::fs::write(
            &arti_config,
            net.arti_config_toml(&dir.path().join("unused"), &dir.path().join("unused")),
        )
        .expect("arti config");
        let dialer: Arc<dyn Transport> =
            Arc::new(support::arti(net, &dir.path().join("peer")).await);

        let mut first = None;
        for run in 0..2u64 {
            let mut r = RendezvousCommand::start(&dir.path().join("state"), &arti_config);
            let (onion, key) = r.addresses().await;
            assert!(onion.is_onion(), "{onion}");
            match &first {
                None => first = Some((onion.clone(), key)),
                Some(pinned) => assert_eq!(
                    pinned,
                    &(onion.clone(), key),
                    "run {run}: the onion address and key are those of the first run"
                ),
            }
            let c = Client::with_dialer(onion, key, dialer.clone());
            let deadline = Instant::now() + PATIENCE;
            loop {
                let now = anonmirror_core::SystemClock.unix_secs();
                match c.register(now, 4, SeededEntropy::new(run)).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("run {run}: not yet ({e}); retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => panic!("run {run}: no registration within {PATIENCE:?}: {e}"),
                }
            }
            r.stop();
        }
    });
}

/// `anonmirror rendezvous` as a child process, its stdout read line by
/// line on a thread.
struct RendezvousCommand {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl RendezvousCommand {
    fn start(state_dir: &std::path::Path, arti_config: &std::path::Path) -> RendezvousCommand {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_anonmirror"))
            .args([
                "rendezvous",
                "--listen",
                "127.0.0.1:0",
                "--pow-difficulty",
                "4",
            ])
            .args(["--onion-service-port", "7880", "--state-dir"])
            .arg(state_dir)
            .arg("--dangerous-arti-config")
            .arg(arti_config)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("anonmirror rendezvous");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        RendezvousCommand { child, lines }
    }

    /// The onion address and Noise key the command prints.
    async fn addresses(&mut self) -> (anonmirror_core::Contact, PeerKey) {
        let mut next = async || {
            tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .expect("a line in time")
                .expect("the command is running")
        };
        let listening = next().await;
        let key: PeerKey = listening
            .split_whitespace()
            .skip_while(|w| *w != "key")
            .nth(1)
            .unwrap_or_else(|| panic!("a key in `{listening}`"))
            .parse()
            .expect("a Noise key");
        let onion = next().await;
        let contact = onion
            .strip_prefix("rendezvous onion-service ")
            .unwrap_or_else(|| panic!("the onion line, not `{onion}`"));
        let contact = anonmirror_core::Contact::parse(contact).expect("a contact");
        (contact, key)
    }

    /// SIGTERM, and wait for it to go.
    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "it stops cleanly on SIGTERM: {status}");
    }
}

impl Drop for RendezvousCommand {
    fn drop(&mut self) {
        // After `stop` this finds it gone; after a failed assertion it
        // must not outlive the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
