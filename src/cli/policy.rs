//! `anonmirror policy`: check and show the privacy policy.
//!
//! Thin by design: parsing, defaults and validation live in
//! `anonmirror-privacy`; this file only maps outcomes to output and exit
//! codes.
//!
//! Exit codes: 0 the policy is valid (and was shown); 2 it is invalid, or
//! the file cannot be read (the message on stderr names the file, the key
//! path, line:column and a hint); 3 a bug while printing it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anonmirror_core::{ErrorKind, HasKind};
use anonmirror_privacy::{Error, Level, Policy};
use clap::Subcommand;

use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};

/// `anonmirror policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file. Exit 0 when valid, 2 when invalid.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the effective policy as TOML, every default filled in.
    /// Exit 0 when valid, 2 when invalid.
    Show {
        /// The policy file; without it, the embedded default policy.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Replace the policy's level (off, open, balanced, strict); keys
        /// the file sets explicitly still override the level's defaults.
        #[arg(long)]
        level: Option<Level>,
    },
}

/// Run a `policy` subcommand.
pub fn run(cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Check { file } => match Policy::load(&file) {
            Ok(policy) => {
                println!("{}: valid (level {})", file.display(), policy.level);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        PolicyCmd::Show { policy, level } => match show(policy.as_deref(), level) {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
    }
}

fn show(file: Option<&Path>, level: Option<Level>) -> Result<String, Error> {
    let policy = match (file, level) {
        (Some(file), Some(level)) => Policy::load_with_level(file, level)?,
        (Some(file), None) => Policy::load(file)?,
        (None, level) => Policy::embedded_default(level)?,
    };
    policy.to_toml()
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    if e.kind() == ErrorKind::Internal {
        ExitCode::from(EXIT_RUNTIME)
    } else {
        ExitCode::from(EXIT_BAD_INPUT)
    }
}
