//! A signed apt repository built with Debian's own tools, and an `apt-get`
//! isolated from the host's apt configuration and state.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::{
    Output, Package, PkgSpec, TestDir, files_in, make_world_readable, mkdir, next_index_mtime, run,
    run_ok, set_mtimes, without_proxy,
};

/// Time limit for one build step (gpg, dpkg-deb, apt-ftparchive, xz).
const TOOL_LIMIT: Duration = Duration::from_secs(60);
/// Time limit for one `apt-get` run: a hung client fails its test.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// The one architecture, set explicitly in the client so the host's does
/// not matter.
const ARCH: &str = "amd64";
/// The one component.
const COMPONENT: &str = "main";

/// An apt repository in a directory (serve it at any base URL):
/// `pool/main/<x>/<name>/<name>_<version>_amd64.deb`,
/// `dists/<suite>/main/binary-amd64/Packages{,.xz}`, and
/// `dists/<suite>/{Release,InRelease,Release.gpg}` signed with a throwaway
/// ed25519 key.
pub struct AptRepo {
    root: PathBuf,
    suite: String,
    /// gpg's home (0700, inside) and the exported public key (outside it,
    /// so apt's `_apt` user can read it); not under the served root.
    keys: TestDir,
    fingerprint: String,
    /// What the index lists: the newest published spec of each name.
    current: BTreeMap<String, PkgSpec>,
    /// The index as last written, parsed.
    packages: Vec<Package>,
    index_mtime: Option<SystemTime>,
    /// Entries listed after the real ones, for files the pool does not
    /// have (see [`AptRepo::pad_index`]).
    padding: usize,
}

