//! Requests and pages: one GET per page with the table's headers (secrets resolved from the
//! server's secret store here and nowhere else), every connection's address vetted by the
//! source policy (the resolver, IP-literal hosts, every redirect hop), retries with backoff on 408/429/5xx and on transport
//! failures honouring `Retry-After`, timeouts, a cap on a page's size, and the four ways an
//! API says where the next page is.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue, LINK, RETRY_AFTER};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use super::{Auth, Config, Pagination};
use medlake_source::Policy;
use medlake_source::policy::{find_refusal, redirect_allowed, vetted_client};
use medlake_source::secret::{self, Secret};
use medlake_source::{Error, Result};

/// An HTTP client for one table: its headers resolved, its timeouts set.
pub(crate) struct Http {
    client: reqwest::Client,
    headers: HeaderMap,
    /// Resolved secret values, masked out of anything a server sends back into a message.
    secrets: Vec<Secret>,
    server: String,
    max_retries: u32,
    retry_backoff: Duration,
    retry_max_wait: Duration,
    request_timeout: Duration,
    max_page_bytes: usize,
    policy: Arc<Policy>,
}

/// A successful reply.
pub(crate) struct Reply {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    error: Error,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: Error) -> Self {
        Self {
            error,
            retry: false,
            retry_after: None,
        }
    }

    fn transient(error: Error, retry_after: Option<Duration>) -> Self {
        Self {
            error,
            retry: true,
            retry_after,
        }
    }
}

fn header_value(option: &str, value: &str, sensitive: bool) -> Result<HeaderValue> {
    let mut header = HeaderValue::from_str(value).map_err(|_| Error::InvalidOption {
        option: option.into(),
        reason: "the value is not a valid HTTP header value".into(),
    })?;
    header.set_sensitive(sensitive);
    Ok(header)
}

pub(crate) use medlake_source::http::parse_retry_after;

/// The `rel="next"` target of `Link` headers (RFC 8288), as written.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            let after = &rest[start + 1..];
            let end = after.find('>')?;
            let target = &after[..end];
            let params_end = after[end..].find('<').map_or(after.len(), |i| end + i);
            let params = &after[end + 1..params_end];
            let is_next = params.split(';').any(|p| {
                let Some((name, value)) = p.split_once('=') else {
                    return false;
                };
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_end_matches(',')
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.to_string());
            }
            rest = &after[end..];
        }
    }
    None
}

