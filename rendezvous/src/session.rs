//! The live peer directory: sessions, pings, lookup and reports, as a
//! sans-I/O table (values and `now` in, values out).
//!
//! A session is what one spent token buys: an [`Announcement`] (contact,
//! a Noise static key fresh for this session, limits, optional region,
//! snapshot versions, announcement filter) under a random [`SessionId`].
//! It lives while the peer answers pings: the driver pings every
//! `ping_interval` and calls [`SessionTable::heard`] on every message from
//! the peer; [`SessionTable::expire`] drops sessions silent for longer than
//! `silence`. Nothing in an entry refers to a credential, a token or
//! another session.
//!
//! # Lookup
//!
//! `peers for ItemKey` ([`SessionTable::lookup`]) returns up to `want`
//! candidates that (1) hold the item according to their filter
//! ([`FilterCheck`]), (2) are at least as fresh as the client (their
//! snapshot version of the item's repository ≥ the client's), and (3) are
//! under their limit (fewer live assignments than `max_clients`; an
//! assignment lives as long as the peer's upload rate needs for the item,
//! [`assignment_time`]). Candidates in the client's region come first; among
//! equals, each pick is the less loaded of two drawn at random ("two
//! random choices"), and each pick counts as an assignment.
//!
//! Filters are opaque bytes here, but the filter check may say that a
//! filter is a plain bit array under a layout shared with other filters
//! ([`FilterCheck::bit_layout`]): then an item has the same bit positions
//! in all of them. Sessions are grouped by (layout, region), and a group
//! of at least [`SLICE_MIN`] sessions is kept *bit-sliced* as well: one
//! bit column per filter bit, one bit per member, so the group's holders
//! of an item are the AND of the item's few columns (a few kilobytes read
//! in sequence per thousand members, instead of two cache misses per
//! session tested). The holders so found are exact (the columns are the
//! filters' own bits), and a lookup draws among them uniformly at random,
//! checking freshness and limits, until it has four eligible ones per
//! wanted candidate or has drawn `max_probes` times (when a tier holds at
//! most `max_probes` holders it considers each of them, in a random
//! rotation). The columns cost as much memory as the filters they copy,
//! so a sliced session keeps its own copy of the bit array only packed
//! (the gaps between its set bits, when that is at most half the array:
//! a filter holding a few hundred items in room for thousands), for the
//! rare reads that need it (the session leaving or moving within its
//! group, the group turning loose, the directory).
//!
//! Sessions whose filter has no layout, or whose group is small, are
//! *loose*: a lookup probes up to `max_probes` loose sessions of a tier,
//! testing their filters (all of them when the tier is that small, in a
//! random rotation; otherwise a random sample; stopping early once it has
//! four eligible ones per wanted candidate when no group holds the item),
//! which bounds its cost whatever the directory's size. An item held by a
//! fraction p of a large loose tier is then missed with probability
//! (1 − p)^max_probes.
//!
//! Each filter is prepared once, at open ([`FilterCheck::prepare`]: its
//! header decoded and checked), the item is hashed once per lookup
//! ([`FilterCheck::probe`]), and probes are tested a batch at a time
//! ([`FilterCheck::holds_many`]) so that their cache misses overlap; a
//! probe is then a few memory reads. The table also counts live sessions
//! per declared level ([`SessionTable::level_populations`]), for the
//! published popularity counts.
//!
//! # Reports: what can and cannot be punished
//!
//! A client that caught a session serving bad data reports it by the
//! session's key ([`SessionTable::report`]). After `strikes` reports the
//! session is dropped and its *contact* refused for `contact_cooloff`.
//!
//! - Punishable: the session (dropped) and its contact (no new session may
//!   announce it until the cooling-off ends). Both are what the
//!   misbehaving peer itself published, so acting on them reveals nothing.
//! - Not punishable without breaking unlinkability: the credential that
//!   bought the session's token (the token was blind: the rendezvous
//!   cannot know it, and must not be able to), the peer's other or later
//!   sessions under other contacts (a fresh key per session, by design),
//!   and the peer behind a changing onion address. A cheater that changes
//!   contact and spends another token is back; its cost is that token
//!   (tokens are bounded per credential per epoch, credentials cost a
//!   proof-of-work).
//! - Reporters are anonymous too, so a false reporter cannot be punished
//!   either: the strike threshold is the defence, and strikes are counted
//!   per session, which ends with the session.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonmirror_core::{Entropy, Epoch, ItemKey, PeerKey};

use crate::hooks::{BitLayout, FilterCheck, ItemProbe, PreparedFilter};
use crate::msg::{Announcement, Candidate, Contact};
use crate::refusal::Refusal;

