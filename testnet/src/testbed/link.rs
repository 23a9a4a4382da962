//! One link of the testbed: two tun devices in two namespaces, and the
//! tasks that carry every IP packet from one to the other after the link's
//! delay, at its rate, dropping what its loss and its queue say.
//!
//! The model, per direction (the two directions are independent, as on a
//! full-duplex line):
//!
//! - **rate**: a packet starts on the wire when the one before it has left
//!   (`busy_until`), and takes `len / rate` to leave; with no rate it
//!   leaves at once;
//! - **queue**: a packet that would wait longer than the queue holds
//!   (`queue` of the link's time, 100 ms by default, like a router's
//!   buffer) is dropped at the tail, which is what TCP's congestion control
//!   reacts to;
//! - **delay**: it arrives `delay` after it left;
//! - **loss**: before any of that, it is dropped with probability `loss`,
//!   drawn from a generator seeded per link, so a run repeats.
//!
//! Arrival times only grow, so one FIFO queue per direction holds the
//! packets in flight. Timers have a resolution of a millisecond: a packet
//! can arrive up to 1 ms after its time, never before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tun_rs::AsyncDevice;

/// What a link does to the packets crossing it (each direction alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// One-way delay: a round trip across the link costs twice this.
    pub delay: Duration,
    /// Bytes per second each way; `None` is as fast as the machine moves
    /// packets.
    pub rate: Option<u64>,
    /// The probability that a packet is lost, in [0, 1].
    pub loss: f64,
    /// How long a packet may wait for the wire before it is dropped (only
    /// with a rate).
    pub queue: Duration,
    /// The devices' MTU.
    pub mtu: u16,
}

impl Link {
    /// A link with this one-way delay, no rate cap, no loss, MTU 1500.
    pub const fn delay(one_way: Duration) -> Link {
        Link {
            delay: one_way,
            rate: None,
            loss: 0.0,
            queue: Duration::from_millis(100),
            mtu: 1500,
        }
    }

    /// A link across which a round trip costs `rtt` (half each way).
    pub const fn round_trip(rtt: Duration) -> Link {
        Link::delay(Duration::from_nanos(rtt.as_nanos() as u64 / 2))
    }

    /// The same link capped at `bytes_per_second` each way.
    pub const fn rate(self, bytes_per_second: u64) -> Link {
        Link {
            rate: Some(bytes_per_second),
            ..self
        }
    }

    /// The same link losing a share `p` of the packets.
    pub const fn loss(self, p: f64) -> Link {
        Link { loss: p, ..self }
    }
}

/// What one direction of a link has done, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets delivered.
    pub delivered: AtomicU64,
    /// Bytes delivered (IP packets, headers included).
    pub bytes: AtomicU64,
    /// Packets dropped by the loss.
    pub lost: AtomicU64,
    /// Packets dropped because the queue was full.
    pub overflowed: AtomicU64,
}

impl Counters {
    /// (delivered, bytes, lost, overflowed) as they are now.
    pub fn read(&self) -> (u64, u64, u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.overflowed.load(Ordering::Relaxed),
        )
    }
}

/// A small seeded generator (SplitMix64): the loss of a run repeats.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Carries packets from `from` to `to` as `link` says (read for every
/// packet, so a change applies to the next one), until either device fails
/// (they are closed when the testbed goes).
pub(crate) async fn carry(
    from: Arc<AsyncDevice>,
    to: Arc<AsyncDevice>,
    shared: Arc<RwLock<Link>>,
    seed: u64,
    counters: Arc<Counters>,
) {
    let mtu = shared.read().map_or(1500, |l| l.mtu);
    let mut rng = SplitMix(seed);
    let mut in_flight: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut busy_until = Instant::now();
    let mut buf = vec![0u8; usize::from(mtu).max(1500) + 64];
    loop {
        let next = in_flight.front().map(|(due, _)| *due);
        tokio::select! {
            biased;
            () = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while in_flight.front().is_some_and(|(due, _)| *due <= now) {
                    let Some((_, packet)) = in_flight.pop_front() else { break };
                    // A full device queue drops the packet, as a wire would.
                    if to.send(&packet).await.is_ok() {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        counters.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
                    }
                }
            }
            received = from.recv(&mut buf) => {
                let Ok(n) = received else { return };
                let Ok(link) = shared.read().map(|l| *l) else { return };
                if link.loss > 0.0 && rng.next_f64() < link.loss {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let left = match link.rate {
                    None => now,
                    Some(rate) => {
                        let start = busy_until.max(now);
                        if start - now > link.queue {
                            counters.overflowed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let on_wire = Duration::from_nanos(n as u64 * 1_000_000_000 / rate.max(1));
                        busy_until = start + on_wire;
                        busy_until
                    }
                };
                in_flight.push_back((left + link.delay, buf[..n].to_vec()));
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}
