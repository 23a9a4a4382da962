//! The audit report: what a volunteer's announcement reveals this epoch,
//! as text for people and JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anonmirror_announce::exposure::Exposure;
use anonmirror_announce::selection::DropReason;
use anonmirror_announce::{PopularitySnapshot, ReportParams, Selection};
use anonmirror_core::Epoch;
use anonmirror_privacy::{Level, Policy, TransportKind};
use serde::Serialize;

use crate::err::Error;

/// Fewer peers than this and every estimate, and the anonymity set, is
/// too small to mean much.
pub const TINY_POPULATION: u64 = 100;
/// Fewer peers than this at one's own level, likewise.
pub const TINY_LEVEL_POPULATION: u64 = 20;

/// What the credential line says until the rendezvous issue provides
/// credentials and tokens: the audit does not invent an age.
pub const NO_CREDENTIAL: &str = "no credential yet";

/// One pipeline stage, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageReport {
    /// The stage.
    pub name: String,
    /// Held items surviving it.
    pub kept: usize,
    /// Held items it dropped.
    pub dropped: usize,
    /// Dropped items by reason.
    pub dropped_by_reason: BTreeMap<DropReason, usize>,
}

/// The ε of this peer's popularity reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportPrivacy {
    /// Bits per report.
    pub m: u32,
    /// Positions per item.
    pub h: u8,
    /// Permanent randomized response.
    pub f: f64,
    /// Instantaneous response for a clear bit.
    pub p: f64,
    /// … for a set bit.
    pub q: f64,
    /// ε∞ (`null` in JSON when infinite).
    pub epsilon_inf: Option<f64>,
    /// ε₁ (`null` when infinite).
    pub epsilon_one: Option<f64>,
}

/// Where the popularity came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotSummary {
    /// The source label.
    pub source: String,
    /// A prior from install statistics, not measured from reports.
    pub prior: bool,
    /// The snapshot's epoch.
    pub epoch: u64,
    /// N.
    pub peers: u64,
    /// N_L, when known.
    pub level_peers: Option<u64>,
}

/// The transport a daemon actually used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InUse {
    /// What carries its connections ("tor (arti)", "tcp (fallback: ...)").
    pub connections: String,
    /// How peers reach it.
    pub serving: String,
    /// The contact its last session announced, or why it announced none
    /// (the daemon's `contact.txt`), once a session was tried.
    pub contact: Option<String>,
}

impl InUse {
    /// Reads a daemon's `transport.txt` (`connections:` and `serving:`
    /// lines) and, appended to it, its `contact.txt` (a `contact:` line).
    pub fn parse(text: &str) -> Option<InUse> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        Some(InUse {
            connections: field("connections:")?,
            serving: field("serving:")?,
            contact: field("contact:"),
        })
    }

    /// Where this falls short of what `level` requires of transport
    /// (strict: Tor for every connection and an onion service; balanced:
    /// Tor preferred). Any serving line that starts with "onion" is an
    /// onion service, whoever hosts it: arti ("onion service hosted by
    /// arti …") or the Tor daemon ("onion service of the Tor daemon …").
    pub fn shortfalls(&self, level: Level) -> Vec<String> {
        let tor = self.connections.starts_with("tor");
        let onion = self.serving.starts_with("onion");
        let mut w = Vec::new();
        match level {
            Level::Strict => {
                if !tor {
                    w.push(format!(
                        "level strict requires Tor for every connection, but the daemon used: {}",
                        self.connections
                    ));
                }
                if !onion {
                    w.push(format!(
                        "level strict serves through an onion service only, but peers reach the daemon by: {}",
                        self.serving
                    ));
                }
            }
            Level::Balanced if !tor => w.push(format!(
                "level balanced prefers Tor, but the daemon used: {}",
                self.connections
            )),
            Level::Balanced if !onion && !self.serving.starts_with("nobody") => {
                w.push(format!("peers reach the daemon by {}", self.serving))
            }
            Level::Open if self.serving.starts_with("tcp") => w.push(
                "level open serves over TCP: the contact announced is this machine's IP \
                 address, seen by the rendezvous and by every peer that downloads from it"
                    .to_owned(),
            ),
            _ => {}
        }
        w
    }
}

