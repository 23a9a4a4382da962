//! The rendezvous's two seams, filled with announce's real structures.
//!
//! `anonmirror-rendezvous` may not depend on `anonmirror-announce`
//! (DESIGN.md §2), so it sees announcement filters and popularity reports
//! as opaque bytes and asks the root package to interpret them through
//! [`FilterCheck`] and [`ReportSink`]. These are the production
//! implementations: the epoch-keyed Bloom filter test of
//! [`Announcement`], and RAPPOR aggregation with [`Aggregator`].

use std::sync::Mutex;

use anonmirror_announce::announcement::{AnnouncementHeader, ItemHashes, may_contain_many};
use anonmirror_announce::{Aggregator, Announcement, PopularityReport};
use anonmirror_core::{Epoch, ItemKey};
use anonmirror_privacy::Level;
use anonmirror_rendezvous::hooks::{FilterCheck, ItemProbe, PreparedFilter, ReportSink};

/// Tests a session's serving announcement for an item.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnnouncementFilter;

impl FilterCheck for AnnouncementFilter {
    fn holds(&self, filter: &[u8], epoch: Epoch, item: &ItemKey) -> bool {
        // A filter that does not decode, or is for another epoch (its bit
        // positions are keyed by the epoch), claims nothing.
        match Announcement::from_bytes(filter) {
            Ok(a) => a.epoch == epoch && a.may_contain(item),
            Err(_) => false,
        }
    }

    /// The header, checked once at session open; `shape` carries the
    /// epoch and (h, m) so that a test needs nothing but the bits.
    fn prepare(&self, filter: &[u8]) -> PreparedFilter {
        match AnnouncementHeader::parse(filter) {
            Ok(head) => PreparedFilter {
                valid: true,
                level: Some(head.level.wire_byte()),
                shape: [head.epoch.0, (u64::from(head.h) << 32) | u64::from(head.m)],
            },
            Err(_) => PreparedFilter::default(),
        }
    }

    /// The item's announcement hash words for the epoch: the only hashing
    /// of a lookup.
    fn probe(&self, item: &ItemKey, epoch: Epoch) -> ItemProbe {
        ItemProbe {
            item: *item,
            epoch,
            words: *ItemHashes::new(item, epoch).words(),
        }
    }

    fn holds_prepared(&self, filter: &[u8], prepared: &PreparedFilter, probe: &ItemProbe) -> bool {
        header_of(prepared).may_contain(filter, &ItemHashes::from_words(probe.epoch, probe.words))
    }

    fn holds_many(
        &self,
        filters: &[(&[u8], &PreparedFilter)],
        probe: &ItemProbe,
        out: &mut [bool],
    ) {
        let item = ItemHashes::from_words(probe.epoch, probe.words);
        const CHUNK: usize = 16;
        let blank = (header_of(&PreparedFilter::INVALID), &[][..]);
        for (fs, os) in filters.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            let mut heads = [blank; CHUNK];
            for (h, (bytes, prepared)) in heads.iter_mut().zip(fs) {
                *h = (header_of(prepared), *bytes);
            }
            may_contain_many(&item, &heads[..fs.len()], os);
            for (o, (_, prepared)) in os.iter_mut().zip(fs) {
                *o &= prepared.valid;
            }
        }
    }
}

/// The header [`FilterCheck::prepare`] packed into `prepared.shape`; only
/// the fields a test reads (epoch, h, m) matter.
fn header_of(prepared: &PreparedFilter) -> AnnouncementHeader {
    let [epoch, hm] = prepared.shape;
    AnnouncementHeader {
        level: Level::Open,
        epoch: Epoch(epoch),
        h: (hm >> 32) as u8,
        count: 0,
        m: hm as u32,
    }
}

/// How many epochs of counts the aggregator keeps: the current one and the
/// one before (reports paid for with a previous-epoch token still count).
const EPOCHS_KEPT: usize = 2;

/// Sums popularity reports per epoch and parameter set.
#[derive(Debug, Default)]
pub struct PopularityAggregator {
    rounds: Mutex<Vec<Aggregator>>,
}

