//! A verified item over the private Tor network against direct TCP
//! measured in the same run, and the cost of arti's bootstrap.
//!
//! The project's test harness (anonmirror-testnet) brings up a private Tor
//! network: three authorities, relays and exits, every one a `tor` process
//! on this machine inside a network namespace the benchmark makes. A peer
//! server holds one item of `--mib` MiB of random bytes and listens on
//! 10.77.0.1, the namespace's non-loopback address, as a volunteer on the
//! Internet would. Each case downloads the item `--runs` times (cases
//! interleaved within a run) with the overlay's swarm download, which
//! verifies every piece before the sink sees it:
//!
//! - **direct TCP**: the `tcp` transport, straight to 10.77.0.1;
//! - **arti, exit**: the `tor` transport, three hops and out of an exit;
//! - **tor SOCKS, exit**: the `tor-socks` transport, through a Tor
//!   daemon's SOCKS port;
//! - **arti, onion**: the `tor` transport to the same item served by an
//!   arti-hosted onion service (six hops, as a volunteer with
//!   `experimental_arti_onion_service` is reached);
//! - **tor SOCKS, onion**: the same onion service through the Tor daemon.
//!
//! Every Tor case first fetches once outside the clock (building its
//! circuit; for the onion cases also waiting for the fresh service to be
//! published), then times warm fetches, as a daemon that keeps its
//! client does. Reported: median time to the first verified piece
//! (TTFB: connection, Noise handshake, request, first piece), median
//! MiB/s, and the ratio of each to direct TCP.
//!
//! Then arti's bootstrap on the private network, with a fresh state and
//! cache directory (cold) and again with the directory a previous client
//! left (warm), `--runs` times each.
//!
//! The figures are for a Tor network on one machine: no latency between
//! relays, no competing traffic, no bandwidth limits. They say what Tor's
//! cells, crypto and flow control cost, not what the live network gives.
//!
//! Run: `bench/run tor` (installs tor when run as root; needs the
//! privileges to make a network namespace), or
//! `cargo run --release -p anonmirror-bench --features tor --bin tor`.
//! Never a pass/fail test: figures depend on the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonmirror_bench::{median, mib_per_sec};
use anonmirror_channel::noise::{ChannelParams, StaticKeypair};
use anonmirror_channel::transport::socks::SocksTransport;
use anonmirror_channel::transport::tor::{TorConfig, TorTransport};
use anonmirror_channel::transport::{Listener, TcpTransport, Transport};
use anonmirror_core::Contact;
use anonmirror_core::{Entropy, Epoch, ItemKey, OsEntropy, SystemClock};
use anonmirror_overlay::server::{self, ServerHandle};
use anonmirror_overlay::swarm::{self, PeerAddr, Sink, SwarmConfig};
use anonmirror_privacy::Level;
use anonmirror_store::{Origin, Store};
use anonmirror_testnet::{Namespace, TorNet};
use anyhow::{Context, Result, bail};
use clap::Parser;

/// The namespace-only address the peer listens on.
const PEER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));

/// How long the first fetch of a case may take (a fresh onion service
/// publishes its descriptor first).
const PATIENCE: Duration = Duration::from_secs(180);

/// A verified item over the private Tor network against direct TCP.
#[derive(Parser, Debug)]
struct Args {
    /// Size of the item in MiB.
    #[arg(long, default_value_t = 16)]
    mib: u64,
    /// Timed runs per case (and bootstraps per kind); medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 || args.mib == 0 {
        bail!("--runs and --mib must be at least 1");
    }
    // The namespace first, on this thread: the runtime's threads and every
    // tor process inherit it.
    let net = TorNet::shared().context("the private Tor network (needs root and tor)")?;
    Namespace::shared()?
        .add_address("10.77.0.1/24")
        .context("the peer's address")?;
    println!(
        "private Tor network up in {:.1} s",
        net.bring_up_time().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(net, &args))
}

