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
//! under their limit (fewer assignments within `assignment_window` than
//! `max_clients`). Candidates in the client's region come first; among
//! equals, each pick is the less loaded of two drawn at random ("two
//! random choices"), and each pick counts as an assignment. Filters are
//! opaque, so they cannot be indexed: a lookup probes up to `max_probes`
//! sessions of a tier (stopping early once it has four eligible ones per
//! wanted candidate) (all of them when the tier is that small, in a
//! random rotation; otherwise a random sample), which bounds its cost
//! whatever the directory's size. An item held by a fraction p of a large
//! tier is then missed with probability (1 − p)^max_probes.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anonmirror_core::{Entropy, Epoch, ItemKey, PeerKey};

use crate::hooks::FilterCheck;
use crate::msg::{Announcement, Candidate, Contact, Refusal};

/// How sessions behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// How often the rendezvous pings a session.
    pub ping_interval: Duration,
    /// Silence after which a session is dropped.
    pub silence: Duration,
    /// How long an assignment counts against a session's limit.
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
    ann: Announcement,
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
#[derive(Debug)]
pub struct SessionTable {
    cfg: SessionConfig,
    epoch: Epoch,
    sessions: HashMap<SessionId, Entry>,
    by_key: HashMap<PeerKey, SessionId>,
    all: Vec<SessionId>,
    regions: HashMap<String, Vec<SessionId>>,
    refused: HashMap<Contact, Instant>,
}

impl SessionTable {
    /// An empty table for announcements of `epoch`.
    pub fn new(cfg: SessionConfig, epoch: Epoch) -> Self {
        SessionTable {
            cfg,
            epoch,
            sessions: HashMap::new(),
            by_key: HashMap::new(),
            all: Vec::new(),
            regions: HashMap::new(),
            refused: HashMap::new(),
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
        self.sessions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
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
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(Refusal::Busy);
        }
        if self.by_key.contains_key(&ann.key) {
            // A session key is fresh per session; a repeat is a bug or a
            // replayed announcement.
            return Err(Refusal::BadRequest);
        }
        let mut id = SessionId(rng.next_u64());
        while self.sessions.contains_key(&id) {
            id = SessionId(rng.next_u64());
        }
        let pos_region = match &ann.region {
            Some(r) => {
                let list = self.regions.entry(r.clone()).or_default();
                list.push(id);
                list.len() - 1
            }
            None => 0,
        };
        self.all.push(id);
        self.by_key.insert(ann.key, id);
        self.sessions.insert(
            id,
            Entry {
                ann,
                last_heard: now,
                assignments: VecDeque::new(),
                strikes: 0,
                pos_all: self.all.len() - 1,
                pos_region,
            },
        );
        Ok(id)
    }

