//! Deny patterns: package names a node never serves, announces or reports.
//!
//! A pattern is a package name in which `*` stands for any run of characters
//! (including none) and `?` for exactly one. Nothing else is special: no
//! classes, no escapes, no path separators, so a pattern means the same
//! thing to every reader and cannot be mistaken for a path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest pattern accepted; package names are far shorter.
const MAX_LEN: usize = 256;

/// A validated glob-ish pattern over package names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DenyPattern(String);

impl DenyPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

/// Characters that may occur in a pattern besides `*` and `?`: those package
/// names use in pacman, apt (Debian policy §5.6.1) and plain file names.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-' | '@' | ':' | '~')
}

impl FromStr for DenyPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a deny pattern must not be empty".into());
        }
        if s.len() > MAX_LEN {
            return Err(format!("a deny pattern is at most {MAX_LEN} bytes long"));
        }
        if let Some(bad) = s
            .chars()
            .find(|&c| !(is_name_char(c) || c == '*' || c == '?'))
        {
            return Err(format!(
                "`{s}` contains {bad:?}: patterns are package names with `*` (any run) \
                 and `?` (one character) only"
            ));
        }
        Ok(DenyPattern(s.to_owned()))
    }
}

impl fmt::Display for DenyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for DenyPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DenyPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Match with one point of backtracking: the most recent `*`. Linear in
/// practice and never exponential, whatever the pattern.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and the name position it currently absorbs to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` absorb one more character and retry.
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    p = sp + 1;
                    n = sn + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> DenyPattern {
        s.parse().expect("valid pattern")
    }

    #[test]
    fn literal_star_and_question_mark() {
        assert!(pat("linux").matches("linux"));
        assert!(!pat("linux").matches("linux-lts"));
        assert!(!pat("linux-lts").matches("linux"));
        assert!(pat("linux*").matches("linux"));
        assert!(pat("linux*").matches("linux-firmware"));
        assert!(pat("*-debug").matches("glibc-debug"));
        assert!(!pat("*-debug").matches("glibc-debug1"));
        assert!(pat("lib?").matches("libc"));
        assert!(!pat("lib?").matches("lib"));
        assert!(!pat("lib?").matches("libcc"));
        assert!(pat("*").matches(""));
        assert!(pat("a*b*c").matches("aXXbYYbc"));
        assert!(!pat("a*b*c").matches("aXXbYYb"));
        assert!(pat("**x").matches("x"));
        assert!(pat("*nvidia*").matches("lib32-nvidia-utils"));
    }

    #[test]
    fn backtracking_is_not_exponential() {
        let name = "a".repeat(200);
        assert!(!pat(&format!("{}b", "*a".repeat(40))).matches(&name));
    }

    #[test]
    fn invalid_patterns_are_explained() {
        assert!(
            "".parse::<DenyPattern>()
                .expect_err("empty")
                .contains("must not be empty")
        );
        for bad in ["linux[0-9]", "a b", "dir/name", "x\\*"] {
            let err = bad.parse::<DenyPattern>().expect_err(bad);
            assert!(err.contains("`*` (any run)"), "{bad}: {err}");
        }
        assert!("x".repeat(300).parse::<DenyPattern>().is_err());
    }
}
