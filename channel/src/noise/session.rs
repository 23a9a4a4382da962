//! The sans-I/O core of a Noise channel: a state machine fed with received
//! bytes that yields events, decrypted messages and bytes to send.
//!
//! It implements the frame format of the parent module's docs. It never
//! touches a socket, a clock or a thread; the tokio driver (and tests, and
//! later fuzzers) feed it. It must never return unauthenticated bytes, never
//! panic on peer input, and never go on after an error: the first error is
//! stored in a [`Poison`] shared by the session and both of its halves and
//! returned by every later call.

use std::fmt;
use std::sync::{Arc, OnceLock};

use anonmirror_core::PeerKey;
use snow::{HandshakeState, StatelessTransportState};

use super::{ChannelParams, StaticKeypair, builder};
use crate::err::{Error, Result};

/// The largest frame body: one Noise message.
pub const MAX_FRAME: usize = 65_535;
/// The AEAD tag ending every Noise message.
pub const TAG_LEN: usize = 16;
/// The largest message one transport frame carries.
pub const MAX_MESSAGE: usize = MAX_FRAME - TAG_LEN;
/// The exact body length of both NK handshake messages: an ephemeral
/// public key and the tag of an empty payload.
pub const HANDSHAKE_LEN: usize = 32 + TAG_LEN;
/// The length prefix.
const PREFIX: usize = 2;

/// The first error of a channel, shared by its session and halves so that
/// a failure on one side ends the whole channel.
#[derive(Debug, Default)]
struct Poison(OnceLock<Error>);

impl Poison {
    /// Fails if the channel already failed.
    fn check(&self) -> Result<()> {
        match self.0.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records `e` unless an earlier error is recorded, and returns the
    /// recorded one: callers always see the error that ended the channel.
    fn fail(&self, e: Error) -> Error {
        match self.0.set(e) {
            Ok(()) => self.0.get().cloned(),
            Err(e) => self.0.get().cloned().or(Some(e)),
        }
        .unwrap_or(Error::Misuse("poison lost its error"))
    }

    fn is_set(&self) -> bool {
        self.0.get().is_some()
    }
}

/// What feeding bytes produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished; messages may now be sent and received (and
    /// the responder has handshake message 2 waiting in its outgoing bytes).
    HandshakeDone,
    /// A message was decrypted into the caller's plaintext buffer.
    Message,
}

/// The result of feeding bytes: how many were used and what happened.
///
/// At most one event happens per call, so callers feed the unused rest
/// again (the driver loops until it has a message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input taken; the rest must be fed again.
    pub consumed: usize,
    /// What happened, if anything.
    pub event: Option<Event>,
}

/// Reassembles one frame at a time from arbitrarily split input.
///
/// When a whole frame lies in the caller's input, it is opened in place
/// there; only frames split across inputs are copied here, so a driver
/// reading large chunks copies little.
#[derive(Default)]
struct Deframer {
    /// The incomplete frame so far, length prefix included.
    buf: Vec<u8>,
}

impl Deframer {
    /// Takes bytes from `input` until one frame is complete, then opens it.
    ///
    /// `check` sees the declared length as soon as the prefix is complete,
    /// so no body byte of an unacceptable frame is ever buffered.
    fn feed<T>(
        &mut self,
        input: &[u8],
        check: impl Fn(usize) -> Result<()>,
        open: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<(usize, Option<T>)> {
        if self.buf.is_empty()
            && let Some(len) = prefix(input)
        {
            check(len)?;
            if let Some(body) = input.get(PREFIX..PREFIX + len) {
                return Ok((PREFIX + len, Some(open(body)?)));
            }
        }
        let mut consumed = 0;
        if self.buf.len() < PREFIX {
            consumed = (PREFIX - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..consumed]);
            match prefix(&self.buf) {
                Some(len) => check(len)?,
                None => return Ok((consumed, None)),
            }
        }
        let want = PREFIX + prefix(&self.buf).unwrap_or(0);
        let take = (want - self.buf.len()).min(input.len() - consumed);
        self.buf
            .extend_from_slice(&input[consumed..consumed + take]);
        consumed += take;
        if self.buf.len() < want {
            return Ok((consumed, None));
        }
        let opened = open(&self.buf[PREFIX..]);
        self.buf.clear();
        Ok((consumed, Some(opened?)))
    }

    /// Bytes of an incomplete frame held.
    fn held(&self) -> usize {
        self.buf.len()
    }
}

