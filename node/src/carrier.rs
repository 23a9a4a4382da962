//! What carries a node's connections, as the policy's `[transport]`
//! decides, and how its peer server is reached.
//!
//! - `tcp`: direct TCP for everything.
//! - `tor`: arti in this process (a build with the `tor` feature) for
//!   every connection: the rendezvous, peers and the upstream mirror.
//!   Names go to Tor unresolved; each destination gets its own circuit.
//! - `tor-socks`: the same through a Tor daemon's SOCKS port.
//!
//! When Tor is unavailable (arti cannot bootstrap, the SOCKS port does not
//! answer, or this build has no arti), a policy with `allow_tcp_fallback`
//! uses direct TCP and says so (in the log and in `audit`); any other
//! refuses to start: `strict` never falls back unless the operator set
//! `dangerous_allow_clearnet` too (the policy checks that).
//!
//! Serving over Tor means an onion service, a fresh address per session:
//! with `tor` and `experimental_arti_onion_service`, arti hosts it; with
//! `tor-socks`, the Tor daemon does, asked through its control port
//! (`transport.control`, tried at start). Otherwise a serving node over
//! Tor needs the TCP fallback, and its peers see its address.
//!
//! What the node ended up with is written to the state directory
//! ([`TRANSPORT_FILE`]) for `anonmirror audit`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

// The transports.
use anonmirror_channel::TcpTransport;
use anonmirror_channel::transport::Transport;
use anonmirror_channel::transport::control;
use anonmirror_channel::transport::socks::SocksTransport;
use anonmirror_privacy::{Policy, TransportKind};

use crate::err::{Error, Result};

/// What carries connections, in the state directory, for `audit`.
pub const TRANSPORT_FILE: &str = "transport.txt";

/// How long a Tor daemon's SOCKS port may take to accept a connection at
/// start before Tor counts as unavailable.
const SOCKS_PROBE: Duration = Duration::from_secs(5);

/// How the peer server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Not at all (level `off`).
    Nobody,
    /// Directly, on `serve.listen`: peers see this machine's address.
    Tcp,
    /// Through an onion service arti hosts, a fresh one per session.
    ArtiOnion,
    /// Through an onion service the Tor daemon hosts (`ADD_ONION` on its
    /// control port), a fresh one per session.
    DaemonOnion,
}

/// The transport a node ended up with.
pub struct Carrier {
    /// Opens every outgoing connection.
    pub dialer: Arc<dyn Transport>,
    /// arti, when it carries connections (it also hosts onion services).
    #[cfg(feature = "tor")]
    pub arti: Option<Arc<anonmirror_channel::transport::tor::TorTransport>>,
    /// How peers reach this node.
    pub serving: Serving,
    /// What carries connections, for people: the dialer's description,
    /// and why, when it is not what the policy asked.
    pub connections: String,
}

impl std::fmt::Debug for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carrier")
            .field("serving", &self.serving)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl Carrier {
    /// The transport `policy` asks for, started (arti bootstraps here),
    /// or the TCP fallback where the policy allows it.
    pub async fn start(policy: &Policy) -> Result<Carrier> {
        let t = &policy.transport;
        let tor = match t.kind {
            TransportKind::Tcp => None,
            TransportKind::TorSocks => Some(socks(policy).await),
            TransportKind::Tor => Some(arti(policy).await),
        };
        let mut carrier = match tor {
            None => Carrier::tcp("tcp".into()),
            Some(Ok(c)) => c,
            Some(Err(why)) if t.allow_tcp_fallback => {
                tracing::warn!(
                    reason = %why,
                    "Tor is unavailable: using direct TCP (transport.allow_tcp_fallback), \
                     which shows this machine's address to peers, the rendezvous and the mirror"
                );
                Carrier::tcp(format!("tcp (fallback: Tor is unavailable: {why})"))
            }
            Some(Err(why)) => {
                return Err(Error::Tor(format!(
                    "transport.kind = \"{}\" and Tor is unavailable: {why}. Level {} does not \
                     start without Tor: set transport.allow_tcp_fallback = true to use direct \
                     TCP instead, which shows this machine's address",
                    t.kind.as_str(),
                    policy.level
                )));
            }
        };
        carrier.serving = serving(policy, &carrier).await?;
        Ok(carrier)
    }

    fn tcp(connections: String) -> Carrier {
        Carrier {
            dialer: Arc::new(TcpTransport),
            #[cfg(feature = "tor")]
            arti: None,
            serving: Serving::Tcp,
            connections,
        }
    }

    /// Whether connections go through Tor.
    pub fn is_tor(&self) -> bool {
        self.dialer.is_tor()
    }

    /// The serving line of [`TRANSPORT_FILE`].
    pub fn serving_text(&self, policy: &Policy) -> String {
        match self.serving {
            Serving::Nobody => "nobody (level off)".into(),
            Serving::Tcp => format!(
                "tcp on {} (the contact announced is this machine's IP address: the \
                 rendezvous and every peer that downloads from it see it)",
                policy.serve.listen
            ),
            Serving::ArtiOnion => {
                "onion service hosted by arti (a fresh address per session)".into()
            }
            Serving::DaemonOnion => {
                "onion service of the Tor daemon (a fresh address per session)".into()
            }
        }
    }

    /// Writes [`TRANSPORT_FILE`] in `state_dir`.
    pub fn record(&self, policy: &Policy, state_dir: &Path) -> Result<()> {
        let text = format!(
            "connections: {}\nserving: {}\n",
            self.connections,
            self.serving_text(policy)
        );
        let path = state_dir.join(TRANSPORT_FILE);
        std::fs::write(&path, text)
            .map_err(|e| Error::state(format!("writing {}", path.display()), e))
    }
}

