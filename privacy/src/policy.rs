//! The effective policy: every knob resolved, every default applied.
//!
//! A [`Policy`] is only ever built from a file (or the embedded default)
//! through [`Policy::from_toml_str`] / [`Policy::load`], which reject
//! anything doubtful, or from [`Policy::defaults_for`]. It serializes to the
//! same TOML it parses from, so `anonmirror policy show` output is itself a
//! valid policy file.
//!
//! # Level defaults
//!
//! | key | off | open | balanced | strict |
//! | --- | --- | --- | --- | --- |
//! | `transport.kind` | tcp | tcp | tor | tor |
//! | `transport.allow_tcp_fallback` | false | false | true | false |
//! | `serve.listen` | 127.0.0.1:7879 | 0.0.0.0:7879 | 127.0.0.1:7879 | 127.0.0.1:7879 |
//! | `popularity.min_holders` | 100 | 0 | 20 | 100 |
//! | `popularity.min_fraction` | 0.25 | 0 | 0.05 | 0.25 |
//! | `popularity.randomization` | strong | none | moderate | strong |
//! | `announce.exposure_budget_bits` | 0 | unlimited | 12 | 4 |
//!
//! `off` serves nobody, so its serving knobs are never used; they take the
//! strictest values so that nothing is weaker than `strict` should a later
//! change start using one of them. The exposure budget: 12 bits lets a
//! `balanced` node's announcements single it out among about 2¹² = 4096
//! equally likely nodes at worst; 4 bits (16 nodes) for `strict`, whose
//! announcements are meant to carry almost nothing beyond "serves the
//! canonical set". `off` announces nothing, so its budget is 0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anonmirror_core::PeerKey;
use serde::{Deserialize, Serialize, Serializer};

use crate::err::{Error, Invalid};
use crate::level::Level;
use crate::pattern::DenyPattern;
use crate::source;
use crate::units::{ByteSize, ExposureBudget, Rate};

/// The shipped default policy, comments and all: every key documented,
/// every key commented out but `level = "off"`.
pub const DEFAULT_POLICY: &str = include_str!("default-policy.toml");

/// Where a node looks for its policy when not given `--policy`.
pub const DEFAULT_POLICY_PATH: &str = "/etc/anonmirror/policy.toml";

/// The most clients `serve.max_clients` may allow: each holds a Noise
/// channel and a cache reader; beyond this a home machine is only
/// overcommitted, and a large count stands out among peers.
pub const MAX_CLIENTS_LIMIT: u32 = 1024;

/// The longest `announce.epoch_secs`: a year. Longer epochs would keep
/// token keys and announcements linkable for longer than any release cycle.
pub const MAX_EPOCH_SECS: u64 = 366 * 24 * 3600;

/// The smallest `cache.max_size` that can hold a package at all.
pub const MIN_CACHE_SIZE: ByteSize = ByteSize::mib(1);

/// The longest `announce.region`: a region is coarse ("eu", "us-west"),
/// never a city.
pub const MAX_REGION_LEN: usize = 16;

/// The most hash functions in `popularity.randomization.h`.
pub const MAX_HASHES: u32 = 16;

/// The effective privacy policy of a node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// How much the node serves and may reveal; the other knobs default
    /// from it.
    pub level: Level,
    /// Where state and cached items live.
    pub paths: PathsConfig,
    /// The local item cache.
    pub cache: CacheConfig,
    /// The local HTTP gateway the package manager talks to.
    pub gateway: GatewayConfig,
    /// Upstream repositories the gateway mirrors.
    #[serde(rename = "repository", skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<Repository>,
    /// The rendezvous, when one is configured; always present at a level
    /// that serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendezvous: Option<Rendezvous>,
    /// Serving peers.
    pub serve: ServeConfig,
    /// How peer connections are carried.
    pub transport: TransportConfig,
    /// What the node tells the rendezvous.
    pub announce: AnnounceConfig,
    /// Popularity floor and popularity reports.
    pub popularity: PopularityConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[paths]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathsConfig {
    /// Keys, tokens and the store's database.
    pub state_dir: PathBuf,
    /// Cached items; may be wiped at any time.
    pub cache_dir: PathBuf,
}

