//! The rendezvous's configuration and the parameters of its channels.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_channel::ChannelParams;
use anonmirror_core::{Clock, Epoch};
use anonmirror_privacy::Level;

use crate::credential::CredentialConfig;
use crate::err::{Error, Result};
use crate::hooks::{FilterCheck, ReportSink};
use crate::session::SessionConfig;
use crate::upstream::WatchConfig;

/// The epoch bound into every rendezvous channel's prologue. Rendezvous
/// channels are not per-epoch (a client at an epoch boundary must still
/// reach it; tokens carry their key's epoch instead), and this value, never
/// a real epoch, keeps them apart from peer channels.
pub const RENDEZVOUS_EPOCH: Epoch = Epoch(u64::MAX);

/// The prologue parameters of every rendezvous channel.
pub fn channel_params() -> ChannelParams {
    ChannelParams::new(Level::Off, RENDEZVOUS_EPOCH)
}

/// By default, a session may update its announcement at most once this
/// often (`SessionConfig::update_gap`): a
/// peer's holdings change a few times an hour at most, and each update
/// costs the rendezvous a filter check and every directory watcher a
/// directory. A session that updates faster is dropped.
pub const UPDATE_MIN_GAP: Duration = Duration::from_secs(60);

/// How long a push may take to reach a session before the session is
/// considered dead and dropped: the push deadline.
pub const PUSH_DEADLINE: Duration = Duration::from_secs(1);

/// The rendezvous's configuration.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen (port 0: any).
    pub listen: SocketAddr,
    /// Where the ledger (a redb file) lives.
    pub state_dir: PathBuf,
    /// Epoch length (token keys rotate at epoch boundaries).
    pub epoch_secs: u64,
    /// Credential rules.
    pub credentials: CredentialConfig,
    /// Session rules.
    pub sessions: SessionConfig,
    /// BLAKE3 of the distribution's notify secret; `None` refuses notify.
    pub notify_secret_hash: Option<[u8; 32]>,
    /// Announcement filter test (announce/'s, plugged by the root package).
    pub filter: Arc<dyn FilterCheck>,
    /// Popularity aggregator (announce/'s, plugged by the root package).
    pub reports: Arc<dyn ReportSink>,
    /// Wall clock for credentials and epochs.
    pub clock: Arc<dyn Clock>,
    /// Handshake and first-message timeout.
    pub handshake_timeout: Duration,
    /// How often credentials are swept and keys rotated.
    pub maintenance_interval: Duration,
    /// Upstream indexes to watch for new snapshots (none: only `notify`).
    pub upstream: WatchConfig,
    /// Connections watching the directory at most (`WatchDirectory`);
    /// more are refused `Busy` and poll instead.
    pub max_watchers: usize,
    /// Open sessions whose TCP contact no dial-back reached (`Reach`).
    /// Clients are then offered contacts that may answer nothing, or be
    /// another host's: for tests of the session table with made-up
    /// contacts only.
    pub dangerous_unchecked_contacts: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .field("epoch_secs", &self.epoch_secs)
            .field("credentials", &self.credentials)
            .field("sessions", &self.sessions)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults (DESIGN.md §4) for a store in `state_dir`, listening on
    /// `listen`, with the given hooks.
    pub fn new(
        listen: SocketAddr,
        state_dir: PathBuf,
        filter: Arc<dyn FilterCheck>,
        reports: Arc<dyn ReportSink>,
    ) -> Self {
        ServerConfig {
            listen,
            state_dir,
            epoch_secs: 86_400,
            credentials: CredentialConfig::default(),
            sessions: SessionConfig::default(),
            notify_secret_hash: None,
            filter,
            reports,
            clock: Arc::new(anonmirror_core::SystemClock),
            handshake_timeout: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(60),
            upstream: WatchConfig::default(),
            max_watchers: 4096,
            dangerous_unchecked_contacts: false,
        }
    }

    pub(super) fn check(&self) -> Result<()> {
        if self.epoch_secs == 0 {
            return Err(Error::Config {
                key: "epoch_secs",
                reason: "must be at least 1".into(),
            });
        }
        if self.credentials.pow_difficulty > crate::pow::MAX_DIFFICULTY {
            return Err(Error::Config {
                key: "pow_difficulty",
                reason: format!("at most {}", crate::pow::MAX_DIFFICULTY),
            });
        }
        self.upstream.check()?;
        if self.sessions.silence <= self.sessions.ping_interval {
            return Err(Error::Config {
                key: "silence",
                reason: "must exceed the ping interval".into(),
            });
        }
        Ok(())
    }
}
