//! A Debian `Release` or clearsigned `InRelease` file: a release or an error, never a panic.
//!
//! `cargo +nightly fuzz run release` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = anonmirror_mirror::index::parse_release(data);
});
