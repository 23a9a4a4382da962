//! Tor in this process, through arti (feature `tor`).
//!
//! [`TorTransport::bootstrap`] starts an arti client with its state and
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
//! rustls needs a process-wide crypto provider; [`TorTransport::bootstrap`]
//! installs ring's if none is (arti's `rustls` feature does not).
//!
//! # Onion services (feature `onion-service`)
//!
//! [`TorTransport::host_onion_service`] publishes an onion service whose
//! streams a [`Listener`] yields. Each call makes a new service, under a
//! random nickname, with its identity key in arti's *ephemeral* keystore
//! (memory only): a volunteer's onion address is fresh per session and
//! nothing on disk ties two sessions' addresses together.
//!
//! A rendezvous needs the opposite: an address that stays the same, so
//! that volunteers can pin it in their policies. A client started with
//! [`OnionKeys::Persistent`] keeps onion-service keys in arti's keystore
//! under its state directory, and
//! [`TorTransport::host_named_onion_service`] publishes the service of a
//! nickname with the key stored for it (made on first use). arti still
//! calls hosting experimental (and so does the policy's
//! `experimental_arti_onion_service`); a Tor daemon's onion service, set
//! up by its operator, is the alternative. A new service takes a while to
//! become reachable (its descriptor must be published): callers retry.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arti_client::config::{BoolOrAuto, TorClientConfig};
use arti_client::{IsolationToken, StreamPrefs, TorClient};
use futures::StreamExt;
use tor_rtcompat::PreferredRuntime;

#[cfg(feature = "onion-service")]
use super::Listener;
use super::{BoxStream, ConnectFuture, Transport};
use anonmirror_core::Contact;

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
    /// Where the keys of hosted onion services live.
    pub onion_keys: OnionKeys,
}

/// Where the identity keys of the onion services a client hosts live
/// (they make the addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnionKeys {
    /// In memory only: every address is new, and nothing on disk links
    /// two runs (volunteers).
    #[default]
    Ephemeral,
    /// In arti's keystore under the state directory: a named service
    /// keeps its address across runs (the rendezvous).
    Persistent,
}

impl TorConfig {
    /// arti's defaults, storing under `state_dir` and `cache_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> TorConfig {
        TorConfig {
            state_dir: state_dir.into(),
            cache_dir: cache_dir.into(),
            arti_config: None,
            bootstrap_timeout: Duration::from_secs(180),
            onion_keys: OnionKeys::Ephemeral,
        }
    }

    /// The arti client configuration this describes: the file (if any),
    /// then ours over it (storage directories; with `onion-service` and
    /// [`OnionKeys::Ephemeral`], an in-memory keystore). A key arti does not know is an error, not
    /// silently ignored: a misspelt setting in a Tor configuration must
    /// not pass unnoticed.
    pub fn build(&self) -> io::Result<TorClientConfig> {
        use tor_config::sources::{ConfigurationSource, ConfigurationSources, MustRead};
        let where_ = || match &self.arti_config {
            Some(p) => format!("the arti configuration {}", p.display()),
            None => "arti's default configuration".into(),
        };
        let invalid = |e: &dyn fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", where_()))
        };
        let mut sources = ConfigurationSources::new_empty();
        if let Some(path) = &self.arti_config {
            let text = std::fs::read_to_string(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading the arti configuration {}: {e}", path.display()),
                )
            })?;
            sources.push_source(ConfigurationSource::from_verbatim(text), MustRead::MustRead);
        }
        sources.push_source(
            ConfigurationSource::from_verbatim(self.ours()),
            MustRead::MustRead,
        );
        let tree = sources.load().map_err(|e| invalid(&e))?;
        let r =
            tor_config::load::resolve_return_results::<TorClientConfig>(&tree, &Default::default())
                .map_err(|e| invalid(&e))?;
        if !r.unrecognized.is_empty() {
            let keys: Vec<String> = r.unrecognized.iter().map(|k| k.to_string()).collect();
            return Err(invalid(&format!(
                "unknown settings: {} (misspelt?)",
                keys.join(", ")
            )));
        }
        Ok(r.value)
    }

    /// The settings that are ours whatever the file says, as arti TOML.
    fn ours(&self) -> String {
        let literal = |p: &Path| {
            let mut t = toml::Table::new();
            t.insert(
                "literal".into(),
                toml::Value::String(p.to_string_lossy().into_owned()),
            );
            toml::Value::Table(t)
        };
        let mut storage = toml::Table::new();
        storage.insert("state_dir".into(), literal(&self.state_dir));
        storage.insert("cache_dir".into(), literal(&self.cache_dir));
        if cfg!(feature = "onion-service") && self.onion_keys == OnionKeys::Ephemeral {
            // Onion service keys in memory only: see the module docs.
            let mut primary = toml::Table::new();
            primary.insert("kind".into(), toml::Value::String("ephemeral".into()));
            let mut keystore = toml::Table::new();
            keystore.insert("primary".into(), toml::Value::Table(primary));
            storage.insert("keystore".into(), toml::Value::Table(keystore));
        }
        let mut top = toml::Table::new();
        top.insert("storage".into(), toml::Value::Table(storage));
        top.to_string()
    }
}

