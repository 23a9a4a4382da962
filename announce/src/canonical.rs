//! Canonical sets: per level, the current items whose conservative
//! popularity clears the level's floor (`popularity.min_holders` peers and
//! `popularity.min_fraction` of all peers).
//!
//! Items whose index metadata forbids announcing are never canonical.
//! Computed from the snapshot and the current index only, never from a
//! peer's own holdings or deny list, so every peer of a level computes the
//! same set: that is what lets `strict` peers announce identical filters.
//! A level with a zero floor (`open`) takes every current item, snapshot
//! or not. `off` announces nothing and has no canonical set.

use std::collections::BTreeSet;

use anonmirror_core::ItemKey;
use anonmirror_privacy::{Level, PopularityConfig};

use crate::index::CurrentIndex;
use crate::snapshot::PopularitySnapshot;

/// The canonical set of `level` under `floor`.
pub fn canonical_set(
    level: Level,
    floor: &PopularityConfig,
    snapshot: &PopularitySnapshot,
    index: &CurrentIndex,
) -> BTreeSet<ItemKey> {
    if !level.serves() {
        return BTreeSet::new();
    }
    let no_floor = floor.min_holders == 0 && floor.min_fraction <= 0.0;
    index
        .entries()
        // Metadata that forbids announcing is in the index, the same for
        // every peer: such items are never canonical.
        .filter(|e| !e.no_announce)
        .map(|e| e.key)
        .filter(|key| no_floor || clears_floor(floor, snapshot, key))
        .collect()
}

/// Whether `key`'s conservative popularity clears the floor.
pub fn clears_floor(
    floor: &PopularityConfig,
    snapshot: &PopularitySnapshot,
    key: &ItemKey,
) -> bool {
    snapshot.items.contains_key(key)
        && snapshot.conservative_holders(key) >= f64::from(floor.min_holders)
        && snapshot.conservative_fraction(key) >= floor.min_fraction
}
