//! Blinded tokens: Privacy Pass token type 0x0002 (RFC 9578 §6, blind RSA
//! per RFC 9474, RSABSSA-SHA384-PSS-Deterministic, 2048-bit keys) through
//! the `privacypass` crate, behind [`TokenScheme`].
//!
//! A credential buys tokens by sending `TokenRequest`s (blinded messages);
//! the rendezvous signs them blind, so it can never link a token it later
//! sees redeemed to the request it signed. The only thing a token carries
//! besides its signature is its random nonce, the challenge digest (the
//! same [`challenge`] for every token, so it says nothing) and the key id,
//! which names the epoch key that signed it: every peer's tokens of one
//! epoch look alike.
//!
//! # Byte formats (RFC 9578 §6, all big-endian)
//!
//! ```text
//! TokenRequest (259 bytes):  token_type u16 = 0x0002 | truncated_token_key_id u8
//!                            | blinded_msg [256]
//! TokenResponse (256 bytes): blind_sig [256]
//! Token (354 bytes):         token_type u16 = 0x0002 | nonce [32]
//!                            | challenge_digest [32] | token_key_id [32]
//!                            | authenticator [256]
//! ```
//!
//! `token_key_id` is SHA-256 of the key's DER SubjectPublicKeyInfo
//! (RSASSA-PSS OID, as RFC 9578 §6.5 says), `truncated_token_key_id` its
//! last byte.
//!
//! This module checks signatures and formats only: whether a nonce was
//! spent already is the spent set's business ([`crate::ledger`]), so the
//! check here is pure and can run on any task, in parallel.
//!
//! `privacypass` exposes issuance and redemption as `async` functions over
//! async key-store traits. Ours are plain in-memory values, so those
//! futures finish on their first poll; `poll_once` runs them so, and a
//! future that did not finish is reported as a bug rather than blocked on.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use blind_rsa_signatures::{DefaultRng, Deterministic, KeyPair, PSS, Sha384};
use privacypass::auth::authenticate::TokenChallenge;
use privacypass::public_tokens::server::{
    IssuerKeyStore, IssuerServer, OriginKeyStore, OriginServer,
};
use privacypass::public_tokens::{PublicKey, PublicToken, TokenRequest, TokenResponse, TokenState};
use privacypass::{Deserialize as _, Nonce, NonceStore, Serialize as _, TokenType};

use crate::err::{Error, Result};

/// The RFC 9578 token type we issue and redeem.
pub const TOKEN_TYPE: u16 = 0x0002;
/// Bytes of an encoded token.
pub const TOKEN_LEN: usize = 2 + 32 + 32 + 32 + 256;
/// Bytes of an encoded token request.
pub const TOKEN_REQUEST_LEN: usize = 2 + 1 + 256;
/// Bytes of an encoded token response.
pub const TOKEN_RESPONSE_LEN: usize = 256;
/// RSA modulus size RFC 9578 §6 fixes for type 0x0002.
pub const KEY_BITS: usize = 2048;

/// The issuer name in every token challenge.
pub const ISSUER_NAME: &str = "anonmirror rendezvous";

/// The one token challenge of anonmirror: type 0x0002, issuer
/// [`ISSUER_NAME`], no redemption context, no origin info. It is the same
/// for everyone, so its digest inside a token tells nothing apart.
pub fn challenge() -> &'static TokenChallenge {
    static C: OnceLock<TokenChallenge> = OnceLock::new();
    C.get_or_init(|| TokenChallenge::new(TokenType::Public, ISSUER_NAME, None, &[]))
}

fn challenge_digest() -> Result<[u8; 32]> {
    challenge()
        .digest()
        .map_err(|e| Error::bug_from("challenge digest", e))
}

/// What a valid token proves once its signature checks: which key signed
/// it, and the nonce that must be spent exactly once under that key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// SHA-256 of the signing key's SPKI.
    pub key_id: [u8; 32],
    /// The token's nonce.
    pub nonce: [u8; 32],
}

