//! The tokio driver of a Noise channel: moves bytes between a stream and
//! the sans-I/O [`Session`].
//!
//! It holds no protocol logic: it writes what the core queues and feeds it
//! what it reads. It must never retry or resume after an error (the core's
//! poison makes every later call fail), and never buffer more than one read
//! buffer and one frame per direction.
//!
//! Sending writes the length prefix and ciphertext of a frame in one
//! `write` call from a reused buffer; receiving reads large chunks into a
//! reused buffer and decrypts whole frames from there, so the hot path
//! allocates nothing and copies each byte about once besides the cipher's
//! own pass.

use std::time::Duration;

use anonmirror_core::PeerKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::{ChannelParams, Event, FrameReceiver, FrameSender, Session, StaticKeypair};
use crate::err::{Error, Result};

/// How much one `read` may bring in: several maximum frames, so that most
/// frames are decrypted straight out of this buffer rather than reassembled.
const READ_BUF: usize = 256 * 1024;

/// Bytes read from the stream and not yet fed to the core.
struct ReadBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Reads once into the (empty) buffer; 0 means end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        let n = reader.read(&mut self.buf).await?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }
}

/// Opens a channel to the responder known by `responder` over `stream`,
/// failing if the handshake takes longer than `timeout`.
///
/// On the initiator's side a wrong key or a prologue mismatch shows as
/// [`Error::ClosedInHandshake`]: the responder cannot tell us why it refused.
pub async fn connect<S>(
    stream: S,
    responder: &PeerKey,
    params: &ChannelParams,
    timeout: Duration,
) -> Result<Channel<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    handshake(stream, Session::initiator(responder, params)?, timeout).await
}

/// Answers an initiator's handshake on `stream` as the holder of `keypair`,
/// failing if it takes longer than `timeout`.
pub async fn accept<S>(
    stream: S,
    keypair: &StaticKeypair,
    params: &ChannelParams,
    timeout: Duration,
) -> Result<Channel<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    handshake(stream, Session::responder(keypair, params)?, timeout).await
}

async fn handshake<S>(mut stream: S, mut session: Session, timeout: Duration) -> Result<Channel<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = ReadBuf::new();
    let run = async {
        // Handshake messages carry no plaintext, so this stays empty.
        let mut unused = Vec::new();
        loop {
            if !session.outgoing().is_empty() {
                stream
                    .write_all(session.outgoing())
                    .await
                    .map_err(|e| Error::io("writing a handshake message", e))?;
                stream
                    .flush()
                    .await
                    .map_err(|e| Error::io("flushing a handshake message", e))?;
                session.consume_outgoing(session.outgoing().len());
            }
            if session.is_handshake_done() {
                return Ok(());
            }
            if rbuf.data().is_empty() {
                let n = rbuf
                    .fill(&mut stream)
                    .await
                    .map_err(|e| Error::io("reading a handshake message", e))?;
                if n == 0 {
                    session.handle_eof()?;
                    return Err(Error::Misuse("end of stream accepted mid-handshake"));
                }
            }
            let progress = session.handle_input(rbuf.data(), &mut unused)?;
            rbuf.consume(progress.consumed);
            if let Some(event) = progress.event {
                debug_assert_eq!(event, Event::HandshakeDone);
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| Error::Timeout { after: timeout })??;
    let handshake_hash = session.handshake_hash().unwrap_or_default();
    let (tx, rx) = session.split()?;
    tracing::debug!("noise handshake done");
    Ok(Channel {
        stream,
        send: Sending { tx },
        recv: Receiving { rx, rbuf },
        handshake_hash,
    })
}

/// The driver state of the sending direction.
struct Sending {
    tx: FrameSender,
}

impl Sending {
    async fn send<W: AsyncWrite + Unpin>(&mut self, writer: &mut W, message: &[u8]) -> Result<()> {
        self.tx.write_message(message)?;
        self.flush(writer).await
    }

    /// Writes every queued byte. Bytes are marked written as each `write`
    /// returns, so if this future is dropped the next call finishes the
    /// frame instead of repeating its start.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> Result<()> {
        while !self.tx.outgoing().is_empty() {
            match writer.write(self.tx.outgoing()).await {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(self.tx.fail(Error::io("writing a frame", e)));
                }
                Ok(n) => self.tx.consume_outgoing(n),
                Err(e) => return Err(self.tx.fail(Error::io("writing a frame", e))),
            }
        }
        writer
            .flush()
            .await
            .map_err(|e| self.tx.fail(Error::io("flushing a frame", e)))
    }

    async fn shutdown<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> Result<()> {
        self.flush(writer).await?;
        writer
            .shutdown()
            .await
            .map_err(|e| self.tx.fail(Error::io("closing the stream", e)))
    }
}

