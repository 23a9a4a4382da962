//! gzip, xz and zstd streams: the bytes or an error, never a panic nor more than the bound.
//!
//! `cargo +nightly fuzz run decompress` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = anonmirror_mirror::index::decompress(data, 16 << 20) {
        assert!(out.len() <= 16 << 20);
    }
});
