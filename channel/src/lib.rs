//! The channel: how two ends reach each other and talk in private.
//!
//! - [`noise`]: Noise NK sessions over any byte stream (the responder is
//!   known by its static key, the initiator stays anonymous), sans-I/O at
//!   the core with a thin tokio driver ([`Channel`]).
//! - [`transport`]: what carries the streams: TCP, a Tor daemon's SOCKS
//!   port and control port (onion services), arti in this process.
//!
//! Both the peer wire protocol (`anonmirror-overlay`) and the rendezvous's
//! messages run over a [`Channel`]; neither is known here.
//!
//! This crate must never let a byte that failed authentication reach its
//! caller, never put a contact's address in a log or error unwrapped, and
//! never resolve a name on this machine for a Tor transport.

#![forbid(unsafe_code)]

mod err;
pub mod noise;
pub mod transport;

pub use err::{Error, Result};
pub use noise::{Channel, ChannelParams, StaticKeypair, Suite, accept, connect};
pub use transport::{Listener, TcpTransport, Transport};
