//! Delivering a firing: webhooks (an HTTP POST of a small JSON payload, signed with
//! HMAC-SHA-256 when the webhook has a secret, retried with exponential backoff) and the
//! Postgres door's `LISTEN` (a broadcast channel the door's connections subscribe to).

use std::time::Duration;

use hmac::{Hmac, Mac};
use medlake_auth::Secret;
use serde_json::{Value, json};
use sha2::Sha256;
use url::Url;

use crate::log::Firing;

/// The largest payload sent (a Postgres NOTIFY payload must stay under 8000 bytes).
pub const MAX_PAYLOAD: usize = 8000;

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-medlake-signature";
/// The header naming the delivery (`<firing id>/<target>`), the same on every retry, for
/// receivers that deduplicate.
pub const DELIVERY_HEADER: &str = "x-medlake-delivery";

/// A webhook of the server's `[[webhooks]]`.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub name: String,
    pub url: Url,
    /// Signs every payload (from the secret store; never logged).
    pub secret: Option<Secret>,
    /// One attempt's limit.
    pub timeout: Duration,
    /// Send a heartbeat this often while the pipeline is healthy (`heartbeat_seconds`).
    pub heartbeat: Option<Duration>,
}

/// Whether `name` may name a webhook: letters, digits, `-` and `_` (it is stored in a
/// comma-separated list of targets), never the reserved `postgres`.
pub fn valid_webhook_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != crate::rule::POSTGRES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// How deliveries are retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts per target before giving up (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// A notification for the Postgres door: `channel` is the rule's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// The payload of a firing: rule, view, key, severity, when, and a link to the console.
/// Never the row: the key is what a receiver needs to find it, under its own privileges.
/// A key too long for [`MAX_PAYLOAD`] is left out (`"key_truncated": true`).
pub fn payload(firing: &Firing, link_base: &str) -> String {
    let key: Value = serde_json::from_str(&firing.key).unwrap_or(Value::Null);
    let mut body = json!({
        "alert": firing.rule,
        "firing": firing.id,
        "view": firing.view,
        "severity": firing.severity,
        "key": key,
        "fired_at": firing.fired_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "link": format!("{}/console/alerts/{}", link_base.trim_end_matches('/'), firing.id),
    });
    let text = body.to_string();
    if text.len() <= MAX_PAYLOAD {
        return text;
    }
    body["key"] = Value::Null;
    body["key_truncated"] = Value::Bool(true);
    body.to_string()
}

/// What a heartbeat says about the pipeline. A heartbeat is sent only while it is healthy
/// ([`Health::healthy`]): a receiver that stops hearing them knows the pipeline went silent
/// (the server stopped, cannot read its warehouse, a source is past its FRESHNESS ERROR AFTER,
/// or a view's latest refresh failed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The newest successful refresh of any view.
    pub newest_refresh: Option<chrono::DateTime<chrono::Utc>>,
    /// Sources past their FRESHNESS WARN AFTER (not yet ERROR AFTER).
    pub stale_sources: u64,
    /// Sources past their FRESHNESS ERROR AFTER.
    pub failed_sources: u64,
    /// Views whose latest refresh failed.
    pub failed_views: u64,
    /// Deliveries of firings not yet delivered (retrying).
    pub pending_deliveries: u64,
}

impl Health {
    /// Whether heartbeats are sent: no source past ERROR AFTER and no view whose latest
    /// refresh failed.
    pub fn healthy(&self) -> bool {
        self.failed_sources == 0 && self.failed_views == 0
    }
}

/// The payload of heartbeat number `sequence` (counted from 1 by each server process).
pub fn heartbeat_payload(
    health: &Health,
    sequence: u64,
    sent_at: chrono::DateTime<chrono::Utc>,
) -> String {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "heartbeat": sequence,
        "status": if health.healthy() { "ok" } else { "unhealthy" },
        "sent_at": time(sent_at),
        "newest_refresh": health.newest_refresh.map(time),
        "stale_sources": health.stale_sources,
        "failed_sources": health.failed_sources,
        "failed_views": health.failed_views,
        "pending_deliveries": health.pending_deliveries,
    })
    .to_string()
}

/// The signature header's value for `body` at `unix_seconds`.
pub fn sign(secret: &Secret, unix_seconds: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(format!("{unix_seconds}.{body}").as_bytes());
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Whether `header` is a valid signature of `body` with `secret`, made at most `tolerance`
/// from `now` (what a receiver checks; used by our tests and documented for receivers).
pub fn verify(secret: &Secret, header: &str, body: &str, now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > tolerance {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&v1).is_ok()
}

/// One attempt: POSTs `body` to the webhook. `Err` says why it failed (status or transport
/// error, never the URL's query or the secret).
pub async fn post(
    client: &reqwest::Client,
    webhook: &Webhook,
    delivery: &str,
    body: &str,
) -> Result<(), String> {
    let mut request = client
        .post(webhook.url.clone())
        .timeout(webhook.timeout)
        .header("content-type", "application/json")
        .header(DELIVERY_HEADER, delivery)
        .body(body.to_string());
    if let Some(secret) = &webhook.secret {
        request = request.header(
            SIGNATURE_HEADER,
            sign(secret, chrono::Utc::now().timestamp(), body),
        );
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the webhook answered {}", response.status())),
        Err(e) => Err(describe(&e)),
    }
}

/// A transport error without the URL (it may carry a token in its query).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirected (webhooks are not followed to another address)"
    } else {
        "failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        format!("the request {kind}")
    } else {
        format!("the request {kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn firing(key: String) -> Firing {
        Firing {
            id: "f1".into(),
            rule: "news2".into(),
            rule_id: "r".into(),
            view: "gold.news2_hourly".into(),
            key,
            severity: "high".into(),
            row: "{\"name\":\"secret patient\"}".into(),
            version: 3,
            fired_at: chrono::Utc::now(),
            deliveries: BTreeMap::new(),
            acknowledged: None,
        }
    }

    #[test]
    fn the_payload_names_the_key_but_never_the_row() {
        let text = payload(&firing("{\"patient_id\":\"p-1\"}".into()), "https://m/");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["key"]["patient_id"], "p-1");
        assert_eq!(value["link"], "https://m/console/alerts/f1");
        assert!(!text.contains("secret patient"));
        let long = format!("{{\"k\":\"{}\"}}", "x".repeat(10_000));
        let text = payload(&firing(long), "");
        assert!(text.len() <= MAX_PAYLOAD);
        assert!(text.contains("key_truncated"));
    }

    #[test]
    fn signatures_verify_and_a_changed_body_or_key_does_not() {
        let secret = Secret::new("s3cret");
        let header = sign(&secret, 1_000, "{\"a\":1}");
        assert!(verify(&secret, &header, "{\"a\":1}", 1_010, 300));
        assert!(!verify(&secret, &header, "{\"a\":2}", 1_010, 300));
        assert!(!verify(
            &Secret::new("other"),
            &header,
            "{\"a\":1}",
            1_010,
            300
        ));
        assert!(!verify(&secret, &header, "{\"a\":1}", 5_000, 300));
    }

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let retry = Retry {
            max_attempts: 10,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(retry.backoff(1), Duration::from_millis(100));
        assert_eq!(retry.backoff(3), Duration::from_millis(400));
        assert_eq!(retry.backoff(9), Duration::from_secs(1));
        assert_eq!(retry.backoff(u32::MAX), Duration::from_secs(1));
        assert!(valid_webhook_name("ward-3_pager"));
        assert!(!valid_webhook_name("postgres"));
        assert!(!valid_webhook_name("a,b"));
    }
}
