//! One anonmirror node: the gateway for the local package manager and,
//! when the policy's level is not `off`, the volunteer role
//! ([`crate::volunteer`]).
//!
//! Starting opens the store, starts the carrier (Tor first, before
//! anything connects anywhere), binds the gateway and spawns the
//! volunteer. Stopping is one [`CancellationToken`], handed down to every
//! task; the node waits for its tasks ([`JoinSet`]) and the volunteer's
//! prefetches ([`TaskTracker`]), then for the downloads under way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::Epoch;
use anonmirror_mirror::job::{FetchConfig, Fetcher};
use anonmirror_mirror::lan::LanPeers;
use anonmirror_mirror::peers::{Candidate, PeerSource, RendezvousPeers, WarmUp};
use anonmirror_mirror::repo::Repo;
use anonmirror_mirror::upstream::Upstream;
use anonmirror_mirror::{Gateway, Metrics};
// The content store, the swarm and the channel's parameters.
use anonmirror_channel::ChannelParams;
use anonmirror_overlay::swarm::{ChannelPool, SwarmConfig};
use anonmirror_privacy::{Level, Policy};
use anonmirror_rendezvous::Client;
use anonmirror_store::Store;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::carrier::Carrier;
use crate::err::{Error, Result};
use crate::options::NodeOptions;
use crate::volunteer::{Summary, Volunteer};

/// How long a stopping node waits for its downloads under way.
pub const STOP_DRAIN: Duration = Duration::from_secs(10);

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Where the gateway listens.
    pub gateway_addr: SocketAddr,
    gateway: Arc<Gateway>,
    /// Stops every task of the node.
    cancel: CancellationToken,
    /// The gateway, the metrics sampler and the volunteer.
    tasks: JoinSet<()>,
    /// The volunteer's prefetches (padding items, new versions).
    prefetches: TaskTracker,
    /// "Announce again now": not a stop signal.
    reannounce: Arc<tokio::sync::Notify>,
    summary: Arc<std::sync::Mutex<Option<Summary>>>,
}

