//! Errors of this crate and the [`ErrorKind`] every crate's errors map to.

use std::fmt;

/// Who is at fault when something fails.
///
/// Every crate's `Error` maps each of its variants to one of these, so that
/// callers can decide what to do (drop a peer, tell the operator, fall back
/// to upstream) without matching on another crate's variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The remote peer (or rendezvous) sent something invalid or broke the
    /// protocol: it is to blame, and may be dropped or reported.
    PeerMisbehaved,
    /// The remote side could not be reached, went away, or is overloaded;
    /// nobody is to blame, try elsewhere.
    PeerUnavailable,
    /// The local configuration (policy, command line) is wrong: the
    /// operator must fix it.
    LocalConfig,
    /// The local environment failed: disk, permissions, sockets.
    LocalIo,
    /// The upstream mirror failed or served something its own index does
    /// not vouch for.
    Upstream,
    /// Input given to us (a file, an index) is malformed.
    BadInput,
    /// An invariant of ours broke: a bug to report.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::PeerMisbehaved => "peer misbehaved",
            ErrorKind::PeerUnavailable => "peer unavailable",
            ErrorKind::LocalConfig => "local configuration",
            ErrorKind::LocalIo => "local I/O",
            ErrorKind::Upstream => "upstream",
            ErrorKind::BadInput => "bad input",
            ErrorKind::Internal => "internal bug",
        })
    }
}

/// Implemented by every crate's error type.
pub trait HasKind {
    /// Who is at fault.
    fn kind(&self) -> ErrorKind;
}

/// Errors of the shared vocabulary: parsing ids.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A hex id had the wrong length.
    #[error("{what}: expected {expected} hex digits, got {got}")]
    HexLength {
        /// What was being parsed.
        what: &'static str,
        /// Hex digits expected.
        expected: usize,
        /// Characters found.
        got: usize,
    },
    /// A hex id held a character that is not a hex digit.
    #[error("{what}: not a hex string ({reason})")]
    HexDigit {
        /// What was being parsed.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}
