//! The mirror side of anonmirror: the index parsers, the HTTP gateway the
//! package manager talks to on 127.0.0.1, and the upstream fetcher with its
//! hedged fallback (DESIGN.md §3, §8).
//!
//! - [`index`]: pacman repository databases, Debian `InRelease`/`Packages`,
//!   plain `SHA256SUMS`: every package file's SHA-256 and size.
//! - [`repo`]: what each configured repository's current indexes name.
//! - [`gateway`]: the HTTP front (`/<repository>/<path>`, metrics).
//! - [`hooks`]: the rendezvous's seams filled with announce's filters and
//!   aggregator (here because this crate sees both).
//! - [`job`]: one download per item: store, else peers, else upstream,
//!   with the hedge.
//! - [`peers`]: candidates from the rendezvous, minus peers that failed.
//! - [`lan`]: volunteers found on the link, asked before the directory.
//! - [`upstream`]: the HTTP client for the official mirror and its speed.
//! - [`metrics`]: counters, the offload ratio, the Prometheus text.
//!
//! It must never store or share anything its index does not name, nor hand
//! the package manager a byte that failed verification.

#![forbid(unsafe_code)]

pub mod directory;
pub mod err;
pub mod gateway;
pub mod hooks;
pub mod index;
pub mod job;
pub mod lan;
pub mod metrics;
pub mod peers;
pub mod read_ahead;
pub mod repo;
pub mod upstream;
mod workfile;

pub use err::{Error, FetchError, Result};
pub use gateway::Gateway;
pub use metrics::Metrics;
