//! Popularity reports and selection at Debian scale.
//!
//! 1. Report encoding (reports/s) over a 60 000-item universe, against a
//!    plain Bloom encoding of the same held set with the same positions
//!    (what the randomization costs).
//! 2. Aggregation (reports/s) of 100 000 reports into the counting array,
//!    against a plain per-bit sum of the same bit arrays; then the
//!    debiasing of the counting array into a snapshot.
//! 3. Selection plus audit for a 5 000-item inventory, against the plain
//!    set intersection of the inventory with the index.
//!
//! `cargo run --release -p anonmirror-bench --bin popularity`

use std::collections::{BTreeSet, HashSet};
use std::hint::black_box;
use std::time::Instant;

use anonmirror_announce::hash::{EpochHasher, Purpose};
use anonmirror_announce::snapshot::LevelPeers;
use anonmirror_announce::{
    Aggregator, CurrentIndex, IndexEntry, PermanentMemo, ReportParams, encode_report,
};
use anonmirror_core::{Entropy, Epoch, ItemKey, SeededEntropy};
use anonmirror_privacy::Policy;
use clap::Parser;

/// Popularity benchmark.
#[derive(Parser)]
struct Args {
    /// Items in the universe (the current index).
    #[arg(long, default_value_t = 60_000)]
    universe: u32,
    /// Peers whose reports are encoded (timed).
    #[arg(long, default_value_t = 1_000)]
    encode_peers: usize,
    /// Reports aggregated.
    #[arg(long, default_value_t = 100_000)]
    aggregate_reports: usize,
    /// Items a peer holds.
    #[arg(long, default_value_t = 1_500)]
    held: usize,
    /// Inventory size for selection and audit.
    #[arg(long, default_value_t = 5_000)]
    inventory: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let params = ReportParams::default_params();
    let epoch = Epoch(20_000);
    let universe: Vec<ItemKey> = (0..args.universe)
        .map(|i| ItemKey(*blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    let mut entropy = SeededEntropy::new(1);
    let n = universe.len() as u64;
    let held_set = |e: &mut SeededEntropy, k: usize| -> HashSet<ItemKey> {
        (0..k).map(|_| universe[e.below(n) as usize]).collect()
    };
    println!(
        "params: m = {}, h = {}, f = {}, p = {}, q = {}; universe {} items; {} held per peer",
        params.m,
        params.h,
        params.f.get(),
        params.p.get(),
        params.q.get(),
        args.universe,
        args.held
    );

    // 1. Encoding.
    let peers: Vec<(PermanentMemo, HashSet<ItemKey>)> = (0..args.encode_peers)
        .map(|_| {
            (
                PermanentMemo::draw(&params, &mut entropy),
                held_set(&mut entropy, args.held),
            )
        })
        .collect();
    let start = Instant::now();
    let mut reports = Vec::with_capacity(200);
    for (memo, held) in &peers {
        let r = encode_report(&params, epoch, memo, &universe, held, &mut entropy)?;
        if reports.len() < 200 {
            reports.push(r);
        } else {
            black_box(r);
        }
    }
    let encode = start.elapsed();
    let hasher = EpochHasher::new(Purpose::Report, epoch);
    let start = Instant::now();
    for (_, held) in &peers {
        let mut bits = vec![0u8; params.bitmap_bytes()];
        for item in held {
            for p in hasher.positions(item, params.h, params.m) {
                bits[p as usize / 8] |= 1 << (p % 8);
            }
        }
        black_box(bits);
    }
    let plain = start.elapsed();
    let rate = |count: usize, d: std::time::Duration| count as f64 / d.as_secs_f64();
    println!(
        "encode: {:.0} reports/s ({:.2} ms each); plain Bloom of the held set (baseline): {:.0}/s; ratio {:.3}x",
        rate(peers.len(), encode),
        encode.as_secs_f64() * 1e3 / peers.len() as f64,
        rate(peers.len(), plain),
        plain.as_secs_f64() / encode.as_secs_f64()
    );

    // 2. Aggregation: the distinct reports cycled up to the count.
    let mut agg = Aggregator::new(params, epoch);
    let start = Instant::now();
    for i in 0..args.aggregate_reports {
        agg.add(&reports[i % reports.len()])?;
    }
    let aggregate = start.elapsed();
    let mut counts = vec![0u32; params.m as usize];
    let start = Instant::now();
    for i in 0..args.aggregate_reports {
        let bits = &reports[i % reports.len()].bits;
        for (j, c) in counts.iter_mut().enumerate() {
            *c += u32::from(bits[j / 8] >> (j % 8) & 1);
        }
    }
    let sum = start.elapsed();
    assert_eq!(
        counts,
        agg.counts(),
        "the aggregator sums what the plain loop sums"
    );
    println!(
        "aggregate: {:.0} reports/s; plain per-bit sum (baseline): {:.0} reports/s; ratio {:.2}x",
        rate(args.aggregate_reports, aggregate),
        rate(args.aggregate_reports, sum),
        sum.as_secs_f64() / aggregate.as_secs_f64()
    );
    let start = Instant::now();
    let snapshot = agg.snapshot(&universe, LevelPeers([0, 10_000, 50_000, 40_000]));
    println!(
        "snapshot (debias {} items from {} reports): {:.0} ms",
        snapshot.items.len(),
        agg.reports(),
        start.elapsed().as_secs_f64() * 1e3
    );

    // 3. Selection plus audit.
    let index = CurrentIndex::new(universe.iter().enumerate().map(|(i, k)| IndexEntry {
        key: *k,
        repo: "debian".into(),
        name: format!("pkg{i}"),
        version: "1.0-1".into(),
        no_announce: false,
    }));
    let inventory: Vec<ItemKey> = held_set(&mut entropy, args.inventory).into_iter().collect();
    let policy = Policy::from_toml_str(
        "level = \"balanced\"\n[rendezvous]\naddress = \"r.example.org:7880\"\n\
         key = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"\n\
         [[repository]]\nname = \"debian\"\nkind = \"apt\"\nurl = \"https://deb.example.org/debian/\"\n",
    )?;
    let mut times = Vec::new();
    let mut base = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        black_box(anonmirror_audit::audit(
            &policy, epoch, &inventory, &index, &snapshot,
        )?);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let held: BTreeSet<ItemKey> = inventory.iter().copied().collect();
        black_box(held.iter().filter(|k| index.get(k).is_some()).count());
        base.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let t = anonmirror_bench::median(&times).unwrap_or(0.0);
    let b = anonmirror_bench::median(&base).unwrap_or(0.0);
    println!(
        "selection + audit, {} held of {} items: {:.1} ms (median of 5); inventory ∩ index (baseline): {:.2} ms; ratio {:.0}x",
        inventory.len(),
        index.len(),
        t,
        b,
        t / b.max(1e-9)
    );
    Ok(())
}
