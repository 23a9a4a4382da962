//! The mirror side of anonmirror.
//!
//! This crate will hold the index parsers (pacman repository databases,
//! Debian `InRelease`/`Packages`, plain `SHA256SUMS`), the HTTP gateway the
//! package manager talks to on 127.0.0.1, and the upstream fetcher with its
//! hedged fallback.
//!
//! It must never store or share anything its index does not name, nor hand
//! an unverified byte to the package manager.

#![forbid(unsafe_code)]

pub mod index;
