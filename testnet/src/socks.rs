//! A minimal SOCKS5 client (RFC 1928, CONNECT, no authentication): what a
//! test needs to open a stream through a C-tor client's SOCKS port.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// Opens a TCP stream to `host:port` through the SOCKS5 proxy at `proxy`
/// (`host` an IP address, a DNS name or a `.onion` name). `timeout` bounds
/// the TCP connect and each read and write of the handshake; the stream
/// is returned with no timeouts set.
pub fn socks5_connect(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&proxy, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;

    // Greeting: version 5, one method, "no authentication".
    s.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice != [5, 0] {
        return Err(io::Error::other(format!(
            "SOCKS5 proxy {proxy} refused no-authentication: {choice:02x?}"
        )));
    }

    let mut req = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            let len = u8::try_from(host.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "SOCKS5 host name too long")
            })?;
            req.push(3);
            req.push(len);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;

    // Reply: version, status, reserved, then a bound address to skip.
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    if head[1] != 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "SOCKS5 CONNECT {host}:{port} via {proxy} failed: {}",
                reply_text(head[1])
            ),
        ));
    }
    let addr_len = match head[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len)?;
            usize::from(len[0])
        }
        other => {
            return Err(io::Error::other(format!(
                "SOCKS5 reply with address type {other}"
            )));
        }
    };
    let mut bound = vec![0u8; addr_len + 2];
    s.read_exact(&mut bound)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// RFC 1928's reply codes, and Tor's extended ones (proposal 304) that
/// C tor sends for onion services when `ExtendedErrors` is on.
fn reply_text(code: u8) -> String {
    let text = match code {
        1 => "general failure",
        2 => "not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired (timed out)",
        7 => "command not supported",
        8 => "address type not supported",
        0xf0 => "onion service descriptor not found",
        0xf1 => "onion service descriptor invalid",
        0xf2 => "onion service introduction failed",
        0xf3 => "onion service rendezvous failed",
        0xf4 => "onion service missing client authorization",
        0xf5 => "onion service wrong client authorization",
        0xf6 => "invalid onion address",
        0xf7 => "onion service introduction timed out",
        _ => "unknown reply code",
    };
    format!("{text} ({code:#04x})")
}
