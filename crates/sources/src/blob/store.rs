//! Where a blob table's files are: the object store of its LOCATION, with credentials from the
//! table's options (`${NAME}` references only) on top of the environment's, built by the
//! warehouse's own store builder (`medlake_lake::location`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use url::Url;

use crate::error::{Error, Result};
use crate::secret;

/// The URL schemes a blob table reads.
pub const SCHEMES: &[&str] = &["file", "az", "abfs", "abfss", "azure", "s3", "s3a", "gs"];

/// Option prefixes passed to object_store as its configuration keys.
pub const STORE_PREFIXES: &[&str] = &["azure_", "aws_", "google_"];

/// Whether a storage option holds a secret (and must be a `${NAME}` reference).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "token", "key", "password"]
        .iter()
        .any(|w| key.contains(w))
        && !key.ends_with("_id")
        && !key.contains("key_id")
        && !key.ends_with("_file")
}

/// A table's folder in its object store.
#[derive(Debug, Clone)]
pub struct Place {
    /// The location as written, with a trailing `/` (no secret: LOCATION may not hold one).
    pub location: String,
    pub store: Arc<dyn ObjectStore>,
    /// The folder inside the store.
    pub prefix: Path,
    /// Resolved secret values, to scrub from messages.
    secrets: Vec<String>,
}