async fn run(net: &'static TorNet, args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let item = Item::new(dir.path(), args.mib << 20)?;

    let bootstraps = bootstrap_costs(net, dir.path(), args.runs).await?;

    let tcp_listener = TcpTransport
        .listen(&Contact::Tcp(SocketAddr::new(PEER_IP, 0)))
        .await?;
    let (_tcp_server, tcp_peer) = serve(tcp_listener, &item)?;
    let host = arti(net, &dir.path().join("host")).await?;
    let onion_listener = host.host_onion_service(7879).await?;
    let (_onion_server, onion_peer) = serve(onion_listener, &item)?;

    let arti_client: Arc<dyn Transport> = Arc::new(arti(net, &dir.path().join("client")).await?);
    let daemon = net.start_client("bench-socks", &[])?;
    let socks: Arc<dyn Transport> = Arc::new(SocksTransport::new(daemon.socks)?);
    let direct: Arc<dyn Transport> = Arc::new(TcpTransport);

    let cases = [
        ("direct TCP", direct, tcp_peer.clone()),
        ("arti, exit", arti_client.clone(), tcp_peer.clone()),
        ("tor SOCKS, exit", socks.clone(), tcp_peer),
        ("arti, onion", arti_client, onion_peer.clone()),
        ("tor SOCKS, onion", socks, onion_peer),
    ];
    for (name, dialer, peer) in &cases {
        let started = Instant::now();
        let deadline = started + PATIENCE;
        loop {
            match fetch(dialer.clone(), peer, &item).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{name}: not yet ({e:#}); retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e.context(format!("{name}: no fetch within {PATIENCE:?}"))),
            }
        }
        println!(
            "{name}: first fetch (circuit, publication) {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }

    let mut ttfb = vec![Vec::new(); cases.len()];
    let mut rate = vec![Vec::new(); cases.len()];
    for run in 0..args.runs {
        for (i, (name, dialer, peer)) in cases.iter().enumerate() {
            let t = fetch(dialer.clone(), peer, &item)
                .await
                .with_context(|| format!("{name}, run {run}"))?;
            ttfb[i].push(t.first_piece.as_secs_f64() * 1e3);
            rate[i].push(mib_per_sec(item.size, t.total));
        }
    }

    println!(
        "\n{} MiB item, verified, {} runs per case (medians):\n",
        args.mib, args.runs
    );
    println!("| Path | TTFB | vs TCP | Throughput | vs TCP |");
    println!("| --- | --- | --- | --- | --- |");
    let base_ttfb = median(&ttfb[0]).unwrap_or(f64::NAN);
    let base_rate = median(&rate[0]).unwrap_or(f64::NAN);
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let t = median(&ttfb[i]).unwrap_or(f64::NAN);
        let r = median(&rate[i]).unwrap_or(f64::NAN);
        println!(
            "| {name} | {t:.1} ms | {:.1}× | {r:.1} MiB/s | {:.3}× |",
            t / base_ttfb,
            r / base_rate
        );
    }
    println!(
        "\narti bootstrap on the private network ({} runs):",
        args.runs
    );
    println!(
        "- cold (fresh state and cache): median {:.2} s, runs {}",
        median(&bootstraps.cold).unwrap_or(f64::NAN),
        seconds(&bootstraps.cold)
    );
    println!(
        "- warm (state and cache of a previous client): median {:.2} s, runs {}",
        median(&bootstraps.warm).unwrap_or(f64::NAN),
        seconds(&bootstraps.warm)
    );
    Ok(())
}

fn seconds(samples: &[f64]) -> String {
    let v: Vec<String> = samples.iter().map(|s| format!("{s:.2}")).collect();
    v.join(", ")
}

struct Bootstraps {
    cold: Vec<f64>,
    warm: Vec<f64>,
}

/// Bootstraps arti `runs` times in fresh directories, each followed by a
/// second client in the directory the first left.
async fn bootstrap_costs(net: &TorNet, dir: &Path, runs: usize) -> Result<Bootstraps> {
    let mut b = Bootstraps {
        cold: Vec::new(),
        warm: Vec::new(),
    };
    for run in 0..runs {
        let d = dir.join(format!("bootstrap-{run}"));
        let started = Instant::now();
        let first = arti(net, &d).await?;
        b.cold.push(started.elapsed().as_secs_f64());
        drop(first);
        let started = Instant::now();
        let second = arti(net, &d).await?;
        b.warm.push(started.elapsed().as_secs_f64());
        drop(second);
    }
    Ok(b)
}

/// An arti client of the private network, its files under `dir`.
async fn arti(net: &TorNet, dir: &Path) -> Result<TorTransport> {
    std::fs::create_dir_all(dir)?;
    let config_file = dir.join("arti.toml");
    std::fs::write(
        &config_file,
        net.arti_config_toml(&dir.join("arti-state"), &dir.join("arti-cache")),
    )?;
    let mut config = TorConfig::new(dir.join("arti-state"), dir.join("arti-cache"));
    config.arti_config = Some(config_file);
    config.bootstrap_timeout = PATIENCE;
    Ok(TorTransport::bootstrap(&config, |_| {}).await?)
}

/// One item in a fresh store.
struct Item {
    store: Store,
    key: ItemKey,
    size: u64,
}

impl Item {
    fn new(dir: &Path, size: u64) -> Result<Item> {
        let mut bytes = vec![0u8; usize::try_from(size)?];
        OsEntropy.fill(&mut bytes);
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let key = ItemKey(digest.as_ref().try_into()?);
        let store = Store::open(&dir.join("store"), 1 << 32, Arc::new(SystemClock))?;
        store.insert(&key, size, Origin::Import, &bytes[..])?;
        Ok(Item { store, key, size })
    }
}

fn params() -> ChannelParams {
    ChannelParams::new(Level::Balanced, Epoch(1))
}

/// A peer server for `item` on `listener`.
fn serve<L>(listener: L, item: &Item) -> Result<(ServerHandle, PeerAddr)>
where
    L: Listener + 'static,
    L::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let keypair = StaticKeypair::generate()?;
    let key = keypair.public();
    let server = server::spawn(
        listener,
        item.store.clone(),
        keypair,
        params(),
        Default::default(),
    )?;
    let contact = server.contact().clone();
    Ok((server, PeerAddr { contact, key }))
}

/// What one download took.
struct Timing {
    first_piece: Duration,
    total: Duration,
}

/// Counts verified bytes and notes when the first arrived.
struct Clocked {
    started: Instant,
    first: Option<Duration>,
    len: u64,
}

impl Sink for Clocked {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.first.get_or_insert_with(|| self.started.elapsed());
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.first = None;
        self.len = 0;
        Ok(())
    }
}

/// Downloads `item` from `peer` through `dialer` once.
async fn fetch(dialer: Arc<dyn Transport>, peer: &PeerAddr, item: &Item) -> Result<Timing> {
    let transport = dialer;
    let mut cfg = SwarmConfig::new(params());
    cfg.connect_timeout = Duration::from_secs(60);
    cfg.stall_timeout = Duration::from_secs(60);
    let mut sink = Clocked {
        started: Instant::now(),
        first: None,
        len: 0,
    };
    swarm::download(
        &transport,
        &cfg,
        item.key,
        item.size,
        std::slice::from_ref(peer),
        &mut sink,
    )
    .await?;
    let total = sink.started.elapsed();
    if sink.len != item.size {
        bail!("{} of {} bytes", sink.len, item.size);
    }
    Ok(Timing {
        first_piece: sink.first.unwrap_or(total),
        total,
    })
}
