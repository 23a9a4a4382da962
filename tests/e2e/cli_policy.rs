//! `anonmirror policy check|show`, run as the built binary: exit codes,
//! where output goes, and that `show` prints a policy that parses back.

use std::path::Path;
use std::process::{Command, Output};

use anonmirror_privacy::{Level, Policy};

const RENDEZVOUS: &str = "[rendezvous]\naddress = \"rendezvous.example.org:7880\"\n\
    key = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"\n";

fn anonmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anonmirror"))
        .args(args)
        .output()
        .expect("run anonmirror")
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write policy");
    path.to_str().expect("utf-8 temp path").to_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

#[test]
fn check_accepts_a_valid_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "ok.toml",
        &format!("level = \"balanced\"\n{RENDEZVOUS}"),
    );
    let out = anonmirror(&["policy", "check", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{file}: valid (level balanced)\n"));
}

#[test]
fn check_rejects_an_invalid_policy_with_exit_2_and_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(dir.path(), "bad.toml", "[serve]\nmax_clients = 0\n");
    let out = anonmirror(&["policy", "check", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{file}:2:15: `serve.max_clients`")),
        "{err}"
    );

    let file = write(
        dir.path(),
        "contradiction.toml",
        &format!("level = \"strict\"\n{RENDEZVOUS}[transport]\nkind = \"tcp\"\n"),
    );
    let out = anonmirror(&["policy", "check", &file]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("`transport.kind`"), "{err}");
    assert!(err.contains("dangerous_allow_clearnet"), "{err}");

    let missing = dir.path().join("missing.toml");
    let out = anonmirror(&["policy", "check", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

#[test]
fn show_prints_the_embedded_default() {
    let out = anonmirror(&["policy", "show"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let policy = Policy::from_toml_str(&stdout(&out)).expect("show output is a valid policy");
    assert_eq!(policy, Policy::defaults_for(Level::Off));
}

#[test]
fn show_level_strict_parses_back_as_strict() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "open.toml",
        &format!("level = \"open\"\n{RENDEZVOUS}[serve]\nmax_clients = 3\n"),
    );
    let out = anonmirror(&["policy", "show", "--policy", &file, "--level", "strict"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    let policy = Policy::from_toml_str(&shown).expect("show output is a valid policy");
    assert_eq!(policy.level, Level::Strict);
    // The file's explicit key survives; the rest are strict's defaults.
    assert_eq!(policy.serve.max_clients, 3);
    assert_eq!(
        policy.popularity,
        Policy::defaults_for(Level::Strict).popularity
    );

    // Without a file, strict has no rendezvous to serve through: refused.
    let out = anonmirror(&["policy", "show", "--level", "strict"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`rendezvous.key`"),
        "{}",
        stderr(&out)
    );

    let out = anonmirror(&["policy", "show", "--level", "paranoid"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("expected one of off, open"),
        "{}",
        stderr(&out)
    );
}
