//! The current index as selection sees it: every item the distribution
//! publishes now, with its package name and version, and the rule that
//! only the latest version of a package is an item at all.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use anonmirror_core::ItemKey;

/// One package file named in an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The file's SHA-256, as the index states it.
    pub key: ItemKey,
    /// The policy's name of the repository it comes from.
    pub repo: String,
    /// The package name (what deny patterns match).
    pub name: String,
    /// The version string (dpkg/pacman style; empty when the index has
    /// none, as in a plain `SHA256SUMS`).
    pub version: String,
    /// The package's metadata forbids announcing it (it may still be
    /// fetched and served to this machine's own package manager).
    pub no_announce: bool,
}

/// The current indexes of every repository, reduced to latest versions.
#[derive(Clone, Debug, Default)]
pub struct CurrentIndex {
    latest: BTreeMap<ItemKey, IndexEntry>,
    superseded: BTreeMap<ItemKey, IndexEntry>,
}

impl CurrentIndex {
    /// Build from entries; where one (repo, name) has several versions,
    /// only the latest is an item, the rest are superseded. Equal versions
    /// keep the smallest key, so every peer picks the same one.
    pub fn new(entries: impl IntoIterator<Item = IndexEntry>) -> CurrentIndex {
        let mut by_name: BTreeMap<(String, String), IndexEntry> = BTreeMap::new();
        let mut superseded = BTreeMap::new();
        for e in entries {
            let slot = (e.repo.clone(), e.name.clone());
            match by_name.get(&slot) {
                None => {
                    by_name.insert(slot, e);
                }
                Some(old) => {
                    let newer = match compare_versions(&e.version, &old.version) {
                        Ordering::Greater => true,
                        Ordering::Less => false,
                        Ordering::Equal => e.key < old.key,
                    };
                    if newer {
                        if let Some(old) = by_name.insert(slot, e) {
                            superseded.insert(old.key, old);
                        }
                    } else if e.key != old.key {
                        superseded.insert(e.key, e);
                    }
                }
            }
        }
        let latest: BTreeMap<_, _> = by_name.into_values().map(|e| (e.key, e)).collect();
        superseded.retain(|k, _| !latest.contains_key(k));
        CurrentIndex { latest, superseded }
    }

    /// The entry of a current item.
    pub fn get(&self, key: &ItemKey) -> Option<&IndexEntry> {
        self.latest.get(key)
    }

    /// Whether `key` is an older version that a newer one replaced.
    pub fn is_superseded(&self, key: &ItemKey) -> bool {
        self.superseded.contains_key(key)
    }

    /// Every current item (latest versions), in key order: the universe of
    /// popularity reports.
    pub fn items(&self) -> Vec<ItemKey> {
        self.latest.keys().copied().collect()
    }

    /// Current entries in key order.
    pub fn entries(&self) -> impl Iterator<Item = &IndexEntry> {
        self.latest.values()
    }

    /// The universe of popularity reports: one key per package with a
    /// current item ([`popularity_key`]), in key order. Popularity is
    /// counted by package, not by file, so it carries across versions: a
    /// new version of a popular package is popular the moment it enters
    /// the index, and a report says "holds some version of it".
    pub fn popularity_universe(&self) -> Vec<ItemKey> {
        let mut keys: Vec<ItemKey> = self
            .latest
            .values()
            .map(|e| popularity_key(&e.repo, &e.name))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The popularity keys of the current items among `items`.
    pub fn popularity_keys<'a>(
        &self,
        items: impl IntoIterator<Item = &'a ItemKey>,
    ) -> std::collections::HashSet<ItemKey> {
        items
            .into_iter()
            .filter_map(|k| self.latest.get(k))
            .map(|e| popularity_key(&e.repo, &e.name))
            .collect()
    }

    /// `by_package` (estimates counted over [`Self::popularity_universe`])
    /// as estimates of the current items: each takes its package's.
    pub fn items_by_package(
        &self,
        mut by_package: crate::PopularitySnapshot,
    ) -> crate::PopularitySnapshot {
        let packages = std::mem::take(&mut by_package.items);
        by_package.items = self
            .latest
            .values()
            .filter_map(|e| {
                packages
                    .get(&popularity_key(&e.repo, &e.name))
                    .map(|est| (e.key, *est))
            })
            .collect();
        by_package
    }

