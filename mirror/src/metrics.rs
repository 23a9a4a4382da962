//! What the gateway and the volunteer role have done, as counters.
//!
//! Counters only grow; the offload ratio is derived. [`Metrics::prometheus`]
//! renders them in the Prometheus text exposition format (version 0.0.4)
//! for `GET /.anonmirror/metrics`; [`Metrics::snapshot`] gives the same
//! numbers to `anonmirror status`. No counter is labelled with a package,
//! an item or a peer: the endpoint is as safe to expose as the logs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::err::{Error, Result};

/// Where bytes handed to the package manager came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The local store (a cache hit).
    Store,
    /// Volunteer peers, verified.
    Peers,
    /// The upstream mirror, for an item the index names.
    Upstream,
}

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    from_store: AtomicU64,
    from_peers: AtomicU64,
    from_upstream: AtomicU64,
    passthrough: AtomicU64,
    index_bytes: AtomicU64,
    requests: AtomicU64,
    items_from_peers: AtomicU64,
    items_from_upstream: AtomicU64,
    fetched_from_peers: AtomicU64,
    fetched_from_upstream: AtomicU64,
    hedges: AtomicU64,
    blame_events: AtomicU64,
    served_to_peers: AtomicU64,
    sessions_opened: AtomicU64,
    session_live: AtomicU64,
    directory_peers: AtomicU64,
    lan_peers: AtomicU64,
    lan_ignored: AtomicU64,
    index_errors: AtomicU64,
    contact: AtomicU64,
    history: Mutex<VecDeque<(u64, MetricsSnapshot)>>,
}

/// Samples kept for `anonmirror status --plot`: a day at one a minute.
pub const HISTORY_LEN: usize = 1440;

/// One line of [`Metrics::history_csv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    /// Item bytes from the store so far.
    pub from_store: u64,
    /// … from peers.
    pub from_peers: u64,
    /// … from the upstream.
    pub from_upstream: u64,
    /// Item bytes served to peers so far.
    pub served_to_peers: u64,
}

impl Sample {
    /// The offload ratio at this moment (cumulative).
    pub fn offload_ratio(&self) -> f64 {
        let total = self.from_store + self.from_peers + self.from_upstream;
        if total == 0 {
            0.0
        } else {
            (self.from_store + self.from_peers) as f64 / total as f64
        }
    }
}

/// The header of [`Metrics::history_csv`].
pub const HISTORY_HEADER: &str = "unix,from_store,from_peers,from_upstream,served_to_peers";

/// Parse what [`Metrics::history_csv`] rendered.
pub fn parse_history(text: &str) -> Result<Vec<Sample>> {
    let mut lines = text.lines();
    if lines.next() != Some(HISTORY_HEADER) {
        return Err(Error::Metrics {
            line: 1,
            what: format!("expected the header `{HISTORY_HEADER}`"),
        });
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Vec<u64> = l
                .split(',')
                .map(|f| f.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| five_counters(i + 2))?;
            match v[..] {
                [at, from_store, from_peers, from_upstream, served_to_peers] => Ok(Sample {
                    at,
                    from_store,
                    from_peers,
                    from_upstream,
                    served_to_peers,
                }),
                _ => Err(five_counters(i + 2)),
            }
        })
        .collect()
}

fn five_counters(line: usize) -> Error {
    Error::Metrics {
        line,
        what: "not five counters".to_owned(),
    }
}

