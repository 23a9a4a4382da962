//! Popularity reports: what a peer sends so the rendezvous can count how
//! common each item is, without learning what this peer holds.
//!
//! # Construction
//!
//! For the items of the current index (the *universe*, public), a peer:
//!
//! 1. **Permanent randomized response, per item and version.** Each item
//!    gets a coin from the [`PermanentMemo`]: with probability `f/2`
//!    "report absent", `f/2` "report present", `1 − f` "tell the truth".
//!    The coin is a function of the memo's secret and the [`ItemKey`]
//!    (which names one version of one package), so it is the same in every
//!    report for as long as the memo is kept: averaging any number of
//!    reports converges to this permanent response, never to the truth
//!    (RAPPOR's longitudinal guarantee, ε∞). A new version is a new
//!    ItemKey and gets its own coin.
//! 2. **Bloom encoding** of the permanently randomized set into `m` bits,
//!    `h` epoch-keyed positions per item ([`crate::hash`]).
//! 3. **Instantaneous randomized response**, fresh per report: each bit is
//!    sent as 1 with probability `q` if set, `p` if clear.
//!
//! The permanent response is drawn on item membership *before* hashing
//! rather than on Bloom bits as in RAPPOR, because positions change every
//! epoch: bit-level coins would be redrawn for every new layout, and the
//! truth would show through averaging across epochs. The price is that
//! about `f/2` of the universe is set in every report, which
//! [`DEFAULT_REPORT_BITS`](crate::params::DEFAULT_REPORT_BITS) is sized
//! for, and which the estimator ([`crate::aggregate`]) removes knowing the
//! universe. The memo is a 32-byte secret and a keyed PRF rather than a
//! table of drawn coins (the memoization of Ding et al., "Collecting
//! telemetry data privately", 2017): it never grows, has no entry to lose
//! or prune, and yields the same coin for an item that leaves the index
//! and comes back. The caller persists it ([`PermanentMemo::to_bytes`]);
//! losing it means new coins, whose reports then compose with the old.
//!
//! # Wire format (little-endian), `PopularityReport`
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `"AMPR"` |
//! | 4 | 1 | version, 1 |
//! | 5 | 1 | `h`, 1..=16 |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 8 | epoch (u64) |
//! | 16 | 4 | `m`, bits: a positive multiple of 64, ≤ 2²² |
//! | 20 | 4 | `f` × 2¹⁶ (u32, even, < 2¹⁶) |
//! | 24 | 4 | `p` × 2¹⁶ (u32, ≤ 2¹⁶) |
//! | 28 | 4 | `q` × 2¹⁶ (u32, > p, ≤ 2¹⁶) |
//! | 32 | m/8 | the bits; bit `i` is bit `i % 8` of byte `i / 8` |
//!
//! Nothing may follow. The decoder checks the length against `m` before
//! allocating.
//!
//! # Wire format, `PermanentMemo` (41 bytes)
//!
//! magic `"AMPM"` (4), version 1 (1), `f` × 2¹⁶ (u32 LE, 4), secret (32).

use std::collections::HashSet;

use anonmirror_core::{Entropy, Epoch, ItemKey};

use crate::err::Error;
use crate::hash::{EpochHasher, Purpose};
use crate::params::{Prob, ReportParams};
use crate::wire::{Reader, set_bit};

const REPORT_MAGIC: &[u8; 4] = b"AMPR";
const MEMO_MAGIC: &[u8; 4] = b"AMPM";
const VERSION: u8 = 1;
/// Bytes before a report's bitmap.
pub const REPORT_HEADER_LEN: usize = 32;
/// Bytes of an encoded [`PermanentMemo`].
pub const MEMO_LEN: usize = 41;

/// The permanent coin of one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coin {
    /// Report the truth.
    Truth,
    /// Report the item as held, whatever the truth.
    Present,
    /// Report the item as not held, whatever the truth.
    Absent,
}

/// The persisted source of every item's permanent randomized response.
#[derive(Clone, PartialEq, Eq)]
pub struct PermanentMemo {
    f: Prob,
    secret: [u8; 32],
}

impl std::fmt::Debug for PermanentMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret decides every coin: printing it would undo them.
        f.debug_struct("PermanentMemo")
            .field("f", &self.f.get())
            .finish_non_exhaustive()
    }
}

impl PermanentMemo {
    /// A fresh memo for `params`' f, drawn once per peer and kept.
    pub fn draw(params: &ReportParams, entropy: &mut dyn Entropy) -> PermanentMemo {
        let mut secret = [0u8; 32];
        entropy.fill(&mut secret);
        PermanentMemo {
            f: params.f,
            secret,
        }
    }

    /// The f this memo's coins were drawn for.
    pub fn f(&self) -> Prob {
        self.f
    }

    /// The permanent coin of `item`.
    pub fn coin(&self, item: &ItemKey) -> Coin {
        let mut draw = [0u8; 2];
        blake3::Hasher::new_keyed(&self.secret)
            .update(b"anonmirror permanent response v1")
            .update(item.as_bytes())
            .finalize_xof()
            .fill(&mut draw);
        let u = u32::from(u16::from_le_bytes(draw));
        let f = self.f.raw();
        if u < f / 2 {
            Coin::Absent
        } else if u < f {
            Coin::Present
        } else {
            Coin::Truth
        }
    }

