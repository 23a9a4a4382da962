//! pacman repository databases (`<repo>.db`, as `repo-add` writes them and
//! libalpm's `be_sync.c` reads them).
//!
//! The database is a tar archive, compressed or not, with one directory
//! per package, `<name>-<version>/`, holding a `desc` file (and, in a
//! `.files` database, a `files` file; in very old ones, `depends`). A `desc`
//! is a run of fields, each a `%NAME%` line, its value lines, and a blank
//! line:
//!
//! ```text
//! %FILENAME%
//! hello-2.12-1-x86_64.pkg.tar.zst
//!
//! %NAME%
//! hello
//! ...
//! ```
//!
//! One-line fields take their first value line. `%FILENAME%` must be a plain
//! file name (libalpm refuses a `/` or a leading `.`), relative to the
//! database's directory.

use std::cell::Cell;
use std::io::{BufReader, Read};

use anonmirror_core::ItemKey;

use super::compress::{Bounded, DECOMPRESS_LIMIT, Decoder, stream_problem};
use super::entry::Entry;
use super::error::{Format, IndexError, Problem};
use super::text::{Lines, decimal, hex32, quote, relative_path, text};

/// The `desc` fields this parser needs, in [`Entry`] order of checking.
const FIELDS: [&str; 5] = [
    "%FILENAME%",
    "%NAME%",
    "%VERSION%",
    "%CSIZE%",
    "%SHA256SUM%",
];

/// The largest `desc` member accepted: libalpm caps a line at 512 KiB, and
/// a real `desc` is a few KiB.
const MAX_DESC: u64 = 4 << 20;

/// Parses a pacman repository database as served (gzip, zstd, xz or
/// uncompressed tar), decompressing at most [`DECOMPRESS_LIMIT`] bytes.
///
/// One [`Entry`] per `desc` member, in archive order, from its
/// `%FILENAME%`, `%NAME%`, `%VERSION%`, `%CSIZE%` and `%SHA256SUM%`
/// (required, each at most once; hex in either case). Other fields,
/// `files` and `depends` members, directories, and members outside a
/// package directory are skipped, as libalpm skips them. An empty archive
/// (an empty repository) has no entries; an empty `desc` is an error.
pub fn parse_pacman_db(bytes: &[u8]) -> Result<Vec<Entry>, IndexError> {
    parse_pacman_db_limited(bytes, DECOMPRESS_LIMIT)
}

/// [`parse_pacman_db`] with another bound on the decompressed archive.
pub fn parse_pacman_db_limited(bytes: &[u8], limit: u64) -> Result<Vec<Entry>, IndexError> {
    let exceeded = Cell::new(false);
    let decoder = Decoder::new(bytes);
    let label = decoder.label();
    let result = match decoder {
        // Already in memory: tar reads straight from the slice.
        Decoder::Plain(plain) => read_members(Bounded::new(plain, limit, &exceeded)),
        // tar reads 512-byte blocks: a large buffer keeps the decompressor
        // working on large chunks.
        compressed => read_members(BufReader::with_capacity(
            1 << 16,
            Bounded::new(compressed, limit, &exceeded),
        )),
    };
    result.map_err(|failure| match failure {
        Failure::Index(e) => e,
        Failure::Archive { error, after } => {
            let location = match after {
                Some(name) => format!("archive ({label}), after entry {}", quote(&name)),
                None => format!("archive ({label})"),
            };
            IndexError::new(
                Format::PacmanDb,
                location,
                stream_problem(&error, &exceeded, limit),
            )
        }
    })
}

/// Why reading the members stopped.
enum Failure {
    /// The archive or its compression broke, after the named member if any.
    Archive {
        error: std::io::Error,
        after: Option<Vec<u8>>,
    },
    /// A member is not a valid `desc`.
    Index(IndexError),
}

