//! Errors of the gateway and of its downloads. Messages never name a
//! package, an item or a peer: callers that want them in a log wrap them
//! in [`anonmirror_core::Sensitive`].

use std::sync::Arc;

use anonmirror_core::{ErrorKind, HasKind};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upstream mirror failed or answered something unusable.
    #[error("upstream: {0}")]
    Upstream(String),
    /// The local store or cache failed.
    #[error("store: {0}")]
    Store(#[from] anonmirror_store::Error),
    /// Local I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// Metrics text (the Prometheus exposition or the history) that is not
    /// what [`crate::metrics`] renders: whoever answered is not this
    /// daemon's gateway, or not of this version.
    #[error("line {line}: {what}")]
    Metrics {
        /// The line, counted from 1.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
}

impl Error {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Upstream(_) => ErrorKind::Upstream,
            Error::Store(e) => e.kind(),
            Error::Io { .. } => ErrorKind::LocalIo,
            Error::Config(_) => ErrorKind::LocalConfig,
            Error::Metrics { .. } => ErrorKind::BadInput,
        }
    }
}

/// Why a download of an item ([`crate::job::Job`]) failed, or why a
/// request streaming it was cut short, and who is at fault.
///
/// One failure reaches every request waiting for the item, so the error is
/// cloned: the errors it wraps are shared, not copied.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The upstream could not be asked (connection, TLS, timeout).
    #[error(transparent)]
    Request(Arc<Error>),
    /// The upstream answered something other than the file.
    #[error("upstream answered {0}")]
    Status(hyper::StatusCode),
    /// The upstream broke off while sending the file.
    #[error("upstream body: {0}")]
    Body(#[source] Arc<crate::upstream::BodyError>),
    /// The upstream's file, fetched as a hedge, is not the item its index
    /// names: of no use, since a hedge publishes only verified bytes.
    #[error("the upstream's file does not match the index")]
    Mismatch,
    /// The request's bytes so far came from peers, and the copy that
    /// completed does not confirm them: a peer's outboard lied.
    #[error("the bytes sent so far were not confirmed: transfer cut short")]
    Unconfirmed,
    /// The download ended before the bytes a request asked for: the
    /// upstream's file, passed on as received, was shorter than the index
    /// says.
    #[error("the job ended short of the item")]
    EndedShort,
    /// The local work file could not be made or written.
    #[error("writing the work file: {0}")]
    WorkFile(#[source] Arc<std::io::Error>),
    /// The swarm reported success without the proof it owes: a bug.
    #[error("the swarm download ended without its proof")]
    NoProof,
    /// A completed copy has no feed to take its file from: a bug.
    #[error("no feed")]
    NoFeed,
    /// A job's state went away while it was awaited: a bug.
    #[error("the job vanished")]
    Vanished,
    /// A task of the download panicked or was cancelled: a bug.
    #[error("{0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

impl FetchError {
    /// Writing the work file failed with `e`.
    pub(crate) fn work_file(e: std::io::Error) -> FetchError {
        FetchError::WorkFile(Arc::new(e))
    }

    /// A task of the download failed with `e`.
    pub(crate) fn task(e: tokio::task::JoinError) -> FetchError {
        FetchError::Task(Arc::new(e))
    }
}

impl HasKind for FetchError {
    fn kind(&self) -> ErrorKind {
        match self {
            FetchError::Request(e) => e.kind(),
            FetchError::Status(_)
            | FetchError::Body(_)
            | FetchError::Mismatch
            | FetchError::EndedShort => ErrorKind::Upstream,
            FetchError::Unconfirmed => ErrorKind::PeerMisbehaved,
            FetchError::WorkFile(_) => ErrorKind::LocalIo,
            FetchError::NoProof
            | FetchError::NoFeed
            | FetchError::Vanished
            | FetchError::Task(_) => ErrorKind::Internal,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_say_what_failed_and_who_is_at_fault() {
        let io = || std::io::Error::other("disk full");
        let cases = [
            (
                FetchError::Request(Arc::new(Error::Upstream("timed out".into()))),
                "upstream: timed out",
                ErrorKind::Upstream,
            ),
            (
                FetchError::Status(hyper::StatusCode::NOT_FOUND),
                "upstream answered 404 Not Found",
                ErrorKind::Upstream,
            ),
            (
                FetchError::Mismatch,
                "the upstream's file does not match the index",
                ErrorKind::Upstream,
            ),
            (
                FetchError::Unconfirmed,
                "the bytes sent so far were not confirmed: transfer cut short",
                ErrorKind::PeerMisbehaved,
            ),
            (
                FetchError::work_file(io()),
                "writing the work file: disk full",
                ErrorKind::LocalIo,
            ),
            (
                FetchError::NoProof,
                "the swarm download ended without its proof",
                ErrorKind::Internal,
            ),
            (
                FetchError::Vanished,
                "the job vanished",
                ErrorKind::Internal,
            ),
        ];
        for (e, text, kind) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.kind(), kind, "{e}");
        }
        // A request's stream carries the job's error as its I/O error.
        let streamed = std::io::Error::other(FetchError::EndedShort);
        assert_eq!(streamed.to_string(), "the job ended short of the item");
    }
}