impl Http {
    /// A client for `config`; resolves the secret options (an unset variable is an error).
    pub fn new(config: &Config, policy: &Arc<Policy>) -> Result<Self> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let mut secrets = Vec::new();
        for (name, value) in &config.headers {
            let option = format!("header.{name}");
            let resolved = secret::resolve(&option, value, policy)?;
            let sensitive = secret::reference(value).is_some();
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::InvalidOption {
                    option: option.clone(),
                    reason: format!("'{name}' is not an HTTP header name"),
                })?;
            headers.insert(
                header_name,
                header_value(&option, resolved.expose(), sensitive)?,
            );
            if sensitive {
                secrets.push(resolved);
            }
        }
        match &config.auth {
            Auth::None => {}
            Auth::Bearer(reference) => {
                let token = secret::resolve("bearer_token", reference, policy)?;
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    header_value("bearer_token", &format!("Bearer {}", token.expose()), true)?,
                );
                secrets.push(token);
            }
            Auth::ApiKey { header, reference } => {
                let key = secret::resolve("api_key", reference, policy)?;
                let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    Error::InvalidOption {
                        option: "api_key_header".into(),
                        reason: format!("'{header}' is not an HTTP header name"),
                    }
                })?;
                headers.insert(name, header_value("api_key", key.expose(), true)?);
                secrets.push(key);
            }
        }
        secrets.retain(|s| !s.expose().is_empty());
        let origin = config.url.origin();
        let hops = policy.clone();
        // The resolver refuses non-public addresses of hosts the policy does not list.
        let client = vetted_client(policy)
            .user_agent(concat!("medlake/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // Credentials go to the LOCATION's origin only: a redirect elsewhere is not
            // followed (reqwest would drop `Authorization` but keep an API-key header). Every
            // hop is checked again (an address skips the resolver).
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5
                    || attempt.url().origin() != origin
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
            client,
            headers,
            secrets,
            server: config.server.clone(),
            max_retries: config.max_retries,
            retry_backoff: config.retry_backoff,
            retry_max_wait: config.retry_max_wait,
            request_timeout: config.request_timeout,
            max_page_bytes: config.max_page_bytes,
            policy: policy.clone(),
        })
    }

    /// `text` with every secret value masked.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            text = text.replace(secret.expose(), "***");
        }
        text
    }

    /// GETs `url` (page `page` of a read), retrying what may succeed on a second attempt.
    pub async fn get(&self, url: &Url, page: usize) -> Result<Reply> {
        let mut attempt: u32 = 0;
        loop {
            let failure = match self.attempt(url, page).await {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            if !failure.retry {
                return Err(failure.error);
            }
            if attempt >= self.max_retries {
                return Err(if attempt == 0 {
                    failure.error
                } else {
                    failure.error.with_note(&format!(
                        "gave up after {attempt} {}",
                        if attempt == 1 { "retry" } else { "retries" }
                    ))
                });
            }
            let backoff = self
                .retry_backoff
                .saturating_mul(1u32 << attempt.min(16))
                .min(self.retry_max_wait);
            let wait = match failure.retry_after {
                Some(asked) if asked > self.retry_max_wait => {
                    return Err(failure.error.with_note(&format!(
                            "the server asked to wait {} s (Retry-After), more than retry_max_wait_seconds ({} s)",
                            asked.as_secs(),
                            self.retry_max_wait.as_secs()
                        ),
                    ));
                }
                Some(asked) => asked,
                None => backoff,
            };
            attempt += 1;
            warn!(server = %self.server, page, attempt, ?wait, error = %failure.error, "REST request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, url: &Url, page: usize) -> Result<Reply, Failure> {
        debug!(server = %self.server, page, "GET");
        // A host given as an address skips the resolver: check it here.
        self.policy
            .check_literal_host(url)
            .map_err(Failure::fatal)?;
        let response = self
            .client
            .get(url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| self.transport(e, page))?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            let body = self.body(response, self.max_page_bytes, page, true).await?;
            return Ok(Reply { headers, body });
        }
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // The start of the body: APIs explain their errors there.
        let snippet = self
            .body(response, 2048, page, false)
            .await
            .map(|b| {
                let text = String::from_utf8_lossy(&b);
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let short: String = text.chars().take(300).collect();
                self.scrub(&short)
            })
            .unwrap_or_default();
        let message = format!(
            "HTTP {status} on page {page}{}",
            if snippet.is_empty() {
                String::new()
            } else {
                format!(": {snippet}")
            }
        );
        let code = status.as_u16();
        Err(match code {
            401 | 403 => Failure::fatal(Error::LoginFailed {
                server: self.server.clone(),
                message: format!("{message} (check 'bearer_token' / 'api_key')"),
            }),
            404 if page == 1 => Failure::fatal(Error::RemoteTableNotFound {
                server: self.server.clone(),
                table: format!("at this path ({message})"),
            }),
            408 | 429 | 500..=599 => Failure::transient(
                Error::Remote {
                    server: self.server.clone(),
                    code: Some(code.into()),
                    message,
                },
                retry_after,
            ),
            300..=399 => Failure::fatal(Error::Remote {
                server: self.server.clone(),
                code: Some(code.into()),
                message: format!(
                    "{message}; redirects are followed within the LOCATION's origin only (Location: {})",
                    headers
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                ),
            }),
            _ => Failure::fatal(Error::Remote {
                server: self.server.clone(),
                code: Some(code.into()),
                message,
            }),
        })
    }

    /// Reads a body of at most `limit` bytes (`strict`: more is an error, else it is cut).
    async fn body(
        &self,
        mut response: reqwest::Response,
        limit: usize,
        page: usize,
        strict: bool,
    ) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(e, page))?
        {
            if body.len() + chunk.len() > limit {
                if strict {
                    return Err(Failure::fatal(Error::MalformedPage {
                        server: self.server.clone(),
                        page,
                        message: format!(
                            "the body is larger than max_page_bytes ({limit} bytes); ask for smaller pages"
                        ),
                    }));
                }
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport(&self, e: reqwest::Error, page: usize) -> Failure {
        let e = e.without_url();
        if let Some(refused) = find_refusal(&e) {
            return Failure::fatal(refused);
        }
        let error = if e.is_timeout() {
            Error::Timeout {
                server: self.server.clone(),
                seconds: self.request_timeout.as_secs(),
                during: format!("waiting for page {page}"),
            }
        } else if e.is_connect() {
            Error::Connect {
                server: self.server.clone(),
                message: self.scrub(&medlake_common::error_chain(&e)),
            }
        } else {
            Error::ConnectionLost {
                server: self.server.clone(),
                table: format!("page {page}"),
                message: self.scrub(&medlake_common::error_chain(&e)),
            }
        };
        Failure::transient(error, None)
    }
}

/// One page's records.
pub(crate) struct Page {
    /// Counting from 1.
    pub number: usize,
    pub records: Vec<Value>,
}

/// Walks the pages of a read, one request at a time: memory holds one page.
pub(crate) struct Pager<'a> {
    http: &'a Http,
    config: &'a Config,
    /// The first request (LOCATION with the scan's parameters); cursor and offset requests
    /// are built from it.
    first: Url,
    next: Option<Url>,
    page: usize,
    offset: usize,
    cursor: Option<String>,
    /// Follow the pagination (false: the first page only).
    follow: bool,
}

/// `url` with `name=value`, replacing any value it had.
pub(crate) fn set_param(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, value);
    drop(pairs);
}

