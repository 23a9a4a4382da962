//! UPnP IGD (the UPnP Forum's InternetGatewayDevice, WANIPConnection and
//! WANPPPConnection services): what most home routers speak when they
//! speak neither PCP nor NAT-PMP.
//!
//! The exchange, every step bounded in time and size:
//!
//! 1. SSDP: an `M-SEARCH` for WANIPConnection to the multicast group
//!    239.255.255.250:1900 and to the gateway's port 1900 (unicast, as
//!    UPnP 1.1 allows); the first answer whose `LOCATION` names the host
//!    that answered is taken (an answer pointing elsewhere could make this
//!    machine fetch from any address).
//! 2. The device description at `LOCATION` (HTTP GET, at most
//!    [`MAX_BODY`]): the first `service` whose `serviceType` is
//!    WANIPConnection (1 or 2) or WANPPPConnection:1, and its `controlURL`,
//!    which must be on that same host.
//! 3. SOAP `AddPortMapping` (and `DeletePortMapping` at the end) to the
//!    control URL; a lease the router refuses (725, only permanent
//!    leases) is asked again as permanent, and then removed at the end all
//!    the same.
//!
//! The router's XML is read by element names only (no entities, no
//! DTDs): what is not found is an error that says which element.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The SSDP multicast group and port.
pub const SSDP_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);

/// The most bytes read of any answer (a description, a SOAP response).
pub const MAX_BODY: usize = 64 * 1024;

/// How long SSDP waits for an answer, and each HTTP exchange may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// The service types a forward can be asked of.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// A router's port-forwarding service, found by [`discover`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Igd {
    /// The router's HTTP address.
    pub addr: SocketAddr,
    /// The control URL's path.
    pub control_path: String,
    /// The service type it answers as.
    pub service: String,
}

/// Finds the router's service: SSDP to `ssdp` targets (the group and the
/// gateway), the description, its control URL.
pub async fn discover(targets: &[SocketAddr]) -> Result<Igd, String> {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| format!("SSDP socket: {e}"))?;
    let search = format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: {}\r\n\
         MAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n",
        SERVICES[0]
    );
    for t in targets {
        // A target this machine cannot send to (no multicast route) is
        // skipped: the others may answer.
        let _ = socket.send_to(search.as_bytes(), t).await;
    }
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let (location, from) = loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| "no SSDP answer".to_owned())?
            .map_err(|e| format!("SSDP: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let location = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        });
        if let Some(l) = location {
            break (l, from);
        }
    };
    let (addr, path) = split_url(&location)?;
    if addr.ip() != from.ip() {
        return Err("the SSDP answer points at another host".into());
    }
    let (status, body) = http(addr, "GET", &path, &[], "").await?;
    if status != 200 {
        return Err(format!("the device description answered {status}"));
    }
    let (service, control) = find_service(&body).ok_or_else(|| {
        "the device description lists no WANIPConnection or WANPPPConnection service with a controlURL"
            .to_owned()
    })?;
    let control_path = if control.starts_with('/') {
        control
    } else if control.starts_with("http://") {
        let (control_addr, p) = split_url(&control)?;
        if control_addr != addr {
            return Err("the control URL is on another host".into());
        }
        p
    } else {
        format!("/{control}")
    };
    Ok(Igd {
        addr,
        control_path,
        service,
    })
}

impl Igd {
    /// `AddPortMapping`: `external` on the router to `client`:`internal`
    /// over TCP for `lease` seconds (0: permanent).
    pub async fn add(
        &self,
        external: u16,
        client: Ipv4Addr,
        internal: u16,
        lease: u32,
    ) -> Result<(), UpnpError> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort>\
             <NewProtocol>TCP</NewProtocol><NewInternalPort>{internal}</NewInternalPort>\
             <NewInternalClient>{client}</NewInternalClient><NewEnabled>1</NewEnabled>\
             <NewPortMappingDescription>anonmirror</NewPortMappingDescription>\
             <NewLeaseDuration>{lease}</NewLeaseDuration>"
        );
        self.call("AddPortMapping", &args).await
    }

    /// `DeletePortMapping` of `external`.
    pub async fn delete(&self, external: u16) -> Result<(), UpnpError> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort>\
             <NewProtocol>TCP</NewProtocol>"
        );
        self.call("DeletePortMapping", &args).await
    }

    async fn call(&self, action: &str, args: &str) -> Result<(), UpnpError> {
        let body = format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
             <u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>\r\n",
            service = self.service
        );
        let soap_action = format!("\"{}#{action}\"", self.service);
        let headers = [
            ("Content-Type", "text/xml; charset=\"utf-8\""),
            ("SOAPAction", soap_action.as_str()),
        ];
        let (status, answer) = http(self.addr, "POST", &self.control_path, &headers, &body)
            .await
            .map_err(UpnpError::Exchange)?;
        if element(&answer, &format!("{action}Response")).is_some() {
            return Ok(());
        }
        match element(&answer, "errorCode").and_then(|c| c.trim().parse().ok()) {
            Some(code) => Err(UpnpError::Refused {
                code,
                description: element(&answer, "errorDescription")
                    .unwrap_or_default()
                    .trim()
                    .chars()
                    .take(100)
                    .collect(),
            }),
            None => Err(UpnpError::Exchange(format!(
                "{action} answered {status} without a response or an error code"
            ))),
        }
    }
}

