//! `medlake-pgwire`: the Postgres wire protocol door of `medlake serve`, for psql, Power BI
//! (Npgsql), JDBC/ODBC tools, psycopg and tokio-postgres.
//!
//! Every statement runs through one [`medlake_engine::Session`] per connection, so the SQL,
//! the catalog (`pg_catalog`, `information_schema`) and the errors (with their SQLSTATE) are
//! the engine's. This crate owns the protocol: authentication (SCRAM-SHA-256, md5), TLS that
//! fails closed, the simple and extended query protocols with text and binary results
//! (encoded column by column in `encode`, with PostgreSQL's own text for every type), connection settings (`SET`/`SHOW`/`RESET`/`DISCARD ALL`),
//! transaction statements as tools send them, `COPY ... TO STDOUT`, CancelRequest and
//! `statement_timeout`. Results stream batch by batch: a large SELECT never sits in memory.

mod ahead;
mod auth;
mod commands;
mod connection;
mod encode;
mod error;
mod execute;
mod handler;
mod socket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{ClientInfo, ErrorHandler, PgWireServerHandlers};
use pgwire::error::PgWireError;
use pgwire::messages::cancel::CancelRequest;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use auth::{Access, Logins, Method, Secret, User};
#[doc(hidden)]
pub use commands::fuzzing;
/// TLS certificate and key files (PEM): the one loader of `medlake-auth`.
pub use medlake_auth::TlsFiles as Tls;

use crate::connection::Registry;

/// How the Postgres door is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// With TLS configured, every connection must use it.
    pub tls: Option<Tls>,
    pub access: Access,
    /// Open connections; beyond, new connections are closed at once (default 512).
    pub max_connections: usize,
    /// Named prepared statements one connection may hold (default 1000; pgjdbc caches 256);
    /// a `Parse` beyond is refused with SQLSTATE 54000 until the client closes some.
    pub max_prepared_statements: usize,
    /// Failed logins, shared with the server's other doors: repeated failures from one
    /// address lock it out for a while.
    pub logins: Logins,
}

/// The default of [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The default of [`Config::max_prepared_statements`].
pub const DEFAULT_MAX_PREPARED_STATEMENTS: usize = 1000;

/// Errors setting up the server. Nothing here starts a server half-configured.
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

/// The Postgres wire server, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Server {
    /// Binds the address and loads TLS. Fails (never falls back to plaintext) when TLS is
    /// configured and unusable, and refuses no-auth mode on a non-loopback address.
    pub async fn bind(engine: medlake_engine::Engine, config: Config) -> Result<Self, Error> {
        config
            .access
            .check(config.listen, "postgres door", config.tls.is_some())
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
        let registry = Arc::new(Registry::default());
        let handlers = Arc::new(Handlers {
            startup: Arc::new(auth::Startup::new(
                engine,
                config.access.clone(),
                tls.is_some(),
                registry.clone(),
                config.logins.clone(),
            )),
            queries: Arc::new(handler::Queries::new(config.max_prepared_statements.max(1))),
            cancel: Arc::new(Cancel { registry }),
        });
        Ok(Self {
            listener,
            handlers,
            tls,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1))),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether connections must use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts connections until `shutdown` resolves; connections in progress are dropped
    /// with the runtime.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("postgres door stopped");
                    return;
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, addr)) => {
                        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                            warn!(client = %addr, "postgres door: connection limit reached; closing a new connection");
                            continue;
                        };
                        let _ = socket.set_nodelay(true);
                        let handlers = self.handlers.clone();
                        let tls = self.tls.clone();
                        tokio::spawn(async move {
                            debug!(client = %addr, "postgres connection");
                            if let Err(e) = socket::serve(socket, tls, handlers).await {
                                debug!(client = %addr, error = %e, "postgres connection ended with an error");
                            }
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting a postgres connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

/// A TLS acceptor from the certificate and key files (also used by the HTTP door).
pub fn load_tls(tls: &Tls) -> Result<TlsAcceptor, Error> {
    let loaded = tls.load().map_err(|e| match e {
        medlake_auth::Error::Tls { what, reason } => Error::Tls { what, reason },
        other => Error::Config(other.to_string()),
    })?;
    Ok(TlsAcceptor::from(loaded.rustls))
}

struct Handlers {
    startup: Arc<auth::Startup>,
    queries: Arc<handler::Queries>,
    cancel: Arc<Cancel>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

struct Cancel {
    registry: Arc<Registry>,
}

#[async_trait]
impl CancelHandler for Cancel {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.registry.cancel(request.pid, &request.secret_key);
        info!(pid = request.pid, found, "postgres cancel request");
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        debug!(client = %client.socket_addr(), error = %error, "postgres error response");
    }
}
