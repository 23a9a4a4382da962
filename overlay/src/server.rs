//! The peer server: serves items from the store over Noise channels.
//!
//! A client opens a channel (Noise NK to this session's static key) and
//! sends [`Message::Request`]s, one at a time or pipelined; each is answered
//! in order:
//!
//! - the item is not one the session announces
//!   ([`ServerConfig::serves`]): `NotFound { item }`, without a look at the
//!   store, so that an item held but not announced (denied, not popular
//!   enough, another version) is answered exactly as one never heard of;
//! - the item is announced but not held (padding not fetched yet, or
//!   evicted): `NotFound { item }`;
//! - the range is not inside the item: `Error { RangeNotSatisfiable }`;
//!   longer than [`ServerConfig::max_request_len`]:
//!   `Error { RequestTooLarge }`;
//! - otherwise, if `want_meta`: `Meta { item, size, root, outboard_len }`
//!   then the outboard in `Outboard` parts; then the range in `Data`
//!   messages, in order, each at most [`MAX_DATA_PAYLOAD`] bytes.
//!
//! `Ping { nonce }` gets `Pong { nonce }`. A message a client may not send,
//! or one that does not decode, gets `Error { Malformed }` and the channel
//! closes.
//!
//! Limits: at most [`ServerConfig::max_clients`] channels are served at
//! once; a client beyond that completes the handshake, receives `Busy` at
//! once and is closed (handshakes of such clients are themselves bounded,
//! to 4 × max_clients and at least 64;
//! beyond that bound the TCP connection is just closed). Every `Data` and
//! `Outboard` byte passes one token bucket shared by all clients
//! ([`RateLimiter`]). A client silent for [`ServerConfig::idle_timeout`] is
//! closed.
//!
//! Shutdown is graceful: the server stops accepting, each channel finishes
//! the message it is sending, tells its client `Error { ShuttingDown }`, and
//! closes; [`ServerHandle::shutdown`] returns when all have.
//!
//! The server must never log an item key or a client address unredacted,
//! and never serve a byte the store does not hold.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anonmirror_core::{ItemKey, Sensitive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::RateLimiter;
use crate::wire::{
    ErrorCode, MAX_DATA_PAYLOAD, MAX_OUTBOARD_PART, Message, Sender, encode_data_header,
};
use anonmirror_channel::noise::{Channel, ChannelParams, StaticKeypair};
use anonmirror_channel::transport::Listener;
use anonmirror_core::Contact;
use anonmirror_store::{ItemReader, Store};

/// Called with an item a client asked for and the store does not hold
/// (the node may fetch it, e.g. a padding item it announced).
pub type OnMiss = std::sync::Arc<dyn Fn(&ItemKey) + Send + Sync>;

/// Whether an item is one the session announces (and so may be served).
pub type Serves = std::sync::Arc<dyn Fn(&ItemKey) -> bool + Send + Sync>;

/// How a peer server behaves.
#[derive(Clone)]
pub struct ServerConfig {
    /// Channels served at once; more get `Busy`.
    pub max_clients: usize,
    /// Upload rate across all clients, bytes per second; `None`: unlimited.
    pub upload_rate: Option<u64>,
    /// The longest range one request may ask for.
    pub max_request_len: u64,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// How long a client may stay silent between requests.
    pub idle_timeout: Duration,
    /// What `Busy` tells clients to wait before retrying.
    pub busy_retry_after: Duration,
    /// Told of every `NotFound` answered for an item it serves.
    pub on_miss: Option<OnMiss>,
    /// The items it serves: the session's announcement. `None` serves
    /// every item the store holds (tests, benchmarks); a volunteer always
    /// sets it, so that nobody learns from its answers more than its
    /// announcement says.
    pub serves: Option<Serves>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_clients", &self.max_clients)
            .field("upload_rate", &self.upload_rate)
            .field("max_request_len", &self.max_request_len)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("busy_retry_after", &self.busy_retry_after)
            .field("on_miss", &self.on_miss.is_some())
            .field("serves", &self.serves.is_some())
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_clients: 8,
            upload_rate: None,
            max_request_len: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            busy_retry_after: Duration::from_secs(5),
            on_miss: None,
            serves: None,
        }
    }
}

/// What a server has done so far.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Data bytes sent (payload only).
    pub bytes_served: AtomicU64,
    /// Channels served (handshake done, under the limit).
    pub clients_served: AtomicU64,
    /// Clients told `Busy`.
    pub clients_busy: AtomicU64,
    /// Requests answered `NotFound`.
    pub not_found: AtomicU64,
    /// The most channels ever served at once.
    pub peak_clients: AtomicU64,
}

