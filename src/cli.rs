//! The command line: one file per subcommand under `cli/`.
//!
//! Exit codes, for every subcommand: 0 success; 1 the command ran but its
//! check failed (documented per subcommand); 2 bad configuration, bad
//! input or a bad command line; 3 a runtime failure (I/O, network).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod policy;

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
    /// Check or show the privacy policy.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
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
        Command::Policy(cmd) => policy::run(cmd),
    }
}