/// `[cache]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheConfig {
    /// Evict least recently used items beyond this size.
    pub max_size: ByteSize,
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatewayConfig {
    /// The address the package manager's HTTP requests go to.
    pub listen: SocketAddr,
}

/// What an upstream repository's index looks like, which decides how item
/// keys are read from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepositoryKind {
    /// An Arch-style pacman repository (`*.db` with `%SHA256SUM%`).
    Pacman,
    /// A Debian-style apt repository (`InRelease`, `Packages` with `SHA256`).
    Apt,
    /// A plain directory with a `SHA256SUMS` file.
    Sha256sums,
}

/// One `[[repository]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// The name under which the gateway serves it
    /// (`http://127.0.0.1:7878/NAME/…`): unique, URL-path-safe.
    pub name: String,
    /// The index format.
    pub kind: RepositoryKind,
    /// The upstream base URL (http or https).
    pub url: String,
}

/// `[rendezvous]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rendezvous {
    /// `host:port` (a host name, an IP address or an onion address).
    pub address: String,
    /// The rendezvous's pinned Noise static key, so nobody can pose as it.
    #[serde(serialize_with = "serialize_key")]
    pub key: PeerKey,
    /// The rendezvous's pinned Ed25519 directory key, which signs its
    /// directory snapshots and published popularity counts. Without it the
    /// node cannot check the counts, so above `open` it announces nothing.
    #[serde(
        serialize_with = "serialize_opt_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub directory_key: Option<[u8; 32]>,
}

fn serialize_key<S: Serializer>(key: &PeerKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&key.to_hex())
}

fn serialize_opt_key<S: Serializer>(key: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(k) => s.serialize_str(&PeerKey(*k).to_hex()),
        None => s.serialize_none(),
    }
}

/// `[serve]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServeConfig {
    /// Where peers' connections arrive (directly, or from the onion
    /// service).
    pub listen: SocketAddr,
    /// Peers served at once; the rest are told Busy.
    pub max_clients: u32,
    /// Upload bandwidth shared by all peers.
    pub upload_rate: Rate,
    /// Packages never served, announced or reported.
    pub deny: Vec<DenyPattern>,
}

impl ServeConfig {
    /// Whether `package` matches a deny pattern.
    pub fn denies(&self, package: &str) -> bool {
        self.deny.iter().any(|p| p.matches(package))
    }
}

/// How connections are carried (to peers, the rendezvous and the
/// upstream mirror).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// Direct TCP: peers learn each other's IP addresses.
    Tcp,
    /// Tor, through arti in the daemon (a build with the `tor` feature):
    /// peers learn nothing about each other's network location.
    Tor,
    /// Tor, through a Tor daemon's SOCKS5 port (`transport.socks`).
    TorSocks,
}

impl TransportKind {
    /// The transport's name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tor => "tor",
            TransportKind::TorSocks => "tor-socks",
        }
    }

    /// Whether it goes through Tor.
    pub fn is_tor(self) -> bool {
        self != TransportKind::Tcp
    }
}

/// `[transport]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransportConfig {
    /// The transport for peer connections.
    pub kind: TransportKind,
    /// With `kind = tor`: use direct TCP when Tor is unavailable, which
    /// shows this node's address to the peers it then talks to.
    pub allow_tcp_fallback: bool,
    /// Let a `strict` policy use clearnet TCP at all (as `kind`, as a
    /// fallback, or by listening on a non-loopback address).
    pub dangerous_allow_clearnet: bool,
    /// With `kind = "tor-socks"`: the Tor daemon's SOCKS5 port, on this
    /// machine.
    pub socks: SocketAddr,
    /// With `kind = "tor-socks"` at a level that serves: the Tor daemon's
    /// control port, which hosts this node's peer server as an onion
    /// service (a fresh one per session), so peers never see its address.
    pub control: ControlPort,
    /// With `kind = "tor"`: publish this node's peer server as an onion
    /// service hosted by arti (a build with the `onion-service` feature),
    /// which arti itself still calls experimental.
    pub experimental_arti_onion_service: bool,
    /// With `kind = "tor"`: an arti configuration file (arti's own TOML
    /// format) instead of arti's defaults, e.g. another Tor network's
    /// directory authorities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dangerous_arti_config: Option<PathBuf>,
}

