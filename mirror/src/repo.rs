//! What the gateway knows of each configured repository: which request
//! paths are index files, and which are items (package files an index
//! names, with their SHA-256 and size).
//!
//! Indexes are learned as the package manager fetches them through the
//! gateway (`pacman -Sy`, `apt-get update`), and kept in the cache
//! directory with their validators so that a restarted gateway knows the
//! items again before the next update. A path is an item only while the
//! *current* copy of an index names it: when an index changes, the
//! items only the old copy named stop being items at once (they pass
//! through, and are neither stored, served nor announced).
//!
//! | kind | index files (paths relative to the repository) | item paths |
//! | --- | --- | --- |
//! | pacman | `…/<repo>.db`, `….db.tar.{gz,xz,zst}` (parsed); `.files`, `.sig` (passed through) | the db's directory + `%FILENAME%` |
//! | apt | everything under `dists/`; `Release`/`InRelease` and `Packages{,.gz,.xz}` (also `by-hash`) parsed | `Filename`, from the repository root |
//! | sha256sums | `…/SHA256SUMS` | its directory + the listed name |
//!
//! An apt `Packages` file is accepted only if its suite's `Release` (when
//! the gateway has one) lists it with the same SHA-256; apt checks the
//! `Release` signature itself.
//!
//! The snapshot version of a repository is the newest `Last-Modified` (Unix
//! seconds) among its parsed indexes, as the rendezvous's upstream watcher
//! derives it; an index served without `Last-Modified` counts as fetched
//! now.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use anonmirror_announce::IndexEntry;
use anonmirror_core::ItemKey;
use anonmirror_privacy::RepositoryKind;

use crate::index::{self, Entry, Format, IndexError, Problem, Release};

/// The most an index file may decompress to.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;

/// A package file a current index names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its path relative to the repository's base URL.
    pub path: String,
    /// Its SHA-256.
    pub key: ItemKey,
    /// Its size, when the index states one (`SHA256SUMS` does not).
    pub size: Option<u64>,
    /// The package name.
    pub name: String,
    /// The package version (empty for `SHA256SUMS`).
    pub version: String,
}

/// What a request path is, for a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathClass {
    /// An index file: passed through with caching, parsed when it is one
    /// the gateway reads.
    Index,
    /// A package file the current index names.
    Item(Arc<Item>),
    /// Anything else: passed through, never stored or shared.
    Other,
}

#[derive(Debug, Default)]
struct State {
    /// Items by path.
    items: HashMap<String, Arc<Item>>,
    /// Item paths each parsed index (by canonical path) contributed.
    by_source: HashMap<String, Vec<String>>,
    /// Version of each parsed index.
    versions: HashMap<String, u64>,
    /// apt: the parsed `Release` of each `dists/<suite>` directory.
    releases: HashMap<String, Release>,
}

/// One configured repository.
#[derive(Debug)]
pub struct Repo {
    /// The name the gateway serves it under.
    pub name: String,
    /// Its index format.
    pub kind: RepositoryKind,
    /// The upstream base URL.
    pub base: String,
    cache: PathBuf,
    state: RwLock<State>,
    /// Index downloads being learned: item requests wait for none
    /// ([`Repo::settled`]), so that a package asked for right after its
    /// index is matched against it.
    learning: tokio::sync::watch::Sender<u32>,
}

/// An index being learned, from its download to its parse
/// ([`Repo::start_learning`]); dropped when done, either way.
#[derive(Debug)]
pub struct Learning(tokio::sync::watch::Sender<u32>);

