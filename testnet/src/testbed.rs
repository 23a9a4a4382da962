//! A network testbed: hosts in network namespaces of their own, joined by
//! links with a one-way delay, a rate cap and loss, and NAT routers with
//! hosts behind them.
//!
//! The shape is a star: a core router (a namespace that forwards) stands
//! for the internet, and every host or NAT router has one link to it. A
//! round trip between two hosts costs both links' delays twice; a
//! scenario "a home 40 ms from everything" is a home host on a 20 ms link
//! and every other host on a link with no delay.
//!
//! Links carry IP packets, not TCP streams: each end is a tun device, and
//! a task of the testbed's own runtime moves every packet across after the
//! link's delay (see [`link`]), so TCP's handshake, slow start, ACK clock
//! and congestion control see the link as they would a real one. This
//! kernel has no `netem`, hence the tun devices.
//!
//! Addresses, all private: host `k` (1..=250, in the order made) is
//! `10.201.k.2` with the core at `10.201.k.1`; a host `j` behind a NAT is
//! `192.168.j.2` with its router at `192.168.j.1`, and the NAT router's
//! `nftables` masquerades what leaves by its uplink, so the outside sees
//! the router's address and cannot open a connection inward unless a
//! [`Nat::forward`] says so. No namespace has a route off the machine.
//!
//! ```no_run
//! use std::time::Duration;
//! use anonmirror_testnet::testbed::{Link, Testbed};
//!
//! let bed = Testbed::new().expect("testbed");
//! let mirror = bed.host("mirror", Link::delay(Duration::ZERO)).expect("host");
//! let home = bed.host("home", Link::round_trip(Duration::from_millis(40))).expect("host");
//! // A runtime whose every thread is inside `home`: what it connects to,
//! // it reaches over the 40 ms link.
//! let rt = home.runtime().expect("runtime");
//! rt.block_on(async {
//!     let _ = tokio::net::TcpStream::connect((mirror.addr(), 80)).await;
//! });
//! ```
//!
//! Everything goes with the [`Testbed`]: dropping it stops the links
//! (their devices close), and namespaces go when nothing holds them; a
//! [`Process`] started in a host is killed when it is dropped.

pub mod link;

use std::net::Ipv4Addr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};

use std::io;

use tun_rs::{AsyncDevice, DeviceBuilder, SyncDevice};

pub use link::{Counters, Link};

use crate::netns::NetNs;

/// The name of every host's (and NAT router's) link to the core.
pub const UPLINK: &str = "up0";

/// Whether a testbed can run here: `ip` and `nft` are installed,
/// `/dev/net/tun` exists and this process may create network namespaces.
/// When not: under `CI=true` this panics (CI must never skip silently);
/// otherwise it prints why and returns false, and the test returns early.
pub fn require_testbed() -> bool {
    let why = if let Some(missing) = crate::missing(&["ip", "nft"]) {
        missing
    } else if !std::path::Path::new("/dev/net/tun").exists() {
        "no /dev/net/tun: the testbed's links are tun devices".to_owned()
    } else if let Err(e) = NetNs::create() {
        format!("cannot create a network namespace: {e}")
    } else {
        return true;
    };
    crate::skip(&why)
}

/// The testbed: the core router, the links, and the runtime that carries
/// their packets. See the [module docs](self).
#[derive(Debug)]
pub struct Testbed {
    core: Arc<NetNs>,
    /// Carries the links' packets; shut down (not waited for) on drop, so
    /// dropping a testbed inside an async test is fine.
    runtime: Option<tokio::runtime::Runtime>,
    /// The number of the next host attached to the core.
    next_host: AtomicU8,
    /// The number of the next host behind any NAT.
    next_inner: Arc<AtomicU8>,
    /// The number of the next LAN.
    next_lan: AtomicU8,
    /// Every link's counters.
    links: Mutex<Vec<LinkCounters>>,
}

/// What one link has carried so far.
#[derive(Clone, Debug)]
pub struct LinkCounters {
    /// The host's name ("home"), or the NAT's and the host's ("router/laptop").
    pub name: String,
    /// Towards the host.
    pub inward: Arc<Counters>,
    /// From the host.
    pub outward: Arc<Counters>,
    /// What the link does now.
    link: Arc<RwLock<Link>>,
}

