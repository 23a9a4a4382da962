//! The rendezvous protocol: what peers and clients say to the rendezvous
//! inside a Noise NK channel, and what it answers.
//!
//! This module is a codec and nothing else. It does no I/O, keeps no state
//! and trusts nothing it decodes.
//!
//! # Framing
//!
//! One message per Noise channel message, so at most [`MAX_MESSAGE`] =
//! 65,519 bytes; the channel's framing delimits it. Peers open a channel
//! with NK to the rendezvous's pinned key, with [`crate::channel_params`]
//! in the prologue. The first transport message of the initiator says what
//! the connection is for, and (for a session or a popularity report) it
//! carries the token: tokens never travel in a handshake message.
//!
//! # Encoding
//!
//! [postcard] 1 of the serde-derived types below, which comes down to:
//! `varint` (unsigned LEB128, minimal: 7 bits a byte, low group first, high
//! bit on all but the last byte; u16 ≤ 3 bytes, u32 ≤ 5, u64 ≤ 10); `bool`
//! (`00`/`01`); `[n]` (n raw bytes, no length); `bytes` and `str` (`varint`
//! length, then the bytes; `str` must be UTF-8); `opt<T>` (`00`, or `01`
//! then T); `seq<T>` (`varint` count then the elements); an enum is its
//! variant index as a `varint` then its fields in order.
//!
//! ## Initiator to rendezvous: [`Up`]
//!
//! | tag | message | fields after the tag |
//! |-----|---------|----------------------|
//! | `00` | `Register` | time `varint`(u64), random `[16]`, counter `varint`(u64): a [`Stamp`] |
//! | `01` | `Keys` | — |
//! | `02` | `Issue` | credential `[32]`, epoch `varint`, requests `seq<bytes>` (1 ..= [`MAX_ISSUE`], each exactly 259 bytes) |
//! | `03` | `OpenSession` | token `bytes` (354), announcement [`AnnouncementWire`] |
//! | `04` | `Pong` | nonce `varint`(u64) |
//! | `05` | `Lookup` | item `[32]`, size `varint`(u64), repository `str`, version `varint`, region `opt<str>`, want `varint`(u8, 1 ..= [`MAX_WANT`]) |
//! | `06` | `Directory` | region `opt<str>` |
//! | `07` | `Report` | session key `[32]`, item `[32]`, offset `varint`, len `varint` |
//! | `08` | `Notify` | secret `[32]`, repository `str`, version `varint` |
//! | `09` | `Popularity` | token `bytes` (354), report `bytes` (1 ..= [`MAX_REPORT`]) |
//! | `0a` | `PopularityCounts` | — |
//! | `0b` | `WatchDirectory` | region `opt<str>` |
//! | `0c` | `Reach` | port `varint`(u16, ≠ 0), key `[32]` (the peer server's Noise static key), level `u8`, epoch `varint`: the prologue of a channel to it |
//! | `0d` | `Update` | filter `bytes` (≤ [`MAX_FILTER`]): inside an open session only, the session's new announcement filter; answered `Ack` |
//!
//! [`AnnouncementWire`]: contact [`ContactWire`], key `[32]` (this
//! session's Noise static key), max_clients `varint`(u32, ≥ 1), upload_rate
//! `varint`(u64 bytes/s, ≥ 1), region `opt<str>` (1 ..= 16 bytes,
//! `[a-z0-9-]`), snapshots `seq<(str, varint)>` (≤ [`MAX_REPOSITORIES`],
//! repository names 1 ..= [`MAX_NAME`] bytes, strictly ascending), filter
//! `bytes` (≤ [`MAX_FILTER`]).
//!
//! [`ContactWire`]: `00` `Tcp` then ip ([`Ip`]: `00` then `[4]`, or `01`
//! then `[16]`; never unspecified, multicast, broadcast or link-local) and
//! port `varint`(u16, ≠ 0); or `01` `Onion` then host `str` (a v3 onion
//! address: 56 characters `[a-z2-7]` and `.onion`) and port.
//!
//! `Reach` asks the rendezvous to dial back the address the connection came
//! from, at `port`, and complete a Noise NK handshake with `key`; it answers
//! `Reached`. A session's TCP contact is taken only if such a dial-back to
//! that contact and key succeeded lately (see the server's
//! `REACH_VALID`); otherwise `OpenSession` is refused `ContactUnreached`
//! before its token is spent.
//!
//! ## Rendezvous to initiator: [`Down`]
//!
//! | tag | message | fields after the tag |
//! |-----|---------|----------------------|
//! | `00` | `Registered` | credential `[32]`, expires `varint` (Unix s) |
//! | `01` | `Keys` | keys `seq<`[`PublishedKey`]`>` (≤ 3): epoch `varint`, key `bytes` (DER SPKI, ≤ 512) |
//! | `02` | `Issued` | epoch `varint`, responses `seq<bytes>` (each 256 bytes) |
//! | `03` | `SessionOpened` | ping_secs `varint`(u32), silence_secs `varint`(u32) |
//! | `04` | `Ping` | nonce `varint`(u64) |
//! | `05` | `SnapshotChanged` | repository `str`, version `varint` |
//! | `06` | `Peers` | candidates `seq<`[`CandidateWire`]`>` (≤ [`MAX_WANT`]): contact, key `[32]`, region `opt<str>`, level `u8`, epoch `varint` |
//! | `07` | `DirectoryHead` | total `varint`(u64 bytes, ≤ [`MAX_DIRECTORY`]), signature `[64]` (Ed25519) |
//! | `08` | `DirectoryPart` | bytes `bytes` (1 ..= [`MAX_PART`]) |
//! | `09` | `Ack` | — |
//! | `0a` | `Refused` | refusal `varint` (a [`Refusal`], `00` ..= `0d`) |
//! | `0b` | `CountsHead` | total `varint`(u64 bytes, 1 ..= [`MAX_COUNTS`]), signature `[64]` (Ed25519) |
//! | `0c` | `CountsPart` | bytes `bytes` (1 ..= [`MAX_PART`]) |
//! | `0d` | `NoCounts` | — (no epoch before the current one has counts yet) |
//! | `0e` | `Reached` | seen `opt<`[`Ip`]`>` (the address the connection came from; none over an onion service), outcome `varint` (a [`ReachOutcome`], `00` ..= `05`) |
//!
//! A directory travels as one `DirectoryHead` then parts whose bytes, in
//! order, make `total` bytes (after `WatchDirectory`, again at each
//! change): the postcard encoding of a
//! [`crate::directory::Snapshot`], signed as that module says. Published
//! popularity counts travel the same way as `CountsHead` and `CountsPart`s:
//! a [`crate::directory::PublishedCounts`], signed with the same key.
//!
//! # Decoding and its bounds
//!
//! [`Up::decode`] and [`Down::decode`] refuse, in this order: input
//! longer than [`MAX_MESSAGE`] or empty; anything postcard cannot parse
//! (a cut anywhere is "truncated"; postcard checks a length's bytes remain
//! before taking them, and the input is at most 64 KiB, so no length field
//! can make it allocate much); bytes after the message; a non-canonical
//! encoding (over-long varints: the input must equal the re-encoding of
//! what it decoded to, so every message has exactly one encoding); then
//! the per-field bounds listed above.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anonmirror_core::Contact;
use anonmirror_core::{ItemKey, PeerKey};
// The channel's own bound: one rendezvous message is one channel message.
use anonmirror_channel::noise::MAX_MESSAGE;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::err::{Error, Result};
use crate::pow::Stamp;
/// Why the rendezvous said no: encoded in `Down::Refused`.
pub use crate::refusal::Refusal;
use crate::token::{TOKEN_LEN, TOKEN_REQUEST_LEN, TOKEN_RESPONSE_LEN};

