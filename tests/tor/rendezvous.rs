//! The rendezvous as an onion service: a volunteer registers, buys a
//! token, redeems it for a session with an onion contact, and gets a push,
//! all over arti.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anonmirror_core::{Clock, Epoch, ManualClock, PeerKey, SeededEntropy};
use anonmirror_overlay::Listener;
use anonmirror_overlay::transport::Dialer;
use anonmirror_rendezvous::msg::{Announcement, Contact};
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

        let dialer: Arc<dyn Dialer> = Arc::new(support::arti(net, &dir.path().join("peer")).await);
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
fn onion_ann(letter: char, key: u8) -> Announcement {
    Announcement {
        contact: Contact::Onion {
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
