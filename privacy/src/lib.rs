//! The privacy policy: what a node may do and reveal.
//!
//! The policy is a TOML file (`/etc/anonmirror/policy.toml` or `--policy`).
//! A privacy [`Level`] sets defaults; every knob can be overridden.
//!
//! This crate must never accept a policy silently: unknown keys, wrong
//! types, out-of-range values and contradictions are errors naming the key.

#![forbid(unsafe_code)]

mod level;

pub use level::Level;
