use std::collections::HashSet;

use anonmirror_core::{Entropy, SeededEntropy};
use proptest::prelude::*;

use super::*;
use crate::report::{PermanentMemo, encode_report};
use crate::snapshot::MAX_SNAPSHOT_ITEMS;

fn universe(n: u32) -> Vec<ItemKey> {
    (0..n)
        .map(|i| ItemKey(*blake3::hash(&(i + 1_000_000).to_le_bytes()).as_bytes()))
        .collect()
}

/// Simulate `peers` peers each holding item `i` with probability `rho[i]`,
/// independently; return the aggregator and the true holder counts.
fn simulate(
    params: ReportParams,
    epoch: Epoch,
    universe: &[ItemKey],
    rho: &[f64],
    peers: usize,
    seed: u64,
) -> (Aggregator, Vec<u64>) {
    let mut entropy = SeededEntropy::new(seed);
    let mut agg = Aggregator::new(params, epoch);
    let mut truth = vec![0u64; universe.len()];
    for _ in 0..peers {
        let held: HashSet<ItemKey> = universe
            .iter()
            .zip(rho)
            .enumerate()
            .filter(|(_, (_, r))| entropy.next_f64() < **r)
            .map(|(i, (k, _))| {
                truth[i] += 1;
                *k
            })
            .collect();
        let memo = PermanentMemo::draw(&params, &mut entropy);
        let report =
            encode_report(&params, epoch, &memo, universe, &held, &mut entropy).expect("encodes");
        agg.add(&report).expect("same round");
    }
    (agg, truth)
}

/// 10 000 peers: every item in a cell of its own is estimated within 3σ
/// (at most two of ~100 outside, where about 0.3 are expected).
#[test]
fn debiased_counts_within_three_sigma() {
    let params = ReportParams::new(4096, 1, 0.5, 0.5, 0.75).expect("valid");
    let epoch = Epoch(77);
    let universe = universe(100);
    let rho: Vec<f64> = (0..100).map(|i| f64::from(i) / 110.0).collect();
    let (agg, truth) = simulate(params, epoch, &universe, &rho, 10_000, 2024);
    assert_eq!(agg.reports(), 10_000);
    let snap = agg.snapshot(&universe, LevelPeers::default());
    let hasher = EpochHasher::new(Purpose::Report, epoch);
    let cells: Vec<u32> = universe
        .iter()
        .map(|k| hasher.positions(k, 1, params.m)[0])
        .collect();
    let mut outside = 0;
    let mut zsum = 0.0;
    let mut lone = 0;
    for (i, key) in universe.iter().enumerate() {
        if cells.iter().filter(|c| **c == cells[i]).count() > 1 {
            continue;
        }
        lone += 1;
        let e = snap.items[key];
        let z = (e.holders - truth[i] as f64) / e.se;
        zsum += z;
        if z.abs() > 3.0 {
            outside += 1;
        }
    }
    assert!(lone >= 95, "{lone}");
    assert!(outside <= 2, "{outside} of {lone} outside 3σ");
    // Unbiased: the mean z-score is within 3 standard errors of 0.
    let mean = zsum / f64::from(lone);
    assert!(mean.abs() < 3.0 / f64::from(lone).sqrt(), "mean z {mean}");
}

/// Rare items (0.5 % of peers) crowded among common ones (60 %) in a small
/// array: the conservative estimate calls a rare item common (≥ 5 %, the
/// balanced floor) in at most 0.1 % of trials, while still finding the
/// common items.
#[test]
fn conservative_estimate_rarely_calls_a_rare_item_common() {
    let params = ReportParams::new(1024, 2, 0.5, 0.5, 0.75).expect("valid");
    let universe = universe(300);
    let rho: Vec<f64> = (0..300).map(|i| if i < 20 { 0.6 } else { 0.005 }).collect();
    let (mut false_common, mut trials, mut found) = (0, 0, 0);
    for epoch in 0..4u64 {
        let (agg, _) = simulate(params, Epoch(epoch), &universe, &rho, 2_000, 100 + epoch);
        let snap = agg.snapshot(&universe, LevelPeers::default());
        for (i, key) in universe.iter().enumerate() {
            let common = snap.conservative_fraction(key) >= 0.05;
            if i < 20 {
                found += usize::from(common);
            } else {
                trials += 1;
                false_common += usize::from(common);
            }
        }
    }
    assert_eq!(trials, 1_120);
    assert!(
        false_common <= 1,
        "{false_common} of {trials} rare items called common"
    );
    assert!(found >= 64, "only {found} of 80 common items found");
}

