//! Noise channels over real sockets on 127.0.0.1 (ephemeral ports): a
//! large round trip, and an attacker in the middle (a frame-aware TCP
//! proxy) that flips, cuts, re-frames or replays frames, each of which must
//! end the channel with the error that names it.
//!
//! No test asserts on timing; every test is bounded by [`bounded`] so that
//! a hang fails instead of blocking the suite.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anonmirror_channel::noise::MAX_MESSAGE;
use anonmirror_channel::transport::{Listener as _, TcpTransportListener};
use anonmirror_channel::{ChannelParams, Error, StaticKeypair, TcpTransport, accept, connect};
use anonmirror_core::{Contact, Epoch, ErrorKind, HasKind, PeerKey};
use anonmirror_privacy::Level;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const HANDSHAKE: Duration = Duration::from_secs(10);

fn params() -> ChannelParams {
    ChannelParams::new(Level::Balanced, Epoch(20_000))
}

/// Fails the test if `fut` has not finished within a minute: a bound on
/// hangs, not a performance assertion.
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test hung")
}

async fn listen() -> (TcpTransportListener, Contact) {
    let listener = TcpTransport
        .listen(&Contact::from(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
        .expect("bind");
    let at = listener.local_contact().expect("local address");
    (listener, at)
}

/// Deterministic bytes, so the receiver can check what it got without
/// holding a copy of everything sent.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            // xorshift64: any fixed non-trivial sequence will do.
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_64_mib_in_max_size_messages() {
    bounded(async {
        const TOTAL: usize = 64 * 1024 * 1024;
        let keypair = StaticKeypair::generate().expect("keypair");
        let responder = keypair.public();
        let (mut listener, at) = listen().await;
        // An echo server on the unsplit channel: one message in, the same out.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut ch = accept(stream, &keypair, &params(), HANDSHAKE)
                .await
                .expect("handshake");
            let mut message = Vec::new();
            let mut echoed = 0usize;
            while ch.recv_into(&mut message).await.expect("recv") {
                ch.send(&message).await.expect("echo");
                echoed += message.len();
            }
            ch.shutdown().await.expect("shutdown");
            echoed
        });
        let stream = TcpTransport.open(&at).await.expect("connect");
        let ch = connect(stream, &responder, &params(), HANDSHAKE)
            .await
            .expect("handshake");
        let (mut tx, mut rx) = ch.split();
        let sender = tokio::spawn(async move {
            let mut data = Stream(0x9e37_79b9_7f4a_7c15);
            let mut buf = vec![0u8; MAX_MESSAGE];
            let mut sent = 0;
            while sent < TOTAL {
                let n = MAX_MESSAGE.min(TOTAL - sent);
                data.fill(&mut buf[..n]);
                tx.send(&buf[..n]).await.expect("send");
                sent += n;
            }
            tx.shutdown().await.expect("shutdown");
        });
        let mut expected = Stream(0x9e37_79b9_7f4a_7c15);
        let mut want = vec![0u8; MAX_MESSAGE];
        let mut got = Vec::new();
        let mut received = 0;
        while rx.recv_into(&mut got).await.expect("recv") {
            // Message boundaries survive: every message but the last is full.
            assert_eq!(got.len(), MAX_MESSAGE.min(TOTAL - received));
            expected.fill(&mut want[..got.len()]);
            assert!(got == want[..got.len()], "bytes differ after {received}");
            received += got.len();
        }
        assert_eq!(received, TOTAL);
        assert_eq!(rx.recv().await.expect("still clean"), None);
        sender.await.expect("sender");
        assert_eq!(server.await.expect("server"), TOTAL);
    })
    .await;
}

/// What a proxy does with one frame (length prefix included).
enum Act {
    /// Write these bytes and go on.
    Forward(Vec<u8>),
    /// Write these bytes, then close the connection onward.
    Close(Vec<u8>),
}

type Tamper = Box<dyn FnMut(u64, Vec<u8>) -> Act + Send>;

