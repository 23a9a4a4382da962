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

    /// Number of current items.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether there are no current items.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
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
