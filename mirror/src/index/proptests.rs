//! Properties of every parser: total on any input (never a panic),
//! faithful on well-formed input, and at Debian/Arch scale.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use anonmirror_core::ItemKey;
use proptest::prelude::*;

use super::fixtures::{gzip, tar, xz, zstd};
use super::*;

/// A Packages paragraph in Debian's field order.
fn paragraph(out: &mut String, e: &Entry) {
    let name = &e.name;
    let _ = write!(
        out,
        "Package: {name}\nVersion: {}\nInstalled-Size: 281\nArchitecture: amd64\n\
         Depends: libc6 (>= 2.34)\nDescription: the {name} package\n a longer text\n .\n \
         in two paragraphs\nSection: devel\nPriority: optional\nFilename: {}\nSize: {}\n\
         SHA256: {}\n\n",
        e.version,
        e.path,
        e.size.unwrap_or(0),
        e.key
    );
}

fn desc(e: &Entry) -> String {
    format!(
        "%FILENAME%\n{}\n\n%NAME%\n{}\n\n%VERSION%\n{}\n\n%DESC%\nsomething\n\n\
         %CSIZE%\n{}\n\n%ISIZE%\n1000\n\n%SHA256SUM%\n{}\n\n%DEPENDS%\nglibc\nsh\n\n",
        e.path,
        e.name,
        e.version,
        e.size.unwrap_or(0),
        e.key
    )
}

