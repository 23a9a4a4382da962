//! The selection pipeline of DESIGN.md §5, per epoch:
//!
//! held → in the current index (latest version only) → allowed by policy
//! (configured repositories, deny patterns, metadata forbidding
//! announcement) → in the level's canonical set → within the exposure
//! budget.
//!
//! Each stage keeps how many held items survive it and which it dropped,
//! with the reason, so `anonmirror audit` can show every step. The result
//! also carries the announcement itself (padding included: at `strict`
//! and `balanced` a peer announces canonical items it does not hold and
//! fetches them on demand), its exposure, and the set a popularity report
//! may be built from.
//!
//! # The budget stage
//!
//! When I(A) exceeds `announce.exposure_budget_bits`:
//! - `strict` cannot change anything without breaking the identical
//!   filters that are its point: it withholds the announcement;
//! - `balanced` swaps its rarest announced item for the most common
//!   canonical item it does not announce, while that lowers I(A) (the count
//!   stays fixed);
//! - `open` (with a numeric budget) drops its rarest items, while that
//!   lowers I(A).
//!
//! If I(A) is still over budget the announcement is withheld (the peer
//! serves nobody this epoch) and the result says so.

use std::collections::{BTreeMap, BTreeSet};

use anonmirror_core::{Epoch, ItemKey};
use anonmirror_privacy::{Level, Policy};
use serde::Serialize;

use crate::announcement::{Announcement, Layout};
use crate::canonical::canonical_set;
use crate::exposure::{Exposure, clamp_popularity, exposure, item_bits};
use crate::hash::{EpochHasher, Purpose};
use crate::index::CurrentIndex;
use crate::snapshot::PopularitySnapshot;

/// Why a held item left the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Not in any current index.
    NotInIndex,
    /// An older version of a package whose newer version is current.
    Superseded,
    /// From a repository the policy does not configure.
    RepositoryNotConfigured,
    /// Its package name matches `serve.deny`.
    Denied,
    /// The package's metadata forbids announcing it.
    MetadataForbids,
    /// Its conservative popularity is below the level's floor.
    BelowFloor,
    /// Announcing it would exceed the exposure budget.
    OverBudget,
    /// The level's fixed item count left no room for it (`balanced`, a
    /// peer holding more canonical items than a typical peer).
    FixedCount,
}

/// One stage of the pipeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    /// The stage's name, as the audit prints it.
    pub name: &'static str,
    /// Held items that survive it.
    pub kept: usize,
    /// Held items it dropped, and why.
    pub dropped: Vec<(ItemKey, DropReason)>,
}

/// Everything the pipeline decided for one epoch.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The level selected for.
    pub level: Level,
    /// The five stages, in order.
    pub stages: Vec<Stage>,
    /// The level's canonical set (before this peer's deny list).
    pub canonical: BTreeSet<ItemKey>,
    /// What is announced: held items and padding.
    pub announced: BTreeSet<ItemKey>,
    /// Announced items this peer does not hold (padding).
    pub padding: BTreeSet<ItemKey>,
    /// Canonical items this peer's policy forbids announcing: a `strict`
    /// peer with any of these announces a filter unlike its level's.
    pub canonical_denied: BTreeSet<ItemKey>,
    /// Announced items below the level's floor (possible only at `open`,
    /// whose floor is zero, or by a bug): the audit warns.
    pub below_floor_announced: BTreeSet<ItemKey>,
    /// I(A).
    pub exposure: Exposure,
    /// Whether I(A) is within the budget (and so whether anything is
    /// announced).
    pub within_budget: bool,
    /// The filter, when within budget and the level serves.
    pub announcement: Option<Announcement>,
    /// Held items that may go into a popularity report: current, latest
    /// version, allowed by policy.
    pub reportable: BTreeSet<ItemKey>,
}

