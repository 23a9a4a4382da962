//! A keep-alive HTTP/1.1 client, as apt's, and the gateway's metrics.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::repo::{INDEXES, Package};
use anonmirror_mirror::metrics::MetricsSnapshot;
use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

/// One persistent connection.
pub struct Http {
    addr: SocketAddr,
    conn: Option<AsyncBufReader<TcpStream>>,
}

impl Http {
    /// A client of `addr`; it connects at the first request.
    pub fn new(addr: SocketAddr) -> Http {
        Http { addr, conn: None }
    }

    /// GET `path`: the status, the body's length and SHA-256; the body is
    /// written to `out` when given.
    pub async fn get(&mut self, path: &str, out: Option<&Path>) -> Result<(u16, u64, [u8; 32])> {
        // A kept connection the server closed in the meantime: once more on
        // a new one.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            match self.try_get(path, out).await {
                Ok(r) => return Ok(r),
                Err(e) if reused && attempt == 0 => {
                    self.conn = None;
                    let _ = e;
                }
                Err(e) => return Err(e.context(format!("GET {path} from {}", self.addr))),
            }
        }
        bail!("GET {path}: no answer")
    }

    async fn try_get(&mut self, path: &str, out: Option<&Path>) -> Result<(u16, u64, [u8; 32])> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.conn = Some(AsyncBufReader::with_capacity(256 * 1024, s));
        }
        let conn = self.conn.as_mut().context("no connection")?;
        conn.get_mut()
            .write_all(format!("GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = None;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("closed within the headers");
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = Some(v.trim().parse::<u64>()?);
            } else if l.starts_with("transfer-encoding:") {
                bail!("chunked bodies are not handled here: {l}");
            } else if l == "connection: close" {
                close = true;
            }
        }
        let len = len.context("no content-length")?;
        let mut file = match out {
            // Over the file's cached pages in place, if it is there (see
            // the module doc); the whole body is written.
            Some(p) => Some(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p)?,
            )),
            None => None,
        };
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < len {
            let want = (len - got).min(buf.len() as u64) as usize;
            let n = conn.read(&mut buf[..want]).await?;
            if n == 0 {
                bail!("closed after {got} of {len} bytes");
            }
            sha.update(&buf[..n]);
            if let Some(f) = file.as_mut() {
                f.write_all(&buf[..n])?;
            }
            got += n as u64;
        }
        if let Some(mut f) = file {
            f.flush()?;
        }
        if close {
            self.conn = None;
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(sha.finish().as_ref());
        Ok((status, got, digest))
    }
}

/// Fetch the indexes and `packages` from `addr` under `prefix` (`""` for
/// nginx, `"bench/"` for a gateway), checking each package against the
/// index; bodies go to files in `out` when given. Returns the item bytes
/// and the time taken.
pub async fn fetch_set(
    addr: SocketAddr,
    prefix: &str,
    packages: &[Package],
    out: Option<&Path>,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut http = Http::new(addr);
    for index in INDEXES {
        let (status, _, _) = http.get(&format!("{prefix}{index}"), None).await?;
        if status != 200 {
            bail!("{index}: {status}");
        }
    }
    let mut bytes = 0;
    for (i, p) in packages.iter().enumerate() {
        let file = out.map(|d| d.join(format!("{i}.deb")));
        let (status, len, sha) = http
            .get(&format!("{prefix}{}", p.path), file.as_deref())
            .await?;
        if status != 200 {
            bail!("{}: {status}", p.path);
        }
        if len != p.size || sha != p.sha256 {
            bail!("{}: differs from the index", p.path);
        }
        bytes += len;
    }
    Ok((bytes, started.elapsed()))
}

/// The gateway's metrics, on a connection of their own from this thread
/// (which may be inside a testbed host, where no runtime is).
pub fn metrics_blocking(gateway: SocketAddr) -> Result<MetricsSnapshot> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&gateway, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(
        b"GET /.anonmirror/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("metrics: no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics: {}", head.lines().next().unwrap_or_default());
    }
    MetricsSnapshot::from_prometheus(body).map_err(|e| anyhow!("metrics: {e}"))
}
