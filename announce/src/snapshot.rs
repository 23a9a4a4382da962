//! The popularity snapshot: what the rendezvous publishes each epoch (or a
//! prior imported from published install statistics), and the
//! conservative popularity that selection uses.
//!
//! # Wire format (little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `"AMPS"` |
//! | 4 | 1 | version, 1 |
//! | 5 | 1 | flags: bit 0 = prior (from install statistics, not reports); other bits 0 |
//! | 6 | 1 | 1 when report parameters follow, else 0 (priors) |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 8 | epoch (u64) |
//! | 16 | 8 | N, peers (reports) counted |
//! | 24 | 32 | peers per level, u64 each, in `Level::wire_byte` order (off, open, balanced, strict); 0 = unknown |
//! | 56 | 8 | `z` (f64): the lower confidence bound is estimate − z·se; finite, > 0 |
//! | 64 | 1 | `h` (0 when no parameters) |
//! | 65 | 3 | reserved, 0 |
//! | 68 | 4 | `m` |
//! | 72 | 12 | `f`, `p`, `q` × 2¹⁶ (u32 each); all of 64..84 zero when no parameters |
//! | 84 | 1 | `L`, length of the source label, ≤ 64 |
//! | 85 | L | source label, UTF-8 (e.g. `popularity reports`, `debian popcon by_inst`) |
//! | 85+L | 4 | `K`, item count, ≤ 2²⁰ |
//! | 89+L | 48·K | per item, keys strictly ascending: ItemKey (32), estimated holders (f64, finite), standard error (f64, finite, ≥ 0) |
//!
//! Nothing may follow. `K` is checked against the bytes present before
//! anything is allocated. Signing is the rendezvous's business: this is
//! the payload it signs.

use std::collections::BTreeMap;

use anonmirror_core::{Epoch, ItemKey};
use anonmirror_privacy::Level;

use crate::err::Error;
use crate::params::{Prob, ReportParams};
use crate::wire::Reader;

const MAGIC: &[u8; 4] = b"AMPS";
const VERSION: u8 = 1;
/// The most items a snapshot may carry (Debian has about 60 000 per
/// architecture; this leaves room for several repositories).
pub const MAX_SNAPSHOT_ITEMS: u32 = 1 << 20;
/// The longest source label.
pub const MAX_SOURCE_LEN: usize = 64;
const ENTRY_LEN: usize = 48;

/// How many peers of each level the rendezvous saw (0 = unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelPeers(pub [u64; 4]);

impl LevelPeers {
    /// Peers at `level`, when known.
    pub fn get(&self, level: Level) -> Option<u64> {
        Some(self.0[usize::from(level.wire_byte())]).filter(|n| *n > 0)
    }
}

/// One item's estimated popularity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Estimated number of peers holding it (debiased; may be slightly
    /// negative or above N from noise).
    pub holders: f64,
    /// Standard error of `holders`, in peers.
    pub se: f64,
}

/// Per-item popularity for one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct PopularitySnapshot {
    /// The epoch the reports were for.
    pub epoch: Epoch,
    /// Imported from install statistics rather than measured from reports:
    /// the audit says so.
    pub prior: bool,
    /// Where the numbers come from, for people.
    pub source: String,
    /// N: peers counted.
    pub peers: u64,
    /// Peers per level.
    pub level_peers: LevelPeers,
    /// The report parameters (none for a prior).
    pub params: Option<ReportParams>,
    /// Standard errors in a lower confidence bound.
    pub z: f64,
    /// Estimates by item.
    pub items: BTreeMap<ItemKey, Estimate>,
}

impl PopularitySnapshot {
    /// The conservative count of holders of `item`: estimate − z·se,
    /// floored at 0; 0 for an item the snapshot does not know.
    pub fn conservative_holders(&self, item: &ItemKey) -> f64 {
        self.items
            .get(item)
            .map(|e| (e.holders - self.z * e.se).max(0.0))
            .unwrap_or(0.0)
    }

    /// The conservative fraction of peers holding `item`, in [0, 1].
    pub fn conservative_fraction(&self, item: &ItemKey) -> f64 {
        if self.peers == 0 {
            return 0.0;
        }
        (self.conservative_holders(item) / self.peers as f64).clamp(0.0, 1.0)
    }

    /// The point estimate of the fraction of peers holding `item`, in
    /// [0, 1] (0 when unknown). Exposure uses this, clamped further.
    pub fn fraction(&self, item: &ItemKey) -> f64 {
        if self.peers == 0 {
            return 0.0;
        }
        self.items
            .get(item)
            .map(|e| (e.holders / self.peers as f64).clamp(0.0, 1.0))
            .unwrap_or(0.0)
    }