impl PopularityAggregator {
    /// The counting arrays collected so far, oldest epoch first.
    pub fn rounds(&self) -> Vec<Aggregator> {
        self.rounds.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl ReportSink for PopularityAggregator {
    fn accept(&self, epoch: Epoch, report: &[u8]) -> Result<(), String> {
        let report = PopularityReport::from_bytes(report).map_err(|e| e.to_string())?;
        if report.epoch != epoch {
            return Err(format!(
                "report for {}, paid for in {}",
                report.epoch, epoch
            ));
        }
        let mut rounds = self
            .rounds
            .lock()
            .map_err(|_| "aggregator poisoned".to_owned())?;
        let at = match rounds
            .iter()
            .position(|a| a.epoch() == epoch && *a.params() == report.params)
        {
            Some(at) => at,
            None => {
                rounds.push(Aggregator::new(report.params, epoch));
                rounds.len() - 1
            }
        };
        rounds[at].add(&report).map_err(|e| e.to_string())?;
        // Forget epochs older than the ones kept.
        let mut epochs: Vec<Epoch> = rounds.iter().map(|a| a.epoch()).collect();
        epochs.sort();
        epochs.dedup();
        if epochs.len() > EPOCHS_KEPT {
            let oldest_kept = epochs[epochs.len() - EPOCHS_KEPT];
            rounds.retain(|a| a.epoch() >= oldest_kept);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use anonmirror_announce::announcement::Layout;
    use anonmirror_announce::{PermanentMemo, ReportParams, encode_report};
    use anonmirror_core::SeededEntropy;
    use anonmirror_privacy::Level;

    use super::*;

    fn key(i: u8) -> ItemKey {
        ItemKey([i; 32])
    }

    #[test]
    fn the_filter_check_reads_real_announcements() {
        let held: BTreeSet<ItemKey> = (0..40).map(key).collect();
        let a = Announcement::build(
            Level::Balanced,
            Epoch(9),
            Layout::for_capacity(64, Some(40)),
            &held,
        );
        let bytes = a.to_bytes();
        for k in &held {
            assert!(AnnouncementFilter.holds(&bytes, Epoch(9), k));
        }
        let strangers = (100..200)
            .filter(|i| AnnouncementFilter.holds(&bytes, Epoch(9), &key(*i)))
            .count();
        assert!(strangers < 20, "false positives stay rare: {strangers}");
        assert!(
            !AnnouncementFilter.holds(&bytes, Epoch(10), &key(0)),
            "another epoch claims nothing"
        );
        assert!(!AnnouncementFilter.holds(&bytes[..bytes.len() - 1], Epoch(9), &key(0)));
        assert!(!AnnouncementFilter.holds(b"garbage", Epoch(9), &key(0)));
    }

    #[test]
    fn the_prepared_test_agrees_with_the_reference() {
        let held: BTreeSet<ItemKey> = (0..40).map(key).collect();
        let a = Announcement::build(
            Level::Strict,
            Epoch(9),
            Layout::for_capacity(64, Some(40)),
            &held,
        );
        let bytes = a.to_bytes();
        let prepared = AnnouncementFilter.prepare(&bytes);
        assert!(prepared.valid);
        assert_eq!(prepared.level, Some(Level::Strict.wire_byte()));
        for epoch in [Epoch(9), Epoch(10)] {
            for i in 0..=255 {
                let probe = AnnouncementFilter.probe(&key(i), epoch);
                assert_eq!(
                    AnnouncementFilter.holds_prepared(&bytes, &prepared, &probe),
                    AnnouncementFilter.holds(&bytes, epoch, &key(i)),
                    "item {i} in {epoch}"
                );
            }
        }
        for bad in [&bytes[..bytes.len() - 1], b"garbage"] {
            assert_eq!(AnnouncementFilter.prepare(bad), PreparedFilter::default());
        }
    }

    #[test]
    fn the_sink_counts_real_reports_and_refuses_bad_ones() {
        let params = ReportParams::default_params();
        let universe: Vec<ItemKey> = (0..50).map(key).collect();
        let held: HashSet<ItemKey> = universe[..10].iter().copied().collect();
        let mut entropy = SeededEntropy::new(1);
        let sink = PopularityAggregator::default();
        for e in [3, 3, 4, 5] {
            let memo = PermanentMemo::draw(&params, &mut entropy);
            let report = encode_report(&params, Epoch(e), &memo, &universe, &held, &mut entropy)
                .expect("report");
            sink.accept(Epoch(e), &report.to_bytes()).expect("accepted");
        }
        let rounds = sink.rounds();
        let epochs: Vec<Epoch> = rounds.iter().map(|a| a.epoch()).collect();
        assert_eq!(
            epochs,
            vec![Epoch(4), Epoch(5)],
            "only the last two epochs are kept"
        );
        assert!(rounds.iter().all(|a| a.reports() == 1));
        let memo = PermanentMemo::draw(&params, &mut entropy);
        let report = encode_report(&params, Epoch(5), &memo, &universe, &held, &mut entropy)
            .expect("report");
        let err = sink
            .accept(Epoch(6), &report.to_bytes())
            .expect_err("wrong epoch");
        assert!(err.contains("paid for in"), "{err}");
        assert!(sink.accept(Epoch(5), b"not a report").is_err());
    }
}
