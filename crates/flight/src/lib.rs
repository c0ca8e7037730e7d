//! `medlake-flight`: the Arrow Flight SQL door of `medlake serve`, for ADBC, the Flight SQL
//! JDBC driver and pyarrow.
//!
//! Every call runs through the [`medlake_engine::Engine`] with the users of the Postgres
//! door: a Basic-auth handshake returns an expiring bearer token that every other call must
//! carry. Queries stream record batches as DataFusion produces them; prepared statements bind
//! their parameters as typed literals (the engine's binder); `CommandStatementIngest` appends
//! Arrow batches to a Delta table in one commit.

mod auth;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use medlake_pgwire::Access;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{info, warn};

pub use service::FlightSql;

/// TLS certificate and key files (PEM).
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the Flight SQL door is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub access: Access,
    /// How long a bearer token from the handshake stays valid.
    pub token_lifetime: Duration,
}

/// Errors setting up the server; nothing starts half-configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS is configured but cannot be used ({what}): {reason}")]
    Tls { what: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The Flight SQL server, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    service: FlightSql,
    tls: Option<ServerTlsConfig>,
}

/// The largest message a client may send (ingest batches): 256 MiB.
const MAX_MESSAGE: usize = 256 << 20;

impl Server {
    /// Binds the address and loads TLS; fails (never falls back to plaintext) when TLS is
    /// configured and unusable, and refuses no-auth mode beyond loopback.
    pub async fn bind(engine: medlake_engine::Engine, config: Config) -> Result<Self, Error> {
        config
            .access
            .check(config.listen, "flight sql door")
            .map_err(Error::Config)?;
        let tls = match &config.tls {
            Some(tls) => Some(load_tls(tls)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            listener,
            service: FlightSql::new(engine, config.access, config.token_lifetime),
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = match builder.tls_config(tls) {
                Ok(builder) => builder,
                Err(e) => {
                    warn!(error = %e, "flight sql door: TLS setup failed; not serving");
                    return;
                }
            };
        }
        let service = FlightServiceServer::new(service::Door(self.service))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        // tonic's own TCP_NODELAY setting applies only to listeners it binds: without it, a
        // small answer (an ingest's record count) waits for the client's delayed ACK (~40 ms).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener).map(
            |socket: std::io::Result<tokio::net::TcpStream>| {
                socket.inspect(|socket| {
                    let _ = socket.set_nodelay(true);
                })
            },
        );
        if let Err(e) = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            warn!(error = %e, "flight sql door stopped with an error");
        }
        info!("flight sql door stopped");
    }
}

fn load_tls(tls: &Tls) -> Result<ServerTlsConfig, Error> {
    let fail = |what: &std::path::Path, reason: String| Error::Tls {
        what: what.display().to_string(),
        reason,
    };
    let cert = std::fs::read(&tls.cert).map_err(|e| fail(&tls.cert, e.to_string()))?;
    let key = std::fs::read(&tls.key).map_err(|e| fail(&tls.key, e.to_string()))?;
    if !String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE") {
        return Err(fail(&tls.cert, "no PEM certificate in the file".into()));
    }
    if !String::from_utf8_lossy(&key).contains("PRIVATE KEY") {
        return Err(fail(&tls.key, "no PEM private key in the file".into()));
    }
    // rustls has two crypto providers in this build; tonic asks for the process default.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}
