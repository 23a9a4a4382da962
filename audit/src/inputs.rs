//! The text formats `anonmirror audit` reads: written by the daemon into
//! its state directory at every selection ([`write_inventory`],
//! [`write_index`]), or given by hand.
//!
//! Both are UTF-8, one record per line; blank lines and lines starting
//! with `#` are ignored; fields are separated by runs of spaces or tabs.
//!
//! **Inventory** — the items the store holds: one SHA-256 (64 hex
//! digits, the ItemKey) per line.
//!
//! ```text
//! # anonmirror inventory
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! **Index** — the current index of one or more repositories, one package
//! file per line: `SHA256 REPOSITORY NAME VERSION [no-announce]`.
//! `REPOSITORY` is the policy's `[[repository]]` name; `VERSION` is `-`
//! when the index has none (a plain `SHA256SUMS`); the optional fifth
//! field marks a package whose metadata forbids announcing it. Several
//! versions of one (repository, name) may appear: only the latest is an
//! item.
//!
//! ```text
//! # anonmirror index v1
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 debian bash 5.2.15-2
//! ```

use anonmirror_announce::IndexEntry;
use anonmirror_core::ItemKey;

use crate::err::Error;

fn records(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#'))
            .then(|| (i + 1, line.split_whitespace().collect()))
    })
}

fn key(what: &'static str, line: usize, field: &str) -> Result<ItemKey, Error> {
    field
        .parse()
        .map_err(|e: anonmirror_core::Error| Error::Input {
            what,
            line,
            reason: e.to_string(),
        })
}

/// Parse an inventory.
pub fn parse_inventory(text: &str) -> Result<Vec<ItemKey>, Error> {
    records(text)
        .map(|(line, fields)| match fields.as_slice() {
            [k] => key("inventory", line, k),
            _ => Err(Error::Input {
                what: "inventory",
                line,
                reason: format!("expected one SHA-256 per line, got {} fields", fields.len()),
            }),
        })
        .collect()
}

/// Parse an index.
pub fn parse_index(text: &str) -> Result<Vec<IndexEntry>, Error> {
    records(text)
        .map(|(line, fields)| {
            let bad = |reason: String| Error::Input {
                what: "index",
                line,
                reason,
            };
            let (k, repo, name, version, flag) = match fields.as_slice() {
                [k, repo, name, version] => (k, repo, name, version, None),
                [k, repo, name, version, flag] => (k, repo, name, version, Some(*flag)),
                _ => {
                    return Err(bad(format!(
                        "expected `SHA256 REPOSITORY NAME VERSION [no-announce]`, got {} fields",
                        fields.len()
                    )));
                }
            };
            let no_announce = match flag {
                None => false,
                Some("no-announce") => true,
                Some(other) => {
                    return Err(bad(format!("unknown flag `{other}` (only `no-announce`)")));
                }
            };
            Ok(IndexEntry {
                key: key("index", line, k)?,
                repo: (*repo).to_owned(),
                name: (*name).to_owned(),
                version: if *version == "-" {
                    String::new()
                } else {
                    (*version).to_owned()
                },
                no_announce,
            })
        })
        .collect()
}

/// The inventory text of `keys`.
pub fn write_inventory(keys: &[ItemKey]) -> String {
    let mut out = String::from("# anonmirror inventory\n");
    for k in keys {
        out.push_str(&k.to_hex());
        out.push('\n');
    }
    out
}

/// The index text of `entries` (fields may not contain white space: such
/// an entry is written with it replaced by `_`).
pub fn write_index<'a>(entries: impl IntoIterator<Item = &'a IndexEntry>) -> String {
    let field = |s: &str| -> String {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect()
        }
    };
    let mut out = String::from("# anonmirror index v1\n");
    for e in entries {
        out.push_str(&format!(
            "{} {} {} {}{}\n",
            e.key.to_hex(),
            field(&e.repo),
            field(&e.name),
            field(&e.version),
            if e.no_announce { " no-announce" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn inventory_and_index_parse_with_comments() {
        let inv = parse_inventory(&format!("# held\n\n{K}\n  {K}  \n")).expect("parses");
        assert_eq!(inv.len(), 2);
        let idx = parse_index(&format!(
            "# v1\n{K} deb bash 5.2-1\n{K}\tdeb\tx\t-\tno-announce\n"
        ))
        .expect("parses");
        assert_eq!(idx[0].name, "bash");
        assert!(idx[1].no_announce && idx[1].version.is_empty());
    }

    #[test]
    fn errors_name_the_input_and_line() {
        let e = parse_inventory("# c\nabcd\n").expect_err("short");
        assert_eq!(
            e.to_string(),
            "inventory: line 2: item key (SHA-256): expected 64 hex digits, got 4"
        );
        let e = parse_index(&format!("{K} deb bash\n")).expect_err("fields");
        assert!(
            e.to_string().starts_with("index: line 1: expected `SHA256"),
            "{e}"
        );
        let e = parse_index(&format!("{K} deb bash 1 secret\n")).expect_err("flag");
        assert!(e.to_string().contains("unknown flag `secret`"), "{e}");
    }

    #[test]
    fn what_is_written_reads_back() {
        let e = IndexEntry {
            key: ItemKey([3; 32]),
            repo: "debian".into(),
            name: "a b".into(),
            version: String::new(),
            no_announce: true,
        };
        let back = parse_index(&write_index([&e])).expect("parses");
        assert_eq!(back[0].name, "a_b");
        assert_eq!(back[0].version, "");
        assert!(back[0].no_announce);
        let keys = [ItemKey([1; 32]), ItemKey([2; 32])];
        assert_eq!(
            parse_inventory(&write_inventory(&keys)).expect("parses"),
            keys
        );
    }
}
