//! Peer server and swarm download over real sockets on 127.0.0.1: honest
//! peers, misbehaving peers, limits.
//!
//! Misbehaving peers are small servers written here that speak the real
//! Noise channel and wire protocol but lie in one chosen way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_channel::noise::{ChannelParams, StaticKeypair};
use anonmirror_channel::transport::{Listener, TcpTransport};
use anonmirror_core::Contact;
use anonmirror_core::{Entropy, Epoch, ItemKey, ManualClock, SeededEntropy};
use anonmirror_overlay::server::{self, ServerConfig, ServerHandle};
use anonmirror_overlay::swarm::{self, Blame, Outcome, PeerAddr, SwarmConfig};
use anonmirror_overlay::wire::{MAX_DATA_PAYLOAD, Message, Sender};
use anonmirror_privacy::Level;
use anonmirror_store::verify::outboard_len;
use anonmirror_store::{Origin, Store};
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::CreateOutboard;

const LOCAL: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

fn params() -> ChannelParams {
    ChannelParams::new(Level::Open, Epoch(7))
}

fn item_bytes(len: usize, seed: u64) -> (ItemKey, Vec<u8>) {
    let mut data = vec![0u8; len];
    SeededEntropy::new(seed).fill(&mut data);
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    (ItemKey(digest.as_ref().try_into().expect("32 bytes")), data)
}

fn config() -> SwarmConfig {
    let mut c = SwarmConfig::new(params());
    c.piece_size = 256 * 1024;
    c.stall_timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(5);
    c
}

/// An honest peer: a store holding `items`, served by the real server.
async fn honest(
    dir: &std::path::Path,
    items: &[(&ItemKey, &[u8])],
    cfg: ServerConfig,
) -> (ServerHandle, PeerAddr) {
    let store = Store::open(dir, 1 << 34, Arc::new(ManualClock::at_unix(1_000))).expect("store");
    for (key, data) in items {
        store
            .insert(key, data.len() as u64, Origin::Import, *data)
            .expect("insert");
    }
    let keypair = StaticKeypair::generate().expect("keypair");
    let key = keypair.public();
    let listener = TcpTransport
        .listen(&Contact::from(SocketAddr::from(LOCAL)))
        .await
        .expect("bind");
    let handle = server::spawn(listener, store, keypair, params(), cfg).expect("spawn");
    let addr = PeerAddr {
        contact: handle.contact().clone(),
        key,
    };
    (handle, addr)
}

/// Ways a fake peer lies.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Flip one byte of the data at this offset.
    CorruptAt(u64),
    /// Flip the first byte of every data message.
    CorruptAll,
    /// Flip one byte of the outboard.
    BadOutboard,
    /// Serve a valid tree, and matching data, of other content.
    OtherContent,
    /// Send half of the first data request, then close.
    Truncate,
    /// Complete the handshake, then never answer.
    Stall,
    /// Honest data, in messages of odd sizes (every length of the length
    /// varint, payloads not aligned with chunk groups).
    OddSizes,
    /// The second data message of each request skips a byte ahead.
    SkipAhead,
    /// After the first data message of each request, an `Error`.
    ErrorMidway,
}

/// The payload sizes `Lie::OddSizes` cycles through.
const ODD_SIZES: [usize; 7] = [1, 127, 128, 16_383, 16_384, 40_000, MAX_DATA_PAYLOAD];