/// The counters at one moment (what `anonmirror status` reads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Item bytes handed to the package manager from the store.
    pub from_store: u64,
    /// … from peers.
    pub from_peers: u64,
    /// … from the upstream mirror.
    pub from_upstream: u64,
    /// Bytes of files no index names, passed through (never stored).
    pub passthrough: u64,
    /// Bytes of index files passed through.
    pub index_bytes: u64,
    /// HTTP requests answered.
    pub requests: u64,
    /// Items whose download peers completed.
    pub items_from_peers: u64,
    /// Items whose download the upstream completed.
    pub items_from_upstream: u64,
    /// Bytes of the items peers downloaded (whoever they were handed to,
    /// and when: an item read ahead may reach the package manager from the
    /// store).
    pub fetched_from_peers: u64,
    /// Bytes of the items the upstream downloaded.
    pub fetched_from_upstream: u64,
    /// Downloads where the upstream was started beside slow peers.
    pub hedges: u64,
    /// Peers blamed for bad data or broken protocol.
    pub blame_events: u64,
    /// Item bytes this node served to other peers.
    pub served_to_peers: u64,
    /// Rendezvous sessions opened.
    pub sessions_opened: u64,
    /// 1 while a rendezvous session is open.
    pub session_live: u64,
    /// Peers listed in the directory last fetched (0 before the first).
    pub directory_peers: u64,
    /// Volunteers found on the link (LAN discovery).
    pub lan_peers: u64,
    /// Advertisements on the link that were not used (malformed, another
    /// level, an address beyond the link), each counted once.
    pub lan_ignored: u64,
    /// Index files that failed to parse (their repository fell back to
    /// passing requests through).
    pub index_errors: u64,
    /// How peers reach this node ([`ContactState::code`]).
    pub contact: u64,
}

/// How peers reach this node, as the volunteer last found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactState {
    /// Not serving, or no session tried yet.
    None,
    /// A TCP contact the rendezvous's dial-back reached: announced.
    Reached,
    /// An onion service: announced.
    Onion,
    /// The dial-back failed: no TCP contact announced, and why.
    Unreachable(anonmirror_rendezvous::msg::ReachOutcome),
}

impl ContactState {
    const OUTCOMES: [anonmirror_rendezvous::msg::ReachOutcome; 6] = {
        use anonmirror_rendezvous::msg::ReachOutcome as R;
        [
            R::Reached,
            R::ConnectionRefused,
            R::TimedOut,
            R::HandshakeFailed,
            R::NoAddress,
            R::NotAnnounceable,
        ]
    };

    /// Its value in the `anonmirror_contact` gauge.
    pub fn code(self) -> u64 {
        match self {
            ContactState::None => 0,
            ContactState::Reached => 1,
            ContactState::Onion => 2,
            ContactState::Unreachable(o) => {
                10 + Self::OUTCOMES.iter().position(|x| *x == o).unwrap_or(0) as u64
            }
        }
    }

    /// The state a gauge value stands for (`None` for an unknown one).
    pub fn from_code(code: u64) -> ContactState {
        match code {
            1 => ContactState::Reached,
            2 => ContactState::Onion,
            c if c >= 10 => Self::OUTCOMES
                .get((c - 10) as usize)
                .map_or(ContactState::None, |o| ContactState::Unreachable(*o)),
            _ => ContactState::None,
        }
    }
}

impl std::fmt::Display for ContactState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContactState::None => f.write_str("none (not serving, or no session yet)"),
            ContactState::Reached => f.write_str(
                "tcp, reached by the rendezvous's dial-back (peers see this machine's address)",
            ),
            ContactState::Onion => f.write_str("onion service"),
            ContactState::Unreachable(o) => write!(
                f,
                "none announced: unreachable from other hosts ({o}); forward serve.listen's \
                 port on the router, or serve through Tor"
            ),
        }
    }
}

impl MetricsSnapshot {
    /// Share of item bytes that did not come from the upstream mirror:
    /// (store + peers) / (store + peers + upstream); 0 before any.
    pub fn offload_ratio(&self) -> f64 {
        let total = self.from_store + self.from_peers + self.from_upstream;
        if total == 0 {
            0.0
        } else {
            (self.from_store + self.from_peers) as f64 / total as f64
        }
    }

