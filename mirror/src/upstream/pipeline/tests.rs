use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::DuplexStream;

const TIMEOUT: Duration = Duration::from_secs(10);

fn uri(path: &str) -> Uri {
    format!("http://mirror.test:8080{path}")
        .parse()
        .expect("uri")
}

/// A mirror on the far end of in-memory connections: each `open` hands
/// out the next one's client end, and counts.
struct Far {
    ends: Mutex<VecDeque<DuplexStream>>,
    opened: AtomicUsize,
}

impl Far {
    fn new(n: usize) -> (Arc<Far>, Vec<DuplexStream>) {
        let (mut clients, mut servers) = (VecDeque::new(), Vec::new());
        for _ in 0..n {
            let (c, s) = tokio::io::duplex(1 << 20);
            clients.push_back(c);
            servers.push(s);
        }
        let far = Arc::new(Far {
            ends: Mutex::new(clients),
            opened: AtomicUsize::new(0),
        });
        (far, servers)
    }

    async fn open(self: Arc<Self>) -> std::io::Result<DuplexStream> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.ends
            .lock()
            .expect("ends")
            .pop_front()
            .ok_or_else(|| std::io::Error::other("no more connections"))
    }
}

/// Reads `n` whole requests off `server`; returns their request lines.
async fn requests(server: &mut DuplexStream, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.windows(4).filter(|w| w == b"\r\n\r\n").count() < n {
        let mut buf = [0u8; 4096];
        let got = server.read(&mut buf).await.expect("read");
        assert!(got > 0, "the client closed after {seen:?}");
        seen.extend_from_slice(&buf[..got]);
    }
    String::from_utf8(seen)
        .expect("ascii")
        .split("\r\n\r\n")
        .filter(|r| !r.is_empty())
        .map(|r| r.lines().next().unwrap_or("").to_owned())
        .collect()
}

async fn all(mut body: Body) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(piece) = body.data().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

async fn get(p: &Pipelines, far: &Arc<Far>, path: &str) -> Result<(Answer, bool), Unanswered> {
    p.get(&uri(path), &HeaderMap::new(), TIMEOUT, || {
        far.clone().open()
    })
    .await
}

#[tokio::test]
async fn requests_go_together_on_one_connection_and_answers_come_back_in_order() {
    let p = Pipelines::default();
    let (far, mut servers) = Far::new(1);
    let mut server = servers.remove(0);
    let mirror = tokio::spawn(async move {
        // All three arrive before any is answered: they were pipelined.
        let lines = requests(&mut server, 3).await;
        server
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst\
                  HTTP/1.1 100 Continue\r\n\r\n\
                  HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nsec\r\n3\r\nond\r\n0\r\nTrailer: t\r\n\r\n\
                  HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
            )
            .await
            .expect("answer");
        (lines, server)
    });
    let (a, b, c) = tokio::join!(
        get(&p, &far, "/a.deb"),
        async {
            tokio::task::yield_now().await;
            get(&p, &far, "/b.deb?x=1").await
        },
        async {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            get(&p, &far, "/c.deb").await
        },
    );
    let (lines, _server) = mirror.await.expect("mirror");
    assert_eq!(
        lines,
        [
            "GET /a.deb HTTP/1.1",
            "GET /b.deb?x=1 HTTP/1.1",
            "GET /c.deb HTTP/1.1"
        ]
    );
    let (a, first) = a.expect("a answered");
    assert!(first, "nothing was owed before the first");
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(all(a.body).await.expect("a body"), b"first");
    let (b, first) = b.expect("b answered");
    assert!(!first);
    assert_eq!(all(b.body).await.expect("b body"), b"second");
    let (c, _) = c.expect("c answered");
    assert_eq!(c.status, StatusCode::NOT_FOUND);
    assert_eq!(all(c.body).await.expect("c body"), b"no");
    assert_eq!(far.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_request_carries_host_port_and_headers() {
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("anonmirror"));
    let bytes = request_bytes(&uri("/p/x.deb"), &h).expect("request");
    assert_eq!(
        bytes,
        b"GET /p/x.deb HTTP/1.1\r\nHost: mirror.test:8080\r\nuser-agent: anonmirror\r\n\r\n"
    );
    let https: Uri = "https://m.test/x".parse().expect("uri");
    let bytes = request_bytes(&https, &HeaderMap::new()).expect("request");
    assert_eq!(bytes, b"GET /x HTTP/1.1\r\nHost: m.test\r\n\r\n");
}

