//! One channel per peer, kept open between items and shared by them: every
//! request to the peer goes on it, pipelined (sent without waiting for the
//! answers before it), and the answers, which the peer server sends in
//! request order, are handed to each requester in turn. A package from a
//! peer already in use then costs one round trip and no TCP slow start:
//! the channel's congestion window is as warm as a single connection to a
//! mirror.
//!
//! A [`PeerConn`] is two tasks around a split channel: the writer sends
//! each request after registering what its answer will be (the meta and
//! outboard if asked, then `len` bytes of data, or one `NotFound`, `Busy`
//! or `Error`); the reader forwards each message to the requester at the
//! head of that queue, and moves to the next when the answer is complete.
//! A requester that went away (its item done elsewhere) has the rest of its
//! answer read and dropped. While a request waits behind others, the bytes
//! the channel moves for them count as its download's progress: it is
//! queued on a working channel, not stalled, and the gateway's hedge must
//! not take it for a silent peer. A message that fits no answer breaks the
//! channel: the requester it reached judges it (blame), the others see the
//! channel closed.
//!
//! A channel with no request for [`ChannelPool::IDLE`] is closed (well under
//! a peer server's idle timeout, after which the server would close it);
//! one the peer closed is replaced at the next request. Sharing a channel
//! links the items only as a new connection to the same peer would: the
//! peer sees the same address and, over Tor, the same circuit, either way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anonmirror_channel::ChannelParams;
use anonmirror_channel::noise::{RecvHalf, SendHalf};
use anonmirror_channel::transport::{BoxStream, Transport};
use anonmirror_core::PeerKey;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::config::{PeerAddr, Progress, SwarmConfig};
use super::report::{Blame, Outcome};
use super::sched::PeerChannel;
use super::worker::{channel_failed, dial};
use crate::wire::{Message, Sender};

/// Messages of one answer that may wait for a slow requester (each up to
/// a Noise message, 64 KiB): past them the reader waits, and so do the
/// answers behind.
const ANSWER_QUEUE: usize = 32;

/// Requests that may wait for the writer.
const ASK_QUEUE: usize = 64;

/// A message of an answer, or why there will be no more.
type Answered = Result<Vec<u8>, Outcome>;

/// What a request's answer holds, so the reader knows where it ends, and
/// whose download waits for it.
#[derive(Clone, Debug)]
struct Expect {
    meta: bool,
    data: u64,
    progress: Progress,
}

/// A request on its way to the writer.
struct Ask {
    bytes: Vec<u8>,
    expect: Expect,
    answers: mpsc::Sender<Answered>,
}

/// One peer's shared channel (see the module docs).
#[derive(Debug)]
pub(crate) struct PeerConn {
    asks: mpsc::Sender<Ask>,
    alive: Arc<AtomicBool>,
    /// Data bytes asked for and not yet answered in full: how far behind
    /// the channel is.
    owed: Arc<AtomicU64>,
}

/// The messages answering one request, in order.
#[derive(Debug)]
pub(crate) struct Answers {
    rx: mpsc::Receiver<Answered>,
}

impl Answers {
    /// The answer's next message, within `stall`.
    pub(crate) async fn next(&mut self, stall: Duration) -> Result<Vec<u8>, Outcome> {
        match tokio::time::timeout(stall, self.rx.recv()).await {
            Err(_) => Err(Outcome::Stalled),
            Ok(Some(answered)) => answered,
            Ok(None) => Err(Outcome::Unavailable("closed".into())),
        }
    }
}

impl PeerConn {
    /// Takes over `channel`; it closes after `idle` without a request.
    fn start(channel: PeerChannel, idle: Duration) -> PeerConn {
        let (send, recv) = channel.split();
        let (asks, asks_rx) = mpsc::channel(ASK_QUEUE);
        let (inflight, inflight_rx) = mpsc::unbounded_channel();
        let alive = Arc::new(AtomicBool::new(true));
        let owed = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_requests(send, asks_rx, inflight, idle, alive.clone()));
        tokio::spawn(read_answers(recv, inflight_rx, alive.clone(), owed.clone()));
        PeerConn { asks, alive, owed }
    }

    /// Data bytes asked for on it and not yet answered in full.
    pub(crate) fn owed(&self) -> u64 {
        self.owed.load(Ordering::Relaxed)
    }

    /// Whether it still takes requests.
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.asks.is_closed()
    }

    /// Sends `request` (a `Request`) after those before it; its answer
    /// comes as it arrives. `progress` is its download's: while it waits
    /// behind other answers, their bytes count there.
    pub(crate) async fn ask(
        &self,
        request: &Message<'_>,
        progress: &Progress,
    ) -> Result<Answers, Outcome> {
        let Message::Request { len, want_meta, .. } = request else {
            return Err(Outcome::Unavailable("only requests are asked".into()));
        };
        let bytes = request
            .encode()
            .map_err(|e| Outcome::Unavailable(format!("encode: {e}")))?;
        let (answers, rx) = mpsc::channel(ANSWER_QUEUE);
        let ask = Ask {
            bytes,
            expect: Expect {
                meta: *want_meta,
                data: *len,
                progress: progress.clone(),
            },
            answers,
        };
        self.owed.fetch_add(*len, Ordering::Relaxed);
        if self.asks.send(ask).await.is_err() {
            settle(&self.owed, *len);
            return Err(Outcome::Unavailable("closed".into()));
        }
        Ok(Answers { rx })
    }
}

