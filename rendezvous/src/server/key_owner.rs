//! The key/credential owner (`KeyMgr`): the one task that owns the redb
//! store and the epoch keys; see the [`super`] module docs.

use std::collections::BTreeMap;
use std::sync::Arc;

use anonmirror_channel::StaticKeypair;
use anonmirror_core::{Epoch, OsEntropy, PeerKey};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::config::ServerConfig;
use crate::credential::CredentialRecord;
use crate::directory::SigningKey;
use crate::err::{Error, Result};
use crate::ledger::{Ledger, Row};
use crate::msg::PublishedKey;
use crate::refusal::Refusal;
use crate::token::{IssuerKey, Scheme, TokenScheme};

/// One epoch's token key, ready to sign and verify.
#[derive(Clone)]
pub(super) struct RingKey {
    pub(super) secret: Arc<IssuerKey>,
    pub(super) public: Arc<<Scheme as TokenScheme>::Public>,
    pub(super) key_id: [u8; 32],
    pub(super) spki: Vec<u8>,
}

/// The keys in force: shared read-only with every connection.
#[derive(Clone, Default)]
pub(super) struct KeyRing {
    pub(super) current: u64,
    pub(super) keys: BTreeMap<u64, RingKey>,
}

impl KeyRing {
    /// The key for redeeming a token with `key_id`: current or previous
    /// epoch only.
    pub(super) fn accepting(&self, key_id: &[u8; 32]) -> Option<(u64, &RingKey)> {
        let prev = self.current.saturating_sub(1);
        [self.current, prev]
            .into_iter()
            .filter_map(|e| self.keys.get(&e).map(|k| (e, k)))
            .find(|(_, k)| k.key_id == *key_id)
    }

    pub(super) fn published(&self) -> Vec<PublishedKey> {
        let lo = self.current.saturating_sub(1);
        self.keys
            .range(lo..=self.current.saturating_add(1))
            .map(|(e, k)| PublishedKey {
                epoch: *e,
                key: k.spki.clone(),
            })
            .collect()
    }
}

pub(super) enum KeyCmd {
    Register {
        stamp_digest: [u8; 32],
        stamp_time: u64,
        reply: oneshot::Sender<Result<([u8; 32], u64)>>,
    },
    Buy {
        credential: [u8; 32],
        epoch: u64,
        n: u32,
        reply: oneshot::Sender<Result<Result<(), Refusal>>>,
    },
    Spend {
        epoch: u64,
        nonce: [u8; 32],
        reply: oneshot::Sender<Result<bool>>,
    },
    Dump {
        reply: oneshot::Sender<Result<Vec<Row>>>,
    },
}

pub(super) const META_NOISE_PUBLIC: &str = "noise_public";

pub(super) const META_NOISE_SECRET: &str = "noise_secret";

pub(super) const META_DIRECTORY_KEY: &str = "directory_pkcs8";

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::bug_from("blocking task", e))?
}

pub(super) fn load_identity(ledger: &Ledger) -> Result<(StaticKeypair, SigningKey)> {
    let noise = match (
        ledger.meta(META_NOISE_PUBLIC)?,
        ledger.meta(META_NOISE_SECRET)?,
    ) {
        (Some(p), Some(s)) => {
            let p: [u8; 32] = p
                .try_into()
                .map_err(|_| Error::LedgerCorrupt("Noise public key"))?;
            let s: [u8; 32] = s
                .try_into()
                .map_err(|_| Error::LedgerCorrupt("Noise secret key"))?;
            StaticKeypair::from_parts(PeerKey(p), s)?
        }
        _ => {
            let kp = StaticKeypair::generate()?;
            ledger.set_meta(META_NOISE_SECRET, &kp.secret_bytes())?;
            ledger.set_meta(META_NOISE_PUBLIC, kp.public().as_bytes())?;
            kp
        }
    };
    let signing = match ledger.meta(META_DIRECTORY_KEY)? {
        Some(d) => SigningKey::from_pkcs8(&d)?,
        None => {
            let d = SigningKey::generate_pkcs8()?;
            ledger.set_meta(META_DIRECTORY_KEY, &d)?;
            SigningKey::from_pkcs8(&d)?
        }
    };
    Ok((noise, signing))
}

pub(super) fn ring_key(scheme: &Scheme, secret: IssuerKey) -> Result<RingKey> {
    let public = scheme.public(&secret)?;
    Ok(RingKey {
        key_id: scheme.key_id(&public)?,
        spki: scheme.public_to_bytes(&public)?,
        public: Arc::new(public),
        secret: Arc::new(secret),
    })
}

/// Loads stored keys, creates the current and next ones if missing, and
/// retires older than the previous epoch.
pub(super) async fn load_ring(ledger: &Arc<Ledger>, cfg: &ServerConfig) -> Result<KeyRing> {
    let current = Epoch::containing(cfg.clock.unix_secs(), cfg.epoch_secs).0;
    let mut ring = KeyRing {
        current,
        keys: BTreeMap::new(),
    };
    rotate(ledger, &mut ring, current).await?;
    Ok(ring)
}