/// The whole audit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditReport {
    /// The level audited (possibly a `--level` preview).
    pub level: Level,
    /// Peer transport.
    pub transport: TransportKind,
    /// Whether TCP is used when Tor is not available.
    pub tcp_fallback: bool,
    /// What the daemon last said carries its connections and how peers
    /// reach it (its state directory's `transport.txt`), if it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_use: Option<InUse>,
    /// The epoch selected for.
    pub epoch: u64,
    /// The popularity used.
    pub snapshot: SnapshotSummary,
    /// The pipeline.
    pub stages: Vec<StageReport>,
    /// The level's canonical set size.
    pub canonical: usize,
    /// Items announced (held and padding).
    pub announced: usize,
    /// Of which not held.
    pub padding: usize,
    /// I(A) and its parts.
    pub exposure: Exposure,
    /// I(A).
    pub exposure_bits: f64,
    /// The budget, as the policy says it.
    pub budget: String,
    /// Whether I(A) is within it (exit code 0, else 1).
    pub within_budget: bool,
    /// About N·2^−I peers.
    pub anonymity_set: f64,
    /// The level's least anonymity set (its `popularity.min_holders`): an
    /// announcement that points at fewer peers fails the audit.
    pub anonymity_minimum: u32,
    /// Whether an announcement is made whose anonymity set is below
    /// [`anonymity_minimum`](Self::anonymity_minimum) (exit code 4).
    pub below_anonymity_minimum: bool,
    /// ε of popularity reports.
    pub reports: ReportPrivacy,
    /// Credential and token age.
    pub credential: String,
    /// How often the daemon's announcement followed its store this epoch
    /// (each update shows an observer of the directory, within minutes,
    /// that what it holds changed, and which announced items were added),
    /// when the daemon recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates: Option<String>,
    /// What LAN discovery shows the link (`[lan]`): "off", or what each
    /// way on lets the neighbours see.
    pub lan: String,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