fn pacman_db(entries: &[Entry]) -> Vec<u8> {
    let members: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|e| {
            (
                format!("{}-{}/desc", e.name, e.version),
                desc(e).into_bytes(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    tar(&refs)
}

fn synthetic(i: usize) -> Entry {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    key[31] = 0xa5;
    Entry {
        path: format!("pool/main/p/pkg{i}/pkg{i}_1.{i}-1_amd64.deb"),
        key: ItemKey(key),
        size: Some(1000 + i as u64 * 7),
        name: format!("pkg{i}"),
        version: format!("1.{i}-1"),
    }
}

fn any_entry() -> impl Strategy<Value = Entry> {
    (
        "[a-z0-9][a-z0-9+.-]{0,20}",
        "[0-9][A-Za-z0-9.+~:-]{0,15}",
        any::<[u8; 32]>(),
        any::<u64>(),
    )
        .prop_map(|(name, version, key, size)| Entry {
            path: format!("{name}-{version}-x86_64.pkg.tar.zst"),
            key: ItemKey(key),
            size: Some(size),
            name,
            version,
        })
}

/// Valid input with a few bytes changed, dropped or the end cut off: more
/// of the parser is reached than by random bytes alone.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len().max(1);
    (
        prop::collection::vec((0..len, any::<u8>(), 0..3u8), 1..8),
        0..=len,
    )
        .prop_map(move |(edits, cut)| {
            let mut v = valid.clone();
            for (at, byte, op) in edits {
                if v.is_empty() {
                    break;
                }
                let at = at % v.len();
                match op {
                    0 => v[at] = byte,
                    1 => {
                        v.remove(at);
                    }
                    _ => v.insert(at, byte),
                }
            }
            v.truncate(cut.max(1));
            v
        })
}

fn packages_text(entries: &[Entry]) -> String {
    let mut s = String::new();
    for e in entries {
        paragraph(&mut s, e);
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_parser_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_pacman_db(&bytes);
        let _ = parse_packages(&bytes);
        let _ = parse_release(&bytes);
        let _ = parse_sha256sums(&bytes);
        let _ = decompress(&bytes, 1 << 20);
    }

    #[test]
    fn no_panic_on_mutated_pacman_db(
        bytes in mutated(pacman_db(&[synthetic(1), synthetic(2)]))
    ) {
        let _ = parse_pacman_db(&bytes);
    }

    #[test]
    fn no_panic_on_mutated_compressed_db(
        which in 0..3usize,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let db = pacman_db(&[synthetic(1), synthetic(2)]);
        let mut bytes = [gzip, xz, zstd][which](&db);
        for (at, byte) in edits {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = parse_pacman_db(&bytes);
        let _ = decompress(&bytes, 1 << 20);
    }

    #[test]
    fn no_panic_on_mutated_packages(bytes in mutated(packages_text(&[synthetic(1), synthetic(2)]).into_bytes())) {
        let _ = parse_packages(&bytes);
    }

    #[test]
    fn no_panic_on_mutated_release(bytes in mutated(format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSuite: stable\n\
         Acquire-By-Hash: yes\nSHA256:\n {} 12 main/binary-amd64/Packages\n\
         -----BEGIN PGP SIGNATURE-----\n\nx\n-----END PGP SIGNATURE-----\n",
        synthetic(3).key
    ).into_bytes())) {
        let _ = parse_release(&bytes);
    }

    #[test]
    fn no_panic_on_mutated_sha256sums(bytes in mutated(format!(
        "{}  a.iso\n\\{} *b\\\\c\nSHA256 (d) = {}\n",
        synthetic(1).key, synthetic(2).key, synthetic(3).key
    ).into_bytes())) {
        let _ = parse_sha256sums(&bytes);
    }

    #[test]
    fn packages_round_trip(entries in prop::collection::vec(any_entry(), 0..20)) {
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|mut e| {
                e.path = format!("pool/main/{}", e.path);
                e
            })
            .collect();
        prop_assert_eq!(parse_packages(packages_text(&entries).as_bytes()).unwrap(), entries);
    }

    #[test]
    fn pacman_db_round_trip(entries in prop::collection::vec(any_entry(), 0..20)) {
        prop_assert_eq!(parse_pacman_db(&gzip(&pacman_db(&entries))).unwrap(), entries);
    }

    #[test]
    fn sha256sums_round_trip(keys in prop::collection::vec(any::<[u8; 32]>(), 0..20), binary in any::<bool>()) {
        let mut text = String::new();
        for (i, k) in keys.iter().enumerate() {
            let mode = if binary { '*' } else { ' ' };
            let _ = writeln!(text, "{} {mode}dir/file {i}.iso", ItemKey(*k));
        }
        let entries = parse_sha256sums(text.as_bytes()).unwrap();
        prop_assert_eq!(entries.len(), keys.len());
        for (i, (e, k)) in entries.iter().zip(&keys).enumerate() {
            prop_assert_eq!(e.key, ItemKey(*k));
            prop_assert_eq!(&e.path, &format!("dir/file {i}.iso"));
        }
    }
}

/// Debian main has about 60 000 packages per architecture; Arch's repos
/// together about 15 000. Counts and values only: timing is the bench's
/// job (`bench/src/bin/index.rs`).
#[test]
fn sixty_thousand_entries() {
    const N: usize = 60_000;
    let entries: Vec<Entry> = (0..N).map(synthetic).collect();

    let text = packages_text(&entries);
    let parsed = parse_packages(&decompress(&gzip(text.as_bytes()), 1 << 30).unwrap()).unwrap();
    assert_eq!(parsed.len(), N);
    assert_eq!(parsed[0], entries[0]);
    assert_eq!(parsed[N - 1], entries[N - 1]);
    assert_eq!(parsed[31_337], entries[31_337]);

    let pacman: Vec<Entry> = entries
        .iter()
        .map(|e| Entry {
            path: format!("{}-{}-x86_64.pkg.tar.zst", e.name, e.version),
            ..e.clone()
        })
        .collect();
    let parsed = parse_pacman_db(&gzip(&pacman_db(&pacman))).unwrap();
    assert_eq!(parsed.len(), N);
    assert_eq!(parsed[0], pacman[0]);
    assert_eq!(parsed[N - 1], pacman[N - 1]);
    assert_eq!(parsed[12_345], pacman[12_345]);
}
