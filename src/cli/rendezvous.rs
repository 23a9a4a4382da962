//! `anonmirror rendezvous`: run the rendezvous (tokens, sessions, lookup,
//! directory, push) until SIGINT or SIGTERM.
//!
//! On start it prints one line to stdout, for operators and scripts:
//! `rendezvous listening on ADDR key NOISE_KEY_HEX directory-key ED25519_HEX`.
//! With `--onion-service-port` (cargo feature `onion-service`) a second
//! line follows once arti has bootstrapped and launched the service:
//! `rendezvous onion-service HOST.onion:PORT`. That address comes from a
//! key arti keeps under the state directory, so it stays the same across
//! restarts and volunteers can pin it as `rendezvous.address`.
//!
//! Exit codes: 0 stopped on a signal; 2 bad command line or configuration;
//! 3 runtime failure (the store cannot be opened, the address cannot be
//! bound).
//!
//! Seams: lookups test sessions' announcements with announce's epoch-keyed
//! Bloom filter, and popularity reports go to announce's aggregator
//! (`anonmirror_mirror::hooks`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{ErrorKind, HasKind};
#[cfg(feature = "onion-service")]
use anonmirror_node::rendezvous_onion::RendezvousOnion;
use anonmirror_rendezvous::{Rendezvous, ServerConfig, UpstreamIndex};
use clap::Args;

use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};

/// `anonmirror rendezvous …`
#[derive(Debug, Args)]
pub struct RendezvousCmd {
    /// Where the durable state (redb) lives.
    #[arg(long)]
    state_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0:7880")]
    listen: SocketAddr,
    /// Epoch length in seconds (token keys rotate at its boundaries).
    #[arg(long, default_value_t = 86_400)]
    epoch_secs: u64,
    /// Tokens a credential may buy per epoch.
    #[arg(long, default_value_t = 8)]
    tokens_per_epoch: u32,
    /// Leading zero bits of the registration proof-of-work.
    #[arg(long, default_value_t = 20)]
    pow_difficulty: u8,
    /// Ping interval of sessions, seconds.
    #[arg(long, default_value_t = 30)]
    ping_secs: u64,
    /// Silence after which a session is dropped, seconds.
    #[arg(long, default_value_t = 90)]
    silence_secs: u64,
    /// BLAKE3 (hex) of the distribution's notify secret; without it,
    /// `notify` is refused.
    #[arg(long)]
    notify_secret_hash: Option<String>,
    /// An upstream index to watch, as `REPOSITORY=http://HOST/PATH`
    /// (repeatable); a change is pushed to every live session.
    #[arg(long, value_name = "REPOSITORY=URL")]
    upstream: Vec<String>,
    /// Seconds between two conditional requests to each upstream index.
    #[arg(long, default_value_t = 60)]
    upstream_interval_secs: u64,
    /// Also be reachable as an onion service (arti, experimental in
    /// arti) on this virtual port. Its address, printed on start, stays
    /// the same across restarts (its key lives in STATE_DIR/arti-state).
    /// With `--listen 127.0.0.1:PORT` the onion service is the only way
    /// in from outside.
    #[cfg(feature = "onion-service")]
    #[arg(long, value_name = "PORT")]
    onion_service_port: Option<u16>,
    /// An arti configuration file naming another Tor network (a test
    /// network, bridges) instead of the public one.
    #[cfg(feature = "onion-service")]
    #[arg(long, value_name = "FILE", requires = "onion_service_port")]
    dangerous_arti_config: Option<PathBuf>,
}

/// Runs the rendezvous.
pub fn run(cmd: RendezvousCmd) -> ExitCode {
    let notify = match cmd
        .notify_secret_hash
        .as_deref()
        .map(parse_hash)
        .transpose()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: --notify-secret-hash: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut indexes = Vec::with_capacity(cmd.upstream.len());
    for u in &cmd.upstream {
        match u.split_once('=') {
            Some((repository, url)) => indexes.push(UpstreamIndex {
                repository: repository.to_owned(),
                url: url.to_owned(),
            }),
            None => {
                eprintln!("error: --upstream `{u}`: expected REPOSITORY=URL");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(async move {
        #[cfg(feature = "onion-service")]
        let state_dir = cmd.state_dir.clone();
        let mut cfg = ServerConfig::new(
            cmd.listen,
            cmd.state_dir,
            Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
            Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
        );
        cfg.epoch_secs = cmd.epoch_secs;
        cfg.credentials.tokens_per_epoch = cmd.tokens_per_epoch;
        cfg.credentials.pow_difficulty = cmd.pow_difficulty;
        cfg.sessions.ping_interval = Duration::from_secs(cmd.ping_secs);
        cfg.sessions.silence = Duration::from_secs(cmd.silence_secs);
        cfg.notify_secret_hash = notify;
        cfg.upstream.indexes = indexes;
        cfg.upstream.interval = Duration::from_secs(cmd.upstream_interval_secs);
        let r = match Rendezvous::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(match e.kind() {
                    ErrorKind::LocalConfig | ErrorKind::BadInput => EXIT_BAD_INPUT,
                    _ => EXIT_RUNTIME,
                });
            }
        };
        println!(
            "rendezvous listening on {} key {} directory-key {}",
            r.local_addr(),
            r.key().to_hex(),
            hex_encode(&r.directory_key())
        );
        let _ = std::io::stdout().flush();
        #[cfg(feature = "onion-service")]
        let onion = match cmd.onion_service_port {
            Some(port) => {
                match RendezvousOnion::serve(&r, &state_dir, port, cmd.dangerous_arti_config).await
                {
                    Ok(o) => {
                        println!("rendezvous onion-service {}", o.address);
                        let _ = std::io::stdout().flush();
                        Some(o)
                    }
                    Err(e) => {
                        eprintln!("error: the onion service: {e}");
                        r.shutdown().await;
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
            }
            None => None,
        };
        super::shutdown_signal().await;
        #[cfg(feature = "onion-service")]
        if let Some(o) = onion {
            o.shutdown().await;
        }
        r.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let key: anonmirror_core::PeerKey = s.parse().map_err(|e| format!("{e}"))?;
    Ok(key.0)
}