    /// The snapshot on the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let source = self.source.as_bytes();
        if source.len() > MAX_SOURCE_LEN {
            return Err(Error::BadParameters(format!(
                "source label longer than {MAX_SOURCE_LEN} bytes"
            )));
        }
        if self.items.len() > MAX_SNAPSHOT_ITEMS as usize {
            return Err(Error::BadParameters(format!(
                "more than {MAX_SNAPSHOT_ITEMS} items"
            )));
        }
        let mut out = Vec::with_capacity(89 + source.len() + ENTRY_LEN * self.items.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(u8::from(self.prior));
        out.push(u8::from(self.params.is_some()));
        out.push(0);
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.peers.to_le_bytes());
        for n in self.level_peers.0 {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.z.to_le_bytes());
        match &self.params {
            Some(p) => {
                out.push(p.h);
                out.extend_from_slice(&[0; 3]);
                out.extend_from_slice(&p.m.to_le_bytes());
                for prob in [p.f, p.p, p.q] {
                    out.extend_from_slice(&prob.raw().to_le_bytes());
                }
            }
            None => out.extend_from_slice(&[0; 20]),
        }
        // Checked above to fit.
        out.push(source.len() as u8);
        out.extend_from_slice(source);
        out.extend_from_slice(&(self.items.len() as u32).to_le_bytes());
        for (key, e) in &self.items {
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&e.holders.to_le_bytes());
            out.extend_from_slice(&e.se.to_le_bytes());
        }
        Ok(out)
    }

    /// Decode a snapshot, refusing anything out of range, unsorted,
    /// truncated or followed by trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<PopularitySnapshot, Error> {
        let mut r = Reader::new("popularity snapshot", bytes);
        r.expect(MAGIC, VERSION)?;
        let flags = r.u8()?;
        if flags > 1 {
            return Err(r.malformed(format!("unknown flags {flags:#04x}")));
        }
        let has_params = r.u8()?;
        if has_params > 1 || r.u8()? != 0 {
            return Err(r.malformed("bad parameter marker or reserved byte"));
        }
        let epoch = Epoch(r.u64()?);
        let peers = r.u64()?;
        let mut level_peers = [0u64; 4];
        for n in &mut level_peers {
            *n = r.u64()?;
        }
        let z = r.f64("z")?;
        if z <= 0.0 {
            return Err(r.malformed("z must be positive"));
        }
        let h = r.u8()?;
        let reserved: [u8; 3] = r.array()?;
        let m = r.u32()?;
        let probs = [r.u32()?, r.u32()?, r.u32()?];
        let params = if has_params == 1 {
            let prob = |raw: u32| {
                Prob::from_raw(raw)
                    .ok_or_else(|| Error::BadParameters(format!("{raw}/65536 exceeds 1")))
            };
            let params = ReportParams {
                m,
                h,
                f: prob(probs[0]).map_err(|e| r.malformed(e.to_string()))?,
                p: prob(probs[1]).map_err(|e| r.malformed(e.to_string()))?,
                q: prob(probs[2]).map_err(|e| r.malformed(e.to_string()))?,
            };
            crate::report::check_shape(&params).map_err(|e| r.malformed(e.to_string()))?;
            if reserved != [0; 3] {
                return Err(r.malformed("reserved bytes are not zero"));
            }
            Some(params)
        } else {
            if h != 0 || reserved != [0; 3] || m != 0 || probs != [0; 3] {
                return Err(r.malformed("parameter fields must be zero without parameters"));
            }
            None
        };
        let len = usize::from(r.u8()?);
        if len > MAX_SOURCE_LEN {
            return Err(r.malformed(format!(
                "source label of {len} bytes exceeds {MAX_SOURCE_LEN}"
            )));
        }
        let source = std::str::from_utf8(r.take(len)?)
            .map_err(|_| r.malformed("source label is not UTF-8"))?
            .to_owned();
        let count = r.u32()?;
        if count > MAX_SNAPSHOT_ITEMS {
            return Err(r.malformed(format!("{count} items exceed {MAX_SNAPSHOT_ITEMS}")));
        }
        let needed = count as usize * ENTRY_LEN;
        if r.remaining() < needed {
            return Err(Error::Truncated {
                what: "popularity snapshot",
                needed: bytes.len() - r.remaining() + needed,
                got: bytes.len(),
            });
        }
        let mut items = BTreeMap::new();
        let mut last: Option<ItemKey> = None;
        for _ in 0..count {
            let key = ItemKey(r.array()?);
            if last.is_some_and(|l| l >= key) {
                return Err(r.malformed("item keys are not strictly ascending"));
            }
            last = Some(key);
            let holders = r.f64("holders")?;
            let se = r.f64("standard error")?;
            if se < 0.0 {
                return Err(r.malformed("negative standard error"));
            }
            items.insert(key, Estimate { holders, se });
        }
        r.finish()?;
        Ok(PopularitySnapshot {
            epoch,
            prior: flags == 1,
            source,
            peers,
            level_peers: LevelPeers(level_peers),
            params,
            z,
            items,
        })
    }
}
