//! Chunk-group verification against a bao outboard, with no I/O.
//!
//! A serving peer sends an item's BLAKE3 root and its bao outboard: the
//! (left, right) chaining-value pairs of every parent node above the 16 KiB
//! chunk-group level, in pre-order, without a size prefix (the layout
//! `bao_tree::io::outboard::PreOrderOutboard` writes). With them, a
//! downloader checks each 16 KiB chunk group the moment it arrives, from any
//! peer:
//!
//! - [`Tree::new`] first checks that every parent pair merges to the
//!   chaining value expected from above, starting with the root — if not,
//!   the *outboard* is inconsistent, and its sender is to blame;
//! - [`Tree::verify_group`] then checks a group's own chaining value against
//!   the one its parent names — if not, the *data* is wrong, and the peer
//!   that sent it is to blame (provisionally: an outboard that is
//!   self-consistent but describes other content makes honest data fail
//!   too, which only the index's SHA-256 at the end can tell; see the swarm
//!   download).
//!
//! The tree shape is BLAKE3's: a node over `len` bytes, when `len` exceeds
//! one chunk group, has a left child over the largest power-of-two number of
//! 1 KiB chunks that leaves at least one byte to the right.
//!
//! This module must never accept a group it has not hashed.

use anonmirror_core::ItemKey;
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

/// Bytes in a chunk group: 16 BLAKE3 chunks of 1 KiB.
pub const GROUP_SIZE: u64 = 16 * 1024;

const CHUNK: u64 = 1024;

/// Bytes in one outboard entry: a (left, right) pair of chaining values.
const PAIR: usize = 64;

/// Number of chunk groups of an item of `size` bytes (an empty item has one,
/// empty, group).
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_SIZE).max(1)
}

/// The outboard length an item of `size` bytes must have.
pub fn outboard_len(size: u64) -> u64 {
    (group_count(size) - 1) * PAIR as u64
}

/// A verified description of an item's tree: root, size and outboard.
#[derive(Clone, Debug)]
pub struct Tree {
    size: u64,
    root: [u8; 32],
    outboard: Vec<u8>,
}

/// Why a tree could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The outboard's length does not fit the size.
    #[error("outboard of {got} bytes for an item of {size} bytes (expected {expected})")]
    OutboardLength {
        /// The item's size.
        size: u64,
        /// Bytes expected.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// The outboard's parent pairs do not hash up to the root.
    #[error("outboard does not hash to the root")]
    Inconsistent,
}

