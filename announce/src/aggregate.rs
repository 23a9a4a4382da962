//! Aggregation, run by the rendezvous: popularity reports summed into a
//! counting array, then debiased into a [`PopularitySnapshot`].
//!
//! # The estimator
//!
//! For cell `j` with count `c_j` over `N` reports, RAPPOR's first step
//! removes the instantaneous response: `b̂_j = (c_j/N − p)/(q − p)` is the
//! fraction of peers whose permanent filter has bit `j` set, with standard
//! error `√(π(1−π)/N)/(q − p)`, `π = c_j/N` (the variance of a sum of
//! independent Bernoulli draws is at most that of one with their mean).
//!
//! The permanent response is per item, so a cell is clear in a peer's
//! permanent filter exactly when none of the `k_j` universe items hashed
//! there is reported present: `1 − b_j = Π (1 − f/2 − (1 − f)ρ_i)` over
//! those items, `ρ_i` the fraction of peers holding item `i` (independence
//! across items assumed). For a cell of one item that inverts to RAPPOR's
//! `n̂ = (c − p*N)/(q* − p*)`. For shared cells the other items must be
//! accounted for, and conservatively:
//!
//! 1. an upper bound per item: each cell solved as if the other items in
//!    it were held by nobody (which can only inflate the item), plus `z`
//!    standard errors, and the smallest over the item's cells kept;
//! 2. a lower estimate per (item, cell): the cell solved with every other
//!    item in it at its upper bound (which can only deflate the item);
//! 3. per item, the cell whose lower confidence bound (estimate − `z`·se)
//!    is highest, with `z` Bonferroni-corrected for the `h` cells tried
//!    (one-sided 0.1 % overall), so that choosing the best cell does not
//!    buy optimism.
//!
//! So a collision can hide a common item for one epoch (positions change
//! with the epoch) but never make a rare item look common beyond the
//! stated confidence. The snapshot records, per item, the chosen estimate
//! and its standard error in peers, and `z`; selection uses
//! `estimate − z·se` ([`PopularitySnapshot::conservative_holders`]).
//!
//! # Published counts: wire format (little-endian), `AMPC`
//!
//! The debiasing needs the universe (the current index's items), which
//! only peers know, so the rendezvous publishes the raw sums of the last
//! epoch and every peer runs [`Aggregator::snapshot`] itself
//! ([`Aggregator::to_bytes`], [`Aggregator::from_bytes`]):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `"AMPC"` |
//! | 4 | 1 | version, 1 |
//! | 5 | 1 | `h`, 1..=16 |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 8 | epoch (u64) |
//! | 16 | 4 | `m`: a positive multiple of 64, ≤ 2²² |
//! | 20 | 12 | `f`, `p`, `q` × 2¹⁶ (u32 each), checked as in `AMPR` |
//! | 32 | 8 | N, the reports summed (u64, ≤ 2³² − 1) |
//! | 40 | … | `m` cells, each the zigzag of `c_j − base` as a minimal LEB128 varint (1..=5 bytes) |
//!
//! `base` = ⌊N · p_raw / 2¹⁶⌋, the count a cell gets from the
//! instantaneous noise alone, so cells are small deviations around it:
//! about 2 bytes a cell for 100 000 reports, against 4 as raw u32. Zigzag
//! maps d ≥ 0 to 2d and d < 0 to −2d − 1. Every cell is at most N. Nothing
//! may follow. The decoder checks the header, then that at least `m` bytes
//! remain, before allocating the `m` counts; over-long varints are
//! refused, so each aggregator has exactly one encoding.

use std::collections::BTreeMap;

use anonmirror_core::{Epoch, ItemKey};

use crate::err::Error;
use crate::hash::{EpochHasher, Purpose};
use crate::params::{Prob, ReportParams};
use crate::report::{PopularityReport, check_shape};
use crate::snapshot::{Estimate, LevelPeers, PopularitySnapshot};
use crate::wire::Reader;

/// One-sided z for an overall 0.1 % false-common rate, Bonferroni-divided
/// by h = 1..=16 (z of 1 − 0.001/h).
const Z_BY_HASHES: [f64; 16] = [
    3.0902, 3.2905, 3.4029, 3.4808, 3.5401, 3.5879, 3.6279, 3.6623, 3.6923, 3.719, 3.743, 3.7648,
    3.7848, 3.8032, 3.8202, 3.8361,
];

/// The z used for `h` positions per item.
pub fn confidence_z(h: u8) -> f64 {
    Z_BY_HASHES[usize::from(h.clamp(1, 16)) - 1]
}

/// Sums reports of one epoch and parameter set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregator {
    params: ReportParams,
    epoch: Epoch,
    counts: Vec<u32>,
    reports: u64,
}

impl Aggregator {
    /// An empty counting array for reports of `epoch` under `params`.
    pub fn new(params: ReportParams, epoch: Epoch) -> Aggregator {
        Aggregator {
            params,
            epoch,
            counts: vec![0; params.m as usize],
            reports: 0,
        }
    }