/// The largest published popularity counts: announce's largest counting
/// array (2²² cells) at 5 bytes a cell, and room for the envelope.
pub const MAX_COUNTS: u64 = 24 << 20;
/// The most token requests in one `Issue`.
pub const MAX_ISSUE: usize = 64;
/// The most candidates a lookup may ask for.
pub const MAX_WANT: u8 = 32;
/// The most repositories an announcement lists snapshot versions for.
pub const MAX_REPOSITORIES: usize = 16;
/// The longest repository name.
pub const MAX_NAME: usize = 64;
/// The largest announcement filter (opaque here; announce/ defines it):
/// its 24-byte header and at most 60 KiB of bits
/// (`anonmirror_announce::announcement::MAX_ANNOUNCEMENT_BITS`). A
/// distribution's index of 60,000 items needs all of it at level open.
pub const MAX_FILTER: usize = 24 + 60 * 1024;
/// The longest popularity report (announce's default m = 2^18 bits is a 32 KiB bitmap plus its header; a frame holds 64 KiB).
pub const MAX_REPORT: usize = 48 * 1024;
/// The largest directory snapshot, in bytes.
pub const MAX_DIRECTORY: u64 = 1 << 30;
/// The most bytes of a directory in one part.
pub const MAX_PART: usize = 60 * 1024;
/// The longest region name (as the policy's `announce.region`).
pub const MAX_REGION: usize = 16;
/// The longest encoded public token key (2048-bit RSA-PSS SPKI is ~ 300).
pub const MAX_KEY_BYTES: usize = 512;

