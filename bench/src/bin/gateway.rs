//! The gateway end to end: the real `anonmirror` binary (rendezvous and
//! daemons as processes) against Debian's nginx serving the same generated
//! repository, measured in the same run.
//!
//! The repository: `--packages` (200) package files of deterministic
//! pseudo-random content in the Debian layout the gateway learns from
//! (`dists/bench/Release` → `dists/bench/main/binary-all/Packages`, plain).
//! Sizes mix, as a real archive does: four in five small (4 KiB–1 MiB,
//! log-uniform), three in twenty medium (1–10 MiB), one in twenty large
//! (50–150 MiB); about 1.2 GiB in all. `--scale` multiplies every size.
//!
//! Every client here does what apt does with a download: one persistent
//! HTTP/1.1 connection to its source, one package after the other (apt
//! pipelines requests on one connection, so the responses arrive in
//! sequence just the same), each body written to a file and its SHA-256
//! checked against the index. The clock runs from the `Release` request
//! to the last package's last byte.
//!
//! Cases, each against a baseline measured in the same run:
//!
//! 1. **From peers**: `--volunteers` daemons at level `open` each fetch
//!    the whole set through their own gateway and are restarted (a
//!    volunteer announces what it holds when a session opens). Then a
//!    fresh client daemon (level `off`) fetches the set through its
//!    gateway, vs the same client code straight from nginx. `--runs`
//!    times, interleaved; medians.
//! 2. **Swarm, capped upstream**: nginx with `limit_rate` (`--cap-mib`
//!    MiB/s per request). Baseline: `--swarm-peers` clients fetch the set
//!    straight from it at once. Swarm: as many daemons at level `open`
//!    fetch it through their gateways in waves: one seed first, then each
//!    wave `--fanout` times as many daemons as already hold the set; each
//!    wave's daemons are restarted once done, so they announce. Reported:
//!    the share of item bytes from the upstream, and the time until the
//!    last daemon had the set (restarts included) vs the baseline's.
//!    By default the set is the packages under 50 MiB (`--swarm-large`
//!    takes all), so that 30 stores fit on a shared disk.
//! 3. **All peers stalled**: `--stalled` sessions at the rendezvous claim
//!    every item, with a contact that accepts connections and never
//!    answers. A fresh client daemon fetches the set through its gateway
//!    vs straight from nginx; `--runs` times, medians.
//!
//! In cases 1 and 3 every fetch, straight or through a gateway, writes
//! over one set of output files in place, after an unmeasured fetch from
//! nginx made them. This machine is a virtual machine that hands freed
//! memory back to the host at once (virtio-balloon free page reporting),
//! so a new file's page-cache pages cost a host fault each: the same
//! client fetching the same set from nginx used 1.9 to 4.9 CPU-seconds
//! depending on which pages it met. Writing over cached pages takes that
//! out of both sides alike.
//!
//! Every process's stderr is kept in its directory under `--dir` (a
//! temporary directory, removed at the end, unless given).
//!
//! Run: `bench/run gateway` (installs nginx when run as root and builds the
//! `anonmirror` binary in release), or
//! `cargo build --release --bin anonmirror && cargo run --release -p
//! anonmirror-bench --bin gateway`. Quick mode: `--packages 40 --scale 0.1
//! --swarm-peers 6 --runs 1`. Never a pass/fail test.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anonmirror_bench::median;
use anonmirror_core::{Entropy, Epoch, ItemKey, OsEntropy, PeerKey, SeededEntropy};
use anonmirror_mirror::metrics::MetricsSnapshot;
use anonmirror_privacy::Level;
use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

/// The gateway end to end against nginx.
#[derive(Parser, Debug)]
struct Args {
    /// Package files in the repository.
    #[arg(long, default_value_t = 200)]
    packages: usize,
    /// Multiplies every package's size (0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seed of sizes and contents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs of cases 1 and 3; medians reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Case 1: volunteers holding the set.
    #[arg(long, default_value_t = 3)]
    volunteers: usize,
    /// Case 2: daemons (and baseline clients).
    #[arg(long, default_value_t = 30)]
    swarm_peers: usize,
    /// Case 2: each wave is this many times the daemons already holding.
    #[arg(long, default_value_t = 2)]
    fanout: usize,
    /// Case 2: nginx's `limit_rate`, MiB/s per request.
    #[arg(long, default_value_t = 20)]
    cap_mib: u64,
    /// Case 2: include the large packages.
    #[arg(long)]
    swarm_large: bool,
    /// Case 3: stalled sessions.
    #[arg(long, default_value_t = 3)]
    stalled: usize,
    /// Cases to run: peers, swarm, stalled (default: all).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// The `anonmirror` binary (default: target/release/anonmirror).
    #[arg(long)]
    anonmirror: Option<PathBuf>,
    /// Where everything goes (default: a temporary directory, removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the SVG plot goes (default: bench/plots/gateway.svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Keep every case's directory (processes' logs, stores) under --dir.
    #[arg(long)]
    keep: bool,
}

