//! Fixtures for end-to-end runs of real package managers: real apt and
//! pacman repositories (built with the distributions' own tools), served
//! by a real nginx, fetched by real `apt-get` and `pacman`, each pointed at
//! any base URL — nginx itself for the baselines, the gateway for the rest.
//!
//! Everything lives under a [`TestDir`] (a short, world-searchable path:
//! nginx's workers run as `nobody`, apt's downloads as `_apt`, and gpg's
//! agent socket path must stay under 108 bytes). Every external command
//! runs with a time limit, so a hung client fails its test instead of
//! hanging CI. The pitfalls these avoid are in ../shared/REAL-CLIENTS.md.
//!
//! A plain `mod.rs` (not `support.rs` + `support/`) keeps the whole module
//! in one directory of its own.

pub mod apt;
pub mod nginx;
pub mod pacman;

pub use apt::{AptClient, AptRepo};
pub use nginx::{Nginx, NginxOptions};
pub use pacman::{PacmanClient, PacmanRepo};

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anonmirror_core::{Entropy, SeededEntropy};

/// Whether every program in `programs` is installed. When one is missing:
/// under `CI=true` this panics (CI must never skip silently); otherwise it
/// prints which and returns false, and the test returns early.
pub fn require(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| program_path(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "missing: {} — run scripts/test, which installs scripts/system-packages",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

/// Where `program` is: on `PATH`, else in the sbin directories a non-root
/// `PATH` often lacks (nginx lives in /usr/sbin).
pub fn program_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs as root (pacman refuses to sync otherwise;
/// then it runs under `unshare -r`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A test's scratch directory: `/tmp/am-XXXXXX`, mode 0755, removed on
/// drop (kept, for a post-mortem, when `ANONMIRROR_KEEP_TESTDIRS` is set).
/// Not `$TMPDIR`: gpg's agent socket lives below it and must keep a short
/// path; and 0755, not tempfile's 0700, so that nginx's workers (`nobody`)
/// and apt's downloader (`_apt`) can reach what is inside.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("ANONMIRROR_KEEP_TESTDIRS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept {}", self.dir.path().display());
        }
    }
}

impl TestDir {
    /// A fresh, empty scratch directory.
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("am-")
            .tempdir_in("/tmp")
            .expect("create a scratch directory under /tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the scratch directory");
        TestDir { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Creates `dir` and its missing parents, mode 0755 whatever the umask;
/// returns it.
pub fn mkdir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    dir.to_owned()
}

/// `chmod -R a+rX`: everything below `root` readable, directories
/// searchable, by other users (nginx's workers run as `nobody`).
pub fn make_world_readable(root: &Path) {
    let meta =
        std::fs::symlink_metadata(root).unwrap_or_else(|e| panic!("stat {}: {e}", root.display()));
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode();
    let extra = if meta.is_dir() || mode & 0o100 != 0 {
        0o555
    } else {
        0o444
    };
    if mode & extra != extra {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | extra))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", root.display()));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(root).expect("read_dir") {
            make_world_readable(&entry.expect("dir entry").path());
        }
    }
}

/// Programs the apt tests run.
pub const APT_PROGRAMS: &[&str] = &[
    "nginx",
    "dpkg-deb",
    "apt-ftparchive",
    "gpg",
    "gpgconf",
    "gpg-agent",
    "xz",
    "apt-get",
    "apt-cache",
];

/// Programs the pacman tests run.
pub const PACMAN_PROGRAMS: &[&str] = &["nginx", "bsdtar", "repo-add", "pacman"];

/// Five packages whose sizes mix: tiny to a few MiB.
pub fn mixed_specs() -> Vec<PkgSpec> {
    [
        ("alpha", 1),
        ("bravo", 5_000),
        ("charlie", 65_537),
        ("delta", 700_000),
        ("echo-tools", 2_500_000),
    ]
    .into_iter()
    .map(|(name, size)| PkgSpec::new(name, "1.0-1", size))
    .collect()
}