/// The BLAKE3 root of `data` as one item: what [`Tree::root`] must equal.
pub fn root_of(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn left_len(len: u64) -> u64 {
    // The largest power-of-two number of chunks strictly below `len` bytes'
    // chunk count, i.e. leaving at least one byte to the right.
    let chunks = (len - 1) / CHUNK;
    CHUNK << (63 - chunks.leading_zeros())
}

impl Tree {
    /// Check the outboard's length and that all of its pairs hash up to
    /// `root`. After this, a failed group check can only blame the data.
    pub fn new(size: u64, root: [u8; 32], outboard: Vec<u8>) -> Result<Tree, TreeError> {
        let expected = outboard_len(size);
        if outboard.len() as u64 != expected {
            return Err(TreeError::OutboardLength {
                size,
                expected,
                got: outboard.len() as u64,
            });
        }
        let tree = Tree {
            size,
            root,
            outboard,
        };
        if size > GROUP_SIZE {
            tree.check_node(size, 0, true, root)?;
        }
        Ok(tree)
    }

    /// The item's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The BLAKE3 root.
    pub fn root(&self) -> [u8; 32] {
        self.root
    }

    /// The outboard bytes.
    pub fn outboard(&self) -> &[u8] {
        &self.outboard
    }

    /// Number of chunk groups.
    pub fn groups(&self) -> u64 {
        group_count(self.size)
    }

    /// The byte range of chunk group `index`.
    pub fn group_range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * GROUP_SIZE;
        start.min(self.size)..(start + GROUP_SIZE).min(self.size)
    }

    fn pair(&self, preorder: u64) -> ([u8; 32], [u8; 32]) {
        let at = preorder as usize * PAIR;
        let mut l = [0u8; 32];
        let mut r = [0u8; 32];
        l.copy_from_slice(&self.outboard[at..at + 32]);
        r.copy_from_slice(&self.outboard[at + 32..at + PAIR]);
        (l, r)
    }

    fn merge(l: &ChainingValue, r: &ChainingValue, is_root: bool) -> [u8; 32] {
        if is_root {
            *merge_subtrees_root(l, r, Mode::Hash).as_bytes()
        } else {
            merge_subtrees_non_root(l, r, Mode::Hash)
        }
    }

    /// Recursively check the subtree over `len` bytes whose
    /// pre-order index is `preorder`.
    fn check_node(
        &self,
        len: u64,
        preorder: u64,
        is_root: bool,
        expected: [u8; 32],
    ) -> Result<(), TreeError> {
        let (l, r) = self.pair(preorder);
        if Self::merge(&l, &r, is_root) != expected {
            return Err(TreeError::Inconsistent);
        }
        let left = left_len(len);
        if left > GROUP_SIZE {
            self.check_node(left, preorder + 1, false, l)?;
        }
        if len - left > GROUP_SIZE {
            let left_parents = left.div_ceil(GROUP_SIZE) - 1;
            self.check_node(len - left, preorder + 1 + left_parents, false, r)?;
        }
        Ok(())
    }

    /// Whether `data` is chunk group `index` (its byte range:
    /// [`Tree::group_range`]) of the item this tree describes.
    pub fn verify_group(&self, index: u64, data: &[u8]) -> bool {
        let range = self.group_range(index);
        if index >= self.groups() || data.len() as u64 != range.end - range.start {
            return false;
        }
        if self.size <= GROUP_SIZE {
            return root_of(data) == self.root;
        }
        // Walk down from the root to the group's parent; the pairs on the
        // way were checked by `new`.
        let (mut start, mut len, mut preorder) = (0u64, self.size, 0u64);
        let mut expected = self.root;
        while len > GROUP_SIZE {
            let (l, r) = self.pair(preorder);
            let left = left_len(len);
            if range.start < start + left {
                expected = l;
                len = left;
                preorder += 1;
            } else {
                expected = r;
                preorder += 1 + (left.div_ceil(GROUP_SIZE) - 1);
                start += left;
                len -= left;
            }
        }
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(start);
        hasher.update(data);
        hasher.finalize_non_root() == expected
    }
}

/// Hashes an item as its bytes pass, in order, without keeping them: its
/// SHA-256 (the item key) and its tree (BLAKE3 root and bao outboard), in
/// one pass. What an upstream download uses to prove, like a swarm
/// download, that the bytes it wrote are the item
/// ([`ItemHasher::finish`]).
pub struct ItemHasher {
    size: u64,
    sha: ring::digest::Context,
    /// The chunk group being hashed.
    group: blake3::Hasher,
    /// Bytes seen so far.
    seen: u64,
    /// Chaining values of the finished groups (items over one group).
    cvs: Vec<ChainingValue>,
}

impl std::fmt::Debug for ItemHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemHasher")
            .field("size", &self.size)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl ItemHasher {
    /// For an item of `size` bytes.
    pub fn new(size: u64) -> ItemHasher {
        ItemHasher {
            size,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            group: blake3::Hasher::new(),
            seen: 0,
            cvs: Vec::with_capacity(if size > GROUP_SIZE {
                usize::try_from(group_count(size)).unwrap_or(0)
            } else {
                0
            }),
        }
    }

    /// The next bytes. Bytes past the size are counted (and make
    /// [`finish`](Self::finish) fail), not hashed.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.seen >= self.size {
                self.seen = self.seen.saturating_add(data.len() as u64);
                return;
            }
            let in_group = self.seen % GROUP_SIZE;
            let room = (GROUP_SIZE - in_group).min(self.size - self.seen);
            let take = (data.len() as u64).min(room) as usize;
            self.sha.update(&data[..take]);
            self.group.update(&data[..take]);
            self.seen += take as u64;
            data = &data[take..];
            let group_done = self.seen.is_multiple_of(GROUP_SIZE) || self.seen == self.size;
            if group_done && self.size > GROUP_SIZE {
                self.cvs.push(self.group.finalize_non_root());
                self.group = blake3::Hasher::new();
                if self.seen < self.size {
                    self.group.set_input_offset(self.seen);
                }
            }
        }
    }

    /// The size of the item it hashes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The proof that the bytes seen were the item `key`: exactly the
    /// size, and their SHA-256 is the key. `None` if not.
    pub fn finish(self, key: ItemKey) -> Option<Verified> {
        if self.seen != self.size || self.sha.finish().as_ref() != key.0 {
            return None;
        }
        let (root, outboard) = if self.size <= GROUP_SIZE {
            (*self.group.finalize().as_bytes(), Vec::new())
        } else {
            let mut outboard = Vec::with_capacity(outboard_len(self.size) as usize);
            let root = build(&self.cvs, self.size, true, &mut outboard);
            (root, outboard)
        };
        Some(Verified {
            key,
            tree: Tree {
                size: self.size,
                root,
                outboard,
            },
        })
    }
}

