//! The client library volunteers and clients use to talk to a rendezvous.
//!
//! Every call opens a fresh NK channel to the pinned key (so calls are not
//! linked by a connection), sends one request and reads the answer. A
//! session keeps its channel open and answers pings ([`LiveSession`]);
//! [`Backoff`] spaces reconnections after a session ends.
//!
//! Lookups come in runs (a package manager fetching one package after the
//! other), and a channel's connection and handshake cost more than the
//! lookup itself (a millisecond on loopback, round trips over Tor). So
//! after each lookup a *spare* channel is opened in the background and the
//! next lookup, if it comes within [`SPARE_MAX_AGE`], is sent on it. A
//! spare still carries exactly one request, as any call's channel: what
//! the rendezvous can link (the time one channel opened and the previous
//! one closed) it could link just as well from when fresh channels open.
//! A lookup whose spare failed is sent again on a fresh channel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anonmirror_channel::TcpTransport;
use anonmirror_channel::transport::{BoxStream, Transport};
use anonmirror_core::Contact;
use anonmirror_core::{Entropy, Epoch, ItemKey, PeerKey};

use crate::credential::ClientCredential;
use crate::directory::{self, PublishedCounts, Snapshot};
use crate::err::{Error, Result};
use crate::msg::{AnnouncementWire, ByteBuf, CandidateWire, Down, Up};
use crate::pow::Stamp;
use crate::server::channel_params;
use crate::token::{Scheme, TokenScheme};

/// A token bought for an epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The epoch of the key that signed it.
    pub epoch: Epoch,
    /// The 354 token bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}, [never printed])", self.epoch)
    }
}

/// A rendezvous, as a client knows it.
#[derive(Clone, Debug)]
pub struct Client {
    contact: Contact,
    key: PeerKey,
    dialer: Arc<dyn Transport>,
    timeout: Duration,
    /// The channel opened ahead for the next lookup (shared by clones).
    spare: Arc<Mutex<Option<Spare>>>,
}

/// The oldest spare channel a lookup uses: well within the time a
/// rendezvous gives a channel to bring its request (10 s by default).
pub const SPARE_MAX_AGE: Duration = Duration::from_secs(4);

type OpenChannel = Result<anonmirror_channel::Channel<BoxStream>>;

/// A channel being opened, or open, for the next lookup.
#[derive(Debug)]
struct Spare {
    started: Instant,
    channel: tokio::task::JoinHandle<OpenChannel>,
}

/// How long a call may take over TCP; over Tor, circuits take longer.
const TIMEOUT_TCP: Duration = Duration::from_secs(10);
const TIMEOUT_TOR: Duration = Duration::from_secs(60);

impl Client {
    /// The rendezvous at `addr` over direct TCP, with the pinned Noise
    /// `key`.
    pub fn new(addr: std::net::SocketAddr, key: PeerKey) -> Self {
        Client::with_dialer(Contact::Tcp(addr), key, Arc::new(TcpTransport))
    }

