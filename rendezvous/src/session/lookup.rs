//! Lookup: which live sessions a client is offered for an item, by
//! filter tests, freshness, limits and two random choices (see the
//! [`super`] module docs), and its probing of sliced groups and loose
//! sessions.

use std::time::Instant;

use anonmirror_core::{Entropy, PeerKey};

use super::{Entry, Query, SessionTable, assignment_time};
use crate::hooks::{ItemProbe, PreparedFilter};
use crate::msg::CandidateWire;

impl SessionTable {
    /// Peers for an item; see the module docs. Each returned candidate
    /// counts as an assignment at `now`.
    pub fn lookup(
        &mut self,
        q: &Query<'_>,
        now: Instant,
        rng: &mut dyn Entropy,
    ) -> Vec<CandidateWire> {
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
                    out.push(CandidateWire {
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

/// A tier's probing stops once this many eligible sessions per wanted
/// candidate are found.
const POOL_PER_WANT: usize = 4;

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
