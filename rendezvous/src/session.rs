//! The live peer directory: sessions, pings, lookup and reports, as a
//! sans-I/O table (values and `now` in, values out).
//!
//! A session is what one spent token buys: an announcement
//! ([`AnnouncementWire`]: contact, a Noise static key fresh for this
//! session, limits, optional region, snapshot versions, announcement
//! filter) under a random [`SessionId`].
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

use crate::hooks::{BitLayout, FilterCheck, PreparedFilter};
use crate::msg::{AnnouncementWire, ContactWire};
use crate::refusal::Refusal;

mod entropy;
mod lookup;
mod scratch;
mod slices;

pub use entropy::BufferedEntropy;
use scratch::{Probed, Scratch};
use slices::{Slices, pack, set_bits, unpack};

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
    /// A session may update its announcement at most once this often
    /// (default [`crate::server::UPDATE_MIN_GAP`]); faster, it is dropped.
    pub update_gap: Duration,
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
            update_gap: crate::server::UPDATE_MIN_GAP,
        }
    }
}

/// A session's handle: random, so ids say nothing about opening order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug)]
struct Entry {
    id: SessionId,
    ann: AnnouncementWire,
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
    refused: HashMap<ContactWire, Instant>,
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
        ann: AnnouncementWire,
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
        self.insert(id, ann, now)?;
        Ok(id)
    }

    /// Replaces the filter of live session `id` (what its peer holds
    /// changed): the session keeps its id, key, contact, limits, strikes
    /// and assignments; it counts as heard from.
    pub fn update(&mut self, id: SessionId, filter: Vec<u8>, now: Instant) -> Result<(), Refusal> {
        let slot = *self.by_id.get(&id).ok_or(Refusal::BadRequest)?;
        let e = self.entry(slot).ok_or(Refusal::BadRequest)?;
        let (mut ann, strikes, assignments) = (e.ann.clone(), e.strikes, e.assignments.clone());
        ann.filter = filter;
        self.close(id);
        self.insert(id, ann, now)?;
        if let Some(e) = self
            .by_id
            .get(&id)
            .copied()
            .and_then(|slot| self.entry_mut(slot))
        {
            e.strikes = strikes;
            e.assignments = assignments;
        }
        Ok(())
    }

    /// Enters `ann` under `id` (neither in the table).
    fn insert(
        &mut self,
        id: SessionId,
        ann: AnnouncementWire,
        now: Instant,
    ) -> Result<(), Refusal> {
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
        Ok(())
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
    pub fn announcements(&self, region: Option<&str>) -> Vec<AnnouncementWire> {
        let mut v: Vec<AnnouncementWire> = self
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
                    Some(l) if e.packed.is_some() => AnnouncementWire {
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
}

/// Whether `layout`'s bits lie within `filter`.
fn layout_fits(layout: &BitLayout, filter: &[u8]) -> bool {
    (layout.offset as usize)
        .checked_add(layout.bits as usize / 8)
        .is_some_and(|end| layout.bits.is_multiple_of(8) && end <= filter.len())
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