impl Drop for Learning {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Why a path may not be used on the local file system.
fn safe_relative(rest: &str) -> Option<PathBuf> {
    let p = Path::new(rest);
    if rest.is_empty() || rest.contains('\0') || rest.contains('\\') {
        return None;
    }
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_path_buf())
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn under(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn basename(path: &str) -> &str {
    path.rsplit_once('/').map(|(_, b)| b).unwrap_or(path)
}

/// `path` without a compression suffix.
fn canonical(path: &str) -> &str {
    for ext in [".gz", ".xz", ".zst", ".bz2", ".lz4"] {
        if let Some(p) = path.strip_suffix(ext) {
            return p;
        }
    }
    path
}

/// How a parsed index file is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parsed {
    PacmanDb,
    AptRelease,
    AptPackages,
    Sums,
}

impl Repo {
    /// A repository whose index cache lives under `cache`.
    pub fn new(name: &str, kind: RepositoryKind, base: &str, cache: PathBuf) -> Repo {
        Repo {
            name: name.to_owned(),
            kind,
            base: base.to_owned(),
            cache,
            state: RwLock::new(State::default()),
            learning: tokio::sync::watch::Sender::new(0),
        }
    }

    /// An index of this repository is being fetched to be learned.
    pub fn start_learning(&self) -> Learning {
        self.learning.send_modify(|n| *n += 1);
        Learning(self.learning.clone())
    }

