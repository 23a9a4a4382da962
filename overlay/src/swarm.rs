//! Swarm download: one item from several peers at once, every byte
//! verified before anyone sees it.
//!
//! Given an item's key and size (from the distribution's index) and a set
//! of peers (contact and Noise static key), [`download`]:
//!
//! 1. takes the BLAKE3 root and bao outboard from one peer (`Request` with
//!    `len = 0` and `want_meta`), checks the size against the index and the
//!    outboard against the root ([`Tree::new`]); a peer whose outboard does
//!    not fit is blamed and the next one is asked;
//! 2. splits the item into pieces (multiples of the 16 KiB chunk group),
//!    and lets one worker per peer claim pieces and fetch them (two
//!    requests in flight per peer), checking every chunk group against the
//!    tree as it completes;
//! 3. hands completed pieces to the [`Sink`] strictly in order, hashing
//!    them with SHA-256 on the way; the *last* piece is withheld until the
//!    whole item's SHA-256 equals the index's, so a sink never receives a
//!    complete item that is wrong.
//!
//! Blame. A peer whose bytes fail a chunk-group check, or who breaks the
//! protocol (bytes out of order, an unasked-for message), is dropped and
//! named in the [`SwarmReport`]. A data failure is *provisional* while the
//! tree is not confirmed: a self-consistent tree describing other content
//! (a lying outboard sender) makes honest peers fail too. So when the
//! SHA-256 of the whole item does not match, or when every worker has ended
//! without completing the item while some were blamed for data, the tree's
//! sender is blamed instead, provisional blames are withdrawn, the sink is
//! [reset](Sink::reset), and the download restarts with the tree from
//! another peer.
//!
//! Speed. Pieces are claimed in order within a window of
//! [`SwarmConfig::window`] pieces past the first undelivered one (bounding
//! the memory held for out-of-order pieces). When no piece is left to
//! claim, an idle worker also fetches the oldest piece another peer is
//! still fetching (work stealing); the first verified copy wins. A peer that
//! sends nothing for [`SwarmConfig::stall_timeout`] is dropped and its
//! pieces return to the pool.
//!
//! Memory. A piece's buffer is fresh memory unless its consumer hands it
//! back: [`Pieces`] keeps a few for the next pieces, since every page of
//! fresh memory costs a fault and a zeroed page (a fifth of a gateway's
//! CPU when it was measured, "Gateway" in BENCHMARKS.md).
//!
//! This module must never pass an unverified byte to the sink, and never
//! log an item key or a peer's contact unredacted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_core::{ItemKey, PeerKey, Sensitive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire::{MAX_DATA_HEADER, Message, Sender, data_header_len};
use anonmirror_channel::noise::TAG_LEN;
use anonmirror_channel::noise::{Channel, ChannelParams};
use anonmirror_channel::transport::Transport;
use anonmirror_core::Contact;
use anonmirror_store::verify::{GROUP_SIZE, Tree, Verified, outboard_len};

/// A peer to download from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    /// Where it listens.
    pub contact: Contact,
    /// Its Noise static key for this session.
    pub key: PeerKey,
}

/// How a download behaves.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Prologue parameters of every channel.
    pub params: ChannelParams,
    /// Bytes per piece; rounded up to a multiple of the chunk group.
    pub piece_size: u64,
    /// Pieces that may be claimed past the first undelivered one.
    pub window: usize,
    /// Time allowed for a connection, and at most for its handshake (which
    /// gets less after a fast connection: see [`handshake_allowance`]).
    pub connect_timeout: Duration,
    /// Silence after which a peer counts as stalled.
    pub stall_timeout: Duration,
    /// Where piece buffers come from (and may be handed back to).
    pub pieces: Pieces,
}

/// Piece buffers kept for reuse, shared by clones.
///
/// A download takes its buffers here and passes each to its [`Sink`]; a
/// sink that is done with one hands it back with [`Pieces::give_back`].
/// At most [`Pieces::KEEP`] are kept; a buffer is only reused for a piece
/// at least half its capacity, so small items never sit in large buffers.
#[derive(Clone, Debug, Default)]
pub struct Pieces(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pieces {
    /// Buffers kept at most (with 1 MiB pieces, 16 MiB).
    pub const KEEP: usize = 16;

    /// An empty buffer with room for `capacity` bytes.
    fn take(&self, capacity: usize) -> Vec<u8> {
        if let Ok(mut kept) = self.0.lock()
            && let Some(i) = kept
                .iter()
                .position(|b| b.capacity() >= capacity && b.capacity() / 2 <= capacity)
        {
            let mut buf = kept.swap_remove(i);
            buf.clear();
            return buf;
        }
        Vec::with_capacity(capacity)
    }

    /// Keep `buf` for a later piece (dropped if enough are kept).
    pub fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut kept) = self.0.lock()
            && kept.len() < Self::KEEP
        {
            kept.push(buf);
        }
    }

    /// Buffers kept now.
    pub fn kept(&self) -> usize {
        self.0.lock().map_or(0, |k| k.len())
    }
}