/// Streams through Tor, from an arti client in this process.
pub struct TorTransport {
    client: Arc<TorClient<PreferredRuntime>>,
    /// One isolation token per destination: one circuit per peer.
    isolation: Mutex<HashMap<Contact, IsolationToken>>,
}

impl fmt::Debug for TorTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorTransport").finish_non_exhaustive()
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

impl TorTransport {
    /// Starts arti and waits until it can carry streams, calling
    /// `progress` whenever bootstrapping moves on; fails after
    /// `config.bootstrap_timeout` (saying how far it got, and why arti
    /// thinks it is stuck, if it says).
    pub async fn bootstrap(
        config: &TorConfig,
        progress: impl Fn(&Progress) + Send + 'static,
    ) -> io::Result<TorTransport> {
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
        Ok(TorTransport {
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
    pub async fn open(&self, contact: &Contact) -> io::Result<arti_client::DataStream> {
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

#[cfg(feature = "onion-service")]
impl TorTransport {
    /// Publishes a new onion service (a fresh address, its key in memory
    /// only) and yields its streams to virtual port `port`; other ports
    /// are refused. It lives as long as the returned listener.
    pub async fn host_onion_service(&self, port: u16) -> io::Result<OnionListener> {
        let mut nick = [0u8; 8];
        getrandom::fill(&mut nick)
            .map_err(|e| io::Error::other(format!("drawing a nickname: {e}")))?;
        self.host_named_onion_service(&format!("anonmirror-{}", hex::encode(nick)), port)
            .await
    }

    /// Publishes the onion service called `nickname` and yields its
    /// streams to virtual port `port`. Its address comes from the key
    /// arti keeps for that nickname: the same across runs when this
    /// client was bootstrapped with [`OnionKeys::Persistent`] (the key is
    /// made on first use), fresh otherwise.
    pub async fn host_named_onion_service(
        &self,
        nickname: &str,
        port: u16,
    ) -> io::Result<OnionListener> {
        use arti_client::config::onion_service::OnionServiceConfigBuilder;
        use safelog::DisplayRedacted;
        use tor_hsservice::HsNickname;

        let nickname = HsNickname::new(nickname.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("onion service nickname `{nickname}`: {e}"),
            )
        })?;
        let mut cfg = OnionServiceConfigBuilder::default();
        cfg.nickname(nickname);
        let cfg = cfg
            .build()
            .map_err(|e| io::Error::other(format!("onion service configuration: {e}")))?;
        let (service, requests) = self
            .client
            .launch_onion_service(cfg)
            .map_err(|e| io::Error::other(format!("launching the onion service: {e}")))?
            .ok_or_else(|| io::Error::other("the onion service is disabled"))?;
        let id = service
            .onion_address()
            .ok_or_else(|| io::Error::other("the onion service has no address"))?;
        let host = id.display_unredacted().to_string();
        let (tx, streams) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            let requests = tor_hsservice::handle_rend_requests(requests);
            futures::pin_mut!(requests);
            while let Some(req) = requests.next().await {
                let wanted = matches!(
                    req.request(),
                    tor_proto::stream::IncomingStreamRequest::Begin(b) if b.port() == port
                );
                let tx = tx.clone();
                tokio::spawn(async move {
                    if wanted {
                        match req
                            .accept(tor_cell::relaycell::msg::Connected::new_empty())
                            .await
                        {
                            Ok(s) => {
                                let _ = tx.send(Box::new(s) as BoxStream).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "onion stream not accepted"),
                        }
                    } else {
                        let end = tor_cell::relaycell::msg::End::new_with_reason(
                            tor_cell::relaycell::msg::EndReason::DONE,
                        );
                        let _ = req.reject(end).await;
                    }
                });
            }
        });
        tracing::info!("onion service launched");
        Ok(OnionListener {
            contact: Contact::Onion { host, port },
            streams,
            _service: service,
            task,
        })
    }
}

/// The streams of an onion service this process hosts.
#[cfg(feature = "onion-service")]
pub struct OnionListener {
    contact: Contact,
    streams: tokio::sync::mpsc::Receiver<BoxStream>,
    /// The service runs while this is held.
    _service: Arc<tor_hsservice::RunningOnionService>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "onion-service")]
