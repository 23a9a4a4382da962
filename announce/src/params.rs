//! The parameters of popularity reports, and the privacy they buy.
//!
//! A report is built in three steps (see [`crate::report`]): a *permanent*
//! randomized response on each item's membership (probability `f` of
//! replacing the truth by a fair coin, drawn once per item and version),
//! a Bloom encoding of the resulting set into `m` bits with `h`
//! epoch-keyed positions per item, and a fresh *instantaneous* randomized
//! response per bit (report 1 with probability `q` for a set bit, `p` for
//! a clear one).
//!
//! Probabilities are carried as multiples of 2⁻¹⁶ so that every platform
//! draws exactly the same way from the same random bytes and the wire
//! format carries them exactly; [`ReportParams::new`] rounds to that grid
//! and every formula here uses the rounded values.

use anonmirror_privacy::Randomization;

use crate::err::Error;

/// The denominator of every quantized probability.
pub const PROB_ONE: u32 = 1 << 16;

/// Default report size: 2¹⁸ bits (32 KiB). With a Debian-sized universe of
/// 60 000 items and `h = 2` about 37 % of an item's cells are shared with
/// another item (both of them: 13 %), and the permanent noise (`f/2` of
/// the universe, 15 000 items at `f = 0.5`) sets about 11 % of the bits:
/// cells stay informative without making a daily report heavy.
pub const DEFAULT_REPORT_BITS: u32 = 1 << 18;

/// The largest report the decoder accepts: 2²² bits (512 KiB).
pub const MAX_REPORT_BITS: u32 = 1 << 22;

/// The most hash functions per item (as the policy's `MAX_HASHES`).
pub const MAX_REPORT_HASHES: u8 = 16;

/// The fewest positions per item [`ReportParams::from_policy`] uses, even
/// when the policy's `h` is 1. The policy's `h` is a RAPPOR knob whose ε
/// grows with h; here ε∞ does not (the permanent response is drawn per
/// item, before hashing), while a second position lets the estimator see
/// past a collision in one cell ([`crate::aggregate`]). Two positions
/// instead of one cost nothing in ε∞ and little in ε₁.
pub const MIN_POLICY_HASHES: u8 = 2;

/// A probability quantized to multiples of 2⁻¹⁶ (`0..=65536`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prob(u32);

impl Prob {
    /// The nearest quantized probability to `p` (which must be in [0, 1]).
    pub fn from_f64(p: f64) -> Result<Prob, Error> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::BadParameters(format!(
                "probability {p} is not in [0, 1]"
            )));
        }
        // In range, so the product is in [0, 65536] and the cast is exact.
        Ok(Prob((p * f64::from(PROB_ONE)).round() as u32))
    }

    /// From its numerator over 2¹⁶.
    pub fn from_raw(raw: u32) -> Option<Prob> {
        (raw <= PROB_ONE).then_some(Prob(raw))
    }

    /// The numerator over 2¹⁶.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// As a float.
    pub fn get(self) -> f64 {
        f64::from(self.0) / f64::from(PROB_ONE)
    }

    /// Whether a uniform 16-bit draw falls below this probability.
    pub(crate) fn hit(self, draw: u16) -> bool {
        u32::from(draw) < self.0
    }
}

/// RAPPOR parameters of popularity reports: (m, h, f, p, q).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReportParams {
    /// Bits per report: a multiple of 64, at most [`MAX_REPORT_BITS`].
    pub m: u32,
    /// Epoch-keyed positions per item, 1..=16.
    pub h: u8,
    /// Permanent randomized response: the chance an item's membership is
    /// replaced (once, for good) by a fair coin.
    pub f: Prob,
    /// Instantaneous response: the chance of reporting 1 for a clear bit.
    pub p: Prob,
    /// … and for a set bit.
    pub q: Prob,
}

impl ReportParams {
    /// Check and quantize.
    pub fn new(m: u32, h: u8, f: f64, p: f64, q: f64) -> Result<ReportParams, Error> {
        if m == 0 || !m.is_multiple_of(64) || m > MAX_REPORT_BITS {
            return Err(Error::BadParameters(format!(
                "m = {m} must be a positive multiple of 64 of at most {MAX_REPORT_BITS}"
            )));
        }
        if h == 0 || h > MAX_REPORT_HASHES {
            return Err(Error::BadParameters(format!(
                "h = {h} must be between 1 and {MAX_REPORT_HASHES}"
            )));
        }
        // f is kept on the even multiples of 2⁻¹⁶ so that its two halves
        // (coin says 0, coin says 1) are exactly equal.
        let f = Prob(Prob::from_f64(f)?.raw() & !1);
        let params = ReportParams {
            m,
            h,
            f,
            p: Prob::from_f64(p)?,
            q: Prob::from_f64(q)?,
        };
        params.check()?;
        Ok(params)
    }

    /// The parameters for a policy's `popularity.randomization`, with
    /// [`DEFAULT_REPORT_BITS`] bits.
    pub fn from_policy(r: &Randomization) -> Result<ReportParams, Error> {
        let h = u8::try_from(r.h)
            .map_err(|_| Error::BadParameters(format!("h = {} is too large", r.h)))?;
        ReportParams::new(DEFAULT_REPORT_BITS, h.max(MIN_POLICY_HASHES), r.f, r.p, r.q)
    }

    /// The default: `balanced`'s randomization (f = ½, p = ½, q = ¾) with
    /// h = 2 over [`DEFAULT_REPORT_BITS`]; ε∞ = 2 ln 3 ≈ 2.197.
    pub fn default_params() -> ReportParams {
        ReportParams {
            m: DEFAULT_REPORT_BITS,
            h: MIN_POLICY_HASHES,
            f: Prob(PROB_ONE / 2),
            p: Prob(PROB_ONE / 2),
            q: Prob(PROB_ONE / 4 * 3),
        }
    }