impl Testbed {
    /// An empty testbed: the core router and nothing attached.
    pub fn new() -> io::Result<Testbed> {
        let core = NetNs::create()?;
        forward_packets(&core)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testbed-link")
            .enable_time()
            .enable_io()
            .build()?;
        Ok(Testbed {
            core: Arc::new(core),
            runtime: Some(runtime),
            next_host: AtomicU8::new(1),
            next_inner: Arc::new(AtomicU8::new(1)),
            next_lan: AtomicU8::new(1),
            links: Mutex::new(Vec::new()),
        })
    }

    /// A new host on a link of its own to the core.
    pub fn host(&self, name: &str, link: Link) -> io::Result<Host> {
        let k = self.next_host.fetch_add(1, Ordering::Relaxed);
        if k == 0 || k > 250 {
            return Err(io::Error::other("a testbed holds at most 250 hosts"));
        }
        self.attach(
            name,
            name,
            [10, 201, k],
            (&self.core, &format!("h{k}")),
            link,
        )
    }

    /// A new host called `name` at `net.2`, its link (called `link_name`)
    /// ending at `net.1` on `outer`'s device `outer_dev`.
    fn attach(
        &self,
        name: &str,
        link_name: &str,
        [a, b, c]: [u8; 3],
        (outer, outer_dev): (&NetNs, &str),
        link: Link,
    ) -> io::Result<Host> {
        let ns = Arc::new(NetNs::create()?);
        let addr = Ipv4Addr::new(a, b, c, 2);
        self.join(
            link_name,
            (&ns, UPLINK, addr),
            (outer, outer_dev, Ipv4Addr::new(a, b, c, 1)),
            link,
        )?;
        Ok(Host {
            name: name.to_owned(),
            ns,
            addr,
        })
    }

