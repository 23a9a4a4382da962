//! The daemon's roles, as a library: what `anonmirror daemon` runs and
//! `anonmirror demo` wires into a swarm.
//!
//! - [`node`]: one node, the gateway for the local package manager, its
//!   start and its stop;
//! - [`volunteer`]: the volunteer role, when the policy's level is not
//!   `off` (credentials, tokens, sessions with the rendezvous,
//!   announcements, the peer server);
//! - [`lan`]: volunteers on the same link, advertised and found with
//!   mDNS/DNS-SD when the policy opts in;
//! - [`carrier`]: what carries the node's connections (TCP, arti, a Tor
//!   daemon) and how its peers reach it;
//! - `rendezvous_onion` (feature `onion-service`): the rendezvous
//!   reachable as an onion service;
//! - [`demo`]: a whole swarm on loopback, for `anonmirror demo` and the
//!   end-to-end tests.
//!
//! Time and randomness come in through [`NodeOptions`], so the volunteer
//! runs on a manual clock in tests. Errors are typed ([`Error`]) and say
//! who is at fault.
//!
//! It must never parse a command line or print for people (that is the
//! root package's), never announce an item or open a session the policy
//! did not allow, and never link one session to another: each gets a new
//! token, a new Noise key and a new announcement.

#![forbid(unsafe_code)]

pub mod carrier;
pub mod demo;
mod err;
pub mod http;
pub mod lan;
pub mod mapping;
pub mod node;
mod options;
#[cfg(feature = "onion-service")]
pub mod rendezvous_onion;
pub mod volunteer;

pub use err::{Error, Result};
pub use node::Node;
pub use options::{NodeOptions, SharedEntropy};
pub use volunteer::Summary;