async fn write_requests(
    mut send: SendHalf<WriteHalf<BoxStream>>,
    mut asks: mpsc::Receiver<Ask>,
    inflight: mpsc::UnboundedSender<(Expect, mpsc::Sender<Answered>)>,
    idle: Duration,
    alive: Arc<AtomicBool>,
) {
    while let Ok(Some(ask)) = tokio::time::timeout(idle, asks.recv()).await {
        // Registered before it is sent: the reader must know the answer
        // it is about to see.
        if inflight.send((ask.expect, ask.answers)).is_err() {
            break;
        }
        if send.send(&ask.bytes).await.is_err() {
            break;
        }
    }
    // No more requests: the reader ends once the answers registered are
    // read (dropping `inflight` tells it), which closes the channel.
    alive.store(false, Ordering::Release);
}

async fn read_answers(
    mut recv: RecvHalf<ReadHalf<BoxStream>>,
    mut inflight: mpsc::UnboundedReceiver<(Expect, mpsc::Sender<Answered>)>,
    alive: Arc<AtomicBool>,
    owed: Arc<AtomicU64>,
) {
    // Requests registered behind the one being answered.
    let mut waiting: std::collections::VecDeque<(Expect, mpsc::Sender<Answered>)> =
        std::collections::VecDeque::new();
    let broke = 'answers: loop {
        let next = match waiting.pop_front() {
            Some(next) => Some(next),
            None => inflight.recv().await,
        };
        let Some((expect, to)) = next else {
            break 'answers None;
        };
        let asked = expect.data;
        let mut answer = Answer::new(expect);
        loop {
            let mut buf = Vec::new();
            match recv.recv_into(&mut buf).await {
                Ok(true) => {}
                Ok(false) => break 'answers Some((to, Outcome::Unavailable("closed".into()))),
                Err(e) => break 'answers Some((to, channel_failed(e))),
            }
            let step = match Message::decode_from(Sender::Server, &buf) {
                Ok(msg) => answer.after(&msg),
                Err(e) => {
                    let why = Outcome::Blamed(Blame::Protocol(e.to_string()));
                    break 'answers Some((to, why));
                }
            };
            // The requests behind this one: the channel works for them.
            while let Ok(registered) = inflight.try_recv() {
                waiting.push_back(registered);
            }
            for (queued, _) in &waiting {
                queued.progress.add(buf.len() as u64);
            }
            // A requester that went away has the rest read and dropped.
            let _ = to.send(Ok(buf)).await;
            match step {
                Step::More => {}
                Step::Done => break,
                // The requester judges what it got; the channel is over.
                Step::Broken => break 'answers None,
            }
        }
        settle(&owed, asked);
    };
    alive.store(false, Ordering::Release);
    owed.store(0, Ordering::Relaxed);
    if let Some((to, why)) = broke {
        let _ = to.send(Err(why)).await;
    }
    // Everyone still waiting: the channel is gone.
    inflight.close();
    while let Some(registered) = inflight.recv().await {
        waiting.push_back(registered);
    }
    for (_, to) in waiting {
        let _ = to.send(Err(Outcome::Unavailable("closed".into()))).await;
    }
}

/// `n` bytes of `owed` were answered (or will not be).
fn settle(owed: &AtomicU64, n: u64) {
    let _ = owed.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
        Some(o.saturating_sub(n))
    });
}

/// Where one answer stands.
struct Answer {
    expect: Expect,
    meta_seen: bool,
    outboard_left: u64,
    data_left: u64,
}

