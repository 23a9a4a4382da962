//! Baselines for the gateway's end-to-end tests: real `apt-get` and real
//! `pacman` fetching straight from a real nginx, every file checked
//! against the repository's own index — and both clients refusing a
//! corrupted package, which is what makes a passing gateway test mean
//! something.

use std::io::{Read, Write};

use crate::support::{
    APT_PROGRAMS, AptClient, AptRepo, Nginx, NginxOptions, PACMAN_PROGRAMS, PacmanClient,
    PacmanRepo, PkgSpec, TestDir, mixed_specs, names, require, sha256,
};

fn name_versions(packages: &[crate::support::Package]) -> Vec<(String, String)> {
    packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone()))
        .collect()
}

/// REAL-CLIENTS.md: an isolated apt leaves nothing in the host's lists.
fn assert_host_apt_untouched() {
    let Ok(entries) = std::fs::read_dir("/var/lib/apt/lists") else {
        return;
    };
    for entry in entries {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            !name.contains("127.0.0.1"),
            "the host's /var/lib/apt/lists holds {name}"
        );
    }
}

/// Nor does an isolated pacman touch the host's databases or cache.
fn assert_host_pacman_untouched(repo: &PacmanRepo) {
    for dir in ["/var/lib/pacman/sync", "/var/cache/pacman/pkg"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let name = entry.expect("dir entry").file_name();
            let name = name.to_string_lossy();
            let ours = std::iter::once(repo.name())
                .chain(repo.packages().iter().map(|p| p.name.as_str()))
                .any(|n| name.starts_with(&format!("{n}.")) || name.starts_with(&format!("{n}-")));
            assert!(!ours, "the host's {dir} holds {name}");
        }
    }
}

