//! Where a blob table's files are: the object store of its LOCATION, with credentials from the
//! table's options (`${NAME}` references only), on top of the server's own cloud identity
//! (its `AWS_*` / `AZURE_*` / `GOOGLE_*` environment, managed identity) only where the
//! policy's `ambient_identity` allows it. Every HTTP connection of the store goes through
//! [`VettedConnector`]: addresses are checked by the policy when they are resolved.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use medlake_source::Policy;
use medlake_source::secret;
use medlake_source::{Error, Result};

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
#[derive(Clone)]
pub struct Place {
    /// The location as written, with a trailing `/` (no secret: LOCATION may not hold one).
    pub location: String,
    pub store: Arc<dyn ObjectStore>,
    /// The folder inside the store.
    pub prefix: Path,
    /// Resolved secret values, to scrub from messages.
    secrets: Vec<String>,
    /// A local folder's canonical path: listed files must resolve inside it.
    local_root: Option<std::path::PathBuf>,
    /// When LOCATION names one file: its name in the folder (`location`, `prefix` are then
    /// the file's folder). The table is that file alone.
    pub file: Option<String>,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the resolved secrets it keeps to scrub messages with.
        f.debug_struct("Place")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Parses LOCATION: a URL of [`SCHEMES`] naming a folder (or one file), or an absolute local
/// path. A local folder comes back with a trailing `/`; a local file without one. A cloud
/// location always comes back as a folder: whether it names one object is only known by
/// asking the store ([`Place::open_file`]).
pub fn parse_location(location: &str) -> Result<Url> {
    let bad = |reason: String| Error::InvalidOption {
        option: "LOCATION".into(),
        reason: format!("'{}' {reason}", medlake_common::redact(location)),
    };
    let mut url = match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => url,
        _ => {
            let path = std::path::Path::new(location);
            if !path.is_absolute() {
                return Err(bad("is not a URL or an absolute path".into()));
            }
            if path.is_file() {
                Url::from_file_path(path).map_err(|()| bad("is not a file path".into()))?
            } else {
                Url::from_directory_path(path).map_err(|()| bad("is not a folder path".into()))?
            }
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
        if path.is_file() {
            return Ok(url);
        }
        if !path.is_dir() {
            return Err(Error::LocationNotFound {
                location: location.to_string(),
                message: "no such file or folder".into(),
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
    /// The store of `location` with the storage options among `options` (resolved now), as
    /// `policy` allows: a local folder under an allowed path, never the warehouse's own
    /// storage, the server's cloud identity only where allowed, connections vetted.
    ///
    /// A local LOCATION that is a file is that file alone; a cloud one is a folder (see
    /// [`Place::open_file`]).
    pub fn open(
        location: &str,
        options: &BTreeMap<String, String>,
        policy: &Arc<Policy>,
    ) -> Result<Self> {
        Self::open_as(location, options, policy, false)
    }

    /// As [`Place::open`], the last segment of LOCATION taken as the name of one file (a
    /// cloud object; a local LOCATION says itself whether it is a file).
    pub fn open_file(
        location: &str,
        options: &BTreeMap<String, String>,
        policy: &Arc<Policy>,
    ) -> Result<Self> {
        Self::open_as(location, options, policy, true)
    }

    /// Whether a cloud LOCATION could name one object (it does not end with `/`).
    pub fn could_be_file(location: &str) -> bool {
        !location.ends_with('/') && Url::parse(location).is_ok_and(|u| u.scheme() != "file")
    }

    fn open_as(
        location: &str,
        options: &BTreeMap<String, String>,
        policy: &Arc<Policy>,
        cloud_file: bool,
    ) -> Result<Self> {
        let mut url = parse_location(location)?;
        let mut file = None;
        let mut local_root = None;
        let mut config = Vec::new();
        let mut secrets = Vec::new();
        for (key, value) in options {
            if !STORE_PREFIXES.iter().any(|p| key.starts_with(p)) {
                continue;
            }
            if is_secret(key) {
                secret::require_reference(key, value)?;
            }
            let resolved = secret::resolve(key, value, policy)?.expose().to_string();
            if is_secret(key) {
                secrets.push(resolved.clone());
            }
            config.push((key.clone(), resolved));
        }
        if url.scheme() == "file" {
            if !config.is_empty() {
                return Err(Error::InvalidOption {
                    option: config[0].0.clone(),
                    reason: "local folders take no storage options".into(),
                });
            }
            let path = url.to_file_path().map_err(|()| Error::InvalidOption {
                option: "LOCATION".into(),
                reason: format!("'{location}' is not a local path"),
            })?;
            // Read the folder (or file) the check saw (symlinks resolved), not the path as
            // written: a single file passes the same allow- and forbid-lists as a folder.
            let canonical = policy.check_path("LOCATION", &path)?;
            let folder = if canonical.is_file() {
                let name = canonical
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| Error::InvalidOption {
                        option: "LOCATION".into(),
                        reason: format!("'{location}' has no file name in UTF-8"),
                    })?;
                file = Some(name.to_string());
                canonical
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_else(|| canonical.clone())
            } else {
                canonical
            };
            local_root = Some(folder.clone());
            url = Url::from_directory_path(&folder).map_err(|()| Error::InvalidOption {
                option: "LOCATION".into(),
                reason: format!("'{location}' is not a folder path"),
            })?;
        } else {
            if cloud_file {
                // `…/folder/name/` (as parsed) → folder `…/folder/` and file `name`.
                let trimmed = url.path().trim_end_matches('/').to_string();
                match trimmed.rsplit_once('/') {
                    Some((parent, name)) if !name.is_empty() => {
                        file = Some(super::percent_decode(name));
                        url.set_path(&format!("{parent}/"));
                    }
                    _ => {
                        return Err(Error::InvalidOption {
                            option: "LOCATION".into(),
                            reason: format!("'{}' names no file", medlake_common::redact(location)),
                        });
                    }
                }
            }
            check_cloud(&url, &config, policy)?;
        }
        let (store, prefix) = build(&url, &config, policy).map_err(|e| Error::InvalidOption {
            option: "LOCATION".into(),
            reason: scrub(&e, &secrets),
        })?;
        Ok(Self {
            location: url.to_string(),
            store,
            prefix,
            secrets,
            local_root,
            file,
        })
    }

    /// Every object under the folder, with its path relative to the folder; or the one file.
    pub async fn list(&self) -> Result<Vec<(String, ObjectMeta)>> {
        if let Some(name) = &self.file {
            let path = self.prefix.clone().join(name.as_str());
            let meta = self.store.head(&path).await.map_err(|e| self.error(e))?;
            let mut files = vec![(name.clone(), meta)];
            self.retain_inside(&mut files);
            if files.is_empty() {
                return Err(Error::LocationNotFound {
                    location: format!("{}{name}", self.location),
                    message: "the file now resolves outside its folder (a symlink); it is not read"
                        .into(),
                });
            }
            return Ok(files);
        }
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
        self.retain_inside(&mut files);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    /// A symlink inside the folder (a file or a folder) must not reach outside it: anyone
    /// who can drop a file into a landing folder could otherwise expose /etc/passwd or the
    /// TLS key. Such entries are skipped (and logged), never read.
    fn retain_inside(&self, files: &mut Vec<(String, ObjectMeta)>) {
        if let Some(root) = &self.local_root {
            files.retain(|(_, meta)| {
                let path = std::path::Path::new("/").join(meta.location.as_ref());
                let inside = path
                    .canonicalize()
                    .is_ok_and(|canonical| canonical.starts_with(root));
                if !inside {
                    tracing::warn!(
                        target: "medlake::audit",
                        location = %self.location,
                        file = %meta.location,
                        "skipped a file that resolves outside the external table's folder"
                    );
                }
                inside
            });
        }
    }

    /// An object_store error as the connector's, without a secret.
    pub fn error(&self, e: object_store::Error) -> Error {
        store_error(&self.location, e, &self.secrets)
    }
}

/// Classifies an object_store error: missing container/bucket/folder, refused credentials,
/// unreachable service, anything else.
pub fn store_error(location: &str, e: object_store::Error, secrets: &[String]) -> Error {
    if let Some(refused) = medlake_source::policy::find_refusal(&e) {
        return refused;
    }
    let message = scrub(&medlake_common::error_chain(&e), secrets);
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

    /// A symlink dropped into an allowed folder (a file to /etc/passwd, a folder to /etc)
    /// is never listed, so never read.
    #[tokio::test]
    async fn symlinks_out_of_the_folder_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("landing");
        std::fs::create_dir_all(folder.join("inner")).unwrap();
        std::fs::write(folder.join("a.csv"), "x\n1\n").unwrap();
        std::fs::write(folder.join("inner/b.csv"), "x\n2\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd.csv")).unwrap();
        std::os::unix::fs::symlink("/etc", folder.join("etc")).unwrap();
        std::os::unix::fs::symlink(folder.join("a.csv"), folder.join("inside.csv")).unwrap();
        let mut policy = Policy::strict();
        policy.allowed_paths = vec![dir.path().to_path_buf()];
        let place = Place::open(
            folder.to_str().unwrap(),
            &BTreeMap::new(),
            &Arc::new(policy),
        )
        .unwrap();
        let names: Vec<String> = place
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            vec!["a.csv", "inner/b.csv", "inside.csv"],
            "{names:?}"
        );
    }

    /// A LOCATION naming one file is that file alone, and passes the same checks as a folder:
    /// the allow-list, the forbidden paths (a TLS key named directly), symlinks resolved.
    #[tokio::test]
    async fn a_single_file_location_follows_the_path_policy() {
        let dir = tempfile::tempdir().unwrap();
        let landing = dir.path().join("landing");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&landing).unwrap();
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(landing.join("readings.csv"), "x\n1\n").unwrap();
        std::fs::write(landing.join("other.csv"), "x\n2\n").unwrap();
        std::fs::write(secrets.join("server.key"), "PRIVATE").unwrap();
        std::os::unix::fs::symlink(secrets.join("server.key"), landing.join("key.csv")).unwrap();
        let mut policy = Policy::strict();
        policy.allowed_paths = vec![dir.path().to_path_buf()];
        policy.forbidden_paths = vec![secrets.join("server.key")];
        let policy = Arc::new(policy);
        let options = BTreeMap::new();

        let file = landing.join("readings.csv");
        let place = Place::open(file.to_str().unwrap(), &options, &policy).unwrap();
        assert_eq!(place.file.as_deref(), Some("readings.csv"));
        let listed = place.list().await.unwrap();
        let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["readings.csv"]);
        assert_eq!(
            format!("{}{}", place.location, names[0]),
            url::Url::from_file_path(file.canonicalize().unwrap())
                .unwrap()
                .to_string()
        );

        // The forbidden file, named directly or through a symlink in an allowed folder.
        for named in [secrets.join("server.key"), landing.join("key.csv")] {
            let e = Place::open(named.to_str().unwrap(), &options, &policy).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{named:?}: {e}");
        }
        // A file outside the allow-list.
        let mut narrow = Policy::strict();
        narrow.allowed_paths = vec![secrets.clone()];
        let e = Place::open(file.to_str().unwrap(), &options, &Arc::new(narrow)).unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{e}");
        // A missing file: not found, as a missing folder.
        let e = Place::open(
            landing.join("nope.csv").to_str().unwrap(),
            &options,
            &policy,
        )
        .unwrap_err();
        assert!(matches!(e, Error::LocationNotFound { .. }), "{e}");
        // Once opened, the file replaced by a symlink to the forbidden one is not read.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(secrets.join("server.key"), &file).unwrap();
        assert!(place.list().await.is_err());
    }

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
    fn the_warehouse_container_is_never_a_source_and_ambient_options_need_permission() {
        let url = |s: &str| Url::parse(s).unwrap();
        let policy = |warehouse: &str| Policy {
            warehouse: Some(url(warehouse)),
            ..Policy::permissive()
        };
        let none: Vec<(String, String)> = Vec::new();
        let account = vec![(
            "azure_storage_account_name".to_string(),
            "other".to_string(),
        )];
        let az = policy("az://lake/warehouse/");
        for inside in [
            "az://lake/landing/",
            "az://LAKE/warehouse/bronze/",
            "abfss://lake@acct.dfs.core.windows.net/x/",
            "azure://acct.blob.core.windows.net/lake/x/",
        ] {
            let e = check_cloud(&url(inside), &none, &az).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{inside}: {e}");
        }
        assert!(check_cloud(&url("az://landing/x/"), &none, &az).is_ok());
        // Another account's container of the same name, when both accounts are known.
        let known = Policy {
            warehouse: Some(url("abfss://lake@mine.dfs.core.windows.net/wh/")),
            ..Policy::permissive()
        };
        assert!(check_cloud(&url("az://lake/x/"), &account, &known).is_ok());
        assert!(check_cloud(&url("az://lake/x/"), &none, &known).is_err());
        let s3 = policy("s3://bucket/wh/");
        assert!(check_cloud(&url("s3://bucket/other/"), &none, &s3).is_err());
        assert!(check_cloud(&url("s3a://bucket/"), &none, &s3).is_err());
        assert!(check_cloud(&url("s3://other/"), &none, &s3).is_ok());
        assert!(check_cloud(&url("gs://bucket/"), &none, &s3).is_ok());

        // The server's identity, files and endpoints only where ambient identity is allowed.
        let strict = Policy {
            ambient_identity: vec!["az://landing".into()],
            ..Policy::default()
        };
        for key in [
            "azure_federated_token_file",
            "azure_msi_endpoint",
            "azure_use_azure_cli",
            "aws_web_identity_token_file",
            "aws_metadata_endpoint",
            "aws_container_credentials_relative_uri",
            "aws_role_arn",
            "google_service_account",
            "google_application_credentials",
            "azure_proxy_url",
            "azure_container_name",
            "aws_bucket",
        ] {
            let config = vec![(key.to_string(), "x".to_string())];
            let e = check_cloud(&url("az://scans/x/"), &config, &strict).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{key}");
            assert!(check_cloud(&url("az://landing/x/"), &config, &strict).is_ok());
        }
        let explicit = vec![("azure_storage_account_key".to_string(), "a2V5".to_string())];
        assert!(check_cloud(&url("az://scans/x/"), &explicit, &strict).is_ok());
        assert!(explicit_credential(&explicit));
        assert!(!explicit_credential(&account));
    }