impl SwarmConfig {
    /// Defaults for `params`: 1 MiB pieces, a 64-piece window, 10 s to
    /// connect, 10 s of silence before a peer counts as stalled.
    pub fn new(params: ChannelParams) -> SwarmConfig {
        SwarmConfig {
            params,
            piece_size: 1 << 20,
            window: 64,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            pieces: Pieces::default(),
        }
    }
}

/// Where verified bytes go, in order.
pub trait Sink: Send {
    /// The next verified bytes of the item (a whole piece, handed over so
    /// that a sink can pass it on to another thread without a copy).
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()>;
    /// Forget everything written: the download restarts from byte 0. Sinks
    /// that cannot take back what they passed on return an error, which
    /// ends the download.
    fn reset(&mut self) -> std::io::Result<()>;
}

impl Sink for Vec<u8> {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.extend_from_slice(&bytes);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// A sink writing to a file on a thread of its own (restarts truncate it).
///
/// Writing into the page cache costs about as much CPU as everything else
/// a download does; on its own thread it overlaps with decryption,
/// verification and the SHA-256 instead of following them.
#[derive(Debug)]
pub struct FileSink {
    tx: Option<std::sync::mpsc::SyncSender<FileCmd>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<std::fs::File>>>,
}

#[derive(Debug)]
enum FileCmd {
    Write(Vec<u8>),
    Reset,
}

impl FileSink {
    /// Write into `file`, from its start.
    pub fn new(file: std::fs::File) -> FileSink {
        // A few pieces of slack: enough to keep the writer busy, bounded so
        // a slow disk slows the download rather than filling memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<FileCmd>(8);
        let writer = std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut file = file;
            for cmd in rx {
                match cmd {
                    FileCmd::Write(bytes) => file.write_all(&bytes)?,
                    FileCmd::Reset => {
                        file.set_len(0)?;
                        file.seek(std::io::SeekFrom::Start(0))?;
                    }
                }
            }
            Ok(file)
        });
        FileSink {
            tx: Some(tx),
            writer: Some(writer),
        }
    }

    fn send(&mut self, cmd: FileCmd) -> std::io::Result<()> {
        let sent = self.tx.as_ref().map(|tx| tx.send(cmd).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The writer stopped: it failed; say why.
        match self.finish() {
            Err(e) => Err(e),
            Ok(_) => Err(std::io::Error::other("the file writer has stopped")),
        }
    }

    fn finish(&mut self) -> std::io::Result<std::fs::File> {
        self.tx = None;
        match self.writer.take() {
            Some(w) => w
                .join()
                .map_err(|_| std::io::Error::other("the file writer panicked"))?,
            None => Err(std::io::Error::other("the file writer has stopped")),
        }
    }

    /// Wait for every write, and hand back the file.
    pub fn into_file(mut self) -> std::io::Result<std::fs::File> {
        self.finish()
    }
}

impl Sink for FileSink {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.send(FileCmd::Write(bytes))
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.send(FileCmd::Reset)
    }
}

/// What a peer did wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blame {
    /// Bytes at this offset failed their chunk-group check.
    BadData {
        /// Offset of the failing chunk group.
        offset: u64,
    },
    /// Its outboard does not fit the size or the root, or describes other
    /// content than the index's (the whole item's SHA-256 failed).
    BadOutboard,
    /// It claimed another size than the index's.
    WrongSize {
        /// The size it claimed.
        claimed: u64,
    },
    /// It broke the protocol.
    Protocol(String),
}

/// How a peer's part in a download ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It served what it was asked until the item was complete.
    Served,
    /// It was never needed (the item completed first).
    Unused,
    /// It answered `Busy`.
    Busy,
    /// It does not hold the item.
    NotFound,
    /// It went silent: no answer to the handshake within its allowance,
    /// or nothing for the stall timeout; its pieces went to others.
    Stalled,
    /// It was still fetching, with nothing delivered, when faster peers
    /// completed the item.
    Slow,
    /// It could not be reached, refused the handshake, or closed.
    Unavailable(String),
    /// It answered an error.
    Refused(String),
    /// It misbehaved: dropped, and to be reported.
    Blamed(Blame),
}

