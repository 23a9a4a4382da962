//! `anonmirror audit`: what this machine's announcement would reveal.
//!
//! Reads the policy (`--policy`, else the default path), the inventory and
//! index files (formats in `anonmirror_audit::inputs`), and the popularity:
//! a snapshot file (`--snapshot`, the binary format of
//! `anonmirror_announce::snapshot`) or, to bootstrap, published install
//! statistics (`--popcon` by_inst, `--pkgstats` JSON) as a prior. An input
//! not named is read from the policy's state directory, where the daemon
//! keeps what its last selection saw (`inventory.txt`, `index.txt`,
//! `popularity.amps`); the credential line says when the daemon's
//! credential expires.
//!
//! Exit codes: 0 the announcement is within the exposure budget; 1 it is
//! over budget (nothing would be announced); 2 bad policy, input or
//! command line; 3 a bug while printing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anonmirror_announce::prior::{parse_pkgstats_json, parse_popcon_by_inst, prior_snapshot};
use anonmirror_announce::{CurrentIndex, PopularitySnapshot};
use anonmirror_core::{Clock, Epoch, ErrorKind, HasKind, SystemClock};
use anonmirror_privacy::{DEFAULT_POLICY_PATH, Level, Policy};
use clap::Args;

use super::{EXIT_BAD_INPUT, EXIT_RUNTIME};

/// `anonmirror audit …`
#[derive(Debug, Args)]
pub struct AuditCmd {
    /// The policy file.
    #[arg(long, default_value = DEFAULT_POLICY_PATH)]
    policy: PathBuf,
    /// Preview another level (keys the file sets still apply).
    #[arg(long)]
    level: Option<Level>,
    /// The store's inventory: one SHA-256 per line (default: the daemon's,
    /// in the state directory).
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// A current index: `SHA256 REPOSITORY NAME VERSION [no-announce]` per
    /// line. Repeat for several repositories (default: the daemon's).
    #[arg(long = "index")]
    indexes: Vec<PathBuf>,
    /// The latest popularity snapshot (binary; default: the daemon's).
    #[arg(long, group = "popularity")]
    snapshot: Option<PathBuf>,
    /// Debian popcon `by_inst`, as a prior instead of a snapshot.
    #[arg(long, group = "popularity")]
    popcon: Option<PathBuf>,
    /// Arch pkgstats `/api/packages` JSON, as a prior instead of a snapshot.
    #[arg(long, group = "popularity")]
    pkgstats: Option<PathBuf>,
    /// The epoch to select for (default: the current one, by the policy's
    /// `announce.epoch_secs`).
    #[arg(long)]
    epoch: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Run `audit`.
pub fn run(cmd: AuditCmd) -> ExitCode {
    match report(&cmd) {
        Ok((text, verdict)) => {
            print!("{text}");
            ExitCode::from(verdict.code())
        }
        Err((msg, kind)) => {
            eprintln!("error: {msg}");
            ExitCode::from(if kind == ErrorKind::Internal {
                EXIT_RUNTIME
            } else {
                EXIT_BAD_INPUT
            })
        }
    }
}

type Failure = (String, ErrorKind);

fn fail<E: std::fmt::Display + HasKind>(e: E) -> Failure {
    let kind = e.kind();
    (e.to_string(), kind)
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    // A missing or unreadable input file is a bad command line here.
    std::fs::read(path).map_err(|e| {
        (
            format!("cannot read {}: {e}", path.display()),
            ErrorKind::BadInput,
        )
    })
}

fn read_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read(path)?).map_err(|_| {
        (
            format!("{}: not UTF-8", path.display()),
            ErrorKind::BadInput,
        )
    })
}

fn in_file<E: std::fmt::Display + HasKind>(path: &Path) -> impl Fn(E) -> Failure + '_ {
    move |e| (format!("{}: {e}", path.display()), e.kind())
}

/// What the audit found, as its exit code says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// 0: within the budget, and the anonymity set at least the level's
    /// minimum.
    Pass,
    /// 1: over the exposure budget (nothing is announced).
    OverBudget,
    /// 4: announced, but to an anonymity set below the level's minimum.
    TooFewPeers,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::OverBudget => 1,
            Verdict::TooFewPeers => EXIT_TOO_FEW_PEERS,
        }
    }
}

