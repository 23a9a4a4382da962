//! The upstream fetcher: plain HTTP/1.1 GETs and HEADs to the official
//! mirror, and a running estimate of how fast it answers. Packages the
//! upstream alone serves are pipelined on one warm connection
//! (`upstream/pipeline.rs`), as apt sends them.
//!
//! The estimate (time to first byte and throughput, exponentially weighted
//! over recent transfers) sets the hedge deadline: how long peers may take
//! before the upstream starts beside them (see [`crate::job`]).
//!
//! `http://` and `https://` upstreams are spoken (HTTP/1.1; TLS by rustls,
//! with the Mozilla root store compiled in). Every byte of a package is
//! verified against the index either way, and the package manager checks
//! the index's signature itself; TLS keeps which packages this machine
//! fetches from the network's view.
//!
//! Connections are opened by the node's [`Transport`]: direct TCP, or Tor
//! (then the mirror's name goes to the exit unresolved, no DNS query
//! leaves this machine, and the mirror sees an exit relay, or an onion
//! mirror sees nothing at all).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anonmirror_channel::TcpTransport;
use anonmirror_channel::transport::{BoxStream, Transport};
use anonmirror_core::Contact;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::err::{Error, Result};

mod pipeline;

/// Headers a request may carry upstream (everything else stays local).
const FORWARDED: [&str; 4] = ["range", "if-modified-since", "if-none-match", "if-range"];

/// Upstream speed as measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpstreamEstimate {
    /// Time to the response head.
    pub first_byte: Duration,
    /// Bytes per second of bodies.
    pub rate: f64,
    /// Transfers measured.
    pub samples: u64,
}

impl UpstreamEstimate {
    /// Expected time for the upstream to deliver `size` bytes.
    pub fn expected(&self, size: u64) -> Duration {
        let body = if self.rate > 0.0 {
            size as f64 / self.rate
        } else {
            0.0
        };
        self.first_byte + Duration::from_secs_f64(body.min(86_400.0))
    }
}

/// The HTTP client for upstream mirrors.
#[derive(Debug)]
pub struct Upstream {
    client: Client<HttpsConnector<DialConnector>, Empty<Bytes>>,
    /// Opens the pipelines' connections (hyper's client has its own).
    connector: HttpsConnector<DialConnector>,
    pipelines: pipeline::Pipelines,
    estimate: Mutex<Option<UpstreamEstimate>>,
    timeout: Duration,
    transport: String,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl Upstream {
    /// A client over direct TCP whose requests must be answered (head)
    /// within `timeout`.
    pub fn new(timeout: Duration) -> Upstream {
        Upstream::with_dialer(timeout, Arc::new(TcpTransport))
    }

    /// A client whose connections `dialer` opens.
    pub fn with_dialer(timeout: Duration, dialer: Arc<dyn Transport>) -> Upstream {
        let transport = dialer.describe();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(DialConnector { dialer, timeout });
        Upstream {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector.clone()),
            connector,
            pipelines: pipeline::Pipelines::default(),
            estimate: Mutex::new(None),
            timeout,
            transport,
        }
    }

    /// What carries its connections ("tcp", "tor (arti)", ...).
    pub fn transport(&self) -> &str {
        &self.transport
    }

