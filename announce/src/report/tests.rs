use std::collections::HashSet;

use anonmirror_core::SeededEntropy;
use proptest::prelude::*;

use super::*;
use crate::wire::get_bit;

fn universe(n: u32) -> Vec<ItemKey> {
    (0..n)
        .map(|i| ItemKey(*blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect()
}

fn params(m: u32, h: u8) -> ReportParams {
    ReportParams::new(m, h, 0.5, 0.5, 0.75).expect("valid")
}

/// Items of `universe` whose single cell (h = 1) no other item shares, with
/// that cell.
fn lone_cells(params: &ReportParams, epoch: Epoch, universe: &[ItemKey]) -> Vec<(ItemKey, usize)> {
    let hasher = EpochHasher::new(Purpose::Report, epoch);
    let cells: Vec<u32> = universe
        .iter()
        .map(|k| hasher.positions(k, 1, params.m)[0])
        .collect();
    universe
        .iter()
        .zip(&cells)
        .filter(|(_, c)| cells.iter().filter(|d| d == c).count() == 1)
        .map(|(k, c)| (*k, *c as usize))
        .collect()
}

/// χ² goodness of fit: over many peers (each its own memo), the bit of a
/// held item's lone cell reads 1 at rate q*, a non-held item's at p*.
#[test]
fn reported_bits_occur_at_q_star_and_p_star() {
    let params = params(2048, 1);
    let epoch = Epoch(3);
    let universe = universe(64);
    let lone = lone_cells(&params, epoch, &universe);
    assert!(lone.len() > 50, "the test needs mostly lone cells");
    let held: HashSet<ItemKey> = lone.iter().step_by(2).map(|(k, _)| *k).collect();
    let mut entropy = SeededEntropy::new(42);
    // [held ones, held total, other ones, other total]
    let mut tally = [0u64; 4];
    for _ in 0..400 {
        let memo = PermanentMemo::draw(&params, &mut entropy);
        let report =
            encode_report(&params, epoch, &memo, &universe, &held, &mut entropy).expect("encodes");
        for (k, cell) in &lone {
            let one = u64::from(get_bit(&report.bits, *cell));
            let slot = if held.contains(k) { 0 } else { 2 };
            tally[slot] += one;
            tally[slot + 1] += 1;
        }
    }
    let chi2 = |ones: u64, total: u64, rate: f64| {
        let (o1, o0) = (ones as f64, (total - ones) as f64);
        let (e1, e0) = (total as f64 * rate, total as f64 * (1.0 - rate));
        (o1 - e1).powi(2) / e1 + (o0 - e0).powi(2) / e0
    };
    let stat =
        chi2(tally[0], tally[1], params.q_star()) + chi2(tally[2], tally[3], params.p_star());
    // 2 degrees of freedom, 0.1 % level.
    assert!(stat < 13.82, "χ² = {stat}, tally {tally:?}");
    // And the test has power: the rates without the permanent response
    // (q and p themselves) are rejected.
    let wrong = chi2(tally[0], tally[1], params.q.get()) + chi2(tally[2], tally[3], params.p.get());
    assert!(wrong > 13.82, "χ² against q, p = {wrong}");
}

/// Averaging 1 000 reports of one peer converges to its permanent
/// response, and the permanent response still disagrees with the truth
/// on about f/2 of the items.
#[test]
fn averaging_recovers_the_permanent_response_not_the_truth() {
    let params = params(4096, 1);
    let epoch = Epoch(11);
    let universe = universe(200);
    let lone = lone_cells(&params, epoch, &universe);
    let held: HashSet<ItemKey> = lone.iter().step_by(3).map(|(k, _)| *k).collect();
    let mut entropy = SeededEntropy::new(7);
    let memo = PermanentMemo::draw(&params, &mut entropy);
    let mut ones = vec![0u32; params.m as usize];
    for _ in 0..1_000 {
        let r =
            encode_report(&params, epoch, &memo, &universe, &held, &mut entropy).expect("encodes");
        for (i, c) in ones.iter_mut().enumerate() {
            *c += u32::from(get_bit(&r.bits, i));
        }
    }
    let threshold = 1_000.0 * (params.p.get() + params.q.get()) / 2.0;
    let permanent = permanent_filter(&params, epoch, &memo, &universe, &held).expect("filter");
    for (i, c) in ones.iter().enumerate() {
        assert_eq!(f64::from(*c) > threshold, get_bit(&permanent, i), "bit {i}");
    }
    let wrong = lone
        .iter()
        .filter(|(k, cell)| get_bit(&permanent, *cell) != held.contains(k))
        .count();
    // Binomial(n, f/2 = ¼): within 4σ of its mean, and never zero.
    let n = lone.len() as f64;
    let (mean, sd) = (n / 4.0, (n * 0.25 * 0.75).sqrt());
    assert!(
        ((wrong as f64) - mean).abs() < 4.0 * sd,
        "{wrong} of {n} wrong"
    );
    assert!(wrong > 0);
}

#[test]
fn memo_is_permanent_per_item_and_version() {
    let params = params(1024, 2);
    let mut entropy = SeededEntropy::new(1);
    let memo = PermanentMemo::draw(&params, &mut entropy);
    let restored = PermanentMemo::from_bytes(&memo.to_bytes()).expect("round trip");
    let items = universe(2_000);
    assert!(items.iter().all(|k| memo.coin(k) == restored.coin(k)));
    let absent = items
        .iter()
        .filter(|k| memo.coin(k) == Coin::Absent)
        .count();
    let present = items
        .iter()
        .filter(|k| memo.coin(k) == Coin::Present)
        .count();
    // f/2 = ¼ each: 500 ± 4σ (σ ≈ 19).
    assert!((424..=576).contains(&absent) && (424..=576).contains(&present));
    assert!(!format!("{memo:?}").contains(&format!("{:?}", memo.secret)));
    let other = ReportParams::new(1024, 2, 0.25, 0.5, 0.75).expect("valid");
    let err = encode_report(
        &other,
        Epoch(1),
        &memo,
        &items,
        &HashSet::new(),
        &mut entropy,
    )
    .expect_err("memo drawn for another f");
    assert!(matches!(err, Error::MemoMismatch { .. }));
}

#[test]
fn decoders_refuse_truncation_garbage_and_bad_fields() {
    let params = params(128, 2);
    let mut entropy = SeededEntropy::new(5);
    let memo = PermanentMemo::draw(&params, &mut entropy);
    let report = encode_report(
        &params,
        Epoch(1),
        &memo,
        &universe(10),
        &HashSet::new(),
        &mut entropy,
    )
    .expect("encodes");
    let bytes = report.to_bytes();
    assert_eq!(bytes.len(), REPORT_HEADER_LEN + 16);
    let mut bad_q = bytes.clone();
    bad_q[28..32].copy_from_slice(&1u32.to_le_bytes());
    assert!(PopularityReport::from_bytes(&bad_q).is_err(), "q below p");
    let mut huge = bytes.clone();
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        PopularityReport::from_bytes(&huge),
        Err(Error::Malformed { .. })
    ));
    let mut odd_f = bytes.clone();
    odd_f[20..24].copy_from_slice(&32_769u32.to_le_bytes());
    assert!(PopularityReport::from_bytes(&odd_f).is_err(), "odd f");
    assert!(PermanentMemo::from_bytes(&memo.to_bytes()[..40]).is_err());
}

