//! The peer wire protocol: what a client and a serving peer say to each other
//! inside a Noise channel.
//!
//! A client asks a serving peer for a byte range of an item (by [`ItemKey`],
//! the SHA-256 the distribution's index states), optionally preceded by the
//! item's [`Meta`](Message::Meta) (size, BLAKE3 root, length of the bao
//! outboard) and the outboard itself in [`Outboard`](Message::Outboard)
//! parts; the peer answers with [`Data`](Message::Data) messages, or with
//! [`Busy`](Message::Busy), [`NotFound`](Message::NotFound) or
//! [`Error`](Message::Error). [`Ping`](Message::Ping) and
//! [`Pong`](Message::Pong) keep an idle channel honest.
//!
//! This module is a codec and nothing else: bytes in, [`Message`] out and
//! back. It does no I/O, keeps no session state and trusts nothing it
//! decodes. Decoding must never allocate (payloads and text are borrowed
//! from the input), never panic on any input, and never accept a byte
//! string that is not exactly the encoding of the message it returns (the
//! codec is a bijection: see "Canonical form" below).
//!
//! # Framing
//!
//! Every message travels in exactly one Noise channel message, so it is at
//! most [`MAX_MESSAGE`] = 65,519 bytes (65,535 minus the 16-byte AEAD tag),
//! and the channel's framing says where it ends: the format carries no
//! outer length. [`Message::decode`] rejects longer input before parsing.
//! Peers agree on this format through [`WIRE_VERSION`], which the channel
//! must bind into the Noise prologue: a peer speaking another version then
//! fails the handshake instead of misparsing, which is why unknown message
//! types and error codes are rejected rather than skipped.
//!
//! # Encoding
//!
//! The encoding is [postcard] 1 of the serde-derived [`Message`], which
//! comes down to four primitives:
//!
//! - `varint`: an unsigned integer (u32 or u64) as LEB128: 7 bits per byte,
//!   least significant group first, high bit set on every byte but the
//!   last. 0 is `00`, 127 is `7f`, 128 is `80 01`, 300 is `ac 02`; a u64
//!   takes at most 10 bytes, a u32 at most 5.
//! - `bool`: one byte, `00` (false) or `01` (true); any other byte is
//!   rejected.
//! - `[32]`: a 32-byte array ([`ItemKey`], BLAKE3 root) as its 32 raw
//!   bytes, no length.
//! - `bytes`: a byte string (payloads, UTF-8 text) as `varint` length then
//!   the bytes.
//!
//! A message is its type tag (the enum discriminant, a `varint`; every tag
//! fits in one byte) followed by its fields in order:
//!
//! | tag  | message    | sent by | fields after the tag                                                       |
//! |------|------------|---------|----------------------------------------------------------------------------|
//! | `00` | `Request`  | client  | item `[32]`, offset `varint`, len `varint`, want_meta `bool`               |
//! | `01` | `Ping`     | client  | nonce `varint`                                                             |
//! | `02` | `Meta`     | server  | item `[32]`, size `varint`, root `[32]`, outboard_len `varint`             |
//! | `03` | `Outboard` | server  | offset `varint`, bytes `bytes` (1 ..= [`MAX_OUTBOARD_PART`])               |
//! | `04` | `Data`     | server  | offset `varint`, bytes `bytes` (1 ..= [`MAX_DATA_PAYLOAD`])                |
//! | `05` | `Busy`     | server  | retry_after_ms `varint` (u32)                                              |
//! | `06` | `NotFound` | server  | item `[32]`                                                                |
//! | `07` | `Error`    | server  | code `varint` (an [`ErrorCode`], one byte `00`..`05`), message `bytes` (UTF-8, ≤ [`MAX_ERROR_TEXT`]) |
//! | `08` | `Pong`     | server  | nonce `varint`                                                             |
//!
//! For example `Ping { nonce: 300 }` is `01 ac 02`, and
//! `Data { offset: 5, bytes: b"abc" }` is `04 05 03 61 62 63`; the unit
//! tests hold a known-answer vector for every message type.
//!
//! A `Data` or `Outboard` message has at most 1 (tag) + 10 (offset) + 3
//! (length ≤ 65,519) = [`MAX_DATA_HEADER`] = 14 bytes of header, which is
//! why [`MAX_DATA_PAYLOAD`] = [`MAX_OUTBOARD_PART`] = 65,519 − 14 = 65,505:
//! the largest payload that fits in one channel message whatever the
//! offset.
//!
//! # Decoding and its bounds
//!
//! [`Message::decode`] checks, in this order:
//!
//! 1. the input is at most [`MAX_MESSAGE`] bytes and not empty;
//! 2. the first byte is a known tag (and, for `Error`, the second a known
//!    [`ErrorCode`]); as every valid tag and code is a one-byte varint, any
//!    other first byte, including a continuation byte, is rejected here;
//! 3. postcard parses the message ([`postcard::take_from_bytes`]). Its
//!    slice reader checks that a length's worth of bytes remains *before*
//!    taking them (`try_take_n`), and byte strings are borrowed from the
//!    input rather than copied, so no length field can make it allocate;
//!    a cut anywhere is [`WireError::Truncated`];
//! 4. nothing follows the message ([`WireError::Trailing`]);
//! 5. the message is in canonical form (below);
//! 6. our own per-field bounds: payloads non-empty and within their
//!    maximum, error text within [`MAX_ERROR_TEXT`], and `offset + len`
//!    (for `Request`, `Data` and `Outboard`) not overflowing u64.
//!
//! Checks that need session state (a range within the item's size, an
//! outboard part within `outboard_len`, `outboard_len` matching `size` for
//! the bao-tree chunk-group size, answers matching requests) belong to the
//! peer server and the downloader, not to this codec.
//!
//! # Canonical form
//!
//! postcard's varint reader accepts over-long encodings (`80 00` for 0).
//! Accepting them would let one message have many encodings, so after
//! parsing, the decoder requires the input length to equal
//! [`Message::encoded_len`], which counts minimal varints; any over-long
//! varint makes the input longer and is rejected as
//! [`WireError::NonCanonical`]. Hence every accepted input re-encodes to
//! itself.
//!
//! # The data path
//!
//! [`Message::encode_into`] appends to a caller's buffer and allocates at
//! most once (to grow it); `Data` and `Outboard` write their header by hand
//! and copy the payload with one `extend_from_slice`, byte-identical to
//! postcard's output (tested). [`encode_data_header`] writes only the
//! header, so a server can read file bytes straight into the buffer after
//! it. [`Message::decode`] borrows payloads and text from its input
//! ([`Cow::Borrowed`]); [`Message::into_owned`] detaches a message from it.

