//! HTTP/1.1 pipelining to the upstream mirror: package GETs queued on one
//! warm connection, as apt itself sends them.
//!
//! A package manager reading through the gateway asks for up to ten
//! packages ahead, and the gateway reads ahead on them. Sent one per
//! connection (all hyper's client can do), each costs a round trip for its
//! request and, on a new connection, a handshake and a slow start; sent on
//! one connection, the mirror answers them back to back, and the
//! connection's congestion window, grown by the first, carries the rest.
//! Between hosts 40 ms apart, with no peer to ask, that took the gateway
//! from 1.25x of apt's own time to 0.88x (`bench/run hosts --cases
//! alone`): the gateway reads further ahead than apt's ten.
//!
//! Only GETs whose answers the caller means to read to the end go here
//! (packages the upstream alone serves): an abandoned answer would still
//! have to be read off the connection before the next.
//!
//! Nothing is lost when pipelining fails. A request not yet answered when
//! its connection ends (the mirror closed it, broke the framing, or
//! stalled) is handed back, and the caller sends it on its own connection.
//! A mirror that breaks a pipeline twice in a row is not pipelined to for
//! [`OFF_FOR`], as apt gives up pipelining with a server that mishandles
//! it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Requests waiting on one connection at most; more go on connections of
/// their own.
pub(crate) const MAX_DEPTH: usize = 32;

/// How long pipelining stays off for a mirror that broke it twice.
pub(crate) const OFF_FOR: Duration = Duration::from_secs(600);

/// The longest response head read.
const MAX_HEAD: usize = 64 * 1024;

/// The longest chunk-size or trailer line read.
const MAX_LINE: usize = 4096;

/// Body pieces buffered ahead of the reader of one answer.
const BODY_QUEUE: usize = 16;

/// An answer's status and body, as received on a pipeline.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Body,
}

/// An answer's body, read off the connection as the reader takes it.
#[derive(Debug)]
pub(crate) struct Body(mpsc::Receiver<Result<Bytes, String>>);

impl Body {
    /// The next piece; `None` at the end; an error if the connection broke
    /// before the end.
    pub(crate) async fn data(&mut self) -> Option<Result<Bytes, String>> {
        self.0.recv().await
    }
}

/// A request the pipeline did not answer: send it another way.
#[derive(Debug)]
pub(crate) struct Unanswered;

/// Why a connection's reader stopped.
#[derive(Debug, PartialEq)]
enum End {
    /// Idle, or closed by the mirror between answers as HTTP allows.
    Clean,
    /// The mirror broke the pipeline: framing, an early close, a stall.
    Broken(String),
}

/// The pipelines of one upstream client, one per origin
/// (`scheme://authority`).
#[derive(Debug, Default)]
pub(crate) struct Pipelines {
    origins: Mutex<HashMap<String, Arc<Origin>>>,
}

/// One origin's connection and record.
#[derive(Debug, Default)]
struct Origin {
    /// Held while the connection is opened, so that requests arriving
    /// together share it.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    record: Mutex<Record>,
}

#[derive(Debug, Default)]
struct Record {
    broken_in_a_row: u32,
    off_until: Option<Instant>,
}

/// One connection: the answers it owes in order, and the requests on
/// their way to its writer (a task of its own, so that a caller that goes
/// away never leaves half a request on the wire).
struct Conn {
    owed: Mutex<Owed>,
    to_writer: mpsc::UnboundedSender<Vec<u8>>,
    closed: CancellationToken,
}

/// Anything that carries a connection.
pub(crate) trait IoBox: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> IoBox for T {}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

#[derive(Default)]
struct Owed {
    waiting: VecDeque<oneshot::Sender<Answer>>,
    closed: bool,
}

impl Conn {
    fn is_open(&self) -> bool {
        self.owed.lock().is_ok_and(|o| !o.closed)
    }

    /// Closes the connection to new requests and hands back the ones it
    /// owes (their senders dropped: the callers send them elsewhere).
    fn close(&self) -> usize {
        self.closed.cancel();
        let mut o = match self.owed.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        o.closed = true;
        let n = o.waiting.len();
        o.waiting.clear();
        n
    }
}

