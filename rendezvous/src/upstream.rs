//! The upstream watcher: notices new index snapshots by polling the
//! distribution's index URLs with conditional HTTP requests, so the
//! rendezvous can push `SnapshotChanged` to every live session (the other
//! way in is the distribution's authenticated `notify`).
//!
//! The decision is sans-I/O ([`IndexState::observe`]: an [`Answer`] and
//! `now` in, an [`Observed`] out); [`Watcher`] is the thin hyper driver
//! that turns each configured [`UpstreamIndex`] into one GET per round, with
//! `If-None-Match` (the last ETag) and `If-Modified-Since` (the last
//! `Last-Modified`) once it has seen the index, so an unchanged index costs
//! a `304 Not Modified` and no body.
//!
//! # When an index has changed
//!
//! - The first `200` is the baseline: it is remembered, nothing is pushed
//!   (the watcher has seen no change, only a state).
//! - A `304` is no change.
//! - A later `200` is a change only if its body differs (BLAKE3 of the
//!   body) from the last one: an upstream that ignores the conditional
//!   headers, or rotates ETags without new content, pushes nothing.
//! - Anything else (another status, a body over `max_body`, a timeout) is
//!   an [`Error::Upstream`], logged; the state is kept and the next round
//!   tries again.
//!
//! # What the pushed version is
//!
//! A `u64` per repository, strictly increasing: the index's `Last-Modified`
//! time in Unix seconds when the upstream sends one (so every party that
//! fetched the same index, and a restarted rendezvous, derives the same
//! number), otherwise the rendezvous clock's Unix seconds when it saw the
//! change; in both cases raised to one more than the previous version if
//! it would not exceed it (an upstream's clock may step back). Peers that
//! announce snapshot versions derive them the same way from the index they
//! hold.
//!
//! Nothing here is secret: index URLs and repository names are public
//! configuration, so they may be logged.

use std::time::{Duration, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ETAG, LAST_MODIFIED};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::err::{Error, Result};

/// One index to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamIndex {
    /// The repository name pushed to sessions (the name announcements use
    /// for their snapshot versions).
    pub repository: String,
    /// The index URL (`http://`; a TLS-terminating proxy, or a mirror on
    /// the same host, fronts an `https://` upstream).
    pub url: String,
}

/// How the watcher behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// The indexes to watch; empty turns the watcher off.
    pub indexes: Vec<UpstreamIndex>,
    /// Time between two rounds of requests.
    pub interval: Duration,
    /// The most one request (headers and body) may take.
    pub timeout: Duration,
    /// The largest index body read; a larger one is an upstream error.
    pub max_body: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            indexes: Vec::new(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            max_body: 256 << 20,
        }
    }
}

impl WatchConfig {
    /// Fails closed on what cannot work, naming the key.
    pub fn check(&self) -> Result<()> {
        if self.indexes.is_empty() {
            return Ok(());
        }
        if self.interval.is_zero() {
            return Err(Error::Config {
                key: "upstream.interval",
                reason: "must be positive".into(),
            });
        }
        for (i, ix) in self.indexes.iter().enumerate() {
            parse_url(&ix.url)?;
            if ix.repository.is_empty() || ix.repository.len() > crate::msg::MAX_NAME {
                return Err(Error::Config {
                    key: "upstream.repository",
                    reason: format!("1 to {} bytes", crate::msg::MAX_NAME),
                });
            }
            if self.indexes[..i]
                .iter()
                .any(|o| o.repository == ix.repository)
            {
                return Err(Error::Config {
                    key: "upstream.repository",
                    reason: format!("`{}` is watched twice", ix.repository),
                });
            }
        }
        Ok(())
    }
}

fn parse_url(url: &str) -> Result<Uri> {
    let uri: Uri = url.parse().map_err(|e| Error::Config {
        key: "upstream.url",
        reason: format!("`{url}`: {e}"),
    })?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(Error::Config {
            key: "upstream.url",
            reason: format!("`{url}`: an http:// URL with a host"),
        });
    }
    Ok(uri)
}

/// One answer of the upstream, reduced to what the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The `ETag` header, verbatim.
    pub etag: Option<String>,
    /// The `Last-Modified` header, verbatim.
    pub last_modified: Option<String>,
    /// BLAKE3 of the body (a `200`'s); `None` for a `304`.
    pub digest: Option<[u8; 32]>,
}

/// What an answer meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The first state seen, at this version (not pushed).
    Baseline(u64),
    /// No change.
    Unchanged,
    /// A new snapshot, at this version (pushed).
    Changed(u64),
}