    /// `method` `url`, with the forwardable headers of `headers`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Incoming>> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Upstream(format!("bad upstream URL: {e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(Error::Upstream(
                    "upstream URL is neither http:// nor https://".to_owned(),
                ));
            }
        }
        let mut req = Request::builder().method(method).uri(uri);
        for name in FORWARDED {
            if let Some(v) = headers.get(name) {
                req = req.header(name, v.clone());
            }
        }
        let req = req
            .header(hyper::header::USER_AGENT, "anonmirror")
            .body(Empty::new())
            .map_err(|e| Error::Upstream(format!("building the request: {e}")))?;
        let started = std::time::Instant::now();
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| Error::Upstream("no answer in time".to_owned()))?
            .map_err(|e| Error::Upstream(format!("request failed: {e}")))?;
        self.observe_head(started.elapsed());
        Ok(resp)
    }

    /// A GET with one extra header.
    pub async fn get_with(
        &self,
        url: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<Response<Incoming>> {
        let mut h = HeaderMap::new();
        for (k, v) in extra {
            h.insert(k.clone(), v.clone());
        }
        self.request(Method::GET, url, &h).await
    }

    /// GET an item's file. `pipelined` (for answers read to their end): on
    /// the mirror's warm connection behind the other items asked for, or,
    /// when that cannot be, on a connection of its own; else on one of its
    /// own.
    pub async fn get_item(&self, url: &str, pipelined: bool) -> Result<ItemResponse> {
        if !pipelined {
            let resp = self.get_with(url, &[]).await?;
            return Ok(ItemResponse {
                status: resp.status(),
                body: ItemBody(Carried::Own(resp.into_body())),
            });
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Upstream(format!("bad upstream URL: {e}")))?;
        let started = std::time::Instant::now();
        let open = || async {
            let mut connector = self.connector.clone();
            let open = async {
                std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
                    .await?;
                tower_service::Service::call(&mut connector, uri.clone()).await
            };
            match tokio::time::timeout(self.timeout, open).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => Err(std::io::Error::other(e)),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            hyper::header::USER_AGENT,
            HeaderValue::from_static("anonmirror"),
        );
        match self.pipelines.get(&uri, &headers, self.timeout, open).await {
            Ok((answer, first)) => {
                // Behind other answers the wait says nothing of the mirror.
                if first {
                    self.observe_head(started.elapsed());
                }
                Ok(ItemResponse {
                    status: answer.status,
                    body: ItemBody(Carried::Pipelined(answer.body)),
                })
            }
            Err(pipeline::Unanswered) => {
                let resp = self.get_with(url, &[]).await?;
                Ok(ItemResponse {
                    status: resp.status(),
                    body: ItemBody(Carried::Own(resp.into_body())),
                })
            }
        }
    }

    fn observe_head(&self, t: Duration) {
        if let Ok(mut e) = self.estimate.lock() {
            let next = match *e {
                None => UpstreamEstimate {
                    first_byte: t,
                    rate: 0.0,
                    samples: 0,
                },
                Some(old) => UpstreamEstimate {
                    first_byte: old.first_byte.mul_f64(0.8) + t.mul_f64(0.2),
                    ..old
                },
            };
            *e = Some(next);
        }
    }

    /// A body of `bytes` took `elapsed` after its head: update the rate.
    /// Bodies under 64 KiB say more about latency than throughput and are
    /// skipped.
    pub fn observe_body(&self, bytes: u64, elapsed: Duration) {
        if bytes < 64 * 1024 || elapsed.is_zero() {
            return;
        }
        let rate = bytes as f64 / elapsed.as_secs_f64();
        if let Ok(mut e) = self.estimate.lock() {
            let mut cur = e.unwrap_or(UpstreamEstimate {
                first_byte: Duration::ZERO,
                rate: 0.0,
                samples: 0,
            });
            cur.rate = if cur.samples == 0 {
                rate
            } else {
                cur.rate * 0.7 + rate * 0.3
            };
            cur.samples += 1;
            *e = Some(cur);
        }
    }

    /// The estimate so far (`None` before the first answer).
    pub fn estimate(&self) -> Option<UpstreamEstimate> {
        self.estimate.lock().ok().and_then(|e| *e)
    }
}

/// An answer to [`Upstream::get_item`].
#[derive(Debug)]
pub struct ItemResponse {
    /// Its status.
    pub status: hyper::StatusCode,
    /// Its body.
    pub body: ItemBody,
}

/// The body of an item's file from the upstream.
#[derive(Debug)]
pub struct ItemBody(Carried);

/// How an [`ItemBody`] comes.
#[derive(Debug)]
enum Carried {
    /// On a connection of its own.
    Own(Incoming),
    /// On a pipeline, behind other answers.
    Pipelined(pipeline::Body),
}

impl ItemBody {
    /// The next bytes; `None` at the end.
    pub async fn data(&mut self) -> Option<std::result::Result<Bytes, BodyError>> {
        match &mut self.0 {
            Carried::Own(body) => loop {
                match http_body_util::BodyExt::frame(body).await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => return Some(Ok(data)),
                        // Trailers: not bytes of the file.
                        Err(_) => continue,
                    },
                    Err(e) => return Some(Err(BodyError::Own(e))),
                }
            },
            Carried::Pipelined(body) => body.data().await.map(|r| r.map_err(BodyError::Pipelined)),
        }
    }
}

/// Why an upstream body broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// On a connection of its own.
    #[error(transparent)]
    Own(hyper::Error),
    /// On a pipeline.
    #[error("{0}")]
    Pipelined(String),
}

