//! One peer's part in a download: the tree request, then pieces until
//! none is left, each chunk group checked as it arrives.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::ItemKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{PeerAddr, SwarmConfig};
use super::pool::{Answers, PeerConn};
use super::report::{Blame, Outcome, PeerReport};
use super::sched::{Done, PeerChannel, Shared, piece_size};
use crate::wire::{MAX_DATA_HEADER, Message, Sender, data_header_len};
use anonmirror_channel::noise::Channel;
use anonmirror_channel::noise::TAG_LEN;
use anonmirror_channel::transport::Transport;
use anonmirror_store::verify::{GROUP_SIZE, Tree, outboard_len};

/// How a worker talks to its peer: a channel of its own (closed with the
/// item), or the peer's shared channel from the pool, with the answers of
/// the requests it has outstanding there, oldest first.
pub(crate) enum Link {
    Own(PeerChannel),
    Shared {
        conn: Arc<PeerConn>,
        answers: VecDeque<Answers>,
    },
}

/// Ask `peer` for the item's tree and, in the same request, for the
/// first piece (saving a round trip per item: most packages are one
/// piece); on success the link is kept, the first piece's `Data` on
/// its way.
pub(crate) async fn fetch_tree<T>(
    transport: &T,
    config: &SwarmConfig,
    item: ItemKey,
    size: u64,
    peer: &PeerAddr,
) -> Result<(Tree, Link), Outcome>
where
    T: Transport,
{
    let request = Message::Request {
        item,
        offset: 0,
        len: piece_size(config).min(size),
        want_meta: true,
    };
    let Some(pool) = &config.pool else {
        let mut channel = dial(transport, config, peer).await?;
        send(&mut channel, &request).await?;
        let mut buf = Vec::new();
        let mut next = Next::Own(&mut channel, &mut buf, config.stall_timeout);
        let tree = read_tree(&mut next, item, size).await?;
        return Ok((tree, Link::Own(channel)));
    };
    let (conn, reused) = pool.conn(transport, config, peer).await?;
    match ask_tree(&conn, config, &request, item, size).await {
        Ok((tree, answers)) => Ok((tree, Link::Shared { conn, answers })),
        // The peer closed the kept channel meanwhile (it restarted, or
        // idled it out): once more on a new one.
        Err(Outcome::Unavailable(_)) if reused => {
            pool.forget(&peer.key, &config.params);
            let (conn, _) = pool.conn(transport, config, peer).await?;
            let (tree, answers) = ask_tree(&conn, config, &request, item, size).await?;
            Ok((tree, Link::Shared { conn, answers }))
        }
        Err(outcome) => Err(outcome),
    }
}

/// The tree request on a shared channel; the answers stay pending for the
/// first piece.
async fn ask_tree(
    conn: &PeerConn,
    config: &SwarmConfig,
    request: &Message<'_>,
    item: ItemKey,
    size: u64,
) -> Result<(Tree, VecDeque<Answers>), Outcome> {
    let mut answers = conn.ask(request, &config.progress).await?;
    let tree = read_tree(
        &mut Next::Shared(&mut answers, config.stall_timeout),
        item,
        size,
    )
    .await?;
    Ok((tree, VecDeque::from([answers])))
}

/// Where the next message of an answer comes from, within a stall time.
enum Next<'a> {
    Own(&'a mut PeerChannel, &'a mut Vec<u8>, Duration),
    Shared(&'a mut Answers, Duration),
}

impl Next<'_> {
    async fn next(&mut self) -> Result<Vec<u8>, Outcome> {
        match self {
            Next::Own(channel, buf, stall) => {
                recv_raw(channel, buf, *stall).await?;
                Ok(std::mem::take(*buf))
            }
            Next::Shared(answers, stall) => answers.next(*stall).await,
        }
    }
}

/// Reads `Meta` and the outboard from `next` (each call the next message
/// of the answer) and checks them against the index's `size`.
async fn read_tree(next: &mut Next<'_>, item: ItemKey, size: u64) -> Result<Tree, Outcome> {
    let buf = next.next().await?;
    let (claimed, root, ob_len) = match decode(&buf)? {
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
        let buf = next.next().await?;
        match decode(&buf)? {
            Message::Outboard { offset, bytes }
                if offset == outboard.len() as u64 && offset + bytes.len() as u64 <= ob_len =>
            {
                outboard.extend_from_slice(&bytes);
            }
            other => return Err(unexpected_answer(other)),
        }
    }
    Tree::new(size, root, outboard).map_err(|_| Outcome::Blamed(Blame::BadOutboard))
}

/// A server message, or the blame for one that does not decode.
fn decode(buf: &[u8]) -> Result<Message<'_>, Outcome> {
    Message::decode_from(Sender::Server, buf)
        .map_err(|e| Outcome::Blamed(Blame::Protocol(e.to_string())))
}