/// Parses LOCATION: a URL of [`SCHEMES`] naming a folder, or an absolute local path.
pub fn parse_location(location: &str) -> Result<Url> {
    let bad = |reason: String| Error::InvalidOption {
        option: "LOCATION".into(),
        reason: format!("'{}' {reason}", medlake_lake::redact(location)),
    };
    let mut url = match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => url,
        _ => {
            let path = std::path::Path::new(location);
            if !path.is_absolute() {
                return Err(bad("is not a URL or an absolute path".into()));
            }
            Url::from_directory_path(path).map_err(|()| bad("is not a folder path".into()))?
        }
    };
    if !SCHEMES.contains(&url.scheme()) {
        return Err(bad(format!(
            "has an unsupported scheme; use {}",
            SCHEMES
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if url.password().is_some() || url.query().is_some() {
        return Err(bad(
            "holds credentials; give them as OPTIONS with ${NAME} references or in the environment"
                .into(),
        ));
    }
    if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!(
            "names no container or bucket, as in {}://container/folder/",
            url.scheme()
        )));
    }
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| bad("is not a local path".into()))?;
        if !path.is_dir() {
            return Err(Error::LocationNotFound {
                location: location.to_string(),
                message: "no such folder".into(),
            });
        }
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl Place {
    /// The store of `location` with the storage options among `options` (resolved now).
    pub fn open(location: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let url = parse_location(location)?;
        let mut config = Vec::new();
        let mut secrets = Vec::new();
        for (key, value) in options {
            if !STORE_PREFIXES.iter().any(|p| key.starts_with(p)) {
                continue;
            }
            if is_secret(key) {
                secret::require_reference(key, value)?;
            }
            let resolved = secret::resolve(key, value)?.expose().to_string();
            if is_secret(key) {
                secrets.push(resolved.clone());
            }
            config.push((key.clone(), resolved));
        }
        if url.scheme() == "file" && !config.is_empty() {
            return Err(Error::InvalidOption {
                option: config[0].0.clone(),
                reason: "local folders take no storage options".into(),
            });
        }
        let (store, prefix) =
            medlake_lake::build_store_with(&url, &config).map_err(|e| Error::InvalidOption {
                option: "LOCATION".into(),
                reason: scrub(&e.to_string(), &secrets),
            })?;
        Ok(Self {
            location: url.to_string(),
            store,
            prefix,
            secrets,
        })
    }

    /// Every object under the folder, with its path relative to the folder.
    pub async fn list(&self) -> Result<Vec<(String, ObjectMeta)>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let found: Vec<ObjectMeta> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        let base = self.prefix.as_ref();
        let mut files: Vec<(String, ObjectMeta)> = found
            .into_iter()
            .filter_map(|meta| {
                let full = meta.location.as_ref();
                let relative = if base.is_empty() {
                    full.to_string()
                } else {
                    full.strip_prefix(base)?.strip_prefix('/')?.to_string()
                };
                Some((relative, meta))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    /// An object_store error as the connector's, without a secret.
    pub fn error(&self, e: object_store::Error) -> Error {
        store_error(&self.location, e, &self.secrets)
    }
}

/// Classifies an object_store error: missing container/bucket/folder, refused credentials,
/// unreachable service, anything else.
pub fn store_error(location: &str, e: object_store::Error, secrets: &[String]) -> Error {
    let message = scrub(&full_message(&e), secrets);
    let lower = message.to_ascii_lowercase();
    match e {
        object_store::Error::NotFound { .. } => Error::LocationNotFound {
            location: location.to_string(),
            message,
        },
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => Error::LoginFailed {
            server: location.to_string(),
            message,
        },
        _ if lower.contains("containernotfound")
            || lower.contains("nosuchbucket")
            || lower.contains("404 not found") =>
        {
            Error::LocationNotFound {
                location: location.to_string(),
                message,
            }
        }
        _ if lower.contains("403")
            || lower.contains("401")
            || lower.contains("authenticationfailed")
            || lower.contains("authorizationfailure")
            || lower.contains("accessdenied")
            || lower.contains("signaturedoesnotmatch") =>
        {
            Error::LoginFailed {
                server: location.to_string(),
                message,
            }
        }
        _ if lower.contains("error sending request")
            || lower.contains("connection refused")
            || lower.contains("dns error") =>
        {
            Error::Connect {
                server: location.to_string(),
                message,
            }
        }
        _ => Error::Remote {
            server: location.to_string(),
            code: None,
            message,
        },
    }
}

fn full_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// Removes secrets from a message: each value, its parts (a SAS token's parameters), their
/// URL-encoded forms, and any `sig=` signature.
pub fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    let mut pieces: Vec<String> = Vec::new();
    for s in secrets {
        pieces.push(s.clone());
        pieces.extend(
            s.trim_start_matches('?')
                .split('&')
                .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string())),
        );
    }
    for piece in pieces.iter().filter(|p| p.len() >= 6) {
        let encoded: String = url::form_urlencoded::byte_serialize(piece.as_bytes()).collect();
        let encoded_upper = encoded.replace("%2f", "%2F").replace("%2b", "%2B");
        for variant in [piece.as_str(), encoded.as_str(), encoded_upper.as_str()] {
            out = out.replace(variant, "***");
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("sig=") {
        result.push_str(&rest[..i + 4]);
        result.push_str("***");
        rest = &rest[i + 4..];
        let end = rest.find(['&', ' ', ')', '"']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_and_scrubbed() {
        assert!(is_secret("azure_storage_account_key"));
        assert!(is_secret("azure_storage_sas_key"));
        assert!(is_secret("aws_secret_access_key"));
        assert!(is_secret("azure_client_secret"));
        assert!(!is_secret("aws_access_key_id"));
        assert!(!is_secret("azure_storage_account_name"));
        let sas = "sv=2022-11-02&ss=b&sig=abc%2Bdef%3D".to_string();
        let text = scrub(
            "GET http://x/c?restype=container&sv=2022-11-02&sig=abc%2Bdef%3D failed; key k3y+/value",
            &[sas, "k3y+/value".into()],
        );
        assert!(!text.contains("abc"), "{text}");
        assert!(!text.contains("k3y"), "{text}");
    }

    #[test]
    fn locations_are_folders_without_credentials() {
        assert!(
            parse_location("az://landing/scans")
                .unwrap()
                .path()
                .ends_with('/')
        );
        assert!(parse_location("ftp://x/y").is_err());
        assert!(parse_location("az://landing/x?sig=secret").is_err());
        assert!(parse_location("relative/path").is_err());
        assert!(matches!(
            parse_location("/surely/not/a/folder/medlake"),
            Err(Error::LocationNotFound { .. })
        ));
    }
}
