//! The gateway between hosts: real apt (or, with `--client pacman`, real
//! pacman) on a home host of the testbed, straight from the mirror and
//! through the home's gateway, over the same link, in the same run.
//!
//! The testbed (`anonmirror_testnet::testbed`): hosts in network
//! namespaces joined by tun links that delay every packet both ways. The
//! home (apt, and the `anonmirror daemon` at level `off`) sits on a link
//! whose round trip is the case's; the mirror (Debian's nginx serving a
//! signed apt repository built with Debian's tools), the rendezvous and
//! `--volunteers` volunteers (daemons at level `open`, each having fetched
//! every package through its own gateway, then restarted so that it
//! announces them) sit on links with no delay. So every round trip from
//! the home costs the case's delay, to the mirror and to peers alike.
//!
//! The repository: `--packages` packages of incompressible payload, sizes
//! log-uniform from 16 KiB to 2 MiB scaled to `--mib` in all (100 and 36
//! by default, as the issue that asked for this measured).
//!
//! Each run is `apt-get update` then `apt-get download` of every package,
//! with a fresh apt state, and (through the gateway) a fresh daemon with an
//! empty cache. Reported per case: the median time of each, the ratio
//! gateway / straight, and the share of package bytes the gateway got from
//! peers.
//!
//! Cases (`--cases`, default all):
//! - `rtt`: each round trip of `--rtts` (4, 40, 100, 300 ms), mirror
//!   unlimited;
//! - `capped`: 40 ms, the mirror's link capped at 2 MiB/s, each
//!   volunteer's at 4 MiB/s;
//! - `dead`: 40 ms, every volunteer stopped (the rendezvous still lists
//!   them until their sessions expire);
//! - `alone`: 40 ms, the rendezvous stopped too;
//! - `bittorrent`: 40 ms, the same package files as one torrent, seeded by
//!   aria2 on the volunteers' hosts (opentracker on the rendezvous's
//!   host), fetched by aria2 on the home host; against the gateway's time
//!   in the same run. Runs before `dead`.
//!
//! `--nat`: each volunteer sits behind a home router of its own (a NAT
//! router of the testbed), listens on level open's default `0.0.0.0:7879`
//! and gets its port forwarded by asking the router over PCP (testnet's
//! port-mapping server on each router installs the forward it grants);
//! the rendezvous announces it at the router's address once its dial-back
//! reached it. `--unreachable N` adds N more volunteers holding the set
//! behind routers that grant no forward: they must not be announced, so
//! the home never dials them (`bittorrent` does not run with `--nat`).
//!
//! - `newversion`: 40 ms; a new version of a package is published on the
//!   mirror; the rendezvous notices it (it watches the index) and pushes
//!   it; reported: how long until every volunteer announces the new
//!   version, and the share of its bytes from peers for a fresh home
//!   fetching it then;
//! - `follow`: 40 ms; the volunteers stop and a new one starts empty,
//!   fetches every package through its own gateway, and is not
//!   restarted; reported: how long after its fetch its announcement
//!   followed, and the usual row with it as the only peer. Runs after
//!   `newversion` and before `dead`.
//!
//! `--lan`: the volunteers and the home on one LAN bridge behind a home
//! router whose link has the case's round trip (to the mirror, the
//! rendezvous, everything beyond); the volunteers listen on level open's
//! default with no forward (the rendezvous cannot reach them) and
//! advertise on the link (`lan.advertise`); the home's daemon has no
//! rendezvous at all and asks its neighbours (`lan.discover`). Reported
//! too: how long the home took to find them. `rtt` and `capped` only.
//!
//! `--index-padding 60000` lists that many synthetic entries after the
//! packages in the apt index (49 MB, 8.3 MB as xz, as Debian's main for
//! one architecture): the `apt-get update` columns then measure a
//! distribution-sized index.
//!
//! Also reported per run: how busy the machine's cores were (the links
//! are carried by the same two cores), the gateway's CPU seconds, and the
//! bytes into the home over its link.
//!
//! Run as root: `bench/run hosts` (installs nginx and apt's tools, builds
//! the `anonmirror` binary in release). Quick: `--rtts 40 --runs 1
//! --cases rtt`. Never a pass/fail test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anonmirror_bench::gateway::procs::{
    Daemon, Place, RendezvousProc, start_nginx, start_rendezvous_with,
};
use anonmirror_bench::{CpuReading, median, package_sizes, process_cpu_seconds};
use anonmirror_privacy::Level;
use anonmirror_testnet::testbed::{Host, Link, Testbed, require_testbed};
use anyhow::{Context, Result, bail};
use clap::Parser;

