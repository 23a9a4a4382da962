//! A decompressed Debian `Packages` file: entries or an error, never a panic.
//!
//! `cargo +nightly fuzz run packages` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anonmirror_mirror::index::parse_packages(data);
});
