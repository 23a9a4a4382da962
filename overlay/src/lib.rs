//! The overlay: what peers say to each other over a channel.
//!
//! - [`wire`]: the peer messages, specified byte by byte.
//! - [`server`]: a volunteer's peer server, within the policy's limits
//!   ([`limit`]).
//! - [`swarm`]: the verified download of one item from several peers.
//!
//! Channels and transports are `anonmirror-channel`'s; the content store
//! and chunk-group verification are `anonmirror-store`'s.
//!
//! This crate must never import `anonmirror-announce`, and never hand its
//! caller a byte that failed verification.

#![forbid(unsafe_code)]

pub mod limit;
pub mod server;
pub mod swarm;
pub mod wire;