/// How peers reach a node with `carrier`, or why it cannot serve.
async fn serving(policy: &Policy, carrier: &Carrier) -> Result<Serving> {
    if !policy.level.serves() {
        return Ok(Serving::Nobody);
    }
    let t = &policy.transport;
    if !carrier.is_tor() {
        return Ok(Serving::Tcp);
    }
    #[cfg(feature = "onion-service")]
    if t.experimental_arti_onion_service && carrier.arti.is_some() {
        return Ok(Serving::ArtiOnion);
    }
    // The Tor daemon's onion service, if its control port lets us in.
    let daemon = if t.kind == TransportKind::TorSocks {
        match control::probe(&t.control).await {
            Ok(()) => return Ok(Serving::DaemonOnion),
            Err(e) => Some(e),
        }
    } else {
        None
    };
    if t.allow_tcp_fallback {
        match &daemon {
            Some(why) => tracing::warn!(
                reason = %why,
                "peers reach this node over direct TCP (transport.allow_tcp_fallback): \
                 the Tor daemon cannot host an onion service, so they see this machine's \
                 address"
            ),
            None => tracing::warn!(
                "peers reach this node over direct TCP (transport.allow_tcp_fallback): \
                 no onion service is configured, so they see this machine's address"
            ),
        }
        return Ok(Serving::Tcp);
    }
    let how = if let Some(why) = daemon {
        format!(
            "the Tor daemon hosts one through its control port (transport.control), but: \
             {why}"
        )
    } else if cfg!(feature = "onion-service") {
        "set transport.kind = \"tor\" and transport.experimental_arti_onion_service = true \
         (arti hosts an onion service per session)"
            .into()
    } else {
        "this build cannot host onion services (cargo feature `onion-service`)".into()
    };
    Err(Error::Tor(format!(
        "level {} serves peers over Tor only, which needs an onion service: {how}; or set \
         transport.allow_tcp_fallback = true, which shows this machine's address to peers",
        policy.level
    )))
}

/// A Tor daemon's SOCKS port, if it answers.
async fn socks(policy: &Policy) -> Result<Carrier, String> {
    let at = policy.transport.socks;
    match tokio::time::timeout(SOCKS_PROBE, tokio::net::TcpStream::connect(at)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("nothing answers on the SOCKS port {at}: {e}")),
        Err(_) => {
            return Err(format!(
                "the SOCKS port {at} did not answer in {SOCKS_PROBE:?}"
            ));
        }
    }
    let d = SocksTransport::new(at).map_err(|e| e.to_string())?;
    let connections = Transport::describe(&d);
    Ok(Carrier {
        dialer: Arc::new(d),
        #[cfg(feature = "tor")]
        arti: None,
        serving: Serving::Tcp,
        connections,
    })
}

/// arti, bootstrapped, if this build has it and it can.
#[cfg(feature = "tor")]
async fn arti(policy: &Policy) -> Result<Carrier, String> {
    use anonmirror_channel::transport::tor::TorConfig;
    let mut config = TorConfig::new(
        policy.paths.state_dir.join("arti"),
        policy.paths.cache_dir.join("arti"),
    );
    config.arti_config = policy.transport.dangerous_arti_config.clone();
    let d = Arc::new(
        bootstrap_arti(&config, "transport.dangerous_arti_config")
            .await
            .map_err(|e| e.to_string())?,
    );
    Ok(Carrier {
        dialer: d.clone(),
        arti: Some(d),
        serving: Serving::Tcp,
        connections: "tor (arti)".into(),
    })
}

