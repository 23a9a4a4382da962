//! Two processes on loopback: `store add`, `serve`, `fetch`; and a store
//! killed in the middle of an insert.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{Entropy, SeededEntropy, SystemClock};
use anonmirror_store::Store;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anonmirror"))
}

/// A `serve` process, killed when dropped.
struct Server {
    child: Child,
    peer: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(store: &Path) -> Server {
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("serve prints its address");
    // "serving <addr> key <hex>"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (words.first(), words.get(2)),
        (Some(&"serving"), Some(&"key")),
        "{line}"
    );
    Server {
        child,
        peer: format!("{}={}", words[1], words[3]),
    }
}

fn add(store: &Path, file: &Path) -> (String, u64) {
    let out = bin()
        .args(["store", "add", "--store"])
        .arg(store)
        .arg(file)
        .output()
        .expect("store add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let words: Vec<&str> = text.split_whitespace().collect();
    (words[0].to_owned(), words[1].parse().expect("size"))
}

#[test]
fn two_servers_and_a_fetch_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pkg = dir.path().join("pkg.tar.zst");
    let mut data = vec![0u8; 5 * 1024 * 1024 + 4321];
    SeededEntropy::new(11).fill(&mut data);
    std::fs::write(&pkg, &data).expect("write");
    let (sha, size) = add(&dir.path().join("a"), &pkg);
    assert_eq!(add(&dir.path().join("b"), &pkg), (sha.clone(), size));
    assert_eq!(size, data.len() as u64);
    let a = serve(&dir.path().join("a"));
    let b = serve(&dir.path().join("b"));
    let out_file = dir.path().join("fetched");
    let out = bin()
        .args([
            "fetch",
            "--peer",
            &a.peer,
            "--peer",
            &b.peer,
            "--item",
            &sha,
            "--size",
            &size.to_string(),
            "-o",
        ])
        .arg(&out_file)
        .output()
        .expect("fetch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&out_file).expect("output") == data);
    assert_eq!(
        stdout.lines().filter(|l| l.contains(" bytes ")).count(),
        2,
        "one line per peer: {stdout}"
    );
    assert!(stdout.contains("verified"), "{stdout}");

    // A wrong size: nothing is written, exit 3.
    let bad = bin()
        .args([
            "fetch", "--peer", &a.peer, "--item", &sha, "--size", "12", "-o",
        ])
        .arg(dir.path().join("bad"))
        .output()
        .expect("fetch");
    assert_eq!(bad.status.code(), Some(3));
    assert!(!dir.path().join("bad").exists() && !dir.path().join("bad.partial").exists());
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("MISBEHAVED"),
        "a peer claiming another size is named"
    );
}

#[test]
fn a_store_killed_mid_insert_is_consistent_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let big = dir.path().join("big.iso");
    // A sparse 1 GiB file: instant to make, long enough to hash that the
    // insert is caught in the middle.
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse file");
    let mut child = bin()
        .args(["store", "add", "--store"])
        .arg(&store_dir)
        .arg(&big)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let tmp = store_dir.join("tmp");
    // Wait (bounded) until the insert has begun: its file is in tmp/.
    let mut caught = false;
    for _ in 0..20_000 {
        if std::fs::read_dir(&tmp)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            caught = true;
            break;
        }
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(caught, "the insert finished before it could be interrupted");

    let store = Store::open(&store_dir, 4 << 30, Arc::new(SystemClock)).expect("reopen");
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "no partial file survives"
    );
    assert!(
        store.list().expect("list").is_empty(),
        "no item without its verified bytes"
    );
    assert_eq!(
        std::fs::read_dir(store_dir.join("items"))
            .expect("items")
            .count(),
        0
    );
    assert_eq!(store.used_bytes(), 0);
    assert_eq!(
        std::fs::metadata(&big).expect("source").len(),
        1 << 30,
        "the source file is untouched"
    );
    drop(store);
    // And the same insert, uninterrupted, works.
    let (sha, size) = add(&store_dir, &big);
    assert_eq!(size, 1 << 30);
    let store = Store::open(&store_dir, 4 << 30, Arc::new(SystemClock)).expect("reopen");
    let held = store.list().expect("list");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0.to_hex(), sha);
}
