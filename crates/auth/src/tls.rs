//! The one TLS loader of every door: certificate and key files (PEM) read and checked once,
//! with adapters for rustls (Postgres wire, HTTP) and for tonic (Flight SQL, which takes the
//! PEM itself).

use std::path::PathBuf;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
        self.load_with(None)
    }

    /// [`Self::load`] for a door whose clients authenticate with certificates (mutual TLS):
    /// every client must present a certificate chain to one of the CA certificates in
    /// `client_ca` (PEM), or the handshake fails. Which client it is: [`certificate_names`].
    pub fn load_mutual(&self, client_ca: &std::path::Path) -> Result<Loaded> {
        self.load_with(Some(client_ca))
    }

    fn load_with(&self, client_ca: Option<&std::path::Path>) -> Result<Loaded> {
        let fail = |what: &std::path::Path, reason: String| Error::Tls {
            what: what.display().to_string(),
            reason,
        };
        let cert_pem = std::fs::read(&self.cert).map_err(|e| fail(&self.cert, e.to_string()))?;
        let key_pem = std::fs::read(&self.key).map_err(|e| fail(&self.key, e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(&self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(fail(&self.cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => fail(&self.key, "no private key in the file".into()),
            e => fail(&self.key, e.to_string()),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&self.cert, e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        };
        let config = builder
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

/// A verifier that requires a client certificate chaining to a CA in the PEM file `ca`.
fn client_verifier(
    ca: &std::path::Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let fail = |reason: String| Error::Tls {
        what: ca.display().to_string(),
        reason,
    };
    let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no CA certificate in the file".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| fail(e.to_string()))
}

/// Whether the end-entity certificate `der` (already verified by the TLS handshake) is valid
/// for `name`: a DNS name in its subjectAltName (or an IP address), as for a server's name.
/// Certificates of unparsable DER match nothing.
pub fn certificate_names(der: &[u8], name: &str) -> bool {
    let cert = rustls::pki_types::CertificateDer::from(der);
    let Ok(parsed) = webpki::EndEntityCert::try_from(&cert) else {
        return false;
    };
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(name) else {
        return false;
    };
    parsed
        .verify_is_valid_for_subject_name(&server_name)
        .is_ok()
}
