//! anonmirror's shared vocabulary.
//!
//! Every other crate speaks in these terms: [`ItemKey`] names an item (a
//! package file named in a distribution's index) by its SHA-256, [`PeerKey`]
//! names a Noise static key, [`Epoch`] numbers the rendezvous's time slices,
//! [`Contact`] says where a peer or rendezvous is reached, [`Sensitive`]
//! keeps package names, addresses and tokens out of logs, and [`Clock`] and
//! [`Entropy`] are injected so that expiry, epochs and randomized response
//! can be tested deterministically.
//!
//! This crate must never do I/O or depend on another anonmirror crate.

#![forbid(unsafe_code)]

mod clock;
mod contact;
mod entropy;
mod err;
mod ids;
mod sensitive;

pub use clock::{Clock, ManualClock, SystemClock};
pub use contact::{Contact, ContactError};
pub use entropy::{Entropy, OsEntropy, SeededEntropy};
pub use err::{Error, ErrorKind, HasKind};
pub use ids::{Epoch, ItemKey, PeerKey};
pub use sensitive::{Sensitive, log_sensitive, set_log_sensitive};
