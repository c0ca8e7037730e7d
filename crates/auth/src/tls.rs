//! The one TLS loader of every door: certificate and key files (PEM) read and checked once,
//! with adapters for rustls (Postgres wire, HTTP) and for tonic (Flight SQL, which takes the
//! PEM itself).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls;

use crate::{Error, Result};

/// TLS certificate and key files (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Checked TLS material.
#[derive(Clone)]
pub struct Loaded {
    /// For rustls acceptors (tokio-rustls, hyper).
    pub rustls: Arc<rustls::ServerConfig>,
    /// The PEM files' bytes, for libraries that parse PEM themselves (tonic).
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadedTls(***)")
    }
}

impl TlsFiles {
    /// Reads and checks the files. Fails (so that a door never falls back to plaintext) when
    /// either is unreadable, empty or not PEM, or when they do not make a usable identity.
    pub fn load(&self) -> Result<Loaded> {
        let fail = |what: &std::path::Path, reason: String| Error::Tls {
            what: what.display().to_string(),
            reason,
        };
        let cert_pem = std::fs::read(&self.cert).map_err(|e| fail(&self.cert, e.to_string()))?;
        let key_pem = std::fs::read(&self.key).map_err(|e| fail(&self.key, e.to_string()))?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(&self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(fail(&self.cert, "no certificate in the file".into()));
        }
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| fail(&self.key, e.to_string()))?
            .ok_or_else(|| fail(&self.key, "no private key in the file".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&self.cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| fail(&self.cert, e.to_string()))?;
        // tonic (Flight SQL) asks rustls for the process-default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Loaded {
            rustls: Arc::new(config),
            cert_pem,
            key_pem,
        })
    }

    /// The folders holding the files: no external table may read from them.
    pub fn folders(&self) -> Vec<PathBuf> {
        [&self.cert, &self.key]
            .iter()
            .filter_map(|p| p.parent().map(|d| d.to_path_buf()))
            .collect()
    }
}
