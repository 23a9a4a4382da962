//! Errors of the store, and who is at fault.
//!
//! Messages name items only through [`Sensitive`]: an error is the kind of
//! thing that gets logged.

use std::io;
use std::path::{Path, PathBuf};

use anonmirror_core::{ErrorKind, HasKind, ItemKey, Sensitive};

/// Errors of the store: the offered bytes were not the item (the sender is
/// at fault), or the local disk or database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes offered are not the item the index names.
    #[error("item {key}: {what}")]
    Mismatch {
        /// The item.
        key: Sensitive<ItemKey>,
        /// What did not match.
        what: String,
    },
    /// The item cannot fit: larger than the cap, or everything else is in use.
    #[error(
        "item {key} of {size} bytes does not fit under the cap of {cap} bytes ({pinned} bytes in use)"
    )]
    Full {
        /// The item.
        key: Sensitive<ItemKey>,
        /// Its size.
        size: u64,
        /// The store's cap.
        cap: u64,
        /// Bytes held by pinned items that cannot be evicted.
        pinned: u64,
    },
    /// The same item is already being written by someone else.
    #[error("item {0} is already being written")]
    Busy(Sensitive<ItemKey>),
    /// A file system operation failed.
    #[error("store {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The metadata database failed.
    #[error("store database: {0}")]
    Db(String),
    /// The metadata database holds a record we cannot read.
    #[error("store database holds a malformed record for item {0}")]
    Corrupt(Sensitive<ItemKey>),
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Mismatch { .. } => ErrorKind::BadInput,
            Error::Full { .. } | Error::Busy(_) => ErrorKind::LocalIo,
            Error::Io { .. } | Error::Db(_) => ErrorKind::LocalIo,
            Error::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Db(e.to_string())
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The file on disk does not have the size the index names.
pub(crate) fn size_mismatch(key: &ItemKey, expected: u64, got: u64) -> Error {
    Error::Mismatch {
        key: Sensitive::new(*key),
        what: format!("expected {expected} bytes, the file has {got}"),
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