    /// Returns once no index is being learned.
    pub async fn settled(&self) {
        let mut rx = self.learning.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Whether `rest` is one of the repository's index files.
    pub fn is_index_path(&self, rest: &str) -> bool {
        self.is_index(rest)
    }

    /// What `rest` (the request path under the repository) is.
    pub fn classify(&self, rest: &str) -> PathClass {
        if self.is_index(rest) {
            return PathClass::Index;
        }
        match self.state.read() {
            Ok(s) => s
                .items
                .get(rest)
                .map(|i| PathClass::Item(i.clone()))
                .unwrap_or(PathClass::Other),
            Err(_) => PathClass::Other,
        }
    }

    fn is_index(&self, rest: &str) -> bool {
        let base = basename(rest);
        match self.kind {
            RepositoryKind::Pacman => {
                base.ends_with(".db")
                    || base.ends_with(".files")
                    || base.contains(".db.tar")
                    || base.contains(".files.tar")
                    || base.ends_with(".db.sig")
                    || base.ends_with(".files.sig")
            }
            RepositoryKind::Apt => rest.starts_with("dists/"),
            RepositoryKind::Sha256sums => {
                base == "SHA256SUMS" || base == "SHA256SUMS.asc" || base == "SHA256SUMS.gpg"
            }
        }
    }

    /// Which parser reads `rest`, if any (apt `by-hash` paths resolve
    /// through the suite's `Release`).
    fn parser_for(&self, rest: &str, state: &State) -> Option<Parsed> {
        let base = basename(rest);
        match self.kind {
            RepositoryKind::Pacman => {
                (base.ends_with(".db") || base.contains(".db.tar")).then_some(Parsed::PacmanDb)
            }
            RepositoryKind::Sha256sums => (base == "SHA256SUMS").then_some(Parsed::Sums),
            RepositoryKind::Apt => {
                if base == "Release" || base == "InRelease" {
                    return Some(Parsed::AptRelease);
                }
                let listed = self.release_path(rest, state);
                let name = basename(listed.as_deref().unwrap_or(rest));
                (canonical(name) == "Packages").then_some(Parsed::AptPackages)
            }
        }
    }

    /// For an apt path under `dists/<suite>/`, the path its suite's Release
    /// lists it under (by-hash paths map to the file whose hash they name).
    fn release_path(&self, rest: &str, state: &State) -> Option<String> {
        let (suite_dir, release) = state
            .releases
            .iter()
            .find(|(dir, _)| rest.starts_with(&format!("{dir}/")))?;
        let inner = &rest[suite_dir.len() + 1..];
        if let Some((_, hex)) = inner.split_once("/by-hash/SHA256/") {
            let want = hex::decode(hex).ok()?;
            return release
                .files
                .iter()
                .find(|f| f.sha256[..] == want[..])
                .map(|f| format!("{suite_dir}/{}", f.path));
        }
        Some(rest.to_owned())
    }

    /// Learn from an index file the package manager fetched: parse it if
    /// it is one the gateway reads, and keep it in the cache with its
    /// validators. Returns how many items it named (0 for files not
    /// parsed). On a parse error nothing changes: the previous copy's items
    /// stay and the bad copy is not cached (the error is returned for the
    /// log and the metrics).
    pub fn learn(
        &self,
        rest: &str,
        body: &[u8],
        validators: &Validators,
        now: u64,
    ) -> Result<usize, IndexError> {
        let n = self
            .parse(rest, body, validators.last_modified_unix().unwrap_or(now))
            .map_err(|e| e.in_file(rest))?;
        if let Some(rel) = safe_relative(rest) {
            // The cache is an optimisation: failing to keep a copy only
            // costs a re-download after a restart.
            let path = self.cache.join(&rel);
            let meta = self.cache.join(meta_name(&rel));
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if write_atomic(&path, body).is_ok() {
                let _ = write_atomic(&meta, validators.encode().as_bytes());
            }
        }
        Ok(n)
    }

    fn parse(&self, rest: &str, body: &[u8], version: u64) -> Result<usize, IndexError> {
        let parser = {
            let s = self.state.read().map_err(|_| poisoned())?;
            self.parser_for(rest, &s)
        };
        let Some(parser) = parser else {
            return Ok(0);
        };
        let dir = dir_of(rest).to_owned();
        let (source, entries): (String, Vec<Entry>) = match parser {
            Parsed::AptRelease => {
                let release = index::parse_release(body)?;
                let mut s = self.state.write().map_err(|_| poisoned())?;
                s.versions.insert(rest.to_owned(), version);
                s.releases.insert(dir, release);
                return Ok(0);
            }
            Parsed::PacmanDb => {
                let e = index::parse_pacman_db(body)?;
                (canonical(rest).to_owned(), prefix(&dir, e))
            }
            Parsed::Sums => {
                let e = index::parse_sha256sums(body)?;
                (rest.to_owned(), prefix(&dir, e))
            }
            Parsed::AptPackages => {
                let listed = {
                    let s = self.state.read().map_err(|_| poisoned())?;
                    self.check_listed(rest, body, &s)?
                };
                let text = index::decompress(body, MAX_INDEX_BYTES)?;
                let e = index::parse_packages(&text)?;
                (canonical(&listed).to_owned(), e)
            }
        };
        let n = entries.len();
        let mut s = self.state.write().map_err(|_| poisoned())?;
        if let Some(old) = s.by_source.remove(&source) {
            for p in old {
                s.items.remove(&p);
            }
        }
        let mut paths = Vec::with_capacity(n);
        for e in entries {
            paths.push(e.path.clone());
            s.items.insert(
                e.path.clone(),
                Arc::new(Item {
                    path: e.path,
                    key: e.key,
                    size: e.size,
                    name: e.name,
                    version: e.version,
                }),
            );
        }
        s.by_source.insert(source.clone(), paths);
        if self.kind != RepositoryKind::Apt {
            s.versions.insert(source, version);
        }
        Ok(n)
    }

    /// The path a suite's Release lists this Packages file under, after
    /// checking its SHA-256 against the listing (when a Release is known).
    fn check_listed(&self, rest: &str, body: &[u8], s: &State) -> Result<String, IndexError> {
        let Some(listed) = self.release_path(rest, s) else {
            return Ok(rest.to_owned());
        };
        let suite_dir = s
            .releases
            .keys()
            .find(|d| listed.starts_with(&format!("{d}/")))
            .cloned()
            .unwrap_or_default();
        let Some(release) = s.releases.get(&suite_dir) else {
            return Ok(listed);
        };
        let inner = &listed[suite_dir.len() + 1..];
        let Some(f) = release.files.iter().find(|f| f.path == inner) else {
            return Err(not_used(rest, "not listed in its suite's Release"));
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        if digest.as_ref() != f.sha256 || body.len() as u64 != f.size {
            return Err(not_used(
                rest,
                "its SHA-256 or size differs from its suite's Release",
            ));
        }
        Ok(listed)
    }

    /// Re-learn every index kept in the cache (at start, before the
    /// package manager's next update). Returns items known and files that
    /// failed (each with its error).
    pub fn load_cached(&self, now: u64) -> (usize, Vec<(String, IndexError)>) {
        let mut files = Vec::new();
        collect_files(&self.cache, &self.cache, &mut files);
        // Releases first, so Packages files can be checked against them.
        files.sort_by_key(|p| {
            let b = basename(p);
            (!(b == "Release" || b == "InRelease"), p.clone())
        });
        let mut failed = Vec::new();
        for rest in files {
            if rest.ends_with(META_SUFFIX) || !self.is_index(&rest) {
                continue;
            }
            let Some(rel) = safe_relative(&rest) else {
                continue;
            };
            let Ok(body) = std::fs::read(self.cache.join(&rel)) else {
                continue;
            };
            let validators = self.cached_validators(&rest).unwrap_or_default();
            if let Err(e) = self.parse(&rest, &body, validators.last_modified_unix().unwrap_or(now))
            {
                failed.push((rest, e));
            }
        }
        (self.item_count(), failed)
    }

    /// The index files kept in the cache that the gateway parses, suite
    /// `Release`s first (what a pushed snapshot change fetches again).
    pub fn cached_paths(&self) -> Vec<String> {
        let mut files = Vec::new();
        collect_files(&self.cache, &self.cache, &mut files);
        let state = self.state.read();
        let mut out: Vec<String> = files
            .into_iter()
            .filter(|p| !p.ends_with(META_SUFFIX) && !p.ends_with(".tmp") && self.is_index(p))
            .filter(|p| {
                state
                    .as_ref()
                    .map(|s| self.parser_for(p, s).is_some())
                    .unwrap_or(false)
            })
            .collect();
        out.sort_by_key(|p| {
            let b = basename(p);
            (!(b == "Release" || b == "InRelease"), p.clone())
        });
        out
    }

    /// The cached copy of an index file and its validators.
    pub fn cached(&self, rest: &str) -> Option<(Vec<u8>, Validators)> {
        let rel = safe_relative(rest)?;
        let body = std::fs::read(self.cache.join(&rel)).ok()?;
        Some((body, self.cached_validators(rest).unwrap_or_default()))
    }

    fn cached_validators(&self, rest: &str) -> Option<Validators> {
        let rel = safe_relative(rest)?;
        let text = std::fs::read_to_string(self.cache.join(meta_name(&rel))).ok()?;
        Some(Validators::decode(&text))
    }

    /// Items the current indexes name.
    pub fn item_count(&self) -> usize {
        self.state.read().map(|s| s.items.len()).unwrap_or(0)
    }

    /// The snapshot version: the newest version of its parsed indexes (0
    /// before any).
    pub fn version(&self) -> u64 {
        self.state
            .read()
            .map(|s| s.versions.values().copied().max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The current items, as selection reads them.
    pub fn entries(&self) -> Vec<IndexEntry> {
        self.state
            .read()
            .map(|s| {
                s.items
                    .values()
                    .map(|i| IndexEntry {
                        key: i.key,
                        repo: self.name.clone(),
                        name: i.name.clone(),
                        version: i.version.clone(),
                        no_announce: false,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current item with this key, if any.
    pub fn item_by_key(&self, key: &ItemKey) -> Option<Arc<Item>> {
        self.state
            .read()
            .ok()?
            .items
            .values()
            .find(|i| i.key == *key)
            .cloned()
    }

    /// Every current item.
    pub fn items(&self) -> Vec<Arc<Item>> {
        self.state
            .read()
            .map(|s| s.items.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn poisoned() -> IndexError {
    IndexError::new(
        Format::Compressed,
        "",
        Problem::Syntax("internal: a lock was poisoned (a bug)".to_owned()),
    )
}

fn not_used(rest: &str, why: &str) -> IndexError {
    IndexError::new(
        Format::Packages,
        "",
        Problem::Syntax(format!("{why}: not used as an index")),
    )
    .in_file(rest)
}

fn prefix(dir: &str, entries: Vec<Entry>) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|mut e| {
            e.path = under(dir, &e.path);
            e
        })
        .collect()
}

const META_SUFFIX: &str = ".anonmirror-validators";

fn meta_name(rel: &Path) -> PathBuf {
    let mut s = rel.as_os_str().to_owned();
    s.push(META_SUFFIX);
    PathBuf::from(s)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root)
            && let Some(s) = rel.to_str()
        {
            out.push(s.to_owned());
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// An index file's HTTP validators, as the upstream sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag`.
    pub etag: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
}

impl Validators {
    /// `Last-Modified` as Unix seconds.
    pub fn last_modified_unix(&self) -> Option<u64> {
        let t = httpdate::parse_http_date(self.last_modified.as_deref()?).ok()?;
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }

    fn encode(&self) -> String {
        format!(
            "etag {}\nlast-modified {}\n",
            self.etag.as_deref().unwrap_or(""),
            self.last_modified.as_deref().unwrap_or("")
        )
    }

    fn decode(text: &str) -> Validators {
        let mut v = Validators::default();
        for line in text.lines() {
            if let Some(x) = line.strip_prefix("etag ") {
                v.etag = Some(x.to_owned()).filter(|s| !s.is_empty());
            } else if let Some(x) = line.strip_prefix("last-modified ") {
                v.last_modified = Some(x.to_owned()).filter(|s| !s.is_empty());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(lines: &[(&[u8], &str)]) -> Vec<u8> {
        let mut s = String::new();
        for (data, name) in lines {
            let d = ring::digest::digest(&ring::digest::SHA256, data);
            s.push_str(&format!("{}  {name}\n", hex::encode(d.as_ref())));
        }
        s.into_bytes()
    }

    #[test]
    fn paths_are_classified_per_kind() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = Repo::new(
            "arch",
            RepositoryKind::Pacman,
            "http://m/",
            dir.path().into(),
        );
        assert_eq!(p.classify("core/os/x86_64/core.db"), PathClass::Index);
        assert_eq!(p.classify("core/os/x86_64/core.db.sig"), PathClass::Index);
        assert_eq!(
            p.classify("core/os/x86_64/a-1-1-x86_64.pkg.tar.zst"),
            PathClass::Other
        );
        let a = Repo::new("deb", RepositoryKind::Apt, "http://m/", dir.path().into());
        assert_eq!(a.classify("dists/stable/InRelease"), PathClass::Index);
        assert_eq!(a.classify("pool/main/h/hello.deb"), PathClass::Other);
    }

    #[test]
    fn a_new_index_replaces_the_items_of_the_old_one_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = Repo::new(
            "g",
            RepositoryKind::Sha256sums,
            "http://m/",
            dir.path().into(),
        );
        let v1 = Validators {
            etag: Some("\"1\"".into()),
            last_modified: Some("Sun, 22 Nov 2026 06:00:00 GMT".into()),
        };
        let n = repo
            .learn(
                "snap/SHA256SUMS",
                &sums(&[(b"a", "a.tar"), (b"b", "b.tar")]),
                &v1,
                5,
            )
            .expect("parses");
        assert_eq!(n, 2);
        let PathClass::Item(item) = repo.classify("snap/a.tar") else {
            panic!("a.tar is an item");
        };
        assert_eq!(item.size, None);
        assert_eq!(repo.version(), v1.last_modified_unix().expect("date"));
        // The next snapshot drops a.tar.
        repo.learn(
            "snap/SHA256SUMS",
            &sums(&[(b"b2", "b.tar")]),
            &Validators::default(),
            9,
        )
        .expect("parses");
        assert_eq!(repo.classify("snap/a.tar"), PathClass::Other);
        assert_eq!(repo.item_count(), 1);
        // A malformed copy keeps the previous items.
        assert!(
            repo.learn("snap/SHA256SUMS", b"zz  x\n", &Validators::default(), 10)
                .is_err()
        );
        // A restarted gateway knows the cached copy's items.
        let again = Repo::new(
            "g",
            RepositoryKind::Sha256sums,
            "http://m/",
            dir.path().into(),
        );
        let (items, failed) = again.load_cached(11);
        assert_eq!((items, failed.len()), (1, 0));
        assert!(matches!(again.classify("snap/b.tar"), PathClass::Item(_)));
    }

    #[test]
    fn unsafe_paths_are_never_written() {
        assert_eq!(safe_relative("../etc/passwd"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative("a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("a\\b"), None);
        assert_eq!(safe_relative(""), None);
        assert!(safe_relative("dists/stable/InRelease").is_some());
    }
}
