//! Index parsers: what the distribution's own index says every package file
//! is (SHA-256, size, name, version), the trust anchor of DESIGN.md §3.
//!
//! Three families of index, all taken as bytes (no I/O here, so every
//! parser is fuzzed on its own):
//!
//! - **pacman repository databases** ([`parse_pacman_db`]): the `<repo>.db`
//!   file as served, a tar archive (gzip, zstd, xz or uncompressed) of
//!   `<name>-<version>/desc` members. A `desc` is a sequence of
//!   `%FIELD%` lines, each followed by its value lines and a blank line;
//!   `%FILENAME%`, `%NAME%`, `%VERSION%`, `%CSIZE%` and `%SHA256SUM%` are
//!   required. `files` and legacy `depends` members, directories and
//!   members outside a directory are skipped, as libalpm skips them.
//! - **Debian** ([`parse_release`], [`parse_packages`]): the `Release` or
//!   clearsigned `InRelease` file (its `SHA256` field names every index
//!   file of the suite with its size), and the decompressed `Packages`
//!   files it names (deb822 paragraphs with `Package`, `Version`,
//!   `Filename`, `Size` and `SHA256`). Field names are case-insensitive;
//!   unknown fields are ignored.
//! - **`SHA256SUMS`** ([`parse_sha256sums`]) for anything else: GNU
//!   coreutils lines (`<hex>  <name>`, `<hex> *<name>`) and BSD tags
//!   (`SHA256 (<name>) = <hex>`), optionally clearsigned.
//!
//! **No signature is verified here.** `InRelease` and a clearsigned
//! `SHA256SUMS` are unwrapped (armor and dash-escaping removed) but the
//! signature is not checked: the package manager checks it (apt for
//! `InRelease`, pacman for packages), and the gateway passes indexes through
//! unchanged, so a forged index only misleads the gateway into fetching
//! items the package manager will then refuse. The unwrapping is strict
//! (nothing before the armor, nothing after the signature, no unescaped
//! dash lines), so that what is read here is what apt reads after checking.
//!
//! Every parser is total: any input yields entries or an [`IndexError`]
//! that says which file, where (entry, paragraph, line, field) and what is
//! wrong, never a panic. Decompression is bounded ([`decompress`],
//! [`DECOMPRESS_LIMIT`]), so a decompression bomb is an error, not an
//! out-of-memory kill. Paths are returned as the index states them, after
//! refusing any that could escape the repository (absolute, `..`, control
//! characters).

mod armor;
mod compress;
mod deb822;
mod debian;
mod entry;
mod error;
#[cfg(test)]
mod fixtures;
mod pacman;
#[cfg(test)]
mod proptests;
mod sums;
mod text;

pub use compress::{Compression, DECOMPRESS_LIMIT, decompress};
pub use debian::{Release, ReleaseFile, parse_packages, parse_release};
pub use entry::Entry;
pub use error::{Format, IndexError, Problem};
pub use pacman::{parse_pacman_db, parse_pacman_db_limited};
pub use sums::parse_sha256sums;
