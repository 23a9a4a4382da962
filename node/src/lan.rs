//! LAN discovery (`[lan]` in the policy, both ways opt-in): volunteers on
//! the same link find each other with mDNS/DNS-SD (RFC 6762, RFC 6763),
//! with no rendezvous.
//!
//! A volunteer whose session serves over TCP advertises the service
//! [`SERVICE`] while the session lasts: a random instance and host name
//! (never the machine's), the peer listener's port, its addresses on the
//! link, and a TXT record of four keys: `v` ([`TXT_VERSION`]), `k` the
//! session key (64 hex digits), `l` the level, `e` the epoch. Nothing of
//! what it holds: a neighbour learns that this machine volunteers, and
//! where, no more than the rendezvous's directory shows of a TCP contact.
//! Each session is a new instance (a new key), withdrawn with an mDNS
//! goodbye when it ends.
//!
//! A gateway with discovery on browses for [`SERVICE`] and hands what it
//! finds to [`LanPeers`], which asks those peers first. An advertisement
//! is checked before it is used ([`candidate`]): a link address (private
//! IPv4, IPv4 link-local, IPv6 unique-local), a level that serves over
//! TCP, a well-formed key; anything else is ignored with the reason at
//! debug level, so that a neighbour cannot point the gateway at a host
//! beyond the link.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anonmirror_core::{Contact, Entropy as _, Epoch, OsEntropy, PeerKey};
use anonmirror_mirror::lan::LanPeers;
use anonmirror_mirror::peers::Candidate;
use anonmirror_overlay::swarm::PeerAddr;
use anonmirror_privacy::Level;
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio_util::sync::CancellationToken;

/// The DNS-SD service type volunteers advertise.
pub const SERVICE: &str = "_anonmirror._tcp.local.";

/// The TXT record's version (`v`).
pub const TXT_VERSION: &str = "1";

/// Why an advertisement on the link was not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadAdvertisement {
    /// A TXT key is missing.
    #[error("its TXT record has no `{0}`")]
    Missing(&'static str),
    /// Another version of the TXT record.
    #[error("its TXT record is version {0:?}; this node reads {TXT_VERSION}")]
    Version(String),
    /// `k` is not a key.
    #[error("its TXT `k` is not a session key (64 hex digits)")]
    Key,
    /// `l` is not a level that serves over TCP.
    #[error("its TXT `l` is {0:?}, not open or balanced")]
    Level(String),
    /// `e` is not a number.
    #[error("its TXT `e` is {0:?}, not an epoch")]
    Epoch(String),
    /// Port 0.
    #[error("its port is 0")]
    Port,
    /// No address on the link.
    #[error(
        "none of its {0} addresses is on a link (private IPv4, link-local IPv4, unique-local IPv6)"
    )]
    NoLinkAddress(usize),
}

/// Whether `ip` can only be a neighbour's: a private or link-local IPv4
/// address, or a unique-local IPv6 one.
fn on_a_link(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The peer an advertisement describes, if it is usable: named by
/// `fullname`, at `port`, on `addresses`, with `txt(key)` its TXT values.
pub fn candidate<'a>(
    port: u16,
    addresses: impl IntoIterator<Item = IpAddr>,
    txt: impl Fn(&str) -> Option<&'a str>,
) -> Result<Candidate, BadAdvertisement> {
    let get = |k: &'static str| txt(k).ok_or(BadAdvertisement::Missing(k));
    let version = get("v")?;
    if version != TXT_VERSION {
        return Err(BadAdvertisement::Version(version.to_owned()));
    }
    let key: PeerKey = get("k")?.parse().map_err(|_| BadAdvertisement::Key)?;
    let level = get("l")?;
    let level = match level.parse::<Level>() {
        Ok(l @ (Level::Open | Level::Balanced)) => l,
        _ => return Err(BadAdvertisement::Level(level.to_owned())),
    };
    let epoch = get("e")?;
    let epoch = Epoch(
        epoch
            .parse::<u64>()
            .map_err(|_| BadAdvertisement::Epoch(epoch.to_owned()))?,
    );
    if port == 0 {
        return Err(BadAdvertisement::Port);
    }
    let mut all: Vec<IpAddr> = addresses.into_iter().collect();
    let n = all.len();
    all.retain(|ip| on_a_link(*ip));
    // IPv4 first: it needs no scope, and every link has it.
    all.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    let ip = *all.first().ok_or(BadAdvertisement::NoLinkAddress(n))?;
    Ok(Candidate {
        addr: PeerAddr {
            contact: Contact::Tcp(SocketAddr::new(ip, port)),
            key,
        },
        level,
        epoch,
    })
}

/// Errors of the mDNS responder, as text (its own type says little more).
fn mdns_error(what: &str, e: mdns_sd::Error) -> crate::Error {
    crate::Error::Internal(format!("LAN discovery: {what}: {e}"))
}

/// A session's advertisement on the link; withdrawn by [`stop`](Self::stop).
pub struct Advertisement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Advertisement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Advertisement")
    }
}

