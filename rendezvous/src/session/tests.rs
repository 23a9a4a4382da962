use super::*;
use crate::hooks::{FilterCheck, PreparedFilter, SortedKeysFilter};
use anonmirror_core::SeededEntropy;
use std::net::SocketAddr;

const ITEM: ItemKey = ItemKey([0xab; 32]);

fn ann(
    i: u16,
    region: Option<&str>,
    version: u64,
    max_clients: u32,
    holds: bool,
) -> AnnouncementWire {
    let items = if holds {
        vec![ITEM, ItemKey([1; 32])]
    } else {
        vec![ItemKey([1; 32])]
    };
    AnnouncementWire {
        contact: ContactWire::from(SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7879))),
        key: PeerKey(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        max_clients,
        upload_rate: 1 << 20,
        region: region.map(str::to_owned),
        snapshots: vec![("core".into(), version)],
        filter: SortedKeysFilter::encode(&items),
    }
}

fn q(version: u64, region: Option<&str>, want: usize) -> Query<'_> {
    Query {
        item: &ITEM,
        // Large enough that each assignment lasts the whole window.
        size: u64::MAX,
        repository: "core",
        version,
        region,
        want,
    }
}

#[test]
fn silent_session_is_dropped_at_the_ping_deadline() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(1);
    let mut t = SessionTable::new(
        SessionConfig::default(),
        Epoch(0),
        Arc::new(SortedKeysFilter),
    );
    let quiet = t
        .open(ann(1, None, 1, 4, true), t0, &mut rng)
        .expect("open");
    let chatty = t
        .open(ann(2, None, 1, 4, true), t0, &mut rng)
        .expect("open");
    assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(90)));
    for s in [30, 60, 90] {
        t.heard(chatty, t0 + Duration::from_secs(s));
        assert!(t.expire(t0 + Duration::from_secs(s)).is_empty(), "{s}s");
    }
    assert_eq!(t.expire(t0 + Duration::from_secs(91)), vec![quiet]);
    assert!(!t.contains(quiet) && t.contains(chatty));
    assert_eq!(t.len(), 1);
    assert!(t.expire(t0 + Duration::from_secs(180)).is_empty());
    assert_eq!(t.expire(t0 + Duration::from_secs(181)), vec![chatty]);
    assert!(t.is_empty());
}

#[test]
fn lookup_obeys_holding_freshness_limits_and_region() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(2);
    let mut t = SessionTable::new(
        SessionConfig::default(),
        Epoch(0),
        Arc::new(SortedKeysFilter),
    );
    // 1: eu, fresh, holds. 2: us, fresh, holds. 3: eu, stale. 4: eu, fresh,
    // does not hold. 5: eu, fresh, holds, limit 1.
    t.open(ann(1, Some("eu"), 10, 8, true), t0, &mut rng)
        .expect("open");
    t.open(ann(2, Some("us"), 10, 8, true), t0, &mut rng)
        .expect("open");
    t.open(ann(3, Some("eu"), 9, 8, true), t0, &mut rng)
        .expect("open");
    t.open(ann(4, Some("eu"), 10, 8, false), t0, &mut rng)
        .expect("open");
    t.open(ann(5, Some("eu"), 11, 1, true), t0, &mut rng)
        .expect("open");
    let key = |i: u16| ann(i, None, 0, 1, true).key;

    let got = t.lookup(&q(10, Some("eu"), 3), t0, &mut rng);
    let keys: Vec<PeerKey> = got.iter().map(|c| c.key).collect();
    assert_eq!(keys.len(), 3, "two eu holders then the us one");
    assert!(keys[..2].contains(&key(1)) && keys[..2].contains(&key(5)));
    assert_eq!(keys[2], key(2), "other regions only after the client's");
    assert!(!keys.contains(&key(3)), "stale");
    assert!(!keys.contains(&key(4)), "does not hold");

    // 5 is at its limit of 1 now; 1 and 2 have room.
    let got = t.lookup(&q(10, Some("eu"), 5), t0, &mut rng);
    let keys: Vec<PeerKey> = got.iter().map(|c| c.key).collect();
    assert_eq!(keys, vec![key(1), key(2)]);
    assert_eq!(t.assignments_of(&key(5)), 1);
    // After the window, 5 has room again.
    let later = t0 + Duration::from_secs(61);
    let got = t.lookup(&q(11, Some("eu"), 5), later, &mut rng);
    assert_eq!(
        got.iter().map(|c| c.key).collect::<Vec<_>>(),
        vec![key(5)],
        "only 5 is that fresh"
    );
    // A client in no region, of any version, gets every holder with room
    // (1, 2 and the stale 3; 5 is full again).
    assert_eq!(t.lookup(&q(0, None, 32), later, &mut rng).len(), 3);
}