#[tokio::test]
async fn a_mirror_that_closes_hands_back_what_it_did_not_answer() {
    let p = Pipelines::default();
    let (far, mut servers) = Far::new(2);
    let mut server = servers.remove(0);
    let mirror = tokio::spawn(async move {
        requests(&mut server, 2).await;
        // nginx at its keepalive_requests limit: the last answer says so.
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\none")
            .await
            .expect("answer");
        drop(server);
    });
    let (a, b) = tokio::join!(get(&p, &far, "/1"), async {
        tokio::task::yield_now().await;
        get(&p, &far, "/2").await
    });
    mirror.await.expect("mirror");
    let (a, _) = a.expect("the first was answered");
    assert_eq!(all(a.body).await.expect("body"), b"one");
    assert!(b.is_err(), "the second was handed back to go another way");
    // A clean close is no failure: the next request opens a new connection.
    let mut server = servers.remove(0);
    let mirror = tokio::spawn(async move {
        requests(&mut server, 1).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
            .await
            .expect("answer");
        server
    });
    let (again, _) = get(&p, &far, "/2").await.expect("a new connection");
    assert_eq!(all(again.body).await.expect("body"), b"two");
    let _server = mirror.await.expect("mirror");
    assert_eq!(far.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_short_file() {
    let p = Pipelines::default();
    let (far, mut servers) = Far::new(1);
    let mut server = servers.remove(0);
    let mirror = tokio::spawn(async move {
        requests(&mut server, 1).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf!")
            .await
            .expect("answer");
    });
    let (a, _) = get(&p, &far, "/x").await.expect("head");
    mirror.await.expect("mirror");
    let e = all(a.body).await.expect_err("cut short");
    assert!(e.contains("ended in a body"), "{e}");
}

#[tokio::test]
async fn a_caller_that_stops_reading_leaves_the_next_answer_whole() {
    let p = Pipelines::default();
    let (far, mut servers) = Far::new(1);
    let mut server = servers.remove(0);
    let big = vec![b'x'; 300_000];
    let mut script =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    script.extend_from_slice(&big);
    script.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext");
    let mirror = tokio::spawn(async move {
        requests(&mut server, 2).await;
        server.write_all(&script).await.expect("answer");
        server
    });
    let (a, b) = tokio::join!(get(&p, &far, "/big"), async {
        tokio::task::yield_now().await;
        get(&p, &far, "/next").await
    });
    let (mut a, _) = a.expect("big answered");
    a.body.data().await.expect("a piece").expect("bytes");
    drop(a);
    let (b, _) = b.expect("next answered");
    assert_eq!(all(b.body).await.expect("body"), b"next");
    let _server = mirror.await.expect("mirror");
}

#[tokio::test]
async fn a_mirror_that_breaks_pipelines_twice_is_sent_requests_one_by_one() {
    let p = Pipelines::default();
    let (far, servers) = Far::new(2);
    let mut mirrors = Vec::new();
    for mut server in servers {
        mirrors.push(tokio::spawn(async move {
            requests(&mut server, 2).await;
            // Garbage where the second answer's head should be.
            server
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA\x00\x01garbage\r\n\r\n")
                .await
                .expect("answer");
            server
        }));
    }
    for _ in 0..2 {
        let (a, b) = tokio::join!(get(&p, &far, "/1"), async {
            tokio::task::yield_now().await;
            get(&p, &far, "/2").await
        });
        assert_eq!(
            all(a.expect("first answered").0.body).await.expect("body"),
            b"A"
        );
        assert!(b.is_err(), "the second handed back");
    }
    for m in mirrors {
        let _server = m.await.expect("mirror");
    }
    assert_eq!(far.opened.load(Ordering::SeqCst), 2);
    // Now off: handed back at once, no connection opened.
    assert!(get(&p, &far, "/3").await.is_err());
    assert_eq!(far.opened.load(Ordering::SeqCst), 2);
}

#[test]
fn framing_follows_rfc_9112() {
    let h = |pairs: &[(&str, &str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    };
    let ok = StatusCode::OK;
    assert!(matches!(
        framing(ok, &h(&[("content-length", "7")])),
        Ok(Framing::Length(7))
    ));
    assert!(matches!(
        framing(
            ok,
            &h(&[
                ("transfer-encoding", "gzip, chunked"),
                ("content-length", "7")
            ])
        ),
        Ok(Framing::Chunked)
    ));
    assert!(matches!(
        framing(ok, &h(&[("transfer-encoding", "gzip")])),
        Ok(Framing::Close)
    ));
    assert!(matches!(framing(ok, &h(&[])), Ok(Framing::Close)));
    assert!(matches!(
        framing(StatusCode::NOT_MODIFIED, &h(&[("content-length", "7")])),
        Ok(Framing::Length(0))
    ));
    let e = framing(ok, &h(&[("content-length", "7"), ("content-length", "8")]))
        .err()
        .expect("disagreeing lengths");
    assert!(e.contains("disagree"), "{e}");
    assert!(framing(ok, &h(&[("content-length", "-1")])).is_err());
}
