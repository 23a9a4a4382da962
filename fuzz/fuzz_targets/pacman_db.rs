//! A pacman repository database as served (any compression): entries or an error, never a panic, an endless loop or unbounded memory.
//!
//! `cargo +nightly fuzz run pacman_db` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anonmirror_mirror::index::parse_pacman_db_limited(data, 64 << 20);
});
