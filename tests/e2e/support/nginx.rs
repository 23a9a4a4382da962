//! A real nginx serving a directory on 127.0.0.1 (or a testbed host's
//! address): the "upstream mirror".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestDir, make_world_readable, program_path};

/// nginx's `stub_status` page, never logged; a path no repository uses.
const STATUS: &str = "/.anonmirror-nginx-status";

/// How nginx serves.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// nginx's `limit_rate`: at most this many bytes/s per connection
    /// (None: unlimited). For tests and benchmarks of a slow upstream.
    pub limit_rate: Option<u64>,
    /// nginx's `sendfile` (Debian's default: on).
    pub sendfile: bool,
    /// The address it listens on (a testbed host's, started from a thread
    /// inside that host); 127.0.0.1 by default.
    pub listen: std::net::IpAddr,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            limit_rate: None,
            sendfile: true,
            listen: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target as sent (`/dists/stable/InRelease`).
    pub path: String,
    /// The status nginx answered.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// The `Range` header, if any (`-` when none).
    pub range: String,
}

/// nginx serving a directory on a free port of 127.0.0.1; stopped (SIGTERM
/// to its master, then waited for) when dropped.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// Config, logs, pid file and temp paths.
    prefix: TestDir,
}

impl Nginx {
    /// Serves `root` (made world-readable: the workers run as `nobody`, so
    /// every directory above it must be searchable by others — a
    /// [`TestDir`] is). Its config and logs go to a scratch directory of
    /// its own. Panics, with nginx's error log, if it does not start.
    pub fn start(root: &Path, opts: NginxOptions) -> Nginx {
        let nginx = program_path("nginx").expect("nginx is installed (support::require)");
        let root = root.canonicalize().expect("root exists");
        make_world_readable(&root);
        for dir in root.ancestors().skip(1) {
            let mode = dir.metadata().expect("stat").permissions().mode();
            assert!(
                mode & 0o001 != 0,
                "{} is mode {mode:o}: nginx's workers (nobody) cannot reach {}; \
                 serve from a support::TestDir",
                dir.display(),
                root.display()
            );
        }
        let dir = TestDir::new();
        let prefix = dir.path().to_owned();
        let p = prefix.display();
        // A port picked by binding :0 may be taken again before nginx binds
        // it: retry with another.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind((opts.listen, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let conf = prefix.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                     events {{ worker_connections 256; }}\n\
                     http {{\n  default_type application/octet-stream;\n  sendfile {sendfile};\n\
                     log_format am '$request_method $request_uri $status $body_bytes_sent \"$http_range\"';\n\
                     access_log {p}/access.log am;\n\
                     client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
                     fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
                     server {{\n    listen {addr};\n    root {r};\n{limit}\
                     location = {STATUS} {{ stub_status; access_log off; limit_rate 0; }}\n  }}\n}}\n",
                    sendfile = if opts.sendfile { "on" } else { "off" },
                    addr = SocketAddr::new(opts.listen, port),
                    r = root.display(),
                    limit = opts
                        .limit_rate
                        .map(|n| format!("    limit_rate {n};\n"))
                        .unwrap_or_default(),
                ),
            )
            .expect("write nginx.conf");
            let mut child = Command::new(&nginx)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&prefix)
                .arg("-e")
                .arg(prefix.join("error.log"))
                // Its workers must not hold our stdout open.
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let addr = SocketAddr::new(opts.listen, port);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Some(status) = child.try_wait().expect("wait") {
                    last_error = format!(
                        "nginx exited ({status}): {}",
                        std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(addr).is_ok() {
                    return Nginx {
                        child,
                        addr,
                        prefix: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if child.try_wait().expect("wait").is_none() {
                stop(&mut child);
                last_error = "nginx did not listen within 10 s".to_owned();
            }
        }
        panic!("nginx did not start: {last_error}")
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the served root.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The access log: one line per request, `METHOD URI STATUS BYTES
    /// "RANGE"`.
    pub fn access_log(&self) -> PathBuf {
        self.prefix.path().join("access.log")
    }

    /// The requests logged so far, oldest first. nginx logs a request just
    /// after sending its response, which its client may have read by then:
    /// this first waits (up to 5 s) until no request is in flight, so that
    /// every request a finished client made is there.
    pub fn requests(&self) -> Vec<Request> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) && !self.idle() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(self.access_log()).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut w = line.splitn(5, ' ');
                let mut next = || w.next().unwrap_or_default().to_owned();
                Request {
                    method: next(),
                    path: next(),
                    status: next().parse().unwrap_or_default(),
                    bytes: next().parse().unwrap_or_default(),
                    range: next().trim_matches('"').to_owned(),
                }
            })
            .collect()
    }
}

impl Nginx {
    /// Whether nginx is handling no request but our status query: its
    /// `stub_status` says `Reading: 0 Writing: 1`. nginx logs a request
    /// before it stops counting it, so then every finished one is logged.
    /// Idle keep-alive connections (`Waiting`) do not count.
    fn idle(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = String::new();
        if write!(conn, "GET {STATUS} HTTP/1.0\r\n\r\n").is_err()
            || conn.read_to_string(&mut reply).is_err()
        {
            return false;
        }
        // "Reading: 0 Writing: 1 Waiting: 0"
        let count = |key: &str| {
            let mut words = reply.split_whitespace();
            words.find(|w| *w == key)?;
            words.next()?.parse::<u64>().ok()
        };
        count("Reading:") == Some(0) && count("Writing:") == Some(1)
    }
}

/// SIGTERM to nginx's master (it then stops its workers, which a SIGKILL
/// would orphan), waited for; SIGKILL only if it lingers.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
