//! Announcements and popularity, with no I/O.
//!
//! What a volunteer peer tells others, and how that is kept from
//! identifying it (DESIGN.md §5):
//!
//! - [`report`]: popularity reports, RAPPOR-style randomized response over
//!   a Bloom encoding of the items a peer holds, with a permanent response
//!   per item and version ([`report::PermanentMemo`]) and a fresh
//!   instantaneous response per report; [`params`] holds (m, h, f, p, q)
//!   and the ε∞ and ε₁ they give.
//! - [`aggregate`]: what the rendezvous runs over reports: a counting
//!   array, debiased into a [`snapshot::PopularitySnapshot`] of estimates
//!   and standard errors, conservative where cells collide.
//! - [`canonical`]: each level's canonical set, from the snapshot and the
//!   index alone.
//! - [`announcement`]: the fixed-size serving filter per level and epoch.
//! - [`selection`]: the pipeline held → in the current index → allowed by
//!   policy → canonical → within the exposure budget ([`exposure`]).
//! - [`prior`]: published install statistics (Debian popcon, Arch
//!   pkgstats) as a prior snapshot.
//! - [`hash`]: the epoch-keyed BLAKE3 bit positions all of these share.
//!
//! Every wire format (report, memo, snapshot, announcement) is specified
//! byte by byte in its module's doc and has a bounded decoder.
//!
//! This crate must never import `anonmirror-overlay` (nor be imported by
//! it), do I/O, or read the clock or randomness except through what it is
//! given (an epoch, an [`anonmirror_core::Entropy`]).

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod announcement;
pub mod canonical;
mod err;
pub mod exposure;
pub mod hash;
pub mod index;
pub mod params;
pub mod prior;
pub mod report;
pub mod selection;
pub mod snapshot;
mod wire;

pub use aggregate::Aggregator;
pub use announcement::Announcement;
pub use err::Error;
pub use index::{CurrentIndex, IndexEntry, popularity_key};
pub use params::ReportParams;
pub use report::{PermanentMemo, PopularityReport, encode_report};
pub use selection::{Selection, select};
pub use snapshot::PopularitySnapshot;
