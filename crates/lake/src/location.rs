//! Warehouse locations: local folders and object stores (Azure Blob / ADLS Gen2, S3, GCS).
//!
//! Credentials always come from the environment (the object_store `from_env` conventions:
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_KEY`,
//! `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/`AZURE_TENANT_ID`, `AZURE_STORAGE_USE_EMULATOR`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `GOOGLE_SERVICE_ACCOUNT`, ...), never from the location string, so they never reach the
//! catalog or a log line.

use std::sync::{Arc, Once};

use deltalake::logstore::{
    ObjectStoreFactory, ObjectStoreRef, StorageConfig, logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};

use crate::log_store::WarehouseLogStores;
use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use crate::error::{Error, Result};

/// URL schemes medlake accepts for a warehouse, besides `file`.
pub const CLOUD_SCHEMES: &[&str] = &["az", "abfs", "abfss", "azure", "s3", "s3a", "gs"];

/// Turns what a user typed (`./wh`, `/data/wh`, `file:///data/wh`, `az://container/wh`,
/// `abfss://fs@account.dfs.core.windows.net/wh`, `s3://bucket/wh`, `gs://bucket/wh`) into the
/// warehouse's root URL, creating a local folder if needed. The URL always ends with `/`.
pub fn parse_location(location: &str) -> Result<Url> {
    let invalid = |reason: String| Error::InvalidLocation {
        location: redact(location),
        reason,
    };
    if location.trim().is_empty() {
        return Err(invalid("the location is empty".into()));
    }
    let mut url = match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => url,
        // No scheme (or a Windows drive letter): a local path.
        _ => {
            let path = std::path::Path::new(location);
            std::fs::create_dir_all(path)
                .map_err(|e| invalid(format!("cannot create the folder: {e}")))?;
            let path = path
                .canonicalize()
                .map_err(|e| invalid(format!("cannot resolve the folder: {e}")))?;
            Url::from_directory_path(&path).map_err(|()| invalid("not an absolute path".into()))?
        }
    };
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| invalid("not a local path".into()))?;
            std::fs::create_dir_all(&path)
                .map_err(|e| invalid(format!("cannot create the folder: {e}")))?;
        }
        s if CLOUD_SCHEMES.contains(&s) => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid(format!(
                    "a {s}:// location needs a container or bucket, as in {s}://container/path"
                )));
            }
            if url.password().is_some() {
                return Err(invalid(
                    "credentials do not belong in the location; set them in the environment".into(),
                ));
            }
        }
        other => {
            return Err(invalid(format!(
                "unsupported scheme '{other}': use a local path, file://, az://, abfss://, s3:// or gs://"
            )));
        }
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

pub use medlake_common::redact;

/// Builds the object store for a location (pointing at its root: bucket or container), and the
/// path of the location inside it.
pub fn build_store(url: &Url) -> Result<(Arc<dyn ObjectStore>, Path)> {
    cloud_store(url).map_err(|e| Error::InvalidLocation {
        location: redact(url.as_str()),
        reason: e.to_string(),
    })
}

/// Like [`build_store`], with object_store configuration on top of the environment's: keys as
/// object_store spells them (`azure_storage_account_key`, `aws_secret_access_key`,
/// `google_service_account_key`, ...), e.g. credentials a source connector resolved from its
/// table's options. Values may be secrets: they never appear in the error.
pub fn build_store_with(
    url: &Url,
    config: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    cloud_store_with(url, config).map_err(|e| {
        let mut reason = e.to_string();
        for (_, value) in config {
            if value.len() >= 4 {
                reason = reason.replace(value.as_str(), "***");
            }
        }
        Error::InvalidLocation {
            location: redact(url.as_str()),
            reason,
        }
    })
}

fn cloud_store(url: &Url) -> DeltaResult<(ObjectStoreRef, Path)> {
    cloud_store_with(url, &[])
}

fn cloud_store_with(url: &Url, config: &[(String, String)]) -> DeltaResult<(ObjectStoreRef, Path)> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    let path = Path::from_url_path(url.path())?;
    let store: ObjectStoreRef = match url.scheme() {
        "file" => return crate::durable::local_store(url),
        "az" | "abfs" | "abfss" | "azure" => {
            let mut builder = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (key, value) in config {
                builder = builder.with_config(key.parse::<AzureConfigKey>()?, value);
            }
            Arc::new(builder.build()?)
        }
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in config {
                builder = builder.with_config(key.parse::<AmazonS3ConfigKey>()?, value);
            }
            Arc::new(builder.build()?)
        }
        "gs" => {
            let mut builder = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (key, value) in config {
                builder = builder.with_config(key.parse::<GoogleConfigKey>()?, value);
            }
            Arc::new(builder.build()?)
        }
        other => {
            return Err(DeltaTableError::InvalidTableLocation(format!(
                "unsupported scheme {other}"
            )));
        }
    };
    Ok((store, path))
}

/// Teaches deltalake the cloud schemes, with credentials from the environment, and our local
/// file system for `file://`; every scheme's tables get our log store (`log_store.rs`: the
/// default one, replaying a log a few files at a time). Idempotent.
pub(crate) fn register_cloud_schemes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        crate::durable::register_local_scheme();
        if let Ok(key) = Url::parse("file://") {
            logstore_factories().insert(key, Arc::new(WarehouseLogStores));
        }
        for scheme in CLOUD_SCHEMES {
            let Ok(key) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            object_store_factories().insert(key.clone(), Arc::new(EnvStoreFactory));
            logstore_factories().insert(key, Arc::new(WarehouseLogStores));
        }
    });
}

/// Object stores for cloud schemes configured from the environment.
struct EnvStoreFactory;

impl ObjectStoreFactory for EnvStoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        cloud_store(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_folder_urls() {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wh");
        let url = parse_location(wh.to_str().unwrap()).unwrap();
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/wh/"));
        assert!(wh.is_dir());
    }

    #[test]
    fn cloud_locations_need_a_container_and_no_secrets() {
        assert!(parse_location("az://lake/warehouse").is_ok());
        assert!(parse_location("s3://bucket").unwrap().path().ends_with('/'));
        let err = parse_location("ftp://x/y").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme 'ftp'"), "{err}");
        let err = parse_location("s3://user:secret@bucket/wh")
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not belong"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
