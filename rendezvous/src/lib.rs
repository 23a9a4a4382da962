//! The rendezvous: the tracker of anonmirror, server and client library.
//!
//! It registers anonymous, expiring credentials ([`credential`], with a
//! proof-of-work, [`pow`]); sells each credential a bounded number of
//! blinded Privacy Pass tokens per epoch ([`token`], keys in [`ledger`]);
//! lets a peer open an announcement session by spending one token
//! ([`session`]); answers anonymous lookups and serves signed directory
//! snapshots ([`directory`]); takes reports of sessions that served bad
//! data; and pushes new-snapshot notices to every live session, learnt from
//! the distribution's authenticated `notify` or by watching the upstream
//! indexes ([`upstream`]).
//!
//! It must never store or log anything that links two sessions of one
//! peer, or a session to a credential: the stored state is credentials
//! (by hash), the blacklist, epoch keys and spent token nonces; sessions
//! are soft state that carry nothing of the credential that bought their
//! token. It must never accept a token twice, nor a token under a retired
//! key.
//!
//! # Seams
//!
//! The announcement filter and popularity reports are announce/'s formats;
//! this crate may not depend on announce (the layering test enforces it),
//! so it treats both as bounded opaque bytes and takes two hooks:
//! [`FilterCheck`] (does this filter hold this item?) and [`ReportSink`]
//! (take this popularity report). The root package plugs announce's filter
//! test and aggregator into them; [`SortedKeysFilter`] and
//! [`CollectingSink`] are the test doubles used here.

#![forbid(unsafe_code)]

pub mod client;
pub mod credential;
pub mod directory;
pub mod err;
pub mod hooks;
pub mod ledger;
pub mod msg;
pub mod pow;
pub mod refusal;
pub mod server;
pub mod session;
pub mod token;
pub mod upstream;

pub use client::{Backoff, Client, DirectoryWatch, LiveSession, Reach, SessionEvent, Token};
pub use directory::PublishedCounts;
pub use err::{Error, Result};
pub use hooks::{
    CollectingSink, FilterCheck, ItemProbe, PreparedFilter, ReportRejected, ReportSink,
    SortedKeysFilter,
};
pub use server::{Rendezvous, ServerConfig, channel_params};
pub use upstream::{UpstreamIndex, WatchConfig};