/// Two random choices spread assignments: with 20 equal peers and 200
/// picks of one candidate, no peer gets far more than its share (10).
#[test]
fn two_choices_balance_load() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(3);
    let mut t = SessionTable::new(
        SessionConfig::default(),
        Epoch(0),
        Arc::new(SortedKeysFilter),
    );
    for i in 0..20 {
        t.open(ann(i, None, 1, 1_000, true), t0, &mut rng)
            .expect("open");
    }
    for _ in 0..200 {
        assert_eq!(t.lookup(&q(1, None, 1), t0, &mut rng).len(), 1);
    }
    let loads: Vec<usize> = (0..20)
        .map(|i| t.assignments_of(&ann(i, None, 0, 1, true).key))
        .collect();
    assert_eq!(loads.iter().sum::<usize>(), 200);
    // One random choice would give a max around 17 here; two choices keep
    // it within a few of 10.
    assert!(*loads.iter().max().expect("some") <= 13, "{loads:?}");
}

#[test]
fn strikes_drop_the_session_and_refuse_its_contact() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(4);
    let mut t = SessionTable::new(
        SessionConfig::default(),
        Epoch(0),
        Arc::new(SortedKeysFilter),
    );
    let a = ann(1, None, 1, 4, true);
    let id = t.open(a.clone(), t0, &mut rng).expect("open");
    assert_eq!(t.report(&PeerKey([0; 32]), t0), ReportOutcome::Unknown);
    assert_eq!(t.report(&a.key, t0), ReportOutcome::Struck(1));
    assert_eq!(t.report(&a.key, t0), ReportOutcome::Struck(2));
    assert_eq!(t.report(&a.key, t0), ReportOutcome::Dropped(id));
    assert!(t.is_empty());
    // Same contact, fresh key: refused during the cooling-off, then fine.
    let mut again = a.clone();
    again.key = PeerKey([9; 32]);
    assert_eq!(
        t.open(again.clone(), t0 + Duration::from_secs(3600), &mut rng),
        Err(Refusal::ContactRefused)
    );
    let after = t0 + Duration::from_secs(7 * 86_400 + 1);
    assert!(t.open(again, after, &mut rng).is_ok());
    // A repeated session key is refused.
    let mut dup = ann(2, None, 1, 4, true);
    dup.key = PeerKey([9; 32]);
    assert_eq!(t.open(dup, after, &mut rng), Err(Refusal::BadRequest));
}

#[test]
fn close_keeps_indices_consistent() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(5);
    let mut t = SessionTable::new(
        SessionConfig::default(),
        Epoch(0),
        Arc::new(SortedKeysFilter),
    );
    let ids: Vec<SessionId> = (0..50)
        .map(|i| {
            t.open(
                ann(i, Some(if i % 2 == 0 { "eu" } else { "us" }), 1, 4, true),
                t0,
                &mut rng,
            )
            .expect("open")
        })
        .collect();
    for id in ids.iter().step_by(3) {
        assert!(t.close(*id));
        assert!(!t.close(*id));
    }
    assert_eq!(t.len(), 50 - 17);
    assert_eq!(t.announcements(None).len(), t.len());
    let eu = t.announcements(Some("eu")).len();
    let us = t.announcements(Some("us")).len();
    assert_eq!(eu + us, t.len());
    assert_eq!(t.lookup(&q(1, None, 32), t0, &mut rng).len(), 32);
}

#[test]
fn buffered_entropy_passes_the_inner_stream_through_unchanged() {
    use anonmirror_core::SeededEntropy;
    let mut plain = SeededEntropy::new(42);
    let mut want = vec![0u8; 10_000];
    plain.fill(&mut want);
    let mut b = BufferedEntropy::new(SeededEntropy::new(42));
    let mut got = Vec::new();
    // Odd-sized reads across block boundaries.
    for n in [1usize, 7, 4095, 3, 5000, 894] {
        let mut chunk = vec![0u8; n];
        b.fill(&mut chunk);
        got.extend(chunk);
    }
    assert_eq!(got, want);
}

