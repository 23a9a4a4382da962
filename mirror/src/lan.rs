//! Volunteers on the same link, found by LAN discovery (mDNS/DNS-SD, run
//! by the node): asked before the rendezvous's directory, and with no
//! rendezvous at all.
//!
//! A LAN peer advertises its contact, session key, level and epoch, never
//! its announcement (an mDNS record has no room for a filter, and the
//! link need not learn it): so it is simply asked, first, for every item,
//! and answers `NotFound` for what it does not serve, which costs one
//! round trip on the link. The directory's candidates follow it in the
//! same answer, so an item no neighbour has still comes from peers.
//!
//! What the link can do to a gateway is bounded: at most
//! [`MAX_LAN_PEERS`] are kept (the first found), a neighbour that fails
//! is set aside as directory peers are ([`SetAside`]), and one serving
//! bad bytes is caught by the same verification as any peer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use anonmirror_core::{ItemKey, OsEntropy, PeerKey};
use async_trait::async_trait;

use crate::metrics::Metrics;
use crate::peers::{Candidate, PeerSource, SetAside, want_for};

/// The most LAN peers a gateway keeps (a hostile neighbour could advertise
/// thousands).
pub const MAX_LAN_PEERS: usize = 32;

/// Candidates from the link first, then from `then` (the directory).
pub struct LanPeers {
    /// By mDNS instance name.
    found: RwLock<BTreeMap<String, Candidate>>,
    /// Names of advertisements not used (at most [`MAX_LAN_PEERS`]).
    ignored: Mutex<BTreeSet<String>>,
    then: Option<Arc<dyn PeerSource>>,
    aside: SetAside,
    own: Mutex<Option<PeerKey>>,
    want: u8,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for LanPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanPeers")
            .field("found", &self.len())
            .field("then", &self.then.is_some())
            .finish_non_exhaustive()
    }
}

impl LanPeers {
    /// Up to `want` LAN peers per item (fewer for small items, as
    /// [`want_for`]), followed by `then`'s candidates.
    pub fn new(want: u8, then: Option<Arc<dyn PeerSource>>) -> Self {
        LanPeers {
            found: RwLock::new(BTreeMap::new()),
            ignored: Mutex::new(BTreeSet::new()),
            then,
            aside: SetAside::default(),
            own: Mutex::new(None),
            want,
            metrics: None,
        }
    }

    /// Shows how many LAN peers are known in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.lan(0);
        self.metrics = Some(metrics);
        self
    }

    /// A volunteer advertised itself as `name`. False if it was left out:
    /// [`MAX_LAN_PEERS`] others are known already.
    pub fn found(&self, name: &str, candidate: Candidate) -> bool {
        let Ok(mut found) = self.found.write() else {
            return false;
        };
        if found.len() >= MAX_LAN_PEERS && !found.contains_key(name) {
            return false;
        }
        found.insert(name.to_owned(), candidate);
        self.show(found.len());
        true
    }

    /// The advertisement `name` was not usable (the node logs why): shown
    /// in the metrics, each name once (up to [`MAX_LAN_PEERS`] names).
    pub fn ignored(&self, name: &str) {
        if let Ok(mut ignored) = self.ignored.lock() {
            if ignored.len() < MAX_LAN_PEERS {
                ignored.insert(name.to_owned());
            }
            if let Some(m) = &self.metrics {
                m.lan_ignored(ignored.len());
            }
        }
    }

    /// The volunteer advertised as `name` withdrew (or its record expired).
    pub fn lost(&self, name: &str) {
        if let Ok(mut found) = self.found.write() {
            found.remove(name);
            self.show(found.len());
        }
    }

    fn show(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.lan(n);
        }
    }

    /// LAN peers known.
    pub fn len(&self) -> usize {
        self.found.read().map_or(0, |f| f.len())
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This node's own session key while it serves (its own advertisement
    /// comes back over the link): never a candidate.
    pub fn set_own(&self, key: Option<PeerKey>) {
        if let Ok(mut own) = self.own.lock() {
            *own = key;
        }
    }

    /// Up to `n` usable LAN peers, in random order (so that gateways
    /// spread over them).
    fn pick(&self, n: usize) -> Vec<Candidate> {
        let own = self.own.lock().ok().and_then(|o| *o);
        let mut usable: Vec<Candidate> = self.found.read().map_or_else(
            |_| Vec::new(),
            |f| {
                f.values()
                    .filter(|c| Some(c.addr.key) != own && !self.aside.contains(&c.addr.key))
                    .cloned()
                    .collect()
            },
        );
        crate::directory::shuffle(&mut usable, &mut OsEntropy);
        usable.truncate(n);
        usable
    }
}

