//! A home router's port-mapping servers for tests: PCP (RFC 6887, the MAP
//! opcode) and NAT-PMP (RFC 6886, the external address and TCP mapping
//! opcodes), as their message exchanges specify, on UDP port 5351 of the
//! address it is given ([`PortMapServer`]); and UPnP IGD, SSDP and SOAP
//! ([`IgdServer`]).
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

/// A home router's UPnP IGD for tests: an SSDP responder on UDP port 1900
/// of its address, and the HTTP server its answers point at (the device
/// description, and the WANIPConnection:1 service's SOAP control:
/// `AddPortMapping`, `DeletePortMapping`), as the UPnP Device Architecture
/// and the IGD specification describe them.
pub struct IgdServer {
    requests: Arc<Mutex<Vec<Request>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for IgdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgdServer").finish_non_exhaustive()
    }
}

/// The SSDP port.
pub const SSDP_PORT: u16 = 1900;

const WANIP: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";

impl IgdServer {
    /// Serves on `ip` (SSDP on port 1900, HTTP on a free port), granting
    /// every mapping; with `permanent_only`, a lease other than 0 is
    /// refused with error 725 (OnlyPermanentLeasesSupported), as many
    /// routers do.
    pub async fn start(ip: Ipv4Addr, permanent_only: bool, on_map: OnMap) -> io::Result<IgdServer> {
        let ssdp = tokio::net::UdpSocket::bind((ip, SSDP_PORT)).await?;
        let http = tokio::net::TcpListener::bind((ip, 0)).await?;
        let http_addr = http.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let ssdp_task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = ssdp.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                if !text.starts_with("M-SEARCH") {
                    continue;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: {WANIP}\r\n\
                     USN: uuid:anonmirror-test::{WANIP}\r\nEXT:\r\n\
                     LOCATION: http://{http_addr}/rootDesc.xml\r\n\r\n"
                );
                let _ = ssdp.send_to(answer.as_bytes(), from).await;
            }
        });
        let seen = requests.clone();
        let on_map = Arc::new(on_map);
        let http_task = tokio::spawn(async move {
            while let Ok((stream, from)) = http.accept().await {
                let (seen, on_map) = (seen.clone(), on_map.clone());
                tokio::spawn(async move {
                    let _ = igd_exchange(stream, from, permanent_only, &seen, &on_map).await;
                });
            }
        });
        Ok(IgdServer {
            requests,
            tasks: vec![ssdp_task, http_task],
        })
    }

    /// Every mapping request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for IgdServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One HTTP request on `stream`, answered, then closed.
async fn igd_exchange(
    mut stream: tokio::net::TcpStream,
    from: SocketAddr,
    permanent_only: bool,
    seen: &Mutex<Vec<Request>>,
    on_map: &OnMap,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // The headers, then as many body bytes as Content-Length says.
    let (head_len, body_len) = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..i]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            break (i + 4, len);
        }
        if raw.len() > 65_536 {
            return Ok(());
        }
    };
    while raw.len() < head_len + body_len {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let body = text.get(head_len..).unwrap_or("");
    let value = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = start + body[start..].find(&close)?;
        Some(body[start..end].trim().to_owned())
    };
    let envelope = |inner: String| {
        format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>{inner}</s:Body></s:Envelope>\r\n"
        )
    };
    let (status, answer) = if text.starts_with("GET /rootDesc.xml ") {
        (
            "200 OK",
            format!(
                "<?xml version=\"1.0\"?>\r\n<root xmlns=\"urn:schemas-upnp-org:device-1-0\">\
                 <specVersion><major>1</major><minor>0</minor></specVersion><device>\
                 <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>\
                 <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>\
                 <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>\
                 <serviceList><service><serviceType>{WANIP}</serviceType>\
                 <serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>\
                 <SCPDURL>/WANIPCn.xml</SCPDURL><controlURL>/ctl/IPConn</controlURL>\
                 <eventSubURL>/evt/IPConn</eventSubURL></service></serviceList>\
                 </device></deviceList></device></deviceList></device></root>\r\n"
            ),
        )
    } else if text.starts_with("POST /ctl/IPConn ") {
        let action = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("soapaction").then(|| {
                    v.trim()
                        .trim_matches('"')
                        .rsplit('#')
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
            })
            .unwrap_or_default();
        let port = |name: &str| value(name).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
        let external = port("NewExternalPort");
        match action.as_str() {
            "AddPortMapping" => {
                let internal = port("NewInternalPort");
                let lease: u32 = value("NewLeaseDuration")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if let Ok(mut s) = seen.lock() {
                    s.push(Request {
                        protocol: "UPnP",
                        from,
                        internal_port: internal,
                        external_port: external,
                        lifetime: lease,
                    });
                }
                let client = value("NewInternalClient").and_then(|c| c.parse::<Ipv4Addr>().ok());
                match client {
                    _ if permanent_only && lease != 0 => (
                        "500 Internal Server Error",
                        envelope(fault(725, "OnlyPermanentLeasesSupported")),
                    ),
                    // The client must be the one asking (as miniupnpd
                    // checks): 606 Action not authorized otherwise.
                    Some(c) if IpAddr::V4(c) == from.ip() => {
                        on_map(c, internal, external);
                        (
                            "200 OK",
                            envelope(format!("<u:AddPortMappingResponse xmlns:u=\"{WANIP}\"/>")),
                        )
                    }
                    _ => (
                        "500 Internal Server Error",
                        envelope(fault(606, "Action not authorized")),
                    ),
                }
            }
            "DeletePortMapping" => {
                if let Ok(mut s) = seen.lock() {
                    s.push(Request {
                        protocol: "UPnP",
                        from,
                        internal_port: 0,
                        external_port: external,
                        lifetime: 0,
                    });
                }
                (
                    "200 OK",
                    envelope(format!(
                        "<u:DeletePortMappingResponse xmlns:u=\"{WANIP}\"/>"
                    )),
                )
            }
            _ => (
                "500 Internal Server Error",
                envelope(fault(401, "Invalid Action")),
            ),
        }
    } else {
        ("404 Not Found", String::new())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

fn fault(code: u32, description: &str) -> String {
    format!(
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>\
         <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode>\
         <errorDescription>{description}</errorDescription></UPnPError></detail></s:Fault>"
    )
}