    #[test]
    fn local_locations_follow_the_path_policy() {
        let dir = tempfile::tempdir().unwrap();
        let strict = Arc::new(Policy::default());
        let options = BTreeMap::new();
        let e = Place::open("/etc/", &options, &strict).unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{e}");
        let allowed = Arc::new(Policy {
            allowed_paths: vec![dir.path().to_path_buf()],
            ..Policy::default()
        });
        assert!(Place::open(&dir.path().display().to_string(), &options, &allowed).is_ok());
        assert!(Place::open("file:///etc/", &options, &allowed).is_err());
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

/// Storage options that make the store use the server's own identity or files, or redirect it
/// to another container, bucket or credential endpoint: only where ambient identity is allowed.
fn ambient_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "_file",
        "msi",
        "identity",
        "metadata_endpoint",
        "imds",
        "container_credentials",
        "azure_cli",
        "fabric",
        "role_arn",
        "role_session",
        "endpoint_url_sts",
        "application_credentials",
        "proxy",
        "container_name",
        "bucket",
    ]
    .iter()
    .any(|w| key.contains(w))
        || matches!(
            key.as_str(),
            "google_service_account" | "google_service_account_path"
        )
}

/// Options that give the store its own credential (no identity of the server is needed).
fn explicit_credential(config: &[(String, String)]) -> bool {
    config.iter().any(|(key, value)| {
        let key = key.to_ascii_lowercase();
        (is_secret(&key) && !value.is_empty())
            || (key.ends_with("use_emulator") && value.eq_ignore_ascii_case("true"))
            || (key.ends_with("skip_signature") && value.eq_ignore_ascii_case("true"))
    })
}

