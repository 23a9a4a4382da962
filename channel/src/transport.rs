//! Transports: how a byte stream to a peer or rendezvous is opened.
//!
//! A [`Transport`] connects to a [`Contact`] and listens for others; the
//! Noise channel runs over whatever stream it yields. Three carry
//! connections:
//!
//! - [`TcpTransport`]: direct TCP. The other end learns this machine's
//!   address, and a [`Contact::Host`] is resolved by the system's resolver.
//! - [`socks::SocksTransport`]: a Tor daemon's SOCKS5 port (`tor-socks`).
//!   Names and onion addresses are handed to Tor unresolved (SOCKS5's
//!   domain form), so no DNS query leaves this machine, and each
//!   destination gets its own circuit (Tor isolates streams by SOCKS
//!   credentials, and each destination gets its own).
//! - `tor::TorTransport` (feature `tor`): arti, Tor in this process.
//!
//! Two listen through Tor, as onion services (the peer server of a
//! volunteer that serves over Tor): `tor::OnionListener` (feature
//! `onion-service`), hosted by arti, and
//! [`control::DaemonOnionListener`], hosted by a Tor daemon asked through
//! its control port (`tor-socks`).
//!
//! Every one is a [`Transport`]; callers that pick one at run time hold an
//! `Arc<dyn Transport>`, and streams are boxed ([`BoxStream`]).
//!
//! This module must never log or put in an error a contact's address
//! unwrapped: addresses go through [`anonmirror_core::Sensitive`], which redacts them
//! unless the operator opted in. It must never authenticate or encrypt
//! either: that is the Noise channel's job, on top of every transport.

pub mod control;
pub mod socks;
#[cfg(feature = "tor")]
pub mod tor;

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use anonmirror_core::Contact;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A byte stream any transport may yield.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A stream of whichever transport opened it.
pub type BoxStream = Box<dyn Stream>;

/// What [`Transport::connect`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// A way to open byte streams to contacts: TCP, a Tor daemon's SOCKS port,
/// or arti, chosen at run time from the policy (callers hold an
/// `Arc<dyn Transport>`, which is a transport too).
///
/// Errors are plain I/O errors: whether a transport is TCP or Tor, the
/// caller's choice is the same (try another peer, or fall back upstream).
/// Accepting streams is each listener's own business ([`Listener`]): a TCP
/// socket, an onion service hosted by arti or by a Tor daemon.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Opens a stream to `contact`. The caller bounds the time it may take.
    fn connect<'a>(&'a self, contact: &'a Contact) -> ConnectFuture<'a>;

    /// What carries the streams, for the operator (`audit`, logs): e.g.
    /// "tcp" or "tor (arti)".
    fn describe(&self) -> String;

    /// Whether streams go through Tor (the destination never learns this
    /// machine's address, and nothing is resolved here).
    fn is_tor(&self) -> bool;
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn connect<'a>(&'a self, contact: &'a Contact) -> ConnectFuture<'a> {
        (**self).connect(contact)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn is_tor(&self) -> bool {
        (**self).is_tor()
    }
}

/// An error for a contact this transport cannot reach.
fn unreachable_here(contact: &Contact, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{} {why}", contact.redacted()),
    )
}

/// Where streams are accepted: a TCP socket, or an onion service.
pub trait Listener: Send {
    /// The byte stream an accepted connection yields.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next incoming stream, with the remote contact where the
    /// transport knows one (TCP does; an onion service does not, which is
    /// the point). An error of kind `NotConnected` says the listener is
    /// gone for good (its onion service stopped): callers stop accepting.
    fn accept(
        &mut self,
    ) -> impl Future<Output = io::Result<(Self::Stream, Option<Contact>)>> + Send;

    /// Where this listener can be reached, to publish or hand to tests.
    fn local_contact(&self) -> io::Result<Contact>;
}

/// Plain TCP.
///
/// Every stream has `TCP_NODELAY` set: the Noise channel writes whole
/// frames in one call, so Nagle's algorithm would only delay small
/// messages (requests, `Busy`, `Ping`) while waiting for an ACK.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpTransport;

impl TcpTransport {
    /// Opens a TCP stream to `contact` (what [`Transport::connect`] boxes).
    pub async fn open(&self, contact: &Contact) -> io::Result<TcpStream> {
        let stream = match contact {
            Contact::Tcp(addr) => TcpStream::connect(addr).await?,
            // The system's resolver: only ever for TCP, which shows this
            // machine's address to the destination anyway.
            Contact::Host { host, port } => TcpStream::connect((host.as_str(), *port)).await?,
            Contact::Onion { .. } => {
                return Err(unreachable_here(
                    contact,
                    "is an onion service: only Tor reaches it",
                ));
            }
        };
        stream.set_nodelay(true)?;
        tracing::trace!(contact = %contact.redacted(), "tcp connected");
        Ok(stream)
    }

    /// Starts accepting streams at `contact`, a local socket address to
    /// bind (port 0 picks a free one).
    pub async fn listen(&self, contact: &Contact) -> io::Result<TcpTransportListener> {
        let Contact::Tcp(addr) = contact else {
            return Err(unreachable_here(
                contact,
                "is not a local socket address to listen on",
            ));
        };
        let listener = TcpListener::bind(addr).await?;
        tracing::debug!(contact = %contact.redacted(), "tcp listening");
        Ok(TcpTransportListener { listener })
    }
}

impl Transport for TcpTransport {
    fn connect<'a>(&'a self, contact: &'a Contact) -> ConnectFuture<'a> {
        Box::pin(async move { Ok(Box::new(self.open(contact).await?) as BoxStream) })
    }

    fn describe(&self) -> String {
        "tcp".into()
    }

    fn is_tor(&self) -> bool {
        false
    }
}

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpTransportListener {
    listener: TcpListener,
}

impl Listener for TcpTransportListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, Option<Contact>)> {
        let (stream, addr) = self.listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, Some(Contact::Tcp(addr))))
    }

    fn local_contact(&self) -> io::Result<Contact> {
        self.listener.local_addr().map(Contact::Tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_refuses_onions_and_listens_only_on_socket_addresses() {
        let onion = Contact::parse(&format!("{}.onion:80", "a".repeat(56))).expect("onion");
        let e = TcpTransport.open(&onion).await.expect_err("onion over tcp");
        assert!(e.to_string().contains("only Tor reaches it"), "{e}");
        assert!(!e.to_string().contains("aaaa"), "redacted: {e}");
        let name = Contact::parse("localhost:80").expect("name");
        assert!(TcpTransport.listen(&name).await.is_err());
    }

    #[tokio::test]
    async fn tcp_connects_with_nodelay_and_carries_bytes() {
        let t = TcpTransport;
        let mut listener = t
            .listen(&Contact::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("bind");
        let at = listener.local_contact().expect("local address");
        let (client, accepted) = tokio::join!(t.open(&at), listener.accept());
        let mut client = client.expect("connect");
        let (mut server, remote) = accepted.expect("accept");
        assert!(client.nodelay().expect("nodelay") && server.nodelay().expect("nodelay"));
        let Some(Contact::Tcp(remote)) = remote else {
            panic!("TCP knows the remote address");
        };
        assert_eq!(remote, client.local_addr().expect("client address"));
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
    }
}