// The e2e tests' real-apt support: a signed repository built with
// Debian's tools and an isolated apt-get. Shared, not copied; the bench
// uses part of it.
#[allow(dead_code, unused_imports)]
#[path = "../../../../tests/e2e/support/mod.rs"]
mod support;

use support::{AptClient, AptRepo, PacmanClient, PacmanRepo, PkgSpec, TestDir};

/// The gateway between hosts on the testbed, against apt straight from the
/// mirror over the same link.
#[derive(Parser, Debug)]
struct Args {
    /// Round trips of the `rtt` case, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "4,40,100,300")]
    rtts: Vec<u64>,
    /// Packages in the repository.
    #[arg(long, default_value_t = 100)]
    packages: usize,
    /// Their size in all, MiB.
    #[arg(long, default_value_t = 36)]
    mib: u64,
    /// Volunteers holding every package.
    #[arg(long, default_value_t = 3)]
    volunteers: usize,
    /// Runs per case (each way); medians reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Synthetic entries listed in the apt index after the packages, so
    /// that `apt-get update` fetches an index the size of a distribution's
    /// (60000: Debian's main); none are downloaded.
    #[arg(long, default_value_t = 0)]
    index_padding: usize,
    /// Each volunteer behind a NAT router of its own, its port forwarded
    /// on its request (PCP).
    #[arg(long)]
    nat: bool,
    /// With `--nat`: this many more volunteers behind routers that grant
    /// no forward.
    #[arg(long, default_value_t = 0)]
    unreachable: usize,
    /// The volunteers and the home on one LAN bridge, found by LAN
    /// discovery, with no rendezvous for the home.
    #[arg(long, conflicts_with = "nat")]
    lan: bool,
    /// The package manager: apt or pacman.
    #[arg(long, default_value = "apt")]
    client: String,
    /// Cases: rtt, capped, bittorrent, dead, alone (default: all).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// The `anonmirror` binary (default: target/release/anonmirror).
    #[arg(long)]
    anonmirror: Option<PathBuf>,
}

/// The round trip of the cases other than `rtt`.
const CASE_RTT: Duration = Duration::from_millis(40);

/// How long one apt-get run may take before the run fails.
const APT_LIMIT: Duration = Duration::from_secs(900);

/// The repository's suite.
const SUITE: &str = "stable";

/// The packages: sizes log-uniform in [16 KiB, 2 MiB], scaled to `total`.
fn specs(n: usize, total: u64) -> Vec<PkgSpec> {
    package_sizes(n, total)
        .into_iter()
        .enumerate()
        .map(|(i, size)| PkgSpec::new(&format!("bench-{i:03}"), "1.0-1", size))
        .collect()
}

/// One run's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    update: f64,
    download: f64,
    from_peers: u64,
    from_upstream: u64,
    hedges: u64,
    /// The share of the machine's cores busy during the download.
    busy: f64,
    /// The gateway's CPU seconds over update and download.
    gateway_cpu: f64,
    /// Bytes the home's link carried in (IP packets) over update and
    /// download.
    link_in: u64,
    /// Peers in the home's directory at the end.
    directory_peers: u64,
}

/// The repository and its package manager: real apt or real pacman.
enum Repo {
    Apt(AptRepo),
    Pacman(PacmanRepo),
}

impl Repo {
    fn build(client: &str, dir: &Path, specs: &[PkgSpec], padding: usize) -> Result<Repo> {
        Ok(match client {
            "apt" => {
                let mut repo = AptRepo::build(dir, SUITE, specs);
                if padding > 0 {
                    repo.pad_index(padding);
                }
                Repo::Apt(repo)
            }
            "pacman" if padding > 0 => bail!("--index-padding is for apt"),
            "pacman" => Repo::Pacman(PacmanRepo::build(dir, "bench", "x86_64", specs)),
            other => bail!("--client {other}: apt or pacman"),
        })
    }

    /// Publishes `spec` (a new version of a package) in the repository.
    fn publish(&mut self, spec: &PkgSpec) {
        match self {
            Repo::Apt(r) => r.publish(spec),
            Repo::Pacman(r) => r.publish(spec),
        }
    }

