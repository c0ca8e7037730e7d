//! What the HTTP connectors (`rest`, `fhir`) share besides the vetted client
//! ([`crate::policy::vetted_client`]): reading `Retry-After`, and FHIR search paging (a Bundle's
//! `next` link).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// `Retry-After` as a wait: delay-seconds, or an HTTP date (RFC 9110 IMF-fixdate) from `now`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.to_utc();
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The URL of a FHIR search Bundle's `link` whose `relation` is `next`, as written (relative
/// links are the caller's to resolve). `Err` when the body is not a Bundle or the link has no
/// URL.
pub fn fhir_next_link(bundle: &Value) -> Result<Option<&str>, String> {
    let kind = bundle.get("resourceType").and_then(Value::as_str);
    if kind != Some("Bundle") {
        return Err(format!(
            "expected a FHIR Bundle, found resourceType {}",
            kind.unwrap_or("(none)")
        ));
    }
    let Some(next) = bundle
        .get("link")
        .and_then(Value::as_array)
        .and_then(|links| {
            links
                .iter()
                .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        })
    else {
        return Ok(None);
    };
    next.get("url")
        .and_then(Value::as_str)
        .map(Some)
        .ok_or_else(|| "its Bundle link 'next' has no url".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn bundles_give_their_next_link() {
        let page = json!({"resourceType": "Bundle", "link": [
            {"relation": "self", "url": "a"}, {"relation": "next", "url": "b?page=2"}]});
        assert_eq!(fhir_next_link(&page), Ok(Some("b?page=2")));
        let last = json!({"resourceType": "Bundle", "link": [{"relation": "self", "url": "a"}]});
        assert_eq!(fhir_next_link(&last), Ok(None));
        assert!(fhir_next_link(&json!({"resourceType": "Patient"})).is_err());
        let broken = json!({"resourceType": "Bundle", "link": [{"relation": "next"}]});
        assert!(fhir_next_link(&broken).is_err());
    }
}
