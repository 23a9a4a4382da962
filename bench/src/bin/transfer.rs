//! Item transfer over loopback, verified end to end, against nginx and raw
//! TCP measured in the same run.
//!
//! One item of `--mib` MiB of random bytes is written to a temporary
//! directory (on the machine's disk; after the first read it is in the page
//! cache, as a popular package is), then fetched, each case `--runs` times,
//! cases interleaved within a run, into a file in the same directory:
//!
//! - **nginx**: Debian's nginx on 127.0.0.1 (`sendfile on`, as Debian's
//!   default configuration), fetched by a plain HTTP/1.1 client written
//!   here that copies the body into the output file;
//! - **raw TCP**: a server here that reads the file in 1 MiB blocks and
//!   writes them to the socket; the client copies them into the file;
//! - **anonmirror, 1 peer**: the peer server (store, Noise channel, wire
//!   protocol) and the swarm download, which verifies every 16 KiB chunk
//!   group and the whole SHA-256 before the last byte reaches the file;
//! - **anonmirror, 4 peers**: the same from four peer servers at once.
//!
//! The clock runs from the request to the output file's last byte written
//! (not fsynced: no case fsyncs). Reported: median MiB/s per case, and
//! ratios to nginx and raw TCP.
//!
//! Every case writes over the same output file in place, and a round of
//! every case goes unmeasured first (`--warmup`). This machine is a
//! virtual machine whose kernel hands freed memory back to the host at
//! once (virtio-balloon free page reporting): a new file's page-cache
//! pages then cost a host fault each, several times the copy itself (the
//! same case measured 5 and 12 cycles/byte in one process, depending on
//! which pages it met), and the cost lands on whichever case allocates.
//! Writing over cached pages takes that out of every case alike.
//!
//! Then the upload limit: a peer server capped at `--cap-mib` MiB/s serves
//! 50 concurrent clients; the aggregate rate is reported against the cap.
//!
//! Run: `bench/run transfer` (installs nginx when run as root), or
//! `cargo run --release -p anonmirror-bench --bin transfer` with nginx
//! installed. Never a pass/fail test: figures depend on the machine.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonmirror_bench::gateway::procs::{Place, Proc, start_nginx};
use anonmirror_bench::{median, mib_per_sec};
use anonmirror_channel::noise::{ChannelParams, StaticKeypair};
use anonmirror_channel::transport::TcpTransport;
use anonmirror_core::Contact;
use anonmirror_core::{Entropy, Epoch, ItemKey, OsEntropy, SystemClock};
use anonmirror_overlay::server::{self, ServerConfig, ServerHandle};
use anonmirror_overlay::swarm::{self, FileSink, PeerAddr, SwarmConfig};
use anonmirror_overlay::wire::{Message, Sender};
use anonmirror_privacy::Level;
use anonmirror_store::Store;
use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Verified item transfer against nginx and raw TCP over loopback.
#[derive(Parser, Debug)]
struct Args {
    /// Size of the item in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Runs per case; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Unmeasured rounds of every case first (see the module doc).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Upload cap for the limit measurement, MiB/s.
    #[arg(long, default_value_t = 50)]
    cap_mib: u64,
    /// Cases to run, by name: nginx, raw, one, four (default: all).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Skip the upload-cap measurement.
    #[arg(long)]
    no_cap: bool,
    /// Where to put the item and outputs (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only measure each stage of the verified path alone on one thread,
    /// in memory (cycles per byte), and exit.
    #[arg(long)]
    stages: bool,
}

fn params() -> ChannelParams {
    ChannelParams::new(Level::Open, Epoch(1))
}