/// Per-peer statistics of a download.
#[derive(Clone, Debug)]
pub struct PeerReport {
    /// The peer.
    pub peer: PeerAddr,
    /// Verified bytes it contributed (used or duplicated).
    pub bytes: u64,
    /// Time from its first request to its end.
    pub elapsed: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl PeerReport {
    /// Verified bytes per second.
    pub fn speed(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        }
    }
}

/// What a download did.
#[derive(Clone, Debug)]
pub struct SwarmReport {
    /// One entry per peer given, in the order given.
    pub peers: Vec<PeerReport>,
    /// The tree finally used (root and outboard verified against the
    /// index's SHA-256 when the download succeeded).
    pub tree: Option<Tree>,
    /// Times the download restarted because a tree turned out wrong.
    pub restarts: u32,
    /// On success: what the sink received was the item, every byte
    /// checked (see [`Verified`]).
    pub verified: Option<Verified>,
}

impl SwarmReport {
    /// Peers to report to the rendezvous: those blamed.
    pub fn culprits(&self) -> impl Iterator<Item = (&PeerAddr, &Blame)> {
        self.peers.iter().filter_map(|p| match &p.outcome {
            Outcome::Blamed(b) => Some((&p.peer, b)),
            _ => None,
        })
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    /// No peer could give a usable tree, or the peers ran out before the
    /// item was complete.
    #[error("item {item}: no peer could serve it ({})", summary(.report))]
    Exhausted {
        /// The item.
        item: Sensitive<ItemKey>,
        /// What each peer did.
        report: SwarmReport,
    },
    /// The sink failed (disk full, client gone) or could not restart.
    #[error("item {item}: the consumer failed: {source}")]
    Sink {
        /// The item.
        item: Sensitive<ItemKey>,
        /// The sink's error.
        #[source]
        source: std::io::Error,
        /// What each peer did.
        report: SwarmReport,
    },
}

impl SwarmError {
    /// What each peer did.
    pub fn report(&self) -> &SwarmReport {
        match self {
            SwarmError::Exhausted { report, .. } | SwarmError::Sink { report, .. } => report,
        }
    }
}

impl anonmirror_core::HasKind for SwarmError {
    fn kind(&self) -> anonmirror_core::ErrorKind {
        match self {
            SwarmError::Exhausted { .. } => anonmirror_core::ErrorKind::PeerUnavailable,
            SwarmError::Sink { .. } => anonmirror_core::ErrorKind::LocalIo,
        }
    }
}

fn summary(report: &SwarmReport) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for p in &report.peers {
        let k = match p.outcome {
            Outcome::Served => "served",
            Outcome::Unused => "unused",
            Outcome::Busy => "busy",
            Outcome::NotFound => "not found",
            Outcome::Stalled => "stalled",
            Outcome::Slow => "slow",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::Refused(_) => "refused",
            Outcome::Blamed(_) => "blamed",
        };
        *counts.entry(k).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Piece states, shared by the workers of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Pending,
    InFlight { holders: Vec<usize>, since: Instant },
    Done,
}

struct Sched {
    pieces: Vec<Piece>,
    /// The first piece not yet handed to the sink.
    next_deliver: usize,
    window: usize,
    /// Set when the attempt is over (complete or abandoned).
    finished: bool,
}

impl Sched {
    /// The next piece for `peer`: the first pending piece in the window,
    /// else the oldest piece in flight with a single other holder.
    fn claim(&mut self, peer: usize, now: Instant) -> Option<usize> {
        let end = self.pieces.len().min(self.next_deliver + self.window);
        for i in self.next_deliver..end {
            if self.pieces[i] == Piece::Pending {
                self.pieces[i] = Piece::InFlight {
                    holders: vec![peer],
                    since: now,
                };
                return Some(i);
            }
        }
        let steal = (self.next_deliver..end)
            .filter_map(|i| match &self.pieces[i] {
                Piece::InFlight { holders, since } if holders.len() == 1 && holders[0] != peer => {
                    Some((*since, i))
                }
                _ => None,
            })
            .min()
            .map(|(_, i)| i)?;
        if let Piece::InFlight { holders, .. } = &mut self.pieces[steal] {
            holders.push(peer);
        }
        Some(steal)
    }

