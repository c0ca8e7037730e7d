//! A medlake Postgres server for tests: a scratch warehouse, a self-signed certificate,
//! users with passwords, and tokio-postgres clients that verify the certificate. The server
//! runs on the test's runtime and stops with it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use medlake_engine::Engine;
use medlake_pgwire::{Access, Config, Method, Secret, Server, Tls, User};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

pub const ALICE: (&str, &str) = ("alice", "correct horse battery staple");
pub const BOB_MD5: (&str, &str) = ("bob", "an old client's password");
pub const READER: (&str, &str) = ("dashboard", "reads gold only");
/// An admin: the sqllogictest files are written for the operator, who manages roles.
pub const ADMIN: (&str, &str) = ("root", "the operator's own password");

pub struct Harness {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub ca: Option<rustls::pki_types::CertificateDer<'static>>,
    pub ca_file: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The users every TLS test server knows.
pub fn users() -> Access {
    Access::Users(vec![
        User {
            name: ALICE.0.into(),
            password: Secret::new(ALICE.1),
            method: Method::ScramSha256,
            role: medlake_auth::Role::Writer,
            create_external: false,
            roles: Default::default(),
            secrets: Default::default(),
        },
        User {
            name: BOB_MD5.0.into(),
            password: Secret::new(BOB_MD5.1),
            method: Method::Md5,
            role: medlake_auth::Role::Writer,
            create_external: false,
            roles: Default::default(),
            secrets: Default::default(),
        },
        User {
            name: ADMIN.0.into(),
            password: Secret::new(ADMIN.1),
            method: Method::ScramSha256,
            role: medlake_auth::Role::Admin,
            create_external: false,
            roles: Default::default(),
            secrets: Default::default(),
        },
        User {
            name: READER.0.into(),
            password: Secret::new(READER.1),
            method: Method::ScramSha256,
            role: medlake_auth::Role::Reader,
            create_external: false,
            roles: Default::default(),
            secrets: Default::default(),
        },
    ])
}

/// Seed data: a bronze table with the types dashboards read, and a gold materialized view.
pub const SEED: &str = "
CREATE TABLE bronze.readings (
  device_id VARCHAR NOT NULL,
  patient_id BIGINT,
  metric VARCHAR NOT NULL,
  value DOUBLE,
  ts TIMESTAMP NOT NULL
);
INSERT INTO bronze.readings VALUES
  ('pump-1', 1001, 'heart_rate', 72.0, TIMESTAMP '2026-11-23 10:00:00'),
  ('pump-1', 1001, 'spo2', 97.5, TIMESTAMP '2026-11-23 10:00:00'),
  ('pump-2', 1002, 'heart_rate', 88.0, TIMESTAMP '2026-11-23 10:01:00'),
  ('pump-2', NULL, 'heart_rate', NULL, TIMESTAMP '2026-11-23 10:02:00');
CREATE MATERIALIZED VIEW gold.device_counts AS
  SELECT device_id, count(*) AS readings FROM bronze.readings GROUP BY device_id;
";

/// Starts a server over a fresh warehouse holding [`SEED`]; with `tls`, TLS is required.
pub async fn start(tls: bool, access: Access) -> Harness {
    let h = start_empty(tls, access).await;
    for output in h.engine.sql(SEED).await.expect("seed the warehouse") {
        output.collect().await.expect("seed statement");
    }
    h
}

/// Starts a server over a fresh, empty warehouse.
pub async fn start_empty(tls: bool, access: Access) -> Harness {
    start_configured(tls, access, |_| {}).await
}

/// Starts a server over a fresh, empty warehouse, with `configure` applied to its config.
pub async fn start_configured(
    tls: bool,
    access: Access,
    configure: impl FnOnce(&mut Config),
) -> Harness {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let warehouse = dir.path().join("warehouse");
    let engine = Engine::open(warehouse.to_str().expect("utf-8 path"))
        .await
        .expect("open the warehouse");
    let (tls_config, ca, ca_file) = if tls {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, certified.cert.pem()).expect("write the certificate");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write the key");
        (
            Some(Tls {
                cert: cert.clone(),
                key,
            }),
            Some(certified.cert.der().clone()),
            Some(cert),
        )
    } else {
        (None, None, None)
    };
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        tls: tls_config,
        access,
        max_connections: medlake_pgwire::DEFAULT_MAX_CONNECTIONS,
        max_prepared_statements: medlake_pgwire::DEFAULT_MAX_PREPARED_STATEMENTS,
        logins: Default::default(),
    };
    configure(&mut config);
    let server = Server::bind(engine.clone(), config)
        .await
        .expect("bind the server");
    let addr = server.local_addr().expect("the server's address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        engine,
        ca,
        ca_file,
        dir,
        stop: Some(stop),
    }
}

impl Harness {
    pub fn config(&self, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("localhost")
            .hostaddr(self.addr.ip())
            .port(self.addr.port())
            .user(user)
            .password(password)
            .dbname("medlake")
            .application_name("medlake-tests");
        config.ssl_mode(if self.ca.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        config
    }

    /// A TLS connector that trusts only this server's certificate.
    pub fn tls(&self) -> MakeRustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca {
            roots.add(ca.clone()).expect("a valid certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        MakeRustlsConnect::new(config)
    }

    pub async fn try_connect_with(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Client, tokio_postgres::Error> {
        if self.ca.is_some() && config.get_ssl_mode() != SslMode::Disable {
            let (client, connection) = config.connect(self.tls()).await?;
            tokio::spawn(connection);
            Ok(client)
        } else {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(connection);
            Ok(client)
        }
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        self.try_connect_with(&self.config(user, password)).await
    }

    /// Connects as alice (SCRAM-SHA-256), over TLS when the server requires it.
    pub async fn connect(&self) -> Client {
        self.try_connect(ALICE.0, ALICE.1)
            .await
            .expect("alice connects")
    }
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.code().code().to_string(),
        None => format!("not a server error: {error}"),
    }
}