/// What a message did to its answer.
enum Step {
    More,
    Done,
    Broken,
}

impl Answer {
    fn new(expect: Expect) -> Answer {
        let data_left = expect.data;
        Answer {
            expect,
            meta_seen: false,
            outboard_left: 0,
            data_left,
        }
    }

    fn after(&mut self, msg: &Message<'_>) -> Step {
        let meta_due = self.expect.meta && !self.meta_seen;
        match msg {
            Message::Meta { outboard_len, .. } if meta_due => {
                self.meta_seen = true;
                self.outboard_left = *outboard_len;
                self.done_if_complete()
            }
            Message::Outboard { bytes, .. }
                if !meta_due && bytes.len() as u64 <= self.outboard_left =>
            {
                self.outboard_left -= bytes.len() as u64;
                self.done_if_complete()
            }
            Message::Data { bytes, .. }
                if !meta_due && self.outboard_left == 0 && bytes.len() as u64 <= self.data_left =>
            {
                self.data_left -= bytes.len() as u64;
                self.done_if_complete()
            }
            // Each ends its answer, whatever came before.
            Message::NotFound { .. } | Message::Busy { .. } | Message::Error { .. } => Step::Done,
            _ => Step::Broken,
        }
    }

    fn done_if_complete(&self) -> Step {
        let meta_done = !self.expect.meta || self.meta_seen;
        if meta_done && self.outboard_left == 0 && self.data_left == 0 {
            Step::Done
        } else {
            Step::More
        }
    }
}

/// The shared channels, one per peer session and channel parameters;
/// clones share them.
#[derive(Clone, Default)]
pub struct ChannelPool {
    conns: Arc<Mutex<HashMap<(PeerKey, ChannelParams), Slot>>>,
}

/// One peer's place in the pool: held while its channel is being opened,
/// so that concurrent items wait for one handshake rather than race.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<PeerConn>>>>;

impl std::fmt::Debug for ChannelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPool").finish_non_exhaustive()
    }
}

impl ChannelPool {
    /// How long a channel may go without a request.
    pub const IDLE: Duration = Duration::from_secs(20);

    /// The shared channel to `peer`, opened (connect and handshake) if
    /// there is none or it has closed. `Ok((conn, reused))`.
    pub(crate) async fn conn<T: Transport>(
        &self,
        transport: &T,
        config: &SwarmConfig,
        peer: &PeerAddr,
    ) -> Result<(Arc<PeerConn>, bool), Outcome> {
        let slot = {
            let mut conns = self
                .conns
                .lock()
                .map_err(|_| Outcome::Unavailable("pool lock poisoned".into()))?;
            conns.retain(|_, s| {
                s.try_lock()
                    .map_or(true, |c| c.as_ref().is_some_and(|c| c.is_alive()))
            });
            conns.entry((peer.key, config.params)).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some(conn) = held.as_ref().filter(|c| c.is_alive()) {
            return Ok((conn.clone(), true));
        }
        let channel = dial(transport, config, peer).await?;
        let conn = Arc::new(PeerConn::start(channel, Self::IDLE));
        *held = Some(conn.clone());
        Ok((conn, false))
    }

    /// Opens the channel to `peer` ahead of any request (if there is none),
    /// so that the first item from it costs no connect and no handshake;
    /// whether one is open now.
    pub async fn warm<T: Transport>(
        &self,
        transport: &T,
        config: &SwarmConfig,
        peer: &PeerAddr,
    ) -> bool {
        self.conn(transport, config, peer).await.is_ok()
    }

    /// Data bytes asked for on the open channel to `peer` and not yet
    /// answered in full; `None` without an open channel (or while it is
    /// being opened).
    pub(crate) fn owed(&self, peer: &PeerKey, params: &ChannelParams) -> Option<u64> {
        let slot = self.conns.lock().ok()?.get(&(*peer, *params))?.clone();
        let held = slot.try_lock().ok()?;
        held.as_ref().filter(|c| c.is_alive()).map(|c| c.owed())
    }

    /// Closes (for new requests) the channel to `peer`: it failed.
    pub(crate) fn forget(&self, peer: &PeerKey, params: &ChannelParams) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&(*peer, *params));
        }
    }

    /// Channels open now (all peers).
    pub fn open_count(&self) -> usize {
        self.conns.lock().map_or(0, |conns| {
            conns
                .values()
                .filter(|s| {
                    s.try_lock()
                        .is_ok_and(|c| c.as_ref().is_some_and(|c| c.is_alive()))
                })
                .count()
        })
    }
}