    /// `peer` will not deliver `piece`.
    fn release(&mut self, piece: usize, peer: usize) {
        if let Piece::InFlight { holders, .. } = &mut self.pieces[piece] {
            holders.retain(|h| *h != peer);
            if holders.is_empty() {
                self.pieces[piece] = Piece::Pending;
            }
        }
    }

    /// Mark `piece` done; false if someone else finished it first.
    fn complete(&mut self, piece: usize) -> bool {
        if self.pieces[piece] == Piece::Done {
            return false;
        }
        self.pieces[piece] = Piece::Done;
        true
    }
}

struct Shared {
    item: ItemKey,
    tree: Tree,
    piece_size: u64,
    pieces: Pieces,
    sched: Mutex<Sched>,
    /// Wakes idle workers when pieces return to the pool or the window moves.
    changed: Notify,
    /// Cancelled when the attempt is over: workers stop waiting on peers.
    stop: CancellationToken,
}

impl Shared {
    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn piece_range(&self, piece: usize) -> (u64, u64) {
        let start = piece as u64 * self.piece_size;
        (start, (start + self.piece_size).min(self.tree.size()))
    }
}

/// A verified piece, on its way to the coordinator.
struct Done {
    piece: usize,
    bytes: Vec<u8>,
}

type PeerChannel<T> = Channel<<T as Transport>::Stream>;

/// Download `item` of `size` bytes from `peers` into `sink`.
pub async fn download<T>(
    transport: &T,
    config: &SwarmConfig,
    item: ItemKey,
    size: u64,
    peers: &[PeerAddr],
    sink: &mut dyn Sink,
) -> Result<SwarmReport, SwarmError>
where
    T: Transport + Clone + 'static,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut report = SwarmReport {
        peers: peers
            .iter()
            .map(|p| PeerReport {
                peer: p.clone(),
                bytes: 0,
                elapsed: Duration::ZERO,
                outcome: Outcome::Unused,
            })
            .collect(),
        tree: None,
        restarts: 0,
        verified: None,
    };
    // Peers that may still serve (not blamed, not gone).
    let mut usable: Vec<bool> = vec![true; peers.len()];
    // Peers already asked for a tree in this download.
    let mut asked_meta: Vec<bool> = vec![false; peers.len()];
    loop {
        // 1. A tree, from the first usable peer not asked yet.
        let mut got = None;
        for (i, peer) in peers.iter().enumerate() {
            if !usable[i] || asked_meta[i] {
                continue;
            }
            asked_meta[i] = true;
            let started = Instant::now();
            match fetch_tree(transport, config, item, size, peer).await {
                Ok((tree, channel)) => {
                    got = Some((i, tree, channel, started));
                    break;
                }
                Err(outcome) => {
                    report.peers[i].outcome = outcome;
                    report.peers[i].elapsed = started.elapsed();
                    usable[i] = false;
                }
            }
        }
        let Some((source, tree, channel, started)) = got else {
            return Err(SwarmError::Exhausted {
                item: Sensitive::new(item),
                report,
            });
        };
        // 2. Fetch every piece with every usable peer.
        let attempt = run_attempt(
            transport,
            config,
            item,
            tree.clone(),
            peers,
            &usable,
            source,
            channel,
            started,
            sink,
        )
        .await;
        let (results, verdict) = match attempt {
            Ok(a) => a,
            Err(source) => {
                return Err(SwarmError::Sink {
                    item: Sensitive::new(item),
                    source,
                    report,
                });
            }
        };
        let blamed_data = results.iter().any(|(i, r)| {
            *i != source && matches!(r.outcome, Outcome::Blamed(Blame::BadData { .. }))
        });
        match verdict {
            Verdict::Complete { sha256 } => {
                for (i, r) in results {
                    report.peers[i] = r;
                }
                report.verified = Verified::matching(item, tree.clone(), sha256.as_ref());
                report.tree = Some(tree);
                return Ok(report);
            }
            Verdict::ShaMismatch => {}
            Verdict::Incomplete if blamed_data => {}
            Verdict::Incomplete => {
                for (i, r) in results {
                    report.peers[i] = r;
                }
                return Err(SwarmError::Exhausted {
                    item: Sensitive::new(item),
                    report,
                });
            }
        }
        // 3. The tree was the lie: blame its sender, withdraw the blames
        // its tree caused, and start over.
        tracing::debug!(item = %Sensitive::new(item), "swarm: outboard sender lied, restarting");
        for (i, r) in results {
            let withdrawn =
                i != source && matches!(r.outcome, Outcome::Blamed(Blame::BadData { .. }));
            report.peers[i] = PeerReport {
                outcome: if withdrawn {
                    Outcome::Unused
                } else {
                    r.outcome.clone()
                },
                ..r
            };
            usable[i] =
                withdrawn || matches!(report.peers[i].outcome, Outcome::Served | Outcome::Unused);
        }
        report.peers[source].outcome = Outcome::Blamed(Blame::BadOutboard);
        usable[source] = false;
        report.restarts += 1;
        sink.reset().map_err(|source| SwarmError::Sink {
            item: Sensitive::new(item),
            source,
            report: report.clone(),
        })?;
    }
}