pub(super) async fn rotate(ledger: &Arc<Ledger>, ring: &mut KeyRing, current: u64) -> Result<()> {
    let scheme = Scheme::default();
    ring.current = current;
    let oldest = current.saturating_sub(1);
    let s = ledger.clone();
    let retired = blocking(move || s.retire_before(oldest)).await?;
    if !retired.is_empty() {
        tracing::info!(
            count = retired.len(),
            "token keys retired with their spent sets"
        );
    }
    ring.keys.retain(|e, _| *e >= oldest);
    let s = ledger.clone();
    let stored = blocking(move || s.keys()).await?;
    for (e, der) in stored {
        if let std::collections::btree_map::Entry::Vacant(v) = ring.keys.entry(e) {
            v.insert(ring_key(&scheme, scheme.secret_from_bytes(&der)?)?);
        }
    }
    for e in [current, current.saturating_add(1)] {
        if ring.keys.contains_key(&e) {
            continue;
        }
        let s = ledger.clone();
        let secret = blocking(move || {
            let secret = scheme.generate()?;
            s.put_key(e, &scheme.secret_to_bytes(&secret)?)?;
            Ok(secret)
        })
        .await?;
        ring.keys.insert(e, ring_key(&scheme, secret)?);
        tracing::info!(epoch = e, "token key created");
    }
    Ok(())
}

pub(super) async fn key_owner(
    ledger: Arc<Ledger>,
    cfg: ServerConfig,
    mut rx: mpsc::Receiver<KeyCmd>,
    ring_tx: watch::Sender<Arc<KeyRing>>,
    stop: CancellationToken,
) {
    let mut ring = (**ring_tx.borrow()).clone();
    let mut tick = tokio::time::interval(cfg.maintenance_interval);
    loop {
        let cmd = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let now = cfg.clock.unix_secs();
                let current = Epoch::containing(now, cfg.epoch_secs).0;
                if current != ring.current {
                    match rotate(&ledger, &mut ring, current).await {
                        Ok(()) => { let _ = ring_tx.send(Arc::new(ring.clone())); }
                        Err(e) => tracing::error!(error = %e, "rotating token keys failed"),
                    }
                }
                let (s, c, secs) = (ledger.clone(), cfg.credentials.clone(), cfg.epoch_secs);
                match blocking(move || s.sweep(now, current, secs, &c)).await {
                    Ok(swept) => tracing::debug!(?swept, "credential sweep"),
                    Err(e) => tracing::error!(error = %e, "credential sweep failed"),
                }
                continue;
            }
            cmd = rx.recv() => match cmd { Some(c) => c, None => break },
        };
        match cmd {
            KeyCmd::Spend {
                epoch,
                nonce,
                reply,
            } => {
                // Group commit: every spend already queued goes into the
                // same durable transaction.
                let mut batch = vec![(epoch, nonce)];
                let mut replies = vec![reply];
                let mut other = Vec::new();
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(KeyCmd::Spend {
                            epoch,
                            nonce,
                            reply,
                        }) => {
                            batch.push((epoch, nonce));
                            replies.push(reply);
                        }
                        Ok(c) => {
                            other.push(c);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let s = ledger.clone();
                let res = blocking(move || s.spend(&batch)).await;
                match res {
                    Ok(fresh) => {
                        for (r, f) in replies.into_iter().zip(fresh) {
                            let _ = r.send(Ok(f));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "spending tokens failed");
                        let e = Arc::new(e);
                        for r in replies {
                            let _ = r.send(Err(Error::SpendFailed(e.clone())));
                        }
                    }
                }
                for c in other {
                    handle_key_cmd(&ledger, &cfg, c).await;
                }
            }
            c => handle_key_cmd(&ledger, &cfg, c).await,
        }
    }
    tracing::debug!("key owner stopped");
}

pub(super) async fn handle_key_cmd(ledger: &Arc<Ledger>, cfg: &ServerConfig, cmd: KeyCmd) {
    let s = ledger.clone();
    match cmd {
        KeyCmd::Register {
            stamp_digest,
            stamp_time,
            reply,
        } => {
            let now = cfg.clock.unix_secs();
            let epoch = Epoch::containing(now, cfg.epoch_secs).0;
            let rec = CredentialRecord::new(now, epoch, &cfg.credentials);
            let mut credential = [0u8; 32];
            anonmirror_core::Entropy::fill(&mut OsEntropy, &mut credential);
            let r = blocking(move || {
                s.register(&stamp_digest, stamp_time, &credential, &rec)?;
                Ok((credential, rec.expires))
            })
            .await;
            let _ = reply.send(r);
        }
        KeyCmd::Buy {
            credential,
            epoch,
            n,
            reply,
        } => {
            let now = cfg.clock.unix_secs();
            let c = cfg.credentials.clone();
            let _ = reply.send(blocking(move || s.buy(&credential, now, epoch, n, &c)).await);
        }
        KeyCmd::Spend {
            epoch,
            nonce,
            reply,
        } => {
            let r = blocking(move || s.spend(&[(epoch, nonce)])).await;
            let _ = reply.send(r.map(|v| v.first().copied().unwrap_or(false)));
        }
        KeyCmd::Dump { reply } => {
            let _ = reply.send(blocking(move || s.dump()).await);
        }
    }
}