/// What the watcher remembers of one index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexState {
    etag: Option<String>,
    last_modified: Option<String>,
    digest: Option<[u8; 32]>,
    version: Option<u64>,
}

impl IndexState {
    /// The current version, once a baseline was seen.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The conditional headers of the next request: `If-None-Match` with
    /// the last ETag and `If-Modified-Since` with the last `Last-Modified`,
    /// each when known.
    pub fn conditional_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(e) = &self.etag {
            h.push(("if-none-match", e.clone()));
        }
        if let Some(m) = &self.last_modified {
            h.push(("if-modified-since", m.clone()));
        }
        h
    }

    /// Takes an answer seen at `now_unix`; see the module doc.
    pub fn observe(&mut self, a: Answer, now_unix: u64) -> Result<Observed> {
        match a.status {
            304 if self.version.is_some() => Ok(Observed::Unchanged),
            304 => Err(Error::Upstream {
                what: "index",
                reason: "304 Not Modified to an unconditional request".into(),
            }),
            200 => {
                let digest = a.digest.ok_or_else(|| Error::Upstream {
                    what: "index",
                    reason: "200 without a body".into(),
                })?;
                let same = self.digest == Some(digest);
                let seen = a
                    .last_modified
                    .as_deref()
                    .and_then(|m| httpdate::parse_http_date(m).ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                self.etag = a.etag;
                self.last_modified = a.last_modified;
                if same {
                    return Ok(Observed::Unchanged);
                }
                self.digest = Some(digest);
                let candidate = seen.unwrap_or(now_unix);
                Ok(match self.version {
                    None => {
                        self.version = Some(candidate);
                        Observed::Baseline(candidate)
                    }
                    Some(prev) => {
                        let v = candidate.max(prev.saturating_add(1));
                        self.version = Some(v);
                        Observed::Changed(v)
                    }
                })
            }
            s => Err(Error::Upstream {
                what: "index",
                reason: format!("status {s}"),
            }),
        }
    }
}

/// The driver: one plain-HTTP client and the state of every index.
#[derive(Debug)]
pub struct Watcher {
    cfg: WatchConfig,
    uris: Vec<Uri>,
    states: Vec<IndexState>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Watcher {
    /// A watcher for `cfg` (checked; URLs parsed once).
    pub fn new(cfg: WatchConfig) -> Result<Watcher> {
        cfg.check()?;
        let uris = cfg
            .indexes
            .iter()
            .map(|ix| parse_url(&ix.url))
            .collect::<Result<Vec<_>>>()?;
        let states = vec![IndexState::default(); uris.len()];
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Watcher {
            cfg,
            uris,
            states,
            client,
        })
    }

    /// Time between rounds.
    pub fn interval(&self) -> Duration {
        self.cfg.interval
    }

    /// The state of the `i`-th configured index.
    pub fn state(&self, i: usize) -> Option<&IndexState> {
        self.states.get(i)
    }