/// An IP address, encoded without serde's human-readable detour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ip {
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

/// Where a serving peer takes connections, for this session, as it travels
/// in an announcement and a lookup's answer. The domain type is
/// [`Contact`]; the two convert only here (`From<ContactWire> for
/// Contact`, `TryFrom<Contact> for ContactWire`). A name contact
/// (`Contact::Host`) cannot be announced: it has no wire form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContactWire {
    /// Clearnet TCP.
    Tcp {
        /// The address.
        ip: Ip,
        /// The port (not 0).
        port: u16,
    },
    /// A Tor v3 onion service.
    Onion {
        /// `<56 base32 characters>.onion`.
        host: String,
        /// The virtual port (not 0).
        port: u16,
    },
}

/// Whether `ip` may be announced as a contact at all: never an address
/// that names no host (unspecified, multicast, broadcast) or one that
/// means something only on the announcer's own link (link-local).
/// Loopback is allowed: a rendezvous on the same machine saw it, and
/// nothing on another host is offered it (its dial-back from elsewhere
/// cannot reach a loopback address).
pub fn announceable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            !(v.is_unspecified() || v.is_multicast() || v.is_broadcast() || v.is_link_local())
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return announceable(IpAddr::V4(v4));
            }
            // fe80::/10 is link-local unicast.
            let link_local = v.segments()[0] & 0xffc0 == 0xfe80;
            !(v.is_unspecified() || v.is_multicast() || link_local)
        }
    }
}

impl From<IpAddr> for Ip {
    fn from(ip: IpAddr) -> Ip {
        match ip {
            IpAddr::V4(v) => Ip::V4(v.octets()),
            IpAddr::V6(v) => Ip::V6(v.octets()),
        }
    }
}

impl From<Ip> for IpAddr {
    fn from(ip: Ip) -> IpAddr {
        match ip {
            Ip::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Ip::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

/// What came of a dial-back (`Reach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReachOutcome {
    /// Connected and completed the handshake with the key: the contact
    /// may be announced.
    Reached,
    /// The connection was refused (nothing listens there, or a router
    /// answered for the address).
    ConnectionRefused,
    /// No answer within the time allowed (a router or firewall drops the
    /// connection).
    TimedOut,
    /// Something answered but not with the key's handshake (another
    /// program on the port, or a router's port forwarded elsewhere).
    HandshakeFailed,
    /// The rendezvous saw no address to dial (the request came through
    /// an onion service or another stream without one).
    NoAddress,
    /// The address seen cannot be announced (link-local, unspecified).
    NotAnnounceable,
}

impl std::fmt::Display for ReachOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReachOutcome::Reached => "reached",
            ReachOutcome::ConnectionRefused => "the rendezvous's dial-back was refused",
            ReachOutcome::TimedOut => "the rendezvous's dial-back got no answer",
            ReachOutcome::HandshakeFailed => {
                "the rendezvous's dial-back reached something else than this node"
            }
            ReachOutcome::NoAddress => "the rendezvous saw no address to dial back",
            ReachOutcome::NotAnnounceable => {
                "the address the rendezvous saw cannot be announced (link-local)"
            }
        })
    }
}

