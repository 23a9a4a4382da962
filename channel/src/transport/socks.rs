//! A Tor daemon's SOCKS5 port as a transport (`transport.kind =
//! "tor-socks"`), for machines where arti cannot run or serve.
//!
//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929),
//! CONNECT only. Names and onion addresses go to the proxy in the domain
//! form, unresolved: Tor resolves them at the exit (or finds the onion
//! service), so no DNS query leaves this machine. The credentials are not
//! a secret for the proxy: they are Tor's isolation key. Tor
//! (`IsolateSOCKSAuth`, on by default) never lets streams with different
//! credentials share a circuit, so each destination gets credentials of
//! its own, derived from the destination under a key drawn when the
//! dialer is made: one circuit per peer, and nothing to link two
//! destinations by, within a run or across runs.
//!
//! The proxy itself must be on this machine (the policy insists on a
//! loopback address): the connection to it is plain TCP.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ConnectFuture, Transport};
use anonmirror_core::Contact;

const VERSION: u8 = 5;
const METHOD_USER_PASS: u8 = 2;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const USER_PASS_VERSION: u8 = 1;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// The username every stream sends; the password is the isolation key.
const USERNAME: &[u8] = b"anonmirror";

/// Streams through a SOCKS5 proxy (a Tor daemon's `SocksPort`).
#[derive(Clone)]
pub struct SocksTransport {
    proxy: SocketAddr,
    /// Keys the per-destination isolation credentials.
    isolation: [u8; 32],
}

impl fmt::Debug for SocksTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocksTransport")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl SocksTransport {
    /// A dialer through the proxy at `proxy`, with a fresh isolation key.
    pub fn new(proxy: SocketAddr) -> io::Result<SocksTransport> {
        let mut isolation = [0u8; 32];
        getrandom::fill(&mut isolation)
            .map_err(|e| io::Error::other(format!("drawing the SOCKS isolation key: {e}")))?;
        Ok(SocksTransport { proxy, isolation })
    }

    /// The proxy's address.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }

    /// The password that isolates streams to `contact` from all others.
    fn password(&self, contact: &Contact) -> String {
        let h = blake3::keyed_hash(&self.isolation, contact.to_string().as_bytes());
        hex::encode(&h.as_bytes()[..16])
    }

    /// Opens a stream to `contact` through the proxy.
    pub async fn open(&self, contact: &Contact) -> io::Result<TcpStream> {
        let mut s = TcpStream::connect(self.proxy).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot reach the Tor SOCKS port {}: {e}", self.proxy),
            )
        })?;
        s.set_nodelay(true)?;
        handshake(&mut s, contact, &self.password(contact)).await?;
        tracing::trace!(contact = %contact.redacted(), "connected through the SOCKS proxy");
        Ok(s)
    }
}

