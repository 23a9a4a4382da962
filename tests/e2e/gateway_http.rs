//! The gateway as HTTP: HEAD, Range and conditional requests behave as a
//! mirror's would; a malformed index makes its repository pass requests
//! through; a volunteer reconnects after a rendezvous restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_node::demo::{StaticServer, generate_repository, node_policy};
use anonmirror_node::{Node, NodeOptions};
use anonmirror_privacy::Level;
use anonmirror_rendezvous::{Rendezvous, ServerConfig};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::support::TestDir;

async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(req.body(Empty::new()).expect("request")),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

async fn rendezvous(dir: &std::path::Path, listen: SocketAddr) -> Rendezvous {
    let mut cfg = ServerConfig::new(
        listen,
        dir.join("rendezvous"),
        Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
        Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
    );
    cfg.credentials.pow_difficulty = 8;
    Rendezvous::start(cfg).await.expect("rendezvous")
}

fn opts() -> NodeOptions {
    NodeOptions {
        pow_difficulty: 8,
        ..NodeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_range_and_conditionals_behave_as_a_mirror_s() {
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 2, 3).expect("repository");
    let upstream = StaticServer::start(upstream_dir.clone())
        .await
        .expect("upstream");
    let rv = rendezvous(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let policy = node_policy(Level::Off, &dir.path().join("node"), &upstream.url(), &rv);
    let node = Node::start(policy, opts()).await.expect("node");
    let base = format!("http://{}/demo/", node.gateway_addr);

    // The index, then a conditional request for it: 304.
    let (s, h, release) = request(Method::GET, &format!("{base}dists/demo/Release"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let lm = h
        .get("last-modified")
        .expect("indexes carry Last-Modified")
        .to_str()
        .expect("ascii")
        .to_owned();
    let (s, _, body) = request(
        Method::GET,
        &format!("{base}dists/demo/Release"),
        &[("if-modified-since", &lm)],
    )
    .await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    let (s, _, _) = request(
        Method::GET,
        &format!("{base}dists/demo/main/binary-all/Packages"),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!release.is_empty());

    // HEAD of an item not yet fetched: the index's size, nothing fetched.
    let p = &packages[1];
    let url = format!("{base}{}", p.path);
    let (s, h, body) = request(Method::HEAD, &url, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-length"], p.size.to_string().as_str());
    assert_eq!(h["etag"], format!("\"{}\"", hex::encode(p.sha256)).as_str());
    assert!(body.is_empty());
    assert_eq!(node.gateway().metrics().snapshot().from_upstream, 0);

    // A range of it while it is being fetched, then from the store.
    let whole = std::fs::read(upstream_dir.join(&p.path)).expect("file");
    let (s, h, body) = request(Method::GET, &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        h["content-range"],
        format!("bytes 100-199/{}", p.size).as_str()
    );
    assert_eq!(body, whole[100..200]);
    let store = node.gateway().fetcher().store().clone();
    for _ in 0..200 {
        if matches!(store.meta(&anonmirror_core::ItemKey(p.sha256)), Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (s, _, body) = request(Method::GET, &url, &[("range", "bytes=-10")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, whole[whole.len() - 10..]);
    let (s, h, _) = request(
        Method::GET,
        &url,
        &[("range", &format!("bytes={}-", p.size))],
    )
    .await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h["content-range"], format!("bytes */{}", p.size).as_str());
    // The stored copy answers If-None-Match with its ETag.
    let etag = format!("\"{}\"", hex::encode(p.sha256));
    let (s, _, _) = request(Method::GET, &url, &[("if-none-match", &etag)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let (s, _, body) = request(Method::GET, &url, &[]).await;
    assert_eq!((s, body == whole), (StatusCode::OK, true));
    assert!(node.gateway().metrics().snapshot().from_store >= p.size);

    // Other methods are refused; unknown repositories are 404.
    let (s, h, _) = request(Method::POST, &url, &[]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h["allow"], "GET, HEAD");
    let (s, _, _) = request(
        Method::GET,
        &format!("http://{}/nope/x", node.gateway_addr),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    node.stop().await;
    rv.shutdown().await;
}

/// An index asked for without conditions is passed on as it arrives, whole
/// and unchanged, and a package asked for the moment it is through is
/// matched against it (fetched as an item and stored), not passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_passed_on_as_it_arrives_is_learned_before_its_packages_are_asked() {
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 3, 3).expect("repository");
    let upstream = StaticServer::start(upstream_dir.clone())
        .await
        .expect("upstream");
    let rv = rendezvous(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let policy = node_policy(Level::Off, &dir.path().join("node"), &upstream.url(), &rv);
    let node = Node::start(policy, opts()).await.expect("node");
    let base = format!("http://{}/demo/", node.gateway_addr);
    for index in ["dists/demo/Release", "dists/demo/main/binary-all/Packages"] {
        let (s, h, body) = request(Method::GET, &format!("{base}{index}"), &[]).await;
        assert_eq!(s, StatusCode::OK, "{index}");
        let file = std::fs::read(upstream_dir.join(index)).expect("index file");
        assert_eq!(body, file, "{index} unchanged");
        assert_eq!(h["content-length"], file.len().to_string().as_str());
        assert!(
            h.contains_key("last-modified"),
            "{index} keeps its validators"
        );
    }
    let p = &packages[2];
    let (s, _, body) = request(Method::GET, &format!("{base}{}", p.path), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        std::fs::read(upstream_dir.join(&p.path)).expect("package")
    );
    let store = node.gateway().fetcher().store().clone();
    let key = anonmirror_core::ItemKey(p.sha256);
    for _ in 0..400 {
        if matches!(store.meta(&key), Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        matches!(store.meta(&key), Ok(Some(_))),
        "the package was matched against the index and stored"
    );
    assert_eq!(node.gateway().metrics().snapshot().passthrough, 0);
    node.stop().await;
    rv.shutdown().await;
}

/// A volunteer whose sessions fail before they open (its peer port taken)
/// keeps the token each attempt bought and reports popularity once: far
/// more attempts than its credential's quota of tokens for the epoch, and
/// once the port is free its session opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_session_attempts_do_not_use_up_the_token_quota() {
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    generate_repository(&upstream_dir, 1, 5).expect("repository");
    let upstream = StaticServer::start(upstream_dir).await.expect("upstream");
    let mut cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().join("rendezvous"),
        Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
        Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
    );
    cfg.credentials.pow_difficulty = 8;
    // One attempt's worth: a report's token and a session's.
    cfg.credentials.tokens_per_epoch = 2;
    let rv = Rendezvous::start(cfg).await.expect("rendezvous");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut policy = node_policy(Level::Open, &dir.path().join("node"), &upstream.url(), &rv);
    policy.serve.listen = taken.local_addr().expect("addr");
    let node = Node::start(policy, opts()).await.expect("node");
    let log = dir.path().join("node/state");
    // Retries back off from half a second, doubling: within 10 s the node
    // has tried several times, more often than the quota would allow had
    // each attempt bought its tokens.
    let attempts = || node.gateway().metrics().snapshot();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(attempts().session_live, 0, "the port is taken");
    drop(taken);
    let mut live = false;
    for _ in 0..1200 {
        if attempts().session_live == 1 {
            live = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        live,
        "the session opened once the port was free: {:?}",
        attempts()
    );
    assert!(log.join("credential").exists());
    node.stop().await;
    rv.shutdown().await;
}

/// An upstream serving `root` that holds the answer for `held` until it
/// has been asked for every path of `others` (or 30 s passed): it can only
/// answer if its client asked for them before it had the first one. It
/// reads requests ahead of its answers, so it sees those pipelined on one
/// connection behind the held one as well as those on connections of
/// their own.
async fn holding_upstream(
    root: std::path::PathBuf,
    held: String,
    others: Vec<String>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Requests seen so far, on any connection, pipelined or not.
    let asked = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let all_before = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let flag = all_before.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (root, held, others) = (root.clone(), held.clone(), others.clone());
            let (asked, arrived, flag) = (asked.clone(), arrived.clone(), flag.clone());
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                // The reader records each request as its bytes arrive and
                // queues it; the writer answers them in order. So requests
                // pipelined behind the held one are seen while it waits,
                // as a server that reads ahead sees them.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let (asked2, arrived2) = (asked.clone(), arrived.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = rd.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let path = head
                                .split_whitespace()
                                .nth(1)
                                .unwrap_or("/")
                                .trim_start_matches('/')
                                .to_owned();
                            asked2.lock().expect("lock").insert(path.clone());
                            arrived2.notify_waiters();
                            if tx.send(path).is_err() {
                                return;
                            }
                        }
                    }
                });
                while let Some(path) = rx.recv().await {
                    if path == held {
                        let all = || {
                            let a = asked.lock().expect("lock");
                            others.iter().all(|o| a.contains(o))
                        };
                        let waited = tokio::time::timeout(Duration::from_secs(30), async {
                            while !all() {
                                let n = arrived.notified();
                                if all() {
                                    break;
                                }
                                n.await;
                            }
                        })
                        .await;
                        flag.store(waited.is_ok(), Ordering::SeqCst);
                    }
                    let answer = match std::fs::read(root.join(&path)) {
                        Ok(body) => {
                            let mut a = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            a.extend_from_slice(&body);
                            a
                        }
                        Err(_) => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    if wr.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, all_before)
}

async fn read_response(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    conn.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await.expect("header");
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.expect("body");
    (status, body)
}

/// apt pipelines its requests on one connection; the gateway answers them
/// all, in order, and starts each download as its request arrives, not
/// when the answer before it is done. The upstream here answers the first
/// package only once it has been asked for all the others: a gateway that
/// fetched one package after the other would never get its first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order_and_fetched_at_once() {
    use tokio::io::AsyncWriteExt;
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 6, 11).expect("repository");
    let paths: Vec<String> = packages.iter().map(|p| p.path.clone()).collect();
    let (upstream, held_until_all_asked) =
        holding_upstream(upstream_dir.clone(), paths[0].clone(), paths[1..].to_vec()).await;
    let rv = rendezvous(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let policy = node_policy(
        Level::Off,
        &dir.path().join("node"),
        &format!("http://{upstream}/"),
        &rv,
    );
    let node = Node::start(policy, opts()).await.expect("node");
    let base = format!("http://{}/demo/", node.gateway_addr);
    for index in ["dists/demo/Release", "dists/demo/main/binary-all/Packages"] {
        let (s, _, _) = request(Method::GET, &format!("{base}{index}"), &[]).await;
        assert_eq!(s, StatusCode::OK, "{index}");
    }

    let tcp = tokio::net::TcpStream::connect(node.gateway_addr)
        .await
        .expect("connect");
    let mut conn = tokio::io::BufReader::new(tcp);
    let mut pipelined = String::new();
    for p in &paths {
        pipelined.push_str(&format!(
            "GET /demo/{p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        ));
    }
    conn.get_mut()
        .write_all(pipelined.as_bytes())
        .await
        .expect("send every request at once");
    for p in &paths {
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(60), read_response(&mut conn))
                .await
                .unwrap_or_else(|_| panic!("no answer for {p}"));
        assert_eq!(status, 200, "{p}");
        let want = std::fs::read(upstream_dir.join(p)).expect("file");
        assert!(
            body == want,
            "{p}: the answers come in request order, whole"
        );
    }
    assert!(
        held_until_all_asked.load(std::sync::atomic::Ordering::SeqCst),
        "the gateway asked the upstream for the later packages before the first was answered"
    );
    node.stop().await;
    rv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_index_makes_its_repository_pass_through() {
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 1, 4).expect("repository");
    // Packages loses a digit of its SHA256 (and the Release still lists
    // the good copy's hash): the gateway must not use it.
    let pk = upstream_dir.join("dists/demo/main/binary-all/Packages");
    let text = std::fs::read_to_string(&pk).expect("read");
    let broken = text.replacen("SHA256: ", "SHA256: x", 1);
    std::fs::write(&pk, broken).expect("write");
    let upstream = StaticServer::start(upstream_dir.clone())
        .await
        .expect("upstream");
    let rv = rendezvous(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let policy = node_policy(Level::Off, &dir.path().join("node"), &upstream.url(), &rv);
    let node = Node::start(policy, opts()).await.expect("node");
    let base = format!("http://{}/demo/", node.gateway_addr);
    for index in ["dists/demo/Release", "dists/demo/main/binary-all/Packages"] {
        let (s, _, _) = request(Method::GET, &format!("{base}{index}"), &[]).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{index} still reaches the package manager"
        );
    }
    let (s, _, body) = request(Method::GET, &format!("{base}{}", packages[0].path), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.len() as u64, packages[0].size);
    let m = node.gateway().metrics().snapshot();
    assert_eq!(m.index_errors, 1, "{m:?}");
    assert_eq!(m.passthrough, packages[0].size, "{m:?}");
    assert_eq!(m.from_upstream + m.from_peers, 0, "{m:?}");
    assert!(
        node.gateway()
            .fetcher()
            .store()
            .list()
            .expect("list")
            .is_empty()
    );
    node.stop().await;
    rv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volunteer_reconnects_after_the_rendezvous_restarts() {
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    generate_repository(&upstream_dir, 1, 5).expect("repository");
    let upstream = StaticServer::start(upstream_dir).await.expect("upstream");
    let rv = rendezvous(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let addr = rv.local_addr();
    let policy = node_policy(Level::Open, &dir.path().join("node"), &upstream.url(), &rv);
    let node = Node::start(policy, opts()).await.expect("node");
    let live = |n: &Node| n.gateway().metrics().snapshot();
    for _ in 0..200 {
        if live(&node).session_live == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(live(&node).session_live, 1);
    let opened = live(&node).sessions_opened;

    // kill: sessions are soft state; the credential and keys survive.
    rv.shutdown().await;
    let rv = rendezvous(dir.path(), addr).await;
    for _ in 0..400 {
        if live(&node).sessions_opened > opened && live(&node).session_live == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let m = live(&node);
    assert!(m.sessions_opened > opened && m.session_live == 1, "{m:?}");
    // It kept its credential: one registration in its state directory.
    assert!(dir.path().join("node/state/credential").exists());
    node.stop().await;
    rv.shutdown().await;
}

/// The privacy pipeline end to end: a volunteer's popularity report is
/// counted, the counts are published at the next epoch, a `balanced`
/// volunteer's selection pads its announcement with a popular item it does
/// not hold, and fetches that item before it announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_volunteer_pads_with_popular_items_fetched_before_they_are_announced() {
    use anonmirror_privacy::{ExposureBudget, Randomization};
    const EPOCH: u64 = 3;
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 3, 6).expect("repository");
    let upstream = StaticServer::start(upstream_dir).await.expect("upstream");
    let mut cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().join("rendezvous"),
        Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
        Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
    );
    cfg.credentials.pow_difficulty = 8;
    cfg.credentials.tokens_per_epoch = 64;
    cfg.epoch_secs = EPOCH;
    cfg.maintenance_interval = Duration::from_millis(200);
    let rv = Rendezvous::start(cfg).await.expect("rendezvous");
    // Small epochs, exact reports (no randomization) and a floor of one
    // holder, so that three packages and two volunteers make a canonical
    // set within seconds.
    let tune = |mut p: anonmirror_privacy::Policy| {
        p.announce.epoch_secs = EPOCH;
        p.announce.exposure_budget_bits = ExposureBudget::Unlimited;
        p.popularity.min_holders = 1;
        p.popularity.min_fraction = 0.0;
        p.popularity.randomization = Randomization {
            h: 1,
            f: 0.0,
            p: 0.0,
            q: 1.0,
        };
        p
    };
    let open = Node::start(
        tune(node_policy(
            Level::Open,
            &dir.path().join("open"),
            &upstream.url(),
            &rv,
        )),
        opts(),
    )
    .await
    .expect("open volunteer");
    anonmirror_node::demo::fetch_all(open.gateway_addr, &packages)
        .await
        .expect("open volunteer fetches");
    let balanced_policy = tune(node_policy(
        Level::Balanced,
        &dir.path().join("balanced"),
        &upstream.url(),
        &rv,
    ));
    let policy_file = dir.path().join("balanced.toml");
    std::fs::write(
        &policy_file,
        toml::to_string(&balanced_policy).expect("policy as TOML"),
    )
    .expect("write policy");
    let balanced = Node::start(balanced_policy, opts())
        .await
        .expect("balanced volunteer");
    anonmirror_node::demo::fetch_all(balanced.gateway_addr, &packages[..1])
        .await
        .expect("balanced volunteer fetches one");
    // Forty more peers report holding every package (two volunteers alone
    // are too few for any lower confidence bound to clear a floor).
    // Popularity is counted by package (repository "demo", names
    // demo-pkg0, demo-pkg1, ...), whatever the version.
    let keys: Vec<anonmirror_core::ItemKey> = (0..packages.len())
        .map(|i| anonmirror_announce::popularity_key("demo", &format!("demo-pkg{i}")))
        .collect();
    // Tokens are bought and spent within one epoch of three seconds: each
    // try starts early in an epoch, and one that met a turn anyway (a
    // loaded machine) is retried.
    let mut injected = Err(String::new());
    for _ in 0..10 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let into = now_ms % (EPOCH * 1000);
        if into > EPOCH * 1000 / 4 {
            tokio::time::sleep(Duration::from_millis(EPOCH * 1000 - into)).await;
        }
        injected = inject_reports(&rv, &keys, 40, EPOCH).await;
        if injected.is_ok() {
            break;
        }
    }
    injected.expect("reports injected");
    // Sessions reopen every epoch; at the next one the counts are
    // published and the balanced volunteer pads.
    let mut padded = None;
    for _ in 0..300 {
        if let Some(s) = balanced.summary()
            && s.padding > 0
            && balanced.gateway().metrics().snapshot().session_live == 1
        {
            padded = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = padded.unwrap_or_else(|| {
        panic!(
            "the balanced volunteer did not pad: {:?} {:?}",
            balanced.summary(),
            balanced.gateway().metrics().snapshot()
        )
    });
    assert!(s.announced > s.held.min(1), "{s:?}");
    // Its padding was fetched before the session announced it: a peer
    // asking for it gets what it would for a held item.
    let store = balanced.gateway().fetcher().store().clone();
    let padding = anonmirror_core::ItemKey(packages[2].sha256);
    assert!(
        matches!(store.meta(&padding), Ok(Some(_))),
        "padding announced before it was fetched"
    );
    // `anonmirror audit` with no inputs reads what the daemon's selection
    // saw, and says when its credential expires.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anonmirror"))
        .args(["audit", "--policy"])
        .arg(&policy_file)
        .output()
        .expect("audit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text.contains("held; expires in"), "{text}");
    open.stop().await;

    // A client asks for a package only the balanced volunteer announces
    // (as padding): it gets it, and the volunteer still holds it.
    let client = Node::start(
        node_policy(Level::Off, &dir.path().join("client"), &upstream.url(), &rv),
        opts(),
    )
    .await
    .expect("client");
    let wanted = &packages[2];
    anonmirror_node::demo::fetch_all(client.gateway_addr, std::slice::from_ref(wanted))
        .await
        .expect("client fetches");
    let key = anonmirror_core::ItemKey(wanted.sha256);
    assert!(matches!(store.meta(&key), Ok(Some(_))));
    client.stop().await;
    balanced.stop().await;
    rv.shutdown().await;
}

/// `n` popularity reports of peers holding all of `items`, for the
/// current epoch, without randomization.
async fn inject_reports(
    rv: &Rendezvous,
    items: &[anonmirror_core::ItemKey],
    n: usize,
    epoch_secs: u64,
) -> Result<(), String> {
    use anonmirror_announce::{PermanentMemo, ReportParams, encode_report};
    use anonmirror_core::{Epoch, OsEntropy};
    let client = anonmirror_rendezvous::Client::new(rv.local_addr(), rv.key());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let epoch = Epoch(now / epoch_secs);
    let cred = client
        .register(now, 8, OsEntropy)
        .await
        .map_err(|e| e.to_string())?;
    let tokens = client
        .buy_tokens(&cred, now, epoch, n)
        .await
        .map_err(|e| e.to_string())?;
    let params = ReportParams::from_policy(&anonmirror_privacy::Randomization {
        h: 1,
        f: 0.0,
        p: 0.0,
        q: 1.0,
    })
    .expect("params");
    let held: std::collections::HashSet<_> = items.iter().copied().collect();
    for token in tokens {
        let memo = PermanentMemo::draw(&params, &mut OsEntropy);
        let report =
            encode_report(&params, epoch, &memo, items, &held, &mut OsEntropy).expect("report");
        client
            .popularity(&token, report.to_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A probing client against a real volunteer's peer server: it is served
/// what the announcement lists, and an item the volunteer holds but does
/// not announce (its policy denies it) gets exactly the answer of an item
/// nobody ever heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answers_only_for_what_it_announces() {
    use anonmirror_announce::announcement::AnnouncementHeader;
    use anonmirror_overlay::wire::{Message, Sender};
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 3, 11).expect("repository");
    let upstream = StaticServer::start(upstream_dir).await.expect("upstream");
    let mut cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().join("rendezvous"),
        Arc::new(anonmirror_mirror::hooks::AnnouncementFilter),
        Arc::new(anonmirror_mirror::hooks::PopularityAggregator::default()),
    );
    cfg.credentials.pow_difficulty = 8;
    let rv = Rendezvous::start(cfg).await.expect("rendezvous");
    let mut policy = node_policy(Level::Open, &dir.path().join("v"), &upstream.url(), &rv);
    policy.serve.deny = vec!["demo-pkg1".parse().expect("pattern")];
    let opts = NodeOptions {
        pow_difficulty: 8,
        ..NodeOptions::default()
    };
    let node = Node::start(policy, opts).await.expect("volunteer");
    anonmirror_node::demo::fetch_all(node.gateway_addr, &packages)
        .await
        .expect("the volunteer fetches all three");
    let opened = node.gateway().metrics().snapshot().sessions_opened;
    node.reannounce();
    for _ in 0..400 {
        if node.gateway().metrics().snapshot().sessions_opened > opened {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anonmirror_node::demo::wait_announced(&node)
        .await
        .expect("announced");
    let key = |i: usize| anonmirror_core::ItemKey(packages[i].sha256);
    let store = node.gateway().fetcher().store().clone();
    assert!(
        (0..3).all(|i| matches!(store.meta(&key(i)), Ok(Some(_)))),
        "it holds all three, the denied one too"
    );

    // The prober finds the volunteer in the directory, as any client.
    let client = anonmirror_rendezvous::Client::new(rv.local_addr(), rv.key());
    let snap = client
        .directory(None, &rv.directory_key())
        .await
        .expect("directory");
    let [peer] = &snap.peers[..] else {
        panic!("one peer listed: {:?}", snap.peers.len());
    };
    let header = AnnouncementHeader::parse(&peer.filter).expect("header");
    let params = anonmirror_channel::ChannelParams::new(header.level, header.epoch);
    let contact = anonmirror_core::Contact::from(peer.contact.clone());
    let stream = anonmirror_channel::TcpTransport
        .open(&contact)
        .await
        .expect("connect");
    let mut ch =
        anonmirror_channel::noise::connect(stream, &peer.key, &params, Duration::from_secs(5))
            .await
            .expect("handshake");
    let mut ask = async |item| {
        // One byte: one `Data` message, or `NotFound`.
        let m = Message::Request {
            item,
            offset: 0,
            len: 1,
            want_meta: false,
        };
        ch.send(&m.encode().expect("encode")).await.expect("send");
        let got = ch.recv().await.expect("recv").expect("answer");
        Message::decode_from(Sender::Server, &got)
            .expect("decode")
            .into_owned()
    };
    let announced = ask(key(0)).await;
    assert!(
        matches!(&announced, Message::Data { offset: 0, bytes } if bytes.len() == 1),
        "{announced:?}"
    );
    // Held and denied, and never heard of: the same answer.
    let nobody = anonmirror_core::ItemKey([0x5a; 32]);
    assert_eq!(ask(key(1)).await, Message::NotFound { item: key(1) });
    assert_eq!(ask(nobody).await, Message::NotFound { item: nobody });
    // The channel is still served after both.
    let again = ask(key(2)).await;
    assert!(matches!(again, Message::Data { .. }), "{again:?}");
    node.stop().await;
    rv.shutdown().await;
}

/// What a web page in a browser on this machine would send (another
/// origin, DNS rebinding to 127.0.0.1, a cross-site `<img>`) is refused
/// before anything is looked up; a stored package does not say when it was
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_web_page_would_make_are_refused() {
    let dir = TestDir::new();
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 1, 12).expect("repository");
    let upstream = StaticServer::start(upstream_dir).await.expect("upstream");
    let rv = rendezvous(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let policy = node_policy(Level::Off, &dir.path().join("node"), &upstream.url(), &rv);
    let node = Node::start(policy, opts()).await.expect("node");
    anonmirror_node::demo::fetch_all(node.gateway_addr, &packages)
        .await
        .expect("fetched");
    let port = node.gateway_addr.port();
    let url = format!("http://{}/demo/{}", node.gateway_addr, packages[0].path);
    let metrics = format!("http://{}/.anonmirror/metrics", node.gateway_addr);
    let requests_before = |n: &Node| n.gateway().metrics().snapshot().from_store;
    let stored = requests_before(&node);

    let rebound = format!("attacker.example:{port}");
    let refused: [&[(&str, &str)]; 6] = [
        // DNS rebinding: the page's own name, resolved to 127.0.0.1.
        &[("host", &rebound)],
        &[("origin", "http://attacker.example")],
        &[("origin", "null")],
        // fetch() in no-cors mode, <img>, <script>: no Origin, but the
        // browser says where the request comes from.
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("host", "localhost.attacker.example")],
    ];
    for headers in refused {
        for target in [&url, &metrics] {
            let (s, h, body) = request(Method::GET, target, headers).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{headers:?} {target}");
            assert!(h.get("access-control-allow-origin").is_none());
            assert!(body.len() < 200, "{headers:?}: {} bytes", body.len());
        }
    }
    assert_eq!(
        requests_before(&node),
        stored,
        "nothing was read from the store for a refused request"
    );
    // The package manager's requests, and a browser's own address bar.
    let localhost = format!("localhost:{port}");
    let ipv4 = format!("127.0.0.1:{port}");
    let allowed: [&[(&str, &str)]; 5] = [
        &[],
        &[("host", &localhost)],
        &[("host", &ipv4)],
        &[("host", "[::1]")],
        &[("sec-fetch-site", "none")],
    ];
    for headers in allowed {
        let (s, h, body) = request(Method::GET, &url, headers).await;
        assert_eq!(s, StatusCode::OK, "{headers:?}");
        assert_eq!(body.len() as u64, packages[0].size);
        assert!(
            h.get("last-modified").is_none(),
            "a stored item says when it was stored: {h:?}"
        );
    }
    node.stop().await;
    rv.shutdown().await;
}