impl AptRepo {
    /// Builds the repository in `root` (created) for `suite` with one
    /// `.deb` per spec, and signs it.
    pub fn build(root: &Path, suite: &str, specs: &[PkgSpec]) -> AptRepo {
        let root = mkdir(root);
        let keys = TestDir::new();
        let home = mkdir(&keys.path().join("g"));
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
            .expect("chmod 0700 GNUPGHOME");
        let gpg = |args: &[&str]| {
            let mut cmd = Command::new("gpg");
            cmd.env("GNUPGHOME", &home)
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args);
            run_ok(&mut cmd, TOOL_LIMIT)
        };
        gpg(&[
            "--quick-gen-key",
            "anonmirror test repository <tests@invalid>",
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-secret-keys"]).stdout;
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .unwrap_or_else(|| panic!("no fingerprint in: {listing}"))
            .to_owned();
        let key = keys.path().join("key.gpg");
        gpg(&["--output", &key.to_string_lossy(), "--export", &fingerprint]);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod key");
        let mut repo = AptRepo {
            root,
            suite: suite.to_owned(),
            keys,
            fingerprint,
            current: BTreeMap::new(),
            packages: Vec::new(),
            index_mtime: None,
            padding: 0,
        };
        for spec in specs {
            repo.build_deb(spec);
            repo.current.insert(spec.name.clone(), spec.clone());
        }
        repo.write_indexes();
        repo
    }

    /// Publishes `spec` as the current version of its package (new or
    /// not): builds its `.deb` and rewrites and re-signs the indexes. An
    /// older version's file stays in the pool, as on a real mirror, but is
    /// no longer indexed. The new indexes' `Last-Modified` is later than
    /// the old ones', so clients see the change even within one second.
    pub fn publish(&mut self, spec: &PkgSpec) {
        self.build_deb(spec);
        self.current.insert(spec.name.clone(), spec.clone());
        self.write_indexes();
    }

    /// The repository's directory (serve it as the base URL).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The suite (`deb BASE SUITE main`).
    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// The exported public key, for `signed-by=`.
    pub fn key(&self) -> PathBuf {
        self.keys.path().join("key.gpg")
    }

    /// Every package the index lists, sorted by name, as its `Packages`
    /// file says (`Filename`, `SHA256`, `Size`).
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// The indexed package `name`; panics if there is none.
    pub fn package(&self, name: &str) -> &Package {
        self.packages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no package {name} in the apt repository"))
    }

    /// Corrupts the served file of package `name` (one byte flipped, same
    /// size); the index is left as it was.
    pub fn corrupt(&self, name: &str) {
        super::corrupt_file(&self.package(name).file);
    }

    /// The paths of the index files below the base URL
    /// (`dists/<suite>/InRelease`, …), as apt requests them.
    /// Lists `n` more packages after the real ones, as long and as varied
    /// as Debian's own entries (about 750 bytes each: Debian's main for
    /// amd64 lists some 64,000 in 47 MB), and re-signs: an index the size
    /// of a real distribution's, for `apt-get update` to fetch. Their
    /// files are not in the pool, so nothing may download them. Seeded:
    /// the same `n` gives the same index.
    #[allow(dead_code)] // bench/src/bin/hosts: `--index-padding`
    pub fn pad_index(&mut self, n: usize) {
        self.padding = n;
        self.write_indexes();
    }

    pub fn index_paths(&self) -> Vec<String> {
        let dists = format!("dists/{}", self.suite);
        let mut paths = Vec::new();
        for name in ["InRelease", "Release", "Release.gpg"] {
            paths.push(format!("{dists}/{name}"));
        }
        for name in ["Packages", "Packages.xz"] {
            paths.push(format!("{dists}/{COMPONENT}/binary-{ARCH}/{name}"));
        }
        paths
    }

    fn build_deb(&self, spec: &PkgSpec) {
        let stage = TestDir::new();
        let s = stage.path();
        mkdir(&s.join("DEBIAN"));
        let data = mkdir(&s.join("usr/share").join(&spec.name));
        std::fs::write(data.join("payload.bin"), spec.payload()).expect("write payload");
        std::fs::write(
            s.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: {ARCH}\n\
                 Maintainer: anonmirror tests <tests@invalid>\nInstalled-Size: {kib}\n\
                 Section: misc\nPriority: optional\n\
                 Description: anonmirror test package {name}\n {bytes} pseudo-random bytes.\n",
                name = spec.name,
                version = spec.version,
                kib = spec.payload_bytes.div_ceil(1024),
                bytes = spec.payload_bytes,
            ),
        )
        .expect("write control");
        let first = &spec.name[..1];
        let dir = mkdir(
            &self
                .root
                .join("pool")
                .join(COMPONENT)
                .join(first)
                .join(&spec.name),
        );
        let deb = dir.join(format!("{}_{}_{ARCH}.deb", spec.name, spec.version));
        // The payload is incompressible: gzip -1 costs least.
        run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
                .arg(s)
                .arg(&deb),
            TOOL_LIMIT,
        );
    }

    fn write_indexes(&mut self) {
        let dists = self.root.join("dists").join(&self.suite);
        let bin = mkdir(&dists.join(COMPONENT).join(format!("binary-{ARCH}")));
        // Every .deb in the pool, then only the current version of each.
        let all = run_ok(
            Command::new("apt-ftparchive")
                .args(["packages", &format!("pool/{COMPONENT}")])
                .current_dir(&self.root),
            TOOL_LIMIT,
        )
        .stdout;
        let mut packages = Vec::new();
        let mut text = String::new();
        for stanza in all.split("\n\n").filter(|s| !s.trim().is_empty()) {
            let field = |key: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
                    .unwrap_or_else(|| panic!("no {key} in stanza: {stanza}"))
                    .to_owned()
            };
            let (name, version) = (field("Package"), field("Version"));
            if self.current.get(&name).map(|s| &s.version) != Some(&version) {
                continue;
            }
            text.push_str(stanza.trim_end());
            text.push_str("\n\n");
            let url_path = field("Filename");
            packages.push(Package {
                file: self.root.join(&url_path),
                name,
                version,
                url_path,
                sha256: field("SHA256"),
                size: field("Size").parse().expect("Size"),
            });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            packages.len(),
            self.current.len(),
            "apt-ftparchive's output lacks a package: {all}"
        );
        padding_entries(self.padding, &mut text);
        let index = bin.join("Packages");
        std::fs::write(&index, text).expect("write Packages");
        run_ok(
            Command::new("xz").args(["-k", "-f", "-T1"]).arg(&index),
            TOOL_LIMIT,
        );

        for old in ["Release", "InRelease", "Release.gpg"] {
            let _ = std::fs::remove_file(dists.join(old));
        }
        let release = run_ok(
            Command::new("apt-ftparchive")
                .args([
                    "-o",
                    "APT::FTPArchive::Release::Origin=anonmirror-tests",
                    "-o",
                    "APT::FTPArchive::Release::Label=anonmirror-tests",
                    "-o",
                    &format!("APT::FTPArchive::Release::Suite={}", self.suite),
                    "-o",
                    &format!("APT::FTPArchive::Release::Codename={}", self.suite),
                    "-o",
                    &format!("APT::FTPArchive::Release::Architectures={ARCH}"),
                    "-o",
                    &format!("APT::FTPArchive::Release::Components={COMPONENT}"),
                    "release",
                    ".",
                ])
                .current_dir(&dists),
            TOOL_LIMIT,
        )
        .stdout;
        std::fs::write(dists.join("Release"), release).expect("write Release");
        self.sign(&dists);

        let at = next_index_mtime(self.index_mtime);
        set_mtimes(&self.root.join("dists"), at);
        self.index_mtime = Some(at);
        make_world_readable(&self.root);
        self.packages = packages;
    }

    /// `InRelease` (clear-signed) and `Release.gpg` (detached) from
    /// `Release`; then gpg's agent is stopped, so no daemon outlives us.
    fn sign(&self, dists: &Path) {
        let home = self.keys.path().join("g");
        let gpg = |args: &[&str]| {
            let mut cmd = Command::new("gpg");
            cmd.env("GNUPGHOME", &home)
                .current_dir(dists)
                .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
                .args(["--passphrase", "", "--local-user", &self.fingerprint])
                .args(args);
            run_ok(&mut cmd, TOOL_LIMIT)
        };
        gpg(&["--clearsign", "--output", "InRelease", "Release"]);
        gpg(&[
            "--armor",
            "--detach-sign",
            "--output",
            "Release.gpg",
            "Release",
        ]);
        run_ok(
            Command::new("gpgconf")
                .env("GNUPGHOME", &home)
                .args(["--kill", "gpg-agent"]),
            TOOL_LIMIT,
        );
    }
}

