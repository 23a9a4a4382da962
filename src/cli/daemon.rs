//! `anonmirror daemon`: the gateway for the local package manager and, when
//! the policy's level is not `off`, the volunteer role (see `anonmirror_node::volunteer`).
//!
//! Prints `gateway listening on ADDR` once the gateway is bound. Runs until
//! SIGINT or SIGTERM.
//!
//! Exit codes: 0 stopped on a signal; 2 bad policy or command line; 3 a
//! runtime failure (the store, a socket, the rendezvous address).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anonmirror_privacy::{Level, Policy};
use clap::Args;

use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};
use anonmirror_node::{Node, NodeOptions};

/// `anonmirror daemon …`
#[derive(Debug, Args)]
pub struct DaemonCmd {
    /// The policy file; without it, the embedded default (level off: a
    /// gateway with no repositories until one is configured).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Run at this level instead of the policy's.
    #[arg(long)]
    level: Option<Level>,
    /// Leading zero bits of the registration proof-of-work; at least what
    /// the rendezvous asks.
    #[arg(long, default_value_t = 20)]
    pow_difficulty: u8,
    /// A fixed hedge deadline in milliseconds instead of the one derived
    /// from the upstream's measured speed.
    #[arg(long)]
    hedge_after_ms: Option<u64>,
}

/// Runs the daemon.
pub fn run(cmd: DaemonCmd) -> ExitCode {
    let policy = match (&cmd.policy, cmd.level) {
        (Some(p), Some(l)) => Policy::load_with_level(p, l),
        (Some(p), None) => Policy::load(p),
        (None, l) => Policy::embedded_default(l),
    };
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if policy.log.dangerous_log_sensitive {
        anonmirror_core::set_log_sensitive(true);
    }
    let opts = NodeOptions {
        pow_difficulty: cmd.pow_difficulty,
        hedge_after: cmd.hedge_after_ms.map(Duration::from_millis),
        ..NodeOptions::default()
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let node = match Node::start(policy, opts).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gateway listening on {}", node.gateway_addr);
        let _ = out.flush();
        drop(out);
        super::shutdown_signal().await;
        node.stop().await;
        ExitCode::SUCCESS
    })
}
