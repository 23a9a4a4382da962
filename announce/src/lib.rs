//! Announcements and popularity, with no I/O.
//!
//! This crate will hold the popularity report (RAPPOR-style randomized
//! response over a counting-Bloom encoding of held items, with a permanent
//! response memoized per item and version), the aggregation and debiasing
//! the rendezvous runs over reports, the canonical set of each level, the
//! fixed-size serving announcement, and the selection pipeline of
//! DESIGN.md §5 (held → in the current index → allowed by policy →
//! canonical → within the exposure budget).
//!
//! It must never import `anonmirror-overlay` (nor be imported by it), do
//! I/O, or read the clock or randomness except through what it is given.

#![forbid(unsafe_code)]