/// The declared length of the frame starting at `bytes`, once its prefix
/// is there.
fn prefix(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [hi, lo, ..] => Some(usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// Outgoing frames waiting to be written.
///
/// The buffer's length only grows, and sent bytes are skipped rather than
/// shifted, so steady-state sending neither allocates, zero-fills nor
/// moves bytes.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    /// The first byte not yet handed out as written.
    start: usize,
    /// The end of the queued bytes.
    end: usize,
}

impl OutBuf {
    /// Room for a frame body of up to `max_body` bytes after the queued
    /// bytes; [`OutBuf::commit_frame`] then queues it.
    fn frame_body(&mut self, max_body: usize) -> &mut [u8] {
        let need = self.end + PREFIX + max_body;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end + PREFIX..need]
    }

    /// Queues the frame whose body of `body_len` bytes was just written.
    fn commit_frame(&mut self, body_len: u16) {
        self.buf[self.end..self.end + PREFIX].copy_from_slice(&body_len.to_be_bytes());
        self.end += PREFIX + usize::from(body_len);
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// The sending half of an established channel: encrypts messages into
/// frames queued for the driver to write.
pub struct FrameSender {
    transport: Arc<StatelessTransportState>,
    /// The nonce of the next frame; snow refuses the reserved 2^64 − 1.
    nonce: u64,
    out: OutBuf,
    poison: Arc<Poison>,
}

impl FrameSender {
    /// Encrypts `message` into one frame and queues it.
    ///
    /// Messages longer than [`MAX_MESSAGE`] are refused (and, like every
    /// error, end the channel): splitting is the caller's business, since
    /// only it knows where its own message boundaries are.
    pub fn write_message(&mut self, message: &[u8]) -> Result<()> {
        self.poison.check()?;
        if message.len() > MAX_MESSAGE {
            return Err(self.poison.fail(Error::MessageTooLong {
                len: message.len(),
                max: MAX_MESSAGE,
            }));
        }
        let body = self.out.frame_body(message.len() + TAG_LEN);
        let written = self
            .transport
            .write_message(self.nonce, message, body)
            .map_err(|e| Error::noise("encrypting a frame", e))
            .and_then(|n| u16::try_from(n).map_err(|_| Error::Misuse("frame overflowed u16")));
        match written {
            Ok(n) => {
                self.out.commit_frame(n);
                self.nonce = self.nonce.saturating_add(1);
                Ok(())
            }
            Err(e) => Err(self.poison.fail(e)),
        }
    }

    /// The queued bytes to write, in order; empty once the channel failed.
    pub fn outgoing(&self) -> &[u8] {
        if self.poison.is_set() {
            return &[];
        }
        self.out.pending()
    }

    /// Marks the first `n` bytes of [`FrameSender::outgoing`] as written.
    pub fn consume_outgoing(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// Ends the channel with an error found outside the core (e.g. the
    /// driver's write failed, leaving a partial frame on the wire).
    pub(crate) fn fail(&self, e: Error) -> Error {
        self.poison.fail(e)
    }
}

impl fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSender")
            .field("frames_sent", &self.nonce)
            .field("queued", &self.out.pending().len())
            .finish_non_exhaustive()
    }
}

/// The receiving half of an established channel: turns received bytes
/// into authenticated messages.
pub struct FrameReceiver {
    transport: Arc<StatelessTransportState>,
    /// The nonce the next frame must have; frame number = nonce + 1.
    nonce: u64,
    deframer: Deframer,
    poison: Arc<Poison>,
}

impl FrameReceiver {
    /// Feeds received bytes; decrypts at most one message into `plaintext`
    /// (which is overwritten and resized to exactly the message, or emptied
    /// if the frame fails authentication).
    ///
    /// Reusing one `plaintext` buffer across calls avoids allocation: it
    /// is only ever grown (to a frame's length, so the cipher can open the
    /// message in place), never shrunk below what it held.
    pub fn handle_input(&mut self, input: &[u8], plaintext: &mut Vec<u8>) -> Result<Progress> {
        self.handle_input_at(input, plaintext, |_| 0)
    }

    /// Like [`FrameReceiver::handle_input`], but the message is decrypted
    /// into `buf` from the index `place(message_len)` returns (capped at
    /// `buf.len()`), leaving the bytes before it as they were: a receiver
    /// can open a message right where its payload belongs, with no copy
    /// after the cipher's. `buf` ends right after the message, or, if the
    /// frame fails authentication, at that index.
    pub(crate) fn handle_input_at(
        &mut self,
        input: &[u8],
        buf: &mut Vec<u8>,
        place: impl FnOnce(usize) -> usize,
    ) -> Result<Progress> {
        self.poison.check()?;
        let frame = self.frame();
        let (transport, nonce) = (&self.transport, self.nonce);
        let fed = self.deframer.feed(
            input,
            |len| {
                if len < TAG_LEN {
                    Err(Error::FrameTooShort {
                        frame,
                        len,
                        min: TAG_LEN,
                    })
                } else {
                    Ok(())
                }
            },
            |body| {
                let at = place(body.len() - TAG_LEN).min(buf.len());
                // Room for the ciphertext, so the cipher opens it in place.
                if buf.len() < at + body.len() {
                    buf.resize(at + body.len(), 0);
                }
                match transport.read_message(nonce, body, &mut buf[at..]) {
                    Ok(n) => {
                        buf.truncate(at + n);
                        Ok(())
                    }
                    Err(e) => {
                        // The cipher opens in place: what it left behind is
                        // unauthenticated and must not reach the caller.
                        buf.truncate(at);
                        Err(match e {
                            snow::Error::Decrypt => Error::Decrypt { frame },
                            other => Error::noise("decrypting a frame", other),
                        })
                    }
                }
            },
        );
        match fed {
            Ok((consumed, opened)) => {
                let event = opened.map(|()| {
                    self.nonce = self.nonce.saturating_add(1);
                    Event::Message
                });
                Ok(Progress { consumed, event })
            }
            Err(e) => Err(self.poison.fail(e)),
        }
    }

    /// The stream ended: fine between frames, an error inside one.
    pub fn handle_eof(&mut self) -> Result<()> {
        self.poison.check()?;
        match self.deframer.held() {
            0 => Ok(()),
            have => Err(self.poison.fail(Error::Truncated {
                frame: self.frame(),
                have,
            })),
        }
    }

    /// The number of the frame being received.
    fn frame(&self) -> u64 {
        self.nonce.saturating_add(1)
    }

    /// Ends the channel with an error found outside the core.
    pub(crate) fn fail(&self, e: Error) -> Error {
        self.poison.fail(e)
    }
}

impl fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("frames_received", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// Splits a finished handshake into the two halves, sharing a new poison
/// (for the known-answer tests, which drive snow's handshake themselves).
#[cfg(test)]
pub(super) fn halves_from_handshake(hs: HandshakeState) -> Result<(FrameSender, FrameReceiver)> {
    halves(hs, OutBuf::default(), Arc::default())
}

fn halves(
    hs: HandshakeState,
    out: OutBuf,
    poison: Arc<Poison>,
) -> Result<(FrameSender, FrameReceiver)> {
    let transport = Arc::new(
        hs.into_stateless_transport_mode()
            .map_err(|e| Error::noise("entering transport mode", e))?,
    );
    let tx = FrameSender {
        transport: Arc::clone(&transport),
        nonce: 0,
        out,
        poison: Arc::clone(&poison),
    };
    let rx = FrameReceiver {
        transport,
        nonce: 0,
        deframer: Deframer::default(),
        poison,
    };
    Ok((tx, rx))
}

enum State {
    Handshake {
        hs: Box<HandshakeState>,
        deframer: Deframer,
        out: OutBuf,
    },
    Transport {
        tx: FrameSender,
        rx: FrameReceiver,
    },
    /// Only while moving from one state to the other, or after that move
    /// failed (then the poison is set).
    Failed,
}

/// One end of a Noise NK channel, from the first handshake byte on.
///
/// Feed it received bytes with [`Session::handle_input`], write what
/// [`Session::outgoing`] holds, and call [`Session::handle_eof`] when the
/// stream ends. Once [`Event::HandshakeDone`] has happened, send with
/// [`Session::write_message`], or [`Session::split`] into halves that two
/// tasks can drive independently.
pub struct Session {
    state: State,
    initiator: bool,
    handshake_hash: [u8; 32],
    poison: Arc<Poison>,
}

impl Session {
    /// Starts a handshake towards the responder whose static key is
    /// `responder`; handshake message 1 is queued in
    /// [`Session::outgoing`].
    pub fn initiator(responder: &PeerKey, params: &ChannelParams) -> Result<Session> {
        let prologue = params.prologue();
        let mut hs = builder(params.suite, &prologue)?
            .remote_public_key(responder.as_bytes())
            .map_err(|e| Error::noise("setting the responder's key", e))?
            .build_initiator()
            .map_err(|e| Error::noise("building the initiator", e))?;
        let mut out = OutBuf::default();
        write_handshake(&mut hs, &mut out)?;
        Ok(Session::handshaking(hs, out, true))
    }

    /// Waits for an initiator's handshake, answering as the holder of
    /// `keypair`.
    pub fn responder(keypair: &StaticKeypair, params: &ChannelParams) -> Result<Session> {
        let prologue = params.prologue();
        let hs = builder(params.suite, &prologue)?
            .local_private_key(keypair.secret())
            .map_err(|e| Error::noise("setting our static key", e))?
            .build_responder()
            .map_err(|e| Error::noise("building the responder", e))?;
        Ok(Session::handshaking(hs, OutBuf::default(), false))
    }

    fn handshaking(hs: HandshakeState, out: OutBuf, initiator: bool) -> Session {
        Session {
            state: State::Handshake {
                hs: Box::new(hs),
                deframer: Deframer::default(),
                out,
            },
            initiator,
            handshake_hash: [0; 32],
            poison: Arc::default(),
        }
    }

    /// Feeds received bytes. During the handshake `plaintext` is untouched;
    /// afterwards it receives at most one message per call, as in
    /// [`FrameReceiver::handle_input`].
    pub fn handle_input(&mut self, input: &[u8], plaintext: &mut Vec<u8>) -> Result<Progress> {
        self.poison.check()?;
        match &mut self.state {
            State::Transport { rx, .. } => rx.handle_input(input, plaintext),
            State::Handshake { .. } => self.handshake_input(input).map_err(|e| self.poison.fail(e)),
            State::Failed => Err(self.poison.fail(Error::Misuse("session already failed"))),
        }
    }

    fn handshake_input(&mut self, input: &[u8]) -> Result<Progress> {
        let State::Handshake { hs, deframer, out } = &mut self.state else {
            return Err(Error::Misuse("not handshaking"));
        };
        let message = if self.initiator { 2 } else { 1 };
        let (consumed, opened) = deframer.feed(
            input,
            |len| {
                // Exactly an empty payload's length: a longer frame carries
                // a payload, which we refuse before reading it.
                if len == HANDSHAKE_LEN {
                    Ok(())
                } else {
                    Err(Error::HandshakeLength {
                        message,
                        len,
                        expected: HANDSHAKE_LEN,
                    })
                }
            },
            |body| {
                let mut payload = [0u8; HANDSHAKE_LEN];
                let n = hs.read_message(body, &mut payload).map_err(|e| match e {
                    snow::Error::Decrypt | snow::Error::Dh => Error::HandshakeAuth { message },
                    other => Error::noise("reading a handshake message", other),
                })?;
                // Unreachable while NK messages have a fixed length, but a
                // later pattern change must not silently admit payloads.
                if n == 0 {
                    Ok(())
                } else {
                    Err(Error::HandshakeLength {
                        message,
                        len: body.len(),
                        expected: HANDSHAKE_LEN,
                    })
                }
            },
        )?;
        if opened.is_none() {
            return Ok(Progress {
                consumed,
                event: None,
            });
        }
        if !self.initiator {
            write_handshake(hs, out)?;
        }
        self.finish_handshake()?;
        Ok(Progress {
            consumed,
            event: Some(Event::HandshakeDone),
        })
    }

    fn finish_handshake(&mut self) -> Result<()> {
        let State::Handshake { hs, out, .. } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(Error::Misuse("not handshaking"));
        };
        let hash = hs.get_handshake_hash();
        let hash_len = hash.len().min(self.handshake_hash.len());
        self.handshake_hash[..hash_len].copy_from_slice(&hash[..hash_len]);
        let (tx, rx) = halves(*hs, out, Arc::clone(&self.poison))?;
        self.state = State::Transport { tx, rx };
        Ok(())
    }

    /// The stream ended. Fine between transport frames; an error during
    /// the handshake or inside a frame.
    pub fn handle_eof(&mut self) -> Result<()> {
        self.poison.check()?;
        match &mut self.state {
            State::Transport { rx, .. } => rx.handle_eof(),
            State::Handshake { deframer, .. } => {
                let e = match deframer.held() {
                    0 => Error::ClosedInHandshake {
                        message: if self.initiator { 2 } else { 1 },
                    },
                    have => Error::Truncated { frame: 0, have },
                };
                Err(self.poison.fail(e))
            }
            State::Failed => Err(self.poison.fail(Error::Misuse("session already failed"))),
        }
    }

    /// Encrypts `message` into one frame queued in [`Session::outgoing`].
    pub fn write_message(&mut self, message: &[u8]) -> Result<()> {
        self.poison.check()?;
        match &mut self.state {
            State::Transport { tx, .. } => tx.write_message(message),
            _ => Err(self.poison.fail(Error::Misuse(
                "cannot send a message before the handshake is done",
            ))),
        }
    }

    /// The bytes to write to the peer, in order; empty once the channel
    /// failed.
    pub fn outgoing(&self) -> &[u8] {
        if self.poison.is_set() {
            return &[];
        }
        match &self.state {
            State::Handshake { out, .. } => out.pending(),
            State::Transport { tx, .. } => tx.outgoing(),
            State::Failed => &[],
        }
    }

    /// Marks the first `n` bytes of [`Session::outgoing`] as written.
    pub fn consume_outgoing(&mut self, n: usize) {
        match &mut self.state {
            State::Handshake { out, .. } => out.consume(n),
            State::Transport { tx, .. } => tx.consume_outgoing(n),
            State::Failed => {}
        }
    }

    /// Whether the handshake is done (and the channel has not failed).
    pub fn is_handshake_done(&self) -> bool {
        matches!(self.state, State::Transport { .. }) && !self.poison.is_set()
    }

    /// The handshake hash, once the handshake is done: a value both ends
    /// share and nobody else knows, for binding tokens to this channel.
    pub fn handshake_hash(&self) -> Option<[u8; 32]> {
        self.is_handshake_done().then_some(self.handshake_hash)
    }

    /// The two halves of an established channel, sharing its fate: an
    /// error on either ends both. Queued outgoing bytes move to the sender.
    pub fn split(self) -> Result<(FrameSender, FrameReceiver)> {
        self.poison.check()?;
        match self.state {
            State::Transport { tx, rx } => Ok((tx, rx)),
            _ => Err(self.poison.fail(Error::Misuse(
                "cannot split a session before the handshake is done",
            ))),
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (&self.state, self.poison.is_set()) {
            (_, true) | (State::Failed, _) => "failed",
            (State::Handshake { .. }, _) => "handshaking",
            (State::Transport { .. }, _) => "established",
        };
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Writes our (empty-payload) handshake message as one frame.
fn write_handshake(hs: &mut HandshakeState, out: &mut OutBuf) -> Result<()> {
    let body = out.frame_body(HANDSHAKE_LEN);
    let n = hs
        .write_message(&[], body)
        .map_err(|e| Error::noise("writing a handshake message", e))?;
    let n = u16::try_from(n).map_err(|_| Error::Misuse("handshake overflowed u16"))?;
    out.commit_frame(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonmirror_core::Epoch;
    use anonmirror_privacy::Level;

    fn params() -> ChannelParams {
        ChannelParams::new(Level::Open, Epoch(42))
    }

    /// Moves everything `from` wants to send into `to`, `chunk` bytes per
    /// call, returning the events `to` saw and the messages it decrypted.
    fn pump(from: &mut Session, to: &mut Session, chunk: usize) -> Result<Vec<Vec<u8>>> {
        let bytes = from.outgoing().to_vec();
        from.consume_outgoing(bytes.len());
        let mut got = Vec::new();
        let mut plain = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let piece = &rest[..chunk.min(rest.len())];
            let mut fed = 0;
            // Each call makes progress or yields an event, so this ends.
            while fed < piece.len() {
                let p = to.handle_input(&piece[fed..], &mut plain)?;
                assert!(p.consumed > 0 || p.event.is_some(), "no progress");
                fed += p.consumed;
                if p.event == Some(Event::Message) {
                    got.push(plain.clone());
                }
            }
            rest = &rest[piece.len()..];
        }
        Ok(got)
    }

    fn pair() -> (Session, Session, StaticKeypair) {
        let kp = StaticKeypair::generate().expect("keypair");
        let i = Session::initiator(&kp.public(), &params()).expect("initiator");
        let r = Session::responder(&kp, &params()).expect("responder");
        (i, r, kp)
    }

    fn established() -> (Session, Session) {
        let (mut i, mut r, _) = pair();
        pump(&mut i, &mut r, usize::MAX).expect("message 1");
        pump(&mut r, &mut i, usize::MAX).expect("message 2");
        assert!(i.is_handshake_done() && r.is_handshake_done());
        (i, r)
    }

    /// After `e`, every entry point returns the same error and nothing is
    /// left to send.
    fn assert_poisoned(s: &mut Session, e: &Error) {
        let same = |got: Error| assert_eq!(got.to_string(), e.to_string());
        same(
            s.handle_input(&[0; 64], &mut Vec::new())
                .expect_err("input"),
        );
        same(s.handle_eof().expect_err("eof"));
        same(s.write_message(b"x").expect_err("write"));
        assert!(s.outgoing().is_empty());
        assert!(!s.is_handshake_done());
        assert_eq!(s.handshake_hash(), None);
    }

    #[test]
    fn byte_at_a_time_handshake_and_messages() {
        let (mut i, mut r, _) = pair();
        assert_eq!(i.outgoing().len(), 2 + HANDSHAKE_LEN);
        assert!(r.outgoing().is_empty());
        pump(&mut i, &mut r, 1).expect("message 1");
        assert!(r.is_handshake_done());
        assert_eq!(r.outgoing().len(), 2 + HANDSHAKE_LEN);
        pump(&mut r, &mut i, 1).expect("message 2");
        assert!(i.is_handshake_done());
        assert_eq!(i.handshake_hash(), r.handshake_hash());
        assert!(i.handshake_hash().is_some());

        let messages: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"token".to_vec(),
            vec![0xa5; MAX_MESSAGE],
            (0..=255).collect(),
        ];
        for m in &messages {
            i.write_message(m).expect("send");
        }
        assert_eq!(pump(&mut i, &mut r, 1).expect("byte at a time"), messages);
        for m in &messages {
            r.write_message(m).expect("send");
        }
        assert_eq!(pump(&mut r, &mut i, 7).expect("odd chunks"), messages);
        for m in &messages {
            i.write_message(m).expect("send");
        }
        assert_eq!(pump(&mut i, &mut r, usize::MAX).expect("at once"), messages);
        i.handle_eof().expect("eof between frames is clean");
    }

    #[test]
    fn responder_stops_at_handshake_boundary() {
        let (i, mut r, _) = pair();
        let msg1 = i.outgoing().to_vec();
        // Message 1 followed by the start of the next frame in one input:
        // the responder takes only message 1, then the rest on the next call.
        let mut input = msg1.clone();
        input.extend_from_slice(&[0, 16]);
        let p = r.handle_input(&input, &mut Vec::new()).expect("message 1");
        assert_eq!(p.consumed, msg1.len());
        assert_eq!(p.event, Some(Event::HandshakeDone));
        let p = r
            .handle_input(&input[p.consumed..], &mut Vec::new())
            .expect("prefix");
        assert_eq!((p.consumed, p.event), (2, None));
    }

    #[test]
    fn tampered_frame_poisons() {
        let (mut i, mut r) = established();
        i.write_message(b"one").expect("send");
        i.write_message(b"two").expect("send");
        let mut bytes = i.outgoing().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let mut plain = Vec::new();
        let p = r.handle_input(&bytes, &mut plain).expect("first is intact");
        assert_eq!(plain, b"one");
        let e = r
            .handle_input(&bytes[p.consumed..], &mut plain)
            .expect_err("tampered");
        assert!(matches!(e, Error::Decrypt { frame: 2 }), "{e}");
        assert!(
            plain.is_empty(),
            "no unauthenticated byte reaches the caller"
        );
        assert_poisoned(&mut r, &e);
    }

    #[test]
    fn replayed_frame_poisons() {
        let (mut i, mut r) = established();
        i.write_message(b"pay me").expect("send");
        let frame = i.outgoing().to_vec();
        let mut plain = Vec::new();
        r.handle_input(&frame, &mut plain).expect("original");
        let e = r.handle_input(&frame, &mut plain).expect_err("replay");
        assert!(matches!(e, Error::Decrypt { frame: 2 }), "{e}");
        assert_poisoned(&mut r, &e);
    }

    #[test]
    fn undersized_frame_poisons_before_its_body() {
        let (_, mut r) = established();
        let e = r
            .handle_input(&[0, 15], &mut Vec::new())
            .expect_err("shorter than a tag");
        assert!(
            matches!(
                e,
                Error::FrameTooShort {
                    frame: 1,
                    len: 15,
                    min: 16
                }
            ),
            "{e}"
        );
        assert_poisoned(&mut r, &e);
    }

    #[test]
    fn handshake_length_must_be_exact() {
        for len in [0u16, 47, 49, 0xffff] {
            let (_, mut r, _) = pair();
            let e = r
                .handle_input(&len.to_be_bytes(), &mut Vec::new())
                .expect_err("wrong length");
            assert!(
                matches!(e, Error::HandshakeLength { message: 1, len: l, expected: 48 } if l == usize::from(len)),
                "{e}"
            );
            assert_poisoned(&mut r, &e);
        }
        let (mut i, _, _) = pair();
        i.consume_outgoing(usize::MAX);
        let e = i
            .handle_input(&[0, 49], &mut Vec::new())
            .expect_err("message 2 too long");
        assert!(matches!(e, Error::HandshakeLength { message: 2, .. }));
    }

    #[test]
    fn payload_in_message_1_is_refused() {
        let kp = StaticKeypair::generate().expect("keypair");
        let prologue = params().prologue();
        let mut rogue = builder(params().suite, &prologue)
            .expect("builder")
            .remote_public_key(kp.public().as_bytes())
            .expect("key")
            .build_initiator()
            .expect("rogue initiator");
        let mut msg = [0u8; 128];
        let n = rogue.write_message(b"token", &mut msg).expect("msg1");
        let mut frame = u16::try_from(n).expect("short").to_be_bytes().to_vec();
        frame.extend_from_slice(&msg[..n]);
        let mut r = Session::responder(&kp, &params()).expect("responder");
        let e = r
            .handle_input(&frame, &mut Vec::new())
            .expect_err("payload");
        assert!(
            matches!(
                e,
                Error::HandshakeLength {
                    message: 1,
                    len: 53,
                    expected: 48
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("handshake payloads are refused"));
        assert_poisoned(&mut r, &e);
    }

    #[test]
    fn wrong_key_and_prologue_mismatch_fail_message_1() {
        let kp = StaticKeypair::generate().expect("keypair");
        let other = StaticKeypair::generate().expect("keypair");
        let cases = [
            (other.public(), params()),
            (kp.public(), ChannelParams::new(Level::Open, Epoch(43))),
            (kp.public(), ChannelParams::new(Level::Strict, Epoch(42))),
            (
                kp.public(),
                params().with_suite(super::super::Suite::ChaChaPolyBlake2s),
            ),
        ];
        for (key, p) in cases {
            let mut i = Session::initiator(&key, &p).expect("initiator");
            let mut r = Session::responder(&kp, &params()).expect("responder");
            let e = pump(&mut i, &mut r, usize::MAX).expect_err("mismatch");
            assert!(matches!(e, Error::HandshakeAuth { message: 1 }), "{e}");
            assert_poisoned(&mut r, &e);
            let e = i.handle_eof().expect_err("responder hung up");
            assert!(matches!(e, Error::ClosedInHandshake { message: 2 }), "{e}");
            assert_poisoned(&mut i, &e);
        }
    }

    #[test]
    fn tampered_message_2_fails_the_initiator() {
        let (mut i, mut r, _) = pair();
        pump(&mut i, &mut r, usize::MAX).expect("message 1");
        let mut msg2 = r.outgoing().to_vec();
        msg2[10] ^= 0x80;
        let e = i
            .handle_input(&msg2, &mut Vec::new())
            .expect_err("tampered");
        assert!(matches!(e, Error::HandshakeAuth { message: 2 }), "{e}");
        assert_poisoned(&mut i, &e);
    }

    #[test]
    fn truncation_is_reported_at_eof() {
        // Inside the length prefix, inside a body, and inside the handshake.
        for cut in [1, 9] {
            let (mut i2, mut r2) = established();
            i2.write_message(b"hello").expect("send");
            let bytes = i2.outgoing().to_vec();
            let p = r2
                .handle_input(&bytes[..cut], &mut Vec::new())
                .expect("partial");
            assert_eq!((p.consumed, p.event), (cut, None));
            let e = r2.handle_eof().expect_err("truncated");
            assert!(
                matches!(e, Error::Truncated { frame: 1, have } if have == cut),
                "{e}"
            );
            assert_poisoned(&mut r2, &e);
        }
        let (mut i, mut r) = established();
        i.write_message(b"hello").expect("send");
        r.handle_input(i.outgoing(), &mut Vec::new())
            .expect("whole frame");
        r.handle_eof().expect("clean end between frames");

        let (i, mut r, _) = pair();
        let msg1 = i.outgoing().to_vec();
        r.handle_input(&msg1[..20], &mut Vec::new())
            .expect("partial");
        let e = r.handle_eof().expect_err("truncated handshake");
        assert!(matches!(e, Error::Truncated { frame: 0, have: 20 }), "{e}");
        let (_, mut r, _) = pair();
        let e = r.handle_eof().expect_err("silent initiator");
        assert!(matches!(e, Error::ClosedInHandshake { message: 1 }), "{e}");
    }

    #[test]
    fn oversized_message_is_refused_and_poisons() {
        let (mut i, _) = established();
        i.write_message(&vec![0; MAX_MESSAGE])
            .expect("largest message");
        let e = i
            .write_message(&vec![0; MAX_MESSAGE + 1])
            .expect_err("too long");
        assert!(
            matches!(
                e,
                Error::MessageTooLong {
                    len: 65_520,
                    max: 65_519
                }
            ),
            "{e}"
        );
        assert_poisoned(&mut i, &e);
    }

    #[test]
    fn misuse_before_the_handshake_poisons() {
        let (mut i, _, _) = pair();
        let e = i.write_message(b"early").expect_err("not established");
        assert!(matches!(e, Error::Misuse(_)), "{e}");
        assert_poisoned(&mut i, &e);
        let (i, _, _) = pair();
        assert!(matches!(i.split(), Err(Error::Misuse(_))));
    }

    #[test]
    fn halves_share_the_channels_fate() {
        let (i, mut r) = established();
        let (mut tx, mut rx) = i.split().expect("split");
        tx.write_message(b"up").expect("send");
        let up = tx.outgoing().to_vec();
        tx.consume_outgoing(up.len() - 3);
        assert_eq!(tx.outgoing(), &up[up.len() - 3..], "partial writes resume");
        tx.consume_outgoing(3);
        assert!(tx.outgoing().is_empty());
        let mut plain = Vec::new();
        r.handle_input(&up, &mut plain).expect("received");
        assert_eq!(plain, b"up");
        let e = rx
            .handle_input(&[0, 3], &mut plain)
            .expect_err("undersized");
        let again = tx.write_message(b"more").expect_err("sender ended too");
        assert_eq!(again.to_string(), e.to_string());
        assert!(tx.outgoing().is_empty());
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// However the stream is cut into reads, the same messages come
            /// out, with their boundaries.
            #[test]
            fn any_chunking_delivers_the_same_messages(
                messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
                chunks in prop::collection::vec(1usize..80, 1..16),
            ) {
                let (mut i, mut r) = established();
                for m in &messages {
                    i.write_message(m).expect("send");
                }
                let bytes = i.outgoing().to_vec();
                let mut got = Vec::new();
                let mut plain = Vec::new();
                let (mut at, mut k) = (0, 0);
                while at < bytes.len() {
                    let end = (at + chunks[k % chunks.len()]).min(bytes.len());
                    k += 1;
                    let mut piece = &bytes[at..end];
                    while !piece.is_empty() {
                        let p = r.handle_input(piece, &mut plain).expect("valid stream");
                        piece = &piece[p.consumed..];
                        if p.event == Some(Event::Message) {
                            got.push(plain.clone());
                        }
                    }
                    at = end;
                }
                r.handle_eof().expect("ends between frames");
                prop_assert_eq!(got, messages);
            }

            /// Garbage never panics and never yields a message; once it
            /// fails, the session stays failed with the same error.
            #[test]
            fn garbage_fails_cleanly(
                garbage in prop::collection::vec(any::<u8>(), 0..400),
                handshaking in any::<bool>(),
            ) {
                let mut s = if handshaking { pair().1 } else { established().1 };
                let mut plain = Vec::new();
                let mut rest = &garbage[..];
                let outcome = loop {
                    match s.handle_input(rest, &mut plain) {
                        Err(e) => break Some(e),
                        Ok(p) => {
                            prop_assert_ne!(p.event, Some(Event::Message));
                            // Progress on every call, so the loop ends.
                            prop_assert!(p.consumed > 0 || rest.is_empty());
                            rest = &rest[p.consumed..];
                            if p.event.is_none() && rest.is_empty() {
                                break s.handle_eof().err();
                            }
                        }
                    }
                };
                if let Some(e) = outcome {
                    assert_poisoned(&mut s, &e);
                }
            }
        }
    }
}
