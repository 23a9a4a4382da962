//! The rendezvous's two seams, filled with announce's real structures.
//!
//! `anonmirror-rendezvous` may not depend on `anonmirror-announce`
//! (DESIGN.md §2), so it sees announcement filters and popularity reports
//! as opaque bytes and asks the node to interpret them through
//! [`FilterCheck`] and [`ReportSink`]. These are the production
//! implementations: the epoch-keyed Bloom filter test of
//! [`Announcement`], and RAPPOR aggregation with [`Aggregator`], whose
//! last complete epoch the rendezvous publishes (announce's `AMPC` bytes)
//! for peers to debias over the universe only they know.

use std::sync::Mutex;

use anonmirror_announce::announcement::{
    ANNOUNCEMENT_HEADER_LEN, AnnouncementHeader, ItemHashes, may_contain_many,
};
use anonmirror_announce::{Aggregator, Announcement, PopularityReport};
use anonmirror_core::{Epoch, ItemKey};
use anonmirror_privacy::Level;
use anonmirror_rendezvous::hooks::{
    BitLayout, FilterCheck, ItemProbe, PreparedFilter, ReportRejected, ReportSink,
};

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

    /// An announcement is a plain Bloom filter: the bits after the header,
    /// under a layout of (epoch, h, m), the words [`FilterCheck::prepare`]
    /// keeps in `shape`.
    fn bit_layout(&self, filter: &[u8], prepared: &PreparedFilter) -> Option<BitLayout> {
        let m = header_of(prepared).m;
        (prepared.valid && filter.len() == ANNOUNCEMENT_HEADER_LEN + m as usize / 8).then_some(
            BitLayout {
                key: prepared.shape,
                offset: ANNOUNCEMENT_HEADER_LEN as u32,
                bits: m,
            },
        )
    }

    /// Positions `k < h` of the item: its hash word `k` modulo `m`, as
    /// [`AnnouncementHeader::position_set`] reads them; none for another
    /// epoch's layout (such a filter claims nothing).
    fn positions(&self, probe: &ItemProbe, layout: &BitLayout, out: &mut Vec<u32>) -> bool {
        out.clear();
        let head = header_of(&PreparedFilter {
            valid: true,
            level: None,
            shape: layout.key,
        });
        if head.epoch != probe.epoch || head.m != layout.bits || head.m == 0 {
            return false;
        }
        let h = usize::from(head.h).min(probe.words.len());
        out.extend(
            probe.words[..h]
                .iter()
                .map(|w| (w % u64::from(head.m)) as u32),
        );
        usize::from(head.h) <= probe.words.len()
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
    fn accept(&self, epoch: Epoch, report: &[u8]) -> Result<(), ReportRejected> {
        let report = PopularityReport::from_bytes(report)
            .map_err(|e| ReportRejected::Malformed(Box::new(e)))?;
        if report.epoch != epoch {
            return Err(ReportRejected::WrongEpoch {
                claimed: report.epoch,
                paid: epoch,
            });
        }
        let mut rounds = self.rounds.lock().map_err(|_| ReportRejected::Broken)?;
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
        rounds[at]
            .add(&report)
            .map_err(|e| ReportRejected::Malformed(Box::new(e)))?;
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

    /// The latest epoch before `current` with reports; if peers used
    /// several parameter sets in it, the set with the most reports (a
    /// peer selects with the policy's own parameters, which most share).
    fn publishable(&self, current: Epoch) -> Option<(Epoch, Vec<u8>)> {
        let rounds = self.rounds.lock().ok()?;
        let epoch = rounds
            .iter()
            .map(Aggregator::epoch)
            .filter(|e| *e < current)
            .max()?;
        let best = rounds
            .iter()
            .filter(|a| a.epoch() == epoch)
            .max_by_key(|a| a.reports())?;
        Some((epoch, best.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use anonmirror_announce::announcement::Layout;
    use anonmirror_announce::snapshot as snapshot_levels;
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
                // The bit-sliced index's view must agree too.
                let layout = AnnouncementFilter
                    .bit_layout(&bytes, &prepared)
                    .expect("a plain bit array");
                let mut pos = Vec::new();
                let sliced = AnnouncementFilter.positions(&probe, &layout, &mut pos)
                    && pos.iter().all(|&p| {
                        bytes[layout.offset as usize + p as usize / 8] & (1 << (p % 8)) != 0
                    });
                assert_eq!(
                    sliced,
                    AnnouncementFilter.holds(&bytes, epoch, &key(i)),
                    "item {i} in {epoch}, sliced"
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
        assert!(
            matches!(
                err,
                ReportRejected::WrongEpoch {
                    claimed: Epoch(5),
                    paid: Epoch(6)
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("paid for in"), "{err}");
        assert!(sink.accept(Epoch(5), b"not a report").is_err());
    }

    /// A real rendezvous takes reports from 20 peers in epoch e; at e + 1
    /// a client fetches the counts, verifies them against the pinned
    /// directory key, rebuilds the aggregator, and its snapshot is the one
    /// computed from the same reports directly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn published_counts_rebuild_the_same_snapshot() {
        use std::sync::Arc;

        use anonmirror_core::{Clock, ManualClock, PeerKey};
        use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire};
        use anonmirror_rendezvous::{Client, Rendezvous, ServerConfig, directory};
        use snapshot_levels::LevelPeers;

        const EPOCH_SECS: u64 = 1_000;
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::at_unix(40 * EPOCH_SECS + 1);
        let mut cfg = ServerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            dir.path().to_path_buf(),
            Arc::new(AnnouncementFilter),
            Arc::new(PopularityAggregator::default()),
        );
        cfg.clock = Arc::new(clock.clone());
        cfg.epoch_secs = EPOCH_SECS;
        cfg.credentials.pow_difficulty = 4;
        cfg.dangerous_unchecked_contacts = true;
        let r = Rendezvous::start(cfg).await.expect("start");
        let pinned = r.directory_key();
        let c = Client::new(r.local_addr(), r.key());
        assert_eq!(
            c.popularity_counts(&pinned).await.expect("ask"),
            None,
            "none yet: no epoch has completed"
        );

        let e = Epoch::containing(clock.unix_secs(), EPOCH_SECS);
        let params = ReportParams::default_params();
        let universe: Vec<ItemKey> = (0..60).map(key).collect();
        let mut entropy = SeededEntropy::new(7);
        let mut direct = Aggregator::new(params, e);
        let mut live = None;
        for peer in 0..20u8 {
            let cred = c
                .register(clock.unix_secs(), 4, SeededEntropy::new(u64::from(peer)))
                .await
                .expect("register");
            let t = c
                .buy_tokens(&cred, clock.unix_secs(), e, 2)
                .await
                .expect("buy");
            let held: HashSet<ItemKey> = universe[..usize::from(peer % 30 + 1)]
                .iter()
                .copied()
                .collect();
            let memo = PermanentMemo::draw(&params, &mut entropy);
            let report =
                encode_report(&params, e, &memo, &universe, &held, &mut entropy).expect("report");
            direct.add(&report).expect("add");
            c.popularity(&t[0], report.to_bytes()).await.expect("sent");
            if peer == 0 {
                // One live session announcing at `strict`.
                let held: BTreeSet<ItemKey> = universe[..5].iter().copied().collect();
                let a =
                    Announcement::build(Level::Strict, e, Layout::for_capacity(64, Some(5)), &held);
                let ann = AnnouncementWire {
                    contact: ContactWire::from(std::net::SocketAddr::from(([10, 0, 0, 1], 7879))),
                    key: PeerKey([3; 32]),
                    max_clients: 4,
                    upload_rate: 1 << 20,
                    region: None,
                    snapshots: vec![("core".into(), 1)],
                    filter: a.to_bytes(),
                };
                live = Some(c.open_session(&t[1], ann).await.expect("open"));
            }
        }
        assert_eq!(
            c.popularity_counts(&pinned).await.expect("ask"),
            None,
            "epoch e is not over yet"
        );

        clock.advance(std::time::Duration::from_secs(EPOCH_SECS));
        let got = c
            .popularity_counts(&pinned)
            .await
            .expect("ask")
            .expect("counts of e");
        assert_eq!(got.epoch, e.0);
        assert_eq!(got.level_peers, [0, 0, 0, 1], "one strict session");
        let rebuilt = Aggregator::from_bytes(&got.counts).expect("AMPC");
        assert_eq!(rebuilt, direct);
        let levels = LevelPeers(got.level_peers);
        let a = rebuilt.snapshot(&universe, levels);
        let b = direct.snapshot(&universe, levels);
        assert_eq!(a.to_bytes().expect("enc"), b.to_bytes().expect("enc"));
        assert_eq!(a.peers, 20);

        // A wrong pinned key, or any changed byte, fails verification.
        assert!(c.popularity_counts(&[9; 32]).await.is_err());
        let key = anonmirror_rendezvous::directory::SigningKey::from_pkcs8(
            &anonmirror_rendezvous::directory::SigningKey::generate_pkcs8().expect("gen"),
        )
        .expect("load");
        let (bytes, sig) = key.sign_counts(&got).expect("sign");
        assert!(directory::verify_counts(&key.public(), &bytes, &sig).is_ok());
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(directory::verify_counts(&key.public(), &tampered, &sig).is_err());
        if let Some(s) = live {
            s.close().await;
        }
        r.shutdown().await;
    }
}