/// How sessions behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// How often the rendezvous pings a session.
    pub ping_interval: Duration,
    /// Silence after which a session is dropped.
    pub silence: Duration,
    /// The longest an assignment counts against a session's limit; see
    /// [`assignment_time`].
    pub assignment_window: Duration,
    /// The most sessions a lookup tests per tier.
    pub max_probes: usize,
    /// Reports that drop a session.
    pub strikes: u32,
    /// How long a dropped session's contact is refused.
    pub contact_cooloff: Duration,
    /// The most live sessions (beyond, new sessions are told `Busy`).
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ping_interval: Duration::from_secs(30),
            silence: Duration::from_secs(90),
            assignment_window: Duration::from_secs(60),
            max_probes: 256,
            strikes: 3,
            contact_cooloff: Duration::from_secs(7 * 86_400),
            max_sessions: 1_000_000,
        }
    }
}

/// A session's handle: random, so ids say nothing about opening order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug)]
struct Entry {
    id: SessionId,
    ann: Announcement,
    /// What the filter check made of `ann.filter` at open.
    prepared: PreparedFilter,
    last_heard: Instant,
    /// When each live assignment ends, soonest first.
    assignments: VecDeque<Instant>,
    strikes: u32,
    /// Its group and its index among the group's members, if its filter
    /// has a bit layout.
    group: Option<(u32, u32)>,
    /// Whether it is loose (in `all` and its region's list): not in a
    /// sliced group.
    loose: bool,
    /// Index in `all`, while loose.
    pos_all: usize,
    /// Index in its region's list, while loose and if it has a region.
    pos_region: usize,
    /// While sliced, and if it is smaller: the filter's bit array packed
    /// (see [`pack`]), the group's columns holding the bits for lookups;
    /// `ann.filter` then keeps only the bytes around the array.
    packed: Option<Box<[u8]>>,
}

impl Entry {
    /// The set bits of the filter's bit array under `layout`.
    fn positions<'a>(&'a self, layout: &BitLayout) -> Box<dyn Iterator<Item = usize> + 'a> {
        match &self.packed {
            Some(p) => Box::new(unpack(p)),
            None => {
                let (at, len) = (layout.offset as usize, layout.bits as usize / 8);
                let bits = self.ann.filter.get(at..at + len).unwrap_or(&[]);
                Box::new(set_bits(bits))
            }
        }
    }

    /// The announcement's filter as it came, bit array included.
    fn filter(&self, layout: &BitLayout) -> Vec<u8> {
        if self.packed.is_none() {
            return self.ann.filter.clone();
        }
        let (at, len) = (layout.offset as usize, layout.bits as usize / 8);
        let at = at.min(self.ann.filter.len());
        let mut f = Vec::with_capacity(self.ann.filter.len() + len);
        f.extend_from_slice(&self.ann.filter[..at]);
        f.resize(at + len, 0);
        for p in self.positions(layout) {
            if let Some(b) = f.get_mut(at + p / 8) {
                *b |= 1 << (p % 8);
            }
        }
        f.extend_from_slice(&self.ann.filter[at..]);
        f
    }

    /// Packs the filter's bit array away if that is smaller (the entry has
    /// just been sliced in).
    fn pack(&mut self, layout: &BitLayout) {
        let (at, len) = (layout.offset as usize, layout.bits as usize / 8);
        if self.packed.is_some() {
            return;
        }
        let Some(bits) = self.ann.filter.get(at..at + len) else {
            return;
        };
        if let Some(p) = pack(bits) {
            let mut rest = Vec::with_capacity(self.ann.filter.len() - len);
            rest.extend_from_slice(&self.ann.filter[..at]);
            rest.extend_from_slice(&self.ann.filter[at + len..]);
            self.ann.filter = rest;
            self.packed = Some(p);
        }
    }

    /// Puts the bit array back in `ann.filter` (the entry is loose again).
    fn unpack(&mut self, layout: &BitLayout) {
        if self.packed.is_some() {
            self.ann.filter = self.filter(layout);
            self.packed = None;
        }
    }
}