/// Copies frames from `from` to `to`, numbered from 0 as the channel
/// numbers them, through `tamper`. Errors just end the copy: the proxy is
/// the attacker, and the tests judge the endpoints.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut tamper: Tamper) {
    let mut number = 0;
    loop {
        let mut prefix = [0u8; 2];
        if from.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let mut frame = prefix.to_vec();
        frame.resize(2 + usize::from(u16::from_be_bytes(prefix)), 0);
        if from.read_exact(&mut frame[2..]).await.is_err() {
            break;
        }
        match tamper(number, frame) {
            Act::Forward(bytes) => {
                if to.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Act::Close(bytes) => {
                let _ = to.write_all(&bytes).await;
                break;
            }
        }
        number += 1;
    }
    let _ = to.shutdown().await;
}

/// A proxy for one connection to `server`, tampering with the initiator's
/// frames; returns where initiators should connect.
async fn proxy(server: Contact, tamper: Tamper) -> Contact {
    let (mut listener, at) = listen().await;
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("proxy accept");
        let upstream = TcpTransport.open(&server).await.expect("proxy connect");
        let (client_rd, client_wr) = client.into_split();
        let (up_rd, up_wr) = upstream.into_split();
        let forward = |_, frame| Act::Forward(frame);
        tokio::join!(
            pipe(client_rd, up_wr, tamper),
            pipe(up_rd, client_wr, Box::new(forward)),
        );
    });
    at
}

/// How the responder's side of a channel ended.
#[derive(Debug)]
enum Ended {
    /// The handshake failed.
    Handshake(Error),
    /// The channel failed after these messages; every later call failed
    /// with the same error.
    Failed(Vec<Vec<u8>>, Error),
    /// The initiator closed cleanly after these messages.
    Clean(Vec<Vec<u8>>),
}

/// A responder that receives until the channel ends, then checks that a
/// failed channel stays failed for both receiving and sending.
fn respond(
    mut listener: TcpTransportListener,
    keypair: StaticKeypair,
    p: ChannelParams,
) -> tokio::task::JoinHandle<Ended> {
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ch = match accept(stream, &keypair, &p, HANDSHAKE).await {
            Ok(ch) => ch,
            Err(e) => return Ended::Handshake(e),
        };
        let mut got = Vec::new();
        loop {
            match ch.recv().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return Ended::Clean(got),
                Err(e) => {
                    let again = ch.recv().await.expect_err("poisoned recv");
                    let send = ch.send(b"late").await.expect_err("poisoned send");
                    assert_eq!(again.to_string(), e.to_string());
                    assert_eq!(send.to_string(), e.to_string());
                    return Ended::Failed(got, e);
                }
            }
        }
    })
}

fn message(i: usize) -> Vec<u8> {
    format!("message {i}").into_bytes()
}

/// Runs an initiator that sends `count` messages through a proxy applying
/// `tamper` to its frames, and returns how the responder's side ended.
async fn tampered(count: usize, tamper: Tamper) -> Ended {
    let keypair = StaticKeypair::generate().expect("keypair");
    let responder = keypair.public();
    let (listener, at) = listen().await;
    let server = respond(listener, keypair, params());
    let via = proxy(at, tamper).await;
    let stream = TcpTransport.open(&via).await.expect("connect");
    // The initiator may be cut off by the responder at any point: what it
    // sees is not under test here, so its errors only stop it.
    if let Ok(mut ch) = connect(stream, &responder, &params(), HANDSHAKE).await {
        for i in 0..count {
            if ch.send(&message(i)).await.is_err() {
                break;
            }
        }
        let _ = ch.shutdown().await;
    }
    server.await.expect("responder task")
}

fn on_frame(target: u64, mut edit: impl FnMut(Vec<u8>) -> Act + Send + 'static) -> Tamper {
    Box::new(move |number, frame| {
        if number == target {
            edit(frame)
        } else {
            Act::Forward(frame)
        }
    })
}

fn messages(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range.map(message).collect()
}

#[tokio::test]
async fn untampered_proxy_changes_nothing() {
    // The baseline of the tampering tests: the proxy itself is transparent.
    let ended = bounded(tampered(5, Box::new(|_, f| Act::Forward(f)))).await;
    assert!(
        matches!(&ended, Ended::Clean(got) if *got == messages(0..5)),
        "{ended:?}"
    );
}

