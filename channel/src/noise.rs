//! Noise NK channels: encrypted, authenticated byte pipes between an
//! anonymous initiator and a responder known by its static key.
//!
//! The responder (a rendezvous, or a peer serving items) has a static X25519
//! key, a [`PeerKey`](anonmirror_core::PeerKey), that the initiator knows in
//! advance (pinned in the policy or published in a directory). The
//! initiator has no static key and so stays anonymous. The handshake is Noise NK:
//!
//! ```text
//! <- s            (pre-message: the initiator knows the responder's key)
//! -> e, es        handshake message 1, empty payload
//! <- e, ee        handshake message 2, empty payload
//! ```
//!
//! Handshake payloads are refused in both directions: tokens travel only in
//! the first transport message, which is encrypted under keys that depend on
//! the responder's static key *and* both ephemerals (message 1's payload
//! would be readable by anyone who later steals the responder's static key).
//!
//! # Prologue
//!
//! Both sides mix the same 21 bytes into the handshake hash before any
//! message; any difference fails the handshake (the responder cannot
//! decrypt message 1's tag and closes the connection):
//!
//! ```text
//! offset  size  field
//! 0       12    b"anonmirror/1"  protocol name and version, ASCII
//! 12      1     level            anonmirror_privacy::Level::wire_byte()
//! 13      8     epoch            anonmirror_core::Epoch, u64 big-endian
//! ```
//!
//! # Frames
//!
//! Every Noise message travels in exactly one frame; a frame is never split
//! into several Noise messages nor several messages joined into one:
//!
//! ```text
//! offset  size  field
//! 0       2     len    u16, big-endian: the number of bytes that follow
//! 2       len   one Noise message
//! ```
//!
//! Frames are numbered per direction from 0. Their lengths are checked as
//! soon as the prefix arrives, before any body byte is buffered:
//!
//! ```text
//! frame 0, initiator -> responder (handshake message 1), len = 48 exactly:
//!   2..34    initiator's ephemeral X25519 public key, cleartext
//!   34..50   AEAD tag over the empty payload
//! frame 0, responder -> initiator (handshake message 2), len = 48 exactly:
//!   2..34    responder's ephemeral X25519 public key, cleartext
//!   34..50   AEAD tag over the empty payload
//! frame n >= 1, either direction (transport message, Noise nonce n - 1):
//!   len      16 ..= 65 535
//!   2..len-14  ciphertext of a message of len - 16 bytes (at most 65 519)
//!   last 16    AEAD tag (associated data empty)
//! ```
//!
//! Each direction has its own key and nonce counter; a frame that is
//! replayed, dropped, reordered or re-framed fails authentication at the
//! receiver because the nonce it expects has moved on. A zero-length message
//! is a valid frame (`len` = 16).
//!
//! # Layers
//!
//! [`Session`], [`FrameSender`] and [`FrameReceiver`] are the sans-I/O core:
//! bytes in, bytes and events out; they never touch a socket or a clock.
//! [`connect`], [`accept`] and [`Channel`] are the thin tokio driver around
//! them, generic over any `AsyncRead + AsyncWrite` stream (TCP now, Tor
//! later; see [`crate::transport`]).
//!
//! This module must never hand its caller a byte that failed authentication,
//! never continue a channel after an error (the first error poisons the
//! channel and is returned by every later call), and never panic on
//! anything a peer sends.

mod channel;
mod keys;
mod session;

use anonmirror_core::Epoch;
use anonmirror_privacy::Level;

pub use channel::{Channel, RecvHalf, SendHalf, accept, connect};
pub use keys::StaticKeypair;
pub use session::{
    Event, FrameReceiver, FrameSender, HANDSHAKE_LEN, MAX_FRAME, MAX_MESSAGE, Progress, Session,
    TAG_LEN,
};

use crate::err::{Error, Result};

/// The protocol name and version at the start of every prologue.
pub const PROTOCOL_VERSION: &[u8; 12] = b"anonmirror/1";

/// The length of the prologue: version, level byte, epoch.
pub const PROLOGUE_LEN: usize = PROTOCOL_VERSION.len() + 1 + 8;

