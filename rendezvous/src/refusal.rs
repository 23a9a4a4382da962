//! Why the rendezvous refused a request: the reason it sends back in
//! `Down::Refused` ([`crate::msg`]), and that the client's error carries
//! ([`crate::err::Error::Refused`]).
//!
//! It stands alone (no other module of the crate) so that both the codec
//! and the error type can name it without importing each other.

use serde::{Deserialize, Serialize};

/// Why the rendezvous said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The request was malformed or out of place.
    BadRequest,
    /// The proof-of-work was wrong, stale or reused.
    ProofOfWork,
    /// No such credential (never issued, or swept as expired or dormant).
    UnknownCredential,
    /// The credential is past its validity.
    CredentialExpired,
    /// The credential was revoked for abuse and is cooling off.
    CredentialBlacklisted,
    /// The credential has had its tokens for this epoch.
    QuotaExhausted,
    /// The token does not verify.
    TokenInvalid,
    /// The token was spent already.
    TokenSpent,
    /// The token's key is not accepted (retired, or not yet current).
    TokenKeyRetired,
    /// The contact is cooling off after reports of bad data.
    ContactRefused,
    /// `notify` without the right secret.
    NotifyUnauthorized,
    /// Too many sessions or requests right now.
    Busy,
    /// The rendezvous is shutting down.
    ShuttingDown,
    /// A TCP contact no dial-back reached lately (`Reach`): clients would
    /// waste connections on it. The token is not spent.
    ContactUnreached,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}