    /// Add one report; refused unless it is for this epoch and these
    /// parameters (one report per token per epoch is the caller's rule).
    pub fn add(&mut self, report: &PopularityReport) -> Result<(), Error> {
        if report.epoch != self.epoch {
            return Err(Error::WrongRound(format!(
                "report for {}, collecting {}",
                report.epoch, self.epoch
            )));
        }
        if report.params != self.params {
            return Err(Error::WrongRound(format!(
                "report parameters {:?}, collecting {:?}",
                report.params, self.params
            )));
        }
        if report.bits.len() != self.params.bitmap_bytes() {
            return Err(Error::WrongRound("report length does not match m".into()));
        }
        if self.reports >= u64::from(u32::MAX) {
            return Err(Error::WrongRound(
                "more reports than a counting array holds".into(),
            ));
        }
        add_bits(&mut self.counts, &report.bits);
        self.reports += 1;
        Ok(())
    }

    /// Reports added so far (N).
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// The counting array.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The epoch collected for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The parameters its reports were drawn with.
    pub fn params(&self) -> &ReportParams {
        &self.params
    }

    /// Debias the counts into per-item estimates over `universe` (the
    /// items of the current index), with the level populations the
    /// rendezvous saw in its sessions.
    pub fn snapshot(&self, universe: &[ItemKey], level_peers: LevelPeers) -> PopularitySnapshot {
        let params = self.params;
        let z = confidence_z(params.h);
        let n = self.reports as f64;
        let (f, p, q) = (params.f.get(), params.p.get(), params.q.get());
        let mut items: Vec<ItemKey> = universe.to_vec();
        items.sort_unstable();
        items.dedup();

        // Each item's distinct cells, and how many items share each cell.
        let hasher = EpochHasher::new(Purpose::Report, self.epoch);
        let mut cells: Vec<Vec<u32>> = Vec::with_capacity(items.len());
        let mut occupancy = vec![0u32; params.m as usize];
        for item in &items {
            let mut pos = hasher.positions(item, params.h, params.m);
            pos.sort_unstable();
            pos.dedup();
            for &j in &pos {
                occupancy[j as usize] += 1;
            }
            cells.push(pos);
        }
        // Per cell: b̂ and its standard error.
        let cell_stats = |j: u32| -> (f64, f64) {
            if n == 0.0 {
                return (0.0, f64::INFINITY);
            }
            let pi = f64::from(self.counts[j as usize]) / n;
            let b = (pi - p) / (q - p);
            // Floor the variance at one report's worth so an all-0 or
            // all-1 cell does not claim certainty.
            let var = (pi * (1.0 - pi)).max(1.0 / n) / n;
            (b, var.sqrt() / (q - p))
        };
        let keep_absent = 1.0 - f / 2.0;
        // ρ from b̂ given the product R of the other items' chances of
        // being reported absent.
        let solve = |b: f64, se_b: f64, others_absent: f64| -> (f64, f64) {
            if others_absent <= 0.0 || f >= 1.0 {
                return (0.0, f64::INFINITY);
            }
            let rho = (keep_absent - (1.0 - b) / others_absent) / (1.0 - f);
            (rho, se_b / (others_absent * (1.0 - f)))
        };

        // Pass 1: upper bounds, others assumed held by nobody.
        let upper: Vec<f64> = cells
            .iter()
            .map(|cs| {
                cs.iter()
                    .map(|&j| {
                        let (b, se_b) = cell_stats(j);
                        let others = keep_absent.powi(occupancy[j as usize] as i32 - 1);
                        let (rho, se) = solve(b, se_b, others);
                        (rho + z * se).clamp(0.0, 1.0)
                    })
                    .fold(1.0, f64::min)
            })
            .collect();
        // Per cell, the product of every item's chance of being reported
        // absent at its upper bound; dividing out one item gives "the
        // others" without a second pass over the cell's members.
        let mut cell_absent_hi = vec![1.0f64; params.m as usize];
        for (i, cs) in cells.iter().enumerate() {
            let absent = keep_absent - (1.0 - f) * upper[i];
            for &j in cs {
                cell_absent_hi[j as usize] *= absent;
            }
        }
        // Pass 2: lower estimates; keep the cell with the best lower bound.
        let mut out = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let own_absent = keep_absent - (1.0 - f) * upper[i];
            let mut best: Option<(f64, f64)> = None;
            for &j in &cells[i] {
                let (b, se_b) = cell_stats(j);
                let others = if occupancy[j as usize] == 1 {
                    1.0
                } else if own_absent > 0.0 {
                    cell_absent_hi[j as usize] / own_absent
                } else {
                    // This item alone may explain the whole cell; the
                    // others' share cannot be separated from it.
                    0.0
                };
                let (rho, se) = solve(b, se_b, others);
                let better = match best {
                    None => true,
                    Some((r, s)) => rho - z * se > r - z * s,
                };
                if better {
                    best = Some((rho, se));
                }
            }
            let (rho, se) = best.unwrap_or((0.0, f64::INFINITY));
            let holders = if rho.is_finite() { rho * n } else { 0.0 };
            let se = if se.is_finite() { se * n } else { n.max(1.0) };
            out.insert(*item, Estimate { holders, se });
        }
        PopularitySnapshot {
            epoch: self.epoch,
            prior: false,
            source: "popularity reports".into(),
            peers: self.reports,
            level_peers,
            params: Some(params),
            z,
            items: out,
        }
    }
}

