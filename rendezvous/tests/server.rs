//! The rendezvous over real sockets on 127.0.0.1: tokens, sessions, push.

use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{Clock, Epoch, ManualClock, PeerKey, SeededEntropy};
use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire, Refusal};
use anonmirror_rendezvous::{
    Client, CollectingSink, Error, Rendezvous, ServerConfig, SessionEvent, SortedKeysFilter,
};

const EPOCH_SECS: u64 = 1_000;

/// A rendezvous on 127.0.0.1 keeping its state in `dir`, on `clock`.
fn config(clock: &ManualClock, dir: &std::path::Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.to_path_buf(),
        Arc::new(SortedKeysFilter),
        Arc::new(CollectingSink::default()),
    );
    cfg.clock = Arc::new(clock.clone());
    cfg.epoch_secs = EPOCH_SECS;
    // The sessions here announce made-up contacts; dial-backs have tests
    // of their own (`a_tcp_contact_is_announced_only_after_a_dial_back_reached_it`).
    cfg.dangerous_unchecked_contacts = true;
    cfg
}

async fn start(clock: &ManualClock, dir: &std::path::Path) -> Rendezvous {
    let mut cfg = config(clock, dir);
    cfg.credentials.pow_difficulty = 4;
    cfg.credentials.tokens_per_epoch = 256;
    cfg.maintenance_interval = Duration::from_millis(50);
    cfg.notify_secret_hash = Some(*blake3::hash(&[5; 32]).as_bytes());
    Rendezvous::start(cfg).await.expect("start")
}

