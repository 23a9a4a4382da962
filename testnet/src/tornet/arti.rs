//! arti's configuration for a [`TorNet`], in arti's own TOML format (the
//! format of arti's `arti-example-config.toml`, which
//! `arti_client::config::TorClientConfigBuilder` deserializes).
//!
//! Key names are those of arti-client 0.47 (`tor-dircommon`'s
//! `NetworkConfig`, `AuthorityContacts` and `FallbackDir`; `tor-circmgr`'s
//! `PathConfig`; arti-client's `StorageConfig` and `ClientAddrConfig`;
//! `fs-mistrust`'s `Mistrust`; `tor-guardmgr`'s `VanguardConfig`). A
//! misspelt key is ignored without a word by plain serde, so the test
//! that builds an arti client from this text is what checks them.
//!
//! Everything here weakens a client in ways only a test network may: no
//! relay family by subnet, local addresses allowed, files trusted whoever
//! owns them. None of it belongs in a default configuration.

use std::fmt::Write as _;
use std::path::Path;

use super::{Role, TorNet};

impl TorNet {
    /// An arti client configuration (TOML) for this network, with arti's
    /// state and cache in `state_dir` and `cache_dir`:
    ///
    /// - `[tor_network]`: the authorities' v3 identities, and every
    ///   authority as a fallback cache (arti insists on fallbacks when the
    ///   authorities are not the default ones) with its RSA and Ed25519
    ///   identities and ORPort; the authorities' upload, download and vote
    ///   addresses too, so no default address of the public network is left
    ///   in the configuration;
    /// - `[path_rules]`: subnet prefixes longer than an address (33 and
    ///   129), since every relay is on 127.0.0.1 and would otherwise count
    ///   as one family, leaving no path;
    /// - `[address_filter] allow_local_addrs`: streams to 127.0.0.1 and to
    ///   the namespace's private addresses;
    /// - `[storage]`: the directories, as literal paths (no `${…}`
    ///   expansion), and `dangerously_trust_everyone`, since temporary
    ///   directories are world-writable up the tree;
    /// - `[vanguards] mode = "disabled"`: vanguards need more relays than
    ///   the network has.
    pub fn arti_config_toml(&self, state_dir: &Path, cache_dir: &Path) -> String {
        let authorities: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Authority)
            .collect();
        let list = |items: Vec<String>| items.join(", ");

        let mut t = String::from(
            "# arti configuration for anonmirror-testnet's private Tor network.\n\
             # Test-only: it trusts local addresses and every file owner.\n\n\
             [tor_network.authorities]\n",
        );
        let v3idents = authorities
            .iter()
            .filter_map(|a| a.v3ident.as_deref().map(toml_string))
            .collect();
        let dir_addrs = list(
            authorities
                .iter()
                .filter_map(|a| a.dir_port)
                .map(|p| format!("[\"127.0.0.1:{p}\"]"))
                .collect(),
        );
        let _ = writeln!(t, "v3idents = [{}]", list(v3idents));
        let _ = writeln!(t, "uploads = [{dir_addrs}]");
        let _ = writeln!(t, "downloads = [{dir_addrs}]");
        let _ = writeln!(t, "votes = [{dir_addrs}]");
        for a in &authorities {
            let _ = write!(
                t,
                "\n[[tor_network.fallback_caches]]\n\
                 rsa_identity = {}\n\
                 ed_identity = {}\n\
                 orports = [\"127.0.0.1:{}\"]\n",
                toml_string(&a.rsa_fingerprint),
                toml_string(&a.ed_identity),
                a.or_port
            );
        }
        let _ = write!(
            t,
            "\n[path_rules]\n\
             ipv4_subnet_family_prefix = 33\n\
             ipv6_subnet_family_prefix = 129\n\
             \n[address_filter]\n\
             allow_local_addrs = true\n\
             \n[storage]\n\
             state_dir = {{ literal = {} }}\n\
             cache_dir = {{ literal = {} }}\n\
             \n[storage.permissions]\n\
             dangerously_trust_everyone = true\n\
             \n[vanguards]\n\
             mode = \"disabled\"\n",
            toml_string(&state_dir.to_string_lossy()),
            toml_string(&cache_dir.to_string_lossy()),
        );
        t
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::toml_string;

    #[test]
    fn toml_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(toml_string("/tmp/a"), "\"/tmp/a\"");
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
