//! Debian archives: `Release`/`InRelease` (which index files a suite has,
//! with their SHA-256 and size) and `Packages` (which package files, with
//! theirs). See <https://wiki.debian.org/DebianRepository/Format>.

use std::borrow::Cow;
use std::collections::HashMap;

use anonmirror_core::ItemKey;

use super::armor;
use super::deb822::{Field, Paragraphs};
use super::entry::Entry;
use super::error::{Format, IndexError, Problem};
use super::text::{Lines, decimal, hex32, is_blank, relative_path, text};

/// What a `Release` or `InRelease` file says about its suite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// Every index file of the suite its `SHA256` field names, in order.
    pub files: Vec<ReleaseFile>,
    /// `Suite` (e.g. `stable`).
    pub suite: Option<String>,
    /// `Codename` (e.g. `bookworm`).
    pub codename: Option<String>,
    /// `Date`, as written (RFC 2822).
    pub date: Option<String>,
    /// `Acquire-By-Hash: yes`: apt will ask for index files as
    /// `<dir>/by-hash/SHA256/<hex>` (see [`ReleaseFile::by_hash_path`]).
    pub acquire_by_hash: bool,
}

impl Release {
    /// The file at `path` (relative to the `Release` file's directory,
    /// e.g. `main/binary-amd64/Packages.xz`), if the `SHA256` field names it.
    pub fn file(&self, path: &str) -> Option<&ReleaseFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// One line of a `Release` file's `SHA256` field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReleaseFile {
    /// Relative to the `Release` file's directory (e.g.
    /// `main/binary-amd64/Packages.xz`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: [u8; 32],
}

impl ReleaseFile {
    /// Where apt asks for this file when the suite has `Acquire-By-Hash:
    /// yes`: `main/binary-amd64/by-hash/SHA256/<hex>` for
    /// `main/binary-amd64/Packages.xz`.
    pub fn by_hash_path(&self) -> String {
        let dir = self.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let hex = ItemKey(self.sha256).to_hex();
        if dir.is_empty() {
            format!("by-hash/SHA256/{hex}")
        } else {
            format!("{dir}/by-hash/SHA256/{hex}")
        }
    }
}

fn field_is(field: &Field<'_>, name: &str) -> bool {
    field.name.eq_ignore_ascii_case(name.as_bytes())
}

/// The one-line value of a field; continuation lines are an error.
fn single<'a>(field: &Field<'a>) -> Result<&'a [u8], Problem> {
    if field.cont.is_empty() {
        Ok(field.first)
    } else {
        Err(Problem::Syntax(
            "expected a one-line value, got continuation lines".into(),
        ))
    }
}

