//! What a lookup reuses from one to the next, kept in the table so that a
//! lookup allocates nothing in the common case.

use super::slices::Hit;

/// What a lookup reuses from one to the next.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) positions: Vec<u32>,
    pub(super) hits: Vec<Hit>,
    /// Holders up to and including each hit.
    pub(super) upto: Vec<u64>,
    /// Loose sessions of the tier found to hold the item.
    pub(super) loose: Vec<u32>,
    /// Every holder, when there are few enough to consider each.
    pub(super) every: Vec<u32>,
}

/// The slots a lookup has probed: open addressing over slot numbers,
/// emptied in O(1) by bumping a generation (a lookup probes each session
/// at most once across both tiers).
#[derive(Debug, Default)]
pub(super) struct Probed {
    /// `generation << 32 | slot`; other generations read as empty.
    pub(super) marks: Vec<u64>,
    pub(super) generation: u32,
}

impl Probed {
    /// Starts a lookup of at most `n` probes.
    pub(super) fn begin(&mut self, n: usize) {
        let cap = (2 * n).next_power_of_two().max(64);
        if self.marks.len() < cap {
            self.marks = vec![0; cap];
            self.generation = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `slot`; false if it already was.
    pub(super) fn insert(&mut self, slot: u32) -> bool {
        let mask = self.marks.len() - 1;
        let tag = (u64::from(self.generation) << 32) | u64::from(slot);
        let mut i = (u64::from(slot).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask;
        loop {
            let m = self.marks[i];
            if m == tag {
                return false;
            }
            if m >> 32 != u64::from(self.generation) {
                self.marks[i] = tag;
                return true;
            }
            i = (i + 1) & mask;
        }
    }
}