/// A checker that declares a level per filter (its first byte) and
/// otherwise answers like the sorted-keys double, to see the table keep
/// level populations through open, close and expiry.
#[derive(Debug)]
struct Levelled;

impl FilterCheck for Levelled {
    fn holds(&self, filter: &[u8], epoch: Epoch, item: &ItemKey) -> bool {
        SortedKeysFilter.holds(filter, epoch, item)
    }

    fn prepare(&self, filter: &[u8]) -> PreparedFilter {
        PreparedFilter {
            valid: true,
            level: Some(filter.first().copied().unwrap_or(0) % 3 + 1),
            shape: [0; 2],
        }
    }
}

#[test]
fn level_populations_follow_open_and_close() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(6);
    let mut t = SessionTable::new(SessionConfig::default(), Epoch(0), Arc::new(Levelled));
    let ids: Vec<SessionId> = (0..30)
        .map(|i| {
            let mut a = ann(i, None, 1, 4, true);
            a.filter = vec![i as u8; 32];
            t.open(a, t0, &mut rng).expect("open")
        })
        .collect();
    let want: BTreeMap<u8, u64> = [(1, 10), (2, 10), (3, 10)].into_iter().collect();
    assert_eq!(t.level_populations(), want);
    assert!(t.close(ids[0]));
    assert_eq!(t.level_populations().get(&1), Some(&9));
    t.heard(ids[1], t0 + Duration::from_secs(60));
    assert_eq!(t.expire(t0 + Duration::from_secs(91)).len(), 28);
    let left: BTreeMap<u8, u64> = [(2, 1)].into_iter().collect();
    assert_eq!(t.level_populations(), left);
    assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(150)));
}

/// An assignment lasts as long as the peer's upload rate needs for the
/// item: many small packages do not exhaust a peer that one large one
/// keeps busy.
#[test]
fn assignments_last_as_long_as_the_item_takes_to_send() {
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(5);
    let mut t = SessionTable::new(
        SessionConfig::default(),
        Epoch(0),
        Arc::new(SortedKeysFilter),
    );
    // One peer, 2 clients at once, 1000 bytes/s.
    let mut a = ann(1, None, 1, 2, true);
    a.upload_rate = 1_000;
    t.open(a, t0, &mut rng).expect("open");
    let small = |size| Query {
        item: &ITEM,
        size,
        repository: "core",
        version: 1,
        region: None,
        want: 1,
    };
    // 100-byte items take 0.1 s at 1000 B/s: two at once, then full.
    assert_eq!(t.lookup(&small(100), t0, &mut rng).len(), 1);
    assert_eq!(t.lookup(&small(100), t0, &mut rng).len(), 1);
    assert_eq!(t.lookup(&small(100), t0, &mut rng).len(), 0);
    // A tenth of a second later both are done.
    let later = t0 + Duration::from_millis(100);
    assert_eq!(t.lookup(&small(5_000), later, &mut rng).len(), 1);
    // The 5 kB item (5 s) still counts after a second; the small one not.
    let after = later + Duration::from_secs(1);
    assert_eq!(t.lookup(&small(100), after, &mut rng).len(), 1);
    assert_eq!(t.assignments_of(&ann(1, None, 1, 2, true).key), 2);
    assert_eq!(t.lookup(&small(100), after, &mut rng).len(), 0);
    assert_eq!(
        assignment_time(u64::MAX, 1, Duration::from_secs(60)),
        Duration::from_secs(60)
    );
    assert_eq!(
        assignment_time(0, 1_000, Duration::from_secs(60)),
        MIN_ASSIGNMENT
    );
}

/// Sessions with bit-layout filters (the Bloom test double), in regions
/// large enough to be bit-sliced, with mixed versions and limits.
fn bloom_table(n: u16, max_probes: usize) -> (SessionTable, Vec<AnnouncementWire>, Vec<ItemKey>) {
    use crate::hooks::TestBloomFilter;
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(11);
    let cfg = SessionConfig {
        max_probes,
        ..SessionConfig::default()
    };
    let mut t = SessionTable::new(cfg, Epoch(7), Arc::new(TestBloomFilter));
    let items: Vec<ItemKey> = (0..40u8).map(|i| ItemKey([i; 32])).collect();
    let mut anns = Vec::new();
    for i in 0..n {
        let region = ["eu", "us", "as"][usize::from(i % 3)];
        let mut a = ann(
            i,
            Some(region),
            u64::from(i % 4),
            2 + u32::from(i % 3),
            false,
        );
        let held: Vec<ItemKey> = items
            .iter()
            .filter(|_| rng.below(5) == 0)
            .copied()
            .collect();
        a.filter = TestBloomFilter::encode(512, Epoch(7), &held);
        t.open(a.clone(), t0, &mut rng).expect("open");
        anns.push(a);
    }
    (t, anns, items)
}