impl Transport for SocksTransport {
    fn connect<'a>(&'a self, contact: &'a Contact) -> ConnectFuture<'a> {
        Box::pin(async move {
            let s = self.open(contact).await?;
            Ok(Box::new(s) as super::BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!("tor (SOCKS5 at {})", self.proxy)
    }

    fn is_tor(&self) -> bool {
        true
    }
}

fn proto(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The client's side of a SOCKS5 CONNECT with username/password
/// authentication, on `s`.
async fn handshake(s: &mut TcpStream, contact: &Contact, password: &str) -> io::Result<()> {
    s.write_all(&[VERSION, 1, METHOD_USER_PASS]).await?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await?;
    match reply {
        [VERSION, METHOD_USER_PASS] => {}
        [VERSION, NO_ACCEPTABLE_METHOD] => {
            return Err(proto(
                "the SOCKS proxy refuses username/password authentication \
                 (which Tor uses to give each destination its own circuit)",
            ));
        }
        [v, m] => {
            return Err(proto(format!(
                "not a SOCKS5 reply: version {v}, method {m}"
            )));
        }
    }
    let mut auth = Vec::with_capacity(3 + USERNAME.len() + password.len());
    auth.push(USER_PASS_VERSION);
    auth.push(USERNAME.len() as u8);
    auth.extend_from_slice(USERNAME);
    auth.push(password.len() as u8);
    auth.extend_from_slice(password.as_bytes());
    s.write_all(&auth).await?;
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(proto("the SOCKS proxy refused our credentials"));
    }
    s.write_all(&connect_request(contact)?).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(proto(format!("not a SOCKS5 reply: version {}", head[0])));
    }
    if head[1] != 0 {
        return Err(io::Error::new(
            refusal_kind(head[1]),
            format!(
                "Tor could not reach {}: {}",
                contact.redacted(),
                refusal(head[1])
            ),
        ));
    }
    // The bound address: read and ignored (Tor sends zeros).
    let rest = match head[3] {
        ATYP_V4 => 4 + 2,
        ATYP_V6 => 16 + 2,
        ATYP_DOMAIN => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await?;
            usize::from(n[0]) + 2
        }
        t => return Err(proto(format!("SOCKS5 reply with address type {t}"))),
    };
    let mut skip = [0u8; 257];
    s.read_exact(&mut skip[..rest]).await?;
    Ok(())
}

/// The CONNECT request for `contact`: names and onion addresses in the
/// domain form, never resolved here.
fn connect_request(contact: &Contact) -> io::Result<Vec<u8>> {
    let mut r = vec![VERSION, CMD_CONNECT, 0];
    let port = match contact {
        Contact::Tcp(addr) => {
            match addr {
                SocketAddr::V4(a) => {
                    r.push(ATYP_V4);
                    r.extend_from_slice(&a.ip().octets());
                }
                SocketAddr::V6(a) => {
                    r.push(ATYP_V6);
                    r.extend_from_slice(&a.ip().octets());
                }
            }
            addr.port()
        }
        Contact::Host { host, port } | Contact::Onion { host, port } => {
            let len = u8::try_from(host.len())
                .map_err(|_| proto("a name longer than 255 bytes cannot go through SOCKS5"))?;
            r.push(ATYP_DOMAIN);
            r.push(len);
            r.extend_from_slice(host.as_bytes());
            *port
        }
    };
    r.extend_from_slice(&port.to_be_bytes());
    Ok(r)
}

/// What a SOCKS5 reply code means (RFC 1928, and Tor's onion-service
/// codes from its `ExtendedErrors`).
fn refusal(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by the exit's policy",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired (the circuit timed out)",
        7 => "command not supported",
        8 => "address type not supported",
        0xf0 => "onion service descriptor not found",
        0xf1 => "onion service descriptor invalid",
        0xf2 => "onion service introduction failed",
        0xf3 => "onion service rendezvous failed",
        0xf4 => "onion service needs client authorization",
        0xf5 => "onion service client authorization wrong",
        0xf6 => "not a valid onion address",
        0xf7 => "onion service introduction timed out",
        _ => "unknown refusal",
    }
}