/// `n` synthetic index entries appended to `text` (see
/// [`AptRepo::pad_index`]): names, versions, dependencies, hashes and a
/// few lines of description drawn from a fixed seed.
fn padding_entries(n: usize, text: &mut String) {
    use std::fmt::Write as _;
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut draw = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: [&str; 16] = [
        "library",
        "tools",
        "for",
        "the",
        "data",
        "client",
        "server",
        "plugin",
        "support",
        "module",
        "files",
        "python",
        "development",
        "runtime",
        "documentation",
        "network",
    ];
    for i in 0..n {
        let name = format!("pad-{i:05}");
        let mut hex = |bytes: usize| {
            (0..bytes.div_ceil(8))
                .map(|_| format!("{:016x}", draw()))
                .collect::<String>()[..bytes * 2]
                .to_owned()
        };
        let (md5, sha256, desc_md5) = (hex(16), hex(32), hex(16));
        let size = 4096 + draw() % (4 << 20);
        let _ = write!(
            text,
            "Package: {name}\nVersion: {}.{}-{}\nInstalled-Size: {}\n\
             Maintainer: Padding Maintainers <pad-{}@invalid>\nArchitecture: {ARCH}\n\
             Depends: libc6 (>= 2.36), pad-{:05} (>= 1.0), pad-{:05}\n\
             Description: synthetic package {i} of a distribution-sized index\n",
            draw() % 20,
            draw() % 10,
            draw() % 5,
            size / 1024 * 3,
            draw() % 5000,
            draw() % n as u64,
            draw() % n as u64,
        );
        for _ in 0..4 {
            text.push(' ');
            for w in 0..10 {
                if w > 0 {
                    text.push(' ');
                }
                text.push_str(WORDS[(draw() % 16) as usize]);
            }
            text.push('\n');
        }
        let _ = write!(
            text,
            "Description-md5: {desc_md5}\nSection: misc\nPriority: optional\n\
             Filename: pool/{COMPONENT}/p/{name}/{name}_1.0_{ARCH}.deb\nSize: {size}\n\
             MD5sum: {md5}\nSHA256: {sha256}\n\n",
        );
    }
}