impl Pipelines {
    /// GET `uri` (with `headers`) on the origin's pipeline, opening it with
    /// `open` when there is none. `Err(Unanswered)` when the pipeline cannot
    /// take it or ends before its answer: nothing of it was received. The
    /// second value is true when no request was waiting before this one
    /// (its time to the head is then the mirror's own).
    pub(crate) async fn get<F, Fut, T>(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        timeout: Duration,
        open: F,
    ) -> Result<(Answer, bool), Unanswered>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<T>>,
        T: IoBox,
    {
        let origin = self.origin(uri)?;
        if origin
            .record
            .lock()
            .ok()
            .and_then(|r| r.off_until)
            .is_some_and(|t| Instant::now() < t)
        {
            return Err(Unanswered);
        }
        let conn = {
            let mut slot = origin.conn.lock().await;
            match slot.as_ref().filter(|c| c.is_open()) {
                Some(c) => c.clone(),
                None => {
                    let io = open().await.map_err(|_| Unanswered)?;
                    let c = spawn(Box::new(io), timeout, origin.clone());
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        let request = request_bytes(uri, headers).ok_or(Unanswered)?;
        let (tx, rx) = oneshot::channel();
        let first = {
            // The answer is owed and the request queued under one lock:
            // answers come in the order requests go.
            let mut o = conn.owed.lock().map_err(|_| Unanswered)?;
            if o.closed || o.waiting.len() >= MAX_DEPTH {
                return Err(Unanswered);
            }
            conn.to_writer.send(request).map_err(|_| Unanswered)?;
            o.waiting.push_back(tx);
            o.waiting.len() == 1
        };
        rx.await.map(|a| (a, first)).map_err(|_| Unanswered)
    }

    fn origin(&self, uri: &Uri) -> Result<Arc<Origin>, Unanswered> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().ok_or(Unanswered)?,
            uri.authority().ok_or(Unanswered)?
        );
        let mut origins = self.origins.lock().map_err(|_| Unanswered)?;
        Ok(origins.entry(key).or_default().clone())
    }
}

/// The request's bytes: `GET path HTTP/1.1`, the host, the forwarded
/// headers. `None` for a URI that has no host.
fn request_bytes(uri: &Uri, headers: &HeaderMap) -> Option<Vec<u8>> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(128 + path.len());
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    if let Some(port) = uri.port_u16().filter(|p| *p != default_port) {
        out.extend_from_slice(format!(":{port}").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// Starts a connection's writer and reader; returns the connection.
fn spawn(io: Box<dyn IoBox>, timeout: Duration, origin: Arc<Origin>) -> Arc<Conn> {
    let (read, write) = tokio::io::split(io);
    let (to_writer, requests) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        owed: Mutex::new(Owed::default()),
        to_writer,
        closed: CancellationToken::new(),
    });
    tokio::spawn(write_all(write, requests, conn.clone()));
    let c = conn.clone();
    tokio::spawn(async move {
        let mut reader = Reader {
            io: read,
            buf: BytesMut::with_capacity(64 * 1024),
            timeout,
        };
        let end = reader.answer_all(&c).await;
        let unanswered = c.close();
        let mut r = match origin.record.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        match end {
            End::Broken(why) => {
                r.broken_in_a_row += 1;
                tracing::debug!(why, unanswered, "upstream pipeline broken");
                if r.broken_in_a_row >= 2 {
                    r.off_until = Some(Instant::now() + OFF_FOR);
                    tracing::info!(
                        "the upstream mishandles pipelined requests: sent one by one for now"
                    );
                }
            }
            _ => r.broken_in_a_row = 0,
        }
    });
    conn
}

/// Writes a connection's requests in order, until it closes.
async fn write_all(
    mut io: WriteHalf<Box<dyn IoBox>>,
    mut requests: mpsc::UnboundedReceiver<Vec<u8>>,
    conn: Arc<Conn>,
) {
    loop {
        let request = tokio::select! {
            () = conn.closed.cancelled() => break,
            r = requests.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let sent = async {
            io.write_all(&request).await?;
            io.flush().await
        };
        if sent.await.is_err() {
            // Part of a request may be on the wire: nothing can follow it.
            conn.close();
            break;
        }
    }
    let _ = io.shutdown().await;
}

/// Reads a connection's answers in order.
struct Reader {
    io: ReadHalf<Box<dyn IoBox>>,
    buf: BytesMut,
    timeout: Duration,
}

/// How an answer's body is delimited.
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection ends (HTTP/1.0 style): no answer can follow.
    Close,
}

impl Reader {
    /// Answers until the connection ends.
    async fn answer_all(&mut self, conn: &Conn) -> End {
        loop {
            // Wait for the next head (or the end of an idle connection).
            if self.buf.is_empty() {
                match self.more().await {
                    Ok(true) => {}
                    Ok(false) => {
                        return if owes(conn) {
                            End::Broken("closed with answers owed".into())
                        } else {
                            End::Clean
                        };
                    }
                    Err(e) if !owes(conn) && e == "no answer in time" => return End::Clean,
                    Err(e) => return End::Broken(e),
                }
            }
            let (status, headers) = match self.head().await {
                Ok(h) => h,
                Err(e) => return End::Broken(e),
            };
            if status.is_informational() {
                continue;
            }
            let Some(waiter) = conn
                .owed
                .lock()
                .ok()
                .and_then(|mut o| o.waiting.pop_front())
            else {
                return End::Broken("an answer no request asked for".into());
            };
            let framing = match framing(status, &headers) {
                Ok(f) => f,
                Err(e) => return End::Broken(e),
            };
            let closes = headers
                .get(hyper::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
            let (tx, rx) = mpsc::channel(BODY_QUEUE);
            // A caller that went away still has its answer read off.
            let _ = waiter.send(Answer {
                status,
                body: Body(rx),
            });
            let read = match framing {
                Framing::Length(n) => self.body_length(n, &tx).await,
                Framing::Chunked => self.body_chunked(&tx).await,
                Framing::Close => {
                    let r = self.body_to_end(&tx).await;
                    return match r {
                        Ok(()) => End::Clean,
                        Err(e) => {
                            let _ = tx.send(Err(e.clone())).await;
                            End::Broken(e)
                        }
                    };
                }
            };
            if let Err(e) = read {
                let _ = tx.send(Err(e.clone())).await;
                return End::Broken(e);
            }
            drop(tx);
            if closes {
                return End::Clean;
            }
        }
    }

    /// Reads more into the buffer: `Ok(false)` at the end of the stream.
    async fn more(&mut self) -> Result<bool, String> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        match tokio::time::timeout(self.timeout, self.io.read_buf(&mut self.buf)).await {
            Err(_) => Err("no answer in time".into()),
            Ok(Err(e)) => Err(format!("reading: {e}")),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
        }
    }