/// A running peer server.
#[derive(Debug)]
pub struct ServerHandle {
    contact: Contact,
    cancel: CancellationToken,
    /// Cancelled when the listener is gone for good.
    unreachable: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<ServerStats>,
}

impl ServerHandle {
    /// Where the server listens.
    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    /// Counters of what the server has done.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Resolves once the listener is gone for good (an onion service that
    /// stopped, the Tor daemon's control connection lost): the server can
    /// no longer be reached at its contact, and whoever announced it
    /// should stop doing so.
    pub async fn unreachable(&self) {
        self.unreachable.cancelled().await;
    }

    /// Stop accepting, let every channel close cleanly, and wait for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

struct Shared {
    store: Store,
    keypair: StaticKeypair,
    params: ChannelParams,
    config: ServerConfig,
    limiter: Option<RateLimiter>,
    clients: Arc<Semaphore>,
    /// Handshakes of clients that will only be told `Busy`.
    busy_handshakes: Arc<Semaphore>,
    stats: Arc<ServerStats>,
}

/// Start serving `store` on `listener` as the holder of `keypair`.
pub fn spawn<L>(
    listener: L,
    store: Store,
    keypair: StaticKeypair,
    params: ChannelParams,
    config: ServerConfig,
) -> std::io::Result<ServerHandle>
where
    L: Listener + 'static,
    L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let contact = listener.local_contact()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let stats = Arc::new(ServerStats::default());
    let limiter = config
        .upload_rate
        // A burst of a tenth of a second, and at least one whole message.
        .map(|rate| RateLimiter::new(rate, (rate / 10).max(MAX_DATA_PAYLOAD as u64)));
    let shared = Arc::new(Shared {
        store,
        keypair,
        params,
        clients: Arc::new(Semaphore::new(config.max_clients)),
        busy_handshakes: Arc::new(Semaphore::new((4 * config.max_clients).max(64))),
        config,
        limiter,
        stats: stats.clone(),
    });
    let unreachable = CancellationToken::new();
    tracker.spawn(accept_loop(
        listener,
        shared,
        cancel.clone(),
        unreachable.clone(),
        tracker.clone(),
    ));
    Ok(ServerHandle {
        contact,
        cancel,
        unreachable,
        tracker,
        stats,
    })
}

async fn accept_loop<L>(
    mut listener: L,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    unreachable: CancellationToken,
    tracker: TaskTracker,
) where
    L: Listener,
    L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _remote) = match accepted {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
                // The listener's transport is gone (see `Listener`):
                // nothing will arrive any more.
                tracing::warn!(error = %e, "peer server: its listener is gone");
                unreachable.cancel();
                return;
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(error = %e, "peer server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = shared.clients.clone().try_acquire_owned().ok();
        let busy_permit = match permit {
            Some(_) => None,
            None => match shared.busy_handshakes.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                // Too many clients even to say Busy to: close at once.
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let channel = tokio::select! {
                _ = cancel.cancelled() => return,
                c = anonmirror_channel::noise::accept(stream, &shared.keypair, &shared.params, shared.config.handshake_timeout) => c,
            };
            let mut channel = match channel {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "peer server: handshake failed");
                    return;
                }
            };
            if permit.is_none() {
                drop(busy_permit);
                shared.stats.clients_busy.fetch_add(1, Ordering::Relaxed);
                let retry = shared.config.busy_retry_after.as_millis().min(u32::MAX as u128) as u32;
                let _ = send(&mut channel, &Message::Busy { retry_after_ms: retry }).await;
                linger(&mut channel).await;
                return;
            }
            shared.stats.clients_served.fetch_add(1, Ordering::Relaxed);
            let active = shared.config.max_clients - shared.clients.available_permits();
            shared.stats.peak_clients.fetch_max(active as u64, Ordering::Relaxed);
            if let Err(e) = serve_channel(&mut channel, &shared, &cancel).await {
                tracing::debug!(error = %e, "peer server: channel ended");
            }
            linger(&mut channel).await;
            drop(permit);
        });
    }
}

/// Close our direction, then read until the client closes too (briefly):
/// closing a socket with unread input resets the connection, and the reset
/// can overtake our last message (`Busy`, an error) before the client has
/// read it.
async fn linger<S: AsyncRead + AsyncWrite + Unpin + Send>(channel: &mut Channel<S>) {
    if channel.shutdown().await.is_err() {
        return;
    }
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(true) = channel.recv_into(&mut sink).await {}
    })
    .await;
}