/// `apt-get` with a configuration, sources list, state and cache of its
/// own (`APT_CONFIG`), so nothing of the host's apt is read or written.
pub struct AptClient {
    dir: PathBuf,
    downloads: std::cell::Cell<u32>,
    /// How long one `apt-get` run may take.
    limit: Duration,
}

impl AptClient {
    /// A client in `dir` (created) whose one source is
    /// `deb [signed-by=KEY] BASE_URL SUITE main`.
    pub fn new(dir: &Path, base_url: &str, suite: &str, key: &Path) -> AptClient {
        let dir = mkdir(dir);
        let d = dir.display();
        for sub in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "etc/auth.conf.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
            "downloads",
        ] {
            mkdir(&dir.join(sub));
        }
        std::fs::write(dir.join("state/status"), "").expect("write status");
        std::fs::write(
            dir.join("etc/sources.list"),
            format!(
                "deb [arch={ARCH} signed-by={}] {base_url} {suite} {COMPONENT}\n",
                key.display()
            ),
        )
        .expect("write sources.list");
        // Read before /etc/apt/apt.conf.d (APT_CONFIG comes first), it moves
        // every directory apt would otherwise share with the host.
        std::fs::write(
            dir.join("etc/apt.conf"),
            format!(
                "Dir::Etc \"{d}/etc/\";\n\
                 Dir::Etc::main \"{d}/etc/main.conf\";\n\
                 Dir::Etc::parts \"{d}/etc/apt.conf.d/\";\n\
                 Dir::Etc::sourcelist \"{d}/etc/sources.list\";\n\
                 Dir::Etc::sourceparts \"-\";\n\
                 Dir::Etc::preferences \"{d}/etc/preferences\";\n\
                 Dir::Etc::preferencesparts \"{d}/etc/preferences.d/\";\n\
                 Dir::Etc::trusted \"{d}/etc/trusted.gpg\";\n\
                 Dir::Etc::trustedparts \"{d}/etc/trusted.gpg.d/\";\n\
                 Dir::Etc::netrc \"{d}/etc/auth.conf\";\n\
                 Dir::Etc::netrcparts \"{d}/etc/auth.conf.d/\";\n\
                 Dir::State \"{d}/state/\";\n\
                 Dir::State::lists \"{d}/state/lists/\";\n\
                 Dir::State::status \"{d}/state/status\";\n\
                 Dir::Cache \"{d}/cache/\";\n\
                 Dir::Cache::archives \"{d}/cache/archives/\";\n\
                 Dir::Log \"{d}/log/\";\n\
                 APT::Architecture \"{ARCH}\";\n\
                 APT::Architectures {{ \"{ARCH}\"; }};\n\
                 Acquire::Languages \"none\";\n\
                 Acquire::Retries \"0\";\n\
                 Acquire::http::Timeout \"10\";\n"
            ),
        )
        .expect("write apt.conf");
        AptClient {
            dir,
            downloads: std::cell::Cell::new(0),
            limit: CLIENT_LIMIT,
        }
    }

    /// The same client, letting one `apt-get` run take up to `limit` (a
    /// benchmark over a slow link) instead of 60 s.
    #[allow(dead_code)] // the benchmarks use it (bench/src/bin/hosts)
    pub fn with_limit(self, limit: Duration) -> AptClient {
        AptClient { limit, ..self }
    }

    /// The client's `APT_CONFIG` file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("etc/apt.conf")
    }

    /// `apt-get` (or another apt program) with this client's
    /// configuration and no proxy.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        without_proxy(&mut cmd).env("APT_CONFIG", self.config());
        cmd
    }

    /// `apt-get update --error-on=any`, whatever its outcome.
    pub fn try_update(&self) -> Output {
        run(
            self.command("apt-get")
                .args(["-q", "update", "--error-on=any"]),
            self.limit,
        )
    }

    /// `apt-get update`; panics (with apt's output) unless it succeeds
    /// cleanly and then knows of at least one package — apt skips an index
    /// the Release file does not list and still exits 0.
    pub fn update(&self) -> Output {
        let out = self.try_update();
        assert!(
            out.status.success() && !out.timed_out,
            "apt-get update failed: {}",
            out.describe()
        );
        assert_sandboxed(&out);
        assert!(
            !self.available().is_empty(),
            "apt-get update found no packages: {}",
            out.describe()
        );
        out
    }

    /// `(name, version)` of every package apt knows of, sorted.
    pub fn available(&self) -> Vec<(String, String)> {
        let out = run_ok(self.command("apt-cache").arg("dumpavail"), CLIENT_LIMIT);
        let mut found = Vec::new();
        let mut name = None;
        for line in out.stdout.lines() {
            if let Some(n) = line.strip_prefix("Package: ") {
                name = Some(n.to_owned());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                let n = name.take().expect("Version: after Package:");
                found.push((n, v.to_owned()));
            }
        }
        found.sort();
        found
    }

    /// `apt-get download NAMES…` into a fresh directory, whatever its
    /// outcome: the output, and the files it holds afterwards (a file that
    /// failed its hash check is left there renamed `….deb.FAILED`).
    pub fn try_download(&self, names: &[&str]) -> (Output, Vec<PathBuf>) {
        let n = self.downloads.get();
        self.downloads.set(n + 1);
        // apt-get download writes to its working directory, as `_apt` when
        // run as root: 0755 is not enough there (apt would warn and fetch
        // unsandboxed), the directory must be writable by `_apt`.
        let into = mkdir(&self.dir.join("downloads").join(n.to_string()));
        std::fs::set_permissions(&into, std::fs::Permissions::from_mode(0o777))
            .expect("chmod 0777 the download directory");
        let out = run(
            self.command("apt-get")
                .args(["-q", "download"])
                .args(names)
                .current_dir(&into),
            self.limit,
        );
        (out, files_in(&into))
    }

    /// `apt-get download NAMES…`; panics (with apt's output) unless it
    /// succeeds. Returns the downloaded files, sorted, one per name.
    pub fn download(&self, names: &[&str]) -> Vec<PathBuf> {
        let (out, files) = self.try_download(names);
        assert!(
            out.status.success() && !out.timed_out,
            "apt-get download failed: {}",
            out.describe()
        );
        assert_sandboxed(&out);
        assert_eq!(
            files.len(),
            names.len(),
            "apt-get download {names:?} gave {files:?}: {}",
            out.describe()
        );
        files
    }
}

/// As root, apt fetches as `_apt`; if it cannot reach a directory it warns
/// and fetches as root instead — with exit status 0 even under
/// `--error-on=any`. A test must see that warning as a failure.
fn assert_sandboxed(out: &Output) {
    assert!(
        !out.stderr.contains("unsandboxed") && !out.stdout.contains("unsandboxed"),
        "apt fell back to fetching as root (a directory not reachable by _apt): {}",
        out.describe()
    );
}
