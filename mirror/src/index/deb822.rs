//! deb822 paragraphs (Debian Policy §5.1), without copying: fields are
//! slices of the input.
//!
//! A paragraph is a run of field lines (`Name: value`) and continuation
//! lines (starting with a space or a tab, belonging to the field above);
//! paragraphs are separated by blank lines (lines of only spaces and tabs
//! count as blank, as Policy allows). Lines starting with `#` are comments
//! and skipped (a field name may not start with `#`). A trailing `\r` is
//! dropped from every line.

use super::error::Problem;
use super::text::{quote, trim};

/// One field of a paragraph.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Field<'a> {
    /// As spelled (field names compare case-insensitively).
    pub(crate) name: &'a [u8],
    /// The value on the field's own line, without surrounding spaces.
    pub(crate) first: &'a [u8],
    /// The continuation lines, as they stand (each with its leading
    /// whitespace, separated by `\n`); empty when there are none.
    pub(crate) cont: &'a [u8],
    /// The field's line number (from 1).
    pub(crate) line: usize,
    cont_start: usize,
}

/// The paragraphs of a deb822 file, one at a time.
pub(crate) struct Paragraphs<'a> {
    data: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Paragraphs<'a> {
    /// `line_offset` lines precede `data` in the file (e.g. an OpenPGP
    /// armor), so that line numbers name lines of the file.
    pub(crate) fn new(data: &'a [u8], line_offset: usize) -> Self {
        Paragraphs {
            data,
            pos: 0,
            line: line_offset,
        }
    }

    /// Fills `fields` with the next paragraph's fields and returns the line
    /// it starts on, or `None` at the end. A syntax error is returned with
    /// its line number.
    pub(crate) fn next_paragraph(
        &mut self,
        fields: &mut Vec<Field<'a>>,
    ) -> Result<Option<usize>, (usize, Problem)> {
        fields.clear();
        let data = self.data;
        let mut start = None;
        while self.pos < data.len() {
            let line_start = self.pos;
            let mut end =
                memchr::memchr(b'\n', &data[line_start..]).map_or(data.len(), |i| line_start + i);
            self.pos = (end + 1).min(data.len());
            self.line += 1;
            if end > line_start && data[end - 1] == b'\r' {
                end -= 1;
            }
            let line = &data[line_start..end];
            match line.first() {
                None => {
                    if start.is_some() {
                        break;
                    }
                }
                Some(b'#') => {}
                Some(b' ' | b'\t') => {
                    if super::text::is_blank(line) {
                        if start.is_some() {
                            break;
                        }
                        continue;
                    }
                    let Some(field) = fields.last_mut() else {
                        return Err((
                            self.line,
                            Problem::Syntax("continuation line before any field".into()),
                        ));
                    };
                    if field.cont.is_empty() {
                        field.cont_start = line_start;
                    }
                    field.cont = &data[field.cont_start..end];
                }
                Some(_) => {
                    let Some(colon) = memchr::memchr(b':', line) else {
                        return Err((
                            self.line,
                            Problem::Syntax(format!(
                                "expected `Field: value`, got {}",
                                quote(line)
                            )),
                        ));
                    };
                    start.get_or_insert(self.line);
                    fields.push(Field {
                        name: &line[..colon],
                        first: trim(&line[colon + 1..]),
                        cont: &[],
                        line: self.line,
                        cont_start: 0,
                    });
                }
            }
        }
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// (name, first line, continuation, line) of every field.
    type Fields = Vec<(String, String, String, usize)>;

    fn all(data: &[u8]) -> Result<Vec<Fields>, (usize, Problem)> {
        let mut p = Paragraphs::new(data, 0);
        let mut fields = Vec::new();
        let mut out = Vec::new();
        while p.next_paragraph(&mut fields)?.is_some() {
            out.push(
                fields
                    .iter()
                    .map(|f| {
                        (
                            String::from_utf8_lossy(f.name).into_owned(),
                            String::from_utf8_lossy(f.first).into_owned(),
                            String::from_utf8_lossy(f.cont).into_owned(),
                            f.line,
                        )
                    })
                    .collect(),
            );
        }
        Ok(out)
    }

    #[test]
    fn paragraphs_fields_and_continuations() {
        let text = b"\n\nA: 1\r\nB:two  \n C\n .\n\t D\n# comment\nE:\n\n \t\n\nF: x\n";
        let p = all(text).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0][0], ("A".into(), "1".into(), "".into(), 3));
        assert_eq!(
            p[0][1],
            ("B".into(), "two".into(), " C\n .\n\t D".into(), 4)
        );
        assert_eq!(p[0][2], ("E".into(), "".into(), "".into(), 9));
        assert_eq!(p[1], vec![("F".into(), "x".into(), "".into(), 13)]);
    }

    #[test]
    fn syntax_errors_have_lines() {
        assert_eq!(
            all(b"A: 1\nnot a field\n").unwrap_err(),
            (
                2,
                Problem::Syntax("expected `Field: value`, got `not a field`".into())
            )
        );
        assert_eq!(all(b"\n continued\n").unwrap_err().0, 2);
        assert!(all(b"").unwrap().is_empty());
    }
}
