//! `anonmirror demo`: a whole swarm on loopback, in one process.
//!
//! 1. An upstream: a generated Debian-style repository (`Release`,
//!    `Packages`, and package files of mixed sizes with deterministic
//!    content) served over HTTP by [`StaticServer`].
//! 2. A rendezvous.
//! 3. Volunteers at the levels asked for. Each fetches the repository
//!    through its own gateway like any client (the first from the upstream,
//!    later ones partly from earlier volunteers), then announces.
//! 4. A client (level `off`) fetches every package through its gateway and
//!    checks each against the index.
//!
//! It reports (for the command line to print) the bytes the client got by
//! source, the offload ratio, and each volunteer's selection: what it
//! holds, announces and reveals.
//! Volunteers above `open` announce only items whose popularity is known
//! to clear their level's floor; in a swarm this young no popularity is
//! published yet, so they hold but do not serve, and the demo says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anonmirror_core::{Entropy, SeededEntropy};
use anonmirror_mirror::metrics::MetricsSnapshot;
use anonmirror_privacy::{ByteSize, Level, Policy, TransportKind};
use anonmirror_privacy::{RendezvousConfig, Repository, RepositoryKind};
use anonmirror_rendezvous::{Rendezvous, ServerConfig};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};

use crate::err::{Error, Result};
use crate::node::Node;
use crate::options::NodeOptions;
use crate::volunteer::Summary;

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Packages in the generated repository.
    pub packages: usize,
    /// The volunteers' levels.
    pub volunteers: Vec<Level>,
    /// Where everything lives (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// Seed of the generated contents.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            packages: 24,
            volunteers: vec![Level::Open, Level::Open, Level::Open, Level::Balanced],
            dir: None,
            seed: 1,
        }
    }
}

/// What happened.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The client gateway's counters at the end.
    pub client: MetricsSnapshot,
    /// Packages the client fetched and verified.
    pub verified: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Each volunteer's last selection.
    pub volunteers: Vec<(Level, Option<Summary>, MetricsSnapshot)>,
}

/// A package file of the generated repository.
#[derive(Clone, Debug)]
pub struct Package {
    /// Path under the repository root.
    pub path: String,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
}

/// Generate a Debian-style repository of `n` packages under `root`: suite
/// `demo`, component `main`, architecture `all`; plain `Packages`, listed
/// in `Release`. Sizes mix many small files with a few large ones.
pub fn generate_repository(root: &Path, n: usize, seed: u64) -> Result<Vec<Package>> {
    let mut rng = SeededEntropy::new(seed);
    let mut packages = Vec::with_capacity(n);
    let mut text = String::new();
    for i in 0..n {
        let name = format!("demo-pkg{i}");
        // Four in five under 512 KiB, the rest up to 6 MiB.
        let size = if rng.below(5) < 4 {
            4096 + rng.below(512 * 1024)
        } else {
            1024 * 1024 + rng.below(5 * 1024 * 1024)
        };
        let path = format!("pool/main/d/{name}/{name}_1.0-1_all.deb");
        let mut bytes = vec![0u8; size as usize];
        let mut content = SeededEntropy::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        content.fill(&mut bytes);
        let file = root.join(&path);
        if let Some(p) = file.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| Error::state(format!("creating {}", p.display()), e))?;
        }
        std::fs::write(&file, &bytes)
            .map_err(|e| Error::state(format!("writing {}", file.display()), e))?;
        let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(sha.as_ref());
        text.push_str(&format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: all\nFilename: {path}\nSize: {size}\nSHA256: {}\nDescription: demo package {i}\n\n",
            hex::encode(sha256)
        ));
        packages.push(Package { path, sha256, size });
    }
    let dists = root.join("dists/demo");
    let binary = dists.join("main/binary-all");
    std::fs::create_dir_all(&binary)
        .map_err(|e| Error::state(format!("creating {}", binary.display()), e))?;
    let index = binary.join("Packages");
    std::fs::write(&index, &text)
        .map_err(|e| Error::state(format!("writing {}", index.display()), e))?;
    let sha = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let release = format!(
        "Origin: anonmirror demo\nSuite: demo\nCodename: demo\nDate: Sun, 22 Nov 2026 00:00:00 UTC\nArchitectures: all\nComponents: main\nSHA256:\n {} {} main/binary-all/Packages\n",
        hex::encode(sha.as_ref()),
        text.len()
    );
    let release_file = dists.join("Release");
    std::fs::write(&release_file, release)
        .map_err(|e| Error::state(format!("writing {}", release_file.display()), e))?;
    Ok(packages)
}

