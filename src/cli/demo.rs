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
use anonmirror_node::demo::{DemoOptions, run as run_demo};

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
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: demo failed: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