enum Verdict {
    /// Every piece delivered; the whole item's SHA-256.
    Complete {
        sha256: ring::digest::Digest,
    },
    ShaMismatch,
    Incomplete,
}

/// Bytes per piece under `config` (a whole number of chunk groups).
fn piece_size(config: &SwarmConfig) -> u64 {
    config.piece_size.div_ceil(GROUP_SIZE).max(1) * GROUP_SIZE
}

/// Ask `peer` for the item's tree and, in the same request, for the
/// first piece (saving a round trip per item: most packages are one
/// piece); on success the channel is kept, the first piece's `Data` on
/// its way.
async fn fetch_tree<T>(
    transport: &T,
    config: &SwarmConfig,
    item: ItemKey,
    size: u64,
    peer: &PeerAddr,
) -> Result<(Tree, PeerChannel<T>), Outcome>
where
    T: Transport,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut channel = open(transport, config, peer).await?;
    send(
        &mut channel,
        &Message::Request {
            item,
            offset: 0,
            len: piece_size(config).min(size),
            want_meta: true,
        },
    )
    .await?;
    let mut buf = Vec::new();
    let (claimed, root, ob_len) = match recv(&mut channel, &mut buf, config.stall_timeout).await? {
        Message::Meta {
            item: it,
            size: claimed,
            root,
            outboard_len: ob_len,
        } if it == item => (claimed, root, ob_len),
        other => return Err(unexpected_answer(other)),
    };
    if claimed != size {
        return Err(Outcome::Blamed(Blame::WrongSize { claimed }));
    }
    if ob_len != outboard_len(size) {
        return Err(Outcome::Blamed(Blame::BadOutboard));
    }
    let mut outboard = Vec::with_capacity(ob_len as usize);
    while (outboard.len() as u64) < ob_len {
        match recv(&mut channel, &mut buf, config.stall_timeout).await? {
            Message::Outboard { offset, bytes }
                if offset == outboard.len() as u64 && offset + bytes.len() as u64 <= ob_len =>
            {
                outboard.extend_from_slice(&bytes);
            }
            other => return Err(unexpected_answer(other)),
        }
    }
    match Tree::new(size, root, outboard) {
        Ok(tree) => Ok((tree, channel)),
        Err(_) => Err(Outcome::Blamed(Blame::BadOutboard)),
    }
}

/// What an answer that is not the expected one says about the peer.
fn unexpected_answer(msg: Message<'_>) -> Outcome {
    match msg {
        Message::Busy { .. } => Outcome::Busy,
        Message::NotFound { .. } => Outcome::NotFound,
        Message::Error { code, .. } => Outcome::Refused(format!("{code:?}")),
        other => Outcome::Blamed(Blame::Protocol(format!("unexpected {}", other.name()))),
    }
}

/// Round trips of its own connection a peer gets to answer the handshake.
pub const HANDSHAKE_RTTS: u32 = 8;
/// The least time a peer gets to answer the handshake, whatever its
/// connection's speed: a loaded machine's scheduling and the peer's key
/// work.
pub const HANDSHAKE_MIN: Duration = Duration::from_millis(100);

/// How long the handshake may take after a connection that took
/// `connected`: [`HANDSHAKE_RTTS`] times as long, at least
/// [`HANDSHAKE_MIN`], at most `limit`.
///
/// Opening the connection costs the transport about one round trip (TCP's
/// own handshake; through Tor, the stream's setup over its circuit), and
/// the Noise handshake one more plus the peer's key work. A peer that takes
/// many times longer is not working: a process that hangs still has its
/// connections accepted by the kernel, and would otherwise hold a download
/// for all of `limit`.
pub fn handshake_allowance(connected: Duration, limit: Duration) -> Duration {
    connected
        .saturating_mul(HANDSHAKE_RTTS)
        .max(HANDSHAKE_MIN)
        .min(limit)
}