/// A sparse bit array as the gaps between its set bits (the first from
/// bit 0), each a LEB128 varint: a filter holding a few hundred items in
/// room for thousands takes about a byte per set bit instead of a byte
/// per eight bits. `None` when that is not at most half the array.
fn pack(bits: &[u8]) -> Option<Box<[u8]>> {
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
fn unpack(packed: &[u8]) -> impl Iterator<Item = usize> + '_ {
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
fn set_bits(bits: &[u8]) -> impl Iterator<Item = usize> + '_ {
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

/// Sessions whose filters share a bit layout and a region.
#[derive(Debug)]
struct Group {
    layout: BitLayout,
    region: Option<String>,
    /// Slots, in member order (a member's index is its bit in the columns).
    members: Vec<u32>,
    /// The members' filters bit-sliced, once there are [`SLICE_MIN`].
    slices: Option<Slices>,
}

/// Groups this large are bit-sliced; a sliced group that falls below half
/// of it goes back to loose (so a layout few sessions use, e.g. a
/// peer's odd filter size, costs no more than its filters).
pub const SLICE_MIN: usize = 64;

/// Words of a column ANDed before checking whether any member is left.
const BLOCK_WORDS: usize = 64;

/// A group's filters, transposed: `cols[p * w + i / 64]` holds bit `p` of
/// the filter of member `i` (bit `i % 64`), where `w` is the words per
/// column. Each column is contiguous, so finding an item's holders reads
/// its few columns front to back (the hardware prefetches them) rather
/// than touching one cache line per member.
#[derive(Debug)]
struct Slices {
    bits: usize,
    /// Words per column.
    w: usize,
    cols: Vec<u64>,
}

impl Slices {
    fn new(bits: usize) -> Slices {
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
    fn reserve(&mut self, n: usize) {
        if n > self.w * 64 {
            self.relayout(Self::words_for(n));
        }
    }

    /// Gives back room when `n` members fill less than half of it (the
    /// bits of members beyond `n` are all clear).
    fn shrink(&mut self, n: usize) {
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
    fn apply(&mut self, i: usize, positions: impl Iterator<Item = usize>, on: bool) {
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
    fn holders(&self, members: usize, positions: &[u32], group: u32, hits: &mut Vec<Hit>) -> u64 {
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
struct Hit {
    group: u32,
    /// The member index of the word's bit 0.
    base: u32,
    word: u64,
}

/// What a lookup reuses from one to the next.
#[derive(Debug, Default)]
struct Scratch {
    positions: Vec<u32>,
    hits: Vec<Hit>,
    /// Holders up to and including each hit.
    upto: Vec<u64>,
    /// Loose sessions of the tier found to hold the item.
    loose: Vec<u32>,
    /// Every holder, when there are few enough to consider each.
    every: Vec<u32>,
}

/// What a lookup asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    /// The item.
    pub item: &'a ItemKey,
    /// Its size: how long its assignment counts (see [`assignment_time`]).
    pub size: u64,
    /// Its repository.
    pub repository: &'a str,
    /// The client's snapshot version of that repository.
    pub version: u64,
    /// The client's region.
    pub region: Option<&'a str>,
    /// Most candidates.
    pub want: usize,
}

/// What a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// No live session has that key.
    Unknown,
    /// One more strike; the session stays.
    Struck(u32),
    /// The session reached its strikes and was dropped.
    Dropped(SessionId),
}

/// The live sessions.
///
/// Entries live in a slab (`slots`) and the tiers (`all`, per region) are
/// lists of slot numbers, so a probe is an array index, not a hash-map
/// lookup; a lookup runs the filter tests of a batch of probes before it
/// looks at any result, so their cache misses overlap.
pub struct SessionTable {
    cfg: SessionConfig,
    epoch: Epoch,
    filter: Arc<dyn FilterCheck>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_id: HashMap<SessionId, u32>,
    by_key: HashMap<PeerKey, u32>,
    all: Vec<u32>,
    regions: HashMap<String, Vec<u32>>,
    refused: HashMap<Contact, Instant>,
    /// Silence deadlines, soonest first; an entry is stale once its session
    /// is gone or was heard again (a newer entry then stands for it).
    deadlines: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Live sessions per declared level (`PreparedFilter::level`).
    levels: BTreeMap<u8, u64>,
    /// Sessions by filter layout and region; `None` once emptied.
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    group_of: HashMap<(BitLayout, Option<String>), u32>,
    /// The sliced groups (each has at least `SLICE_MIN / 2` members), so
    /// that a lookup's cost does not grow with the number of small groups.
    sliced: Vec<u32>,
    /// Scratch: the slots a lookup has probed.
    probed: Probed,
    scratch: Scratch,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("cfg", &self.cfg)
            .field("epoch", &self.epoch)
            .field("live", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl SessionTable {
    /// An empty table for announcements of `epoch`, whose filters are
    /// tested with `filter`.
    pub fn new(cfg: SessionConfig, epoch: Epoch, filter: Arc<dyn FilterCheck>) -> Self {
        SessionTable {
            cfg,
            epoch,
            filter,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            all: Vec::new(),
            regions: HashMap::new(),
            refused: HashMap::new(),
            deadlines: BinaryHeap::new(),
            levels: BTreeMap::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            group_of: HashMap::new(),
            sliced: Vec::new(),
            probed: Probed::default(),
            scratch: Scratch::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The epoch filters are tested against.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.epoch = epoch;
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Live sessions per level their announcement declares
    /// (`anonmirror_privacy::Level::wire_byte`); sessions whose filter
    /// declares none are not counted.
    pub fn level_populations(&self) -> BTreeMap<u8, u64> {
        self.levels.clone()
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Opens a session (its token already spent by the caller).
    pub fn open(
        &mut self,
        ann: Announcement,
        now: Instant,
        rng: &mut dyn Entropy,
    ) -> Result<SessionId, Refusal> {
        if let Some(until) = self.refused.get(&ann.contact) {
            if now < *until {
                return Err(Refusal::ContactRefused);
            }
            self.refused.remove(&ann.contact);
        }
        if self.by_id.len() >= self.cfg.max_sessions {
            return Err(Refusal::Busy);
        }
        if self.by_key.contains_key(&ann.key) {
            // A session key is fresh per session; a repeat is a bug or a
            // replayed announcement.
            return Err(Refusal::BadRequest);
        }
        let mut id = SessionId(rng.next_u64());
        while self.by_id.contains_key(&id) {
            id = SessionId(rng.next_u64());
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                // max_sessions bounds the slab; u32 slots are plenty.
                let s = u32::try_from(self.slots.len()).map_err(|_| Refusal::Busy)?;
                self.slots.push(None);
                s
            }
        };
        self.by_key.insert(ann.key, slot);
        self.by_id.insert(id, slot);
        let prepared = self.filter.prepare(&ann.filter);
        if let Some(l) = prepared.level {
            *self.levels.entry(l).or_default() += 1;
        }
        let layout = self
            .filter
            .bit_layout(&ann.filter, &prepared)
            .filter(|l| l.bits > 0 && layout_fits(l, &ann.filter));
        self.deadlines.push(Reverse((now + self.cfg.silence, id)));
        let region = ann.region.clone();
        self.slots[slot as usize] = Some(Entry {
            id,
            ann,
            prepared,
            last_heard: now,
            assignments: VecDeque::new(),
            strikes: 0,
            group: None,
            loose: false,
            pos_all: 0,
            pos_region: 0,
            packed: None,
        });
        self.loosen(slot);
        if let Some(layout) = layout {
            self.join(slot, layout, region);
        }
        Ok(id)
    }

    /// Puts `slot` in the loose lists.
    fn loosen(&mut self, slot: u32) {
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if e.loose {
            return;
        }
        e.loose = true;
        self.all.push(slot);
        e.pos_all = self.all.len() - 1;
        if let Some(r) = &e.ann.region {
            let list = self.regions.entry(r.clone()).or_default();
            list.push(slot);
            e.pos_region = list.len() - 1;
        }
    }

    /// Takes `slot` out of the loose lists.
    fn tighten(&mut self, slot: u32) {
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if !e.loose {
            return;
        }
        e.loose = false;
        let (pos_all, pos_region, region) = (e.pos_all, e.pos_region, e.ann.region.clone());
        swap_remove(&mut self.all, pos_all, &mut self.slots, |e| &mut e.pos_all);
        if let Some(r) = region
            && let Some(list) = self.regions.get_mut(&r)
        {
            swap_remove(list, pos_region, &mut self.slots, |e| &mut e.pos_region);
            if list.is_empty() {
                self.regions.remove(&r);
            }
        }
    }

    /// Adds `slot` to its (layout, region) group, slicing the group once
    /// it is large enough.
    fn join(&mut self, slot: u32, layout: BitLayout, region: Option<String>) {
        let key = (layout, region);
        let g = match self.group_of.get(&key) {
            Some(&g) => g,
            None => {
                let group = Group {
                    layout,
                    region: key.1.clone(),
                    members: Vec::new(),
                    slices: None,
                };
                let g = match self.free_groups.pop() {
                    Some(g) => {
                        self.groups[g as usize] = Some(group);
                        g
                    }
                    None => {
                        self.groups.push(Some(group));
                        (self.groups.len() - 1) as u32
                    }
                };
                self.group_of.insert(key, g);
                g
            }
        };
        let Some(group) = self.groups.get_mut(g as usize).and_then(Option::as_mut) else {
            return;
        };
        let member = group.members.len();
        group.members.push(slot);
        let sliced = group.slices.is_some();
        let big = group.members.len() >= SLICE_MIN;
        if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            e.group = Some((g, member as u32));
        }
        if sliced {
            self.slice_in(g, member);
        } else if big {
            let Some(group) = self.groups.get_mut(g as usize).and_then(Option::as_mut) else {
                return;
            };
            group.slices = Some(Slices::new(group.layout.bits as usize));
            self.sliced.push(g);
            for m in 0..group.members.len() {
                self.slice_in(g, m);
            }
        }
    }

    /// Writes member `m` of sliced group `g` into its columns and takes it
    /// out of the loose lists.
    fn slice_in(&mut self, g: u32, m: usize) {
        let Some(group) = self.groups.get_mut(g as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(&slot) = group.members.get(m) else {
            return;
        };
        let (layout, n) = (group.layout, group.members.len());
        if let (Some(slices), Some(e)) = (
            group.slices.as_mut(),
            self.slots.get_mut(slot as usize).and_then(Option::as_mut),
        ) {
            slices.reserve(n);
            slices.apply(m, e.positions(&layout), true);
            e.pack(&layout);
        }
        self.tighten(slot);
    }

    /// Takes the closed entry `e` (at `slot`, already out of `slots`) out
    /// of its group.
    fn leave(&mut self, e: &Entry) {
        let Some((g, m)) = e.group else {
            return;
        };
        let m = m as usize;
        let Some(group) = self.groups.get_mut(g as usize).and_then(Option::as_mut) else {
            return;
        };
        let layout = group.layout;
        let last = group.members.len() - 1;
        if let Some(slices) = group.slices.as_mut() {
            slices.apply(m, e.positions(&layout), false);
            if m != last {
                // The last member moves into the hole.
                let moved = group.members[last];
                if let Some(me) = self.slots.get(moved as usize).and_then(Option::as_ref) {
                    slices.apply(last, me.positions(&layout), false);
                    slices.apply(m, me.positions(&layout), true);
                }
            }
        }
        group.members.swap_remove(m);
        if let Some(&moved) = group.members.get(m)
            && let Some(me) = self.slots.get_mut(moved as usize).and_then(Option::as_mut)
        {
            me.group = Some((g, m as u32));
        }
        let n = group.members.len();
        if n == 0 || (group.slices.is_some() && n < SLICE_MIN / 2) {
            self.sliced.retain(|s| *s != g);
        }
        if n == 0 {
            let key = (group.layout, group.region.clone());
            self.group_of.remove(&key);
            self.groups[g as usize] = None;
            self.free_groups.push(g);
        } else if group.slices.is_some() && n < SLICE_MIN / 2 {
            group.slices = None;
            let members = group.members.clone();
            for slot in members {
                if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
                    e.unpack(&layout);
                }
                self.loosen(slot);
            }
        } else if let Some(slices) = group.slices.as_mut() {
            slices.shrink(n);
        }
    }

    /// The peer said something (a pong, anything): it is alive.
    pub fn heard(&mut self, id: SessionId, now: Instant) {
        let silence = self.cfg.silence;
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        if let Some(e) = self.entry_mut(slot)
            && now > e.last_heard
        {
            e.last_heard = now;
            self.deadlines.push(Reverse((now + silence, id)));
        }
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: SessionId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Closes a session (its channel ended).
    pub fn close(&mut self, id: SessionId) -> bool {
        let Some(slot) = self.by_id.remove(&id) else {
            return false;
        };
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return false;
        };
        self.free.push(slot);
        self.by_key.remove(&e.ann.key);
        if let Some(l) = e.prepared.level
            && let Some(n) = self.levels.get_mut(&l)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.levels.remove(&l);
            }
        }
        if e.loose {
            swap_remove(&mut self.all, e.pos_all, &mut self.slots, |e| {
                &mut e.pos_all
            });
            if let Some(r) = &e.ann.region
                && let Some(list) = self.regions.get_mut(r)
            {
                swap_remove(list, e.pos_region, &mut self.slots, |e| &mut e.pos_region);
                if list.is_empty() {
                    self.regions.remove(r);
                }
            }
        }
        self.leave(&e);
        true
    }

    /// Pops stale deadlines off the top, so the top is a live session's.
    fn prune_deadlines(&mut self) {
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            let current = self
                .by_id
                .get(&id)
                .and_then(|s| self.entry(*s))
                .is_some_and(|e| e.last_heard + self.cfg.silence == at);
            if current {
                return;
            }
            self.deadlines.pop();
        }
    }

    /// Drops every session silent for longer than `silence`; returns them
    /// so the driver can close their channels.
    pub fn expire(&mut self, now: Instant) -> Vec<SessionId> {
        let mut dead = Vec::new();
        loop {
            self.prune_deadlines();
            match self.deadlines.peek().copied() {
                // Silent for longer than `silence`: strictly past it.
                Some(Reverse((at, id))) if now > at => {
                    self.deadlines.pop();
                    self.close(id);
                    dead.push(id);
                }
                _ => break,
            }
        }
        self.refused.retain(|_, until| now < *until);
        dead
    }

    /// When the next session would fall silent, so the driver knows when to
    /// call [`SessionTable::expire`] again.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.prune_deadlines();
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// A report against the session known by `key`.
    pub fn report(&mut self, key: &PeerKey, now: Instant) -> ReportOutcome {
        let Some(slot) = self.by_key.get(key).copied() else {
            return ReportOutcome::Unknown;
        };
        let strikes = self.cfg.strikes;
        let Some(e) = self.entry_mut(slot) else {
            return ReportOutcome::Unknown;
        };
        e.strikes += 1;
        if e.strikes < strikes {
            return ReportOutcome::Struck(e.strikes);
        }
        let (id, contact) = (e.id, e.ann.contact.clone());
        self.close(id);
        self.refused.insert(contact, now + self.cfg.contact_cooloff);
        ReportOutcome::Dropped(id)
    }

    /// Every live announcement of `region` (all when `None`), ordered by
    /// session key (random per session, so the order leaks nothing).
    pub fn announcements(&self, region: Option<&str>) -> Vec<Announcement> {
        let mut v: Vec<Announcement> = self
            .slots
            .iter()
            .flatten()
            .filter(|e| region.is_none() || e.ann.region.as_deref() == region)
            .map(|e| {
                let layout = e
                    .group
                    .and_then(|(g, _)| self.groups.get(g as usize)?.as_ref())
                    .map(|g| g.layout);
                match layout {
                    Some(l) if e.packed.is_some() => Announcement {
                        filter: e.filter(&l),
                        ..e.ann.clone()
                    },
                    _ => e.ann.clone(),
                }
            })
            .collect();
        v.sort_by_key(|a| a.key);
        v
    }

    /// Peers for an item; see the module docs. Each returned candidate
    /// counts as an assignment at `now`.
    pub fn lookup(&mut self, q: &Query<'_>, now: Instant, rng: &mut dyn Entropy) -> Vec<Candidate> {
        let want = q.want;
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let probe = self.filter.probe(q.item, self.epoch);
        self.probed.begin(2 * self.cfg.max_probes);
        let mut pool: Vec<u32> = Vec::new();
        let target = POOL_PER_WANT * want;
        for region_tier in [true, false] {
            if out.len() >= want {
                break;
            }
            if region_tier && q.region.is_none() {
                continue;
            }
            // The region tier's groups are those of the client's region;
            // the other tier's, every other group (the client's region's
            // holders were all considered already).
            let sliced = self.sliced_holders(&probe, q.region, region_tier);
            pool.clear();
            // Only the probed slots are copied out of the tier (at most
            // `max_probes`), never the tier itself: a lookup's cost must not
            // grow with the directory.
            let order: Vec<u32> = {
                let ids: &[u32] = if region_tier {
                    q.region
                        .and_then(|r| self.regions.get(r))
                        .map_or(&[], Vec::as_slice)
                } else {
                    &self.all
                };
                probe_order(ids.len(), self.cfg.max_probes, rng)
                    .into_iter()
                    .map(|i| ids[i])
                    .collect()
            };
            let mut loose = std::mem::take(&mut self.scratch.loose);
            loose.clear();
            'probing: for batch in order.chunks(BATCH) {
                // Filter tests first, all of the batch: they are pure and
                // independent, so their cache misses overlap.
                let mut holds = [false; BATCH];
                {
                    let mut filters = [(&[][..], &PreparedFilter::INVALID); BATCH];
                    for (f, &slot) in filters.iter_mut().zip(batch) {
                        if let Some(e) = self.slots.get(slot as usize).and_then(Option::as_ref) {
                            *f = (&e.ann.filter[..], &e.prepared);
                        }
                    }
                    let n = batch.len();
                    self.filter
                        .holds_many(&filters[..n], &probe, &mut holds[..n]);
                }
                for (&slot, &held) in batch.iter().zip(&holds) {
                    if !self.probed.insert(slot) || !held {
                        continue;
                    }
                    if sliced > 0 {
                        // Drawn from below, together with the groups'.
                        loose.push(slot);
                        continue;
                    }
                    if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut)
                        && usable(e, q, now)
                    {
                        pool.push(slot);
                        // Enough to choose `want` by two random choices:
                        // each further probe is a cache miss or two and
                        // changes little (a popular item would otherwise
                        // cost the full `max_probes`).
                        if pool.len() >= target {
                            break 'probing;
                        }
                    }
                }
            }
            if sliced > 0 {
                self.draw(&loose, sliced, target, q, now, rng, &mut pool);
            }
            self.scratch.loose = loose;
            while out.len() < want && !pool.is_empty() {
                let a = rng.below(pool.len() as u64) as usize;
                let b = rng.below(pool.len() as u64) as usize;
                let pick = if self.load_less(pool[b], pool[a]) {
                    b
                } else {
                    a
                };
                let slot = pool.swap_remove(pick);
                let window = self.cfg.assignment_window;
                if let Some(e) = self.entry_mut(slot) {
                    // Kept in order of expiry, so that expired ones are
                    // dropped from the front without scanning the rest.
                    let until = now + assignment_time(q.size, e.ann.upload_rate, window);
                    let at = e.assignments.partition_point(|x| *x <= until);
                    e.assignments.insert(at, until);
                    out.push(Candidate {
                        contact: e.ann.contact.clone(),
                        key: e.ann.key,
                        region: e.ann.region.clone(),
                        level: e.prepared.level.unwrap_or(0),
                        epoch: self.epoch.0,
                    });
                }
            }
        }
        out
    }

    /// The holders of `probe`'s item in the sliced groups of a tier (the
    /// client's region's groups, or every other group) into
    /// `scratch.hits` and `scratch.upto`; returns how many.
    fn sliced_holders(
        &mut self,
        probe: &ItemProbe,
        region: Option<&str>,
        region_tier: bool,
    ) -> u64 {
        let sc = &mut self.scratch;
        sc.hits.clear();
        sc.upto.clear();
        let mut total = 0;
        for &g in &self.sliced {
            let Some(group) = self.groups.get(g as usize).and_then(Option::as_ref) else {
                continue;
            };
            let Some(slices) = &group.slices else {
                continue;
            };
            let mine = region.is_some() && group.region.as_deref() == region;
            if mine != region_tier {
                continue;
            }
            if !self
                .filter
                .positions(probe, &group.layout, &mut sc.positions)
                || sc.positions.is_empty()
            {
                continue;
            }
            let from = sc.hits.len();
            total += slices.holders(group.members.len(), &sc.positions, g, &mut sc.hits);
            let mut acc = sc.upto.last().copied().unwrap_or(0);
            for h in &sc.hits[from..] {
                acc += u64::from(h.word.count_ones());
                sc.upto.push(acc);
            }
        }
        total
    }

    /// The slot of holder `r` (below the sliced holders' count) of
    /// `scratch.hits`.
    fn sliced_holder(&self, r: u64) -> Option<u32> {
        let sc = &self.scratch;
        let k = sc.upto.partition_point(|&c| c <= r);
        let hit = sc.hits.get(k)?;
        let before = if k == 0 { 0 } else { sc.upto[k - 1] };
        let mut word = hit.word;
        for _ in 0..(r - before) {
            word &= word - 1;
        }
        let member = hit.base as usize + word.trailing_zeros() as usize;
        self.groups
            .get(hit.group as usize)?
            .as_ref()?
            .members
            .get(member)
            .copied()
    }

    /// Fills `pool` with up to `target` eligible holders drawn from the
    /// tier's `sliced` group holders and its `loose` holders: each of them
    /// in a random rotation when there are at most `max_probes`, else
    /// `max_probes` uniform draws.
    #[allow(clippy::too_many_arguments)]
    fn draw(
        &mut self,
        loose: &[u32],
        sliced: u64,
        target: usize,
        q: &Query<'_>,
        now: Instant,
        rng: &mut dyn Entropy,
        pool: &mut Vec<u32>,
    ) {
        let total = sliced + loose.len() as u64;
        let holder = |t: &Self, r: u64| -> Option<u32> {
            if r < sliced {
                t.sliced_holder(r)
            } else {
                loose.get((r - sliced) as usize).copied()
            }
        };
        if total <= self.cfg.max_probes as u64 {
            let mut every = std::mem::take(&mut self.scratch.every);
            every.clear();
            for h in &self.scratch.hits {
                let mut word = h.word;
                while word != 0 {
                    let member = h.base as usize + word.trailing_zeros() as usize;
                    word &= word - 1;
                    if let Some(slot) = self.groups[h.group as usize]
                        .as_ref()
                        .and_then(|g| g.members.get(member))
                    {
                        every.push(*slot);
                    }
                }
            }
            every.extend_from_slice(loose);
            if !every.is_empty() {
                let start = rng.below(every.len() as u64) as usize;
                every.rotate_left(start);
            }
            for batch in every.chunks(BATCH) {
                if self.take_usable(batch, target, q, now, pool) {
                    break;
                }
            }
            self.scratch.every = every;
            return;
        }
        let mut drawn = 0;
        while drawn < self.cfg.max_probes {
            let n = BATCH.min(self.cfg.max_probes - drawn);
            drawn += n;
            let mut batch = [u32::MAX; BATCH];
            for b in &mut batch[..n] {
                *b = holder(self, rng.below(total)).unwrap_or(u32::MAX);
            }
            if self.take_usable(&batch[..n], target, q, now, pool) {
                break;
            }
        }
    }

    /// Adds the usable ones of `batch` (holders, not yet in `pool`) to
    /// `pool` until it has `target`; true once it has.
    fn take_usable(
        &mut self,
        batch: &[u32],
        target: usize,
        q: &Query<'_>,
        now: Instant,
        pool: &mut Vec<u32>,
    ) -> bool {
        // Read what `usable` reads of every entry of the batch first: the
        // reads are independent, so their cache misses overlap instead of
        // queueing one holder after another.
        let mut warm = 0usize;
        for &slot in batch {
            if let Some(e) = self.entry(slot) {
                for (repository, version) in &e.ann.snapshots {
                    warm ^= repository.as_bytes().first().map_or(0, |b| usize::from(*b));
                    warm ^= *version as usize;
                }
                warm ^= e.assignments.front().map_or(0, |_| 1);
            }
        }
        std::hint::black_box(warm);
        for &slot in batch {
            if pool.contains(&slot) {
                continue;
            }
            if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut)
                && usable(e, q, now)
            {
                pool.push(slot);
                if pool.len() >= target {
                    return true;
                }
            }
        }
        false
    }

    /// Whether `a` is less loaded than `b` (assignments per allowed client).
    fn load_less(&self, a: u32, b: u32) -> bool {
        match (self.entry(a), self.entry(b)) {
            (Some(x), Some(y)) => {
                (x.assignments.len() as u64) * u64::from(y.ann.max_clients)
                    < (y.assignments.len() as u64) * u64::from(x.ann.max_clients)
            }
            _ => false,
        }
    }

    /// Assignments currently counted against the session with `key`.
    pub fn assignments_of(&self, key: &PeerKey) -> usize {
        self.by_key
            .get(key)
            .and_then(|s| self.entry(*s))
            .map_or(0, |e| e.assignments.len())
    }
}

/// Whether `layout`'s bits lie within `filter`.
fn layout_fits(layout: &BitLayout, filter: &[u8]) -> bool {
    (layout.offset as usize)
        .checked_add(layout.bits as usize / 8)
        .is_some_and(|end| layout.bits.is_multiple_of(8) && end <= filter.len())
}

/// Probes whose filter tests run together before any result is used.
const BATCH: usize = 16;

/// Whether a session whose filter holds the item is fresh enough and under
/// its limit (forgetting assignments that have run out on the way).
fn usable(e: &mut Entry, q: &Query<'_>, now: Instant) -> bool {
    if e.ann.version_of(q.repository).is_none_or(|v| v < q.version) {
        return false;
    }
    while e.assignments.front().is_some_and(|until| *until <= now) {
        e.assignments.pop_front();
    }
    e.assignments.len() < e.ann.max_clients as usize
}

/// The least time an assignment counts: a connection and a handshake on a
/// near network. (At 100 ms, two clients fetching small packages from one
/// seed on a LAN used up its eight slots and were refused a peer they
/// could have had: 65 % of a young swarm's bytes went to the upstream in
/// `bench/run gateway`.)
pub const MIN_ASSIGNMENT: Duration = Duration::from_millis(20);

/// How long one assignment counts against a session's limit: the time the
/// peer's announced upload rate needs for the item (at least
/// [`MIN_ASSIGNMENT`], at most `window`). Live assignments then
/// approximate the clients the peer serves at once, which is what
/// `max_clients` limits; a fixed window would instead cap packages per
/// window and starve a small swarm of many small packages.
pub fn assignment_time(size: u64, upload_rate: u64, window: Duration) -> Duration {
    let secs = size as f64 / upload_rate.max(1) as f64;
    Duration::from_secs_f64(secs.min(window.as_secs_f64()))
        .clamp(MIN_ASSIGNMENT, window.max(MIN_ASSIGNMENT))
}

/// The slots a lookup has probed: open addressing over slot numbers,
/// emptied in O(1) by bumping a generation (a lookup probes each session
/// at most once across both tiers).
#[derive(Debug, Default)]
struct Probed {
    /// `generation << 32 | slot`; other generations read as empty.
    marks: Vec<u64>,
    generation: u32,
}

impl Probed {
    /// Starts a lookup of at most `n` probes.
    fn begin(&mut self, n: usize) {
        let cap = (2 * n).next_power_of_two().max(64);
        if self.marks.len() < cap {
            self.marks = vec![0; cap];
            self.generation = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `slot`; false if it already was.
    fn insert(&mut self, slot: u32) -> bool {
        let mask = self.marks.len() - 1;
        let tag = (u64::from(self.generation) << 32) | u64::from(slot);
        let mut i = (u64::from(slot).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & mask;
        loop {
            let m = self.marks[i];
            if m == tag {
                return false;
            }
            if m >> 32 != u64::from(self.generation) {
                self.marks[i] = tag;
                return true;
            }
            i = (i + 1) & mask;
        }
    }
}

/// A tier's probing stops once this many eligible sessions per wanted
/// candidate are found.
const POOL_PER_WANT: usize = 4;

/// An [`Entropy`] that draws from `E` a block at a time: a lookup draws
/// a few hundred small numbers (probes, two random choices), and one
/// getrandom call (or XOF block) per number would cost more than the
/// lookup itself. The bytes are `E`'s, unchanged; only the calls are
/// batched. For choosing among peers, not for keys.
#[derive(Clone, Debug)]
pub struct BufferedEntropy<E> {
    inner: E,
    buf: Box<[u8; 4096]>,
    pos: usize,
}

impl<E: Entropy> BufferedEntropy<E> {
    /// Draws from `inner` 4 KiB at a time.
    pub fn new(inner: E) -> Self {
        BufferedEntropy {
            inner,
            buf: Box::new([0; 4096]),
            pos: 4096,
        }
    }
}

impl<E: Entropy> Entropy for BufferedEntropy<E> {
    fn fill(&mut self, mut dest: &mut [u8]) {
        while !dest.is_empty() {
            if self.pos == self.buf.len() {
                self.inner.fill(&mut self.buf[..]);
                self.pos = 0;
            }
            let n = dest.len().min(self.buf.len() - self.pos);
            dest[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            dest = &mut dest[n..];
        }
    }
}

/// Indices to probe in a tier of `len`: all of them from a random start
/// when `len ≤ max`, else `max` random ones.
fn probe_order(len: usize, max: usize, rng: &mut dyn Entropy) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    if len <= max {
        let start = rng.below(len as u64) as usize;
        (0..len).map(|i| (start + i) % len).collect()
    } else {
        (0..max).map(|_| rng.below(len as u64) as usize).collect()
    }
}

fn swap_remove(
    list: &mut Vec<u32>,
    pos: usize,
    slots: &mut [Option<Entry>],
    field: impl Fn(&mut Entry) -> &mut usize,
) {
    if pos >= list.len() {
        return;
    }
    list.swap_remove(pos);
    if let Some(moved) = list.get(pos).copied()
        && let Some(e) = slots.get_mut(moved as usize).and_then(Option::as_mut)
    {
        *field(e) = pos;
    }
}

#[cfg(test)]
mod tests;