/// Why a SOAP call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpnpError {
    /// The router said no.
    #[error("UPnP error {code} ({description})")]
    Refused {
        /// The UPnP error code (718 conflict, 725 only permanent leases…).
        code: u32,
        /// Its description, as the router gave it (at most 100 chars).
        description: String,
    },
    /// No usable answer.
    #[error("{0}")]
    Exchange(String),
}

/// `http://HOST:PORT/PATH` (an IPv4 address, as routers give) into the
/// address and the path.
fn split_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "not an http:// URL".to_owned())?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let addr: SocketAddr = if host.contains(':') {
        host.parse()
    } else {
        format!("{host}:80").parse()
    }
    .map_err(|_| "the URL's host is not an address and port".to_owned())?;
    Ok((addr, path))
}

/// The first of [`SERVICES`] in a device description, and its control URL.
fn find_service(xml: &str) -> Option<(String, String)> {
    elements(xml, "service").into_iter().find_map(|s| {
        let ty = element(s, "serviceType")?.trim();
        let control = element(s, "controlURL")?.trim();
        (SERVICES.contains(&ty) && !control.is_empty()).then(|| (ty.to_owned(), control.to_owned()))
    })
}

/// The text inside the first element named `name` (any namespace prefix).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    elements(xml, name).into_iter().next()
}

/// The text inside every element named `name` (any namespace prefix), in
/// order; nested elements of the same name are not looked for.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((start, body_start)) = find_tag(xml, at, name, false) {
        // `<u:AddPortMappingResponse xmlns:u="..."/>`: present, empty.
        if xml[start..body_start].ends_with("/>") {
            out.push("");
            at = body_start;
            continue;
        }
        let Some((close, after)) = find_tag(xml, body_start, name, true) else {
            break;
        };
        out.push(&xml[body_start..close]);
        at = after;
    }
    out
}

/// The next tag `<name ...>` (or `</name>` when `closing`), with or
/// without a namespace prefix, at or after `from`: where it starts and
/// where it ends.
fn find_tag(xml: &str, from: usize, name: &str, closing: bool) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(off) = xml.get(i..)?.find('<') {
        let start = i + off;
        let end = start + xml[start..].find('>')? + 1;
        let inner = &xml[start + 1..end - 1];
        let inner = if closing {
            match inner.strip_prefix('/') {
                Some(x) => x,
                None => {
                    i = end;
                    continue;
                }
            }
        } else if inner.starts_with('/') || inner.starts_with('?') || inner.starts_with('!') {
            i = end;
            continue;
        } else {
            inner
        };
        let tag = inner
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        let local = tag.rsplit(':').next().unwrap_or(tag);
        if local == name {
            return Some((start, end));
        }
        i = end;
    }
    None
}

/// One HTTP/1.1 exchange with `Connection: close`: the status and the
/// body (de-chunked), at most [`MAX_BODY`] bytes, within [`STEP_TIMEOUT`].
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to the router: {e}"))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("writing to the router: {e}"))?;
        let mut raw = Vec::new();
        (&mut s)
            .take(MAX_BODY as u64 + 8192)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading the router's answer: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| "the router did not answer in time".to_owned())??;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the router's answer has no end of headers".to_owned())?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "the router's answer has no status".to_owned())?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(rest).ok_or_else(|| "a malformed chunked answer".to_owned())?
    } else {
        rest.to_owned()
    };
    if body.len() > MAX_BODY {
        return Err("the router's answer is too long".into());
    }
    Ok((status, body))
}

/// A chunked body's data.
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        s = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_and_its_control_url_are_found_by_element_name() {
        let xml = "<?xml version=\"1.0\"?><root xmlns=\"urn:schemas-upnp-org:device-1-0\">\
            <device><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>\
            <controlURL>/l3f</controlURL></service></serviceList><deviceList><device><serviceList>\
            <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>\
            <SCPDURL>/scpd.xml</SCPDURL><controlURL>/ctl/IPConn</controlURL></service>\
            </serviceList></device></deviceList></device></root>";
        assert_eq!(
            find_service(xml),
            Some((SERVICES[0].to_owned(), "/ctl/IPConn".to_owned()))
        );
        assert_eq!(find_service("<root><device/></root>"), None);
        assert_eq!(find_service("<service><serviceType>"), None, "truncated");
        let soap = "<s:Envelope><s:Body><s:Fault><detail><UPnPError xmlns=\"urn:x\">\
            <errorCode>725</errorCode><errorDescription>OnlyPermanentLeasesSupported</errorDescription>\
            </UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        assert_eq!(element(soap, "errorCode"), Some("725"));
        assert_eq!(element(soap, "AddPortMappingResponse"), None);
        let ok = "<s:Body><u:AddPortMappingResponse xmlns:u=\"urn:x\"/></s:Body>";
        assert_eq!(element(ok, "AddPortMappingResponse"), Some(""));
    }

    #[test]
    fn urls_and_chunks_parse_and_bad_ones_are_refused() {
        assert_eq!(
            split_url("http://192.168.1.1:5000/rootDesc.xml"),
            Ok((
                "192.168.1.1:5000".parse().expect("addr"),
                "/rootDesc.xml".to_owned()
            ))
        );
        assert!(split_url("https://192.168.1.1/x").is_err());
        assert!(split_url("http://router.local:80/x").is_err());
        assert_eq!(
            dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n").as_deref(),
            Some("Wikipedia")
        );
        assert_eq!(dechunk("ff\r\nshort\r\n"), None);
    }
}
