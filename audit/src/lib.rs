//! Exposure math and the `anonmirror audit` report.
//!
//! This crate will compute, from the policy, the store's inventory, the
//! current indexes and the latest popularity snapshot, what a volunteer's
//! announcement reveals: the selection pipeline's stages, exposure bits
//! I(A) (DESIGN.md §5), the anonymity set, the ε of popularity reports,
//! and warnings.
//!
//! It must never pull in networking (tokio's `net`, arti): an audit reads
//! files and prints, nothing else.

#![forbid(unsafe_code)]