    /// The rendezvous at `contact` (an address, a name, or an onion
    /// address), reached through `dialer`, with the pinned Noise `key`.
    pub fn with_dialer(contact: Contact, key: PeerKey, dialer: Arc<dyn Transport>) -> Self {
        let timeout = if dialer.is_tor() {
            TIMEOUT_TOR
        } else {
            TIMEOUT_TCP
        };
        Client {
            contact,
            key,
            dialer,
            timeout,
            spare: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the rendezvous is.
    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    async fn open(&self) -> Result<anonmirror_channel::Channel<BoxStream>> {
        let stream = tokio::time::timeout(self.timeout, self.dialer.connect(&self.contact))
            .await
            .map_err(|_| Error::Gone("connect timed out"))?
            .map_err(Error::Connect)?;
        Ok(anonmirror_channel::connect(stream, &self.key, &channel_params(), self.timeout).await?)
    }

    pub(crate) async fn recv(
        ch: &mut anonmirror_channel::Channel<BoxStream>,
        t: Duration,
    ) -> Result<Down> {
        let bytes = tokio::time::timeout(t, ch.recv())
            .await
            .map_err(|_| Error::Gone("no answer in time"))??
            .ok_or(Error::Gone("closed without an answer"))?;
        match Down::decode(&bytes)? {
            Down::Refused(r) => Err(Error::Refused(r)),
            d => Ok(d),
        }
    }

    /// One request, all answers until the rendezvous closes.
    async fn call(&self, up: &Up) -> Result<Down> {
        let ch = self.open().await?;
        self.call_on(ch, up).await
    }

    async fn call_on(
        &self,
        mut ch: anonmirror_channel::Channel<BoxStream>,
        up: &Up,
    ) -> Result<Down> {
        ch.send(&up.encode()?).await?;
        Self::recv(&mut ch, self.timeout).await
    }

    /// A request that may be sent twice (a lookup): on the spare channel
    /// if there is a fresh one, again on a fresh channel if that failed;
    /// then a new spare is opened for the next one.
    async fn call_with_spare(&self, up: &Up) -> Result<Down> {
        let spare = self
            .spare
            .lock()
            .map_err(|_| Error::bug("spare channel lock poisoned"))?
            .take();
        // One too old may have been closed by the rendezvous: dropped.
        let channel = match spare {
            Some(s) if s.started.elapsed() < SPARE_MAX_AGE => match s.channel.await {
                Ok(Ok(ch)) => Some(ch),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "no spare rendezvous channel: a fresh one");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no spare rendezvous channel: a fresh one");
                    None
                }
            },
            _ => None,
        };
        let answer = match channel {
            Some(ch) => match self.call_on(ch, up).await {
                Err(e) if e.is_transport() => {
                    tracing::debug!(error = %e, "the spare rendezvous channel failed: a fresh one");
                    self.call(up).await
                }
                other => other,
            },
            None => self.call(up).await,
        };
        let me = self.clone();
        let spare = Spare {
            started: Instant::now(),
            channel: tokio::spawn(async move { me.open().await }),
        };
        if let Ok(mut slot) = self.spare.lock() {
            *slot = Some(spare);
        }
        answer
    }

    /// Registers: solves the proof-of-work (on a blocking thread) and
    /// returns the new credential.
    pub async fn register(
        &self,
        now: u64,
        difficulty: u8,
        mut entropy: impl Entropy + 'static,
    ) -> Result<ClientCredential> {
        let key = self.key;
        let stamp =
            tokio::task::spawn_blocking(move || Stamp::solve(&key, now, difficulty, &mut entropy))
                .await
                .map_err(|e| Error::bug_from("the proof-of-work task", e))?;
        match self.call(&Up::Register(stamp)).await? {
            Down::Registered {
                credential,
                expires,
            } => Ok(ClientCredential {
                credential,
                expires,
            }),
            _ => Err(Error::Protocol("expected Registered")),
        }
    }

    /// The published token keys, by epoch.
    pub async fn keys(&self) -> Result<Vec<(Epoch, <Scheme as TokenScheme>::Public)>> {
        match self.call(&Up::Keys).await? {
            Down::Keys(keys) => keys
                .iter()
                .map(|k| Ok((Epoch(k.epoch), Scheme::default().public_from_bytes(&k.key)?)))
                .collect(),
            _ => Err(Error::Protocol("expected Keys")),
        }
    }

