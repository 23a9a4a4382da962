//! The HTTP gateway the package manager talks to (127.0.0.1:7878 by
//! default).
//!
//! `GET`/`HEAD /<repository>/<path>`:
//!
//! - an **index file** is fetched from the upstream with the gateway's own
//!   conditional request (the cached copy's `ETag`/`Last-Modified`), learned
//!   ([`crate::repo`]), and answered from that copy; when the upstream
//!   cannot be reached a cached copy is served stale;
//! - an **item** (a package file the current index names) comes from the
//!   store, else from peers, else from the upstream ([`crate::job`]);
//! - **anything else** is passed through to the upstream unchanged and is
//!   never stored or shared.
//!
//! Like a mirror it answers `HEAD` with the headers of `GET`, a single
//! `Range: bytes=…` with `206` (several ranges get the whole file, which
//! RFC 9110 allows), an unsatisfiable range with `416`, and
//! `If-None-Match`/`If-Modified-Since` with `304` when the copy it would
//! serve is unchanged. Items carry a strong `ETag` (their SHA-256).
//!
//! `GET /.anonmirror/metrics` is the Prometheus text of [`Metrics`], and
//! `GET /.anonmirror/history` the counters over time as CSV (repository
//! names cannot start with `.`, so neither collides with one).
//!
//! Web pages cannot use it. A browser on this machine can reach
//! 127.0.0.1, so a page could otherwise read what the gateway answers
//! (DNS rebinding: a name of the page's that resolves to 127.0.0.1) or
//! time it (an `<img>` of a package: fast if held, slow if not). So a
//! request is refused with `403` when its `Host` is a name other than
//! `localhost` (IP literals are fine: no page can rebind one), when it
//! carries an `Origin` that is not such a host, and when `Sec-Fetch-Site`
//! (which browsers send, and package managers never do) says anything but
//! `same-origin` or `none`; nothing is read from the store first, so a
//! refusal takes the same time for every path. Stored items carry no
//! `Last-Modified` (it would tell when each package was fetched).
//!
//! Logs at the default level never carry a path, a package or an item.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anonmirror_core::{Clock, Sensitive};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::job::{Fetcher, Want};
use crate::metrics::{Metrics, Source};
use crate::read_ahead::ReadAheadListener;
use crate::repo::{PathClass, Repo, Validators};
use crate::upstream::{Upstream, join};

/// The most an index file may be.
pub const MAX_INDEX_DOWNLOAD: usize = 512 << 20;

/// How long a request for a file waits for its repository's indexes
/// being learned (a distribution's takes a second or two).
pub const LEARN_WAIT: Duration = Duration::from_secs(30);