/// What an answer that is not the expected one says about the peer.
pub(crate) fn unexpected_answer(msg: Message<'_>) -> Outcome {
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
/// connection's speed: a loaded machine's scheduling, the peer's key work,
/// and a connection whose setup says little of its round trip (a local
/// proxy answers at once). Generous, because waiting costs little: the
/// upstream hedge runs meanwhile.
pub const HANDSHAKE_MIN: Duration = Duration::from_secs(1);

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

/// A link to `peer`: its shared channel when there is a pool, else a new
/// channel of the worker's own.
pub(crate) async fn open<T>(
    transport: &T,
    config: &SwarmConfig,
    peer: &PeerAddr,
) -> Result<Link, Outcome>
where
    T: Transport,
{
    match &config.pool {
        Some(pool) => {
            let (conn, _) = pool.conn(transport, config, peer).await?;
            Ok(Link::Shared {
                conn,
                answers: VecDeque::new(),
            })
        }
        None => Ok(Link::Own(dial(transport, config, peer).await?)),
    }
}

/// A new channel to `peer`: connect, then the handshake within its
/// allowance.
pub(crate) async fn dial<T>(
    transport: &T,
    config: &SwarmConfig,
    peer: &PeerAddr,
) -> Result<PeerChannel, Outcome>
where
    T: Transport,
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

pub(crate) async fn send<S: AsyncRead + AsyncWrite + Unpin + Send>(
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

/// Receive one server message's bytes into `buf` within `stall`.
async fn recv_raw<S: AsyncRead + AsyncWrite + Unpin + Send>(
    channel: &mut Channel<S>,
    buf: &mut Vec<u8>,
    stall: Duration,
) -> Result<(), Outcome> {
    match tokio::time::timeout(stall, channel.recv_into(buf)).await {
        Err(_) => Err(Outcome::Stalled),
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(Outcome::Unavailable("closed".into())),
        Ok(Err(e)) => Err(channel_failed(e)),
    }
}

/// Receive one server message within `stall`.
pub(crate) async fn recv<'b, S: AsyncRead + AsyncWrite + Unpin + Send>(
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
pub(crate) fn channel_failed(e: anonmirror_channel::Error) -> Outcome {
    match anonmirror_core::HasKind::kind(&e) {
        anonmirror_core::ErrorKind::PeerMisbehaved => {
            Outcome::Blamed(Blame::Protocol(e.to_string()))
        }
        _ => Outcome::Unavailable(e.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn worker<T>(
    transport: T,
    config: SwarmConfig,
    shared: Arc<Shared>,
    me: usize,
    peer: PeerAddr,
    channel: Option<Link>,
    asked: Option<usize>,
    started: Instant,
    done: mpsc::Sender<Done>,
) -> (usize, PeerReport)
where
    T: Transport,
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
pub(crate) async fn work<T>(
    transport: &T,
    config: &SwarmConfig,
    shared: &Shared,
    me: usize,
    peer: &PeerAddr,
    channel: Option<Link>,
    asked: Option<usize>,
    done: &mpsc::Sender<Done>,
    bytes: &mut u64,
) -> Outcome
where
    T: Transport,
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
            let Some(link) = channel.as_mut() else { break };
            let (start, end) = shared.piece_range(piece);
            outstanding.push_back(piece);
            let request = Message::Request {
                item: shared.item,
                offset: start,
                len: end - start,
                want_meta: false,
            };
            let sent = match link {
                Link::Own(ch) => send(ch, &request).await,
                Link::Shared { conn, answers } => conn
                    .ask(&request, &shared.progress)
                    .await
                    .map(|a| answers.push_back(a)),
            };
            if let Err(outcome) = sent {
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
        let Some(link) = channel.as_mut() else {
            release_all(&outstanding);
            return Outcome::Unavailable("no channel".into());
        };
        let receiving = async {
            match link {
                Link::Own(ch) => {
                    receive_piece(ch, shared, piece, &mut buf, config.stall_timeout).await
                }
                Link::Shared { answers, .. } => match answers.pop_front() {
                    Some(mut a) => {
                        receive_answered_piece(&mut a, shared, piece, config.stall_timeout).await
                    }
                    None => Err(Outcome::Unavailable("no answer pending".into())),
                },
            }
        };
        let received = tokio::select! {
            _ = shared.stop.cancelled() => {
                // The item is complete (or abandoned) while this peer still
                // owes pieces: others were faster.
                release_all(&outstanding);
                return if served_any { Outcome::Served } else { Outcome::Slow };
            }
            r = receiving => r,
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
pub(crate) async fn receive_piece<S: AsyncRead + AsyncWrite + Unpin + Send>(
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
        check_groups(shared, start, &data, &mut checked)?;
    }
    Ok(data)
}

/// Checks every chunk group of a piece starting at `start` that `data` now
/// completes past the `checked` bytes already verified.
fn check_groups(
    shared: &Shared,
    start: u64,
    data: &[u8],
    checked: &mut u64,
) -> Result<(), Outcome> {
    while *checked < data.len() as u64 {
        let group = (start + *checked) / GROUP_SIZE;
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
        shared.progress.add(range.end - range.start);
        *checked = range.end - start;
    }
    Ok(())
}

/// [`receive_piece`] from a shared channel's answer: the same checks, on
/// messages the channel's reader hands over (one copy more than on a
/// channel of the worker's own).
async fn receive_answered_piece(
    answers: &mut Answers,
    shared: &Shared,
    piece: usize,
    stall: Duration,
) -> Result<Vec<u8>, Outcome> {
    let (start, end) = shared.piece_range(piece);
    let len = (end - start) as usize;
    let mut data = shared.pieces.take(len);
    let mut checked = 0u64;
    while data.len() < len {
        let buf = answers.next(stall).await?;
        match decode(&buf)? {
            Message::Data { offset, bytes }
                if offset == start + data.len() as u64 && data.len() + bytes.len() <= len =>
            {
                data.extend_from_slice(&bytes);
            }
            Message::Data { .. } => return Err(out_of_order()),
            other => return Err(unexpected_answer(other)),
        }
        check_groups(shared, start, &data, &mut checked)?;
    }
    Ok(data)
}

pub(crate) fn out_of_order() -> Outcome {
    Outcome::Blamed(Blame::Protocol(
        "data out of order or beyond the request".into(),
    ))
}
