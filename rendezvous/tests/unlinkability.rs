//! The unlinkability harness (issue 4; DESIGN.md §9: the rendezvous must
//! not learn which credential owns which session).
//!
//! Each round, `PEERS` peers register and buy tokens in one order, then
//! open one session each in an independent random order (fixed seed), over
//! real sockets on 127.0.0.1. The adversary then gets everything the
//! rendezvous has: its complete stored state ([`Rendezvous::dump_ledger`]:
//! every redb row), the directory (every live session's announcement), and
//! its logs captured at TRACE with sensitive values shown
//! ([`anonmirror_core::set_log_sensitive`]), the most an operator could
//! turn on. For every session it guesses which credential (by the hash the
//! store keeps) bought its token, with each of its linking strategies:
//! orders of rows and records, bytes shared between credential material
//! and session material anywhere in rows or log lines, equal fields, and
//! proximity in the logs.
//!
//! Over `ROUNDS` rounds that is `N = ROUNDS · PEERS` guesses per
//! strategy; if nothing links, the correct ones follow Binomial(N, 1/n)
//! (with n = `PEERS`), and each strategy must land within 4σ of N/n. The
//! leaky controls prove the harness can fail: the same adversary, given a
//! dump with one extra row per session (credential hash → session key), or
//! logs with one extra line naming both, links nearly every session.
//!
//! The tracing subscriber is global, so this harness is its own
//! integration-test binary. Nothing here asserts on time.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anonmirror_core::{Clock, Entropy, Epoch, ManualClock, PeerKey, SeededEntropy};
use anonmirror_rendezvous::credential::{CredentialRecord, credential_hash};
use anonmirror_rendezvous::ledger::Row;
use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire};
use anonmirror_rendezvous::{Client, CollectingSink, Rendezvous, ServerConfig, SortedKeysFilter};

const EPOCH_SECS: u64 = 100_000;
const PEERS: usize = 20;
const ROUNDS: usize = 6;
const SEED: u64 = 0x5eed_0009;

// ---------------------------------------------------------------------------
// Log capture

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn take(&self) -> String {
        let mut b = self.0.lock().expect("log buffer");
        String::from_utf8_lossy(&std::mem::take(&mut *b)).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn capture() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(c.clone())
            .with_ansi(false)
            .with_target(true)
            .with_thread_ids(true)
            .init();
        anonmirror_core::set_log_sensitive(true);
        c
    })
    .clone()
}

// ---------------------------------------------------------------------------
// One round

/// What the adversary sees.
struct View {
    rows: Vec<Row>,
    directory: Vec<AnnouncementWire>,
    logs: String,
}

/// One round's view and the truth the adversary must not be able to find.
struct Round {
    view: View,
    /// For each directory entry, the hash of the credential that bought its
    /// token.
    owner: Vec<[u8; 32]>,
    /// What must never appear in the logs (hex): credentials, token nonces.
    secrets: Vec<String>,
    /// Contacts, which must not appear in the logs either.
    contacts: Vec<String>,
}