impl ContactWire {
    /// The TCP socket address, if it is one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            ContactWire::Tcp { ip, port } => Some(SocketAddr::new(
                match ip {
                    Ip::V4(b) => IpAddr::V4(Ipv4Addr::from(*b)),
                    Ip::V6(b) => IpAddr::V6(Ipv6Addr::from(*b)),
                },
                *port,
            )),
            ContactWire::Onion { .. } => None,
        }
    }

    fn check(&self) -> Result<()> {
        match self {
            ContactWire::Tcp { port, .. } if *port == 0 => Err(bound("contact port 0")),
            ContactWire::Tcp { ip, .. } if !announceable(IpAddr::from(*ip)) => Err(bound(
                "contact address unspecified, multicast, broadcast or link-local",
            )),
            ContactWire::Tcp { .. } => Ok(()),
            ContactWire::Onion { host, port } => {
                let name = host.strip_suffix(".onion").unwrap_or("");
                let ok = *port != 0
                    && name.len() == 56
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
                if ok {
                    Ok(())
                } else {
                    Err(bound("not a v3 onion address and port"))
                }
            }
        }
    }
}

impl From<SocketAddr> for ContactWire {
    fn from(a: SocketAddr) -> ContactWire {
        let ip = match a.ip() {
            IpAddr::V4(v) => Ip::V4(v.octets()),
            IpAddr::V6(v) => Ip::V6(v.octets()),
        };
        ContactWire::Tcp { ip, port: a.port() }
    }
}

impl From<ContactWire> for Contact {
    fn from(c: ContactWire) -> Contact {
        match c {
            ContactWire::Tcp { ip, port } => Contact::Tcp(SocketAddr::new(
                match ip {
                    Ip::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
                    Ip::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
                },
                port,
            )),
            ContactWire::Onion { host, port } => Contact::Onion { host, port },
        }
    }
}

impl TryFrom<Contact> for ContactWire {
    type Error = Error;

    /// Refuses a name (`Contact::Host`): only an address or an onion
    /// service can be announced.
    fn try_from(c: Contact) -> Result<ContactWire> {
        match c {
            Contact::Tcp(addr) => Ok(ContactWire::from(addr)),
            Contact::Onion { host, port } => Ok(ContactWire::Onion { host, port }),
            // `Contact::Host`, and whatever else has no wire form.
            _ => Err(Error::NameNotAnnounceable),
        }
    }
}

impl std::fmt::Display for ContactWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self, self.socket_addr()) {
            (_, Some(a)) => write!(f, "tcp:{a}"),
            (ContactWire::Onion { host, port }, None) => write!(f, "onion:{host}:{port}"),
            _ => f.write_str("?"),
        }
    }
}

/// What a serving peer announces when it opens a session: the message
/// that carries its announcement filter (announce's `Announcement`, opaque
/// here) with the session's contact, key and limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncementWire {
    /// Where clients reach it during this session.
    pub contact: ContactWire,
    /// Its Noise static key for this session only.
    pub key: PeerKey,
    /// Clients it serves at once.
    pub max_clients: u32,
    /// Its upload rate, bytes per second.
    pub upload_rate: u64,
    /// Its coarse region, if it declares one.
    pub region: Option<String>,
    /// Index snapshot version it holds, per repository, names ascending.
    pub snapshots: Vec<(String, u64)>,
    /// The announcement filter (announce/'s format; opaque here).
    #[serde(with = "serde_bytes")]
    pub filter: Vec<u8>,
}