#[tokio::test]
async fn flipped_bit_ends_the_channel() {
    let ended = bounded(tampered(
        5,
        on_frame(3, |mut f| {
            f[5] ^= 0x10;
            Act::Forward(f)
        }),
    ))
    .await;
    let Ended::Failed(got, e) = ended else {
        panic!("{ended:?}")
    };
    assert_eq!(got, messages(0..2));
    assert!(matches!(e, Error::Decrypt { frame: 3 }), "{e}");
    assert_eq!(e.kind(), ErrorKind::PeerMisbehaved);
    assert!(e.to_string().contains("frame 3"), "{e}");
}

#[tokio::test]
async fn truncated_frame_ends_the_channel() {
    let ended = bounded(tampered(5, on_frame(2, |f| Act::Close(f[..10].to_vec())))).await;
    let Ended::Failed(got, e) = ended else {
        panic!("{ended:?}")
    };
    assert_eq!(got, messages(0..1));
    assert!(matches!(e, Error::Truncated { frame: 2, have: 10 }), "{e}");
}

#[tokio::test]
async fn oversized_length_ends_the_channel() {
    // A transport frame's prefix cannot exceed the maximum, so a longer
    // declared length runs into the next frame's bytes and fails
    // authentication; it is never delivered in part.
    let ended = bounded(tampered(
        10,
        on_frame(1, |mut f| {
            let len = u16::from_be_bytes([f[0], f[1]]) + 100;
            f[..2].copy_from_slice(&len.to_be_bytes());
            Act::Forward(f)
        }),
    ))
    .await;
    let Ended::Failed(got, e) = ended else {
        panic!("{ended:?}")
    };
    assert!(got.is_empty());
    assert!(matches!(e, Error::Decrypt { frame: 1 }), "{e}");

    // A handshake frame is larger than handshake messages are: refused
    // from its prefix alone.
    let ended = bounded(tampered(
        1,
        on_frame(0, |mut f| {
            f[..2].copy_from_slice(&u16::MAX.to_be_bytes());
            Act::Forward(f)
        }),
    ))
    .await;
    assert!(
        matches!(
            ended,
            Ended::Handshake(Error::HandshakeLength {
                message: 1,
                len: 65_535,
                expected: 48
            })
        ),
        "{ended:?}"
    );
}