    /// The peer said something (a pong, anything): it is alive.
    pub fn heard(&mut self, id: SessionId, now: Instant) {
        if let Some(e) = self.sessions.get_mut(&id) {
            e.last_heard = e.last_heard.max(now);
        }
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Closes a session (its channel ended).
    pub fn close(&mut self, id: SessionId) -> bool {
        let Some(e) = self.sessions.remove(&id) else {
            return false;
        };
        self.by_key.remove(&e.ann.key);
        swap_remove(&mut self.all, e.pos_all, &mut self.sessions, |e| {
            &mut e.pos_all
        });
        if let Some(r) = &e.ann.region
            && let Some(list) = self.regions.get_mut(r)
        {
            swap_remove(list, e.pos_region, &mut self.sessions, |e| {
                &mut e.pos_region
            });
            if list.is_empty() {
                self.regions.remove(r);
            }
        }
        true
    }

    /// Drops every session silent for longer than `silence`; returns them
    /// so the driver can close their channels.
    pub fn expire(&mut self, now: Instant) -> Vec<SessionId> {
        let silence = self.cfg.silence;
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_heard) > silence)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.close(*id);
        }
        self.refused.retain(|_, until| now < *until);
        dead
    }

    /// When the next session would fall silent, so the driver knows when to
    /// call [`SessionTable::expire`] again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .map(|e| e.last_heard + self.cfg.silence)
            .min()
    }

    /// A report against the session known by `key`.
    pub fn report(&mut self, key: &PeerKey, now: Instant) -> ReportOutcome {
        let Some(id) = self.by_key.get(key).copied() else {
            return ReportOutcome::Unknown;
        };
        let Some(e) = self.sessions.get_mut(&id) else {
            return ReportOutcome::Unknown;
        };
        e.strikes += 1;
        if e.strikes < self.cfg.strikes {
            return ReportOutcome::Struck(e.strikes);
        }
        let contact = e.ann.contact.clone();
        self.close(id);
        self.refused.insert(contact, now + self.cfg.contact_cooloff);
        ReportOutcome::Dropped(id)
    }

    /// Every live announcement of `region` (all when `None`), ordered by
    /// session key (random per session, so the order leaks nothing).
    pub fn announcements(&self, region: Option<&str>) -> Vec<&Announcement> {
        let mut v: Vec<&Announcement> = match region {
            None => self.sessions.values().map(|e| &e.ann).collect(),
            Some(r) => self
                .regions
                .get(r)
                .map(|l| {
                    l.iter()
                        .filter_map(|id| self.sessions.get(id))
                        .map(|e| &e.ann)
                        .collect()
                })
                .unwrap_or_default(),
        };
        v.sort_by_key(|a| a.key);
        v
    }

    /// Peers for an item; see the module docs. Each returned candidate
    /// counts as an assignment at `now`.
    pub fn lookup(
        &mut self,
        q: &Query<'_>,
        now: Instant,
        rng: &mut dyn Entropy,
        filter: &dyn FilterCheck,
    ) -> Vec<Candidate> {
        let want = q.want;
        let mut out = Vec::with_capacity(want);
        let mut seen: HashSet<SessionId> = HashSet::new();
        for region_tier in [true, false] {
            if out.len() >= want {
                break;
            }
            // Only the probed ids are copied out of the tier (at most
            // `max_probes`), never the tier itself: a lookup's cost must not
            // grow with the directory.
            let probed: Vec<SessionId> = {
                let ids: &[SessionId] = if region_tier {
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
            let mut pool = Vec::new();
            for id in probed {
                if !seen.insert(id) {
                    continue;
                }
                if let Some(e) = self.sessions.get_mut(&id)
                    && eligible(e, q, now, &self.cfg, self.epoch, filter)
                {
                    pool.push(id);
                    // Enough to choose `want` by two random choices: each
                    // further probe is a cache miss or two and changes
                    // little (a popular item would otherwise cost the full
                    // `max_probes`).
                    if pool.len() >= POOL_PER_WANT * want {
                        break;
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
                let id = pool.swap_remove(pick);
                if let Some(e) = self.sessions.get_mut(&id) {
                    e.assignments.push_back(now);
                    out.push(Candidate {
                        contact: e.ann.contact.clone(),
                        key: e.ann.key,
                        region: e.ann.region.clone(),
                    });
                }
            }
        }
        out
    }

    /// Whether `a` is less loaded than `b` (assignments per allowed client).
    fn load_less(&self, a: SessionId, b: SessionId) -> bool {
        match (self.sessions.get(&a), self.sessions.get(&b)) {
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
            .and_then(|id| self.sessions.get(id))
            .map_or(0, |e| e.assignments.len())
    }
}

fn eligible(
    e: &mut Entry,
    q: &Query<'_>,
    now: Instant,
    cfg: &SessionConfig,
    epoch: Epoch,
    filter: &dyn FilterCheck,
) -> bool {
    if e.ann.version_of(q.repository).is_none_or(|v| v < q.version) {
        return false;
    }
    while e
        .assignments
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= cfg.assignment_window)
    {
        e.assignments.pop_front();
    }
    if e.assignments.len() >= e.ann.max_clients as usize {
        return false;
    }
    filter.holds(&e.ann.filter, epoch, q.item)
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
    list: &mut Vec<SessionId>,
    pos: usize,
    sessions: &mut HashMap<SessionId, Entry>,
    field: impl Fn(&mut Entry) -> &mut usize,
) {
    if pos >= list.len() {
        return;
    }
    list.swap_remove(pos);
    if let Some(moved) = list.get(pos).copied()
        && let Some(e) = sessions.get_mut(&moved)
    {
        *field(e) = pos;
    }
}

#[cfg(test)]
mod tests;
