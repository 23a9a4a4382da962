//! `SHA256SUMS` files, as `sha256sum` writes them.
//!
//! Accepted lines:
//!
//! - GNU: `<64 hex>  <name>` (text mode) and `<64 hex> *<name>` (binary
//!   mode); like `sha256sum -c`, a single space before the name is accepted.
//! - BSD / `--tag`: `SHA256 (<name>) = <64 hex>`.
//! - Either form preceded by `\`, which GNU writes when the name holds a
//!   backslash or a newline: `\\` and `\n` in the name are unescaped (a name
//!   with a newline is then refused as unsafe).
//! - Blank lines and `#` comments (Fedora's `CHECKSUM` files). The whole
//!   file may be clearsigned; the signature is not checked.
//!
//! Names are paths relative to the file's directory; absolute paths, `..`
//! components and control characters are refused. A name listed twice with
//! the same digest is listed once; with different digests it is an error.

use std::borrow::Cow;
use std::collections::HashMap;

use anonmirror_core::ItemKey;

use super::armor;
use super::entry::Entry;
use super::error::{Format, IndexError, Problem};
use super::text::{Lines, hex32, is_blank, quote, relative_path};

/// Parses a `SHA256SUMS` file (see the module docs for the forms accepted).
/// Entries come in file order, with `size: None`, `name` equal to `path`
/// and an empty `version`.
pub fn parse_sha256sums(bytes: &[u8]) -> Result<Vec<Entry>, IndexError> {
    let err =
        |line: usize, problem| IndexError::new(Format::Sha256Sums, format!("line {line}"), problem);
    let (body, offset) = if armor::is_clearsigned(bytes) {
        let signed = armor::unwrap(bytes).map_err(|(line, p)| err(line, p))?;
        (Cow::Owned(signed.text), signed.line_offset)
    } else {
        (Cow::Borrowed(bytes), 0)
    };
    // A line is about 90 bytes.
    let mut entries: Vec<Entry> = Vec::with_capacity(body.len() / 90);
    // Path -> (line, index in `entries`), to catch a name listed twice.
    let mut seen: HashMap<Cow<'_, str>, (usize, usize)> = HashMap::with_capacity(body.len() / 90);
    for (n, line) in Lines::new(&body) {
        let n = n + offset;
        if is_blank(line) || line.starts_with(b"#") {
            continue;
        }
        let (hex, name) = split_line(line).map_err(|p| err(n, p))?;
        let key = ItemKey(hex32(hex).map_err(|p| err(n, p))?);
        let path: Cow<'_, str> = match name {
            Cow::Borrowed(name) => Cow::Borrowed(relative_path(name).map_err(|p| err(n, p))?),
            Cow::Owned(name) => Cow::Owned(relative_path(&name).map_err(|p| err(n, p))?.to_owned()),
        };
        if let Some(&(first_line, index)) = seen.get(&path) {
            if entries[index].key == key {
                continue;
            }
            return Err(err(
                n,
                Problem::Syntax(format!(
                    "{} listed again with another digest (first on line {first_line})",
                    quote(path.as_bytes())
                )),
            ));
        }
        entries.push(Entry {
            path: path.to_string(),
            key,
            size: None,
            name: path.to_string(),
            version: String::new(),
        });
        seen.insert(path, (n, entries.len() - 1));
    }
    Ok(entries)
}

/// The digest and the (unescaped) name of one line.
fn split_line(line: &[u8]) -> Result<(&[u8], Cow<'_, [u8]>), Problem> {
    let (escaped, line) = match line {
        [b'\\', rest @ ..] => (true, rest),
        _ => (false, line),
    };
    let (hex, name) = if let Some(rest) = line.strip_prefix(b"SHA256 (") {
        // The name may itself hold ") = ": the digest follows the last one.
        let Some(at) = rest.windows(4).rposition(|w| w == b") = ") else {
            return Err(expected(line));
        };
        (&rest[at + 4..], &rest[..at])
    } else if line.len() > 65
        && (line[64] == b' ' || line[64] == b'\t')
        && line[..64].iter().all(u8::is_ascii_hexdigit)
    {
        let name = match line[65] {
            b' ' | b'*' => &line[66..],
            _ => &line[65..],
        };
        (&line[..64], name)
    } else if line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count()
        > 0
        && line
            .iter()
            .position(|&b| b == b' ')
            .is_some_and(|sp| line[sp..].starts_with(b" ("))
    {
        return Err(Problem::Syntax(format!(
            "not a SHA-256 line: {}",
            quote(line)
        )));
    } else {
        return Err(expected(line));
    };
    let name = if escaped {
        Cow::Owned(unescape(name)?)
    } else {
        Cow::Borrowed(name)
    };
    Ok((hex, name))
}