    /// The daemon's repository kind.
    fn kind(&self) -> &'static str {
        match self {
            Repo::Apt(_) => "apt",
            Repo::Pacman(_) => "pacman",
        }
    }

    fn root(&self) -> &Path {
        match self {
            Repo::Apt(r) => r.root(),
            Repo::Pacman(r) => r.root(),
        }
    }

    fn packages(&self) -> &[support::Package] {
        match self {
            Repo::Apt(r) => r.packages(),
            Repo::Pacman(r) => r.packages(),
        }
    }

    /// In `host`, with a fresh client in `dir` whose source is the served
    /// root at `base` (no trailing slash): the index update (`apt-get
    /// update`, `pacman -Sy`), then the download of `names` (`apt-get
    /// download`, `pacman -Sw`); the two times.
    fn run(&self, host: &Host, dir: &Path, base: &str, names: &[&str]) -> Result<Run> {
        let place = Place::Host(host.clone());
        place.run(|| {
            let (update, files, download, busy) = match self {
                Repo::Apt(repo) => {
                    let apt =
                        AptClient::new(dir, base, repo.suite(), &repo.key()).with_limit(APT_LIMIT);
                    let t = Instant::now();
                    apt.update();
                    let update = t.elapsed().as_secs_f64();
                    let (t, cpu) = (Instant::now(), CpuReading::now());
                    let files = apt.download(names);
                    (update, files, t.elapsed().as_secs_f64(), cpu.busy_since())
                }
                Repo::Pacman(repo) => {
                    let server = PacmanRepo::server(base);
                    let pacman = PacmanClient::new(dir, repo.name(), repo.arch(), &server);
                    let t = Instant::now();
                    pacman.sync();
                    let update = t.elapsed().as_secs_f64();
                    let (t, cpu) = (Instant::now(), CpuReading::now());
                    let files = pacman.download(names);
                    (update, files, t.elapsed().as_secs_f64(), cpu.busy_since())
                }
            };
            if files.len() != names.len() {
                bail!("the download gave {} files of {}", files.len(), names.len());
            }
            Ok(Run {
                update,
                download,
                busy,
                ..Run::default()
            })
        })
    }
}

/// The world of a run: the testbed, its hosts and processes.
struct World {
    bed: Testbed,
    home: Host,
    rendezvous_host: Host,
    volunteer_hosts: Vec<Host>,
    mirror_addr: std::net::SocketAddr,
    rendezvous: RendezvousProc,
    volunteers: Vec<Daemon>,
    bin: PathBuf,
    dir: PathBuf,
    repo: Repo,
    names: Vec<String>,
    /// The link of each volunteer (`--nat`: its router's; none on a LAN).
    volunteer_links: Vec<String>,
    /// The link whose round trip is the case's: the home's, or (`--lan`)
    /// its router's.
    home_link: String,
    /// The volunteers and the home share a LAN (`--lan`).
    lan: bool,
    /// Volunteers no forward reaches (`--unreachable`), after the others
    /// in `volunteers`.
    unreachable: usize,
    /// The routers' port-mapping servers (`--nat`).
    _routers: Vec<RouterMapping>,
    /// nginx; stopped on drop.
    _nginx: anonmirror_bench::gateway::procs::Proc,
}

