//! A home router's port-mapping server for tests: PCP (RFC 6887, the MAP
//! opcode) and NAT-PMP (RFC 6886, the external address and TCP mapping
//! opcodes), as their message exchanges specify, on UDP port 5351 of the
//! address it is given.
//!
//! Debian's miniupnpd refuses to map behind a private external address,
//! which a testbed's NAT router has; this server answers as a router
//! would, records every request, and calls back on each granted mapping
//! (on the testbed, to install the forward with [`crate::testbed::Nat`]'s
//! forwarder) before it answers, so that the forward exists once the
//! client hears of it.
//!
//! It checks what a router checks: a PCP request's client address must
//! be the datagram's source (`ADDRESS_MISMATCH` otherwise), versions and
//! opcodes it does not know are answered as the RFCs say.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The port both protocols use.
pub const PORT: u16 = 5351;

/// What the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// PCP and NAT-PMP.
    Pcp,
    /// NAT-PMP only: a PCP request is answered `UNSUPP_VERSION` with
    /// version 0 (RFC 6887 §9), which tells the client to use NAT-PMP.
    NatPmpOnly,
    /// Answers nothing (a router with both off).
    Nothing,
}

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// "PCP" or "NAT-PMP".
    pub protocol: &'static str,
    /// Where it came from.
    pub from: SocketAddr,
    /// The port to forward to.
    pub internal_port: u16,
    /// The external port asked for (0: any; in a deletion, 0).
    pub external_port: u16,
    /// The lifetime asked for, seconds (0: delete).
    pub lifetime: u32,
}

/// Called on each mapping granted (lifetime > 0), before the answer:
/// the client's address, the internal port, the external port granted.
pub type OnMap = Box<dyn Fn(Ipv4Addr, u16, u16) + Send + Sync>;

/// A running server; stops when dropped.
pub struct PortMapServer {
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PortMapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortMapServer").finish_non_exhaustive()
    }
}

impl PortMapServer {
    /// Binds `ip`:5351 and serves on the current runtime, granting every
    /// mapping with `external` as the router's external address, for the
    /// lifetime asked, or `max_lifetime` seconds if that is shorter.
    pub async fn start(
        ip: Ipv4Addr,
        speaks: Speaks,
        external: Ipv4Addr,
        max_lifetime: u32,
        on_map: OnMap,
    ) -> io::Result<PortMapServer> {
        let socket = tokio::net::UdpSocket::bind((ip, PORT)).await?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1100];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let epoch = started.elapsed().as_secs() as u32;
                let ctx = Ctx {
                    from,
                    epoch,
                    max_lifetime,
                    external,
                    on_map: &on_map,
                    seen: &seen,
                };
                let answer = match (speaks, buf.first()) {
                    (Speaks::Nothing, _) => None,
                    (_, Some(0)) => natpmp(&buf[..n], &ctx),
                    (Speaks::NatPmpOnly, Some(2)) => {
                        // Version 0 and UNSUPP_VERSION: use NAT-PMP.
                        let mut a = vec![0, 0x80 | buf[1] & 0x7f, 0, 1];
                        a.extend_from_slice(&epoch.to_be_bytes());
                        Some(a)
                    }
                    (Speaks::Pcp, Some(2)) => pcp(&buf[..n], &ctx),
                    _ => None,
                };
                if let Some(a) = answer {
                    let _ = socket.send_to(&a, from).await;
                }
            }
        });
        Ok(PortMapServer { requests, task })
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for PortMapServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx<'a> {
    from: SocketAddr,
    epoch: u32,
    max_lifetime: u32,
    external: Ipv4Addr,
    on_map: &'a OnMap,
    seen: &'a Mutex<Vec<Request>>,
}

impl Ctx<'_> {
    fn record(&self, r: Request) {
        if let Ok(mut s) = self.seen.lock() {
            s.push(r);
        }
    }

    /// Grants the mapping: the external port asked for, or the internal
    /// one when any will do.
    fn grant(&self, internal: u16, external: u16, lifetime: u32) -> u16 {
        let granted = if external == 0 { internal } else { external };
        if lifetime > 0
            && let IpAddr::V4(client) = self.from.ip()
        {
            (self.on_map)(client, internal, granted);
        }
        granted
    }
}