fn ann(i: u32) -> AnnouncementWire {
    AnnouncementWire {
        contact: ContactWire::from(std::net::SocketAddr::from((
            [10, 1, (i >> 8) as u8, i as u8],
            7879,
        ))),
        key: PeerKey(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        max_clients: 8,
        upload_rate: 1 << 20,
        region: None,
        snapshots: vec![("core".into(), 1)],
        filter: Vec::new(),
    }
}

fn epoch(clock: &ManualClock) -> Epoch {
    Epoch::containing(clock.unix_secs(), EPOCH_SECS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_spend_is_refused_and_one_of_32_concurrent_redemptions_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let r = start(&clock, dir.path()).await;
    let c = Client::new(r.local_addr(), r.key());
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(1))
        .await
        .expect("register");
    let tokens = c
        .buy_tokens(&cred, clock.unix_secs(), epoch(&clock), 2)
        .await
        .expect("buy");

    let s = c.open_session(&tokens[0], ann(0)).await.expect("first use");
    let again = c.open_session(&tokens[0], ann(1)).await;
    assert!(
        matches!(again, Err(Error::Refused(Refusal::TokenSpent))),
        "{again:?}"
    );
    s.close().await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (c, t) = (c.clone(), tokens[1].clone());
        tasks.spawn(async move { c.open_session(&t, ann(100 + i)).await });
    }
    let (mut won, mut spent) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(s) => {
                won += 1;
                s.close().await;
            }
            Err(Error::Refused(Refusal::TokenSpent)) => spent += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((won, spent), (1, 31));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_under_a_retired_key_are_refused_and_its_spent_set_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let r = start(&clock, dir.path()).await;
    let c = Client::new(r.local_addr(), r.key());
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(2))
        .await
        .expect("register");
    let e0 = epoch(&clock);
    let t = c
        .buy_tokens(&cred, clock.unix_secs(), e0, 3)
        .await
        .expect("buy");
    c.open_session(&t[0], ann(1))
        .await
        .expect("current key")
        .close()
        .await;

    let wait_for_epoch = |want: Epoch| {
        let c = c.clone();
        async move {
            for _ in 0..400 {
                let keys = c.keys().await.expect("keys");
                if keys.iter().any(|(e, _)| *e == want.next()) {
                    return keys;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("keys never rotated to {want}");
        }
    };
    clock.advance(Duration::from_secs(EPOCH_SECS));
    let keys = wait_for_epoch(e0.next()).await;
    assert!(
        keys.iter().any(|(e, _)| *e == e0),
        "previous still published"
    );
    c.open_session(&t[1], ann(2))
        .await
        .expect("previous epoch's key still accepted")
        .close()
        .await;

    clock.advance(Duration::from_secs(EPOCH_SECS));
    let keys = wait_for_epoch(e0.next().next()).await;
    assert!(keys.iter().all(|(e, _)| *e > e0), "retired key unpublished");
    let late = c.open_session(&t[2], ann(3)).await;
    assert!(
        matches!(late, Err(Error::Refused(Refusal::TokenKeyRetired))),
        "{late:?}"
    );
    let spent_table = format!("spent_{:020}", e0.0);
    let dump = r.dump_ledger().await.expect("dump");
    assert!(
        dump.iter().all(|(t, _, _)| *t != spent_table),
        "spent set pruned"
    );
    r.shutdown().await;
}

/// A push reaches every one of 100 live sessions over real sockets. (The
/// latency is measured in the benchmark, not asserted here; the 1 s push
/// deadline is enforced by the server, which drops a session that cannot
/// take a push within it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_100_live_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let r = start(&clock, dir.path()).await;
    let c = Client::new(r.local_addr(), r.key());
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(3))
        .await
        .expect("register");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        tokens.extend(
            c.buy_tokens(&cred, clock.unix_secs(), epoch(&clock), 50)
                .await
                .expect("buy"),
        );
    }
    let mut sessions = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        sessions.push(c.open_session(t, ann(i as u32)).await.expect("open"));
    }
    assert_eq!(r.session_count().await.expect("count"), 100);
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in sessions {
        tasks.spawn(async move { s.next_event().await });
    }
    // A wrong secret is refused; the right one pushes to all.
    let bad = c.notify([6; 32], "core", 2).await;
    assert!(matches!(
        bad,
        Err(Error::Refused(Refusal::NotifyUnauthorized))
    ));
    c.notify([5; 32], "core", 2).await.expect("notify");
    let mut got = 0;
    while let Some(ev) = tasks.join_next().await {
        assert_eq!(
            ev.expect("task").expect("event"),
            SessionEvent::SnapshotChanged {
                repository: "core".into(),
                version: 2
            }
        );
        got += 1;
    }
    assert_eq!(got, 100);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_directory_report_and_popularity_end_to_end() {
    use anonmirror_core::ItemKey;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let r = start(&clock, dir.path()).await;
    let c = Client::new(r.local_addr(), r.key());
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(4))
        .await
        .expect("register");
    let t = c
        .buy_tokens(&cred, clock.unix_secs(), epoch(&clock), 4)
        .await
        .expect("buy");
    let item = ItemKey([7; 32]);
    let mut a = ann(1);
    a.filter = SortedKeysFilter::encode(&[item]);
    a.region = Some("eu".into());
    let s = c.open_session(&t[0], a.clone()).await.expect("open");
    let got = c
        .lookup(item, 1000, "core", 1, Some("eu"), 4)
        .await
        .expect("lookup");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, a.key);
    assert!(
        c.lookup(item, 1000, "core", 2, None, 4)
            .await
            .expect("lookup")
            .is_empty(),
        "too stale"
    );
    let snap = c
        .directory(Some("eu"), &r.directory_key())
        .await
        .expect("directory");
    assert_eq!(snap.peers, vec![a.clone()]);
    assert!(
        c.directory(None, &[0; 32]).await.is_err(),
        "wrong pinned key"
    );
    c.popularity(&t[1], b"report".to_vec())
        .await
        .expect("report");
    assert!(
        c.popularity(&t[1], b"again".to_vec()).await.is_err(),
        "one report per token"
    );
    for _ in 0..3 {
        c.report(a.key, item, 0, 16_384).await.expect("report");
    }
    assert_eq!(
        r.session_count().await.expect("count"),
        0,
        "dropped after 3 strikes"
    );
    let mut b = ann(2);
    b.contact = a.contact.clone();
    let refused = c.open_session(&t[2], b).await;
    assert!(
        matches!(refused, Err(Error::Refused(Refusal::ContactRefused))),
        "{refused:?}"
    );
    drop(s);
    r.shutdown().await;
}