fn expected(line: &[u8]) -> Problem {
    Problem::Syntax(format!(
        "expected `<64 hex digits>  <name>` or `SHA256 (<name>) = <64 hex digits>`, got {}",
        quote(line)
    ))
}

/// GNU's escaping of names: `\\` for `\`, `\n` for a newline (`\r` too,
/// since coreutils 9.2).
fn unescape(name: &[u8]) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            _ => {
                return Err(Problem::Syntax(format!(
                    "bad escape in name {}",
                    quote(name)
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const A: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const B: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn gnu_bsd_and_escaped_forms() {
        let text = format!(
            "{A}  ubuntu-24.04-desktop-amd64.iso\n\
             \n\
             # a comment\n\
             {B} *images/netboot.tar.gz\r\n\
             SHA256 (odd) = name) = {}\n\
             \\{A}  back\\\\slash\n\
             {B} single-space\n",
            B.to_uppercase()
        );
        let e = parse_sha256sums(text.as_bytes()).unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ubuntu-24.04-desktop-amd64.iso",
                "images/netboot.tar.gz",
                "odd) = name",
                "back\\slash",
                "single-space"
            ]
        );
        assert_eq!(e[0].key.to_hex(), A);
        assert_eq!(e[1].key.to_hex(), B);
        assert_eq!(e[2].key.to_hex(), B);
        assert_eq!(e[0].size, None);
        assert_eq!(e[0].name, e[0].path);
        assert_eq!(e[0].version, "");
    }

    #[test]
    fn duplicates() {
        let same = format!("{A}  a\n{A}  a\n");
        assert_eq!(parse_sha256sums(same.as_bytes()).unwrap().len(), 1);
        let other = format!("{A}  a\n{B}  b\n{B}  a\n");
        assert_eq!(
            parse_sha256sums(other.as_bytes()).unwrap_err().to_string(),
            "SHA256SUMS: line 3: `a` listed again with another digest (first on line 1)"
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let err = |t: String| parse_sha256sums(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err(format!("{A}  ok\n{A}  ../etc/passwd\n")),
            "SHA256SUMS: line 2: unsafe path `../etc/passwd`: `..` component"
        );
        assert_eq!(
            err(format!("\n{A}  /etc/passwd\n")),
            "SHA256SUMS: line 2: unsafe path `/etc/passwd`: absolute"
        );
        assert_eq!(
            err(format!("\\{A}  new\\nline\n")),
            "SHA256SUMS: line 1: unsafe path `new\\nline`: control character"
        );
        assert_eq!(
            err(format!("\\{A}  bad\\tescape\n")),
            "SHA256SUMS: line 1: bad escape in name `bad\\\\tescape`"
        );
        assert_eq!(
            err(format!("SHA512 (x) = {A}\n")),
            format!("SHA256SUMS: line 1: not a SHA-256 line: `SHA512 (x) = {A}`")
        );
        assert_eq!(
            err(format!("SHA256 (x) = {}\n", &A[1..])),
            "SHA256SUMS: line 1: expected 64 hex digits, got 63 characters"
        );
        assert_eq!(
            err(format!("{}  x\n", &A[1..])),
            format!(
                "SHA256SUMS: line 1: expected `<64 hex digits>  <name>` or \
                 `SHA256 (<name>) = <64 hex digits>`, got `{}  x`",
                &A[1..]
            )
        );
        assert_eq!(err(format!("{A}  \n")), "SHA256SUMS: line 1: empty value");
    }

    #[test]
    fn clearsigned() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # Fedora-Server-41-x86_64-CHECKSUM\n\
             SHA256 (Fedora-Server-41.iso) = {A}\n\
             -----BEGIN PGP SIGNATURE-----\n\nfake\n-----END PGP SIGNATURE-----\n"
        );
        let e = parse_sha256sums(text.as_bytes()).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "Fedora-Server-41.iso");
        let bad = text.replace(&format!("= {A}"), "= 00");
        assert_eq!(
            parse_sha256sums(bad.as_bytes()).unwrap_err().to_string(),
            "SHA256SUMS: line 5: expected 64 hex digits, got 2 characters"
        );
    }
}