async fn send<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    msg: &Message<'_>,
) -> anonmirror_channel::Result<()> {
    let bytes = msg
        .encode()
        .map_err(|_| anonmirror_channel::Error::Misuse("could not encode a message"))?;
    channel.send(&bytes).await
}

async fn send_error<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    code: ErrorCode,
    text: &str,
) -> anonmirror_channel::Result<()> {
    send(
        channel,
        &Message::Error {
            code,
            message: text.into(),
        },
    )
    .await
}

/// Answer one channel's requests until it closes, misbehaves, idles out or
/// the server shuts down.
async fn serve_channel<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    shared: &Shared,
    cancel: &CancellationToken,
) -> anonmirror_channel::Result<()> {
    let mut inbound = Vec::new();
    let mut outbound = Vec::with_capacity(anonmirror_channel::noise::MAX_MESSAGE);
    // The two block buffers of `send_range`, kept across requests.
    let mut blocks: Vec<Block> = Vec::with_capacity(2);
    loop {
        let got = tokio::select! {
            _ = cancel.cancelled() => {
                return send_error(channel, ErrorCode::ShuttingDown, "shutting down").await;
            }
            got = tokio::time::timeout(shared.config.idle_timeout, channel.recv_into(&mut inbound)) => got,
        };
        match got {
            Err(_) => return Ok(()),
            Ok(Ok(false)) => return Ok(()),
            Ok(Ok(true)) => {}
            Ok(Err(e)) => return Err(e),
        }
        let msg = match Message::decode_from(Sender::Client, &inbound) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "peer server: client sent a bad message");
                return send_error(
                    channel,
                    ErrorCode::Malformed,
                    "malformed or unexpected message",
                )
                .await;
            }
        };
        match msg {
            Message::Ping { nonce } => send(channel, &Message::Pong { nonce }).await?,
            Message::Request {
                item,
                offset,
                len,
                want_meta,
            } => {
                if shared.config.serves.as_ref().is_some_and(|s| !s(&item)) {
                    shared.stats.not_found.fetch_add(1, Ordering::Relaxed);
                    send(channel, &Message::NotFound { item }).await?;
                    continue;
                }
                let reader = match shared.store.open_item(&item) {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        shared.stats.not_found.fetch_add(1, Ordering::Relaxed);
                        if let Some(f) = &shared.config.on_miss {
                            f(&item);
                        }
                        send(channel, &Message::NotFound { item }).await?;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "peer server: store failed");
                        send_error(channel, ErrorCode::Internal, "store failure").await?;
                        continue;
                    }
                };
                let size = reader.meta.size;
                if offset.checked_add(len).is_none_or(|end| end > size) {
                    send_error(
                        channel,
                        ErrorCode::RangeNotSatisfiable,
                        "range beyond the item",
                    )
                    .await?;
                    continue;
                }
                if len > shared.config.max_request_len {
                    send_error(channel, ErrorCode::RequestTooLarge, "ask for less").await?;
                    continue;
                }
                tracing::trace!(item = %Sensitive::new(item), offset, len, "peer server: request");
                // An `Error` instead of the meta is the whole answer: data
                // after it would be read as the next request's.
                if want_meta && !send_meta(channel, shared, &item, &reader, &mut outbound).await? {
                    continue;
                }
                let reader = Arc::new(reader);
                send_range(channel, shared, cancel, reader, offset, len, &mut blocks).await?;
            }
            // decode_from(Sender::Client) refuses everything else.
            _ => return send_error(channel, ErrorCode::Unexpected, "unexpected message").await,
        }
    }
}

/// Sends the item's `Meta` and outboard; `false` when an `Error` went
/// instead (the answer ends there).
async fn send_meta<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    shared: &Shared,
    item: &ItemKey,
    reader: &ItemReader,
    outbound: &mut Vec<u8>,
) -> anonmirror_channel::Result<bool> {
    let outboard = match shared.store.outboard(item) {
        Ok(Some(ob)) => ob,
        Ok(None) | Err(_) => {
            send_error(channel, ErrorCode::Internal, "store failure").await?;
            return Ok(false);
        }
    };
    send(
        channel,
        &Message::Meta {
            item: *item,
            size: reader.meta.size,
            root: reader.meta.root,
            outboard_len: outboard.len() as u64,
        },
    )
    .await?;
    let mut offset = 0u64;
    for part in outboard.chunks(MAX_OUTBOARD_PART) {
        if let Some(l) = &shared.limiter {
            l.acquire(part.len() as u64).await;
        }
        outbound.clear();
        Message::Outboard {
            offset,
            bytes: part.into(),
        }
        .encode_into(outbound)
        .map_err(|_| anonmirror_channel::Error::Misuse("could not encode an outboard part"))?;
        channel.send(outbound).await?;
        offset += part.len() as u64;
    }
    Ok(true)
}