/// What `[lan]` lets the neighbours on the link see.
fn lan_exposure(lan: &anonmirror_privacy::LanConfig) -> String {
    let mut shown = Vec::new();
    if lan.advertise {
        shown.push(
            "advertised on the link (neighbours see this machine's address, port, session key \
             and level, not what it holds)",
        );
    }
    if lan.discover {
        shown.push(
            "neighbours asked first (they see which packages this machine fetches from them)",
        );
    }
    if shown.is_empty() {
        "off (nothing sent on the link)".to_owned()
    } else {
        shown.join("; ")
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl AuditReport {
    /// Assemble the report from a selection already made.
    pub fn new(
        policy: &Policy,
        epoch: Epoch,
        snapshot: &PopularitySnapshot,
        selection: &Selection,
    ) -> Result<AuditReport, Error> {
        let level = policy.level;
        let params = ReportParams::from_policy(&policy.popularity.randomization)?;
        let stages = selection
            .stages
            .iter()
            .map(|s| {
                let mut by_reason = BTreeMap::new();
                for (_, r) in &s.dropped {
                    *by_reason.entry(*r).or_insert(0) += 1;
                }
                StageReport {
                    name: s.name.to_owned(),
                    kept: s.kept,
                    dropped: s.dropped.len(),
                    dropped_by_reason: by_reason,
                }
            })
            .collect();
        let level_peers = snapshot.level_peers.get(level);
        let mut warnings = Vec::new();
        let t = &policy.transport;
        if level == Level::Strict
            && (t.kind != TransportKind::Tor || t.allow_tcp_fallback || t.dangerous_allow_clearnet)
        {
            warnings.push("strict without Tor: clearnet TCP is allowed, so peers may learn this machine's address".into());
        }
        if !selection.below_floor_announced.is_empty() {
            warnings.push(format!(
                "{} announced items are below the level's popularity floor",
                selection.below_floor_announced.len()
            ));
        }
        if snapshot.prior {
            warnings.push(format!(
                "popularity is a prior from {}, not measured from peers' reports",
                snapshot.source
            ));
        }
        if snapshot.peers < TINY_POPULATION {
            warnings.push(format!(
                "tiny population: {} peers (below {TINY_POPULATION}); estimates and the anonymity set mean little",
                snapshot.peers
            ));
        }
        match level_peers {
            Some(n) if n < TINY_LEVEL_POPULATION && level.serves() => warnings.push(format!(
                "tiny population: {n} peers at level {level} (below {TINY_LEVEL_POPULATION})"
            )),
            None if level.serves() => warnings.push(format!(
                "peers at level {level} unknown: the level's own share is left out of I(A)"
            )),
            _ => {}
        }
        if level == Level::Strict && !selection.canonical_denied.is_empty() {
            warnings.push(format!(
                "the policy forbids announcing {} canonical items: this strict filter differs from its level's",
                selection.canonical_denied.len()
            ));
        }
        if !selection.within_budget {
            warnings.push("over the exposure budget: nothing is announced this epoch".into());
        }
        let anonymity_set = selection.exposure.anonymity_set(snapshot.peers);
        let anonymity_minimum = policy.popularity.min_holders;
        let below_anonymity_minimum = level.serves()
            && selection.within_budget
            && !selection.announced.is_empty()
            && anonymity_set < f64::from(anonymity_minimum);
        if below_anonymity_minimum {
            warnings.push(format!(
                "the anonymity set is about {anonymity_set:.1} peers, below level {level}'s \
                 minimum of {anonymity_minimum}: the announcement points at too few peers \
                 (lower announce.exposure_budget_bits, or wait for more peers)"
            ));
        }
        let lan = lan_exposure(&policy.lan);
        if policy.lan.advertise || policy.lan.discover {
            warnings.push(format!("LAN discovery is on: {lan}"));
        }
        Ok(AuditReport {
            level,
            transport: t.kind,
            tcp_fallback: t.allow_tcp_fallback,
            in_use: None,
            epoch: epoch.0,
            snapshot: SnapshotSummary {
                source: snapshot.source.clone(),
                prior: snapshot.prior,
                epoch: snapshot.epoch.0,
                peers: snapshot.peers,
                level_peers,
            },
            stages,
            canonical: selection.canonical.len(),
            announced: selection.announced.len(),
            padding: selection.padding.len(),
            exposure: selection.exposure,
            exposure_bits: selection.exposure.total(),
            budget: policy.announce.exposure_budget_bits.to_string(),
            within_budget: selection.within_budget,
            anonymity_set,
            anonymity_minimum,
            below_anonymity_minimum,
            reports: ReportPrivacy {
                m: params.m,
                h: params.h,
                f: params.f.get(),
                p: params.p.get(),
                q: params.q.get(),
                epsilon_inf: finite(params.epsilon_inf()),
                epsilon_one: finite(params.epsilon_one()),
            },
            credential: NO_CREDENTIAL.into(),
            updates: None,
            lan,
            warnings,
        })
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let eps = |e: Option<f64>| e.map_or("infinite".to_owned(), |e| format!("{e:.3}"));
        let _ = writeln!(s, "anonmirror audit");
        let _ = writeln!(s, "level:        {}", self.level);
        let _ = writeln!(
            s,
            "transport:    {}{}",
            self.transport.as_str(),
            if self.tcp_fallback {
                " (TCP fallback allowed)"
            } else {
                ""
            }
        );
        if let Some(u) = &self.in_use {
            let _ = writeln!(s, "in use:       {}", u.connections);
            let _ = writeln!(s, "serving:      {}", u.serving);
            if let Some(c) = &u.contact {
                let _ = writeln!(s, "contact:      {c}");
            }
        }
        let _ = writeln!(s, "epoch:        {}", self.epoch);
        let sn = &self.snapshot;
        let _ = writeln!(
            s,
            "popularity:   {}{}, epoch {}, N = {}, N_L = {}",
            sn.source,
            if sn.prior { " (PRIOR)" } else { "" },
            sn.epoch,
            sn.peers,
            sn.level_peers
                .map_or("unknown".to_owned(), |n| n.to_string())
        );
        let _ = writeln!(s, "credential:   {}", self.credential);
        let _ = writeln!(s, "lan:          {}", self.lan);
        if let Some(u) = &self.updates {
            let _ = writeln!(s, "updates:      {u}");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "selection pipeline (held items)");
        for st in &self.stages {
            let reasons: Vec<String> = st
                .dropped_by_reason
                .iter()
                .map(|(r, n)| format!("{} {n}", reason_name(*r)))
                .collect();
            let _ = writeln!(
                s,
                "  {:<36}{:>7} kept{}",
                st.name,
                st.kept,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(", dropped: {}", reasons.join(", "))
                }
            );
        }
        let _ = writeln!(s, "canonical set: {} items", self.canonical);
        let _ = writeln!(
            s,
            "announced:     {} items ({} padding, not held)",
            self.announced, self.padding
        );
        let _ = writeln!(s);
        let e = &self.exposure;
        let _ = writeln!(
            s,
            "exposure I(A): {:.2} bits (budget {})",
            self.exposure_bits, self.budget
        );
        let _ = writeln!(s, "  level share:         {:.2} bits", e.level_bits);
        let _ = writeln!(s, "  announced items:     {:.2} bits", e.announced_bits);
        let _ = writeln!(s, "  items not announced: {:.2} bits", e.omitted_bits);
        let _ = writeln!(
            s,
            "anonymity set: about {:.1} peers (level minimum {}{})",
            self.anonymity_set,
            self.anonymity_minimum,
            if self.below_anonymity_minimum {
                ": BELOW"
            } else {
                ""
            }
        );
        let r = &self.reports;
        let _ = writeln!(
            s,
            "popularity reports: eps_inf = {}, eps_1 = {} (m = {}, h = {}, f = {}, p = {}, q = {})",
            eps(r.epsilon_inf),
            eps(r.epsilon_one),
            r.m,
            r.h,
            r.f,
            r.p,
            r.q
        );
        let _ = writeln!(s);
        if self.warnings.is_empty() {
            let _ = writeln!(s, "warnings: none");
        } else {
            let _ = writeln!(s, "warnings:");
            for w in &self.warnings {
                let _ = writeln!(s, "  - {w}");
            }
        }
        let _ = writeln!(
            s,
            "result: {}",
            match (self.within_budget, self.below_anonymity_minimum) {
                (false, _) => "OVER BUDGET",
                (true, true) =>
                    "within budget, but TOO FEW PEERS (anonymity set below the level's minimum)",
                (true, false) => "within budget",
            }
        );
        s
    }

    /// The report for machines (pretty JSON, one trailing newline).
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| Error::Internal(e.to_string()))
    }
}

fn reason_name(r: DropReason) -> &'static str {
    match r {
        DropReason::NotInIndex => "not in index",
        DropReason::Superseded => "superseded",
        DropReason::RepositoryNotConfigured => "repository not configured",
        DropReason::Denied => "denied",
        DropReason::MetadataForbids => "metadata forbids",
        DropReason::BelowFloor => "below floor",
        DropReason::OverBudget => "over budget",
        DropReason::FixedCount => "fixed count",
    }
}
