//! The command line: one file per subcommand under `cli/`.
//!
//! Exit codes, for every subcommand: 0 success; 1 the command ran but its
//! check failed (documented per subcommand); 2 bad configuration, bad
//! input or a bad command line; 3 a runtime failure (I/O, network).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod daemon;
mod demo;
mod fetch;
mod import;
mod policy;
mod rendezvous;
mod serve;
mod status;
mod store;

/// Exit code: the command line, configuration or input is invalid.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the command failed at run time.
pub const EXIT_RUNTIME: u8 = 3;

/// Opt-in peer-to-peer mirroring of distribution packages.
#[derive(Debug, Parser)]
#[command(name = "anonmirror", version, about)]
struct Cli {
    /// Log at debug verbosity (still without sensitive values).
    #[arg(long, short, global = true)]
    verbose: bool,

    /// Show package names, item keys, peer addresses and tokens in logs.
    /// Weakens privacy: logs then say what this machine fetched and from whom.
    #[arg(long, global = true)]
    dangerous_log_sensitive: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway for the local package manager and, when the policy's
    /// level is not off, serve peers.
    Daemon(daemon::DaemonCmd),
    /// Run a whole swarm on loopback and show what came from where.
    Demo(demo::DemoCmd),
    /// Add a package manager's cached downloads to the store, verified
    /// against the current index.
    Import(import::ImportCmd),
    /// Show what the running daemon has done: bytes by source, the offload
    /// ratio, sessions, blame.
    Status(status::StatusCmd),
    /// Run the rendezvous: credentials, tokens, sessions, lookup, push.
    Rendezvous(rendezvous::RendezvousCmd),
    /// Check or show the privacy policy.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Manage a content store.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Serve a store's items to peers.
    Serve(serve::ServeCmd),
    /// Download one item from peers, verified.
    Fetch(fetch::FetchCmd),
    /// Show what this machine's announcement would reveal (0 within the
    /// exposure budget, 1 over it, 2 bad input).
    Audit(audit::AuditCmd),
}

/// Parse the command line, run the subcommand, and return its exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    crate::logging::init(cli.verbose);
    anonmirror_core::set_log_sensitive(cli.dangerous_log_sensitive);
    match cli.command {
        Command::Daemon(cmd) => daemon::run(cmd),
        Command::Demo(cmd) => demo::run(cmd),
        Command::Import(cmd) => import::run(cmd),
        Command::Status(cmd) => status::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Rendezvous(cmd) => rendezvous::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Store(cmd) => store::run(cmd),
        Command::Serve(cmd) => serve::run(cmd),
        Command::Fetch(cmd) => fetch::run(cmd),
    }
}

/// The async runtime of a subcommand.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