/// A watcher gets the directory at once, then again as sessions open and
/// close, with no request of its own; one watcher over the limit is refused
/// `Busy`; a watcher that leaves frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_watch_follows_the_sessions_and_watchers_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let mut cfg = config(&clock, dir.path());
    cfg.credentials.pow_difficulty = 4;
    cfg.max_watchers = 1;
    let r = Rendezvous::start(cfg).await.expect("start");
    let c = Client::new(r.local_addr(), r.key());
    let pinned = r.directory_key();
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(9))
        .await
        .expect("register");
    let t = c
        .buy_tokens(&cred, clock.unix_secs(), epoch(&clock), 2)
        .await
        .expect("buy");
    let mut watch = c.watch_directory(None, &pinned).await.expect("watch");
    assert!(watch.next().await.expect("first").peers.is_empty());
    let busy = c.watch_directory(None, &pinned).await;
    assert!(
        matches!(busy, Err(Error::Refused(Refusal::Busy))),
        "{busy:?}"
    );
    // A session opens: the watcher hears of it without asking (well before
    // the refresh interval, which is minutes).
    let s = c.open_session(&t[0], ann(1)).await.expect("open");
    let next = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("pushed within the coalescing second or so")
        .expect("verified");
    assert_eq!(next.peers, vec![ann(1)]);
    s.close().await;
    let next = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("pushed")
        .expect("verified");
    assert!(next.peers.is_empty(), "the closed session is gone");
    // The watcher leaves: its slot is free again.
    drop(watch);
    let mut again = None;
    for _ in 0..100 {
        match c.watch_directory(None, &pinned).await {
            Ok(w) => {
                again = Some(w);
                break;
            }
            Err(Error::Refused(Refusal::Busy)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(again.is_some(), "the slot was freed");
    // A watch with a wrong pinned key fails on the first directory.
    drop(again);
    let mut wrong = c.watch_directory(None, &[0; 32]).await;
    for _ in 0..100 {
        if !matches!(wrong, Err(Error::Refused(Refusal::Busy))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        wrong = c.watch_directory(None, &[0; 32]).await;
    }
    match wrong {
        Err(Error::Refused(r)) => panic!("refused {r:?}, not checked"),
        Err(_) => {}
        Ok(_) => panic!("a directory under another key was taken"),
    }
    r.shutdown().await;
}

/// A request's `If-None-Match` and `If-Modified-Since`.
type Conditional = (Option<String>, Option<String>);

/// A tiny HTTP/1.1 index server: answers `200` with the current body, its
/// ETag and Last-Modified, or `304` when `If-None-Match` names the current
/// ETag; records every request's conditional headers.
#[derive(Clone, Default)]
struct TinyIndex {
    /// (etag, last-modified, body) now served.
    current: Arc<std::sync::Mutex<(String, String, Vec<u8>)>>,
    /// (If-None-Match, If-Modified-Since) of every request, in order.
    seen: Arc<std::sync::Mutex<Vec<Conditional>>>,
}

impl TinyIndex {
    async fn serve(self) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(self.clone().connection(s));
            }
        });
        addr
    }

    async fn connection(self, s: tokio::net::TcpStream) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut s = BufReader::new(s);
        loop {
            let (mut inm, mut ims) = (None, None);
            let mut line = String::new();
            // Request line, then headers up to the blank line (GETs have
            // no body).
            let mut first = true;
            loop {
                line.clear();
                match s.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = line.trim_end();
                if l.is_empty() && !first {
                    break;
                }
                first = false;
                if let Some((k, v)) = l.split_once(':') {
                    match k.to_ascii_lowercase().as_str() {
                        "if-none-match" => inm = Some(v.trim().to_owned()),
                        "if-modified-since" => ims = Some(v.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            let (etag, lm, body) = self.current.lock().expect("lock").clone();
            self.seen.lock().expect("lock").push((inm.clone(), ims));
            let resp = if inm.as_deref() == Some(etag.as_str()) {
                format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nLast-Modified: {lm}\r\n\r\n")
                    .into_bytes()
            } else {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nETag: {etag}\r\nLast-Modified: {lm}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            };
            if s.get_mut().write_all(&resp).await.is_err() {
                return;
            }
        }
    }

    fn requests(&self) -> Vec<Conditional> {
        self.seen.lock().expect("lock").clone()
    }

    async fn wait_for_requests(&self, n: usize) {
        for _ in 0..2_000 {
            if self.requests().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the watcher stopped asking: {:?}", self.requests());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_index_change_is_pushed_to_live_sessions() {
    const LM1: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const LM2: &str = "Mon, 07 Nov 1994 08:49:37 GMT";
    const LM2_UNIX: u64 = 784_111_777 + 86_400;
    let index = TinyIndex::default();
    *index.current.lock().expect("lock") = ("\"v1\"".into(), LM1.into(), b"core 1".to_vec());
    let upstream = index.clone().serve().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let mut cfg = config(&clock, dir.path());
    cfg.credentials.pow_difficulty = 4;
    cfg.notify_secret_hash = Some(*blake3::hash(&[5; 32]).as_bytes());
    cfg.upstream.interval = Duration::from_millis(20);
    cfg.upstream.indexes = vec![anonmirror_rendezvous::UpstreamIndex {
        repository: "core".into(),
        url: format!("http://{upstream}/core.db"),
    }];
    let r = Rendezvous::start(cfg).await.expect("start");
    let c = Client::new(r.local_addr(), r.key());
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(9))
        .await
        .expect("register");
    let t = c
        .buy_tokens(&cred, clock.unix_secs(), epoch(&clock), 3)
        .await
        .expect("buy");
    let mut sessions = Vec::new();
    for (i, t) in t.iter().enumerate() {
        sessions.push(c.open_session(t, ann(i as u32)).await.expect("open"));
    }
    // The baseline and a few 304s, none of which pushes anything.
    index.wait_for_requests(3).await;

    *index.current.lock().expect("lock") = ("\"v2\"".into(), LM2.into(), b"core 2".to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in sessions {
        tasks.spawn(async move {
            let first = s.next_event().await.expect("first push");
            let second = s.next_event().await.expect("second push");
            (first, second)
        });
    }
    // Once the watcher has seen v2 and been answered 304 for it twice, the
    // only push it may have made is v2's; a notify then marks the end, so
    // each session's second event proves there was no spurious one.
    for _ in 0..2_000 {
        let n = index
            .requests()
            .iter()
            .filter(|(inm, _)| inm.as_deref() == Some("\"v2\""))
            .count();
        if n >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.notify([5; 32], "sentinel", 1).await.expect("notify");
    let mut got = 0;
    while let Some(ev) = tasks.join_next().await {
        let (first, second) = ev.expect("task");
        assert_eq!(
            first,
            SessionEvent::SnapshotChanged {
                repository: "core".into(),
                version: LM2_UNIX
            },
            "versioned by the index's Last-Modified"
        );
        assert_eq!(
            second,
            SessionEvent::SnapshotChanged {
                repository: "sentinel".into(),
                version: 1
            }
        );
        got += 1;
    }
    assert_eq!(got, 3);

    // Conditional requests throughout: the first plain, every later one
    // naming the last ETag and Last-Modified seen: v1's, then v2's.
    let reqs = index.requests();
    assert_eq!(reqs[0], (None, None), "the first request is unconditional");
    let v1 = (Some("\"v1\"".to_owned()), Some(LM1.to_owned()));
    let v2 = (Some("\"v2\"".to_owned()), Some(LM2.to_owned()));
    let switch = reqs[1..]
        .iter()
        .position(|r| *r != v1)
        .expect("v2 was fetched")
        + 1;
    assert!(switch >= 3, "{reqs:?}");
    assert!(reqs[switch..].iter().all(|r| *r == v2), "{reqs:?}");
    assert!(reqs.len() - switch >= 2);
    r.shutdown().await;
}

/// A dialer over TCP that counts its dials and can be told to refuse.
#[derive(Debug, Default)]
struct GatedTransport {
    dials: std::sync::atomic::AtomicUsize,
    refuse: std::sync::atomic::AtomicBool,
}

impl anonmirror_channel::transport::Transport for GatedTransport {
    fn connect<'a>(
        &'a self,
        contact: &'a anonmirror_core::Contact,
    ) -> anonmirror_channel::transport::ConnectFuture<'a> {
        use std::sync::atomic::Ordering;
        self.dials.fetch_add(1, Ordering::SeqCst);
        let refuse = self.refuse.load(Ordering::SeqCst);
        Box::pin(async move {
            if refuse {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "refused by the test",
                ));
            }
            anonmirror_channel::TcpTransport.connect(contact).await
        })
    }

    fn describe(&self) -> String {
        "tcp (gated)".into()
    }

    fn is_tor(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_goes_on_the_spare_channel_the_last_one_opened() {
    use anonmirror_channel::transport::Transport as _;
    use anonmirror_core::ItemKey;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let r = start(&clock, dir.path()).await;
    let dialer = Arc::new(GatedTransport::default());
    let c = Client::with_dialer(
        anonmirror_core::Contact::from(r.local_addr()),
        r.key(),
        dialer.clone(),
    );
    assert_eq!(dialer.describe(), "tcp (gated)");
    let item = ItemKey([9; 32]);
    c.lookup(item, 1000, "core", 1, None, 4)
        .await
        .expect("first lookup, on a fresh channel");
    // The spare for the next lookup is dialled in the background.
    for _ in 0..500 {
        if dialer.dials.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dialer.dials.load(Ordering::SeqCst), 2);
    // No new connection can be made now: the lookup can only go on the
    // spare.
    dialer.refuse.store(true, Ordering::SeqCst);
    c.lookup(item, 1000, "core", 1, None, 4)
        .await
        .expect("second lookup, on the spare");
    // Its own spare was refused, and so is a fresh channel: an error, not
    // a hang or a stale answer.
    let err = c
        .lookup(item, 1000, "core", 1, None, 4)
        .await
        .expect_err("no channel at all");
    assert!(matches!(err, Error::Connect(_)), "{err}");
    dialer.refuse.store(false, Ordering::SeqCst);
    c.lookup(item, 1000, "core", 1, None, 4)
        .await
        .expect("connections again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_channel_the_rendezvous_closed_is_replaced_by_a_fresh_one() {
    use anonmirror_core::ItemKey;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let mut cfg = config(&clock, dir.path());
    // Channels that bring no request are closed quickly: the spare dies
    // long before the client's own age limit.
    cfg.handshake_timeout = Duration::from_millis(200);
    assert!(cfg.handshake_timeout < anonmirror_rendezvous::client::SPARE_MAX_AGE);
    let r = Rendezvous::start(cfg).await.expect("start");
    let c = Client::new(r.local_addr(), r.key());
    let item = ItemKey([3; 32]);
    for _ in 0..3 {
        c.lookup(item, 1000, "core", 1, None, 4)
            .await
            .expect("lookup");
        // Past the rendezvous's deadline for the spare's request.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

/// A peer server's stand-in: answers Noise handshakes as `keypair` under
/// `params` on 127.0.0.1, and counts the handshakes completed.
async fn responder(
    keypair: anonmirror_channel::StaticKeypair,
    params: anonmirror_channel::ChannelParams,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = done.clone();
    let keypair = Arc::new(keypair);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (keypair, params, count) = (keypair.clone(), params, count.clone());
            tokio::spawn(async move {
                if anonmirror_channel::accept(s, &keypair, &params, Duration::from_secs(5))
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_contact_is_announced_only_after_a_dial_back_reached_it() {
    use anonmirror_privacy::Level;
    use anonmirror_rendezvous::msg::ReachOutcome;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let mut cfg = config(&clock, dir.path());
    cfg.dangerous_unchecked_contacts = false;
    cfg.credentials.pow_difficulty = 4;
    let r = Rendezvous::start(cfg).await.expect("start");
    let c = Client::new(r.local_addr(), r.key());
    let e = epoch(&clock);
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(7))
        .await
        .expect("register");
    let tokens = c
        .buy_tokens(&cred, clock.unix_secs(), e, 2)
        .await
        .expect("buy");

    let keypair = anonmirror_channel::StaticKeypair::generate().expect("key");
    let key = keypair.public();
    let params = anonmirror_channel::ChannelParams::new(Level::Open, e);
    let (server, handshakes) = responder(keypair, params).await;
    let with = |contact: std::net::SocketAddr, key: PeerKey| AnnouncementWire {
        contact: ContactWire::from(contact),
        key,
        ..ann(1)
    };

    // Not yet dialed back: refused, and the token is not spent.
    let early = c.open_session(&tokens[0], with(server, key)).await;
    assert!(
        matches!(early, Err(Error::Refused(Refusal::ContactUnreached))),
        "{early:?}"
    );
    assert_eq!(r.session_count().await.expect("count"), 0);

    // A port where nothing listens: refused; a port where someone else
    // answers (another key, as a router's forward to another machine
    // would): the handshake fails; the wrong prologue (another epoch)
    // too. The rendezvous dials only the address it saw.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let refused = c
        .reach(closed_port, key, Level::Open, e)
        .await
        .expect("reach");
    assert_eq!(refused.outcome, ReachOutcome::ConnectionRefused);
    assert_eq!(refused.seen, Some(std::net::IpAddr::from([127, 0, 0, 1])));
    let impostor = anonmirror_channel::StaticKeypair::generate()
        .expect("key")
        .public();
    let wrong_key = c.reach(server.port(), impostor, Level::Open, e).await;
    assert_eq!(
        wrong_key.expect("reach").outcome,
        ReachOutcome::HandshakeFailed
    );
    let wrong_epoch = c
        .reach(server.port(), key, Level::Open, Epoch(e.0 + 1))
        .await;
    assert_eq!(
        wrong_epoch.expect("reach").outcome,
        ReachOutcome::HandshakeFailed
    );
    for (contact, k) in [
        (server, impostor),
        (std::net::SocketAddr::new(server.ip(), closed_port), key),
    ] {
        let s = c.open_session(&tokens[0], with(contact, k)).await;
        assert!(
            matches!(s, Err(Error::Refused(Refusal::ContactUnreached))),
            "{s:?}"
        );
    }

    // Reached: the same token opens the session, and a client finds the
    // contact in the directory.
    let reached = c
        .reach(server.port(), key, Level::Open, e)
        .await
        .expect("reach");
    assert_eq!(reached.outcome, ReachOutcome::Reached);
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    let _live = c
        .open_session(&tokens[0], with(server, key))
        .await
        .expect("the token was kept for this");
    assert_eq!(r.session_count().await.expect("count"), 1);
    let dirkey = r.directory_key();
    let snap = c.directory(None, &dirkey).await.expect("directory");
    assert_eq!(
        snap.peers
            .iter()
            .map(|p| p.contact.socket_addr())
            .collect::<Vec<_>>(),
        vec![Some(server)]
    );
    // Never an address that names no host, whatever was reached.
    for bad in [
        "0.0.0.0:7879",
        "169.254.1.2:7879",
        "[fe80::1]:7879",
        "224.0.0.1:7879",
    ] {
        let s = c
            .open_session(&tokens[1], with(bad.parse().expect("addr"), key))
            .await;
        assert!(s.is_err(), "{bad}: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_updates_its_announcement_in_place_at_most_once_a_minute() {
    use anonmirror_core::ItemKey;
    use anonmirror_rendezvous::SortedKeysFilter;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let r = start(&clock, dir.path()).await;
    let c = Client::new(r.local_addr(), r.key());
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(9))
        .await
        .expect("register");
    let t = c
        .buy_tokens(&cred, clock.unix_secs(), epoch(&clock), 1)
        .await
        .expect("buy");
    let (old, new) = (ItemKey([1; 32]), ItemKey([2; 32]));
    let mut a = ann(3);
    a.filter = SortedKeysFilter::encode(&[old]);
    let mut live = c.open_session(&t[0], a.clone()).await.expect("open");
    let holders = |item| {
        let c = c.clone();
        async move {
            c.lookup(item, 1000, "core", 1, None, 4)
                .await
                .expect("lookup")
                .len()
        }
    };
    assert_eq!((holders(old).await, holders(new).await), (1, 0));

    // The peer now holds both: one update, acknowledged, same session.
    live.update(SortedKeysFilter::encode(&[old, new]))
        .await
        .expect("update");
    assert_eq!(live.next_event().await.expect("ack"), SessionEvent::Updated);
    assert_eq!((holders(old).await, holders(new).await), (1, 1));
    let snap = c
        .directory(None, &r.directory_key())
        .await
        .expect("directory");
    assert_eq!(snap.peers.len(), 1);
    assert_eq!(snap.peers[0].key, a.key, "the same session, updated");
    assert_eq!(snap.peers[0].filter, SortedKeysFilter::encode(&[old, new]));
    assert_eq!(r.session_count().await.expect("count"), 1);

    // A second update within the minute: the session is dropped.
    live.update(SortedKeysFilter::encode(&[new]))
        .await
        .expect("sent");
    assert!(live.next_event().await.is_err(), "dropped");
    for _ in 0..200 {
        if r.session_count().await.expect("count") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.session_count().await.expect("count"), 0);
    assert_eq!(holders(new).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_contact_is_dialed_back_and_announced_as_it_is() {
    use anonmirror_privacy::Level;
    use anonmirror_rendezvous::msg::ReachOutcome;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let mut cfg = config(&clock, dir.path());
    cfg.listen = "[::1]:0".parse().expect("addr");
    cfg.dangerous_unchecked_contacts = false;
    cfg.credentials.pow_difficulty = 4;
    let r = Rendezvous::start(cfg).await.expect("start");
    let c = Client::new(r.local_addr(), r.key());
    let e = epoch(&clock);
    let keypair = anonmirror_channel::StaticKeypair::generate().expect("key");
    let key = keypair.public();
    let l = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("bind");
    let server = l.local_addr().expect("addr");
    let params = anonmirror_channel::ChannelParams::new(Level::Open, e);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = anonmirror_channel::accept(s, &keypair, &params, Duration::from_secs(5)).await;
        }
    });
    let reached = c
        .reach(server.port(), key, Level::Open, e)
        .await
        .expect("reach");
    assert_eq!(reached.outcome, ReachOutcome::Reached);
    assert_eq!(
        reached.seen,
        Some(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
    );
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(8))
        .await
        .expect("register");
    let t = c
        .buy_tokens(&cred, clock.unix_secs(), e, 1)
        .await
        .expect("buy");
    let a = AnnouncementWire {
        contact: ContactWire::from(server),
        key,
        ..ann(2)
    };
    let _live = c.open_session(&t[0], a).await.expect("open");
    let snap = c
        .directory(None, &r.directory_key())
        .await
        .expect("directory");
    assert_eq!(snap.peers[0].contact.socket_addr(), Some(server));
}
