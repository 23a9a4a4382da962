//! The rendezvous's signed directory, kept by the gateway and matched
//! locally: which peers may hold an item, with no message to anyone.
//!
//! The directory ([`anonmirror_rendezvous::directory::Snapshot`]) lists
//! every live session's announcement: contact, session key, limits,
//! region, index versions and the announcement filter itself. The gateway
//! watches it (signed with the pinned directory key): the rendezvous sends
//! it at the start and again within a second of each change of its live
//! sessions (`WatchDirectory`), so a volunteer is matched as soon as it
//! announces; while no watch can be had (the rendezvous is down, or has
//! all the watchers it takes) the gateway fetches it every [`REFRESH`] or
//! so. It answers "who holds item X" from it: the same
//! filter test the rendezvous's lookup runs, so a download costs no
//! rendezvous round trip and the rendezvous no longer learns each item a
//! client fetches, only that it fetches the whole directory now and then.
//!
//! A directory older than [`MAX_AGE`] (the rendezvous unreachable for that
//! long) is dropped: its contacts and sessions are likely gone, and
//! waiting on them would only cost the hedge deadline.

use std::time::Duration;

use anonmirror_announce::announcement::{AnnouncementHeader, ItemHashes};
use anonmirror_core::{Entropy, Epoch, ItemKey, OsEntropy};
use anonmirror_overlay::swarm::PeerAddr;
use anonmirror_rendezvous::directory::Snapshot;
use tokio::time::Instant;

use crate::peers::Candidate;

/// How often the directory is fetched anew, or a watch tried again, while
/// it cannot be watched (with up to a fifth more or less, at random, so
/// gateways do not ask in step).
pub const REFRESH: Duration = Duration::from_secs(30);

/// How old a directory may grow (no successful refresh) and still be used.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// One peer of the directory, as the gateway matches it.
#[derive(Clone, Debug)]
struct Entry {
    candidate: Candidate,
    header: AnnouncementHeader,
    filter: Vec<u8>,
    region: Option<String>,
    snapshots: Vec<(String, u64)>,
}

/// A verified directory, decoded once.
#[derive(Clone, Debug)]
pub struct LocalDirectory {
    epoch: Epoch,
    entries: Vec<Entry>,
    fetched: Instant,
}

impl LocalDirectory {
    /// Decodes `snapshot` (already verified against the pinned key),
    /// fetched at `fetched`. An announcement whose filter does not decode,
    /// or belongs to another epoch than the directory's, is left out (its
    /// bit positions mean nothing under this epoch); so is an unusable
    /// contact. Returns the directory and how many were left out.
    pub fn new(snapshot: Snapshot, fetched: Instant) -> (LocalDirectory, usize) {
        let epoch = Epoch(snapshot.epoch);
        let listed = snapshot.peers.len();
        let entries: Vec<Entry> = snapshot
            .peers
            .into_iter()
            .filter_map(|a| {
                let header = AnnouncementHeader::parse(&a.filter).ok()?;
                if header.epoch != epoch {
                    return None;
                }
                Some(Entry {
                    candidate: Candidate {
                        addr: PeerAddr {
                            contact: anonmirror_core::Contact::from(a.contact),
                            key: a.key,
                        },
                        level: header.level,
                        epoch,
                    },
                    header,
                    filter: a.filter,
                    region: a.region,
                    snapshots: a.snapshots,
                })
            })
            .collect();
        let left_out = listed - entries.len();
        (
            LocalDirectory {
                epoch,
                entries,
                fetched,
            },
            left_out,
        )
    }

    /// Peers listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it lists no peer.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When it was fetched.
    pub fn fetched(&self) -> Instant {
        self.fetched
    }

    /// Up to `want` peers whose announcement may hold `item` of
    /// `repository`, with that repository's index at least as fresh as
    /// `version`, and that `usable` accepts; those in `region` first, each
    /// tier in random order (so that gateways spread over the holders).
    pub fn holders(
        &self,
        repository: &str,
        version: u64,
        item: &ItemKey,
        region: Option<&str>,
        want: usize,
        usable: impl Fn(&Candidate) -> bool,
    ) -> Vec<Candidate> {
        let hashes = ItemHashes::new(item, self.epoch);
        let fresh = |e: &Entry| {
            e.snapshots
                .iter()
                .any(|(name, v)| name == repository && *v >= version)
        };
        pick(
            self.entries.iter().filter(|e| {
                fresh(e) && e.header.may_contain(&e.filter, &hashes) && usable(&e.candidate)
            }),
            region,
            want,
        )
    }
}

impl LocalDirectory {
    /// Up to `n` peers at random that `usable` accepts, those in `region`
    /// first: the ones worth a channel before any request.
    pub fn some(
        &self,
        n: usize,
        region: Option<&str>,
        usable: impl Fn(&Candidate) -> bool,
    ) -> Vec<Candidate> {
        pick(
            self.entries.iter().filter(|e| usable(&e.candidate)),
            region,
            n,
        )
    }
}

