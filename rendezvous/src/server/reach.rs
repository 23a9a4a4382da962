//! Dial-backs (`Reach`): the rendezvous tells a peer the address it saw
//! and checks that the peer server answers there, as a BitTorrent
//! tracker's "ip" and libp2p's AutoNAT do, before any client is offered
//! the contact.
//!
//! - The address dialed is always the one the request came from, never
//!   one the requester names: the rendezvous cannot be used to probe a
//!   third party, and a peer cannot announce another host's address.
//! - Success is a Noise NK handshake with the key the requester gave: a
//!   router answering for the address, or another program on the port,
//!   fails it.
//! - A contact and key that passed are remembered for [`REACH_VALID`]; a
//!   session announcing a TCP contact is opened only if its contact and
//!   key are among them ([`Shared::reached`]), and is refused
//!   `ContactUnreached` before its token is spent otherwise.
//! - Bounded: at most [`MAX_DIAL_BACKS`] dial-backs at once (more are
//!   refused `Busy`), each at most [`REACH_TIMEOUT`] to connect and as long
//!   again to handshake; at most [`MAX_REACHED`] remembered, at most
//!   [`MAX_REACHED_PER_ADDRESS`] of one address (its oldest goes first).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonmirror_channel::ChannelParams;
use anonmirror_core::{Epoch, PeerKey};
use anonmirror_privacy::Level;

use super::shared::Shared;
use crate::err::{Error, Result};
use crate::msg::{ContactWire, Down, Ip, ReachOutcome, announceable};
use crate::refusal::Refusal;

/// How long a successful dial-back vouches for its contact: the peer
/// opens its session right after asking.
pub const REACH_VALID: Duration = Duration::from_secs(600);

/// How long a dial-back may take to connect, and then to handshake.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Dial-backs under way at once, at most.
pub const MAX_DIAL_BACKS: usize = 64;

/// Contacts remembered as reached, at most (a session needs one for the
/// seconds between its dial-back and its opening).
pub const MAX_REACHED: usize = 65_536;

/// Contacts remembered per address, at most: the oldest of an address
/// goes first, so that one host (with many ports and keys) cannot fill
/// [`MAX_REACHED`] and keep others from opening sessions. Sixteen
/// volunteers behind one router's address still fit.
pub const MAX_REACHED_PER_ADDRESS: usize = 16;

/// The contacts lately reached, with their keys.
#[derive(Debug, Default)]
pub(super) struct Reached {
    at: HashMap<(ContactWire, PeerKey), Instant>,
}

impl Reached {
    fn insert(&mut self, contact: ContactWire, key: PeerKey, now: Instant) -> bool {
        let ip = contact.socket_addr().map(|a| a.ip());
        let same: Vec<(ContactWire, PeerKey, Instant)> = self
            .at
            .iter()
            .filter(|((c, _), _)| c.socket_addr().map(|a| a.ip()) == ip)
            .map(|((c, k), t)| (c.clone(), *k, *t))
            .collect();
        if same.len() >= MAX_REACHED_PER_ADDRESS
            && let Some((c, k, _)) = same.into_iter().min_by_key(|(_, _, t)| *t)
        {
            self.at.remove(&(c, k));
        }
        if self.at.len() >= MAX_REACHED {
            self.at.retain(|_, t| now.duration_since(*t) < REACH_VALID);
        }
        if self.at.len() >= MAX_REACHED {
            return false;
        }
        self.at.insert((contact, key), now);
        true
    }

    /// Whether `contact` answered with `key` within [`REACH_VALID`] of
    /// `now`.
    pub(super) fn vouches(&self, contact: &ContactWire, key: &PeerKey, now: Instant) -> bool {
        self.at
            .get(&(contact.clone(), *key))
            .is_some_and(|t| now.duration_since(*t) < REACH_VALID)
    }
}