/// A plain HTTP/1.1 GET, body copied into `out`.
async fn http_get(port: u16, path: &str, out: &Path) -> Result<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let body_start;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("nginx closed before its headers ended");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body_start = i + 4;
            break;
        }
    }
    let text = String::from_utf8_lossy(&head[..body_start]).to_lowercase();
    if !text.starts_with("http/1.1 200") {
        bail!("nginx answered: {}", text.lines().next().unwrap_or(""));
    }
    let len: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, output(out)?);
    file.write_all(&head[body_start..])?;
    let mut got = (head.len() - body_start) as u64;
    while got < len {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("nginx closed after {got} of {len} bytes");
        }
        file.write_all(&buf[..n])?;
        got += n as u64;
    }
    file.flush()?;
    Ok(got)
}

/// A raw TCP server: on each connection, the file in 1 MiB blocks.
async fn raw_server(file: PathBuf) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let file = file.clone();
            tokio::spawn(async move {
                let Ok(f) = std::fs::File::open(&file) else {
                    return;
                };
                let Ok(len) = f.metadata().map(|m| m.len()) else {
                    return;
                };
                let f = Arc::new(f);
                let mut at = 0u64;
                while at < len {
                    let n = (len - at).min(1 << 20) as usize;
                    let f2 = f.clone();
                    let Ok(Ok(buf)) = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n];
                        f2.read_exact_at(&mut buf, at).map(|()| buf)
                    })
                    .await
                    else {
                        return;
                    };
                    if s.write_all(&buf).await.is_err() {
                        return;
                    }
                    at += n as u64;
                }
            });
        }
    });
    Ok(addr)
}

/// The output file, opened for writing over its cached pages in place
/// (see the module doc); every case writes all of it.
fn output(out: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(out)
}

async fn raw_get(addr: SocketAddr, len: u64, out: &Path) -> Result<u64> {
    let mut s = TcpStream::connect(addr).await?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, output(out)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < len {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("raw server closed after {got} bytes");
        }
        file.write_all(&buf[..n])?;
        got += n as u64;
    }
    file.flush()?;
    Ok(got)
}

async fn peer(
    store_dir: &Path,
    item: &Path,
    key: &ItemKey,
    size: u64,
    cfg: ServerConfig,
) -> Result<(ServerHandle, PeerAddr)> {
    let store = Store::open(store_dir, u64::MAX, Arc::new(SystemClock))?;
    store.import(key, size, item)?;
    let keypair = StaticKeypair::generate()?;
    let public = keypair.public();
    let listener = TcpTransport
        .listen(&Contact::from(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await?;
    let handle = server::spawn(listener, store, keypair, params(), cfg)?;
    let addr = PeerAddr {
        contact: handle.contact().clone(),
        key: public,
    };
    Ok((handle, addr))
}

async fn swarm_get(peers: &[PeerAddr], key: ItemKey, size: u64, out: &Path) -> Result<u64> {
    let mut sink = FileSink::new(output(out)?);
    let report = swarm::download(
        &TcpTransport,
        &SwarmConfig::new(params()),
        key,
        size,
        peers,
        &mut sink,
    )
    .await?;
    sink.into_file()?;
    if report.culprits().next().is_some() {
        bail!("an honest peer was blamed: {:?}", report.peers);
    }
    Ok(size)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    Nginx,
    RawTcp,
    OnePeer,
    FourPeers,
}

impl Case {
    const ALL: [Case; 4] = [Case::Nginx, Case::RawTcp, Case::OnePeer, Case::FourPeers];
    fn short(self) -> &'static str {
        match self {
            Case::Nginx => "nginx",
            Case::RawTcp => "raw",
            Case::OnePeer => "one",
            Case::FourPeers => "four",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::Nginx => "nginx + plain HTTP client",
            Case::RawTcp => "raw TCP",
            Case::OnePeer => "anonmirror, 1 peer, verified",
            Case::FourPeers => "anonmirror, 4 peers, verified",
        }
    }
}

fn sha256_file(path: &Path) -> Result<ItemKey> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ItemKey(ctx.finish().as_ref().try_into()?))
}

