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
pub trait FilterCheck: Send + Sync + 'static {
    /// Whether `filter` (a session's announcement filter, as it sent it,
    /// for `epoch`) claims `item`. False positives are allowed (a client
    /// then gets one `NotFound`); false negatives hide a holder.
    fn holds(&self, filter: &[u8], epoch: Epoch, item: &ItemKey) -> bool;
}

/// Takes popularity reports, one per spent token.
pub trait ReportSink: Send + Sync + 'static {
    /// Accept one report for `epoch`. The rendezvous has already spent the
    /// token that paid for it; the sink validates the report's format and
    /// adds it to the epoch's counts, or rejects it (`Err` with why).
    fn accept(&self, epoch: Epoch, report: &[u8]) -> Result<(), String>;
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
    fn accept(&self, epoch: Epoch, report: &[u8]) -> Result<(), String> {
        self.reports
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .push((epoch, report.to_vec()));
        Ok(())
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
    }
}
