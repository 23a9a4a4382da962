//! Signed whole-directory snapshots, for clients that choose peers locally
//! and so reveal nothing about what they want.
//!
//! A [`Snapshot`] is encoded with postcard (field order as declared:
//! epoch `varint`, generated `varint` Unix s, region `opt<str>`, peers
//! `seq<AnnouncementWire>` in the layout of [`crate::msg`]) and signed with
//! Ed25519 (RFC 8032, via ring) over
//!
//! ```text
//! b"anonmirror directory v1\0" || snapshot bytes
//! ```
//!
//! Published popularity counts ([`PublishedCounts`]) are signed the same
//! way with the same key, over postcard (epoch `varint`, generated
//! `varint`, level_peers `[4]` of `varint`, counts `bytes`) and the
//! context `b"anonmirror popularity counts v1\0"`.
//!
//! The signing key is the rendezvous's own, kept in the ledger; clients pin
//! its public half next to the rendezvous's Noise key. Peers are ordered
//! by session key, which is random per session, so the order says nothing
//! about when a session opened.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::err::{Error, Result};
use crate::msg::{AnnouncementWire, ByteBuf, MAX_COUNTS, MAX_DIRECTORY};

const CONTEXT: &[u8] = b"anonmirror directory v1\0";
const COUNTS_CONTEXT: &[u8] = b"anonmirror popularity counts v1\0";

/// The popularity counts of one complete epoch, as the rendezvous
/// publishes them so that peers can select what to announce (they alone
/// know the universe the counts are debiased over).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedCounts {
    /// The epoch the counts are for (the last before `generated`'s that
    /// has any); the counts carry it too, and a reader checks they agree.
    pub epoch: u64,
    /// When they were published (Unix s).
    pub generated: u64,
    /// Live sessions per level when published, indexed by
    /// `anonmirror_privacy::Level::wire_byte` (0 `off`, 1 `open`, 2
    /// `balanced`, 3 `strict`): the N_L of the exposure sums. A session
    /// counts under the level its announcement filter declares.
    pub level_peers: [u64; 4],
    /// The summed reports in announce's `AMPC` format (opaque here).
    pub counts: ByteBuf,
}

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
    pub peers: Vec<AnnouncementWire>,
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
            .map_err(|_| Error::bug("Ed25519 key generation failed"))
    }

    /// Loads a stored key.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(SigningKey)
            .map_err(|_| Error::LedgerCorrupt("directory key"))
    }

    /// The public key clients pin.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// Encodes and signs a snapshot.
    pub fn sign(&self, snapshot: &Snapshot) -> Result<(Vec<u8>, [u8; 64])> {
        self.sign_as(CONTEXT, snapshot)
    }

    /// Encodes and signs published popularity counts.
    pub fn sign_counts(&self, counts: &PublishedCounts) -> Result<(Vec<u8>, [u8; 64])> {
        self.sign_as(COUNTS_CONTEXT, counts)
    }

    /// Each kind of signed object has its own context, so a signature over
    /// one can never pass for the other.
    fn sign_as<T: Serialize>(&self, context: &[u8], value: &T) -> Result<(Vec<u8>, [u8; 64])> {
        let bytes = postcard::to_allocvec(value)
            .map_err(|e| Error::bug_from("encoding a signed value", e))?;
        let mut msg = context.to_vec();
        msg.extend_from_slice(&bytes);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.0.sign(&msg).as_ref());
        Ok((bytes, sig))
    }
}

/// Checks a signed snapshot against the pinned `public` key and decodes it.
pub fn verify(public: &[u8; 32], bytes: &[u8], signature: &[u8; 64]) -> Result<Snapshot> {
    verify_as(
        "directory",
        CONTEXT,
        MAX_DIRECTORY,
        public,
        bytes,
        signature,
    )
}

/// Checks signed popularity counts against the pinned directory key
/// `public` and decodes them.
pub fn verify_counts(
    public: &[u8; 32],
    bytes: &[u8],
    signature: &[u8; 64],
) -> Result<PublishedCounts> {
    verify_as(
        "popularity counts",
        COUNTS_CONTEXT,
        MAX_COUNTS,
        public,
        bytes,
        signature,
    )
}

fn verify_as<T: serde::de::DeserializeOwned>(
    what: &'static str,
    context: &[u8],
    max: u64,
    public: &[u8; 32],
    bytes: &[u8],
    signature: &[u8; 64],
) -> Result<T> {
    if bytes.len() as u64 > max {
        return Err(Error::malformed(what, "too large"));
    }
    let mut msg = context.to_vec();
    msg.extend_from_slice(bytes);
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&msg, signature)
        .map_err(|_| Error::malformed(what, "signature does not verify"))?;
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| Error::malformed(what, e))?;
    if !rest.is_empty() {
        return Err(Error::malformed(what, "trailing bytes"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::ContactWire;
    use anonmirror_core::PeerKey;

    #[test]
    fn signed_snapshots_verify_and_tampering_fails() {
        let key =
            SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("gen")).expect("load");
        let snap = Snapshot {
            epoch: 3,
            generated: 100,
            region: Some("eu".into()),
            peers: vec![AnnouncementWire {
                contact: ContactWire::from(std::net::SocketAddr::from(([192, 0, 2, 1], 1))),
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

    #[test]
    fn signed_counts_verify_and_never_pass_for_a_directory() {
        let key =
            SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("gen")).expect("load");
        let counts = PublishedCounts {
            epoch: 9,
            generated: 1000,
            level_peers: [0, 1, 2, 3],
            counts: ByteBuf::from(b"AMPC...".to_vec()),
        };
        let (bytes, sig) = key.sign_counts(&counts).expect("sign");
        assert_eq!(
            verify_counts(&key.public(), &bytes, &sig).expect("valid"),
            counts
        );
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(verify_counts(&key.public(), &bytes, &bad).is_err());
        assert!(
            verify(&key.public(), &bytes, &sig).is_err(),
            "other context"
        );
    }
}
