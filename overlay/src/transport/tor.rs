//! Tor in this process, through arti (feature `tor`).
//!
//! [`TorDialer::bootstrap`] starts an arti client with its state and
//! cache under directories the caller names, reports bootstrap progress
//! as it goes, and gives up with a clear error when the Tor network
//! cannot be reached in time. Every stream then leaves through Tor:
//! names and onion addresses are handed to Tor as they are (no DNS query
//! from this machine), and each destination gets its own circuit
//! (an arti isolation token per destination), so two peers never see
//! the same circuit and an exit cannot tell which streams are one
//! node's.
//!
//! arti's configuration is its own TOML format, the same file `arti`
//! reads. By default nothing is read and arti's built-in defaults (the
//! public Tor network) apply; the policy's `dangerous_arti_config` names
//! a file to use instead, for another Tor network (its directory
//! authorities: a test network, say) or bridges. Whatever it says, the
//! storage directories are ours.
//!
//! rustls needs a process-wide crypto provider; [`TorDialer::bootstrap`]
//! installs ring's if none is (arti's `rustls` feature does not).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::config::{BoolOrAuto, TorClientConfig, TorClientConfigBuilder};
use arti_client::{IsolationToken, StreamPrefs, TorClient};
use futures::StreamExt;
use tor_rtcompat::PreferredRuntime;

use super::{BoxStream, Contact, DialFuture, Dialer};

/// Destinations whose isolation token is kept; past this the map starts
/// over (a destination then gets a fresh circuit, which costs a little
/// time and reveals nothing).
const MAX_ISOLATED: usize = 4096;

/// Where arti keeps its files, and which network it joins.
#[derive(Clone, Debug)]
pub struct TorConfig {
    /// arti's state (guards, keys): kept across runs.
    pub state_dir: PathBuf,
    /// arti's directory cache: may be wiped.
    pub cache_dir: PathBuf,
    /// An arti configuration file (arti's TOML format) to start from
    /// instead of arti's defaults; its storage directories are replaced.
    pub arti_config: Option<PathBuf>,
    /// How long bootstrapping may take before it is an error.
    pub bootstrap_timeout: Duration,
}

impl TorConfig {
    /// arti's defaults, storing under `state_dir` and `cache_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> TorConfig {
        TorConfig {
            state_dir: state_dir.into(),
            cache_dir: cache_dir.into(),
            arti_config: None,
            bootstrap_timeout: Duration::from_secs(180),
        }
    }

    /// The arti client configuration this describes.
    pub fn build(&self) -> io::Result<TorClientConfig> {
        let mut builder = match &self.arti_config {
            None => TorClientConfigBuilder::default(),
            Some(path) => read_arti_config(path)?,
        };
        builder
            .storage()
            .state_dir(path_resolver_path(&self.state_dir))
            .cache_dir(path_resolver_path(&self.cache_dir));
        builder.build().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the arti configuration is not usable: {e}"),
            )
        })
    }
}

fn path_resolver_path(p: &Path) -> arti_client::config::CfgPath {
    arti_client::config::CfgPath::new_literal(p)
}

/// Reads an arti configuration file.
fn read_arti_config(path: &Path) -> io::Result<TorClientConfigBuilder> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading the arti configuration {}: {e}", path.display()),
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the arti configuration {}: {e}", path.display()),
        )
    })
}

/// Streams through Tor, from an arti client in this process.
pub struct TorDialer {
    client: Arc<TorClient<PreferredRuntime>>,
    /// One isolation token per destination: one circuit per peer.
    isolation: Mutex<HashMap<Contact, IsolationToken>>,
}

impl fmt::Debug for TorDialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorDialer").finish_non_exhaustive()
    }
}

/// How far bootstrapping has come, as arti reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// From 0 to 1.
    pub fraction: f32,
    /// arti's own words for it.
    pub status: String,
}

impl TorDialer {
    /// Starts arti and waits until it can carry streams, calling
    /// `progress` whenever bootstrapping moves on; fails after
    /// `config.bootstrap_timeout` (saying how far it got, and why arti
    /// thinks it is stuck, if it says).
    pub async fn bootstrap(
        config: &TorConfig,
        progress: impl Fn(&Progress) + Send + 'static,
    ) -> io::Result<TorDialer> {
        install_crypto_provider();
        let cfg = config.build()?;
        for dir in [&config.state_dir, &config.cache_dir] {
            create_private_dir(dir)?;
        }
        let client = TorClient::builder()
            .config(cfg)
            .create_unbootstrapped_async()
            .await
            .map_err(|e| io::Error::other(format!("starting arti: {e}")))?;
        let mut events = client.bootstrap_events();
        let reporter = tokio::spawn(async move {
            let mut last = -1.0f32;
            while let Some(status) = events.next().await {
                let fraction = status.as_frac();
                if fraction > last {
                    last = fraction;
                    progress(&Progress {
                        fraction,
                        status: status.to_string(),
                    });
                }
                if status.ready_for_traffic() {
                    return;
                }
            }
        });
        let r = tokio::time::timeout(config.bootstrap_timeout, client.bootstrap()).await;
        reporter.abort();
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("Tor is unreachable: arti could not bootstrap: {e}"),
                ));
            }
            Err(_) => {
                let s = client.bootstrap_status();
                let stuck = s
                    .blocked()
                    .map(|b| format!("; arti says: {b}"))
                    .unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Tor is unreachable: bootstrapping reached {:.0} % in {:?} ({s}){stuck}",
                        100.0 * s.as_frac(),
                        config.bootstrap_timeout
                    ),
                ));
            }
        }
        Ok(TorDialer {
            client,
            isolation: Mutex::new(HashMap::new()),
        })
    }

    /// The arti client (for onion services).
    pub fn client(&self) -> &Arc<TorClient<PreferredRuntime>> {
        &self.client
    }

    fn isolation_for(&self, contact: &Contact) -> IsolationToken {
        let mut map = self
            .isolation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_ISOLATED && !map.contains_key(contact) {
            map.clear();
        }
        *map.entry(contact.clone())
            .or_insert_with(IsolationToken::new)
    }

    /// Opens a stream to `contact` through Tor.
    pub async fn connect(&self, contact: &Contact) -> io::Result<arti_client::DataStream> {
        let (host, port) = match contact {
            Contact::Tcp(addr) => (addr.ip().to_string(), addr.port()),
            Contact::Host { host, port } | Contact::Onion { host, port } => (host.clone(), *port),
        };
        let mut prefs = StreamPrefs::new();
        prefs.set_isolation(self.isolation_for(contact));
        prefs.connect_to_onion_services(BoolOrAuto::Explicit(true));
        let s = self
            .client
            .connect_with_prefs((host, port), &prefs)
            .await
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("Tor could not reach {}: {e}", contact.redacted()),
                )
            })?;
        tracing::trace!(contact = %contact.redacted(), "connected through Tor");
        Ok(s)
    }
}

impl Dialer for TorDialer {
    fn dial<'a>(&'a self, contact: &'a Contact) -> DialFuture<'a> {
        Box::pin(async move {
            let s = self.connect(contact).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn describe(&self) -> String {
        "tor (arti)".into()
    }

    fn is_tor(&self) -> bool {
        true
    }
}

/// Installs ring as rustls's process-wide provider unless one is.
fn install_crypto_provider() {
    // Err means another provider is installed already: that one serves.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Creates `dir` readable by its owner only, as arti insists.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))
}
