//! `anonmirror serve`: serve a store's items to peers until interrupted.
//!
//! A fresh Noise static key is made for every run (a session key: nothing
//! links two runs). Prints `serving <addr> key <hex>` once listening, for
//! `anonmirror fetch --peer <addr>=<hex>`. SIGINT or SIGTERM shut it down
//! gracefully.
//!
//! Exit codes: 0 shut down cleanly; 2 bad arguments; 3 the store or the
//! socket failed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anonmirror_channel::noise::{ChannelParams, StaticKeypair};
use anonmirror_channel::transport::TcpTransport;
use anonmirror_core::Contact;
use anonmirror_core::Epoch;
use anonmirror_overlay::server::{self, ServerConfig};
use anonmirror_privacy::{ByteSize, Level};
use clap::Args;

use super::EXIT_RUNTIME;

/// `anonmirror serve`
#[derive(Debug, Args)]
pub struct ServeCmd {
    /// The store's directory.
    #[arg(long)]
    store: PathBuf,
    /// The store's size cap, e.g. "10 GiB".
    #[arg(long, default_value = "10 GiB")]
    cap: ByteSize,
    /// Where to listen, e.g. 127.0.0.1:7879 (port 0: any free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Clients served at once; more are told Busy.
    #[arg(long, default_value_t = 8)]
    max_clients: usize,
    /// Upload rate across all clients, per second, e.g. "2 MiB"; unlimited
    /// when absent.
    #[arg(long)]
    upload_rate: Option<ByteSize>,
    #[command(flatten)]
    channel: ChannelArgs,
}

/// The prologue parameters both ends must agree on.
#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// The privacy level bound into the channel's prologue.
    #[arg(long, default_value = "open")]
    level: Level,
    /// The epoch bound into the channel's prologue.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
}

impl ChannelArgs {
    /// The channel parameters.
    pub fn params(&self) -> ChannelParams {
        ChannelParams::new(self.level, Epoch(self.epoch))
    }
}

/// Run `serve`.
pub fn run(cmd: ServeCmd) -> ExitCode {
    let store = match super::store::open(&cmd.store, cmd.cap) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            eprintln!("error: {what}: {e}");
            ExitCode::from(EXIT_RUNTIME)
        };
        let keypair = match StaticKeypair::generate() {
            Ok(k) => k,
            Err(e) => return fail("key generation", &e),
        };
        let key = keypair.public();
        let listener = match TcpTransport.listen(&Contact::from(cmd.listen)).await {
            Ok(l) => l,
            Err(e) => return fail("listen", &e),
        };
        let config = ServerConfig {
            max_clients: cmd.max_clients,
            upload_rate: cmd.upload_rate.map(|r| r.bytes()),
            ..ServerConfig::default()
        };
        let handle = match server::spawn(listener, store, keypair, cmd.channel.params(), config) {
            Ok(h) => h,
            Err(e) => return fail("serve", &e),
        };
        let Contact::Tcp(addr) = handle.contact() else {
            return fail("serve", &"not a TCP listener");
        };
        println!("serving {addr} key {key}");
        let _ = std::io::stdout().flush();
        super::shutdown_signal().await;
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}
