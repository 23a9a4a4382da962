//! The one error of the index parsers: which index, where in it, and what
//! is wrong.

use std::fmt;

use anonmirror_core::{ErrorKind, HasKind};

/// The kind of index an error is about; the default label of the file in
/// messages until [`IndexError::in_file`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A pacman repository database (`<repo>.db`).
    PacmanDb,
    /// A Debian `Release` or `InRelease` file.
    Release,
    /// A Debian `Packages` file.
    Packages,
    /// A `SHA256SUMS` file.
    Sha256Sums,
    /// A compressed stream, before its format matters.
    Compressed,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::PacmanDb => "pacman db",
            Format::Release => "Release",
            Format::Packages => "Packages",
            Format::Sha256Sums => "SHA256SUMS",
            Format::Compressed => "compressed index",
        })
    }
}

/// What is wrong, at the place an [`IndexError`] names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A required field is absent (the field as the format spells it, e.g.
    /// `%SHA256SUM%` or ``field `SHA256` ``).
    #[error("missing {0}")]
    Missing(String),
    /// A field that may appear once appears again.
    #[error("given twice (first on line {first_line})")]
    Duplicate {
        /// The line of the first occurrence.
        first_line: usize,
    },
    /// A required value is empty.
    #[error("empty value")]
    Empty,
    /// Not a SHA-256 in hex.
    #[error("expected 64 hex digits, got {0}")]
    BadHex(String),
    /// Not a decimal number that fits in 64 bits.
    #[error("expected a decimal number, got {0}")]
    BadNumber(String),
    /// A path that could escape the repository, or that no package manager
    /// would ask for.
    #[error("unsafe path {path}: {why}")]
    UnsafePath {
        /// The path, quoted and shortened.
        path: String,
        /// What makes it unsafe.
        why: &'static str,
    },
    /// Text that is not UTF-8 where a name, version or path is expected.
    #[error("not UTF-8")]
    NotUtf8,
    /// Anything else that breaks the format's grammar.
    #[error("{0}")]
    Syntax(String),
    /// A member or file that must have content is empty.
    #[error("empty member")]
    EmptyMember,
    /// Decompressing would exceed the caller's bound.
    #[error("decompressed size exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The bound, in bytes.
        limit: u64,
    },
    /// The compressed stream or the archive is damaged or truncated.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

/// An index could not be parsed. Its message says what and where, e.g.
/// ``Packages: paragraph 3 (line 41): field `SHA256`: expected 64 hex
/// digits, got 63 characters`` or
/// ``core.db: entry `foo-1.0-1/desc`: missing %SHA256SUM%``.
///
/// Messages may quote the index (package names, paths): the index is public
/// and says nothing about this machine, unlike which items it fetches.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct IndexError {
    format: Format,
    file: Option<String>,
    location: String,
    problem: Problem,
}

impl IndexError {
    pub(crate) fn new(format: Format, location: impl Into<String>, problem: Problem) -> Self {
        IndexError {
            format,
            file: None,
            location: location.into(),
            problem,
        }
    }

    /// Names the file in the message (e.g. `core.db`, `main/binary-amd64/Packages.xz`)
    /// instead of the format's generic label.
    #[must_use]
    pub fn in_file(mut self, name: impl Into<String>) -> Self {
        self.file = Some(name.into());
        self
    }

    /// The kind of index.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Where in the index: entry, paragraph, line, field (may be empty when
    /// the whole file is at fault).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What is wrong.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(name) => f.write_str(name)?,
            None => write!(f, "{}", self.format)?,
        }
        if !self.location.is_empty() {
            write!(f, ": {}", self.location)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl HasKind for IndexError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}
