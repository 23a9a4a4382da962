//! Swarm download: one item from several peers at once, every byte
//! verified before anyone sees it.
//!
//! Given an item's key and size (from the distribution's index) and a set
//! of peers (contact and Noise static key), [`download`]:
//!
//! 1. takes the BLAKE3 root and bao outboard from one peer (`Request` with
//!    `len = 0` and `want_meta`), checks the size against the index and the
//!    outboard against the root ([`Tree::new`]); a peer whose outboard does
//!    not fit is blamed and the next one is asked;
//! 2. splits the item into pieces (multiples of the 16 KiB chunk group),
//!    and lets one worker per peer claim pieces and fetch them (two
//!    requests in flight per peer), checking every chunk group against the
//!    tree as it completes;
//! 3. hands completed pieces to the [`Sink`] strictly in order, hashing
//!    them with SHA-256 on the way; the *last* piece is withheld until the
//!    whole item's SHA-256 equals the index's, so a sink never receives a
//!    complete item that is wrong.
//!
//! Blame. A peer whose bytes fail a chunk-group check, or who breaks the
//! protocol (bytes out of order, an unasked-for message), is dropped and
//! named in the [`SwarmReport`]. A data failure is *provisional* while the
//! tree is not confirmed: a self-consistent tree describing other content
//! (a lying outboard sender) makes honest peers fail too. So when the
//! SHA-256 of the whole item does not match, or when every worker has ended
//! without completing the item while some were blamed for data, the tree's
//! sender is blamed instead, provisional blames are withdrawn, the sink is
//! [reset](Sink::reset), and the download restarts with the tree from
//! another peer.
//!
//! Speed. Pieces are claimed in order within a window of
//! [`SwarmConfig::window`] pieces past the first undelivered one (bounding
//! the memory held for out-of-order pieces). When no piece is left to
//! claim, an idle worker also fetches the oldest piece another peer has
//! been fetching for [`SwarmConfig::steal_after`] (work stealing); the
//! first verified copy wins. Not sooner: stealing at once fetched every
//! one-piece item twice, half again the bytes of a package download
//! (BENCHMARKS.md, "Between hosts"). A peer that
//! sends nothing for [`SwarmConfig::stall_timeout`] is dropped and its
//! pieces return to the pool.
//!
//! Memory. A piece's buffer is fresh memory unless its consumer hands it
//! back: [`Pieces`] keeps a few for the next pieces, since every page of
//! fresh memory costs a fault and a zeroed page (a fifth of a gateway's
//! CPU when it was measured, "Gateway" in BENCHMARKS.md).
//!
//! This module must never pass an unverified byte to the sink, and never
//! log an item key or a peer's contact unredacted.

mod config;
mod pool;
mod report;
mod sched;
mod sink;
mod worker;

pub use config::{PeerAddr, Pieces, Progress, SwarmConfig};
pub use pool::ChannelPool;
pub use report::{Blame, Outcome, PeerReport, SwarmError, SwarmReport};
pub use sink::{FileSink, Sink};
pub use worker::{HANDSHAKE_MIN, HANDSHAKE_RTTS, handshake_allowance};

use sched::{Done, Piece, Sched, Shared, piece_size};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use worker::{Link, fetch_tree, worker};

use anonmirror_core::{ItemKey, Sensitive};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use anonmirror_channel::transport::Transport;
use anonmirror_store::verify::{Tree, Verified};

