//! Errors of the gateway. Messages never name a package, an item or a
//! peer: callers that want them in a log wrap them in
//! [`anonmirror_core::Sensitive`].

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
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