#[test]
fn reports_of_another_round_are_refused() {
    let params = ReportParams::new(128, 1, 0.5, 0.5, 0.75).expect("valid");
    let mut agg = Aggregator::new(params, Epoch(1));
    let mut e = SeededEntropy::new(3);
    let memo = PermanentMemo::draw(&params, &mut e);
    let other_epoch = encode_report(
        &params,
        Epoch(2),
        &memo,
        &universe(3),
        &HashSet::new(),
        &mut e,
    )
    .expect("ok");
    assert!(matches!(agg.add(&other_epoch), Err(Error::WrongRound(_))));
    let other_params = ReportParams::new(256, 1, 0.5, 0.5, 0.75).expect("valid");
    let other = encode_report(
        &other_params,
        Epoch(1),
        &memo,
        &universe(3),
        &HashSet::new(),
        &mut e,
    )
    .expect("ok");
    assert!(agg.add(&other).is_err());
    assert_eq!(agg.reports(), 0);
    // No reports: every estimate is uninformative, never common.
    let snap = agg.snapshot(&universe(5), LevelPeers::default());
    assert!(
        universe(5)
            .iter()
            .all(|k| snap.conservative_holders(k) == 0.0)
    );
}

#[test]
fn add_bits_matches_a_plain_loop() {
    let mut e = SeededEntropy::new(9);
    let mut bits = vec![0u8; 24];
    e.fill(&mut bits);
    let mut counts = vec![0u32; 192];
    add_bits(&mut counts, &bits);
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(*c, u32::from(bits[i / 8] >> (i % 8) & 1), "bit {i}");
    }
}

fn arb_snapshot() -> impl Strategy<Value = PopularitySnapshot> {
    (
        any::<u64>(),
        any::<bool>(),
        "[a-z ]{0,64}",
        any::<u64>(),
        any::<[u64; 4]>(),
        proptest::option::of((1u32..8, 1u8..=16, 0u32..32_768, 0u32..32_768, 1u32..32_768)),
        0.1f64..10.0,
        proptest::collection::btree_map(any::<[u8; 32]>(), (-1e9f64..1e9, 0f64..1e9), 0..20),
    )
        .prop_map(|(epoch, prior, source, peers, levels, params, z, items)| {
            PopularitySnapshot {
                epoch: Epoch(epoch),
                prior,
                source,
                peers,
                level_peers: LevelPeers(levels),
                params: params.map(|(w, h, f, p, dq)| ReportParams {
                    m: w * 64,
                    h,
                    f: crate::params::Prob::from_raw(f * 2).expect("in range"),
                    p: crate::params::Prob::from_raw(p).expect("in range"),
                    q: crate::params::Prob::from_raw(p + dq).expect("in range"),
                }),
                z,
                items: items
                    .into_iter()
                    .map(|(k, (holders, se))| (ItemKey(k), Estimate { holders, se }))
                    .collect(),
            }
        })
}

proptest! {
    #[test]
    fn snapshot_round_trips_and_rejects_truncation_and_trailing(
        snap in arb_snapshot(), cut in 0usize..100_000, extra in 1usize..4,
    ) {
        let bytes = snap.to_bytes().expect("encodes");
        prop_assert_eq!(PopularitySnapshot::from_bytes(&bytes), Ok(snap));
        let cut = cut % bytes.len();
        let truncated = PopularitySnapshot::from_bytes(&bytes[..cut]);
        prop_assert!(matches!(truncated, Err(Error::Truncated { .. })), "{:?}", truncated);
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(7u8, extra));
        let trailing = PopularitySnapshot::from_bytes(&longer);
        prop_assert!(matches!(trailing, Err(Error::TrailingBytes { .. })), "{:?}", trailing);
    }
}

#[test]
fn snapshot_decoder_bounds_the_item_count_before_allocating() {
    let snap = PopularitySnapshot {
        epoch: Epoch(1),
        prior: true,
        source: "x".into(),
        peers: 1,
        level_peers: LevelPeers::default(),
        params: None,
        z: 3.0,
        items: Default::default(),
    };
    let mut bytes = snap.to_bytes().expect("encodes");
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&(MAX_SNAPSHOT_ITEMS + 1).to_le_bytes());
    assert!(matches!(
        PopularitySnapshot::from_bytes(&bytes),
        Err(Error::Malformed { .. })
    ));
    bytes[n - 4..].copy_from_slice(&MAX_SNAPSHOT_ITEMS.to_le_bytes());
    assert!(matches!(
        PopularitySnapshot::from_bytes(&bytes),
        Err(Error::Truncated { .. })
    ));
}

fn counts_of(params: ReportParams, epoch: u64, reports: u64, counts: Vec<u32>) -> Aggregator {
    Aggregator {
        params,
        epoch: Epoch(epoch),
        counts,
        reports,
    }
}

