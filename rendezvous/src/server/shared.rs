//! What every connection task shares, and the calls they all make: asking
//! an owner, redeeming a token, pushing, answering a refusal.

use std::sync::Arc;

use anonmirror_channel::transport::BoxStream;
use anonmirror_channel::{Channel, StaticKeypair};
use anonmirror_core::Epoch;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::config::ServerConfig;
use super::key_owner::{KeyCmd, KeyRing};
use super::session_owner::SessionCmd;
use crate::directory::SigningKey;
use crate::err::{Error, Result};
use crate::msg::Down;
use crate::refusal::Refusal;
use crate::token::{Scheme, TokenScheme, token_key_id};

/// Shared by every connection task.
pub(super) struct Shared {
    pub(super) cfg: ServerConfig,
    pub(super) noise: StaticKeypair,
    pub(super) signing: SigningKey,
    pub(super) keys: watch::Receiver<Arc<KeyRing>>,
    pub(super) key_tx: mpsc::Sender<KeyCmd>,
    pub(super) session_tx: mpsc::Sender<SessionCmd>,
    /// Encoded pushes (`SnapshotChanged`) for every live session; a session
    /// subscribes before it opens, so it misses none sent after.
    pub(super) pushes: broadcast::Sender<Arc<[u8]>>,
    pub(super) scheme: Scheme,
    /// Cancelled when the rendezvous stops; each live session holds a
    /// child of it, which the session owner cancels to drop the session.
    pub(super) stop: CancellationToken,
    /// Requests answered, by kind.
    pub(super) served: Served,
    /// Bumped by the session owner whenever the live sessions change:
    /// directory watchers send the directory again.
    pub(super) directory_changed: watch::Receiver<u64>,
    /// Directory watchers' slots ([`ServerConfig::max_watchers`]).
    pub(super) watchers: Arc<tokio::sync::Semaphore>,
    /// Directories lately sent to watchers, per region.
    pub(super) watched: std::sync::Mutex<Vec<WatchedDirectory>>,
    /// Contacts a dial-back reached lately, with their keys.
    pub(super) reached: std::sync::Mutex<super::reach::Reached>,
    /// Dial-backs' slots ([`super::reach::MAX_DIAL_BACKS`]).
    pub(super) dial_backs: tokio::sync::Semaphore,
}

/// A directory as sent to watchers: its generation of the live sessions,
/// its region, when it was built, its encoded messages.
pub(super) struct WatchedDirectory {
    pub(super) generation: u64,
    pub(super) region: Option<String>,
    pub(super) built: std::time::Instant,
    pub(super) messages: Arc<Vec<Vec<u8>>>,
}

/// How many requests of each kind a rendezvous has answered: what any
/// operator sees of its clients, and so what a curious one learns (a
/// lookup names an item; a directory fetch names nothing).
#[derive(Debug, Default)]
pub struct Served {
    lookups: std::sync::atomic::AtomicU64,
    directories: std::sync::atomic::AtomicU64,
    polls: std::sync::atomic::AtomicU64,
}

impl Served {
    pub(super) fn lookup(&self) {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn poll(&self) {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn directory(&self) {
        self.directories
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lookups answered (each names one item).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Directories sent (polled or watched).
    pub fn directories(&self) -> u64 {
        self.directories.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Directories asked for one at a time (`Directory`), not watched.
    pub fn directory_polls(&self) -> u64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sends an owner the command `make` builds around a reply slot, and
/// waits for the reply.
pub(super) async fn ask<C, T>(
    tx: &mpsc::Sender<C>,
    make: impl FnOnce(oneshot::Sender<T>) -> C,
) -> Result<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| Error::ShuttingDown)?;
    rx.await.map_err(|_| Error::ShuttingDown)
}

/// Verifies a token's signature under an accepted key and spends it.
pub(super) async fn redeem(shared: &Shared, token: &[u8]) -> Result<Epoch> {
    let key_id = token_key_id(token).ok_or(Error::Token("malformed"))?;
    let ring = shared.keys.borrow().clone();
    let (epoch, key) = ring
        .accepting(&key_id)
        .ok_or(Error::Token("key not accepted"))?;
    let v = shared.scheme.verify(&key.public, token)?;
    let fresh = ask(&shared.key_tx, |reply| KeyCmd::Spend {
        epoch,
        nonce: v.nonce,
        reply,
    })
    .await??;
    if !fresh {
        return Err(Error::Token("spent"));
    }
    tracing::debug!("token redeemed");
    Ok(Epoch(epoch))
}

pub(super) async fn push(shared: &Shared, repository: String, version: u64) -> Result<usize> {
    ask(&shared.session_tx, |reply| SessionCmd::Push {
        repository,
        version,
        reply,
    })
    .await
}

pub(super) async fn send(ch: &mut Channel<BoxStream>, msg: &Down) -> Result<()> {
    ch.send(&msg.encode()?).await?;
    Ok(())
}

pub(super) fn refusal_of(e: &Error) -> Refusal {
    match e {
        Error::ProofOfWork(_) => Refusal::ProofOfWork,
        Error::Token("spent") => Refusal::TokenSpent,
        Error::Token("key not accepted") => Refusal::TokenKeyRetired,
        Error::Token(_) => Refusal::TokenInvalid,
        Error::Refused(r) => *r,
        Error::ShuttingDown => Refusal::ShuttingDown,
        Error::Ledger(_)
        | Error::LedgerCorrupt(_)
        | Error::SpendFailed(_)
        | Error::Internal { .. }
        | Error::Io { .. } => Refusal::Busy,
        _ => Refusal::BadRequest,
    }
}
