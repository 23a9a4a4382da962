//! Identifiers: items, peers' keys, epochs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::err::Error;

fn parse_hex32(what: &'static str, s: &str) -> Result<[u8; 32], Error> {
    if s.len() != 64 {
        return Err(Error::HexLength {
            what,
            expected: 64,
            got: s.len(),
        });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| Error::HexDigit {
        what,
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// An item's name: the SHA-256 of the package file, exactly as the
/// distribution's index states it.
///
/// The key is public (anyone with the index can compute it), but *which*
/// items a peer asks for or holds is not: wrap it in
/// [`Sensitive`](crate::Sensitive) before logging.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemKey(pub [u8; 32]);

impl ItemKey {
    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as in the index.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemKey({})", self.to_hex())
    }
}

impl FromStr for ItemKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        parse_hex32("item key (SHA-256)", s).map(ItemKey)
    }
}

/// A Noise static public key (X25519): how a rendezvous or a serving peer
/// in one session is known.
///
/// Peers use a fresh static key per session, so a `PeerKey` identifies a
/// session, never a person across sessions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerKey(pub [u8; 32]);

impl PeerKey {
    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({})", self.to_hex())
    }
}

impl FromStr for PeerKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        parse_hex32("peer key", s).map(PeerKey)
    }
}

/// A rendezvous epoch: the number of whole epoch lengths since the Unix
/// epoch. Announcements, token keys and popularity reports change only at
/// epoch boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch containing `unix_secs` for epochs of `len_secs` seconds.
    ///
    /// A zero length is treated as one second rather than dividing by zero;
    /// the policy rejects it long before it reaches here.
    pub fn containing(unix_secs: u64, len_secs: u64) -> Epoch {
        Epoch(unix_secs / len_secs.max(1))
    }

    /// The following epoch.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_key_hex_round_trip() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let key: ItemKey = hex.parse().expect("valid hex");
        assert_eq!(key.to_string(), hex);
        assert_eq!(key.0[0], 0x9f);
    }

    #[test]
    fn item_key_rejects_bad_hex_with_reason() {
        let short = "abcd".parse::<ItemKey>().expect_err("too short");
        assert!(short.to_string().contains("expected 64 hex digits, got 4"));
        let bad = "zz".repeat(32).parse::<ItemKey>().expect_err("not hex");
        assert!(bad.to_string().contains("not a hex string"), "{bad}");
    }

    #[test]
    fn epoch_containing() {
        assert_eq!(Epoch::containing(86_399, 86_400), Epoch(0));
        assert_eq!(Epoch::containing(86_400, 86_400), Epoch(1));
        assert_eq!(Epoch::containing(5, 0), Epoch(5));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
    }
}