async fn open<T>(
    transport: &T,
    config: &SwarmConfig,
    peer: &PeerAddr,
) -> Result<PeerChannel<T>, Outcome>
where
    T: Transport,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send,
{
    let dialled = Instant::now();
    let stream = tokio::time::timeout(config.connect_timeout, transport.connect(&peer.contact))
        .await
        .map_err(|_| Outcome::Unavailable("connect timed out".into()))?
        .map_err(|e| Outcome::Unavailable(format!("connect: {e}")))?;
    let allowance = handshake_allowance(dialled.elapsed(), config.connect_timeout);
    anonmirror_channel::noise::connect(stream, &peer.key, &config.params, allowance)
        .await
        .map_err(|e| match e {
            anonmirror_channel::Error::Timeout { .. } => Outcome::Stalled,
            e => Outcome::Unavailable(format!("handshake: {e}")),
        })
}

async fn send<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    msg: &Message<'_>,
) -> Result<(), Outcome> {
    let bytes = msg
        .encode()
        .map_err(|e| Outcome::Unavailable(format!("encode: {e}")))?;
    channel
        .send(&bytes)
        .await
        .map_err(|e| Outcome::Unavailable(format!("send: {e}")))
}

/// Receive one server message within `stall`.
async fn recv<'b, S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    buf: &'b mut Vec<u8>,
    stall: Duration,
) -> Result<Message<'b>, Outcome> {
    match tokio::time::timeout(stall, channel.recv_into(buf)).await {
        Err(_) => Err(Outcome::Stalled),
        Ok(Ok(true)) => Message::decode_from(Sender::Server, buf)
            .map_err(|e| Outcome::Blamed(Blame::Protocol(e.to_string()))),
        Ok(Ok(false)) => Err(Outcome::Unavailable("closed".into())),
        Ok(Err(e)) => Err(channel_failed(e)),
    }
}