async fn round(seed: u64, logs: &Captured) -> Round {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at_unix(10 * EPOCH_SECS + 1);
    let mut cfg = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().to_path_buf(),
        Arc::new(SortedKeysFilter),
        Arc::new(CollectingSink::default()),
    );
    cfg.clock = Arc::new(clock.clone());
    cfg.epoch_secs = EPOCH_SECS;
    cfg.credentials.pow_difficulty = 4;
    // Made-up contacts: what is stored is under test, not reachability.
    cfg.dangerous_unchecked_contacts = true;
    let r = Rendezvous::start(cfg).await.expect("start");
    let c = Client::new(r.local_addr(), r.key());
    let epoch = Epoch::containing(clock.unix_secs(), EPOCH_SECS);
    let mut rng = SeededEntropy::new(seed);

    // Registration and purchase, in peer order, one second apart (so the
    // stored records differ by registration time, as they would).
    let mut creds = Vec::with_capacity(PEERS);
    let mut tokens = Vec::with_capacity(PEERS);
    let mut secrets = Vec::new();
    for i in 0..PEERS {
        clock.advance(Duration::from_secs(1));
        let cred = c
            .register(clock.unix_secs(), 4, SeededEntropy::new(seed ^ i as u64))
            .await
            .expect("register");
        let bought = c
            .buy_tokens(&cred, clock.unix_secs(), epoch, 2)
            .await
            .expect("buy");
        secrets.push(hex::encode(cred.credential));
        for t in &bought {
            secrets.push(hex::encode(&t.bytes[2..34]));
        }
        creds.push(cred);
        tokens.push(bought);
    }

    // Sessions in an independent random order (Fisher–Yates).
    let mut order: Vec<usize> = (0..PEERS).collect();
    for i in (1..PEERS).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut live = Vec::with_capacity(PEERS);
    let mut owner_of_key = HashMap::new();
    let mut contacts = Vec::new();
    for &p in &order {
        clock.advance(Duration::from_secs(1));
        let a = announcement(&mut rng);
        owner_of_key.insert(a.key, credential_hash(&creds[p].credential));
        contacts.push(a.contact.to_string());
        live.push(c.open_session(&tokens[p][0], a).await.expect("session"));
    }

    let snapshot = c
        .directory(None, &r.directory_key())
        .await
        .expect("directory");
    let rows = r.dump_ledger().await.expect("dump");
    for s in live {
        s.close().await;
    }
    r.shutdown().await;
    let owner = snapshot
        .peers
        .iter()
        .map(|a| *owner_of_key.get(&a.key).expect("every session is ours"))
        .collect();
    assert_eq!(snapshot.peers.len(), PEERS, "every session is listed");
    Round {
        view: View {
            rows,
            directory: snapshot.peers,
            logs: logs.take(),
        },
        owner,
        secrets,
        contacts,
    }
}