/// Which cloud store a URL is in: (family, account if known, container or bucket).
fn store_identity(
    url: &Url,
    account_option: Option<&str>,
) -> Option<(&'static str, Option<String>, String)> {
    let host = url.host_str()?.to_ascii_lowercase();
    match url.scheme() {
        "az" | "azure" | "abfs" | "abfss" => {
            // abfss://container@account.dfs.core.windows.net/..., or az://container/...,
            // or az://account.blob.core.windows.net/container/...
            if !url.username().is_empty() {
                let account = host.split('.').next().map(str::to_string);
                return Some(("azure", account, url.username().to_ascii_lowercase()));
            }
            if host.contains(".blob.") || host.contains(".dfs.") {
                let account = host.split('.').next().map(str::to_string);
                let container = url.path_segments()?.next()?.to_ascii_lowercase();
                return Some(("azure", account, container));
            }
            Some(("azure", account_option.map(str::to_ascii_lowercase), host))
        }
        "s3" | "s3a" => Some(("s3", None, host)),
        "gs" => Some(("gs", None, host)),
        _ => None,
    }
}

/// The account option of a store's configuration (Azure).
fn account_of(config: &[(String, String)]) -> Option<&str> {
    config
        .iter()
        .find(|(k, _)| {
            matches!(
                k.as_str(),
                "azure_storage_account_name" | "azure_account_name"
            )
        })
        .map(|(_, v)| v.as_str())
}