/// What a lookup must return when it can consider every holder: exactly
/// the live sessions whose filter holds the item, fresh enough and under
/// their limit, the client's region first.
fn check_exact(t: &mut SessionTable, items: &[ItemKey], rng: &mut SeededEntropy, now: Instant) {
    use crate::hooks::TestBloomFilter;
    let sliced: Vec<u32> = (0..t.groups.len() as u32)
        .filter(|g| {
            t.groups[*g as usize]
                .as_ref()
                .is_some_and(|g| g.slices.is_some())
        })
        .collect();
    let mut listed = t.sliced.clone();
    listed.sort();
    assert_eq!(listed, sliced, "the sliced list is every sliced group");
    for (k, item) in items.iter().enumerate() {
        let region = ["eu", "us", "as"][k % 3];
        let version = (k % 3) as u64;
        let expect = |t: &SessionTable, in_region: bool| -> Vec<PeerKey> {
            let mut v: Vec<PeerKey> = t
                .announcements(None)
                .into_iter()
                .filter(|a| (a.region.as_deref() == Some(region)) == in_region)
                .filter(|a| TestBloomFilter.holds(&a.filter, Epoch(7), item))
                .filter(|a| a.version_of("core").is_some_and(|v| v >= version))
                .filter(|a| {
                    let e = t.entry(t.by_key[&a.key]).expect("live");
                    let live = e.assignments.iter().filter(|u| **u > now).count();
                    live < a.max_clients as usize
                })
                .map(|a| a.key)
                .collect();
            v.sort();
            v
        };
        let (mine, others) = (expect(t, true), expect(t, false));
        let q = Query {
            item,
            size: u64::MAX,
            repository: "core",
            version,
            region: Some(region),
            want: 1_000,
        };
        let got: Vec<PeerKey> = t.lookup(&q, now, rng).iter().map(|c| c.key).collect();
        let mut first: Vec<PeerKey> = got[..mine.len().min(got.len())].to_vec();
        first.sort();
        let mut rest: Vec<PeerKey> = got[first.len()..].to_vec();
        rest.sort();
        assert_eq!(first, mine, "item {k}: the client's region first");
        assert_eq!(rest, others, "item {k}: then every other holder");
    }
}

