//! The two seams through which announce/ plugs in: the announcement filter
//! test and the popularity aggregator.
//!
//! This crate may not depend on `anonmirror-announce` (DESIGN.md §2; the
//! layering test enforces it), yet lookups must test a session's
//! announcement filter and popularity reports must reach the aggregator.
//! So filters and reports are bounded opaque bytes here
//! ([`crate::msg::MAX_FILTER`], [`crate::msg::MAX_REPORT`]), and the root
//! package, which sees both crates, implements [`FilterCheck`] with
//! announce's epoch-keyed Bloom filter test and [`ReportSink`] with its
//! counting aggregator, and hands them to [`crate::server::ServerConfig`].
//!
//! [`SortedKeysFilter`] and [`CollectingSink`] are test doubles: real,
//! exact and simple, so the rendezvous's own tests do not need announce.
//! They are not privacy-preserving and must not be used in production.

use std::sync::Mutex;

use anonmirror_core::{Epoch, ItemKey};

/// Tests whether an announcement filter holds an item.
///
/// A lookup tests one item against up to a few hundred filters, so the
/// work is split three ways: [`FilterCheck::prepare`] once per filter (at
/// session open: decode and check its header), [`FilterCheck::probe`] once
/// per lookup (hash the item), and [`FilterCheck::holds_prepared`] per
/// filter tested (read a few bits). Each must agree with
/// [`FilterCheck::holds`], the reference; the defaults simply call it.
pub trait FilterCheck: Send + Sync + 'static {
    /// Whether `filter` (a session's announcement filter, as it sent it,
    /// for `epoch`) claims `item`. False positives are allowed (a client
    /// then gets one `NotFound`); false negatives hide a holder.
    fn holds(&self, filter: &[u8], epoch: Epoch, item: &ItemKey) -> bool;

    /// What every later test of `filter` needs from it, decoded once when
    /// its session opens (the filter bytes are kept, so this need not copy
    /// them).
    fn prepare(&self, filter: &[u8]) -> PreparedFilter {
        let _ = filter;
        PreparedFilter {
            valid: true,
            level: None,
            shape: [0; 2],
        }
    }

    /// What every test of `item` against filters of `epoch` shares,
    /// computed once per lookup.
    fn probe(&self, item: &ItemKey, epoch: Epoch) -> ItemProbe {
        ItemProbe {
            item: *item,
            epoch,
            words: [0; PROBE_WORDS],
        }
    }

    /// [`FilterCheck::holds`] for `filter`, given what
    /// [`FilterCheck::prepare`] made of it and [`FilterCheck::probe`] of
    /// the item. Only called for a filter whose preparation is `valid`.
    fn holds_prepared(&self, filter: &[u8], prepared: &PreparedFilter, probe: &ItemProbe) -> bool {
        let _ = prepared;
        self.holds(filter, probe.epoch, &probe.item)
    }

    /// [`FilterCheck::holds_prepared`] of each of `filters` into `out`
    /// (same length). A lookup hands its probes over a batch at a time so
    /// that a checker can interleave their memory reads (a table far larger
    /// than the cache makes each filter's first read a miss).
    fn holds_many(
        &self,
        filters: &[(&[u8], &PreparedFilter)],
        probe: &ItemProbe,
        out: &mut [bool],
    ) {
        for (o, (filter, prepared)) in out.iter_mut().zip(filters) {
            *o = prepared.valid && self.holds_prepared(filter, prepared, probe);
        }
    }

    /// Whether `filter` is a plain bit array that holds an item exactly
    /// when the bits [`FilterCheck::positions`] gives for the item under
    /// the returned layout are all set; `None` (the default) when it is
    /// not, or did not decode. Filters that share a layout then share every
    /// item's positions, so the rendezvous keeps them bit-sliced (one bit
    /// column per filter bit, one bit per session) and finds an item's
    /// holders among all of them by ANDing a few columns, instead of
    /// testing a sample of filters one by one.
    fn bit_layout(&self, filter: &[u8], prepared: &PreparedFilter) -> Option<BitLayout> {
        let _ = (filter, prepared);
        None
    }

    /// The bit positions (each below `layout.bits`) that a filter of
    /// `layout` must all have set to hold the item of `probe`, into `out`
    /// (cleared first); false if no filter of `layout` holds it (e.g. the
    /// layout is for another epoch). For every filter `f` whose
    /// [`FilterCheck::bit_layout`] is `layout`, it must agree with
    /// [`FilterCheck::holds_prepared`]: `f` holds the item exactly when
    /// this returns true and bit `p % 8` (least significant first) of byte
    /// `f[layout.offset + p / 8]` is set for every `p` in `out`.
    fn positions(&self, probe: &ItemProbe, layout: &BitLayout, out: &mut Vec<u32>) -> bool {
        let _ = (probe, layout);
        out.clear();
        false
    }
}

