//! Locations as they may appear in errors, logs and listings.

use url::Url;

/// A location with any password and query string (SAS tokens, signatures) replaced by `***`.
pub fn redact(location: &str) -> String {
    match Url::parse(location) {
        Ok(mut url) if url.scheme().len() > 1 => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                url.set_query(Some("***"));
            }
            url.to_string()
        }
        _ => location.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_and_queries_are_hidden() {
        assert_eq!(
            redact("az://user:secret@container/path?sig=abc"),
            "az://user:***@container/path?***"
        );
        assert_eq!(redact("/local/folder"), "/local/folder");
        assert_eq!(redact("C:/windows/path"), "C:/windows/path");
    }
}
