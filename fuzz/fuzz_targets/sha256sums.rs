//! A `SHA256SUMS` file (GNU, BSD-tag, escaped, clearsigned): entries or an error, never a panic.
//!
//! `cargo +nightly fuzz run sha256sums` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anonmirror_mirror::index::parse_sha256sums(data);
});