/// The names of `specs`, as a package manager takes them.
pub fn names(specs: &[PkgSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

/// Panics unless `files` are exactly `expected`, each as its index
/// describes it (matched by file name, in any order).
pub fn check_files(files: &[PathBuf], expected: &[Package]) {
    assert_eq!(files.len(), expected.len(), "{files:?}");
    for file in files {
        let name = file.file_name().expect("a file name").to_string_lossy();
        expected
            .iter()
            .find(|p| p.url_path.rsplit('/').next() == Some(&*name))
            .unwrap_or_else(|| panic!("{} is no package of the repository", file.display()))
            .check_file(file);
    }
}

/// A package to put in a repository; the same spec builds a `.deb` or a
/// `.pkg.tar.zst`.
#[derive(Clone, Debug)]
pub struct PkgSpec {
    /// The package's name (lowercase letters, digits, `-`).
    pub name: String,
    /// `upstream-release`, e.g. `1.0-1`: valid for dpkg and, as
    /// `pkgver-pkgrel`, for pacman.
    pub version: String,
    /// Size of the one payload file, whose bytes are pseudo-random (seeded
    /// by name and version, so a rebuild gives the same bytes) and hence
    /// incompressible: the package file is about this big.
    pub payload_bytes: usize,
}

impl PkgSpec {
    /// A package `name` at `version` with `payload_bytes` of payload.
    pub fn new(name: &str, version: &str, payload_bytes: usize) -> PkgSpec {
        PkgSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            payload_bytes,
        }
    }

    /// The payload's bytes.
    pub fn payload(&self) -> Vec<u8> {
        let seed = sha256(format!("{}\0{}", self.name, self.version).as_bytes());
        let mut seed8 = [0u8; 8];
        seed8.copy_from_slice(&hex::decode(&seed[..16]).expect("hex"));
        let mut data = vec![0u8; self.payload_bytes];
        SeededEntropy::new(u64::from_le_bytes(seed8)).fill(&mut data);
        data
    }
}

/// A package file as its repository's index describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The package's name.
    pub name: String,
    /// Its version, as the index spells it.
    pub version: String,
    /// Its path relative to the served root (no leading `/`), i.e. its URL
    /// is `BASE/url_path`.
    pub url_path: String,
    /// The file on disk.
    pub file: PathBuf,
    /// SHA-256 of the file, lowercase hex, as the index says.
    pub sha256: String,
    /// Size in bytes, as the index says.
    pub size: u64,
}

impl Package {
    /// Panics unless `file` is this package as the index describes it: the
    /// same file name as on the server, size and SHA-256.
    pub fn check_file(&self, file: &Path) {
        let served = self.url_path.rsplit('/').next().unwrap_or_default();
        assert_eq!(
            file.file_name().map(|n| n.to_string_lossy().into_owned()),
            Some(served.to_owned()),
            "{} is not {}",
            file.display(),
            self.url_path
        );
        let size = std::fs::metadata(file).expect("stat").len();
        assert_eq!(size, self.size, "size of {}", file.display());
        assert_eq!(
            sha256_file(file),
            self.sha256,
            "SHA-256 of {}",
            file.display()
        );
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Lowercase hex SHA-256 of the file at `path`.
pub fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Flips one byte in the middle of `file`, keeping its size (so that only
/// a hash check, not a size check, can notice).
pub fn corrupt_file(file: &Path) {
    let mut data = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    assert!(!data.is_empty(), "cannot corrupt empty {}", file.display());
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(file, data).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
}

/// Sets the modification time of every file below `root` to `at`
/// (nginx's `Last-Modified`), following no symlinks.
pub fn set_mtimes(root: &Path, at: std::time::SystemTime) {
    let meta = std::fs::symlink_metadata(root).expect("stat");
    if meta.is_dir() {
        for entry in std::fs::read_dir(root).expect("read_dir") {
            set_mtimes(&entry.expect("dir entry").path(), at);
        }
    } else if meta.is_file() {
        File::options()
            .write(true)
            .open(root)
            .and_then(|f| f.set_modified(at))
            .unwrap_or_else(|e| panic!("set mtime of {}: {e}", root.display()));
    }
}

/// A republished index must carry a `Last-Modified` later than the one a
/// client saw, or the client's `If-Modified-Since` gets `304 Not Modified`
/// (nginx compares whole seconds) and it keeps the stale index. Returns
/// the time to stamp the new index with: now, but at least a second after
/// `previous`.
pub fn next_index_mtime(previous: Option<std::time::SystemTime>) -> std::time::SystemTime {
    let now = std::time::SystemTime::now();
    match previous {
        Some(p) if p + Duration::from_secs(1) > now => p + Duration::from_secs(1),
        _ => now,
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Its exit status (a timed-out command was killed: not success).
    pub status: ExitStatus,
    /// Whether it ran out of time and was killed.
    pub timed_out: bool,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// The command's output, for a panic message.
    pub fn describe(&self) -> String {
        format!(
            "{}{}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` (stdin empty) and waits at most `limit`; on timeout kills its
/// whole process group (apt's fetchers are its children). stdout and
/// stderr go to unnamed files, not pipes: a daemon the command leaves
/// behind (gpg's agent) would keep a pipe open for ever.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            timed_out = true;
            // The group we created for it, and nothing else.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut File| {
        let mut s = Vec::new();
        f.rewind().expect("rewind");
        f.read_to_end(&mut s).expect("read output");
        String::from_utf8_lossy(&s).into_owned()
    };
    Output {
        status,
        timed_out,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// [`run`], panicking with the command and its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success() && !out.timed_out,
        "{what} failed: {}",
        out.describe()
    );
    out
}

/// Files directly in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Removes the proxy settings apt and pacman (curl) would otherwise honour
/// even for 127.0.0.1.
pub fn without_proxy(cmd: &mut Command) -> &mut Command {
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "ftp_proxy",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Waits (up to 10 s) until `store` holds every one of `packages`: a
/// gateway links an item into its store just after the last byte went to
/// the package manager.
pub async fn wait_stored(store: &anonmirror_store::Store, packages: &[Package]) {
    for _ in 0..400 {
        let held = store.list().expect("list the store");
        if packages
            .iter()
            .all(|p| held.iter().any(|(k, _)| k.to_hex() == p.sha256))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the store did not get every package within 10 s");
}