// ---------------------------------------------------------------------
// The repository.

/// A package file of the generated repository.
#[derive(Clone, Debug)]
struct Package {
    path: String,
    sha256: [u8; 32],
    size: u64,
    large: bool,
}

const MIB: u64 = 1 << 20;

/// Write the repository under `root` (suite `bench`, component `main`,
/// architecture `all`); returns its packages.
fn generate_repository(root: &Path, n: usize, scale: f64, seed: u64) -> Result<Vec<Package>> {
    let mut rng = SeededEntropy::new(seed);
    let mut packages = Vec::with_capacity(n);
    let mut text = String::new();
    let mut buf = Vec::new();
    for i in 0..n {
        let (size, large) = match i % 20 {
            // One in twenty: 50–150 MiB (kernels, firmware, toolchains).
            7 => (50 * MIB + rng.below(100 * MIB), true),
            // Three in twenty: 1–10 MiB.
            2 | 12 | 17 => (MIB + rng.below(9 * MIB), false),
            // The rest: 4 KiB–1 MiB, log-uniform (most .debs are small).
            _ => {
                let u = rng.next_f64();
                ((4096.0 * 256f64.powf(u)) as u64, false)
            }
        };
        let size = ((size as f64 * scale) as u64).max(1024);
        let name = format!("bench-pkg{i}");
        let path = format!("pool/main/b/{name}/{name}_1.0-1_all.deb");
        buf.resize(size as usize, 0);
        SeededEntropy::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)).fill(&mut buf);
        let file = root.join(&path);
        if let Some(p) = file.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&file, &buf)?;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &buf).as_ref());
        text.push_str(&format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: all\nFilename: {path}\nSize: {size}\n\
             SHA256: {}\nDescription: benchmark package {i}\n\n",
            hex::encode(sha256)
        ));
        packages.push(Package {
            path,
            sha256,
            size,
            large,
        });
    }
    let dists = root.join("dists/bench");
    std::fs::create_dir_all(dists.join("main/binary-all"))?;
    std::fs::write(dists.join("main/binary-all/Packages"), &text)?;
    let sha = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    std::fs::write(
        dists.join("Release"),
        format!(
            "Origin: anonmirror bench\nSuite: bench\nCodename: bench\n\
             Date: Sun, 22 Nov 2026 00:00:00 UTC\nArchitectures: all\nComponents: main\n\
             SHA256:\n {} {} main/binary-all/Packages\n",
            hex::encode(sha.as_ref()),
            text.len()
        ),
    )?;
    Ok(packages)
}

const INDEXES: [&str; 2] = [
    "dists/bench/Release",
    "dists/bench/main/binary-all/Packages",
];

// ---------------------------------------------------------------------
// HTTP: a keep-alive HTTP/1.1 client, as apt's.

/// One persistent connection.
struct Http {
    addr: SocketAddr,
    conn: Option<AsyncBufReader<TcpStream>>,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http { addr, conn: None }
    }

    /// GET `path`: the status, the body's length and SHA-256; the body is
    /// written to `out` when given.
    async fn get(&mut self, path: &str, out: Option<&Path>) -> Result<(u16, u64, [u8; 32])> {
        // A kept connection the server closed in the meantime: once more on
        // a new one.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            match self.try_get(path, out).await {
                Ok(r) => return Ok(r),
                Err(e) if reused && attempt == 0 => {
                    self.conn = None;
                    let _ = e;
                }
                Err(e) => return Err(e.context(format!("GET {path} from {}", self.addr))),
            }
        }
        bail!("GET {path}: no answer")
    }

    async fn try_get(&mut self, path: &str, out: Option<&Path>) -> Result<(u16, u64, [u8; 32])> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(AsyncBufReader::with_capacity(256 * 1024, s));
        }
        let conn = self.conn.as_mut().context("no connection")?;
        conn.get_mut()
            .write_all(format!("GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = None;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("closed within the headers");
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = Some(v.trim().parse::<u64>()?);
            } else if l.starts_with("transfer-encoding:") {
                bail!("chunked bodies are not handled here: {l}");
            } else if l == "connection: close" {
                close = true;
            }
        }
        let len = len.context("no content-length")?;
        let mut file = match out {
            // Over the file's cached pages in place, if it is there (see
            // the module doc); the whole body is written.
            Some(p) => Some(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p)?,
            )),
            None => None,
        };
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < len {
            let want = (len - got).min(buf.len() as u64) as usize;
            let n = conn.read(&mut buf[..want]).await?;
            if n == 0 {
                bail!("closed after {got} of {len} bytes");
            }
            sha.update(&buf[..n]);
            if let Some(f) = file.as_mut() {
                f.write_all(&buf[..n])?;
            }
            got += n as u64;
        }
        if let Some(mut f) = file {
            f.flush()?;
        }
        if close {
            self.conn = None;
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(sha.finish().as_ref());
        Ok((status, got, digest))
    }
}

