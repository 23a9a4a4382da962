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
//! | 20 | 4 | `m`, bits: a multiple of 64, 64 ≤ m ≤ 491 520 (60 KiB) |
//! | 24 | m/8 | the bits; bit `i` is bit `i % 8` of byte `i / 8` |
//!
//! Nothing may follow; at most 24 + 61 440 bytes, so that it fits one
//! Noise message with the rest of a session's opening.
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
use crate::hash::{EpochHasher, MAX_HASHES, Purpose};
use crate::wire::{Reader, get_bit, set_bit};

const MAGIC: &[u8; 4] = b"AMAN";
const VERSION: u8 = 1;
/// Bytes before the bits.
pub const ANNOUNCEMENT_HEADER_LEN: usize = 24;
/// The largest filter: 60 KiB of bits, so that a session's opening
/// message (the filter and some 2 KiB more) fits one Noise message
/// (65,519 bytes). At 8 bits per item that is 61,440 items, about Debian's
/// main for one architecture; a larger set gets fewer bits per item (more
/// false positives), never a filter the rendezvous refuses.
pub const MAX_ANNOUNCEMENT_BITS: u32 = 60 * 1024 * 8;
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
        let head = AnnouncementHeader::parse(bytes)?;
        Ok(Announcement {
            level: head.level,
            epoch: head.epoch,
            h: head.h,
            count: head.count,
            m: head.m,
            bits: bytes[ANNOUNCEMENT_HEADER_LEN..].to_vec(),
        })
    }
}

/// An announcement's header, checked as [`Announcement::from_bytes`]
/// checks it (the bits' length included) but without copying the bits:
/// a rendezvous parses each session's filter once, at session open, and
/// then tests items straight against the bytes it keeps anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnouncementHeader {
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
}

impl AnnouncementHeader {
    /// Parses and checks a whole encoded announcement; the bits are the
    /// `m / 8` bytes from [`ANNOUNCEMENT_HEADER_LEN`] on.
    pub fn parse(bytes: &[u8]) -> Result<AnnouncementHeader, Error> {
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
        r.take(m as usize / 8)?;
        r.finish()?;
        Ok(AnnouncementHeader {
            level,
            epoch,
            h,
            count,
            m,
        })
    }

    /// Whether the announcement `bytes` (the encoding this header was
    /// parsed from) may contain the item hashed into `item`; false for an
    /// item hashed under another epoch (its positions mean nothing here).
    pub fn may_contain(&self, bytes: &[u8], item: &ItemHashes) -> bool {
        item.epoch == self.epoch
            && (0..usize::from(self.h)).all(|k| self.position_set(bytes, item, k))
    }

    /// Whether position `k` of `item` is set in `bytes` (true for `k ≥ h`:
    /// there is no such position to fail). Tests of many filters can go
    /// position by position ([`may_contain_many`]); the epoch is the
    /// caller's to check.
    pub fn position_set(&self, bytes: &[u8], item: &ItemHashes, k: usize) -> bool {
        if k >= usize::from(self.h) {
            return true;
        }
        let Some(w) = item.words.get(k) else {
            return true;
        };
        // Below m ≤ 2¹⁹, so it fits.
        let p = (w % u64::from(self.m.max(1))) as usize;
        bytes
            .get(ANNOUNCEMENT_HEADER_LEN + p / 8)
            .is_some_and(|b| b & (1 << (p % 8)) != 0)
    }
}

/// Tests `item` against many announcements at once, each given as its
/// header and encoding; `out[i]` is [`AnnouncementHeader::may_contain`] of
/// `filters[i]`.
///
/// Position `k` of every filter still in the running is read before
/// position `k + 1` of any: the reads of one round are independent, so
/// their cache misses overlap instead of queueing, and most filters drop
/// out at their first clear position. This is what makes a lookup that
/// tests hundreds of filters spread over a large table cheap.
pub fn may_contain_many(
    item: &ItemHashes,
    filters: &[(AnnouncementHeader, &[u8])],
    out: &mut [bool],
) {
    let mut running = false;
    for (o, (head, _)) in out.iter_mut().zip(filters) {
        *o = head.epoch == item.epoch;
        running |= *o;
    }
    for k in 0..usize::from(MAX_HASHES) {
        if !running {
            return;
        }
        running = false;
        for (o, (head, bytes)) in out.iter_mut().zip(filters) {
            if *o {
                *o = head.position_set(bytes, item, k);
                running |= *o;
            }
        }
    }
}

/// An item's announcement positions for one epoch before they are reduced
/// to a filter's size: hashed once, tested against every filter of that
/// epoch ([`AnnouncementHeader::may_contain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemHashes {
    epoch: Epoch,
    words: [u64; MAX_HASHES as usize],
}

impl ItemHashes {
    /// Hashes `item` for announcements of `epoch`.
    pub fn new(item: &ItemKey, epoch: Epoch) -> ItemHashes {
        ItemHashes::with_hasher(&EpochHasher::new(Purpose::Announcement, epoch), item, epoch)
    }

    /// As [`ItemHashes::new`] with the epoch's hasher already derived
    /// (`hasher` must be `EpochHasher::new(Purpose::Announcement, epoch)`).
    pub fn with_hasher(hasher: &EpochHasher, item: &ItemKey, epoch: Epoch) -> ItemHashes {
        ItemHashes {
            epoch,
            words: hasher.words(item),
        }
    }

    /// The epoch hashed for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The words (position `k` in `m` bits is `words[k] % m`), for a
    /// caller that must carry them through a type of its own.
    pub fn words(&self) -> &[u64; MAX_HASHES as usize] {
        &self.words
    }

    /// Rebuilds the value [`ItemHashes::words`] gave for `epoch`.
    pub fn from_words(epoch: Epoch, words: [u64; MAX_HASHES as usize]) -> ItemHashes {
        ItemHashes { epoch, words }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> ItemKey {
        ItemKey(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    #[test]
    fn the_header_view_agrees_with_the_decoded_filter() {
        let held: BTreeSet<ItemKey> = (0..200).map(key).collect();
        for (h_cap, epoch) in [(64, Epoch(3)), (1000, Epoch(4))] {
            let a = Announcement::build(
                Level::Strict,
                epoch,
                Layout::for_capacity(h_cap, Some(200)),
                &held,
            );
            let bytes = a.to_bytes();
            let head = AnnouncementHeader::parse(&bytes).expect("parses");
            assert_eq!(
                (head.level, head.epoch, head.h, head.count, head.m),
                (a.level, a.epoch, a.h, a.count, a.m)
            );
            for i in 0..2000 {
                let k = key(i);
                let probe = ItemHashes::new(&k, epoch);
                assert_eq!(head.may_contain(&bytes, &probe), a.may_contain(&k), "{i}");
                let other = ItemHashes::new(&k, Epoch(epoch.0 + 1));
                assert!(!head.may_contain(&bytes, &other), "another epoch");
            }
            let many: Vec<(AnnouncementHeader, &[u8])> = vec![(head, &bytes[..]); 3];
            for i in 0..200 {
                let probe = ItemHashes::new(&key(i), epoch);
                let mut out = [false; 3];
                may_contain_many(&probe, &many, &mut out);
                assert_eq!(out, [head.may_contain(&bytes, &probe); 3]);
            }
            assert!(AnnouncementHeader::parse(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(AnnouncementHeader::parse(&longer).is_err());
        }
    }
}
