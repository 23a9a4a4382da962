//! Injectable randomness.
//!
//! Code that draws random numbers (randomized response, nonces, choosing
//! among peers) takes an [`Entropy`], so tests can replay a fixed seed with
//! [`SeededEntropy`] while production uses [`OsEntropy`].

/// A source of random bytes.
pub trait Entropy: Send {
    /// Fill `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);

    /// A uniformly random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A uniformly random `f64` in `[0, 1)` (53 random bits).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniformly random integer below `bound` (0 when `bound` is 0),
    /// without modulo bias.
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Reject the top sliver of the range that would bias the modulo.
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }
}

/// The operating system's CSPRNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        // The OS generator failing means the machine cannot do cryptography
        // at all; continuing with predictable bytes would be far worse.
        #[allow(clippy::expect_used)]
        getrandom::fill(dest).expect("the operating system's random generator failed");
    }
}

/// A deterministic stream from a seed (BLAKE3 in XOF mode), for tests and
/// simulations only: never for keys.
pub struct SeededEntropy {
    reader: blake3::OutputReader,
}

impl SeededEntropy {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("anonmirror seeded entropy v1");
        hasher.update(&seed.to_le_bytes());
        SeededEntropy {
            reader: hasher.finalize_xof(),
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        self.reader.fill(dest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_seeds_differ() {
        let a: Vec<u64> = (0..4).map(|_| SeededEntropy::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut s7 = SeededEntropy::new(7);
        let mut s8 = SeededEntropy::new(8);
        assert_ne!(s7.next_u64(), s8.next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut e = SeededEntropy::new(1);
        let mut seen = [false; 6];
        for _ in 0..600 {
            let x = e.below(6);
            assert!(x < 6);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(e.below(0), 0);
        let f = e.next_f64();
        assert!((0.0..1.0).contains(&f));
    }

    #[test]
    fn os_entropy_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        OsEntropy.fill(&mut a);
        OsEntropy.fill(&mut b);
        assert_ne!(a, b);
    }
}