/// `Reach`: dials `seen`'s address at `port` and answers what came of it.
pub(super) async fn reach(
    shared: &Shared,
    seen: Option<SocketAddr>,
    port: u16,
    key: PeerKey,
    level: u8,
    epoch: u64,
) -> Result<Vec<Down>> {
    let Some(seen) = seen.map(|a| a.ip().to_canonical()) else {
        return Ok(vec![Down::Reached {
            seen: None,
            outcome: ReachOutcome::NoAddress,
        }]);
    };
    let answer = |outcome| {
        Ok(vec![Down::Reached {
            seen: Some(Ip::from(seen)),
            outcome,
        }])
    };
    if !announceable(seen) {
        return answer(ReachOutcome::NotAnnounceable);
    }
    let level = Level::from_wire_byte(level).ok_or(Error::Refused(Refusal::BadRequest))?;
    let Ok(_slot) = shared.dial_backs.try_acquire() else {
        return Err(Error::Refused(Refusal::Busy));
    };
    let target = SocketAddr::new(seen, port);
    let outcome = dial_back(target, &key, &ChannelParams::new(level, Epoch(epoch))).await;
    tracing::debug!(%outcome, "dial-back");
    if outcome == ReachOutcome::Reached {
        let kept = shared
            .reached
            .lock()
            .map(|mut r| r.insert(ContactWire::from(target), key, Instant::now()))
            .unwrap_or(false);
        if !kept {
            return Err(Error::Refused(Refusal::Busy));
        }
    }
    answer(outcome)
}

/// Connects to `target` and completes a handshake with `key`.
async fn dial_back(target: SocketAddr, key: &PeerKey, params: &ChannelParams) -> ReachOutcome {
    let stream =
        match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Err(_) => return ReachOutcome::TimedOut,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return ReachOutcome::ConnectionRefused;
            }
            // Unreachable networks and hosts come back as errors of their own
            // (an ICMP answer): to the peer, as good as no answer.
            Ok(Err(_)) => return ReachOutcome::TimedOut,
            Ok(Ok(s)) => s,
        };
    match anonmirror_channel::connect(stream, key, params, REACH_TIMEOUT).await {
        Ok(mut ch) => {
            let _ = ch.shutdown().await;
            ReachOutcome::Reached
        }
        Err(_) => ReachOutcome::HandshakeFailed,
    }
}

/// Whether a session announcing `contact` with `key` may open: an onion
/// service always (Tor carries it), a TCP contact only if a dial-back
/// reached it lately (or the configuration says not to check).
pub(super) fn contact_vouched(shared: &Shared, contact: &ContactWire, key: &PeerKey) -> bool {
    if shared.cfg.dangerous_unchecked_contacts || contact.socket_addr().is_none() {
        return true;
    }
    shared
        .reached
        .lock()
        .map(|r| r.vouches(contact, key, Instant::now()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reached_contacts_vouch_for_their_key_only_and_expire() {
        let mut r = Reached::default();
        let c = ContactWire::from(SocketAddr::from(([198, 51, 100, 7], 7879)));
        let (k, other) = (PeerKey([1; 32]), PeerKey([2; 32]));
        let t0 = Instant::now();
        assert!(r.insert(c.clone(), k, t0));
        assert!(r.vouches(&c, &k, t0));
        assert!(!r.vouches(&c, &other, t0), "another key is not vouched for");
        let elsewhere = ContactWire::from(SocketAddr::from(([198, 51, 100, 7], 7880)));
        assert!(!r.vouches(&elsewhere, &k, t0), "another port is not");
        assert!(!r.vouches(&c, &k, t0 + REACH_VALID), "expired");
    }

    #[test]
    fn one_address_cannot_fill_the_table() {
        let mut r = Reached::default();
        let t0 = Instant::now();
        let at = |ip: [u8; 4], port: u16| ContactWire::from(SocketAddr::from((ip, port)));
        let other = at([198, 51, 100, 8], 7879);
        assert!(r.insert(other.clone(), PeerKey([9; 32]), t0));
        // One host dials back a thousand ports under a thousand keys.
        for i in 0..1000u16 {
            let k = PeerKey([(i % 251) as u8; 32]);
            assert!(r.insert(
                at([203, 0, 113, 1], 1000 + i),
                k,
                t0 + Duration::from_millis(u64::from(i))
            ));
        }
        assert_eq!(r.at.len(), MAX_REACHED_PER_ADDRESS + 1);
        assert!(
            r.vouches(&other, &PeerKey([9; 32]), t0),
            "the other host's stays"
        );
        // The newest of the flooding host's are the ones kept.
        assert!(r.vouches(
            &at([203, 0, 113, 1], 1999),
            &PeerKey([(999 % 251) as u8; 32]),
            t0 + Duration::from_secs(1)
        ));
        assert!(!r.vouches(&at([203, 0, 113, 1], 1000), &PeerKey([0; 32]), t0));
    }
}