use std::borrow::Cow;
use std::fmt;

use anonmirror_core::{ErrorKind, HasKind, ItemKey};
use serde::{Deserialize, Serialize};

/// Version of this wire format, bound into the Noise prologue so that peers
/// speaking different versions cannot complete a handshake. Bump it on any
/// change to the byte format or the meaning of a message.
pub const WIRE_VERSION: u8 = 1;

// The most bytes one encoded message may take is the channel's: a Noise
// message carries at most 65,535 bytes, 16 of which are the AEAD tag.
use anonmirror_channel::noise::MAX_MESSAGE;

/// The most bytes a postcard varint of a u64 takes (64 bits / 7 rounded up).
const MAX_VARINT_U64: usize = 10;

/// The most bytes [`encode_data_header`] writes, and the most header bytes of
/// any `Data` or `Outboard` message: tag, a worst-case offset, and the
/// payload length (which, being below [`MAX_MESSAGE`], needs at most 3).
pub const MAX_DATA_HEADER: usize = 1 + MAX_VARINT_U64 + varint_len(MAX_MESSAGE as u64);

/// The largest `Data` payload: whatever the offset, the encoded message fits
/// in [`MAX_MESSAGE`].
pub const MAX_DATA_PAYLOAD: usize = MAX_MESSAGE - MAX_DATA_HEADER;

/// The largest `Outboard` part; same layout as `Data`, so the same bound. A
/// bao outboard is about 1/256 of the item (≈ 4 MiB for 1 GiB), so it
/// takes many parts.
pub const MAX_OUTBOARD_PART: usize = MAX_DATA_PAYLOAD;

/// The longest `Error` text in bytes: enough for a human-readable reason,
/// too short to smuggle data or bloat logs.
pub const MAX_ERROR_TEXT: usize = 256;

// The payload length is encoded with a varint of the same width as
// MAX_MESSAGE's, so MAX_DATA_HEADER is exact for the largest payload, not
// just an upper bound: MAX_DATA_PAYLOAD is the largest payload that fits.
const _: () = assert!(varint_len(MAX_DATA_PAYLOAD as u64) == varint_len(MAX_MESSAGE as u64));

/// Type tags: the serde variant indices of [`Message`], in declaration
/// order. `tag_matches_serde_variant_index` keeps the two in step.
const TAG_REQUEST: u8 = 0;
const TAG_PING: u8 = 1;
const TAG_META: u8 = 2;
const TAG_OUTBOARD: u8 = 3;
const TAG_DATA: u8 = 4;
const TAG_BUSY: u8 = 5;
const TAG_NOT_FOUND: u8 = 6;
const TAG_ERROR: u8 = 7;
const TAG_PONG: u8 = 8;

/// Names by tag, for error messages about input that did not parse.
const NAMES: [&str; 9] = [
    "Request", "Ping", "Meta", "Outboard", "Data", "Busy", "NotFound", "Error", "Pong",
];

/// Bytes of a minimal LEB128 varint of `v`.
const fn varint_len(v: u64) -> usize {
    // `| 1` makes 0 count as one significant bit, hence one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `v` as a minimal LEB128 varint, exactly as postcard does.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Which end of a channel sends a message: the client asks, the serving
/// peer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The downloading peer, which opened the channel.
    Client,
    /// The serving peer.
    Server,
}

impl Sender {
    /// The other end of the channel.
    pub fn other(self) -> Sender {
        match self {
            Sender::Client => Sender::Server,
            Sender::Server => Sender::Client,
        }
    }

    /// Who sends the message type with this tag.
    fn of_tag(tag: u8) -> Sender {
        if tag <= TAG_PING {
            Sender::Client
        } else {
            Sender::Server
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Client => "client",
            Sender::Server => "server",
        })
    }
}

/// Why a server answers [`Message::Error`]. Codes are encoded as a varint of
/// their discriminant (`00` ..= `05`); unknown codes are rejected like
/// unknown message types (see [`WIRE_VERSION`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The server could not decode the client's message; it closes the
    /// channel after saying so.
    Malformed = 0,
    /// A well-formed message that the server does not accept here: one only
    /// a server sends, or one out of order.
    Unexpected = 1,
    /// The requested range lies (partly) beyond the item's size.
    RangeNotSatisfiable = 2,
    /// The requested range is larger than this server serves in one
    /// request; ask for less.
    RequestTooLarge = 3,
    /// The server failed locally (disk, store); not the client's fault.
    Internal = 4,
    /// The server is shutting down; try another peer.
    ShuttingDown = 5,
}

/// How many error codes exist; every code is one byte below this.
const ERROR_CODE_COUNT: u8 = 6;

/// One message of the peer wire protocol. See the [module docs](self) for the
/// byte format.
///
/// Payloads and text are [`Cow`]s so that [`Message::decode`] can borrow
/// them from the received plaintext instead of copying; use
/// [`Message::into_owned`] to keep a message beyond its input's lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Client → server: send bytes `offset .. offset + len` of `item`,
    /// preceded by its `Meta` and `Outboard` parts when `want_meta`.
    Request {
        /// The item, by the SHA-256 its index states.
        item: ItemKey,
        /// First byte wanted.
        offset: u64,
        /// Bytes wanted; 0 with `want_meta` asks for the metadata alone.
        len: u64,
        /// Whether to send `Meta` and the outboard first: a downloader needs
        /// them once per item, from one peer, before verifying any range.
        want_meta: bool,
    },
    /// Client → server: are you still there? Answered by `Pong`.
    Ping {
        /// Echoed in the `Pong`, to match answer to question.
        nonce: u64,
    },
    /// Server → client: what the server holds for `item`, sent before the
    /// outboard parts and data of a `want_meta` request.
    Meta {
        /// The item this describes, so that the client can match it.
        item: ItemKey,
        /// The item's size in bytes.
        size: u64,
        /// The BLAKE3 (bao) root hash every range is verified against.
        root: [u8; 32],
        /// Total length of the bao outboard that follows in `Outboard`
        /// parts; the client checks it against `size` before accepting any.
        outboard_len: u64,
    },
    /// Server → client: bytes `offset ..` of the bao outboard announced by
    /// the last `Meta`, which rarely fits in one message.
    Outboard {
        /// Position of these bytes within the outboard.
        offset: u64,
        /// 1 ..= [`MAX_OUTBOARD_PART`] bytes of outboard.
        #[serde(borrow, with = "serde_bytes")]
        bytes: Cow<'a, [u8]>,
    },
    /// Server → client: bytes `offset ..` of the requested item.
    Data {
        /// Position of these bytes within the item.
        offset: u64,
        /// 1 ..= [`MAX_DATA_PAYLOAD`] bytes of the item, unverified until
        /// checked against the outboard.
        #[serde(borrow, with = "serde_bytes")]
        bytes: Cow<'a, [u8]>,
    },
    /// Server → client: over my limits, ask someone else or retry later.
    Busy {
        /// A hint for when retrying might succeed, in milliseconds.
        retry_after_ms: u32,
    },
    /// Server → client: I do not hold `item` (announcements have false
    /// positives, so this is expected, not misbehaviour).
    NotFound {
        /// The item asked for.
        item: ItemKey,
    },
    /// Server → client: the request failed for a reason other than
    /// `Busy` or `NotFound`.
    Error {
        /// What went wrong, for the client's logic.
        code: ErrorCode,
        /// What went wrong, for a human: UTF-8, at most
        /// [`MAX_ERROR_TEXT`] bytes. Peer-supplied: never trust or log it
        /// unescaped.
        #[serde(borrow)]
        message: Cow<'a, str>,
    },
    /// Server → client: the answer to `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
}

