//! Credentials: the anonymous, expiring identities that buy tokens.
//!
//! A peer registers with a proof-of-work ([`crate::pow`]) and receives 32
//! random bytes. The rendezvous stores only [`credential_hash`] of them,
//! with a [`CredentialRecord`]: when it expires (30 days after issue by
//! default), the last *epoch* it bought tokens in (not the second: a
//! precise last-use time would sit next to the session-open times and
//! invite timing guesses), and how many tokens it bought in that epoch.
//!
//! Rules, all pure functions of the record, the configuration and `now`:
//!
//! - a credential buys at most `tokens_per_epoch` tokens per epoch;
//! - past `expires` it is refused, and the client drops it by itself
//!   ([`ClientCredential::usable`]);
//! - dormant longer than `dormant_secs` (no purchase), the sweep deletes it
//!   (an LRU sweep: by last use);
//! - revoked for abuse (asking over its quota `abuse_over_quota` times in
//!   one epoch, or by the operator), its hash is blacklisted for
//!   `blacklist_secs` (90 days by default), so presenting it is refused as
//!   blacklisted rather than unknown.
//!
//! What the blacklist cannot do, by design: stop the same person from
//! registering again under a fresh proof-of-work, since nothing links two
//! credentials of one peer. The proof-of-work's cost is the deterrent.

use serde::{Deserialize, Serialize};

use crate::refusal::Refusal;

/// How credentials behave. Defaults follow DESIGN.md §4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialConfig {
    /// Leading zero bits the registration proof-of-work needs.
    pub pow_difficulty: u8,
    /// How long a credential is valid after issue.
    pub validity_secs: u64,
    /// Deleted when it bought nothing for this long.
    pub dormant_secs: u64,
    /// How long a credential revoked for abuse stays blacklisted.
    pub blacklist_secs: u64,
    /// T: tokens a credential may buy per epoch.
    pub tokens_per_epoch: u32,
    /// Requests over quota in one epoch that count as abuse.
    pub abuse_over_quota: u32,
}

impl Default for CredentialConfig {
    fn default() -> Self {
        CredentialConfig {
            pow_difficulty: 20,
            validity_secs: 30 * 86_400,
            dormant_secs: 14 * 86_400,
            blacklist_secs: 90 * 86_400,
            tokens_per_epoch: 8,
            abuse_over_quota: 16,
        }
    }
}

/// The stored hash of a credential: BLAKE3 in derive-key mode, so a stolen
/// database does not hand out usable credentials.
pub fn credential_hash(credential: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("anonmirror credential v1", credential)
}

/// What the rendezvous keeps per credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// Unix time after which it is refused.
    pub expires: u64,
    /// The last epoch it bought tokens in (its issue epoch before that).
    pub last_epoch: u64,
    /// Tokens bought in `last_epoch`.
    pub bought: u32,
    /// Requests refused over quota in `last_epoch`.
    pub over_quota: u32,
}

/// The outcome of a purchase attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purchase {
    /// Allowed; the record was updated.
    Granted,
    /// Refused for this reason; the record may have been updated (over
    /// quota counts).
    Refused(Refusal),
    /// Refused, and the credential has now abused its quota: revoke and
    /// blacklist it.
    Abuse,
}

impl CredentialRecord {
    /// A fresh record for a credential issued at `now` in `epoch`.
    pub fn new(now: u64, epoch: u64, cfg: &CredentialConfig) -> Self {
        CredentialRecord {
            expires: now.saturating_add(cfg.validity_secs),
            last_epoch: epoch,
            bought: 0,
            over_quota: 0,
        }
    }

    /// Whether it is past its validity.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    /// Whether it bought nothing for longer than `dormant_secs`, judged by
    /// epochs of `epoch_secs`.
    pub fn dormant(&self, epoch: u64, epoch_secs: u64, cfg: &CredentialConfig) -> bool {
        epoch
            .saturating_sub(self.last_epoch)
            .saturating_mul(epoch_secs)
            > cfg.dormant_secs
    }

    /// Buys `n` tokens in `epoch` at `now`.
    pub fn buy(&mut self, now: u64, epoch: u64, n: u32, cfg: &CredentialConfig) -> Purchase {
        if self.expired(now) {
            return Purchase::Refused(Refusal::CredentialExpired);
        }
        if epoch != self.last_epoch {
            self.last_epoch = epoch;
            self.bought = 0;
            self.over_quota = 0;
        }
        if self.bought.saturating_add(n) > cfg.tokens_per_epoch {
            self.over_quota = self.over_quota.saturating_add(1);
            if self.over_quota >= cfg.abuse_over_quota {
                return Purchase::Abuse;
            }
            return Purchase::Refused(Refusal::QuotaExhausted);
        }
        self.bought += n;
        Purchase::Granted
    }
}

/// A credential as the peer keeps it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredential {
    /// The secret bytes.
    pub credential: [u8; 32],
    /// When the rendezvous said it expires.
    pub expires: u64,
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredential")
            .field("credential", &"[never printed]")
            .field("expires", &self.expires)
            .finish()
    }
}

impl ClientCredential {
    /// Whether the peer should still present it at `now`: it drops a
    /// credential past its validity by itself (a minute early, so clock
    /// skew does not make it present a dead one).
    pub fn usable(&self, now: u64) -> bool {
        now.saturating_add(60) < self.expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_per_epoch_and_abuse() {
        let cfg = CredentialConfig {
            tokens_per_epoch: 4,
            abuse_over_quota: 3,
            ..CredentialConfig::default()
        };
        let mut r = CredentialRecord::new(1_000, 10, &cfg);
        assert_eq!(r.buy(1_000, 10, 3, &cfg), Purchase::Granted);
        assert_eq!(
            r.buy(1_000, 10, 2, &cfg),
            Purchase::Refused(Refusal::QuotaExhausted)
        );
        assert_eq!(r.buy(1_000, 10, 1, &cfg), Purchase::Granted);
        // A new epoch, a new quota.
        assert_eq!(r.buy(1_000, 11, 4, &cfg), Purchase::Granted);
        assert_eq!(
            r.buy(1_000, 11, 1, &cfg),
            Purchase::Refused(Refusal::QuotaExhausted)
        );
        assert_eq!(
            r.buy(1_000, 11, 1, &cfg),
            Purchase::Refused(Refusal::QuotaExhausted)
        );
        assert_eq!(r.buy(1_000, 11, 1, &cfg), Purchase::Abuse);
    }

    #[test]
    fn expiry_dormancy_and_the_client_side() {
        let cfg = CredentialConfig::default();
        let day = 86_400;
        let mut r = CredentialRecord::new(0, 0, &cfg);
        assert!(!r.expired(30 * day - 1) && r.expired(30 * day));
        assert_eq!(
            r.buy(30 * day, 30, 1, &cfg),
            Purchase::Refused(Refusal::CredentialExpired)
        );
        assert!(!r.dormant(14, day, &cfg), "exactly 14 days is not dormant");
        assert!(r.dormant(15, day, &cfg));
        let c = ClientCredential {
            credential: [9; 32],
            expires: 1_000,
        };
        assert!(c.usable(900) && !c.usable(940));
        assert!(!format!("{c:?}").contains("9, 9"));
        assert_ne!(credential_hash(&[1; 32]), credential_hash(&[2; 32]));
    }
}