/// The gateway's shared state.
pub struct Gateway {
    repos: HashMap<String, Arc<Repo>>,
    fetcher: Arc<Fetcher>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("repos", &self.repos.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway for `repos`.
    pub fn new(
        repos: Vec<Arc<Repo>>,
        fetcher: Arc<Fetcher>,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Gateway {
        Gateway {
            repos: repos.into_iter().map(|r| (r.name.clone(), r)).collect(),
            fetcher,
            upstream,
            metrics,
            clock,
        }
    }

    /// The repositories.
    pub fn repos(&self) -> impl Iterator<Item = &Arc<Repo>> {
        self.repos.values()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The fetcher.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// Fetch every index of `repo` the gateway has learned again
    /// (conditionally), as a pushed snapshot change asks. Returns how many
    /// were answered.
    pub async fn refresh(self: &Arc<Self>, repo: &Arc<Repo>) -> usize {
        let mut n = 0;
        let paths = {
            let r = repo.clone();
            tokio::task::spawn_blocking(move || r.cached_paths())
                .await
                .unwrap_or_default()
        };
        for path in paths {
            let r = index(self, repo, &path, &HeaderMap::new(), true).await;
            if r.status().is_success() {
                n += 1;
            }
        }
        n
    }
}

impl Gateway {
    /// The repository and the path under it that a request path names, or
    /// the status and reason to refuse it with.
    fn route(&self, path: &str) -> Result<(Arc<Repo>, String), (StatusCode, &'static str)> {
        let decoded = percent_decode(path).ok_or((
            StatusCode::BAD_REQUEST,
            "malformed percent-encoding in the path",
        ))?;
        let trimmed = decoded.trim_start_matches('/');
        let (name, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let repo = self.repos.get(name).cloned().ok_or((
            StatusCode::NOT_FOUND,
            "no such repository on this gateway (see the policy's [[repository]] tables)",
        ))?;
        if rest.is_empty() || rest.split('/').any(|c| c == ".." || c == ".") {
            return Err((
                StatusCode::BAD_REQUEST,
                "not a file path under the repository",
            ));
        }
        Ok((repo, rest.to_owned()))
    }

    /// A request for `target` was read ahead of the one being answered: if
    /// it names an item of known size that the store does not hold, its
    /// download starts now, or is joined (the request joins it when
    /// answered).
    fn read_ahead(self: &Arc<Self>, target: &str) {
        let path = target.split(['?', '#']).next().unwrap_or_default();
        let Ok((repo, rest)) = self.route(path) else {
            return;
        };
        let PathClass::Item(item) = repo.classify(&rest) else {
            return;
        };
        let Some(size) = item.size else {
            return;
        };
        let want = want(&repo, &rest, item.key, size);
        if self.fetcher.job_unless_held(want).is_some() {
            tracing::debug!("read ahead: download started or joined");
        }
    }
}

/// The download of item `key` (`size` bytes) at `rest` under `repo`.
fn want(repo: &Repo, rest: &str, key: anonmirror_core::ItemKey, size: u64) -> Want {
    Want {
        key,
        size,
        repository: repo.name.clone(),
        version: repo.version(),
        url: join(&repo.base, rest),
    }
}

/// Serve `gateway` on `listener` until `cancel` is cancelled; requests
/// under way are answered first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // Pipelined requests start their downloads as they arrive, not when
    // hyper reaches them (see `read_ahead`).
    let ahead = gateway.clone();
    let listener = ReadAheadListener::new(
        listener,
        Arc::new(move |target: &str| ahead.read_ahead(target)),
    );
    let app = axum::Router::new().fallback(handle).with_state(gateway);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

/// Bind `addr` and serve in the background until `cancel` is cancelled;
/// returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(serve(listener, gateway, cancel))))
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `%XX` decoded; `None` if that is not UTF-8 or malformed.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `host` (a `Host` header's value, or an origin's host and port)
/// names this machine in a way no web page can rebind: an IP literal, or
/// `localhost`.
fn host_allowed(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// Refuses what a web page would send (see the module docs): why, if so.
fn from_this_machine(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name| {
        headers
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap_or("\u{fffd}"))
    };
    if let Some(host) = text(header::HOST)
        && !host_allowed(host)
    {
        return Err("the gateway answers only requests for 127.0.0.1, [::1] or localhost");
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !host.is_some_and(host_allowed) {
            return Err("the gateway answers no web page");
        }
    }
    if let Some(site) = text(HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Err("the gateway answers no web page");
    }
    Ok(())
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    gw.metrics.request();
    if let Err(why) = from_this_machine(&headers) {
        return plain(StatusCode::FORBIDDEN, why);
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = uri.path();
    if path == "/.anonmirror/metrics" {
        let mut r = Response::new(Body::from(gw.metrics.prometheus()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    if path == "/.anonmirror/history" {
        gw.metrics.sample(gw.clock.unix_secs());
        let mut r = Response::new(Body::from(gw.metrics.history_csv()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        return r;
    }
    let (repo, rest) = match gw.route(path) {
        Ok(found) => found,
        Err((status, why)) => return plain(status, why),
    };
    let rest = rest.as_str();
    if !repo.is_index_path(rest) {
        // An index still arriving may name this file: match it against
        // that index, not the one before.
        let _ = tokio::time::timeout(LEARN_WAIT, repo.settled()).await;
    }
    let head = method == Method::HEAD;
    let response = match repo.classify(rest) {
        PathClass::Index => {
            // An index request: packages are likely to follow.
            gw.fetcher.warm_up();
            index(&gw, &repo, rest, &headers, head).await
        }
        PathClass::Item(item) => {
            let size = match item.size {
                Some(s) => Some(s),
                None => upstream_size(&gw, &join(&repo.base, rest)).await,
            };
            match size {
                Some(size) => {
                    serve_item(&gw, want(&repo, rest, item.key, size), &headers, head).await
                }
                None => passthrough(&gw, &repo, rest, &method, &headers).await,
            }
        }
        PathClass::Other => passthrough(&gw, &repo, rest, &method, &headers).await,
    };
    tracing::debug!(
        path = %Sensitive::new(rest),
        status = response.status().as_u16(),
        "answered"
    );
    response
}

async fn upstream_size(gw: &Gateway, url: &str) -> Option<u64> {
    let r = gw
        .upstream
        .request(Method::HEAD, url, &HeaderMap::new())
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A single byte range of a `size`-byte entity.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

fn parse_range(headers: &HeaderMap, size: u64) -> RangeAsk {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAsk::Whole;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, false) => b.parse::<u64>().ok().map(|n| {
            if n == 0 {
                None
            } else {
                Some((size.saturating_sub(n), size))
            }
        }),
        (false, _) => a.parse::<u64>().ok().and_then(|start| {
            let end = if b.is_empty() {
                Some(size)
            } else {
                b.parse::<u64>().ok().map(|e| e.saturating_add(1).min(size))
            }?;
            Some(if start >= size || end <= start {
                None
            } else {
                Some((start, end))
            })
        }),
        (true, true) => None,
    };
    match parsed {
        None => RangeAsk::Whole,
        Some(None) => RangeAsk::Unsatisfiable,
        Some(Some((s, e))) if s == 0 && e == size => RangeAsk::Whole,
        Some(Some((s, e))) => RangeAsk::Part(s, e),
    }
}

fn not_modified(
    headers: &HeaderMap,
    etag: Option<&str>,
    last_modified: Option<SystemTime>,
) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return etag.is_some_and(|e| {
            inm.split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == e)
        });
    }
    let ims = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    match (ims, last_modified) {
        (Some(ims), Some(lm)) => lm <= ims,
        _ => false,
    }
}

/// Headers, status and body for a `size`-byte entity, honoring
/// conditionals and ranges; `body` yields the chosen range.
fn entity<F>(
    headers: &HeaderMap,
    head: bool,
    size: u64,
    etag: Option<&str>,
    last_modified: Option<SystemTime>,
    body: F,
) -> Response<Body>
where
    F: FnOnce(u64, u64) -> Body,
{
    let mut r = Response::new(Body::empty());
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(header::ETAG, e);
    }
    if let Some(lm) =
        last_modified.and_then(|t| HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok())
    {
        h.insert(header::LAST_MODIFIED, lm);
    }
    if not_modified(headers, etag, last_modified) {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    let (start, end) = match parse_range(headers, size) {
        RangeAsk::Whole => (0, size),
        RangeAsk::Part(s, e) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{}/{size}", e - 1)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (s, e)
        }
        RangeAsk::Unsatisfiable => {
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if !head {
        *r.body_mut() = body(start, end);
    }
    r
}

async fn serve_item(gw: &Gateway, want: Want, headers: &HeaderMap, head: bool) -> Response<Body> {
    let etag = format!("\"{}\"", hex::encode(want.key.0));
    // Twice at most: a job that ends between the look at the store and the
    // call for a job has put the item in the store.
    let mut tries = 0;
    let job = loop {
        tries += 1;
        let store = gw.fetcher.store().clone();
        let key = want.key;
        let opened = tokio::task::spawn_blocking(move || store.open_item(&key)).await;
        if let Ok(Ok(Some(reader))) = opened
            && reader.meta.size == want.size
        {
            return from_store(gw, reader, &want, headers, head, &etag);
        }
        if head {
            // The index vouches for the size: no need to fetch anything.
            return entity(headers, true, want.size, Some(&etag), None, |_, _| {
                Body::empty()
            });
        }
        match gw.fetcher.job_unless_held(want.clone()) {
            Some(job) => break job,
            None if tries < 2 => continue,
            // Held, yet not to be opened: fetched anew.
            None => break gw.fetcher.job(want.clone()),
        }
    };
    let size = want.size;
    let metrics = gw.metrics.clone();
    entity(headers, false, size, Some(&etag), None, move |s, e| {
        Body::from_stream(job.stream(s, e, metrics))
    })
}

/// A stored item, answered from its file.
fn from_store(
    gw: &Gateway,
    reader: anonmirror_store::ItemReader,
    want: &Want,
    headers: &HeaderMap,
    head: bool,
    etag: &str,
) -> Response<Body> {
    // No Last-Modified: the file's time is when this machine fetched the
    // package.
    let metrics = gw.metrics.clone();
    entity(headers, head, want.size, Some(etag), None, move |s, e| {
        Body::from_stream(file_stream(reader, s, e, metrics))
    })
}

/// `start..end` of a stored item; the reader keeps it pinned meanwhile.
fn file_stream(
    reader: anonmirror_store::ItemReader,
    start: u64,
    end: u64,
    metrics: Arc<Metrics>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let file = reader.file.try_clone().map(tokio::fs::File::from_std);
    let state = (file, Some(reader), start, false);
    futures_util::stream::unfold(state, move |(file, reader, pos, seeked)| {
        let metrics = metrics.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            if pos >= end {
                return None;
            }
            let mut f = match file {
                Ok(f) => f,
                Err(e) => {
                    return Some((
                        Err(e),
                        (Err(std::io::Error::other("closed")), None, end, true),
                    ));
                }
            };
            if !seeked && let Err(e) = f.seek(std::io::SeekFrom::Start(pos)).await {
                return Some((Err(e), (Ok(f), None, end, true)));
            }
            let want = (end - pos).min(256 * 1024) as usize;
            let mut buf = vec![0u8; want];
            match f.read_exact(&mut buf).await {
                Ok(_) => {
                    metrics.item_bytes(Source::Store, want as u64);
                    Some((
                        Ok(Bytes::from(buf)),
                        (Ok(f), reader, pos + want as u64, true),
                    ))
                }
                Err(e) => Some((Err(e), (Ok(f), None, end, true))),
            }
        }
    })
}

async fn index(
    gw: &Arc<Gateway>,
    repo: &Arc<Repo>,
    rest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Response<Body> {
    let url = join(&repo.base, rest);
    let cached = {
        let (r, p) = (repo.clone(), rest.to_owned());
        tokio::task::spawn_blocking(move || r.cached(&p))
            .await
            .ok()
            .flatten()
    };
    let mut extra = Vec::new();
    if let Some((_, v)) = &cached {
        if let Some(e) = v
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            extra.push((header::IF_NONE_MATCH, e));
        }
        if let Some(lm) = v
            .last_modified
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            extra.push((header::IF_MODIFIED_SINCE, lm));
        }
    }
    let fresh = match gw.upstream.get_with(&url, &extra).await {
        Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED && cached.is_some() => cached,
        Ok(resp) if resp.status() == StatusCode::OK => {
            let validators = Validators {
                etag: header_str(resp.headers(), header::ETAG),
                last_modified: header_str(resp.headers(), header::LAST_MODIFIED),
            };
            if !head && unconditional(headers) {
                // Passed on as it arrives, learned once whole.
                return stream_index(gw, repo, rest, resp, validators);
            }
            let learning = repo.start_learning();
            let started = std::time::Instant::now();
            match http_body_util::Limited::new(resp.into_body(), MAX_INDEX_DOWNLOAD)
                .collect()
                .await
            {
                Ok(body) => {
                    let body = body.to_bytes();
                    gw.upstream
                        .observe_body(body.len() as u64, started.elapsed());
                    learn(gw, repo, rest, body.clone(), validators.clone()).await;
                    drop(learning);
                    Some((body.to_vec(), validators))
                }
                Err(e) => {
                    tracing::info!(error = %e, "index download failed");
                    cached
                }
            }
        }
        Ok(resp) => {
            // 404 and the like: the package manager decides what they mean.
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut r = Response::new(if head {
                Body::empty()
            } else {
                Body::from(body)
            });
            *r.status_mut() = status;
            return r;
        }
        Err(e) => {
            tracing::info!(error = %e, "upstream unreachable for an index");
            if cached.is_none() {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream unreachable: {e}"),
                );
            }
            cached
        }
    };
    let Some((body, validators)) = fresh else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "upstream answered 304 to an unconditional request",
        );
    };
    gw.metrics.index_bytes(body.len() as u64);
    let lm = validators
        .last_modified_unix()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s));
    let body = Bytes::from(body);
    entity(
        headers,
        head,
        body.len() as u64,
        validators.etag.as_deref(),
        lm,
        move |s, e| Body::from(body.slice(s as usize..e as usize)),
    )
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Whether a request asks for the whole entity whatever it is (no range,
/// no condition): then an index can be passed on as it arrives.
fn unconditional(headers: &HeaderMap) -> bool {
    [
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .all(|h| !headers.contains_key(h))
}

/// Parses a downloaded index into the repository (and its cache).
async fn learn(gw: &Gateway, repo: &Arc<Repo>, rest: &str, body: Bytes, validators: Validators) {
    let (r, p) = (repo.clone(), rest.to_owned());
    let now = gw.clock.unix_secs();
    match tokio::task::spawn_blocking(move || r.learn(&p, &body, &validators, now)).await {
        Ok(Ok(n)) if n > 0 => {
            tracing::info!(repository = %repo.name, items = n, "index learned")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            gw.metrics.index_error();
            tracing::warn!(
                repository = %repo.name,
                error = %e,
                "index not usable: its items pass through to the upstream"
            );
        }
        Err(e) => tracing::warn!(error = %e, "index parser panicked"),
    }
}

/// An index passed on to the package manager as the upstream sends it
/// (a distribution's is tens of MB: waiting for all of it, then for its
/// parse, cost `apt-get update` half again its time), and learned once
/// whole, while item requests wait for it ([`Repo::settled`]). A download
/// that breaks off, or outgrows [`MAX_INDEX_DOWNLOAD`], breaks the answer
/// off too, and nothing is learned.
fn stream_index(
    gw: &Arc<Gateway>,
    repo: &Arc<Repo>,
    rest: &str,
    resp: Response<hyper::body::Incoming>,
    validators: Validators,
) -> Response<Body> {
    let learning = repo.start_learning();
    let mut out = Response::new(Body::empty());
    let h = out.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    for name in [header::CONTENT_LENGTH, header::ETAG, header::LAST_MODIFIED] {
        if let Some(v) = resp.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    *out.body_mut() = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|piece| (piece, rx))
    }));
    let (gw, repo, rest) = (gw.clone(), repo.clone(), rest.to_owned());
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut body = resp.into_body();
        let mut whole = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let piece = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Err(e) => {
                    tracing::info!(error = %e, "index download failed");
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            if whole.len() + piece.len() > MAX_INDEX_DOWNLOAD {
                tracing::info!("index download over its limit");
                let _ = tx
                    .send(Err(std::io::Error::other("index over its limit")))
                    .await;
                return;
            }
            whole.extend_from_slice(&piece);
            // A package manager that went away still has the index learned.
            let _ = tx.send(Ok(piece)).await;
        }
        drop(tx);
        let whole = whole.freeze();
        gw.upstream
            .observe_body(whole.len() as u64, started.elapsed());
        gw.metrics.index_bytes(whole.len() as u64);
        learn(&gw, &repo, &rest, whole, validators).await;
        drop(learning);
    });
    out
}