impl AnnouncementWire {
    fn check(&self) -> Result<()> {
        self.contact.check()?;
        if self.max_clients == 0 || self.upload_rate == 0 {
            return Err(bound("limits must be at least 1"));
        }
        check_region(self.region.as_deref())?;
        if self.snapshots.len() > MAX_REPOSITORIES {
            return Err(bound("too many repositories"));
        }
        for (name, _) in &self.snapshots {
            check_name(name)?;
        }
        if !self.snapshots.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(bound("repositories not strictly ascending"));
        }
        if self.filter.len() > MAX_FILTER {
            return Err(bound("filter too large"));
        }
        Ok(())
    }

    /// The snapshot version announced for `repository`.
    pub fn version_of(&self, repository: &str) -> Option<u64> {
        self.snapshots
            .binary_search_by(|(n, _)| n.as_str().cmp(repository))
            .ok()
            .map(|i| self.snapshots[i].1)
    }
}

/// A token key the rendezvous publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKey {
    /// The epoch whose tokens it signs.
    pub epoch: u64,
    /// DER SubjectPublicKeyInfo.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// A peer offered by a lookup, as it travels (the mirror turns it into
/// the candidate it dials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateWire {
    /// Where to reach it.
    pub contact: ContactWire,
    /// Its session's Noise static key, to pin in the NK handshake.
    pub key: PeerKey,
    /// Its region.
    pub region: Option<String>,
    /// The level its announcement declares (`Level::wire_byte`; 0 when its
    /// filter declares none), bound with `epoch` into the prologue of a
    /// channel to it.
    pub level: u8,
    /// The epoch of its session.
    pub epoch: u64,
}

/// Initiator to rendezvous. See the module docs for the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Up {
    /// Register a new credential.
    Register(Stamp),
    /// Which token keys are published.
    Keys,
    /// Buy tokens for `epoch` with a credential.
    Issue {
        /// The credential (only its hash is stored).
        credential: [u8; 32],
        /// The epoch whose key should sign.
        epoch: u64,
        /// Blinded token requests.
        requests: Vec<ByteBuf>,
    },
    /// Open an announcement session by spending a token.
    OpenSession {
        /// One token.
        token: ByteBuf,
        /// What the session announces.
        announcement: AnnouncementWire,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Anonymous lookup of peers for an item.
    Lookup {
        /// The item.
        item: ItemKey,
        /// Its size as the index states it (public, like the item key): an
        /// assignment counts against a peer's limit for as long as the
        /// peer's upload rate needs to send it.
        size: u64,
        /// The repository the item belongs to.
        repository: String,
        /// The client's snapshot version of it: candidates are at least as
        /// fresh.
        version: u64,
        /// Preferred region.
        region: Option<String>,
        /// Most candidates wanted.
        want: u8,
    },
    /// The signed directory of a region (or of all peers).
    Directory {
        /// The region, or all.
        region: Option<String>,
    },
    /// A session served bad data.
    Report {
        /// The session's Noise static key, as the client pinned it.
        session: PeerKey,
        /// The item.
        item: ItemKey,
        /// Start of the failing range.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// The distribution announces a new index snapshot.
    Notify {
        /// The notify secret (the rendezvous stores only its hash).
        secret: [u8; 32],
        /// The repository.
        repository: String,
        /// The new version.
        version: u64,
    },
    /// A popularity report, paid for with one token.
    Popularity {
        /// One token.
        token: ByteBuf,
        /// The report (announce/'s format; opaque here).
        report: ByteBuf,
    },
    /// The signed popularity counts of the last epoch (anonymous, free).
    PopularityCounts,
    /// The signed directory of a region (or of all peers) now, and again
    /// whenever it changes, on this connection until either side closes it
    /// (see the server's `WATCH_*` constants).
    WatchDirectory {
        /// The region, or all.
        region: Option<String>,
    },
    /// Dial back the address this connection came from at `port` and
    /// complete a handshake with `key` (answered `Reached`).
    Reach {
        /// The port to dial (the peer server's, as the network outside
        /// sees it: a router's mapped or forwarded port).
        port: u16,
        /// The peer server's Noise static key for the session to come.
        key: PeerKey,
        /// The level bound into the channel's prologue
        /// (`Level::wire_byte`).
        level: u8,
        /// The epoch bound into the channel's prologue.
        epoch: u64,
    },
    /// Inside an open session: its announcement's filter from now on
    /// (what the peer holds changed). At most one a minute
    /// (`UPDATE_MIN_GAP`); answered `Ack` on the session.
    Update {
        /// The new filter (announce/'s format; opaque here).
        filter: ByteBuf,
    },
}

/// Rendezvous to initiator. See the module docs for the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Down {
    /// A fresh credential.
    Registered {
        /// The credential; the peer keeps it secret.
        credential: [u8; 32],
        /// Unix time after which it is refused.
        expires: u64,
    },
    /// Published token keys: previous, current, next.
    Keys(Vec<PublishedKey>),
    /// Blind signatures, in request order.
    Issued {
        /// The epoch of the signing key.
        epoch: u64,
        /// One response per request.
        responses: Vec<ByteBuf>,
    },
    /// The session is open.
    SessionOpened {
        /// How often the rendezvous pings.
        ping_secs: u32,
        /// Silence after which it drops the session.
        silence_secs: u32,
    },
    /// Are you there?
    Ping {
        /// Echo it in a `Pong`.
        nonce: u64,
    },
    /// A repository has a new index snapshot.
    SnapshotChanged {
        /// The repository.
        repository: String,
        /// Its new version.
        version: u64,
    },
    /// Lookup answer.
    Peers(Vec<CandidateWire>),
    /// Start of a signed directory.
    DirectoryHead {
        /// Bytes of the snapshot.
        total: u64,
        /// Ed25519 signature (see [`crate::directory`]).
        signature: Sig,
    },
    /// A piece of the directory.
    DirectoryPart(ByteBuf),
    /// Done.
    Ack,
    /// No.
    Refused(Refusal),
    /// Start of signed popularity counts.
    CountsHead {
        /// Bytes of the signed [`crate::directory::PublishedCounts`].
        total: u64,
        /// Ed25519 signature (see [`crate::directory`]).
        signature: Sig,
    },
    /// A piece of the counts.
    CountsPart(ByteBuf),
    /// No epoch before the current one has popularity counts yet.
    NoCounts,
    /// What a dial-back (`Reach`) found.
    Reached {
        /// The address the request came from, as the rendezvous saw it.
        seen: Option<Ip>,
        /// What came of dialing it back.
        outcome: ReachOutcome,
    },
}

