//! Errors of the overlay: what went wrong on a channel, and who is to blame.
//!
//! Every variant ends the channel it happened on: the sans-I/O core stores
//! the first error and returns a clone of it from every later call, so a
//! channel never continues past a byte it could not authenticate. Variants
//! therefore derive `Clone`; I/O errors are shared behind an [`Arc`].
//!
//! Frames are numbered per direction from 0: frame 0 is the handshake
//! message, frame 1 the first transport message (its Noise nonce is 0).
//!
//! Messages must never contain a peer's address, key or payload bytes:
//! callers wrap those in [`anonmirror_core::Sensitive`] themselves.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anonmirror_core::{ErrorKind, HasKind};

/// A channel failed. See the module docs for frame numbering.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A received transport frame did not authenticate: it was tampered
    /// with, replayed, reordered, or its length prefix was altered so that
    /// its bytes ran into the next frame's.
    #[error("frame {frame} from the peer failed authentication (tampered, replayed or misframed)")]
    Decrypt {
        /// The frame's number in its direction.
        frame: u64,
    },
    /// A handshake message did not authenticate. For message 1 the
    /// initiator used another key for us than ours, or another prologue
    /// (protocol version, level or epoch); for message 2 the responder does
    /// not hold the key we pinned for it, or the message was tampered with.
    #[error(
        "handshake message {message} failed authentication: the peers disagree on the \
         responder's key or on the prologue (protocol version, level, epoch)"
    )]
    HandshakeAuth {
        /// 1 (initiator to responder) or 2 (responder to initiator).
        message: u8,
    },
    /// A handshake frame did not have the exact length of a handshake
    /// message with an empty payload. Handshake payloads are refused, so
    /// that tokens travel only in the first transport message, under keys
    /// that authenticate the responder.
    #[error(
        "handshake message {message} declares {len} bytes, but a handshake message is exactly \
         {expected}: handshake payloads are refused (tokens travel in the first transport message)"
    )]
    HandshakeLength {
        /// 1 or 2.
        message: u8,
        /// The length the frame's prefix declared.
        len: usize,
        /// The only acceptable length.
        expected: usize,
    },
    /// A transport frame's length prefix is shorter than the AEAD tag, so
    /// it cannot be a Noise transport message.
    #[error("frame {frame} declares {len} bytes, shorter than the {min}-byte authentication tag")]
    FrameTooShort {
        /// The frame's number in its direction.
        frame: u64,
        /// The length the prefix declared.
        len: usize,
        /// The least acceptable length.
        min: usize,
    },
    /// The stream ended inside a frame (or inside its length prefix).
    #[error("the stream ended inside frame {frame}, after {have} of its bytes")]
    Truncated {
        /// The frame's number in its direction.
        frame: u64,
        /// Bytes of that frame (prefix included) that had arrived.
        have: usize,
    },
    /// The stream ended cleanly before a handshake message arrived. Under
    /// NK a responder cannot answer an initiator that used the wrong key or
    /// prologue, so it just closes: this is how the initiator sees that.
    #[error(
        "the peer closed the connection before handshake message {message}: it may hold another \
         key than the one expected, or use another protocol version, level or epoch"
    )]
    ClosedInHandshake {
        /// The handshake message that never came.
        message: u8,
    },
    /// The handshake did not finish in time.
    #[error("the handshake did not finish within {after:?}")]
    Timeout {
        /// The time allowed.
        after: Duration,
    },
    /// The local caller tried to send more than one frame can carry.
    #[error("refusing to send a {len}-byte message: a frame carries at most {max} bytes")]
    MessageTooLong {
        /// The message's length.
        len: usize,
        /// The largest plaintext a frame carries.
        max: usize,
    },
    /// The local caller used the channel out of order (e.g. sent before
    /// the handshake finished).
    #[error("channel misused: {0}")]
    Misuse(&'static str),
    /// snow refused an operation for a reason the checks above do not
    /// cover (key material, nonce exhaustion after 2^64 − 1 frames).
    #[error("noise failed while {during}: {reason}")]
    Noise {
        /// What we were doing.
        during: &'static str,
        /// snow's complaint.
        reason: String,
    },
    /// Reading from or writing to the underlying stream failed.
    #[error("I/O error while {during}: {source}")]
    Io {
        /// What we were doing.
        during: &'static str,
        /// The underlying error, shared so that the error stays cloneable.
        #[source]
        source: Arc<io::Error>,
    },
}

impl Error {
    /// Wrap an I/O error, saying what we were doing.
    pub(crate) fn io(during: &'static str, source: io::Error) -> Self {
        Error::Io {
            during,
            source: Arc::new(source),
        }
    }

    /// Wrap an unexpected snow error.
    pub(crate) fn noise(during: &'static str, e: snow::Error) -> Self {
        Error::Noise {
            during,
            reason: e.to_string(),
        }
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Decrypt { .. }
            | Error::HandshakeAuth { .. }
            | Error::HandshakeLength { .. }
            | Error::FrameTooShort { .. } => ErrorKind::PeerMisbehaved,
            // A cut connection, a silent or closing peer: an on-path
            // attacker can cause all of these, so they must not get an
            // honest peer blamed.
            Error::Truncated { .. }
            | Error::ClosedInHandshake { .. }
            | Error::Timeout { .. }
            | Error::Io { .. } => ErrorKind::PeerUnavailable,
            Error::MessageTooLong { .. } | Error::Misuse(_) | Error::Noise { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_and_where() {
        let e = Error::Decrypt { frame: 17 };
        assert_eq!(
            e.to_string(),
            "frame 17 from the peer failed authentication (tampered, replayed or misframed)"
        );
        assert_eq!(e.kind(), ErrorKind::PeerMisbehaved);
        let e = Error::Truncated { frame: 3, have: 1 };
        assert!(
            e.to_string()
                .contains("inside frame 3, after 1 of its bytes")
        );
        assert_eq!(e.kind(), ErrorKind::PeerUnavailable);
        let e = Error::io("reading a frame", io::Error::other("boom"));
        assert!(e.to_string().contains("while reading a frame: boom"));
        assert_eq!(
            Error::MessageTooLong { len: 1, max: 0 }.kind(),
            ErrorKind::Internal
        );
    }
}