const COUNTS_MAGIC: &[u8; 4] = b"AMPC";
const COUNTS_VERSION: u8 = 1;
/// Bytes before the cells of an `AMPC` encoding.
pub const COUNTS_HEADER_LEN: usize = 40;

impl Aggregator {
    /// The count every cell gets from the instantaneous noise alone.
    fn base(params: &ReportParams, reports: u64) -> u64 {
        (reports * u64::from(params.p.raw())) >> 16
    }

    /// The counts for publication (`AMPC`, see the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COUNTS_HEADER_LEN + 2 * self.counts.len());
        out.extend_from_slice(COUNTS_MAGIC);
        out.push(COUNTS_VERSION);
        out.push(self.params.h);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.params.m.to_le_bytes());
        for prob in [self.params.f, self.params.p, self.params.q] {
            out.extend_from_slice(&prob.raw().to_le_bytes());
        }
        out.extend_from_slice(&self.reports.to_le_bytes());
        let base = Self::base(&self.params, self.reports) as i64;
        for &c in &self.counts {
            let d = i64::from(c) - base;
            let mut z = ((d << 1) ^ (d >> 63)) as u64;
            loop {
                let byte = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// Decodes published counts, refusing anything out of range,
    /// non-canonical, truncated or followed by trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Aggregator, Error> {
        let mut r = Reader::new("popularity counts", bytes);
        r.expect(COUNTS_MAGIC, COUNTS_VERSION)?;
        let h = r.u8()?;
        if r.u16()? != 0 {
            return Err(r.malformed("reserved bytes are not zero"));
        }
        let epoch = Epoch(r.u64()?);
        let m = r.u32()?;
        let mut probs = [None; 3];
        for (slot, name) in probs.iter_mut().zip(["f", "p", "q"]) {
            let raw = r.u32()?;
            *slot = Some(
                Prob::from_raw(raw)
                    .ok_or_else(|| r.malformed(format!("{name} = {raw}/65536 exceeds 1")))?,
            );
        }
        let [Some(f), Some(p), Some(q)] = probs else {
            return Err(r.malformed("probabilities missing"));
        };
        let params = ReportParams { m, h, f, p, q };
        check_shape(&params).map_err(|e| r.malformed(e.to_string()))?;
        let reports = r.u64()?;
        if reports > u64::from(u32::MAX) {
            return Err(r.malformed(format!("{reports} reports exceed a counting array")));
        }
        // At least one byte per cell must remain before m counts are
        // allocated (m is at most 2²² here).
        if r.remaining() < m as usize {
            return Err(Error::Truncated {
                what: "popularity counts",
                needed: bytes.len() - r.remaining() + m as usize,
                got: bytes.len(),
            });
        }
        let base = Self::base(&params, reports) as i64;
        let mut counts = Vec::with_capacity(m as usize);
        for j in 0..m {
            let mut z = 0u64;
            let mut shift = 0;
            loop {
                let byte = r.u8()?;
                if shift == 28 && byte > 0x1f {
                    return Err(r.malformed(format!("cell {j}: varint longer than 5 bytes")));
                }
                z |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    if byte == 0 && shift > 0 {
                        return Err(r.malformed(format!("cell {j}: over-long varint")));
                    }
                    break;
                }
                shift += 7;
            }
            let d = (z >> 1) as i64 ^ -((z & 1) as i64);
            let c = base + d;
            if c < 0 || c as u64 > reports {
                return Err(r.malformed(format!("cell {j}: count {c} outside 0..={reports}")));
            }
            // c ≤ reports < 2³².
            counts.push(c as u32);
        }
        r.finish()?;
        Ok(Aggregator {
            params,
            epoch,
            counts,
            reports,
        })
    }
}

/// Add a report's set bits to the counting array: the aggregation's inner
/// loop, word by word so clear regions cost nothing.
fn add_bits(counts: &mut [u32], bits: &[u8]) {
    for (w, chunk) in bits.chunks(8).enumerate() {
        let mut word_bytes = [0u8; 8];
        word_bytes[..chunk.len()].copy_from_slice(chunk);
        let mut word = u64::from_le_bytes(word_bytes);
        while word != 0 {
            let b = word.trailing_zeros() as usize;
            counts[w * 64 + b] += 1;
            word &= word - 1;
        }
    }
}

#[cfg(test)]
mod tests;