impl fmt::Debug for OnionListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnionListener").finish_non_exhaustive()
    }
}

#[cfg(feature = "onion-service")]
impl Drop for OnionListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(feature = "onion-service")]
impl Listener for OnionListener {
    type Stream = BoxStream;

    async fn accept(&mut self) -> io::Result<(BoxStream, Option<Contact>)> {
        match self.streams.recv().await {
            // An onion service never learns who connects: that is the point.
            Some(s) => Ok((s, None)),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the onion service stopped",
            )),
        }
    }

    fn local_contact(&self) -> io::Result<Contact> {
        Ok(self.contact.clone())
    }
}

impl Transport for TorTransport {
    fn connect<'a>(&'a self, contact: &'a Contact) -> ConnectFuture<'a> {
        Box::pin(async move {
            let s = self.open(contact).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(text: Option<&str>) -> (tempfile::TempDir, TorConfig) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = TorConfig::new(dir.path().join("state"), dir.path().join("cache"));
        if let Some(text) = text {
            let file = dir.path().join("arti.toml");
            std::fs::write(&file, text).expect("write");
            c.arti_config = Some(file);
        }
        (dir, c)
    }

    #[test]
    fn the_storage_directories_are_ours_whatever_the_file_says() {
        let (dir, c) = config_with(Some(
            "[storage]\nstate_dir = \"/elsewhere/state\"\n[address_filter]\nallow_local_addrs = true\n",
        ));
        let built = c.build().expect("valid");
        let shown = format!("{built:?}");
        assert!(
            shown.contains(&dir.path().join("state").display().to_string()),
            "{shown}"
        );
        assert!(!shown.contains("/elsewhere/state"), "{shown}");
        let (_dir, plain) = config_with(None);
        plain.build().expect("arti's defaults");
    }

    #[test]
    fn a_misspelt_setting_is_an_error_naming_it() {
        let (_dir, c) = config_with(Some("[address_filter]\nallow_local_adrs = true\n"));
        let e = c.build().expect_err("misspelt");
        assert!(e.to_string().contains("allow_local_adrs"), "{e}");
        assert!(e.to_string().contains("arti.toml"), "{e}");
        let (_dir, c) = config_with(Some("[storage\n"));
        assert!(c.build().is_err(), "not TOML");
        let (dir, mut c) = config_with(None);
        c.arti_config = Some(dir.path().join("missing.toml"));
        let e = c.build().expect_err("missing");
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }
}