/// Run the pipeline for `policy`'s level.
pub fn select(
    policy: &Policy,
    epoch: Epoch,
    inventory: &[ItemKey],
    index: &CurrentIndex,
    snapshot: &PopularitySnapshot,
) -> Selection {
    let level = policy.level;
    let held: BTreeSet<ItemKey> = inventory.iter().copied().collect();
    let mut stages = vec![Stage {
        name: "held",
        kept: held.len(),
        dropped: Vec::new(),
    }];

    // In the current index, latest version only.
    let mut current = BTreeSet::new();
    let mut dropped = Vec::new();
    for key in &held {
        if index.get(key).is_some() {
            current.insert(*key);
        } else if index.is_superseded(key) {
            dropped.push((*key, DropReason::Superseded));
        } else {
            dropped.push((*key, DropReason::NotInIndex));
        }
    }
    stages.push(Stage {
        name: "in current index (latest version)",
        kept: current.len(),
        dropped,
    });

    // Allowed by policy.
    let allowed_reason = |key: &ItemKey| -> Option<DropReason> {
        let entry = index.get(key)?;
        if !policy.repositories.iter().any(|r| r.name == entry.repo) {
            Some(DropReason::RepositoryNotConfigured)
        } else if policy.serve.denies(&entry.name) {
            Some(DropReason::Denied)
        } else if entry.no_announce {
            Some(DropReason::MetadataForbids)
        } else {
            None
        }
    };
    let mut allowed = BTreeSet::new();
    let mut dropped = Vec::new();
    for key in &current {
        match allowed_reason(key) {
            None => {
                allowed.insert(*key);
            }
            Some(reason) => dropped.push((*key, reason)),
        }
    }
    stages.push(Stage {
        name: "allowed by policy",
        kept: allowed.len(),
        dropped,
    });
    let reportable = allowed.clone();

    // Canonical.
    let canonical = canonical_set(level, &policy.popularity, snapshot, index);
    let (held_canonical, below): (BTreeSet<ItemKey>, BTreeSet<ItemKey>) =
        allowed.iter().partition(|k| canonical.contains(*k));
    stages.push(Stage {
        name: "canonical",
        kept: held_canonical.len(),
        dropped: below.iter().map(|k| (*k, DropReason::BelowFloor)).collect(),
    });

    let canonical_denied: BTreeSet<ItemKey> = canonical
        .iter()
        .filter(|k| allowed_reason(k).is_some())
        .copied()
        .collect();
    let announceable: BTreeSet<ItemKey> =
        canonical.difference(&canonical_denied).copied().collect();
    // The p of the exposure formula is the chance that a peer of the level
    // announces the item. At `strict` every peer announces the whole
    // canonical set, so it is 1 (clamped to 1 − 1/N): announcing costs
    // almost nothing and omitting one item costs log2 N bits, as it
    // should, since it makes the filter unique. Elsewhere the holding
    // popularity stands in for it; padding makes announcing more likely
    // than holding, so this overstates the cost of what is announced.
    let holding: BTreeMap<ItemKey, f64> = canonical
        .iter()
        .map(|k| (*k, snapshot.fraction(k)))
        .collect();
    let popularity: BTreeMap<ItemKey, f64> = if level == Level::Strict {
        canonical.iter().map(|k| (*k, 1.0)).collect()
    } else {
        holding.clone()
    };
    let peers = snapshot.peers;
    let level_peers = snapshot.level_peers.get(level);
    let clamped = |k: &ItemKey| clamp_popularity(popularity.get(k).copied().unwrap_or(0.0), peers);
    let ranker = EpochHasher::new(Purpose::Announcement, epoch);
    // Most popular first; the epoch-keyed rank breaks ties identically on
    // every peer.
    let by_popularity = |items: &mut Vec<ItemKey>| {
        items.sort_by(|a, b| {
            clamped(b)
                .total_cmp(&clamped(a))
                .then_with(|| ranker.rank(a).cmp(&ranker.rank(b)))
        });
    };

    let (mut announced, layout) = match level {
        Level::Off => (BTreeSet::new(), None),
        Level::Strict => {
            let layout = Layout::for_capacity(canonical.len(), Some(len_u32(canonical.len())));
            (announceable.clone(), Some(layout))
        }
        Level::Balanced => {
            let typical: f64 = canonical.iter().map(|k| holding[k]).sum();
            let count = (typical.ceil() as usize)
                .clamp(usize::from(!canonical.is_empty()), canonical.len());
            let mut held_first: Vec<ItemKey> = held_canonical.iter().copied().collect();
            by_popularity(&mut held_first);
            let mut others: Vec<ItemKey> =
                announceable.difference(&held_canonical).copied().collect();
            by_popularity(&mut others);
            let chosen: BTreeSet<ItemKey> =
                held_first.into_iter().chain(others).take(count).collect();
            (
                chosen,
                Some(Layout::for_capacity(count, Some(len_u32(count)))),
            )
        }
        Level::Open => (
            allowed.clone(),
            Some(Layout::for_capacity(index.len(), None)),
        ),
    };

    // Within the exposure budget.
    let budget = policy.announce.exposure_budget_bits;
    let mut over_budget_dropped = Vec::new();
    let mut exp = if level.serves() {
        exposure(level_peers, peers, &popularity, &announced)
    } else {
        Exposure::default()
    };
    if !budget.allows(exp.total()) {
        // Both repairs walk items once in sorted order and update I(A) by
        // the change each step makes, rather than recomputing the sums.
        // Cost of announcing rather than omitting: positive for items held
        // by fewer than half the peers.
        let gain = |k: &ItemKey| {
            if popularity.contains_key(k) {
                item_bits(clamped(k), true) - item_bits(clamped(k), false)
            } else {
                0.0
            }
        };
        let mut rarest_first: Vec<(f64, ItemKey)> =
            announced.iter().map(|k| (gain(k), *k)).collect();
        rarest_first.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut total = exp.total();
        match level {
            Level::Balanced => {
                let mut commonest_first: Vec<(f64, ItemKey)> = announceable
                    .difference(&announced)
                    .map(|k| (gain(k), *k))
                    .collect();
                commonest_first.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for ((g_out, out), (g_in, inn)) in rarest_first.iter().zip(&commonest_first) {
                    if budget.allows(total) || g_in >= g_out {
                        break;
                    }
                    announced.remove(out);
                    announced.insert(*inn);
                    total += g_in - g_out;
                    if held.contains(out) {
                        over_budget_dropped.push((*out, DropReason::OverBudget));
                    }
                }
            }
            Level::Open => {
                for (g_out, out) in &rarest_first {
                    if budget.allows(total) || *g_out <= 0.0 {
                        break;
                    }
                    announced.remove(out);
                    total -= g_out;
                    over_budget_dropped.push((*out, DropReason::OverBudget));
                }
            }
            Level::Strict | Level::Off => {}
        }
        exp = exposure(level_peers, peers, &popularity, &announced);
    }
    let within_budget = budget.allows(exp.total());
    let held_announced: BTreeSet<ItemKey> = announced.intersection(&held).copied().collect();
    let (kept, dropped) = if within_budget {
        let mut d = over_budget_dropped;
        // Held canonical items that the fixed count left out.
        let already: BTreeSet<ItemKey> = d.iter().map(|(k, _)| *k).collect();
        for k in &held_canonical {
            if !announced.contains(k) && !already.contains(k) {
                d.push((*k, DropReason::FixedCount));
            }
        }
        (held_announced.len(), d)
    } else {
        (
            0,
            held_canonical
                .iter()
                .map(|k| (*k, DropReason::OverBudget))
                .collect(),
        )
    };
    stages.push(Stage {
        name: "within exposure budget",
        kept,
        dropped,
    });

    let padding: BTreeSet<ItemKey> = announced.difference(&held).copied().collect();
    let below_floor_announced = announced
        .iter()
        .filter(|k| level != Level::Open && !canonical.contains(*k))
        .copied()
        .collect();
    let announcement = match layout {
        Some(layout) if within_budget => {
            Some(Announcement::build(level, epoch, layout, &announced))
        }
        _ => None,
    };
    Selection {
        level,
        stages,
        canonical,
        announced: if within_budget {
            announced
        } else {
            BTreeSet::new()
        },
        padding: if within_budget {
            padding
        } else {
            BTreeSet::new()
        },
        canonical_denied,
        below_floor_announced,
        exposure: exp,
        within_budget,
        announcement,
        reportable,
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
