//! Signed whole-directory snapshots, for clients that choose peers locally
//! and so reveal nothing about what they want.
//!
//! A [`Snapshot`] is encoded with postcard (field order as declared:
//! epoch `varint`, generated `varint` Unix s, region `opt<str>`, peers
//! `seq<Announcement>` in the layout of [`crate::msg`]) and signed with
//! Ed25519 (RFC 8032, via ring) over
//!
//! ```text
//! b"anonmirror directory v1\0" || snapshot bytes
//! ```
//!
//! The signing key is the rendezvous's own, kept in the store; clients pin
//! its public half next to the rendezvous's Noise key. Peers are ordered
//! by session key, which is random per session, so the order says nothing
//! about when a session opened.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::err::{Error, Result};
use crate::msg::{Announcement, MAX_DIRECTORY};

const CONTEXT: &[u8] = b"anonmirror directory v1\0";

/// Every live announcement of a region at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The epoch the filters belong to.
    pub epoch: u64,
    /// When it was taken (Unix s).
    pub generated: u64,
    /// The region, or all.
    pub region: Option<String>,
    /// The sessions' announcements.
    pub peers: Vec<Announcement>,
}

/// The rendezvous's directory signing key.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", hex::encode(self.public()))
    }
}

impl SigningKey {
    /// A fresh key as PKCS#8 bytes (to store), from the OS's randomness.
    pub fn generate_pkcs8() -> Result<Vec<u8>> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| Error::Internal("Ed25519 key generation failed".into()))
    }

    /// Loads a stored key.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(SigningKey)
            .map_err(|e| Error::store(format!("directory key: {e}")))
    }

    /// The public key clients pin.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// Encodes and signs a snapshot.
    pub fn sign(&self, snapshot: &Snapshot) -> Result<(Vec<u8>, [u8; 64])> {
        let bytes = postcard::to_allocvec(snapshot).map_err(|e| Error::Internal(e.to_string()))?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&bytes);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.0.sign(&msg).as_ref());
        Ok((bytes, sig))
    }
}

/// Checks a signed snapshot against the pinned `public` key and decodes it.
pub fn verify(public: &[u8; 32], bytes: &[u8], signature: &[u8; 64]) -> Result<Snapshot> {
    if bytes.len() as u64 > MAX_DIRECTORY {
        return Err(Error::malformed("directory", "too large"));
    }
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(bytes);
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&msg, signature)
        .map_err(|_| Error::malformed("directory", "signature does not verify"))?;
    let (snap, rest) = postcard::take_from_bytes::<Snapshot>(bytes)
        .map_err(|e| Error::malformed("directory", e))?;
    if !rest.is_empty() {
        return Err(Error::malformed("directory", "trailing bytes"));
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Contact;
    use anonmirror_core::PeerKey;

    #[test]
    fn signed_snapshots_verify_and_tampering_fails() {
        let key =
            SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("gen")).expect("load");
        let snap = Snapshot {
            epoch: 3,
            generated: 100,
            region: Some("eu".into()),
            peers: vec![Announcement {
                contact: Contact::from(std::net::SocketAddr::from(([192, 0, 2, 1], 1))),
                key: PeerKey([1; 32]),
                max_clients: 1,
                upload_rate: 1,
                region: Some("eu".into()),
                snapshots: vec![],
                filter: vec![5; 10],
            }],
        };
        let (bytes, sig) = key.sign(&snap).expect("sign");
        assert_eq!(verify(&key.public(), &bytes, &sig).expect("valid"), snap);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(verify(&key.public(), &bad, &sig).is_err());
        let other =
            SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("gen")).expect("load");
        assert!(verify(&other.public(), &bytes, &sig).is_err());
    }
}