/// The shape of a filter that is a plain bit array
/// ([`FilterCheck::bit_layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BitLayout {
    /// The checker's own words: filters with equal layouts (all fields)
    /// give every item the same positions.
    pub key: [u64; 2],
    /// Where the bit array starts in the filter's bytes.
    pub offset: u32,
    /// Its length in bits (the filter has at least `offset + bits / 8`
    /// bytes).
    pub bits: u32,
}

/// What a [`FilterCheck`] keeps of a filter between tests: small and
/// inline in the session's entry, so a test costs no extra pointer chase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreparedFilter {
    /// Whether the filter decoded: one that did not claims nothing and is
    /// never tested.
    pub valid: bool,
    /// The privacy level its announcement declares
    /// (`anonmirror_privacy::Level::wire_byte`), if its format carries one;
    /// the rendezvous counts live sessions per level (the level
    /// populations N_L it publishes with the popularity counts).
    pub level: Option<u8>,
    /// The checker's own words (e.g. the decoded header), read back by
    /// [`FilterCheck::holds_prepared`].
    pub shape: [u64; 2],
}

impl PreparedFilter {
    /// A filter that did not decode: it claims nothing.
    pub const INVALID: PreparedFilter = PreparedFilter {
        valid: false,
        level: None,
        shape: [0; 2],
    };
}

/// The words of an [`ItemProbe`].
pub const PROBE_WORDS: usize = 16;

/// What a [`FilterCheck`] derives from one item for one epoch, once per
/// lookup (e.g. the item's hash words, before they are reduced to each
/// filter's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemProbe {
    /// The item.
    pub item: ItemKey,
    /// The epoch filters are tested for.
    pub epoch: Epoch,
    /// The checker's own words.
    pub words: [u64; PROBE_WORDS],
}

/// Why a [`ReportSink`] rejected a popularity report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportRejected {
    /// The report does not decode, or does not fit the counts of its
    /// epoch (the reporting peer is at fault); the source is the report
    /// format's own error.
    #[error("malformed popularity report: {0}")]
    Malformed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The report names another epoch than the token that paid for it (the
    /// reporting peer is at fault).
    #[error("report for {claimed}, paid for in {paid}")]
    WrongEpoch {
        /// The epoch the report names.
        claimed: Epoch,
        /// The epoch of the token's key.
        paid: Epoch,
    },
    /// The sink cannot take reports any more (a bug: its lock is
    /// poisoned).
    #[error("the report sink is broken")]
    Broken,
}

/// Takes popularity reports, one per spent token.
pub trait ReportSink: Send + Sync + 'static {
    /// Accept one report for `epoch`. The rendezvous has already spent the
    /// token that paid for it; the sink validates the report's format and
    /// adds it to the epoch's counts, or rejects it (`Err` with why).
    fn accept(&self, epoch: Epoch, report: &[u8]) -> Result<(), ReportRejected>;

    /// The counts to publish while `current` is the epoch: those of the
    /// latest epoch before `current` that has any, encoded for peers
    /// (announce's `AMPC`), with that epoch; `None` while no earlier epoch
    /// has counts ("none yet"). Reports paid for with a previous epoch's
    /// token still add to that epoch, so its N may grow while it is
    /// published; each answer is one consistent sum.
    fn publishable(&self, current: Epoch) -> Option<(Epoch, Vec<u8>)> {
        let _ = current;
        None
    }
}

/// TEST DOUBLE: a filter that is the sorted concatenation of the 32-byte
/// item keys it holds. Exact (no false positives) and epoch-blind.
#[derive(Clone, Copy, Debug, Default)]
pub struct SortedKeysFilter;

impl SortedKeysFilter {
    /// The filter holding `items`.
    pub fn encode(items: &[ItemKey]) -> Vec<u8> {
        let mut v: Vec<ItemKey> = items.to_vec();
        v.sort();
        v.dedup();
        v.iter().flat_map(|k| k.0).collect()
    }
}

