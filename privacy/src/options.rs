//! The policy file as written: every key optional, no key unknown.
//!
//! These structs mirror the file's tables one to one. `None` means "not
//! written, take the level's default"; resolution into a
//! [`Policy`] happens in one place, [`Options::resolve`], so
//! that no default is applied anywhere else. `deny_unknown_fields` on every
//! table is what turns a misspelt key into an error instead of a silently
//! ignored line.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::err::Invalid;
use crate::level::Level;
use crate::pattern::DenyPattern;
use crate::policy::{ControlPort, Policy, RendezvousConfig, Repository, TransportKind};
use crate::units::{ByteSize, ExposureBudget, Rate};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    pub level: Option<Level>,
    #[serde(default)]
    pub paths: PathsOptions,
    #[serde(default)]
    pub cache: CacheOptions,
    #[serde(default)]
    pub gateway: GatewayOptions,
    /// `[[repository]]` tables; every key of each is required, so the
    /// effective type is used directly.
    #[serde(default, rename = "repository")]
    pub repositories: Vec<Repository>,
    #[serde(default)]
    pub rendezvous: RendezvousOptions,
    #[serde(default)]
    pub serve: ServeOptions,
    #[serde(default)]
    pub transport: TransportOptions,
    #[serde(default)]
    pub announce: AnnounceOptions,
    #[serde(default)]
    pub popularity: PopularityOptions,
    #[serde(default)]
    pub lan: LanOptions,
    #[serde(default)]
    pub log: LogOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathsOptions {
    pub state_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheOptions {
    pub max_size: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayOptions {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RendezvousOptions {
    pub address: Option<String>,
    /// Kept as text here so that a malformed key is reported by
    /// [`Options::resolve`] with the core parser's explanation.
    pub key: Option<String>,
    /// As `key`.
    pub directory_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub max_clients: Option<u32>,
    pub upload_rate: Option<Rate>,
    pub deny: Option<Vec<DenyPattern>>,
    pub map_port: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransportOptions {
    pub kind: Option<TransportKind>,
    pub allow_tcp_fallback: Option<bool>,
    pub dangerous_allow_clearnet: Option<bool>,
    pub socks: Option<SocketAddr>,
    pub control: Option<ControlPort>,
    pub experimental_arti_onion_service: Option<bool>,
    pub dangerous_arti_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnnounceOptions {
    pub region: Option<String>,
    pub exposure_budget_bits: Option<ExposureBudget>,
    pub epoch_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PopularityOptions {
    pub min_holders: Option<u32>,
    pub min_fraction: Option<f64>,
    #[serde(default)]
    pub randomization: RandomizationOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RandomizationOptions {
    pub h: Option<u32>,
    pub f: Option<f64>,
    pub p: Option<f64>,
    pub q: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LanOptions {
    pub advertise: Option<bool>,
    pub discover: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogOptions {
    pub dangerous_log_sensitive: Option<bool>,
}

/// Replace `target` with `value` when the file wrote one.
fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

impl Options {
    /// Apply the file's values over the defaults of `level` (the file's
    /// own level unless overridden). Checks only what needs parsing here;
    /// ranges and contradictions are [`Policy::check`]'s.
    pub fn resolve(self, level_override: Option<Level>) -> Result<Policy, Invalid> {
        let level = level_override.or(self.level).unwrap_or_default();
        let mut p = Policy::defaults_for(level);

        set(&mut p.paths.state_dir, self.paths.state_dir);
        set(&mut p.paths.cache_dir, self.paths.cache_dir);
        set(&mut p.cache.max_size, self.cache.max_size);
        set(&mut p.gateway.listen, self.gateway.listen);
        p.repositories = self.repositories;

        let directory_key = match self.rendezvous.directory_key {
            None => None,
            Some(text) => Some(
                text.parse::<anonmirror_core::PeerKey>()
                    .map_err(|e| {
                        Invalid::new("rendezvous.directory_key", format!("{e}")).hint(
                            "the rendezvous's Ed25519 directory key, as 64 hex digits, \
                             exactly as its operator publishes it",
                        )
                    })?
                    .0,
            ),
        };
        if directory_key.is_some() && self.rendezvous.address.is_none() {
            return Err(Invalid::new("rendezvous.address", "missing")
                .hint("a pinned directory key needs the address and key of its rendezvous"));
        }
        p.rendezvous = match (self.rendezvous.address, self.rendezvous.key) {
            (None, None) => None,
            (Some(address), Some(key)) => Some(RendezvousConfig {
                directory_key,
                address,
                key: key.parse().map_err(|e| {
                    Invalid::new("rendezvous.key", format!("{e}")).hint(
                        "the rendezvous's X25519 public key, as 64 hex digits, \
                         exactly as its operator publishes it",
                    )
                })?,
            }),
            (None, Some(_)) => {
                return Err(Invalid::new("rendezvous.address", "missing").hint(
                    "a pinned key needs the address it belongs to, e.g. \
                     address = \"rendezvous.example.org:7880\"",
                ));
            }
            (Some(_), None) => {
                return Err(Invalid::new("rendezvous.key", "missing").hint(
                    "pin the rendezvous's public key (64 hex digits) so that \
                     nobody else can pose as it",
                ));
            }
        };

        set(&mut p.serve.listen, self.serve.listen);
        set(&mut p.serve.max_clients, self.serve.max_clients);
        set(&mut p.serve.upload_rate, self.serve.upload_rate);
        set(&mut p.serve.deny, self.serve.deny);
        set(&mut p.serve.map_port, self.serve.map_port);

        set(&mut p.transport.kind, self.transport.kind);
        set(
            &mut p.transport.allow_tcp_fallback,
            self.transport.allow_tcp_fallback,
        );
        set(
            &mut p.transport.dangerous_allow_clearnet,
            self.transport.dangerous_allow_clearnet,
        );
        set(&mut p.transport.socks, self.transport.socks);
        set(&mut p.transport.control, self.transport.control);
        set(
            &mut p.transport.experimental_arti_onion_service,
            self.transport.experimental_arti_onion_service,
        );
        if self.transport.dangerous_arti_config.is_some() {
            p.transport.dangerous_arti_config = self.transport.dangerous_arti_config;
        }

        if self.announce.region.is_some() {
            p.announce.region = self.announce.region;
        }
        set(
            &mut p.announce.exposure_budget_bits,
            self.announce.exposure_budget_bits,
        );
        set(&mut p.announce.epoch_secs, self.announce.epoch_secs);

        set(&mut p.popularity.min_holders, self.popularity.min_holders);
        set(&mut p.popularity.min_fraction, self.popularity.min_fraction);
        let r = self.popularity.randomization;
        set(&mut p.popularity.randomization.h, r.h);
        set(&mut p.popularity.randomization.f, r.f);
        set(&mut p.popularity.randomization.p, r.p);
        set(&mut p.popularity.randomization.q, r.q);

        set(&mut p.lan.advertise, self.lan.advertise);
        set(&mut p.lan.discover, self.lan.discover);
        set(
            &mut p.log.dangerous_log_sensitive,
            self.log.dangerous_log_sensitive,
        );
        Ok(p)
    }
}