/// Our seam around a Privacy Pass token type: key generation and
/// serialization, blind issuance and signature checks on the rendezvous,
/// blinding and finalizing on the peer. Nothing here does I/O or keeps
/// state between calls. [`PublicTokens`] (type 0x0002) is the only
/// implementation; the rest of the crate names it through [`Scheme`], so
/// swapping the type is a change in one place.
pub trait TokenScheme: Send + Sync + 'static {
    /// The issuer's secret key.
    type Secret: Send + Sync + 'static;
    /// The issuer's public key, as peers and verifiers hold it.
    type Public: Clone + Send + Sync + 'static;
    /// What the peer keeps between sending a request and finalizing the
    /// response (the blinding factor).
    type Pending: Send + 'static;

    /// A fresh issuer key from the operating system's randomness.
    fn generate(&self) -> Result<Self::Secret>;
    /// The secret key's public half.
    fn public(&self, secret: &Self::Secret) -> Result<Self::Public>;
    /// The key id bound into every token the key signs.
    fn key_id(&self, public: &Self::Public) -> Result<[u8; 32]>;
    /// The secret key as bytes, for the ledger.
    fn secret_to_bytes(&self, secret: &Self::Secret) -> Result<Vec<u8>>;
    /// The inverse of [`TokenScheme::secret_to_bytes`].
    fn secret_from_bytes(&self, bytes: &[u8]) -> Result<Self::Secret>;
    /// The public key as published to peers.
    fn public_to_bytes(&self, public: &Self::Public) -> Result<Vec<u8>>;
    /// The inverse of [`TokenScheme::public_to_bytes`]; peers must treat
    /// failure as the rendezvous misbehaving.
    fn public_from_bytes(&self, bytes: &[u8]) -> Result<Self::Public>;
    /// Signs one blinded request (rendezvous side).
    fn issue(&self, secret: &Self::Secret, request: &[u8]) -> Result<Vec<u8>>;
    /// Checks a token's format and signature under `public` (rendezvous
    /// side). Does not look at whether it was spent.
    fn verify(&self, public: &Self::Public, token: &[u8]) -> Result<VerifiedToken>;
    /// Blinds a fresh token request for `public` (peer side).
    fn request(&self, public: &Self::Public) -> Result<(Vec<u8>, Self::Pending)>;
    /// Unblinds the rendezvous's response into a token (peer side).
    fn finalize(&self, pending: Self::Pending, response: &[u8]) -> Result<Vec<u8>>;
}

/// The scheme anonmirror uses.
pub type Scheme = PublicTokens;

/// RFC 9578 type 0x0002 via `privacypass`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicTokens;

/// An issuer key of [`PublicTokens`].
pub type IssuerKey = KeyPair<Sha384, PSS, Deterministic>;

/// The peer's state between request and response.
#[derive(Debug)]
pub struct PendingToken(TokenState);

/// The key id of the token in `token` without checking anything else, so a
/// verifier can pick the key to check it with. `None` if too short.
pub fn token_key_id(token: &[u8]) -> Option<[u8; 32]> {
    token.get(66..98).and_then(|s| s.try_into().ok())
}

impl TokenScheme for PublicTokens {
    type Secret = IssuerKey;
    type Public = PublicKey;
    type Pending = PendingToken;

    fn generate(&self) -> Result<IssuerKey> {
        IssuerKey::generate(&mut DefaultRng, KEY_BITS)
            .map_err(|e| Error::bug_from("RSA key generation", e))
    }

    fn public(&self, secret: &IssuerKey) -> Result<PublicKey> {
        Ok(secret.pk.clone())
    }

    fn key_id(&self, public: &PublicKey) -> Result<[u8; 32]> {
        let spki = self.public_to_bytes(public)?;
        ring::digest::digest(&ring::digest::SHA256, &spki)
            .as_ref()
            .try_into()
            .map_err(|_| Error::bug("SHA-256 is 32 bytes"))
    }

    fn secret_to_bytes(&self, secret: &IssuerKey) -> Result<Vec<u8>> {
        secret
            .sk
            .to_der()
            .map_err(|e| Error::bug_from("serializing an issuer key", e))
    }

    fn secret_from_bytes(&self, bytes: &[u8]) -> Result<IssuerKey> {
        let sk = blind_rsa_signatures::SecretKey::from_der(bytes)
            .map_err(|_| Error::LedgerCorrupt("issuer key (does not parse)"))?;
        let pk = sk
            .public_key()
            .map_err(|_| Error::LedgerCorrupt("issuer key"))?;
        Ok(IssuerKey { pk, sk })
    }

    fn public_to_bytes(&self, public: &PublicKey) -> Result<Vec<u8>> {
        privacypass::public_tokens::server::serialize_public_key(public)
            .map_err(|e| Error::bug_from("serializing a public key", e))
    }

    fn public_from_bytes(&self, bytes: &[u8]) -> Result<PublicKey> {
        PublicKey::from_spki(bytes).map_err(|e| Error::malformed("token public key", e))
    }

    fn issue(&self, secret: &IssuerKey, request: &[u8]) -> Result<Vec<u8>> {
        if request.len() != TOKEN_REQUEST_LEN {
            return Err(Error::malformed("token request", "wrong length"));
        }
        let mut r = request;
        let req = TokenRequest::tls_deserialize(&mut r)
            .map_err(|e| Error::malformed("token request", e))?;
        let store = OneIssuerKey(secret);
        let resp = poll_once(IssuerServer::new().issue_token_response(&store, req))?
            .map_err(|e| Error::malformed("token request", e))?;
        resp.tls_serialize_detached()
            .map_err(|e| Error::bug_from("serializing a token response", e))
    }

