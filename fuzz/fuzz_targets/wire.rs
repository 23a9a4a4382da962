//! A peer channel's message, as either end would receive it: a message or
//! an error, never a panic; a decoded message encodes back to a message
//! that decodes to itself.
//!
//! `cargo +nightly fuzz run wire` (from the repository root).

#![no_main]

use anonmirror_overlay::wire::{Message, Sender};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for from in [Sender::Client, Sender::Server] {
        if let Ok(msg) = Message::decode_from(from, data)
            && let Ok(bytes) = msg.encode()
        {
            let again = Message::decode_from(from, &bytes).expect("re-encoded message decodes");
            assert_eq!(again, msg);
        }
    }
});
