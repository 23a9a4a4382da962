//! The private Tor network end to end, with C-tor clients only: a stream
//! through an exit to a server on a non-loopback address of the namespace,
//! and a stream to an onion service hosted by another client.
//!
//! Both tests share one network (`TorNet::shared`), brought up by
//! whichever test gets there first: about 30 s for this test binary.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use anonmirror_testnet::{Namespace, TorNet, require_tor, socks5_connect};

/// A non-loopback address inside the namespace for the exit's target.
/// A private-range address: it exists only inside the namespace.
const SERVER_CIDR: &str = "10.77.0.1/24";
const SERVER_IP: &str = "10.77.0.1";

/// How long a test keeps retrying its stream (onion-service descriptors
/// are published some seconds after the hosting client bootstrapped).
const STREAM_DEADLINE: Duration = Duration::from_secs(120);

/// What the test servers send: enough bytes for several cells.
fn payload() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

/// A server on `addr` (inside the namespace: the calling thread entered
/// it) that sends [`payload`] to every connection, for a bounded time.
fn serve_payload(addr: &str) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(&payload());
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    Ok(local)
}

/// Reads everything from `host:port` through the SOCKS5 port `socks`,
/// retrying failed attempts until [`STREAM_DEADLINE`].
fn fetch_through(socks: SocketAddr, host: &str, port: u16) -> Vec<u8> {
    let deadline = Instant::now() + STREAM_DEADLINE;
    loop {
        let attempt =
            socks5_connect(socks, host, port, Duration::from_secs(30)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut got = Vec::new();
                s.read_to_end(&mut got)?;
                Ok(got)
            });
        match attempt {
            Ok(got) if !got.is_empty() => return got,
            Ok(_) => eprintln!("{host}:{port}: empty stream, retrying"),
            Err(e) => eprintln!("{host}:{port}: {e}, retrying"),
        }
        assert!(
            Instant::now() < deadline,
            "no stream to {host}:{port} within {STREAM_DEADLINE:?}"
        );
        thread::sleep(Duration::from_secs(1));
    }
}

/// The shared network, with the calling thread inside the namespace.
fn net() -> &'static TorNet {
    let net = TorNet::shared().expect("private Tor network");
    eprintln!(
        "network in {} up after {:?}",
        net.dir().display(),
        net.bring_up_time()
    );
    net
}

#[test]
fn exit_reaches_a_non_loopback_address_in_the_namespace() {
    if !require_tor() {
        return;
    }
    let net = net();
    let ns = Namespace::shared().expect("namespace");
    ns.add_address(SERVER_CIDR)
        .expect("address in the namespace");
    let server = serve_payload(&format!("{SERVER_IP}:0")).expect("server");

    let started = Instant::now();
    let client = net.start_client("exit-user", &[]).expect("tor client");
    eprintln!("client bootstrapped in {:?}", started.elapsed());
    let got = fetch_through(client.socks, SERVER_IP, server.port());
    eprintln!("stream through an exit after {:?}", started.elapsed());
    assert_eq!(got, payload());
}

#[test]
fn onion_service_of_one_client_reaches_another() {
    if !require_tor() {
        return;
    }
    let net = net();
    let server = serve_payload("127.0.0.1:0").expect("server");

    let started = Instant::now();
    let host = net
        .start_client("onion-host", &[(80, server)])
        .expect("onion host");
    let visitor = net.start_client("onion-visitor", &[]).expect("visitor");
    eprintln!("clients bootstrapped in {:?}", started.elapsed());
    let [onion] = host.onions.as_slice() else {
        panic!("one onion address expected, got {:?}", host.onions);
    };
    let got = fetch_through(visitor.socks, onion, 80);
    eprintln!("stream to the onion service after {:?}", started.elapsed());
    assert_eq!(got, payload());
}

#[test]
fn arti_config_names_every_authority_and_trusts_local_addresses() {
    if !require_tor() {
        return;
    }
    let net = net();
    let toml = net.arti_config_toml("/tmp/state dir".as_ref(), "/tmp/cache".as_ref());
    assert_eq!(toml.matches("[[tor_network.fallback_caches]]").count(), 3);
    for port in net.authority_dir_ports() {
        assert!(toml.contains(&format!("127.0.0.1:{port}")), "{toml}");
    }
    for line in [
        "ipv4_subnet_family_prefix = 33",
        "allow_local_addrs = true",
        "state_dir = { literal = \"/tmp/state dir\" }",
        "dangerously_trust_everyone = true",
        "mode = \"disabled\"",
    ] {
        assert!(toml.contains(line), "{line} missing from\n{toml}");
    }
}
