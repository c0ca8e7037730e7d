//! The handshake (HTTP Basic credentials → an expiring bearer token) and the token check of
//! every other call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use medlake_auth::{Access, Logins, Principal};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Who is calling.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub user: String,
    pub principal: Principal,
    /// The client's address, for the audit (set per request).
    pub client: Option<std::net::SocketAddr>,
}

struct Token {
    caller: Caller,
    expires: Instant,
}

pub(crate) struct Tokens {
    access: Access,
    lifetime: Duration,
    tokens: Mutex<HashMap<String, Token>>,
    logins: Logins,
}

/// Base64 as clients send it in Basic credentials: with or without `=` padding (the Go
/// Flight client used by ADBC leaves it out).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The user name of `Basic` credentials (empty when they do not decode).
fn basic_user(header: &str) -> String {
    header
        .get(6..)
        .and_then(|encoded| BASE64.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|decoded| decoded.split_once(':').map(|(user, _)| user.to_owned()))
        .unwrap_or_default()
}

/// Who a refused request claimed to be, for the audit: the Basic user name, or the kind of
/// credential it presented.
pub(crate) fn claimed(metadata: &MetadataMap) -> String {
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if header.starts_with("Basic ") || header.starts_with("basic ") {
        basic_user(header)
    } else if header.is_empty() {
        "(no credentials)".into()
    } else {
        "(bearer token)".into()
    }
}

/// 32 random bytes as hex: tokens and handles.
pub(crate) fn random_id() -> String {
    medlake_auth::random_token(32)
}

impl Tokens {
    pub(crate) fn new(access: Access, lifetime: Duration, logins: Logins) -> Self {
        Self {
            access,
            lifetime,
            tokens: Mutex::new(HashMap::new()),
            logins,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a request may be decoded at all: valid Basic credentials (the handshake),
    /// a valid bearer token, or no-auth mode. Runs on the headers, before any message.
    /// Password checks count towards the failed-login record of `client`'s address (bearer
    /// tokens are random: guessing one is hopeless).
    pub(crate) fn admit(
        &self,
        metadata: &MetadataMap,
        client: Option<std::net::SocketAddr>,
    ) -> Result<(), Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if header.starts_with("Basic ") || header.starts_with("basic ") {
            let address = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            let user = basic_user(header);
            if matches!(self.access, Access::Users(_)) {
                self.logins.check(address, &user).map_err(|locked| {
                    tracing::warn!(
                        target: "medlake::audit",
                        user = %user,
                        client = %address,
                        "flight sql login refused: locked out after failed logins"
                    );
                    Status::resource_exhausted(locked.to_string())
                })?;
            }
            match self.credentials(metadata) {
                Ok(_) => {
                    self.logins.succeeded(address, &user);
                    Ok(())
                }
                Err(refused) => {
                    if refused.code() == tonic::Code::Unauthenticated {
                        self.logins.failed(address, &user);
                    }
                    Err(refused)
                }
            }
        } else {
            self.check(metadata).map(|_| ())
        }
    }

    /// Checks `authorization: Basic ...` and returns a new bearer token (after [`Self::admit`]
    /// let the request in).
    pub(crate) fn login(&self, metadata: &MetadataMap) -> Result<(String, Caller), Status> {
        let caller = self.credentials(metadata)?;
        let token = random_id();
        let now = Instant::now();
        let mut tokens = self.lock();
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            token.clone(),
            Token {
                caller: caller.clone(),
                expires: now + self.lifetime,
            },
        );
        tracing::info!(user = %caller.user, "flight sql login");
        Ok((token, caller))
    }

    /// The caller that `authorization: Basic ...` proves (no-auth mode: anyone).
    fn credentials(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let basic = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "));
        let (user, password) = match basic {
            Some(encoded) => {
                let decoded = BASE64
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| Status::invalid_argument("malformed Basic credentials"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| Status::invalid_argument("malformed Basic credentials"))?;
                (user.to_string(), password.to_string())
            }
            None => (String::new(), String::new()),
        };
        let caller = match &self.access {
            Access::InsecureNoAuth => {
                let principal = self.access.anonymous(&user).ok_or_else(|| {
                    Status::internal("no-auth mode without an anonymous principal")
                })?;
                Caller {
                    user: principal.name.clone(),
                    principal,
                    client: None,
                }
            }
            Access::Users(users) => {
                if basic.is_none() {
                    return Err(Status::unauthenticated(
                        "the handshake needs Basic credentials (user and password)",
                    ));
                }
                match users.iter().find(|u| u.name == user) {
                    Some(known) if known.verify(&password) => Caller {
                        user,
                        principal: known.principal(),
                        client: None,
                    },
                    _ => {
                        tracing::warn!(target: "medlake::audit", user = %user, "flight sql password authentication failed");
                        return Err(Status::unauthenticated(format!(
                            "password authentication failed for user \"{user}\""
                        )));
                    }
                }
            }
        };
        Ok(caller)
    }

    /// The caller of a request: its bearer token must be valid and unexpired.
    pub(crate) fn check(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        let Some(token) = token else {
            if let Some(principal) = self.access.anonymous("") {
                return Ok(Caller {
                    user: principal.name.clone(),
                    principal,
                    client: None,
                });
            }
            return Err(Status::unauthenticated(
                "no bearer token: call Handshake with user and password first",
            ));
        };
        let tokens = self.lock();
        match tokens.get(token.trim()) {
            Some(t) if t.expires > Instant::now() => Ok(t.caller.clone()),
            Some(_) => Err(Status::unauthenticated(
                "the bearer token has expired: log in again",
            )),
            None => Err(Status::unauthenticated("unknown bearer token")),
        }
    }
}