fn refusal_kind(code: u8) -> io::ErrorKind {
    match code {
        5 => io::ErrorKind::ConnectionRefused,
        6 | 0xf7 => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::NotConnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// What a fake proxy saw of one stream.
    #[derive(Debug, Default)]
    struct Seen {
        methods: Vec<u8>,
        user: Vec<u8>,
        pass: Vec<u8>,
        request: Vec<u8>,
    }

    /// A one-stream SOCKS5 proxy that answers with `code`, then echoes.
    async fn fake_proxy(code: u8) -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut seen = Seen::default();
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.expect("greeting");
            seen.methods = vec![0; usize::from(b[1])];
            s.read_exact(&mut seen.methods).await.expect("methods");
            s.write_all(&[5, 2]).await.expect("method");
            s.read_exact(&mut b).await.expect("auth head");
            seen.user = vec![0; usize::from(b[1])];
            s.read_exact(&mut seen.user).await.expect("user");
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await.expect("pass len");
            seen.pass = vec![0; usize::from(n[0])];
            s.read_exact(&mut seen.pass).await.expect("pass");
            s.write_all(&[1, 0]).await.expect("auth ok");
            let mut head = [0u8; 4];
            s.read_exact(&mut head).await.expect("request");
            seen.request = head.to_vec();
            let rest = match head[3] {
                1 => 6,
                4 => 18,
                _ => {
                    s.read_exact(&mut n).await.expect("len");
                    seen.request.push(n[0]);
                    usize::from(n[0]) + 2
                }
            };
            let mut tail = vec![0u8; rest];
            s.read_exact(&mut tail).await.expect("address");
            seen.request.extend_from_slice(&tail);
            s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .expect("reply");
            if code == 0 {
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.expect("payload");
                s.write_all(&buf).await.expect("echo");
            }
            seen
        });
        (addr, task)
    }

    #[tokio::test]
    async fn names_and_onions_go_to_the_proxy_unresolved() {
        let onion = format!("{}.onion", "a".repeat(56));
        for contact in [
            Contact::parse("mirror.example.org:443").expect("contact"),
            Contact::parse(&format!("{onion}:7879")).expect("contact"),
        ] {
            let (proxy, seen) = fake_proxy(0).await;
            let d = SocksTransport::new(proxy).expect("dialer");
            let mut s = d.open(&contact).await.expect("connect");
            s.write_all(b"hello").await.expect("write");
            let mut back = [0u8; 5];
            s.read_exact(&mut back).await.expect("echo");
            assert_eq!(&back, b"hello");
            let seen = seen.await.expect("proxy");
            assert_eq!(seen.methods, [METHOD_USER_PASS], "only username/password");
            assert_eq!(seen.user, USERNAME);
            let (Contact::Host { host, port } | Contact::Onion { host, port }) = &contact else {
                unreachable!()
            };
            let mut want = vec![5, 1, 0, ATYP_DOMAIN, host.len() as u8];
            want.extend_from_slice(host.as_bytes());
            want.extend_from_slice(&port.to_be_bytes());
            assert_eq!(seen.request, want, "the name itself, not an address");
        }
    }

    #[tokio::test]
    async fn ip_contacts_use_the_address_forms() {
        for (text, atyp, len) in [
            ("192.0.2.7:4000", ATYP_V4, 4),
            ("[2001:db8::1]:80", ATYP_V6, 16),
        ] {
            let (proxy, seen) = fake_proxy(0).await;
            let d = SocksTransport::new(proxy).expect("dialer");
            let contact = Contact::parse(text).expect("contact");
            let mut s = d.open(&contact).await.expect("connect");
            s.write_all(b"12345").await.expect("write");
            let mut back = [0u8; 5];
            s.read_exact(&mut back).await.expect("echo");
            let seen = seen.await.expect("proxy");
            assert_eq!(seen.request[3], atyp);
            assert_eq!(seen.request.len(), 4 + len + 2);
        }
    }

    #[tokio::test]
    async fn refusals_say_what_tor_said() {
        for (code, says) in [
            (5u8, "connection refused"),
            (0xf0, "descriptor not found"),
            (2, "exit's policy"),
        ] {
            let (proxy, _seen) = fake_proxy(code).await;
            let d = SocksTransport::new(proxy).expect("dialer");
            let e = d
                .open(&Contact::parse("192.0.2.1:80").expect("contact"))
                .await
                .expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert!(
                !e.to_string().contains("192.0.2.1"),
                "address redacted: {e}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_proxy_is_named() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed = l.local_addr().expect("addr");
        drop(l);
        let d = SocksTransport::new(closed).expect("dialer");
        let e = d
            .open(&Contact::parse("192.0.2.1:80").expect("contact"))
            .await
            .expect_err("no proxy");
        assert!(e.to_string().contains("Tor SOCKS port"), "{e}");
    }

    #[test]
    fn each_destination_has_its_own_isolation_credentials() {
        let d = SocksTransport::new("127.0.0.1:9050".parse().expect("addr")).expect("dialer");
        let a = Contact::parse("192.0.2.1:80").expect("contact");
        let b = Contact::parse("192.0.2.2:80").expect("contact");
        assert_eq!(d.password(&a), d.password(&a), "one circuit per peer");
        assert_ne!(d.password(&a), d.password(&b), "not shared between peers");
        let other_run = SocksTransport::new(d.proxy()).expect("dialer");
        assert_ne!(d.password(&a), other_run.password(&a), "nothing links runs");
    }
}