/// Owned bytes, encoded as `bytes`.
pub type ByteBuf = serde_bytes::ByteBuf;

/// A 64-byte signature (serde has no 64-byte array impl).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({})", hex::encode(self.0))
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Sig, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Sig, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

fn bound(what: &'static str) -> Error {
    Error::malformed("rendezvous message", what)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bound("repository name length"));
    }
    Ok(())
}

/// Regions are short, lower-case ASCII tags ("eu", "us-west").
pub fn check_region(region: Option<&str>) -> Result<()> {
    match region {
        None => Ok(()),
        Some(r)
            if !r.is_empty()
                && r.len() <= MAX_REGION
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Ok(())
        }
        Some(_) => Err(bound("region")),
    }
}

fn decode_canonical<T: Serialize + DeserializeOwned>(
    what: &'static str,
    input: &[u8],
) -> Result<T> {
    if input.is_empty() {
        return Err(Error::malformed(what, "empty"));
    }
    if input.len() > MAX_MESSAGE {
        return Err(Error::malformed(what, "longer than a channel message"));
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(input).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => Error::malformed(what, "truncated"),
        other => Error::malformed(what, other),
    })?;
    if !rest.is_empty() {
        return Err(Error::malformed(what, "trailing bytes"));
    }
    let again =
        postcard::to_allocvec(&msg).map_err(|e| Error::bug_from("re-encoding a message", e))?;
    if again != input {
        return Err(Error::malformed(what, "non-canonical encoding"));
    }
    Ok(msg)
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let bytes = postcard::to_allocvec(msg).map_err(|e| Error::bug_from("encoding a message", e))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(Error::bug("a message that does not fit a channel message"));
    }
    Ok(bytes)
}

