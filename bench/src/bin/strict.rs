//! Level strict over the private Tor network: real apt through the home's
//! gateway, whose daemon runs at level `strict` and reaches everything
//! through its Tor daemon, fetching from volunteers that serve as onion
//! services, against real apt through Tor (Debian's `apt-transport-tor`,
//! `tor+http://`) from the mirror run as an onion service on the same
//! network, in the same run.
//!
//! The network (anonmirror-testnet's `TorNet`): three authorities, relays
//! and exits, every one a `tor` process inside a network namespace of this
//! process's own, on loopback. Every party has a Tor daemon of its own (a
//! `tor` client with a SOCKS port and a control port):
//! - the mirror: Debian's nginx serving a signed apt repository (built
//!   with Debian's tools), published as an onion service;
//! - the rendezvous (`anonmirror rendezvous`), published as an onion
//!   service;
//! - `--volunteers` volunteers (`anonmirror daemon` at level `open` with
//!   `transport.kind = "tor-socks"`: their peer servers are onion services
//!   of their Tor daemons), each having fetched every package through its
//!   own gateway, then restarted so that it announces them;
//! - the home: `anonmirror daemon` at level `strict`, `tor-socks`.
//!
//! The repository: `--packages` packages of incompressible payload, sizes
//! log-uniform from 16 KiB to 2 MiB scaled to `--mib` in all (100 and 36,
//! as `bench/run hosts`).
//!
//! Each run is `apt-get update` then `apt-get download` of every package
//! with a fresh apt state, straight (`tor+http://` through the apt client's
//! own Tor daemon) and through the home's gateway (a fresh daemon with an
//! empty cache each run; the Tor daemons stay, as a system's does). One
//! untimed run each way comes first: circuits are built and onion
//! descriptors fetched, as on a machine that has been up a while.
//! Reported: the median times, the ratio gateway / straight, and the share
//! of package bytes the gateway got from peers.
//!
//! The network is on one machine: no latency between relays, no competing
//! traffic. It says what Tor's circuits, cells and onion rendezvous cost
//! per connection, not what the live network gives.
//!
//! Run as root: `bench/run strict` (installs tor, apt-transport-tor, nginx
//! and apt's tools, builds the `anonmirror` binary in release). Never a
//! pass/fail test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anonmirror_bench::gateway::procs::{Daemon, Place, start_nginx, start_rendezvous};
use anonmirror_bench::{median, package_sizes};
use anonmirror_testnet::{CTorClient, TorNet};
use anyhow::{Context, Result, bail};
use clap::Parser;

// The e2e tests' real-apt support, shared with the tests.
#[allow(dead_code, unused_imports)]
#[path = "../../../tests/e2e/support/mod.rs"]
mod support;

use support::{AptClient, AptRepo, PkgSpec, TestDir};

/// Level strict over the private Tor network, against apt through Tor.
#[derive(Parser, Debug)]
struct Args {
    /// Packages in the repository.
    #[arg(long, default_value_t = 100)]
    packages: usize,
    /// Their size in all, MiB.
    #[arg(long, default_value_t = 36)]
    mib: u64,
    /// Volunteers holding every package.
    #[arg(long, default_value_t = 3)]
    volunteers: usize,
    /// Timed runs each way (after one untimed); medians reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The `anonmirror` binary (default: target/release/anonmirror).
    #[arg(long)]
    anonmirror: Option<PathBuf>,
}

/// The repository's suite.
const SUITE: &str = "stable";

/// How long one apt-get run may take before the run fails.
const APT_LIMIT: Duration = Duration::from_secs(900);

/// How long a volunteer may take to open its session after a restart (a
/// fresh onion service, reached over Tor).
const SESSION_PATIENCE: Duration = Duration::from_secs(180);

/// One run's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    update: f64,
    download: f64,
    from_peers: u64,
    from_upstream: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The namespace is entered on this thread before anything is spawned:
    // the runtime's threads and every process inherit it.
    let net = TorNet::shared()
        .context("the private Tor network (needs tor and root: bench/run strict installs tor)")?;
    eprintln!(
        "private Tor network up in {:.1} s",
        net.bring_up_time().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args, net))
}