impl World {
    async fn build(args: &Args, bin: &Path, dir: &Path) -> Result<World> {
        let bed = Testbed::new()?;
        let mirror = bed.host("mirror", Link::delay(Duration::ZERO))?;
        let rv = bed.host("rendezvous", Link::delay(Duration::ZERO))?;
        let (mut volunteer_hosts, mut volunteer_links, mut routers) =
            (Vec::new(), Vec::new(), Vec::new());
        // On a LAN, the router's link carries the case's round trip, and
        // the home is on the bridge with the volunteers.
        let lan_home = if args.lan {
            let lan = bed.lan("homelan", Link::round_trip(CASE_RTT))?;
            for i in 0..args.volunteers {
                volunteer_hosts.push(lan.host(&format!("volunteer{i}"))?);
            }
            Some(lan.host("home")?)
        } else {
            None
        };
        for i in 0..args.volunteers + if args.nat { args.unreachable } else { 0 } {
            let name = format!("volunteer{i}");
            if args.lan {
                break;
            }
            if !args.nat {
                volunteer_hosts.push(bed.host(&name, Link::delay(Duration::ZERO))?);
                volunteer_links.push(name);
                continue;
            }
            let router = format!("router{i}");
            let nat = bed.nat(&router, Link::delay(Duration::ZERO))?;
            volunteer_hosts.push(nat.host(&name, Link::delay(Duration::ZERO))?);
            volunteer_links.push(router);
            if i < args.volunteers {
                routers.push(RouterMapping::start(&nat)?);
            }
        }
        let (home, home_link) = match lan_home {
            Some(h) => (h, "homelan".to_owned()),
            None => (
                bed.host("home", Link::round_trip(CASE_RTT))?,
                "home".to_owned(),
            ),
        };

        let t = Instant::now();
        let specs = specs(args.packages, args.mib << 20);
        let (repo_dir, specs2) = (dir.join("www"), specs.clone());
        let (client, padding) = (args.client.clone(), args.index_padding);
        let repo =
            tokio::task::spawn_blocking(move || Repo::build(&client, &repo_dir, &specs2, padding))
                .await??;
        let total: u64 = repo.packages().iter().map(|p| p.size).sum();
        println!(
            "repository: {} packages, {:.1} MiB, built in {:.1} s",
            repo.packages().len(),
            total as f64 / (1 << 20) as f64,
            t.elapsed().as_secs_f64()
        );
        let (nginx, mirror_addr) =
            start_nginx(&Place::Host(mirror), repo.root(), &dir.join("nginx"), None)?;
        // It watches the mirror's index (for `newversion`).
        let index = match &repo {
            Repo::Apt(_) => format!("dists/{SUITE}/InRelease"),
            Repo::Pacman(_) => "bench/os/x86_64/bench.db".to_owned(),
        };
        let watch = [
            "--upstream".to_owned(),
            format!("bench=http://{mirror_addr}/{index}"),
            "--upstream-interval-secs".to_owned(),
            "5".to_owned(),
        ];
        let rendezvous = start_rendezvous_with(
            &Place::Host(rv.clone()),
            bin,
            &dir.join("rendezvous"),
            &watch,
        )
        .await?;
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let mut world = World {
            bed,
            home,
            rendezvous_host: rv.clone(),
            volunteer_hosts: volunteer_hosts.clone(),
            mirror_addr,
            rendezvous,
            volunteers: Vec::new(),
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            repo,
            names,
            volunteer_links,
            home_link,
            lan: args.lan,
            unreachable: if args.nat { args.unreachable } else { 0 },
            _routers: routers,
            _nginx: nginx,
        };
        let serve = (args.nat || args.lan).then(|| {
            anonmirror_privacy::Policy::defaults_for(Level::Open)
                .serve
                .listen
        });
        for (i, host) in volunteer_hosts.into_iter().enumerate() {
            let t = Instant::now();
            let place = Place::Host(host.clone());
            let mut policy = Daemon::policy(
                world.repo.kind(),
                &dir.join(format!("volunteer{i}")),
                Level::Open,
                world.mirror_addr,
                Some(&world.rendezvous),
                serve.unwrap_or_else(|| std::net::SocketAddr::new(place.ip(), 0)),
            );
            if args.lan {
                policy.push_str("[lan]\nadvertise = true\n");
            }
            let mut v =
                Daemon::start_with_policy(&place, bin, &dir.join(format!("volunteer{i}")), &policy)
                    .await?;
            let base = format!("http://{}/bench", v.gateway);
            let names: Vec<&str> = world.names.iter().map(String::as_str).collect();
            world
                .repo
                .run(
                    &host,
                    &dir.join(format!("volunteer{i}-client")),
                    &base,
                    &names,
                )
                .with_context(|| format!("volunteer {i} fetching the set"))?;
            // On the LAN, no forward reaches them: they serve the link.
            let reachable = i < args.volunteers && !args.lan;
            if reachable {
                v.restart().await?;
            } else {
                v.restart_unannounced().await?;
            }
            let contact =
                anonmirror_mirror::metrics::ContactState::from_code(v.metrics().await?.contact);
            println!(
                "volunteer {i} holds the set ({:.1} s); its contact: {contact}",
                t.elapsed().as_secs_f64()
            );
            world.volunteers.push(v);
        }
        Ok(world)
    }

    /// The volunteers the home may use: those a forward reaches.
    fn reachable_volunteers(&self) -> usize {
        self.volunteers.len() - self.unreachable
    }

    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// One run straight from the mirror.
    fn straight(&self, tag: &str) -> Result<Run> {
        let base = format!("http://{}", self.mirror_addr);
        let dir = self.dir.join(format!("client-straight-{tag}"));
        let link_in = self.link_in();
        let run = self.repo.run(&self.home, &dir, &base, &self.names());
        let _ = std::fs::remove_dir_all(&dir);
        let link_in = self.link_in() - link_in;
        Ok(Run { link_in, ..run? })
    }