    /// Buys `n` tokens for the current `epoch` with `cred` (refused locally
    /// once the credential is past its validity).
    pub async fn buy_tokens(
        &self,
        cred: &ClientCredential,
        now: u64,
        epoch: Epoch,
        n: usize,
    ) -> Result<Vec<Token>> {
        if !cred.usable(now) {
            return Err(Error::Credential("expired; register anew"));
        }
        let keys = self.keys().await?;
        let public = keys
            .iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, k)| k.clone())
            .ok_or(Error::Protocol("no key published for the epoch"))?;
        let scheme = Scheme::default();
        let mut pending = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        for _ in 0..n {
            let (req, p) = scheme.request(&public)?;
            requests.push(ByteBuf::from(req));
            pending.push(p);
        }
        let up = Up::Issue {
            credential: cred.credential,
            epoch: epoch.0,
            requests,
        };
        match self.call(&up).await? {
            Down::Issued { responses, .. } if responses.len() == n => pending
                .into_iter()
                .zip(responses)
                .map(|(p, r)| {
                    Ok(Token {
                        epoch,
                        bytes: scheme.finalize(p, &r)?,
                    })
                })
                .collect(),
            _ => Err(Error::Protocol(
                "expected Issued with one response per request",
            )),
        }
    }

    /// Peers for an item.
    pub async fn lookup(
        &self,
        item: ItemKey,
        size: u64,
        repository: &str,
        version: u64,
        region: Option<&str>,
        want: u8,
    ) -> Result<Vec<CandidateWire>> {
        let up = Up::Lookup {
            item,
            size,
            repository: repository.to_owned(),
            version,
            region: region.map(str::to_owned),
            want,
        };
        match self.call_with_spare(&up).await? {
            Down::Peers(p) => Ok(p),
            _ => Err(Error::Protocol("expected Peers")),
        }
    }

    /// The signed directory of `region`, checked against the pinned
    /// directory key.
    pub async fn directory(&self, region: Option<&str>, pinned: &[u8; 32]) -> Result<Snapshot> {
        let mut ch = self.open().await?;
        ch.send(
            &Up::Directory {
                region: region.map(str::to_owned),
            }
            .encode()?,
        )
        .await?;
        read_directory(&mut ch, self.timeout, self.timeout, pinned).await
    }

    /// The signed directory of `region` (or of all peers) now, then again
    /// at each change the rendezvous sees, on one connection: read them
    /// with [`DirectoryWatch::next`]. Refused `Busy` when the rendezvous
    /// has all the watchers it takes (then poll [`Client::directory`]).
    pub async fn watch_directory(
        &self,
        region: Option<&str>,
        pinned: &[u8; 32],
    ) -> Result<DirectoryWatch> {
        let mut ch = self.open().await?;
        ch.send(
            &Up::WatchDirectory {
                region: region.map(str::to_owned),
            }
            .encode()?,
        )
        .await?;
        let first = read_directory(&mut ch, self.timeout, self.timeout, pinned).await?;
        Ok(DirectoryWatch {
            ch,
            pinned: *pinned,
            timeout: self.timeout,
            first: Some(first),
        })
    }

    /// The popularity counts of the last epoch, verified against the
    /// pinned directory key; `None` while no epoch before the
    /// rendezvous's current one has counts ("none yet").
    ///
    /// The counts are announce's `AMPC` bytes (`Aggregator::from_bytes`
    /// there); a reader checks that their epoch is `epoch`.
    pub async fn popularity_counts(
        &self,
        pinned_directory_key: &[u8; 32],
    ) -> Result<Option<PublishedCounts>> {
        let mut ch = self.open().await?;
        ch.send(&Up::PopularityCounts.encode()?).await?;
        let (total, signature) = match Self::recv(&mut ch, self.timeout).await? {
            Down::NoCounts => return Ok(None),
            Down::CountsHead { total, signature } => (total, signature),
            _ => return Err(Error::Protocol("expected CountsHead or NoCounts")),
        };
        let mut bytes = Vec::new();
        while (bytes.len() as u64) < total {
            match Self::recv(&mut ch, self.timeout).await? {
                Down::CountsPart(p) if bytes.len() as u64 + p.len() as u64 <= total => {
                    bytes.extend_from_slice(&p)
                }
                _ => return Err(Error::Protocol("bad counts part")),
            }
        }
        directory::verify_counts(pinned_directory_key, &bytes, &signature.0).map(Some)
    }

    /// Reports a session that served bad data.
    pub async fn report(
        &self,
        session: PeerKey,
        item: ItemKey,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        match self
            .call(&Up::Report {
                session,
                item,
                offset,
                len,
            })
            .await?
        {
            Down::Ack => Ok(()),
            _ => Err(Error::Protocol("expected Ack")),
        }
    }

    /// Tells the rendezvous of a new snapshot (distribution side).
    pub async fn notify(&self, secret: [u8; 32], repository: &str, version: u64) -> Result<()> {
        let up = Up::Notify {
            secret,
            repository: repository.to_owned(),
            version,
        };
        match self.call(&up).await? {
            Down::Ack => Ok(()),
            _ => Err(Error::Protocol("expected Ack")),
        }
    }

    /// Sends a popularity report paid with `token`.
    pub async fn popularity(&self, token: &Token, report: Vec<u8>) -> Result<()> {
        let up = Up::Popularity {
            token: ByteBuf::from(token.bytes.clone()),
            report: ByteBuf::from(report),
        };
        match self.call(&up).await? {
            Down::Ack => Ok(()),
            _ => Err(Error::Protocol("expected Ack")),
        }
    }

    /// Asks the rendezvous to dial back the address it sees this request
    /// come from, at `port`, and complete a handshake with `key` under the
    /// prologue of `level` and `epoch` (the peer server's): the address
    /// seen, and what came of it. A session announcing a TCP contact opens
    /// only after this reached it.
    pub async fn reach(
        &self,
        port: u16,
        key: PeerKey,
        level: anonmirror_privacy::Level,
        epoch: Epoch,
    ) -> Result<Reach> {
        let up = Up::Reach {
            port,
            key,
            level: level.wire_byte(),
            epoch: epoch.0,
        };
        let mut ch = self.open().await?;
        ch.send(&up.encode()?).await?;
        // The rendezvous connects, then handshakes, each within its own
        // allowance.
        let wait = self.timeout + 2 * crate::server::REACH_TIMEOUT;
        match Self::recv(&mut ch, wait).await? {
            Down::Reached { seen, outcome } => Ok(Reach {
                seen: seen.map(std::net::IpAddr::from),
                outcome,
            }),
            _ => Err(Error::Protocol("expected Reached")),
        }
    }

    /// Opens a session with one token.
    pub async fn open_session(
        &self,
        token: &Token,
        announcement: AnnouncementWire,
    ) -> Result<LiveSession> {
        let mut ch = self.open().await?;
        let up = Up::OpenSession {
            token: ByteBuf::from(token.bytes.clone()),
            announcement,
        };
        ch.send(&up.encode()?).await?;
        match Self::recv(&mut ch, self.timeout).await? {
            Down::SessionOpened { silence_secs, .. } => Ok(LiveSession {
                ch,
                silence: Duration::from_secs(u64::from(silence_secs)),
            }),
            _ => Err(Error::Protocol("expected SessionOpened")),
        }
    }
}