impl FilterCheck for SortedKeysFilter {
    fn holds(&self, filter: &[u8], _epoch: Epoch, item: &ItemKey) -> bool {
        if !filter.len().is_multiple_of(32) {
            return false;
        }
        let n = filter.len() / 32;
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match filter[mid * 32..mid * 32 + 32].cmp(&item.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

/// TEST DOUBLE: a Bloom filter with a layout, to exercise the bit-sliced
/// index: a 4-byte little-endian `m` (bits, a positive multiple of 8) and
/// then the `m` bits; an item's `h` = 3 positions are words of
/// BLAKE3(epoch ‖ item) modulo `m`. Not privacy-preserving.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestBloomFilter;

impl TestBloomFilter {
    const H: usize = 3;

    /// The filter of `m` bits holding `items` for `epoch`.
    pub fn encode(m: u32, epoch: Epoch, items: &[ItemKey]) -> Vec<u8> {
        let mut out = m.to_le_bytes().to_vec();
        out.resize(4 + m as usize / 8, 0);
        for it in items {
            for p in Self::words(epoch, it).map(|w| (w % u64::from(m)) as usize) {
                out[4 + p / 8] |= 1 << (p % 8);
            }
        }
        out
    }

    fn words(epoch: Epoch, item: &ItemKey) -> [u64; Self::H] {
        let mut h = blake3::Hasher::new();
        h.update(&epoch.0.to_le_bytes());
        h.update(&item.0);
        let d = h.finalize();
        let b = d.as_bytes();
        std::array::from_fn(|k| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 * k..8 * k + 8]);
            u64::from_le_bytes(w)
        })
    }

    fn m_of(filter: &[u8]) -> Option<u32> {
        let m = u32::from_le_bytes(filter.get(..4)?.try_into().ok()?);
        (m > 0 && m.is_multiple_of(8) && filter.len() == 4 + m as usize / 8).then_some(m)
    }
}

impl FilterCheck for TestBloomFilter {
    fn holds(&self, filter: &[u8], epoch: Epoch, item: &ItemKey) -> bool {
        let Some(m) = Self::m_of(filter) else {
            return false;
        };
        Self::words(epoch, item)
            .iter()
            .map(|w| (w % u64::from(m)) as usize)
            .all(|p| filter[4 + p / 8] & (1 << (p % 8)) != 0)
    }

    fn prepare(&self, filter: &[u8]) -> PreparedFilter {
        PreparedFilter {
            valid: Self::m_of(filter).is_some(),
            level: None,
            shape: [0; 2],
        }
    }

    fn bit_layout(&self, filter: &[u8], prepared: &PreparedFilter) -> Option<BitLayout> {
        let m = Self::m_of(filter).filter(|_| prepared.valid)?;
        Some(BitLayout {
            key: [0, 0],
            offset: 4,
            bits: m,
        })
    }

    fn positions(&self, probe: &ItemProbe, layout: &BitLayout, out: &mut Vec<u32>) -> bool {
        out.clear();
        let m = u64::from(layout.bits.max(1));
        out.extend(
            Self::words(probe.epoch, &probe.item)
                .iter()
                .map(|w| (w % m) as u32),
        );
        true
    }
}

/// TEST DOUBLE: keeps every report it is given, in order.
#[derive(Debug, Default)]
pub struct CollectingSink {
    reports: Mutex<Vec<(Epoch, Vec<u8>)>>,
}

impl CollectingSink {
    /// The reports so far.
    pub fn reports(&self) -> Vec<(Epoch, Vec<u8>)> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl ReportSink for CollectingSink {
    fn accept(&self, epoch: Epoch, report: &[u8]) -> Result<(), ReportRejected> {
        self.reports
            .lock()
            .map_err(|_| ReportRejected::Broken)?
            .push((epoch, report.to_vec()));
        Ok(())
    }

    /// The latest earlier epoch's reports, each as a u32 LE length and its
    /// bytes, in arrival order.
    fn publishable(&self, current: Epoch) -> Option<(Epoch, Vec<u8>)> {
        let reports = self.reports.lock().ok()?;
        let epoch = reports
            .iter()
            .map(|(e, _)| *e)
            .filter(|e| *e < current)
            .max()?;
        let mut out = Vec::new();
        for (_, r) in reports.iter().filter(|(e, _)| *e == epoch) {
            out.extend_from_slice(&u32::try_from(r.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(r);
        }
        Some((epoch, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_keys_filter_is_exact() {
        let items: Vec<ItemKey> = (0..50u8)
            .map(|i| ItemKey([i.wrapping_mul(37); 32]))
            .collect();
        let f = SortedKeysFilter::encode(&items);
        for i in &items {
            assert!(SortedKeysFilter.holds(&f, Epoch(0), i));
        }
        assert!(!SortedKeysFilter.holds(&f, Epoch(0), &ItemKey([1; 32])));
        assert!(!SortedKeysFilter.holds(&f[..31], Epoch(0), &items[0]));
        assert!(!SortedKeysFilter.holds(&[], Epoch(0), &items[0]));
        let sink = CollectingSink::default();
        sink.accept(Epoch(3), b"r").expect("accepts");
        assert_eq!(sink.reports(), vec![(Epoch(3), b"r".to_vec())]);
        assert_eq!(sink.publishable(Epoch(3)), None, "epoch 3 is not over");
        assert_eq!(
            sink.publishable(Epoch(4)),
            Some((Epoch(3), vec![1, 0, 0, 0, b'r']))
        );
    }
}
