//! The tokio driver of a Noise channel: moves bytes between a stream and
//! the sans-I/O [`Session`].
//!
//! It holds no protocol logic: it writes what the core queues and feeds it
//! what it reads. It must never retry or resume after an error (the core's
//! poison makes every later call fail), and never buffer more than one read
//! buffer and one frame per direction (or the few frames of one batch a
//! bulk sender hands it at once).
//!
//! Sending writes the length prefix and ciphertext of a frame in one
//! `write` call from a reused buffer; receiving reads large chunks into a
//! reused buffer and decrypts whole frames from there, so the hot path
//! allocates nothing and copies each byte about once besides the cipher's
//! own pass. A bulk sender may queue a few frames and write them together
//! (`send_batch`), which is then the most the sending side buffers.
//! The read buffer starts at 256 bytes and grows only while reads fill it
//! (bulk transfer), shrinking back once reads are small again: a
//! rendezvous keeps a hundred thousand mostly idle channels open.

use std::time::Duration;

use anonmirror_core::PeerKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::{ChannelParams, Event, FrameReceiver, FrameSender, Session, StaticKeypair};
use crate::err::{Error, Result};

/// The most one `read` may bring in: several maximum frames, so that
/// during bulk transfer most frames are decrypted straight out of this
/// buffer rather than reassembled.
const READ_BUF_MAX: usize = 256 * 1024;

/// What a channel starts with, and returns to once idle: room for the
/// small messages most channels carry (a rendezvous session's pongs, a
/// handshake: 48 bytes). A rendezvous holds one channel per live session,
/// so this is paid a hundred thousand times; a larger frame is
/// reassembled by the core until the buffer has grown (fourfold per read
/// that fills it, so a bulk transfer reaches [`READ_BUF_MAX`] within its
/// first few reads).
const READ_BUF_MIN: usize = 256;

/// Consecutive reads of at most [`SMALL_READ`] bytes after which a grown
/// buffer shrinks back (the bulk transfer it grew for is over). Long
/// enough that a reader catching up with a bulk sender (and so reading
/// whatever little has arrived) does not shrink it mid-transfer.
const SHRINK_AFTER: u32 = 64;

/// A read this small is a control message (a request, `Busy`, a ping),
/// not bulk data.
const SMALL_READ: usize = 512;

/// Bytes read from the stream and not yet fed to the core.
///
/// It grows (fourfold, up to [`READ_BUF_MAX`]) whenever a read fills at
/// least half of it (a reader keeping pace with a bulk sender rarely fills
/// it whole), and shrinks back to [`READ_BUF_MIN`] after [`SHRINK_AFTER`]
/// small reads in a row, so a bulk transfer reads in large batches while
/// an idle or chatty channel holds [`READ_BUF_MIN`].
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled half the buffer or more: grow before the next.
    grow: bool,
    /// Small reads in a row.
    small: u32,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            buf: vec![0; READ_BUF_MIN],
            start: 0,
            end: 0,
            grow: false,
            small: 0,
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
        // Resized only here, where nothing unread is held.
        self.start = 0;
        self.end = 0;
        if self.grow && self.buf.len() < READ_BUF_MAX {
            let to = (self.buf.len() * 4).min(READ_BUF_MAX);
            self.buf.resize(to, 0);
        } else if self.small >= SHRINK_AFTER && self.buf.len() > READ_BUF_MIN {
            self.buf = vec![0; READ_BUF_MIN];
        }
        let n = reader.read(&mut self.buf).await?;
        self.end = n;
        self.grow = 2 * n >= self.buf.len();
        self.small = if n <= SMALL_READ {
            self.small.saturating_add(1)
        } else {
            0
        };
        Ok(n)
    }

    /// The buffer's size (for tests).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.len()
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

    /// Encrypts every message into its own frame, then writes them all in
    /// as few `write` calls as the stream takes.
    async fn send_batch<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        messages: &mut (dyn Iterator<Item = &[u8]> + Send),
    ) -> Result<()> {
        for message in messages {
            self.tx.write_message(message)?;
        }
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
        self.recv_into_at(reader, message, &mut |_| 0).await
    }

    /// Cancel-safe like `recv_into`; the message is decrypted into `buf`
    /// where `place` says (see [`FrameReceiver::handle_input_at`]).
    async fn recv_into_at<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        buf: &mut Vec<u8>,
        place: &mut (dyn FnMut(usize) -> usize + Send),
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
            let progress = self
                .rx
                .handle_input_at(self.rbuf.data(), buf, &mut *place)?;
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

    /// Sends each message as its own frame, as [`Channel::send`] would one
    /// by one, but with the frames written together: one `write` for a
    /// batch instead of one per frame (bulk senders: the peer server).
    pub async fn send_batch(
        &mut self,
        messages: &mut (dyn Iterator<Item = &[u8]> + Send),
    ) -> Result<()> {
        self.send.send_batch(&mut self.stream, messages).await
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

    /// The next message decrypted into `buf` from the index `place` picks
    /// given the message's length, bytes before it left alone (see
    /// `FrameReceiver::handle_input_at`): a bulk receiver opens
    /// each payload where it belongs. `false` on a clean end of stream.
    pub async fn recv_into_at(
        &mut self,
        buf: &mut Vec<u8>,
        place: &mut (dyn FnMut(usize) -> usize + Send),
    ) -> Result<bool> {
        self.recv.recv_into_at(&mut self.stream, buf, place).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The read buffer grows while reads fill it and shrinks back once they
    /// are small, never losing or reordering a byte.
    #[tokio::test]
    async fn the_read_buffer_grows_for_bulk_and_shrinks_when_idle() {
        let bulk: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut input: Vec<u8> = bulk.clone();
        let tail = [7u8; 100];
        let mut reader = tokio_test_reader(&input);
        let mut rb = ReadBuf::new();
        assert_eq!(rb.capacity(), READ_BUF_MIN);
        let mut got = Vec::new();
        let mut max_seen = 0;
        while got.len() < bulk.len() {
            let n = rb.fill(&mut reader).await.expect("read");
            assert!(n > 0);
            got.extend_from_slice(rb.data());
            rb.consume(n);
            max_seen = max_seen.max(rb.capacity());
        }
        assert_eq!(got, bulk);
        assert_eq!(max_seen, READ_BUF_MAX, "grew to the ceiling");
        // Small reads now: it shrinks back.
        input = Vec::new();
        for _ in 0..=SHRINK_AFTER {
            input.extend_from_slice(&tail);
        }
        let mut small = Chunks {
            data: input,
            pos: 0,
            chunk: tail.len(),
        };
        for _ in 0..=SHRINK_AFTER + 1 {
            let n = rb.fill(&mut small).await.expect("read");
            if n == 0 {
                break;
            }
            assert_eq!(rb.data(), &tail[..n]);
            rb.consume(n);
        }
        assert_eq!(rb.capacity(), READ_BUF_MIN);
    }

    fn tokio_test_reader(data: &[u8]) -> Chunks {
        Chunks {
            data: data.to_vec(),
            pos: 0,
            chunk: usize::MAX,
        }
    }

    /// A reader that hands out at most `chunk` bytes per read.
    struct Chunks {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = (self.data.len() - self.pos)
                .min(buf.remaining())
                .min(self.chunk);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }
}
