//! Errors of the audit: its inputs are files the operator named.

use anonmirror_core::{ErrorKind, HasKind};

/// Why an audit could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An inventory or index file is malformed.
    #[error("{what}: line {line}: {reason}")]
    Input {
        /// Which input.
        what: &'static str,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A snapshot or a prior could not be read.
    #[error(transparent)]
    Announce(#[from] anonmirror_announce::Error),
    /// The report could not be rendered as JSON: a bug of ours.
    #[error("internal error rendering the report (a bug): {0}")]
    Internal(String),
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Input { .. } => ErrorKind::BadInput,
            // A snapshot the operator hands us is input, whoever made it.
            Error::Announce(e) if e.kind() == ErrorKind::PeerMisbehaved => ErrorKind::BadInput,
            Error::Announce(e) => e.kind(),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}
