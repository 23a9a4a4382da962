//! A port forward on the home router, asked for with PCP (RFC 6887), then
//! NAT-PMP (RFC 6886), through the `crab_nat` client, then UPnP IGD
//! ([`upnp`]), whichever the router answers first.
//!
//! A volunteer serving over TCP behind a router is reachable only through
//! a forward of its port. [`PortMap::request`] asks the default gateway
//! (from `/proc/net/route`) for one, for [`LIFETIME`]; the [`PortMap`]
//! renews it at half its granted lifetime and removes it when the session
//! ends ([`PortMap::remove`]). Whether the forward works is not taken on
//! the router's word: the rendezvous's dial-back decides whether the
//! contact is announced.
//!
//! What the router learns: that this machine serves TCP on that port. The
//! router is the user's own (or their provider's); nothing else is said to
//! it. Each exchange is bounded: [`TIMEOUTS`] per protocol for PCP and
//! NAT-PMP, [`upnp::STEP_TIMEOUT`] per UPnP step, so a router that speaks
//! none costs under ten seconds at a session's start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, TimeoutConfig};
use tokio_util::sync::CancellationToken;

pub mod upnp;

/// The lifetime asked for: an hour (the router may grant less).
pub const LIFETIME: u32 = 3600;

/// Per protocol: a first try after 250 ms, then 500 ms and 1 s (RFC 6886
/// asks for up to nine tries over a minute; a session cannot wait that
/// long, and the next session tries again).
pub const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: None,
};

/// Why no forward was made.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// No IPv4 default route with a gateway.
    #[error("no default gateway to ask")]
    NoGateway,
    /// No protocol got a mapping.
    #[error("the router granted no forward (PCP: {pcp}; NAT-PMP: {natpmp}; UPnP: {upnp})")]
    Refused {
        /// What PCP said.
        pcp: String,
        /// What NAT-PMP said.
        natpmp: String,
        /// What UPnP IGD said.
        upnp: String,
    },
}

/// Which protocol made a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 6887.
    Pcp,
    /// RFC 6886.
    NatPmp,
    /// UPnP IGD.
    Upnp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP IGD",
        })
    }
}