/// A cloud LOCATION: never in the warehouse's own container or bucket; the server's identity
/// only where the policy allows it.
fn check_cloud(url: &Url, config: &[(String, String)], policy: &Policy) -> Result<()> {
    let shown = medlake_common::redact(url.as_str());
    if let Some(warehouse) = &policy.warehouse {
        let warehouse_account = std::env::var("AZURE_STORAGE_ACCOUNT_NAME")
            .or_else(|_| std::env::var("AZURE_STORAGE_ACCOUNT"))
            .ok();
        if let (Some((family, account, container)), Some((w_family, w_account, w_container))) = (
            store_identity(url, account_of(config)),
            store_identity(warehouse, warehouse_account.as_deref()),
        ) && family == w_family
            && container == w_container
            && (account.is_none() || w_account.is_none() || account == w_account)
        {
            return Err(Error::Refused {
                what: format!("LOCATION '{shown}'"),
                reason: "it is in the warehouse's own container or bucket; read warehouse tables with SQL".into(),
            });
        }
    }
    if !policy.ambient_allowed(url.as_str())
        && let Some((key, _)) = config.iter().find(|(k, _)| ambient_option(k))
    {
        return Err(Error::Refused {
            what: format!("option '{key}'"),
            reason: format!(
                "it uses the server's own identity, files or endpoints, which '{shown}' may not ([sources] ambient_identity)"
            ),
        });
    }
    Ok(())
}