/// What a dial-back found ([`Client::reach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The address the rendezvous saw the request come from (none through
    /// an onion service).
    pub seen: Option<std::net::IpAddr>,
    /// What came of dialing it back.
    pub outcome: crate::msg::ReachOutcome,
}
/// What a live session hears besides pings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The rendezvous took the last [`LiveSession::update`].
    Updated,
    /// A repository has a new snapshot.
    SnapshotChanged {
        /// The repository.
        repository: String,
        /// The version.
        version: u64,
    },
}

/// An open session: answers pings, yields pushes.
#[derive(Debug)]
pub struct LiveSession {
    ch: anonmirror_channel::Channel<BoxStream>,
    silence: Duration,
}

impl LiveSession {
    /// The next push, answering pings meanwhile. An error means the session
    /// is over (reconnect with a fresh token, after [`Backoff`]).
    pub async fn next_event(&mut self) -> Result<SessionEvent> {
        loop {
            match Client::recv(&mut self.ch, self.silence).await? {
                Down::Ping { nonce } => self.ch.send(&Up::Pong { nonce }.encode()?).await?,
                Down::SnapshotChanged {
                    repository,
                    version,
                } => {
                    return Ok(SessionEvent::SnapshotChanged {
                        repository,
                        version,
                    });
                }
                Down::Ack => return Ok(SessionEvent::Updated),
                _ => return Err(Error::Protocol("unexpected message in a session")),
            }
        }
    }