proptest! {
    #[test]
    fn report_round_trips_and_rejects_truncation_and_trailing(
        words in 1u32..8, h in 1u8..=16, f in 0u32..32_768, p in 0u32..32_768, dq in 1u32..32_768,
        epoch: u64, seed: u64, cut in 0usize..1_000, extra in 1usize..4,
    ) {
        let params = ReportParams {
            m: words * 64,
            h,
            f: Prob::from_raw(f * 2).expect("in range"),
            p: Prob::from_raw(p).expect("in range"),
            q: Prob::from_raw(p + dq).expect("in range"),
        };
        let mut entropy = SeededEntropy::new(seed);
        let mut bits = vec![0u8; params.bitmap_bytes()];
        entropy.fill(&mut bits);
        let report = PopularityReport { epoch: Epoch(epoch), params, bits };
        let bytes = report.to_bytes();
        prop_assert_eq!(PopularityReport::from_bytes(&bytes), Ok(report));
        let cut = cut % bytes.len();
        let truncated = PopularityReport::from_bytes(&bytes[..cut]);
        prop_assert!(matches!(truncated, Err(Error::Truncated { .. })), "{:?}", truncated);
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        let trailing = PopularityReport::from_bytes(&longer);
        prop_assert!(matches!(trailing, Err(Error::TrailingBytes { .. })), "{:?}", trailing);
    }

    #[test]
    fn memo_round_trips_and_rejects_truncation_and_trailing(seed: u64, cut in 0usize..41) {
        let mut entropy = SeededEntropy::new(seed);
        let memo = PermanentMemo::draw(&ReportParams::default_params(), &mut entropy);
        let bytes = memo.to_bytes();
        prop_assert_eq!(bytes.len(), MEMO_LEN);
        prop_assert_eq!(PermanentMemo::from_bytes(&bytes), Ok(memo));
        prop_assert!(PermanentMemo::from_bytes(&bytes[..cut]).is_err());
        let mut longer = bytes;
        longer.push(0);
        let trailing = PermanentMemo::from_bytes(&longer);
        prop_assert!(matches!(trailing, Err(Error::TrailingBytes { .. })), "{:?}", trailing);
    }

    #[test]
    fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = PopularityReport::from_bytes(&bytes);
        let _ = PermanentMemo::from_bytes(&bytes);
        let _ = crate::snapshot::PopularitySnapshot::from_bytes(&bytes);
        let _ = crate::announcement::Announcement::from_bytes(&bytes);
    }
}
