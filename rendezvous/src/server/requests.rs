//! The one-shot requests: each connection that is not a session asks one
//! thing and gets its answer.

use std::sync::Arc;

use anonmirror_core::Epoch;

use super::key_owner::{KeyCmd, blocking};
use super::session_owner::SessionCmd;
use super::shared::{Shared, ask, push, redeem};
use crate::directory::{PublishedCounts, Snapshot};
use crate::err::{Error, Result};
use crate::msg::{ByteBuf, Down, MAX_COUNTS, MAX_PART, Sig, Up};
use crate::pow::Stamp;
use crate::refusal::Refusal;
use crate::token::TokenScheme;

/// The signed directory of `region` (or of all peers) as it is now, as
/// the messages that carry it.
pub(super) async fn directory(shared: &Shared, region: Option<String>) -> Result<Vec<Down>> {
    let cfg = &shared.cfg;
    let peers = ask(&shared.session_tx, |reply| SessionCmd::Directory {
        region: region.clone(),
        reply,
    })
    .await?;
    let now = cfg.clock.unix_secs();
    let snap = Snapshot {
        epoch: Epoch::containing(now, cfg.epoch_secs).0,
        generated: now,
        region,
        peers,
    };
    let (bytes, sig) = shared.signing.sign(&snap)?;
    shared.served.directory();
    let mut out = vec![Down::DirectoryHead {
        total: bytes.len() as u64,
        signature: Sig(sig),
    }];
    out.extend(
        bytes
            .chunks(MAX_PART)
            .map(|c| Down::DirectoryPart(ByteBuf::from(c.to_vec()))),
    );
    Ok(out)
}

pub(super) async fn handle(shared: &Arc<Shared>, up: Up) -> Result<Vec<Down>> {
    let cfg = &shared.cfg;
    match up {
        Up::Register(stamp) => register(shared, stamp).await,
        Up::Keys => Ok(vec![Down::Keys(shared.keys.borrow().published())]),
        Up::Issue {
            credential,
            epoch,
            requests,
        } => {
            let ring = shared.keys.borrow().clone();
            if epoch != ring.current {
                return Err(Error::Refused(Refusal::TokenKeyRetired));
            }
            let key = ring
                .keys
                .get(&epoch)
                .ok_or(Error::Refused(Refusal::TokenKeyRetired))?
                .clone();
            let n = requests.len() as u32;
            ask(&shared.key_tx, |reply| KeyCmd::Buy {
                credential,
                epoch,
                n,
                reply,
            })
            .await??
            .map_err(Error::Refused)?;
            let scheme = shared.scheme;
            let responses = blocking(move || {
                requests
                    .iter()
                    .map(|r| scheme.issue(&key.secret, r).map(ByteBuf::from))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
            tracing::debug!(count = responses.len(), "tokens issued");
            Ok(vec![Down::Issued { epoch, responses }])
        }
        Up::Lookup {
            item,
            size,
            repository,
            version,
            region,
            want,
        } => {
            let peers = ask(&shared.session_tx, |reply| SessionCmd::Lookup {
                item,
                size,
                repository,
                version,
                region,
                want: usize::from(want),
                reply,
            })
            .await?;
            shared.served.lookup();
            Ok(vec![Down::Peers(peers)])
        }
        Up::Directory { region } => {
            shared.served.poll();
            directory(shared, region).await
        }
        // Held open by the connection (`connection::watch_directory`), and
        // answered by it (`reach::reach`: it needs the connection's address).
        Up::WatchDirectory { .. } | Up::Reach { .. } => Err(Error::Refused(Refusal::BadRequest)),
        Up::Report { session, .. } => {
            // The item and range are the client's evidence; the rendezvous
            // cannot check them (it holds no data), so only the strike
            // counts. They are deliberately not logged or kept.
            let out = ask(&shared.session_tx, |reply| SessionCmd::Report {
                key: session,
                reply,
            })
            .await?;
            tracing::debug!(?out, "report");
            Ok(vec![Down::Ack])
        }
        Up::Notify {
            secret,
            repository,
            version,
        } => {
            let Some(want) = cfg.notify_secret_hash else {
                return Err(Error::Refused(Refusal::NotifyUnauthorized));
            };
            // blake3::Hash compares in constant time.
            if blake3::hash(&secret) != blake3::Hash::from_bytes(want) {
                return Err(Error::Refused(Refusal::NotifyUnauthorized));
            }
            push(shared, repository, version).await?;
            Ok(vec![Down::Ack])
        }
        Up::Popularity { token, report } => {
            let epoch = redeem(shared, &token).await?;
            cfg.reports
                .accept(epoch, &report)
                .map_err(|_| Error::Refused(Refusal::BadRequest))?;
            Ok(vec![Down::Ack])
        }
        Up::PopularityCounts => popularity_counts(shared).await,
        Up::Pong { .. } | Up::OpenSession { .. } | Up::Update { .. } => {
            Err(Error::Protocol("out of place"))
        }
    }
}

/// The signed counts of the last epoch that has any, with the live level
/// populations; `NoCounts` before any epoch has completed.
pub(super) async fn popularity_counts(shared: &Arc<Shared>) -> Result<Vec<Down>> {
    let cfg = &shared.cfg;
    let now = cfg.clock.unix_secs();
    let current = Epoch::containing(now, cfg.epoch_secs);
    // Encoding a counting array takes a millisecond or so: off the runtime.
    let sink = cfg.reports.clone();
    let Some((epoch, counts)) = blocking(move || Ok(sink.publishable(current))).await? else {
        return Ok(vec![Down::NoCounts]);
    };
    let levels = ask(&shared.session_tx, SessionCmd::Levels).await?;
    let mut level_peers = [0u64; 4];
    for (level, n) in levels {
        if let Some(slot) = level_peers.get_mut(usize::from(level)) {
            *slot = n;
        }
    }
    let published = PublishedCounts {
        epoch: epoch.0,
        generated: now,
        level_peers,
        counts: ByteBuf::from(counts),
    };
    let (bytes, sig) = shared.signing.sign_counts(&published)?;
    if bytes.len() as u64 > MAX_COUNTS {
        return Err(Error::bug("popularity counts exceed MAX_COUNTS"));
    }
    let mut out = vec![Down::CountsHead {
        total: bytes.len() as u64,
        signature: Sig(sig),
    }];
    out.extend(
        bytes
            .chunks(MAX_PART)
            .map(|c| Down::CountsPart(ByteBuf::from(c.to_vec()))),
    );
    tracing::debug!("popularity counts published");
    Ok(out)
}

pub(super) async fn register(shared: &Arc<Shared>, stamp: Stamp) -> Result<Vec<Down>> {
    let now = shared.cfg.clock.unix_secs();
    let digest = stamp.check(
        &shared.noise.public(),
        now,
        shared.cfg.credentials.pow_difficulty,
    )?;
    let (credential, expires) = ask(&shared.key_tx, |reply| KeyCmd::Register {
        stamp_digest: digest,
        stamp_time: stamp.time,
        reply,
    })
    .await??;
    tracing::debug!("credential registered");
    Ok(vec![Down::Registered {
        credential,
        expires,
    }])
}
