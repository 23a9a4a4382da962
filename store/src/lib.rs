//! The verified content store: items on disk, their BLAKE3 outboards, and
//! the checks that admit them.
//!
//! - [`Store`]: files named by SHA-256, metadata and outboards in redb, a
//!   size cap with LRU eviction, crash-safe inserts and imports.
//! - [`verify`]: chunk-group verification against a bao outboard, with no
//!   I/O, and [`Verified`], the proof the store takes to keep bytes without
//!   hashing them again.
//!
//! This crate must never hold an unverified byte, nor show an item whose
//! metadata and file disagree. It does no networking.

#![forbid(unsafe_code)]

mod err;
mod import;
mod meta;
mod store;
pub mod verify;

pub use err::{Error, Result};
pub use meta::{ItemMeta, Origin};
pub use store::{BLOCK_SIZE, ItemReader, ItemWriter, Store};
pub use verify::{GROUP_SIZE, ItemHasher, Tree, TreeError, Verified, outboard_len};
