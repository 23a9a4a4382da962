//! Exposure: how many bits an announcement reveals about its peer
//! (DESIGN.md §5). It lives here, not in the audit crate, because the
//! selection pipeline spends the exposure budget while choosing.
//!
//! For level L with N_L of N peers, canonical set C_L, popularity p_i
//! clamped to [1/N, 1 − 1/N] and announcement A:
//!
//! I(A) = −log2(N_L/N) + Σ_{i∈C_L∩A} −log2 p_i + Σ_{i∈C_L∖A} −log2(1 − p_i)
//!
//! Independence between items is assumed; correlated holdings make it an
//! approximation. The clamp keeps one item from costing infinitely many
//! bits: with N peers no estimate can be finer than 1/N.

use std::collections::{BTreeMap, BTreeSet};

use anonmirror_core::ItemKey;
use serde::Serialize;

/// I(A) and its parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Exposure {
    /// −log2(N_L/N): what the level alone says (0 when N_L is unknown).
    pub level_bits: f64,
    /// Σ over announced canonical items of −log2 p.
    pub announced_bits: f64,
    /// Σ over canonical items not announced of −log2(1 − p): the cost of
    /// not announcing what most peers announce.
    pub omitted_bits: f64,
}

impl Exposure {
    /// I(A), the total.
    pub fn total(&self) -> f64 {
        self.level_bits + self.announced_bits + self.omitted_bits
    }

    /// The anonymity set, about N·2^−I peers.
    pub fn anonymity_set(&self, peers: u64) -> f64 {
        peers as f64 * (-self.total()).exp2()
    }
}

/// `p` clamped to [1/N, 1 − 1/N] (N below 2 counts as 2, where the clamp
/// leaves only ½: one peer's estimate says nothing).
pub fn clamp_popularity(p: f64, peers: u64) -> f64 {
    let n = peers.max(2) as f64;
    let p = if p.is_nan() { 0.0 } else { p };
    p.clamp(1.0 / n, 1.0 - 1.0 / n)
}

/// The bits announcing (`true`) or not announcing (`false`) an item of
/// clamped popularity `p` costs.
pub fn item_bits(p: f64, announced: bool) -> f64 {
    if announced {
        -p.log2()
    } else {
        -(1.0 - p).log2()
    }
}

/// −log2 of the level's share of peers; 0 when unknown.
pub fn level_bits(level_peers: Option<u64>, peers: u64) -> f64 {
    match level_peers {
        Some(nl) if peers > 0 => -((nl.min(peers) as f64) / peers as f64).log2(),
        _ => 0.0,
    }
}

/// I(A) for `canonical` (item → unclamped popularity) and `announced`.
pub fn exposure(
    level_peers: Option<u64>,
    peers: u64,
    canonical: &BTreeMap<ItemKey, f64>,
    announced: &BTreeSet<ItemKey>,
) -> Exposure {
    let mut e = Exposure {
        level_bits: level_bits(level_peers, peers),
        ..Exposure::default()
    };
    for (item, p) in canonical {
        let p = clamp_popularity(*p, peers);
        if announced.contains(item) {
            e.announced_bits += item_bits(p, true);
        } else {
            e.omitted_bits += item_bits(p, false);
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ItemKey {
        ItemKey([b; 32])
    }

    /// The golden values of issue 5.
    #[test]
    fn golden_values() {
        let n = 1_000;
        let two_halves: BTreeMap<_, _> = [(key(1), 0.5), (key(2), 0.5)].into();
        let both: BTreeSet<_> = [key(1), key(2)].into();
        let e = exposure(Some(n), n, &two_halves, &both);
        assert!((e.total() - 2.0).abs() < 1e-12, "{e:?}");

        let common: BTreeMap<_, _> = [(key(3), 0.99)].into();
        let e = exposure(Some(n), n, &common, &BTreeSet::new());
        assert!((e.total() - 6.643_856).abs() < 1e-6, "{e:?}");
        assert_eq!(e.total(), e.omitted_bits);

        let e = exposure(Some(250), 1_000, &BTreeMap::new(), &BTreeSet::new());
        assert!((e.total() - 2.0).abs() < 1e-12);
        assert!((e.anonymity_set(1_000) - 250.0).abs() < 1e-9);

        // p = 0 announced and p = 1 omitted are clamped to 1/N: log2 N bits.
        let extremes: BTreeMap<_, _> = [(key(4), 0.0), (key(5), 1.0)].into();
        let e = exposure(Some(n), n, &extremes, &[key(4)].into());
        assert!((e.announced_bits - (1000f64).log2()).abs() < 1e-9);
        assert!((e.omitted_bits - (1000f64).log2()).abs() < 1e-9);
        assert!(e.total().is_finite());
        assert_eq!(clamp_popularity(0.5, 1), 0.5);
        assert_eq!(level_bits(None, 10), 0.0);
    }
}