impl Advertisement {
    /// Tells the link that a peer server with session `key` at `level`
    /// and `epoch` listens on `port` of this machine's addresses.
    pub fn start(port: u16, key: PeerKey, level: Level, epoch: Epoch) -> crate::Result<Self> {
        let daemon = ServiceDaemon::new().map_err(|e| mdns_error("starting mDNS", e))?;
        // Random names: the machine's host name would say whose it is.
        let mut entropy = OsEntropy;
        let instance = format!("{:016x}", entropy.next_u64());
        let host = format!("am-{instance}.local.");
        let (key, epoch) = (key.to_hex(), epoch.0.to_string());
        let txt = [
            ("v", TXT_VERSION),
            ("k", key.as_str()),
            ("l", level.as_str()),
            ("e", epoch.as_str()),
        ];
        let info = ServiceInfo::new(SERVICE, &instance, &host, (), port, &txt[..])
            .map_err(|e| mdns_error("the advertisement", e))?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon
            .register(info)
            .map_err(|e| mdns_error("advertising", e))?;
        Ok(Advertisement { daemon, fullname })
    }

    /// Withdraws it (an mDNS goodbye, so neighbours drop it at once).
    pub async fn stop(self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), done.recv_async()).await;
        }
        shut_down(&self.daemon).await;
    }
}

/// Browses the link for volunteers and keeps `lan` current until
/// `cancel`.
pub fn discover(
    lan: Arc<LanPeers>,
    cancel: CancellationToken,
) -> crate::Result<impl Future<Output = ()>> {
    let daemon = ServiceDaemon::new().map_err(|e| mdns_error("starting mDNS", e))?;
    let events = daemon
        .browse(SERVICE)
        .map_err(|e| mdns_error("browsing", e))?;
    Ok(async move {
        loop {
            let event = tokio::select! {
                e = events.recv_async() => e,
                () = cancel.cancelled() => break,
            };
            match event {
                Ok(ServiceEvent::ServiceResolved(s)) => found(&lan, &s),
                Ok(ServiceEvent::ServiceRemoved(_, name)) => lan.lost(&name),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        shut_down(&daemon).await;
    })
}

/// Stops `daemon`'s thread, waiting at most 2 s for it to say so.
async fn shut_down(daemon: &ServiceDaemon) {
    if let Ok(done) = daemon.shutdown() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), done.recv_async()).await;
    }
}

fn found(lan: &LanPeers, s: &ResolvedService) {
    let addresses = s.addresses.iter().map(|a| a.to_ip_addr());
    match candidate(s.port, addresses, |k| s.get_property_val_str(k)) {
        Ok(c) => {
            if lan.found(&s.fullname, c) {
                tracing::debug!(peers = lan.len(), "a volunteer on the link");
            } else {
                tracing::debug!("a volunteer on the link left out: enough are known");
            }
        }
        Err(e) => {
            lan.ignored(&s.fullname);
            tracing::debug!(error = %e, "an advertisement on the link ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().expect("ip")).collect()
    }

    #[test]
    fn an_advertisement_is_used_only_when_every_field_is_sound() {
        let key = "ab".repeat(32);
        let good = [
            ("v", "1"),
            ("k", key.as_str()),
            ("l", "open"),
            ("e", "20425"),
        ];
        let c = candidate(7879, ips(&["fd00::5", "172.16.1.5", "8.8.8.8"]), txt(&good))
            .expect("usable");
        assert_eq!(
            c.addr.contact,
            Contact::Tcp("172.16.1.5:7879".parse().expect("addr"))
        );
        assert_eq!(
            (c.addr.key, c.level, c.epoch),
            (PeerKey([0xab; 32]), Level::Open, Epoch(20425))
        );
        let c = candidate(7879, ips(&["fe80::1", "fd12::7"]), txt(&good)).expect("ula");
        assert_eq!(
            c.addr.contact,
            Contact::Tcp("[fd12::7]:7879".parse().expect("addr"))
        );

        /// TXT pairs, port, addresses, and why it is not used.
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            u16,
            &'a [&'a str],
            BadAdvertisement,
        );
        let cases: &[Case] = &[
            (
                &good[1..],
                7879,
                &["10.0.0.2"],
                BadAdvertisement::Missing("v"),
            ),
            (
                &[("v", "2"), ("k", "00"), ("l", "open"), ("e", "1")],
                7879,
                &["10.0.0.2"],
                BadAdvertisement::Version("2".into()),
            ),
            (
                &[("v", "1"), ("k", "zz"), ("l", "open"), ("e", "1")],
                7879,
                &["10.0.0.2"],
                BadAdvertisement::Key,
            ),
            (
                &[("v", "1"), ("k", key.as_str()), ("l", "strict"), ("e", "1")],
                7879,
                &["10.0.0.2"],
                BadAdvertisement::Level("strict".into()),
            ),
            (
                &[("v", "1"), ("k", key.as_str()), ("l", "off"), ("e", "1")],
                7879,
                &["10.0.0.2"],
                BadAdvertisement::Level("off".into()),
            ),
            (
                &[("v", "1"), ("k", key.as_str()), ("l", "open"), ("e", "-1")],
                7879,
                &["10.0.0.2"],
                BadAdvertisement::Epoch("-1".into()),
            ),
            (&good, 0, &["10.0.0.2"], BadAdvertisement::Port),
            // A neighbour pointing the gateway beyond the link.
            (
                &good,
                7879,
                &["8.8.8.8", "2001:db8::1", "127.0.0.1", "fe80::1"],
                BadAdvertisement::NoLinkAddress(4),
            ),
            (&good, 7879, &[], BadAdvertisement::NoLinkAddress(0)),
        ];
        for (pairs, port, addrs, want) in cases {
            let got = candidate(*port, ips(addrs), txt(pairs));
            assert_eq!(got.as_ref().err(), Some(want), "{pairs:?} {addrs:?}");
            assert!(!want.to_string().is_empty());
        }
    }
}