    fn verify(&self, public: &PublicKey, token: &[u8]) -> Result<VerifiedToken> {
        if token.len() != TOKEN_LEN {
            return Err(Error::Token("wrong length"));
        }
        let mut r = token;
        let parsed = PublicToken::tls_deserialize(&mut r).map_err(|_| Error::Token("malformed"))?;
        if !r.is_empty() {
            return Err(Error::Token("trailing bytes"));
        }
        if *parsed.challenge_digest() != challenge_digest()? {
            return Err(Error::Token("not for anonmirror's challenge"));
        }
        self.verify_signature(public, parsed)
    }

    fn request(&self, public: &PublicKey) -> Result<(Vec<u8>, PendingToken)> {
        let (req, state) = TokenRequest::new(&mut DefaultRng, public.clone(), challenge())
            .map_err(|e| Error::malformed("token public key", e))?;
        let bytes = req
            .tls_serialize_detached()
            .map_err(|e| Error::bug_from("serializing a token request", e))?;
        Ok((bytes, PendingToken(state)))
    }

    fn finalize(&self, pending: PendingToken, response: &[u8]) -> Result<Vec<u8>> {
        if response.len() != TOKEN_RESPONSE_LEN {
            return Err(Error::malformed("token response", "wrong length"));
        }
        let mut r = response;
        let resp = TokenResponse::tls_deserialize(&mut r)
            .map_err(|e| Error::malformed("token response", e))?;
        let token = resp
            .issue_token(&pending.0)
            .map_err(|e| Error::malformed("token response", e))?;
        token
            .tls_serialize_detached()
            .map_err(|e| Error::bug_from("serializing a token", e))
    }
}

impl PublicTokens {
    /// Checks a parsed token's key id and signature, whatever its
    /// challenge (the RFC's vectors use other challenges than ours).
    pub(crate) fn verify_signature(
        &self,
        public: &PublicKey,
        parsed: PublicToken,
    ) -> Result<VerifiedToken> {
        let key_id = *parsed.token_key_id();
        if key_id != self.key_id(public)? {
            return Err(Error::Token("signed by another key"));
        }
        let nonce = parsed.nonce();
        let keys = OneOriginKey(public);
        poll_once(OriginServer::new().redeem_token(&keys, &SignatureOnly, parsed))?
            .map_err(|_| Error::Token("signature does not verify"))?;
        Ok(VerifiedToken { key_id, nonce })
    }
}

/// Runs a future that cannot wait on anything (ours only touch in-memory
/// values) to completion in one poll.
pub(crate) fn poll_once<F: Future>(f: F) -> Result<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => Err(Error::bug(
            "a privacypass future waited on an in-memory store",
        )),
    }
}

/// The issuing key store `privacypass` wants, holding just one key.
struct OneIssuerKey<'a>(&'a IssuerKey);

/// The verifying key store `privacypass` wants, holding just one key.
struct OneOriginKey<'a>(&'a PublicKey);

/// A nonce store that lets every nonce through: `privacypass` checks the
/// signature, and the spent set (durable, in redb) checks the nonce.
struct SignatureOnly;

#[async_trait::async_trait]
impl IssuerKeyStore for OneIssuerKey<'_> {
    async fn insert(&self, _: u8, _: IssuerKey) -> bool {
        false
    }
    async fn get(&self, _: &u8) -> Option<IssuerKey> {
        Some(self.0.clone())
    }
    async fn remove(&self, _: &u8) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl OriginKeyStore for OneOriginKey<'_> {
    async fn insert(&self, _: u8, _: PublicKey) {}
    async fn get(&self, _: &u8) -> Vec<PublicKey> {
        vec![self.0.clone()]
    }
    async fn remove(&self, _: &u8) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl NonceStore for SignatureOnly {
    async fn reserve(&self, _: &Nonce) -> bool {
        true
    }
    async fn commit(&self, _: &Nonce) {}
    async fn release(&self, _: &Nonce) {}
}

/// A key ready to verify tokens: the public key with its id, shared.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The epoch the key signs for.
    pub epoch: anonmirror_core::Epoch,
    /// The key id in its tokens.
    pub key_id: [u8; 32],
    /// The public key.
    pub public: Arc<PublicKey>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("epoch", &self.epoch)
            .field("key_id", &hex::encode(self.key_id))
            .finish()
    }
}

#[cfg(test)]
mod tests;
