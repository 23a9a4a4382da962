//! Errors of the node, and who is to blame.
//!
//! Messages never contain a credential, a token, a peer's contact or an
//! item key: those reach a log only through [`anonmirror_core::Sensitive`],
//! and an error is the kind of thing that gets logged. Each message names
//! what was being done (and, for the configuration, the key) followed by
//! the lower layer's own message, so printing the error alone says it all.

use anonmirror_core::{ErrorKind, HasKind};
// The content store's error.
use anonmirror_store::Error as StoreError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The local policy or the node's options are wrong: the operator must
    /// fix them.
    #[error("{key}: {reason}")]
    Config {
        /// The policy key (`rendezvous.address`, …) or option at fault.
        key: &'static str,
        /// Why it is wrong.
        reason: String,
    },
    /// The rendezvous refused a request or could not be reached; its own
    /// error says which.
    #[error("{what}: {source}")]
    Rendezvous {
        /// What was being asked.
        what: &'static str,
        /// The rendezvous client's error.
        #[source]
        source: anonmirror_rendezvous::Error,
    },
    /// The content store failed (disk, permissions, corruption).
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A file or directory of the node's own (state, cache, work
    /// directory) could not be made, read or written.
    #[error("{what}: {source}")]
    State {
        /// What was being done, with the path.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A socket, a listener or an outgoing connection failed (a port in
    /// use, an address this machine does not have, a peer listener that
    /// cannot start).
    #[error("{what}: {source}")]
    Transport {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Tor is unavailable, cannot do what the policy asks (host an onion
    /// service), or stopped doing it: the Tor setup or the policy's
    /// `[transport]` must change.
    #[error("{0}")]
    Tor(String),
    /// An HTTP request (to a gateway, an upstream) failed or got no
    /// answer in time.
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL asked for.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A gateway answered, but with something other than what the index
    /// vouches for (the node behind it is at fault).
    #[error("{what}: {reason}")]
    Gateway {
        /// What was asked for.
        what: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// Peers on other hosts cannot reach this node's TCP listener: the
    /// rendezvous's dial-back failed, so nothing is announced.
    #[error(
        "peers cannot reach this node on TCP port {port}: {outcome}; forward the port on the \
         router to serve.listen, or serve through Tor"
    )]
    Unreachable {
        /// The port dialed back.
        port: u16,
        /// What the dial-back found.
        outcome: anonmirror_rendezvous::msg::ReachOutcome,
    },
    /// A node did not reach the state waited for in time.
    #[error("{0}")]
    NotReady(&'static str),
    /// An invariant of ours broke, or a library failed on input we made
    /// ourselves: a bug.
    #[error("internal: {0}")]
    Internal(String),
    /// One of the above, while doing something larger (starting one of
    /// the demo's nodes, …); the source says who is at fault.
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// `source` while doing `what`.
    pub(crate) fn context(what: impl Into<String>, source: Error) -> Error {
        Error::Context {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn state(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::State {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn transport(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Transport {
            what: what.into(),
            source,
        }
    }
}

impl HasKind for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } | Error::Unreachable { .. } => ErrorKind::LocalConfig,
            Error::Rendezvous { source, .. } => source.kind(),
            Error::Store { source, .. } => source.kind(),
            Error::State { .. } | Error::Transport { .. } => ErrorKind::LocalIo,
            Error::Tor(_) | Error::Http { .. } | Error::NotReady(_) => ErrorKind::PeerUnavailable,
            Error::Gateway { .. } => ErrorKind::PeerMisbehaved,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Context { source, .. } => source.kind(),
        }
    }
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_error_names_the_key_and_blame_follows_the_source() {
        let e = Error::Config {
            key: "rendezvous.address",
            reason: "not an address".into(),
        };
        assert_eq!(e.to_string(), "rendezvous.address: not an address");
        assert_eq!(e.kind(), ErrorKind::LocalConfig);
        let wrapped = Error::context("starting volunteer 0", e);
        assert_eq!(
            wrapped.to_string(),
            "starting volunteer 0: rendezvous.address: not an address"
        );
        assert_eq!(wrapped.kind(), ErrorKind::LocalConfig);
        let io = Error::state(
            "creating /nonexistent",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(io.to_string().starts_with("creating /nonexistent: "));
        assert_eq!(io.kind(), ErrorKind::LocalIo);
    }
}
