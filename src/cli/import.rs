//! `anonmirror import --from DIR`: add the packages a package manager has
//! already downloaded (pacman's `/var/cache/pacman/pkg`, apt's
//! `/var/cache/apt/archives`) to the store, by hard link when on the same
//! file system, each verified against the current index (size and SHA-256)
//! first. Files no current index names are left alone: they are neither
//! stored nor ever shared.
//!
//! The indexes are those the gateway last fetched (kept in the cache
//! directory): run the package manager's update through the gateway once
//! before importing. The store's database is the daemon's: stop the daemon
//! while importing.
//!
//! Prints one summary line: `imported N, already held N, not in the index
//! N, mismatched N`. Exit codes: 0 done (mismatches are reported, not
//! fatal); 2 bad policy or directory; 3 the store failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anonmirror_core::{Clock, SystemClock};
use anonmirror_mirror::repo::{Item, Repo};
use anonmirror_privacy::{Level, Policy};
use anonmirror_store::Store;
use clap::Args;

use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};

/// `anonmirror import …`
#[derive(Debug, Args)]
pub struct ImportCmd {
    /// The directory of package files to import.
    #[arg(long)]
    from: PathBuf,
    /// The policy file (the embedded default when absent).
    #[arg(long)]
    policy: Option<PathBuf>,
}

/// apt names cached files with the epoch's `:` escaped as `%3a`.
fn unescape(name: &str) -> String {
    name.replace("%3a", ":").replace("%3A", ":")
}

/// Runs the import.
pub fn run(cmd: ImportCmd) -> ExitCode {
    let policy = match &cmd.policy {
        Some(p) => Policy::load(p),
        None => Policy::embedded_default(None::<Level>),
    };
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let entries = match std::fs::read_dir(&cmd.from) {
        Ok(rd) => rd,
        Err(e) => {
            eprintln!("error: {}: {e}", cmd.from.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let clock = Arc::new(SystemClock);
    // Every current item, by file name.
    let mut by_name: HashMap<String, Vec<Arc<Item>>> = HashMap::new();
    for r in &policy.repositories {
        let repo = Repo::new(
            &r.name,
            r.kind,
            &r.url,
            policy.paths.cache_dir.join("indexes").join(&r.name),
        );
        repo.load_cached(clock.unix_secs());
        for item in repo.items() {
            let name = item
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&item.path)
                .to_owned();
            by_name.entry(name).or_default().push(item);
        }
    }
    if by_name.is_empty() {
        eprintln!(
            "error: no index known yet: run the package manager's update through the gateway first"
        );
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let store = match Store::open(
        &policy.paths.cache_dir.join("store"),
        policy.cache.max_size.0,
        clock,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: opening the store (is the daemon running? stop it first): {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let (mut imported, mut held, mut unknown, mut mismatched) = (0u64, 0u64, 0u64, 0u64);
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let name = unescape(&entry.file_name().to_string_lossy());
        let candidates: Vec<&Arc<Item>> = by_name
            .get(&name)
            .map(|v| {
                v.iter()
                    .filter(|i| i.size.is_none_or(|s| s == meta.len()))
                    .collect()
            })
            .unwrap_or_default();
        if candidates.is_empty() {
            unknown += 1;
            continue;
        }
        let mut done = false;
        for item in candidates {
            if matches!(store.meta(&item.key), Ok(Some(_))) {
                held += 1;
                done = true;
                break;
            }
            match store.import(&item.key, meta.len(), &path) {
                Ok(_) => {
                    imported += 1;
                    done = true;
                    break;
                }
                Err(anonmirror_store::Error::Mismatch { .. }) => {}
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(EXIT_RUNTIME);
                }
            }
        }
        if !done {
            mismatched += 1;
            eprintln!(
                "warning: {}: its bytes differ from what the index says: not imported",
                path.display()
            );
        }
    }
    println!(
        "imported {imported}, already held {held}, not in the index {unknown}, mismatched {mismatched}"
    );
    ExitCode::SUCCESS
}