#[async_trait]
impl PeerSource for LanPeers {
    async fn candidates(
        &self,
        repository: &str,
        version: u64,
        item: ItemKey,
        size: u64,
    ) -> Vec<Candidate> {
        let mut found = self.pick(usize::from(want_for(size, self.want)));
        if let Some(then) = &self.then {
            for c in then.candidates(repository, version, item, size).await {
                if found.iter().all(|f| f.addr.key != c.addr.key) {
                    found.push(c);
                }
            }
        }
        found
    }

    async fn report(&self, peer: &Candidate, item: ItemKey, offset: u64, len: u64) {
        self.aside.add(peer.addr.key);
        if let Some(then) = &self.then {
            then.report(peer, item, offset, len).await;
        }
    }

    fn report_unavailable(&self, peer: &Candidate) {
        self.aside.add(peer.addr.key);
        if let Some(then) = &self.then {
            then.report_unavailable(peer);
        }
    }

    fn report_served(&self, peer: &Candidate) {
        self.aside.clear(&peer.addr.key);
        if let Some(then) = &self.then {
            then.report_served(peer);
        }
    }

    fn warm_up(&self) {
        if let Some(then) = &self.then {
            then.warm_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonmirror_core::{Contact, Epoch};
    use anonmirror_overlay::swarm::PeerAddr;
    use anonmirror_privacy::Level;

    fn candidate(i: u8) -> Candidate {
        Candidate {
            addr: PeerAddr {
                contact: Contact::Tcp(format!("172.16.1.{i}:7879").parse().expect("addr")),
                key: PeerKey([i; 32]),
            },
            level: Level::Open,
            epoch: Epoch(3),
        }
    }

    /// A directory that always answers `peers`.
    struct Directory(Vec<Candidate>);

    #[async_trait]
    impl PeerSource for Directory {
        async fn candidates(&self, _: &str, _: u64, _: ItemKey, _: u64) -> Vec<Candidate> {
            self.0.clone()
        }
        async fn report(&self, _: &Candidate, _: ItemKey, _: u64, _: u64) {}
        fn report_unavailable(&self, _: &Candidate) {}
        fn report_served(&self, _: &Candidate) {}
    }

    fn keys(c: &[Candidate]) -> Vec<u8> {
        c.iter().map(|c| c.addr.key.0[0]).collect()
    }

    #[tokio::test]
    async fn neighbours_come_first_then_the_directory_without_duplicates() {
        let dir: Arc<dyn PeerSource> = Arc::new(Directory(vec![candidate(9), candidate(1)]));
        let lan = LanPeers::new(4, Some(dir));
        assert_eq!(
            keys(&lan.candidates("deb", 1, ItemKey([0; 32]), 10 << 20).await),
            [9, 1]
        );
        assert!(lan.found("a", candidate(1)));
        assert!(lan.found("b", candidate(2)));
        let got = keys(&lan.candidates("deb", 1, ItemKey([0; 32]), 10 << 20).await);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[..2]
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            [1, 2].into()
        );
        assert_eq!(got[2], 9);
        // A small item: one neighbour, then the directory.
        let got = keys(&lan.candidates("deb", 1, ItemKey([0; 32]), 5_000).await);
        assert_eq!(got.len(), 2 + usize::from(got[0] == 2), "{got:?}");

        // Its own advertisement, a failing neighbour: not asked.
        lan.set_own(Some(PeerKey([2; 32])));
        lan.report_unavailable(&candidate(1));
        assert_eq!(
            keys(&lan.candidates("deb", 1, ItemKey([0; 32]), 10 << 20).await),
            [9, 1]
        );
        lan.report_served(&candidate(1));
        lan.lost("a");
        lan.set_own(None);
        assert_eq!(
            keys(&lan.candidates("deb", 1, ItemKey([0; 32]), 10 << 20).await),
            [2, 9, 1]
        );
    }

    #[tokio::test]
    async fn a_flood_of_advertisements_keeps_the_first_few() {
        let metrics = Arc::new(Metrics::default());
        let lan = LanPeers::new(4, None).with_metrics(metrics.clone());
        for i in 0..200u8 {
            let kept = lan.found(&format!("n{i}"), candidate(i));
            assert_eq!(kept, usize::from(i) < MAX_LAN_PEERS, "{i}");
        }
        assert_eq!(lan.len(), MAX_LAN_PEERS);
        assert_eq!(metrics.snapshot().lan_peers, MAX_LAN_PEERS as u64);
        // One known already may change its record.
        assert!(lan.found("n0", candidate(250)));
        lan.lost("n1");
        assert!(lan.found("n199", candidate(199)));
        assert_eq!(metrics.snapshot().lan_peers, MAX_LAN_PEERS as u64);
        let got = lan.candidates("deb", 1, ItemKey([0; 32]), 100 << 20).await;
        assert_eq!(got.len(), 4);
    }
}