/// Proof that bytes were exactly the item: every chunk group matched the
/// tree and the whole matched the item key (the index's SHA-256). The
/// swarm download makes one when it delivered an item ([`Verified::matching`]),
/// [`ItemHasher::finish`] when it hashed one; the store takes it to keep
/// those bytes without hashing them a second time
/// ([`Store::import_verified`](crate::Store::import_verified)).
#[derive(Clone, Debug)]
pub struct Verified {
    pub(crate) key: ItemKey,
    pub(crate) tree: Tree,
}

impl Verified {
    /// The proof for bytes whose every chunk group was checked against
    /// `tree` and whose whole SHA-256 is `sha256`: `None` unless that is the
    /// item key. The caller vouches for the chunk-group checks (the swarm
    /// download makes them as the bytes arrive); this checks the rest.
    pub fn matching(key: ItemKey, tree: Tree, sha256: &[u8]) -> Option<Verified> {
        (sha256 == key.as_bytes()).then_some(Verified { key, tree })
    }

    /// The item.
    pub fn key(&self) -> ItemKey {
        self.key
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }
}

/// The node over the `len` bytes whose groups' chaining values are `cvs`,
/// its parent pairs appended to `outboard` in pre-order.
fn build(cvs: &[ChainingValue], len: u64, is_root: bool, outboard: &mut Vec<u8>) -> [u8; 32] {
    if len <= GROUP_SIZE {
        return cvs[0];
    }
    let at = outboard.len();
    outboard.extend_from_slice(&[0u8; PAIR]);
    let left = left_len(len);
    let split = (left / GROUP_SIZE) as usize;
    let l = build(&cvs[..split], left, false, outboard);
    let r = build(&cvs[split..], len - left, false, outboard);
    outboard[at..at + 32].copy_from_slice(&l);
    outboard[at + 32..at + PAIR].copy_from_slice(&r);
    Tree::merge(&l, &r, is_root)
}

#[cfg(test)]
mod tests {
    use anonmirror_core::{Entropy, SeededEntropy};
    use bao_tree::io::outboard::PreOrderOutboard;
    use bao_tree::io::sync::CreateOutboard;

    use super::*;
    use crate::store::BLOCK_SIZE;

    fn bao(data: &[u8]) -> (u64, [u8; 32], Vec<u8>) {
        let ob = PreOrderOutboard::<Vec<u8>>::create_sized(data, data.len() as u64, BLOCK_SIZE)
            .expect("outboard");
        (data.len() as u64, ob.root.into(), ob.data)
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut d = vec![0u8; len];
        SeededEntropy::new(seed).fill(&mut d);
        d
    }

    /// Sizes around every boundary the tree shape changes at.
    const SIZES: &[usize] = &[
        0, 1, 1024, 16_383, 16_384, 16_385, 32_768, 32_769, 49_152, 65_537, 200_000, 1_048_576,
        1_048_577, 3_000_001,
    ];