async fn upload_limit(
    dir: &Path,
    item: &Path,
    key: &ItemKey,
    size: u64,
    cap_mib: u64,
) -> Result<f64> {
    let cap = cap_mib << 20;
    let cfg = ServerConfig {
        max_clients: 64,
        upload_rate: Some(cap),
        ..ServerConfig::default()
    };
    let (handle, addr) = peer(&dir.join("limit-store"), item, key, size, cfg).await?;
    // Each client asks for an equal share of about five seconds' worth.
    let per_client = (cap * 5 / 50).min(size);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50u64 {
        let addr = addr.clone();
        let key = *key;
        tasks.spawn(async move {
            let stream = TcpTransport.open(&addr.contact).await?;
            let mut ch = anonmirror_channel::noise::connect(
                stream,
                &addr.key,
                &params(),
                Duration::from_secs(30),
            )
            .await?;
            let offset = (i * per_client) % (size - per_client + 1);
            let req = Message::Request {
                item: key,
                offset,
                len: per_client,
                want_meta: false,
            };
            ch.send(&req.encode()?).await?;
            let mut got = 0u64;
            let mut buf = Vec::new();
            while got < per_client {
                if !ch.recv_into(&mut buf).await? {
                    bail!("closed early");
                }
                match Message::decode_from(Sender::Server, &buf)? {
                    Message::Data { bytes, .. } => got += bytes.len() as u64,
                    other => bail!("unexpected {}", other.name()),
                }
            }
            Ok::<u64, anyhow::Error>(got)
        });
    }
    let mut total = 0u64;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    handle.shutdown().await;
    Ok(rate / cap as f64)
}

/// CPU time (user + system) used so far by process `pid`, in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks (100 per second
    // on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by this process and by nginx's workers.
fn cpu_now(nginx: &Proc) -> f64 {
    let master = nginx.child.id();
    let workers = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default();
    cpu_secs("self") + workers.split_whitespace().map(cpu_secs).sum::<f64>()
}

/// The clock rate the kernel reports, in Hz (for cycles per byte).
fn cpu_hz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("cpu MHz"))
                .and_then(|l| {
                    l.trim_start_matches([' ', '\t', ':'])
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |mhz| mhz * 1e6)
}

/// A Noise channel's two directions, in memory: what one end seals, the
/// other opens.
fn frame_pair() -> Result<(
    anonmirror_channel::noise::FrameSender,
    anonmirror_channel::noise::FrameReceiver,
)> {
    use anonmirror_channel::noise::Session;
    let keypair = StaticKeypair::generate()?;
    let mut plain = Vec::new();
    let mut i = Session::initiator(&keypair.public(), &params())?;
    let mut r = Session::responder(&keypair, &params())?;
    r.handle_input(i.outgoing(), &mut plain)?;
    i.consume_outgoing(usize::MAX);
    i.handle_input(r.outgoing(), &mut plain)?;
    r.consume_outgoing(usize::MAX);
    let (tx, _) = i.split()?;
    let (_, rx) = r.split()?;
    Ok((tx, rx))
}

