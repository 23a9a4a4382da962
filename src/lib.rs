//! anonmirror: opt-in peer-to-peer mirroring of distribution packages,
//! without becoming fingerprintable.
//!
//! This is the root package: the command line only, parsing arguments and
//! printing. The daemon's roles live in `anonmirror-node`, the layers below
//! it in their own crates. Nothing may depend on it.

#![forbid(unsafe_code)]

mod cli;
mod logging;
pub mod plot;

pub use cli::run;