/// Up to `n` of `entries`: those in `region` first, each tier in random
/// order (so that gateways spread over the peers).
fn pick<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    region: Option<&str>,
    n: usize,
) -> Vec<Candidate> {
    let (mut near, mut far): (Vec<&Entry>, Vec<&Entry>) =
        entries.partition(|e| region.is_some() && e.region.as_deref() == region);
    let mut entropy = OsEntropy;
    shuffle(&mut near, &mut entropy);
    shuffle(&mut far, &mut entropy);
    near.into_iter()
        .chain(far)
        .take(n)
        .map(|e| e.candidate.clone())
        .collect()
}

/// Fisher–Yates.
pub(crate) fn shuffle<T>(items: &mut [T], entropy: &mut impl Entropy) {
    for i in (1..items.len()).rev() {
        let j = entropy.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use anonmirror_announce::Announcement;
    use anonmirror_announce::announcement::Layout;
    use anonmirror_core::PeerKey;
    use anonmirror_privacy::Level;
    use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire};
    use std::collections::BTreeSet;

    fn key(i: u8) -> ItemKey {
        ItemKey([i; 32])
    }

    /// Peer `peer`'s announcement of `items` (item `i` is `ItemKey([i; 32])`)
    /// at `epoch`, with index version `version` of repository `deb`.
    pub(crate) fn announcement(
        peer: u8,
        epoch: u64,
        items: &[u8],
        region: Option<&str>,
        version: u64,
    ) -> AnnouncementWire {
        let set: BTreeSet<ItemKey> = items.iter().map(|i| key(*i)).collect();
        let filter = Announcement::build(
            Level::Open,
            Epoch(epoch),
            Layout::for_capacity(set.len().max(1), None),
            &set,
        );
        AnnouncementWire {
            contact: ContactWire::from(
                format!("10.0.0.{peer}:7000")
                    .parse::<std::net::SocketAddr>()
                    .expect("addr"),
            ),
            key: PeerKey([peer; 32]),
            max_clients: 8,
            upload_rate: 1 << 20,
            region: region.map(str::to_owned),
            snapshots: vec![("deb".to_owned(), version)],
            filter: filter.to_bytes(),
        }
    }

    /// A directory of epoch 9 listing `peers`, fetched now.
    pub(crate) fn directory(peers: Vec<AnnouncementWire>) -> (LocalDirectory, usize) {
        LocalDirectory::new(
            Snapshot {
                epoch: 9,
                generated: 0,
                region: None,
                peers,
            },
            Instant::now(),
        )
    }

    fn keys(found: &[Candidate]) -> BTreeSet<u8> {
        found.iter().map(|c| c.addr.key.0[0]).collect()
    }

    #[test]
    fn holders_are_the_peers_whose_filter_and_index_match() {
        let (d, left_out) = directory(vec![
            announcement(1, 9, &[1, 2], None, 5),
            announcement(2, 9, &[2, 3], None, 5),
            // An older index than the client's: not asked.
            announcement(3, 9, &[2], None, 4),
            // Another epoch: its positions mean nothing now.
            announcement(4, 8, &[2], None, 5),
        ]);
        assert_eq!((d.len(), left_out), (3, 1));
        let all = |_: &Candidate| true;
        assert_eq!(
            keys(&d.holders("deb", 5, &key(2), None, 9, all)),
            [1, 2].into()
        );
        assert_eq!(
            keys(&d.holders("deb", 5, &key(1), None, 9, all)),
            [1].into()
        );
        assert_eq!(
            keys(&d.holders("deb", 4, &key(2), None, 9, all)),
            [1, 2, 3].into()
        );
        assert!(d.holders("rpm", 0, &key(2), None, 9, all).is_empty());
        assert!(d.holders("deb", 5, &key(200), None, 9, all).is_empty());
        let not_one = |c: &Candidate| c.addr.key.0[0] != 1;
        assert_eq!(
            keys(&d.holders("deb", 5, &key(2), None, 9, not_one)),
            [2].into()
        );
        let found = d.holders("deb", 5, &key(2), None, 9, all);
        assert!(
            found
                .iter()
                .all(|c| c.level == Level::Open && c.epoch == Epoch(9))
        );
    }

    #[test]
    fn the_region_comes_first_and_the_rest_spreads_at_random() {
        let mut peers = vec![announcement(1, 9, &[7], Some("eu"), 1)];
        peers.extend((2..12).map(|p| announcement(p, 9, &[7], None, 1)));
        let (d, _) = directory(peers);
        let mut firsts = BTreeSet::new();
        for _ in 0..200 {
            let found = d.holders("deb", 1, &key(7), Some("eu"), 3, |_| true);
            assert_eq!(found.len(), 3);
            assert_eq!(found[0].addr.key.0[0], 1, "the region's peer first");
            firsts.insert(found[1].addr.key.0[0]);
        }
        // 200 draws of 10 peers: each is missed with probability
        // (9/10)^200 < 1e-9, so all ten show up.
        assert_eq!(firsts.len(), 10, "{firsts:?}");
    }
}