/// A forward on the router, kept while it lives.
#[derive(Debug)]
pub struct PortMap {
    /// The router's port that forwards to ours.
    pub external_port: u16,
    /// How it was made.
    pub protocol: Protocol,
    /// Stops the renewal, which then removes the forward.
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PortMap {
    /// Asks the default gateway to forward a port to `internal_port`
    /// (the same port number if it can) on this machine.
    pub async fn request(internal_port: u16) -> Result<PortMap, MapError> {
        let gateway = default_gateway().ok_or(MapError::NoGateway)?;
        let ssdp = [
            SocketAddr::V4(upnp::SSDP_GROUP),
            SocketAddr::new(gateway.into(), upnp::SSDP_GROUP.port()),
        ];
        PortMap::request_via(gateway, &ssdp, internal_port).await
    }

    /// As [`PortMap::request`], asking `gateway` (PCP, NAT-PMP), then
    /// whichever UPnP IGD answers an SSDP search sent to `ssdp`.
    pub async fn request_via(
        gateway: Ipv4Addr,
        ssdp: &[SocketAddr],
        internal_port: u16,
    ) -> Result<PortMap, MapError> {
        let (pcp, natpmp) = match PortMap::request_from(gateway, internal_port).await {
            Ok(m) => return Ok(m),
            Err(MapError::Refused { pcp, natpmp, .. }) => (pcp, natpmp),
            Err(e) => return Err(e),
        };
        let client = match local_addr_towards(gateway).await {
            IpAddr::V4(v) => v,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        let igd = match upnp::discover(ssdp).await {
            Ok(igd) => igd,
            Err(upnp) => return Err(MapError::Refused { pcp, natpmp, upnp }),
        };
        // A lease the router refuses as not permanent (725) is asked again
        // as permanent; it is removed at the end all the same.
        let mut lease = LIFETIME;
        let mut added = igd.add(internal_port, client, internal_port, lease).await;
        if let Err(upnp::UpnpError::Refused { code: 725, .. }) = added {
            lease = 0;
            added = igd.add(internal_port, client, internal_port, lease).await;
        }
        if let Err(e) = added {
            return Err(MapError::Refused {
                pcp,
                natpmp,
                upnp: e.to_string(),
            });
        }
        let held = Held::Upnp {
            igd,
            port: internal_port,
            client,
            lease,
        };
        Ok(PortMap::keep_held(held, internal_port, Protocol::Upnp))
    }

    /// Asks `gateway` with PCP, then NAT-PMP.
    pub async fn request_from(gateway: Ipv4Addr, internal_port: u16) -> Result<PortMap, MapError> {
        let port = NonZeroU16::new(internal_port).ok_or_else(|| MapError::Refused {
            pcp: "port 0".into(),
            natpmp: "port 0".into(),
            upnp: "port 0".into(),
        })?;
        let options = PortMappingOptions {
            external_port: Some(port),
            lifetime_seconds: Some(LIFETIME),
            timeout_config: Some(TIMEOUTS),
        };
        let client = local_addr_towards(gateway).await;
        // PCP first (RFC 6887 §1.1), NAT-PMP after any PCP failure: a
        // router that ignores PCP must not cost the NAT-PMP attempt.
        let pcp = crab_nat::pcp::port_mapping(
            crab_nat::pcp::BaseMapRequest::new(gateway.into(), client, InternetProtocol::Tcp, port),
            None,
            None,
            options,
        )
        .await;
        let (mapping, protocol) = match pcp {
            Ok(m) => (m, Protocol::Pcp),
            Err(pcp) => {
                match crab_nat::natpmp::port_mapping(
                    gateway.into(),
                    InternetProtocol::Tcp,
                    port,
                    options,
                )
                .await
                {
                    Ok(m) => (m, Protocol::NatPmp),
                    Err(natpmp) => {
                        return Err(MapError::Refused {
                            pcp: pcp.to_string(),
                            natpmp: natpmp.to_string(),
                            upnp: "not asked".into(),
                        });
                    }
                }
            }
        };
        let external_port = mapping.external_port().get();
        Ok(PortMap::keep_held(
            Held::Nat(mapping),
            external_port,
            protocol,
        ))
    }

    /// Renews `held` until removed.
    fn keep_held(held: Held, external_port: u16, protocol: Protocol) -> PortMap {
        let stop = CancellationToken::new();
        let task = Some(tokio::spawn(keep(held, stop.clone())));
        PortMap {
            external_port,
            protocol,
            stop,
            task,
        }
    }

    /// Removes the forward from the router (and stops renewing it).
    pub async fn remove(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PortMap {
    /// A map dropped without [`PortMap::remove`] stops renewing; the
    /// router drops the forward when its lifetime ends.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A forward as its protocol holds it.
enum Held {
    /// PCP or NAT-PMP.
    Nat(PortMapping),
    /// UPnP IGD: the same port on both sides, to `client`, for `lease`
    /// seconds (0: permanent).
    Upnp {
        igd: upnp::Igd,
        port: u16,
        client: Ipv4Addr,
        lease: u32,
    },
}

/// Renews `held` at half its lifetime until `stop` (a permanent UPnP
/// forward needs none), then removes it.
async fn keep(mut held: Held, stop: CancellationToken) {
    loop {
        let lifetime = match &held {
            Held::Nat(m) => m.lifetime(),
            Held::Upnp { lease: 0, .. } => u32::MAX,
            Held::Upnp { lease, .. } => *lease,
        };
        let half = Duration::from_secs(u64::from(lifetime.max(2) / 2));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(half) => {}
        }
        let renewed = match &mut held {
            Held::Nat(m) => m.renew().await.map_err(|e| e.to_string()),
            Held::Upnp {
                igd,
                port,
                client,
                lease,
            } => igd
                .add(*port, *client, *port, *lease)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = renewed {
            // Kept as it was: the next renewal tries again, and a lapsed
            // forward shows at the next session's dial-back.
            tracing::info!(error = %e, "renewing the router's port forward failed");
        }
    }
    let removed = match held {
        Held::Nat(m) => m.try_drop().await.map_err(|(e, _)| e.to_string()),
        Held::Upnp { igd, port, .. } => igd.delete(port).await.map_err(|e| e.to_string()),
    };
    if let Err(e) = removed {
        tracing::info!(error = %e, "removing the router's port forward failed (it lapses by itself)");
    }
}

/// The address this machine uses towards `gateway` (what PCP names as the
/// client): a connected UDP socket's own address; no packet is sent.
async fn local_addr_towards(gateway: Ipv4Addr) -> IpAddr {
    let fallback = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let Ok(s) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
        return fallback;
    };
    if s.connect((gateway, crab_nat::GATEWAY_PORT)).await.is_err() {
        return fallback;
    }
    s.local_addr().map_or(fallback, |a| a.ip())
}

/// The IPv4 default gateway of this thread's network namespace, from
/// its route table (`/proc/thread-self/net/route`: `/proc/net` is the
/// process's, which a thread that entered another namespace does not
/// share).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/thread-self/net/route")
        .or_else(|_| std::fs::read_to_string("/proc/net/route"))
        .ok()?;
    parse_route_table(&table)
}

/// The gateway of the lowest-metric default route that is up and has
/// one, in `/proc/net/route`'s format (`Iface Destination Gateway Flags
/// RefCnt Use Metric Mask ...`, addresses as hex of the host's byte
/// order).
fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    const UP_AND_GATEWAY: u32 = 0x1 | 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|v| u32::from_str_radix(v, 16).ok());
            let (dest, gateway, flags, metric, mask) =
                (hex(1)?, hex(2)?, hex(3)?, f.get(6)?, hex(7)?);
            let default = dest == 0 && mask == 0 && flags & UP_AND_GATEWAY == UP_AND_GATEWAY;
            let metric: u32 = metric.parse().ok()?;
            default.then(|| (metric, Ipv4Addr::from(gateway.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's hex is of the host's byte order: this one is a
    /// little-endian host's.
    #[test]
    #[cfg(target_endian = "little")]
    fn the_default_gateway_is_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                     down0\t00000000\t0103A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_route_table(table),
            Some(Ipv4Addr::new(192, 168, 2, 1))
        );
        assert_eq!(parse_route_table("Iface\tDestination\n"), None);
        assert_eq!(parse_route_table("garbage"), None);
    }
}
