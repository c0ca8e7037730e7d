//! Requests to a FHIR server and its file hosts: one reqwest client whose every connection is
//! vetted by the source policy, the access token added only where the caller says (and only
//! to origins that may have it), retries of 408/429/5xx and transport failures honouring
//! `Retry-After`, a new SMART token once when the server answers 401, FHIR
//! `OperationOutcome`s and OAuth errors read into messages with every secret masked, and
//! bounded bodies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Response};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use crate::Config;
use crate::auth::{self, Auth, Smart, Token};
use medlake_source::Policy;
use medlake_source::http::parse_retry_after;
use medlake_source::policy::{find_refusal, redirect_allowed, vetted_client};
use medlake_source::secret::{self, Secret};
use medlake_source::{Error, Result};

pub(crate) const FHIR_JSON: &str = "application/fhir+json";
pub(crate) const NDJSON: &str = "application/fhir+ndjson";

/// The access tokens of one table, kept until they expire (shared by its scans).
#[derive(Debug, Default)]
pub(crate) struct TokenCache(tokio::sync::Mutex<Option<Token>>);

/// One request.
pub(crate) struct Request<'a> {
    pub method: Method,
    pub url: &'a Url,
    pub accept: &'static str,
    /// `Prefer: respond-async` (the Bulk Data kick-off).
    pub respond_async: bool,
    /// Send the access token (the caller has checked that the origin may have it).
    pub credentials: bool,
    /// A form body (the token request).
    pub form: Option<String>,
    /// Bound the whole request by `request_timeout_seconds` (false: only the wait for each
    /// read, for files of any size).
    pub whole_timeout: bool,
    /// What the request is, for messages: "the export kick-off", "file 2 of 3".
    pub what: &'a str,
}

impl<'a> Request<'a> {
    pub fn get(url: &'a Url, what: &'a str, credentials: bool) -> Self {
        Self {
            method: Method::GET,
            url,
            accept: FHIR_JSON,
            respond_async: false,
            credentials,
            form: None,
            whole_timeout: true,
            what,
        }
    }
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    error: Error,
    retry: bool,
    retry_after: Option<Duration>,
}

/// A table's HTTP client.
pub(crate) struct Client {
    http: reqwest::Client,
    pub config: Arc<Config>,
    policy: Arc<Policy>,
    tokens: Arc<TokenCache>,
    /// Secret values seen (tokens, assertions): masked out of every message.
    scrub: Mutex<Vec<Secret>>,
}

impl Client {
    pub fn new(config: Arc<Config>, policy: &Arc<Policy>, tokens: Arc<TokenCache>) -> Result<Self> {
        let hops = policy.clone();
        let http = vetted_client(policy)
            .user_agent(concat!("medlake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            // A redirect stays on the origin of the request (credentials never follow it
            // elsewhere), and every hop is checked again (an address skips the resolver).
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let first = attempt.previous().first().map(Url::origin);
                if attempt.previous().len() >= 5
                    || first.as_ref() != Some(&attempt.url().origin())
                    || !redirect_allowed(&hops, attempt.url())
                {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| Error::Connect {
                server: config.server.clone(),
                message: medlake_common::error_chain(&e.without_url()),
            })?;
        Ok(Self {
            http,
            config,
            policy: policy.clone(),
            tokens,
            scrub: Mutex::new(Vec::new()),
        })
    }

    fn remember(&self, secret: &Secret) {
        if secret.expose().len() >= 4
            && let Ok(mut list) = self.scrub.lock()
            && !list.iter().any(|known| known.expose() == secret.expose())
        {
            list.push(secret.clone());
        }
    }

    /// `text` with every secret value masked.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        if let Ok(list) = self.scrub.lock() {
            for secret in list.iter() {
                text = text.replace(secret.expose(), "***");
            }
        }
        text
    }

    fn server(&self) -> String {
        self.config.server.clone()
    }

