//! Reading a client's pipelined requests ahead of the HTTP server, so that
//! their downloads start while earlier responses are still streaming.
//!
//! apt sends up to ten requests on one connection before the first answer
//! (`Acquire::http::Pipeline-Depth`), and a mirror answers them back to
//! back. hyper's HTTP/1 server reads a connection's next request only once
//! the current response is written, so without help each package's
//! download would start only when the one before it had reached apt: one
//! round trip to peers or the upstream per package, not per ten.
//!
//! [`ReadAheadListener`] wraps the gateway's listener. Every connection's
//! socket is read by a task of its own into a small queue that hyper reads
//! from; on the way, the task finds each complete request head, and for a
//! plain `GET` (no `Range`, no body) hands its target to the gateway,
//! which starts that item's download (a job outlives its requester, and
//! the request, when hyper reaches it, joins the job). Responses still go
//! out in request order, as HTTP/1.1 requires: only the start of the work
//! moves.
//!
//! Bounds: at most [`MAX_AHEAD`] requests are read ahead of the one hyper
//! is answering (the task stops reading until hyper catches up), at most
//! [`QUEUE_CHUNKS`] chunks of [`CHUNK`] bytes wait in the queue, and a head
//! longer than [`MAX_HEAD`] ends the scanning (not the connection: hyper
//! answers it as it would).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// Requests read ahead of the one being answered, per connection.
pub const MAX_AHEAD: usize = 16;
/// The most bytes one read takes from the socket.
pub const CHUNK: usize = 16 * 1024;
/// Chunks waiting for hyper, per connection.
pub const QUEUE_CHUNKS: usize = 4;
/// The longest request head scanned; past it, scanning stops.
pub const MAX_HEAD: usize = 16 * 1024;

/// What a read-ahead request is handed to: its target (`/repo/path`).
pub type OnRequest = Arc<dyn Fn(&str) + Send + Sync>;

/// A TCP listener whose connections read requests ahead (see the module
/// docs); each accepted socket gets `TCP_NODELAY`.
pub struct ReadAheadListener {
    inner: TcpListener,
    on_request: OnRequest,
}

impl ReadAheadListener {
    /// Wrap `inner`; `on_request` gets each plain GET's target read ahead.
    pub fn new(inner: TcpListener, on_request: OnRequest) -> ReadAheadListener {
        ReadAheadListener { inner, on_request }
    }
}

