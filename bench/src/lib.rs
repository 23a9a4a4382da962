//! Shared helpers for anonmirror's benchmarks (the binaries in `src/bin/`).
//!
//! Every benchmark measures its baseline (raw TCP, nginx, the upstream
//! mirror) in the same run and reports a ratio, so figures from different
//! machines and days stay comparable.

#![forbid(unsafe_code)]

pub mod gateway;

use std::time::Duration;

/// The median of `samples` (the mean of the middle two for an even count);
/// `None` for no samples. Medians, not means: one run disturbed by another
/// process on a shared machine must not move the figure.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// Throughput in MiB/s of `bytes` moved in `elapsed`.
pub fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(mib_per_sec(1024 * 1024, Duration::from_millis(500)), 2.0);
    }
}