    #[test]
    fn matches_bao_tree_layout_for_every_shape() {
        for &len in SIZES {
            let d = data(len, len as u64);
            let (size, root, ob) = bao(&d);
            assert_eq!(root, root_of(&d), "size {len}");
            assert_eq!(ob.len() as u64, outboard_len(size), "size {len}");
            let tree = Tree::new(size, root, ob).expect("consistent");
            for g in 0..tree.groups() {
                let r = tree.group_range(g);
                assert!(
                    tree.verify_group(g, &d[r.start as usize..r.end as usize]),
                    "size {len} group {g}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_any_group_is_caught_as_data() {
        for &len in &[16_385usize, 200_000, 1_048_577] {
            let mut d = data(len, 9);
            let (size, root, ob) = bao(&d);
            let tree = Tree::new(size, root, ob).expect("consistent");
            for g in 0..tree.groups() {
                let r = tree.group_range(g);
                let at = (r.start + (r.end - r.start) / 2) as usize;
                d[at] ^= 0x40;
                assert!(!tree.verify_group(g, &d[r.start as usize..r.end as usize]));
                d[at] ^= 0x40;
            }
            // A group given at the wrong index, or cut short, fails too.
            assert!(!tree.verify_group(1, &d[..GROUP_SIZE as usize]));
            assert!(!tree.verify_group(0, &d[..100]));
            assert!(!tree.verify_group(tree.groups(), &[]));
        }
    }

    #[test]
    fn inconsistent_or_misfit_outboards_are_refused() {
        let d = data(300_000, 3);
        let (size, root, ob) = bao(&d);
        for at in [0usize, 31, 32, 64 * 5 + 7, ob.len() - 1] {
            let mut bad = ob.clone();
            bad[at] ^= 1;
            assert_eq!(
                Tree::new(size, root, bad).expect_err("bad"),
                TreeError::Inconsistent,
                "byte {at}"
            );
        }
        let mut short = ob.clone();
        short.pop();
        assert!(matches!(
            Tree::new(size, root, short),
            Err(TreeError::OutboardLength { .. })
        ));
        let mut wrong_root = root;
        wrong_root[0] ^= 1;
        assert_eq!(
            Tree::new(size, wrong_root, ob).expect_err("root"),
            TreeError::Inconsistent
        );
    }

    #[test]
    fn a_self_consistent_outboard_of_other_content_blames_the_data() {
        // What a lying meta sender can do: a valid tree for other bytes.
        // Every honest group then fails as Data; only the SHA-256 at the end
        // tells the outboard was the liar.
        let honest = data(100_000, 5);
        let other = data(100_000, 6);
        let (size, root, ob) = bao(&other);
        let tree = Tree::new(size, root, ob).expect("self-consistent");
        assert!(!tree.verify_group(0, &honest[..GROUP_SIZE as usize]));
    }

    #[test]
    fn item_hasher_makes_the_key_and_bao_tree_in_one_pass() {
        for (i, &len) in SIZES.iter().enumerate() {
            let d = data(len, 90 + i as u64);
            let key = anonmirror_core::ItemKey(
                ring::digest::digest(&ring::digest::SHA256, &d)
                    .as_ref()
                    .try_into()
                    .expect("32 bytes"),
            );
            let (size, root, outboard) = bao(&d);
            // In uneven pieces, crossing group boundaries anywhere.
            let mut h = ItemHasher::new(size);
            let mut rest = &d[..];
            let mut step = 1usize;
            while !rest.is_empty() {
                let n = step.min(rest.len());
                h.update(&rest[..n]);
                rest = &rest[n..];
                step = step * 7 % 40_000 + 1;
            }
            let proof = h.finish(key).expect("the item");
            assert_eq!(proof.tree.root(), root, "root, {len} bytes");
            assert_eq!(
                proof.tree.outboard(),
                &outboard[..],
                "outboard, {len} bytes"
            );
            assert!(Tree::new(size, root, outboard).is_ok());

            let mut wrong = ItemHasher::new(size);
            wrong.update(&d);
            let other = anonmirror_core::ItemKey([7; 32]);
            assert!(wrong.finish(other).is_none(), "another key, {len} bytes");
            let mut long = ItemHasher::new(size);
            long.update(&d);
            long.update(b"x");
            assert!(long.finish(key).is_none(), "a byte too many, {len} bytes");
        }
        let d = data(50_000, 3);
        let key = anonmirror_core::ItemKey(
            ring::digest::digest(&ring::digest::SHA256, &d)
                .as_ref()
                .try_into()
                .expect("32 bytes"),
        );
        let mut short = ItemHasher::new(50_000);
        short.update(&d[..49_999]);
        assert!(short.finish(key).is_none(), "a byte short");
    }
}