/// Builds the store of `url` (pointing at its container or bucket) and the folder inside it.
fn build(
    url: &Url,
    config: &[(String, String)],
    policy: &Arc<Policy>,
) -> std::result::Result<(Arc<dyn ObjectStore>, Path), String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    let path = Path::from_url_path(url.path()).map_err(|e| e.to_string())?;
    let ambient = policy.ambient_allowed(url.as_str());
    // Without an identity of its own and without the server's, a store reads anonymously
    // rather than fall back to the server's managed identity or metadata service.
    let anonymous = !ambient && !explicit_credential(config);
    let connector = VettedConnector {
        policy: policy.clone(),
    };
    let key_error = |key: &str, e: object_store::Error| format!("option '{key}': {e}");
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        // Local reads share the process's bound on blocking threads.
        "file" => {
            medlake_common::local_io::bounded(Arc::new(object_store::local::LocalFileSystem::new()))
        }
        "az" | "abfs" | "abfss" | "azure" => {
            let mut builder = if ambient {
                MicrosoftAzureBuilder::from_env()
            } else {
                MicrosoftAzureBuilder::new()
            }
            .with_url(url.as_str())
            .with_http_connector(connector);
            for (key, value) in config {
                let parsed = key
                    .parse::<AzureConfigKey>()
                    .map_err(|e| key_error(key, e))?;
                builder = builder.with_config(parsed, value);
            }
            if anonymous {
                builder = builder.with_skip_signature(true);
            }
            Arc::new(builder.build().map_err(|e| e.to_string())?)
        }
        "s3" | "s3a" => {
            let mut builder = if ambient {
                AmazonS3Builder::from_env()
            } else {
                AmazonS3Builder::new()
            }
            .with_url(url.as_str())
            .with_http_connector(connector);
            for (key, value) in config {
                let parsed = key
                    .parse::<AmazonS3ConfigKey>()
                    .map_err(|e| key_error(key, e))?;
                builder = builder.with_config(parsed, value);
            }
            if anonymous {
                builder = builder.with_skip_signature(true);
            }
            Arc::new(builder.build().map_err(|e| e.to_string())?)
        }
        "gs" => {
            let mut builder = if ambient {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            }
            .with_url(url.as_str())
            .with_http_connector(connector);
            for (key, value) in config {
                let parsed = key
                    .parse::<GoogleConfigKey>()
                    .map_err(|e| key_error(key, e))?;
                builder = builder.with_config(parsed, value);
            }
            if anonymous {
                builder = builder.with_skip_signature(true);
            }
            Arc::new(builder.build().map_err(|e| e.to_string())?)
        }
        other => return Err(format!("unsupported scheme {other}")),
    };
    Ok((store, path))
}

