use std::collections::BTreeMap;

use anonmirror_privacy::Policy;
use proptest::prelude::*;

use super::*;
use crate::index::IndexEntry;
use crate::snapshot::{Estimate, LevelPeers};

const RENDEZVOUS: &str = "[rendezvous]\naddress = \"rendezvous.example.org:7880\"\n\
    key = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"\n\
    [[repository]]\nname = \"deb\"\nkind = \"apt\"\nurl = \"https://deb.example.org/debian/\"\n";

fn policy(level: &str, extra: &str) -> Policy {
    Policy::from_toml_str(&format!("level = \"{level}\"\n{extra}{RENDEZVOUS}"))
        .expect("valid policy")
}

fn key(i: u8) -> ItemKey {
    ItemKey([i; 32])
}

/// Items 1..=10 at popularity 0.9, 0.8, …; 11 rare; 12 an old version of
/// 1; 13 in an unconfigured repository; 14 denied by name; 15 forbidden by
/// metadata. 1 000 peers, 400 strict, 500 balanced.
fn world() -> (CurrentIndex, PopularitySnapshot) {
    let mut entries: Vec<IndexEntry> = (1..=11)
        .map(|i| IndexEntry {
            key: key(i),
            repo: "deb".into(),
            name: format!("pkg{i}"),
            version: "2.0".into(),
            no_announce: false,
        })
        .collect();
    entries.push(IndexEntry {
        key: key(12),
        repo: "deb".into(),
        name: "pkg1".into(),
        version: "1.0".into(),
        no_announce: false,
    });
    for (i, repo, name, forbid) in [
        (13, "other", "x", false),
        (14, "deb", "secret-tool", false),
        (15, "deb", "y", true),
    ] {
        entries.push(IndexEntry {
            key: key(i),
            repo: repo.into(),
            name: name.into(),
            version: "1".into(),
            no_announce: forbid,
        });
    }
    let index = CurrentIndex::new(entries);
    let mut items = BTreeMap::new();
    for i in 1..=10u8 {
        items.insert(
            key(i),
            Estimate {
                holders: 1_000.0 - 100.0 * f64::from(i - 1),
                se: 5.0,
            },
        );
    }
    items.insert(
        key(11),
        Estimate {
            holders: 3.0,
            se: 2.0,
        },
    );
    items.insert(
        key(13),
        Estimate {
            holders: 3.0,
            se: 2.0,
        },
    );
    for i in 14..=15 {
        items.insert(
            key(i),
            Estimate {
                holders: 950.0,
                se: 5.0,
            },
        );
    }
    let snapshot = PopularitySnapshot {
        epoch: Epoch(5),
        prior: false,
        source: "test".into(),
        peers: 1_000,
        level_peers: LevelPeers([100, 0, 500, 400]),
        params: None,
        z: 3.0,
        items,
    };
    (index, snapshot)
}

#[test]
fn each_stage_keeps_its_count_and_what_it_dropped() {
    let (index, snapshot) = world();
    let policy = policy(
        "balanced",
        "[serve]\ndeny = [\"secret-*\"]\n[announce]\nexposure_budget_bits = 11\n",
    );
    let inventory: Vec<ItemKey> = [1, 2, 9, 11, 12, 13, 14, 15, 99, 1].map(key).to_vec();
    let s = select(&policy, Epoch(5), &inventory, &index, &snapshot);
    let summary: Vec<(&str, usize)> = s.stages.iter().map(|st| (st.name, st.kept)).collect();
    assert_eq!(
        summary,
        [
            ("held", 9),
            ("in current index (latest version)", 7),
            ("allowed by policy", 4),
            ("canonical", 3),
            ("within exposure budget", 2),
        ]
    );
    assert_eq!(
        s.stages[1].dropped,
        [
            (key(12), DropReason::Superseded),
            (key(99), DropReason::NotInIndex)
        ]
    );
    assert_eq!(
        s.stages[2].dropped,
        [
            (key(13), DropReason::RepositoryNotConfigured),
            (key(14), DropReason::Denied),
            (key(15), DropReason::MetadataForbids)
        ]
    );
    assert_eq!(s.stages[3].dropped, [(key(11), DropReason::BelowFloor)]);
    // Balanced: ⌈Σp⌉ = ⌈0.9 + … + 0.1 + 0.95⌉ = 7 over canonical 1..=10, 14.
    // Held 1, 2, 9 go first, padded with 3..=6; that is 11.77 bits, over
    // the budget of 11, so the rarest (9, p = 0.2) is swapped for the
    // commonest unannounced (7, p = 0.4): 10.35 bits.
    let count = s.announcement.as_ref().expect("announces").count;
    assert_eq!(count, 7);
    assert_eq!(s.announced, [1, 2, 3, 4, 5, 6, 7].map(key).into());
    assert_eq!(s.stages[4].dropped, [(key(9), DropReason::OverBudget)]);
    assert_eq!(s.padding, [3, 4, 5, 6, 7].map(key).into());
    assert!(s.within_budget);
    assert!(
        (s.exposure.total() - 10.35).abs() < 0.01,
        "{:?}",
        s.exposure
    );
    assert_eq!(s.reportable, [1, 2, 9, 11].map(key).into());
    assert_eq!(s.canonical_denied, [14].map(key).into());
}

