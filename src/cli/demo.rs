//! `anonmirror demo`: a whole swarm on loopback (an upstream, a
//! rendezvous, volunteers, a client) fetching a generated repository; prints
//! what came from where (see `anonmirror_node::demo`).
//!
//! Exit codes: 0 every package arrived verified; 2 bad command line; 3 the
//! demo failed (the error says where).

use std::path::PathBuf;
use std::process::ExitCode;

use anonmirror_privacy::Level;
use clap::Args;

use super::EXIT_RUNTIME;
use anonmirror_node::demo::{DemoOptions, DemoReport, run as run_demo};

/// `anonmirror demo …`
#[derive(Debug, Args)]
pub struct DemoCmd {
    /// Packages in the generated repository.
    #[arg(long, default_value_t = 24)]
    packages: usize,
    /// The volunteers' levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "open,open,open,balanced")]
    volunteers: Vec<Level>,
    /// Keep everything under this directory (a temporary one otherwise).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The report `anonmirror demo` prints.
struct Render<'a>(&'a DemoReport);

impl std::fmt::Display for Render<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let report = self.0;
        let c = &report.client;
        writeln!(
            f,
            "client: {} packages, {} bytes, every one verified against the index",
            report.verified, report.bytes
        )?;
        writeln!(
            f,
            "  from peers {} B, from the store {} B, from upstream {} B; offload ratio {:.1} %",
            c.from_peers,
            c.from_store,
            c.from_upstream,
            100.0 * c.offload_ratio()
        )?;
        writeln!(
            f,
            "  downloads completed by peers {}, by upstream {}; hedges {}; peers blamed {}",
            c.items_from_peers, c.items_from_upstream, c.hedges, c.blame_events
        )?;
        for (i, (level, summary, m)) in report.volunteers.iter().enumerate() {
            match summary {
                Some(s) => writeln!(
                    f,
                    "volunteer {i} ({level}): holds {}, announces {} ({} padding), exposure {:.2} bits{}, served {} B to peers",
                    s.held,
                    s.announced,
                    s.padding,
                    s.exposure_bits,
                    if s.within_budget {
                        ""
                    } else {
                        " (over budget: withheld)"
                    },
                    m.served_to_peers
                )?,
                None => writeln!(f, "volunteer {i} ({level}): no selection yet")?,
            }
            if *level != Level::Open && summary.as_ref().is_some_and(|s| s.announced == 0) {
                writeln!(
                    f,
                    "  (above `open` only items known to be popular are announced; no popularity is published yet in a swarm this young)"
                )?;
            }
        }
        Ok(())
    }
}

/// Runs the demo.
pub fn run(cmd: DemoCmd) -> ExitCode {
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let opts = DemoOptions {
        packages: cmd.packages,
        volunteers: cmd.volunteers,
        dir: cmd.dir,
        ..DemoOptions::default()
    };
    match runtime.block_on(run_demo(opts)) {
        Ok(report) => {
            print!("{}", Render(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: demo failed: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
