//! The rendezvous's durable state, in one redb file: everything that must
//! survive kill -9, and nothing else.
//!
//! | table | key | value |
//! |-------|-----|-------|
//! | `meta` | name (ASCII) | the rendezvous's Noise static secret, its Ed25519 directory key (PKCS#8) |
//! | `credentials` | [`credential_hash`] (32) | postcard [`CredentialRecord`] |
//! | `blacklist` | credential hash (32) | blacklisted until, u64 BE Unix s |
//! | `stamps` | proof-of-work digest (32) | stamp time, u64 BE (replay guard) |
//! | `keys` | epoch, u64 BE | the epoch's issuer key (DER) |
//! | `spent_<epoch, 20 digits>` | token nonce (32) | empty |
//!
//! One `spent_` table per epoch key, so retiring a key drops its spent set
//! in one `delete_table` in the same transaction that deletes the key.
//! Every write commits with `Durability::Immediate` before the caller is
//! answered: a token is only ever reported accepted once its nonce is on
//! disk, so kill -9 cannot make it spendable again; batching many nonces
//! into one commit ([`Ledger::spend`]) is what makes that affordable.
//!
//! Sessions are not here: they are soft state (see [`crate::session`]),
//! and nothing here refers to one. The ledger is synchronous; its owner
//! ([`crate::server`]) calls it from blocking threads.

use std::path::Path;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};

use crate::credential::{CredentialConfig, CredentialRecord, Purchase, credential_hash};
use crate::err::{Error, Result};
use crate::pow::STAMP_WINDOW_SECS;
use crate::refusal::Refusal;

type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

const META: Bytes = TableDefinition::new("meta");
const CREDENTIALS: Bytes = TableDefinition::new("credentials");
const BLACKLIST: Bytes = TableDefinition::new("blacklist");
const STAMPS: Bytes = TableDefinition::new("stamps");
const KEYS: Bytes = TableDefinition::new("keys");
const SPENT_PREFIX: &str = "spent_";

fn spent_name(epoch: u64) -> String {
    format!("{SPENT_PREFIX}{epoch:020}")
}

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Credentials past validity.
    pub expired: usize,
    /// Credentials dormant too long.
    pub dormant: usize,
    /// Blacklist entries whose cooling-off ended.
    pub unblacklisted: usize,
}

/// One stored row: table name, key, value.
pub type Row = (String, Vec<u8>, Vec<u8>);