    /// Range checks shared by the constructor and the decoders.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.f.raw() >= PROB_ONE || !self.f.raw().is_multiple_of(2) {
            return Err(Error::BadParameters(
                "f must be below 1 (f = 1 erases every report) and an even multiple of 2^-16"
                    .into(),
            ));
        }
        if self.q.raw() <= self.p.raw() {
            return Err(Error::BadParameters(format!(
                "q = {} must be greater than p = {}",
                self.q.get(),
                self.p.get()
            )));
        }
        Ok(())
    }

    /// Bytes of a report's bitmap.
    pub fn bitmap_bytes(&self) -> usize {
        self.m as usize / 8
    }

    /// q* = ½f(p + q) + (1 − f)q: the chance a report shows 1 in a cell
    /// held by this peer alone.
    pub fn q_star(&self) -> f64 {
        let (f, p, q) = (self.f.get(), self.p.get(), self.q.get());
        0.5 * f * (p + q) + (1.0 - f) * q
    }

    /// p* = ½f(p + q) + (1 − f)p: … in a cell of an item it does not hold.
    pub fn p_star(&self) -> f64 {
        let (f, p, q) = (self.f.get(), self.p.get(), self.q.get());
        0.5 * f * (p + q) + (1.0 - f) * p
    }

    /// ε∞, the bound on everything any number of reports reveal about one
    /// item, for holdings that differ by swapping one item for another
    /// (RAPPOR's neighbours): 2·ln((1 − f/2)/(f/2)). Infinite when f = 0.
    ///
    /// Unlike RAPPOR's 2h·ln(…) it does not grow with h: the permanent
    /// response randomizes the item's membership once, before hashing, so
    /// its h cells carry one randomized bit, not h. It therefore never
    /// exceeds the policy's `Randomization::epsilon_inf()`, and equals it
    /// at h = 1.
    pub fn epsilon_inf(&self) -> f64 {
        let f = self.f.get();
        if f <= 0.0 {
            return f64::INFINITY;
        }
        2.0 * ((1.0 - f / 2.0) / (f / 2.0)).ln()
    }

    /// ε₁, the bound for a single report (same neighbours): the log of the
    /// largest likelihood ratio of the item's h cells when it is held
    /// against when it is not, plus the reverse (the other item of the
    /// swap), capped by ε∞. At h = 1 this is RAPPOR's
    /// ln(q*(1 − p*)/(p*(1 − q*))).
    pub fn epsilon_one(&self) -> f64 {
        let (f, p, q) = (self.f.get(), self.p.get(), self.q.get());
        let h = i32::from(self.h);
        // Likelihood of all h cells showing `ones` set bits, held (1) or
        // not (0). The ratio is monotone in the number of ones, so its
        // extremes are at all-ones and all-zeros.
        let lik = |held: bool, ones: i32| {
            let zeros = h - ones;
            let given_set = q.powi(ones) * (1.0 - q).powi(zeros);
            let given_clear = p.powi(ones) * (1.0 - p).powi(zeros);
            let keep = if held { 1.0 - f / 2.0 } else { f / 2.0 };
            keep * given_set + (1.0 - keep) * given_clear
        };
        let up = (lik(true, h) / lik(false, h)).ln();
        let down = (lik(false, 0) / lik(true, 0)).ln();
        let eps = up + down;
        if eps.is_nan() {
            f64::INFINITY
        } else {
            eps.min(self.epsilon_inf())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_meet_the_issue_bound_and_match_the_policy() {
        let d = ReportParams::default_params();
        assert!(d.epsilon_inf() <= 2.2, "{}", d.epsilon_inf());
        assert!((d.epsilon_inf() - Randomization::MODERATE.epsilon_inf()).abs() < 1e-12);
        let from_policy = ReportParams::from_policy(&Randomization::MODERATE).expect("valid");
        assert_eq!(from_policy, d);
        let strong = ReportParams::from_policy(&Randomization::STRONG).expect("valid");
        assert!((strong.epsilon_inf() - 2.0 * (5.0f64 / 3.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn epsilon_one_is_rappors_at_h1_and_below_eps_inf() {
        let d = ReportParams {
            h: 1,
            ..ReportParams::default_params()
        };
        let (ps, qs) = (d.p_star(), d.q_star());
        assert!((qs - 0.6875).abs() < 1e-12 && (ps - 0.5625).abs() < 1e-12);
        let rappor = (qs * (1.0 - ps) / (ps * (1.0 - qs))).ln();
        assert!((d.epsilon_one() - rappor).abs() < 1e-12);
        let h4 = ReportParams { h: 4, ..d };
        assert!(h4.epsilon_one() > d.epsilon_one());
        assert!(h4.epsilon_one() <= h4.epsilon_inf());
        let none = ReportParams::from_policy(&Randomization::NONE).expect("valid");
        assert!(none.epsilon_inf().is_infinite() && none.epsilon_one().is_infinite());
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(ReportParams::new(100, 1, 0.5, 0.5, 0.75).is_err());
        assert!(ReportParams::new(64, 0, 0.5, 0.5, 0.75).is_err());
        assert!(ReportParams::new(64, 1, 1.0, 0.5, 0.75).is_err());
        assert!(ReportParams::new(64, 1, 0.5, 0.75, 0.5).is_err());
        assert!(ReportParams::new(64, 1, 0.5, -0.1, 0.5).is_err());
        assert!(ReportParams::new(MAX_REPORT_BITS * 2, 1, 0.5, 0.5, 0.75).is_err());
    }
}