/// Parses a `Release` file or a clearsigned `InRelease` file.
///
/// **The signature of an `InRelease` file is not verified**: apt verifies
/// it, and an index forged upstream can only make the gateway fetch files
/// apt then refuses. The armor and the dash-escaping are removed strictly
/// (see the [module docs](super)).
///
/// The `SHA256` field is required (apt refuses a `Release` without it);
/// each of its lines is `<64 hex digits> <size> <path>`. `MD5Sum`, `SHA1`,
/// `SHA512` and other fields are ignored. Only one paragraph is allowed.
pub fn parse_release(bytes: &[u8]) -> Result<Release, IndexError> {
    let err = |line: usize, field: Option<&str>, problem| {
        let location = match field {
            Some(field) => format!("line {line}: field `{field}`"),
            None => format!("line {line}"),
        };
        IndexError::new(Format::Release, location, problem)
    };
    let (body, line_offset) = if armor::is_clearsigned(bytes) {
        let signed = armor::unwrap(bytes).map_err(|(line, p)| err(line, None, p))?;
        (Cow::Owned(signed.text), signed.line_offset)
    } else {
        (Cow::Borrowed(bytes), 0)
    };
    let mut paragraphs = Paragraphs::new(&body, line_offset);
    let mut fields = Vec::new();
    let Some(start) = paragraphs
        .next_paragraph(&mut fields)
        .map_err(|(line, p)| err(line, None, p))?
    else {
        return Err(IndexError::new(
            Format::Release,
            "",
            Problem::Syntax("no paragraph".into()),
        ));
    };
    let mut release = Release::default();
    let mut sha256: Option<&Field<'_>> = None;
    let mut seen: [Option<usize>; 4] = [None; 4];
    for field in &fields {
        const NAMES: [&str; 4] = ["Suite", "Codename", "Date", "Acquire-By-Hash"];
        if field_is(field, "SHA256") {
            if let Some(first) = sha256 {
                return Err(err(
                    field.line,
                    Some("SHA256"),
                    Problem::Duplicate {
                        first_line: first.line,
                    },
                ));
            }
            sha256 = Some(field);
            continue;
        }
        let Some(i) = NAMES.iter().position(|n| field_is(field, n)) else {
            continue;
        };
        if let Some(first_line) = seen[i] {
            return Err(err(
                field.line,
                Some(NAMES[i]),
                Problem::Duplicate { first_line },
            ));
        }
        seen[i] = Some(field.line);
        let value = single(field)
            .and_then(text)
            .map_err(|p| err(field.line, Some(NAMES[i]), p))?;
        match i {
            0 => release.suite = Some(value.to_owned()),
            1 => release.codename = Some(value.to_owned()),
            2 => release.date = Some(value.to_owned()),
            _ => {
                release.acquire_by_hash = boolean(value)
                    .ok_or_else(|| err(field.line, Some(NAMES[i]), bad_boolean(value)))?;
            }
        }
    }
    let Some(sha256) = sha256 else {
        return Err(err(start, None, Problem::Missing("field `SHA256`".into())));
    };
    release.files = release_files(sha256).map_err(|(line, p)| err(line, Some("SHA256"), p))?;
    if let Some(next) = paragraphs
        .next_paragraph(&mut fields)
        .map_err(|(line, p)| err(line, None, p))?
    {
        return Err(err(
            next,
            None,
            Problem::Syntax("a second paragraph (a Release file has one)".into()),
        ));
    }
    Ok(release)
}

/// apt's booleans (`StringToBool`).
fn boolean(value: &str) -> Option<bool> {
    const TRUE: [&str; 6] = ["yes", "true", "with", "on", "enable", "1"];
    const FALSE: [&str; 6] = ["no", "false", "without", "off", "disable", "0"];
    if TRUE.iter().any(|t| value.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|f| value.eq_ignore_ascii_case(f)) {
        Some(false)
    } else {
        None
    }
}

fn bad_boolean(value: &str) -> Problem {
    Problem::Syntax(format!(
        "expected `yes` or `no`, got {}",
        super::text::quote(value.as_bytes())
    ))
}

/// The lines of a `Release` file's `SHA256` field.
fn release_files(field: &Field<'_>) -> Result<Vec<ReleaseFile>, (usize, Problem)> {
    let mut files = Vec::new();
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let first = (!field.first.is_empty()).then_some((field.line, field.first));
    let rest = Lines::new(field.cont).map(|(n, l)| (field.line + n, l));
    for (line, content) in first.into_iter().chain(rest) {
        if is_blank(content) {
            continue;
        }
        let mut words = content
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty());
        let (Some(hex), Some(size), Some(path), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err((
                line,
                Problem::Syntax(format!(
                    "expected `<sha256> <size> <path>`, got {}",
                    super::text::quote(content)
                )),
            ));
        };
        let sha256 = hex32(hex).map_err(|p| (line, p))?;
        let size = decimal(size).map_err(|p| (line, p))?;
        let path = relative_path(path).map_err(|p| (line, p))?;
        if let Some(&first_line) = first_seen.get(path) {
            return Err((line, Problem::Duplicate { first_line }));
        }
        first_seen.insert(path, line);
        files.push(ReleaseFile {
            path: path.to_owned(),
            size,
            sha256,
        });
    }
    Ok(files)
}

/// The fields of a `Packages` paragraph this parser needs.
const PACKAGE_FIELDS: [&str; 5] = ["Package", "Version", "Filename", "Size", "SHA256"];