/// A Noise cipher suite anonmirror considered. Both use the NK pattern and
/// X25519; they differ in AEAD and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// `Noise_NK_25519_AESGCM_SHA256`, with snow's ring backend.
    AesGcmSha256,
    /// `Noise_NK_25519_ChaChaPoly_BLAKE2s`.
    ChaChaPolyBlake2s,
}

impl Suite {
    /// Every suite considered, in the order the benchmark reports them.
    pub const ALL: [Suite; 2] = [Suite::AesGcmSha256, Suite::ChaChaPolyBlake2s];

    /// The Noise protocol name, as hashed into every handshake (so peers
    /// using different suites cannot complete one).
    pub fn protocol_name(self) -> &'static str {
        match self {
            Suite::AesGcmSha256 => "Noise_NK_25519_AESGCM_SHA256",
            Suite::ChaChaPolyBlake2s => "Noise_NK_25519_ChaChaPoly_BLAKE2s",
        }
    }
}

/// The suite every anonmirror channel uses.
///
/// Chosen by measurement: `cargo run --release -p anonmirror-bench --bin
/// noise` on the 2-core development machine (AMD EPYC with AES-NI) moved
/// 1 GiB over loopback at a median of 2 082 MiB/s with AES-GCM/SHA-256
/// (ring) against 1 331 MiB/s with ChaChaPoly/BLAKE2s (1.56x), raw TCP
/// doing 2 316 MiB/s in the same run; the sans-I/O core alone, in memory on
/// one thread, did 1 152 against 692 MiB/s (1.66x). Handshakes cost the
/// same (about 0.5 ms over TCP connect). Figures in BENCHMARKS.md. A
/// machine without AES instructions would favour ChaChaPoly, but every peer
/// must use the same suite (it is hashed into the handshake), and most
/// volunteers' x86-64 and ARMv8 machines have AES instructions.
pub const SUITE: Suite = Suite::AesGcmSha256;

/// What both ends of a channel must agree on before the first byte: the
/// suite, and what the prologue binds (level and epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelParams {
    /// The privacy level of the overlay this channel belongs to; peers of
    /// different levels must never talk by mistake.
    pub level: Level,
    /// The rendezvous epoch; keys and tokens are only valid within it.
    pub epoch: Epoch,
    /// The cipher suite; [`SUITE`] unless a benchmark or test says otherwise.
    pub suite: Suite,
}

impl ChannelParams {
    /// Parameters for `level` and `epoch` with the chosen [`SUITE`].
    pub fn new(level: Level, epoch: Epoch) -> Self {
        ChannelParams {
            level,
            epoch,
            suite: SUITE,
        }
    }

    /// The same parameters with another suite (for benchmarks and tests:
    /// peers on the network always use [`SUITE`]).
    pub fn with_suite(self, suite: Suite) -> Self {
        ChannelParams { suite, ..self }
    }

    /// The prologue bytes, laid out as the module docs specify.
    pub fn prologue(&self) -> [u8; PROLOGUE_LEN] {
        let mut p = [0u8; PROLOGUE_LEN];
        let (version, rest) = p.split_at_mut(PROTOCOL_VERSION.len());
        version.copy_from_slice(PROTOCOL_VERSION);
        rest[0] = self.level.wire_byte();
        rest[1..].copy_from_slice(&self.epoch.0.to_be_bytes());
        p
    }
}