    /// A NAT router on a link of its own to the core; hosts behind it come
    /// from [`Nat::host`].
    pub fn nat(&self, name: &str, link: Link) -> io::Result<Nat<'_>> {
        let router = self.host(name, link)?;
        forward_packets(&router.ns)?;
        router.ns.program(
            "nft",
            &["-f", "-"],
            format!(
                "table ip nat {{\n\
                   chain prerouting {{ type nat hook prerouting priority dstnat; }}\n\
                   chain postrouting {{ type nat hook postrouting priority srcnat;\n\
                     oifname \"{UPLINK}\" masquerade\n\
                   }}\n\
                 }}\n"
            )
            .as_bytes(),
        )?;
        Ok(Nat { bed: self, router })
    }

    /// A home LAN: a NAT router on a link of its own to the core, with a
    /// bridge (one Ethernet segment, no delay) that hosts from
    /// [`Lan::host`] join by veth pairs: hosts on it reach each other
    /// directly, multicast included (mDNS), and everything beyond through
    /// the router. The `k`th LAN is 172.16.k.0/24, the router .1.
    pub fn lan(&self, name: &str, link: Link) -> io::Result<Lan<'_>> {
        let k = self.next_lan.fetch_add(1, Ordering::Relaxed);
        if k == 0 || k > 250 {
            return Err(io::Error::other("a testbed holds at most 250 LANs"));
        }
        let nat = self.nat(name, link)?;
        let ns = &nat.router.ns;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("172.16.{k}.1/24"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            nat,
            net: k,
            next: AtomicU8::new(2),
        })
    }

    /// The counters of the link of the host called `name` (behind a NAT:
    /// "router/host").
    pub fn counters(&self, name: &str) -> Option<LinkCounters> {
        let links = self.links.lock().ok()?;
        links.iter().find(|l| l.name == name).cloned()
    }

    /// Changes what the link of the host called `name` does, from its next
    /// packet on (packets in flight keep their times). The MTU stays.
    pub fn set_link(&self, name: &str, link: Link) -> io::Result<()> {
        let counters = self
            .counters(name)
            .ok_or_else(|| io::Error::other(format!("no link called {name}")))?;
        let mut now = counters
            .link
            .write()
            .map_err(|_| io::Error::other("link lock poisoned"))?;
        *now = Link {
            mtu: now.mtu,
            ..link
        };
        Ok(())
    }

    /// Joins `inner` (a host) and `outer` (the core or a NAT router) by a
    /// link: a tun device in each, point-to-point addresses, the host's
    /// default route through it, and two tasks carrying the packets.
    fn join(
        &self,
        name: &str,
        (inner, inner_dev, inner_addr): (&NetNs, &str, Ipv4Addr),
        (outer, outer_dev, outer_addr): (&NetNs, &str, Ipv4Addr),
        link: Link,
    ) -> io::Result<()> {
        let inner_tun = tun(inner, inner_dev, link.mtu)?;
        let outer_tun = tun(outer, outer_dev, link.mtu)?;
        point_to_point(inner, inner_dev, inner_addr, outer_addr)?;
        point_to_point(outer, outer_dev, outer_addr, inner_addr)?;
        inner.ip(&["route", "add", "default", "via", &outer_addr.to_string()])?;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| io::Error::other("the testbed is shut down"))?;
        let (inner_tun, outer_tun) = {
            let _guard = runtime.enter();
            (
                Arc::new(AsyncDevice::new(inner_tun)?),
                Arc::new(AsyncDevice::new(outer_tun)?),
            )
        };
        let inward = Arc::new(Counters::default());
        let outward = Arc::new(Counters::default());
        // The seed follows the addresses: the same testbed loses the same
        // packets from run to run.
        let seed = u64::from(u32::from(inner_addr));
        let shared = Arc::new(RwLock::new(link));
        runtime.spawn(link::carry(
            outer_tun.clone(),
            inner_tun.clone(),
            shared.clone(),
            seed,
            inward.clone(),
        ));
        runtime.spawn(link::carry(
            inner_tun,
            outer_tun,
            shared.clone(),
            seed ^ 0x5555_5555_5555_5555,
            outward.clone(),
        ));
        if let Ok(mut links) = self.links.lock() {
            links.push(LinkCounters {
                name: name.to_owned(),
                inward,
                outward,
                link: shared,
            });
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A NAT router of the testbed: hosts behind it reach the core and
/// everything beyond through it, seen as its address; nothing reaches them
/// from outside unless forwarded.
#[derive(Debug)]
pub struct Nat<'bed> {
    bed: &'bed Testbed,
    router: Host,
}

impl Nat<'_> {
    /// The router's address on the core side: what the outside sees.
    pub fn public_addr(&self) -> Ipv4Addr {
        self.router.addr
    }

    /// The router itself, as a host (to run a program on it).
    pub fn router(&self) -> &Host {
        &self.router
    }

    /// A new host behind this router, on a link of its own to it.
    pub fn host(&self, name: &str, link: Link) -> io::Result<Host> {
        let j = self.bed.next_inner.fetch_add(1, Ordering::Relaxed);
        if j == 0 || j > 250 {
            return Err(io::Error::other("a testbed holds at most 250 NATed hosts"));
        }
        self.bed.attach(
            name,
            &format!("{}/{name}", self.router.name),
            [192, 168, j],
            (&self.router.ns, &format!("l{j}")),
            link,
        )
    }

    /// A port forward: TCP connections to the router's public address and
    /// `port` go to `to`'s address and `to_port`.
    pub fn forward(&self, port: u16, to: &Host, to_port: u16) -> io::Result<()> {
        self.forwarder().forward(port, to.addr, to_port)
    }

    /// What installs forwards on this router, for a task of its own (a
    /// port-mapping server granting them).
    pub fn forwarder(&self) -> Forwarder {
        Forwarder {
            ns: self.router.ns.clone(),
        }
    }
}

/// Installs port forwards on one NAT router ([`Nat::forwarder`]).
#[derive(Clone, Debug)]
pub struct Forwarder {
    ns: Arc<NetNs>,
}

impl Forwarder {
    /// TCP connections to the router's public address and `port` go to
    /// `to` and `to_port`.
    pub fn forward(&self, port: u16, to: Ipv4Addr, to_port: u16) -> io::Result<()> {
        self.ns.program(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "nat",
                "prerouting",
                "iifname",
                UPLINK,
                "tcp",
                "dport",
                &port.to_string(),
                "dnat",
                "to",
                &format!("{to}:{to_port}"),
            ],
            b"",
        )?;
        Ok(())
    }
}