fn package_field(name: &[u8]) -> Option<usize> {
    // Dispatch on length first: most fields of a paragraph are none of ours.
    let i = match name.len() {
        7 if name.eq_ignore_ascii_case(b"Package") => 0,
        7 if name.eq_ignore_ascii_case(b"Version") => 1,
        8 if name.eq_ignore_ascii_case(b"Filename") => 2,
        4 if name.eq_ignore_ascii_case(b"Size") => 3,
        6 if name.eq_ignore_ascii_case(b"SHA256") => 4,
        _ => return None,
    };
    Some(i)
}

/// Parses a decompressed `Packages` file: one [`Entry`] per paragraph, from
/// its `Package`, `Version`, `Filename` (relative to the archive root),
/// `Size` and `SHA256` fields, all required and each at most once; field
/// names are case-insensitive and other fields are ignored. An empty file
/// (an empty component) has no entries.
pub fn parse_packages(bytes: &[u8]) -> Result<Vec<Entry>, IndexError> {
    let mut paragraphs = Paragraphs::new(bytes, 0);
    let mut fields = Vec::with_capacity(32);
    // Debian's paragraphs average about 900 bytes.
    let mut entries = Vec::with_capacity(bytes.len() / 1024);
    let mut number = 0usize;
    loop {
        let next = paragraphs
            .next_paragraph(&mut fields)
            .map_err(|(line, p)| {
                let location = format!("paragraph {} (line {line})", number + 1);
                IndexError::new(Format::Packages, location, p)
            })?;
        let Some(start) = next else {
            return Ok(entries);
        };
        number += 1;
        let at = |line: usize, field: usize, problem| {
            IndexError::new(
                Format::Packages,
                format!(
                    "paragraph {number} (line {line}): field `{}`",
                    PACKAGE_FIELDS[field]
                ),
                problem,
            )
        };
        let mut found: [Option<&Field<'_>>; 5] = [None; 5];
        for field in &fields {
            let Some(i) = package_field(field.name) else {
                continue;
            };
            if let Some(first) = found[i] {
                return Err(at(
                    field.line,
                    i,
                    Problem::Duplicate {
                        first_line: first.line,
                    },
                ));
            }
            found[i] = Some(field);
        }
        let mut values: [(&[u8], usize); 5] = [(&[], 0); 5];
        for (i, slot) in found.iter().enumerate() {
            let Some(field) = slot else {
                return Err(IndexError::new(
                    Format::Packages,
                    format!("paragraph {number} (line {start})"),
                    Problem::Missing(format!("field `{}`", PACKAGE_FIELDS[i])),
                ));
            };
            values[i] = (single(field).map_err(|p| at(field.line, i, p))?, field.line);
        }
        let [package, version, filename, size, sha256] = values;
        let name = text(package.0).map_err(|p| at(package.1, 0, p))?;
        let version_text = text(version.0).map_err(|p| at(version.1, 1, p))?;
        let path = relative_path(filename.0).map_err(|p| at(filename.1, 2, p))?;
        let size_value = decimal(size.0).map_err(|p| at(size.1, 3, p))?;
        let key = hex32(sha256.0).map_err(|p| at(sha256.1, 4, p))?;
        entries.push(Entry {
            path: path.to_owned(),
            key: ItemKey(key),
            size: Some(size_value),
            name: name.to_owned(),
            version: version_text.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// hello's paragraph from Debian bookworm's main/binary-amd64/Packages.
    pub(crate) const HELLO: &str = "\
Package: hello
Version: 2.10-3
Installed-Size: 281
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Replaces: hello-debhelper (<< 2.9)
Depends: libc6 (>= 2.34)
Conflicts: hello-traditional
Breaks: hello-debhelper (<< 2.9)
Description: example package based on GNU hello
Homepage: https://www.gnu.org/software/hello/
Description-md5: 46ee8b5b9ec8b1f6f6ad4c8fcc1ca1a3
Tag: devel::examples, role::program, scope::utility, suite::gnu,
 use::checking, works-with::text
Section: devel
Priority: optional
Filename: pool/main/h/hello/hello_2.10-3_amd64.deb
Size: 53600
MD5sum: ad07f4ae7bf9d6e5a4a1e1a5e0a6e8c5
SHA256: 5da6dc9ea50c6f4b12e6a5c4ec0b9d3d1e9b4a1c6d2c4b6a8a0f7e4e2c1b9a3d
";

    const HELLO_SHA: &str = "5da6dc9ea50c6f4b12e6a5c4ec0b9d3d1e9b4a1c6d2c4b6a8a0f7e4e2c1b9a3d";

    fn hello_entry() -> Entry {
        Entry {
            path: "pool/main/h/hello/hello_2.10-3_amd64.deb".into(),
            key: HELLO_SHA.parse().unwrap(),
            size: Some(53600),
            name: "hello".into(),
            version: "2.10-3".into(),
        }
    }

    #[test]
    fn packages_golden() {
        let text = format!("{HELLO}\n{}", HELLO.replace("2.10-3", "2.12-1"));
        let entries = parse_packages(text.as_bytes()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], hello_entry());
        assert_eq!(entries[1].version, "2.12-1");
        assert_eq!(entries[1].path, "pool/main/h/hello/hello_2.12-1_amd64.deb");
        assert!(parse_packages(b"").unwrap().is_empty());
        assert!(parse_packages(b"\n\n").unwrap().is_empty());
    }

    #[test]
    fn packages_field_names_are_case_insensitive_and_hex_either_case() {
        let text = HELLO
            .replace("SHA256:", "sha256:")
            .replace("Filename:", "FILENAME:")
            .replace(HELLO_SHA, &HELLO_SHA.to_uppercase())
            .replace('\n', "\r\n");
        assert_eq!(
            parse_packages(text.as_bytes()).unwrap(),
            vec![hello_entry()]
        );
    }

    fn packages_error(text: &str) -> String {
        parse_packages(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn packages_errors_say_what_and_where() {
        let two = |second: &str| format!("{HELLO}\n{second}");
        assert_eq!(
            packages_error(&two(&HELLO.replace(HELLO_SHA, &HELLO_SHA[1..]))),
            "Packages: paragraph 2 (line 41): field `SHA256`: expected 64 hex digits, got 63 characters"
        );
        assert_eq!(
            packages_error(&two(&HELLO.replace("SHA256: ", "SHA512: "))),
            "Packages: paragraph 2 (line 22): missing field `SHA256`"
        );
        assert_eq!(
            packages_error(&HELLO.replace("Size: 53600", "Size: 53600\nsize: 1")),
            "Packages: paragraph 1 (line 19): field `Size`: given twice (first on line 18)"
        );
        assert_eq!(
            packages_error(&HELLO.replace("Size: 53600", "Size: 5e4")),
            "Packages: paragraph 1 (line 18): field `Size`: expected a decimal number, got `5e4`"
        );
        assert_eq!(
            packages_error(&HELLO.replace("pool/main", "../../etc")),
            "Packages: paragraph 1 (line 17): field `Filename`: unsafe path \
             `../../etc/h/hello/hello_2.10-3_amd64.deb`: `..` component"
        );
        assert_eq!(
            packages_error(&HELLO.replace("pool/main", "/pool/main")),
            "Packages: paragraph 1 (line 17): field `Filename`: unsafe path \
             `/pool/main/h/hello/hello_2.10-3_amd64.deb`: absolute"
        );
        assert_eq!(
            packages_error(&HELLO.replace("Version: 2.10-3", "Version:")),
            "Packages: paragraph 1 (line 2): field `Version`: empty value"
        );
        assert_eq!(
            packages_error(&HELLO.replace("Size: 53600", "Size:\n 53600")),
            "Packages: paragraph 1 (line 18): field `Size`: expected a one-line value, got continuation lines"
        );
        assert_eq!(
            packages_error(&two("Package hello\n")),
            "Packages: paragraph 2 (line 22): expected `Field: value`, got `Package hello`"
        );
    }

    const RELEASE: &str = "\
Origin: Debian
Label: Debian
Suite: stable
Version: 12.5
Codename: bookworm
Date: Sat, 10 Feb 2024 10:06:00 UTC
Acquire-By-Hash: yes
No-Support-for-Architecture-all: Packages
Architectures: all amd64 arm64
Components: main contrib non-free-firmware non-free
Description: Debian 12.5 Released 10 February 2024
MD5Sum:
 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 contrib/Contents-all
SHA256:
 d6c9c82f4e61b4662f9ba16b9ebb379c57b4943f8b7813091d1f637325ddfb79  1484322 contrib/Contents-all
 2cb8d0b4ae7b4c8a4b1bb4a3b4e1d9a6e5c8d9f0e1a2b3c4d5e6f7a8b9c0d1e2    99541 main/binary-amd64/Packages.xz
 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 45123456 main/binary-amd64/Packages
";

    fn signed(text: &str) -> String {
        let escaped: String = text
            .lines()
            .map(|l| {
                if l.starts_with('-') {
                    format!("- {l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{escaped}\
             -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEEfakefakefake\n=AbCd\n\
             -----END PGP SIGNATURE-----\n"
        )
    }

    #[test]
    fn release_golden_plain_and_signed() {
        for text in [RELEASE.to_owned(), signed(RELEASE)] {
            let r = parse_release(text.as_bytes()).unwrap();
            assert_eq!(r.suite.as_deref(), Some("stable"));
            assert_eq!(r.codename.as_deref(), Some("bookworm"));
            assert_eq!(r.date.as_deref(), Some("Sat, 10 Feb 2024 10:06:00 UTC"));
            assert!(r.acquire_by_hash);
            assert_eq!(r.files.len(), 3);
            let p = r.file("main/binary-amd64/Packages.xz").unwrap();
            assert_eq!(p.size, 99541);
            assert_eq!(
                ItemKey(p.sha256).to_hex(),
                "2cb8d0b4ae7b4c8a4b1bb4a3b4e1d9a6e5c8d9f0e1a2b3c4d5e6f7a8b9c0d1e2"
            );
            assert_eq!(
                p.by_hash_path(),
                "main/binary-amd64/by-hash/SHA256/\
                 2cb8d0b4ae7b4c8a4b1bb4a3b4e1d9a6e5c8d9f0e1a2b3c4d5e6f7a8b9c0d1e2"
            );
            assert_eq!(r.files[2].size, 45_123_456);
        }
        let r = parse_release(
            RELEASE
                .replace("Acquire-By-Hash: yes\n", "")
                .replace("Suite: stable\n", "")
                .as_bytes(),
        )
        .unwrap();
        assert!(!r.acquire_by_hash);
        assert_eq!(r.suite, None);
    }

    #[test]
    fn release_errors_say_what_and_where() {
        let err = |t: String| parse_release(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err(RELEASE.replace("SHA256:", "SHA1:")),
            "Release: line 1: missing field `SHA256`"
        );
        assert_eq!(
            err(RELEASE.replace("  1484322 contrib", "  1484322x contrib")),
            "Release: line 15: field `SHA256`: expected a decimal number, got `1484322x`"
        );
        assert_eq!(
            err(signed(
                &RELEASE.replace(" main/binary-amd64/Packages\n", " ../Packages\n")
            )),
            "Release: line 20: field `SHA256`: unsafe path `../Packages`: `..` component"
        );
        assert_eq!(
            err(RELEASE.replace("Packages.xz", "Packages")),
            "Release: line 17: field `SHA256`: given twice (first on line 16)"
        );
        assert_eq!(
            err(RELEASE.replace("Acquire-By-Hash: yes", "Acquire-By-Hash: maybe")),
            "Release: line 7: field `Acquire-By-Hash`: expected `yes` or `no`, got `maybe`"
        );
        assert_eq!(
            err(format!("{RELEASE}\nSuite: other\n")),
            "Release: line 19: a second paragraph (a Release file has one)"
        );
        assert_eq!(
            err(format!("Evil: yes\n{}", signed(RELEASE))),
            "Release: line 1: text before the `BEGIN PGP SIGNED MESSAGE` line"
        );
        assert_eq!(
            err(RELEASE.replace("d6c9c82f", "zzc9c82f")),
            "Release: line 15: field `SHA256`: expected 64 hex digits, got \
             `zzc9c82f4e61b4662f9ba16b9ebb379c57b4943f8b7813091d1f637325ddfb79`"
        );
    }
}