/// object_store's HTTP connector with the policy's checks: the reqwest client resolves
/// through the vetting resolver, checks IP-literal hosts and every redirect hop, and does not
/// use the environment's proxies. A refusal is not retried.
#[derive(Debug)]
pub struct VettedConnector {
    pub policy: Arc<Policy>,
}

impl object_store::client::HttpConnector for VettedConnector {
    fn connect(
        &self,
        options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let client =
            client_for(options, &self.policy).map_err(|e| object_store::Error::Generic {
                store: "HTTP",
                source: e.into(),
            })?;
        Ok(object_store::client::HttpClient::new(VettedService {
            client,
            policy: self.policy.clone(),
        }))
    }
}

/// A reqwest client as object_store's `ClientOptions::client` builds it, through the
/// vetting resolver and redirect policy.
fn client_for(
    options: &object_store::ClientOptions,
    policy: &Arc<Policy>,
) -> std::result::Result<reqwest::Client, String> {
    use object_store::ClientConfigKey as K;
    let get = |key: K| options.get_config_value(&key);
    let flag = |key: K| get(key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // Durations from options are bounded: a day at most.
    let duration = |key: K| -> std::result::Result<Option<std::time::Duration>, String> {
        match get(key) {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text)
                .map(|d| Some(d.min(std::time::Duration::from_secs(86_400))))
                .map_err(|e| format!("'{text}' is not a duration: {e}")),
        }
    };
    let mut builder = medlake_source::policy::vetted_client(policy);
    let hops = policy.clone();
    builder = builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10
            || !medlake_source::policy::redirect_allowed(&hops, attempt.url())
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    }));
    builder = match get(K::UserAgent) {
        Some(agent) => builder.user_agent(agent),
        None => builder.user_agent(concat!("medlake/", env!("CARGO_PKG_VERSION"))),
    };
    if let Some(headers) = options.get_default_headers() {
        builder = builder.default_headers(headers.clone());
    }
    if let Some(proxy) = get(K::ProxyUrl) {
        if !policy.any_host() {
            return Err(
                "a proxy would reach hosts the server's [sources] allowed_hosts does not list"
                    .into(),
            );
        }
        builder = builder.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(|e| e.to_string())?);
    }
    if let Some(t) = duration(K::Timeout)? {
        builder = builder.timeout(t);
    }
    if let Some(t) = duration(K::ConnectTimeout)? {
        builder = builder.connect_timeout(t);
    }
    if let Some(t) = duration(K::PoolIdleTimeout)? {
        builder = builder.pool_idle_timeout(t);
    }
    if let Some(n) = get(K::PoolMaxIdlePerHost) {
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| *n <= 1024)
            .ok_or_else(|| format!("'{n}' is not a number of connections from 0 to 1024"))?;
        builder = builder.pool_max_idle_per_host(n);
    }
    if flag(K::Http1Only) {
        builder = builder.http1_only();
    }
    if flag(K::Http2Only) {
        builder = builder.http2_prior_knowledge();
    }
    if flag(K::AllowInvalidCertificates) {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .no_gzip()
        .https_only(!flag(K::AllowHttp))
        .build()
        .map_err(|e| e.to_string())
}

/// The store's requests: an IP-literal host is checked before sending (it skips the
/// resolver), and a refusal anywhere in a failure's chain ends the request without retries.
#[derive(Debug)]
struct VettedService {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

#[async_trait::async_trait]
impl object_store::client::HttpService for VettedService {
    async fn call(
        &self,
        request: object_store::client::HttpRequest,
    ) -> std::result::Result<object_store::client::HttpResponse, object_store::client::HttpError>
    {
        use object_store::client::{HttpError, HttpErrorKind};
        if !self.policy.any_host()
            && let Some(host) = request.uri().host()
            && let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
            && let Err(refused) = self.policy.check_ip(host, ip)
        {
            return Err(HttpError::new(HttpErrorKind::Unknown, refused));
        }
        match object_store::client::HttpService::call(&self.client, request).await {
            Ok(response) => Ok(response),
            Err(e) => match medlake_source::policy::find_refusal(&e) {
                Some(refused) => Err(HttpError::new(HttpErrorKind::Unknown, refused)),
                None => Err(e),
            },
        }
    }
}