/// The durable state: the rendezvous's ledger of what it issued and what
/// was spent (credentials, blacklist, proof-of-work stamps, epoch keys,
/// spent token nonces), which it must never forget across a crash. Not a
/// `Store`: the content store of items has that name.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`. redb repairs an interrupted
    /// commit by itself, falling back to the last durable one.
    pub fn open(path: &Path) -> Result<Ledger> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        for t in [META, CREDENTIALS, BLACKLIST, STAMPS, KEYS] {
            tx.open_table(t)?;
        }
        tx.commit()?;
        Ok(Ledger { db })
    }

    fn write(&self) -> Result<redb::WriteTransaction> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        Ok(tx)
    }

    /// A value from `meta`.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(name.as_bytes())?.map(|v| v.value().to_vec()))
    }

    /// Sets a value in `meta` (durably).
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        let tx = self.write()?;
        tx.open_table(META)?.insert(name.as_bytes(), value)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a registration: the stamp's digest (refused if seen) and
    /// the new credential's hash, in one durable commit.
    pub fn register(
        &self,
        stamp_digest: &[u8; 32],
        stamp_time: u64,
        credential: &[u8; 32],
        record: &CredentialRecord,
    ) -> Result<()> {
        let tx = self.write()?;
        {
            let mut stamps = tx.open_table(STAMPS)?;
            if stamps.get(&stamp_digest[..])?.is_some() {
                return Err(Error::ProofOfWork("stamp already used"));
            }
            stamps.insert(&stamp_digest[..], &stamp_time.to_be_bytes()[..])?;
            let value = postcard::to_allocvec(record)
                .map_err(|e| Error::bug_from("encoding a credential record", e))?;
            tx.open_table(CREDENTIALS)?
                .insert(&credential_hash(credential)[..], &value[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A credential's record, by the credential itself.
    pub fn credential(&self, credential: &[u8; 32]) -> Result<Option<CredentialRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CREDENTIALS)?;
        let got = t.get(&credential_hash(credential)[..])?;
        got.map(|v| decode_record(v.value())).transpose()
    }

    /// Buys `n` tokens for `credential` in `epoch`; on abuse, revokes and
    /// blacklists it. Durable before it returns.
    pub fn buy(
        &self,
        credential: &[u8; 32],
        now: u64,
        epoch: u64,
        n: u32,
        cfg: &CredentialConfig,
    ) -> Result<Result<(), Refusal>> {
        let hash = credential_hash(credential);
        let tx = self.write()?;
        let outcome = {
            let bl = tx.open_table(BLACKLIST)?;
            if let Some(until) = bl.get(&hash[..])?
                && now < be_u64(until.value())
            {
                return Ok(Err(Refusal::CredentialBlacklisted));
            }
            drop(bl);
            let mut creds = tx.open_table(CREDENTIALS)?;
            let Some(mut rec) = creds
                .get(&hash[..])?
                .map(|v| decode_record(v.value()))
                .transpose()?
            else {
                return Ok(Err(Refusal::UnknownCredential));
            };
            let p = rec.buy(now, epoch, n, cfg);
            if p == Purchase::Abuse {
                creds.remove(&hash[..])?;
            } else {
                let value = postcard::to_allocvec(&rec)
                    .map_err(|e| Error::bug_from("encoding a credential record", e))?;
                creds.insert(&hash[..], &value[..])?;
            }
            p
        };
        let result = match outcome {
            Purchase::Granted => Ok(()),
            Purchase::Refused(r) => Err(r),
            Purchase::Abuse => {
                let until = now.saturating_add(cfg.blacklist_secs);
                tx.open_table(BLACKLIST)?
                    .insert(&hash[..], &until.to_be_bytes()[..])?;
                tracing::info!("credential revoked for abuse (over quota) and blacklisted");
                Err(Refusal::CredentialBlacklisted)
            }
        };
        tx.commit()?;
        Ok(result)
    }

    /// Revokes a credential for abuse (operator's decision): deleted, and
    /// its hash blacklisted until `now + blacklist_secs`.
    pub fn revoke_for_abuse(
        &self,
        credential: &[u8; 32],
        now: u64,
        cfg: &CredentialConfig,
    ) -> Result<bool> {
        let hash = credential_hash(credential);
        let tx = self.write()?;
        let existed = tx.open_table(CREDENTIALS)?.remove(&hash[..])?.is_some();
        let until = now.saturating_add(cfg.blacklist_secs);
        tx.open_table(BLACKLIST)?
            .insert(&hash[..], &until.to_be_bytes()[..])?;
        tx.commit()?;
        Ok(existed)
    }

    /// Deletes expired and dormant credentials, ended blacklist entries and
    /// stamps out of their window.
    pub fn sweep(
        &self,
        now: u64,
        epoch: u64,
        epoch_secs: u64,
        cfg: &CredentialConfig,
    ) -> Result<Swept> {
        let mut swept = Swept::default();
        let tx = self.write()?;
        {
            let mut creds = tx.open_table(CREDENTIALS)?;
            let mut doomed = Vec::new();
            for row in creds.iter()? {
                let (k, v) = row?;
                let rec = decode_record(v.value())?;
                if rec.expired(now) {
                    swept.expired += 1;
                    doomed.push(k.value().to_vec());
                } else if rec.dormant(epoch, epoch_secs, cfg) {
                    swept.dormant += 1;
                    doomed.push(k.value().to_vec());
                }
            }
            for k in doomed {
                creds.remove(&k[..])?;
            }
            let mut bl = tx.open_table(BLACKLIST)?;
            let ended: Vec<Vec<u8>> = bl
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(_, v)| be_u64(v.value()) <= now)
                .map(|(k, _)| k.value().to_vec())
                .collect();
            swept.unblacklisted = ended.len();
            for k in ended {
                bl.remove(&k[..])?;
            }
            let mut stamps = tx.open_table(STAMPS)?;
            let old: Vec<Vec<u8>> = stamps
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(_, v)| be_u64(v.value()).saturating_add(STAMP_WINDOW_SECS) < now)
                .map(|(k, _)| k.value().to_vec())
                .collect();
            for k in old {
                stamps.remove(&k[..])?;
            }
        }
        tx.commit()?;
        Ok(swept)
    }

    /// Number of live credentials.
    pub fn credential_count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(CREDENTIALS)?.len()?)
    }

    /// Stores an epoch's issuer key (durably).
    pub fn put_key(&self, epoch: u64, secret_der: &[u8]) -> Result<()> {
        let tx = self.write()?;
        tx.open_table(KEYS)?
            .insert(&epoch.to_be_bytes()[..], secret_der)?;
        tx.open_table(TableDefinition::<&[u8], &[u8]>::new(&spent_name(epoch)))?;
        tx.commit()?;
        Ok(())
    }

    /// Every stored issuer key, by epoch ascending.
    pub fn keys(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KEYS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((be_u64(k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Retires every key of an epoch before `oldest_kept`: the key and its
    /// spent set go in one durable commit (tokens under it are refused from
    /// then on because the key is gone, so the nonces are no longer needed).
    pub fn retire_before(&self, oldest_kept: u64) -> Result<Vec<u64>> {
        let tx = self.write()?;
        let mut retired = Vec::new();
        {
            let mut keys = tx.open_table(KEYS)?;
            let old: Vec<u64> = keys
                .iter()?
                .filter_map(|r| r.ok())
                .map(|(k, _)| be_u64(k.value()))
                .filter(|e| *e < oldest_kept)
                .collect();
            for e in old {
                keys.remove(&e.to_be_bytes()[..])?;
                retired.push(e);
            }
        }
        let spent: Vec<String> = tx
            .list_tables()?
            .map(|h| h.name().to_owned())
            .filter(|n| {
                n.strip_prefix(SPENT_PREFIX)
                    .and_then(|e| e.parse::<u64>().ok())
                    .is_some_and(|e| e < oldest_kept)
            })
            .collect();
        for name in spent {
            tx.delete_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
        }
        tx.commit()?;
        Ok(retired)
    }

    /// Spends a batch of `(key epoch, nonce)` in one durable commit; for
    /// each, `true` if it was fresh (now spent) and `false` if it was spent
    /// already (earlier, or earlier in this same batch) or its key has no
    /// spent set (retired).
    pub fn spend(&self, batch: &[(u64, [u8; 32])]) -> Result<Vec<bool>> {
        let tx = self.write()?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let live: Vec<String> = tx.list_tables()?.map(|h| h.name().to_owned()).collect();
            let mut tables = std::collections::BTreeMap::new();
            for (epoch, nonce) in batch {
                let name = spent_name(*epoch);
                if !live.contains(&name) {
                    out.push(false);
                    continue;
                }
                if !tables.contains_key(epoch) {
                    let t = tx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
                    tables.insert(*epoch, t);
                }
                let t = tables
                    .get_mut(epoch)
                    .ok_or_else(|| Error::bug("spent table vanished"))?;
                out.push(t.insert(&nonce[..], &[][..])?.is_none());
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Whether a nonce is recorded as spent under the key of `epoch`.
    pub fn is_spent(&self, epoch: u64, nonce: &[u8; 32]) -> Result<bool> {
        let tx = self.db.begin_read()?;
        match tx.open_table(TableDefinition::<&[u8], &[u8]>::new(&spent_name(epoch))) {
            Ok(t) => Ok(t.get(&nonce[..])?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every row of every table, as (table, key, value): the rendezvous's
    /// complete stored state, for the unlinkability harness and audits.
    pub fn dump(&self) -> Result<Vec<Row>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        let names: Vec<String> = tx.list_tables()?.map(|h| h.name().to_owned()).collect();
        for name in names {
            let t = tx.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((name.clone(), k.value().to_vec(), v.value().to_vec()));
            }
        }
        Ok(out)
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

fn decode_record(b: &[u8]) -> Result<CredentialRecord> {
    postcard::from_bytes(b).map_err(|_| Error::LedgerCorrupt("credential record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Ledger::open(&dir.path().join("r.redb")).expect("open");
        (dir, s)
    }

    #[test]
    fn registration_refuses_a_reused_stamp_and_stores_only_the_hash() {
        let (_d, s) = ledger();
        let cfg = CredentialConfig::default();
        let rec = CredentialRecord::new(100, 0, &cfg);
        s.register(&[1; 32], 100, &[7; 32], &rec).expect("first");
        assert!(matches!(
            s.register(&[1; 32], 100, &[8; 32], &rec),
            Err(Error::ProofOfWork(_))
        ));
        assert_eq!(s.credential_count().expect("count"), 1);
        let dump = s.dump().expect("dump");
        assert!(
            dump.iter()
                .all(|(_, k, v)| !k.windows(32).any(|w| w == [7; 32])
                    && !v.windows(32).any(|w| w == [7; 32])),
            "the credential itself is never stored"
        );
    }

    /// Dormant and expired credentials are revoked by the sweep under a
    /// simulated clock; blacklist entries end after their cooling-off.
    #[test]
    fn sweep_revokes_dormant_and_expired_under_a_simulated_clock() {
        let (_d, s) = ledger();
        let day = 86_400;
        let cfg = CredentialConfig::default();
        let clock = anonmirror_core::ManualClock::at_unix(1_000 * day);
        use anonmirror_core::Clock;
        let epoch = |c: &anonmirror_core::ManualClock| c.unix_secs() / day;
        let now = clock.unix_secs();
        // a: used every day (stays until it expires); b: never used after
        // registration (dormant after 14 days); c: blacklisted.
        for (i, c) in [[1u8; 32], [2; 32], [3; 32]].iter().enumerate() {
            let rec = CredentialRecord::new(now, epoch(&clock), &cfg);
            s.register(&[i as u8 + 10; 32], now, c, &rec)
                .expect("register");
        }
        assert!(s.revoke_for_abuse(&[3; 32], now, &cfg).expect("revoke"));
        assert_eq!(
            s.buy(&[3; 32], now, epoch(&clock), 1, &cfg).expect("buy"),
            Err(Refusal::CredentialBlacklisted)
        );
        for d in 1..=29 {
            clock.advance(std::time::Duration::from_secs(day));
            let (now, e) = (clock.unix_secs(), epoch(&clock));
            assert_eq!(
                s.buy(&[1; 32], now, e, 1, &cfg).expect("buy"),
                Ok(()),
                "day {d}"
            );
            let swept = s.sweep(now, e, day, &cfg).expect("sweep");
            if d == 15 {
                assert_eq!(swept.dormant, 1, "b goes dormant on day 15");
            } else {
                assert_eq!(swept.dormant, 0, "day {d}");
            }
            assert_eq!(swept.expired, 0);
        }
        assert_eq!(
            s.buy(&[2; 32], clock.unix_secs(), epoch(&clock), 1, &cfg)
                .expect("buy"),
            Err(Refusal::UnknownCredential)
        );
        clock.advance(std::time::Duration::from_secs(day));
        let (now, e) = (clock.unix_secs(), epoch(&clock));
        assert_eq!(
            s.buy(&[1; 32], now, e, 1, &cfg).expect("buy"),
            Err(Refusal::CredentialExpired)
        );
        assert_eq!(s.sweep(now, e, day, &cfg).expect("sweep").expired, 1);
        assert_eq!(s.credential_count().expect("count"), 0);
        // The blacklist entry cools off after 90 days.
        clock.advance(std::time::Duration::from_secs(60 * day));
        let (now, e) = (clock.unix_secs(), epoch(&clock));
        assert_eq!(s.sweep(now, e, day, &cfg).expect("sweep").unblacklisted, 1);
    }

    #[test]
    fn spends_once_and_retiring_drops_key_and_spent_set() {
        let (_d, s) = ledger();
        s.put_key(5, b"k5").expect("key");
        s.put_key(6, b"k6").expect("key");
        let n = [4u8; 32];
        assert_eq!(
            s.spend(&[(5, n), (5, n), (6, n)]).expect("spend"),
            [true, false, true]
        );
        assert_eq!(s.spend(&[(5, n)]).expect("spend"), [false]);
        assert!(s.is_spent(5, &n).expect("read"));
        assert_eq!(s.retire_before(6).expect("retire"), [5]);
        assert_eq!(s.keys().expect("keys").len(), 1);
        assert!(!s.is_spent(5, &n).expect("read"), "spent set pruned");
        assert_eq!(
            s.spend(&[(5, [9; 32])]).expect("spend"),
            [false],
            "retired key spends nothing"
        );
        assert!(
            s.dump()
                .expect("dump")
                .iter()
                .all(|(t, _, _)| t != "spent_00000000000000000005")
        );
    }
}
