//! `anonmirror fetch`: download one item from peers, verified.
//!
//! `--peer ADDR=KEYHEX` names each peer (as `anonmirror serve` prints
//! them); `--item` and `--size` are the index's SHA-256 and size. Bytes are
//! verified per 16 KiB chunk group as they arrive and the whole file
//! against the SHA-256 at the end; the output file appears only when it
//! verified. A progress bar shows on a terminal; a summary of bytes per
//! peer is printed at the end.
//!
//! Exit codes: 0 the item arrived and verified; 2 bad arguments; 3 no peer
//! could serve it (the summary says what each did).

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use anonmirror_channel::transport::TcpTransport;
use anonmirror_core::Contact;
use anonmirror_core::{ItemKey, PeerKey};
use anonmirror_overlay::swarm::{
    self, FileSink, Outcome, PeerAddr, Sink, SwarmConfig, SwarmReport,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::serve::ChannelArgs;
use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};

/// A peer on the command line: `ADDR=KEYHEX`.
#[derive(Clone, Debug)]
pub struct PeerArg(PeerAddr);

impl FromStr for PeerArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, key) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected ADDR=KEYHEX"))?;
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("`{addr}`: {e}"))?;
        let key: PeerKey = key.parse().map_err(|e| format!("{e}"))?;
        Ok(PeerArg(PeerAddr {
            contact: Contact::from(addr),
            key,
        }))
    }
}

/// `anonmirror fetch`
#[derive(Debug, Args)]
pub struct FetchCmd {
    /// A peer, as ADDR=KEYHEX; repeat for several.
    #[arg(long = "peer", required = true)]
    peers: Vec<PeerArg>,
    /// The item's SHA-256 (hex), from the index.
    #[arg(long)]
    item: ItemKey,
    /// The item's size in bytes, from the index.
    #[arg(long)]
    size: u64,
    /// Where to write the item.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    #[command(flatten)]
    channel: ChannelArgs,
}

/// Counts verified bytes on a progress bar on their way to the file.
struct Progress {
    inner: FileSink,
    bar: ProgressBar,
}

impl Sink for Progress {
    fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.bar.inc(bytes.len() as u64);
        self.inner.write(bytes)
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.bar.set_position(0);
        self.inner.reset()
    }
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Served => "served".into(),
        Outcome::Unused => "not needed".into(),
        Outcome::Busy => "busy".into(),
        Outcome::NotFound => "does not hold it".into(),
        Outcome::Stalled => "stalled".into(),
        Outcome::Slow => "too slow".into(),
        Outcome::Unavailable(why) => format!("unavailable ({why})"),
        Outcome::Refused(why) => format!("refused ({why})"),
        Outcome::Blamed(b) => format!("MISBEHAVED: {b:?}"),
    }
}

fn summary(report: &SwarmReport) {
    for p in &report.peers {
        println!(
            "{}  {} bytes  {:.1} MiB/s  {}",
            p.peer.contact,
            p.bytes,
            p.speed() / (1024.0 * 1024.0),
            outcome(&p.outcome)
        );
    }
}

/// Run `fetch`.
pub fn run(cmd: FetchCmd) -> ExitCode {
    let partial = cmd.output.with_extension("partial");
    let file = match std::fs::File::create(&partial) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", partial.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let bar = ProgressBar::new(cmd.size);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut sink = Progress {
        inner: FileSink::new(file),
        bar,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let peers: Vec<PeerAddr> = cmd.peers.into_iter().map(|p| p.0).collect();
    let config = SwarmConfig::new(cmd.channel.params());
    let result = rt.block_on(swarm::download(
        &TcpTransport,
        &config,
        cmd.item,
        cmd.size,
        &peers,
        &mut sink,
    ));
    sink.bar.finish_and_clear();
    match result {
        Ok(report) => {
            let done = sink.inner.into_file().and_then(|f| f.sync_all());
            if let Err(e) = done.and_then(|()| std::fs::rename(&partial, &cmd.output)) {
                eprintln!("error: {}: {e}", cmd.output.display());
                return ExitCode::from(EXIT_RUNTIME);
            }
            summary(&report);
            println!("{}: {} bytes, verified", cmd.output.display(), cmd.size);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            summary(e.report());
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
