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

/// `n` package sizes, log-uniform in [16 KiB, 2 MiB] from a fixed seed,
/// scaled to `total` bytes in all: the repository of the benchmarks that
/// drive real package managers (`hosts`, `strict`).
pub fn package_sizes(n: usize, total: u64) -> Vec<usize> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut draw = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let (lo, hi) = ((16.0f64 * 1024.0).ln(), (2.0f64 * 1024.0 * 1024.0).ln());
    let raw: Vec<f64> = (0..n).map(|_| (lo + (hi - lo) * draw()).exp()).collect();
    let scale = total as f64 / raw.iter().sum::<f64>();
    raw.iter().map(|s| (s * scale) as usize).collect()
}

/// Throughput in MiB/s of `bytes` moved in `elapsed`.
pub fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The machine's CPU time, read from `/proc/stat`: how busy all cores were
/// between two readings. A benchmark on a testbed whose links are carried
/// by the same cores reports it, so that a ratio set by CPU is told apart
/// from one set by round trips.
#[derive(Clone, Copy, Debug)]
pub struct CpuReading {
    busy: u64,
    total: u64,
}

impl CpuReading {
    /// Now (zeros where `/proc/stat` cannot be read).
    pub fn now() -> CpuReading {
        let line = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default();
        // cpu user nice system idle iowait irq softirq steal ...
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        let total = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        CpuReading {
            busy: total - idle.min(total),
            total,
        }
    }

    /// The share of all cores busy since `self`, 0 to 1.
    pub fn busy_since(&self) -> f64 {
        let now = CpuReading::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        now.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

/// CPU seconds (user and system) process `pid` has used, from
/// `/proc/PID/stat`; `None` if it cannot be read.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the state.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
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

    #[test]
    fn this_process_uses_cpu() {
        let before = process_cpu_seconds(std::process::id()).expect("own /proc stat");
        let start = CpuReading::now();
        let t = std::time::Instant::now();
        let mut x = 1u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = process_cpu_seconds(std::process::id()).expect("own /proc stat");
        assert!(after > before, "{before} -> {after}");
        let busy = start.busy_since();
        assert!(busy > 0.0 && busy <= 1.0, "{busy}");
    }
}
