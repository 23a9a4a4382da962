//! The daemon's command line around the gateway: `anonmirror daemon`,
//! `status`, `import`, `demo`, and the systemd unit shipped in `dist/`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anonmirror_node::demo::{StaticServer, generate_repository};
use anonmirror_node::http::get as http_get;

use crate::support::{TestDir, program_path, require};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anonmirror"))
}

/// A level-off policy with one apt repository at `url`, everything under
/// `dir`, the gateway on `gateway`.
fn policy(dir: &Path, url: &str, gateway: &str) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "level = \"off\"\n\n[paths]\nstate_dir = \"{}\"\ncache_dir = \"{}\"\n\n\
             [gateway]\nlisten = \"{gateway}\"\n\n\
             [[repository]]\nname = \"demo\"\nkind = \"apt\"\nurl = \"{url}\"\n",
            dir.join("state").display(),
            dir.join("cache").display(),
        ),
    )
    .expect("write policy");
    path
}

/// Starts `anonmirror daemon`, returns it and the gateway address it
/// printed.
fn daemon(policy: &Path) -> (std::process::Child, String) {
    let mut child = bin()
        .args(["daemon", "--policy"])
        .arg(policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn daemon");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr = line
        .trim()
        .strip_prefix("gateway listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "daemon exited with {status}");
}

#[test]
fn the_daemon_serves_through_its_gateway_status_reports_it_and_import_links_a_cache() {
    let dir = TestDir::new();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let upstream_dir = dir.path().join("upstream");
    let packages = generate_repository(&upstream_dir, 4, 9).expect("repository");
    let upstream = rt
        .block_on(StaticServer::start(upstream_dir.clone()))
        .expect("upstream");
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).expect("mkdir");
    let policy = policy(&node_dir, &upstream.url(), "127.0.0.1:0");

    let (child, addr) = daemon(&policy);
    // The index and one package through the gateway.
    let base = format!("http://{addr}/demo/");
    for path in [
        "dists/demo/Release",
        "dists/demo/main/binary-all/Packages",
        &packages[0].path,
    ] {
        let (status, _) = rt
            .block_on(http_get(&format!("{base}{path}")))
            .expect("get");
        assert!(status.is_success(), "{path}: {status}");
    }
    // Something not in the index passes through, and is counted so.
    let (status, _) = rt
        .block_on(http_get(&format!("{base}nothing-here")))
        .expect("get");
    assert_eq!(status.as_u16(), 404);

    let out = bin()
        .args(["status", "--json", "--gateway", &addr])
        .output()
        .expect("status");
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["from_upstream"], packages[0].size);
    assert_eq!(json["from_peers"], 0);
    let text = bin()
        .args(["status", "--gateway", &addr])
        .output()
        .expect("status");
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("offload ratio: 0.0 %"),
        "{text:?}"
    );
    let font = std::path::Path::new(anonmirror::plot::FONTS[0]).exists();
    assert!(
        font || std::env::var("CI").as_deref() != Ok("true"),
        "fonts-dejavu-core is missing: run scripts/test, which installs scripts/system-packages"
    );
    if font {
        let svg = dir.path().join("offload.svg");
        let out = bin()
            .args(["status", "--gateway", &addr, "--plot"])
            .arg(&svg)
            .output()
            .expect("status --plot");
        assert!(out.status.success(), "{out:?}");
        let text = std::fs::read_to_string(&svg).expect("plot");
        assert!(text.starts_with("<svg") && text.contains("offload ratio"));
    }
    stop(child);

    // A package manager's cache: two packages of the index (one of them
    // already held), one file that is not in it, and one whose bytes lie.
    let cache = dir.path().join("pkgcache");
    std::fs::create_dir_all(&cache).expect("mkdir");
    for p in &packages[..3] {
        let name = p.path.rsplit('/').next().expect("name");
        std::fs::copy(upstream_dir.join(&p.path), cache.join(name)).expect("copy");
    }
    std::fs::write(cache.join("stray.deb"), b"not in any index").expect("write");
    let liar = packages[3].path.rsplit('/').next().expect("name");
    let mut bytes = std::fs::read(upstream_dir.join(&packages[3].path)).expect("read");
    bytes[0] ^= 1;
    std::fs::write(cache.join(liar), &bytes).expect("write");
    let out = bin()
        .args(["import", "--from"])
        .arg(&cache)
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("import");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 2, already held 1, not in the index 1, mismatched 1"
    );

    // Restarted, the daemon serves the imported packages from its store.
    let (child, addr) = daemon(&policy);
    let base = format!("http://{addr}/demo/");
    for p in &packages[..3] {
        let (status, body) = rt
            .block_on(http_get(&format!("{base}{}", p.path)))
            .expect("get");
        assert!(status.is_success());
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, &body).as_ref(),
            p.sha256
        );
    }
    let out = bin()
        .args(["status", "--json", "--gateway", &addr])
        .output()
        .expect("status");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let stored: u64 = packages[..3].iter().map(|p| p.size).sum();
    assert_eq!(json["from_store"], stored, "{json}");
    assert_eq!(json["from_upstream"], 0, "{json}");
    stop(child);
}

#[test]
fn status_without_a_daemon_says_so() {
    let out = bin()
        .args(["status", "--gateway", "127.0.0.1:9"])
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be reached"),
        "{out:?}"
    );
}

#[test]
fn the_demo_runs_and_every_package_arrives_verified() {
    let out = bin()
        .args(["demo", "--packages", "6", "--volunteers", "open,balanced"])
        .env("ANONMIRROR_LOG", "warn")
        .output()
        .expect("demo");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("client: 6 packages") && text.contains("every one verified"),
        "{text}"
    );
    assert!(text.contains("volunteer 0 (open)"), "{text}");
    assert!(text.contains("volunteer 1 (balanced)"), "{text}");
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/anonmirror.service"
    ))
    .expect("unit");
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=anonmirror",
        "CacheDirectory=anonmirror",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/bin/anonmirror daemon --policy /etc/anonmirror/policy.toml",
    ] {
        assert!(unit.lines().any(|l| l == directive), "missing {directive}");
    }
    if !require(&["systemd-analyze"]) {
        return;
    }
    // systemd-analyze checks that ExecStart exists: point it at this build.
    let dir = TestDir::new();
    let path = dir.path().join("anonmirror.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/anonmirror", env!("CARGO_BIN_EXE_anonmirror")),
    )
    .expect("write");
    let analyze = program_path("systemd-analyze").expect("systemd-analyze");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("anonmirror.service:"),
        "{out:?}"
    );
}