/// What is wrong with a field of an otherwise well-formed message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A `Data` payload or `Outboard` part is larger than its maximum.
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// Its maximum.
        max: usize,
    },
    /// A `Data` payload or `Outboard` part is empty: it would make no
    /// progress, so it is never needed.
    #[error("empty payload")]
    EmptyPayload,
    /// `offset + len` does not fit in a u64.
    #[error("offset {offset} + length {len} overflows u64")]
    RangeOverflow {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
    },
    /// The `Error` text is longer than [`MAX_ERROR_TEXT`].
    #[error("error text of {len} bytes exceeds {max}")]
    TextTooLong {
        /// The text's length in bytes.
        len: usize,
        /// Its maximum.
        max: usize,
    },
    /// The `Error` code is not one of [`ErrorCode`]'s (its first byte).
    #[error("unknown error code {code:#04x}")]
    UnknownErrorCode {
        /// The code's first byte.
        code: u8,
    },
}

/// Why a message could not be decoded (the peer is at fault) or encoded (we
/// are).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input is longer than [`MAX_MESSAGE`]; rejected before parsing.
    #[error("message of {len} bytes exceeds the maximum of {MAX_MESSAGE}")]
    TooLong {
        /// The input's length.
        len: usize,
    },
    /// The input is empty.
    #[error("empty message")]
    Empty,
    /// The first byte is not a known message type.
    #[error("unknown message type {tag:#04x}")]
    UnknownType {
        /// The first byte.
        tag: u8,
    },
    /// The input ends before the message does.
    #[error("{message} message: truncated")]
    Truncated {
        /// The message type, from its tag.
        message: &'static str,
    },
    /// postcard rejected a field: a varint longer than its type, a bool
    /// other than 0 or 1, text that is not UTF-8.
    #[error("{message} message: malformed ({reason})")]
    Malformed {
        /// The message type, from its tag.
        message: &'static str,
        /// postcard's complaint.
        #[source]
        reason: postcard::Error,
    },
    /// Bytes follow the end of the message.
    #[error("trailing {extra} bytes after {message}")]
    Trailing {
        /// The message type.
        message: &'static str,
        /// How many bytes follow it.
        extra: usize,
    },
    /// An integer or length is encoded with more bytes than needed.
    #[error("{message} message: non-canonical encoding (an over-long varint)")]
    NonCanonical {
        /// The message type.
        message: &'static str,
    },
    /// A field breaks one of this protocol's bounds.
    #[error("{message} message: {violation}")]
    Invalid {
        /// The message type.
        message: &'static str,
        /// What is wrong.
        violation: Violation,
    },
    /// A message came from the wrong end of the channel (e.g. a client
    /// sending `Data`).
    #[error("{message} message sent by a {from}, but only a {} sends it", .from.other())]
    WrongSender {
        /// The message type.
        message: &'static str,
        /// Who sent it.
        from: Sender,
    },
    /// We were asked to encode a message that breaks a bound: a bug in the
    /// caller, caught before it reaches the peer.
    #[error("cannot encode {message} message: {violation}")]
    Unencodable {
        /// The message type.
        message: &'static str,
        /// What is wrong.
        violation: Violation,
    },
    /// postcard failed to serialize a message. Serializing into a `Vec`
    /// cannot fail for these types, so this would be a bug.
    #[error("cannot encode {message} message: {reason}")]
    Encode {
        /// The message type.
        message: &'static str,
        /// postcard's complaint.
        #[source]
        reason: postcard::Error,
    },
}

impl HasKind for WireError {
    fn kind(&self) -> ErrorKind {
        match self {
            WireError::Unencodable { .. } | WireError::Encode { .. } => ErrorKind::Internal,
            _ => ErrorKind::PeerMisbehaved,
        }
    }
}

/// A postcard output flavor appending to a borrowed `Vec`, so that encoding
/// reuses the caller's buffer (postcard's own `to_extend` takes the
/// collection by value and pushes byte by byte).
struct AppendVec<'v>(&'v mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Checks the bounds of a `Data` payload or `Outboard` part.
fn check_part(offset: u64, len: usize, max: usize) -> Result<(), Violation> {
    if len == 0 {
        return Err(Violation::EmptyPayload);
    }
    if len > max {
        return Err(Violation::PayloadTooLarge { len, max });
    }
    check_range(offset, len as u64)
}

fn check_range(offset: u64, len: u64) -> Result<(), Violation> {
    match offset.checked_add(len) {
        Some(_) => Ok(()),
        None => Err(Violation::RangeOverflow { offset, len }),
    }
}

/// Appends the header of a `Data` or `Outboard` message, as postcard would
/// write it. The caller has checked the bounds.
fn put_part_header(out: &mut Vec<u8>, tag: u8, offset: u64, len: usize) {
    out.push(tag);
    put_varint(out, offset);
    put_varint(out, len as u64);
}

/// Appends the header of a `Data { offset, bytes }` message whose payload
/// is `payload_len` bytes long; the caller must then append exactly
/// `payload_len` bytes of payload (e.g. by reading the item's file straight
/// into `out`). Writes at most [`MAX_DATA_HEADER`] bytes.
///
/// Fails, writing nothing, if the payload is empty, larger than
/// [`MAX_DATA_PAYLOAD`], or `offset + payload_len` overflows.
pub fn encode_data_header(
    out: &mut Vec<u8>,
    offset: u64,
    payload_len: usize,
) -> Result<(), WireError> {
    check_part(offset, payload_len, MAX_DATA_PAYLOAD).map_err(|violation| {
        WireError::Unencodable {
            message: NAMES[TAG_DATA as usize],
            violation,
        }
    })?;
    put_part_header(out, TAG_DATA, offset, payload_len);
    Ok(())
}