    /// The memo as bytes for the caller to persist.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MEMO_LEN);
        out.extend_from_slice(MEMO_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.f.raw().to_le_bytes());
        out.extend_from_slice(&self.secret);
        out
    }

    /// Read a persisted memo.
    pub fn from_bytes(bytes: &[u8]) -> Result<PermanentMemo, Error> {
        let mut r = Reader::new("permanent-response memo", bytes);
        r.expect(MEMO_MAGIC, VERSION)?;
        let f = r.u32()?;
        let f = Prob::from_raw(f)
            .filter(|f| f.raw() < crate::params::PROB_ONE && f.raw().is_multiple_of(2))
            .ok_or_else(|| r.malformed(format!("f = {f}/65536 is out of range")))?;
        let secret = r.array()?;
        r.finish()?;
        Ok(PermanentMemo { f, secret })
    }

    fn check(&self, params: &ReportParams) -> Result<(), Error> {
        if self.f == params.f {
            Ok(())
        } else {
            Err(Error::MemoMismatch {
                memo: self.f.get(),
                params: params.f.get(),
            })
        }
    }
}

/// One peer's popularity report for one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PopularityReport {
    /// The epoch whose positions it uses.
    pub epoch: Epoch,
    /// The parameters it was drawn with.
    pub params: ReportParams,
    /// `m` bits, little-endian within bytes.
    pub bits: Vec<u8>,
}

/// The permanently randomized Bloom filter of `held` over `universe`: what
/// reports converge to when averaged. Held items outside the universe (not
/// in the current index) are never reported.
pub fn permanent_filter(
    params: &ReportParams,
    epoch: Epoch,
    memo: &PermanentMemo,
    universe: &[ItemKey],
    held: &HashSet<ItemKey>,
) -> Result<Vec<u8>, Error> {
    params.check()?;
    memo.check(params)?;
    let hasher = EpochHasher::new(Purpose::Report, epoch);
    let mut bits = vec![0u8; params.bitmap_bytes()];
    let mut positions = Vec::with_capacity(usize::from(params.h));
    for item in universe {
        let present = match memo.coin(item) {
            Coin::Truth => held.contains(item),
            Coin::Present => true,
            Coin::Absent => false,
        };
        if present {
            positions.clear();
            hasher.positions_into(item, params.h, params.m, &mut positions);
            for &pos in &positions {
                set_bit(&mut bits, pos as usize);
            }
        }
    }
    Ok(bits)
}

/// A fresh report: the permanent filter through a new instantaneous
/// randomized response.
///
/// `held` must already exclude what the policy forbids reporting (deny
/// patterns); [`crate::selection::Selection::reportable`] gives that set.
pub fn encode_report(
    params: &ReportParams,
    epoch: Epoch,
    memo: &PermanentMemo,
    universe: &[ItemKey],
    held: &HashSet<ItemKey>,
    entropy: &mut dyn Entropy,
) -> Result<PopularityReport, Error> {
    let permanent = permanent_filter(params, epoch, memo, universe, held)?;
    Ok(PopularityReport {
        epoch,
        params: *params,
        bits: instantaneous(params, &permanent, entropy),
    })
}

/// Each bit of `permanent` through the instantaneous randomized response,
/// one 16-bit draw per bit.
pub fn instantaneous(
    params: &ReportParams,
    permanent: &[u8],
    entropy: &mut dyn Entropy,
) -> Vec<u8> {
    let mut out = vec![0u8; permanent.len()];
    // Draws are fetched in blocks: one entropy call per bit would dominate.
    let mut draws = [0u8; 2 * 512];
    for (chunk_index, chunk) in permanent.chunks(64).enumerate() {
        let n = chunk.len() * 8 * 2;
        entropy.fill(&mut draws[..n]);
        for (byte_index, &byte) in chunk.iter().enumerate() {
            let mut outbyte = 0u8;
            for bit in 0..8 {
                let d = 2 * (byte_index * 8 + bit);
                let draw = u16::from_le_bytes([draws[d], draws[d + 1]]);
                let prob = if byte & (1 << bit) != 0 {
                    params.q
                } else {
                    params.p
                };
                if prob.hit(draw) {
                    outbyte |= 1 << bit;
                }
            }
            out[chunk_index * 64 + byte_index] = outbyte;
        }
    }
    out
}

impl PopularityReport {
    /// The report on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPORT_HEADER_LEN + self.bits.len());
        out.extend_from_slice(REPORT_MAGIC);
        out.push(VERSION);
        out.push(self.params.h);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.params.m.to_le_bytes());
        for prob in [self.params.f, self.params.p, self.params.q] {
            out.extend_from_slice(&prob.raw().to_le_bytes());
        }
        out.extend_from_slice(&self.bits);
        out
    }

    /// Decode a report, refusing anything out of range, truncated or
    /// followed by trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<PopularityReport, Error> {
        let mut r = Reader::new("popularity report", bytes);
        r.expect(REPORT_MAGIC, VERSION)?;
        let h = r.u8()?;
        if r.u16()? != 0 {
            return Err(r.malformed("reserved bytes are not zero"));
        }
        let epoch = Epoch(r.u64()?);
        let m = r.u32()?;
        let mut probs = [Prob::from_raw(0); 3];
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
        let bits = r.take(params.bitmap_bytes())?.to_vec();
        r.finish()?;
        Ok(PopularityReport {
            epoch,
            params,
            bits,
        })
    }
}

/// The checks of [`ReportParams::new`], for decoded parameters.
pub(crate) fn check_shape(params: &ReportParams) -> Result<(), Error> {
    ReportParams::new(
        params.m,
        params.h,
        params.f.get(),
        params.p.get(),
        params.q.get(),
    )
    .and_then(|rebuilt| {
        if rebuilt == *params {
            Ok(())
        } else {
            Err(Error::BadParameters(
                "f is not an even multiple of 2^-16".into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests;