#[test]
fn apt_fetches_every_package_from_nginx_and_sees_a_new_version() {
    if !require(APT_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let mut repo = AptRepo::build(&dir.path().join("www"), "anontest", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    assert!(nginx.addr().ip().is_loopback());
    let apt = AptClient::new(
        &dir.path().join("apt"),
        &nginx.base_url(),
        repo.suite(),
        &repo.key(),
    );

    apt.update();
    assert_eq!(apt.available(), name_versions(repo.packages()));
    let files = apt.download(&names(&specs));
    for (file, package) in files.iter().zip(repo.packages()) {
        package.check_file(file);
    }
    // apt read the signed index, then fetched each package once, all 200.
    let requests = nginx.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert!(paths.contains(&"/dists/anontest/InRelease"), "{requests:?}");
    for package in repo.packages() {
        let path = format!("/{}", package.url_path);
        assert_eq!(
            requests.iter().filter(|r| r.path == path).count(),
            1,
            "{path} in {requests:?}"
        );
    }
    assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");
    // Nothing but the indexes and the packages.
    let indexes = repo.index_paths();
    assert!(
        requests.iter().all(|r| {
            let path = r.path.trim_start_matches('/');
            indexes.iter().any(|i| i == path) || repo.packages().iter().any(|p| p.url_path == path)
        }),
        "{requests:?}"
    );

    // A new version published mid-run: the next update sees it, and the
    // download is the new file.
    repo.publish(&PkgSpec::new("charlie", "1.1-1", 80_000));
    apt.update();
    assert_eq!(apt.available(), name_versions(repo.packages()));
    let charlie = repo.package("charlie");
    assert_eq!(charlie.version, "1.1-1");
    let files = apt.download(&["charlie"]);
    charlie.check_file(&files[0]);

    assert_host_apt_untouched();
}

#[test]
fn pacman_fetches_every_package_from_nginx_and_sees_a_new_version() {
    if !require(PACMAN_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = mixed_specs();
    let mut repo = PacmanRepo::build(&dir.path().join("www"), "anontest", "x86_64", &specs);
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let pacman = PacmanClient::new(
        &dir.path().join("pacman"),
        repo.name(),
        repo.arch(),
        &PacmanRepo::server(&nginx.base_url()),
    );

    pacman.sync();
    assert_eq!(pacman.available(), name_versions(repo.packages()));
    let files = pacman.download(&names(&specs));
    for (file, package) in files.iter().zip(repo.packages()) {
        package.check_file(file);
    }
    let requests = nginx.requests();
    let db = format!("/{}", repo.db_path());
    assert!(requests.iter().any(|r| r.path == db), "{requests:?}");
    for package in repo.packages() {
        let path = format!("/{}", package.url_path);
        assert_eq!(
            requests.iter().filter(|r| r.path == path).count(),
            1,
            "{path} in {requests:?}"
        );
    }
    assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");

    repo.publish(&PkgSpec::new("charlie", "1.1-1", 80_000));
    pacman.sync();
    assert_eq!(pacman.available(), name_versions(repo.packages()));
    let charlie = repo.package("charlie");
    assert_eq!(charlie.version, "1.1-1");
    let files = pacman.download(&["charlie"]);
    charlie.check_file(&files[0]);

    assert_host_pacman_untouched(&repo);
}

#[test]
fn apt_refuses_a_corrupted_package() {
    if !require(APT_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = &mixed_specs()[..2];
    let repo = AptRepo::build(&dir.path().join("www"), "anontest", specs);
    repo.corrupt("bravo");
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let apt = AptClient::new(
        &dir.path().join("apt"),
        &nginx.base_url(),
        repo.suite(),
        &repo.key(),
    );
    apt.update();
    let (out, files) = apt.try_download(&["bravo"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("Hash Sum mismatch"),
        "{}",
        out.describe()
    );
    // apt keeps the bad bytes only as `….deb.FAILED`.
    assert!(
        files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "FAILED")),
        "apt kept {files:?}"
    );
    // The intact one still comes through.
    let files = apt.download(&["alpha"]);
    repo.package("alpha").check_file(&files[0]);
    assert_host_apt_untouched();
}

#[test]
fn pacman_refuses_a_corrupted_package() {
    if !require(PACMAN_PROGRAMS) {
        return;
    }
    let dir = TestDir::new();
    let specs = &mixed_specs()[..2];
    let repo = PacmanRepo::build(&dir.path().join("www"), "anontest", "x86_64", specs);
    repo.corrupt("bravo");
    let nginx = Nginx::start(repo.root(), NginxOptions::default());
    let pacman = PacmanClient::new(
        &dir.path().join("pacman"),
        repo.name(),
        repo.arch(),
        &PacmanRepo::server(&nginx.base_url()),
    );
    pacman.sync();
    let (out, files) = pacman.try_download(&["bravo"]);
    assert!(!out.status.success(), "{}", out.describe());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("invalid or corrupted package (checksum)"),
        "{}",
        out.describe()
    );
    assert!(files.is_empty(), "pacman kept {files:?}");
    let files = pacman.download(&["alpha"]);
    repo.package("alpha").check_file(&files[0]);
    assert_host_pacman_untouched(&repo);
}

/// nginx's options take effect, and it answers `Range` with 206: what
/// the gateway's resume and slow-upstream tests rely on.
#[test]
fn nginx_serves_ranges_with_a_rate_limit_and_without_sendfile() {
    if !require(&["nginx"]) {
        return;
    }
    let dir = TestDir::new();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("mkdir");
    let data = PkgSpec::new("blob", "1", 300_000).payload();
    std::fs::write(www.join("blob.bin"), &data).expect("write");
    let nginx = Nginx::start(
        &www,
        NginxOptions {
            limit_rate: Some(4 << 20),
            sendfile: false,
            ..NginxOptions::default()
        },
    );
    let get = |range: Option<&str>| {
        let mut conn = std::net::TcpStream::connect(nginx.addr()).expect("connect");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let range = range
            .map(|r| format!("Range: bytes={r}\r\n"))
            .unwrap_or_default();
        write!(conn, "GET /blob.bin HTTP/1.0\r\n{range}\r\n").expect("send");
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).expect("read");
        let split = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = String::from_utf8_lossy(&reply[..split]).into_owned();
        (head, reply[split + 4..].to_vec())
    };
    let (head, body) = get(None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(sha256(&body), sha256(&data));
    let (head, body) = get(Some("1000-1999"));
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, data[1000..2000]);
    let requests = nginx.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!((requests[0].status, requests[0].bytes), (200, 300_000));
    assert_eq!(
        (
            requests[1].status,
            requests[1].bytes,
            requests[1].range.as_str()
        ),
        (206, 1000, "bytes=1000-1999")
    );
}
