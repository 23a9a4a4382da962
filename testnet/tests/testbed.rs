//! The testbed's links and NAT, checked with plain TCP between its hosts.
//!
//! The delay and rate checks are lower bounds: a link must hold every
//! packet at least its delay, and cannot deliver faster than its rate; a
//! busy machine can only make either take longer, so they cannot fail by
//! load, and they fail if the link forwards without holding.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anonmirror_testnet::testbed::{Host, Link, Testbed, require_testbed};

/// Deterministic bytes that a reordering or a lost segment would change.
fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A server on `host` that sends `data` to the first connection, then
/// closes; returns its address and the thread that reports the peer's
/// address as the server saw it.
fn serve_once(
    host: &Host,
    data: Vec<u8>,
) -> (SocketAddr, thread::JoinHandle<io::Result<SocketAddr>>) {
    let addr = host.addr();
    let listener = host
        .run(|| TcpListener::bind((addr, 0)))
        .expect("listener on the host");
    let local = listener.local_addr().expect("listener address");
    let server = thread::spawn(move || {
        let (mut stream, peer) = listener.accept()?;
        stream.write_all(&data)?;
        Ok(peer)
    });
    (local, server)
}

/// Connects from `host` to `to` and reads until the server closes.
fn fetch_from(host: &Host, to: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = host.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut got = Vec::new();
    stream.read_to_end(&mut got)?;
    Ok(got)
}

#[test]
fn a_link_holds_every_packet_both_ways_and_loses_none() {
    if !require_testbed() {
        return;
    }
    let bed = Testbed::new().expect("testbed");
    let home = bed
        .host("home", Link::delay(Duration::from_millis(15)))
        .expect("home");
    let mirror = bed
        .host("mirror", Link::delay(Duration::from_millis(5)))
        .expect("mirror");
    // One round trip is 2 × (15 + 5) = 40 ms.
    let data = payload(4 << 20);
    let (at, server) = serve_once(&mirror, data.clone());
    let start = Instant::now();
    let stream = home
        .run(|| TcpStream::connect_timeout(&at, Duration::from_secs(10)))
        .expect("connect across the link");
    let connected = start.elapsed();
    assert!(
        connected >= Duration::from_millis(40),
        "a TCP connect is one round trip (SYN there, SYN-ACK back): {connected:?} < 40 ms"
    );
    drop(stream);
    // The server took the first connection; a second one fetches.
    let (at, server2) = serve_once(&mirror, data.clone());
    let got = fetch_from(&home, at).expect("fetch across the link");
    assert_eq!(got.len(), data.len(), "every byte arrives");
    assert!(got == data, "the bytes arrive unchanged and in order");
    let seen = server2.join().expect("server").expect("accept");
    assert_eq!(seen.ip(), home.addr(), "no NAT between hosts on the core");
    drop(server);

    // A changed link holds the next packets for its new delay.
    bed.set_link("home", Link::delay(Duration::from_millis(40)))
        .expect("set the link");
    let (at, _server3) = serve_once(&mirror, Vec::new());
    let start = Instant::now();
    let _stream = home
        .run(|| TcpStream::connect_timeout(&at, Duration::from_secs(10)))
        .expect("connect across the changed link");
    let connected = start.elapsed();
    assert!(
        connected >= Duration::from_millis(90),
        "after the change a round trip is 2 × (40 + 5) ms: {connected:?}"
    );
    let link = bed.counters("home").expect("home's link");
    let (packets, bytes, lost, overflowed) = link.inward.read();
    assert!(
        packets > 1000 && bytes > 4 << 20,
        "the link carried it: {packets} packets, {bytes} bytes"
    );
    assert_eq!(
        (lost, overflowed),
        (0, 0),
        "no loss configured, no queue limit reached"
    );
}

#[test]
fn a_rate_cap_paces_a_transfer_and_loss_is_recovered_by_tcp() {
    if !require_testbed() {
        return;
    }
    let bed = Testbed::new().expect("testbed");
    let home = bed
        .host(
            "home",
            Link::delay(Duration::from_millis(2))
                .rate(1 << 20)
                .loss(0.02),
        )
        .expect("home");
    let mirror = bed
        .host("mirror", Link::delay(Duration::ZERO))
        .expect("mirror");
    let data = payload(768 << 10);
    let (at, server) = serve_once(&mirror, data.clone());
    let start = Instant::now();
    let got = fetch_from(&home, at).expect("fetch across a lossy, capped link");
    let took = start.elapsed();
    server.join().expect("server").expect("accept");
    assert!(got == data, "TCP recovers every lost packet, in order");
    // 768 KiB (and headers) at 1 MiB/s cannot take less than 0.75 s.
    assert!(
        took >= Duration::from_millis(750),
        "the cap is 1 MiB/s: 768 KiB in {took:?}"
    );
    let link = bed.counters("home").expect("home's link");
    let (packets, _, lost, _) = link.inward.read();
    let (_, _, lost_out, _) = link.outward.read();
    // 2 % of over 500 data packets: none lost would mean no loss at all.
    assert!(packets > 500, "{packets} packets carried inward");
    assert!(
        lost + lost_out > 0,
        "a 2 % loss dropped nothing in {packets} packets"
    );
}

