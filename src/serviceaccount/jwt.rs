//! Service account tokens as JSON Web Tokens: the apiserver's claims, signed ES256 (ECDSA P-256
//! with SHA-256) by the node's key, and their verification.
//!
//! ring (already in the tree under rustls and rcgen) does the signing; the JWT framing is three
//! base64url parts, small enough to write here rather than pull in a JWT crate.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a token was not issued or not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the signing key is not a P-256 PKCS#8 key: {0}")]
    Key(String),
    #[error("signing failed")]
    Sign,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unexpected signing algorithm {0:?}")]
    Algorithm(String),
    #[error("invalid signature")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer {0:?} is not this API's")]
    Issuer(String),
    #[error("token audiences {0:?} do not include this API's")]
    Audience(Vec<String>),
}

/// A reference to an object in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjRef {
    pub name: String,
    pub uid: String,
}

/// The private `kubernetes.io` claim of a bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjRef>,
    pub serviceaccount: ObjRef,
}

/// The claims of a service account token, as the apiserver's TokenRequest writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Audiences; a single string is accepted too (RFC 7519 allows both).
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
    pub nbf: i64,
    pub sub: String,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(s) => vec![s],
        Aud::Many(v) => v,
    })
}

/// The subject of a service account: `system:serviceaccount:<namespace>:<name>`.
pub fn subject(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kid: String,
}

const ALG: &str = "ES256";

/// Signs and verifies tokens with one ECDSA P-256 key.
pub struct Signer {
    key: EcdsaKeyPair,
    /// Key id in the header: base64url of the SHA-256 of the public key (as the apiserver
    /// derives its `kid` from the key, so a new key is told apart from the old one).
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    /// A new random key, as PKCS#8 DER.
    pub fn generate_pkcs8() -> Result<Vec<u8>, JwtError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| JwtError::Key(e.to_string()))
    }

    /// The signer of a PKCS#8 P-256 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, JwtError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| JwtError::Key(e.to_string()))?;
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(key.public_key().as_ref()));
        Ok(Signer { key, kid, rng })
    }

    /// The key id written in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed compact JWT of `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let header = Header {
            alg: ALG.into(),
            kid: self.kid.clone(),
        };
        let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let header = serde_json::to_vec(&header).map_err(|_| JwtError::Sign)?;
        let body = serde_json::to_vec(claims).map_err(|_| JwtError::Sign)?;
        let input = format!("{}.{}", enc(&header), enc(&body));
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| JwtError::Sign)?;
        Ok(format!("{input}.{}", enc(sig.as_ref())))
    }

    /// The claims of a token this key signed. Checks the form, the algorithm and the
    /// signature only; [`check_claims`] checks what they say.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        let dec = |p: &str| {
            URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| JwtError::Malformed("bad base64url"))
        };
        let header: Header =
            serde_json::from_slice(&dec(h)?).map_err(|_| JwtError::Malformed("bad header"))?;
        // Only the one algorithm this key makes: never `none`, never an HMAC keyed with the
        // public key (the classic JWT algorithm confusion).
        if header.alg != ALG {
            return Err(JwtError::Algorithm(header.alg));
        }
        let sig = dec(s)?;
        let input_len = h.len() + 1 + b.len();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(&token.as_bytes()[..input_len], &sig)
            .map_err(|_| JwtError::Signature)?;
        serde_json::from_slice(&dec(b)?).map_err(|_| JwtError::Malformed("bad claims"))
    }
}

/// Checks issuer, validity window (`nbf <= now < exp`, no leeway) and that one of the token's
/// audiences is one of `audiences`.
pub fn check_claims(
    c: &Claims,
    issuer: &str,
    audiences: &[String],
    now: i64,
) -> Result<(), JwtError> {
    if c.iss != issuer {
        return Err(JwtError::Issuer(c.iss.clone()));
    }
    if now >= c.exp {
        return Err(JwtError::Expired);
    }
    if now < c.nbf {
        return Err(JwtError::NotYetValid);
    }
    if !c.aud.iter().any(|a| audiences.contains(a)) {
        return Err(JwtError::Audience(c.aud.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![ISS.into()],
            exp: now + 3607,
            iat: now,
            iss: ISS.into(),
            jti: "j".into(),
            kubernetes: KubernetesClaim {
                namespace: "default".into(),
                node: None,
                pod: Some(ObjRef {
                    name: "web".into(),
                    uid: "u1".into(),
                }),
                serviceaccount: ObjRef {
                    name: "default".into(),
                    uid: "s1".into(),
                },
            },
            nbf: now,
            sub: subject("default", "default"),
        }
    }

    fn signer() -> Signer {
        Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn signed_token_round_trips_with_the_apiserver_claim_names() {
        let s = signer();
        let c = claims(1_000);
        let token = s.sign(&c).unwrap();
        assert_eq!(s.verify(&token).unwrap(), c);
        let body = token.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert_eq!(json["sub"], "system:serviceaccount:default:default");
        assert_eq!(json["kubernetes.io"]["pod"]["uid"], "u1");
        assert_eq!(json["kubernetes.io"]["serviceaccount"]["name"], "default");
        assert_eq!(json["aud"][0], ISS);
        let header = token.split('.').next().unwrap();
        let h: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["kid"], s.kid());
    }

    #[test]
    fn tampered_foreign_or_unsigned_tokens_are_refused() {
        let s = signer();
        let token = s.sign(&claims(1_000)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // Claims changed after signing.
        let mut c = claims(1_000);
        c.kubernetes.namespace = "kube-system".into();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{forged_body}.{}", parts[0], parts[2]);
        assert_eq!(s.verify(&forged), Err(JwtError::Signature));
        // Signed by another key.
        let other = signer().sign(&claims(1_000)).unwrap();
        assert_eq!(s.verify(&other), Err(JwtError::Signature));
        // alg none, no signature.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            s.verify(&format!("{none}.{}.", parts[1])),
            Err(JwtError::Algorithm("none".into()))
        );
        assert!(matches!(s.verify("abc"), Err(JwtError::Malformed(_))));
        assert!(matches!(
            s.verify(&format!("{token}.x")),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn validity_window_issuer_and_audience() {
        let c = claims(1_000);
        let aud = vec![ISS.to_string()];
        assert_eq!(check_claims(&c, ISS, &aud, 1_000), Ok(()));
        assert_eq!(check_claims(&c, ISS, &aud, 999), Err(JwtError::NotYetValid));
        assert_eq!(
            check_claims(&c, ISS, &aud, 1_000 + 3607),
            Err(JwtError::Expired)
        );
        assert!(matches!(
            check_claims(&c, "https://other", &aud, 1_000),
            Err(JwtError::Issuer(_))
        ));
        assert!(matches!(
            check_claims(&c, ISS, &["vault".to_string()], 1_000),
            Err(JwtError::Audience(_))
        ));
        // A single-string audience parses as one audience.
        let mut json = serde_json::to_value(&c).unwrap();
        json["aud"] = serde_json::json!(ISS);
        let parsed: Claims = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.aud, vec![ISS.to_string()]);
    }
}
