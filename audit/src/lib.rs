//! Exposure math and the `anonmirror audit` report.
//!
//! From the policy, the store's inventory, the current indexes and the
//! latest popularity snapshot, [`audit`] runs the selection pipeline of
//! `anonmirror-announce` and reports what a volunteer's announcement
//! reveals: each stage with its counts, the announced set, exposure bits
//! I(A) (DESIGN.md §5, computed in `anonmirror_announce::exposure`, since
//! the pipeline spends the budget while choosing), the part due to items
//! not announced, the anonymity set N·2^−I, the ε of popularity reports,
//! the credential's age (none exists until the rendezvous issue lands),
//! and warnings. [`inputs`] defines the text formats read for inventories
//! and indexes.
//!
//! It must never pull in networking (tokio's `net`, arti) or do I/O
//! itself: the command line reads the files and hands over their bytes.

#![forbid(unsafe_code)]

mod err;
pub mod inputs;
mod report;

use anonmirror_announce::{CurrentIndex, PopularitySnapshot, select};
use anonmirror_core::{Epoch, ItemKey};
use anonmirror_privacy::Policy;

pub use err::Error;
pub use report::{
    AuditReport, InUse, NO_CREDENTIAL, ReportPrivacy, SnapshotSummary, StageReport,
    TINY_LEVEL_POPULATION, TINY_POPULATION,
};

/// Audit `policy`'s level for `epoch`.
pub fn audit(
    policy: &Policy,
    epoch: Epoch,
    inventory: &[ItemKey],
    index: &CurrentIndex,
    snapshot: &PopularitySnapshot,
) -> Result<AuditReport, Error> {
    let selection = select(policy, epoch, inventory, index, snapshot);
    AuditReport::new(policy, epoch, snapshot, &selection)
}

#[cfg(test)]
mod tests;
