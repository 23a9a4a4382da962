//! What every parser returns: one package file an index names.

use anonmirror_core::ItemKey;

/// One package file an index names: an item, if the index is current.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The file's path as the index states it, which is how the package
    /// manager will ask for it: pacman's `%FILENAME%` (a plain file name,
    /// relative to the database's directory), Debian's `Filename` (relative
    /// to the archive root, e.g. `pool/main/h/hello/hello_2.10-3_amd64.deb`),
    /// a `SHA256SUMS` name (relative to that file's directory). Never
    /// absolute, never with a `..` component or a control character.
    pub path: String,
    /// The file's SHA-256, as the index states it.
    pub key: ItemKey,
    /// The file's size in bytes (pacman's `%CSIZE%`, Debian's `Size`);
    /// `None` for `SHA256SUMS`, which has no sizes.
    pub size: Option<u64>,
    /// The package name (`%NAME%`, `Package`). For `SHA256SUMS`, the whole
    /// path: two files in different directories are different "packages",
    /// so neither supersedes the other in the current index.
    pub name: String,
    /// The version (`%VERSION%`, `Version`); empty for `SHA256SUMS`.
    pub version: String,
}