/// Fetch the indexes and `packages` from `addr` under `prefix` (`""` for
/// nginx, `"bench/"` for a gateway), checking each package against the
/// index; bodies go to files in `out` when given. Returns the item bytes
/// and the time taken.
async fn fetch_set(
    addr: SocketAddr,
    prefix: &str,
    packages: &[Package],
    out: Option<&Path>,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut http = Http::new(addr);
    for index in INDEXES {
        let (status, _, _) = http.get(&format!("{prefix}{index}"), None).await?;
        if status != 200 {
            bail!("{index}: {status}");
        }
    }
    let mut bytes = 0;
    for (i, p) in packages.iter().enumerate() {
        let file = out.map(|d| d.join(format!("{i}.deb")));
        let (status, len, sha) = http
            .get(&format!("{prefix}{}", p.path), file.as_deref())
            .await?;
        if status != 200 {
            bail!("{}: {status}", p.path);
        }
        if len != p.size || sha != p.sha256 {
            bail!("{}: differs from the index", p.path);
        }
        bytes += len;
    }
    Ok((bytes, started.elapsed()))
}

async fn metrics(gateway: SocketAddr) -> Result<MetricsSnapshot> {
    let mut http = Http::new(gateway);
    let out = tempfile::NamedTempFile::new()?;
    let (status, _, _) = http.get(".anonmirror/metrics", Some(out.path())).await?;
    if status != 200 {
        bail!("metrics: {status}");
    }
    let text = std::fs::read_to_string(out.path())?;
    MetricsSnapshot::from_prometheus(&text).map_err(|e| anyhow!("metrics: {e}"))
}

// ---------------------------------------------------------------------
// Processes.

/// A child process stopped with SIGTERM on drop (nginx's master then stops
/// its workers; the daemons flush their stores).
struct Proc {
    child: Child,
    // Kept open: the child may write more.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Start `cmd` with stderr into `log`; returns once it printed its
    /// first stdout line, with that line.
    fn start(mut cmd: Command, log: &Path) -> Result<(Proc, String)> {
        let err = std::fs::File::create(log)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        let n = stdout.read_line(&mut line)?;
        let proc = Proc {
            child,
            _stdout: Some(stdout),
        };
        if n == 0 {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{cmd:?} exited without a word; its stderr:\n{tail}");
        }
        Ok((proc, line.trim().to_owned()))
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for _ in 0..300 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("pid {} ignored SIGTERM for 30 s: killed", self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Debian's nginx serving `root` on 127.0.0.1, with `limit_rate` when
/// `cap` is given (bytes per second per request).
fn start_nginx(root: &Path, prefix: &Path, cap: Option<u64>) -> Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    std::fs::create_dir_all(prefix)?;
    let conf = prefix.join("nginx.conf");
    let limit = cap.map_or(String::new(), |c| format!(" limit_rate {c};"));
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{ worker_connections 768; }}\n\
             http {{\n  sendfile on;\n  tcp_nopush on;\n  access_log off;\n\
             client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {r};{limit} }}\n}}\n",
            p = prefix.display(),
            r = root.display(),
        ),
    )?;
    let mut child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "starting nginx (install it: bench/run installs it as root, or apt-get install nginx)",
        )?;
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((
                Proc {
                    child,
                    _stdout: None,
                },
                SocketAddr::from(([127, 0, 0, 1], port)),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    bail!("nginx did not start listening on 127.0.0.1:{port}")
}

/// `anonmirror rendezvous`, as a process.
struct RendezvousProc {
    _proc: Proc,
    addr: SocketAddr,
    key: String,
    directory_key: String,
}

async fn start_rendezvous(bin: &Path, dir: &Path) -> Result<RendezvousProc> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new(bin);
    cmd.arg("rendezvous")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--pow-difficulty")
        .arg("8");
    let log = dir.join("stderr.log");
    let (proc, line) = tokio::task::spawn_blocking(move || Proc::start(cmd, &log)).await??;
    // rendezvous listening on ADDR key HEX directory-key HEX
    let words: Vec<&str> = line.split_whitespace().collect();
    let [_, _, _, addr, _, key, _, dkey] = words[..] else {
        bail!("unexpected rendezvous line {line:?}");
    };
    Ok(RendezvousProc {
        addr: addr.parse()?,
        key: key.to_owned(),
        directory_key: dkey.to_owned(),
        _proc: proc,
    })
}