/// A home LAN of the testbed ([`Testbed::lan`]): a NAT router with a
/// bridge its hosts share.
#[derive(Debug)]
pub struct Lan<'bed> {
    nat: Nat<'bed>,
    net: u8,
    next: AtomicU8,
}

impl Lan<'_> {
    /// The router (and its NAT: forwards, port-mapping servers).
    pub fn nat(&self) -> &Nat<'_> {
        &self.nat
    }

    /// The router's address on the LAN.
    pub fn router_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, self.net, 1)
    }

    /// A new host on the LAN: a veth pair, one end in the host
    /// (`eth0`, the next address, its default route through the router),
    /// the other on the router's bridge.
    pub fn host(&self, name: &str) -> io::Result<Host> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if !(2..=250).contains(&n) {
            return Err(io::Error::other("a LAN holds at most 249 hosts"));
        }
        let ns = Arc::new(NetNs::create()?);
        let addr = Ipv4Addr::new(172, 16, self.net, n);
        // `ip` moves a device into a namespace by a process in it: a
        // short-lived one, started inside.
        let mut holder = ns
            .run(|| Command::new("sleep").arg("30").spawn())
            .map_err(|e| io::Error::new(e.kind(), format!("a process in the new host: {e}")))?;
        let pid = holder.id().to_string();
        let port = format!("v{n}");
        let router = &self.nat.router.ns;
        let moved = router.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ]);
        let _ = holder.kill();
        let _ = holder.wait();
        moved?;
        router.ip(&["link", "set", &port, "master", "br0"])?;
        router.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.router_addr().to_string(),
        ])?;
        Ok(Host {
            name: format!("{}/{name}", self.nat.router.name),
            ns,
            addr,
        })
    }
}

/// One host of the testbed: a network namespace with one link.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    ns: Arc<NetNs>,
    addr: Ipv4Addr,
}

impl Host {
    /// Its name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address (behind a NAT, the private one).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its namespace.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Runs `f` on a thread inside this host (sockets it opens are the
    /// host's) and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        self.ns.run(f)
    }

    /// A tokio runtime whose every thread (workers and blocking pool) is
    /// inside this host, so whatever runs on it binds and connects here.
    pub fn runtime(&self) -> io::Result<tokio::runtime::Runtime> {
        let ns = self.ns.clone();
        let name = self.name.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("host-{name}"))
            .enable_all()
            .on_thread_start(move || {
                // A thread of this runtime outside the host would connect
                // from the wrong place: better no runtime than that.
                if let Err(e) = ns.enter() {
                    panic!("a runtime thread cannot enter host {name}: {e}");
                }
            })
            .build()
    }

    /// Starts `cmd` inside this host; the process is killed when the
    /// returned value is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Process> {
        let what = format!("{cmd:?}");
        let child = self
            .ns
            .run(|| cmd.spawn())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {what}: {e}")))?;
        Ok(Process { child })
    }
}

/// A process started in a host; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    /// The process, to wait for it or read its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for it to exit by itself.
    pub fn wait(mut self) -> io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lets `ns` forward packets between its interfaces (a router).
fn forward_packets(ns: &NetNs) -> io::Result<()> {
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
}

/// A tun device named `name` in `ns` (IP packets, no packet header).
fn tun(ns: &NetNs, name: &str, mtu: u16) -> io::Result<SyncDevice> {
    ns.run(|| {
        DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .build_sync()
            .map_err(|e| io::Error::new(e.kind(), format!("tun device {name}: {e}")))
    })
}

/// Gives `dev` in `ns` the address `local`, with `peer` at the other end,
/// and brings it up.
fn point_to_point(ns: &NetNs, dev: &str, local: Ipv4Addr, peer: Ipv4Addr) -> io::Result<()> {
    ns.ip(&[
        "addr",
        "add",
        &format!("{local}/32"),
        "peer",
        &format!("{peer}/32"),
        "dev",
        dev,
    ])?;
    ns.ip(&["link", "set", "dev", dev, "up"])
}