    async fn more_or_end(&mut self, what: &str) -> Result<(), String> {
        match self.more().await? {
            true => Ok(()),
            false => Err(format!("the connection ended in {what}")),
        }
    }

    async fn head(&mut self) -> Result<(StatusCode, HeaderMap), String> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed
                        .code
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or("a response head without a valid status")?;
                    let mut headers = HeaderMap::new();
                    for h in parsed.headers.iter() {
                        let name = HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|_| format!("bad header name {:?}", h.name))?;
                        let value = HeaderValue::from_bytes(h.value)
                            .map_err(|_| format!("bad value of header {:?}", h.name))?;
                        headers.append(name, value);
                    }
                    self.buf.advance(len);
                    return Ok((status, headers));
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {
                    self.more_or_end("a response head").await?;
                }
                Ok(httparse::Status::Partial) => {
                    return Err(format!("a response head over {MAX_HEAD} bytes"));
                }
                Err(e) => return Err(format!("a malformed response head: {e}")),
            }
        }
    }

    /// Passes on up to `n` bytes from the buffer (reading when it is
    /// empty).
    async fn pass(
        &mut self,
        n: u64,
        tx: &mpsc::Sender<Result<Bytes, String>>,
    ) -> Result<u64, String> {
        if self.buf.is_empty() {
            self.more_or_end("a body").await?;
        }
        let take = (self.buf.len() as u64).min(n) as usize;
        let piece = self.buf.split_to(take).freeze();
        // A receiver gone means the caller stopped reading: the bytes are
        // still consumed, so the next answer's framing holds.
        let _ = tx.send(Ok(piece)).await;
        Ok(take as u64)
    }

    async fn body_length(
        &mut self,
        mut left: u64,
        tx: &mpsc::Sender<Result<Bytes, String>>,
    ) -> Result<(), String> {
        while left > 0 {
            left -= self.pass(left, tx).await?;
        }
        Ok(())
    }

    async fn body_to_end(
        &mut self,
        tx: &mpsc::Sender<Result<Bytes, String>>,
    ) -> Result<(), String> {
        loop {
            if !self.buf.is_empty() {
                let piece = self.buf.split().freeze();
                let _ = tx.send(Ok(piece)).await;
            }
            if !self.more().await? {
                return Ok(());
            }
        }
    }

    async fn line(&mut self) -> Result<BytesMut, String> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(at);
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!("a chunk line over {MAX_LINE} bytes"));
            }
            self.more_or_end("a chunked body").await?;
        }
    }

    async fn body_chunked(
        &mut self,
        tx: &mpsc::Sender<Result<Bytes, String>>,
    ) -> Result<(), String> {
        loop {
            let line = self.line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .map(|l| l.split(';').next().unwrap_or("").trim())
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    format!("a bad chunk size line {:?}", String::from_utf8_lossy(&line))
                })?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.body_length(size, tx).await?;
            if !self.line().await?.is_empty() {
                return Err("a chunk longer than its size".into());
            }
        }
    }
}

fn owes(conn: &Conn) -> bool {
    conn.owed.lock().is_ok_and(|o| !o.waiting.is_empty())
}

/// How the answer's body is delimited (RFC 9112, section 6.3, for an
/// answer to a GET).
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, String> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if let Some(te) = headers.get(hyper::header::TRANSFER_ENCODING) {
        let te = te.to_str().map_err(|_| "a bad Transfer-Encoding")?;
        return match te.rsplit(',').next().map(str::trim) {
            Some(last) if last.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Ok(Framing::Close),
        };
    }
    let mut lengths = headers.get_all(hyper::header::CONTENT_LENGTH).iter();
    match lengths.next() {
        None => Ok(Framing::Close),
        Some(first) => {
            let n = first
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("a bad Content-Length")?;
            if lengths.any(|v| v != first) {
                return Err("Content-Length headers that disagree".into());
            }
            Ok(Framing::Length(n))
        }
    }
}

#[cfg(test)]
mod tests;
