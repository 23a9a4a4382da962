//! The processes of a run: nginx, the rendezvous, daemons, and stalled
//! sessions; each stopped on drop. Each runs at a [`Place`]: on this
//! machine's loopback, or in a host of the testbed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::metrics_blocking;
use super::repo::Package;
use anonmirror_core::{Epoch, ItemKey, OsEntropy, PeerKey};
use anonmirror_mirror::metrics::MetricsSnapshot;
use anonmirror_privacy::Level;
use anonmirror_testnet::Host;
use anyhow::{Context, Result, anyhow, bail};

/// Where a process runs and listens.
#[derive(Clone, Debug)]
pub enum Place {
    /// This machine, on 127.0.0.1.
    Loopback,
    /// A host of the testbed, on its address (its gateway on its own
    /// 127.0.0.1).
    Host(Host),
}

impl Place {
    /// The address it listens on for others.
    pub fn ip(&self) -> std::net::IpAddr {
        match self {
            Place::Loopback => std::net::Ipv4Addr::LOCALHOST.into(),
            Place::Host(h) => h.addr().into(),
        }
    }

    /// Runs `f` here: on this thread, or on a thread inside the host (so
    /// what it connects to and spawns is the host's).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        match self {
            Place::Loopback => f(),
            Place::Host(h) => {
                let mut out = None;
                h.run(|| {
                    out = Some(f());
                    Ok(())
                })?;
                out.context("the host's thread returned nothing")?
            }
        }
    }
}

/// A child process stopped with SIGTERM on drop (nginx's master then stops
/// its workers; the daemons flush their stores).
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Kept open: the child may write more.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Start `cmd` at `place` with stderr into `log`; returns once it
    /// printed its first stdout line, with that line.
    pub fn start(place: &Place, mut cmd: Command, log: &Path) -> Result<(Proc, String)> {
        let err = std::fs::File::create(log)?;
        let mut child = place.run(|| {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting {cmd:?}"))
        })?;
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

    /// SIGTERM, then up to 30 s for it to exit, then SIGKILL.
    pub fn stop(&mut self) {
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

/// A port free at `place` just now.
fn free_port(place: &Place) -> Result<u16> {
    let ip = place.ip();
    place.run(|| Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port()))
}

/// Debian's nginx serving `root` at `place`, with `limit_rate` when `cap`
/// is given (bytes per second per request). Its access log
/// (`PREFIX/access.log`) has, per request: the time, the client, its
/// connection and that connection's request count, the request time and
/// the bytes sent, to see how a client spreads its requests.
pub fn start_nginx(
    place: &Place,
    root: &Path,
    prefix: &Path,
    cap: Option<u64>,
) -> Result<(Proc, SocketAddr)> {
    let port = free_port(place)?;
    let addr = SocketAddr::new(place.ip(), port);
    std::fs::create_dir_all(prefix)?;
    let conf = prefix.join("nginx.conf");
    let limit = cap.map_or(String::new(), |c| format!(" limit_rate {c};"));
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{ worker_connections 768; }}\n\
             http {{\n  sendfile on;\n  tcp_nopush on;\n\
             log_format timing '$msec $remote_addr $connection $connection_requests $request_time $body_bytes_sent';\n\
             access_log {p}/access.log timing;\n\
             client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{ listen {addr}; root {r};{limit} }}\n}}\n",
            p = prefix.display(),
            r = root.display(),
        ),
    )?;
    let mut child = place.run(|| {
        Command::new("nginx")
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
            )
    })?;
    let listening = place.run(|| {
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    })?;
    if listening {
        return Ok((
            Proc {
                child,
                _stdout: None,
            },
            addr,
        ));
    }
    let _ = child.kill();
    bail!("nginx did not start listening on {addr}")
}

/// `anonmirror rendezvous`, as a process.
pub struct RendezvousProc {
    /// The process; `None` once stopped.
    pub proc: Option<Proc>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its static key (hex).
    pub key: String,
    /// The key its directory is signed with (hex).
    pub directory_key: String,
}

/// `anonmirror rendezvous` at `place`, its state in `dir`.
pub async fn start_rendezvous(place: &Place, bin: &Path, dir: &Path) -> Result<RendezvousProc> {
    start_rendezvous_with(place, bin, dir, &[]).await
}