/// A peer that speaks the protocol but lies as told.
async fn liar(data: Vec<u8>, lie: Lie) -> PeerAddr {
    let data = match lie {
        Lie::OtherContent => item_bytes(data.len(), 999).1,
        _ => data,
    };
    let ob = PreOrderOutboard::<Vec<u8>>::create_sized(
        &data[..],
        data.len() as u64,
        anonmirror_store::BLOCK_SIZE,
    )
    .expect("outboard");
    let root: [u8; 32] = ob.root.into();
    let mut outboard = ob.data;
    if let Lie::BadOutboard = lie {
        let n = outboard.len();
        outboard[n / 2] ^= 1;
    }
    let keypair = StaticKeypair::generate().expect("keypair");
    let key = keypair.public();
    let mut listener = TcpTransport
        .listen(&Contact::from(SocketAddr::from(LOCAL)))
        .await
        .expect("bind");
    let contact = listener.local_contact().expect("addr");
    let shared = Arc::new((data, root, outboard, keypair));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let (data, root, outboard, keypair) = &*shared;
                let Ok(mut ch) = anonmirror_channel::noise::accept(
                    stream,
                    keypair,
                    &params(),
                    Duration::from_secs(5),
                )
                .await
                else {
                    return;
                };
                let mut buf = Vec::new();
                while let Ok(true) = ch.recv_into(&mut buf).await {
                    if let Lie::Stall = lie {
                        // Hold the connection open, say nothing, for longer
                        // than any test runs; dropped with the runtime.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let Ok(Message::Request {
                        item,
                        offset,
                        len,
                        want_meta,
                    }) = Message::decode_from(Sender::Client, &buf)
                    else {
                        return;
                    };
                    if want_meta {
                        let meta = Message::Meta {
                            item,
                            size: data.len() as u64,
                            root: *root,
                            outboard_len: outboard.len() as u64,
                        };
                        ch.send(&meta.encode().expect("encode"))
                            .await
                            .expect("send");
                        let mut at = 0;
                        for part in outboard.chunks(MAX_DATA_PAYLOAD) {
                            let m = Message::Outboard {
                                offset: at,
                                bytes: part.into(),
                            };
                            ch.send(&m.encode().expect("encode")).await.expect("send");
                            at += part.len() as u64;
                        }
                    }
                    let end = offset + len;
                    let mut at = offset;
                    let mut sent = 0usize;
                    while at < end {
                        let most = match lie {
                            Lie::OddSizes => ODD_SIZES[sent % ODD_SIZES.len()],
                            _ => MAX_DATA_PAYLOAD,
                        };
                        let n = ((end - at) as usize).min(most);
                        if let Lie::ErrorMidway = lie
                            && sent == 1
                        {
                            let m = Message::Error {
                                code: anonmirror_overlay::wire::ErrorCode::Internal,
                                message: "midway".into(),
                            };
                            let _ = ch.send(&m.encode().expect("encode")).await;
                            break;
                        }
                        let skip = u64::from(matches!(lie, Lie::SkipAhead) && sent == 1);
                        sent += 1;
                        let mut piece = data[at as usize..at as usize + n].to_vec();
                        if let Lie::CorruptAt(bad) = lie
                            && (at..at + n as u64).contains(&bad)
                        {
                            piece[(bad - at) as usize] ^= 0x80;
                        }
                        if let Lie::CorruptAll = lie {
                            piece[0] ^= 0x80;
                        }
                        if let Lie::Truncate = lie
                            && at >= offset + len / 2
                        {
                            return;
                        }
                        let m = Message::Data {
                            offset: at + skip,
                            bytes: piece.into(),
                        };
                        if ch.send(&m.encode().expect("encode")).await.is_err() {
                            return;
                        }
                        at += n as u64;
                    }
                }
            });
        }
    });
    PeerAddr { contact, key }
}

async fn fetch(key: ItemKey, size: u64, peers: &[PeerAddr]) -> (Vec<u8>, swarm::SwarmReport) {
    let mut out = Vec::new();
    let report = swarm::download(&TcpTransport, &config(), key, size, peers, &mut out)
        .await
        .expect("download completes");
    (out, report)
}

/// A peer whose address accepts connections and never answers, as a hung
/// process's does (the kernel still accepts for it); the connections are
/// held open until the test ends.
async fn silent() -> PeerAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(LOCAL))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    PeerAddr {
        contact: Contact::from(addr),
        key: StaticKeypair::generate().expect("keypair").public(),
    }
}

/// A sink that keeps the bytes and hands every piece buffer back.
struct GivingBack {
    out: Vec<u8>,
    pieces: swarm::Pieces,
}

