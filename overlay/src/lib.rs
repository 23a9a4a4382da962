//! The overlay: how peers talk to each other and to the rendezvous.
//!
//! Noise NK channels over any byte stream, the peer wire protocol, and the
//! transports that carry them. Protocol logic is sans-I/O (bytes in, bytes
//! and events out); tokio appears only in thin drivers.
//!
//! This crate must never import `anonmirror-announce`, and never let a byte
//! that failed authentication reach its caller.

#![forbid(unsafe_code)]

mod err;
pub mod limit;
pub mod noise;
pub mod server;
pub mod store;
pub mod swarm;
pub mod transport;
pub mod verify;
pub mod wire;

pub use err::{Error, Result};
pub use noise::{Channel, ChannelParams, StaticKeypair, Suite, accept, connect};
pub use store::{ItemMeta, ItemReader, Origin, Store, StoreError};
pub use transport::{Contact, Listener, TcpTransport, Transport};
