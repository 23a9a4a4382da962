//! Unwrapping OpenPGP cleartext-signed text (RFC 4880 §7), as in
//! `InRelease` and signed checksum files, without checking the signature.
//!
//! The unwrapping is strict, so that the text read here is exactly what a
//! verifier reads: only blank lines may precede the `BEGIN PGP SIGNED
//! MESSAGE` line and follow the `END PGP SIGNATURE` line (apt refuses
//! anything else, as text outside the signed part could otherwise be
//! believed); every line of signed text starting with `-` must be
//! dash-escaped (`- `).

use super::error::Problem;
use super::text::{Lines, is_blank, trim};

const BEGIN_MESSAGE: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----";
const BEGIN_SIGNATURE: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
const END_SIGNATURE: &[u8] = b"-----END PGP SIGNATURE-----";

/// Whether `bytes` is, or tries to be, cleartext-signed: it holds a line
/// opening a signed message. [`unwrap`] then decides whether it is well
/// formed (text before that line is an error, not a plain file).
pub(crate) fn is_clearsigned(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, BEGIN_MESSAGE).is_some()
}

/// The signed text of a cleartext-signed file.
pub(crate) struct Signed {
    /// The text, dash-escaping removed, every line ending in `\n`.
    pub(crate) text: Vec<u8>,
    /// How many lines of the file precede the text's first line.
    pub(crate) line_offset: usize,
}

/// Extracts the signed text; errors carry the file's line number.
pub(crate) fn unwrap(bytes: &[u8]) -> Result<Signed, (usize, Problem)> {
    let syntax = |line: usize, what: &str| (line, Problem::Syntax(what.to_owned()));
    let mut lines = Lines::new(bytes);
    // Preamble: blank lines, then the BEGIN line.
    let mut last = 0;
    loop {
        match lines.next() {
            None => return Err(syntax(last, "no `BEGIN PGP SIGNED MESSAGE` line")),
            Some((n, l)) if is_blank(l) => last = n,
            Some((_, l)) if trim(l) == BEGIN_MESSAGE => break,
            Some((n, _)) => {
                return Err(syntax(n, "text before the `BEGIN PGP SIGNED MESSAGE` line"));
            }
        }
    }
    // Armor headers (`Hash: SHA256`), up to an empty line.
    let line_offset = loop {
        match lines.next() {
            None => return Err(syntax(last, "armor headers are not followed by text")),
            Some((n, l)) if is_blank(l) => break n,
            Some((n, l)) if l.starts_with(b"-") => {
                return Err(syntax(n, "no blank line after the armor headers"));
            }
            Some((n, _)) => last = n,
        }
    };
    last = line_offset;
    // The signed text, up to the signature.
    let mut text = Vec::with_capacity(bytes.len());
    loop {
        match lines.next() {
            None => return Err(syntax(last, "no `BEGIN PGP SIGNATURE` line")),
            Some((_, l)) if trim(l) == BEGIN_SIGNATURE => break,
            Some((n, l)) => {
                last = n;
                let l = match l {
                    [b'-', b' ', rest @ ..] => rest,
                    [b'-', ..] => {
                        return Err(syntax(
                            n,
                            "a line of signed text starts with an unescaped `-`",
                        ));
                    }
                    _ => l,
                };
                text.extend_from_slice(l);
                text.push(b'\n');
            }
        }
    }
    // The signature (not checked here), then only blank lines.
    loop {
        match lines.next() {
            None => return Err(syntax(last, "no `END PGP SIGNATURE` line")),
            Some((_, l)) if trim(l) == END_SIGNATURE => break,
            Some((n, _)) => last = n,
        }
    }
    if let Some((n, _)) = lines.find(|(_, l)| !is_blank(l)) {
        return Err(syntax(n, "text after the signature"));
    }
    Ok(Signed { text, line_offset })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA512

Origin: Debian
- -dashed
-----BEGIN PGP SIGNATURE-----

iQIzBAEBCgAdFiEEfake
=abcd
-----END PGP SIGNATURE-----
";

    #[test]
    fn unwraps() {
        assert!(is_clearsigned(SIGNED.as_bytes()));
        assert!(is_clearsigned(format!("\n \n{SIGNED}").as_bytes()));
        assert!(!is_clearsigned(b"Origin: Debian\n"));
        assert!(is_clearsigned(format!("Evil: 1\n{SIGNED}").as_bytes()));
        let s = unwrap(SIGNED.as_bytes()).unwrap();
        assert_eq!(s.text, b"Origin: Debian\n-dashed\n");
        assert_eq!(s.line_offset, 3);
    }

    #[test]
    fn refuses_ambiguous_wrapping() {
        let cases = [
            (format!("Evil: 1\n{SIGNED}"), 1, "text before"),
            (format!("{SIGNED}Evil: 1\n"), 11, "text after the signature"),
            (SIGNED.replace("- -dashed", "-dashed"), 5, "unescaped"),
            (
                SIGNED.replace("Hash: SHA512\n\n", "Hash: SHA512\n"),
                4,
                "no blank line",
            ),
            (
                SIGNED.replace("-----END PGP SIGNATURE-----\n", ""),
                9,
                "no `END",
            ),
            (
                SIGNED
                    .split("-----BEGIN PGP SIGNATURE")
                    .next()
                    .unwrap()
                    .to_owned(),
                5,
                "no `BEGIN PGP SIGNATURE`",
            ),
        ];
        for (text, line, what) in cases {
            let (n, p) = unwrap(text.as_bytes()).err().unwrap();
            assert_eq!(n, line, "{what}: {p}");
            assert!(p.to_string().contains(what), "{what}: {p}");
        }
    }
}