    /// Number of current items.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether there are no current items.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// The key a package's popularity is counted under: its repository's
/// name and its package name (never its version or file), hashed so that
/// it looks like any item key to the report encoding.
pub fn popularity_key(repo: &str, name: &str) -> ItemKey {
    let mut h = blake3::Hasher::new_derive_key("anonmirror 2026-12 popularity key of a package");
    h.update(&(repo.len() as u64).to_le_bytes());
    h.update(repo.as_bytes());
    h.update(name.as_bytes());
    ItemKey(*h.finalize().as_bytes())
}

/// dpkg's version order (`[epoch:]upstream[-revision]`, `~` before
/// everything, digits compared numerically), which also orders pacman's
/// `[epoch:]pkgver-pkgrel` correctly in all but exotic cases. An index
/// lists several versions of one package rarely (Debian pools); getting
/// an exotic one wrong only announces an older file that is still in the
/// index.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
                (e.parse().unwrap_or(u64::MAX), r)
            }
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u.to_owned(), r.to_owned()),
            None => (epoch, rest.to_owned(), String::new()),
        }
    };
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(&ua, &ub))
        .then_with(|| verrevcmp(&ra, &rb))
}

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefixes, character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        // Digit runs, numerically: the longer run wins, else the first
        // differing digit.
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports counted by package carry a package's popularity to its new
    /// version: the day a security update enters the index, it is as
    /// canonical as the version it replaces, and a package nobody reported
    /// stays below the floor.
    #[test]
    fn a_new_version_of_a_popular_package_is_canonical_at_once() {
        use anonmirror_core::{Epoch, SeededEntropy};
        use anonmirror_privacy::{Level, Policy};

        use crate::params::ReportParams;
        use crate::report::{PermanentMemo, encode_report};
        use crate::snapshot::LevelPeers;
        let entry = |name: &str, version: &str, k: u8| IndexEntry {
            key: ItemKey([k; 32]),
            repo: "deb".into(),
            name: name.into(),
            version: version.into(),
            no_announce: false,
        };
        let before = CurrentIndex::new([entry("openssl", "3.0.1", 1), entry("rare", "1", 2)]);
        // The update: openssl 3.0.2 enters the index (the old file stays
        // in the pool, superseded).
        let after = CurrentIndex::new([
            entry("openssl", "3.0.1", 1),
            entry("openssl", "3.0.2", 3),
            entry("rare", "1", 2),
        ]);
        assert_eq!(before.popularity_universe(), after.popularity_universe());

        // 300 peers held openssl 3.0.1 last epoch; nobody held "rare".
        let params = ReportParams::new(4096, 1, 0.0, 0.0, 1.0).expect("params");
        let epoch = Epoch(9);
        let mut entropy = SeededEntropy::new(5);
        let mut agg = crate::Aggregator::new(params, epoch);
        let universe = before.popularity_universe();
        let held = before.popularity_keys(&[ItemKey([1; 32])]);
        for _ in 0..300 {
            let memo = PermanentMemo::draw(&params, &mut entropy);
            let r = encode_report(&params, epoch, &memo, &universe, &held, &mut entropy)
                .expect("report");
            agg.add(&r).expect("added");
        }
        let by_package = agg.snapshot(&universe, LevelPeers([0, 0, 300, 0]));
        let snap = after.items_by_package(by_package);
        let new = ItemKey([3; 32]);
        assert!(snap.conservative_holders(&new) > 250.0, "{:?}", snap.items);
        assert!(!snap.items.contains_key(&ItemKey([1; 32])), "superseded");
        let balanced = Policy::defaults_for(Level::Balanced);
        let canonical =
            crate::canonical::canonical_set(Level::Balanced, &balanced.popularity, &snap, &after);
        assert_eq!(canonical.into_iter().collect::<Vec<_>>(), vec![new]);
    }

    #[test]
    fn versions_order_like_dpkg() {
        let lt = [
            ("1.0", "1.1"),
            ("1.0~rc1", "1.0"),
            ("1.9", "1.10"),
            ("1.0-1", "1.0-2"),
            ("2:0.1", "10:0.0"),
            ("1.0", "1:0.1"),
            ("1.0a", "1.0b"),
            ("6.8-1", "6.10-1"),
        ];
        for (a, b) in lt {
            assert_eq!(compare_versions(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare_versions(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(compare_versions("1.01", "1.1"), Ordering::Equal);
        assert_eq!(compare_versions("", ""), Ordering::Equal);
    }

    #[test]
    fn only_the_latest_version_is_current() {
        let e = |b: u8, v: &str| IndexEntry {
            key: ItemKey([b; 32]),
            repo: "deb".into(),
            name: "bash".into(),
            version: v.into(),
            no_announce: false,
        };
        let idx = CurrentIndex::new([e(1, "5.1-2"), e(2, "5.2-1"), e(3, "5.1-9")]);
        assert_eq!(idx.items(), vec![ItemKey([2; 32])]);
        assert!(idx.is_superseded(&ItemKey([1; 32])) && idx.is_superseded(&ItemKey([3; 32])));
        assert!(!idx.is_superseded(&ItemKey([2; 32])));
    }
}
