use super::*;
use privacypass::public_tokens::det_rng::DeterministicRng;
use serde::Deserialize as SerdeDeserialize;

#[derive(SerdeDeserialize)]
struct Vector {
    #[serde(rename = "skS")]
    sk_s: String,
    #[serde(rename = "pkS")]
    pk_s: String,
    token_challenge: String,
    nonce: String,
    blind: String,
    salt: String,
    token_request: String,
    token_response: String,
    token: String,
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector field is hex")
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../tests/data/rfc9578_public.json"))
        .expect("vector file parses")
}

/// The RFC's issuer key, reused by tests that need any valid key (RSA key
/// generation takes long in debug builds).
pub(crate) fn rfc_key() -> IssuerKey {
    let v = &vectors()[0];
    let pem = String::from_utf8(h(&v.sk_s)).expect("PEM is text");
    let sk = blind_rsa_signatures::SecretKey::from_pem(&pem).expect("vector key parses");
    let pk = sk.public_key().expect("public half");
    IssuerKey { pk, sk }
}

/// RFC 9578 Appendix A.2: every vector's request, response and token byte
/// for byte, with the rendezvous side (public key encoding, issuance,
/// signature check) going through our `TokenScheme`.
#[test]
fn rfc9578_public_vectors() {
    let scheme = PublicTokens;
    let list = vectors();
    assert_eq!(list.len(), 5);
    for (i, v) in list.iter().enumerate() {
        let pem = String::from_utf8(h(&v.sk_s)).expect("PEM is text");
        let sk = blind_rsa_signatures::SecretKey::from_pem(&pem).expect("key");
        let pk = PublicKey::from_spki(&h(&v.pk_s)).expect("spki");
        let secret = IssuerKey { pk: pk.clone(), sk };
        // Our DER round trip keeps the key.
        let again = scheme
            .secret_from_bytes(&scheme.secret_to_bytes(&secret).expect("der"))
            .expect("reload");
        assert_eq!(scheme.public_to_bytes(&again.pk).expect("spki"), h(&v.pk_s));
        assert_eq!(
            scheme.public_to_bytes(&pk).expect("spki"),
            h(&v.pk_s),
            "{i}"
        );

        // Peer side, deterministic blinding as the vector fixes it.
        let mut blind = h(&v.blind);
        blind.reverse();
        let mut rng = DeterministicRng::new(h(&v.nonce), h(&v.salt), blind);
        let challenge = TokenChallenge::deserialize(&h(&v.token_challenge)).expect("challenge");
        let (req, state) = TokenRequest::new(&mut rng, pk.clone(), &challenge).expect("request");
        let req_bytes = req.tls_serialize_detached().expect("encode");
        assert_eq!(req_bytes, h(&v.token_request), "vector {i}: request");

        // Rendezvous side: our issue.
        let resp = scheme.issue(&secret, &req_bytes).expect("issue");
        assert_eq!(resp, h(&v.token_response), "vector {i}: response");

        let mut r = &resp[..];
        let token = TokenResponse::tls_deserialize(&mut r)
            .expect("response")
            .issue_token(&state)
            .expect("finalize");
        let token_bytes = token.tls_serialize_detached().expect("encode");
        assert_eq!(token_bytes, h(&v.token), "vector {i}: token");

        // Our signature check accepts the vector's token …
        let mut r = &token_bytes[..];
        let parsed = PublicToken::tls_deserialize(&mut r).expect("token");
        let ok = scheme.verify_signature(&pk, parsed).expect("verifies");
        assert_eq!(&ok.nonce[..], &h(&v.nonce)[..]);
        // … but `verify` refuses it: it answers another challenge.
        assert!(matches!(
            scheme.verify(&pk, &token_bytes),
            Err(Error::Token("not for anonmirror's challenge"))
        ));
        // A flipped authenticator bit fails.
        let mut bad = token_bytes.clone();
        bad[TOKEN_LEN - 1] ^= 1;
        let mut r = &bad[..];
        let parsed = PublicToken::tls_deserialize(&mut r).expect("token");
        assert!(scheme.verify_signature(&pk, parsed).is_err(), "vector {i}");
    }
}

#[test]
fn round_trip_through_our_scheme_and_refusals() {
    let scheme = PublicTokens;
    let secret = rfc_key();
    let public = scheme.public(&secret).expect("public");
    let (req, pending) = scheme.request(&public).expect("request");
    assert_eq!(req.len(), TOKEN_REQUEST_LEN);
    let resp = scheme.issue(&secret, &req).expect("issue");
    let token = scheme.finalize(pending, &resp).expect("finalize");
    assert_eq!(token.len(), TOKEN_LEN);
    let v = scheme.verify(&public, &token).expect("valid");
    assert_eq!(Some(v.key_id), token_key_id(&token));
    assert_eq!(v.key_id, scheme.key_id(&public).expect("id"));

    // Wrong length, trailing byte, tampered nonce: all refused.
    assert!(scheme.verify(&public, &token[..TOKEN_LEN - 1]).is_err());
    let mut long = token.clone();
    long.push(0);
    assert!(scheme.verify(&public, &long).is_err());
    let mut bad = token.clone();
    bad[5] ^= 0x40;
    assert!(scheme.verify(&public, &bad).is_err());
    // Garbage requests are the peer's fault, not a panic.
    assert!(scheme.issue(&secret, &[0u8; 10]).is_err());
    assert!(scheme.issue(&secret, &[0u8; TOKEN_REQUEST_LEN]).is_err());
    assert!(scheme.public_from_bytes(b"not a key").is_err());
}
