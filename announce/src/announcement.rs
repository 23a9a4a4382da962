//! Serving announcements: which items a peer offers, as a Bloom filter of
//! fixed size and fixed item count per level and epoch.
//!
//! # Layout per level and epoch
//!
//! Every peer of a level derives the same layout from the same canonical
//! set and index, so filters differ only by content, and at `strict` not
//! even by that:
//!
//! | level | items announced (fixed count) | filter size |
//! | --- | --- | --- |
//! | `strict` | the whole canonical set: padding with what it does not hold (fetched on demand) | 8 bits per canonical item |
//! | `balanced` | ⌈Σ p̂ over the canonical set⌉, the count a typical peer holds: held canonical items first (the most popular if it holds more), padded with the most popular canonical items it does not hold | 8 bits per announced item |
//! | `open` | everything held in the current index: no fixed count (open reveals its holdings by design) | 8 bits per current item |
//!
//! Sizes are rounded up to a multiple of 64 bits, at least 64, at most
//! [`MAX_ANNOUNCEMENT_BITS`]; `h` = 6 positions per item (about 2 % false
//! positives at 8 bits per item; a false positive costs a client one
//! `NotFound`). Positions are epoch-keyed ([`crate::hash`]), so filters of
//! different epochs cannot be compared.
//!
//! # Wire format (little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `"AMAN"` |
//! | 4 | 1 | version, 1 |
//! | 5 | 1 | level (`Level::wire_byte`: 1 open, 2 balanced, 3 strict; `off` never announces) |
//! | 6 | 1 | `h`, 1..=16 |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 8 | epoch (u64) |
//! | 16 | 4 | item count (u32, ≤ m) |
//! | 20 | 4 | `m`, bits: a multiple of 64, 64 ≤ m ≤ 2¹⁹ |
//! | 24 | m/8 | the bits; bit `i` is bit `i % 8` of byte `i / 8` |
//!
//! Nothing may follow; at most 24 + 65 536 bytes, one overlay frame's
//! worth of payload or so.
//!
//! # Why not `probabilistic-collections`
//!
//! Evaluated for this filter and for the report's counting array. Its
//! `BloomFilter` hashes through std `Hash` with a `BuildHasher`; std
//! `Hash` writes lengths as `usize`, so a 32-bit and a 64-bit peer would
//! set different bits for the same item, and its default hasher is
//! randomly keyed per instance, so two peers' filters would not even agree
//! with themselves. A wire format needs positions that are the same bytes
//! everywhere and keyed by the epoch, which a dozen lines of BLAKE3 give
//! ([`crate::hash`]). It has no counting Bloom filter (its
//! `CountMinSketch` counts with its own hashing and cannot sum
//! independently built reports), and the sum here is a `Vec<u32>`. What is
//! left of it — a bit vector — is smaller to write than to wrap, so it is
//! not a dependency.

use std::collections::BTreeSet;

use anonmirror_core::{Epoch, ItemKey};
use anonmirror_privacy::Level;

use crate::err::Error;
use crate::hash::{EpochHasher, Purpose};
use crate::wire::{Reader, get_bit, set_bit};

const MAGIC: &[u8; 4] = b"AMAN";
const VERSION: u8 = 1;
/// Bytes before the bits.
pub const ANNOUNCEMENT_HEADER_LEN: usize = 24;
/// The largest filter: 2¹⁹ bits (64 KiB).
pub const MAX_ANNOUNCEMENT_BITS: u32 = 1 << 19;
/// Positions per announced item.
pub const ANNOUNCEMENT_HASHES: u8 = 6;
/// Filter bits per item of the level's capacity.
pub const BITS_PER_ITEM: u32 = 8;

/// The size of a level's filters in one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bits.
    pub m: u32,
    /// Positions per item.
    pub h: u8,
    /// Items every peer of the level announces (`None` at `open`).
    pub count: Option<u32>,
}

impl Layout {
    /// The layout for `capacity` items.
    pub fn for_capacity(capacity: usize, count: Option<u32>) -> Layout {
        let bits = (capacity as u64)
            .saturating_mul(u64::from(BITS_PER_ITEM))
            .div_ceil(64)
            .saturating_mul(64)
            .clamp(64, u64::from(MAX_ANNOUNCEMENT_BITS));
        Layout {
            // Clamped to MAX_ANNOUNCEMENT_BITS, so it fits.
            m: bits as u32,
            h: ANNOUNCEMENT_HASHES,
            count,
        }
    }
}

/// A peer's serving announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The level it announces at.
    pub level: Level,
    /// The epoch of its positions.
    pub epoch: Epoch,
    /// Positions per item.
    pub h: u8,
    /// Items put in.
    pub count: u32,
    /// Bits in the filter.
    pub m: u32,
    /// The filter.
    pub bits: Vec<u8>,
}

impl Announcement {
    /// The filter of `items` under `layout`.
    pub fn build(
        level: Level,
        epoch: Epoch,
        layout: Layout,
        items: &BTreeSet<ItemKey>,
    ) -> Announcement {
        let hasher = EpochHasher::new(Purpose::Announcement, epoch);
        let mut bits = vec![0u8; layout.m as usize / 8];
        let mut pos = Vec::with_capacity(usize::from(layout.h));
        for item in items {
            pos.clear();
            hasher.positions_into(item, layout.h, layout.m, &mut pos);
            for &p in &pos {
                set_bit(&mut bits, p as usize);
            }
        }
        Announcement {
            level,
            epoch,
            h: layout.h,
            // Sets are far below u32::MAX items (the filter is capped).
            count: u32::try_from(items.len()).unwrap_or(u32::MAX),
            m: layout.m,
            bits,
        }
    }

    /// Whether the filter may contain `item` (false positives happen).
    pub fn may_contain(&self, item: &ItemKey) -> bool {
        let hasher = EpochHasher::new(Purpose::Announcement, self.epoch);
        hasher
            .positions(item, self.h, self.m)
            .iter()
            .all(|&p| get_bit(&self.bits, p as usize))
    }

    /// The announcement on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANNOUNCEMENT_HEADER_LEN + self.bits.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.level.wire_byte());
        out.push(self.h);
        out.push(0);
        out.extend_from_slice(&self.epoch.0.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.bits);
        out
    }

    /// Decode an announcement, refusing anything out of range, truncated
    /// or followed by trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Announcement, Error> {
        let mut r = Reader::new("announcement", bytes);
        r.expect(MAGIC, VERSION)?;
        let level = match r.u8()? {
            1 => Level::Open,
            2 => Level::Balanced,
            3 => Level::Strict,
            other => return Err(r.malformed(format!("level byte {other} does not announce"))),
        };
        let h = r.u8()?;
        if !(1..=16).contains(&h) {
            return Err(r.malformed(format!("h = {h} is not in 1..=16")));
        }
        if r.u8()? != 0 {
            return Err(r.malformed("reserved byte is not zero"));
        }
        let epoch = Epoch(r.u64()?);
        let count = r.u32()?;
        let m = r.u32()?;
        if m < 64 || !m.is_multiple_of(64) || m > MAX_ANNOUNCEMENT_BITS {
            return Err(r.malformed(format!(
                "m = {m} is not a multiple of 64 in 64..={MAX_ANNOUNCEMENT_BITS}"
            )));
        }
        if count > m {
            return Err(r.malformed(format!("{count} items cannot fit {m} bits")));
        }
        let bits = r.take(m as usize / 8)?.to_vec();
        r.finish()?;
        Ok(Announcement {
            level,
            epoch,
            h,
            count,
            m,
            bits,
        })
    }
}