    /// Parse what [`Metrics::prometheus`] rendered.
    pub fn from_prometheus(text: &str) -> Result<MetricsSnapshot> {
        let mut s = MetricsSnapshot::default();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once(' ').ok_or_else(|| Error::Metrics {
                line: no + 1,
                what: "expected `NAME VALUE`".to_owned(),
            })?;
            // Labelled and derived series are not counters of ours.
            if name.contains('{') || name == "anonmirror_offload_ratio" {
                continue;
            }
            let v: u64 = value.trim().parse().map_err(|_| Error::Metrics {
                line: no + 1,
                what: format!("`{value}` is not a counter value"),
            })?;
            let slot = match name {
                "anonmirror_item_bytes_store_total" => &mut s.from_store,
                "anonmirror_item_bytes_peers_total" => &mut s.from_peers,
                "anonmirror_item_bytes_upstream_total" => &mut s.from_upstream,
                "anonmirror_passthrough_bytes_total" => &mut s.passthrough,
                "anonmirror_index_bytes_total" => &mut s.index_bytes,
                "anonmirror_requests_total" => &mut s.requests,
                "anonmirror_items_from_peers_total" => &mut s.items_from_peers,
                "anonmirror_items_from_upstream_total" => &mut s.items_from_upstream,
                "anonmirror_fetched_from_peers_bytes_total" => &mut s.fetched_from_peers,
                "anonmirror_fetched_from_upstream_bytes_total" => &mut s.fetched_from_upstream,
                "anonmirror_hedges_total" => &mut s.hedges,
                "anonmirror_blame_events_total" => &mut s.blame_events,
                "anonmirror_served_to_peers_bytes_total" => &mut s.served_to_peers,
                "anonmirror_sessions_opened_total" => &mut s.sessions_opened,
                "anonmirror_session_live" => &mut s.session_live,
                "anonmirror_directory_peers" => &mut s.directory_peers,
                "anonmirror_lan_peers" => &mut s.lan_peers,
                "anonmirror_lan_ignored" => &mut s.lan_ignored,
                "anonmirror_index_errors_total" => &mut s.index_errors,
                "anonmirror_contact" => &mut s.contact,
                _ => continue,
            };
            *slot = v;
        }
        Ok(s)
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Item bytes handed to the package manager from `source`.
    pub fn item_bytes(&self, source: Source, n: u64) {
        add(
            match source {
                Source::Store => &self.from_store,
                Source::Peers => &self.from_peers,
                Source::Upstream => &self.from_upstream,
            },
            n,
        );
    }

    /// Bytes of a file no index names.
    pub fn passthrough_bytes(&self, n: u64) {
        add(&self.passthrough, n);
    }

    /// Bytes of an index file.
    pub fn index_bytes(&self, n: u64) {
        add(&self.index_bytes, n);
    }

    /// One HTTP request.
    pub fn request(&self) {
        add(&self.requests, 1);
    }

    /// A download completed by `source` (peers or upstream).
    pub fn item_completed(&self, source: Source, bytes: u64) {
        match source {
            Source::Peers => {
                add(&self.items_from_peers, 1);
                add(&self.fetched_from_peers, bytes);
            }
            Source::Upstream => {
                add(&self.items_from_upstream, 1);
                add(&self.fetched_from_upstream, bytes);
            }
            Source::Store => {}
        }
    }

    /// The upstream was started beside slow peers.
    pub fn hedge(&self) {
        add(&self.hedges, 1);
    }

    /// `n` peers blamed.
    pub fn blamed(&self, n: u64) {
        add(&self.blame_events, n);
    }

    /// Set the bytes served to peers (the peer server's own counter).
    pub fn set_served_to_peers(&self, n: u64) {
        self.served_to_peers.store(n, Ordering::Relaxed);
    }

    /// A rendezvous session opened (`true`) or ended (`false`).
    pub fn session(&self, open: bool) {
        if open {
            add(&self.sessions_opened, 1);
        }
        self.session_live.store(u64::from(open), Ordering::Relaxed);
    }

    /// How peers reach this node now.
    pub fn contact(&self, state: ContactState) {
        self.contact.store(state.code(), Ordering::Relaxed);
    }