/// RFC 6886: opcode 0 (external address) and 2 (map TCP).
fn natpmp(req: &[u8], ctx: &Ctx<'_>) -> Option<Vec<u8>> {
    let op = *req.get(1)?;
    let head = |op: u8, result: u16| {
        let mut a = vec![0, 0x80 | op];
        a.extend_from_slice(&result.to_be_bytes());
        a.extend_from_slice(&ctx.epoch.to_be_bytes());
        a
    };
    match (op, req.len()) {
        (0, 2) => {
            let mut a = head(0, 0);
            a.extend_from_slice(&ctx.external.octets());
            Some(a)
        }
        (2, 12) => {
            let internal = u16::from_be_bytes([req[4], req[5]]);
            let external = u16::from_be_bytes([req[6], req[7]]);
            let lifetime = u32::from_be_bytes([req[8], req[9], req[10], req[11]]);
            ctx.record(Request {
                protocol: "NAT-PMP",
                from: ctx.from,
                internal_port: internal,
                external_port: external,
                lifetime,
            });
            // A deletion answers with external port and lifetime 0.
            let granted = if lifetime == 0 {
                0
            } else {
                ctx.grant(internal, external, lifetime)
            };
            let mut a = head(2, 0);
            a.extend_from_slice(&internal.to_be_bytes());
            a.extend_from_slice(&granted.to_be_bytes());
            a.extend_from_slice(&lifetime.min(ctx.max_lifetime).to_be_bytes());
            Some(a)
        }
        // Unsupported opcode (5), echoing the opcode.
        (op, _) if op < 0x80 => Some(head(op, 5)),
        _ => None,
    }
}

/// RFC 6887: the MAP opcode (1) for TCP.
fn pcp(req: &[u8], ctx: &Ctx<'_>) -> Option<Vec<u8>> {
    if req.len() < 24 || req[1] & 0x80 != 0 {
        return None;
    }
    let op = req[1] & 0x7f;
    let lifetime = u32::from_be_bytes([req[4], req[5], req[6], req[7]]);
    let answer = |result: u8, lifetime: u32, body: &[u8]| {
        let mut a = vec![2, 0x80 | op, 0, result];
        a.extend_from_slice(&lifetime.to_be_bytes());
        a.extend_from_slice(&ctx.epoch.to_be_bytes());
        a.extend_from_slice(&[0; 12]);
        a.extend_from_slice(body);
        Some(a)
    };
    if op != 1 {
        return answer(4, 0, &req[24..]); // UNSUPP_OPCODE
    }
    if req.len() < 60 {
        return answer(3, 0, &[]); // MALFORMED_REQUEST
    }
    let client = Ipv6Addr::from(<[u8; 16]>::try_from(&req[8..24]).ok()?);
    let body = &req[24..60];
    let internal = u16::from_be_bytes([body[16], body[17]]);
    let external = u16::from_be_bytes([body[18], body[19]]);
    ctx.record(Request {
        protocol: "PCP",
        from: ctx.from,
        internal_port: internal,
        external_port: external,
        lifetime,
    });
    let source = match ctx.from.ip() {
        IpAddr::V4(v) => v.to_ipv6_mapped(),
        IpAddr::V6(v) => v,
    };
    if client != source {
        return answer(12, 30, body); // ADDRESS_MISMATCH
    }
    if body[12] != 6 {
        return answer(9, 30, body); // UNSUPP_PROTOCOL
    }
    let granted = if lifetime == 0 {
        external
    } else {
        ctx.grant(internal, external, lifetime)
    };
    let mut out = body[..16].to_vec(); // nonce, protocol, reserved
    out.extend_from_slice(&internal.to_be_bytes());
    out.extend_from_slice(&granted.to_be_bytes());
    out.extend_from_slice(&ctx.external.to_ipv6_mapped().octets());
    answer(0, lifetime.min(ctx.max_lifetime), &out)
}
