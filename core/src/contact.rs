//! Where a peer or rendezvous can be reached: [`Contact`].
//!
//! One type for every layer: the policy's addresses parse into it, the
//! transports dial and listen on it, and the rendezvous's wire form
//! (`ContactWire`) converts to and from it at one place.
//!
//! Its `Display` shows the address in full; anything that logs one wraps
//! it in [`Sensitive`] first ([`Contact::redacted`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::Sensitive;

/// Where a peer or rendezvous can be reached.
///
/// Its `Display` shows the address in full, for configuration files and
/// the operator's own output; wrap it in [`Sensitive`] (see
/// [`Contact::redacted`]) before it reaches a log line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Contact {
    /// A TCP socket address (clearnet; levels that allow it only).
    Tcp(SocketAddr),
    /// A DNS name and port: resolved by the system for TCP, by the exit
    /// relay over Tor (never on this machine).
    Host {
        /// The name, e.g. `rendezvous.example.org`.
        host: String,
        /// The port (not 0).
        port: u16,
    },
    /// A Tor v3 onion service: reachable over Tor only.
    Onion {
        /// `<56 base32 characters>.onion`.
        host: String,
        /// The virtual port (not 0).
        port: u16,
    },
}

/// Why a string is not a [`Contact`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not host:port, an IP address and port, or an onion address and port: {problem}"
)]
pub struct ContactError {
    input: String,
    problem: &'static str,
}

impl Contact {
    /// The contact wrapped for logging.
    pub fn redacted(&self) -> Sensitive<&Contact> {
        Sensitive::new(self)
    }

    /// Parses `host:port`, `IPv4:port`, `[IPv6]:port` or
    /// `<56 base32>.onion:port` (what the policy's addresses are).
    pub fn parse(input: &str) -> Result<Contact, ContactError> {
        let bad = |problem| ContactError {
            input: input.to_string(),
            problem,
        };
        if let Ok(addr) = input.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0"));
            }
            return Ok(Contact::Tcp(addr));
        }
        let (host, port) = input.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("an IPv6 address needs brackets: [::1]:7880"));
        }
        let host = host.to_ascii_lowercase();
        if let Some(name) = host.strip_suffix(".onion") {
            let v3 = name.len() == 56
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
            if !v3 {
                return Err(bad("not a v3 onion address (56 base32 characters)"));
            }
            return Ok(Contact::Onion { host, port });
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad("not a DNS name"));
        }
        Ok(Contact::Host { host, port })
    }

    /// Whether reaching it shows this machine's address to the network
    /// (anything but an onion service over Tor does, over plain TCP).
    pub fn is_onion(&self) -> bool {
        matches!(self, Contact::Onion { .. })
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Tcp(addr) => write!(f, "tcp:{addr}"),
            Contact::Host { host, port } => write!(f, "dns:{host}:{port}"),
            Contact::Onion { host, port } => write!(f, "onion:{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Contact {
    fn from(addr: SocketAddr) -> Self {
        Contact::Tcp(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_shows_in_full_but_redacts_when_wrapped() {
        let c = Contact::from(SocketAddr::from(([192, 0, 2, 7], 4000)));
        assert_eq!(c.to_string(), "tcp:192.0.2.7:4000");
        assert_eq!(c.redacted().to_string(), "[scrubbed]");
        assert_eq!(format!("{:?}", c.redacted()), "[scrubbed]");
    }

    #[test]
    fn contacts_parse_from_policy_addresses() {
        let onion = format!("{}.onion", "abcdefgh234567".repeat(4));
        assert_eq!(
            Contact::parse("192.0.2.7:4000"),
            Ok(Contact::Tcp(SocketAddr::from(([192, 0, 2, 7], 4000))))
        );
        assert!(matches!(Contact::parse("[::1]:80"), Ok(Contact::Tcp(a)) if a.is_ipv6()));
        assert_eq!(
            Contact::parse("Rendezvous.Example.org:7880"),
            Ok(Contact::Host {
                host: "rendezvous.example.org".into(),
                port: 7880
            })
        );
        let parsed = Contact::parse(&format!("{onion}:7879")).expect("onion");
        assert!(parsed.is_onion());
        assert_eq!(parsed.to_string(), format!("onion:{onion}:7879"));
        for (bad, says) in [
            ("example.org", "no port"),
            ("example.org:0", "port 0"),
            ("example.org:99999", "1 to 65535"),
            ("::1:80", "brackets"),
            ("short.onion:80", "v3 onion"),
            ("bad_name.org:80", "DNS name"),
            (":80", "DNS name"),
        ] {
            let e = Contact::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }
}