/// Where a Tor daemon's SOCKS port usually is.
pub const DEFAULT_SOCKS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9050);

/// Where Debian's Tor daemon has its control socket
/// (`/usr/share/tor/tor-service-defaults-torrc`), with cookie
/// authentication.
pub const DEFAULT_CONTROL: &str = "/run/tor/control";

/// Where a Tor daemon's control port is (`transport.control`): Tor's
/// `ControlPort` (a TCP address) or its `ControlSocket` (a Unix socket).
///
/// Written in the policy as `"127.0.0.1:9051"` or `"/run/tor/control"`:
/// text that is an IP address and port is the former, anything else a
/// path. The policy insists on a loopback address or an absolute
/// path: whoever holds the control connection runs this node's onion
/// service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ControlPort {
    /// A TCP port on this machine (Tor's `ControlPort`).
    Tcp(SocketAddr),
    /// A Unix socket (Tor's `ControlSocket`).
    Unix(PathBuf),
}

impl ControlPort {
    /// Reads the policy's text: an IP address and port, else a path.
    pub fn parse(text: &str) -> ControlPort {
        match text.parse::<SocketAddr>() {
            Ok(addr) => ControlPort::Tcp(addr),
            Err(_) => ControlPort::Unix(PathBuf::from(text)),
        }
    }

    /// Debian's: [`DEFAULT_CONTROL`].
    pub fn debian() -> ControlPort {
        ControlPort::Unix(PathBuf::from(DEFAULT_CONTROL))
    }
}

impl std::fmt::Display for ControlPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlPort::Tcp(addr) => write!(f, "{addr}"),
            ControlPort::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Serialize for ControlPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ControlPort::Tcp(addr) => s.collect_str(addr),
            ControlPort::Unix(path) => match path.to_str() {
                Some(text) => s.serialize_str(text),
                None => Err(serde::ser::Error::custom(format!(
                    "transport.control: `{}` is not UTF-8",
                    path.display()
                ))),
            },
        }
    }
}

impl<'de> Deserialize<'de> for ControlPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|text| ControlPort::parse(&text))
    }
}

/// `[announce]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnnounceConfig {
    /// A coarse region ("eu") so clients can prefer near peers; none by
    /// default, since even a region narrows down who a node is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The most a node's announcements may reveal per epoch.
    pub exposure_budget_bits: ExposureBudget,
    /// The epoch length in seconds: announcements, token keys and
    /// popularity reports change only at epoch boundaries.
    pub epoch_secs: u64,
}

/// `[popularity]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PopularityConfig {
    /// Serve an item only when at least this many nodes hold it …
    pub min_holders: u32,
    /// … and at least this fraction of the swarm does, so holding it says
    /// little about who you are.
    pub min_fraction: f64,
    /// How popularity reports are randomized.
    pub randomization: Randomization,
}

/// RAPPOR parameters for popularity reports (Erlingsson et al., 2014).
///
/// "No randomization" is not a separate switch: it is the identity
/// parameters `f = 0, p = 0, q = 1` ([`Randomization::NONE`]), under which
/// every report is the true Bloom filter and ε is infinite.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Randomization {
    /// Hash functions per item in the Bloom filter.
    pub h: u32,
    /// Permanent randomized response: the probability a bit is replaced by
    /// a coin flip, once per item and kept.
    pub f: f64,
    /// Instantaneous randomized response: the probability of reporting 1
    /// for a permanent bit of 0.
    pub p: f64,
    /// … and for a permanent bit of 1.
    pub q: f64,
}