/// Golden bytes of the `AMPC` format: any change to it breaks every peer
/// that reads published counts, and must fail here.
#[test]
fn published_counts_known_bytes() {
    let params = ReportParams::new(64, 2, 0.5, 0.5, 0.75).expect("params");
    let mut counts = vec![5u32; 64];
    counts[1..5].copy_from_slice(&[6, 4, 0, 10]);
    let agg = counts_of(params, 7, 10, counts);
    let bytes = agg.to_bytes();
    let want_head: Vec<u8> = [
        &b"AMPC"[..],
        &[1],                       // version
        &[2],                       // h
        &[0, 0],                    // reserved
        &[7, 0, 0, 0, 0, 0, 0, 0],  // epoch
        &[0x40, 0, 0, 0],           // m = 64
        &[0, 0x80, 0, 0],           // f = 1/2
        &[0, 0x80, 0, 0],           // p = 1/2
        &[0, 0xc0, 0, 0],           // q = 3/4
        &[10, 0, 0, 0, 0, 0, 0, 0], // N = 10
    ]
    .concat();
    assert_eq!(&bytes[..COUNTS_HEADER_LEN], &want_head[..]);
    // base = ⌊10 · 1/2⌋ = 5: 5 → 0, 6 → +1, 4 → −1, 0 → −5, 10 → +5.
    let mut cells = vec![0x00u8, 0x02, 0x01, 0x09, 0x0a];
    cells.extend([0u8; 59]);
    assert_eq!(&bytes[COUNTS_HEADER_LEN..], &cells[..]);
    assert_eq!(Aggregator::from_bytes(&bytes), Ok(agg));
}

#[test]
fn published_counts_refuse_bad_cells_before_allocating() {
    let params = ReportParams::new(64, 2, 0.5, 0.5, 0.75).expect("params");
    let bytes = counts_of(params, 1, 10, vec![5; 64]).to_bytes();
    // A cell above N.
    let mut high = bytes.clone();
    high[COUNTS_HEADER_LEN] = 0x0c; // +6 → 11 > 10
    assert!(matches!(
        Aggregator::from_bytes(&high),
        Err(Error::Malformed { .. })
    ));
    // An over-long varint (0 as 80 00) is not canonical.
    let mut long = bytes[..COUNTS_HEADER_LEN].to_vec();
    long.extend([0x80, 0x00]);
    long.extend([0u8; 63]);
    assert!(matches!(
        Aggregator::from_bytes(&long),
        Err(Error::Malformed { .. })
    ));
    // A huge m with no cells behind it is refused before allocating.
    let big = ReportParams::new(1 << 22, 2, 0.5, 0.5, 0.75).expect("params");
    let mut head = counts_of(big, 1, 10, vec![0; 1 << 22]).to_bytes();
    head.truncate(COUNTS_HEADER_LEN + 10);
    assert!(matches!(
        Aggregator::from_bytes(&head),
        Err(Error::Truncated { .. })
    ));
    // More reports than a counting array holds.
    let mut many = bytes.clone();
    many[32..40].copy_from_slice(&(u64::from(u32::MAX) + 1).to_le_bytes());
    assert!(matches!(
        Aggregator::from_bytes(&many),
        Err(Error::Malformed { .. })
    ));
}

fn arb_counts() -> impl Strategy<Value = Aggregator> {
    (
        1u32..8,
        1u8..=16,
        0u32..32_768,
        0u32..32_768,
        1u32..32_768,
        any::<u64>(),
        0u64..100_000,
    )
        .prop_flat_map(|(w, h, f, p, dq, epoch, reports)| {
            let params = ReportParams {
                m: w * 64,
                h,
                f: crate::params::Prob::from_raw(f * 2).expect("in range"),
                p: crate::params::Prob::from_raw(p).expect("in range"),
                q: crate::params::Prob::from_raw(p + dq).expect("in range"),
            };
            let top = reports as u32;
            proptest::collection::vec(0..=top, (w * 64) as usize)
                .prop_map(move |counts| counts_of(params, epoch, reports, counts))
        })
}

proptest! {
    #[test]
    fn published_counts_round_trip_and_reject_truncation_and_trailing(
        agg in arb_counts(), cut in 0usize..100_000, extra in 1usize..4,
    ) {
        let bytes = agg.to_bytes();
        prop_assert_eq!(Aggregator::from_bytes(&bytes), Ok(agg));
        let cut = cut % bytes.len();
        let truncated = Aggregator::from_bytes(&bytes[..cut]);
        prop_assert!(matches!(truncated, Err(Error::Truncated { .. })), "{:?}", truncated);
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(7u8, extra));
        let trailing = Aggregator::from_bytes(&longer);
        prop_assert!(trailing.is_err(), "{:?}", trailing);
    }

    #[test]
    fn published_counts_decoder_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        agg in arb_counts(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let _ = Aggregator::from_bytes(&bytes);
        let mut mutated = agg.to_bytes();
        let n = mutated.len();
        for (at, x) in flips {
            mutated[at % n] ^= x;
        }
        if let Ok(a) = Aggregator::from_bytes(&mutated) {
            // Whatever decodes re-encodes to exactly those bytes.
            prop_assert_eq!(a.to_bytes(), mutated);
        }
    }
}