/// The header length of a `Data` message at `offset` whose whole encoding
/// is `message_len` bytes long, if such a message can exist: what a
/// receiver needs to open the message so that its payload lands where it
/// wants it.
pub(crate) fn data_header_len(offset: u64, message_len: usize) -> Option<usize> {
    let fixed = 1 + varint_len(offset);
    (1..=varint_len(MAX_DATA_PAYLOAD as u64)).find_map(|k| {
        let payload = message_len.checked_sub(fixed + k)?;
        (payload > 0 && varint_len(payload as u64) == k).then_some(fixed + k)
    })
}

impl<'a> Message<'a> {
    /// The type tag: the first byte of the encoding.
    fn tag(&self) -> u8 {
        match self {
            Message::Request { .. } => TAG_REQUEST,
            Message::Ping { .. } => TAG_PING,
            Message::Meta { .. } => TAG_META,
            Message::Outboard { .. } => TAG_OUTBOARD,
            Message::Data { .. } => TAG_DATA,
            Message::Busy { .. } => TAG_BUSY,
            Message::NotFound { .. } => TAG_NOT_FOUND,
            Message::Error { .. } => TAG_ERROR,
            Message::Pong { .. } => TAG_PONG,
        }
    }

    /// The message type's name, as error messages and logs use it.
    pub fn name(&self) -> &'static str {
        NAMES[self.tag() as usize]
    }

    /// Which end of the channel sends this message.
    pub fn sender(&self) -> Sender {
        Sender::of_tag(self.tag())
    }

    /// Whether a client sends this message (`Request`, `Ping`); a server
    /// sends every other.
    pub fn sent_by_client(&self) -> bool {
        self.sender() == Sender::Client
    }

    /// The exact length of this message's encoding (with minimal varints),
    /// valid or not.
    pub fn encoded_len(&self) -> usize {
        let vl = varint_len;
        1 + match self {
            Message::Request { offset, len, .. } => 32 + vl(*offset) + vl(*len) + 1,
            Message::Ping { nonce } | Message::Pong { nonce } => vl(*nonce),
            Message::Meta {
                size, outboard_len, ..
            } => 32 + vl(*size) + 32 + vl(*outboard_len),
            Message::Outboard { offset, bytes } | Message::Data { offset, bytes } => {
                vl(*offset) + vl(bytes.len() as u64) + bytes.len()
            }
            Message::Busy { retry_after_ms } => vl(u64::from(*retry_after_ms)),
            Message::NotFound { .. } => 32,
            Message::Error { code, message } => {
                vl(*code as u64) + vl(message.len() as u64) + message.len()
            }
        }
    }

    /// Checks this protocol's own bounds on the fields.
    fn validate(&self) -> Result<(), Violation> {
        match self {
            Message::Request { offset, len, .. } => check_range(*offset, *len),
            Message::Outboard { offset, bytes } => {
                check_part(*offset, bytes.len(), MAX_OUTBOARD_PART)
            }
            Message::Data { offset, bytes } => check_part(*offset, bytes.len(), MAX_DATA_PAYLOAD),
            Message::Error { message, .. } if message.len() > MAX_ERROR_TEXT => {
                Err(Violation::TextTooLong {
                    len: message.len(),
                    max: MAX_ERROR_TEXT,
                })
            }
            Message::Error { .. }
            | Message::Ping { .. }
            | Message::Meta { .. }
            | Message::Busy { .. }
            | Message::NotFound { .. }
            | Message::Pong { .. } => Ok(()),
        }
    }

    /// Appends the encoding of this message to `out`, growing it at most
    /// once. On error nothing is appended.
    ///
    /// Fails if a field breaks a bound (see [`Violation`]), so that we never
    /// send what a peer must reject.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.validate()
            .map_err(|violation| WireError::Unencodable {
                message: self.name(),
                violation,
            })?;
        out.reserve(self.encoded_len());
        match self {
            // The data path: header by hand, payload in one copy.
            Message::Outboard { offset, bytes } | Message::Data { offset, bytes } => {
                put_part_header(out, self.tag(), *offset, bytes.len());
                out.extend_from_slice(bytes);
            }
            _ => {
                let start = out.len();
                if let Err(reason) = postcard::serialize_with_flavor(self, AppendVec(out)) {
                    out.truncate(start);
                    return Err(WireError::Encode {
                        message: self.name(),
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    /// The encoding of this message in a new, exactly sized buffer.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes one whole message, borrowing payloads and text from `input`.
    ///
    /// `input` must be exactly one message (one Noise channel message's
    /// plaintext): anything shorter, longer, over-long or out of bounds is
    /// an error, and every accepted input re-encodes to itself. See the
    /// [module docs](self) for the checks and their order.
    pub fn decode(input: &'a [u8]) -> Result<Message<'a>, WireError> {
        if input.len() > MAX_MESSAGE {
            return Err(WireError::TooLong { len: input.len() });
        }
        let tag = *input.first().ok_or(WireError::Empty)?;
        // Every valid tag is a one-byte varint, so a first byte that is not
        // a known tag (including any byte with the continuation bit) can
        // never start a valid message. Checked here because postcard
        // reports an unknown variant only as an anonymous serde error.
        let message = *NAMES
            .get(usize::from(tag))
            .ok_or(WireError::UnknownType { tag })?;
        if tag == TAG_ERROR {
            // The same for the error code, the only other enum.
            let code = *input.get(1).ok_or(WireError::Truncated { message })?;
            if code >= ERROR_CODE_COUNT {
                return Err(WireError::Invalid {
                    message,
                    violation: Violation::UnknownErrorCode { code },
                });
            }
        }
        let (decoded, rest) =
            postcard::take_from_bytes::<Message<'a>>(input).map_err(|reason| match reason {
                postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated { message },
                reason => WireError::Malformed { message, reason },
            })?;
        if !rest.is_empty() {
            return Err(WireError::Trailing {
                message,
                extra: rest.len(),
            });
        }
        if decoded.encoded_len() != input.len() {
            return Err(WireError::NonCanonical { message });
        }
        decoded
            .validate()
            .map_err(|violation| WireError::Invalid { message, violation })?;
        Ok(decoded)
    }

    /// Decodes a message received from `from`, rejecting one that only the
    /// other end may send (a client's `Data`, a server's `Request`) before
    /// parsing it.
    pub fn decode_from(from: Sender, input: &'a [u8]) -> Result<Message<'a>, WireError> {
        if let Some(message) = input
            .first()
            .filter(|tag| Sender::of_tag(**tag) != from)
            .and_then(|tag| NAMES.get(usize::from(*tag)))
        {
            return Err(WireError::WrongSender { message, from });
        }
        Message::decode(input)
    }

    /// This message with its payload or text copied out of the input it
    /// was decoded from.
    pub fn into_owned(self) -> Message<'static> {
        match self {
            Message::Request {
                item,
                offset,
                len,
                want_meta,
            } => Message::Request {
                item,
                offset,
                len,
                want_meta,
            },
            Message::Ping { nonce } => Message::Ping { nonce },
            Message::Meta {
                item,
                size,
                root,
                outboard_len,
            } => Message::Meta {
                item,
                size,
                root,
                outboard_len,
            },
            Message::Outboard { offset, bytes } => Message::Outboard {
                offset,
                bytes: Cow::Owned(bytes.into_owned()),
            },
            Message::Data { offset, bytes } => Message::Data {
                offset,
                bytes: Cow::Owned(bytes.into_owned()),
            },
            Message::Busy { retry_after_ms } => Message::Busy { retry_after_ms },
            Message::NotFound { item } => Message::NotFound { item },
            Message::Error { code, message } => Message::Error {
                code,
                message: Cow::Owned(message.into_owned()),
            },
            Message::Pong { nonce } => Message::Pong { nonce },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;

    /// `data_header_len` predicts the header of every encodable `Data`.
    #[test]
    fn data_header_len_matches_the_encoding() {
        for offset in [0u64, 1, 127, 128, 16_383, 16_384, 1 << 40, u64::MAX / 2] {
            for n in [
                1usize,
                2,
                127,
                128,
                129,
                16_383,
                16_384,
                65_000,
                MAX_DATA_PAYLOAD,
            ] {
                let mut out = Vec::new();
                encode_data_header(&mut out, offset, n).expect("encodable");
                assert_eq!(
                    data_header_len(offset, out.len() + n),
                    Some(out.len()),
                    "offset {offset}, payload {n}"
                );
            }
        }
        assert_eq!(data_header_len(0, 2), None);
    }

    fn key(b: u8) -> ItemKey {
        ItemKey([b; 32])
    }

    fn hex_of(msg: &Message<'_>) -> String {
        hex::encode(msg.encode().expect("encodable"))
    }

    fn data(offset: u64, bytes: &[u8]) -> Message<'_> {
        Message::Data {
            offset,
            bytes: Cow::Borrowed(bytes),
        }
    }

    // ---- Known answers: one vector per message type, byte by byte. ----

    #[test]
    fn known_answer_request() {
        let msg = Message::Request {
            item: key(0x11),
            offset: 0,
            len: 16_384, // 2^14: `80 80 01`
            want_meta: true,
        };
        assert_eq!(
            hex_of(&msg),
            format!("00{}00808001{}", "11".repeat(32), "01")
        );
        let no_meta = Message::Request {
            item: key(0x11),
            offset: 127,
            len: 128,
            want_meta: false,
        };
        assert_eq!(hex_of(&no_meta), format!("00{}7f800100", "11".repeat(32)));
    }

    #[test]
    fn known_answer_ping_pong() {
        assert_eq!(hex_of(&Message::Ping { nonce: 0 }), "0100");
        assert_eq!(hex_of(&Message::Ping { nonce: 300 }), "01ac02");
        // u64::MAX: nine `ff` then `01` — the 10-byte worst case.
        assert_eq!(
            hex_of(&Message::Pong { nonce: u64::MAX }),
            "08ffffffffffffffffff01"
        );
    }

    #[test]
    fn known_answer_meta() {
        let msg = Message::Meta {
            item: key(0xaa),
            size: 1_000_000,    // c0 84 3d
            root: [0xbb; 32],   // raw, no length
            outboard_len: 3968, // 80 1f
        };
        assert_eq!(
            hex_of(&msg),
            format!("02{}c0843d{}801f", "aa".repeat(32), "bb".repeat(32))
        );
    }

    #[test]
    fn known_answer_outboard_and_data() {
        let ob = Message::Outboard {
            offset: 64,
            bytes: Cow::Borrowed(&[1, 2]),
        };
        assert_eq!(hex_of(&ob), "0340020102");
        assert_eq!(hex_of(&data(5, b"abc")), "040503616263");
    }

    #[test]
    fn known_answer_busy_not_found_error() {
        assert_eq!(
            hex_of(&Message::Busy {
                retry_after_ms: 1000
            }),
            "05e807"
        );
        assert_eq!(
            hex_of(&Message::NotFound { item: key(0x22) }),
            format!("06{}", "22".repeat(32))
        );
        let err = Message::Error {
            code: ErrorCode::RangeNotSatisfiable,
            message: Cow::Borrowed("no"),
        };
        assert_eq!(hex_of(&err), "0702026e6f");
        let codes = [
            (ErrorCode::Malformed, 0),
            (ErrorCode::Unexpected, 1),
            (ErrorCode::RangeNotSatisfiable, 2),
            (ErrorCode::RequestTooLarge, 3),
            (ErrorCode::Internal, 4),
            (ErrorCode::ShuttingDown, 5),
        ];
        assert_eq!(codes.len(), usize::from(ERROR_CODE_COUNT));
        for (code, byte) in codes {
            let msg = Message::Error {
                code,
                message: Cow::Borrowed(""),
            };
            assert_eq!(msg.encode().expect("encodable"), [TAG_ERROR, byte, 0]);
        }
    }

    #[test]
    fn known_answers_decode_back() {
        let cases: [(&str, Message<'static>); 3] = [
            ("01ac02", Message::Ping { nonce: 300 }),
            ("040503616263", data(5, b"abc").into_owned()),
            (
                "0702026e6f",
                Message::Error {
                    code: ErrorCode::RangeNotSatisfiable,
                    message: Cow::Borrowed("no"),
                },
            ),
        ];
        for (hex, want) in cases {
            let bytes = hex::decode(hex).expect("hex");
            assert_eq!(Message::decode(&bytes).expect(hex), want);
        }
    }

    #[test]
    fn tag_matches_serde_variant_index() {
        // Encode one of each through postcard alone, and compare its first
        // byte with our tag and name tables.
        let all = [
            Message::Request {
                item: key(0),
                offset: 0,
                len: 0,
                want_meta: false,
            },
            Message::Ping { nonce: 0 },
            Message::Meta {
                item: key(0),
                size: 0,
                root: [0; 32],
                outboard_len: 0,
            },
            Message::Outboard {
                offset: 0,
                bytes: Cow::Borrowed(b"x"),
            },
            data(0, b"x"),
            Message::Busy { retry_after_ms: 0 },
            Message::NotFound { item: key(0) },
            Message::Error {
                code: ErrorCode::Internal,
                message: Cow::Borrowed(""),
            },
            Message::Pong { nonce: 0 },
        ];
        assert_eq!(all.len(), NAMES.len());
        for (i, msg) in all.iter().enumerate() {
            let bytes = postcard::to_allocvec(msg).expect("postcard");
            assert_eq!(usize::from(bytes[0]), i, "{msg:?}");
            assert_eq!(msg.tag(), bytes[0]);
            assert_eq!(format!("{msg:?}").split(' ').next(), Some(msg.name()));
        }
    }

    // ---- Rejections, with the message a user would read. ----

    fn decode_err(bytes: &[u8]) -> WireError {
        Message::decode(bytes).expect_err("must be rejected")
    }

    #[test]
    fn rejects_oversized_input_before_parsing() {
        // A valid tag followed by garbage: still TooLong, not Malformed.
        let mut big = vec![TAG_PING; MAX_MESSAGE + 1];
        big[1] = 0;
        let err = decode_err(&big);
        assert_eq!(
            err,
            WireError::TooLong {
                len: MAX_MESSAGE + 1
            }
        );
        assert_eq!(
            err.to_string(),
            "message of 65520 bytes exceeds the maximum of 65519"
        );
        assert_eq!(err.kind(), ErrorKind::PeerMisbehaved);
    }

    #[test]
    fn rejects_empty_and_unknown_types() {
        assert_eq!(decode_err(&[]), WireError::Empty);
        assert_eq!(decode_err(&[9]), WireError::UnknownType { tag: 9 });
        assert_eq!(decode_err(&[9]).to_string(), "unknown message type 0x09");
        // An over-long varint of tag 1 is not a valid tag either.
        assert_eq!(
            decode_err(&[0x81, 0x00, 0x00]),
            WireError::UnknownType { tag: 0x81 }
        );
    }

    #[test]
    fn rejects_unknown_error_code() {
        let err = decode_err(&[TAG_ERROR, 6, 0]);
        assert_eq!(err.to_string(), "Error message: unknown error code 0x06");
        assert_eq!(
            decode_err(&[TAG_ERROR]),
            WireError::Truncated { message: "Error" }
        );
    }

    #[test]
    fn rejects_trailing_bytes_with_a_clear_message() {
        let err = decode_err(&[TAG_PONG, 7, 1, 2, 3]);
        assert_eq!(err.to_string(), "trailing 3 bytes after Pong");
    }

    #[test]
    fn rejects_non_canonical_varints() {
        // Ping { nonce: 0 } with the nonce as `80 00`.
        assert_eq!(
            decode_err(&[TAG_PING, 0x80, 0x00]),
            WireError::NonCanonical { message: "Ping" }
        );
        // Data whose payload length 1 is written `81 00`.
        assert_eq!(
            decode_err(&[TAG_DATA, 0, 0x81, 0x00, 0xee]),
            WireError::NonCanonical { message: "Data" }
        );
    }

    #[test]
    fn rejects_malformed_fields() {
        // want_meta = 2.
        let mut req = Message::Request {
            item: key(1),
            offset: 0,
            len: 1,
            want_meta: true,
        }
        .encode()
        .expect("encodable");
        *req.last_mut().expect("non-empty") = 2;
        assert_eq!(
            decode_err(&req),
            WireError::Malformed {
                message: "Request",
                reason: postcard::Error::DeserializeBadBool
            }
        );
        // An 11-byte varint cannot be a u64.
        let mut ping = vec![TAG_PING];
        ping.extend_from_slice(&[0xff; 10]);
        ping.push(0x01);
        assert!(matches!(
            decode_err(&ping),
            WireError::Malformed {
                message: "Ping",
                ..
            }
        ));
        // u64::MAX + 1 in 10 bytes.
        let mut over = vec![TAG_PING];
        over.extend_from_slice(&[0x80; 9]);
        over.push(0x02);
        assert!(matches!(decode_err(&over), WireError::Malformed { .. }));
        // A u32 field holding 2^32.
        let busy = [TAG_BUSY, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(matches!(
            decode_err(&busy),
            WireError::Malformed {
                message: "Busy",
                ..
            }
        ));
        // Error text that is not UTF-8.
        assert_eq!(
            decode_err(&[TAG_ERROR, 0, 1, 0xff]),
            WireError::Malformed {
                message: "Error",
                reason: postcard::Error::DeserializeBadUtf8
            }
        );
    }

    #[test]
    fn rejects_length_fields_beyond_the_input_without_allocating() {
        // A Data payload claiming 65,505 bytes with 3 present: postcard
        // checks the remaining input before taking the bytes.
        let mut msg = vec![TAG_DATA, 0];
        put_varint(&mut msg, MAX_DATA_PAYLOAD as u64);
        msg.extend_from_slice(b"abc");
        assert_eq!(decode_err(&msg), WireError::Truncated { message: "Data" });
        // An error text claiming u64::MAX bytes.
        let mut err = vec![TAG_ERROR, 0];
        put_varint(&mut err, u64::MAX);
        assert!(matches!(
            decode_err(&err),
            WireError::Truncated { .. } | WireError::Malformed { .. }
        ));
    }

    #[test]
    fn rejects_field_bounds() {
        assert_eq!(
            decode_err(&[TAG_DATA, 0, 0]).to_string(),
            "Data message: empty payload"
        );
        assert_eq!(
            decode_err(&[TAG_OUTBOARD, 0, 0]).to_string(),
            "Outboard message: empty payload"
        );
        let mut long = vec![TAG_ERROR, 4];
        put_varint(&mut long, 257);
        long.extend_from_slice(&[b'x'; 257]);
        assert_eq!(
            decode_err(&long).to_string(),
            "Error message: error text of 257 bytes exceeds 256"
        );
        let mut overflow = vec![TAG_REQUEST];
        overflow.extend_from_slice(&[0; 32]);
        put_varint(&mut overflow, u64::MAX);
        put_varint(&mut overflow, 1);
        overflow.push(0);
        assert_eq!(
            decode_err(&overflow).to_string(),
            "Request message: offset 18446744073709551615 + length 1 overflows u64"
        );
        let mut data_overflow = vec![TAG_DATA];
        put_varint(&mut data_overflow, u64::MAX - 1);
        data_overflow.extend_from_slice(&[2, 0xaa, 0xbb]);
        assert!(matches!(
            decode_err(&data_overflow),
            WireError::Invalid {
                message: "Data",
                violation: Violation::RangeOverflow { .. }
            }
        ));
        // Exactly reaching u64::MAX is fine: the range ends there.
        let end = Message::Request {
            item: key(3),
            offset: u64::MAX - 5,
            len: 5,
            want_meta: false,
        };
        let bytes = end.encode().expect("encodable");
        assert_eq!(Message::decode(&bytes), Ok(end));
    }

    #[test]
    fn error_text_at_its_bound() {
        let text = "é".repeat(MAX_ERROR_TEXT / 2); // 256 bytes of 2-byte chars
        let msg = Message::Error {
            code: ErrorCode::Internal,
            message: Cow::Owned(text),
        };
        let bytes = msg.encode().expect("encodable");
        assert_eq!(Message::decode(&bytes), Ok(msg));
        let too_long = Message::Error {
            code: ErrorCode::Internal,
            message: Cow::Owned("x".repeat(MAX_ERROR_TEXT + 1)),
        };
        let err = too_long.encode().expect_err("too long");
        assert_eq!(
            err.to_string(),
            "cannot encode Error message: error text of 257 bytes exceeds 256"
        );
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    // ---- The data path's bounds. ----

    #[test]
    fn max_payload_constants() {
        assert_eq!(MAX_MESSAGE, 65_519);
        assert_eq!(MAX_DATA_HEADER, 14);
        assert_eq!(MAX_DATA_PAYLOAD, 65_505);
        assert_eq!(MAX_OUTBOARD_PART, MAX_DATA_PAYLOAD);
    }

    #[test]
    fn max_data_payload_fills_a_channel_message_exactly() {
        let payload = vec![0x5a; MAX_DATA_PAYLOAD];
        // The largest offset whose range still fits in u64 needs a 10-byte
        // varint: the worst-case header.
        let offset = u64::MAX - MAX_DATA_PAYLOAD as u64;
        assert_eq!(varint_len(offset), MAX_VARINT_U64);
        let msg = data(offset, &payload);
        let bytes = msg.encode().expect("at the bound");
        assert_eq!(bytes.len(), MAX_MESSAGE);
        assert_eq!(Message::decode(&bytes), Ok(msg));
        // Outboard parts share the layout and the bound.
        let mut ob = bytes.clone();
        ob[0] = TAG_OUTBOARD;
        assert!(matches!(Message::decode(&ob), Ok(Message::Outboard { .. })));
    }

    #[test]
    fn one_byte_over_max_data_payload_is_rejected_both_ways() {
        let payload = vec![0x5a; MAX_DATA_PAYLOAD + 1];
        let err = data(0, &payload).encode().expect_err("over the bound");
        assert_eq!(
            err.to_string(),
            "cannot encode Data message: payload of 65506 bytes exceeds 65505"
        );
        let ob = Message::Outboard {
            offset: 0,
            bytes: Cow::Borrowed(&payload),
        };
        assert!(matches!(
            ob.encode(),
            Err(WireError::Unencodable {
                message: "Outboard",
                ..
            })
        ));
        let mut buf = vec![7];
        assert!(encode_data_header(&mut buf, 0, MAX_DATA_PAYLOAD + 1).is_err());
        assert!(encode_data_header(&mut buf, 0, 0).is_err());
        assert!(encode_data_header(&mut buf, u64::MAX, 1).is_err());
        assert_eq!(buf, [7], "a failed encode appends nothing");

        // Hand-made with a small offset, it fits in MAX_MESSAGE, so only our
        // own bound catches it.
        let mut bytes = vec![TAG_DATA, 0];
        put_varint(&mut bytes, payload.len() as u64);
        bytes.extend_from_slice(&payload);
        assert!(bytes.len() <= MAX_MESSAGE);
        let err = decode_err(&bytes);
        assert_eq!(
            err.to_string(),
            "Data message: payload of 65506 bytes exceeds 65505"
        );
        assert_eq!(err.kind(), ErrorKind::PeerMisbehaved);
    }

    #[test]
    fn decode_borrows_payload_and_text() {
        let bytes = data(9, b"payload").encode().expect("encodable");
        match Message::decode(&bytes).expect("valid") {
            Message::Data {
                bytes: Cow::Borrowed(b),
                offset: 9,
            } => assert_eq!(b, b"payload"),
            other => panic!("expected borrowed Data, got {other:?}"),
        }
        let err = Message::Error {
            code: ErrorCode::Malformed,
            message: Cow::Borrowed("bad"),
        }
        .encode()
        .expect("encodable");
        assert!(matches!(
            Message::decode(&err),
            Ok(Message::Error {
                message: Cow::Borrowed("bad"),
                ..
            })
        ));
    }

    #[test]
    fn encode_into_appends_and_reuses_the_buffer() {
        let mut buf = Vec::with_capacity(MAX_MESSAGE);
        let cap = buf.capacity();
        buf.push(0xee);
        data(1, &[1; 1000]).encode_into(&mut buf).expect("ok");
        Message::Ping { nonce: 1 }
            .encode_into(&mut buf)
            .expect("ok");
        assert_eq!(buf.capacity(), cap, "no reallocation");
        assert_eq!(buf[0], 0xee);
        assert_eq!(&buf[buf.len() - 2..], [TAG_PING, 1]);
    }

    #[test]
    fn wrong_sender_is_rejected_before_parsing() {
        // A client sending Data: even a truncated one is named for what it
        // is.
        let err = Message::decode_from(Sender::Client, &[TAG_DATA]).expect_err("server-only");
        assert_eq!(
            err,
            WireError::WrongSender {
                message: "Data",
                from: Sender::Client
            }
        );
        assert_eq!(
            err.to_string(),
            "Data message sent by a client, but only a server sends it"
        );
        let ping = [TAG_PING, 0];
        assert_eq!(
            Message::decode_from(Sender::Server, &ping)
                .expect_err("client-only")
                .to_string(),
            "Ping message sent by a server, but only a client sends it"
        );
        assert_eq!(
            Message::decode_from(Sender::Client, &ping),
            Ok(Message::Ping { nonce: 0 })
        );
        // Unknown types are still reported as such.
        assert_eq!(
            Message::decode_from(Sender::Client, &[0x42]),
            Err(WireError::UnknownType { tag: 0x42 })
        );
    }

    // ---- Properties. ----

    fn arb_key() -> impl Strategy<Value = ItemKey> {
        any::<[u8; 32]>().prop_map(ItemKey)
    }

    /// Offsets biased to the varint width boundaries and the u64 edge.
    fn arb_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            0..300u64,
            (0..=9u32).prop_map(|k| 1u64 << (7 * k)),
            (0..=9u32).prop_map(|k| (1u64 << (7 * k)).wrapping_sub(1)),
        ]
    }

    fn arb_payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 1..600),
            1 => proptest::collection::vec(any::<u8>(), max - 4..=max),
        ]
    }

    fn arb_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::Malformed),
            Just(ErrorCode::Unexpected),
            Just(ErrorCode::RangeNotSatisfiable),
            Just(ErrorCode::RequestTooLarge),
            Just(ErrorCode::Internal),
            Just(ErrorCode::ShuttingDown),
        ]
    }

    /// Every message type, with valid fields.
    fn arb_message() -> impl Strategy<Value = Message<'static>> {
        prop_oneof![
            (arb_key(), arb_u64(), arb_u64(), any::<bool>()).prop_map(
                |(item, offset, len, want_meta)| Message::Request {
                    item,
                    offset: offset.min(u64::MAX - len),
                    len,
                    want_meta,
                }
            ),
            arb_u64().prop_map(|nonce| Message::Ping { nonce }),
            (arb_key(), arb_u64(), any::<[u8; 32]>(), arb_u64()).prop_map(
                |(item, size, root, outboard_len)| Message::Meta {
                    item,
                    size,
                    root,
                    outboard_len,
                }
            ),
            (arb_u64(), arb_payload(MAX_OUTBOARD_PART)).prop_map(|(offset, bytes)| {
                Message::Outboard {
                    offset: offset.min(u64::MAX - bytes.len() as u64),
                    bytes: Cow::Owned(bytes),
                }
            }),
            (arb_u64(), arb_payload(MAX_DATA_PAYLOAD)).prop_map(|(offset, bytes)| {
                Message::Data {
                    offset: offset.min(u64::MAX - bytes.len() as u64),
                    bytes: Cow::Owned(bytes),
                }
            }),
            any::<u32>().prop_map(|retry_after_ms| Message::Busy { retry_after_ms }),
            arb_key().prop_map(|item| Message::NotFound { item }),
            (arb_code(), "\\PC{0,64}").prop_map(|(code, text)| {
                // Trim to the byte bound on a char boundary.
                let mut end = text.len().min(MAX_ERROR_TEXT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                Message::Error {
                    code,
                    message: Cow::Owned(text[..end].to_owned()),
                }
            }),
            arb_u64().prop_map(|nonce| Message::Pong { nonce }),
        ]
    }

    /// Decodes `bytes` and, if accepted, checks the codec is a bijection
    /// there: the message re-encodes to exactly `bytes`.
    fn decode_is_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(msg) = Message::decode(bytes) {
            prop_assert_eq!(msg.encode().expect("a decoded message re-encodes"), bytes);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: Some(Box::new(
                FileFailurePersistence::SourceParallel("proptest-regressions"),
            )),
            ..ProptestConfig::default()
        })]

        #[test]
        fn round_trips(msg in arb_message()) {
            let bytes = msg.encode().expect("valid messages encode");
            prop_assert!(bytes.len() <= MAX_MESSAGE);
            prop_assert_eq!(bytes.len(), msg.encoded_len());
            prop_assert_eq!(bytes[0], msg.tag());
            // The hand-written data path writes what postcard would.
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&msg).expect("postcard"));
            prop_assert_eq!(Message::decode(&bytes).expect("decodes"), msg.clone());
            prop_assert_eq!(
                Message::decode_from(msg.sender(), &bytes).expect("right sender"),
                msg.clone()
            );
            let wrong_sender = matches!(
                Message::decode_from(msg.sender().other(), &bytes),
                Err(WireError::WrongSender { .. })
            );
            prop_assert!(wrong_sender);
            prop_assert_eq!(msg.sent_by_client(), msg.sender() == Sender::Client);
        }

        #[test]
        fn data_header_plus_payload_is_the_data_message(
            offset in arb_u64(),
            payload in arb_payload(MAX_DATA_PAYLOAD),
            prefix in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let offset = offset.min(u64::MAX - payload.len() as u64);
            let mut buf = prefix.clone();
            encode_data_header(&mut buf, offset, payload.len()).expect("in bounds");
            prop_assert!(buf.len() - prefix.len() <= MAX_DATA_HEADER);
            buf.extend_from_slice(&payload);
            let msg = data(offset, &payload);
            prop_assert_eq!(&buf[prefix.len()..], &msg.encode().expect("encodes")[..]);
        }

        #[test]
        fn every_strict_prefix_is_truncated(msg in arb_message()) {
            let bytes = msg.encode().expect("valid messages encode");
            prop_assert_eq!(Message::decode(&bytes[..0]), Err(WireError::Empty));
            for cut in 1..bytes.len() {
                let result = Message::decode(&bytes[..cut]);
                prop_assert_eq!(
                    result,
                    Err(WireError::Truncated { message: msg.name() }),
                    "prefix of {} of {} bytes", cut, bytes.len()
                );
            }
        }

        #[test]
        fn trailing_garbage_is_rejected(
            msg in arb_message(),
            extra in proptest::collection::vec(any::<u8>(), 1..=8),
        ) {
            let mut bytes = msg.encode().expect("valid messages encode");
            bytes.extend_from_slice(&extra);
            let expected = if bytes.len() > MAX_MESSAGE {
                WireError::TooLong { len: bytes.len() }
            } else {
                WireError::Trailing { message: msg.name(), extra: extra.len() }
            };
            prop_assert_eq!(Message::decode(&bytes), Err(expected));
        }

        #[test]
        fn overlong_varints_are_non_canonical(nonce in arb_u64(), pad in 1usize..=9) {
            // Re-spell the nonce with `pad` extra zero groups (within the 10
            // bytes postcard allows): the same value in more bytes.
            let pad = pad.min(MAX_VARINT_U64 - varint_len(nonce));
            prop_assume!(pad > 0);
            let mut bytes = vec![TAG_PING];
            put_varint(&mut bytes, nonce);
            if let Some(last) = bytes.last_mut() {
                *last |= 0x80;
            }
            bytes.extend(std::iter::repeat_n(0x80, pad - 1));
            bytes.push(0x00);
            prop_assert_eq!(
                Message::decode(&bytes),
                Err(WireError::NonCanonical { message: "Ping" })
            );
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            decode_is_canonical(&bytes)?;
            // Also behind each valid tag, to get past the first check.
            for tag in 0..NAMES.len() as u8 {
                let mut tagged = vec![tag];
                tagged.extend_from_slice(&bytes);
                decode_is_canonical(&tagged)?;
                let _ = Message::decode_from(Sender::Client, &tagged);
            }
        }

        #[test]
        fn mutated_encodings_never_panic(
            msg in arb_message(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = msg.encode().expect("valid messages encode");
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            decode_is_canonical(&bytes)?;
        }
    }
}