impl swarm::Sink for GivingBack {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.out.extend_from_slice(&bytes);
        self.pieces.give_back(bytes);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.out.clear();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piece_buffers_handed_back_are_reused_without_their_old_bytes() {
    let (key_a, a) = item_bytes(3 * 256 * 1024 + 5_000, 11);
    let (key_b, b) = item_bytes(3 * 256 * 1024 + 5_000, 12);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_h, peer) = honest(
        dir.path(),
        &[(&key_a, &a), (&key_b, &b)],
        ServerConfig::default(),
    )
    .await;
    // One piece in the window: a piece is only claimed (and its buffer
    // taken) after the one before it reached the sink and came back, so
    // the count of kept buffers is exact rather than a race.
    let mut cfg = config();
    cfg.window = 1;
    for (round, (key, data)) in [(key_a, &a), (key_b, &b), (key_a, &a)]
        .into_iter()
        .enumerate()
    {
        let mut sink = GivingBack {
            out: Vec::new(),
            pieces: cfg.pieces.clone(),
        };
        swarm::download(
            &TcpTransport,
            &cfg,
            key,
            data.len() as u64,
            std::slice::from_ref(&peer),
            &mut sink,
        )
        .await
        .expect("download");
        assert!(sink.out == *data, "bytes differ in round {round}");
        // The three full-size pieces took turns with one buffer, the short
        // last one had its own: two in all, in every round (four without
        // reuse).
        assert_eq!(cfg.pieces.kept(), 2, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_the_handshake_is_left_after_its_allowance() {
    let (key, data) = item_bytes(2 * 1024 * 1024 + 777, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_h, good) = honest(dir.path(), &[(&key, &data)], ServerConfig::default()).await;
    // An hour to connect: only the handshake allowance, a few round trips
    // of the connection itself, can end the wait for the silent peer.
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_secs(3600);
    assert_eq!(
        swarm::handshake_allowance(Duration::from_micros(100), cfg.connect_timeout),
        swarm::HANDSHAKE_MIN
    );
    assert_eq!(
        swarm::handshake_allowance(Duration::from_secs(1), cfg.connect_timeout),
        Duration::from_secs(u64::from(swarm::HANDSHAKE_RTTS))
    );
    // First in line (asked for the tree) and second (a worker's peer).
    for order in [[0, 1], [1, 0]] {
        let mute = silent().await;
        let both = [good.clone(), mute];
        let peers = [both[order[0]].clone(), both[order[1]].clone()];
        let mut out = Vec::new();
        let report = tokio::time::timeout(
            Duration::from_secs(120),
            swarm::download(
                &TcpTransport,
                &cfg,
                key,
                data.len() as u64,
                &peers,
                &mut out,
            ),
        )
        .await
        .expect("the download does not wait out the connect timeout")
        .expect("download completes");
        assert!(out == data);
        let m = order.iter().position(|&i| i == 1).expect("silent peer");
        assert!(
            matches!(report.peers[m].outcome, Outcome::Stalled | Outcome::Slow),
            "{:?}",
            report.peers[m]
        );
        assert_eq!(report.peers[m].bytes, 0);
        assert!(report.culprits().next().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_and_four_peers_deliver_the_item() {
    let (key, data) = item_bytes(6 * 1024 * 1024 + 12_345, 1);
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut peers = Vec::new();
    let mut handles = Vec::new();
    for d in &dirs {
        let (h, p) = honest(d.path(), &[(&key, &data)], ServerConfig::default()).await;
        handles.push(h);
        peers.push(p);
    }
    let (one, report) = fetch(key, data.len() as u64, &peers[..1]).await;
    assert!(one == data, "one peer: bytes differ");
    assert_eq!(report.peers[0].outcome, Outcome::Served);
    assert_eq!(report.peers[0].bytes, data.len() as u64);

    let (four, report) = fetch(key, data.len() as u64, &peers).await;
    assert!(four == data, "four peers: bytes differ");
    assert!(report.culprits().next().is_none());
    let total: u64 = report.peers.iter().map(|p| p.bytes).sum();
    assert!(total >= data.len() as u64);
    let contributors = report.peers.iter().filter(|p| p.bytes > 0).count();
    assert!(
        contributors >= 2,
        "pieces spread over peers: {:?}",
        report.peers
    );
    for h in handles {
        h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_peers_are_named_and_the_item_still_arrives() {
    let (key, data) = item_bytes(3 * 1024 * 1024 + 777, 2);
    let size = data.len() as u64;
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (h1, good1) = honest(dirs[0].path(), &[(&key, &data)], ServerConfig::default()).await;
    let (h2, good2) = honest(dirs[1].path(), &[(&key, &data)], ServerConfig::default()).await;

    // (a) corrupted chunks: caught at their chunk group, the peer blamed.
    // It corrupts every message, so whatever piece it is given betrays it.
    let corrupt = liar(data.clone(), Lie::CorruptAll).await;
    let (got, report) = fetch(key, size, &[corrupt.clone(), good1.clone()]).await;
    assert!(got == data);
    let blamed: Vec<_> = report.culprits().collect();
    assert_eq!(blamed.len(), 1, "{:?}", report.peers);
    assert_eq!(blamed[0].0, &corrupt);
    assert!(
        matches!(blamed[0].1, Blame::BadData { offset } if offset % 16_384 == 0),
        "{:?}",
        blamed[0].1
    );
    // One corrupt byte only: if that peer serves the group holding it, it is
    // blamed for exactly that group.
    let one_bad = liar(data.clone(), Lie::CorruptAt(1_000_000)).await;
    let (got, report) = fetch(key, size, &[one_bad.clone(), good1.clone()]).await;
    assert!(got == data);
    for (peer, blame) in report.culprits() {
        assert_eq!(peer, &one_bad);
        assert_eq!(
            *blame,
            Blame::BadData {
                offset: 1_000_000 / 16_384 * 16_384
            }
        );
    }

    // (b) an outboard that does not hash to its root: refused at once.
    let bad_ob = liar(data.clone(), Lie::BadOutboard).await;
    let (got, report) = fetch(key, size, &[bad_ob.clone(), good1.clone()]).await;
    assert!(got == data);
    assert_eq!(report.peers[0].outcome, Outcome::Blamed(Blame::BadOutboard));
    assert_eq!(report.restarts, 0);

    // (b') a valid tree of other content, with matching data: honest peers
    // fail under it, the whole SHA-256 fails, the tree's sender is blamed,
    // the honest peers' blames are withdrawn, and the download restarts.
    let other = liar(data.clone(), Lie::OtherContent).await;
    let (got, report) = fetch(key, size, &[other.clone(), good1.clone(), good2.clone()]).await;
    assert!(got == data);
    assert_eq!(report.peers[0].outcome, Outcome::Blamed(Blame::BadOutboard));
    assert_eq!(report.culprits().count(), 1, "{:?}", report.peers);
    assert!(report.restarts >= 1);

    // (c) a peer that stops half-way: named, not blamed.
    let cut = liar(data.clone(), Lie::Truncate).await;
    let (got, report) = fetch(key, size, &[cut.clone(), good1.clone()]).await;
    assert!(got == data);
    assert!(
        matches!(report.peers[0].outcome, Outcome::Unavailable(_)),
        "{:?}",
        report.peers[0]
    );
    assert!(report.culprits().next().is_none());

    // (d) a peer that stalls forever after answering the tree request of
    // another: its pieces go to the honest peer.
    let stall = liar(data.clone(), Lie::Stall).await;
    let (got, report) = fetch(key, size, &[good1.clone(), stall.clone()]).await;
    assert!(got == data);
    assert!(
        matches!(report.peers[1].outcome, Outcome::Stalled | Outcome::Slow),
        "{:?}",
        report.peers[1]
    );
    assert_eq!(report.peers[1].bytes, 0);

    // (e) a busy peer and (f) a peer without the item.
    let busy_dir = tempfile::tempdir().expect("tempdir");
    let busy_cfg = ServerConfig {
        max_clients: 0,
        ..ServerConfig::default()
    };
    let (h3, busy) = honest(busy_dir.path(), &[(&key, &data)], busy_cfg).await;
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let (h4, empty) = honest(empty_dir.path(), &[], ServerConfig::default()).await;
    let (got, report) = fetch(key, size, &[busy.clone(), empty.clone(), good2.clone()]).await;
    assert!(got == data);
    assert_eq!(report.peers[0].outcome, Outcome::Busy);
    assert_eq!(report.peers[1].outcome, Outcome::NotFound);
    assert_eq!(report.peers[2].outcome, Outcome::Served);

    // Every liar at once, with one honest peer last.
    let (got, report) = fetch(
        key,
        size,
        &[bad_ob, corrupt.clone(), cut, busy, empty, good2],
    )
    .await;
    assert!(got == data);
    assert_eq!(report.peers[0].outcome, Outcome::Blamed(Blame::BadOutboard));
    // The corrupting peer is blamed only if it was the one to serve its
    // corrupt chunk group; nobody else is ever blamed.
    assert!(
        report
            .culprits()
            .all(|(p, _)| *p == report.peers[0].peer || *p == corrupt)
    );
    assert_eq!(report.peers[3].outcome, Outcome::Busy);
    assert_eq!(report.peers[4].outcome, Outcome::NotFound);
    for h in [h1, h2, h3, h4] {
        h.shutdown().await;
    }
}

/// The downloader opens each data message where its payload belongs in the
/// piece: framing of every legal shape is accepted, and a message at the
/// wrong offset, or an error, in the middle of a piece ends that peer's
/// part without a byte of it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_framing_in_the_middle_of_a_piece() {
    let (key, data) = item_bytes(2 * 1024 * 1024 + 4_321, 4);
    let size = data.len() as u64;
    let odd = liar(data.clone(), Lie::OddSizes).await;
    let (got, report) = fetch(key, size, std::slice::from_ref(&odd)).await;
    assert!(got == data, "odd framing: bytes differ");
    assert_eq!(report.peers[0].outcome, Outcome::Served);

    let dir = tempfile::tempdir().expect("tempdir");
    let (h, good) = honest(dir.path(), &[(&key, &data)], ServerConfig::default()).await;
    let skip = liar(data.clone(), Lie::SkipAhead).await;
    let (got, report) = fetch(key, size, &[skip.clone(), good.clone()]).await;
    assert!(got == data);
    assert!(
        matches!(report.peers[0].outcome, Outcome::Blamed(Blame::Protocol(_))),
        "{:?}",
        report.peers[0]
    );
    assert_eq!(report.culprits().count(), 1);

    let error = liar(data.clone(), Lie::ErrorMidway).await;
    let (got, report) = fetch(key, size, &[error, good]).await;
    assert!(got == data);
    assert!(
        matches!(report.peers[0].outcome, Outcome::Refused(_)),
        "{:?}",
        report.peers[0]
    );
    assert!(report.culprits().next().is_none());
    h.shutdown().await;
}

/// The same lies over shared channels (a pool): the reader that routes
/// pipelined answers hands each lie to its download, which names the peer
/// as it does on a channel of its own, and the item still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lies_over_shared_channels_are_named_as_on_own_ones() {
    let (key, data) = item_bytes(2 * 1024 * 1024 + 4_321, 5);
    let size = data.len() as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let (h, good) = honest(dir.path(), &[(&key, &data)], ServerConfig::default()).await;
    let pooled = |peers: Vec<PeerAddr>| {
        let mut cfg = config();
        cfg.pool = Some(swarm::ChannelPool::default());
        async move {
            let mut out = Vec::new();
            let report = swarm::download(&TcpTransport, &cfg, key, size, &peers, &mut out)
                .await
                .expect("download completes");
            (out, report)
        }
    };
    for (lie, judged) in [
        (Lie::CorruptAll, "blamed for data"),
        (Lie::BadOutboard, "blamed for its outboard"),
        (Lie::SkipAhead, "blamed for protocol"),
        (Lie::ErrorMidway, "refused"),
        (Lie::Truncate, "unavailable"),
    ] {
        let bad = liar(data.clone(), lie).await;
        let (got, report) = pooled(vec![bad, good.clone()]).await;
        assert!(got == data, "{lie:?}: the item arrives");
        let outcome = &report.peers[0].outcome;
        let ok = match lie {
            Lie::CorruptAll => matches!(outcome, Outcome::Blamed(Blame::BadData { .. })),
            Lie::BadOutboard => *outcome == Outcome::Blamed(Blame::BadOutboard),
            Lie::SkipAhead => matches!(outcome, Outcome::Blamed(Blame::Protocol(_))),
            Lie::ErrorMidway => matches!(outcome, Outcome::Refused(_)),
            _ => matches!(outcome, Outcome::Unavailable(_)),
        };
        assert!(ok, "{lie:?} should be {judged}: {outcome:?}");
        assert_eq!(
            report.peers[1].outcome,
            Outcome::Served,
            "{lie:?}: {report:?}"
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_honest_peer_means_an_error_and_nothing_delivered() {
    let (key, data) = item_bytes(500_000, 3);
    let corrupt = liar(data.clone(), Lie::CorruptAt(0)).await;
    let bad_ob = liar(data.clone(), Lie::BadOutboard).await;
    let mut out = Vec::new();
    let err = swarm::download(
        &TcpTransport,
        &config(),
        key,
        data.len() as u64,
        &[bad_ob, corrupt],
        &mut out,
    )
    .await
    .expect_err("no honest peer");
    assert!(out.is_empty(), "nothing unverified reached the sink");
    assert!(err.to_string().contains("no peer could serve it"), "{err}");
    assert_eq!(
        err.report().peers[0].outcome,
        Outcome::Blamed(Blame::BadOutboard)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_bad_ranges_and_pings() {
    let (key, data) = item_bytes(100_000, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ServerConfig {
        max_request_len: 50_000,
        ..ServerConfig::default()
    };
    let (h, peer) = honest(dir.path(), &[(&key, &data)], cfg).await;
    let stream = TcpTransport.open(&peer.contact).await.expect("connect");
    let mut ch =
        anonmirror_channel::noise::connect(stream, &peer.key, &params(), Duration::from_secs(5))
            .await
            .expect("handshake");
    let mut ask = async |m: Message<'_>| {
        ch.send(&m.encode().expect("encode")).await.expect("send");
        let got = ch.recv().await.expect("recv").expect("answer");
        Message::decode_from(Sender::Server, &got)
            .expect("decode")
            .into_owned()
    };
    let beyond = ask(Message::Request {
        item: key,
        offset: 90_000,
        len: 20_000,
        want_meta: false,
    })
    .await;
    assert!(
        matches!(
            beyond,
            Message::Error {
                code: anonmirror_overlay::wire::ErrorCode::RangeNotSatisfiable,
                ..
            }
        ),
        "{beyond:?}"
    );
    let big = ask(Message::Request {
        item: key,
        offset: 0,
        len: 60_000,
        want_meta: false,
    })
    .await;
    assert!(
        matches!(
            big,
            Message::Error {
                code: anonmirror_overlay::wire::ErrorCode::RequestTooLarge,
                ..
            }
        ),
        "{big:?}"
    );
    assert_eq!(
        ask(Message::Ping { nonce: 42 }).await,
        Message::Pong { nonce: 42 }
    );
    let meta = ask(Message::Request {
        item: key,
        offset: 0,
        len: 0,
        want_meta: true,
    })
    .await;
    assert_eq!(
        meta,
        Message::Meta {
            item: key,
            size: 100_000,
            root: *blake3::hash(&data).as_bytes(),
            outboard_len: outboard_len(100_000),
        }
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_under_fifty_concurrent_clients() {
    let (key, data) = item_bytes(200_000, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ServerConfig {
        max_clients: 8,
        upload_rate: Some(4 << 20),
        ..ServerConfig::default()
    };
    let (h, peer) = honest(dir.path(), &[(&key, &data)], cfg).await;
    let open = || async {
        let stream = TcpTransport.open(&peer.contact).await.expect("connect");
        anonmirror_channel::noise::connect(stream, &peer.key, &params(), Duration::from_secs(10))
            .await
            .expect("handshake")
    };
    // Eight clients, each known to be served (they got a Pong)...
    let mut held = Vec::new();
    for nonce in 0..8 {
        let mut ch = open().await;
        ch.send(&Message::Ping { nonce }.encode().expect("encode"))
            .await
            .expect("send");
        let got = ch.recv().await.expect("recv").expect("pong");
        assert_eq!(
            Message::decode(&got).expect("decode"),
            Message::Pong { nonce }
        );
        held.push(ch);
    }
    // ...so the ninth is told Busy at once.
    let mut ninth = open().await;
    let got = ninth.recv().await.expect("recv").expect("busy");
    assert!(matches!(
        Message::decode(&got).expect("decode"),
        Message::Busy { .. }
    ));
    drop(held);
    drop(ninth);

    // Fifty at once: each either gets the whole item right or is told Busy;
    // never more than eight are served at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let peer = peer.clone();
        let data = data.clone();
        tasks.spawn(async move {
            let stream = TcpTransport.open(&peer.contact).await.expect("connect");
            let mut ch = anonmirror_channel::noise::connect(
                stream,
                &peer.key,
                &params(),
                Duration::from_secs(30),
            )
            .await
            .expect("handshake");
            let req = Message::Request {
                item: key,
                offset: 0,
                len: data.len() as u64,
                want_meta: false,
            };
            ch.send(&req.encode().expect("encode")).await.expect("send");
            let mut got = Vec::new();
            while got.len() < data.len() {
                let Some(msg) = ch.recv().await.expect("recv") else {
                    return false;
                };
                match Message::decode_from(Sender::Server, &msg).expect("decode") {
                    Message::Busy { .. } => return false,
                    Message::Data { offset, bytes } => {
                        assert_eq!(offset, got.len() as u64);
                        got.extend_from_slice(&bytes);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(got == data);
            true
        });
    }
    let mut served = 0;
    while let Some(r) = tasks.join_next().await {
        served += usize::from(r.expect("client task"));
    }
    let stats = h.stats();
    assert!(served >= 8, "at least the first eight are served: {served}");
    assert_eq!(
        stats
            .clients_served
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        8 + served
    );
    assert!(
        stats
            .peak_clients
            .load(std::sync::atomic::Ordering::Relaxed)
            <= 8
    );
    assert_eq!(
        stats
            .clients_busy
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        1 + 50 - served
    );
    h.shutdown().await;
}

/// A listener whose transport went away after one accept.
struct Vanishing {
    inner: anonmirror_channel::transport::TcpTransportListener,
    accepted: bool,
}

impl Listener for Vanishing {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<(tokio::net::TcpStream, Option<Contact>)> {
        if self.accepted {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the onion service stopped",
            ));
        }
        self.accepted = true;
        self.inner.accept().await
    }

    fn local_contact(&self) -> std::io::Result<Contact> {
        self.inner.local_contact()
    }
}

/// A listener that is gone for good makes the server say it cannot be
/// reached (so its session stops announcing it); the channel it already
/// accepted is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_listener_is_gone_says_so() {
    let (key, data) = item_bytes(200_000, 77);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 1 << 30, Arc::new(ManualClock::at_unix(1))).expect("store");
    store
        .insert(&key, data.len() as u64, Origin::Import, &data[..])
        .expect("insert");
    let inner = TcpTransport
        .listen(&Contact::Tcp("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("listen");
    let keypair = StaticKeypair::generate().expect("keypair");
    let peer = PeerAddr {
        contact: inner.local_contact().expect("contact"),
        key: keypair.public(),
    };
    let server = server::spawn(
        Vanishing {
            inner,
            accepted: false,
        },
        store,
        keypair,
        params(),
        ServerConfig::default(),
    )
    .expect("server");
    let (got, _) = fetch(key, data.len() as u64, std::slice::from_ref(&peer)).await;
    assert!(got == data, "the channel accepted before is served");
    tokio::time::timeout(Duration::from_secs(30), server.unreachable())
        .await
        .expect("the server says its listener is gone");
    server.shutdown().await;
}

/// Items from one peer with a channel pool: one after another and several
/// at once, they all go over one channel, requests pipelined and answers
/// routed to each download in turn; a channel the peer closed is replaced
/// without the peer being called unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_s_items_share_one_pipelined_channel_and_a_closed_one_is_replaced() {
    let items: Vec<(ItemKey, Vec<u8>)> = [300_000, 70_000, 5_000, 1_300_000, 16_384]
        .iter()
        .zip(21..)
        .map(|(len, seed)| item_bytes(*len, seed))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let stored: Vec<(&ItemKey, &[u8])> = items.iter().map(|(k, d)| (k, &d[..])).collect();
    let (h, peer) = honest(dir.path(), &stored, cfg).await;
    let channels = || {
        h.stats()
            .clients_served
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut cfg = config();
    let pool = swarm::ChannelPool::default();
    cfg.pool = Some(pool.clone());
    let get = |i: usize| {
        let (cfg, peer) = (cfg.clone(), peer.clone());
        let (key, data) = items[i].clone();
        async move {
            let mut out = Vec::new();
            let report = swarm::download(
                &TcpTransport,
                &cfg,
                key,
                data.len() as u64,
                &[peer],
                &mut out,
            )
            .await
            .expect("download completes");
            assert!(out == data, "item {i} arrives whole and right");
            assert_eq!(report.peers[0].outcome, Outcome::Served, "{report:?}");
        }
    };
    // Opened ahead of any request, then used by the first item.
    assert!(pool.warm(&TcpTransport, &cfg, &peer).await);
    assert_eq!(pool.open_count(), 1);
    get(0).await;
    assert_eq!(pool.open_count(), 1, "the channel stays open");
    assert_eq!(channels(), 1, "the first item came over the warmed channel");
    get(1).await;
    assert_eq!(channels(), 1, "the second item came over the first channel");
    // Four at once (one of several pieces): still the one channel.
    tokio::join!(get(1), get(2), get(3), get(4));
    assert_eq!(
        channels(),
        1,
        "concurrent items pipelined on the one channel"
    );

    // The peer idles the channel out (300 ms) while the pool keeps it: the
    // next item finds it closed, and goes over a new one, the peer served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get(2).await;
    assert_eq!(channels(), 2);

    // Without a pool every item opens its own channel.
    let (got, _) = fetch(
        items[0].0,
        items[0].1.len() as u64,
        std::slice::from_ref(&peer),
    )
    .await;
    assert!(got == items[0].1);
    let (got, _) = fetch(items[1].0, items[1].1.len() as u64, &[peer]).await;
    assert!(got == items[1].1);
    assert_eq!(channels(), 4);
    h.shutdown().await;
}

/// A request queued on a shared channel behind another item's answers is
/// credited with the bytes the channel moves for them: its download is
/// waiting its turn on a working channel, not stalled, and a hedge must not
/// take it for a silent peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_on_a_shared_channel_counts_the_bytes_ahead_as_progress() {
    let (big, big_data) = item_bytes(1_300_000, 31);
    let (small, small_data) = item_bytes(20_000, 32);
    let dir = tempfile::tempdir().expect("tempdir");
    // Slow enough that the big item's answers are still coming when the
    // small item's request joins the queue.
    let server = ServerConfig {
        upload_rate: Some(2 << 20),
        ..ServerConfig::default()
    };
    let stored = [(&big, &big_data[..]), (&small, &small_data[..])];
    let (h, peer) = honest(dir.path(), &stored, server).await;
    let mut cfg = config();
    cfg.pool = Some(swarm::ChannelPool::default());
    let download = |key: ItemKey, data: Vec<u8>, progress: swarm::Progress| {
        let (mut cfg, peer) = (cfg.clone(), peer.clone());
        cfg.progress = progress;
        async move {
            let mut out = Vec::new();
            swarm::download(
                &TcpTransport,
                &cfg,
                key,
                data.len() as u64,
                &[peer],
                &mut out,
            )
            .await
            .expect("download completes");
            assert!(out == data);
        }
    };
    let big_progress = swarm::Progress::default();
    let big_done = tokio::spawn(download(big, big_data.clone(), big_progress.clone()));
    // The big item's answers are flowing (and far from done at 2 MiB/s).
    while big_progress.verified() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(big_progress.verified() < big_data.len() as u64 / 2);
    let small_progress = swarm::Progress::default();
    download(small, small_data.clone(), small_progress.clone()).await;
    big_done.await.expect("big download");
    assert!(
        small_progress.verified() > small_data.len() as u64,
        "the queued request was credited: {} bytes for a {}-byte item",
        small_progress.verified(),
        small_data.len()
    );
    h.shutdown().await;
}

/// With shared channels, an item goes to the holder whose channel owes
/// the fewest bytes: not to one still busy with another item's answers,
/// while an idle one holds it too; with nothing owed, the caller's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_goes_to_the_holder_whose_channel_owes_least() {
    let (big, big_data) = item_bytes(1_300_000, 41);
    let (small, small_data) = item_bytes(20_000, 42);
    let (other, other_data) = item_bytes(30_000, 43);
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let stored = [
        (&big, &big_data[..]),
        (&small, &small_data[..]),
        (&other, &other_data[..]),
    ];
    // A is slow: the big item's answers keep its channel busy a while.
    let slow = ServerConfig {
        upload_rate: Some(1 << 20),
        ..ServerConfig::default()
    };
    let (ha, a) = honest(dir_a.path(), &stored, slow).await;
    let (hb, b) = honest(dir_b.path(), &stored, ServerConfig::default()).await;
    let mut cfg = config();
    let pool = swarm::ChannelPool::default();
    cfg.pool = Some(pool.clone());
    let download = |key: ItemKey, data: Vec<u8>, peers: Vec<PeerAddr>, progress| {
        let mut cfg = cfg.clone();
        cfg.progress = progress;
        async move {
            let mut out = Vec::new();
            let report = swarm::download(
                &TcpTransport,
                &cfg,
                key,
                data.len() as u64,
                &peers,
                &mut out,
            )
            .await
            .expect("download completes");
            assert!(out == data);
            report
        }
    };
    assert!(pool.warm(&TcpTransport, &cfg, &a).await);
    assert!(pool.warm(&TcpTransport, &cfg, &b).await);
    let big_progress = swarm::Progress::default();
    let big_done = tokio::spawn(download(
        big,
        big_data.clone(),
        vec![a.clone()],
        big_progress.clone(),
    ));
    while big_progress.verified() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(big_progress.verified() < big_data.len() as u64 / 2);
    // A is listed first but owes most of the big item: B serves.
    let report = download(
        small,
        small_data.clone(),
        vec![a.clone(), b.clone()],
        swarm::Progress::default(),
    )
    .await;
    assert_eq!(report.peers[1].outcome, Outcome::Served, "{report:?}");
    assert_eq!(report.peers[0].outcome, Outcome::Unused, "{report:?}");
    big_done.await.expect("big download");
    // Nothing owed anywhere: the first listed serves.
    let report = download(
        other,
        other_data.clone(),
        vec![a.clone(), b.clone()],
        swarm::Progress::default(),
    )
    .await;
    assert_eq!(report.peers[0].outcome, Outcome::Served, "{report:?}");
    ha.shutdown().await;
    hb.shutdown().await;
}
