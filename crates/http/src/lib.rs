//! medlake's HTTP door: device and gateway ingest, health and Prometheus metrics.
//!
//! `POST /v1/ingest/{schema}.{table}` takes NDJSON (`application/x-ndjson`) or a JSON array
//! (`application/json`), gzip-compressed or not. Rows are validated against the table's schema
//! (each refused row gets its reason), micro-batched with the other requests for the same table
//! that arrive meanwhile, appended in one Delta commit, and acknowledged with 200 only once
//! that commit exists. The commit records the requests' `Idempotency-Key`s, so a batch retried
//! after a lost acknowledgement (a crash, a timeout) is recognised and lands exactly once.
//! Bodies over the limit get 413; a full queue 503 and too many requests in flight 429, both
//! with `Retry-After`, instead of unbounded memory.

mod decode;
mod ingest;
mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use medlake_engine::Engine;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use decode::Refused;
#[doc(hidden)] // for the fuzz target `http_decode` (fuzz/): not an API
pub use decode::{gunzip, rows, values};
pub use ingest::InvalidRows;

/// A bearer token that may push into some tables.
#[derive(Clone)]
pub struct Token {
    /// Who holds it (for logs and metrics; never the secret).
    pub name: String,
    pub secret: String,
    /// `schema.table` or `schema.*`.
    pub tables: Vec<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl Token {
    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn allows(&self, table: &str) -> bool {
        self.tables
            .iter()
            .any(|pattern| match pattern.strip_suffix(".*") {
                Some(schema) => table
                    .split_once('.')
                    .is_some_and(|(s, _)| s.eq_ignore_ascii_case(schema)),
                None => pattern.eq_ignore_ascii_case(table),
            })
    }
}

/// Who may push.
#[derive(Clone, Debug)]
pub enum Auth {
    Tokens(Vec<Token>),
    /// Anyone: only on a loopback address (demos, tests).
    InsecureNoAuth,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<medlake_pgwire::Tls>,
    pub auth: Auth,
    /// Largest request body, compressed and decompressed (413 beyond).
    pub max_body_bytes: usize,
    /// Requests waiting for one table's next commit (503 beyond).
    pub queue_requests: usize,
    /// Requests being read and validated at once (429 beyond).
    pub max_in_flight: usize,
    /// What to do with rows that fail validation, per table (default: refuse the request).
    pub invalid_rows: HashMap<String, InvalidRows>,
    /// How many recent commits of a table are searched for idempotency keys.
    pub key_commits: usize,
}

impl Config {
    pub fn new(listen: SocketAddr, auth: Auth) -> Self {
        Self {
            listen,
            tls: None,
            auth,
            max_body_bytes: 16 << 20,
            queue_requests: 64,
            max_in_flight: 64,
            invalid_rows: HashMap::new(),
            key_commits: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] medlake_pgwire::Error),
}

/// The HTTP server, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Server {
    pub async fn bind(engine: Engine, config: Config) -> Result<Self, Error> {
        match &config.auth {
            Auth::InsecureNoAuth if !config.listen.ip().is_loopback() => {
                return Err(Error::Config(format!(
                    "no-auth mode only binds a loopback address, not {}",
                    config.listen
                )));
            }
            Auth::InsecureNoAuth => warn!(
                addr = %config.listen,
                "HTTP INGEST WITHOUT AUTHENTICATION: anyone on this machine can push rows (--insecure-no-auth)"
            ),
            Auth::Tokens(tokens) if tokens.is_empty() && !config.listen.ip().is_loopback() => {
                return Err(Error::Config(
                    "no ingest tokens are configured for the HTTP door ([[ingest_tokens]])".into(),
                ));
            }
            Auth::Tokens(_) => {}
        }
        if config.tls.is_none() && !config.listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "the HTTP door carries bearer tokens: it needs [tls] to listen on {}",
                config.listen
            )));
        }
        let tls = config
            .tls
            .as_ref()
            .map(medlake_pgwire::load_tls)
            .transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let state = ingest::State::new(engine, &config);
        let router = Router::new()
            .route("/v1/ingest/{target}", post(ingest::handle))
            .route("/healthz", get(ingest::health))
            .route("/metrics", get(metrics::render))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .with_state(state);
        Ok(Self {
            listener,
            router,
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let addr = self.listener.local_addr().ok();
        info!(?addr, tls = self.tls.is_some(), "HTTP door open");
        match self.tls {
            None => {
                if let Err(e) = axum::serve(self.listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    warn!(error = %e, "HTTP door stopped");
                }
            }
            Some(acceptor) => serve_tls(self.listener, self.router, acceptor, shutdown).await,
        }
    }
}

async fn serve_tls(
    listener: TcpListener,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accepting an HTTP connection");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}
