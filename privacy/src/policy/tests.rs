//! Tests of the policy: level defaults, overrides, the documented default
//! file, and one bad case per check, each asserting the key path.

use std::collections::BTreeSet;
use std::path::Path;

use anonmirror_core::{ErrorKind, HasKind};

use super::*;

/// A rendezvous section, needed by every level that serves.
const RENDEZVOUS: &str = "[rendezvous]\naddress = \"rendezvous.example.org:7880\"\n\
    key = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"\n";

fn at_level(level: &str, rest: &str) -> String {
    format!("level = \"{level}\"\n{rest}\n{RENDEZVOUS}")
}

fn parse(src: &str) -> Policy {
    match Policy::from_toml_str(src) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid policy, got: {e}\n--- policy ---\n{src}"),
    }
}

/// Parse `src`, expect it rejected for `key`, and return the message.
#[track_caller]
fn rejects(src: &str, key: &str) -> String {
    let err = match Policy::from_toml_str(src) {
        Ok(p) => panic!("accepted, expected an error about `{key}`:\n{src}\n=> {p:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert_eq!(err.key(), Some(key), "wrong key in: {msg}");
    assert!(
        msg.contains(&format!("`{key}`")),
        "key path not in message: {msg}"
    );
    assert_eq!(err.kind(), ErrorKind::LocalConfig);
    msg
}

#[test]
fn each_level_has_the_design_defaults() {
    let off = parse("");
    assert_eq!(off, Policy::defaults_for(Level::Off));
    assert_eq!(off.level, Level::Off);
    assert_eq!(off.paths.state_dir, Path::new("/var/lib/anonmirror"));
    assert_eq!(off.paths.cache_dir, Path::new("/var/cache/anonmirror"));
    assert_eq!(off.cache.max_size, ByteSize::gib(10));
    assert_eq!(off.gateway.listen.to_string(), "127.0.0.1:7878");
    assert!(off.repositories.is_empty() && off.rendezvous.is_none());
    assert_eq!(off.transport.kind, TransportKind::Tcp);
    assert_eq!(off.announce.epoch_secs, 86_400);
    assert_eq!(off.announce.exposure_budget_bits, ExposureBudget::Bits(0.0));
    assert!(!off.log.dangerous_log_sensitive);

    let open = parse(&at_level("open", ""));
    assert_eq!(open.transport.kind, TransportKind::Tcp);
    assert_eq!(open.serve.listen.to_string(), "0.0.0.0:7879");
    assert_eq!(
        (open.popularity.min_holders, open.popularity.min_fraction),
        (0, 0.0)
    );
    assert!(!open.popularity.randomization.randomizes());
    assert_eq!(
        open.announce.exposure_budget_bits,
        ExposureBudget::Unlimited
    );

    let balanced = parse(&at_level("balanced", ""));
    assert_eq!(balanced.transport.kind, TransportKind::Tor);
    assert!(balanced.transport.allow_tcp_fallback);
    assert_eq!(
        (
            balanced.popularity.min_holders,
            balanced.popularity.min_fraction
        ),
        (20, 0.05)
    );
    assert_eq!(balanced.popularity.randomization, Randomization::MODERATE);
    assert_eq!(
        balanced.announce.exposure_budget_bits,
        ExposureBudget::Bits(12.0)
    );

    let strict = parse(&at_level("strict", ""));
    assert_eq!(strict.transport.kind, TransportKind::Tor);
    assert!(!strict.transport.allow_tcp_fallback);
    assert!(!strict.transport.dangerous_allow_clearnet);
    assert!(strict.serve.listen.ip().is_loopback());
    assert_eq!(
        (
            strict.popularity.min_holders,
            strict.popularity.min_fraction
        ),
        (100, 0.25)
    );
    assert_eq!(strict.popularity.randomization, Randomization::STRONG);
    assert_eq!(
        strict.announce.exposure_budget_bits,
        ExposureBudget::Bits(4.0)
    );

    for p in [&open, &balanced, &strict] {
        assert_eq!(p.serve.max_clients, 8);
        assert_eq!(p.serve.upload_rate, Rate::mib_per_sec(2));
        let r = p.rendezvous.as_ref().expect("rendezvous set");
        assert_eq!(r.address, "rendezvous.example.org:7880");
        assert_eq!(r.key.as_bytes(), &[0x5a; 32]);
    }
}

#[test]
fn strictness_only_grows_from_open_to_strict() {
    let [open, balanced, strict] =
        [Level::Open, Level::Balanced, Level::Strict].map(Policy::defaults_for);
    assert!(open.popularity.min_holders < balanced.popularity.min_holders);
    assert!(balanced.popularity.min_holders < strict.popularity.min_holders);
    assert!(open.popularity.min_fraction < balanced.popularity.min_fraction);
    assert!(balanced.popularity.min_fraction < strict.popularity.min_fraction);
    let eps = |p: &Policy| p.popularity.randomization.epsilon_inf();
    assert!(eps(&open) > eps(&balanced) && eps(&balanced) > eps(&strict));
    assert!(open.announce.exposure_budget_bits > balanced.announce.exposure_budget_bits);
    assert!(balanced.announce.exposure_budget_bits > strict.announce.exposure_budget_bits);
}

#[test]
fn rappor_epsilon_matches_the_formula() {
    let moderate = Randomization::MODERATE.epsilon_inf();
    assert!((moderate - 2.0 * 3f64.ln()).abs() < 1e-12);
    assert!((moderate - 2.197).abs() < 1e-3);
    assert!((Randomization::STRONG.epsilon_inf() - 2.0 * (5.0f64 / 3.0).ln()).abs() < 1e-12);
    assert!(Randomization::NONE.epsilon_inf().is_infinite());
    let two_hashes = Randomization {
        h: 2,
        ..Randomization::MODERATE
    };
    assert!((two_hashes.epsilon_inf() - 2.0 * moderate).abs() < 1e-12);
    assert!(Randomization::MODERATE.randomizes() && !Randomization::NONE.randomizes());
}

#[test]
fn every_knob_overrides_its_level_default() {
    let src = at_level(
        "strict",
        r#"
[paths]
state_dir = "/srv/am/state"
cache_dir = "/srv/am/cache"
[cache]
max_size = "500 MiB"
[gateway]
listen = "127.0.0.1:9000"
[[repository]]
name = "core"
kind = "pacman"
url = "https://mirror.example.org/core/os/x86_64/"
[[repository]]
name = "debian.main"
kind = "apt"
url = "http://mirror.example.org/debian/"
[serve]
listen = "127.0.0.1:9001"
max_clients = 3
upload_rate = 65536
deny = ["*-debug", "linux-firmware-?"]
[transport]
kind = "tor"
allow_tcp_fallback = false
[announce]
region = "eu"
exposure_budget_bits = 2.5
epoch_secs = 3600
[popularity]
min_holders = 500
min_fraction = 0.5
[popularity.randomization]
h = 2
f = 0.8
p = 0.25
q = 0.5
[log]
dangerous_log_sensitive = true
"#,
    );
    let p = parse(&src);
    assert_eq!(p.level, Level::Strict);
    assert_eq!(p.paths.state_dir, Path::new("/srv/am/state"));
    assert_eq!(p.paths.cache_dir, Path::new("/srv/am/cache"));
    assert_eq!(p.cache.max_size, ByteSize::mib(500));
    assert_eq!(p.gateway.listen.port(), 9000);
    assert_eq!(p.repositories.len(), 2);
    assert_eq!(p.repositories[1].kind, RepositoryKind::Apt);
    assert_eq!(p.repositories[1].name, "debian.main");
    assert_eq!(p.serve.listen.port(), 9001);
    assert_eq!(p.serve.max_clients, 3);
    assert_eq!(p.serve.upload_rate, Rate(65536));
    assert!(p.serve.denies("glibc-debug") && p.serve.denies("linux-firmware-x"));
    assert!(!p.serve.denies("glibc") && !p.serve.denies("linux-firmware-xy"));
    assert_eq!(p.announce.region.as_deref(), Some("eu"));
    assert_eq!(p.announce.exposure_budget_bits, ExposureBudget::Bits(2.5));
    assert_eq!(p.announce.epoch_secs, 3600);
    assert_eq!(p.popularity.min_holders, 500);
    assert_eq!(p.popularity.min_fraction, 0.5);
    let r = p.popularity.randomization;
    assert_eq!((r.h, r.f, r.p, r.q), (2, 0.8, 0.25, 0.5));
    assert!(p.log.dangerous_log_sensitive);

    // Weaker-than-level values are overrides too, not contradictions.
    let open_floor = parse(&at_level("balanced", "[popularity]\nmin_holders = 0"));
    assert_eq!(open_floor.popularity.min_holders, 0);
    let unlimited = parse(&at_level(
        "strict",
        "[announce]\nexposure_budget_bits = \"unlimited\"",
    ));
    assert_eq!(
        unlimited.announce.exposure_budget_bits,
        ExposureBudget::Unlimited
    );
}

#[test]
fn sizes_and_rates_accept_integers_and_unit_strings() {
    for (written, bytes) in [
        ("10737418240", 10 << 30),
        ("\"10 GiB\"", 10 << 30),
        ("\"500 MiB\"", 500 << 20),
        ("\"1.5 GB\"", 1_500_000_000),
        ("\"2048KiB\"", 2 << 20),
    ] {
        let p = parse(&format!("[cache]\nmax_size = {written}"));
        assert_eq!(p.cache.max_size, ByteSize(bytes), "{written}");
    }
    for (written, bytes) in [
        ("1000", 1000),
        ("\"2 MiB/s\"", 2 << 20),
        ("\"512 KiB/s\"", 512 << 10),
        ("\"1 MB\"", 1_000_000),
    ] {
        let p = parse(&format!("[serve]\nupload_rate = {written}"));
        assert_eq!(p.serve.upload_rate, Rate(bytes), "{written}");
    }
}

#[test]
fn a_level_override_keeps_the_files_explicit_keys() {
    let src = at_level(
        "open",
        "[serve]\nmax_clients = 3\n[popularity]\nmin_holders = 7",
    );
    let p = Policy::from_toml_str_with_level(&src, Level::Balanced).expect("valid");
    assert_eq!(p.level, Level::Balanced);
    assert_eq!(p.serve.max_clients, 3);
    assert_eq!(p.popularity.min_holders, 7);
    // Not written in the file: the new level's default.
    assert_eq!(p.popularity.min_fraction, 0.05);
    assert_eq!(p.transport.kind, TransportKind::Tor);
    // The embedded default at a serving level lacks a rendezvous: refused.
    let err = Policy::embedded_default(Some(Level::Strict)).expect_err("no rendezvous");
    assert_eq!(err.key(), Some("rendezvous.key"));
    assert_eq!(
        Policy::embedded_default(None).expect("valid"),
        Policy::defaults_for(Level::Off)
    );
}

#[test]
fn show_output_parses_back_to_the_same_policy() {
    for level in Level::ALL {
        let src = at_level(
            level.as_str(),
            "[[repository]]\nname = \"x\"\nkind = \"sha256sums\"\n\
             url = \"https://mirror.example.org/x/\"\n[announce]\nregion = \"us-west\"\n\
             [serve]\ndeny = [\"a*\"]\nupload_rate = 1234567",
        );
        let policy = parse(&src);
        let printed = policy.to_toml().expect("serializable");
        assert_eq!(parse(&printed), policy, "{printed}");
        // And without the optional tables.
        let bare = Policy::defaults_for(level);
        let printed = bare.to_toml().expect("serializable");
        let reparsed = Policy::from_toml_str(&printed);
        if level.serves() {
            assert_eq!(
                reparsed.expect_err("no rendezvous").key(),
                Some("rendezvous.key")
            );
        } else {
            assert_eq!(reparsed.expect("valid"), bare);
        }
    }
}

// ---- the documented default file ----

/// The setting lines of the default policy, uncommented.
fn uncommented_default() -> String {
    DEFAULT_POLICY
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| !c.is_whitespace() && c != '#') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every key path of a TOML table; array-of-table entries are merged under
/// the array's name (`repository.kind`).
fn key_paths(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => key_paths(inner, &format!("{path}."), out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        key_paths(inner, &format!("{path}."), out);
                    }
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

fn paths_of(src: &str) -> BTreeSet<String> {
    let table: toml::Table = toml::from_str(src).expect("TOML");
    let mut out = BTreeSet::new();
    key_paths(&table, "", &mut out);
    out
}

#[test]
fn the_shipped_default_is_valid_and_is_level_off() {
    let shipped = Policy::from_toml_str(DEFAULT_POLICY).expect("the shipped default is valid");
    assert_eq!(shipped, Policy::defaults_for(Level::Off));
    // Nothing but `level` is live: everything else is documentation.
    assert_eq!(
        paths_of(DEFAULT_POLICY),
        BTreeSet::from(["level".to_owned()])
    );
}

#[test]
fn every_key_is_documented_in_the_default_policy() {
    let full_src = uncommented_default();
    let full = Policy::from_toml_str(&full_src).expect("the uncommented default is valid");
    let documented = paths_of(&full_src);
    let effective = paths_of(&full.to_toml().expect("serializable"));
    assert_eq!(
        documented, effective,
        "documented keys (left) differ from the effective policy's (right)"
    );
    // No level's effective policy has a key the file does not document.
    for level in Level::ALL {
        let mut p = full.clone();
        p.level = level;
        let keys = paths_of(&p.to_toml().expect("serializable"));
        assert!(keys.is_subset(&documented), "{level}: {keys:?}");
    }
    // The uncommented values are level off's defaults, apart from the keys
    // that have no default and show examples.
    let mut as_off = full;
    as_off.repositories.clear();
    as_off.rendezvous = None;
    as_off.serve.deny.clear();
    as_off.announce.region = None;
    as_off.transport.dangerous_arti_config = None;
    assert_eq!(as_off, Policy::defaults_for(Level::Off));
}

#[test]
fn every_documented_key_has_a_comment_above_it() {
    let lines: Vec<&str> = DEFAULT_POLICY.lines().collect();
    let mut settings = 0;
    for (i, line) in lines.iter().enumerate() {
        let is_setting = line.starts_with('#')
            && line[1..].starts_with(|c: char| c.is_ascii_alphabetic())
            || line.starts_with("level");
        if is_setting {
            settings += 1;
            let above = lines[..i].last().copied().unwrap_or("");
            assert!(above.starts_with("# "), "no comment above `{line}`");
        }
    }
    // One line per leaf key of the full policy.
    assert_eq!(settings, paths_of(&uncommented_default()).len());
    assert!(!DEFAULT_POLICY.to_lowercase().contains("archlinux.org"));
}

// ---- bad cases: each names its key ----

#[test]
fn unknown_keys_are_rejected_at_every_depth() {
    let msg = rejects("levle = \"off\"", "levle");
    assert!(msg.contains("expected one of `level`"), "{msg}");
    assert!(msg.contains("line 1, column 1"), "{msg}");
    rejects("[serve]\nmax_clent = 3", "serve.max_clent");
    rejects(
        "[popularity.randomization]\nepsilon = 1",
        "popularity.randomization.epsilon",
    );
    rejects(
        "[[repository]]\nname = \"a\"\nkind = \"apt\"\nurl = \"https://mirror.example.org/\"\nmirror = 1",
        "repository[0].mirror",
    );
    rejects(
        "[transport]\ndangerous_allow_everything = true",
        "transport.dangerous_allow_everything",
    );
    rejects("[servee]\nlisten = \"127.0.0.1:1\"", "servee");
}

#[test]
fn wrong_types_are_rejected() {
    let msg = rejects("[serve]\nmax_clients = \"eight\"", "serve.max_clients");
    assert!(msg.contains("line 2, column 15"), "{msg}");
    assert!(msg.contains("expected u32"), "{msg}");
    rejects("[serve]\nmax_clients = -1", "serve.max_clients");
    rejects(
        "[log]\ndangerous_log_sensitive = \"no\"",
        "log.dangerous_log_sensitive",
    );
    rejects("serve = 3", "serve");
    rejects("[gateway]\nlisten = \"localhost\"", "gateway.listen");
    rejects(
        "[popularity]\nmin_fraction = \"5 %\"",
        "popularity.min_fraction",
    );
    rejects("[cache]\nmax_size = true", "cache.max_size");
    rejects("[cache]\nmax_size = \"10 GiBs\"", "cache.max_size");
    rejects("[serve]\nupload_rate = \"fast\"", "serve.upload_rate");
    rejects(
        "[announce]\nexposure_budget_bits = \"lots\"",
        "announce.exposure_budget_bits",
    );
    let msg = rejects("level = \"paranoid\"", "level");
    assert!(msg.contains("`off`, `open`, `balanced`, `strict`"), "{msg}");
    let msg = rejects("[transport]\nkind = \"udp\"", "transport.kind");
    assert!(msg.contains("`tcp`, `tor`, `tor-socks`"), "{msg}");
}

#[test]
fn tor_settings_are_checked() {
    let msg = rejects(
        "[transport]\nkind = \"tor-socks\"\nsocks = \"192.0.2.1:9050\"",
        "transport.socks",
    );
    assert!(msg.contains("not on this machine"), "{msg}");
    let msg = rejects(
        "[transport]\nkind = \"tor-socks\"\nexperimental_arti_onion_service = true",
        "transport.experimental_arti_onion_service",
    );
    assert!(msg.contains("kind = \"tor\""), "{msg}");
    rejects(
        "[transport]\ndangerous_arti_config = \"arti.toml\"",
        "transport.dangerous_arti_config",
    );
    let p = Policy::from_toml_str(&format!(
        "level = \"strict\"\n[rendezvous]\naddress = \"rendezvous.example.org:7880\"\n\
             key = \"{}\"\n[transport]\nkind = \"tor-socks\"\nsocks = \"[::1]:9150\"",
        "11".repeat(32)
    ))
    .expect("strict over a Tor daemon");
    assert!(p.transport.kind.is_tor());
    assert_eq!(p.transport.socks.port(), 9150);
}

#[test]
fn the_tor_control_port_is_on_this_machine() {
    // Debian's control socket by default, at every level.
    for level in Level::ALL {
        assert_eq!(
            Policy::defaults_for(level).transport.control,
            ControlPort::Unix(PathBuf::from("/run/tor/control")),
            "{level}"
        );
    }
    let control = |value: &str| {
        at_level(
            "strict",
            &format!("[transport]\nkind = \"tor-socks\"\ncontrol = \"{value}\""),
        )
    };
    for (written, want) in [
        (
            "127.0.0.1:9051",
            ControlPort::Tcp(SocketAddr::from(([127, 0, 0, 1], 9051))),
        ),
        (
            "[::1]:9051",
            ControlPort::Tcp("[::1]:9051".parse().expect("addr")),
        ),
        (
            "/var/run/tor/control",
            ControlPort::Unix(PathBuf::from("/var/run/tor/control")),
        ),
    ] {
        let p = parse(&control(written));
        assert_eq!(p.transport.control, want, "{written}");
        assert_eq!(p.transport.control.to_string(), written);
        // `policy show` writes it back as it was written.
        let printed = p.to_toml().expect("serializable");
        assert!(
            printed.contains(&format!("control = \"{written}\"")),
            "{printed}"
        );
        assert_eq!(parse(&printed), p);
    }
    for (written, says) in [
        ("192.0.2.1:9051", "not on this machine"),
        ("0.0.0.0:9051", "not on this machine"),
        ("127.0.0.1:0", "port 0"),
        (
            "run/tor/control",
            "neither an IP address and port nor an absolute path",
        ),
        (
            "localhost:9051",
            "neither an IP address and port nor an absolute path",
        ),
        ("", "neither"),
    ] {
        let msg = rejects(&control(written), "transport.control");
        assert!(msg.contains(says), "{written}: {msg}");
        assert!(
            msg.contains("ControlSocket"),
            "the hint says what to write: {msg}"
        );
    }
    rejects("[transport]\ncontrol = 9051", "transport.control");
}

#[test]
fn out_of_range_values_are_rejected() {
    let msg = rejects("[serve]\nmax_clients = 0", "serve.max_clients");
    assert!(msg.contains("line 2, column 15"), "{msg}");
    rejects("[serve]\nmax_clients = 100000", "serve.max_clients");
    rejects("[serve]\nupload_rate = 0", "serve.upload_rate");
    rejects("[serve]\nupload_rate = \"0 MiB/s\"", "serve.upload_rate");
    rejects("[cache]\nmax_size = 1000", "cache.max_size");
    rejects("[paths]\nstate_dir = \"var/lib\"", "paths.state_dir");
    rejects("[paths]\ncache_dir = \"\"", "paths.cache_dir");
    rejects("[announce]\nepoch_secs = 0", "announce.epoch_secs");
    rejects("[announce]\nepoch_secs = 100000000", "announce.epoch_secs");
    rejects(
        "[announce]\nexposure_budget_bits = -1",
        "announce.exposure_budget_bits",
    );
    rejects(
        "[announce]\nexposure_budget_bits = nan",
        "announce.exposure_budget_bits",
    );
    rejects("[announce]\nregion = \"Europe/Paris\"", "announce.region");
    rejects("[announce]\nregion = \"\"", "announce.region");
    rejects(
        "[announce]\nregion = \"a-very-long-region-name\"",
        "announce.region",
    );
    rejects(
        "[popularity]\nmin_fraction = 1.5",
        "popularity.min_fraction",
    );
    rejects(
        "[popularity]\nmin_fraction = -0.1",
        "popularity.min_fraction",
    );
    rejects(
        "[popularity.randomization]\nh = 0",
        "popularity.randomization.h",
    );
    rejects(
        "[popularity.randomization]\nf = 1.0",
        "popularity.randomization.f",
    );
    rejects(
        "[popularity.randomization]\nf = -0.5",
        "popularity.randomization.f",
    );
    rejects(
        "[popularity.randomization]\np = 1.5\nq = 2",
        "popularity.randomization.p",
    );
}

#[test]
fn q_must_exceed_p() {
    let msg = rejects(
        "[popularity.randomization]\np = 0.75\nq = 0.75",
        "popularity.randomization.q",
    );
    assert!(msg.contains("greater than p"), "{msg}");
    rejects(
        "[popularity.randomization]\np = 0.8",
        "popularity.randomization.q",
    );
    // The identity parameters are the one way to say "no randomization".
    let none = parse("[popularity.randomization]\nf = 0\np = 0\nq = 1");
    assert!(!none.popularity.randomization.randomizes());
}

#[test]
fn strict_contradicts_clearnet_unless_dangerously_allowed() {
    let msg = rejects(
        &at_level("strict", "[transport]\nkind = \"tcp\""),
        "transport.kind",
    );
    assert!(msg.contains("dangerous_allow_clearnet = true"), "{msg}");
    assert!(msg.contains("line 3, column 8"), "{msg}");
    rejects(
        &at_level("strict", "[transport]\nallow_tcp_fallback = true"),
        "transport.allow_tcp_fallback",
    );
    rejects(
        &at_level("strict", "[serve]\nlisten = \"0.0.0.0:7879\""),
        "serve.listen",
    );
    let allowed = parse(&at_level(
        "strict",
        "[transport]\nkind = \"tcp\"\nallow_tcp_fallback = true\ndangerous_allow_clearnet = true\n\
         [serve]\nlisten = \"0.0.0.0:7879\"",
    ));
    assert_eq!(allowed.transport.kind, TransportKind::Tcp);
    // The same choices are ordinary at balanced.
    parse(&at_level(
        "balanced",
        "[transport]\nkind = \"tcp\"\n[serve]\nlisten = \"0.0.0.0:1\"",
    ));
}

#[test]
fn serving_needs_a_pinned_rendezvous() {
    for level in ["open", "balanced", "strict"] {
        let msg = rejects(&format!("\nlevel = \"{level}\""), "rendezvous.key");
        assert!(msg.contains("rendezvous.address"), "{msg}");
        // Nothing in the file is about a rendezvous: point at the level.
        assert!(msg.starts_with("line 2, column 9:"), "{msg}");
    }
    rejects(
        "level = \"open\"\n[rendezvous]\naddress = \"rendezvous.example.org:7880\"",
        "rendezvous.key",
    );
    rejects(
        "[rendezvous]\nkey = \"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\"",
        "rendezvous.address",
    );
    let msg = rejects(
        "[rendezvous]\naddress = \"rendezvous.example.org:7880\"\nkey = \"abcd\"",
        "rendezvous.key",
    );
    assert!(msg.contains("expected 64 hex digits, got 4"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    rejects(
        &format!(
            "[rendezvous]\naddress = \"r.example.org:1\"\nkey = \"{}\"",
            "0".repeat(64)
        ),
        "rendezvous.key",
    );
    for bad in [
        "rendezvous.example.org",
        "r.example.org:0",
        "bad host:1",
        ":80",
        "a..b:1",
    ] {
        rejects(
            &RENDEZVOUS.replace("rendezvous.example.org:7880", bad),
            "rendezvous.address",
        );
    }
    for good in [
        "192.0.2.1:7880",
        "[2001:db8::1]:7880",
        "abcdefghijklmnop.onion:443",
    ] {
        parse(&RENDEZVOUS.replace("rendezvous.example.org:7880", good));
    }
}

#[test]
fn repositories_are_checked() {
    let repo = |name: &str, kind: &str, url: &str| {
        format!("[[repository]]\nname = \"{name}\"\nkind = \"{kind}\"\nurl = \"{url}\"\n")
    };
    let good = repo("core", "pacman", "https://mirror.example.org/core/");
    let dup = format!(
        "{good}{}",
        repo("core", "apt", "https://mirror.example.org/d/")
    );
    let msg = rejects(&dup, "repository[1].name");
    assert!(msg.contains("already the name of repository[0]"), "{msg}");
    let msg = rejects(
        &format!("{good}{}", repo("x", "apt", "ftp://mirror.example.org/")),
        "repository[1].url",
    );
    assert!(msg.contains("expected one of http, https"), "{msg}");
    rejects(
        &repo("x", "apt", "mirror.example.org/x"),
        "repository[0].url",
    );
    rejects(&repo("x", "apt", "https:///x"), "repository[0].url");
    rejects(
        &repo("x", "apt", "https://user:pw@mirror.example.org/"),
        "repository[0].url",
    );
    rejects(
        &repo("x", "apt", "https://mirror.example.org/a b"),
        "repository[0].url",
    );
    for name in ["", "a/b", "..", ".hidden", "a b", &"n".repeat(65)] {
        rejects(
            &repo(name, "apt", "https://mirror.example.org/"),
            "repository[0].name",
        );
    }
    let msg = rejects(
        &format!("{good}{}", repo("y", "rpm", "https://mirror.example.org/")),
        "repository[1].kind",
    );
    assert!(msg.contains("`pacman`, `apt`, `sha256sums`"), "{msg}");
    let msg = rejects(
        &format!("{good}[[repository]]\nname = \"z\"\nkind = \"apt\"\n"),
        "repository[1].url",
    );
    assert!(msg.contains("missing field `url`"), "{msg}");
}

#[test]
fn deny_patterns_are_checked() {
    let msg = rejects(
        "[serve]\ndeny = [\"ok-*\", \"linux[0-9]\"]",
        "serve.deny[1]",
    );
    assert!(msg.contains("`*` (any run)"), "{msg}");
    rejects("[serve]\ndeny = [\"\"]", "serve.deny[0]");
    rejects("[serve]\ndeny = \"*-debug\"", "serve.deny");
}

#[test]
fn syntax_errors_have_a_location() {
    let err = Policy::from_toml_str("level = \"off\"\n[serve\n").expect_err("bad TOML");
    let invalid = err.invalid().expect("invalid");
    assert_eq!(invalid.location.map(|l| l.line), Some(2));
    assert!(err.to_string().contains("not valid TOML"), "{err}");
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("anonmirror-privacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("policy.toml");
    std::fs::write(&file, "[serve]\nmax_clients = 0\n").expect("write");
    let err = Policy::load(&file).expect_err("invalid");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2:15: `serve.max_clients`", file.display())),
        "{err}"
    );
    std::fs::write(&file, at_level("open", "")).expect("write");
    assert_eq!(Policy::load(&file).expect("valid").level, Level::Open);
    assert_eq!(
        Policy::load_with_level(&file, Level::Strict)
            .expect("valid")
            .level,
        Level::Strict
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
    let missing = Policy::load(&dir.join("nope.toml")).expect_err("missing");
    assert_eq!(missing.kind(), ErrorKind::LocalIo);
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
}

#[test]
fn validate_catches_policies_changed_in_code() {
    let mut p = Policy::defaults_for(Level::Off);
    assert!(p.validate().is_ok());
    p.serve.max_clients = 0;
    assert_eq!(
        p.validate().expect_err("0 clients").key(),
        Some("serve.max_clients")
    );
}

#[test]
fn lan_discovery_is_opt_in_and_refused_where_it_would_show_the_address() {
    for level in ["off", "open", "balanced", "strict"] {
        let p = if level == "off" {
            parse("")
        } else {
            parse(&at_level(level, ""))
        };
        assert!(!p.lan.advertise && !p.lan.discover, "{level}");
    }
    let p = parse(&at_level(
        "open",
        "[lan]\nadvertise = true\ndiscover = true",
    ));
    assert!(p.lan.advertise && p.lan.discover);
    // A gateway-only node may ask its neighbours, with no rendezvous.
    assert!(parse("[lan]\ndiscover = true").lan.discover);

    let msg = rejects(
        &at_level("strict", "[lan]\ndiscover = true"),
        "lan.discover",
    );
    assert!(msg.contains("every neighbour"), "{msg}");
    rejects(
        &at_level("strict", "[lan]\nadvertise = true"),
        "lan.advertise",
    );
    let msg = rejects("[lan]\nadvertise = true", "lan.advertise");
    assert!(msg.contains("serves nobody"), "{msg}");
    // Balanced listens on loopback for its onion service: nothing on the
    // link could connect.
    let msg = rejects(
        &at_level("balanced", "[lan]\nadvertise = true"),
        "lan.advertise",
    );
    assert!(msg.contains("cannot be reached from the link"), "{msg}");
    let p = parse(&at_level(
        "balanced",
        "[serve]\nlisten = \"0.0.0.0:7879\"\n[transport]\nkind = \"tcp\"\n[lan]\nadvertise = true",
    ));
    assert!(p.lan.advertise);
    rejects("[lan]\nadvertize = true", "lan.advertize");
    rejects("[lan]\ndiscover = \"yes\"", "lan.discover");
}
