//! How a session's filter bits are kept: the bit arrays of a sliced
//! group transposed into columns ([`Slices`]), and a sliced member's own
//! copy packed as the gaps between its set bits ([`pack`]). See the
//! [`super`] module docs for why.

/// A sparse bit array as the gaps between its set bits (the first from
/// bit 0), each a LEB128 varint: a filter holding a few hundred items in
/// room for thousands takes about a byte per set bit instead of a byte
/// per eight bits. `None` when that is not at most half the array.
pub(super) fn pack(bits: &[u8]) -> Option<Box<[u8]>> {
    let mut out = Vec::new();
    let mut prev = 0usize;
    for p in set_bits(bits) {
        let mut gap = p - prev;
        prev = p;
        loop {
            let b = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        if 2 * out.len() > bits.len() {
            return None;
        }
    }
    Some(out.into_boxed_slice())
}

/// The positions [`pack`] packed, ascending.
pub(super) fn unpack(packed: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut i = 0;
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let mut gap = 0usize;
        let mut shift = 0;
        loop {
            let b = *packed.get(i)?;
            i += 1;
            gap |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        pos += gap;
        Some(pos)
    })
}

/// The set bits of a bit array (bit `p` is bit `p % 8` of byte `p / 8`).
pub(super) fn set_bits(bits: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(|(i, &b)| {
        let mut b = b;
        std::iter::from_fn(move || {
            if b == 0 {
                return None;
            }
            let p = i * 8 + b.trailing_zeros() as usize;
            b &= b - 1;
            Some(p)
        })
    })
}

/// Words of a column ANDed before checking whether any member is left.
const BLOCK_WORDS: usize = 64;

/// A group's filters, transposed: `cols[p * w + i / 64]` holds bit `p` of
/// the filter of member `i` (bit `i % 64`), where `w` is the words per
/// column. Each column is contiguous, so finding an item's holders reads
/// its few columns front to back (the hardware prefetches them) rather
/// than touching one cache line per member.
#[derive(Debug)]
pub(super) struct Slices {
    bits: usize,
    /// Words per column.
    w: usize,
    cols: Vec<u64>,
}

impl Slices {
    pub(super) fn new(bits: usize) -> Slices {
        Slices {
            bits,
            w: 0,
            cols: Vec::new(),
        }
    }

    /// Words per column for `n` members, with an eighth to spare: growth
    /// moves the columns (copies them all) once per eighth more members,
    /// and the spare room costs an eighth more memory.
    fn words_for(n: usize) -> usize {
        (n.div_ceil(64) + n.div_ceil(64 * 8)).max(1)
    }

    /// Makes room for `n` members.
    pub(super) fn reserve(&mut self, n: usize) {
        if n > self.w * 64 {
            self.relayout(Self::words_for(n));
        }
    }

    /// Gives back room when `n` members fill less than half of it (the
    /// bits of members beyond `n` are all clear).
    pub(super) fn shrink(&mut self, n: usize) {
        if 2 * n.div_ceil(64) < self.w && self.w > 1 {
            self.relayout(Self::words_for(n));
        }
    }

    fn relayout(&mut self, w: usize) {
        let keep = self.w.min(w);
        let mut new = vec![0u64; self.bits * w];
        if self.w > 0 {
            for (to, from) in new.chunks_exact_mut(w).zip(self.cols.chunks_exact(self.w)) {
                to[..keep].copy_from_slice(&from[..keep]);
            }
        }
        self.cols = new;
        self.w = w;
    }

    /// Sets or clears, for member `i`, the bits at `positions`.
    pub(super) fn apply(&mut self, i: usize, positions: impl Iterator<Item = usize>, on: bool) {
        let w = self.w;
        let bit = 1u64 << (i % 64);
        for p in positions.take_while(|p| *p < self.bits) {
            if let Some(word) = self.cols.get_mut(p * w + i / 64) {
                if on {
                    *word |= bit;
                } else {
                    *word &= !bit;
                }
            }
        }
    }

    /// Appends, for each 64 members whose filters have every bit of
    /// `positions` set, a [`Hit`] for `group`; returns how many members.
    pub(super) fn holders(
        &self,
        members: usize,
        positions: &[u32],
        group: u32,
        hits: &mut Vec<Hit>,
    ) -> u64 {
        let mut total = 0;
        let n = members.div_ceil(64).min(self.w);
        let w = self.w;
        let cols: Vec<&[u64]> = positions
            .iter()
            .filter_map(|&p| self.cols.get(p as usize * w..p as usize * w + n))
            .collect();
        if cols.len() != positions.len() || cols.is_empty() {
            return 0;
        }
        let mut acc = [0u64; BLOCK_WORDS];
        let mut start = 0;
        while start < n {
            let len = BLOCK_WORDS.min(n - start);
            let acc = &mut acc[..len];
            acc.copy_from_slice(&cols[0][start..start + len]);
            for col in &cols[1..] {
                let mut any = 0;
                for (a, x) in acc.iter_mut().zip(&col[start..start + len]) {
                    *a &= x;
                    any |= *a;
                }
                if any == 0 {
                    break;
                }
            }
            for (k, &word) in acc.iter().enumerate() {
                if word != 0 {
                    total += u64::from(word.count_ones());
                    hits.push(Hit {
                        group,
                        base: ((start + k) * 64) as u32,
                        word,
                    });
                }
            }
            start += len;
        }
        total
    }
}

/// 64 members of a group, some of which hold the item looked up.
#[derive(Clone, Copy, Debug)]
pub(super) struct Hit {
    pub(super) group: u32,
    /// The member index of the word's bit 0.
    pub(super) base: u32,
    pub(super) word: u64,
}