    /// Bytes into the home over its link so far (on a LAN: into the LAN
    /// over its router's link).
    fn link_in(&self) -> u64 {
        self.bed.counters(&self.home_link).map_or(0, |c| {
            c.inward.bytes.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// One run through a fresh home daemon.
    async fn through_gateway(&self, tag: &str) -> Result<Run> {
        self.through_gateway_of(tag, &self.names()).await
    }

    /// The announcements the rendezvous lists now, asked from its host.
    fn directory(&self) -> Result<Vec<anonmirror_rendezvous::msg::AnnouncementWire>> {
        let r = &self.rendezvous;
        let key: anonmirror_core::PeerKey = r.key.parse()?;
        let mut pinned = [0u8; 32];
        hex::decode_to_slice(&r.directory_key, &mut pinned)?;
        let addr = r.addr;
        Place::Host(self.rendezvous_host.clone()).run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let c = anonmirror_rendezvous::Client::new(addr, key);
                Ok(c.directory(None, &pinned).await?.peers)
            })
        })
    }

    /// How many listed announcements claim `item`.
    fn holders(&self, item: anonmirror_core::ItemKey) -> Result<usize> {
        use anonmirror_rendezvous::FilterCheck;
        let epoch = anonmirror_core::Epoch::containing(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
            86_400,
        );
        Ok(self
            .directory()?
            .iter()
            .filter(|a| anonmirror_mirror::hooks::AnnouncementFilter.holds(&a.filter, epoch, &item))
            .count())
    }

    /// One run through a fresh home daemon, fetching `names`.
    async fn through_gateway_of(&self, tag: &str, names: &[&str]) -> Result<Run> {
        let ddir = self.dir.join(format!("home-{tag}"));
        let place = Place::Host(self.home.clone());
        let mut daemon = if self.lan {
            // No rendezvous: its neighbours, found on the link.
            let mut policy = Daemon::policy(
                self.repo.kind(),
                &ddir,
                Level::Off,
                self.mirror_addr,
                None,
                std::net::SocketAddr::new(place.ip(), 0),
            );
            policy.push_str("[lan]\ndiscover = true\n");
            let daemon = Daemon::start_with_policy(&place, &self.bin, &ddir, &policy).await?;
            let started = Instant::now();
            while (daemon.metrics().await?.lan_peers as usize) < self.volunteers.len() {
                if started.elapsed() > Duration::from_secs(60) {
                    bail!("the home found too few volunteers on its link in 60 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "  the home found its {} neighbours in {:.2} s",
                self.volunteers.len(),
                started.elapsed().as_secs_f64()
            );
            daemon
        } else {
            Daemon::start_for(
                self.repo.kind(),
                &place,
                &self.bin,
                &ddir,
                Level::Off,
                self.mirror_addr,
                &self.rendezvous,
            )
            .await?
        };
        let base = format!("http://{}/bench", daemon.gateway);
        let dir = self.dir.join(format!("client-gateway-{tag}"));
        let pid = daemon.pid().parse().unwrap_or(0);
        let cpu = process_cpu_seconds(pid).unwrap_or(0.0);
        let link_in = self.link_in();
        let run = tokio::task::block_in_place(|| self.repo.run(&self.home, &dir, &base, names));
        let gateway_cpu = process_cpu_seconds(pid).unwrap_or(0.0) - cpu;
        let link_in = self.link_in() - link_in;
        let m = daemon.metrics().await;
        daemon.stop().await?;
        let _ = std::fs::remove_dir_all(&dir);
        // The daemon's log stays with the scratch directory when that is
        // kept (ANONMIRROR_KEEP_TESTDIRS, as in the tests).
        if std::env::var_os("ANONMIRROR_KEEP_TESTDIRS").is_none() {
            let _ = std::fs::remove_dir_all(&ddir);
        }
        let m = m?;
        Ok(Run {
            // What each source downloaded: an item read ahead and finished
            // before apt asked for it reaches apt from the store.
            from_peers: m.fetched_from_peers,
            from_upstream: m.fetched_from_upstream,
            hedges: m.hedges,
            directory_peers: if self.lan {
                m.lan_peers
            } else {
                m.directory_peers
            },
            gateway_cpu,
            link_in,
            ..run?
        })
    }

    /// `runs` runs each way, interleaved; the case's row.
    async fn case(&self, name: &str, runs: usize) -> Result<Row> {
        let (mut straight, mut ours) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let tag = format!("{}-{run}", name.replace(' ', "_"));
            let s = tokio::task::block_in_place(|| self.straight(&tag))?;
            let g = self.through_gateway(&tag).await?;
            println!(
                "  {name} run {run}: straight update {:.2} s download {:.2} s; gateway update {:.2} s \
                 download {:.2} s, {:.0} % of package bytes from peers, {} hedges; \
                 cores busy {:.0} % straight, {:.0} % through the gateway, gateway CPU {:.2} s; \
                 into the home {:.1} MiB straight, {:.1} MiB through the gateway; \
                 {} peers in the home's {} (of {} volunteers, {} reachable)",
                s.update,
                s.download,
                g.update,
                g.download,
                peer_share(&g),
                g.hedges,
                s.busy * 100.0,
                g.busy * 100.0,
                g.gateway_cpu,
                s.link_in as f64 / 1048576.0,
                g.link_in as f64 / 1048576.0,
                g.directory_peers,
                if self.lan {
                    "LAN discovery"
                } else {
                    "directory"
                },
                self.volunteers.len(),
                self.reachable_volunteers(),
            );
            straight.push(s);
            ours.push(g);
        }
        let med = |v: &[Run], f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        Ok(Row {
            name: name.to_owned(),
            straight_update: med(&straight, |r| r.update).context("no runs")?,
            straight_download: med(&straight, |r| r.download).context("no runs")?,
            update: med(&ours, |r| r.update).context("no runs")?,
            download: med(&ours, |r| r.download).context("no runs")?,
            peers: med(&ours, peer_share).context("no runs")?,
        })
    }
}