#[test]
fn a_nat_hides_the_hosts_behind_it_unless_a_port_is_forwarded() {
    if !require_testbed() {
        return;
    }
    let bed = Testbed::new().expect("testbed");
    let outside = bed
        .host("outside", Link::delay(Duration::ZERO))
        .expect("outside");
    let nat = bed
        .nat("router", Link::delay(Duration::from_millis(1)))
        .expect("nat");
    let laptop = nat
        .host("laptop", Link::delay(Duration::ZERO))
        .expect("laptop");

    // Outward: the outside sees the router's address, not the laptop's.
    let (at, server) = serve_once(&outside, b"hello".to_vec());
    let got = fetch_from(&laptop, at).expect("a host behind the NAT connects out");
    assert_eq!(got, b"hello");
    let seen = server.join().expect("server").expect("accept");
    assert_eq!(
        seen.ip(),
        nat.public_addr(),
        "the outside sees the NAT's address"
    );
    assert_ne!(seen.ip(), laptop.addr());

    // Inward: the laptop's address is unreachable, and so is the NAT's
    // address on a port nobody forwarded.
    let (inside_at, _inside) = serve_once(&laptop, b"inside".to_vec());
    let direct = fetch_from(&outside, inside_at);
    assert!(
        direct.is_err(),
        "the private address is reachable from outside: {direct:?}"
    );
    let port = inside_at.port();
    let unforwarded = fetch_from(&outside, SocketAddr::from((nat.public_addr(), port)));
    assert!(
        unforwarded.is_err(),
        "an unforwarded port of the NAT reaches inside: {unforwarded:?}"
    );

    // A port forward opens exactly that way in.
    nat.forward(port, &laptop, port).expect("port forward");
    let forwarded = fetch_from(&outside, SocketAddr::from((nat.public_addr(), port)))
        .expect("a forwarded port reaches the host behind the NAT");
    assert_eq!(forwarded, b"inside");
}

#[test]
fn hosts_on_a_lan_share_multicast_and_reach_the_rest_through_its_router() {
    if !require_testbed() {
        return;
    }
    let bed = Testbed::new().expect("testbed");
    let lan = bed.lan("home", Link::delay(Duration::ZERO)).expect("lan");
    let (a, b) = (lan.host("a").expect("a"), lan.host("b").expect("b"));
    let server = bed
        .host("server", Link::delay(Duration::ZERO))
        .expect("server");

    // mDNS's group: what a sends, b hears, from a's own address.
    let group = std::net::Ipv4Addr::new(224, 0, 0, 251);
    let listener = b
        .run(|| {
            let s = std::net::UdpSocket::bind(("0.0.0.0", 5353))?;
            s.join_multicast_v4(&group, &b.addr())?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            Ok(s)
        })
        .expect("listener on b");
    let sender = a
        .run(|| std::net::UdpSocket::bind((a.addr(), 0)))
        .expect("socket on a");
    let mut buf = [0u8; 64];
    // A few sends: the first may precede the bridge's forwarding state.
    let mut heard = None;
    for _ in 0..20 {
        sender
            .send_to(b"who serves here?", (group, 5353))
            .expect("send");
        if let Ok((n, from)) = listener.recv_from(&mut buf) {
            heard = Some((buf[..n].to_vec(), from.ip()));
            break;
        }
    }
    assert_eq!(
        heard,
        Some((b"who serves here?".to_vec(), std::net::IpAddr::V4(a.addr())))
    );

    // Beyond the LAN, through the router's NAT: the server sees the
    // router's address.
    let (to, seen) = serve_once(&server, payload(1000));
    assert_eq!(fetch_from(&a, to).expect("fetch"), payload(1000));
    let peer = seen.join().expect("server thread").expect("accept");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lan.nat().public_addr()));
}