/// The URL of `rest` under a repository's base URL.
pub fn join(base: &str, rest: &str) -> String {
    let mut url = String::with_capacity(base.len() + rest.len() + 1);
    url.push_str(base);
    if !url.ends_with('/') {
        url.push('/');
    }
    url.push_str(rest.trim_start_matches('/'));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_contacts_without_resolving_names() {
        let c = |u: &str| contact_of(&u.parse().expect("uri")).expect(u);
        assert_eq!(
            c("http://192.0.2.1:8080/x"),
            Contact::Tcp("192.0.2.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            c("https://[2001:db8::1]/x"),
            Contact::Tcp("[2001:db8::1]:443".parse().expect("addr"))
        );
        assert_eq!(
            c("https://deb.example.org/debian/"),
            Contact::Host {
                host: "deb.example.org".into(),
                port: 443
            }
        );
        let onion = format!("{}.onion", "b".repeat(56));
        assert!(c(&format!("http://{onion}/archlinux/")).is_onion());
        assert_eq!(
            c(&format!("http://{onion}/")).to_string(),
            format!("onion:{onion}:80")
        );
    }

    #[test]
    fn join_puts_exactly_one_slash_between() {
        assert_eq!(join("http://m/x", "a/b"), "http://m/x/a/b");
        assert_eq!(join("http://m/x/", "/a"), "http://m/x/a");
    }

    #[test]
    fn the_estimate_blends_and_predicts() {
        let u = Upstream::default();
        assert_eq!(u.estimate(), None);
        u.observe_head(Duration::from_millis(10));
        u.observe_body(1 << 20, Duration::from_millis(100));
        let e = u.estimate().expect("measured");
        assert_eq!(e.samples, 1);
        let t = e.expected(1 << 20);
        assert!(
            t >= Duration::from_millis(100) && t <= Duration::from_millis(120),
            "{t:?}"
        );
        // Small bodies do not count.
        u.observe_body(100, Duration::from_secs(10));
        assert_eq!(u.estimate().map(|e| e.samples), Some(1));
    }

    #[tokio::test]
    async fn https_speaks_tls_and_other_schemes_are_refused() {
        // A server that answers a TLS ClientHello with plain HTTP: the
        // handshake fails, which proves TLS was attempted.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                // 0x16: a TLS handshake record.
                let tls = n > 0 && buf[0] == 0x16;
                let _ = s
                    .write_all(if tls {
                        b"HTTP/1.1 400 Bad Request\r\n\r\n"
                    } else {
                        b"not tls"
                    })
                    .await;
            }
        });
        let u = Upstream::new(Duration::from_secs(5));
        let e = u
            .request(Method::GET, &format!("https://{addr}/x"), &HeaderMap::new())
            .await
            .expect_err("not a TLS server");
        assert!(e.to_string().contains("request failed"), "{e}");
        let e = u
            .request(Method::GET, "ftp://example.org/x", &HeaderMap::new())
            .await
            .expect_err("ftp");
        assert!(e.to_string().contains("neither http"), "{e}");
    }
}

/// Opens hyper's connections through a [`Transport`]: the URL's host goes
/// to the dialer as a name (never resolved here unless the dialer is
/// direct TCP).
#[derive(Clone, Debug)]
pub struct DialConnector {
    dialer: Arc<dyn Transport>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for DialConnector {
    type Response = DialedIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<DialedIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (dialer, timeout) = (self.dialer.clone(), self.timeout);
        Box::pin(async move {
            let contact = contact_of(&uri)?;
            let stream = tokio::time::timeout(timeout, dialer.connect(&contact))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            Ok(DialedIo(TokioIo::new(stream)))
        })
    }
}

/// Where a URL's authority points: an IP literal, a name, or an onion
/// address, with the scheme's default port.
fn contact_of(uri: &Uri) -> std::io::Result<Contact> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let host = uri
        .host()
        .ok_or_else(|| bad("the upstream URL has no host"))?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(Contact::Tcp(std::net::SocketAddr::new(ip, port)));
    }
    Contact::parse(&format!("{host}:{port}")).map_err(|e| bad(&e.to_string()))
}

/// A dialed stream as hyper's I/O.
pub struct DialedIo(TokioIo<BoxStream>);

impl std::fmt::Debug for DialedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialedIo")
    }
}

impl Connection for DialedIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for DialedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for DialedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
