//! Announce's serialized forms (announcement filter, popularity report,
//! permanent memo, aggregator state, popularity snapshot): a value or an
//! error, never a panic.
//!
//! `cargo +nightly fuzz run announce` (from the repository root).

#![no_main]

use anonmirror_announce::{
    Aggregator, Announcement, PermanentMemo, PopularityReport, PopularitySnapshot,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Announcement::from_bytes(data);
    let _ = PopularityReport::from_bytes(data);
    let _ = PermanentMemo::from_bytes(data);
    let _ = Aggregator::from_bytes(data);
    let _ = PopularitySnapshot::from_bytes(data);
});