fn peer_share(r: &Run) -> f64 {
    100.0 * r.from_peers as f64 / (r.from_peers + r.from_upstream).max(1) as f64
}

/// One line of the table.
struct Row {
    name: String,
    straight_update: f64,
    straight_download: f64,
    update: f64,
    download: f64,
    peers: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !require_testbed() {
        bail!("the testbed cannot run here (see above)");
    }
    let bin = args.anonmirror.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/anonmirror")
    });
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin anonmirror` \
             (bench/run hosts does), or pass --anonmirror",
            bin.display()
        );
    }
    // On a LAN (`--lan`), the cases that change nothing but the links.
    let wants = |c: &str| {
        (!args.lan || matches!(c, "rtt" | "capped"))
            && (args.cases.is_empty() || args.cases.iter().any(|x| x == c))
    };
    // 0755 under /tmp: nginx's workers and apt's `_apt` reach inside.
    let scratch = TestDir::new();
    let mut world = World::build(&args, &bin, scratch.path()).await?;
    let mut rows = Vec::new();
    let mut bittorrent = None;
    let (mut new_version, mut follow) = (None, None);
    if wants("rtt") {
        for &ms in &args.rtts {
            let rtt = Duration::from_millis(ms);
            world
                .bed
                .set_link(&world.home_link, Link::round_trip(rtt))?;
            rows.push(world.case(&format!("{ms} ms"), args.runs).await?);
        }
    }
    world
        .bed
        .set_link(&world.home_link, Link::round_trip(CASE_RTT))?;
    if wants("capped") {
        world
            .bed
            .set_link("mirror", Link::delay(Duration::ZERO).rate(2 << 20))?;
        for link in &world.volunteer_links {
            world
                .bed
                .set_link(link, Link::delay(Duration::ZERO).rate(4 << 20))?;
        }
        rows.push(
            world
                .case(
                    if args.lan {
                        "40 ms, mirror 2 MiB/s, neighbours on the LAN"
                    } else {
                        "40 ms, mirror 2 MiB/s, volunteers 4 MiB/s"
                    },
                    args.runs,
                )
                .await?,
        );
        world.bed.set_link("mirror", Link::delay(Duration::ZERO))?;
        for link in &world.volunteer_links {
            world.bed.set_link(link, Link::delay(Duration::ZERO))?;
        }
    }
    if wants("bittorrent") && !args.nat {
        let swarm = world.torrent_swarm()?;
        let (mut bt, mut ours) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let t = tokio::task::block_in_place(|| swarm.leech(&world, run))?;
            let g = world.through_gateway(&format!("bt-{run}")).await?;
            println!(
                "  bittorrent run {run}: aria2 {t:.2} s; gateway download {:.2} s, {:.0} % from peers",
                g.download,
                peer_share(&g)
            );
            bt.push(t);
            ours.push(g.download);
        }
        bittorrent = Some((
            median(&bt).context("no runs")?,
            median(&ours).context("no runs")?,
        ));
    }
    if wants("newversion") {
        // The first package gets a new version, the same size.
        let old = world.repo.packages()[0].clone();
        let spec = PkgSpec::new(&old.name, "1.0-2", usize::try_from(old.size)?);
        world.repo.publish(&spec);
        let new = world
            .repo
            .packages()
            .iter()
            .find(|p| p.name == old.name)
            .context("the new version")?
            .clone();
        let mut key = [0u8; 32];
        hex::decode_to_slice(&new.sha256, &mut key)?;
        let key = anonmirror_core::ItemKey(key);
        let published = Instant::now();
        let want = world.reachable_volunteers();
        loop {
            let n = tokio::task::block_in_place(|| world.holders(key))?;
            if n >= want {
                break;
            }
            if published.elapsed() > Duration::from_secs(900) {
                bail!("after 15 min, {n} of {want} volunteers announce the new version");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let announced = published.elapsed().as_secs_f64();
        let mut shares = Vec::new();
        for run in 0..args.runs {
            let g = world
                .through_gateway_of(&format!("newversion-{run}"), &[old.name.as_str()])
                .await?;
            println!(
                "  new version run {run}: {:.0} % of its bytes from peers ({} bytes)",
                peer_share(&g),
                g.from_peers + g.from_upstream
            );
            shares.push(peer_share(&g));
        }
        new_version = Some((announced, median(&shares).context("no runs")?));
    }
    if wants("follow") {
        for v in &mut world.volunteers {
            v.stop().await?;
        }
        let host = world.bed.host("latecomer", Link::delay(Duration::ZERO))?;
        let place = Place::Host(host.clone());
        let dir = world.dir.join("latecomer");
        let mut v = Daemon::start_for(
            world.repo.kind(),
            &place,
            &world.bin,
            &dir,
            Level::Open,
            world.mirror_addr,
            &world.rendezvous,
        )
        .await?;
        let base = format!("http://{}/bench", v.gateway);
        let names = world.names();
        tokio::task::block_in_place(|| world.repo.run(&host, &dir.join("client"), &base, &names))
            .context("the latecomer fetching the set")?;
        let fetched = Instant::now();
        let updates = dir.join("state").join("announce-updates.txt");
        loop {
            let n: u32 = std::fs::read_to_string(&updates)
                .ok()
                .and_then(|t| t.split_whitespace().last().and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            // Its announcement followed, and the stopped volunteers'
            // sessions have expired: it is the only peer listed.
            if n >= 1 && tokio::task::block_in_place(|| world.directory())?.len() == 1 {
                break;
            }
            if fetched.elapsed() > Duration::from_secs(900) {
                bail!("the latecomer's announcement did not follow within 15 min");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let waited = fetched.elapsed().as_secs_f64();
        println!("the latecomer's announcement followed its store {waited:.0} s after its fetch");
        rows.push(
            world
                .case(
                    "40 ms, only a volunteer that started empty, not restarted",
                    args.runs,
                )
                .await?,
        );
        follow = Some(waited);
        v.stop().await?;
    }
    if wants("dead") || wants("alone") {
        for v in &mut world.volunteers {
            v.stop().await?;
        }
        if wants("dead") {
            rows.push(world.case("40 ms, every volunteer dead", args.runs).await?);
        }
        if wants("alone") {
            if let Some(p) = world.rendezvous.proc.take() {
                tokio::task::spawn_blocking(move || drop(p)).await?;
            }
            rows.push(world.case("40 ms, rendezvous down too", args.runs).await?);
        }
    }

    let (update, download) = match world.repo {
        Repo::Apt(_) => ("apt-get update", "apt-get download"),
        Repo::Pacman(_) => ("pacman -Sy", "pacman -Sw"),
    };
    println!(
        "\n{} packages, {} MiB, real {}; median of {} runs each way",
        args.packages,
        args.mib,
        world.repo.kind(),
        args.runs
    );
    println!(
        "| round trip | {download} straight | through the gateway | ratio | bytes from peers | \
         {update} straight | through the gateway | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2}x | {:.0} % | {:.2} s | {:.2} s | {:.2}x |",
            r.name,
            r.straight_download,
            r.download,
            r.download / r.straight_download,
            r.peers,
            r.straight_update,
            r.update,
            r.update / r.straight_update
        );
    }
    if let Some((announced, share)) = new_version {
        println!(
            "\nA new version published on the mirror: announced by every volunteer {announced:.0} s \
             later; a fresh home then got {share:.0} % of its bytes from peers"
        );
    }
    if let Some(waited) = follow {
        println!(
            "\nA volunteer that started empty announced what it fetched {waited:.0} s after its \
             fetch ended, without a restart"
        );
    }
    if let Some((bt, ours)) = bittorrent {
        println!(
            "\nBitTorrent (aria2, opentracker), the same files from the same {} hosts at 40 ms: \
             {bt:.2} s; {download} through the gateway: {ours:.2} s ({:.2}x the swarm's time)",
            args.volunteers,
            ours / bt
        );
    }
    Ok(())
}

/// A BitTorrent swarm of the package files: opentracker on the
/// rendezvous's host, an aria2 seeder on each volunteer's host.
struct TorrentSwarm {
    torrent: PathBuf,
    _tracker: anonmirror_testnet::testbed::Process,
    _seeders: Vec<anonmirror_testnet::testbed::Process>,
}

impl TorrentSwarm {
    /// aria2 on the home host fetches every file; the time it took.
    fn leech(&self, world: &World, run: usize) -> Result<f64> {
        let into = world.dir.join(format!("leech-{run}"));
        std::fs::create_dir_all(&into)?;
        let t = Instant::now();
        let status = world
            .home
            .spawn(
                std::process::Command::new("aria2c")
                    .args(ARIA2_COMMON)
                    // Bounded: a swarm that stops moving ends the run.
                    .args([
                        "--seed-time=0",
                        "--listen-port=6991",
                        "--bt-stop-timeout=60",
                    ])
                    .arg("-d")
                    .arg(&into)
                    .arg(&self.torrent)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()),
            )?
            .wait()?;
        let took = t.elapsed().as_secs_f64();
        if !status.success() {
            bail!("aria2c on the home host failed: {status}");
        }
        let got = std::fs::read_dir(into.join("pool"))?.count();
        if got != world.names.len() {
            bail!("aria2c fetched {got} files of {}", world.names.len());
        }
        let _ = std::fs::remove_dir_all(&into);
        Ok(took)
    }
}

/// What every aria2c here runs with: no DHT, no local discovery, no peer
/// exchange (only the tracker), no preallocation, quiet.
const ARIA2_COMMON: &[&str] = &[
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--file-allocation=none",
    "--check-certificate=false",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--bt-tracker-connect-timeout=5",
];

impl World {
    fn torrent_swarm(&self) -> Result<TorrentSwarm> {
        // The files, as one directory `pool/` (hard links to the
        // repository's).
        let seed = self.dir.join("seed");
        let pool = seed.join("pool");
        std::fs::create_dir_all(&pool)?;
        for p in self.repo.packages() {
            let name = p.file.file_name().context("a file name")?;
            std::fs::hard_link(&p.file, pool.join(name))?;
        }
        let rv_host = &self.rendezvous_host;
        let tracker_addr = std::net::SocketAddr::new(rv_host.addr().into(), 6969);
        let torrent = self.dir.join("pool.torrent");
        let made = std::process::Command::new("mktorrent")
            .arg("-a")
            .arg(format!("http://{tracker_addr}/announce"))
            .arg("-o")
            .arg(&torrent)
            .arg(&pool)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !made.success() {
            bail!("mktorrent failed: {made}");
        }
        // Debian's opentracker serves only the torrents its whitelist
        // names (by info hash).
        let shown = std::process::Command::new("aria2c")
            .arg("-S")
            .arg(&torrent)
            .output()?;
        let info_hash = String::from_utf8_lossy(&shown.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Info Hash: ").map(str::to_owned))
            .context("aria2c -S printed no info hash")?;
        let whitelist = self.dir.join("whitelist.txt");
        std::fs::write(&whitelist, format!("{info_hash}\n"))?;
        let conf = self.dir.join("opentracker.conf");
        std::fs::write(&conf, format!("access.whitelist {}\n", whitelist.display()))?;
        let tracker = rv_host.spawn(
            std::process::Command::new("opentracker")
                .arg("-f")
                .arg(&conf)
                .args(["-i", &rv_host.addr().to_string(), "-p", "6969"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )?;
        let mut seeders = Vec::new();
        for host in &self.volunteer_hosts {
            seeders.push(
                host.spawn(
                    std::process::Command::new("aria2c")
                        .args(ARIA2_COMMON)
                        .args([
                            "--seed-ratio=0.0",
                            "--bt-seed-unverified=true",
                            "--listen-port=6881",
                        ])
                        .arg("-d")
                        .arg(&seed)
                        .arg(&torrent)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null()),
                )?,
            );
        }
        // The seeders announce within a moment; the tracker answers the
        // leecher with whoever announced by then, so wait until each
        // seeder's port is open.
        for host in &self.volunteer_hosts {
            let at = std::net::SocketAddr::new(host.addr().into(), 6881);
            let mut up = false;
            for _ in 0..200 {
                if self
                    .home
                    .run(|| {
                        Ok(std::net::TcpStream::connect_timeout(
                            &at,
                            Duration::from_secs(1),
                        ))
                    })?
                    .is_ok()
                {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !up {
                bail!("an aria2 seeder did not open its port");
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(TorrentSwarm {
            torrent,
            _tracker: tracker,
            _seeders: seeders,
        })
    }
}

/// A NAT router's port-mapping server (PCP), installing each forward it
/// grants, on a runtime inside the router's namespace.
struct RouterMapping {
    server: Option<anonmirror_testnet::portmap::PortMapServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RouterMapping {
    fn start(nat: &anonmirror_testnet::testbed::Nat<'_>) -> Result<RouterMapping> {
        let router = nat.router().clone();
        let runtime = router.runtime()?;
        let (forwarder, public) = (nat.forwarder(), nat.public_addr());
        let server = router.run(|| {
            runtime.block_on(anonmirror_testnet::portmap::PortMapServer::start(
                std::net::Ipv4Addr::UNSPECIFIED,
                anonmirror_testnet::portmap::Speaks::Pcp,
                public,
                u32::MAX,
                Box::new(move |client, internal, external| {
                    if let Err(e) = forwarder.forward(external, client, internal) {
                        eprintln!("the router could not install a forward: {e}");
                    }
                }),
            ))
        })?;
        Ok(RouterMapping {
            server: Some(server),
            runtime: Some(runtime),
        })
    }
}

impl Drop for RouterMapping {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