    /// A directory listing `peers` usable peers was installed.
    pub fn directory(&self, peers: usize) {
        self.directory_peers.store(peers as u64, Ordering::Relaxed);
    }

    /// LAN discovery knows `peers` volunteers on the link.
    pub fn lan(&self, peers: usize) {
        self.lan_peers.store(peers as u64, Ordering::Relaxed);
    }

    /// `n` advertisements on the link were not used.
    pub fn lan_ignored(&self, n: usize) {
        self.lan_ignored.store(n as u64, Ordering::Relaxed);
    }

    /// An index failed to parse.
    pub fn index_error(&self) {
        add(&self.index_errors, 1);
    }

    /// Keep the counters as they are at `unix` in the history (at most one
    /// sample per second; the oldest go past [`HISTORY_LEN`]).
    pub fn sample(&self, unix: u64) {
        let now = self.snapshot();
        if let Ok(mut h) = self.history.lock() {
            if h.back().is_some_and(|(t, _)| *t == unix) {
                h.pop_back();
            }
            h.push_back((unix, now));
            while h.len() > HISTORY_LEN {
                h.pop_front();
            }
        }
    }

    /// The history as CSV: [`HISTORY_HEADER`], then one line per sample.
    pub fn history_csv(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from(HISTORY_HEADER);
        out.push('\n');
        if let Ok(h) = self.history.lock() {
            for (t, s) in h.iter() {
                let _ = writeln!(
                    out,
                    "{t},{},{},{},{}",
                    s.from_store, s.from_peers, s.from_upstream, s.served_to_peers
                );
            }
        }
        out
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            from_store: g(&self.from_store),
            from_peers: g(&self.from_peers),
            from_upstream: g(&self.from_upstream),
            passthrough: g(&self.passthrough),
            index_bytes: g(&self.index_bytes),
            requests: g(&self.requests),
            items_from_peers: g(&self.items_from_peers),
            items_from_upstream: g(&self.items_from_upstream),
            fetched_from_peers: g(&self.fetched_from_peers),
            fetched_from_upstream: g(&self.fetched_from_upstream),
            hedges: g(&self.hedges),
            blame_events: g(&self.blame_events),
            served_to_peers: g(&self.served_to_peers),
            sessions_opened: g(&self.sessions_opened),
            session_live: g(&self.session_live),
            directory_peers: g(&self.directory_peers),
            lan_peers: g(&self.lan_peers),
            lan_ignored: g(&self.lan_ignored),
            index_errors: g(&self.index_errors),
            contact: g(&self.contact),
        }
    }

    /// The Prometheus text exposition of every counter and the offload
    /// ratio.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let s = self.snapshot();
        let mut out = String::with_capacity(2048);
        let mut series = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let counters: [(&str, &str, u64); 15] = [
            (
                "anonmirror_item_bytes_store_total",
                "Item bytes handed to the package manager from the local store.",
                s.from_store,
            ),
            (
                "anonmirror_item_bytes_peers_total",
                "Item bytes handed to the package manager from peers, verified.",
                s.from_peers,
            ),
            (
                "anonmirror_item_bytes_upstream_total",
                "Item bytes handed to the package manager from the upstream mirror.",
                s.from_upstream,
            ),
            (
                "anonmirror_passthrough_bytes_total",
                "Bytes of files no index names, passed through and never stored.",
                s.passthrough,
            ),
            (
                "anonmirror_index_bytes_total",
                "Bytes of index files passed through.",
                s.index_bytes,
            ),
            (
                "anonmirror_requests_total",
                "HTTP requests answered by the gateway.",
                s.requests,
            ),
            (
                "anonmirror_items_from_peers_total",
                "Item downloads completed by peers.",
                s.items_from_peers,
            ),
            (
                "anonmirror_items_from_upstream_total",
                "Item downloads completed by the upstream mirror.",
                s.items_from_upstream,
            ),
            (
                "anonmirror_fetched_from_peers_bytes_total",
                "Bytes of the items peers downloaded.",
                s.fetched_from_peers,
            ),
            (
                "anonmirror_fetched_from_upstream_bytes_total",
                "Bytes of the items the upstream mirror downloaded.",
                s.fetched_from_upstream,
            ),
            (
                "anonmirror_hedges_total",
                "Downloads where the upstream started beside slow peers.",
                s.hedges,
            ),
            (
                "anonmirror_blame_events_total",
                "Peers blamed for bad data or a broken protocol.",
                s.blame_events,
            ),
            (
                "anonmirror_served_to_peers_bytes_total",
                "Item bytes this node served to other peers.",
                s.served_to_peers,
            ),
            (
                "anonmirror_sessions_opened_total",
                "Rendezvous sessions opened.",
                s.sessions_opened,
            ),
            (
                "anonmirror_index_errors_total",
                "Index files that failed to parse.",
                s.index_errors,
            ),
        ];
        for (name, help, v) in counters {
            series(name, "counter", help, v.to_string());
        }
        series(
            "anonmirror_session_live",
            "gauge",
            "1 while a rendezvous session is open.",
            s.session_live.to_string(),
        );
        series(
            "anonmirror_directory_peers",
            "gauge",
            "Peers listed in the directory last fetched.",
            s.directory_peers.to_string(),
        );
        series(
            "anonmirror_lan_peers",
            "gauge",
            "Volunteers found on the link by LAN discovery.",
            s.lan_peers.to_string(),
        );
        series(
            "anonmirror_lan_ignored",
            "gauge",
            "Advertisements on the link not used (malformed, or beyond the link).",
            s.lan_ignored.to_string(),
        );
        series(
            "anonmirror_contact",
            "gauge",
            "How peers reach this node: 0 not serving, 1 tcp reached by a dial-back, 2 onion service, 10 and above unreachable (no contact announced).",
            s.contact.to_string(),
        );
        series(
            "anonmirror_offload_ratio",
            "gauge",
            "Share of item bytes that did not come from the upstream mirror.",
            format!("{:.6}", s.offload_ratio()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_round_trips_and_derives_the_offload_ratio() {
        let m = Metrics::default();
        m.item_bytes(Source::Peers, 300);
        m.item_bytes(Source::Store, 100);
        m.item_bytes(Source::Upstream, 100);
        m.blamed(2);
        m.session(true);
        let text = m.prometheus();
        assert!(text.contains("anonmirror_item_bytes_peers_total 300\n"));
        assert!(text.contains("# TYPE anonmirror_offload_ratio gauge\n"));
        assert!(text.contains("anonmirror_offload_ratio 0.800000\n"));
        let back = MetricsSnapshot::from_prometheus(&text).expect("parses");
        assert_eq!(back, m.snapshot());
        assert!((back.offload_ratio() - 0.8).abs() < 1e-9);
        assert_eq!(MetricsSnapshot::default().offload_ratio(), 0.0);
    }

    #[test]
    fn the_history_keeps_one_sample_per_second_and_round_trips() {
        let m = Metrics::default();
        m.sample(100);
        m.item_bytes(Source::Peers, 3);
        m.sample(100);
        m.item_bytes(Source::Upstream, 1);
        m.sample(160);
        let h = parse_history(&m.history_csv()).expect("parses");
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].at, h[0].from_peers), (100, 3));
        assert!((h[1].offload_ratio() - 0.75).abs() < 1e-9);
        assert!(parse_history("unix\n").is_err());
        assert!(parse_history(&format!("{HISTORY_HEADER}\n1,2,3\n")).is_err());
    }

    #[test]
    fn a_garbled_exposition_is_refused_with_its_line() {
        let e = MetricsSnapshot::from_prometheus(
            "anonmirror_requests_total 1\nanonmirror_hedges_total x\n",
        )
        .expect_err("bad value");
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }
}
