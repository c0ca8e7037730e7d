//! How a FHIR table authenticates: nothing, a bearer token, or SMART Backend Services
//! (<https://hl7.org/fhir/smart-app-launch/backend-services.html>): a JWT client assertion
//! (`iss` = `sub` = the client id, `aud` = the token endpoint, `exp` at most 5 minutes ahead,
//! a random `jti`) signed RS384 or ES384 with a PKCS#8 private key from the server's secret
//! store, exchanged at the token endpoint (`grant_type=client_credentials`) for an access
//! token. Keys and tokens are [`Secret`]s: never printed, masked out of messages.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::json;
use url::Url;

use medlake_source::options::{Options, invalid};
use medlake_source::secret::{self, Secret};
use medlake_source::{Error, Result};

/// The signature algorithms SMART Backend Services requires servers to support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Rs384,
    Es384,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs384 => "RS384",
            Algorithm::Es384 => "ES384",
        }
    }
}

/// SMART Backend Services settings; the key stays a `${NAME}` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smart {
    pub client_id: String,
    pub private_key: String,
    pub key_id: Option<String>,
    pub algorithm: Option<Algorithm>,
    pub scope: String,
    /// The token endpoint; `None`: read from `[base]/.well-known/smart-configuration`.
    pub token_url: Option<Url>,
}

/// How requests to the FHIR server authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    None,
    Bearer(String),
    Smart(Smart),
}

impl Auth {
    pub(crate) fn parse(get: Options<'_>) -> Result<Self> {
        let smart_only = ["key_id", "algorithm", "scope", "token_url"];
        match (get.get("bearer_token"), get.get("client_id")) {
            (Some(_), Some(_)) => Err(invalid(
                "bearer_token",
                "give 'bearer_token' or SMART Backend Services ('client_id', 'private_key'), not both",
            )),
            (Some(token), None) => {
                secret::require_reference("bearer_token", token)?;
                if let Some(o) = smart_only
                    .iter()
                    .chain(&["private_key"])
                    .find(|o| get.contains(o))
                {
                    return Err(invalid(o, "needs 'client_id' (SMART Backend Services)"));
                }
                Ok(Auth::Bearer(token.to_string()))
            }
            (None, Some(client_id)) => Ok(Auth::Smart(Self::smart(get, client_id)?)),
            (None, None) => {
                if let Some(o) = smart_only
                    .iter()
                    .chain(&["private_key"])
                    .find(|o| get.contains(o))
                {
                    return Err(invalid(o, "needs 'client_id' (SMART Backend Services)"));
                }
                Ok(Auth::None)
            }
        }
    }

    fn smart(get: Options<'_>, client_id: &str) -> Result<Smart> {
        if client_id.is_empty() || client_id.len() > 255 {
            return Err(invalid("client_id", "must be 1 to 255 characters"));
        }
        let private_key = get.get("private_key").ok_or_else(|| {
            invalid(
                "private_key",
                "is required with 'client_id': a ${NAME} reference to a PKCS#8 PEM key in the server's [secrets]",
            )
        })?;
        secret::require_reference("private_key", private_key)?;
        let algorithm = match get.get("algorithm").map(str::to_ascii_uppercase).as_deref() {
            None => None,
            Some("RS384") => Some(Algorithm::Rs384),
            Some("ES384") => Some(Algorithm::Es384),
            Some(other) => {
                return Err(invalid(
                    "algorithm",
                    format!("'{other}' is not RS384 or ES384"),
                ));
            }
        };
        let token_url = get
            .get("token_url")
            .map(|u| {
                Url::parse(u)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.username().is_empty())
                    .ok_or_else(|| invalid("token_url", format!("'{u}' is not an http(s) URL")))
            })
            .transpose()?;
        Ok(Smart {
            client_id: client_id.to_string(),
            private_key: private_key.to_string(),
            key_id: get.get("key_id").map(str::to_string),
            algorithm,
            scope: get.get("scope").unwrap_or("system/*.read").to_string(),
            token_url,
        })
    }
}

/// An access token and when it stops being used.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub value: Secret,
    pub renew_at: Instant,
}

/// A private key ready to sign.
enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// The DER inside a PEM block, and its label.
fn pem(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end = body.find("-----END ")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD.decode(b64).ok().map(|der| (label, der))
}

