//! Noise channel throughput and handshake cost over loopback, against raw
//! TCP measured in the same run.
//!
//! For each run and each case (raw TCP, then the channel with every suite
//! considered), a sender task streams `--mib` MiB in maximum-size messages
//! to a receiver task over 127.0.0.1; the clock runs from the established
//! connection to the receiver's one-byte acknowledgement of the last byte,
//! so connection set-up is excluded. Cases alternate within each run so
//! that drift on a shared machine hits them alike. The report gives the
//! median MiB/s of each case and its ratio to raw TCP's median.
//!
//! Then it measures the sans-I/O core alone, in memory on one thread
//! (encrypt with a `FrameSender`, decrypt with a `FrameReceiver`, no
//! socket), which isolates the suites' cost from the loopback's; there the
//! baseline is the alternative suite (`Suite::ALL`'s last).
//!
//! Last it times `--handshakes` sequential connections per case (TCP
//! connect alone as the baseline, TCP connect plus the Noise handshake for
//! each suite) and reports the median.
//!
//! Run it in release: `cargo run --release -p anonmirror-bench --bin noise`.
//! It must never be used as a pass/fail test: figures depend on the machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonmirror_bench::{median, mib_per_sec};
use anonmirror_channel::noise::{MAX_MESSAGE, Session};
use anonmirror_channel::transport::Listener as _;
use anonmirror_channel::{ChannelParams, StaticKeypair, Suite, TcpTransport, accept, connect};
use anonmirror_core::Contact;
use anonmirror_core::Epoch;
use anonmirror_privacy::Level;
use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Noise channel throughput against raw TCP over loopback.
#[derive(Parser, Debug)]
struct Args {
    /// MiB transferred per case per run.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Runs per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Sequential handshakes timed per case.
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
}

/// What is measured.
#[derive(Clone, Copy, Debug)]
enum Case {
    RawTcp,
    Noise(Suite),
}

impl Case {
    fn all() -> Vec<Case> {
        let mut cases = vec![Case::RawTcp];
        cases.extend(Suite::ALL.into_iter().map(Case::Noise));
        cases
    }