impl Randomization {
    /// Reports are the truth (level `open`).
    pub const NONE: Randomization = Randomization {
        h: 1,
        f: 0.0,
        p: 0.0,
        q: 1.0,
    };
    /// Level `balanced`: ε∞ = 2·ln 3 ≈ 2.197.
    pub const MODERATE: Randomization = Randomization {
        h: 1,
        f: 0.5,
        p: 0.5,
        q: 0.75,
    };
    /// Level `strict`: ε∞ = 2·ln(5/3) ≈ 1.022.
    pub const STRONG: Randomization = Randomization {
        h: 1,
        f: 0.75,
        p: 0.5,
        q: 0.75,
    };

    /// The long-run differential-privacy bound of the permanent randomized
    /// response, ε∞ = 2h·ln((1 − f/2)/(f/2)); infinite when `f = 0`.
    pub fn epsilon_inf(&self) -> f64 {
        if self.f <= 0.0 {
            return f64::INFINITY;
        }
        2.0 * f64::from(self.h) * ((1.0 - self.f / 2.0) / (self.f / 2.0)).ln()
    }

    /// Whether reports are randomized at all (false for
    /// [`Randomization::NONE`]).
    pub fn randomizes(&self) -> bool {
        !(self.f == 0.0 && self.p == 0.0 && self.q == 1.0)
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogConfig {
    /// Show package names, item keys, peer addresses and tokens in logs.
    pub dangerous_log_sensitive: bool,
}

/// Port of the peer listener by default: one above the gateway's.
const PEER_PORT: u16 = 7879;

impl Policy {
    /// The defaults of `level`, before any file is read.
    ///
    /// At a level that serves this lacks the rendezvous, so it does not pass
    /// [`Policy::validate`] until one is set.
    pub fn defaults_for(level: Level) -> Policy {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (transport, fallback, listen_ip, min_holders, min_fraction, randomization, budget) =
            match level {
                Level::Off => (
                    TransportKind::Tcp,
                    false,
                    loopback,
                    100,
                    0.25,
                    Randomization::STRONG,
                    ExposureBudget::Bits(0.0),
                ),
                Level::Open => (
                    TransportKind::Tcp,
                    false,
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    0,
                    0.0,
                    Randomization::NONE,
                    ExposureBudget::Unlimited,
                ),
                Level::Balanced => (
                    TransportKind::Tor,
                    true,
                    loopback,
                    20,
                    0.05,
                    Randomization::MODERATE,
                    ExposureBudget::Bits(12.0),
                ),
                Level::Strict => (
                    TransportKind::Tor,
                    false,
                    loopback,
                    100,
                    0.25,
                    Randomization::STRONG,
                    ExposureBudget::Bits(4.0),
                ),
            };
        Policy {
            level,
            paths: PathsConfig {
                state_dir: PathBuf::from("/var/lib/anonmirror"),
                cache_dir: PathBuf::from("/var/cache/anonmirror"),
            },
            cache: CacheConfig {
                max_size: ByteSize::gib(10),
            },
            gateway: GatewayConfig {
                listen: SocketAddr::new(loopback, 7878),
            },
            repositories: Vec::new(),
            rendezvous: None,
            serve: ServeConfig {
                listen: SocketAddr::new(listen_ip, PEER_PORT),
                max_clients: 8,
                upload_rate: Rate::mib_per_sec(2),
                deny: Vec::new(),
            },
            transport: TransportConfig {
                kind: transport,
                allow_tcp_fallback: fallback,
                dangerous_allow_clearnet: false,
                socks: DEFAULT_SOCKS,
                control: ControlPort::debian(),
                experimental_arti_onion_service: false,
                dangerous_arti_config: None,
            },
            announce: AnnounceConfig {
                region: None,
                exposure_budget_bits: budget,
                epoch_secs: 24 * 3600,
            },
            popularity: PopularityConfig {
                min_holders,
                min_fraction,
                randomization,
            },
            log: LogConfig {
                dangerous_log_sensitive: false,
            },
        }
    }

    /// Parse and validate a policy.
    pub fn from_toml_str(src: &str) -> Result<Policy, Error> {
        source::parse(src, None, None)
    }

    /// Parse and validate a policy, with `level` replacing the file's own
    /// (the file's explicit keys still override the new level's defaults).
    pub fn from_toml_str_with_level(src: &str, level: Level) -> Result<Policy, Error> {
        source::parse(src, None, Some(level))
    }

    /// Read, parse and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        Self::load_inner(path, None)
    }

    /// Read, parse and validate a policy file, with `level` replacing the
    /// file's own.
    pub fn load_with_level(path: &Path, level: Level) -> Result<Policy, Error> {
        Self::load_inner(path, Some(level))
    }

    fn load_inner(path: &Path, level: Option<Level>) -> Result<Policy, Error> {
        let src = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        source::parse(&src, Some(path), level)
    }

    /// The embedded default policy ([`DEFAULT_POLICY`]), optionally at
    /// another level.
    pub fn embedded_default(level: Option<Level>) -> Result<Policy, Error> {
        source::parse(DEFAULT_POLICY, None, level)
    }

    /// Check ranges and contradictions, for a policy built or changed in
    /// code. Policies from [`Policy::from_toml_str`] have passed already.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(Error::from)
    }