#[test]
fn strict_peers_with_different_holdings_announce_identical_bytes() {
    let (index, snapshot) = world();
    let policy = policy("strict", "");
    let a = select(&policy, Epoch(5), &[key(1), key(2)], &index, &snapshot);
    let b = select(
        &policy,
        Epoch(5),
        &[key(3), key(11), key(13)],
        &index,
        &snapshot,
    );
    let (fa, fb) = (
        a.announcement.expect("a announces"),
        b.announcement.expect("b announces"),
    );
    assert_eq!(fa.to_bytes(), fb.to_bytes());
    // Strict's floor (k ≥ 100 and 25 %, conservatively) admits 1..=8, 14, 15 of
    // which 15 is forbidden by metadata for everyone, and its filter holds
    // exactly that.
    assert_eq!(fa.count, 9);
    assert!(fa.may_contain(&key(8)) && !a.announced.contains(&key(9)));
    // The exposure is the level's, −log2(400/1000), and 9 × −log2(1 − 1/N).
    assert!((a.exposure.total() - b.exposure.total()).abs() < 1e-12);
    assert!(
        (a.exposure.total() - 1.3219).abs() < 0.02,
        "{:?}",
        a.exposure
    );
    // A strict peer whose policy denies a canonical item stands out: log2 N
    // bits for the omission alone.
    let denying = self::policy("strict", "[serve]\ndeny = [\"pkg3\"]\n");
    let d = select(&denying, Epoch(5), &[key(1)], &index, &snapshot);
    assert!(d.exposure.omitted_bits > 9.9 && !d.within_budget);
    // Another epoch gives another filter.
    let c = select(&policy, Epoch(6), &[key(1)], &index, &snapshot);
    assert_ne!(c.announcement.expect("announces").bits, fa.bits);
}

#[test]
fn strict_over_budget_withholds_and_open_sheds_rare_items() {
    let (index, snapshot) = world();
    let tight = policy("strict", "[announce]\nexposure_budget_bits = 0.5\n");
    let s = select(&tight, Epoch(5), &[key(1)], &index, &snapshot);
    assert!(!s.within_budget && s.announcement.is_none() && s.announced.is_empty());
    assert_eq!(s.stages[4].kept, 0);
    assert_eq!(s.stages[4].dropped, [(key(1), DropReason::OverBudget)]);

    let open = policy("open", "[announce]\nexposure_budget_bits = 20\n");
    let s = select(
        &open,
        Epoch(5),
        &[key(1), key(11), key(10)],
        &index,
        &snapshot,
    );
    assert!(s.within_budget, "{:?}", s.exposure);
    assert!(
        !s.announced.contains(&key(11)),
        "the rarest item goes first"
    );
    assert!(
        s.stages[4]
            .dropped
            .contains(&(key(11), DropReason::OverBudget))
    );
}

#[test]
fn off_announces_nothing() {
    let (index, snapshot) = world();
    let off = Policy::from_toml_str("level = \"off\"\n").expect("valid");
    let s = select(&off, Epoch(5), &[key(1)], &index, &snapshot);
    assert!(s.announcement.is_none() && s.canonical.is_empty());
    assert_eq!(s.exposure.total(), 0.0);
}

proptest! {
    #[test]
    fn announcement_round_trips_and_rejects_truncation_and_trailing(
        items in proptest::collection::btree_set(any::<[u8; 32]>(), 0..40),
        level in 1u8..=3, epoch: u64, capacity in 0usize..10_000, cut in 0usize..100_000, extra in 1usize..4,
    ) {
        let level = [Level::Open, Level::Balanced, Level::Strict][usize::from(level - 1)];
        let items: BTreeSet<ItemKey> = items.into_iter().map(ItemKey).collect();
        let layout = Layout::for_capacity(capacity.max(items.len()), None);
        let ann = Announcement::build(level, Epoch(epoch), layout, &items);
        prop_assert!(items.iter().all(|k| ann.may_contain(k)));
        let bytes = ann.to_bytes();
        prop_assert_eq!(Announcement::from_bytes(&bytes), Ok(ann));
        let cut = cut % bytes.len();
        let truncated = Announcement::from_bytes(&bytes[..cut]);
        prop_assert!(matches!(truncated, Err(crate::Error::Truncated { .. })), "{:?}", truncated);
        let mut longer = bytes.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        let trailing = Announcement::from_bytes(&longer);
        prop_assert!(matches!(trailing, Err(crate::Error::TrailingBytes { .. })), "{:?}", trailing);
    }
}
