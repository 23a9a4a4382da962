//! `anonmirror store add`: put package files into a content store.
//!
//! Each file's SHA-256 becomes its item key; the file is added by hard link
//! when the store is on the same file system (no copy), verified, and its
//! bao outboard computed. Prints `<sha256>  <size>  <file>` per file.
//!
//! Exit codes: 0 every file added; 2 bad arguments or an unreadable file;
//! 3 the store failed (disk, cap).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anonmirror_core::{ItemKey, SystemClock};
use anonmirror_overlay::store::Store;
use anonmirror_privacy::ByteSize;
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

fn sha256_of(path: &Path) -> std::io::Result<(ItemKey, u64)> {
    let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    Ok((ItemKey(key), size))
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
                let (key, size) = match sha256_of(&file) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("error: {}: {e}", file.display());
                        return ExitCode::from(EXIT_BAD_INPUT);
                    }
                };
                if let Err(e) = store.import(&key, size, &file) {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::from(EXIT_RUNTIME);
                }
                println!("{key}  {size}  {}", file.display());
            }
            ExitCode::SUCCESS
        }
    }
}
