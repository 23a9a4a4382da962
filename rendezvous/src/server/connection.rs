//! Connections: the accept loop, each connection up to its answer or its
//! session, and the upstream watcher that pushes what it notices.

use std::sync::Arc;
use std::time::Duration;

use anonmirror_channel::transport::BoxStream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::config::channel_params;
use super::live::{SessionTask, open_session};
use super::reach::reach;
use super::requests::handle;
use super::shared::{Shared, push, refusal_of, send};
use crate::err::{Error, Result};
use crate::msg::{Down, Up};
use crate::refusal::Refusal;
use crate::upstream::Watcher;

pub(super) async fn accept_loop(
    listener: TcpListener,
    mut streams: mpsc::Receiver<BoxStream>,
    shared: Arc<Shared>,
) {
    // Connections are aborted at shutdown (a handshake under way does not
    // watch for it); live sessions see the stop first and say goodbye.
    let mut conns = JoinSet::new();
    loop {
        let (stream, seen): (BoxStream, _) = tokio::select! {
            _ = shared.stop.cancelled() => break,
            Some(s) = streams.recv() => (s, None),
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    (Box::new(stream), Some(addr))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let shared = shared.clone();
        conns.spawn(async move {
            // Everything before a session's loop (handshake, request,
            // redemption) runs boxed and is freed when done: the task
            // itself keeps only the loop, which a live session holds for
            // hours.
            let r = match Box::pin(connection(stream, seen, shared)).await {
                Ok(Some(mut live)) => live.run().await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    conns.shutdown().await;
}

/// A connection up to its answer, or up to a session's loop: `Some` is an
/// opened session, for the caller to [`SessionTask::run`]. `seen` is the
/// address it came from, when it came over TCP (never logged).
pub(super) async fn connection(
    stream: BoxStream,
    seen: Option<std::net::SocketAddr>,
    shared: Arc<Shared>,
) -> Result<Option<SessionTask>> {
    let t = shared.cfg.handshake_timeout;
    // The handshake and the first request are boxed: this future is
    // boxed by the caller anyway, but their states are large and only
    // one of them is alive at a time.
    let mut ch = Box::pin(anonmirror_channel::accept(
        stream,
        &shared.noise,
        &channel_params(),
        t,
    ))
    .await?;
    let first = Box::pin(tokio::time::timeout(t, ch.recv()))
        .await
        .map_err(|_| Error::Gone("no request after the handshake"))??
        .ok_or(Error::Gone("closed before a request"))?;
    let up = match Up::decode(&first) {
        Ok(up) => up,
        Err(e) => {
            let _ = Box::pin(send(&mut ch, &Down::Refused(Refusal::BadRequest))).await;
            return Err(e);
        }
    };
    // A session lasts hours: the request's bytes (token and announcement,
    // decoded into `up`) must not stay in its task all that time.
    drop(first);
    let result = match up {
        Up::OpenSession {
            token,
            announcement,
        } => {
            return open_session(ch, shared, token, announcement)
                .await
                .map(Some);
        }
        Up::WatchDirectory { region } => {
            return watch_directory(ch, shared, region).await.map(|()| None);
        }
        Up::Reach {
            port,
            key,
            level,
            epoch,
        } => Box::pin(reach(&shared, seen, port, key, level, epoch)).await,
        other => Box::pin(handle(&shared, other)).await,
    };
    match result {
        Ok(msgs) => {
            for m in msgs {
                Box::pin(send(&mut ch, &m)).await?;
            }
        }
        Err(e) => {
            Box::pin(send(&mut ch, &Down::Refused(refusal_of(&e)))).await?;
            tracing::debug!(error = %e, "request refused");
        }
    }
    let _ = Box::pin(ch.shutdown()).await;
    Ok(None)
}

/// Changes in the live sessions within this long go out as one directory.
pub const WATCH_COALESCE: Duration = Duration::from_secs(1);

/// A watcher is sent a directory at most this often, however fast the
/// sessions change: a churning rendezvous costs each watcher at most six
/// times what a poll every 30 s would.
pub const WATCH_MIN_GAP: Duration = Duration::from_secs(5);

/// A directory built for one watcher is sent as it is to the others
/// watching the same region while the sessions have not changed, for up
/// to this long: watchers cost one signature and one encoding per change,
/// not one each.
const WATCH_SHARE_FOR: Duration = Duration::from_secs(10);

/// A watched directory is sent again after this long without a change, so
/// that the watcher's copy never grows old (gateways use a directory up to
/// ten minutes old) and a watcher that went away is noticed.
pub const WATCH_REFRESH: Duration = Duration::from_secs(120);

/// A watcher that does not take a directory within this long is dropped.
pub const WATCH_SEND_LIMIT: Duration = Duration::from_secs(30);

/// `WatchDirectory`: the directory now, and again after every change of
/// the live sessions (a second of changes at a time, at most one every
/// [`WATCH_MIN_GAP`]) or every [`WATCH_REFRESH`], until the watcher closes
/// the connection or the
/// rendezvous stops. At most `max_watchers` at once; others are refused
/// `Busy` (and poll).
async fn watch_directory(
    mut ch: anonmirror_channel::Channel<BoxStream>,
    shared: Arc<Shared>,
    region: Option<String>,
) -> Result<()> {
    let Ok(_slot) = shared.watchers.clone().try_acquire_owned() else {
        Box::pin(send(&mut ch, &Down::Refused(Refusal::Busy))).await?;
        return Ok(());
    };
    let mut changed = shared.directory_changed.clone();
    loop {
        let generation = *changed.borrow_and_update();
        let msgs = Box::pin(shared_directory(&shared, generation, &region)).await?;
        let sent_at = tokio::time::Instant::now();
        let sent = async {
            for m in msgs.iter() {
                ch.send(m).await?;
            }
            Ok::<(), Error>(())
        };
        tokio::time::timeout(WATCH_SEND_LIMIT, sent)
            .await
            .map_err(|_| Error::Gone("a directory watcher not reading"))??;
        drop(msgs);
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            r = changed.changed() => {
                if r.is_err() {
                    break;
                }
                let at = (tokio::time::Instant::now() + WATCH_COALESCE).max(sent_at + WATCH_MIN_GAP);
                tokio::select! {
                    _ = shared.stop.cancelled() => break,
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            () = tokio::time::sleep(WATCH_REFRESH) => {}
            // The watcher says nothing after its request: anything, or the
            // end of the stream, ends the watch.
            _ = ch.recv() => break,
        }
    }
    let _ = Box::pin(ch.shutdown()).await;
    Ok(())
}

/// The encoded messages of the directory of `region` at `generation` of
/// the live sessions: the ones another watcher had built, if recent
/// enough ([`WATCH_SHARE_FOR`]), else built and kept for the others.
async fn shared_directory(
    shared: &Shared,
    generation: u64,
    region: &Option<String>,
) -> Result<Arc<Vec<Vec<u8>>>> {
    if let Ok(cache) = shared.watched.lock()
        && let Some(c) = cache
            .iter()
            .find(|c| c.generation == generation && &c.region == region)
        && c.built.elapsed() < WATCH_SHARE_FOR
    {
        shared.served.directory();
        return Ok(c.messages.clone());
    }
    let msgs = super::requests::directory(shared, region.clone()).await?;
    let messages = Arc::new(msgs.iter().map(Down::encode).collect::<Result<Vec<_>>>()?);
    if let Ok(mut cache) = shared.watched.lock() {
        cache.retain(|c| c.generation == generation && &c.region != region);
        // Regions are a handful of short names; bounded all the same.
        if cache.len() < 64 {
            cache.push(super::shared::WatchedDirectory {
                generation,
                region: region.clone(),
                built: std::time::Instant::now(),
                messages: messages.clone(),
            });
        }
    }
    Ok(messages)
}

/// Polls the upstream indexes every interval and pushes each change to
/// every live session.
pub(super) async fn upstream_watch(mut w: Watcher, shared: Arc<Shared>) {
    let stop = &shared.stop;
    let mut tick = tokio::time::interval(w.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = shared.cfg.clock.unix_secs();
        let changes = tokio::select! {
            _ = stop.cancelled() => break,
            c = w.poll(now) => c,
        };
        for (repository, version) in changes {
            match push(&shared, repository, version).await {
                Ok(n) => tracing::debug!(sessions = n, "upstream change pushed"),
                Err(e) => {
                    tracing::debug!(error = %e, "upstream watcher stopping");
                    return;
                }
            }
        }
    }
    tracing::debug!("upstream watcher stopped");
}