impl<'a> Pager<'a> {
    /// A read of every page, with `params` added to the first request.
    pub fn new(http: &'a Http, config: &'a Config, params: &[(String, String)]) -> Self {
        let mut first = config.url.clone();
        if let Some(limit) = &config.limit_param {
            set_param(&mut first, limit, &config.page_size.to_string());
        }
        if let Pagination::Offset { offset_param } = &config.pagination {
            set_param(&mut first, offset_param, "0");
        }
        // Last: a high-mark request's own `limit=1` wins over the page size.
        for (name, value) in params {
            set_param(&mut first, name, value);
        }
        Self {
            http,
            config,
            next: Some(first.clone()),
            first,
            page: 0,
            offset: 0,
            cursor: None,
            follow: true,
        }
    }

    /// The first page only, of a request with `params`.
    pub fn single(http: &'a Http, config: &'a Config, params: &[(String, String)]) -> Self {
        let mut pager = Self::new(http, config, params);
        pager.follow = false;
        pager
    }

    fn malformed(&self, message: String) -> Error {
        Error::MalformedPage {
            server: self.config.server.clone(),
            page: self.page,
            message,
        }
    }

    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Page>> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        self.page += 1;
        if let Some(max) = self.config.max_pages
            && self.page > max
        {
            return Err(Error::Remote {
                server: self.config.server.clone(),
                code: None,
                message: format!(
                    "the API has more than max_pages ({max}) pages; raise 'max_pages' if that is expected"
                ),
            });
        }
        let reply = self.http.get(&url, self.page).await?;
        let mut body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            let start: String = String::from_utf8_lossy(&reply.body)
                .chars()
                .take(60)
                .collect();
            self.malformed(format!("the body is not JSON ({e}); it starts {start:?}"))
        })?;
        let records = self.records(&mut body)?;
        if self.follow {
            self.next = self.next_url(&url, &reply.headers, &body, records.len())?;
        }
        Ok(Some(Page {
            number: self.page,
            records,
        }))
    }

    fn records(&self, body: &mut Value) -> Result<Vec<Value>> {
        let pointer = &self.config.records_pointer;
        if self.config.pagination == Pagination::Fhir {
            let kind = body.get("resourceType").and_then(Value::as_str);
            if kind != Some("Bundle") {
                return Err(self.malformed(format!(
                    "expected a FHIR Bundle, found resourceType {}",
                    kind.unwrap_or("(none)")
                )));
            }
        }
        match body.pointer_mut(pointer).map(Value::take) {
            Some(Value::Array(records)) => Ok(records),
            Some(Value::Null) => Ok(Vec::new()),
            // A FHIR Bundle leaves `entry` out when it has none.
            None if self.config.pagination == Pagination::Fhir && pointer == "/entry" => {
                Ok(Vec::new())
            }
            None => Err(self.malformed(format!("there is nothing at records_pointer '{pointer}'"))),
            Some(other) => Err(self.malformed(format!(
                "records_pointer '{pointer}' is {}, not an array",
                medlake_source::json::describe(&other)
            ))),
        }
    }

    fn next_url(
        &mut self,
        current: &Url,
        headers: &HeaderMap,
        body: &Value,
        records: usize,
    ) -> Result<Option<Url>> {
        let link = match &self.config.pagination {
            Pagination::None => None,
            Pagination::Fhir => medlake_source::http::fhir_next_link(body)
                .map_err(|e| self.malformed(e))?
                .map(str::to_string),
            Pagination::NextLink { pointer } => match body.pointer(pointer) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(self.malformed(format!(
                        "next_link_pointer '{pointer}' is {}, not a URL",
                        medlake_source::json::describe(other)
                    )));
                }
            },
            Pagination::LinkHeader => next_link(headers),
            Pagination::Cursor { pointer, param } => {
                let cursor = match body.pointer(pointer) {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => None,
                    Some(Value::String(s)) if s.is_empty() => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(other) => {
                        return Err(self.malformed(format!(
                            "cursor_pointer '{pointer}' is {}, not a cursor",
                            medlake_source::json::describe(other)
                        )));
                    }
                };
                let Some(cursor) = cursor.filter(|_| records > 0) else {
                    return Ok(None);
                };
                if self.cursor.as_deref() == Some(cursor.as_str()) {
                    return Err(self.malformed(format!(
                        "it returns the cursor of the page before ({cursor}): the API would loop"
                    )));
                }
                let mut url = self.first.clone();
                set_param(&mut url, param, &cursor);
                self.cursor = Some(cursor);
                return Ok(Some(url));
            }
            Pagination::Offset { offset_param } => {
                // The first empty page ends the read: an API that returns fewer records than
                // asked for (a capped page size) has not necessarily reached the end.
                if records == 0 {
                    return Ok(None);
                }
                self.offset += records;
                let mut url = self.first.clone();
                set_param(&mut url, offset_param, &self.offset.to_string());
                return Ok(Some(url));
            }
        };
        let Some(link) = link else {
            return Ok(None);
        };
        let next = current
            .join(&link)
            .map_err(|e| self.malformed(format!("its next link '{link}' is not a URL: {e}")))?;
        if next.origin() != self.config.url.origin() {
            return Err(self.malformed(format!(
                "its next link leads to another origin ({}); credentials are sent to {} only",
                next.origin().ascii_serialization(),
                self.config.url.origin().ascii_serialization()
            )));
        }
        if next == *current {
            return Err(
                self.malformed("its next link is the page itself: the API would loop".to_string())
            );
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_give_the_next_target() {
        let mut headers = HeaderMap::new();
        headers.append(
            LINK,
            HeaderValue::from_static(
                r#"<https://api.example/r?page=1>; rel="prev", <https://api.example/r?page=3>; rel="next last""#,
            ),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://api.example/r?page=3")
        );
        let mut headers = HeaderMap::new();
        headers.append(LINK, HeaderValue::from_static("</r?page=2>;rel=next"));
        assert_eq!(next_link(&headers).as_deref(), Some("/r?page=2"));
        let mut headers = HeaderMap::new();
        headers.append(
            LINK,
            HeaderValue::from_static(r#"<https://x/r>; rel="prev""#),
        );
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn parameters_replace_their_previous_value() {
        let mut url = Url::parse("https://api.example/r?a=1&since=old&b=x%20y").unwrap();
        set_param(&mut url, "since", "2024-05-01T10:00:00Z");
        assert_eq!(
            url.as_str(),
            "https://api.example/r?a=1&b=x+y&since=2024-05-01T10%3A00%3A00Z"
        );
    }
}
