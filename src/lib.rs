//! anonmirror: opt-in peer-to-peer mirroring of distribution packages,
//! without becoming fingerprintable.
//!
//! This is the root package: it wires the layers (core, privacy, announce,
//! overlay, rendezvous, mirror, audit) into one node and one command line.
//! Nothing may depend on it.

#![forbid(unsafe_code)]

pub mod carrier;
mod cli;
pub mod demo;
pub use anonmirror_mirror::hooks;
pub mod http;
mod logging;
pub mod node;
pub mod plot;

pub use cli::run;
