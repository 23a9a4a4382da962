//! `anonmirror status`: what the running daemon has done, read from its
//! gateway's metrics endpoint (`/.anonmirror/metrics`): bytes handed to the
//! package manager by source, the offload ratio, bytes served to peers,
//! sessions and blame events. `--json` prints the same numbers as JSON.
//! `--plot FILE` also draws the offload ratio and the bytes by source over
//! time (from `/.anonmirror/history`, a sample a minute) as PNG or SVG,
//! by the file's extension; text is set in DejaVu Sans (Debian package
//! `fonts-dejavu-core`) or another font found in the usual places.
//!
//! Exit codes: 0 printed; 2 bad command line; 3 the daemon could not be
//! reached or answered something that is not its metrics.

use std::net::SocketAddr;
use std::process::ExitCode;

use anonmirror_mirror::metrics::MetricsSnapshot;
use clap::Args;

use super::EXIT_RUNTIME;

/// `anonmirror status …`
#[derive(Debug, Args)]
pub struct StatusCmd {
    /// The daemon's gateway address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    gateway: SocketAddr,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the offload ratio over time into this file (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<std::path::PathBuf>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The report `anonmirror status` prints.
pub fn render(s: &MetricsSnapshot) -> String {
    format!(
        "handed to the package manager: {:.1} MiB from peers, {:.1} MiB from the store, {:.1} MiB from upstream\n\
         offload ratio: {:.1} %\n\
         downloads completed: {} by peers, {} by upstream ({} hedged)\n\
         served to peers: {:.1} MiB\n\
         rendezvous sessions opened: {} (one open now: {})\n\
         contact: {}\n\
         peers blamed: {}\n\
         index files unusable: {}\n\
         passed through (not in any index, never stored): {:.1} MiB\n",
        mib(s.from_peers),
        mib(s.from_store),
        mib(s.from_upstream),
        100.0 * s.offload_ratio(),
        s.items_from_peers,
        s.items_from_upstream,
        s.hedges,
        mib(s.served_to_peers),
        s.sessions_opened,
        if s.session_live == 1 { "yes" } else { "no" },
        anonmirror_mirror::metrics::ContactState::from_code(s.contact),
        s.blame_events,
        s.index_errors,
        mib(s.passthrough),
    )
}

/// Runs `status`.
pub fn run(cmd: StatusCmd) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let url = format!("http://{}/.anonmirror/metrics", cmd.gateway);
    let got = runtime.block_on(anonmirror_node::http::get(&url));
    let text = match got {
        Ok((status, body)) if status.is_success() => String::from_utf8_lossy(&body).into_owned(),
        Ok((status, _)) => {
            eprintln!("error: {url} answered {status}: is that an anonmirror gateway?");
            return ExitCode::from(EXIT_RUNTIME);
        }
        Err(e) => {
            eprintln!(
                "error: the daemon's gateway at {} cannot be reached: {e}",
                cmd.gateway
            );
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let snapshot = match MetricsSnapshot::from_prometheus(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {url}: not anonmirror metrics: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if let Some(path) = &cmd.plot {
        let url = format!("http://{}/.anonmirror/history", cmd.gateway);
        let history = match runtime.block_on(anonmirror_node::http::get(&url)) {
            Ok((status, body)) if status.is_success() => {
                anonmirror_mirror::metrics::parse_history(&String::from_utf8_lossy(&body))
                    .map_err(|e| format!("{url}: {e}"))
            }
            Ok((status, _)) => Err(format!("{url} answered {status}")),
            Err(e) => Err(e.to_string()),
        };
        match history.and_then(|h| crate::plot::offload(&h, path)) {
            Ok(()) => eprintln!("plot written to {}", path.display()),
            Err(e) => {
                eprintln!("error: plotting: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    }
    if cmd.json {
        match serde_json::to_string_pretty(&snapshot) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
    } else {
        print!("{}", render(&snapshot));
    }
    ExitCode::SUCCESS
}