    /// The policy as TOML that parses back to an equal policy.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string(self).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Every range and contradiction check, in the order of the file.
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        check_dir("paths.state_dir", &self.paths.state_dir)?;
        check_dir("paths.cache_dir", &self.paths.cache_dir)?;
        if self.cache.max_size < MIN_CACHE_SIZE {
            return Err(Invalid::new(
                "cache.max_size",
                format!(
                    "must be at least {MIN_CACHE_SIZE}, got {}",
                    self.cache.max_size
                ),
            )
            .hint("write a size like \"10 GiB\""));
        }
        self.check_repositories()?;
        self.check_rendezvous()?;
        if !(1..=MAX_CLIENTS_LIMIT).contains(&self.serve.max_clients) {
            return Err(Invalid::new(
                "serve.max_clients",
                format!(
                    "must be between 1 and {MAX_CLIENTS_LIMIT}, got {}",
                    self.serve.max_clients
                ),
            )
            .hint("to serve nobody, set level = \"off\" instead"));
        }
        if self.serve.upload_rate.bytes_per_sec() == 0 {
            return Err(Invalid::new("serve.upload_rate", "must be more than 0")
                .hint("to serve nobody, set level = \"off\" instead"));
        }
        self.check_transport()?;
        self.check_announce()?;
        self.check_popularity()
    }

    fn check_repositories(&self) -> Result<(), Invalid> {
        for (i, repo) in self.repositories.iter().enumerate() {
            let key = |k: &str| format!("repository[{i}].{k}");
            check_repo_name(&repo.name).map_err(|m| {
                Invalid::new(key("name"), m)
                    .hint("use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with '.'")
            })?;
            if let Some(j) = self.repositories[..i]
                .iter()
                .position(|r| r.name == repo.name)
            {
                return Err(Invalid::new(
                    key("name"),
                    format!("`{}` is already the name of repository[{j}]", repo.name),
                )
                .hint("each repository needs its own name: it is its path on the gateway"));
            }
            check_url(&repo.url).map_err(|m| {
                Invalid::new(key("url"), m).hint(
                    "write the upstream's base URL, e.g. \"https://mirror.example.org/repo/\"",
                )
            })?;
        }
        Ok(())
    }

    fn check_rendezvous(&self) -> Result<(), Invalid> {
        match &self.rendezvous {
            None if self.level.serves() => Err(Invalid::new(
                "rendezvous.key",
                format!(
                    "missing: level = \"{}\" serves peers, which needs a rendezvous",
                    self.level
                ),
            )
            .hint(
                "set rendezvous.address and rendezvous.key (its pinned public key), \
                 or level = \"off\" to serve nobody",
            )),
            None => Ok(()),
            // The all-zero X25519 point is of low order: Diffie-Hellman
            // with it yields zero, so pinning it would pin nothing.
            Some(r) if r.key.as_bytes() == &[0; 32] => Err(Invalid::new(
                "rendezvous.key",
                "the all-zero key is not a public key",
            )
            .hint("copy the key the rendezvous's operator publishes")),
            Some(r) => check_host_port(&r.address).map_err(|m| {
                Invalid::new("rendezvous.address", m)
                    .hint("write host:port, e.g. \"rendezvous.example.org:7880\"")
            }),
        }
    }

    fn check_transport(&self) -> Result<(), Invalid> {
        let t = &self.transport;
        if !t.socks.ip().is_loopback() {
            return Err(Invalid::new(
                "transport.socks",
                format!(
                    "{} is not on this machine: the connection to the SOCKS port is plain TCP",
                    t.socks
                ),
            )
            .hint("run the Tor daemon here, e.g. socks = \"127.0.0.1:9050\""));
        }
        let control_hint = "write the Tor daemon's ControlPort on this machine, e.g. \
                            \"127.0.0.1:9051\", or the absolute path of its ControlSocket, \
                            e.g. \"/run/tor/control\"";
        match &t.control {
            ControlPort::Tcp(addr) if !addr.ip().is_loopback() => {
                return Err(Invalid::new(
                    "transport.control",
                    format!(
                        "{addr} is not on this machine: the connection to the control port \
                         is plain TCP, and whoever holds it runs this node's onion service"
                    ),
                )
                .hint(control_hint));
            }
            ControlPort::Tcp(addr) if addr.port() == 0 => {
                return Err(Invalid::new("transport.control", "port 0").hint(control_hint));
            }
            ControlPort::Unix(path) if !path.is_absolute() => {
                return Err(Invalid::new(
                    "transport.control",
                    format!(
                        "`{}` is neither an IP address and port nor an absolute path",
                        path.display()
                    ),
                )
                .hint(control_hint));
            }
            _ => {}
        }
        if let Some(path) = &t.dangerous_arti_config {
            check_dir("transport.dangerous_arti_config", path)?;
        }
        if t.experimental_arti_onion_service && t.kind != TransportKind::Tor {
            return Err(Invalid::new(
                "transport.experimental_arti_onion_service",
                format!(
                    "arti hosts onion services only with kind = \"tor\", not \"{}\"",
                    t.kind.as_str()
                ),
            )
            .hint("set kind = \"tor\", or remove this key"));
        }
        if self.level != Level::Strict || t.dangerous_allow_clearnet {
            return Ok(());
        }
        let hint = "strict requires Tor; set transport.dangerous_allow_clearnet = true \
                    to allow this, which weakens privacy";
        if t.kind == TransportKind::Tcp {
            return Err(Invalid::new(
                "transport.kind",
                "level = \"strict\" contradicts kind = \"tcp\"",
            )
            .hint(hint));
        }
        if t.allow_tcp_fallback {
            return Err(Invalid::new(
                "transport.allow_tcp_fallback",
                "level = \"strict\" contradicts a TCP fallback",
            )
            .hint(hint));
        }
        if !self.serve.listen.ip().is_loopback() {
            return Err(Invalid::new(
                "serve.listen",
                format!(
                    "level = \"strict\" serves through an onion service only, but {} is \
                     reachable from the network",
                    self.serve.listen
                ),
            )
            .hint(
                "listen on 127.0.0.1, or set transport.dangerous_allow_clearnet = true \
                 to allow this, which weakens privacy",
            ));
        }
        Ok(())
    }

    fn check_announce(&self) -> Result<(), Invalid> {
        let a = &self.announce;
        if let Some(region) = &a.region {
            let ok = !region.is_empty()
                && region.len() <= MAX_REGION_LEN
                && region.starts_with(|c: char| c.is_ascii_lowercase())
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(Invalid::new(
                    "announce.region",
                    format!("`{region}` is not a coarse region name"),
                )
                .hint(format!(
                    "up to {MAX_REGION_LEN} of a-z 0-9 -, starting with a letter, e.g. \"eu\""
                )));
            }
        }
        if let ExposureBudget::Bits(bits) = a.exposure_budget_bits
            && !(bits.is_finite() && bits >= 0.0)
        {
            return Err(Invalid::new(
                "announce.exposure_budget_bits",
                format!("must be a number of bits ≥ 0, got {bits}"),
            )
            .hint("write \"unlimited\" for no budget"));
        }
        if !(1..=MAX_EPOCH_SECS).contains(&a.epoch_secs) {
            return Err(Invalid::new(
                "announce.epoch_secs",
                format!(
                    "must be between 1 and {MAX_EPOCH_SECS} seconds, got {}",
                    a.epoch_secs
                ),
            )
            .hint("the usual epoch is a day: 86400"));
        }
        Ok(())
    }

    fn check_popularity(&self) -> Result<(), Invalid> {
        let p = &self.popularity;
        let fraction = p.min_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Invalid::new(
                "popularity.min_fraction",
                format!("must be between 0 and 1, got {fraction}"),
            )
            .hint("a fraction of the swarm: 0.05 is 5 %"));
        }
        let r = &p.randomization;
        if !(1..=MAX_HASHES).contains(&r.h) {
            return Err(Invalid::new(
                "popularity.randomization.h",
                format!("must be between 1 and {MAX_HASHES}, got {}", r.h),
            ));
        }
        if !(0.0..1.0).contains(&r.f) {
            return Err(Invalid::new(
                "popularity.randomization.f",
                format!("must be at least 0 and below 1, got {}", r.f),
            )
            .hint("0 disables permanent randomization; 1 would erase every report"));
        }
        for (name, v) in [("p", r.p), ("q", r.q)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Invalid::new(
                    format!("popularity.randomization.{name}"),
                    format!("must be a probability between 0 and 1, got {v}"),
                ));
            }
        }
        if r.q <= r.p {
            return Err(Invalid::new(
                "popularity.randomization.q",
                format!("must be greater than p = {}, got {}", r.p, r.q),
            )
            .hint("q is the chance of reporting a held item, p of reporting one not held"));
        }
        Ok(())
    }
}

