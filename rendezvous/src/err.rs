//! Errors of the rendezvous, server and client side, and who is to blame.
//!
//! Messages never contain a credential, a token, a contact or an item key:
//! those reach a log only through [`anonmirror_core::Sensitive`], and an
//! error is the kind of thing that gets logged.

use std::sync::Arc;

use anonmirror_core::{ErrorKind, HasKind};

use crate::refusal::Refusal;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message from the other end did not decode (the other end is at
    /// fault: it sent something no honest implementation sends).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message or field.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The other end sent a well-formed message that makes no sense at this
    /// point of the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A registration's proof-of-work was wrong, stale or already used
    /// (the registering peer is at fault).
    #[error("proof-of-work refused: {0}")]
    ProofOfWork(&'static str),
    /// A credential was unknown, expired, revoked or blacklisted, or asked
    /// for more tokens than its quota (the peer presenting it is at fault).
    #[error("credential refused: {0}")]
    Credential(&'static str),
    /// A token did not verify, was spent already, or was signed by a key
    /// that is not (or no longer) accepted (the redeeming peer is at fault).
    #[error("token refused: {0}")]
    Token(&'static str),
    /// A session's contact is refused for a cooling-off period after
    /// reports of bad data.
    #[error("contact refused: reported for serving bad data")]
    ContactRefused,
    /// A `notify` came without the distribution's secret.
    #[error("notify refused: not authenticated")]
    NotifyUnauthorized,
    /// The rendezvous refused a request; the refusal names the reason
    /// (client side).
    #[error("the rendezvous refused: {0}")]
    Refused(Refusal),
    /// A contact to announce is a DNS name: only an IP address or an
    /// onion service can be announced (the local configuration is at
    /// fault).
    #[error("only an IP address or an onion service can be announced, not a name")]
    NameNotAnnounceable,
    /// The Noise channel failed; its own error says who is to blame.
    #[error("channel: {0}")]
    Channel(#[from] anonmirror_channel::Error),
    /// The other end went away or did not answer in time.
    #[error("the other end went away: {0}")]
    Gone(&'static str),
    /// Opening a stream failed.
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// The rendezvous configuration is wrong (the operator must fix it).
    #[error("configuration `{key}`: {reason}")]
    Config {
        /// The offending key or option.
        key: &'static str,
        /// Why it is wrong.
        reason: String,
    },
    /// An upstream index could not be fetched or answered nonsense (the
    /// distribution's server is at fault, or unreachable).
    #[error("upstream {what}: {reason}")]
    Upstream {
        /// What was being fetched.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The ledger's database failed (disk, permissions, or corruption
    /// redb found). Shared, because one failed group commit answers every
    /// spend that was in it.
    #[error("ledger: {0}")]
    Ledger(#[source] Arc<redb::Error>),
    /// A value in the ledger does not parse (corruption, or a ledger
    /// written by an incompatible version); names which value.
    #[error("the ledger holds a bad {0}")]
    LedgerCorrupt(&'static str),
    /// The group commit a token's spend was part of failed; each spend in
    /// it gets the one error.
    #[error("spending tokens: {0}")]
    SpendFailed(#[source] Arc<Error>),
    /// Local I/O failed (sockets, files).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A library failed on input we produced ourselves, a task vanished,
    /// or a bound we keep was broken: a bug.
    #[error("internal: {what}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Internal {
        /// What was being done.
        what: &'static str,
        /// The library's error, if one failed.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The rendezvous is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl Error {
    /// The connection or channel failed, not the request: sending it
    /// again on another channel may succeed.
    pub(crate) fn is_transport(&self) -> bool {
        matches!(
            self,
            Error::Channel(_) | Error::Gone(_) | Error::Connect(_) | Error::Io { .. }
        )
    }

    /// A bug while doing `what`.
    pub(crate) fn bug(what: &'static str) -> Error {
        Error::Internal { what, source: None }
    }

    /// A bug: a library failed (`source`) while doing `what`.
    pub(crate) fn bug_from(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Internal {
            what,
            source: Some(source.into()),
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> Error {
        Error::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Malformed { .. }
            | Error::Protocol(_)
            | Error::ProofOfWork(_)
            | Error::Credential(_)
            | Error::Token(_)
            | Error::ContactRefused
            | Error::NotifyUnauthorized => ErrorKind::PeerMisbehaved,
            Error::Refused(_) | Error::Gone(_) | Error::Connect(_) => ErrorKind::PeerUnavailable,
            Error::Channel(e) => e.kind(),
            Error::Config { .. } | Error::NameNotAnnounceable => ErrorKind::LocalConfig,
            Error::Upstream { .. } => ErrorKind::Upstream,
            Error::Ledger(_)
            | Error::LedgerCorrupt(_)
            | Error::SpendFailed(_)
            | Error::Io { .. } => ErrorKind::LocalIo,
            Error::Internal { .. } | Error::ShuttingDown => ErrorKind::Internal,
        }
    }
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Ledger(Arc::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_is_assigned() {
        assert_eq!(
            Error::Token("spent").kind(),
            ErrorKind::PeerMisbehaved,
            "a double spend is the redeemer's fault"
        );
        assert_eq!(
            Error::Config {
                key: "x",
                reason: "y".into()
            }
            .kind(),
            ErrorKind::LocalConfig
        );
        let disk = Error::from(redb::StorageError::from(std::io::Error::other("disk")));
        assert_eq!(disk.kind(), ErrorKind::LocalIo);
        assert_eq!(
            Error::SpendFailed(Arc::new(disk)).kind(),
            ErrorKind::LocalIo
        );
        assert_eq!(Error::Gone("ping").kind(), ErrorKind::PeerUnavailable);
    }
}