/// [`start_rendezvous`] with more arguments (`--upstream ...`).
pub async fn start_rendezvous_with(
    place: &Place,
    bin: &Path,
    dir: &Path,
    extra: &[String],
) -> Result<RendezvousProc> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new(bin);
    cmd.arg("rendezvous")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--listen")
        .arg(SocketAddr::new(place.ip(), 0).to_string())
        .arg("--pow-difficulty")
        .arg("8")
        .args(extra);
    let log = dir.join("stderr.log");
    let place = place.clone();
    let (proc, line) =
        tokio::task::spawn_blocking(move || Proc::start(&place, cmd, &log)).await??;
    // rendezvous listening on ADDR key HEX directory-key HEX
    let words: Vec<&str> = line.split_whitespace().collect();
    let [_, _, _, addr, _, key, _, dkey] = words[..] else {
        bail!("unexpected rendezvous line {line:?}");
    };
    Ok(RendezvousProc {
        addr: addr.parse()?,
        key: key.to_owned(),
        directory_key: dkey.to_owned(),
        proc: Some(proc),
    })
}

/// `anonmirror daemon`, as a process, with its policy and directory.
pub struct Daemon {
    place: Place,
    bin: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    /// Where its gateway listens (at its place: 127.0.0.1 of its host).
    pub gateway: SocketAddr,
    starts: usize,
}

impl Daemon {
    /// `anonmirror daemon` at `place` at `level`, its policy, state and
    /// cache in `dir`, its one repository (`bench`, apt) at `upstream`.
    pub async fn start(
        place: &Place,
        bin: &Path,
        dir: &Path,
        level: Level,
        upstream: SocketAddr,
        r: &RendezvousProc,
    ) -> Result<Daemon> {
        Daemon::start_for("apt", place, bin, dir, level, upstream, r).await
    }

    /// [`Daemon::start`] for a repository of `kind` (`apt`, `pacman`).
    pub async fn start_for(
        kind: &str,
        place: &Place,
        bin: &Path,
        dir: &Path,
        level: Level,
        upstream: SocketAddr,
        r: &RendezvousProc,
    ) -> Result<Daemon> {
        let serve = SocketAddr::new(place.ip(), 0);
        Daemon::start_serving(kind, place, bin, dir, level, upstream, r, serve).await
    }

