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
use std::path::PathBuf;

use anonmirror_core::PeerKey;
use serde::{Deserialize, Serialize, Serializer};

use crate::err::Error;
use crate::level::Level;
use crate::pattern::DenyPattern;
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
    pub rendezvous: Option<RendezvousConfig>,
    /// Serving peers.
    pub serve: ServeConfig,
    /// How peer connections are carried.
    pub transport: TransportConfig,
    /// What the node tells the rendezvous.
    pub announce: AnnounceConfig,
    /// Popularity floor and popularity reports.
    pub popularity: PopularityConfig,
    /// Volunteers on the same link, found without the rendezvous.
    pub lan: LanConfig,
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
pub struct RendezvousConfig {
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
    /// Serving over TCP: ask the home router to forward `listen`'s port
    /// (PCP, NAT-PMP), renewed while serving and removed at the end.
    pub map_port: bool,
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

/// `[lan]`: volunteers on the same link (mDNS/DNS-SD), both ways opt-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LanConfig {
    /// While a session serves over TCP, tell the link that this node
    /// serves (`_anonmirror._tcp`): its neighbours see its address, port,
    /// session key and level, nothing of what it holds.
    pub advertise: bool,
    /// Ask volunteers found on the link before the rendezvous's directory:
    /// they see which packages this node fetches from them.
    pub discover: bool,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogConfig {
    /// Show package names, item keys, peer addresses and tokens in logs.
    pub dangerous_log_sensitive: bool,
}

/// Port of the peer listener by default: one above the gateway's.
pub const PEER_PORT: u16 = 7879;

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
                map_port: true,
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
            lan: LanConfig {
                advertise: false,
                discover: false,
            },
            log: LogConfig {
                dangerous_log_sensitive: false,
            },
        }
    }

    /// The policy as TOML that parses back to an equal policy.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string(self).map_err(|e| Error::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