/// Download `item` of `size` bytes from `peers` into `sink`.
pub async fn download<T>(
    transport: &T,
    config: &SwarmConfig,
    item: ItemKey,
    size: u64,
    peers: &[PeerAddr],
    sink: &mut dyn Sink,
) -> Result<SwarmReport, SwarmError>
where
    T: Transport + Clone + 'static,
{
    let mut report = SwarmReport {
        peers: peers
            .iter()
            .map(|p| PeerReport {
                peer: p.clone(),
                bytes: 0,
                elapsed: Duration::ZERO,
                outcome: Outcome::Unused,
            })
            .collect(),
        tree: None,
        restarts: 0,
        verified: None,
    };
    // Peers that may still serve (not blamed, not gone).
    let mut usable: Vec<bool> = vec![true; peers.len()];
    // Peers already asked for a tree in this download.
    let mut asked_meta: Vec<bool> = vec![false; peers.len()];
    // The tree (and, for a one-piece item, the whole item) is asked of the
    // peer whose shared channel owes the fewest bytes: the least loaded,
    // which is also the one that drains fastest (a cold channel, still in
    // its slow start, keeps its queue longest). A peer without a channel
    // yet owes nothing; ties keep the caller's order (random among equals),
    // so items spread over the peers as evenly as their channels drain.
    let mut order: Vec<usize> = (0..peers.len()).collect();
    if let Some(pool) = &config.pool {
        order.sort_by_key(|&i| pool.owed(&peers[i].key, &config.params).unwrap_or(0));
    }
    loop {
        // 1. A tree, from the first usable peer not asked yet.
        let mut got = None;
        for &i in &order {
            let peer = &peers[i];
            if !usable[i] || asked_meta[i] {
                continue;
            }
            asked_meta[i] = true;
            let started = Instant::now();
            match fetch_tree(transport, config, item, size, peer).await {
                Ok((tree, channel)) => {
                    tracing::debug!(
                        tree_us = started.elapsed().as_micros() as u64,
                        "swarm: tree"
                    );
                    got = Some((i, tree, channel, started));
                    break;
                }
                Err(outcome) => {
                    report.peers[i].outcome = outcome;
                    report.peers[i].elapsed = started.elapsed();
                    usable[i] = false;
                }
            }
        }
        let Some((source, tree, channel, started)) = got else {
            return Err(SwarmError::Exhausted {
                item: Sensitive::new(item),
                report,
            });
        };
        // 2. Fetch every piece with every usable peer.
        let attempt = run_attempt(
            transport,
            config,
            item,
            tree.clone(),
            peers,
            &usable,
            source,
            channel,
            started,
            sink,
        )
        .await;
        let (results, verdict) = match attempt {
            Ok(a) => a,
            Err(source) => {
                return Err(SwarmError::Sink {
                    item: Sensitive::new(item),
                    source,
                    report,
                });
            }
        };
        let blamed_data = results.iter().any(|(i, r)| {
            *i != source && matches!(r.outcome, Outcome::Blamed(Blame::BadData { .. }))
        });
        match verdict {
            Verdict::Complete { sha256 } => {
                for (i, r) in results {
                    report.peers[i] = r;
                }
                report.verified = Verified::matching(item, tree.clone(), sha256.as_ref());
                report.tree = Some(tree);
                return Ok(report);
            }
            Verdict::ShaMismatch => {}
            Verdict::Incomplete if blamed_data => {}
            Verdict::Incomplete => {
                for (i, r) in results {
                    report.peers[i] = r;
                }
                return Err(SwarmError::Exhausted {
                    item: Sensitive::new(item),
                    report,
                });
            }
        }
        // 3. The tree was the lie: blame its sender, withdraw the blames
        // its tree caused, and start over.
        tracing::debug!(item = %Sensitive::new(item), "swarm: outboard sender lied, restarting");
        for (i, r) in results {
            let withdrawn =
                i != source && matches!(r.outcome, Outcome::Blamed(Blame::BadData { .. }));
            report.peers[i] = PeerReport {
                outcome: if withdrawn {
                    Outcome::Unused
                } else {
                    r.outcome.clone()
                },
                ..r
            };
            usable[i] =
                withdrawn || matches!(report.peers[i].outcome, Outcome::Served | Outcome::Unused);
        }
        report.peers[source].outcome = Outcome::Blamed(Blame::BadOutboard);
        usable[source] = false;
        report.restarts += 1;
        sink.reset().map_err(|source| SwarmError::Sink {
            item: Sensitive::new(item),
            source,
            report: report.clone(),
        })?;
    }
}

