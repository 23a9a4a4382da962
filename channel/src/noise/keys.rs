//! Static X25519 keypairs: how a responder (rendezvous, serving peer) is
//! known for a session.
//!
//! The secret half must never be printed, logged or serialised by this
//! module: `Debug` shows only the public key, and the secret is overwritten
//! (best effort, without `unsafe`) when the keypair is dropped.

use std::fmt;

use anonmirror_core::PeerKey;

use super::SUITE;
use crate::err::{Error, Result};

/// A responder's static keypair. Its public half, a [`PeerKey`], is what
/// initiators pin or look up.
pub struct StaticKeypair {
    public: PeerKey,
    secret: [u8; 32],
}

impl StaticKeypair {
    /// A fresh keypair from the operating system's randomness.
    ///
    /// Peers make a new one per session, so a key never links sessions.
    pub fn generate() -> Result<StaticKeypair> {
        let kp = super::builder(SUITE, &[])?
            .generate_keypair()
            .map_err(|e| Error::noise("generating a static keypair", e))?;
        let too_short = |_| Error::Misuse("X25519 keys are 32 bytes");
        Ok(StaticKeypair {
            public: PeerKey(kp.public.as_slice().try_into().map_err(too_short)?),
            secret: kp.private.as_slice().try_into().map_err(too_short)?,
        })
    }

    /// A keypair from stored halves (a long-lived responder, such as the
    /// rendezvous, keeps its key across restarts so that its pinned key
    /// stays valid). The halves are checked against each other with an
    /// in-memory handshake, so a corrupted store is refused rather than
    /// producing a key that no initiator can reach.
    pub fn from_parts(public: PeerKey, secret: [u8; 32]) -> Result<StaticKeypair> {
        const CHECK: &[u8] = b"anonmirror static key check";
        let mut init = super::builder(SUITE, CHECK)?
            .remote_public_key(public.as_bytes())
            .map_err(|e| Error::noise("checking a stored static key", e))?
            .build_initiator()
            .map_err(|e| Error::noise("checking a stored static key", e))?;
        let mut resp = super::builder(SUITE, CHECK)?
            .local_private_key(&secret)
            .map_err(|e| Error::noise("checking a stored static key", e))?
            .build_responder()
            .map_err(|e| Error::noise("checking a stored static key", e))?;
        let (mut msg, mut out) = ([0u8; 128], [0u8; 128]);
        let n = init
            .write_message(&[], &mut msg)
            .map_err(|e| Error::noise("checking a stored static key", e))?;
        resp.read_message(&msg[..n], &mut out)
            .map_err(|_| Error::Misuse("the stored secret does not match the stored public key"))?;
        Ok(StaticKeypair { public, secret })
    }

    /// The secret half, for the owner's own key store only: never log,
    /// print or send it.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// The public key, as initiators know it.
    pub fn public(&self) -> PeerKey {
        self.public
    }

    /// The secret key, for building the responder's handshake only.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .field("secret", &"[never printed]")
            .finish()
    }
}

impl Drop for StaticKeypair {
    fn drop(&mut self) {
        self.secret = [0; 32];
        // Keeps the compiler from eliding the dead store above.
        std::hint::black_box(&self.secret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parts_round_trips_and_refuses_mismatched_halves() {
        let a = StaticKeypair::generate().expect("keypair");
        let b = StaticKeypair::generate().expect("keypair");
        let again = StaticKeypair::from_parts(a.public(), a.secret_bytes()).expect("matches");
        assert_eq!(again.public(), a.public());
        assert_eq!(again.secret(), a.secret());
        assert!(StaticKeypair::from_parts(a.public(), b.secret_bytes()).is_err());
    }

    #[test]
    fn fresh_keys_differ_and_debug_hides_the_secret() {
        let a = StaticKeypair::generate().expect("keypair");
        let b = StaticKeypair::generate().expect("keypair");
        assert_ne!(a.public(), b.public());
        assert_ne!(a.secret(), b.secret());
        let shown = format!("{a:?}");
        assert!(shown.contains(&a.public().to_hex()), "{shown}");
        assert!(!shown.contains(&hex::encode(a.secret())), "{shown}");
        assert!(shown.contains("[never printed]"));
    }
}
