//! `anonmirror store add`: put package files into a content store.
//!
//! Each file's SHA-256 becomes its item key; the file is added by hard link
//! when the store is on the same file system (no copy), and its SHA-256 and
//! bao outboard are computed in one read. Prints `<sha256>  <size>  <file>`
//! per file.
//!
//! Exit codes: 0 every file added; 2 bad arguments or an unreadable file;
//! 3 the store failed (disk, cap).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anonmirror_core::SystemClock;
use anonmirror_privacy::ByteSize;
use anonmirror_store::Store;
use clap::Subcommand;

use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};

/// `anonmirror store …`
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Add files to a store; prints each item's SHA-256.
    Add {
        /// The store's directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// The store's size cap, e.g. "10 GiB".
        #[arg(long, default_value = "10 GiB")]
        cap: ByteSize,
        /// Files to add.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Open a store for a command-line tool.
pub fn open(dir: &Path, cap: ByteSize) -> Result<Store, ExitCode> {
    Store::open(dir, cap.bytes(), Arc::new(SystemClock)).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_RUNTIME)
    })
}

/// Run a `store` subcommand.
pub fn run(cmd: StoreCmd) -> ExitCode {
    match cmd {
        StoreCmd::Add { store, cap, files } => {
            let store = match open(&store, cap) {
                Ok(s) => s,
                Err(code) => return code,
            };
            for file in files {
                if !file.is_file() {
                    eprintln!("error: {}: not a readable file", file.display());
                    return ExitCode::from(EXIT_BAD_INPUT);
                }
                match store.add_file(&file) {
                    Ok((key, meta)) => println!("{key}  {}  {}", meta.size, file.display()),
                    Err(e) => {
                        eprintln!("error: {}: {e}", file.display());
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}