/// `anonmirror daemon`, as a process, with its policy and directory.
struct Daemon {
    bin: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    gateway: SocketAddr,
    starts: usize,
}

impl Daemon {
    async fn start(
        bin: &Path,
        dir: &Path,
        level: Level,
        upstream: SocketAddr,
        r: &RendezvousProc,
    ) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let d = dir.display();
        std::fs::write(
            dir.join("policy.toml"),
            format!(
                "level = \"{level}\"\n\
                 [paths]\nstate_dir = \"{d}/state\"\ncache_dir = \"{d}/cache\"\n\
                 [cache]\nmax_size = \"16 GiB\"\n\
                 [gateway]\nlisten = \"127.0.0.1:0\"\n\
                 [serve]\nlisten = \"127.0.0.1:0\"\nupload_rate = \"1 GiB/s\"\n\
                 [transport]\nkind = \"tcp\"\n\
                 [[repository]]\nname = \"bench\"\nkind = \"apt\"\nurl = \"http://{upstream}/\"\n\
                 [rendezvous]\naddress = \"{}\"\nkey = \"{}\"\ndirectory_key = \"{}\"\n",
                r.addr, r.key, r.directory_key
            ),
        )?;
        let mut daemon = Daemon {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            proc: None,
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            starts: 0,
        };
        daemon.spawn().await?;
        Ok(daemon)
    }

    /// The running daemon's process id ("0" if stopped).
    fn pid(&self) -> String {
        self.proc
            .as_ref()
            .map_or("0".into(), |p| p.child.id().to_string())
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("daemon")
            .arg("--policy")
            .arg(self.dir.join("policy.toml"))
            .arg("--pow-difficulty")
            .arg("8");
        let log = self.dir.join(format!("stderr.{}.log", self.starts));
        self.starts += 1;
        let (proc, line) = tokio::task::spawn_blocking(move || Proc::start(cmd, &log)).await??;
        self.gateway = line
            .strip_prefix("gateway listening on ")
            .with_context(|| format!("unexpected daemon line {line:?}"))?
            .parse()?;
        self.proc = Some(proc);
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            tokio::task::spawn_blocking(move || drop(p)).await?;
        }
        Ok(())
    }

    /// Stop and start again: the volunteer's first session announces what
    /// it holds. Returns once that session is open.
    async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if metrics(self.gateway).await?.session_live == 1 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{}: no session open 60 s after a restart",
            self.dir.display()
        )
    }
}

// ---------------------------------------------------------------------
// Stalled peers.

/// Opens a session at `r` for a peer at `contact` claiming every item of
/// `packages`, and answers its pings until aborted.
async fn stalled_session(
    r: &RendezvousProc,
    contact: SocketAddr,
    packages: &[Package],
) -> Result<tokio::task::JoinHandle<()>> {
    use anonmirror_announce::announcement::{Announcement, Layout};
    let key: PeerKey = r.key.parse()?;
    let client = anonmirror_rendezvous::Client::new(r.addr, key);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let epoch = Epoch(now / 86_400);
    let cred = client.register(now, 8, OsEntropy).await?;
    let tokens = client.buy_tokens(&cred, now, epoch, 1).await?;
    let token = tokens.first().context("no token")?;
    let items: std::collections::BTreeSet<ItemKey> =
        packages.iter().map(|p| ItemKey(p.sha256)).collect();
    let filter = Announcement::build(
        Level::Open,
        epoch,
        Layout::for_capacity(items.len(), None),
        &items,
    );
    let ann = anonmirror_rendezvous::msg::Announcement {
        contact: contact.into(),
        key: anonmirror_overlay::StaticKeypair::generate()
            .map_err(|e| anyhow!("{e}"))?
            .public(),
        max_clients: 8,
        upload_rate: 1 << 20,
        region: None,
        // Fresher than any client: lookups never skip it as stale.
        snapshots: vec![("bench".to_owned(), u64::MAX / 2)],
        filter: filter.to_bytes(),
    };
    let mut live = client.open_session(token, ann).await?;
    Ok(tokio::spawn(async move {
        while live.next_event().await.is_ok() {}
    }))
}

