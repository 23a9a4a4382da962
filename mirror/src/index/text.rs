//! Small byte-level helpers shared by the parsers: lines, hex, decimals,
//! paths, and quoting input in messages.

use super::error::Problem;

/// Lines of `data`, numbered from 1, without their `\n` nor a trailing
/// `\r`. A final line without `\n` is still a line; an empty input has none.
pub(crate) struct Lines<'a> {
    rest: &'a [u8],
    number: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Lines {
            rest: data,
            number: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        if self.rest.is_empty() {
            return None;
        }
        let (mut line, rest) = match memchr::memchr(b'\n', self.rest) {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        self.number += 1;
        Some((self.number, line))
    }
}

/// Whether a line holds only spaces and tabs (or nothing).
pub(crate) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|&b| b == b' ' || b == b'\t')
}

/// `s` without leading and trailing spaces and tabs.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// Hex digit values, 0xff for bytes that are not hex digits.
const NIBBLE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// A SHA-256 in hex, either case.
pub(crate) fn hex32(s: &[u8]) -> Result<[u8; 32], Problem> {
    if s.len() != 64 {
        return Err(Problem::BadHex(format!("{} characters", s.len())));
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (h, l) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        // Any invalid digit sets the high bits; checked once at the end.
        bad |= h | l;
        *o = h << 4 | (l & 0x0f);
    }
    if bad & 0xf0 != 0 {
        return Err(Problem::BadHex(quote(s)));
    }
    Ok(out)
}

/// A decimal `u64`: digits only, no sign, no overflow.
pub(crate) fn decimal(s: &[u8]) -> Result<u64, Problem> {
    if s.is_empty() {
        return Err(Problem::Empty);
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return Err(Problem::BadNumber(quote(s)));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| Problem::BadNumber(quote(s)))?;
    }
    Ok(n)
}

/// A non-empty UTF-8 value.
pub(crate) fn text(s: &[u8]) -> Result<&str, Problem> {
    if s.is_empty() {
        return Err(Problem::Empty);
    }
    std::str::from_utf8(s).map_err(|_| Problem::NotUtf8)
}

/// A relative path that stays inside the directory it is relative to:
/// non-empty UTF-8, not absolute, no `..` component, no control character.
/// `.` components and `//` are left as stated (the package manager asks for
/// the path as the index states it).
pub(crate) fn relative_path(s: &[u8]) -> Result<&str, Problem> {
    let path = text(s)?;
    let unsafe_path = |why| Problem::UnsafePath {
        path: quote(s),
        why,
    };
    if path.starts_with('/') {
        return Err(unsafe_path("absolute"));
    }
    if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(unsafe_path("control character"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(unsafe_path("`..` component"));
    }
    Ok(path)
}

/// Input quoted for a message: backquoted, escaped, at most 80 characters.
pub(crate) fn quote(s: &[u8]) -> String {
    const MAX: usize = 80;
    let lossy = String::from_utf8_lossy(s);
    let mut out = String::with_capacity(lossy.len().min(MAX) + 2);
    out.push('`');
    for (i, c) in lossy.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_strip_crlf_and_count() {
        let v: Vec<_> = Lines::new(b"a\r\n\nb").collect();
        assert_eq!(v, vec![(1, &b"a"[..]), (2, &b""[..]), (3, &b"b"[..])]);
        assert_eq!(Lines::new(b"").count(), 0);
        assert_eq!(Lines::new(b"x\n").count(), 1);
    }

    #[test]
    fn numbers_and_hex() {
        assert_eq!(decimal(b"0"), Ok(0));
        assert_eq!(decimal(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            decimal(b"18446744073709551616"),
            Err(Problem::BadNumber("`18446744073709551616`".into()))
        );
        assert_eq!(decimal(b"+1"), Err(Problem::BadNumber("`+1`".into())));
        assert_eq!(decimal(b""), Err(Problem::Empty));
        let lower = [b'a'; 64];
        let upper = [b'A'; 64];
        assert_eq!(hex32(&lower), Ok([0xaa; 32]));
        assert_eq!(hex32(&upper), Ok([0xaa; 32]));
        assert_eq!(
            hex32(&lower[..63]),
            Err(Problem::BadHex("63 characters".into()))
        );
        let mut bad = lower;
        bad[10] = b'g';
        assert!(matches!(hex32(&bad), Err(Problem::BadHex(_))));
    }

    #[test]
    fn paths() {
        assert_eq!(relative_path(b"pool/a.deb"), Ok("pool/a.deb"));
        assert_eq!(relative_path(b"./a.deb"), Ok("./a.deb"));
        assert_eq!(relative_path(b"a..b/c"), Ok("a..b/c"));
        for bad in [
            &b"/etc/passwd"[..],
            b"..",
            b"a/../b",
            b"a/..",
            b"a\nb",
            b"a\0b",
        ] {
            assert!(
                matches!(relative_path(bad), Err(Problem::UnsafePath { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(relative_path(b""), Err(Problem::Empty));
        assert_eq!(relative_path(b"\xff"), Err(Problem::NotUtf8));
    }
}