#[tokio::test]
async fn undersized_length_ends_the_channel() {
    let ended = bounded(tampered(
        5,
        on_frame(2, |mut f| {
            f[..2].copy_from_slice(&8u16.to_be_bytes());
            Act::Forward(f)
        }),
    ))
    .await;
    let Ended::Failed(got, e) = ended else {
        panic!("{ended:?}")
    };
    assert_eq!(got, messages(0..1));
    assert!(
        matches!(
            e,
            Error::FrameTooShort {
                frame: 2,
                len: 8,
                min: 16
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn replayed_frame_ends_the_channel() {
    let ended = bounded(tampered(
        5,
        on_frame(2, |f| Act::Forward([f.clone(), f].concat())),
    ))
    .await;
    let Ended::Failed(got, e) = ended else {
        panic!("{ended:?}")
    };
    assert_eq!(got, messages(0..2));
    assert!(matches!(e, Error::Decrypt { frame: 3 }), "{e}");
}

/// Connects with `key` and `initiator` params to a responder holding
/// `keypair` with `responder` params; returns both sides' handshake errors.
async fn mismatched(
    key: PeerKey,
    initiator: ChannelParams,
    responder: ChannelParams,
) -> (Error, Ended) {
    let keypair = StaticKeypair::generate().expect("keypair");
    let key = if key == PeerKey([0; 32]) {
        keypair.public()
    } else {
        key
    };
    let (listener, at) = listen().await;
    let server = respond(listener, keypair, responder);
    let stream = TcpTransport.open(&at).await.expect("connect");
    let client = connect(stream, &key, &initiator, HANDSHAKE)
        .await
        .expect_err("handshake must fail");
    (client, server.await.expect("responder task"))
}

fn assert_refused(client: &Error, server: &Ended) {
    assert!(
        matches!(
            server,
            Ended::Handshake(Error::HandshakeAuth { message: 1 })
        ),
        "{server:?}"
    );
    assert!(
        matches!(client, Error::ClosedInHandshake { message: 2 }),
        "{client}"
    );
    assert_eq!(client.kind(), ErrorKind::PeerUnavailable);
}

#[tokio::test]
async fn wrong_responder_key_is_refused() {
    let other = StaticKeypair::generate().expect("keypair").public();
    let (client, server) = bounded(mismatched(other, params(), params())).await;
    assert_refused(&client, &server);
    assert!(client.to_string().contains("another key"), "{client}");
}

#[tokio::test]
async fn prologue_mismatch_is_refused() {
    let same_key = PeerKey([0; 32]);
    let other_epoch = ChannelParams::new(Level::Balanced, Epoch(20_001));
    let (client, server) = bounded(mismatched(same_key, other_epoch, params())).await;
    assert_refused(&client, &server);
    let other_level = ChannelParams::new(Level::Strict, Epoch(20_000));
    let (client, server) = bounded(mismatched(same_key, other_level, params())).await;
    assert_refused(&client, &server);
    if let Ended::Handshake(e) = server {
        assert!(e.to_string().contains("prologue"), "{e}");
    }
}

#[tokio::test]
async fn handshake_payload_is_refused() {
    bounded(async {
        let keypair = StaticKeypair::generate().expect("keypair");
        let responder = keypair.public();
        let (listener, at) = listen().await;
        let server = respond(listener, keypair, params());
        // A rogue initiator, built on snow directly, that puts a token in
        // handshake message 1.
        let prologue = params().prologue();
        let mut rogue = snow::Builder::new(
            params()
                .suite
                .protocol_name()
                .parse()
                .expect("suite name parses"),
        )
        .prologue(&prologue)
        .expect("prologue")
        .remote_public_key(responder.as_bytes())
        .expect("key")
        .build_initiator()
        .expect("initiator");
        let mut msg = [0u8; 128];
        let n = rogue.write_message(b"token", &mut msg).expect("message 1");
        let mut stream = TcpTransport.open(&at).await.expect("connect");
        stream
            .write_all(&u16::try_from(n).expect("small").to_be_bytes())
            .await
            .expect("prefix");
        stream.write_all(&msg[..n]).await.expect("body");
        let ended = server.await.expect("responder task");
        assert!(
            matches!(
                ended,
                Ended::Handshake(Error::HandshakeLength {
                    message: 1,
                    len: 53,
                    expected: 48
                })
            ),
            "{ended:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn silent_initiator_times_out() {
    bounded(async {
        let keypair = StaticKeypair::generate().expect("keypair");
        let (mut listener, at) = listen().await;
        let _silent = TcpTransport.open(&at).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let after = Duration::from_millis(50);
        let e = accept(stream, &keypair, &params(), after)
            .await
            .expect_err("nothing was sent");
        assert!(
            matches!(e, Error::Timeout { after: a } if a == after),
            "{e}"
        );
    })
    .await;
}

#[tokio::test]
async fn both_directions_and_clean_close() {
    bounded(async {
        let keypair = StaticKeypair::generate().expect("keypair");
        let responder = keypair.public();
        let (mut listener, at) = listen().await;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut ch = accept(stream, &keypair, &params(), HANDSHAKE)
                .await
                .expect("handshake");
            // The responder may speak first after the handshake.
            ch.send(b"welcome").await.expect("send");
            let token = ch.recv().await.expect("recv").expect("a token");
            ch.send(&[&b"got "[..], &token].concat())
                .await
                .expect("send");
            assert_eq!(ch.recv().await.expect("empty"), Some(Vec::new()));
            assert_eq!(ch.recv().await.expect("clean"), None);
            assert_eq!(ch.recv().await.expect("still clean"), None);
            *ch.handshake_hash()
        });
        let stream = TcpTransport.open(&at).await.expect("connect");
        let mut ch = connect(stream, &responder, &params(), HANDSHAKE)
            .await
            .expect("handshake");
        ch.send(b"token").await.expect("send");
        assert_eq!(
            ch.recv().await.expect("recv").as_deref(),
            Some(&b"welcome"[..])
        );
        assert_eq!(
            ch.recv().await.expect("recv").as_deref(),
            Some(&b"got token"[..])
        );
        ch.send(&[]).await.expect("empty messages are messages");
        let e = ch
            .send(&vec![0; MAX_MESSAGE + 1])
            .await
            .expect_err("too long");
        assert!(matches!(e, Error::MessageTooLong { .. }), "{e}");
        // The oversized send ended our channel; its earlier frames arrived.
        let hash = *ch.handshake_hash();
        drop(ch);
        assert_eq!(server.await.expect("server"), hash);
    })
    .await;
}
