//! A rendezvous request (`Up`) or answer (`Down`): a message or an error,
//! never a panic.
//!
//! `cargo +nightly fuzz run rendezvous_msg` (from the repository root).

#![no_main]

use anonmirror_rendezvous::msg::{Down, Up};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Up::decode(data);
    let _ = Down::decode(data);
});