fn read_members<R: Read>(reader: R) -> Result<Vec<Entry>, Failure> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    let mut desc = Vec::new();
    // The last member's path (for errors), reused across members.
    let mut path = Vec::new();
    let members = archive
        .entries()
        .map_err(|error| Failure::Archive { error, after: None })?;
    for member in members {
        let after = |path: &Vec<u8>| (!path.is_empty()).then(|| path.clone());
        let mut member = member.map_err(|error| Failure::Archive {
            error,
            after: after(&path),
        })?;
        if !member.header().entry_type().is_file() {
            continue;
        }
        path.clear();
        path.extend_from_slice(&member.path_bytes());
        if path.starts_with(b"./") {
            path.drain(..2);
        }
        let Some(slash) = memchr::memrchr(b'/', &path) else {
            continue; // Outside a package directory: libalpm warns and skips.
        };
        if &path[slash + 1..] != b"desc" {
            continue;
        }
        let at = |path: &[u8]| format!("entry {}", quote(path));
        // Sized by the header (read_to_end would probe and zero its spare
        // capacity on every member), but never beyond a sane desc.
        let size = member.size();
        if size > MAX_DESC {
            return Err(Failure::Index(IndexError::new(
                Format::PacmanDb,
                at(&path),
                Problem::Syntax(format!(
                    "a desc of {size} bytes (more than {MAX_DESC}) is not a package description"
                )),
            )));
        }
        desc.clear();
        desc.resize(size as usize, 0);
        member
            .read_exact(&mut desc)
            .map_err(|error| Failure::Archive {
                error,
                after: after(&path),
            })?;
        if desc.is_empty() {
            return Err(Failure::Index(IndexError::new(
                Format::PacmanDb,
                at(&path),
                Problem::EmptyMember,
            )));
        }
        let entry = parse_desc(&desc).map_err(|(line, problem)| {
            let location = match line {
                Some((line, field)) => format!("{}: line {line}: {field}", at(&path)),
                None => at(&path),
            };
            Failure::Index(IndexError::new(Format::PacmanDb, location, problem))
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Where in a `desc` a problem is: a line and a field, or the whole file.
type DescError = (Option<(usize, &'static str)>, Problem);

/// One `desc` file's entry.
fn parse_desc(desc: &[u8]) -> Result<Entry, DescError> {
    // For each wanted field: its header's line and its first value line.
    let mut found: [Option<(usize, &[u8])>; 5] = [None; 5];
    // The field whose value lines are being read, if wanted, and whether
    // its first value line is still to come.
    let mut current: Option<(usize, bool)> = None;
    let mut in_field = false;
    for (n, line) in Lines::new(desc) {
        if line.is_empty() {
            in_field = false;
            current = None;
            continue;
        }
        if in_field {
            if let Some((i, true)) = current {
                if let Some((header, _)) = found[i] {
                    found[i] = Some((header, line));
                }
                current = Some((i, false));
            }
            continue;
        }
        // A line after a blank line: a field header, or a stray line that
        // libalpm ignores too.
        if line.len() >= 2 && line.starts_with(b"%") && line.ends_with(b"%") {
            in_field = true;
            current = None;
            if let Some(i) = FIELDS.iter().position(|f| f.as_bytes() == line) {
                if let Some((first_line, _)) = found[i] {
                    return Err((Some((n, FIELDS[i])), Problem::Duplicate { first_line }));
                }
                found[i] = Some((n, &[]));
                current = Some((i, true));
            }
        }
    }
    let mut values: [(&[u8], usize); 5] = [(&[], 0); 5];
    for (i, slot) in found.iter().enumerate() {
        let Some((line, value)) = slot else {
            return Err((None, Problem::Missing(FIELDS[i].to_owned())));
        };
        values[i] = (value, *line);
    }
    let [filename, name, version, csize, sha256] = values;
    let at = |(_, line): (&[u8], usize), i: usize| move |p| (Some((line, FIELDS[i])), p);
    let path = relative_path(filename.0).map_err(at(filename, 0))?;
    if path.contains('/') || path.starts_with('.') {
        return Err(at(filename, 0)(Problem::UnsafePath {
            path: quote(filename.0),
            why: "not a plain file name",
        }));
    }
    Ok(Entry {
        path: path.to_owned(),
        key: ItemKey(hex32(sha256.0).map_err(at(sha256, 4))?),
        size: Some(decimal(csize.0).map_err(at(csize, 3))?),
        name: text(name.0).map_err(at(name, 1))?.to_owned(),
        version: text(version.0).map_err(at(version, 2))?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::index::fixtures::{gzip, tar, xz, zstd};

    const SHA: &str = "a7ee5c8b9d3e2f1a0b4c6d8e7f9a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2";

    /// A desc as repo-add writes it (fields from a real core.db entry).
    fn desc(name: &str, version: &str, sha: &str) -> String {
        format!(
            "%FILENAME%\n{name}-{version}-x86_64.pkg.tar.zst\n\n\
             %NAME%\n{name}\n\n\
             %BASE%\n{name}\n\n\
             %VERSION%\n{version}\n\n\
             %DESC%\nA friendly greeter\n\n\
             %CSIZE%\n57654\n\n\
             %ISIZE%\n201728\n\n\
             %MD5SUM%\n0d2c7f0f8fea3d4a9d0fa1a2b0e5b2c3\n\n\
             %SHA256SUM%\n{sha}\n\n\
             %PGPSIG%\niHUEABYKAB0WIQRizEfakefakefake==\n\n\
             %URL%\nhttps://www.gnu.org/software/hello/\n\n\
             %LICENSE%\nGPL-3.0-or-later\n\n\
             %ARCH%\nx86_64\n\n\
             %BUILDDATE%\n1700000000\n\n\
             %PACKAGER%\nSomeone <someone@archlinux.org>\n\n\
             %DEPENDS%\nglibc\nsh\n\n"
        )
    }

    fn db(descs: &[(&str, String)]) -> Vec<u8> {
        let mut members: Vec<(String, Vec<u8>)> = Vec::new();
        for (dir, d) in descs {
            members.push((format!("{dir}/"), Vec::new()));
            members.push((format!("{dir}/desc"), d.clone().into_bytes()));
        }
        let refs: Vec<(&str, &[u8])> = members
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        tar(&refs)
    }

    fn two() -> Vec<u8> {
        db(&[
            ("hello-2.12-1", desc("hello", "2.12-1", SHA)),
            (
                "zlib-1:1.3.1-2",
                desc("zlib", "1:1.3.1-2", &SHA.to_uppercase()),
            ),
        ])
    }

    #[test]
    fn golden_in_every_compression() {
        let plain = two();
        for bytes in [plain.clone(), gzip(&plain), xz(&plain), zstd(&plain)] {
            let e = parse_pacman_db(&bytes).unwrap();
            assert_eq!(e.len(), 2);
            assert_eq!(
                e[0],
                Entry {
                    path: "hello-2.12-1-x86_64.pkg.tar.zst".into(),
                    key: SHA.parse().unwrap(),
                    size: Some(57654),
                    name: "hello".into(),
                    version: "2.12-1".into(),
                }
            );
            assert_eq!(e[1].name, "zlib");
            assert_eq!(e[1].version, "1:1.3.1-2");
            assert_eq!(e[1].key, e[0].key);
        }
    }

    #[test]
    fn files_members_and_strays_are_skipped() {
        let d = desc("hello", "2.12-1", SHA);
        let bytes = tar(&[
            ("hello-2.12-1/", b""),
            ("hello-2.12-1/desc", d.as_bytes()),
            ("hello-2.12-1/files", b"%FILES%\nusr/\nusr/bin/hello\n\n"),
            ("hello-2.12-1/depends", b"%DEPENDS%\nglibc\n\n"),
            ("README", b"not a package"),
        ]);
        assert_eq!(parse_pacman_db(&gzip(&bytes)).unwrap().len(), 1);
        assert!(parse_pacman_db(&tar(&[])).unwrap().is_empty());
        assert!(parse_pacman_db(&gzip(&tar(&[]))).unwrap().is_empty());
    }

    fn error(d: &str) -> String {
        parse_pacman_db(&gzip(&db(&[("foo-1.0-1", d.to_owned())])))
            .unwrap_err()
            .in_file("core.db")
            .to_string()
    }

    #[test]
    fn errors_say_what_and_where() {
        let good = desc("foo", "1.0-1", SHA);
        assert_eq!(
            error(&good.replace("%SHA256SUM%", "%SHA512SUM%")),
            "core.db: entry `foo-1.0-1/desc`: missing %SHA256SUM%"
        );
        assert_eq!(
            error(&good.replace("57654", "57,654")),
            "core.db: entry `foo-1.0-1/desc`: line 16: %CSIZE%: \
             expected a decimal number, got `57,654`"
        );
        assert_eq!(
            error(&good.replace(SHA, &SHA[..40])),
            "core.db: entry `foo-1.0-1/desc`: line 25: %SHA256SUM%: \
             expected 64 hex digits, got 40 characters"
        );
        assert_eq!(
            error(&format!("{good}%CSIZE%\n1\n\n")),
            "core.db: entry `foo-1.0-1/desc`: line 50: %CSIZE%: given twice (first on line 16)"
        );
        assert_eq!(
            error(&good.replace("foo-1.0-1-x86_64", "../foo-1.0-1-x86_64")),
            "core.db: entry `foo-1.0-1/desc`: line 1: %FILENAME%: \
             unsafe path `../foo-1.0-1-x86_64.pkg.tar.zst`: `..` component"
        );
        assert_eq!(
            error(&good.replace("foo-1.0-1-x86_64", "sub/foo-1.0-1-x86_64")),
            "core.db: entry `foo-1.0-1/desc`: line 1: %FILENAME%: \
             unsafe path `sub/foo-1.0-1-x86_64.pkg.tar.zst`: not a plain file name"
        );
        assert_eq!(
            error(&good.replace("%VERSION%\n1.0-1\n", "%VERSION%\n")),
            "core.db: entry `foo-1.0-1/desc`: line 10: %VERSION%: empty value"
        );
        assert_eq!(error(""), "core.db: entry `foo-1.0-1/desc`: empty member");
    }

    #[test]
    fn archive_errors() {
        let bytes = gzip(&two());
        let e = parse_pacman_db(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(e.problem(), Problem::Corrupt(_)), "{e}");
        assert!(e.location().starts_with("archive (gzip)"), "{e}");
        let e = parse_pacman_db_limited(&bytes, 2000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pacman db: archive (gzip), after entry `hello-2.12-1/desc`: \
             decompressed size exceeds the limit of 2000 bytes"
        );
        let e = parse_pacman_db(
            b"this is not a tar archive, not even close, \
            but it must be at least one block long to be read as a header at all .......\
            ........................................................................\
            ........................................................................\
            ........................................................................\
            ........................................................................\
            ........................................................................\
            ..........",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pacman db: archive (uncompressed): corrupt: "),
            "{e}"
        );
    }
}