#[test]
fn sliced_lookup_finds_exactly_the_eligible_holders() {
    let (mut t, anns, items) = bloom_table(300, 256);
    assert!(
        t.groups.iter().flatten().all(|g| g.slices.is_some()),
        "100 sessions per region: sliced"
    );
    assert!(t.all.is_empty(), "no loose session left");
    let now = Instant::now();
    let mut rng = SeededEntropy::new(12);
    check_exact(&mut t, &items, &mut rng, now);
    // Again: the first round's assignments filled some limits.
    check_exact(&mut t, &items, &mut rng, now);

    // Closing most sessions moves members around in the columns and
    // finally turns small groups loose again; lookups stay exact.
    let later = now + Duration::from_secs(61);
    let mut rng2 = SeededEntropy::new(13);
    let ids: Vec<SessionId> = anns
        .iter()
        .map(|a| {
            let slot = t.by_key[&a.key];
            t.entry(slot).expect("live").id
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        if i % 5 != 0 || rng2.below(4) == 0 {
            assert!(t.close(*id));
        }
        if i % 50 == 49 {
            check_exact(
                &mut t,
                &items,
                &mut rng,
                later + Duration::from_secs(i as u64),
            );
        }
    }
    assert!(t.len() < 100);
    assert!(
        t.groups.iter().flatten().all(|g| g.slices.is_none()),
        "below SLICE_MIN / 2: loose again"
    );
    check_exact(&mut t, &items, &mut rng, later + Duration::from_secs(400));
    // And back up: new sessions re-slice the groups.
    let mut more = SeededEntropy::new(14);
    for i in 1_000..1_200u16 {
        let mut a = ann(i, Some("eu"), 3, 4, false);
        a.filter =
            crate::hooks::TestBloomFilter::encode(512, Epoch(7), &items[..(i % 40) as usize]);
        t.open(a, later, &mut more).expect("open");
    }
    assert!(t.groups.iter().flatten().any(|g| g.slices.is_some()));
    check_exact(&mut t, &items, &mut rng, later + Duration::from_secs(500));
}

/// With more holders than probes, a sliced lookup draws among them at
/// random, and two random choices still spread the load.
#[test]
fn sliced_draws_balance_load() {
    use crate::hooks::TestBloomFilter;
    let t0 = Instant::now();
    let mut rng = SeededEntropy::new(15);
    let cfg = SessionConfig {
        max_probes: 16,
        ..SessionConfig::default()
    };
    let mut t = SessionTable::new(cfg, Epoch(7), Arc::new(TestBloomFilter));
    for i in 0..200 {
        let mut a = ann(i, None, 1, 1_000, false);
        a.filter = TestBloomFilter::encode(256, Epoch(7), &[ITEM]);
        t.open(a, t0, &mut rng).expect("open");
    }
    assert!(t.groups.iter().flatten().all(|g| g.slices.is_some()));
    for _ in 0..2_000 {
        assert_eq!(t.lookup(&q(1, None, 1), t0, &mut rng).len(), 1);
    }
    let loads: Vec<usize> = (0..200)
        .map(|i| t.assignments_of(&ann(i, None, 0, 1, true).key))
        .collect();
    assert_eq!(loads.iter().sum::<usize>(), 2_000);
    // Share 10; one random choice would reach about 20 here.
    assert!(*loads.iter().max().expect("some") <= 15, "{loads:?}");
    // An item none holds: nothing, and a stale client version: nothing.
    let other = ItemKey([0x77; 32]);
    let none = Query {
        item: &other,
        ..q(1, None, 4)
    };
    assert!(t.lookup(&none, t0, &mut rng).is_empty());
    assert!(t.lookup(&q(2, None, 4), t0, &mut rng).is_empty());
}

/// A sliced session's bit array is packed away when that is smaller; the
/// directory still gets every filter back byte for byte, through slicing,
/// members moving in the columns as others close, and groups turning
/// loose again.
#[test]
fn filters_come_back_whole_from_sliced_groups() {
    let (mut t, anns, _) = bloom_table(300, 256);
    let packed = t
        .slots
        .iter()
        .flatten()
        .filter(|e| e.packed.is_some())
        .count();
    assert!(
        packed > 250,
        "sparse filters are packed once sliced: {packed}"
    );
    let check = |t: &SessionTable, live: &[&AnnouncementWire]| {
        let mut want: Vec<&AnnouncementWire> = live.to_vec();
        want.sort_by_key(|a| a.key);
        let got = t.announcements(None);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "announcement as opened");
        }
    };
    check(&t, &anns.iter().collect::<Vec<_>>());
    let mut live: Vec<&AnnouncementWire> = anns.iter().collect();
    let mut rng = SeededEntropy::new(21);
    while live.len() > 20 {
        let a = live.swap_remove(rng.below(live.len() as u64) as usize);
        let id = t.entry(t.by_key[&a.key]).expect("live").id;
        assert!(t.close(id));
        if live.len().is_multiple_of(40) {
            check(&t, &live);
        }
    }
    assert!(
        t.slots.iter().flatten().all(|e| e.packed.is_none()),
        "loose sessions hold their filters whole"
    );
    check(&t, &live);
}

#[test]
fn packing_keeps_exactly_the_set_bits() {
    let mut rng = SeededEntropy::new(22);
    for len in [0usize, 1, 8, 64, 2048] {
        for density in [0u64, 1, 4, 64, 512] {
            let bits: Vec<u8> = (0..len)
                .map(|_| {
                    (0..8).fold(0u8, |b, k| {
                        b | (u8::from(density > 0 && rng.below(1024) < density) << k)
                    })
                })
                .collect();
            let want: Vec<usize> = set_bits(&bits).collect();
            assert_eq!(
                want.len() as u32,
                bits.iter().map(|b| b.count_ones()).sum::<u32>()
            );
            match pack(&bits) {
                Some(p) => {
                    assert!(2 * p.len() <= bits.len());
                    assert_eq!(unpack(&p).collect::<Vec<_>>(), want);
                }
                None => assert!(density > 0, "an empty array always packs"),
            }
        }
    }
}