fn bad_key(reason: &str) -> Error {
    invalid(
        "private_key",
        format!(
            "the secret is not a usable key ({reason}): give an RSA (2048 bits or more) or P-384 EC private key as PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)"
        ),
    )
}

fn load_key(pem_text: &str, wanted: Option<Algorithm>) -> Result<(Key, Algorithm)> {
    let (label, der) = pem(pem_text).ok_or_else(|| bad_key("no PEM block"))?;
    let rng = SystemRandom::new();
    let key = match label.as_str() {
        "PRIVATE KEY" => match RsaKeyPair::from_pkcs8(&der) {
            Ok(k) => Key::Rsa(k),
            Err(_) => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &der, &rng)
                    .map(Key::Ec)
                    .map_err(|e| bad_key(&format!("neither RSA nor P-384: {e}")))?
            }
        },
        "RSA PRIVATE KEY" => {
            Key::Rsa(RsaKeyPair::from_der(&der).map_err(|e| bad_key(&e.to_string()))?)
        }
        other => return Err(bad_key(&format!("a {other} block"))),
    };
    let algorithm = match &key {
        Key::Rsa(_) => Algorithm::Rs384,
        Key::Ec(_) => Algorithm::Es384,
    };
    if let Some(w) = wanted
        && w != algorithm
    {
        return Err(bad_key(&format!(
            "'algorithm' is {} but the key is for {}",
            w.name(),
            algorithm.name()
        )));
    }
    Ok((key, algorithm))
}

/// A signed client assertion for `aud` (the token endpoint), valid for 4 minutes.
pub(crate) fn assertion(smart: &Smart, key: &Secret, aud: &str) -> Result<String> {
    let (key, algorithm) = load_key(key.expose(), smart.algorithm)?;
    let rng = SystemRandom::new();
    let mut jti = [0u8; 16];
    rng.fill(&mut jti)
        .map_err(|_| bad_key("no random numbers for the jti"))?;
    let now = chrono::Utc::now().timestamp();
    let mut header = json!({"alg": algorithm.name(), "typ": "JWT"});
    if let Some(kid) = &smart.key_id {
        header["kid"] = json!(kid);
    }
    let claims = json!({
        "iss": smart.client_id,
        "sub": smart.client_id,
        "aud": aud,
        "iat": now,
        "exp": now + 240,
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match key {
        Key::Rsa(k) => {
            let mut sig = vec![0; k.public().modulus_len()];
            k.sign(
                &signature::RSA_PKCS1_SHA384,
                &rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| bad_key("RSA signing failed"))?;
            sig
        }
        Key::Ec(k) => k
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| bad_key("ECDSA signing failed"))?
            .as_ref()
            .to_vec(),
    };
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// The public key of a PKCS#8 private key (what a FHIR server registers, e.g. in a JWKS), for
/// tests and tooling: the DER RSAPublicKey, or the uncompressed P-384 point.
pub fn public_key(pem_text: &str) -> Result<(Algorithm, Vec<u8>)> {
    let (key, algorithm) = load_key(pem_text, None)?;
    Ok(match key {
        Key::Rsa(k) => (algorithm, k.public().as_ref().to_vec()),
        Key::Ec(k) => (algorithm, k.public_key().as_ref().to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es384_assertions_verify() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
        let pem_text = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let smart = Smart {
            client_id: "medlake".into(),
            private_key: "${K}".into(),
            key_id: Some("k1".into()),
            algorithm: None,
            scope: "system/*.read".into(),
            token_url: None,
        };
        let jwt = assertion(&smart, &Secret::new(pem_text.clone()), "https://a/token").unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let (alg, public) = public_key(&pem_text).unwrap();
        assert_eq!(alg, Algorithm::Es384);
        signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, public)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "https://a/token");
        assert!(claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp() <= 300);
        // The wrong algorithm, and garbage, are refused without printing the key.
        let rsa_wanted = Smart {
            algorithm: Some(Algorithm::Rs384),
            ..smart.clone()
        };
        let e = assertion(&rsa_wanted, &Secret::new(pem_text), "a").unwrap_err();
        assert_eq!(e.sqlstate(), "HV024");
        let e = assertion(&smart, &Secret::new("not a key at all"), "a").unwrap_err();
        assert!(!e.to_string().contains("not a key at all"), "{e}");
    }
}