/// A TCP listener that accepts and never answers (nor closes).
async fn silent_listener() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((
        addr,
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        }),
    ))
}

// ---------------------------------------------------------------------
// Cases.

/// One case's figures.
struct CaseResult {
    name: String,
    baseline: String,
    ours: String,
    baseline_s: f64,
    ours_s: f64,
    goal: f64,
    notes: String,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// CPU time (user and system) process `pid` ("self" for this one) has
/// used so far, in seconds; 0 if /proc does not say.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name: state is the first, utime and stime
    // the 12th and 13th, in clock ticks (USER_HZ, 100 per second).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Case 1 or 3: a fresh client daemon through its gateway vs straight from
/// nginx, `runs` times.
async fn client_vs_nginx(
    args: &Args,
    bin: &Path,
    dir: &Path,
    nginx: SocketAddr,
    r: &RendezvousProc,
    packages: &[Package],
) -> Result<(Vec<f64>, Vec<f64>, Vec<MetricsSnapshot>)> {
    let (mut base, mut ours, mut snaps) = (Vec::new(), Vec::new(), Vec::new());
    // One set of output files for every fetch, written over in place; the
    // first fetch, unmeasured, makes them.
    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let (_, t) = fetch_set(nginx, "", packages, Some(&out)).await?;
    println!("  warm-up: nginx {:.2} s", t.as_secs_f64());
    for run in 0..args.runs {
        let me = cpu_secs("self");
        let (bytes, t) = fetch_set(nginx, "", packages, Some(&out)).await?;
        let me = cpu_secs("self") - me;
        println!(
            "  run {run}: nginx {:.2} s ({:.0} MiB/s); CPU: client {me:.2} s",
            t.as_secs_f64(),
            mib(bytes) / t.as_secs_f64()
        );
        base.push(t.as_secs_f64());

        let mut client =
            Daemon::start(bin, &dir.join(format!("client{run}")), Level::Off, nginx, r).await?;
        let pid = client.pid();
        let (me, daemon) = (cpu_secs("self"), cpu_secs(&pid));
        let (bytes, t) = fetch_set(client.gateway, "bench/", packages, Some(&out))
            .await
            .context("the client through its gateway")?;
        let (me, daemon) = (cpu_secs("self") - me, cpu_secs(&pid) - daemon);
        let m = metrics(client.gateway).await?;
        client.stop().await?;
        std::fs::remove_dir_all(dir.join(format!("client{run}")).join("cache"))?;
        println!(
            "  run {run}: gateway {:.2} s ({:.0} MiB/s); CPU: client {me:.2} s, daemon {daemon:.2} s; \
             peers {:.0} MiB, upstream {:.0} MiB, hedges {}, items by peers {} / upstream {}",
            t.as_secs_f64(),
            mib(bytes) / t.as_secs_f64(),
            mib(m.from_peers),
            mib(m.from_upstream),
            m.hedges,
            m.items_from_peers,
            m.items_from_upstream
        );
        ours.push(t.as_secs_f64());
        snaps.push(m);
    }
    std::fs::remove_dir_all(&out)?;
    Ok((base, ours, snaps))
}

async fn case_peers(
    args: &Args,
    bin: &Path,
    dir: &Path,
    nginx: SocketAddr,
    packages: &[Package],
) -> Result<CaseResult> {
    let total: u64 = packages.iter().map(|p| p.size).sum();
    println!(
        "case 1: {} volunteers hold the set; a client fetches it",
        args.volunteers
    );
    let r = start_rendezvous(bin, &dir.join("rendezvous")).await?;
    let mut volunteers = Vec::new();
    for i in 0..args.volunteers {
        let mut v = Daemon::start(
            bin,
            &dir.join(format!("volunteer{i}")),
            Level::Open,
            nginx,
            &r,
        )
        .await?;
        let (_, t) = fetch_set(v.gateway, "bench/", packages, None)
            .await
            .with_context(|| format!("volunteer {i} fetching"))?;
        let m = metrics(v.gateway).await?;
        println!(
            "  volunteer {i} fetched the set in {:.1} s (peers {:.0} MiB, upstream {:.0} MiB); restarting",
            t.as_secs_f64(),
            mib(m.from_peers),
            mib(m.from_upstream)
        );
        v.restart().await?;
        volunteers.push(v);
    }
    let (base, ours, snaps) = client_vs_nginx(args, bin, dir, nginx, &r, packages).await?;
    let offload: Vec<f64> = snaps.iter().map(|s| 100.0 * s.offload_ratio()).collect();
    let hedges: u64 = snaps.iter().map(|s| s.hedges).sum();
    let (b, o) = (
        median(&base).context("no runs")?,
        median(&ours).context("no runs")?,
    );
    for mut v in volunteers {
        v.stop().await?;
    }
    Ok(CaseResult {
        name: format!(
            "1. client from {} peers, {} packages, {:.0} MiB",
            args.volunteers,
            packages.len(),
            mib(total)
        ),
        baseline: format!("straight from nginx: {b:.2} s"),
        ours: format!("through the gateway: {o:.2} s"),
        baseline_s: b,
        ours_s: o,
        goal: 1.2,
        notes: format!(
            "offload {:.1} % (median of {}), hedges {hedges} in all",
            median(&offload).unwrap_or(0.0),
            offload.len()
        ),
    })
}

async fn case_stalled(
    args: &Args,
    bin: &Path,
    dir: &Path,
    nginx: SocketAddr,
    packages: &[Package],
) -> Result<CaseResult> {
    let total: u64 = packages.iter().map(|p| p.size).sum();
    println!(
        "case 3: {} stalled sessions claim every item; a client fetches the set",
        args.stalled
    );
    let r = start_rendezvous(bin, &dir.join("rendezvous")).await?;
    let (contact, silent) = silent_listener().await?;
    let mut sessions = Vec::new();
    for _ in 0..args.stalled {
        sessions.push(stalled_session(&r, contact, packages).await?);
    }
    let (base, ours, snaps) = client_vs_nginx(args, bin, dir, nginx, &r, packages).await?;
    for s in sessions {
        s.abort();
    }
    silent.abort();
    let from_peers: u64 = snaps.iter().map(|s| s.from_peers).sum();
    let hedges: Vec<String> = snaps.iter().map(|s| s.hedges.to_string()).collect();
    let (b, o) = (
        median(&base).context("no runs")?,
        median(&ours).context("no runs")?,
    );
    Ok(CaseResult {
        name: format!(
            "3. all {} peers stalled, {} packages, {:.0} MiB",
            args.stalled,
            packages.len(),
            mib(total)
        ),
        baseline: format!("straight from nginx: {b:.2} s"),
        ours: format!("through the gateway: {o:.2} s"),
        baseline_s: b,
        ours_s: o,
        goal: 1.1,
        notes: format!(
            "hedges per run: {}; bytes from peers {from_peers}",
            hedges.join(", ")
        ),
    })
}

async fn case_swarm(
    args: &Args,
    bin: &Path,
    dir: &Path,
    repo: &Path,
    packages: &[Package],
) -> Result<CaseResult> {
    let set: Vec<Package> = packages
        .iter()
        .filter(|p| args.swarm_large || !p.large)
        .cloned()
        .collect();
    let total: u64 = set.iter().map(|p| p.size).sum();
    let n = args.swarm_peers.max(1);
    println!(
        "case 2: {n} peers, {} packages ({:.0} MiB), upstream capped at {} MiB/s per request",
        set.len(),
        mib(total),
        args.cap_mib
    );
    let (_nginx, capped) = start_nginx(repo, &dir.join("nginx"), Some(args.cap_mib * MIB))?;

    // Baseline: everyone straight from the capped upstream at once.
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..n {
        let set = set.clone();
        clients.spawn(async move { fetch_set(capped, "", &set, None).await });
    }
    let mut slowest = Duration::ZERO;
    while let Some(r) = clients.join_next().await {
        slowest = slowest.max(r??.1);
    }
    let base = started.elapsed().as_secs_f64();
    println!(
        "  baseline: {n} clients straight from nginx, all done in {base:.1} s (slowest {:.1} s)",
        slowest.as_secs_f64()
    );

    let r = start_rendezvous(bin, &dir.join("rendezvous")).await?;
    let mut daemons = Vec::new();
    for i in 0..n {
        daemons.push(
            Daemon::start(bin, &dir.join(format!("peer{i}")), Level::Open, capped, &r).await?,
        );
    }
    let started = Instant::now();
    let mut restarts = Duration::ZERO;
    let mut done = 0;
    let mut totals = MetricsSnapshot::default();
    let mut wave_notes = Vec::new();
    while done < n {
        let size = if done == 0 {
            1
        } else {
            (done * args.fanout).min(n - done)
        };
        let wave_start = Instant::now();
        let mut js = tokio::task::JoinSet::new();
        for d in &daemons[done..done + size] {
            let (gw, set) = (d.gateway, set.clone());
            js.spawn(async move {
                fetch_set(gw, "bench/", &set, None).await?;
                metrics(gw).await
            });
        }
        let mut wave = MetricsSnapshot::default();
        while let Some(m) = js.join_next().await {
            let m = m??;
            wave.from_peers += m.from_peers;
            wave.from_upstream += m.from_upstream;
            wave.from_store += m.from_store;
            wave.hedges += m.hedges;
            wave.items_from_upstream += m.items_from_upstream;
        }
        let took = wave_start.elapsed().as_secs_f64();
        println!(
            "  wave of {size}: {took:.1} s; peers {:.0} MiB, upstream {:.0} MiB, hedges {}, items from upstream {}",
            mib(wave.from_peers),
            mib(wave.from_upstream),
            wave.hedges,
            wave.items_from_upstream
        );
        wave_notes.push(format!(
            "{size}: {took:.1} s, {:.1} % upstream",
            100.0 * wave.from_upstream as f64
                / (wave.from_peers + wave.from_upstream + wave.from_store).max(1) as f64
        ));
        totals.from_peers += wave.from_peers;
        totals.from_upstream += wave.from_upstream;
        totals.from_store += wave.from_store;
        totals.hedges += wave.hedges;
        let end = done + size;
        if end < n {
            let t = Instant::now();
            let mut js = tokio::task::JoinSet::new();
            for mut d in daemons.drain(done..end).collect::<Vec<_>>() {
                js.spawn(async move { d.restart().await.map(|()| d) });
            }
            let mut restarted = Vec::new();
            while let Some(d) = js.join_next().await {
                restarted.push(d??);
            }
            // Back in front, in any order: only membership matters.
            for (i, d) in restarted.into_iter().enumerate() {
                daemons.insert(done + i, d);
            }
            restarts += t.elapsed();
        }
        done = end;
    }
    let ours = started.elapsed().as_secs_f64();
    for mut d in daemons {
        d.stop().await?;
    }
    let share = 100.0 * totals.from_upstream as f64
        / (totals.from_peers + totals.from_upstream + totals.from_store).max(1) as f64;
    println!(
        "  swarm: all done in {ours:.1} s (restarts {:.1} s); upstream share {share:.2} %",
        restarts.as_secs_f64()
    );
    Ok(CaseResult {
        name: format!(
            "2. {n} peers, {} packages, {:.0} MiB each, upstream {} MiB/s per request",
            set.len(),
            mib(total),
            args.cap_mib
        ),
        baseline: format!("all {n} straight from nginx: {base:.1} s"),
        ours: format!(
            "waves through gateways: {ours:.1} s (restarts {:.1} s)",
            restarts.as_secs_f64()
        ),
        baseline_s: base,
        ours_s: ours,
        goal: f64::NAN,
        notes: format!(
            "upstream share {share:.2} % (goal ≤ 5 %); hedges {}; waves {}",
            totals.hedges,
            wave_notes.join("; ")
        ),
    })
}

// ---------------------------------------------------------------------
// The plot.

/// A bar chart, by hand (no font files needed): per case, the baseline at
/// 1.0 and anonmirror's time relative to it, with the goal marked.
fn plot(results: &[CaseResult]) -> String {
    let (w, h) = (760.0, 400.0);
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 90.0);
    let max = results
        .iter()
        .map(|r| r.ours_s / r.baseline_s)
        .fold(1.5f64, f64::max)
        .ceil();
    let plot_h = h - top - bottom;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">\
         anonmirror gateway: time relative to the baseline in the same run (lower is better)</text>\n",
        w / 2.0
    );
    let mut tick = 0.0;
    while tick <= max + 1e-9 {
        s.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.1}x</text>\n",
            w - right,
            left - 6.0,
            y(tick) + 4.0,
            y = y(tick)
        ));
        tick += if max > 6.0 { 1.0 } else { 0.5 };
    }
    let group = (w - left - right) / results.len().max(1) as f64;
    for (i, r) in results.iter().enumerate() {
        let x0 = left + group * i as f64;
        let bar = group * 0.28;
        let ratio = r.ours_s / r.baseline_s;
        for (j, (v, colour, label)) in [
            (1.0, "#8c8c8c", format!("{:.1} s", r.baseline_s)),
            (ratio, "#2f6db5", format!("{:.1} s ({ratio:.2}x)", r.ours_s)),
        ]
        .into_iter()
        .enumerate()
        {
            let x = x0 + group * 0.18 + j as f64 * (bar + 6.0);
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
                y(v),
                y(0.0) - y(v),
                x + bar / 2.0,
                y(v) - 5.0
            ));
        }
        if r.goal.is_finite() {
            s.push_str(&format!(
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{g:.1}\" y2=\"{g:.1}\" stroke=\"#c0392b\" \
                 stroke-dasharray=\"5,3\" stroke-width=\"2\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c0392b\">goal {:.1}x</text>\n",
                x0 + group * 0.1,
                x0 + group * 0.9,
                x0 + group * 0.1,
                y(r.goal) - 4.0,
                r.goal,
                g = y(r.goal)
            ));
        }
        let name = r.name.split(',').next().unwrap_or(&r.name);
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x0 + group / 2.0,
            y(0.0) + 18.0,
            xml(name)
        ));
    }
    s.push_str(&format!(
        "<rect x=\"{left}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"#8c8c8c\"/>\
         <text x=\"{}\" y=\"{:.1}\">baseline (straight from nginx) = 1.0x</text>\
         <rect x=\"{}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"#2f6db5\"/>\
         <text x=\"{}\" y=\"{:.1}\">through anonmirror's gateway</text>\n</svg>\n",
        h - 40.0,
        left + 18.0,
        h - 30.0,
        left + 300.0,
        h - 40.0,
        left + 318.0,
        h - 30.0
    ));
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

