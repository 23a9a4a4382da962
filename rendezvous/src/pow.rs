//! Hashcash over BLAKE3: the small proof-of-work that makes registering
//! credentials in bulk cost something.
//!
//! A [`Stamp`] is a Unix time, 16 random bytes and a counter. Its digest is
//!
//! ```text
//! BLAKE3-derive-key("anonmirror registration pow v1",
//!     rendezvous_key[32] || time u64 BE || random[16] || counter u64 BE)
//! ```
//!
//! and the stamp is valid for a difficulty `d` when the digest starts with
//! at least `d` zero bits, its time is within [`STAMP_WINDOW_SECS`] of the
//! rendezvous's clock, and its digest was not used before (the rendezvous
//! keeps used digests until they leave the window, durably). Binding the
//! rendezvous's Noise key means work done for one rendezvous is worthless
//! at another; binding the time means work cannot be stockpiled.
//!
//! Pure functions: no I/O, the clock and randomness are arguments.

use anonmirror_core::{Entropy, PeerKey};
use serde::{Deserialize, Serialize};

use crate::err::{Error, Result};

/// How far a stamp's time may be from the rendezvous's clock, either way.
pub const STAMP_WINDOW_SECS: u64 = 600;

/// The most difficulty a rendezvous may demand: 2^32 hashes is already
/// minutes of a volunteer's CPU.
pub const MAX_DIFFICULTY: u8 = 32;

const CONTEXT: &str = "anonmirror registration pow v1";

/// A solved (or attempted) proof-of-work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// When the work was done (Unix seconds, by the registering peer).
    pub time: u64,
    /// Makes every peer's search space its own.
    pub random: [u8; 16],
    /// The value that made the digest small enough.
    pub counter: u64,
}

impl Stamp {
    /// The stamp's digest for `rendezvous`.
    pub fn digest(&self, rendezvous: &PeerKey) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(CONTEXT);
        h.update(rendezvous.as_bytes());
        h.update(&self.time.to_be_bytes());
        h.update(&self.random);
        h.update(&self.counter.to_be_bytes());
        *h.finalize().as_bytes()
    }

    /// Searches for a stamp of `difficulty` for `rendezvous` at `now`.
    /// Expected cost: 2^difficulty digests.
    pub fn solve(
        rendezvous: &PeerKey,
        now: u64,
        difficulty: u8,
        entropy: &mut dyn Entropy,
    ) -> Stamp {
        let mut random = [0u8; 16];
        entropy.fill(&mut random);
        let mut stamp = Stamp {
            time: now,
            random,
            counter: 0,
        };
        while leading_zero_bits(&stamp.digest(rendezvous)) < u32::from(difficulty) {
            stamp.counter = stamp.counter.wrapping_add(1);
        }
        stamp
    }

    /// Checks the stamp; returns its digest, which the caller must record
    /// as used (and refuse when seen again) until `time + STAMP_WINDOW_SECS`.
    pub fn check(&self, rendezvous: &PeerKey, now: u64, difficulty: u8) -> Result<[u8; 32]> {
        if self.time.abs_diff(now) > STAMP_WINDOW_SECS {
            return Err(Error::ProofOfWork(
                "stamp time too far from the rendezvous's clock",
            ));
        }
        let digest = self.digest(rendezvous);
        if leading_zero_bits(&digest) < u32::from(difficulty) {
            return Err(Error::ProofOfWork("not enough work"));
        }
        Ok(digest)
    }
}

/// Leading zero bits of a digest, most significant byte first.
pub fn leading_zero_bits(digest: &[u8; 32]) -> u32 {
    let mut n = 0;
    for b in digest {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonmirror_core::SeededEntropy;

    const KEY: PeerKey = PeerKey([7; 32]);

    #[test]
    fn solved_stamps_check_and_tampering_fails() {
        let mut e = SeededEntropy::new(1);
        let stamp = Stamp::solve(&KEY, 1_000, 10, &mut e);
        let digest = stamp.check(&KEY, 1_000, 10).expect("valid");
        assert!(leading_zero_bits(&digest) >= 10);
        // Another rendezvous, another time, more difficulty: refused.
        assert!(stamp.check(&PeerKey([8; 32]), 1_000, 10).is_err());
        assert!(
            stamp
                .check(&KEY, 1_000 + STAMP_WINDOW_SECS + 1, 10)
                .is_err()
        );
        assert!(stamp.check(&KEY, 1_000 + STAMP_WINDOW_SECS, 10).is_ok());
        let hard = (10..=MAX_DIFFICULTY).find(|d| leading_zero_bits(&digest) < u32::from(*d));
        assert!(
            stamp
                .check(&KEY, 1_000, hard.expect("some harder level"))
                .is_err()
        );
    }

    #[test]
    fn work_grows_with_difficulty() {
        // Mean counter over seeds ~ 2^d: 16 stamps at d=8 average near 256,
        // far below d=12's 4096.
        let mean = |d: u8| -> f64 {
            (0..16)
                .map(|s| Stamp::solve(&KEY, 5, d, &mut SeededEntropy::new(s)).counter as f64)
                .sum::<f64>()
                / 16.0
        };
        let (m8, m12) = (mean(8), mean(12));
        assert!(m8 < 1_000.0 && m12 > 1_000.0, "{m8} {m12}");
    }

    #[test]
    fn zero_bits() {
        let mut d = [0u8; 32];
        assert_eq!(leading_zero_bits(&d), 256);
        d[1] = 0x10;
        assert_eq!(leading_zero_bits(&d), 11);
    }
}
