//! Transports: how a byte stream to a peer or rendezvous is opened.
//!
//! A [`Transport`] connects to a [`Contact`] and listens for others; the
//! Noise channel runs over whatever stream it yields. TCP lives here now
//! ([`TcpTransport`]); Tor (onion services through arti, or a SOCKS5 Tor
//! daemon) will be another implementation of the same traits, so nothing
//! above this seam knows which one carries it.
//!
//! This module must never log or put in an error a contact's address
//! unwrapped: addresses go through [`Sensitive`], which redacts them
//! unless the operator opted in. It must never authenticate or encrypt
//! either: that is the Noise channel's job, on top of every transport.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use anonmirror_core::Sensitive;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Where a peer or rendezvous can be reached.
///
/// Its `Display` shows the address in full, for configuration files and
/// the operator's own output; wrap it in [`Sensitive`] (see
/// [`Contact::redacted`]) before it reaches a log line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Contact {
    /// A TCP socket address (clearnet; levels that allow it only).
    Tcp(SocketAddr),
}

impl Contact {
    /// The contact wrapped for logging.
    pub fn redacted(&self) -> Sensitive<&Contact> {
        Sensitive::new(self)
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl From<SocketAddr> for Contact {
    fn from(addr: SocketAddr) -> Self {
        Contact::Tcp(addr)
    }
}

/// A way to open byte streams to contacts and to accept them.
///
/// Errors are plain I/O errors: whether a transport is TCP or Tor, the
/// caller's choice is the same (try another peer, or fall back upstream).
pub trait Transport: Send + Sync {
    /// The byte stream a connection yields.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What [`Transport::listen`] yields.
    type Listener: Listener<Stream = Self::Stream>;

    /// Opens a stream to `contact`. The caller bounds the time it may take.
    fn connect(&self, contact: &Contact) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Starts accepting streams at `contact` (for TCP, the local address to
    /// bind; port 0 picks a free one).
    fn listen(&self, contact: &Contact) -> impl Future<Output = io::Result<Self::Listener>> + Send;
}

/// The accepting side of a [`Transport`].
pub trait Listener: Send {
    /// The byte stream an accepted connection yields.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next incoming stream, with the remote contact where the
    /// transport knows one (TCP does; an onion service does not, which is
    /// the point).
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

impl Transport for TcpTransport {
    type Stream = TcpStream;
    type Listener = TcpTransportListener;

    async fn connect(&self, contact: &Contact) -> io::Result<TcpStream> {
        let Contact::Tcp(addr) = contact;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        tracing::trace!(contact = %contact.redacted(), "tcp connected");
        Ok(stream)
    }

    async fn listen(&self, contact: &Contact) -> io::Result<TcpTransportListener> {
        let Contact::Tcp(addr) = contact;
        let listener = TcpListener::bind(addr).await?;
        tracing::debug!(contact = %contact.redacted(), "tcp listening");
        Ok(TcpTransportListener { listener })
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn contact_shows_in_full_but_redacts_when_wrapped() {
        let c = Contact::from(SocketAddr::from(([192, 0, 2, 7], 4000)));
        assert_eq!(c.to_string(), "tcp:192.0.2.7:4000");
        assert_eq!(c.redacted().to_string(), "[scrubbed]");
        assert_eq!(format!("{:?}", c.redacted()), "[scrubbed]");
    }

    #[tokio::test]
    async fn tcp_connects_with_nodelay_and_carries_bytes() {
        let t = TcpTransport;
        let mut listener = t
            .listen(&Contact::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .expect("bind");
        let at = listener.local_contact().expect("local address");
        let (client, accepted) = tokio::join!(t.connect(&at), listener.accept());
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