/// A directory served over HTTP on loopback (GET and HEAD, with
/// `Last-Modified` and `If-Modified-Since`): the demo's upstream mirror.
#[derive(Debug)]
pub struct StaticServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl StaticServer {
    /// Serve `root` on 127.0.0.1 (any port).
    pub async fn start(root: PathBuf) -> Result<StaticServer> {
        StaticServer::start_at(root, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serve `root` on `addr`.
    pub async fn start_at(root: PathBuf, addr: SocketAddr) -> Result<StaticServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::transport(format!("binding the upstream to {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::transport("the upstream's address", e))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let root = Arc::new(root);
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
                let root = root.clone();
                async move { serve_file(&root, &method, &uri, &headers).await }
            });
        let served = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(StaticServer {
            addr,
            stop,
            served: Some(served),
        })
    }

    /// Stop serving and wait until the listener is closed and the requests
    /// under way have finished (dropping it only asks it to stop).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_file(
    root: &Path,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = s;
        r
    };
    let rel = uri.path().trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return status(StatusCode::NOT_FOUND);
    }
    let path = root.join(rel);
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return status(StatusCode::NOT_FOUND);
    };
    if !meta.is_file() {
        return status(StatusCode::NOT_FOUND);
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs()));
    let ims = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let mut r = status(StatusCode::OK);
    if let Some(m) = modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m))
    {
        r.headers_mut().insert(header::LAST_MODIFIED, v);
        if ims.is_some_and(|ims| m <= ims) {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            return r;
        }
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    if *method != Method::HEAD {
        match tokio::fs::read(&path).await {
            Ok(bytes) => *r.body_mut() = Body::from(bytes),
            Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
    r
}

/// A policy for a demo node at `level`: everything under `dir`, every
/// socket on 127.0.0.1 (any port), peers over TCP, the demo's repository.
pub fn node_policy(level: Level, dir: &Path, upstream: &str, rendezvous: &Rendezvous) -> Policy {
    loopback_policy(
        level,
        dir,
        vec![Repository {
            name: "demo".to_owned(),
            kind: RepositoryKind::Apt,
            url: upstream.to_owned(),
        }],
        rendezvous,
    )
}

/// A policy for a node at `level` on loopback: everything under `dir`,
/// every socket on 127.0.0.1 (any port), peers over TCP.
pub fn loopback_policy(
    level: Level,
    dir: &Path,
    repositories: Vec<Repository>,
    rendezvous: &Rendezvous,
) -> Policy {
    loopback_policy_for(level, dir, repositories, rendezvous_config(rendezvous))
}

/// How a node reaches `rendezvous`: its address and both its keys, pinned.
pub fn rendezvous_config(rendezvous: &Rendezvous) -> RendezvousConfig {
    RendezvousConfig {
        address: rendezvous.local_addr().to_string(),
        key: rendezvous.key(),
        directory_key: Some(rendezvous.directory_key()),
    }
}

/// [`loopback_policy`] for a rendezvous known by its configuration (one
/// that may be gone).
pub fn loopback_policy_for(
    level: Level,
    dir: &Path,
    repositories: Vec<Repository>,
    rendezvous: RendezvousConfig,
) -> Policy {
    let mut p = Policy::defaults_for(level);
    p.paths.state_dir = dir.join("state");
    p.paths.cache_dir = dir.join("cache");
    p.cache.max_size = ByteSize::gib(1);
    p.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    p.serve.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    p.serve.upload_rate = anonmirror_privacy::Rate(1 << 30);
    p.transport.kind = TransportKind::Tcp;
    p.repositories = repositories;
    p.rendezvous = Some(rendezvous);
    p
}

/// Fetch the index and `packages` through the gateway at `gateway`,
/// checking each; returns the bytes.
pub async fn fetch_all(gateway: SocketAddr, packages: &[Package]) -> Result<u64> {
    let base = format!("http://{gateway}/demo/");
    for index in ["dists/demo/Release", "dists/demo/main/binary-all/Packages"] {
        let (status, _) = crate::http::get(&format!("{base}{index}")).await?;
        if status != StatusCode::OK {
            return Err(Error::Gateway {
                what: index.to_owned(),
                reason: status.to_string(),
            });
        }
    }
    let mut bytes = 0;
    for p in packages {
        let (status, body) = crate::http::get(&format!("{base}{}", p.path)).await?;
        if status != StatusCode::OK {
            return Err(Error::Gateway {
                what: p.path.clone(),
                reason: status.to_string(),
            });
        }
        let sha = ring::digest::digest(&ring::digest::SHA256, &body);
        if sha.as_ref() != p.sha256 {
            return Err(Error::Gateway {
                what: p.path.clone(),
                reason: "SHA-256 differs from the index".into(),
            });
        }
        bytes += body.len() as u64;
    }
    Ok(bytes)
}

/// Wait (up to 10 s) until `node` holds something and has a session open.
pub async fn wait_announced(node: &Node) -> Result<()> {
    for _ in 0..200 {
        let m = node.gateway().metrics().snapshot();
        if let Some(s) = node.summary()
            && s.held > 0
            && m.session_live == 1
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::NotReady("a volunteer did not announce within 10 s"))
}

/// Run the demo.
pub async fn run(opts: DemoOptions) -> Result<DemoReport> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("anonmirror-demo")
                .tempdir()
                .map_err(|e| Error::state("creating a temporary directory", e))?;
            tmp.path().to_path_buf()
        }
    };
    let packages = generate_repository(&dir.join("upstream"), opts.packages, opts.seed)
        .map_err(|e| Error::context("generating the repository", e))?;
    let upstream = StaticServer::start(dir.join("upstream")).await?;
    let mut cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.join("rendezvous"),
        Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
        Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
    );
    cfg.credentials.pow_difficulty = 8;
    let rendezvous = Rendezvous::start(cfg)
        .await
        .map_err(|source| Error::Rendezvous {
            what: "starting the rendezvous",
            source,
        })?;
    let node_opts = NodeOptions {
        pow_difficulty: 8,
        ..NodeOptions::default()
    };

    let mut volunteers = Vec::new();
    for (i, level) in opts.volunteers.iter().enumerate() {
        let policy = node_policy(
            *level,
            &dir.join(format!("volunteer{i}")),
            &upstream.url(),
            &rendezvous,
        );
        let node = Node::start(policy, node_opts.clone())
            .await
            .map_err(|e| Error::context(format!("starting volunteer {i}"), e))?;
        fetch_all(node.gateway_addr, &packages)
            .await
            .map_err(|e| Error::context(format!("volunteer {i} fetching"), e))?;
        node.reannounce();
        wait_announced(&node).await?;
        volunteers.push((*level, node));
    }

    let client_policy = node_policy(
        Level::Off,
        &dir.join("client"),
        &upstream.url(),
        &rendezvous,
    );
    let client = Node::start(client_policy, node_opts)
        .await
        .map_err(|e| Error::context("starting the client", e))?;
    let bytes = fetch_all(client.gateway_addr, &packages)
        .await
        .map_err(|e| Error::context("the client fetching", e))?;
    let client_metrics = client.gateway().metrics().snapshot();
    client.stop().await;
    // Stopped, each volunteer has counted everything it served.
    let mut summaries = Vec::new();
    for (level, n) in volunteers {
        let summary = n.summary();
        let metrics = n.gateway().metrics().clone();
        n.stop().await;
        summaries.push((level, summary, metrics.snapshot()));
    }
    let report = DemoReport {
        client: client_metrics,
        verified: packages.len(),
        bytes,
        volunteers: summaries,
    };
    rendezvous.shutdown().await;
    upstream.stop().await;
    Ok(report)
}
