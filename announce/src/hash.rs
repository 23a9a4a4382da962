//! Epoch-keyed bit positions, the same bytes on every platform.
//!
//! Position `k` (0-based) of item `key` in a structure of `m` bits, for
//! epoch `e` and a purpose (popularity report or serving announcement):
//!
//! 1. `epoch_key = BLAKE3-derive_key(context, e as u64 little-endian)`,
//!    where `context` is `"anonmirror popularity report positions v1"` or
//!    `"anonmirror announcement positions v1"`;
//! 2. `stream = BLAKE3-keyed(epoch_key, key's 32 bytes)` read in XOF mode;
//! 3. position `k` = (bytes `8k..8k+8` of `stream` as a little-endian
//!    `u64`) mod `m`.
//!
//! Nothing goes through std `Hash` (which writes `usize` lengths, so 32-
//! and 64-bit peers would disagree) or any per-process random key, so
//! every peer and the rendezvous compute the same positions. The modulo
//! bias is below 2⁻⁴⁰ for any `m` this crate allows. Keys differ per
//! epoch so that filters and reports of different epochs cannot be
//! compared bit by bit, and so that an unlucky collision between two
//! items lasts one epoch only.

use anonmirror_core::{Epoch, ItemKey};

/// The most positions per item any structure of this crate uses (reports
/// and announcements both cap `h` at 16).
pub const MAX_HASHES: u8 = 16;

/// What the positions are for: each purpose has its own key derivation, so
/// a report and an announcement never share positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Popularity reports.
    Report,
    /// Serving announcements.
    Announcement,
}

impl Purpose {
    fn context(self) -> &'static str {
        match self {
            Purpose::Report => "anonmirror popularity report positions v1",
            Purpose::Announcement => "anonmirror announcement positions v1",
        }
    }
}

/// Computes the epoch-keyed positions of items for one purpose and epoch.
#[derive(Clone)]
pub struct EpochHasher {
    key: [u8; 32],
}

impl EpochHasher {
    /// The hasher of `purpose` in `epoch`.
    pub fn new(purpose: Purpose, epoch: Epoch) -> EpochHasher {
        EpochHasher {
            key: blake3::derive_key(purpose.context(), &epoch.0.to_le_bytes()),
        }
    }

    /// The `h` positions of `item` in `m` bits (`m > 0`), in order; they
    /// may repeat, as in any Bloom filter.
    pub fn positions(&self, item: &ItemKey, h: u8, m: u32) -> Vec<u32> {
        let mut out = Vec::with_capacity(usize::from(h));
        self.positions_into(item, h, m, &mut out);
        out
    }

    /// As [`EpochHasher::positions`], appending to `out` (no allocation in
    /// hot loops).
    pub fn positions_into(&self, item: &ItemKey, h: u8, m: u32, out: &mut Vec<u32>) {
        let m = u64::from(m.max(1));
        if h <= MAX_HASHES {
            for w in &self.words(item)[..usize::from(h)] {
                // The remainder is below m, which fits in u32.
                out.push((w % m) as u32);
            }
            return;
        }
        // No structure here uses more, but the stream has no end.
        let mut reader = blake3::Hasher::new_keyed(&self.key)
            .update(item.as_bytes())
            .finalize_xof();
        for _ in 0..h {
            let mut word = [0u8; 8];
            reader.fill(&mut word);
            out.push((u64::from_le_bytes(word) % m) as u32);
        }
    }

    /// The first [`MAX_HASHES`] words of `item`'s stream (step 2 of the
    /// module doc, before the modulo): position `k` in any `m` bits is
    /// `words[k] % m`. Computed once, they test the item against any number
    /// of structures of this epoch and purpose without hashing again.
    pub fn words(&self, item: &ItemKey) -> [u64; MAX_HASHES as usize] {
        let mut reader = blake3::Hasher::new_keyed(&self.key)
            .update(item.as_bytes())
            .finalize_xof();
        let mut bytes = [0u8; 8 * MAX_HASHES as usize];
        reader.fill(&mut bytes);
        let mut out = [0u64; MAX_HASHES as usize];
        for (w, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(b);
            *w = u64::from_le_bytes(word);
        }
        out
    }

    /// A 64-bit epoch-keyed rank of `item`, for orders that must be the
    /// same for every peer yet differ between epochs (tie-breaking).
    pub fn rank(&self, item: &ItemKey) -> u64 {
        let mut word = [0u8; 8];
        blake3::Hasher::new_keyed(&self.key)
            .update(b"rank")
            .update(item.as_bytes())
            .finalize_xof()
            .fill(&mut word);
        u64::from_le_bytes(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ItemKey {
        ItemKey([byte; 32])
    }

    /// Fixed vectors: any change to the derivation (context, byte order,
    /// modulo) breaks every peer's compatibility and must fail here.
    #[test]
    fn known_answer_positions() {
        let report = EpochHasher::new(Purpose::Report, Epoch(20_000));
        let ann = EpochHasher::new(Purpose::Announcement, Epoch(20_000));
        let sha_of_abc: ItemKey =
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                .parse()
                .expect("hex");
        let got = [
            report.positions(&key(0), 4, 1 << 18),
            report.positions(&key(0xff), 4, 1 << 18),
            report.positions(&sha_of_abc, 4, 1 << 18),
            ann.positions(&sha_of_abc, 4, 4096),
            EpochHasher::new(Purpose::Report, Epoch(20_001)).positions(&sha_of_abc, 4, 1 << 18),
        ];
        assert_eq!(got, VECTORS);
    }

    const VECTORS: [[u32; 4]; 5] = [
        [108_766, 1_823, 154_649, 235_996],
        [81_428, 219_165, 86_263, 182_234],
        [130_773, 32_758, 54_222, 36_334],
        [1_239, 2_822, 1_998, 3_390],
        [139_121, 112_539, 154_704, 167_979],
    ];

    #[test]
    fn positions_differ_by_epoch_and_purpose_and_stay_in_range() {
        let a = EpochHasher::new(Purpose::Report, Epoch(1));
        let b = EpochHasher::new(Purpose::Report, Epoch(2));
        let c = EpochHasher::new(Purpose::Announcement, Epoch(1));
        let k = key(7);
        assert_ne!(a.positions(&k, 8, 1 << 20), b.positions(&k, 8, 1 << 20));
        assert_ne!(a.positions(&k, 8, 1 << 20), c.positions(&k, 8, 1 << 20));
        assert!(a.positions(&k, 16, 64).iter().all(|p| *p < 64));
        assert_ne!(a.rank(&k), b.rank(&k));
    }
}