/// Each stage of the verified path alone, one thread, in memory: the
/// per-byte CPU cost the two cores share during a transfer. Best of 5.
fn stages(dir: &Path, mib: u64) -> Result<()> {
    use anonmirror_channel::noise::MAX_MESSAGE;
    use anonmirror_store::verify::Tree;
    let total = (mib.min(256) << 20) as usize;
    let mut data = vec![0u8; total];
    OsEntropy.fill(&mut data);
    let hz = cpu_hz();
    let mut rows: Vec<(&str, Duration)> = Vec::new();
    fn best(f: &mut dyn FnMut() -> Result<Duration>) -> Result<Duration> {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            best = best.min(f()?);
        }
        Ok(best)
    }
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<Duration> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed())
    };
    rows.push((
        "SHA-256 (ring, SHA-NI), 1 MiB updates",
        best(&mut || {
            timed(&mut || {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                for c in data.chunks(1 << 20) {
                    ctx.update(c);
                }
                std::hint::black_box(ctx.finish());
                Ok(())
            })
        })?,
    ));
    // The outboard as a peer sends it: from a store that imported the bytes.
    let path = dir.join("stages.bin");
    std::fs::write(&path, &data)?;
    let key = sha256_file(&path)?;
    let store = Store::open(&dir.join("stages-store"), u64::MAX, Arc::new(SystemClock))?;
    store.import(&key, total as u64, &path)?;
    let outboard = store.outboard(&key)?.context("outboard")?;
    let tree = Tree::new(
        total as u64,
        *blake3::hash(&data).as_bytes(),
        outboard.to_vec(),
    )?;
    rows.push((
        "BLAKE3 verify_group, 16 KiB groups",
        best(&mut || {
            timed(&mut || {
                for g in 0..tree.groups() {
                    let r = tree.group_range(g);
                    if !tree.verify_group(g, &data[r.start as usize..r.end as usize]) {
                        bail!("group {g} failed");
                    }
                }
                Ok(())
            })
        })?,
    ));
    let mut big = vec![0u8; total + total / MAX_MESSAGE * 32 + 64];
    rows.push((
        "memcpy, 65 519-byte pieces into a large buffer",
        best(&mut || {
            timed(&mut || {
                let mut at = 0;
                for c in data.chunks(MAX_MESSAGE) {
                    big[at..at + c.len()].copy_from_slice(c);
                    at += c.len();
                }
                std::hint::black_box(&big);
                Ok(())
            })
        })?,
    ));
    rows.push((
        "Noise seal, 65 519-byte messages (snow: copy + AES-GCM)",
        best(&mut || {
            let (mut tx, _) = frame_pair()?;
            timed(&mut || {
                for c in data.chunks(MAX_MESSAGE) {
                    tx.write_message(c)?;
                    let n = tx.outgoing().len();
                    std::hint::black_box(tx.outgoing());
                    tx.consume_outgoing(n);
                }
                Ok(())
            })
        })?,
    ));
    rows.push((
        "Noise open, 65 519-byte messages (snow: copy + AES-GCM)",
        best(&mut || {
            let (mut tx, mut rx) = frame_pair()?;
            let mut frames = Vec::with_capacity(big.len());
            for c in data.chunks(MAX_MESSAGE) {
                tx.write_message(c)?;
                frames.extend_from_slice(tx.outgoing());
                let n = tx.outgoing().len();
                tx.consume_outgoing(n);
            }
            let mut plain = Vec::new();
            timed(&mut || {
                let mut at = 0;
                while at < frames.len() {
                    at += rx.handle_input(&frames[at..], &mut plain)?.consumed;
                }
                Ok(())
            })
        })?,
    ));
    let out = dir.join("stages-out.bin");
    rows.push((
        "write into the page cache, 1 MiB writes",
        best(&mut || {
            let mut f = std::fs::File::create(&out)?;
            timed(&mut || {
                for c in data.chunks(1 << 20) {
                    f.write_all(c)?;
                }
                Ok(())
            })
        })?,
    ));
    let f = std::fs::File::open(&path)?;
    rows.push((
        "pread from the page cache, 1 MiB reads",
        best(&mut || {
            timed(&mut || {
                for (i, c) in big[..total].chunks_mut(1 << 20).enumerate() {
                    f.read_exact_at(c, (i as u64) << 20)?;
                }
                Ok(())
            })
        })?,
    ));
    println!(
        "\n{} MiB in memory, one thread, best of 5, {:.0} MHz",
        total >> 20,
        hz / 1e6
    );
    println!("| stage | MiB/s | cycles/byte |");
    println!("| --- | ---: | ---: |");
    for (name, d) in &rows {
        let bps = total as f64 / d.as_secs_f64();
        println!(
            "| {name} | {:.0} | {:.2} |",
            bps / (1 << 20) as f64,
            hz / bps
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    // nginx runs its workers as `nobody`: everything on the path must be
    // readable and searchable by others.
    for p in [&dir, &www] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let item = www.join("item.bin");
    let size = args.mib << 20;
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&item)?);
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..args.mib {
            OsEntropy.fill(&mut block);
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    std::fs::set_permissions(&item, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    if args.stages {
        return stages(&dir, args.mib);
    }
    let key = sha256_file(&item)?;

    let (nginx, nginx_addr) = start_nginx(&Place::Loopback, &www, &dir.join("nginx"), None)?;
    let raw = raw_server(item.clone()).await?;
    let (h1, p1) = peer(
        &dir.join("store-0"),
        &item,
        &key,
        size,
        ServerConfig::default(),
    )
    .await?;
    let mut four = vec![p1.clone()];
    let mut handles = vec![h1];
    for i in 1..4 {
        let (h, p) = peer(
            &dir.join(format!("store-{i}")),
            &item,
            &key,
            size,
            ServerConfig::default(),
        )
        .await?;
        four.push(p);
        handles.push(h);
    }

    let out = dir.join("out.bin");
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Case::ALL.len()];
    let mut cpu_samples: Vec<Vec<f64>> = vec![Vec::new(); Case::ALL.len()];
    for round in 0..args.warmup + args.runs {
        let run = round.checked_sub(args.warmup);
        for (c, case) in Case::ALL.into_iter().enumerate() {
            if !args.cases.is_empty() && !args.cases.iter().any(|n| n == case.short()) {
                continue;
            }
            let cpu_before = cpu_now(&nginx);
            let start = Instant::now();
            let got = match case {
                Case::Nginx => http_get(nginx_addr.port(), "item.bin", &out).await?,
                Case::RawTcp => raw_get(raw, size, &out).await?,
                Case::OnePeer => swarm_get(&four[..1], key, size, &out).await?,
                Case::FourPeers => swarm_get(&four, key, size, &out).await?,
            };
            let took = start.elapsed();
            let cpu = cpu_now(&nginx) - cpu_before;
            if got != size {
                bail!("{}: {got} of {size} bytes", case.name());
            }
            let speed = mib_per_sec(size, took);
            // Cycles per byte over both ends (both run here; nginx's
            // workers counted for its case).
            let cpb = cpu * cpu_hz() / size as f64;
            let label = run.map_or_else(|| "warm-up".to_owned(), |r| format!("run {r}"));
            eprintln!(
                "{label:7} {:32} {speed:8.0} MiB/s {cpu:6.2} CPU s {cpb:5.2} cycles/byte",
                case.name()
            );
            if run.is_some() {
                samples[c].push(speed);
                cpu_samples[c].push(cpb);
            }
        }
        // The output of the last case must be the item itself.
        if sha256_file(&out)? != key {
            bail!("the fetched copy differs from the item");
        }
    }
    let med: Vec<f64> = samples.iter().map(|s| median(s).unwrap_or(0.0)).collect();
    let med_cpu: Vec<f64> = cpu_samples
        .iter()
        .map(|s| median(s).unwrap_or(0.0))
        .collect();
    println!(
        "\n{} MiB item over 127.0.0.1, median of {} runs",
        args.mib, args.runs
    );
    println!("| case | MiB/s | vs nginx | vs raw TCP | CPU cycles/byte |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (c, case) in Case::ALL.into_iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.2}x | {:.2}x | {:.2} |",
            case.name(),
            med[c],
            med[c] / med[0],
            med[c] / med[1],
            med_cpu[c]
        );
    }
    for h in handles {
        h.shutdown().await;
    }
    drop(nginx);

    if args.no_cap {
        return Ok(());
    }
    let ratio = upload_limit(&dir, &item, &key, size, args.cap_mib).await?;
    println!(
        "\nupload cap {} MiB/s, 50 concurrent clients: measured {:.1} MiB/s = {:.3}x the cap",
        args.cap_mib,
        ratio * args.cap_mib as f64,
        ratio
    );
    Ok(())
}
