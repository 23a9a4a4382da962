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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anonmirror_bench::median;
use anonmirror_mirror::metrics::MetricsSnapshot;
use anonmirror_privacy::Level;
use anyhow::{Context, Result, bail};
use clap::Parser;

use anonmirror_bench::gateway::http::{fetch_set, metrics_blocking};
use anonmirror_bench::gateway::procs::{
    Daemon, Place, RendezvousProc, stalled_session, start_nginx, start_rendezvous,
};
use anonmirror_bench::gateway::repo::{MIB, Package, generate_repository};

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

impl CaseResult {
    /// A case that fetched the same set straight from nginx (`base`, one
    /// time a run) and through the gateway (`ours`): the medians compared.
    fn against_nginx(
        name: String,
        base: &[f64],
        ours: &[f64],
        goal: f64,
        notes: String,
    ) -> Result<CaseResult> {
        let (b, o) = (
            median(base).context("no runs")?,
            median(ours).context("no runs")?,
        );
        Ok(CaseResult {
            name,
            baseline: format!("straight from nginx: {b:.2} s"),
            ours: format!("through the gateway: {o:.2} s"),
            baseline_s: b,
            ours_s: o,
            goal,
            notes,
        })
    }
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

        let mut client = Daemon::start(
            &Place::Loopback,
            bin,
            &dir.join(format!("client{run}")),
            Level::Off,
            nginx,
            r,
        )
        .await?;
        let pid = client.pid();
        let (me, daemon) = (cpu_secs("self"), cpu_secs(&pid));
        let (bytes, t) = fetch_set(client.gateway, "bench/", packages, Some(&out))
            .await
            .context("the client through its gateway")?;
        let (me, daemon) = (cpu_secs("self") - me, cpu_secs(&pid) - daemon);
        let m = client.metrics().await?;
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
    let r = start_rendezvous(&Place::Loopback, bin, &dir.join("rendezvous")).await?;
    let mut volunteers = Vec::new();
    for i in 0..args.volunteers {
        let mut v = Daemon::start(
            &Place::Loopback,
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
        let m = v.metrics().await?;
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
    for mut v in volunteers {
        v.stop().await?;
    }
    CaseResult::against_nginx(
        format!(
            "1. client from {} peers, {} packages, {:.0} MiB",
            args.volunteers,
            packages.len(),
            mib(total)
        ),
        &base,
        &ours,
        1.2,
        format!(
            "offload {:.1} % (median of {}), hedges {hedges} in all",
            median(&offload).unwrap_or(0.0),
            offload.len()
        ),
    )
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
    let r = start_rendezvous(&Place::Loopback, bin, &dir.join("rendezvous")).await?;
    let mut sessions = Vec::new();
    for _ in 0..args.stalled {
        sessions.push(stalled_session(&r, packages).await?);
    }
    let (base, ours, snaps) = client_vs_nginx(args, bin, dir, nginx, &r, packages).await?;
    for s in sessions {
        s.abort();
    }
    let from_peers: u64 = snaps.iter().map(|s| s.from_peers).sum();
    let hedges: Vec<String> = snaps.iter().map(|s| s.hedges.to_string()).collect();
    CaseResult::against_nginx(
        format!(
            "3. all {} peers stalled, {} packages, {:.0} MiB",
            args.stalled,
            packages.len(),
            mib(total)
        ),
        &base,
        &ours,
        1.1,
        format!(
            "hedges per run: {}; bytes from peers {from_peers}",
            hedges.join(", ")
        ),
    )
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
    let (_nginx, capped) = start_nginx(
        &Place::Loopback,
        repo,
        &dir.join("nginx"),
        Some(args.cap_mib * MIB),
    )?;

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

    let r = start_rendezvous(&Place::Loopback, bin, &dir.join("rendezvous")).await?;
    let mut daemons = Vec::new();
    for i in 0..n {
        daemons.push(
            Daemon::start(
                &Place::Loopback,
                bin,
                &dir.join(format!("peer{i}")),
                Level::Open,
                capped,
                &r,
            )
            .await?,
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
                tokio::task::spawn_blocking(move || metrics_blocking(gw)).await?
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
        let (nginx_proc, nginx) =
            start_nginx(&Place::Loopback, &repo, &dir.join("nginx-open"), None)?;
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