// ---------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = args.anonmirror.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/anonmirror")
    });
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin anonmirror` \
             (bench/run gateway does), or pass --anonmirror",
            bin.display()
        );
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("anonmirror-bench-gateway")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let wants = |c: &str| args.cases.is_empty() || args.cases.iter().any(|x| x == c);
    let repo = dir.join("upstream");
    let t = Instant::now();
    let packages = generate_repository(&repo, args.packages, args.scale, args.seed)?;
    let total: u64 = packages.iter().map(|p| p.size).sum();
    println!(
        "repository: {} packages, {:.0} MiB ({} of 50 MiB or more, {:.0} MiB), generated in {:.1} s",
        packages.len(),
        mib(total),
        packages.iter().filter(|p| p.large).count(),
        mib(packages.iter().filter(|p| p.large).map(|p| p.size).sum()),
        t.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    if wants("peers") || wants("stalled") {
        let (nginx_proc, nginx) = start_nginx(&repo, &dir.join("nginx-open"), None)?;
        if wants("peers") {
            results.push(case_peers(&args, &bin, &dir.join("peers"), nginx, &packages).await?);
            if !args.keep {
                let _ = std::fs::remove_dir_all(dir.join("peers"));
            }
        }
        if wants("stalled") {
            results.push(case_stalled(&args, &bin, &dir.join("stalled"), nginx, &packages).await?);
            if !args.keep {
                let _ = std::fs::remove_dir_all(dir.join("stalled"));
            }
        }
        drop(nginx_proc);
    }
    if wants("swarm") {
        results.push(case_swarm(&args, &bin, &dir.join("swarm"), &repo, &packages).await?);
        if !args.keep {
            let _ = std::fs::remove_dir_all(dir.join("swarm"));
        }
    }
    results.sort_by(|a, b| a.name.cmp(&b.name));

    println!("\n| case | baseline | anonmirror | ratio | goal | notes |");
    println!("| --- | --- | --- | ---: | ---: | --- |");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} |",
            r.name,
            r.baseline,
            r.ours,
            r.ours_s / r.baseline_s,
            if r.goal.is_finite() {
                format!("≤ {:.1}x", r.goal)
            } else {
                "–".to_owned()
            },
            r.notes
        );
    }
    let plot_path = args
        .plot
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("plots/gateway.svg"));
    if let Some(p) = plot_path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&plot_path, plot(&results))?;
    println!("plot: {}", plot_path.display());
    Ok(())
}