    /// [`Daemon::start_for`], its peer server on `serve`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_serving(
        kind: &str,
        place: &Place,
        bin: &Path,
        dir: &Path,
        level: Level,
        upstream: SocketAddr,
        r: &RendezvousProc,
        serve: SocketAddr,
    ) -> Result<Daemon> {
        let policy = Daemon::policy(kind, dir, level, upstream, Some(r), serve);
        Daemon::start_with_policy(place, bin, dir, &policy).await
    }

    /// The policy of a daemon at `level` with its paths under `dir`, its
    /// one repository (`bench`, of `kind`) at `upstream`, the rendezvous
    /// `r` (if any), its peer server on `serve`: more tables may follow.
    pub fn policy(
        kind: &str,
        dir: &Path,
        level: Level,
        upstream: SocketAddr,
        r: Option<&RendezvousProc>,
        serve: SocketAddr,
    ) -> String {
        let d = dir.display();
        let rendezvous = r.map_or(String::new(), |r| {
            format!(
                "[rendezvous]\naddress = \"{}\"\nkey = \"{}\"\ndirectory_key = \"{}\"\n",
                r.addr, r.key, r.directory_key
            )
        });
        format!(
            "level = \"{level}\"\n\
                 [paths]\nstate_dir = \"{d}/state\"\ncache_dir = \"{d}/cache\"\n\
                 [cache]\nmax_size = \"16 GiB\"\n\
                 [gateway]\nlisten = \"127.0.0.1:0\"\n\
                 [serve]\nlisten = \"{serve}\"\nupload_rate = \"1 GiB/s\"\n\
                 [transport]\nkind = \"tcp\"\n\
                 [[repository]]\nname = \"bench\"\nkind = \"{kind}\"\nurl = \"http://{upstream}/\"\n\
                 {rendezvous}"
        )
    }

    /// `anonmirror daemon` at `place` with the policy `policy` (its paths
    /// under `dir`, where it is written as `policy.toml`).
    pub async fn start_with_policy(
        place: &Place,
        bin: &Path,
        dir: &Path,
        policy: &str,
    ) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("policy.toml"), policy)?;
        let mut daemon = Daemon {
            place: place.clone(),
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
    pub fn pid(&self) -> String {
        self.proc
            .as_ref()
            .map_or("0".into(), |p| p.child.id().to_string())
    }

    /// Starts the process (again), with a log of its own.
    pub async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("daemon")
            .arg("--policy")
            .arg(self.dir.join("policy.toml"))
            .arg("--pow-difficulty")
            .arg("8");
        let log = self.dir.join(format!("stderr.{}.log", self.starts));
        self.starts += 1;
        let place = self.place.clone();
        let (proc, line) =
            tokio::task::spawn_blocking(move || Proc::start(&place, cmd, &log)).await??;
        self.gateway = line
            .strip_prefix("gateway listening on ")
            .with_context(|| format!("unexpected daemon line {line:?}"))?
            .parse()?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the process (SIGTERM: it flushes its store).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            tokio::task::spawn_blocking(move || drop(p)).await?;
        }
        Ok(())
    }

    /// Stop and start again: the volunteer's first session announces what
    /// it holds. Returns once that session is open (at most 60 s).
    pub async fn restart(&mut self) -> Result<()> {
        self.restart_within(Duration::from_secs(60)).await
    }

    /// Restarts a volunteer nobody can reach, and waits until it says so
    /// (its contact state), for at most a minute.
    pub async fn restart_unannounced(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let m = self.metrics().await?;
            if m.contact >= 10 {
                return Ok(());
            }
            if m.session_live == 1 {
                bail!(
                    "{}: announced, though no forward reaches it",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{}: never found itself unreachable", self.dir.display())
    }

    /// [`Daemon::restart`], waiting at most `patience` for the session.
    pub async fn restart_within(&mut self, patience: Duration) -> Result<()> {
        self.stop().await?;
        self.spawn().await?;
        let started = Instant::now();
        while started.elapsed() < patience {
            if self.metrics().await?.session_live == 1 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{}: no session open {} s after a restart",
            self.dir.display(),
            patience.as_secs()
        )
    }
}

impl Daemon {
    /// Its gateway's metrics, asked from its place.
    pub async fn metrics(&self) -> Result<MetricsSnapshot> {
        let (place, gateway) = (self.place.clone(), self.gateway);
        tokio::task::spawn_blocking(move || place.run(|| metrics_blocking(gateway))).await?
    }
}

// Stalled peers.

/// Opens a session at `r` for a peer on 127.0.0.1 claiming every item of
/// `packages`, which answers the rendezvous's dial-back (the first
/// connection) and then stalls: it takes connections and never answers.
/// It answers the session's pings until aborted.
pub async fn stalled_session(
    r: &RendezvousProc,
    packages: &[Package],
) -> Result<tokio::task::JoinHandle<()>> {
    use anonmirror_announce::announcement::{Announcement, Layout};
    let keypair = anonmirror_channel::StaticKeypair::generate().map_err(|e| anyhow!("{e}"))?;
    let public = keypair.public();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let contact = l.local_addr()?;
    let key: PeerKey = r.key.parse()?;
    let client = anonmirror_rendezvous::Client::new(r.addr, key);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let epoch = Epoch(now / 86_400);
    let params = anonmirror_channel::ChannelParams::new(Level::Open, epoch);
    let stall = tokio::spawn(async move {
        let mut held = Vec::new();
        let Ok((first, _)) = l.accept().await else {
            return;
        };
        let _ = anonmirror_channel::accept(first, &keypair, &params, Duration::from_secs(5)).await;
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let reached = client
        .reach(contact.port(), public, Level::Open, epoch)
        .await?;
    if reached.outcome != anonmirror_rendezvous::msg::ReachOutcome::Reached {
        bail!("the stalled peer's dial-back: {}", reached.outcome);
    }
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
    let ann = anonmirror_rendezvous::msg::AnnouncementWire {
        contact: contact.into(),
        key: public,
        max_clients: 8,
        upload_rate: 1 << 20,
        region: None,
        // Fresher than any client: lookups never skip it as stale.
        snapshots: vec![("bench".to_owned(), u64::MAX / 2)],
        filter: filter.to_bytes(),
    };
    let mut live = client.open_session(token, ann).await?;
    Ok(tokio::spawn(async move {
        // Aborting this task drops the listener's task's handle only:
        // it is aborted here once the session ends, and on abort by the
        // guard.
        let _guard = AbortOnDrop(stall);
        while live.next_event().await.is_ok() {}
    }))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