/// The exit code of an audit whose anonymity set is below the level's
/// minimum.
pub const EXIT_TOO_FEW_PEERS: u8 = 4;

fn report(cmd: &AuditCmd) -> Result<(String, Verdict), Failure> {
    let policy = match cmd.level {
        Some(level) => Policy::load_with_level(&cmd.policy, level),
        None => Policy::load(&cmd.policy),
    }
    .map_err(|e| (e.to_string(), ErrorKind::LocalConfig))?;
    let state = &policy.paths.state_dir;
    let inventory_path = cmd
        .inventory
        .clone()
        .unwrap_or_else(|| state.join(anonmirror_node::volunteer::AUDIT_INVENTORY));
    let inventory = anonmirror_audit::inputs::parse_inventory(&read_text(&inventory_path)?)
        .map_err(in_file(&inventory_path))?;
    let indexes = if cmd.indexes.is_empty() {
        vec![state.join(anonmirror_node::volunteer::AUDIT_INDEX)]
    } else {
        cmd.indexes.clone()
    };
    let mut entries = Vec::new();
    for path in &indexes {
        entries.extend(
            anonmirror_audit::inputs::parse_index(&read_text(path)?).map_err(in_file(path))?,
        );
    }
    let index = CurrentIndex::new(entries);
    let epoch = cmd
        .epoch
        .map(Epoch)
        .unwrap_or_else(|| Epoch::containing(SystemClock.unix_secs(), policy.announce.epoch_secs));
    let snapshot = if let Some(path) = &cmd.snapshot {
        PopularitySnapshot::from_bytes(&read(path)?)
            .map_err(|e| (format!("{}: {e}", path.display()), ErrorKind::BadInput))?
    } else if let Some(path) = &cmd.popcon {
        let stats = parse_popcon_by_inst(&read_text(path)?).map_err(in_file(path))?;
        prior_snapshot(&stats, &index, epoch)
    } else if let Some(path) = &cmd.pkgstats {
        let stats = parse_pkgstats_json(&read_text(path)?).map_err(in_file(path))?;
        prior_snapshot(&stats, &index, epoch)
    } else {
        let path = state.join(anonmirror_node::volunteer::AUDIT_POPULARITY);
        PopularitySnapshot::from_bytes(&read(&path)?)
            .map_err(|e| (format!("{}: {e}", path.display()), ErrorKind::BadInput))?
    };
    let mut report =
        anonmirror_audit::audit(&policy, epoch, &inventory, &index, &snapshot).map_err(fail)?;
    if let Some(c) = anonmirror_node::volunteer::read_credential(
        &state.join(anonmirror_node::volunteer::CREDENTIAL),
    ) {
        let now = SystemClock.unix_secs();
        report.credential = if c.usable(now) {
            format!(
                "held; expires in {:.1} days (the daemon registers anew then)",
                c.expires.saturating_sub(now) as f64 / 86_400.0
            )
        } else {
            "expired; the daemon registers anew at its next session".to_owned()
        };
    }
    if let Ok(text) = std::fs::read_to_string(state.join(anonmirror_node::volunteer::UPDATES_FILE))
        && let Some((e, n)) = text
            .trim()
            .strip_prefix("epoch ")
            .and_then(|t| t.split_once(" updates "))
        && e.parse() == Ok(epoch.0)
    {
        report.updates = Some(format!(
            "{n} this epoch (at most {}): each showed the directory, within minutes, \
             which announced items had been added",
            anonmirror_node::volunteer::MAX_UPDATES_PER_EPOCH
        ));
    }
    if let Ok(mut text) =
        std::fs::read_to_string(state.join(anonmirror_node::carrier::TRANSPORT_FILE))
        && let Some(u) = {
            if let Ok(contact) =
                std::fs::read_to_string(state.join(anonmirror_node::volunteer::CONTACT_FILE))
            {
                text.push_str(&contact);
            }
            anonmirror_audit::InUse::parse(&text)
        }
    {
        report.warnings.extend(u.shortfalls(policy.level));
        report.in_use = Some(u);
    }
    let text = if cmd.json {
        report.to_json().map_err(fail)?
    } else {
        report.to_text()
    };
    let verdict = if !report.within_budget {
        Verdict::OverBudget
    } else if report.below_anonymity_minimum {
        Verdict::TooFewPeers
    } else {
        Verdict::Pass
    };
    Ok((text, verdict))
}
