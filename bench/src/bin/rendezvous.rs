//! The rendezvous at scale, on one core.
//!
//! 1. Token redemptions/s: the rendezvous's redemption path (token format
//!    and RSA-PSS signature check, then the nonce spent in the redb spent
//!    set with a durable commit, group-committed as the key owner does),
//!    called directly on one thread, against a bare redb durable insert
//!    (one 32-byte key per `Durability::Immediate` commit) in the same run.
//! 2. Memory of 10k and 100k simulated live sessions: the session table
//!    (with its bit-sliced index) plus each session's push state (a drop
//!    signal and a subscription to the one broadcast channel of pushes), as
//!    the server keeps them (RSS from /proc/self/statm before and after);
//!    then the per-connection cost (Noise channel, task, socket, and the
//!    table entry of a session with a tiny filter, counted twice) measured
//!    with real sessions over loopback against a rendezvous in a child
//!    process, whose RSS alone is read (the peers' halves of the
//!    connections are the benchmark's, not the rendezvous's), and the sum
//!    projected to 100k.
//! 3. Lookups/s against the 10k and 100k tables (`SessionTable::lookup`:
//!    filter tests, freshness, limits, region, two random choices; wall
//!    clock and per CPU-second of the thread, as the machine is shared), against
//!    a `HashMap<ItemKey, Vec<PeerKey>>` lookup of the same holdings. The
//!    filters are announce's real epoch-keyed Bloom filters (`AMAN`), tested
//!    through the production hook (`anonmirror_mirror::hooks::AnnouncementFilter`);
//!    the same tables are also timed through the reference test alone
//!    (`FilterCheck::holds`: decode and hash per filter tested, the hook as
//!    it was before prepared filters), on fewer lookups.
//! 4. Push latency to 100 live sessions over loopback: from
//!    `Rendezvous::push` to each session's `next_event` returning, in one
//!    current-thread runtime (server and clients share the core).
//!
//! `cargo run --release -p anonmirror-bench --bin rendezvous`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anonmirror_announce::announcement::Layout;
use anonmirror_core::{Clock, Entropy, Epoch, ItemKey, ManualClock, PeerKey, SeededEntropy};
use anonmirror_mirror::hooks::AnnouncementFilter as AnnounceFilter;
use anonmirror_privacy::Level;
use anonmirror_rendezvous::hooks::FilterCheck;
use anonmirror_rendezvous::ledger::Ledger;
use anonmirror_rendezvous::msg::{AnnouncementWire, ContactWire};
use anonmirror_rendezvous::session::{BufferedEntropy, Query, SessionConfig, SessionTable};
use anonmirror_rendezvous::token::{Scheme, TokenScheme, token_key_id};
use anonmirror_rendezvous::{Client, CollectingSink, Rendezvous, ServerConfig};
use anyhow::{Context, bail};
use clap::Parser;

/// Rendezvous benchmark.
#[derive(Parser)]
struct Args {
    /// Tokens issued and then redeemed.
    #[arg(long, default_value_t = 6_000)]
    tokens: usize,
    /// Spends per durable commit (the key owner drains every queued spend
    /// into one commit; this is the number queued at once).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Bare durable inserts for the baseline (and unbatched redemptions).
    #[arg(long, default_value_t = 300)]
    commits: usize,
    /// Items each simulated session holds (Zipf-drawn).
    #[arg(long, default_value_t = 64)]
    items_per_session: usize,
    /// Capacity of each session's announcement filter, in items (8 bits
    /// each: 2 048 make a 2 KiB filter, the size of a typical `balanced`
    /// announcement).
    #[arg(long, default_value_t = 2_048)]
    filter_capacity: usize,
    /// Distinct items in the simulated index.
    #[arg(long, default_value_t = 60_000)]
    universe: usize,
    /// Lookups timed per table.
    #[arg(long, default_value_t = 100_000)]
    lookups: usize,
    /// Real sessions over loopback for the per-connection memory.
    #[arg(long, default_value_t = 1_000)]
    real_sessions: usize,
    /// Pushes timed to 100 sessions.
    #[arg(long, default_value_t = 20)]
    pushes: usize,
    /// Internal: measure one table of this many sessions in this (child)
    /// process, so each RSS delta starts from a fresh heap.
    #[arg(long, hide = true)]
    sessions_child: Option<usize>,
    /// Internal: run a rendezvous in this (child) process, print its
    /// address and key, and serve until stdin closes; the parent measures
    /// this process's RSS, so the peers' halves of the connections are not
    /// counted.
    #[arg(long, hide = true)]
    server_child: bool,
    /// Measure only the per-connection memory (real sessions over
    /// loopback), nothing else.
    #[arg(long)]
    connections_only: bool,
}