/// A `[transport]` section for a daemon reaching everything through `tor`.
fn tor_socks(tor: &CTorClient) -> String {
    format!(
        "[transport]\nkind = \"tor-socks\"\nsocks = \"{}\"\ncontrol = \"{}\"\n",
        tor.socks, tor.control
    )
}

/// A daemon's policy: `level`, its files in `dir`, the mirror at `mirror`
/// (an onion address), the rendezvous at `rendezvous` (onion:port).
fn policy(
    level: &str,
    dir: &Path,
    mirror: &str,
    rendezvous: &str,
    rv: &anonmirror_bench::gateway::procs::RendezvousProc,
    tor: &CTorClient,
) -> String {
    let d = dir.display();
    format!(
        "level = \"{level}\"\n\
         [paths]\nstate_dir = \"{d}/state\"\ncache_dir = \"{d}/cache\"\n\
         [cache]\nmax_size = \"16 GiB\"\n\
         [gateway]\nlisten = \"127.0.0.1:0\"\n\
         [serve]\nlisten = \"127.0.0.1:0\"\nupload_rate = \"1 GiB/s\"\n\
         {transport}\
         [[repository]]\nname = \"bench\"\nkind = \"apt\"\nurl = \"http://{mirror}/\"\n\
         [rendezvous]\naddress = \"{rendezvous}\"\nkey = \"{}\"\ndirectory_key = \"{}\"\n",
        rv.key,
        rv.directory_key,
        transport = tor_socks(tor),
    )
}

/// apt-get update, then apt-get download of `names`, with a fresh state
/// in `dir`, from `base`; with `socks`, `tor+http://` through it.
fn apt_run(
    repo: &AptRepo,
    dir: &Path,
    base: &str,
    socks: Option<std::net::SocketAddr>,
    names: &[&str],
) -> Result<Run> {
    let apt = AptClient::new(dir, base, repo.suite(), &repo.key()).with_limit(APT_LIMIT);
    if let Some(socks) = socks {
        // apt-transport-tor's own default, on this client's Tor daemon: a
        // user name, so Tor isolates apt's streams from others'.
        std::fs::write(
            dir.join("etc/apt.conf.d/tor.conf"),
            format!("Acquire::tor::proxy \"socks5h://apt-transport-tor@{socks}\";\n"),
        )?;
    }
    let t = Instant::now();
    apt.update();
    let update = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let files = apt.download(names);
    let download = t.elapsed().as_secs_f64();
    if files.len() != names.len() {
        bail!("the download gave {} files of {}", files.len(), names.len());
    }
    Ok(Run {
        update,
        download,
        ..Run::default()
    })
}

