//! The upload rate limit: one token bucket shared by every client of a peer
//! server.
//!
//! Each sender takes the bytes it is about to send from the bucket at once,
//! running it into debt if need be, and then sleeps until the debt would be
//! repaid at the configured rate. Concurrent senders therefore queue up in
//! the order they asked, and the total rate over any long window is the
//! configured one, however many clients share it. The bucket holds at most
//! `burst` bytes of credit, so an idle server cannot save up a flood.
//!
//! Time is tokio's, so tests can pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A shared upload rate limit.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Credit in bytes; negative while senders are in debt.
    credit: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second with `burst` bytes of credit
    /// at most. A zero rate is treated as one byte per second rather than
    /// dividing by zero; the policy rejects it long before.
    pub fn new(rate: u64, burst: u64) -> RateLimiter {
        RateLimiter {
            rate: rate.max(1),
            burst,
            state: Mutex::new(Bucket {
                credit: burst as f64,
                last: Instant::now(),
            }),
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Take `bytes` from the bucket; returns how long the caller must wait
    /// before sending them (zero if there was credit).
    pub fn take(&self, bytes: u64) -> Duration {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate as f64;
        b.credit = (b.credit + refill).min(self.burst as f64);
        b.last = now;
        b.credit -= bytes as f64;
        if b.credit >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.credit / self.rate as f64)
        }
    }

    /// Take `bytes` and wait until they may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.take(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn credit_then_debt_at_the_rate() {
        let limiter = RateLimiter::new(1_000, 500);
        assert_eq!(limiter.take(500), Duration::ZERO, "the burst is free");
        assert_eq!(limiter.take(1_000), Duration::from_secs(1));
        // A second sender queues behind the first one's debt.
        assert_eq!(limiter.take(1_000), Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(limiter.take(0), Duration::ZERO);
        // Idle time refills up to the burst, never beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limiter.take(500), Duration::ZERO);
        assert_eq!(limiter.take(100), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_senders_share_one_rate_within_ten_percent() {
        // Virtual time: the schedule the limiter imposes, not this
        // machine's speed, is what is checked.
        let limiter = std::sync::Arc::new(RateLimiter::new(1_000_000, 100_000));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let l = limiter.clone();
            tasks.spawn(async move {
                for _ in 0..20 {
                    l.acquire(65_505).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let sent = 50.0 * 20.0 * 65_505.0;
        let rate = sent / start.elapsed().as_secs_f64();
        assert!(
            (rate / 1_000_000.0 - 1.0).abs() <= 0.10,
            "{rate} B/s against a cap of 1,000,000"
        );
    }
}