/// What a failed channel says about the peer.
fn channel_failed(e: anonmirror_channel::Error) -> Outcome {
    match anonmirror_core::HasKind::kind(&e) {
        anonmirror_core::ErrorKind::PeerMisbehaved => {
            Outcome::Blamed(Blame::Protocol(e.to_string()))
        }
        _ => Outcome::Unavailable(e.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_attempt<T>(
    transport: &T,
    config: &SwarmConfig,
    item: ItemKey,
    tree: Tree,
    peers: &[PeerAddr],
    usable: &[bool],
    source: usize,
    source_channel: PeerChannel<T>,
    source_started: Instant,
    sink: &mut dyn Sink,
) -> std::io::Result<(Vec<(usize, PeerReport)>, Verdict)>
where
    T: Transport + Clone + 'static,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let piece_size = piece_size(config);
    let n_pieces = tree.size().div_ceil(piece_size).max(1) as usize;
    // The source was asked for the first piece with the tree.
    let first_asked = tree.size() > 0;
    let mut pieces = vec![Piece::Pending; n_pieces];
    if first_asked {
        pieces[0] = Piece::InFlight {
            holders: vec![source],
            since: source_started,
        };
    }
    let shared = Arc::new(Shared {
        item,
        tree,
        piece_size,
        pieces: config.pieces.clone(),
        sched: Mutex::new(Sched {
            pieces,
            next_deliver: 0,
            window: config.window.max(1),
            finished: false,
        }),
        changed: Notify::new(),
        stop: CancellationToken::new(),
    });
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(config.window.max(1) * 2);
    let mut workers = JoinSet::new();
    let mut source_channel = Some(source_channel);
    for (i, peer) in peers.iter().enumerate() {
        if !usable[i] {
            continue;
        }
        let (channel, asked) = if i == source {
            (source_channel.take(), first_asked.then_some(0))
        } else {
            (None, None)
        };
        let started = if i == source {
            source_started
        } else {
            Instant::now()
        };
        workers.spawn(worker(
            transport.clone(),
            config.clone(),
            shared.clone(),
            i,
            peer.clone(),
            channel,
            asked,
            started,
            done_tx.clone(),
        ));
    }
    drop(done_tx);

    // Deliver in order; hash on the way; withhold the last piece until the
    // whole SHA-256 matches.
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut waiting: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut next = 0usize;
    let mut verdict = Verdict::Incomplete;
    while let Some(done) = done_rx.recv().await {
        waiting.insert(done.piece, done.bytes);
        while let Some(bytes) = waiting.remove(&next) {
            // On the blocking pool: the SHA-256 (about 2 cycles a byte,
            // the dearest stage) runs beside the workers' decryption and
            // chunk-group checks instead of taking turns with them.
            let hashing =
                std::mem::replace(&mut sha, ring::digest::Context::new(&ring::digest::SHA256));
            let (hashed, bytes) = tokio::task::spawn_blocking(move || {
                let mut hashing = hashing;
                hashing.update(&bytes);
                (hashing, bytes)
            })
            .await
            .map_err(|_| std::io::Error::other("the SHA-256 task panicked"))?;
            sha = hashed;
            if next + 1 == n_pieces {
                let digest =
                    std::mem::replace(&mut sha, ring::digest::Context::new(&ring::digest::SHA256))
                        .finish();
                if digest.as_ref() == item.as_bytes() {
                    sink.write(bytes)?;
                    verdict = Verdict::Complete { sha256: digest };
                } else {
                    verdict = Verdict::ShaMismatch;
                }
                next += 1;
                break;
            }
            sink.write(bytes)?;
            next += 1;
            shared.sched().next_deliver = next;
            shared.changed.notify_waiters();
        }
        if next == n_pieces {
            break;
        }
    }
    shared.sched().finished = true;
    shared.stop.cancel();
    shared.changed.notify_waiters();
    drop(done_rx);
    let mut results = Vec::new();
    while let Some(joined) = workers.join_next().await {
        if let Ok(r) = joined {
            results.push(r);
        }
    }
    Ok((results, verdict))
}

#[allow(clippy::too_many_arguments)]
async fn worker<T>(
    transport: T,
    config: SwarmConfig,
    shared: Arc<Shared>,
    me: usize,
    peer: PeerAddr,
    channel: Option<PeerChannel<T>>,
    asked: Option<usize>,
    started: Instant,
    done: mpsc::Sender<Done>,
) -> (usize, PeerReport)
where
    T: Transport,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut bytes = 0u64;
    let outcome = work(
        &transport, &config, &shared, me, &peer, channel, asked, &done, &mut bytes,
    )
    .await;
    (
        me,
        PeerReport {
            peer,
            bytes,
            elapsed: started.elapsed(),
            outcome,
        },
    )
}

#[allow(clippy::too_many_arguments)]
async fn work<T>(
    transport: &T,
    config: &SwarmConfig,
    shared: &Shared,
    me: usize,
    peer: &PeerAddr,
    channel: Option<PeerChannel<T>>,
    asked: Option<usize>,
    done: &mpsc::Sender<Done>,
    bytes: &mut u64,
) -> Outcome
where
    T: Transport,
    T::Stream: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Pieces this peer was asked for, oldest first (the source peer was
    // asked for the first with the tree).
    let mut outstanding: VecDeque<usize> = asked.into_iter().collect();
    let release_all = |outstanding: &VecDeque<usize>| {
        let mut s = shared.sched();
        for p in outstanding {
            s.release(*p, me);
        }
        drop(s);
        shared.changed.notify_waiters();
    };
    // Connect lazily: a peer is only dialled once there is work for it.
    let mut channel = channel;
    let mut buf = Vec::new();
    let mut served_any = false;
    loop {
        // Keep two requests in flight.
        while outstanding.len() < 2 {
            let claimed = {
                let mut s = shared.sched();
                if s.finished {
                    None
                } else {
                    s.claim(me, Instant::now())
                }
            };
            let Some(piece) = claimed else { break };
            if channel.is_none() {
                let opened = tokio::select! {
                    _ = shared.stop.cancelled() => {
                        // Done (or abandoned) while this peer was still
                        // being reached.
                        outstanding.push_back(piece);
                        release_all(&outstanding);
                        return if served_any { Outcome::Served } else { Outcome::Slow };
                    }
                    r = open(transport, config, peer) => r,
                };
                match opened {
                    Ok(c) => channel = Some(c),
                    Err(outcome) => {
                        outstanding.push_back(piece);
                        release_all(&outstanding);
                        return outcome;
                    }
                }
            }
            let Some(ch) = channel.as_mut() else { break };
            let (start, end) = shared.piece_range(piece);
            outstanding.push_back(piece);
            let request = Message::Request {
                item: shared.item,
                offset: start,
                len: end - start,
                want_meta: false,
            };
            if let Err(outcome) = send(ch, &request).await {
                release_all(&outstanding);
                return outcome;
            }
        }
        let Some(&piece) = outstanding.front() else {
            // Nothing to claim now: wait for a change, or end.
            let notified = shared.changed.notified();
            if shared.sched().finished {
                return if served_any {
                    Outcome::Served
                } else {
                    Outcome::Unused
                };
            }
            // A bounded wait: a missed wake-up only delays, never hangs.
            tokio::select! {
                _ = shared.stop.cancelled() => {}
                _ = tokio::time::timeout(Duration::from_millis(200), notified) => {}
            }
            continue;
        };
        let Some(ch) = channel.as_mut() else {
            release_all(&outstanding);
            return Outcome::Unavailable("no channel".into());
        };
        let received = tokio::select! {
            _ = shared.stop.cancelled() => {
                // The item is complete (or abandoned) while this peer still
                // owes pieces: others were faster.
                release_all(&outstanding);
                return if served_any { Outcome::Served } else { Outcome::Slow };
            }
            r = receive_piece(ch, shared, piece, &mut buf, config.stall_timeout) => r,
        };
        match received {
            Ok(data) => {
                outstanding.pop_front();
                served_any = true;
                *bytes += data.len() as u64;
                let first = shared.sched().complete(piece);
                if first && done.send(Done { piece, bytes: data }).await.is_err() {
                    // The coordinator has finished.
                    release_all(&outstanding);
                    return Outcome::Served;
                }
            }
            Err(outcome) => {
                release_all(&outstanding);
                return outcome;
            }
        }
    }
}

/// Receive the `Data` messages of one requested piece, checking each chunk
/// group as soon as it is complete.
///
/// Each message after the first is opened straight into the piece, its
/// header over the last few bytes already received (saved and put back
/// once the header is read), so that the payload needs no copy after the
/// cipher's; the first, with nothing before it, goes through `buf`.
async fn receive_piece<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    shared: &Shared,
    piece: usize,
    buf: &mut Vec<u8>,
    stall: Duration,
) -> Result<Vec<u8>, Outcome> {
    let (start, end) = shared.piece_range(piece);
    let len = (end - start) as usize;
    // Room for the last message's header and tag while it is opened.
    let mut data = shared.pieces.take(len + MAX_DATA_HEADER + TAG_LEN);
    let mut checked = 0u64; // bytes of `data` already verified
    while data.len() < len {
        let pos = data.len();
        let at = start + pos as u64;
        if pos < MAX_DATA_HEADER {
            match recv(channel, buf, stall).await? {
                Message::Data { offset, bytes }
                    if offset == at && at + bytes.len() as u64 <= end =>
                {
                    data.extend_from_slice(&bytes);
                }
                Message::Data { .. } => return Err(out_of_order()),
                other => return Err(unexpected_answer(other)),
            }
        } else {
            let mut saved = [0u8; MAX_DATA_HEADER];
            saved.copy_from_slice(&data[pos - MAX_DATA_HEADER..pos]);
            let mut placed = pos;
            let mut place = |message_len: usize| {
                // Not a Data message of this offset: opened after the
                // payload so far, and refused below.
                placed = pos - data_header_len(at, message_len).unwrap_or(0);
                placed
            };
            match tokio::time::timeout(stall, channel.recv_into_at(&mut data, &mut place)).await {
                Err(_) => return Err(Outcome::Stalled),
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Err(Outcome::Unavailable("closed".into())),
                Ok(Err(e)) => return Err(channel_failed(e)),
            }
            let header = pos - placed;
            let verdict = match Message::decode_from(Sender::Server, &data[placed..]) {
                Ok(Message::Data { offset, bytes })
                    if offset == at
                        && data.len() - placed - bytes.len() == header
                        && at + bytes.len() as u64 <= end =>
                {
                    Ok(())
                }
                Ok(Message::Data { .. }) => Err(out_of_order()),
                Ok(other) => Err(unexpected_answer(other)),
                Err(e) => Err(Outcome::Blamed(Blame::Protocol(e.to_string()))),
            };
            verdict?;
            data[pos - MAX_DATA_HEADER..pos].copy_from_slice(&saved);
        }
        // Check every chunk group now complete.
        while checked < data.len() as u64 {
            let group = (start + checked) / GROUP_SIZE;
            let range = shared.tree.group_range(group);
            if range.end > start + data.len() as u64 {
                break;
            }
            let slice = &data[(range.start - start) as usize..(range.end - start) as usize];
            if !shared.tree.verify_group(group, slice) {
                return Err(Outcome::Blamed(Blame::BadData {
                    offset: range.start,
                }));
            }
            checked = range.end - start;
        }
    }
    Ok(data)
}

fn out_of_order() -> Outcome {
    Outcome::Blamed(Blame::Protocol(
        "data out of order or beyond the request".into(),
    ))
}
