//! `medlake-flight`: the Arrow Flight SQL door of `medlake serve`, for ADBC, the Flight SQL
//! JDBC driver and pyarrow.
//!
//! Every call runs through the [`medlake_engine::Engine`] in a session of the caller's
//! principal (the users of the Postgres door, from `medlake-auth`): a Basic-auth handshake
//! returns an expiring bearer token that every other call must carry, checked on the
//! request's headers before any message is decoded. Queries stream record batches as
//! DataFusion produces them; prepared statements bind their parameters as typed literals
//! (the engine's binder); `CommandStatementIngest` appends Arrow batches to a Delta table in
//! one commit. What each caller may do is decided by the engine, never here.

mod auth;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use medlake_auth::Access;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt as _;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{info, warn};

pub use medlake_auth::TlsFiles as Tls;
pub use service::FlightSql;

/// How the Flight SQL door is set up.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub access: Access,
    /// How long a bearer token from the handshake stays valid.
    pub token_lifetime: Duration,
    pub limits: Limits,
    /// Failed logins, shared with the server's other doors: repeated failed handshakes
    /// from one address lock it out for a while.
    pub logins: medlake_auth::Logins,
}

/// Bounds on what one client can make the door hold. Every field is configurable under
/// `[flight]` in the server's config.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest gRPC message a client may send (one ingest batch), after authentication
    /// (default 64 MiB).
    pub max_message_bytes: usize,
    /// The most Arrow bytes one `CommandStatementIngest` may send (default 1 GiB).
    pub max_ingest_bytes: usize,
    /// The most parameter rows one prepared statement may be bound to (default 10,000).
    pub max_parameter_rows: usize,
    /// Open prepared statements per user (default 256); the oldest idle one is closed to
    /// make room for a new one.
    pub max_prepared_per_user: usize,
    /// A prepared statement unused this long is closed (default 1 hour).
    pub prepared_idle: Duration,
    /// Open connections (default 512): beyond, new connections are closed at once.
    pub max_connections: usize,
    /// A call that takes longer is cancelled (default none: long queries stream).
    pub request_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            max_ingest_bytes: 1 << 30,
            max_parameter_rows: 10_000,
            max_prepared_per_user: 256,
            prepared_idle: Duration::from_secs(3600),
            max_connections: 512,
            request_timeout: None,
        }
    }
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
    limits: Limits,
}

impl Server {
    /// Binds the address and loads TLS; fails (never falls back to plaintext) when TLS is
    /// configured and unusable, and refuses no-auth mode beyond loopback.
    pub async fn bind(engine: medlake_engine::Engine, config: Config) -> Result<Self, Error> {
        config
            .access
            .check(config.listen, "flight sql door", config.tls.is_some())
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
            service: FlightSql::new(
                engine,
                config.access,
                config.token_lifetime,
                config.limits.clone(),
                config.logins,
            ),
            tls,
            limits: config.limits,
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
        if let Some(timeout) = self.limits.request_timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(tls) = self.tls {
            builder = match builder.tls_config(tls) {
                Ok(builder) => builder,
                Err(e) => {
                    warn!(error = %e, "flight sql door: TLS setup failed; not serving");
                    return;
                }
            };
        }
        // Credentials are checked on the request's headers, before tonic decodes a message
        // (DoPut's first message is read before the handler runs).
        let gate = self.service.clone();
        let admit = tonic::service::InterceptorLayer::new(move |request: tonic::Request<()>| {
            gate.admit(request.metadata(), request.remote_addr())?;
            Ok(request)
        });
        let service = FlightServiceServer::new(service::Door(self.service))
            .max_decoding_message_size(self.limits.max_message_bytes)
            .max_encoding_message_size(self.limits.max_message_bytes.max(64 << 20));
        // tonic's own TCP_NODELAY setting applies only to listeners it binds: without it, a
        // small answer (an ingest's record count) waits for the client's delayed ACK (~40 ms).
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener).filter_map(
            move |socket: std::io::Result<TcpStream>| match socket {
                Ok(socket) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = socket.set_nodelay(true);
                        Some(Ok(Capped {
                            socket,
                            _permit: permit,
                        }))
                    }
                    Err(_) => {
                        warn!(
                            "flight sql door: connection limit reached; closing a new connection"
                        );
                        None
                    }
                },
                Err(e) => Some(Err(e)),
            },
        );
        if let Err(e) = builder
            .layer(admit)
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
    let loaded = tls.load().map_err(|e| match e {
        medlake_auth::Error::Tls { what, reason } => Error::Tls { what, reason },
        other => Error::Config(other.to_string()),
    })?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(loaded.cert_pem, loaded.key_pem)))
}

/// An accepted connection holding one of the door's connection slots until it closes.
struct Capped {
    socket: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.socket.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}