async fn run(args: Args, net: &'static TorNet) -> Result<()> {
    let bin = args.anonmirror.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/anonmirror")
    });
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin anonmirror` \
             (bench/run strict does), or pass --anonmirror",
            bin.display()
        );
    }
    if !Path::new("/usr/lib/apt/methods/tor").exists() {
        bail!("apt-transport-tor is missing: bench/run strict installs it");
    }
    let scratch = TestDir::new();
    let dir = scratch.path();
    let here = Place::Loopback;

    let t = Instant::now();
    let specs: Vec<PkgSpec> = package_sizes(args.packages, args.mib << 20)
        .into_iter()
        .enumerate()
        .map(|(i, size)| PkgSpec::new(&format!("bench-{i:03}"), "1.0-1", size))
        .collect();
    let www = dir.join("www");
    let repo = tokio::task::spawn_blocking(move || AptRepo::build(&www, SUITE, &specs)).await?;
    let names: Vec<String> = repo.packages().iter().map(|p| p.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let total: u64 = repo.packages().iter().map(|p| p.size).sum();
    println!(
        "repository: {} packages, {:.1} MiB, built in {:.1} s",
        names.len(),
        total as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    // The mirror and the rendezvous, each an onion service of its own Tor
    // daemon.
    let (_nginx, mirror_addr) = start_nginx(&here, repo.root(), &dir.join("nginx"), None)?;
    let mirror_tor =
        tokio::task::block_in_place(|| net.start_client("mirror", &[(80, mirror_addr)]))?;
    let mirror = mirror_tor.onions[0].clone();
    let rv = start_rendezvous(&here, &bin, &dir.join("rendezvous")).await?;
    let rv_tor =
        tokio::task::block_in_place(|| net.start_client("rendezvous", &[(7880, rv.addr)]))?;
    let rendezvous = format!("{}:7880", rv_tor.onions[0]);

    // The volunteers: each fetches the set through its gateway (over Tor,
    // from the mirror's onion service), then restarts and announces it.
    let mut volunteers = Vec::new();
    let mut volunteer_tors = Vec::new();
    for i in 0..args.volunteers {
        let t = Instant::now();
        let tor = tokio::task::block_in_place(|| net.start_client(&format!("volunteer{i}"), &[]))?;
        let vdir = dir.join(format!("volunteer{i}"));
        std::fs::create_dir_all(&vdir)?;
        let text = policy("open", &vdir, &mirror, &rendezvous, &rv, &tor);
        let mut v = Daemon::start_with_policy(&here, &bin, &vdir, &text).await?;
        let base = format!("http://{}/bench", v.gateway);
        let cdir = dir.join(format!("volunteer{i}-client"));
        tokio::task::block_in_place(|| apt_run(&repo, &cdir, &base, None, &names))?;
        v.restart_within(SESSION_PATIENCE).await?;
        println!(
            "volunteer {i} holds the set and announces it ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        volunteers.push(v);
        volunteer_tors.push(tor);
    }

    // The clients: apt's Tor daemon, and the home's.
    let apt_tor = tokio::task::block_in_place(|| net.start_client("apt", &[]))?;
    let home_tor = tokio::task::block_in_place(|| net.start_client("home", &[]))?;
    let straight_base = format!("tor+http://{mirror}");

    let (mut straight, mut ours) = (Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let tag = if run == 0 {
            "warm-up".to_owned()
        } else {
            format!("{run}")
        };
        let sdir = dir.join(format!("client-straight-{run}"));
        let s = tokio::task::block_in_place(|| {
            apt_run(&repo, &sdir, &straight_base, Some(apt_tor.socks), &names)
        })?;
        let _ = std::fs::remove_dir_all(&sdir);

        let hdir = dir.join(format!("home-{run}"));
        std::fs::create_dir_all(&hdir)?;
        let text = policy("strict", &hdir, &mirror, &rendezvous, &rv, &home_tor);
        let mut home = Daemon::start_with_policy(&here, &bin, &hdir, &text).await?;
        let base = format!("http://{}/bench", home.gateway);
        let gdir = dir.join(format!("client-gateway-{run}"));
        let g = tokio::task::block_in_place(|| apt_run(&repo, &gdir, &base, None, &names));
        let m = home.metrics().await;
        home.stop().await?;
        let _ = std::fs::remove_dir_all(&gdir);
        let m = m?;
        let g = Run {
            from_peers: m.fetched_from_peers,
            from_upstream: m.fetched_from_upstream,
            ..g?
        };
        println!(
            "  run {tag}: straight (tor+http) update {:.2} s download {:.2} s; \
             through the strict gateway update {:.2} s download {:.2} s, {:.0} % of package \
             bytes from peers, {} hedges",
            s.update,
            s.download,
            g.update,
            g.download,
            peer_share(&g),
            m.hedges,
        );
        if run > 0 {
            straight.push(s);
            ours.push(g);
        }
    }
    let med = |v: &[Run], f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (su, sd) = (
        med(&straight, |r| r.update).context("no runs")?,
        med(&straight, |r| r.download).context("no runs")?,
    );
    let (gu, gd) = (
        med(&ours, |r| r.update).context("no runs")?,
        med(&ours, |r| r.download).context("no runs")?,
    );
    let share = med(&ours, peer_share).context("no runs")?;
    println!(
        "\n{} packages, {} MiB, real apt; {} volunteers as onion services; median of {} runs each way",
        args.packages, args.mib, args.volunteers, args.runs
    );
    println!(
        "| case | apt-get download straight (tor+http) | through the strict gateway | ratio | bytes from peers | apt-get update straight | through the gateway | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| private Tor network, onion mirror, onion volunteers | {sd:.2} s | {gd:.2} s | {:.2}x | {share:.0} % | {su:.2} s | {gu:.2} s | {:.2}x |",
        gd / sd,
        gu / su
    );
    drop(volunteers);
    drop(volunteer_tors);
    Ok(())
}

fn peer_share(r: &Run) -> f64 {
    100.0 * r.from_peers as f64 / (r.from_peers + r.from_upstream).max(1) as f64
}