/// The driver state of the receiving direction.
struct Receiving {
    rx: FrameReceiver,
    rbuf: ReadBuf,
}

impl Receiving {
    /// Cancel-safe: every byte read is either in `rbuf` or in the core.
    async fn recv_into<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        message: &mut Vec<u8>,
    ) -> Result<bool> {
        loop {
            if self.rbuf.data().is_empty() {
                let n = match self.rbuf.fill(reader).await {
                    Ok(n) => n,
                    Err(e) => return Err(self.rx.fail(Error::io("reading a frame", e))),
                };
                if n == 0 {
                    self.rx.handle_eof()?;
                    return Ok(false);
                }
            }
            let progress = self.rx.handle_input(self.rbuf.data(), message)?;
            self.rbuf.consume(progress.consumed);
            if progress.event == Some(Event::Message) {
                return Ok(true);
            }
        }
    }
}

/// An established Noise channel over a stream `S`.
///
/// Each [`Channel::send`] is one frame, and each [`Channel::recv`] returns
/// exactly what one `send` on the other end sent: message boundaries are
/// kept. After any error, every later call returns that error.
pub struct Channel<S> {
    stream: S,
    send: Sending,
    recv: Receiving,
    handshake_hash: [u8; 32],
}

impl<S> Channel<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Sends `message` (at most [`super::MAX_MESSAGE`] bytes) as one frame.
    pub async fn send(&mut self, message: &[u8]) -> Result<()> {
        self.send.send(&mut self.stream, message).await
    }

    /// The next message, or `None` if the peer closed the stream cleanly
    /// between frames.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        Ok(self
            .recv
            .recv_into(&mut self.stream, &mut message)
            .await?
            .then_some(message))
    }

    /// Like [`Channel::recv`], into a buffer the caller reuses (no
    /// allocation per message): `true` with the message in `message`, or
    /// `false` on a clean end of stream.
    pub async fn recv_into(&mut self, message: &mut Vec<u8>) -> Result<bool> {
        self.recv.recv_into(&mut self.stream, message).await
    }

    /// Closes our sending direction; the peer's `recv` then returns `None`.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.send.shutdown(&mut self.stream).await
    }

    /// A value both ends share and nobody else knows, for binding tokens
    /// to this channel.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Splits into halves that separate tasks can drive at once (streaming
    /// both ways). They share the channel's fate: an error in one ends both.
    pub fn split(self) -> (SendHalf<WriteHalf<S>>, RecvHalf<ReadHalf<S>>) {
        let (reader, writer) = tokio::io::split(self.stream);
        (
            SendHalf {
                writer,
                send: self.send,
            },
            RecvHalf {
                reader,
                recv: self.recv,
            },
        )
    }
}

impl<S> std::fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("tx", &self.send.tx)
            .field("rx", &self.recv.rx)
            .finish_non_exhaustive()
    }
}

/// The sending half of a split [`Channel`].
pub struct SendHalf<W> {
    writer: W,
    send: Sending,
}

impl<W: AsyncWrite + Unpin + Send> SendHalf<W> {
    /// Sends `message` as one frame; see [`Channel::send`].
    pub async fn send(&mut self, message: &[u8]) -> Result<()> {
        self.send.send(&mut self.writer, message).await
    }

    /// Closes our sending direction; see [`Channel::shutdown`].
    pub async fn shutdown(&mut self) -> Result<()> {
        self.send.shutdown(&mut self.writer).await
    }
}

impl<W> std::fmt::Debug for SendHalf<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHalf")
            .field("tx", &self.send.tx)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a split [`Channel`].
pub struct RecvHalf<R> {
    reader: R,
    recv: Receiving,
}

impl<R: AsyncRead + Unpin + Send> RecvHalf<R> {
    /// The next message; see [`Channel::recv`].
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let mut message = Vec::new();
        Ok(self
            .recv
            .recv_into(&mut self.reader, &mut message)
            .await?
            .then_some(message))
    }

    /// The next message into a reused buffer; see [`Channel::recv_into`].
    pub async fn recv_into(&mut self, message: &mut Vec<u8>) -> Result<bool> {
        self.recv.recv_into(&mut self.reader, message).await
    }
}

impl<R> std::fmt::Debug for RecvHalf<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHalf")
            .field("rx", &self.recv.rx)
            .finish_non_exhaustive()
    }
}