    fn name(self) -> &'static str {
        match self {
            Case::RawTcp => "raw TCP",
            Case::Noise(s) => s.protocol_name(),
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn params(suite: Suite) -> ChannelParams {
    ChannelParams::new(Level::Open, Epoch(1)).with_suite(suite)
}

/// A connected pair of TCP streams on loopback, both with TCP_NODELAY.
async fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let t = TcpTransport;
    let mut listener = t
        .listen(&Contact::from(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await?;
    let at = listener.local_contact()?;
    let (client, accepted) = tokio::join!(t.open(&at), listener.accept());
    Ok((client?, accepted?.0))
}

/// Moves `total` bytes one way and returns the time from the first write
/// to the receiver's acknowledgement.
async fn transfer(case: Case, total: u64) -> Result<Duration> {
    let (client, server) = tcp_pair().await?;
    let payload = vec![0x5a_u8; MAX_MESSAGE];
    match case {
        Case::RawTcp => {
            let receiver = tokio::spawn(async move {
                let mut server = server;
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                while got < total {
                    let n = server.read(&mut buf).await?;
                    if n == 0 {
                        bail!("raw TCP sender stopped after {got} bytes");
                    }
                    got += n as u64;
                }
                server.write_all(&[1]).await?;
                Ok(())
            });
            let mut client = client;
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                let n = chunk_len(total - sent);
                client.write_all(&payload[..n]).await?;
                sent += n as u64;
            }
            let mut ack = [0u8; 1];
            client.read_exact(&mut ack).await?;
            let elapsed = start.elapsed();
            receiver.await??;
            Ok(elapsed)
        }
        Case::Noise(suite) => {
            let keypair = StaticKeypair::generate()?;
            let responder = keypair.public();
            let receiver = tokio::spawn(async move {
                let mut ch = accept(server, &keypair, &params(suite), HANDSHAKE_TIMEOUT).await?;
                let mut message = Vec::new();
                let mut got = 0u64;
                while got < total {
                    if !ch.recv_into(&mut message).await? {
                        bail!("noise sender stopped after {got} bytes");
                    }
                    got += message.len() as u64;
                }
                ch.send(&[1]).await?;
                Ok(())
            });
            let mut ch = connect(client, &responder, &params(suite), HANDSHAKE_TIMEOUT).await?;
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                let n = chunk_len(total - sent);
                ch.send(&payload[..n]).await?;
                sent += n as u64;
            }
            let ack = ch.recv().await?.context("no acknowledgement")?;
            let elapsed = start.elapsed();
            if ack != [1] {
                bail!("bad acknowledgement");
            }
            receiver.await??;
            Ok(elapsed)
        }
    }
}

fn chunk_len(left: u64) -> usize {
    usize::try_from(left).map_or(MAX_MESSAGE, |left| left.min(MAX_MESSAGE))
}

/// Encrypts and decrypts `total` bytes in memory with `suite`, one frame at
/// a time on one thread, returning the time taken.
fn in_memory(suite: Suite, total: u64) -> Result<Duration> {
    let payload = vec![0x5a_u8; MAX_MESSAGE];
    let mut plain = Vec::new();
    let keypair = StaticKeypair::generate()?;
    let p = params(suite);
    let mut i = Session::initiator(&keypair.public(), &p)?;
    let mut r = Session::responder(&keypair, &p)?;
    r.handle_input(i.outgoing(), &mut plain)?;
    i.consume_outgoing(usize::MAX);
    i.handle_input(r.outgoing(), &mut plain)?;
    r.consume_outgoing(usize::MAX);
    let (mut tx, _) = i.split()?;
    let (_, mut rx) = r.split()?;
    let start = Instant::now();
    let mut done = 0u64;
    while done < total {
        let n = chunk_len(total - done);
        tx.write_message(&payload[..n])?;
        let frame = tx.outgoing();
        let progress = rx.handle_input(frame, &mut plain)?;
        if progress.consumed != frame.len() || plain.len() != n {
            bail!("in-memory frame not decrypted whole");
        }
        let len = frame.len();
        tx.consume_outgoing(len);
        done += n as u64;
    }
    Ok(start.elapsed())
}

/// Time of one connection set-up: TCP connect (and accept), plus the
/// Noise handshake for the channel cases.
async fn setup(case: Case) -> Result<Duration> {
    let keypair = StaticKeypair::generate()?;
    let start = Instant::now();
    let (client, server) = tcp_pair().await?;
    if let Case::Noise(suite) = case {
        let p = params(suite);
        let responder = keypair.public();
        let (c, s) = tokio::join!(
            connect(client, &responder, &p, HANDSHAKE_TIMEOUT),
            accept(server, &keypair, &p, HANDSHAKE_TIMEOUT)
        );
        c?;
        s?;
    }
    Ok(start.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let total = args.mib * 1024 * 1024;
    let cases = Case::all();
    println!(
        "noise channel throughput over loopback: {} MiB per case, {} runs, {} messages of {} bytes",
        args.mib,
        args.runs,
        total.div_ceil(MAX_MESSAGE as u64),
        MAX_MESSAGE
    );
    let mut rates = vec![Vec::new(); cases.len()];
    for run in 1..=args.runs {
        for (i, case) in cases.iter().enumerate() {
            let elapsed = transfer(*case, total).await?;
            let rate = mib_per_sec(total, elapsed);
            println!("  run {run}: {:<34} {rate:>8.0} MiB/s", case.name());
            rates[i].push(rate);
        }
    }
    let medians: Vec<f64> = rates
        .iter()
        .map(|r| median(r).context("no runs"))
        .collect::<Result<_>>()?;
    let baseline = medians[0];
    println!();
    println!(
        "{:<34} {:>12} {:>10} {:>13}",
        "case", "median MiB/s", "vs raw TCP", "min..max"
    );
    for ((case, m), r) in cases.iter().zip(&medians).zip(&rates) {
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<34} {m:>12.0} {:>9.2}x {lo:>6.0}..{hi:<6.0}",
            case.name(),
            m / baseline
        );
    }

    // The suites against each other, without the loopback: the last
    // suite considered is the baseline of this table.
    let mut core_rates: Vec<Vec<f64>> = vec![Vec::new(); Suite::ALL.len()];
    for _ in 0..args.runs {
        for (i, suite) in Suite::ALL.into_iter().enumerate() {
            core_rates[i].push(mib_per_sec(total, in_memory(suite, total)?));
        }
    }
    let core_medians: Vec<f64> = core_rates
        .iter()
        .map(|r| median(r).context("no runs"))
        .collect::<Result<_>>()?;
    let alternative = core_medians.last().copied().context("no suites")?;
    println!();
    println!(
        "{:<34} {:>12} {:>10}",
        "sans-I/O core, one thread, in memory", "median MiB/s", "vs last"
    );
    for (suite, m) in Suite::ALL.into_iter().zip(&core_medians) {
        println!(
            "{:<34} {m:>12.0} {:>9.2}x",
            suite.protocol_name(),
            m / alternative
        );
    }

    let mut setups = vec![Vec::new(); cases.len()];
    for _ in 0..args.handshakes {
        for (i, case) in cases.iter().enumerate() {
            setups[i].push(setup(*case).await?.as_secs_f64() * 1e6);
        }
    }
    println!();
    println!(
        "{:<34} {:>12} {:>10}",
        "connection set-up", "median µs", "vs TCP"
    );
    let base = median(&setups[0]).context("no handshakes")?;
    for (case, s) in cases.iter().zip(&setups) {
        let m = median(s).context("no handshakes")?;
        let name = match case {
            Case::RawTcp => "TCP connect",
            Case::Noise(s) => s.protocol_name(),
        };
        println!("{name:<34} {m:>12.0} {:>9.2}x", m / base);
    }
    Ok(())
}