    /// Announces `filter` from now on in place of the session's filter (at
    /// most once every [`crate::server::UPDATE_MIN_GAP`]; faster, the
    /// rendezvous drops the session). The rendezvous's answer arrives as
    /// [`SessionEvent::Updated`], or ends the session.
    pub async fn update(&mut self, filter: Vec<u8>) -> Result<()> {
        let up = Up::Update {
            filter: ByteBuf::from(filter),
        };
        self.ch.send(&up.encode()?).await?;
        Ok(())
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = self.ch.shutdown().await;
    }
}

/// Exponential backoff with full jitter for reconnecting: sans-I/O, the
/// caller sleeps.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniform in [0, min(max,
    /// base·2^attempt)].
    pub fn next_delay(&mut self, entropy: &mut dyn Entropy) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(entropy.below(ms.saturating_add(1)))
    }

    /// A session stayed up: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A directory head and its parts, verified against `pinned`: the head
/// within `first`, each part within `timeout`.
async fn read_directory(
    ch: &mut anonmirror_channel::Channel<BoxStream>,
    first: Duration,
    timeout: Duration,
    pinned: &[u8; 32],
) -> Result<Snapshot> {
    let Down::DirectoryHead { total, signature } = Client::recv(ch, first).await? else {
        return Err(Error::Protocol("expected DirectoryHead"));
    };
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < total {
        match Client::recv(ch, timeout).await? {
            Down::DirectoryPart(p) if bytes.len() as u64 + p.len() as u64 <= total => {
                bytes.extend_from_slice(&p)
            }
            _ => return Err(Error::Protocol("bad directory part")),
        }
    }
    directory::verify(pinned, &bytes, &signature.0)
}

/// A directory watched on one connection ([`Client::watch_directory`]).
pub struct DirectoryWatch {
    ch: anonmirror_channel::Channel<BoxStream>,
    pinned: [u8; 32],
    timeout: Duration,
    first: Option<Snapshot>,
}

impl std::fmt::Debug for DirectoryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectoryWatch")
    }
}

impl DirectoryWatch {
    /// The next directory, verified: the one current when the watch
    /// began, then each the rendezvous sends. An error ends the watch (the
    /// connection broke, the rendezvous stopped or sent something else, or
    /// nothing came for longer than its refresh interval allows).
    pub async fn next(&mut self) -> Result<Snapshot> {
        if let Some(first) = self.first.take() {
            return Ok(first);
        }
        let patience = crate::server::WATCH_REFRESH + crate::server::WATCH_COALESCE + self.timeout;
        read_directory(&mut self.ch, patience, self.timeout, &self.pinned).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonmirror_core::SeededEntropy;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut e = SeededEntropy::new(1);
        let caps = [1, 2, 4, 8, 16, 32, 60, 60];
        for cap in caps {
            let d = b.next_delay(&mut e);
            assert!(d <= Duration::from_secs(cap), "{d:?} > {cap}");
        }
        // Over many draws the capped delay averages about half the cap.
        let mean: f64 = (0..400)
            .map(|_| b.next_delay(&mut e).as_secs_f64())
            .sum::<f64>()
            / 400.0;
        assert!((25.0..35.0).contains(&mean), "{mean}");
        b.reset();
        assert!(b.next_delay(&mut e) <= Duration::from_secs(1));
    }
}