/// A snow builder for `suite` with `prologue` mixed in: the one place where
/// handshake states are configured, so the known-answer tests run through it.
fn builder(suite: Suite, prologue: &[u8]) -> Result<snow::Builder<'_>> {
    let params: snow::params::NoiseParams = suite
        .protocol_name()
        .parse()
        .map_err(|e| Error::noise("parsing the suite's protocol name", e))?;
    snow::Builder::new(params)
        .prologue(prologue)
        .map_err(|e| Error::noise("setting the prologue", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn prologue_layout() {
        let p = ChannelParams::new(Level::Balanced, Epoch(0x0102_0304_0506_0708)).prologue();
        assert_eq!(&p[..12], b"anonmirror/1");
        assert_eq!(p[12], 2);
        assert_eq!(&p[13..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            ChannelParams::new(Level::Open, Epoch(1)).suite,
            Suite::AesGcmSha256
        );
    }

    fn hex_field(v: &Value, key: &str) -> Vec<u8> {
        let s = v[key]
            .as_str()
            .unwrap_or_else(|| panic!("vector lacks {key}"));
        hex::decode(s).expect("vector field is hex")
    }

    /// Runs the cacophony NK vectors of every suite we considered through
    /// our builder and our frame sender/receiver, with the vectors' fixed
    /// ephemerals: every handshake ciphertext, the handshake hash, and
    /// every transport frame must match byte for byte.
    #[test]
    fn cacophony_vectors_for_considered_suites() {
        let json: Value =
            serde_json::from_str(include_str!("../tests/data/noise-cacophony-nk-xx.json"))
                .expect("vector file is JSON");
        let vectors = json["vectors"].as_array().expect("vectors array");
        let mut ran = Vec::new();
        for suite in Suite::ALL {
            let v = vectors
                .iter()
                .find(|v| v["protocol_name"] == suite.protocol_name())
                .unwrap_or_else(|| panic!("no vector for {}", suite.protocol_name()));
            run_vector(suite, v);
            ran.push(suite);
        }
        assert_eq!(ran, Suite::ALL);
    }

    fn run_vector(suite: Suite, v: &Value) {
        let (ip, rp) = (hex_field(v, "init_prologue"), hex_field(v, "resp_prologue"));
        let (ie, re) = (
            hex_field(v, "init_ephemeral"),
            hex_field(v, "resp_ephemeral"),
        );
        let (rs_pub, rs) = (
            hex_field(v, "init_remote_static"),
            hex_field(v, "resp_static"),
        );
        let mut init = builder(suite, &ip)
            .expect("builder")
            .fixed_ephemeral_key_for_testing_only(&ie)
            .remote_public_key(&rs_pub)
            .expect("remote key")
            .build_initiator()
            .expect("initiator");
        let mut resp = builder(suite, &rp)
            .expect("builder")
            .fixed_ephemeral_key_for_testing_only(&re)
            .local_private_key(&rs)
            .expect("static key")
            .build_responder()
            .expect("responder");
        let messages = v["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 6, "{}", suite.protocol_name());
        let mut buf = [0u8; 1024];
        let mut out = [0u8; 1024];
        for (i, m) in messages[..2].iter().enumerate() {
            let (payload, ct) = (hex_field(m, "payload"), hex_field(m, "ciphertext"));
            let (w, r) = if i == 0 {
                (&mut init, &mut resp)
            } else {
                (&mut resp, &mut init)
            };
            let n = w.write_message(&payload, &mut buf).expect("write");
            assert_eq!(&buf[..n], &ct[..], "{} message {i}", suite.protocol_name());
            let n = r.read_message(&ct, &mut out).expect("read");
            assert_eq!(&out[..n], &payload[..]);
        }
        let hash = hex_field(v, "handshake_hash");
        assert_eq!(init.get_handshake_hash(), &hash[..]);
        assert_eq!(resp.get_handshake_hash(), &hash[..]);

        let (mut itx, mut irx) = session::halves_from_handshake(init).expect("initiator halves");
        let (mut rtx, mut rrx) = session::halves_from_handshake(resp).expect("responder halves");
        for (i, m) in messages[2..].iter().enumerate() {
            let (payload, ct) = (hex_field(m, "payload"), hex_field(m, "ciphertext"));
            let (tx, rx) = if i % 2 == 0 {
                (&mut itx, &mut rrx)
            } else {
                (&mut rtx, &mut irx)
            };
            tx.write_message(&payload).expect("encrypt");
            let mut frame = u16::try_from(ct.len())
                .expect("short")
                .to_be_bytes()
                .to_vec();
            frame.extend_from_slice(&ct);
            assert_eq!(
                tx.outgoing(),
                &frame[..],
                "{} frame {i}",
                suite.protocol_name()
            );
            tx.consume_outgoing(frame.len());
            let mut plain = Vec::new();
            let p = rx.handle_input(&frame, &mut plain).expect("decrypt");
            assert_eq!((p.consumed, p.event), (frame.len(), Some(Event::Message)));
            assert_eq!(plain, payload);
        }
    }
}