fn rss_bytes() -> anyhow::Result<u64> {
    rss_of("self")
}

/// Resident bytes of process `pid` ("self" for this one).
fn rss_of(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/statm");
    let s = std::fs::read_to_string(&path).context(path)?;
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .context("statm resident field")?
        .parse()?;
    Ok(pages * 4096)
}

/// CPU time this thread has run, from /proc/thread-self/schedstat (ns):
/// on a machine shared with other work, lookups per CPU-second are what
/// one core does, where wall-clock rates also count time others had it.
fn thread_cpu() -> anyhow::Result<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("schedstat")?;
    let ns: u64 = s
        .split_whitespace()
        .next()
        .context("schedstat field")?
        .parse()?;
    Ok(Duration::from_nanos(ns))
}

fn scratch_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("anonmirror-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.sessions_child {
        let r = session_table(&args, n)?;
        println!("{}", r.map(|x| x.to_string()).join(" "));
        return Ok(());
    }
    if args.server_child {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(server_child());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.connections_only {
        rt.block_on(connection_memory(&args))?;
        return Ok(());
    }
    println!("# rendezvous benchmark (one core; release build)\n");
    redemptions(&args)?;
    let per_conn = rt.block_on(connection_memory(&args))?;
    sessions_and_lookups(&args, per_conn)?;
    rt.block_on(push_latency(&args))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Redemptions

fn redemptions(args: &Args) -> anyhow::Result<()> {
    let scheme = Scheme::default();
    let secret = scheme.generate()?;
    let public = scheme.public(&secret)?;
    let t = Instant::now();
    let mut tokens = Vec::with_capacity(args.tokens + args.commits);
    for _ in 0..args.tokens + args.commits {
        let (req, pending) = scheme.request(&public)?;
        let resp = scheme.issue(&secret, &req)?;
        tokens.push(scheme.finalize(pending, &resp)?);
    }
    println!(
        "issued {} tokens in {:.1} s (setup, blind RSA signing: {:.0}/s)",
        tokens.len(),
        t.elapsed().as_secs_f64(),
        tokens.len() as f64 / t.elapsed().as_secs_f64()
    );
    let (grouped, single) = tokens.split_at(args.tokens);

    // Baseline: a bare redb durable insert per commit.
    let dir = scratch_dir("redb")?;
    let db = redb::Database::create(dir.join("bare.redb"))?;
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
    let t = Instant::now();
    for i in 0..args.commits {
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut t = tx.open_table(table)?;
            let key = *blake3::hash(&(i as u64).to_le_bytes()).as_bytes();
            t.insert(&key[..], &[][..])?;
        }
        tx.commit()?;
    }
    let bare = args.commits as f64 / t.elapsed().as_secs_f64();
    drop(db);

    // Signature checks alone.
    let t = Instant::now();
    for tok in grouped {
        black_box(scheme.verify(&public, black_box(tok))?);
    }
    let verify = grouped.len() as f64 / t.elapsed().as_secs_f64();

    let ledger = Ledger::open(&dir.join("r.redb"))?;
    let epoch = 7;
    ledger.put_key(epoch, b"bench key")?;
    let redeem = |batch: &[Vec<u8>]| -> anyhow::Result<()> {
        let mut spends = Vec::with_capacity(batch.len());
        for tok in batch {
            let key_id = token_key_id(tok).context("malformed token")?;
            let v = scheme.verify(&public, tok)?;
            if v.key_id != key_id {
                bail!("key id mismatch");
            }
            spends.push((epoch, v.nonce));
        }
        if !ledger.spend(&spends)?.iter().all(|f| *f) {
            bail!("a fresh token was refused");
        }
        Ok(())
    };
    let t = Instant::now();
    for chunk in grouped.chunks(args.batch.max(1)) {
        redeem(chunk)?;
    }
    let grouped_rate = grouped.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for tok in single {
        redeem(std::slice::from_ref(tok))?;
    }
    let single_rate = single.len() as f64 / t.elapsed().as_secs_f64();
    // Every one of them is spent now: a second pass must refuse them all.
    let again = ledger.spend(&[(epoch, scheme.verify(&public, &grouped[0])?.nonce)])?;
    if again != [false] {
        bail!("a spent token was accepted twice");
    }
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);

    println!("\n## token redemptions/s (one thread)\n");
    println!("| path | redemptions/s | vs bare durable insert |");
    println!("| --- | ---: | ---: |");
    println!("| bare redb durable insert, 1 per commit (baseline) | {bare:.0} | 1.00x |");
    println!(
        "| redemption, 1 per commit (no concurrency) | {single_rate:.0} | {:.2}x |",
        single_rate / bare
    );
    println!(
        "| redemption, group commit of {} | {grouped_rate:.0} | {:.2}x |",
        args.batch,
        grouped_rate / bare
    );
    println!(
        "| signature check alone (upper bound) | {verify:.0} | {:.2}x |",
        verify / bare
    );
    println!(
        "\ngoal >= 5 000/s: {}",
        if grouped_rate >= 5_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2 and 3. Session memory and lookups

/// Draws item ranks by Zipf's law (s = 1), the shape of package
/// popularity: rank k is drawn with weight 1/(k+1).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                acc += 1.0 / (k as f64 + 1.0);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }

    fn draw(&self, rng: &mut dyn Entropy) -> usize {
        let u = rng.next_f64();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

fn item(i: usize) -> ItemKey {
    ItemKey(*blake3::hash(&(i as u64).to_le_bytes()).as_bytes())
}

fn announcement(rng: &mut SeededEntropy, items: &[ItemKey], capacity: usize) -> AnnouncementWire {
    let mut key = [0u8; 32];
    rng.fill(&mut key);
    let regions = ["eu", "na", "as", "sa"];
    AnnouncementWire {
        contact: ContactWire::from(std::net::SocketAddr::from((
            [
                10,
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
            ],
            1024 + rng.below(60_000) as u16,
        ))),
        key: PeerKey(key),
        max_clients: 1_000_000,
        upload_rate: 1 << 20,
        region: Some(regions[rng.below(4) as usize].to_owned()),
        snapshots: vec![("core".into(), 1 + rng.below(3))],
        filter: filter_of(items, capacity),
    }
}

/// The epoch every simulated announcement is for.
const BENCH_EPOCH: Epoch = Epoch(1);

/// A real `balanced` announcement of `items` in a filter sized for
/// `capacity` items.
fn filter_of(items: &[ItemKey], capacity: usize) -> Vec<u8> {
    let held: std::collections::BTreeSet<ItemKey> = items.iter().copied().collect();
    let count = u32::try_from(held.len()).unwrap_or(u32::MAX);
    anonmirror_announce::Announcement::build(
        Level::Balanced,
        BENCH_EPOCH,
        Layout::for_capacity(capacity, Some(count)),
        &held,
    )
    .to_bytes()
}

/// The same test through the reference method alone: what the production
/// hook cost before prepared filters (decode and hash per filter tested).
struct ReferenceOnly;

impl FilterCheck for ReferenceOnly {
    fn holds(&self, filter: &[u8], epoch: Epoch, item: &ItemKey) -> bool {
        AnnounceFilter.holds(filter, epoch, item)
    }
}

/// One table of `n` sessions: its RSS delta, then lookups/s against it
/// and against the HashMap baseline (built before the measurement, from
/// the same holdings), then through the reference-only hook.
/// Returns [RSS delta, then for Zipf queries and for uniform queries:
/// lookups/s, baseline/s, candidates, baseline candidates, reference-only
/// lookups/s, lookups per CPU-second].
fn session_table(args: &Args, n: usize) -> anyhow::Result<[f64; 13]> {
    let universe: Vec<ItemKey> = (0..args.universe).map(item).collect();
    let zipf = Zipf::new(universe.len());
    let mut rng = SeededEntropy::new(n as u64);
    let cfg = SessionConfig {
        max_sessions: n,
        ..SessionConfig::default()
    };
    let now = std::time::Instant::now();
    let held: Vec<Vec<ItemKey>> = (0..n)
        .map(|_| {
            let mut h: Vec<ItemKey> = (0..args.items_per_session)
                .map(|_| universe[zipf.draw(&mut rng)])
                .collect();
            h.sort_unstable();
            h.dedup();
            h
        })
        .collect();
    let mut table = SessionTable::new(cfg.clone(), BENCH_EPOCH, Arc::new(AnnounceFilter));
    // What the server keeps per session for pushes: the owner's drop
    // signal, and the session task's end of it and its subscription to the
    // one broadcast channel every push goes out on.
    let (pushes, _) = tokio::sync::broadcast::channel::<Arc<[u8]>>(16);
    let mut drops = HashMap::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    // Allocated before the measurement: the baseline's, not the table's.
    let mut keys: Vec<PeerKey> = Vec::with_capacity(n);
    let before = rss_bytes()?;
    for h in &held {
        let a = announcement(&mut rng, h, args.filter_capacity);
        keys.push(a.key);
        let id = table
            .open(a, now, &mut rng)
            .map_err(|r| anyhow::anyhow!("open refused: {r}"))?;
        let sub = pushes.subscribe();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drops.insert(id, tx);
        receivers.push((sub, rx));
    }
    let bytes = rss_bytes()?.saturating_sub(before) as f64;
    // The baseline: who holds what, from the same holdings.
    let mut holders: HashMap<ItemKey, Vec<PeerKey>> = HashMap::new();
    for (h, key) in held.iter().zip(&keys) {
        for it in h {
            holders.entry(*it).or_default().push(*key);
        }
    }
    // The same sessions behind the reference-only hook.
    let mut reference = SessionTable::new(cfg, BENCH_EPOCH, Arc::new(ReferenceOnly));
    let anns: Vec<AnnouncementWire> = table.announcements(None);
    for a in anns {
        reference
            .open(a, now, &mut rng)
            .map_err(|r| anyhow::anyhow!("open refused: {r}"))?;
    }
    let regions = ["eu", "na", "as", "sa"];
    // As the session owner does: OS randomness, drawn in blocks.
    let mut lrng = BufferedEntropy::new(anonmirror_core::OsEntropy);
    let mut rows = Vec::new();
    for popular in [true, false] {
        let queries: Vec<(ItemKey, &str)> = (0..args.lookups)
            .map(|_| {
                let k = if popular {
                    zipf.draw(&mut rng)
                } else {
                    rng.below(universe.len() as u64) as usize
                };
                (universe[k], regions[rng.below(4) as usize])
            })
            .collect();
        let run = |table: &mut SessionTable,
                   queries: &[(ItemKey, &str)],
                   lrng: &mut BufferedEntropy<anonmirror_core::OsEntropy>|
         -> (f64, usize, f64) {
            let cpu = thread_cpu().unwrap_or_default();
            let t = Instant::now();
            let mut found = 0usize;
            for (it, region) in queries {
                let q = Query {
                    item: it,
                    size: 1 << 20,
                    repository: "core",
                    version: 1,
                    region: Some(region),
                    want: 8,
                };
                found += table.lookup(&q, now, lrng).len();
            }
            let wall = t.elapsed().as_secs_f64();
            let cpu = thread_cpu()
                .unwrap_or_default()
                .saturating_sub(cpu)
                .as_secs_f64();
            let n = queries.len() as f64;
            (n / wall, found, if cpu > 0.0 { n / cpu } else { 0.0 })
        };
        let (ours, found, ours_cpu) = run(&mut table, &queries, &mut lrng);
        let few = &queries[..(queries.len() / 20).max(1)];
        let (slow, _, _) = run(&mut reference, few, &mut lrng);
        let t = Instant::now();
        let mut base_found = 0usize;
        for (it, _) in &queries {
            if let Some(v) = holders.get(it) {
                base_found += black_box(v.iter().take(8).copied().collect::<Vec<_>>()).len();
            }
        }
        let base = queries.len() as f64 / t.elapsed().as_secs_f64();
        rows.push([ours, base, found as f64, base_found as f64, slow, ours_cpu]);
    }
    black_box((&drops, &receivers));
    let [p, u] = [rows[0], rows[1]];
    Ok([
        bytes, p[0], p[1], p[2], p[3], p[4], p[5], u[0], u[1], u[2], u[3], u[4], u[5],
    ])
}

fn sessions_and_lookups(args: &Args, per_conn: f64) -> anyhow::Result<()> {
    println!("\n## live sessions: memory and lookups/s (one thread)\n");
    println!(
        "Each session: {} Zipf-drawn items in a real `balanced` announcement sized for {} items ({} B), a region, its push state (a drop signal and a subscription to the one broadcast channel of pushes).\n",
        args.items_per_session,
        args.filter_capacity,
        filter_of(&[], args.filter_capacity).len()
    );
    let mut mem_rows = Vec::new();
    let mut lookup_rows = Vec::new();
    for n in [10_000usize, 100_000] {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--sessions-child",
                &n.to_string(),
                "--items-per-session",
                &args.items_per_session.to_string(),
                "--universe",
                &args.universe.to_string(),
                "--filter-capacity",
                &args.filter_capacity.to_string(),
                "--lookups",
                &args.lookups.to_string(),
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "child for {n} sessions: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8(out.stdout)?;
        let f: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [bytes, p0, p1, p2, p3, p4, p5, u0, u1, u2, u3, u4, u5] = f[..] else {
            bail!("child output: {line}");
        };
        mem_rows.push((n, bytes));
        lookup_rows.push((n, "Zipf (popular)", p0, p1, p2, p3, p4, p5));
        lookup_rows.push((n, "uniform (mostly rare)", u0, u1, u2, u3, u4, u5));
    }
    println!(
        "| live sessions | table + push state, RSS delta | per session | + connections (server side, projected) | total |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for (n, bytes) in &mem_rows {
        let conns = per_conn * *n as f64;
        println!(
            "| {n} | {:.1} MiB | {:.0} B | {:.1} MiB | {:.1} MiB |",
            bytes / (1 << 20) as f64,
            bytes / *n as f64,
            conns / (1 << 20) as f64,
            (bytes + conns) / (1 << 20) as f64
        );
    }
    let total_100k = mem_rows
        .last()
        .map(|(n, b)| b + per_conn * *n as f64)
        .unwrap_or(0.0);
    println!(
        "\ngoal <= 1 GiB for 100k sessions: {}",
        if total_100k <= (1u64 << 30) as f64 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "\n| live sessions | queried items | lookups/s (want 8), wall clock | per CPU-second | HashMap lookup (baseline) | vs baseline | candidates (ours / baseline) | reference-only hook, lookups/s |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |");
    for (n, kind, ours, base, found, base_found, slow, cpu) in &lookup_rows {
        println!(
            "| {n} | {kind} | {ours:.0} | {cpu:.0} | {base:.0} | {:.3}x | {found} / {base_found} | {slow:.0} |",
            ours / base
        );
    }
    let worst = lookup_rows
        .iter()
        .filter(|r| r.1.starts_with("Zipf"))
        .map(|r| r.7)
        .fold(f64::INFINITY, f64::min);
    println!(
        "\ngoal >= 50 000 lookups/s on one core (Zipf queries, per CPU-second): {}",
        if worst >= 50_000.0 { "met" } else { "MISSED" }
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Real sessions over loopback: per-connection memory and push latency

const EPOCH_SECS: u64 = 86_400;

/// The wall-clock time every rendezvous of the benchmark runs at (the
/// server child's clock and its clients' must agree).
const BENCH_UNIX: u64 = 20_000 * EPOCH_SECS + 1;

/// `--server-child`: a rendezvous alone in this process.
async fn server_child() -> anyhow::Result<()> {
    let dir = scratch_dir("server")?;
    let clock = ManualClock::at_unix(BENCH_UNIX);
    let r = start(&dir, &clock).await?;
    println!("{} {}", r.local_addr(), r.key());
    // Served until the parent closes our stdin.
    let (done, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        let _ = done.send(());
    });
    let _ = wait.await;
    r.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn start(dir: &std::path::Path, clock: &ManualClock) -> anyhow::Result<Rendezvous> {
    let mut cfg = ServerConfig::new(
        "127.0.0.1:0".parse()?,
        dir.to_path_buf(),
        Arc::new(AnnounceFilter),
        Arc::new(CollectingSink::default()),
    );
    cfg.clock = Arc::new(clock.clone());
    cfg.epoch_secs = EPOCH_SECS;
    cfg.credentials.pow_difficulty = 4;
    cfg.credentials.tokens_per_epoch = 1_000_000;
    cfg.credentials.abuse_over_quota = u32::MAX;
    // Simulated peers: their contacts answer nothing.
    cfg.dangerous_unchecked_contacts = true;
    Ok(Rendezvous::start(cfg).await?)
}

async fn sessions(
    r: &Rendezvous,
    clock: &ManualClock,
    n: usize,
    seed: u64,
) -> anyhow::Result<Vec<anonmirror_rendezvous::LiveSession>> {
    let tokens = tokens(&client_of(r), clock, n, seed).await?;
    open_all(&client_of(r), &tokens, seed).await
}

fn client_of(r: &Rendezvous) -> Client {
    Client::new(r.local_addr(), r.key())
}

async fn tokens(
    c: &Client,
    clock: &ManualClock,
    n: usize,
    seed: u64,
) -> anyhow::Result<Vec<anonmirror_rendezvous::Token>> {
    let cred = c
        .register(clock.unix_secs(), 4, SeededEntropy::new(seed))
        .await?;
    let epoch = Epoch::containing(clock.unix_secs(), EPOCH_SECS);
    let mut tokens = Vec::with_capacity(n);
    while tokens.len() < n {
        let k = (n - tokens.len()).min(anonmirror_rendezvous::msg::MAX_ISSUE);
        tokens.extend(c.buy_tokens(&cred, clock.unix_secs(), epoch, k).await?);
    }
    Ok(tokens)
}

async fn open_all(
    c: &Client,
    tokens: &[anonmirror_rendezvous::Token],
    seed: u64,
) -> anyhow::Result<Vec<anonmirror_rendezvous::LiveSession>> {
    let mut rng = SeededEntropy::new(seed);
    let mut live = Vec::with_capacity(tokens.len());
    for t in tokens {
        live.push(c.open_session(t, announcement(&mut rng, &[], 0)).await?);
    }
    Ok(live)
}

/// The rendezvous's RSS per live connection: the server runs in a child
/// process (`--server-child`) and only its RSS is read; the peers (the
/// clients' halves of the connections) are this process's.
async fn connection_memory(args: &Args) -> anyhow::Result<f64> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--server-child")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id().to_string();
    let stdout = child.stdout.take().context("server child stdout")?;
    let mut line = String::new();
    // One short line, printed as soon as the child listens.
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let mut words = line.split_whitespace();
    let addr: std::net::SocketAddr = words.next().context("server address")?.parse()?;
    let key: PeerKey = words
        .next()
        .context("server key")?
        .parse()
        .map_err(|e| anyhow::anyhow!("server key: {e:?}"))?;
    let c = Client::new(addr, key);
    let clock = ManualClock::at_unix(BENCH_UNIX);
    // Warm up the server's allocator and runtime with a few sessions first.
    let warm_tokens = tokens(&c, &clock, 16, 1).await?;
    let warm = open_all(&c, &warm_tokens, 1).await?;
    // Tokens are bought first: issuance (blind RSA, the credential's redb
    // writes) is not a connection's cost.
    let bought = tokens(&c, &clock, args.real_sessions, 2).await?;
    let before = rss_of(&pid)?;
    let live = open_all(&c, &bought, 2).await?;
    let after = rss_of(&pid)?;
    let per = after.saturating_sub(before) as f64 / args.real_sessions as f64;
    println!(
        "\nreal sessions over loopback: {} sessions, rendezvous process RSS delta {:.1} MiB, {:.0} B per session (the server's side only: the peers run in another process)",
        args.real_sessions,
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
        per
    );
    for s in live.into_iter().chain(warm) {
        s.close().await;
    }
    drop(child.stdin.take());
    child.wait()?;
    Ok(per)
}

async fn push_latency(args: &Args) -> anyhow::Result<()> {
    let dir = scratch_dir("push")?;
    let clock = ManualClock::at_unix(BENCH_UNIX);
    let r = start(&dir, &clock).await?;
    let mut live = sessions(&r, &clock, 100, 3).await?;
    let mut all = Vec::new();
    let mut maxes = Vec::new();
    for v in 0..args.pushes as u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for mut s in live {
            tasks.spawn(async move {
                let ev = s.next_event().await;
                (s, ev, Instant::now())
            });
        }
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let queued = r.push("core", v + 2).await?;
        if queued != 100 {
            bail!("pushed to {queued} sessions, not 100");
        }
        live = Vec::with_capacity(100);
        let mut worst = Duration::ZERO;
        while let Some(j) = tasks.join_next().await {
            let (s, ev, at) = j?;
            ev?;
            let d = at.saturating_duration_since(t0);
            worst = worst.max(d);
            all.push(d);
            live.push(s);
        }
        maxes.push(worst);
    }
    for s in live {
        s.close().await;
    }
    r.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    all.sort();
    maxes.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n## push to 100 live sessions over loopback (one thread, {} pushes)\n",
        args.pushes
    );
    println!("| measure | ms |");
    println!("| --- | ---: |");
    println!("| median session | {:.2} |", ms(all[all.len() / 2]));
    println!(
        "| slowest session, median push | {:.2} |",
        ms(maxes[maxes.len() / 2])
    );
    println!(
        "| slowest session, worst push | {:.2} |",
        ms(maxes[maxes.len() - 1])
    );
    println!(
        "\ngoal: every session within 1 s: {}",
        if maxes[maxes.len() - 1] <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
