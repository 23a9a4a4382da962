//! The session owner (`SessionMgr`): the one task that owns the session
//! table and each live session's stop signal; see the [`super`] module
//! docs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{Epoch, ItemKey, OsEntropy, PeerKey};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::ServerConfig;
use crate::msg::{AnnouncementWire, CandidateWire, Down};
use crate::refusal::Refusal;
use crate::session::{Query, ReportOutcome, SessionId, SessionTable};

pub(super) enum SessionCmd {
    Open {
        ann: AnnouncementWire,
        /// The session's stop signal (a child of the rendezvous's): the
        /// owner cancels it to end the session.
        cancel: CancellationToken,
        reply: oneshot::Sender<Result<SessionId, Refusal>>,
    },
    Heard(SessionId),
    /// The session's peer announces a new filter.
    Update {
        id: SessionId,
        filter: Vec<u8>,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Close(SessionId),
    Lookup {
        item: ItemKey,
        size: u64,
        repository: String,
        version: u64,
        region: Option<String>,
        want: usize,
        reply: oneshot::Sender<Vec<CandidateWire>>,
    },
    Directory {
        region: Option<String>,
        reply: oneshot::Sender<Vec<AnnouncementWire>>,
    },
    Report {
        key: PeerKey,
        reply: oneshot::Sender<ReportOutcome>,
    },
    Push {
        repository: String,
        version: u64,
        reply: oneshot::Sender<usize>,
    },
    Count(oneshot::Sender<usize>),
    /// Live sessions per declared level.
    Levels(oneshot::Sender<BTreeMap<u8, u64>>),
}

/// Pushes a session may fall behind by before it is dropped: one that
/// cannot take 16 pushes in a row is not keeping up, nor live in any
/// useful sense.
pub(super) const PUSH_QUEUE: usize = 16;

pub(super) async fn session_owner(
    mut table: SessionTable,
    cfg: ServerConfig,
    mut rx: mpsc::Receiver<SessionCmd>,
    pushes: broadcast::Sender<Arc<[u8]>>,
    directory_changed: watch::Sender<u64>,
    stop: CancellationToken,
) {
    // The directory is the live sessions: each change tells its watchers.
    let changed = || directory_changed.send_modify(|g| *g = g.wrapping_add(1));
    // Each live session's stop signal: cancelling it ends the session's
    // task.
    let mut live: HashMap<SessionId, CancellationToken> = HashMap::new();
    // Lookups draw hundreds of small numbers each: batch the OS calls.
    let mut rng = crate::session::BufferedEntropy::new(OsEntropy);
    loop {
        let deadline = table
            .next_deadline()
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let cmd = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                let mut any = false;
                for id in table.expire(Instant::now().into_std()) {
                    end(&mut live, id);
                    any = true;
                    tracing::debug!("session dropped: silent past its deadline");
                }
                if any {
                    changed();
                }
                continue;
            }
            cmd = rx.recv() => match cmd { Some(c) => c, None => break },
        };
        let now = Instant::now().into_std();
        match cmd {
            SessionCmd::Open { ann, cancel, reply } => {
                table.set_epoch(Epoch::containing(cfg.clock.unix_secs(), cfg.epoch_secs));
                let r = table.open(ann, now, &mut rng);
                if let Ok(id) = r {
                    live.insert(id, cancel);
                    tracing::debug!(live = table.len(), "session opened");
                    changed();
                }
                let _ = reply.send(r);
            }
            SessionCmd::Heard(id) => table.heard(id, now),
            SessionCmd::Update { id, filter, reply } => {
                let r = table.update(id, filter, now);
                if r.is_ok() {
                    tracing::debug!("announcement updated");
                    changed();
                }
                let _ = reply.send(r);
            }
            SessionCmd::Close(id) => {
                if table.close(id) {
                    tracing::debug!(live = table.len(), "session closed");
                    changed();
                }
                end(&mut live, id);
            }
            SessionCmd::Lookup {
                item,
                size,
                repository,
                version,
                region,
                want,
                reply,
            } => {
                let q = Query {
                    item: &item,
                    size,
                    repository: &repository,
                    version,
                    region: region.as_deref(),
                    want,
                };
                let _ = reply.send(table.lookup(&q, now, &mut rng));
            }
            SessionCmd::Directory { region, reply } => {
                let anns = table.announcements(region.as_deref());
                let _ = reply.send(anns);
            }
            SessionCmd::Report { key, reply } => {
                let out = table.report(&key, now);
                if let ReportOutcome::Dropped(id) = out {
                    end(&mut live, id);
                    changed();
                    tracing::info!("session dropped after reports of bad data");
                }
                let _ = reply.send(out);
            }
            SessionCmd::Push {
                repository,
                version,
                reply,
            } => {
                let msg = Down::SnapshotChanged {
                    repository,
                    version,
                };
                // Every live session subscribed before it opened; one that
                // falls `PUSH_QUEUE` pushes behind drops itself.
                let queued = match msg.encode() {
                    Ok(bytes) => {
                        let _ = pushes.send(bytes.into());
                        table.len()
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "encoding a push failed");
                        0
                    }
                };
                tracing::info!(sessions = queued, "snapshot change pushed");
                let _ = reply.send(queued);
            }
            SessionCmd::Count(reply) => {
                let _ = reply.send(table.len());
            }
            SessionCmd::Levels(reply) => {
                let _ = reply.send(table.level_populations());
            }
        }
    }
    // The sessions end with their owner.
    for cancel in live.into_values() {
        cancel.cancel();
    }
    tracing::debug!("session owner stopped");
}

/// Ends a live session: its task sees its stop signal cancelled.
fn end(live: &mut HashMap<SessionId, CancellationToken>, id: SessionId) {
    if let Some(cancel) = live.remove(&id) {
        cancel.cancel();
    }
}