impl axum::serve::Listener for ReadAheadListener {
    type Io = ReadAhead;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (ReadAhead, std::net::SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => return (ReadAhead::new(tcp, self.on_request.clone()), addr),
                Err(e) => {
                    // As axum's own listener: out of file descriptors and
                    // the like pass; a moment's pause keeps it from spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// What the reading task and hyper's side share.
#[derive(Default)]
struct Progress {
    /// Bytes hyper has taken.
    consumed: AtomicU64,
    /// Woken when hyper takes bytes.
    taken: Notify,
}

/// One connection as hyper sees it: reads come from the reading task's
/// queue, writes go to the socket.
pub struct ReadAhead {
    queue: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
    write: OwnedWriteHalf,
    progress: Arc<Progress>,
    /// The reader ended (end of stream or an error already passed on).
    ended: bool,
}

impl ReadAhead {
    fn new(tcp: TcpStream, on_request: OnRequest) -> ReadAhead {
        // Without TCP_NODELAY every response after the first on a
        // kept-alive connection waits for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (read, write) = tcp.into_split();
        let (tx, queue) = mpsc::channel(QUEUE_CHUNKS);
        let progress = Arc::new(Progress::default());
        tokio::spawn(read_socket(read, tx, progress.clone(), on_request));
        ReadAhead {
            queue,
            pending: Bytes::new(),
            write,
            progress,
            ended: false,
        }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        while me.pending.is_empty() && !me.ended {
            match me.queue.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => me.pending = bytes,
                Poll::Ready(Some(Err(e))) => {
                    me.ended = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => me.ended = true,
            }
        }
        let n = me.pending.len().min(buf.remaining());
        buf.put_slice(&me.pending[..n]);
        me.pending.advance(n);
        if n > 0 {
            me.progress.consumed.fetch_add(n as u64, Ordering::Release);
            me.progress.taken.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// The reading task: socket → queue, scanning request heads on the way,
/// until the end of the stream, an error, or hyper dropping its side.
async fn read_socket(
    mut read: OwnedReadHalf,
    tx: mpsc::Sender<io::Result<Bytes>>,
    progress: Arc<Progress>,
    on_request: OnRequest,
) {
    let mut scanner = Scanner::default();
    let mut offset = 0u64;
    loop {
        // Hold back while MAX_AHEAD requests wait for hyper.
        loop {
            let taken = progress.taken.notified();
            let consumed = progress.consumed.load(Ordering::Acquire);
            if scanner.waiting(consumed) < MAX_AHEAD {
                break;
            }
            tokio::select! {
                () = taken => {}
                () = tx.closed() => return,
            }
        }
        let mut buf = BytesMut::with_capacity(CHUNK);
        let got = tokio::select! {
            r = read.read_buf(&mut buf) => r,
            () = tx.closed() => return,
        };
        match got {
            Ok(0) => return,
            Ok(n) => {
                let bytes = buf.freeze();
                for target in scanner.feed(&bytes, offset) {
                    on_request(&target);
                }
                offset += n as u64;
                if tx.send(Ok(bytes)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Finds request heads in a connection's bytes.
#[derive(Default)]
struct Scanner {
    /// The bytes of the head under way.
    head: Vec<u8>,
    /// Where in the stream each head seen so far ends, oldest first (only
    /// those hyper may not have taken yet).
    ends: VecDeque<u64>,
    /// Scanning has stopped (a request with a body, an overlong head).
    stopped: bool,
}

impl Scanner {
    /// How many heads seen are not wholly taken by hyper yet.
    fn waiting(&mut self, consumed: u64) -> usize {
        while self.ends.front().is_some_and(|e| *e <= consumed) {
            self.ends.pop_front();
        }
        self.ends.len()
    }

    /// Scans `bytes`, which start at `offset` of the stream; returns the
    /// targets of the plain GETs whose heads it completed.
    fn feed(&mut self, bytes: &[u8], offset: u64) -> Vec<String> {
        let mut found = Vec::new();
        if self.stopped {
            return found;
        }
        for (i, b) in bytes.iter().enumerate() {
            self.head.push(*b);
            if self.head.ends_with(b"\r\n\r\n") {
                let head = std::mem::take(&mut self.head);
                self.ends.push_back(offset + i as u64 + 1);
                match plain_get(&head) {
                    Head::Get(target) => found.push(target),
                    Head::Other => {}
                    Head::WithBody => {
                        self.stopped = true;
                        return found;
                    }
                }
            } else if self.head.len() > MAX_HEAD {
                self.stopped = true;
                self.head = Vec::new();
                return found;
            }
        }
        found
    }
}

/// What a request head is, for reading ahead.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A GET of the whole target, with no body.
    Get(String),
    /// Anything else without a body: not read ahead.
    Other,
    /// A request with a body: the scanner cannot find the next head.
    WithBody,
}

fn plain_get(head: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(head) else {
        return Head::Other;
    };
    // Blank lines before a request line are allowed (RFC 9112 §2.2).
    let mut lines = text.trim_start_matches("\r\n").split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut ranged = false;
    for line in lines {
        let Some((name, _)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Head::WithBody;
        }
        ranged |= name.eq_ignore_ascii_case("range");
    }
    let mut words = request_line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("GET"), Some(target), Some(version))
            if target.starts_with('/') && version.starts_with("HTTP/1.") && !ranged =>
        {
            Head::Get(target.to_owned())
        }
        _ => Head::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_gets_are_found_and_the_rest_is_not() {
        assert_eq!(
            plain_get(b"GET /deb/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Get("/deb/pool/a.deb".into())
        );
        assert_eq!(
            plain_get(b"GET /deb/a.deb HTTP/1.1\r\nRange: bytes=5-\r\n\r\n"),
            Head::Other,
            "a range is answered as asked, not read ahead"
        );
        assert_eq!(plain_get(b"HEAD /deb/a.deb HTTP/1.1\r\n\r\n"), Head::Other);
        assert_eq!(
            plain_get(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n"),
            Head::WithBody
        );
        assert_eq!(plain_get(b"GET a.deb HTTP/1.1\r\n\r\n"), Head::Other);
        assert_eq!(plain_get(b"\xff\xfe\r\n\r\n"), Head::Other);
    }

    #[test]
    fn heads_split_across_reads_are_found_once_each() {
        let stream = b"GET /r/a HTTP/1.1\r\nHost: x\r\n\r\nGET /r/b HTTP/1.1\r\n\r\nHEAD /r/c HTTP/1.1\r\n\r\nGET /r/d HTTP/1.1\r\n\r\n";
        for split in 1..stream.len() {
            let mut s = Scanner::default();
            let mut found = s.feed(&stream[..split], 0);
            found.extend(s.feed(&stream[split..], split as u64));
            assert_eq!(found, ["/r/a", "/r/b", "/r/d"], "split at {split}");
            assert_eq!(s.waiting(0), 4);
            assert_eq!(s.waiting(stream.len() as u64), 0);
        }
    }

    #[test]
    fn a_request_with_a_body_or_an_overlong_head_stops_the_scanning() {
        let mut s = Scanner::default();
        let found = s.feed(
            b"POST /x HTTP/1.1\r\nContent-Length: 22\r\n\r\nGET /r/a HTTP/1.1\r\n\r\n",
            0,
        );
        assert!(found.is_empty(), "a body could hide anything: {found:?}");
        assert!(s.feed(b"GET /r/b HTTP/1.1\r\n\r\n", 64).is_empty());

        let mut s = Scanner::default();
        let mut long = b"GET /r/a HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(s.feed(&long, 0).is_empty());
        assert!(s.head.is_empty(), "the overlong head is not kept");
        assert!(s.feed(b"\r\n\r\nGET /r/b HTTP/1.1\r\n\r\n", 0).is_empty());
    }

    #[test]
    fn waiting_counts_heads_hyper_has_not_taken() {
        let mut s = Scanner::default();
        let one = b"GET /r/a HTTP/1.1\r\n\r\n";
        for i in 0..5u64 {
            s.feed(one, i * one.len() as u64);
        }
        assert_eq!(s.waiting(0), 5);
        assert_eq!(
            s.waiting(one.len() as u64 - 1),
            5,
            "a head half taken still waits"
        );
        assert_eq!(s.waiting(one.len() as u64), 4);
        assert_eq!(s.waiting(5 * one.len() as u64), 0);
    }
}
