//! The rendezvous: the tracker of anonmirror.
//!
//! This crate will hold credential registration (proof-of-work, expiry,
//! blacklist), Privacy Pass token issuance and redemption (RFC 9578 type
//! 0x0002), unlinkable announcement sessions kept alive by pings, anonymous
//! lookup and signed directory snapshots, reports of bad peers, popularity
//! aggregation, and push of new-snapshot notices; as a server and as the
//! client library volunteers use.
//!
//! It must never store anything that links two sessions of one peer, or a
//! session to a credential.

#![forbid(unsafe_code)]
