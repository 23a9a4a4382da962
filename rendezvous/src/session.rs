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
//! random choices"), and each pick counts as an assignment. Filters are
//! opaque, so they cannot be indexed: a lookup probes up to `max_probes`
//! sessions of a tier (stopping early once it has four eligible ones per
//! wanted candidate) (all of them when the tier is that small, in a
//! random rotation; otherwise a random sample), which bounds its cost
//! whatever the directory's size. An item held by a fraction p of a large
//! tier is then missed with probability (1 − p)^max_probes.
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

use crate::hooks::{FilterCheck, PreparedFilter};
use crate::msg::{Announcement, Candidate, Contact, Refusal};

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
    assignments: VecDeque<Instant>,
    strikes: u32,
    /// Index in `all`.
    pos_all: usize,
    /// Index in its region's list, if it has a region.
    pos_region: usize,
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
    /// Scratch: the slots a lookup has probed.
    probed: Probed,
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
            probed: Probed::default(),
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
        let pos_region = match &ann.region {
            Some(r) => {
                let list = self.regions.entry(r.clone()).or_default();
                list.push(slot);
                list.len() - 1
            }
            None => 0,
        };
        self.all.push(slot);
        self.by_key.insert(ann.key, slot);
        self.by_id.insert(id, slot);
        let prepared = self.filter.prepare(&ann.filter);
        if let Some(l) = prepared.level {
            *self.levels.entry(l).or_default() += 1;
        }
        self.deadlines.push(Reverse((now + self.cfg.silence, id)));
        self.slots[slot as usize] = Some(Entry {
            id,
            ann,
            prepared,
            last_heard: now,
            assignments: VecDeque::new(),
            strikes: 0,
            pos_all: self.all.len() - 1,
            pos_region,
        });
        Ok(id)
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
    pub fn announcements(&self, region: Option<&str>) -> Vec<&Announcement> {
        let list: &[u32] = match region {
            None => &self.all,
            Some(r) => self.regions.get(r).map_or(&[], Vec::as_slice),
        };
        let mut v: Vec<&Announcement> = list
            .iter()
            .filter_map(|s| self.entry(*s))
            .map(|e| &e.ann)
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
        for region_tier in [true, false] {
            if out.len() >= want {
                break;
            }
            // Only the probed slots are copied out of the tier (at most
            // `max_probes`), never the tier itself: a lookup's cost must not
            // grow with the directory.
            let order: Vec<u32> = {
                let ids: &[u32] = if region_tier {
                    match q.region.and_then(|r| self.regions.get(r)) {
                        Some(list) => list,
                        None => continue,
                    }
                } else {
                    &self.all
                };
                probe_order(ids.len(), self.cfg.max_probes, rng)
                    .into_iter()
                    .map(|i| ids[i])
                    .collect()
            };
            pool.clear();
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
                    if let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut)
                        && usable(e, q, now)
                    {
                        pool.push(slot);
                        // Enough to choose `want` by two random choices:
                        // each further probe is a cache miss or two and
                        // changes little (a popular item would otherwise
                        // cost the full `max_probes`).
                        if pool.len() >= POOL_PER_WANT * want {
                            break 'probing;
                        }
                    }
                }
            }
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
                    e.assignments
                        .push_back(now + assignment_time(q.size, e.ann.upload_rate, window));
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

/// Probes whose filter tests run together before any result is used.
const BATCH: usize = 16;

/// Whether a session whose filter holds the item is fresh enough and under
/// its limit (forgetting assignments that have run out on the way).
fn usable(e: &mut Entry, q: &Query<'_>, now: Instant) -> bool {
    if e.ann.version_of(q.repository).is_none_or(|v| v < q.version) {
        return false;
    }
    e.assignments.retain(|until| *until > now);
    e.assignments.len() < e.ann.max_clients as usize
}

/// The least time an assignment counts: a connection and a handshake.
pub const MIN_ASSIGNMENT: Duration = Duration::from_millis(100);

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