/// A peer's announcement: every field its own choice, independent of its
/// credential.
fn announcement(rng: &mut SeededEntropy) -> AnnouncementWire {
    let mut key = [0u8; 32];
    rng.fill(&mut key);
    let mut ip = [0u8; 4];
    rng.fill(&mut ip);
    ip[0] = 10;
    let regions = [None, Some("eu"), Some("na"), Some("as")];
    AnnouncementWire {
        contact: ContactWire::from(std::net::SocketAddr::from((
            ip,
            1024 + rng.below(60_000) as u16,
        ))),
        key: PeerKey(key),
        max_clients: 1 + rng.below(64) as u32,
        upload_rate: 1 + rng.below(1 << 24),
        region: regions[rng.below(4) as usize].map(str::to_owned),
        snapshots: vec![("core".into(), 1 + rng.below(4))],
        filter: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// The adversary

/// The credentials it can name: the keys of the `credentials` table, in
/// dump order, with their decoded records.
fn credentials(rows: &[Row]) -> Vec<([u8; 32], CredentialRecord)> {
    rows.iter()
        .filter(|(t, _, _)| t == "credentials")
        .map(|(_, k, v)| {
            (
                k.as_slice().try_into().expect("32-byte hash"),
                postcard::from_bytes(v).expect("record"),
            )
        })
        .collect()
}

/// A document the adversary scans for co-occurring identifiers: one stored
/// row (table, key and value), or one log line with its hex runs and
/// decimal byte lists decoded.
fn documents(view: &View) -> Vec<Vec<u8>> {
    let mut docs: Vec<Vec<u8>> = view
        .rows
        .iter()
        .map(|(t, k, v)| [t.as_bytes(), k, v].concat())
        .collect();
    for line in view.logs.lines() {
        let mut d = line.as_bytes().to_vec();
        d.extend(decode_hex_runs(line));
        d.extend(decode_byte_lists(line));
        docs.push(d);
    }
    docs
}

fn decode_hex_runs(line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for run in line.split(|c: char| !c.is_ascii_hexdigit()) {
        if run.len() >= 16 {
            let even = &run[..run.len() & !1];
            if let Ok(b) = hex::decode(even) {
                out.extend(b);
            }
        }
    }
    out
}

fn decode_byte_lists(line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for part in line.split('[').skip(1) {
        let Some(inner) = part.split(']').next() else {
            continue;
        };
        let bytes: Option<Vec<u8>> = inner
            .split(',')
            .map(|n| n.trim().parse::<u8>().ok())
            .collect();
        if let Some(b) = bytes
            && b.len() >= 8
        {
            out.extend(b);
        }
    }
    out
}

/// 8-byte windows of `ident`, indexed to `who` (windows shared by several
/// owners are dropped: they identify no one).
fn index_windows(map: &mut HashMap<[u8; 8], Option<usize>>, ident: &[u8], who: usize) {
    for w in ident.windows(8) {
        let w: [u8; 8] = w.try_into().expect("8 bytes");
        map.entry(w)
            .and_modify(|o| {
                if *o != Some(who) {
                    *o = None
                }
            })
            .or_insert(Some(who));
    }
}

fn hits(map: &HashMap<[u8; 8], Option<usize>>, doc: &[u8]) -> Vec<usize> {
    let mut v: Vec<usize> = doc
        .windows(8)
        .filter_map(|w| map.get(<&[u8; 8]>::try_from(w).ok()?).copied().flatten())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Identifiers of a session: its key, its contact (encoded and as text).
fn session_idents(a: &AnnouncementWire) -> Vec<Vec<u8>> {
    vec![
        a.key.0.to_vec(),
        postcard::to_allocvec(&a.contact).expect("encode"),
        a.contact.to_string().into_bytes(),
    ]
}

/// Scores for every (session, credential) pair; the guess is the best
/// credential, ties broken at random.
type Scores = Vec<Vec<f64>>;

fn pick(
    scores: &Scores,
    creds: &[([u8; 32], CredentialRecord)],
    rng: &mut SeededEntropy,
) -> Vec<[u8; 32]> {
    scores
        .iter()
        .map(|row| {
            let best = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tied: Vec<usize> = (0..row.len()).filter(|&i| row[i] == best).collect();
            creds[tied[rng.below(tied.len() as u64) as usize]].0
        })
        .collect()
}

/// Strategy: bytes of a credential and bytes of a session in the same row
/// or log line.
fn co_occurrence(view: &View, creds: &[([u8; 32], CredentialRecord)]) -> Scores {
    let mut cmap = HashMap::new();
    for (i, (h, _)) in creds.iter().enumerate() {
        index_windows(&mut cmap, h, i);
    }
    let mut smap = HashMap::new();
    for (i, a) in view.directory.iter().enumerate() {
        for id in session_idents(a) {
            index_windows(&mut smap, &id, i);
        }
    }
    let mut scores = vec![vec![0.0; creds.len()]; view.directory.len()];
    for doc in documents(view) {
        let (cs, ss) = (hits(&cmap, &doc), hits(&smap, &doc));
        for &s in &ss {
            for &c in &cs {
                scores[s][c] += 1.0;
            }
        }
    }
    scores
}

/// Strategy: a log line naming a session is attributed to the credential
/// named most recently before it.
fn log_proximity(view: &View, creds: &[([u8; 32], CredentialRecord)]) -> Scores {
    let mut cmap = HashMap::new();
    for (i, (h, _)) in creds.iter().enumerate() {
        index_windows(&mut cmap, h, i);
    }
    let mut smap = HashMap::new();
    for (i, a) in view.directory.iter().enumerate() {
        for id in session_idents(a) {
            index_windows(&mut smap, &id, i);
        }
    }
    let mut scores = vec![vec![0.0; creds.len()]; view.directory.len()];
    let mut last_cred = None;
    for line in view.logs.lines() {
        let mut d = line.as_bytes().to_vec();
        d.extend(decode_hex_runs(line));
        d.extend(decode_byte_lists(line));
        if let Some(&c) = hits(&cmap, &d).last() {
            last_cred = Some(c);
        }
        if let Some(c) = last_cred {
            for s in hits(&smap, &d) {
                scores[s][c] += 1.0;
            }
        }
    }
    scores
}

/// Strategy: the k-th credential (by `cred_rank`) owns the k-th session (by
/// `session_rank`).
fn by_rank(cred_rank: &[usize], session_rank: &[usize], n: usize) -> Scores {
    let mut scores = vec![vec![0.0; n]; session_rank.len()];
    for (k, &s) in session_rank.iter().enumerate() {
        scores[s][cred_rank[k % cred_rank.len()]] = 1.0;
    }
    scores
}

/// Strategy: numeric fields equal between a credential's record and a
/// session's announcement.
fn equal_fields(view: &View, creds: &[([u8; 32], CredentialRecord)]) -> Scores {
    view.directory
        .iter()
        .map(|a| {
            let mut sv = vec![u64::from(a.max_clients), a.upload_rate];
            sv.extend(a.snapshots.iter().map(|(_, v)| *v));
            if let Some(addr) = a.contact.socket_addr() {
                sv.push(u64::from(addr.port()));
            }
            creds
                .iter()
                .map(|(_, r)| {
                    let cv = [
                        r.expires,
                        r.last_epoch,
                        u64::from(r.bought),
                        u64::from(r.over_quota),
                    ];
                    cv.iter().filter(|x| sv.contains(x)).count() as f64
                })
                .collect()
        })
        .collect()
}

/// First position (line index) at which any of `idents` appears in the
/// logs.
fn first_seen(logs: &[Vec<u8>], map: &HashMap<[u8; 8], Option<usize>>, who: usize) -> usize {
    logs.iter()
        .position(|d| hits(map, d).contains(&who))
        .unwrap_or(usize::MAX)
}

/// Every strategy's guesses, by name.
fn adversary(view: &View, rng: &mut SeededEntropy) -> Vec<(&'static str, Vec<[u8; 32]>)> {
    let creds = credentials(&view.rows);
    let n = creds.len();
    let ns = view.directory.len();
    let mut out = Vec::new();
    out.push((
        "shared bytes in a row or log line",
        pick(&co_occurrence(view, &creds), &creds, rng),
    ));
    out.push((
        "log proximity",
        pick(&log_proximity(view, &creds), &creds, rng),
    ));
    out.push((
        "equal fields",
        pick(&equal_fields(view, &creds), &creds, rng),
    ));

    // Orders: credential rows as dumped, credentials by record (issue time
    // and use), and by first mention in the logs; sessions as listed in the
    // directory and by first mention in the logs.
    let dump_order: Vec<usize> = (0..n).collect();
    let mut record_order = dump_order.clone();
    record_order.sort_by_key(|&i| {
        let r = creds[i].1;
        (r.expires, r.last_epoch, r.bought)
    });
    let lines: Vec<Vec<u8>> = view
        .logs
        .lines()
        .map(|l| {
            let mut d = l.as_bytes().to_vec();
            d.extend(decode_hex_runs(l));
            d
        })
        .collect();
    let mut cmap = HashMap::new();
    for (i, (h, _)) in creds.iter().enumerate() {
        index_windows(&mut cmap, h, i);
    }
    let mut smap = HashMap::new();
    for (i, a) in view.directory.iter().enumerate() {
        for id in session_idents(a) {
            index_windows(&mut smap, &id, i);
        }
    }
    let mut cred_log_order = record_order.clone();
    cred_log_order.sort_by_key(|&i| first_seen(&lines, &cmap, i));
    let dir_order: Vec<usize> = (0..ns).collect();
    let mut sess_log_order = dir_order.clone();
    sess_log_order.sort_by_key(|&i| first_seen(&lines, &smap, i));
    for (name, cr, sr) in [
        ("dump order vs directory order", &dump_order, &dir_order),
        ("issue time vs directory order", &record_order, &dir_order),
        (
            "issue time vs first log mention",
            &record_order,
            &sess_log_order,
        ),
        ("first log mentions", &cred_log_order, &sess_log_order),
    ] {
        out.push((name, pick(&by_rank(cr, sr, n), &creds, rng)));
    }
    out
}

fn correct(guess: &[[u8; 32]], truth: &[[u8; 32]]) -> usize {
    guess.iter().zip(truth).filter(|(g, t)| g == t).count()
}

// ---------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_strategy_links_sessions_to_credentials_better_than_chance() {
    let logs = capture();
    let mut rng = SeededEntropy::new(SEED);
    let mut totals: HashMap<&'static str, usize> = HashMap::new();
    let (mut leaky_row, mut leaky_log, mut guesses) = (0, 0, 0);
    let mut log_lines = 0;
    for r in 0..ROUNDS {
        let round = round(SEED.wrapping_add(r as u64 * 7919), &logs).await;
        log_lines += round.view.logs.lines().count();

        // The logs never show credentials, tokens or contacts, even at
        // TRACE with sensitive values shown.
        for s in round.secrets.iter().chain(&round.contacts) {
            assert!(!round.view.logs.contains(s.as_str()), "logged: {s}");
        }

        for (name, g) in adversary(&round.view, &mut rng) {
            *totals.entry(name).or_default() += correct(&g, &round.owner);
        }
        guesses += round.owner.len();

        // Leaky controls: the same adversary, given one linking row per
        // session, or one log line per session naming both.
        let mut leaky = View {
            rows: round.view.rows.clone(),
            directory: round.view.directory.clone(),
            logs: round.view.logs.clone(),
        };
        for (a, h) in round.view.directory.iter().zip(&round.owner) {
            leaky
                .rows
                .push(("session_owner".into(), h.to_vec(), a.key.0.to_vec()));
        }
        let creds = credentials(&leaky.rows);
        let g = pick(&co_occurrence(&leaky, &creds), &creds, &mut rng);
        leaky_row += correct(&g, &round.owner);

        let mut leaky = View {
            rows: round.view.rows,
            directory: round.view.directory,
            logs: round.view.logs,
        };
        for (a, h) in leaky.directory.iter().zip(&round.owner) {
            leaky.logs.push_str(&format!(
                "DEBUG session opened credential={} key={}\n",
                hex::encode(h),
                a.key.to_hex()
            ));
        }
        let creds = credentials(&leaky.rows);
        let g = pick(&log_proximity(&leaky, &creds), &creds, &mut rng);
        leaky_log += correct(&g, &round.owner);
    }

    assert!(
        log_lines > ROUNDS * PEERS,
        "the logs were captured: {log_lines} lines"
    );
    let n = guesses as f64;
    let p = 1.0 / PEERS as f64;
    let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
    let (lo, hi) = (mean - 4.0 * sd, mean + 4.0 * sd);
    for (name, k) in &totals {
        eprintln!("{name}: {k}/{guesses} right (chance {mean:.1} ± {sd:.1})");
        assert!(
            (lo..=hi).contains(&(*k as f64)),
            "strategy `{name}` linked {k} of {guesses} sessions; chance is {mean:.1} ± 4·{sd:.2}"
        );
    }
    eprintln!("leaky controls: row {leaky_row}/{guesses}, log {leaky_log}/{guesses}");
    let near_all = (0.95 * n) as usize;
    assert!(
        leaky_row >= near_all,
        "the leaky row control linked only {leaky_row}/{guesses}"
    );
    assert!(
        leaky_log >= near_all,
        "the leaky log control linked only {leaky_log}/{guesses}"
    );
    assert!(
        hi < near_all as f64,
        "the bound separates chance from a leak"
    );
}