    /// The server's clock: the `Date` of its CapabilityStatement (`GET [base]/metadata`,
    /// with the table's credentials), else this machine's.
    pub async fn server_time(&self) -> Result<DateTime<Utc>> {
        let url = self.join("metadata")?;
        let response = self
            .send(Request::get(&url, "the CapabilityStatement", true))
            .await?;
        let date = response
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.to_utc());
        drop(response);
        Ok(date.unwrap_or_else(Utc::now))
    }

    /// `path` under the base URL.
    pub fn join(&self, path: &str) -> Result<Url> {
        self.config.base.join(path).map_err(|e| Error::Data {
            what: self.server(),
            message: format!("cannot build the URL of {path}: {e}"),
        })
    }

    /// The access token, from the cache while it is fresh; `None` without authentication.
    async fn token(&self, renew: bool) -> Result<Option<Secret>> {
        match &self.config.auth {
            Auth::None => Ok(None),
            Auth::Bearer(reference) => {
                let token = secret::resolve("bearer_token", reference, &self.policy)?;
                self.remember(&token);
                Ok(Some(token))
            }
            Auth::Smart(smart) => {
                let mut cached = self.tokens.0.lock().await;
                if !renew
                    && let Some(token) = cached.as_ref().filter(|t| t.renew_at > Instant::now())
                {
                    self.remember(&token.value);
                    return Ok(Some(token.value.clone()));
                }
                let token = self.exchange(smart).await?;
                self.remember(&token.value);
                let value = token.value.clone();
                *cached = Some(token);
                Ok(Some(value))
            }
        }
    }

    /// The token endpoint: `token_url`, else the server's `.well-known/smart-configuration`.
    async fn token_endpoint(&self, smart: &Smart) -> Result<Url> {
        if let Some(url) = &smart.token_url {
            return Ok(url.clone());
        }
        let url = self.join(".well-known/smart-configuration")?;
        let mut request = Request::get(&url, "the SMART configuration", false);
        request.accept = "application/json";
        let body = self.anonymous_json(request, 1 << 20).await?;
        body.get("token_endpoint")
            .and_then(Value::as_str)
            .and_then(|u| Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| Error::Remote {
                server: self.server(),
                code: None,
                message: "its .well-known/smart-configuration has no token_endpoint URL; give 'token_url'".into(),
            })
    }

    /// SMART Backend Services: a signed client assertion for an access token.
    async fn exchange(&self, smart: &Smart) -> Result<Token> {
        let endpoint = self.token_endpoint(smart).await?;
        let key = secret::resolve("private_key", &smart.private_key, &self.policy)?;
        let jwt = Secret::new(auth::assertion(smart, &key, endpoint.as_str())?);
        self.remember(&jwt);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", &smart.scope)
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", jwt.expose())
            .finish();
        let request = Request {
            method: Method::POST,
            url: &endpoint,
            accept: "application/json",
            respond_async: false,
            credentials: false,
            form: Some(form),
            whole_timeout: true,
            what: "the token request",
        };
        let body = self.anonymous_json(request, 1 << 20).await?;
        let value = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::LoginFailed {
                server: self.server(),
                message: "the token endpoint answered without an access_token".into(),
            })?;
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300)
            .min(86_400);
        // Renewed a little before it expires: 30 s, or half its life when that is shorter.
        let margin = (lifetime / 2).min(30);
        debug!(server = %self.config.server, lifetime, "SMART access token received");
        Ok(Token {
            value: Secret::new(value),
            renew_at: Instant::now() + Duration::from_secs(lifetime - margin),
        })
    }

    /// A request without credentials whose body is JSON of at most `limit` bytes.
    async fn anonymous_json(&self, request: Request<'_>, limit: usize) -> Result<Value> {
        let what = request.what.to_string();
        let response = self.send_with(&request, None).await?;
        let body = self.body(response, limit, &what).await?;
        serde_json::from_slice(&body).map_err(|e| Error::MalformedPage {
            server: self.server(),
            page: 1,
            message: format!("{what} is not JSON: {e}"),
        })
    }

    /// Reads a body of at most `limit` bytes (more is an error).
    pub async fn body(&self, mut response: Response, limit: usize, what: &str) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.lost(e, what))? {
            if body.len() + chunk.len() > limit {
                return Err(Error::MalformedPage {
                    server: self.server(),
                    page: 1,
                    message: format!("{what} is larger than {limit} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A connection lost while a body was arriving.
    pub fn lost(&self, e: reqwest::Error, what: &str) -> Error {
        let e = e.without_url();
        if e.is_timeout() {
            return Error::Timeout {
                server: self.server(),
                seconds: self.config.request_timeout.as_secs(),
                during: format!("reading {what}"),
            };
        }
        Error::ConnectionLost {
            server: self.server(),
            table: what.to_string(),
            message: self.scrub(&medlake_common::error_chain(&e)),
        }
    }

    /// Sends `request` (2xx is success), with the token when it asks for credentials: a
    /// SMART token the server refuses (401) is renewed once.
    pub async fn send(&self, request: Request<'_>) -> Result<Response> {
        let token = if request.credentials {
            self.token(false).await?
        } else {
            None
        };
        match self.send_with(&request, token.as_ref()).await {
            Err(Error::LoginFailed { .. })
                if token.is_some() && matches!(self.config.auth, Auth::Smart(_)) =>
            {
                warn!(server = %self.config.server, what = request.what, "the server refused the access token; requesting a new one");
                let token = self.token(true).await?;
                self.send_with(&request, token.as_ref()).await
            }
            other => other,
        }
    }

    async fn send_with(&self, request: &Request<'_>, token: Option<&Secret>) -> Result<Response> {
        let mut attempt: u32 = 0;
        loop {
            let failure = match self.attempt(request, token).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            if !failure.retry || attempt >= self.config.max_retries {
                return Err(if attempt == 0 {
                    failure.error
                } else {
                    failure
                        .error
                        .with_note(&format!("gave up after {attempt} retries"))
                });
            }
            let backoff = self
                .config
                .retry_backoff
                .saturating_mul(1u32 << attempt.min(16))
                .min(self.config.retry_max_wait);
            let wait = match failure.retry_after {
                Some(asked) if asked > self.config.retry_max_wait => {
                    return Err(failure.error.with_note(&format!(
                            "the server asked to wait {} s (Retry-After), more than retry_max_wait_seconds",
                            asked.as_secs()
                        ),
                    ));
                }
                Some(asked) => asked,
                None => backoff,
            };
            attempt += 1;
            warn!(server = %self.config.server, what = request.what, attempt, ?wait, error = %failure.error, "FHIR request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        request: &Request<'_>,
        token: Option<&Secret>,
    ) -> Result<Response, Failure> {
        let fatal = |error| Failure {
            error,
            retry: false,
            retry_after: None,
        };
        debug!(server = %self.config.server, what = request.what, method = %request.method, "FHIR request");
        self.policy.check_literal_host(request.url).map_err(fatal)?;
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone())
            .header(ACCEPT, request.accept);
        if request.respond_async {
            builder = builder.header("prefer", "respond-async");
        }
        if request.whole_timeout {
            builder = builder.timeout(self.config.request_timeout);
        }
        if let Some(token) = token {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    fatal(Error::InvalidOption {
                        option: "bearer_token".into(),
                        reason: "the token is not a valid HTTP header value".into(),
                    })
                })?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        if let Some(form) = &request.form {
            builder = builder
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.clone());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| self.transport(e, request.what))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(self.refusal(response, request.what).await)
    }

    /// What a 3xx/4xx/5xx answer means, with the server's explanation.
    async fn refusal(&self, response: Response, what: &str) -> Failure {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let snippet = self
            .body(response, 64 << 10, what)
            .await
            .unwrap_or_default();
        let detail = self.scrub(&explain(&snippet));
        let message = format!(
            "HTTP {status} on {what}{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        let code = status.as_u16();
        let (error, retry) = match code {
            401 | 403 => (
                Error::LoginFailed {
                    server: self.server(),
                    message,
                },
                false,
            ),
            408 | 429 | 500..=599 => (
                Error::Remote {
                    server: self.server(),
                    code: Some(code.into()),
                    message,
                },
                true,
            ),
            _ => (
                Error::Remote {
                    server: self.server(),
                    code: Some(code.into()),
                    message,
                },
                false,
            ),
        };
        Failure {
            error,
            retry,
            retry_after,
        }
    }

    fn transport(&self, e: reqwest::Error, what: &str) -> Failure {
        let e = e.without_url();
        if let Some(refused) = find_refusal(&e) {
            return Failure {
                error: refused,
                retry: false,
                retry_after: None,
            };
        }
        let error = if e.is_timeout() {
            Error::Timeout {
                server: self.server(),
                seconds: self.config.request_timeout.as_secs(),
                during: format!("waiting for {what}"),
            }
        } else if e.is_connect() {
            Error::Connect {
                server: self.server(),
                message: self.scrub(&medlake_common::error_chain(&e)),
            }
        } else {
            Error::ConnectionLost {
                server: self.server(),
                table: what.to_string(),
                message: self.scrub(&medlake_common::error_chain(&e)),
            }
        };
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }
}

/// A server's explanation of a failure: an OperationOutcome's issues (severity, code,
/// diagnostics or details), an OAuth error, else the start of the body.
pub(crate) fn explain(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if value.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") {
            return outcome(&value);
        }
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            let description = value
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return format!("{error} {description}").trim().to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(300).collect()
}

/// An OperationOutcome's issues on one line.
pub(crate) fn outcome(value: &Value) -> String {
    let issues: Vec<String> = value
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(5)
        .map(|issue| {
            let field = |k: &str| issue.get(k).and_then(Value::as_str).unwrap_or_default();
            let text = issue
                .get("diagnostics")
                .and_then(Value::as_str)
                .or_else(|| issue.pointer("/details/text").and_then(Value::as_str))
                .unwrap_or("(no diagnostics)");
            let text: String = text.chars().take(300).collect();
            format!("{} ({}): {text}", field("severity"), field("code"))
        })
        .collect();
    if issues.is_empty() {
        "an OperationOutcome without issues".into()
    } else {
        format!("OperationOutcome: {}", issues.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_oauth_errors_are_explained() {
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"Group icu-9 is unknown"}]}"#;
        assert_eq!(
            explain(body),
            "OperationOutcome: error (not-found): Group icu-9 is unknown"
        );
        assert_eq!(
            explain(br#"{"error":"invalid_client","error_description":"bad signature"}"#),
            "invalid_client bad signature"
        );
        assert_eq!(explain(b"<html>\n oops </html>"), "<html> oops </html>");
    }
}