impl Up {
    /// Encodes the message (after checking it against the bounds, so that
    /// we never send what the other end must refuse).
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check()?;
        encode(self)
    }

    /// Decodes and checks one message; see the module docs.
    pub fn decode(input: &[u8]) -> Result<Up> {
        let msg: Up = decode_canonical("rendezvous request", input)?;
        msg.check()?;
        Ok(msg)
    }

    fn check(&self) -> Result<()> {
        match self {
            Up::Register(_)
            | Up::Keys
            | Up::Pong { .. }
            | Up::Report { .. }
            | Up::PopularityCounts => Ok(()),
            Up::Update { filter } => {
                if filter.len() > MAX_FILTER {
                    return Err(bound("filter too large"));
                }
                Ok(())
            }
            Up::Reach { port, level, .. } => {
                if *port == 0 {
                    return Err(bound("reach port 0"));
                }
                if anonmirror_privacy::Level::from_wire_byte(*level).is_none() {
                    return Err(bound("reach level"));
                }
                Ok(())
            }
            Up::Issue { requests, .. } => {
                if requests.is_empty() || requests.len() > MAX_ISSUE {
                    return Err(bound("token request count"));
                }
                if requests.iter().any(|r| r.len() != TOKEN_REQUEST_LEN) {
                    return Err(bound("token request length"));
                }
                Ok(())
            }
            Up::OpenSession {
                token,
                announcement,
            } => {
                if token.len() != TOKEN_LEN {
                    return Err(bound("token length"));
                }
                announcement.check()
            }
            Up::Lookup {
                repository,
                region,
                want,
                ..
            } => {
                check_name(repository)?;
                check_region(region.as_deref())?;
                if *want == 0 || *want > MAX_WANT {
                    return Err(bound("want"));
                }
                Ok(())
            }
            Up::Directory { region } | Up::WatchDirectory { region } => {
                check_region(region.as_deref())
            }
            Up::Notify { repository, .. } => check_name(repository),
            Up::Popularity { token, report } => {
                if token.len() != TOKEN_LEN {
                    return Err(bound("token length"));
                }
                if report.is_empty() || report.len() > MAX_REPORT {
                    return Err(bound("report length"));
                }
                Ok(())
            }
        }
    }
}

impl Down {
    /// Encodes the message after checking its bounds.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check()?;
        encode(self)
    }

    /// Decodes and checks one message; see the module docs.
    pub fn decode(input: &[u8]) -> Result<Down> {
        let msg: Down = decode_canonical("rendezvous answer", input)?;
        msg.check()?;
        Ok(msg)
    }

    fn check(&self) -> Result<()> {
        match self {
            Down::Registered { .. }
            | Down::SessionOpened { .. }
            | Down::Ping { .. }
            | Down::Ack
            | Down::NoCounts
            | Down::Reached { .. }
            | Down::Refused(_) => Ok(()),
            Down::CountsHead { total, .. } => {
                if *total == 0 || *total > MAX_COUNTS {
                    return Err(bound("counts size"));
                }
                Ok(())
            }
            Down::CountsPart(b) => {
                if b.is_empty() || b.len() > MAX_PART {
                    return Err(bound("counts part length"));
                }
                Ok(())
            }
            Down::Keys(keys) => {
                if keys.len() > 3 || keys.iter().any(|k| k.key.len() > MAX_KEY_BYTES) {
                    return Err(bound("published keys"));
                }
                Ok(())
            }
            Down::Issued { responses, .. } => {
                if responses.len() > MAX_ISSUE
                    || responses.iter().any(|r| r.len() != TOKEN_RESPONSE_LEN)
                {
                    return Err(bound("token responses"));
                }
                Ok(())
            }
            Down::SnapshotChanged { repository, .. } => check_name(repository),
            Down::Peers(c) => {
                if c.len() > usize::from(MAX_WANT) {
                    return Err(bound("too many candidates"));
                }
                for cand in c {
                    cand.contact.check()?;
                    check_region(cand.region.as_deref())?;
                }
                Ok(())
            }
            Down::DirectoryHead { total, .. } => {
                if *total > MAX_DIRECTORY {
                    return Err(bound("directory too large"));
                }
                Ok(())
            }
            Down::DirectoryPart(b) => {
                if b.is_empty() || b.len() > MAX_PART {
                    return Err(bound("directory part length"));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