async fn passthrough(
    gw: &Gateway,
    repo: &Repo,
    rest: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    let url = join(&repo.base, rest);
    let resp = match gw.upstream.request(method.clone(), &url, headers).await {
        Ok(r) => r,
        Err(e) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                &format!("upstream unreachable: {e}"),
            );
        }
    };
    let mut out = Response::new(Body::empty());
    *out.status_mut() = resp.status();
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::LAST_MODIFIED,
        header::ETAG,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    if *method != Method::HEAD {
        let metrics = gw.metrics.clone();
        let stream = resp.into_body().into_data_stream().map(move |r| {
            r.inspect(|b| metrics.passthrough_bytes(b.len() as u64))
                .map_err(std::io::Error::other)
        });
        *out.body_mut() = Body::from_stream(stream);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn ranges_behave_as_a_mirror_s() {
        assert_eq!(parse_range(&HeaderMap::new(), 10), RangeAsk::Whole);
        assert_eq!(
            parse_range(&with_range("bytes=2-4"), 10),
            RangeAsk::Part(2, 5)
        );
        assert_eq!(
            parse_range(&with_range("bytes=7-"), 10),
            RangeAsk::Part(7, 10)
        );
        assert_eq!(
            parse_range(&with_range("bytes=-3"), 10),
            RangeAsk::Part(7, 10)
        );
        assert_eq!(
            parse_range(&with_range("bytes=5-100"), 10),
            RangeAsk::Part(5, 10)
        );
        assert_eq!(parse_range(&with_range("bytes=0-"), 10), RangeAsk::Whole);
        assert_eq!(
            parse_range(&with_range("bytes=10-"), 10),
            RangeAsk::Unsatisfiable
        );
        assert_eq!(
            parse_range(&with_range("bytes=-0"), 10),
            RangeAsk::Unsatisfiable
        );
        assert_eq!(
            parse_range(&with_range("bytes=1-2,4-5"), 10),
            RangeAsk::Whole
        );
        assert_eq!(parse_range(&with_range("items=1-2"), 10), RangeAsk::Whole);
    }

    #[test]
    fn conditionals_prefer_the_etag() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("date"),
        );
        assert!(not_modified(&h, None, Some(t)));
        assert!(!not_modified(&h, None, Some(t + Duration::from_secs(1))));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"b\""));
        assert!(!not_modified(&h, Some("\"a\""), Some(t)));
        assert!(not_modified(&h, Some("\"b\""), None));
    }

    #[test]
    fn paths_are_percent_decoded_strictly() {
        assert_eq!(percent_decode("/a/b%3A1").as_deref(), Some("/a/b:1"));
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/a%ff"), None);
    }
}
