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
//! Serving over Tor means an onion service: with `tor` and
//! `experimental_arti_onion_service`, arti hosts one per session (a fresh
//! address); otherwise a serving node over Tor needs the TCP fallback,
//! and its peers see its address.
//!
//! What the node ended up with is written to the state directory
//! ([`TRANSPORT_FILE`]) for `anonmirror audit`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_overlay::TcpTransport;
use anonmirror_overlay::transport::Dialer;
use anonmirror_overlay::transport::socks::SocksDialer;
use anonmirror_privacy::{Policy, Transport};
use anyhow::{Result, anyhow};

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
}

/// The transport a node ended up with.
pub struct Carrier {
    /// Opens every outgoing connection.
    pub dialer: Arc<dyn Dialer>,
    /// arti, when it carries connections (it also hosts onion services).
    #[cfg(feature = "tor")]
    pub arti: Option<Arc<anonmirror_overlay::transport::tor::TorDialer>>,
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
            Transport::Tcp => None,
            Transport::TorSocks => Some(socks(policy).await),
            Transport::Tor => Some(arti(policy).await),
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
                return Err(anyhow!(
                    "transport.kind = \"{}\" and Tor is unavailable: {why}. Level {} does not \
                     start without Tor: set transport.allow_tcp_fallback = true to use direct \
                     TCP instead, which shows this machine's address",
                    t.kind.as_str(),
                    policy.level
                ));
            }
        };
        carrier.serving = serving(policy, &carrier)?;
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
                "tcp on {} (peers see this machine's address)",
                policy.serve.listen
            ),
            Serving::ArtiOnion => {
                "onion service hosted by arti (a fresh address per session)".into()
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
        std::fs::write(state_dir.join(TRANSPORT_FILE), text)
            .map_err(|e| anyhow!("writing {}: {e}", state_dir.join(TRANSPORT_FILE).display()))
    }
}

/// How peers reach a node with `carrier`, or why it cannot serve.
fn serving(policy: &Policy, carrier: &Carrier) -> Result<Serving> {
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
    if t.allow_tcp_fallback {
        tracing::warn!(
            "peers reach this node over direct TCP (transport.allow_tcp_fallback): \
             no onion service is configured, so they see this machine's address"
        );
        return Ok(Serving::Tcp);
    }
    let how = if cfg!(feature = "onion-service") {
        "set transport.kind = \"tor\" and transport.experimental_arti_onion_service = true \
         (arti hosts an onion service per session)"
    } else {
        "this build cannot host onion services (cargo feature `onion-service`)"
    };
    Err(anyhow!(
        "level {} serves peers over Tor only, which needs an onion service: {how}; or set \
         transport.allow_tcp_fallback = true, which shows this machine's address to peers",
        policy.level
    ))
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
    let d = SocksDialer::new(at).map_err(|e| e.to_string())?;
    let connections = Dialer::describe(&d);
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
    use anonmirror_overlay::transport::tor::{TorConfig, TorDialer};
    let mut config = TorConfig::new(
        policy.paths.state_dir.join("arti"),
        policy.paths.cache_dir.join("arti"),
    );
    config.arti_config = policy.transport.dangerous_arti_config.clone();
    if config.arti_config.is_some() {
        tracing::warn!(
            "transport.dangerous_arti_config: arti uses the Tor network that file names"
        );
    }
    tracing::info!("starting Tor (arti)");
    let d = TorDialer::bootstrap(&config, |p| {
        tracing::info!(
            percent = (100.0 * p.fraction).round(),
            status = %p.status,
            "Tor bootstrap"
        );
    })
    .await
    .map_err(|e| e.to_string())?;
    tracing::info!("Tor ready");
    let d = Arc::new(d);
    Ok(Carrier {
        dialer: d.clone(),
        arti: Some(d),
        serving: Serving::Tcp,
        connections: "tor (arti)".into(),
    })
}

#[cfg(not(feature = "tor"))]
async fn arti(_policy: &Policy) -> Result<Carrier, String> {
    Err(
        "this build has no arti (cargo feature `tor`); transport.kind = \"tor-socks\" uses a \
         Tor daemon instead"
            .into(),
    )
}