/// A directory must be absolute: a relative one would depend on where the
/// daemon happens to be started.
fn check_dir(key: &str, dir: &Path) -> Result<(), Invalid> {
    if dir.is_absolute() {
        Ok(())
    } else {
        Err(
            Invalid::new(key, format!("`{}` is not an absolute path", dir.display()))
                .hint("write a path starting with /"),
        )
    }
}

fn check_repo_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{name}` must be 1 to 64 characters long"));
    }
    if name.starts_with('.') {
        return Err(format!("`{name}` must not start with '.'"));
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "`{name}` contains {c:?}, which is not URL-path-safe"
        )),
        None => Ok(()),
    }
}

/// A minimal URL check: scheme http or https, a host, nothing that would
/// need escaping. Enough to catch typos without a URL parser dependency;
/// the fetcher parses it fully.
fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("`{url}` is not a URL"));
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!(
            "scheme `{scheme}` is not supported: expected one of http, https"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}` holds credentials, which would end up in logs and on disk"
        ));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{url}` contains {c:?}"));
    }
    Ok(())
}

/// `host:port`, where host may be a name, an onion address, an IPv4
/// address or a bracketed IPv6 address.
fn check_host_port(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` has no port"));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("`{address}` has no valid port"));
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if host_ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a host name or IP address"))
    }
}

#[cfg(test)]
mod tests;