impl Node {
    /// Start the gateway (and the volunteer role when the level serves).
    pub async fn start(policy: Policy, opts: NodeOptions) -> Result<Node> {
        let clock = opts.clock.clone();
        let cache_dir = policy.paths.cache_dir.clone();
        let state_dir = policy.paths.state_dir.clone();
        for d in [&cache_dir, &state_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::state(format!("creating {}", d.display()), e))?;
        }
        let store = Store::open(
            &cache_dir.join("store"),
            policy.cache.max_size.0,
            clock.clone(),
        )
        .map_err(|source| Error::Store {
            what: "opening the store",
            source,
        })?;
        let metrics = Arc::new(Metrics::default());
        // Tor (if the policy asks) before anything connects anywhere.
        let carrier = Carrier::start(&policy).await?;
        carrier.record(&policy, &state_dir)?;
        tracing::info!(connections = %carrier.connections, "transport");
        if carrier.serving == crate::carrier::Serving::Tcp {
            tracing::warn!(
                level = %policy.level,
                "serving peers over TCP: the contact announced is this machine's IP address, \
                 which the rendezvous and every peer that downloads from it see"
            );
        }
        let upstream = Arc::new(Upstream::with_dialer(
            Duration::from_secs(if carrier.is_tor() { 60 } else { 30 }),
            carrier.dialer.clone(),
        ));
        let rendezvous = match &policy.rendezvous {
            Some(r) => {
                let contact =
                    anonmirror_core::Contact::parse(&r.address).map_err(|e| Error::Config {
                        key: "rendezvous.address",
                        reason: e.to_string(),
                    })?;
                Some(Client::with_dialer(contact, r.key, carrier.dialer.clone()))
            }
            None => None,
        };
        let mut swarm = SwarmConfig::new(ChannelParams::new(Level::Open, Epoch(0)));
        swarm.connect_timeout = Duration::from_secs(5);
        swarm.stall_timeout = Duration::from_secs(5);
        // One channel per peer, shared by every item and kept open between
        // them: the next package from a peer costs one round trip, not
        // three and a slow start.
        let pool = ChannelPool::default();
        swarm.pool = Some(pool.clone());
        let prefetches = TaskTracker::new();
        // Channels to a few peers open when the package manager fetches an
        // index, before its first package request.
        let warm_up: WarmUp = {
            let (cfg, dialer, tasks) = (swarm.clone(), carrier.dialer.clone(), prefetches.clone());
            Arc::new(move |peers: Vec<Candidate>| {
                for c in peers {
                    let (pool, dialer, mut cfg) = (pool.clone(), dialer.clone(), cfg.clone());
                    cfg.params = c.params();
                    tasks.spawn(async move {
                        pool.warm(&dialer, &cfg, &c.addr).await;
                    });
                }
            })
        };
        // With the directory key pinned, candidates come from the signed
        // directory, matched here: no message per item. Without, the
        // rendezvous is asked per item (and learns which).
        let peers: Option<Arc<RendezvousPeers>> = policy
            .rendezvous
            .as_ref()
            .zip(rendezvous.as_ref())
            .map(|(r, c)| {
                let peers = RendezvousPeers::new(
                    c.clone(),
                    policy.announce.region.clone(),
                    opts.lookup_want,
                )
                .reaching_onions(carrier.is_tor())
                .with_metrics(metrics.clone())
                .with_warm_up(warm_up.clone());
                Arc::new(match r.directory_key {
                    Some(key) => peers.with_directory(key),
                    None => peers,
                })
            });
        // LAN discovery: neighbours first, then the directory (if any).
        let lan: Option<Arc<LanPeers>> = policy.lan.discover.then(|| {
            Arc::new(
                LanPeers::new(
                    opts.lookup_want,
                    peers.clone().map(|p| p as Arc<dyn PeerSource>),
                )
                .with_metrics(metrics.clone()),
            )
        });
        let source: Option<Arc<dyn PeerSource>> = match &lan {
            Some(l) => Some(l.clone()),
            None => peers.clone().map(|p| p as Arc<dyn PeerSource>),
        };
        let work_dir = cache_dir.join("store").join("tmp");
        let fetcher = Arc::new(
            Fetcher::new(
                store.clone(),
                upstream.clone(),
                source,
                metrics.clone(),
                FetchConfig {
                    work_dir: work_dir.clone(),
                    swarm,
                    hedge_after: opts.hedge_after,
                    dialer: carrier.dialer.clone(),
                },
            )
            .map_err(|e| {
                Error::state(
                    format!("preparing the work directory {}", work_dir.display()),
                    e,
                )
            })?,
        );
        let mut repos = Vec::new();
        for r in &policy.repositories {
            let repo = Arc::new(Repo::new(
                &r.name,
                r.kind,
                &r.url,
                cache_dir.join("indexes").join(&r.name),
            ));
            let (items, failed) = repo.load_cached(clock.unix_secs());
            for (path, e) in failed {
                tracing::warn!(repository = %r.name, file = %path, error = %e, "cached index unusable");
            }
            if items > 0 {
                tracing::info!(repository = %r.name, items, "cached indexes loaded");
            }
            repos.push(repo);
        }
        let gateway = Arc::new(Gateway::new(
            repos,
            fetcher,
            upstream,
            metrics,
            clock.clone(),
        ));
        let cancel = CancellationToken::new();
        let (gateway_addr, server) = anonmirror_mirror::gateway::spawn(
            policy.gateway.listen,
            gateway.clone(),
            cancel.clone(),
        )
        .await
        .map_err(|e| {
            Error::transport(
                format!("binding the gateway to {}", policy.gateway.listen),
                e,
            )
        })?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "gateway stopped"),
                Err(e) => tracing::error!(error = %e, "gateway task failed"),
            }
        });
        tracing::info!(%gateway_addr, level = %policy.level, "gateway listening");
        if let Some(p) = &peers {
            tasks.spawn(p.clone().keep_directory(cancel.clone()));
        }
        if let Some(l) = &lan {
            // The gateway works without it: a link with no multicast (or
            // a busy mDNS port) costs only the neighbours.
            match crate::lan::discover(l.clone(), cancel.clone()) {
                Ok(browse) => {
                    tasks.spawn(browse);
                    tracing::info!("LAN discovery on: volunteers on this link are asked first");
                }
                Err(e) => tracing::warn!(error = %e, "LAN discovery could not start"),
            }
        }
        // The history `anonmirror status --plot` draws: a sample a minute.
        let (m, c, stop) = (gateway.metrics().clone(), clock.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => m.sample(c.unix_secs()),
                    _ = stop.cancelled() => return,
                }
            }
        });
        let reannounce = Arc::new(tokio::sync::Notify::new());
        let summary = Arc::new(std::sync::Mutex::new(None));
        if policy.level.serves() {
            let client = rendezvous.ok_or_else(|| Error::Config {
                key: "rendezvous",
                reason: format!("level {} needs [rendezvous]", policy.level),
            })?;
            let v = Volunteer {
                serving: carrier.serving,
                #[cfg(feature = "onion-service")]
                arti: carrier.arti.clone(),
                policy,
                pow_difficulty: opts.pow_difficulty,
                entropy: opts.entropy,
                client,
                store,
                gateway: gateway.clone(),
                peers,
                lan,
                clock,
                state_dir,
                cancel: cancel.clone(),
                prefetches: prefetches.clone(),
                reannounce: reannounce.clone(),
                summary: summary.clone(),
                spare: std::sync::Mutex::new(Vec::new()),
                reported: std::sync::Mutex::new(None),
            };
            tasks.spawn(v.run());
        }
        Ok(Node {
            gateway_addr,
            gateway,
            cancel,
            tasks,
            prefetches,
            reannounce,
            summary,
        })
    }

    /// Close the current session and announce anew now (after the store
    /// changed, e.g. once a new volunteer has fetched its first packages).
    pub fn reannounce(&self) {
        self.reannounce.notify_one();
    }

    /// What the last selection decided, once one ran.
    pub fn summary(&self) -> Option<Summary> {
        self.summary.lock().ok().and_then(|s| s.clone())
    }

    /// The gateway (metrics, repositories).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stop everything and wait for it: the gateway, the volunteer and its
    /// prefetches at once, then the downloads under way for at most
    /// [`STOP_DRAIN`] (so that the last package fetched is in the store
    /// next time).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.prefetches.close();
        self.prefetches.wait().await;
        if !self.gateway.fetcher().drain(STOP_DRAIN).await {
            tracing::info!("stopped with downloads still under way: they are dropped");
        }
    }
}