/// Starts arti with `config`, its progress in the log; `setting` names
/// where an arti configuration file came from, for the warning that one
/// is in use.
#[cfg(feature = "tor")]
pub async fn bootstrap_arti(
    config: &anonmirror_channel::transport::tor::TorConfig,
    setting: &str,
) -> std::io::Result<anonmirror_channel::transport::tor::TorTransport> {
    if config.arti_config.is_some() {
        tracing::warn!("{setting}: arti uses the Tor network that file names");
    }
    tracing::info!("starting Tor (arti)");
    let d = anonmirror_channel::transport::tor::TorTransport::bootstrap(config, |p| {
        tracing::info!(
            percent = (100.0 * p.fraction).round(),
            status = %p.status,
            "Tor bootstrap"
        );
    })
    .await?;
    tracing::info!("Tor ready");
    Ok(d)
}

#[cfg(not(feature = "tor"))]
async fn arti(_policy: &Policy) -> Result<Carrier, String> {
    Err(
        "this build has no arti (cargo feature `tor`); transport.kind = \"tor-socks\" uses a \
         Tor daemon instead"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonmirror_privacy::{ControlPort, Level};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A `tor-socks` carrier (nothing is dialled here).
    fn socks_carrier() -> Carrier {
        let d = SocksTransport::new("127.0.0.1:9".parse().expect("addr")).expect("dialer");
        Carrier {
            dialer: Arc::new(d),
            #[cfg(feature = "tor")]
            arti: None,
            serving: Serving::Tcp,
            connections: "tor (SOCKS5 at 127.0.0.1:9)".into(),
        }
    }

    fn tor_socks(level: Level, control: ControlPort) -> Policy {
        let mut p = Policy::defaults_for(level);
        p.transport.kind = TransportKind::TorSocks;
        p.transport.control = control;
        p
    }

    /// A control port that lets anyone in (NULL authentication), for
    /// one connection.
    async fn open_control_port() -> ControlPort {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = ControlPort::Tcp(l.local_addr().expect("addr"));
        tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let mut s = BufReader::new(s);
            let mut line = String::new();
            while s.read_line(&mut line).await.unwrap_or(0) > 0 {
                let reply = match line.split_whitespace().next() {
                    Some("PROTOCOLINFO") => {
                        "250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250 OK\r\n"
                    }
                    Some("QUIT") => "250 closing connection\r\n",
                    _ => "250 OK\r\n",
                };
                let _ = s.get_mut().write_all(reply.as_bytes()).await;
                line.clear();
            }
        });
        at
    }

    #[tokio::test]
    async fn a_tor_socks_volunteer_serves_as_the_daemons_onion_service() {
        let policy = tor_socks(Level::Strict, open_control_port().await);
        let mut carrier = socks_carrier();
        carrier.serving = serving(&policy, &carrier).await.expect("serves");
        assert_eq!(carrier.serving, Serving::DaemonOnion);
        let dir = tempfile::tempdir().expect("tempdir");
        carrier.record(&policy, dir.path()).expect("record");
        let text = std::fs::read_to_string(dir.path().join(TRANSPORT_FILE)).expect("read");
        assert!(
            text.contains("serving: onion service of the Tor daemon (a fresh address per session)"),
            "{text}"
        );
        // What `anonmirror audit` makes of it: strict's requirement met.
        let in_use = anonmirror_audit::InUse::parse(&text).expect("audit reads it");
        assert_eq!(in_use.shortfalls(Level::Strict), Vec::<String>::new());
        assert_eq!(in_use.shortfalls(Level::Balanced), Vec::<String>::new());
    }

    #[tokio::test]
    async fn without_the_control_port_strict_refuses_and_balanced_falls_back() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = ControlPort::Tcp(l.local_addr().expect("addr"));
        drop(l);
        let carrier = socks_carrier();
        let e = serving(&tor_socks(Level::Strict, closed.clone()), &carrier)
            .await
            .expect_err("strict serves over an onion service only");
        let msg = e.to_string();
        assert!(msg.contains("transport.control"), "{msg}");
        assert!(msg.contains(&format!("control port {closed}")), "{msg}");
        assert!(msg.contains("allow_tcp_fallback"), "{msg}");
        let balanced = tor_socks(Level::Balanced, closed);
        assert!(balanced.transport.allow_tcp_fallback);
        assert_eq!(
            serving(&balanced, &carrier).await.expect("falls back"),
            Serving::Tcp
        );
        // Nobody at level off: the control port is not even tried.
        let off = tor_socks(Level::Off, ControlPort::Unix("/nonexistent".into()));
        assert_eq!(serving(&off, &carrier).await.expect("off"), Serving::Nobody);
    }
}
