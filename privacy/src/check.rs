//! Ranges and contradictions: the checks a resolved [`Policy`] must pass.
//!
//! They run on the effective policy, after the level's defaults and the
//! file's keys were merged, so that a contradiction between a level and an
//! explicit key is caught whichever of them supplied each side. Each check
//! names the key it rejects; [`crate::source`] adds the file, line and
//! column.

use std::net::SocketAddr;
use std::path::Path;

use crate::err::{Error, Invalid};
use crate::level::Level;
use crate::policy::{
    ControlPort, MAX_CLIENTS_LIMIT, MAX_EPOCH_SECS, MAX_HASHES, MAX_REGION_LEN, MIN_CACHE_SIZE,
    Policy, TransportKind,
};
use crate::units::ExposureBudget;

impl Policy {
    /// Check ranges and contradictions, for a policy built or changed in
    /// code. Policies from [`Policy::from_toml_str`] have passed already.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(Error::from)
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
        self.check_popularity()?;
        self.check_lan()
    }

    fn check_lan(&self) -> Result<(), Invalid> {
        let lan = &self.lan;
        if self.level == Level::Strict && !self.transport.dangerous_allow_clearnet {
            let key = match (lan.advertise, lan.discover) {
                (true, _) => "lan.advertise",
                (false, true) => "lan.discover",
                (false, false) => return Ok(()),
            };
            return Err(Invalid::new(
                key,
                "level = \"strict\" shows this machine's address to no one, \
                 and LAN discovery shows it to every neighbour on the link",
            )
            .hint(
                "remove it, choose level = \"balanced\", or set \
                 transport.dangerous_allow_clearnet = true, which weakens privacy",
            ));
        }
        if !lan.advertise {
            return Ok(());
        }
        if !self.level.serves() {
            return Err(Invalid::new(
                "lan.advertise",
                format!(
                    "level = \"{}\" serves nobody: there is nothing to advertise",
                    self.level
                ),
            )
            .hint("choose level = \"open\" or \"balanced\" to serve, or remove this key"));
        }
        if self.serve.listen.ip().is_loopback() {
            return Err(Invalid::new(
                "lan.advertise",
                format!(
                    "serve.listen {} cannot be reached from the link",
                    self.serve.listen
                ),
            )
            .hint("set serve.listen = \"0.0.0.0:7879\" and transport.kind = \"tcp\""));
        }
        Ok(())
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
