//! Errors of the privacy policy.
//!
//! A policy error is always the operator's to fix, so it must say exactly
//! where: the key's full path (`serve.max_clients`, `repository[1].kind`),
//! the file and line:column when known, what is wrong, and a hint.

use std::fmt;
use std::path::PathBuf;

use anonmirror_core::{ErrorKind, HasKind};

/// A position in the policy text, 1-based, counted in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Line number, from 1.
    pub line: usize,
    /// Column number, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `src` (clamped to its end, and to a
    /// character boundary, so that any span a parser reports is usable).
    pub fn of_offset(src: &str, offset: usize) -> Location {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// What is wrong with a policy, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The file, when the policy was loaded from one.
    pub file: Option<PathBuf>,
    /// Where in the text, when known.
    pub location: Option<Location>,
    /// The key's full path, e.g. `serve.max_clients` or
    /// `repository[1].kind`; empty when the text is not TOML at all.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is more to say than the message.
    pub hint: Option<String>,
}

impl Invalid {
    /// An error about `key`, not yet placed in a file.
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            file: None,
            location: None,
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// Add a hint.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Invalid {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, &self.location) {
            (Some(file), Some(loc)) => write!(f, "{}:{loc}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(loc)) => write!(f, "line {}, column {}: ", loc.line, loc.column)?,
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Errors of the privacy policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy file could not be read: the local environment (a missing
    /// file, permissions) is at fault.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The policy is not valid TOML, has an unknown key, a wrong type, a
    /// missing or out-of-range value, or contradicts itself: the operator's
    /// configuration is at fault.
    #[error("{0}")]
    Invalid(Box<Invalid>),
    /// A valid policy could not be printed: a bug of ours.
    #[error("internal error printing the policy (a bug): {0}")]
    Internal(String),
}

impl Error {
    /// The details when the policy itself is at fault.
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            Error::Invalid(invalid) => Some(invalid),
            _ => None,
        }
    }

    /// The offending key's path, when the policy itself is at fault.
    pub fn key(&self) -> Option<&str> {
        self.invalid().map(|i| i.key.as_str())
    }
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Error {
        Error::Invalid(Box::new(invalid))
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Read { .. } => ErrorKind::LocalIo,
            Error::Invalid(_) => ErrorKind::LocalConfig,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(Location::of_offset(src, 0), Location { line: 1, column: 1 });
        // After "bé " (é is two bytes): column 4.
        assert_eq!(
            Location::of_offset(src, 6 + 4),
            Location { line: 2, column: 4 }
        );
        // Inside é, and past the end, are clamped rather than panicking.
        assert_eq!(Location::of_offset(src, 8).line, 2);
        assert_eq!(Location::of_offset(src, 999).line, 3);
    }

    #[test]
    fn display_names_file_location_key_and_hint() {
        let mut invalid = Invalid::new("serve.max_clients", "must be at least 1, got 0")
            .hint("serve at least one client");
        invalid.file = Some(PathBuf::from("/etc/anonmirror/policy.toml"));
        invalid.location = Some(Location {
            line: 3,
            column: 15,
        });
        let err = Error::from(invalid);
        assert_eq!(
            err.to_string(),
            "/etc/anonmirror/policy.toml:3:15: `serve.max_clients`: must be at least 1, got 0 \
             (hint: serve at least one client)"
        );
        assert_eq!(err.key(), Some("serve.max_clients"));
        assert_eq!(err.kind(), ErrorKind::LocalConfig);
        let read = Error::Read {
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(read.kind(), ErrorKind::LocalIo);
        assert_eq!(read.key(), None);
    }
}