enum Verdict {
    /// Every piece delivered; the whole item's SHA-256.
    Complete {
        sha256: ring::digest::Digest,
    },
    ShaMismatch,
    Incomplete,
}

#[allow(clippy::too_many_arguments)]
async fn run_attempt<T>(
    transport: &T,
    config: &SwarmConfig,
    item: ItemKey,
    tree: Tree,
    peers: &[PeerAddr],
    usable: &[bool],
    source: usize,
    source_channel: Link,
    source_started: Instant,
    sink: &mut dyn Sink,
) -> std::io::Result<(Vec<(usize, PeerReport)>, Verdict)>
where
    T: Transport + Clone + 'static,
{
    let piece_size = piece_size(config);
    let n_pieces = tree.size().div_ceil(piece_size).max(1) as usize;
    // The source was asked for the first piece with the tree.
    let first_asked = tree.size() > 0;
    let mut pieces = vec![Piece::Pending; n_pieces];
    if first_asked {
        pieces[0] = Piece::InFlight {
            holders: vec![source],
            since: source_started,
        };
    }
    let shared = Arc::new(Shared {
        item,
        tree,
        piece_size,
        pieces: config.pieces.clone(),
        progress: config.progress.clone(),
        sched: Mutex::new(Sched {
            pieces,
            next_deliver: 0,
            window: config.window.max(1),
            steal_after: config.steal_after,
            finished: false,
        }),
        changed: Notify::new(),
        stop: CancellationToken::new(),
    });
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(config.window.max(1) * 2);
    let mut workers = JoinSet::new();
    let mut source_channel = Some(source_channel);
    for (i, peer) in peers.iter().enumerate() {
        if !usable[i] {
            continue;
        }
        let (channel, asked) = if i == source {
            (source_channel.take(), first_asked.then_some(0))
        } else {
            (None, None)
        };
        let started = if i == source {
            source_started
        } else {
            Instant::now()
        };
        workers.spawn(worker(
            transport.clone(),
            config.clone(),
            shared.clone(),
            i,
            peer.clone(),
            channel,
            asked,
            started,
            done_tx.clone(),
        ));
    }
    drop(done_tx);

    // Deliver in order; hash on the way; withhold the last piece until the
    // whole SHA-256 matches.
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut waiting: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut next = 0usize;
    let mut verdict = Verdict::Incomplete;
    while let Some(done) = done_rx.recv().await {
        waiting.insert(done.piece, done.bytes);
        while let Some(bytes) = waiting.remove(&next) {
            // On the blocking pool: the SHA-256 (about 2 cycles a byte,
            // the dearest stage) runs beside the workers' decryption and
            // chunk-group checks instead of taking turns with them.
            let hashing =
                std::mem::replace(&mut sha, ring::digest::Context::new(&ring::digest::SHA256));
            let (hashed, bytes) = tokio::task::spawn_blocking(move || {
                let mut hashing = hashing;
                hashing.update(&bytes);
                (hashing, bytes)
            })
            .await
            .map_err(|_| std::io::Error::other("the SHA-256 task panicked"))?;
            sha = hashed;
            if next + 1 == n_pieces {
                let digest =
                    std::mem::replace(&mut sha, ring::digest::Context::new(&ring::digest::SHA256))
                        .finish();
                if digest.as_ref() == item.as_bytes() {
                    sink.write(bytes)?;
                    verdict = Verdict::Complete { sha256: digest };
                } else {
                    verdict = Verdict::ShaMismatch;
                }
                next += 1;
                break;
            }
            sink.write(bytes)?;
            next += 1;
            shared.sched().next_deliver = next;
            shared.changed.notify_waiters();
        }
        if next == n_pieces {
            break;
        }
    }
    shared.sched().finished = true;
    shared.stop.cancel();
    shared.changed.notify_waiters();
    drop(done_rx);
    let mut results = Vec::new();
    while let Some(joined) = workers.join_next().await {
        if let Ok(r) = joined {
            results.push(r);
        }
    }
    Ok((results, verdict))
}
