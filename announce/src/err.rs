//! Errors of announcements, popularity reports and snapshots.

use anonmirror_core::{ErrorKind, HasKind};

/// What went wrong, and so who is to blame.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A wire message (popularity report, announcement, snapshot, memo)
    /// ended before its fields did.
    #[error("{what}: truncated: needs {needed} bytes, got {got}")]
    Truncated {
        /// The message.
        what: &'static str,
        /// Bytes the message's header says it needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A wire message had bytes after its end.
    #[error("{what}: {extra} trailing bytes after the message")]
    TrailingBytes {
        /// The message.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// A wire message had a wrong magic, version or an out-of-range field.
    #[error("{what}: {reason}")]
    Malformed {
        /// The message.
        what: &'static str,
        /// Which field, and why.
        reason: String,
    },
    /// A popularity report does not match the parameters or epoch the
    /// aggregator collects for: the peer sent it for another round.
    #[error("popularity report does not match the round: {0}")]
    WrongRound(String),
    /// Report parameters out of range (a configuration error).
    #[error("popularity report parameters: {0}")]
    BadParameters(String),
    /// A permanent-response memo was drawn for other parameters; reusing it
    /// would silently weaken (or void) its guarantee.
    #[error(
        "the permanent-response memo was drawn for f = {memo}, the parameters say f = {params}"
    )]
    MemoMismatch {
        /// The memo's f.
        memo: f64,
        /// The parameters' f.
        params: f64,
    },
    /// A published install-statistics file (popcon, pkgstats) could not be
    /// parsed.
    #[error("{format}: line {line}: {reason}")]
    Prior {
        /// Which format was being read.
        format: &'static str,
        /// 1-based line (0 when the error concerns the whole file).
        line: usize,
        /// Why.
        reason: String,
    },
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            // Decoded bytes come from another party (a peer's announcement
            // or report, the rendezvous's snapshot): it is at fault.
            Error::Truncated { .. }
            | Error::TrailingBytes { .. }
            | Error::Malformed { .. }
            | Error::WrongRound(_) => ErrorKind::PeerMisbehaved,
            Error::BadParameters(_) | Error::MemoMismatch { .. } => ErrorKind::LocalConfig,
            Error::Prior { .. } => ErrorKind::BadInput,
        }
    }
}