/// Bytes read from disk per blocking read.
const BLOCK: usize = 1 << 20;

/// `Data` messages encrypted and written together: one `write` of about
/// 256 KiB instead of four, and fewer wake-ups of the client.
const BATCH: usize = 4;

/// A block of whole `Data` messages laid out back to back, and where each
/// one is (start, end, payload length).
#[derive(Default)]
struct Block {
    buf: Vec<u8>,
    spans: Vec<(usize, usize, usize)>,
}

impl Block {
    /// Lays out the `Data` messages of `want` bytes of `file` from `at`,
    /// reading each payload straight into place behind its header: no copy
    /// between the page cache and the cipher, and (the buffer being
    /// reused at its full size) no zero-filling either.
    fn fill(&mut self, file: &std::fs::File, at: u64, want: usize) -> std::io::Result<()> {
        let frames = want.div_ceil(MAX_DATA_PAYLOAD);
        let need = want + frames * crate::wire::MAX_DATA_HEADER;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        self.spans.clear();
        let mut header = Vec::with_capacity(crate::wire::MAX_DATA_HEADER);
        let (mut pos, mut done) = (0usize, 0usize);
        while done < want {
            let n = (want - done).min(MAX_DATA_PAYLOAD);
            header.clear();
            encode_data_header(&mut header, at + done as u64, n)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let start = pos;
            self.buf[pos..pos + header.len()].copy_from_slice(&header);
            pos += header.len();
            file.read_exact_at(&mut self.buf[pos..pos + n], at + done as u64)?;
            pos += n;
            self.spans.push((start, pos, n));
            done += n;
        }
        Ok(())
    }
}

/// Reads a block on the blocking pool, so a slow disk never stalls the
/// runtime.
fn read_block(
    mut block: Block,
    reader: &Arc<ItemReader>,
    at: u64,
    want: usize,
) -> tokio::task::JoinHandle<std::io::Result<Block>> {
    let r = reader.clone();
    tokio::task::spawn_blocking(move || block.fill(&r.file, at, want).map(|()| block))
}

/// Sends `len` bytes of the item from `offset` as `Data` messages, reading
/// one block ahead: the next block comes from the page cache (on another
/// core) while this one is encrypted and written. `blocks` keeps the two
/// buffers across requests.
#[allow(clippy::too_many_arguments)]
async fn send_range<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    shared: &Shared,
    cancel: &CancellationToken,
    reader: Arc<ItemReader>,
    offset: u64,
    len: u64,
    blocks: &mut Vec<Block>,
) -> anonmirror_channel::Result<()> {
    let end = offset + len;
    let block_len = |at: u64| ((end - at) as usize).min(BLOCK);
    let mut next = (offset < end).then(|| {
        read_block(
            blocks.pop().unwrap_or_default(),
            &reader,
            offset,
            block_len(offset),
        )
    });
    let mut at = offset;
    while let Some(reading) = next.take() {
        let block = match reading.await {
            Ok(Ok(filled)) => filled,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "peer server: reading an item failed");
                return send_error(channel, ErrorCode::Internal, "store failure").await;
            }
            Err(_) => {
                return Err(anonmirror_channel::Error::Misuse(
                    "the disk read task panicked",
                ));
            }
        };
        if cancel.is_cancelled() {
            return send_error(channel, ErrorCode::ShuttingDown, "shutting down").await;
        }
        let after = at + block_len(at) as u64;
        if after < end {
            let spare = blocks.pop().unwrap_or_default();
            next = Some(read_block(spare, &reader, after, block_len(after)));
        }
        for batch in block.spans.chunks(BATCH) {
            let payload: u64 = batch.iter().map(|&(_, _, n)| n as u64).sum();
            if let Some(l) = &shared.limiter {
                for &(_, _, n) in batch {
                    l.acquire(n as u64).await;
                }
            }
            let buf = &block.buf;
            channel
                .send_batch(&mut batch.iter().map(|&(start, stop, _)| &buf[start..stop]))
                .await?;
            shared
                .stats
                .bytes_served
                .fetch_add(payload, Ordering::Relaxed);
        }
        blocks.push(block);
        at = after;
    }
    Ok(())
}
