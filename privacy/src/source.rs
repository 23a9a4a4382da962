//! From policy text to a validated [`Policy`], with every error placed.
//!
//! Three stages, each of which can fail with the offending key's path:
//! TOML syntax, deserialization into [`Options`] (unknown keys, wrong
//! types, missing keys; `serde_path_to_error` supplies the path), and
//! resolution plus [`Policy::check`] (ranges and contradictions). Errors of
//! the last stage know only the key path, so it is looked up in the parsed
//! document to give the line and column too.
//!
//! The public ways in ([`Policy::from_toml_str`], [`Policy::load`], …) are
//! here too, so that the layers read one way: the schema ([`crate::policy`])
//! knows nothing of files, [`Options`] resolves a file's keys over a level's
//! defaults, [`Policy::check`] judges the result, and this module drives
//! the three.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use crate::err::{Error, Invalid, Location};
use crate::level::Level;
use crate::options::Options;
use crate::policy::{DEFAULT_POLICY, Policy};

impl Policy {
    /// Parse and validate a policy.
    pub fn from_toml_str(src: &str) -> Result<Policy, Error> {
        parse(src, None, None)
    }

    /// Parse and validate a policy, with `level` replacing the file's own
    /// (the file's explicit keys still override the new level's defaults).
    pub fn from_toml_str_with_level(src: &str, level: Level) -> Result<Policy, Error> {
        parse(src, None, Some(level))
    }

    /// Read, parse and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        Self::load_inner(path, None)
    }

    /// Read, parse and validate a policy file, with `level` replacing the
    /// file's own.
    pub fn load_with_level(path: &Path, level: Level) -> Result<Policy, Error> {
        Self::load_inner(path, Some(level))
    }

    fn load_inner(path: &Path, level: Option<Level>) -> Result<Policy, Error> {
        let src = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(&src, Some(path), level)
    }

    /// The embedded default policy ([`DEFAULT_POLICY`]), optionally at
    /// another level.
    pub fn embedded_default(level: Option<Level>) -> Result<Policy, Error> {
        parse(DEFAULT_POLICY, None, level)
    }
}

/// Parse, resolve and check `src`; `file` names it in errors.
pub(crate) fn parse(src: &str, file: Option<&Path>, level: Option<Level>) -> Result<Policy, Error> {
    let place = |mut invalid: Invalid| -> Error {
        invalid.file = file.map(Path::to_owned);
        if invalid.location.is_none() {
            // A key the file does not mention took its value from the
            // level, so the file's `level` line is where to look (unless
            // the level came from the command line).
            let at = locate(src, &invalid.key)
                .or_else(|| level.is_none().then(|| locate(src, "level")).flatten());
            invalid.location = at.map(|at| Location::of_offset(src, at));
        }
        invalid.into()
    };
    let doc = DeTable::parse(src).map_err(|e| place(syntax_error(src, &e)))?;
    let options: Options = serde_path_to_error::deserialize(toml::Deserializer::from(doc))
        .map_err(|e| place(deserialize_error(src, e)))?;
    let policy = options.resolve(level).map_err(place)?;
    policy.check().map_err(place)?;
    Ok(policy)
}

fn syntax_error(src: &str, e: &toml::de::Error) -> Invalid {
    let mut invalid = Invalid::new("", format!("not valid TOML: {}", e.message()));
    invalid.location = e.span().map(|s| Location::of_offset(src, s.start));
    invalid
}

fn deserialize_error(src: &str, e: serde_path_to_error::Error<toml::de::Error>) -> Invalid {
    let mut key = match e.path().to_string() {
        root if root == "." => String::new(),
        path => path,
    };
    let inner = e.into_inner();
    let message = inner.message().trim_end().to_owned();
    // serde names a missing key only in its message and puts the path at
    // the table that lacks it; the operator wants the key's own path.
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        key = if key.is_empty() {
            missing.to_owned()
        } else {
            format!("{key}.{missing}")
        };
    }
    let hint = hint_for(&key, &message);
    let mut invalid = Invalid::new(key, message);
    invalid.hint = hint;
    invalid.location = inner.span().map(|s| Location::of_offset(src, s.start));
    invalid
}

/// Hints for serde's messages that are terse on their own.
fn hint_for(key: &str, message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some("check the spelling; every key is listed in the default policy (`anonmirror policy show`)".into())
    } else if message.starts_with("missing field") && key.starts_with("repository[") {
        Some("every [[repository]] needs name, kind and url".into())
    } else if message.contains("socket address") {
        Some("write an IP address and port, e.g. \"127.0.0.1:7878\"".into())
    } else {
        None
    }
}

/// The byte offset of `key` (a path like `repository[1].kind`) in `src`:
/// its value when present, else the nearest enclosing table that is.
fn locate(src: &str, key: &str) -> Option<usize> {
    let doc = DeTable::parse(src).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut found: Option<Range<usize>> = None;
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, indices) = split_indices(part)?;
        let Some(mut value) = table.get(name) else {
            break;
        };
        for index in indices {
            match value.get_ref() {
                DeValue::Array(items) => match items.get(index) {
                    Some(item) => value = item,
                    None => return found.map(|r| r.start),
                },
                _ => return found.map(|r| r.start),
            }
        }
        found = Some(value.span());
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found.map(|r| r.start)
}

/// `repository[1]` → (`repository`, `[1]`).
fn split_indices(part: &str) -> Option<(&str, Vec<usize>)> {
    let mut pieces = part.split('[');
    let name = pieces.next()?;
    let indices = pieces
        .map(|p| p.strip_suffix(']').and_then(|n| n.parse().ok()))
        .collect::<Option<Vec<usize>>>()?;
    Some((name, indices))
}