    /// One round: asks every index once; returns the changes seen, as
    /// `(repository, version)` to push. Failures are logged and skipped.
    pub async fn poll(&mut self, now_unix: u64) -> Vec<(String, u64)> {
        let mut changed = Vec::new();
        for i in 0..self.uris.len() {
            let repository = &self.cfg.indexes[i].repository;
            let got = match tokio::time::timeout(self.cfg.timeout, self.fetch(i)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Upstream {
                    what: "index",
                    reason: "timed out".into(),
                }),
            };
            match got.and_then(|a| self.states[i].observe(a, now_unix)) {
                Ok(Observed::Changed(v)) => {
                    tracing::info!(repository, version = v, "upstream index changed");
                    changed.push((repository.clone(), v));
                }
                Ok(Observed::Baseline(v)) => {
                    tracing::debug!(repository, version = v, "upstream index baseline")
                }
                Ok(Observed::Unchanged) => tracing::trace!(repository, "upstream index unchanged"),
                Err(e) => {
                    tracing::warn!(repository, error = %e, "watching the upstream index failed")
                }
            }
        }
        changed
    }

    async fn fetch(&self, i: usize) -> Result<Answer> {
        let mut req = Request::get(self.uris[i].clone());
        for (name, value) in self.states[i].conditional_headers() {
            req = req.header(name, value);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Error::bug_from("building a request", e))?;
        let upstream = |reason: String| Error::Upstream {
            what: "index",
            reason,
        };
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| upstream(format!("request: {e}")))?;
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let status = resp.status();
        let digest = if status == StatusCode::OK {
            let body = Limited::new(resp.into_body(), self.cfg.max_body)
                .collect()
                .await
                .map_err(|e| upstream(format!("body: {e}")))?
                .to_bytes();
            Some(*blake3::hash(&body).as_bytes())
        } else {
            None
        };
        Ok(Answer {
            status: status.as_u16(),
            etag,
            last_modified,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(etag: &str, lm: Option<&str>, body: &[u8]) -> Answer {
        Answer {
            status: 200,
            etag: Some(etag.into()),
            last_modified: lm.map(str::to_owned),
            digest: Some(*blake3::hash(body).as_bytes()),
        }
    }

    fn not_modified() -> Answer {
        Answer {
            status: 304,
            etag: None,
            last_modified: None,
            digest: None,
        }
    }

    const LM1: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LM1_UNIX: u64 = 784_111_777;
    const LM2: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    #[test]
    fn baseline_then_304_then_change_versioned_by_last_modified() {
        let mut s = IndexState::default();
        assert!(s.conditional_headers().is_empty(), "first request is plain");
        assert_eq!(
            s.observe(ok("\"a\"", Some(LM1), b"one"), 5).expect("200"),
            Observed::Baseline(LM1_UNIX)
        );
        assert_eq!(
            s.conditional_headers(),
            [
                ("if-none-match", "\"a\"".to_owned()),
                ("if-modified-since", LM1.to_owned())
            ]
        );
        assert_eq!(
            s.observe(not_modified(), 6).expect("304"),
            Observed::Unchanged
        );
        assert_eq!(
            s.observe(ok("\"b\"", Some(LM2), b"two"), 7).expect("200"),
            Observed::Changed(LM1_UNIX + 86_400)
        );
        assert_eq!(s.version(), Some(LM1_UNIX + 86_400));
        assert_eq!(s.conditional_headers()[0].1, "\"b\"");
    }

    #[test]
    fn same_body_is_no_change_and_versions_only_grow() {
        let mut s = IndexState::default();
        assert_eq!(
            s.observe(ok("\"a\"", None, b"one"), 100).expect("200"),
            Observed::Baseline(100),
            "without Last-Modified, the observation time"
        );
        assert_eq!(
            s.observe(ok("\"a2\"", None, b"one"), 200).expect("200"),
            Observed::Unchanged,
            "a new ETag over the same bytes is no change"
        );
        assert_eq!(s.conditional_headers()[0].1, "\"a2\"", "validators follow");
        // An upstream clock that stepped back still yields a larger version.
        assert_eq!(
            s.observe(
                ok("\"b\"", Some("Thu, 01 Jan 1970 00:00:50 GMT"), b"two"),
                300
            )
            .expect("200"),
            Observed::Changed(101)
        );
        assert_eq!(
            s.observe(ok("\"c\"", None, b"three"), 50).expect("200"),
            Observed::Changed(102)
        );
    }

    #[test]
    fn refusals_and_bad_answers_are_upstream_errors() {
        use anonmirror_core::{ErrorKind, HasKind};
        let mut s = IndexState::default();
        let e = s.observe(not_modified(), 1).expect_err("304 first");
        assert_eq!(e.kind(), ErrorKind::Upstream);
        let mut a = ok("x", None, b"");
        a.status = 503;
        assert_eq!(
            s.observe(a, 1).expect_err("503").kind(),
            ErrorKind::Upstream
        );
        assert_eq!(s, IndexState::default(), "a failure keeps the state");
    }

    #[test]
    fn config_fails_closed_naming_the_key() {
        let ix = |repository: &str, url: &str| UpstreamIndex {
            repository: repository.into(),
            url: url.into(),
        };
        let mut cfg = WatchConfig::default();
        assert!(cfg.check().is_ok(), "off");
        cfg.indexes = vec![ix("core", "https://example.org/core.db")];
        assert!(matches!(
            cfg.check(),
            Err(Error::Config {
                key: "upstream.url",
                ..
            })
        ));
        cfg.indexes = vec![
            ix("core", "http://127.0.0.1/a"),
            ix("core", "http://127.0.0.1/b"),
        ];
        assert!(matches!(
            cfg.check(),
            Err(Error::Config {
                key: "upstream.repository",
                ..
            })
        ));
        cfg.indexes.pop();
        cfg.interval = Duration::ZERO;
        assert!(matches!(
            cfg.check(),
            Err(Error::Config {
                key: "upstream.interval",
                ..
            })
        ));
        cfg.interval = Duration::from_secs(1);
        assert!(Watcher::new(cfg).is_ok());
    }
}
