//! A live session: opening it (spending its token), then its task's loop
//! of pings, pongs and pushes until silence, close or shutdown.

use std::sync::Arc;

use anonmirror_channel::Channel;
use anonmirror_channel::transport::BoxStream;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::PUSH_DEADLINE;
use super::reach::contact_vouched;
use super::session_owner::SessionCmd;
use super::shared::{Shared, ask, redeem, refusal_of, send};
use crate::err::{Error, Result};
use crate::msg::{AnnouncementWire, ByteBuf, Down, Up};
use crate::refusal::Refusal;
use crate::session::SessionId;

/// Opens a session: spends the token, enters the announcement in the
/// table and says so to the peer.
pub(super) async fn open_session(
    mut ch: Channel<BoxStream>,
    shared: Arc<Shared>,
    token: ByteBuf,
    ann: AnnouncementWire,
) -> Result<SessionTask> {
    // Before the token is spent: a peer that cannot be reached keeps it.
    if !contact_vouched(&shared, &ann.contact, &ann.key) {
        Box::pin(send(&mut ch, &Down::Refused(Refusal::ContactUnreached))).await?;
        return Err(Error::Refused(Refusal::ContactUnreached));
    }
    if let Err(e) = Box::pin(redeem(&shared, &token)).await {
        Box::pin(send(&mut ch, &Down::Refused(refusal_of(&e)))).await?;
        return Err(e);
    }
    drop(token);
    let pushes = shared.pushes.subscribe();
    let cancel = shared.stop.child_token();
    let opened = Box::pin(ask(&shared.session_tx, |reply| SessionCmd::Open {
        ann,
        cancel: cancel.clone(),
        reply,
    }))
    .await?;
    let id = match opened {
        Ok(id) => id,
        Err(r) => {
            Box::pin(send(&mut ch, &Down::Refused(r))).await?;
            return Err(Error::Refused(r));
        }
    };
    let sc = &shared.cfg.sessions;
    Box::pin(send(
        &mut ch,
        &Down::SessionOpened {
            ping_secs: sc.ping_interval.as_secs() as u32,
            silence_secs: sc.silence.as_secs() as u32,
        },
    ))
    .await?;
    let (tx, rx) = ch.split();
    Ok(SessionTask {
        tx,
        rx,
        shared,
        pushes,
        cancel,
        id,
    })
}

/// An open session, as its task holds it for the session's whole life
/// (a hundred thousand of them at once): the channel's halves, the push
/// subscription and its stop signal, nothing of the opening.
pub(super) struct SessionTask {
    tx: anonmirror_channel::noise::SendHalf<tokio::io::WriteHalf<BoxStream>>,
    rx: anonmirror_channel::noise::RecvHalf<tokio::io::ReadHalf<BoxStream>>,
    shared: Arc<Shared>,
    pushes: broadcast::Receiver<Arc<[u8]>>,
    /// A child of the rendezvous's stop signal: cancelled with it at
    /// shutdown, or alone by the session owner to drop this session.
    cancel: CancellationToken,
    id: SessionId,
}

impl SessionTask {
    /// Pings, pongs and pushes until silence, close or shutdown.
    ///
    /// By reference: the caller's future holds the session once, and this
    /// one only the loop's own state (an `async fn` taking `self` by value
    /// keeps it twice).
    pub(super) async fn run(&mut self) -> Result<()> {
        let (every, silence) = (
            self.shared.cfg.sessions.ping_interval,
            self.shared.cfg.sessions.silence,
        );
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        let mut last_heard = Instant::now();
        let mut last_update: Option<Instant> = None;
        let mut nonce = 0u64;
        let mut buf = Vec::new();
        // The sends the loop makes now and then (a ping or a push every
        // few seconds at most) are boxed rather than kept inline in the
        // task's future.
        let result: Result<()> = loop {
            let silence_at = last_heard + silence;
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    if !self.shared.stop.is_cancelled() {
                        break Err(Error::Gone("dropped by the session owner"));
                    }
                    let bye = Down::Refused(Refusal::ShuttingDown).encode()?;
                    let _ = Box::pin(self.tx.send(&bye)).await;
                    break Ok(());
                }
                _ = tokio::time::sleep_until(silence_at) => break Err(Error::Gone("silent past the ping deadline")),
                _ = ping.tick() => {
                    nonce = nonce.wrapping_add(1);
                    Box::pin(self.tx.send(&Down::Ping { nonce }.encode()?)).await?;
                }
                msg = self.pushes.recv() => match msg {
                    Ok(m) => {
                        // The push deadline: a session that cannot take a push
                        // within it is dropped.
                        match Box::pin(tokio::time::timeout(PUSH_DEADLINE, self.tx.send(&m))).await {
                            Ok(r) => r?,
                            Err(_) => break Err(Error::Gone("missed the push deadline")),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        break Err(Error::Gone("fell a full push queue behind"));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        break Err(Error::Gone("dropped by the session owner"));
                    }
                },
                got = Box::pin(self.rx.recv_into(&mut buf)) => match got {
                    Ok(true) => {
                        match Up::decode(&buf) {
                            Ok(Up::Pong { .. }) => {
                                last_heard = Instant::now();
                                let _ = Box::pin(self.shared.session_tx.send(SessionCmd::Heard(self.id))).await;
                            }
                            Ok(Up::Update { filter }) => {
                                let now = Instant::now();
                                if last_update.is_some_and(|t| now < t + self.shared.cfg.sessions.update_gap) {
                                    break Err(Error::Protocol("announcement updates too often"));
                                }
                                last_update = Some(now);
                                last_heard = now;
                                let (id, filter) = (self.id, filter.into_vec());
                                let r = Box::pin(ask(&self.shared.session_tx, |reply| {
                                    SessionCmd::Update { id, filter, reply }
                                }))
                                .await?;
                                let answer = match r {
                                    Ok(()) => Down::Ack,
                                    Err(refusal) => Down::Refused(refusal),
                                };
                                Box::pin(self.tx.send(&answer.encode()?)).await?;
                                if let Err(refusal) = r {
                                    break Err(Error::Refused(refusal));
                                }
                            }
                            Ok(_) => break Err(Error::Protocol("only pongs inside a session")),
                            Err(e) => break Err(e),
                        }
                    }
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e.into()),
                },
            }
        };
        let _ = Box::pin(self.shared.session_tx.send(SessionCmd::Close(self.id))).await;
        let _ = Box::pin(self.tx.shutdown()).await;
        result
    }
}
