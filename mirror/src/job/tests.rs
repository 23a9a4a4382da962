//! Tests of the jobs: draining, the work file's writer, lent pieces,
//! the feed's memory and the hedge's timing.

use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{Entropy, ItemKey, OsEntropy};
use anonmirror_overlay::swarm::{Pieces, SwarmConfig};
use anonmirror_store::Store;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::job::feed::{RECENT_MAX, Recent};
use crate::job::peers::{Lent, late};
use crate::job::writer::{WRITES_QUEUED, WorkWriter, Write};
use crate::job::{FetchConfig, Fetcher, Want};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// An upstream on 127.0.0.1 that answers one GET with `body`: half of
/// it at once, the rest after `pause`.
async fn slow_upstream(body: Vec<u8>, pause: Duration) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        let half = body.len() / 2;
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&body[..half]).await;
        tokio::time::sleep(pause).await;
        let _ = s.write_all(&body[half..]).await;
        let _ = s.flush().await;
    });
    format!("http://{addr}/item")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_download_under_way_to_be_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut body = vec![0u8; 300_000];
    OsEntropy.fill(&mut body);
    let key = ItemKey(
        ring::digest::digest(&ring::digest::SHA256, &body)
            .as_ref()
            .try_into()
            .expect("32 bytes"),
    );
    let url = slow_upstream(body.clone(), Duration::from_millis(300)).await;
    let store = Store::open(
        &dir.path().join("store"),
        1 << 30,
        Arc::new(anonmirror_core::SystemClock),
    )
    .expect("store");
    let fetcher = Arc::new(
        Fetcher::new(
            store.clone(),
            Arc::new(Upstream::new(Duration::from_secs(10))),
            None,
            Arc::new(Metrics::default()),
            FetchConfig {
                work_dir: dir.path().join("store").join("tmp"),
                swarm: SwarmConfig::new(anonmirror_channel::ChannelParams::new(
                    anonmirror_privacy::Level::Open,
                    anonmirror_core::Epoch(0),
                )),
                hedge_after: None,
                dialer: Arc::new(anonmirror_channel::TcpTransport),
            },
        )
        .expect("fetcher"),
    );
    let job = fetcher.job(Want {
        key,
        size: body.len() as u64,
        repository: "r".into(),
        version: 1,
        url,
    });
    drop(job);
    // The upstream pauses mid-body: only a drain that waits sees the
    // item stored when it returns.
    assert!(
        fetcher.drain(Duration::from_secs(60)).await,
        "the job ended"
    );
    assert_eq!(
        store.meta(&key).expect("store").map(|m| m.size),
        Some(body.len() as u64)
    );
    // Jobs still run after a drain.
    assert!(fetcher.drain(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_work_file_that_cannot_be_made_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing").join("job-x");
    let writer = WorkWriter::spawn(path, Arc::new(Recent::default()), None);
    let mut sent = Ok(());
    // The thread fails at once; sends stop being taken soon after.
    for _ in 0..=WRITES_QUEUED {
        sent = writer.send(Write::Bytes(Bytes::from_static(b"x"))).await;
        if sent.is_err() {
            break;
        }
    }
    let finished = writer.finish().await;
    let e = finished.expect_err("no file to write");
    assert!(e.to_string().contains("creating it"), "{e}");
    if let Err(e) = sent {
        assert!(e.to_string().contains("creating it"), "{e}");
    }
}

#[test]
fn a_lent_piece_goes_back_when_its_last_reader_is_done() {
    let pieces = Pieces::default();
    let bytes = Lent::bytes(vec![7u8; 1000], &pieces);
    let reader = bytes.slice(10..20);
    drop(bytes);
    assert_eq!(pieces.kept(), 0, "a reader still holds it");
    assert_eq!(&reader[..], &[7u8; 10]);
    drop(reader);
    assert_eq!(pieces.kept(), 1);
}

#[test]
fn recent_bytes_leave_memory_only_once_in_the_file() {
    let r = Recent::default();
    let piece = |n: u8| Bytes::from(vec![n; RECENT_MAX / 2]);
    let half = (RECENT_MAX / 2) as u64;
    for i in 0..4u8 {
        r.push(u64::from(i) * half, piece(i));
    }
    // Slices within a piece, cut at the requested end.
    assert_eq!(r.get(10, 20).expect("held").len(), 10);
    assert_eq!(r.get(half - 1, 4 * half).expect("held").len(), 1);
    assert_eq!(r.get(half, 4 * half).expect("held")[0], 1);
    assert!(r.get(4 * half, 5 * half).is_none(), "not published");
    // Over the limit, but nothing is in the file yet: all kept.
    r.in_file(0, 0);
    assert!(r.get(0, 1).is_some());
    // The file holds three pieces: the oldest go until the limit holds.
    r.in_file(0, 3 * half);
    assert!(r.get(0, 1).is_none() && r.get(half, half + 1).is_none());
    assert!(r.get(2 * half, 2 * half + 1).is_some());
    // After a reset, the writer's reports of the old file mean nothing.
    let generation = r.reset();
    assert!(r.get(2 * half, 2 * half + 1).is_none());
    for i in 0..4u8 {
        r.push(u64::from(i) * half, piece(i + 10));
    }
    r.in_file(generation - 1, 4 * half);
    assert_eq!(r.get(0, 1).expect("kept")[0], 10);
    r.in_file(generation, 4 * half);
    assert!(r.get(0, 1).is_none());
    assert_eq!(r.get(3 * half, 3 * half + 1).expect("kept")[0], 13);
}

#[test]
fn peers_are_late_by_the_deadline_or_by_their_pace() {
    let ms = Duration::from_millis;
    // Before the first deadline: never.
    assert!(!late(ms(100), 0, 1000, ms(200), Some(ms(50))));
    // After it with nothing delivered: always.
    assert!(late(ms(200), 0, 1000, ms(200), None));
    // Half delivered in 1 s: 1 s left, against an upstream of 0.5 s.
    assert!(late(ms(1000), 500, 1000, ms(200), Some(ms(500))));
    // … against an upstream of 2 s: keep the peers.
    assert!(!late(ms(1000), 500, 1000, ms(200), Some(ms(2000))));
    // Without a rate for the upstream, delivering peers are kept.
    assert!(!late(ms(1000), 1, 1000, ms(200), None));
}
