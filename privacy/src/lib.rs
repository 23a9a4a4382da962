//! The privacy policy: what a node may do and reveal.
//!
//! The policy is a TOML file (`/etc/anonmirror/policy.toml` or `--policy`).
//! A privacy [`Level`] sets defaults; every knob can be overridden. The
//! shipped default, [`DEFAULT_POLICY`], documents every key.
//!
//! ```
//! use anonmirror_privacy::{Level, Policy};
//!
//! let policy = Policy::from_toml_str("level = \"off\"\n[serve]\nmax_clients = 4\n")?;
//! assert_eq!(policy.level, Level::Off);
//! assert_eq!(policy.serve.max_clients, 4);
//!
//! let err = Policy::from_toml_str("[serve]\nmax_clients = 0\n").unwrap_err();
//! assert_eq!(err.key(), Some("serve.max_clients"));
//! # Ok::<(), anonmirror_privacy::Error>(())
//! ```
//!
//! This crate must never accept a policy silently: unknown keys, wrong
//! types, missing keys, out-of-range values and contradictions are errors
//! naming the key. It does no I/O beyond reading the policy file it is
//! asked to load.

#![forbid(unsafe_code)]

mod check;
mod err;
mod level;
mod options;
mod pattern;
mod policy;
mod source;
mod units;

pub use err::{Error, Invalid, Location};
pub use level::{Level, UnknownLevel};
pub use pattern::DenyPattern;
pub use policy::{
    AnnounceConfig, CacheConfig, ControlPort, DEFAULT_CONTROL, DEFAULT_POLICY, DEFAULT_POLICY_PATH,
    GatewayConfig, LanConfig, LogConfig, MAX_CLIENTS_LIMIT, MAX_EPOCH_SECS, MAX_HASHES,
    MAX_REGION_LEN, MIN_CACHE_SIZE, PEER_PORT, PathsConfig, Policy, PopularityConfig,
    Randomization, RendezvousConfig, Repository, RepositoryKind, ServeConfig, TransportConfig,
    TransportKind,
};
pub use units::{ByteSize, ExposureBudget, Rate};
