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
//!
//! Before any login nothing is unbounded: the bearer token and its right to the target table
//! (and the table's existence) are checked before a byte of the body is read, so a request
//! without them costs its headers only; headers, bodies and TLS handshakes have deadlines and
//! the number of open connections is capped (see [`Config`]). `/metrics` keeps per-table
//! series only for tables that exist and that the request's token may push into.
//!
//! `/console` is the operator console ([`console`]): a small web app behind the server's
//! users, whose panels are SQL run as the logged-in user.

pub mod console;
mod decode;
mod ingest;
mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use medlake_engine::Engine;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

pub use console::ConsoleConfig;
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
        medlake_auth::constant_time_eq(self.secret.as_bytes(), presented.as_bytes())
    }

    /// The principal the engine checks this token's pushes against.
    pub fn principal(&self) -> medlake_auth::Principal {
        medlake_auth::Principal::ingest_token(
            self.name.clone(),
            self.tables
                .iter()
                .filter_map(|t| medlake_auth::TablePattern::parse(t))
                .collect(),
        )
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
    pub tls: Option<medlake_auth::TlsFiles>,
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
    /// How long a client has to send a request's headers, on a new connection and between
    /// requests of a kept-alive one; the connection is closed beyond (default 10 s).
    pub header_read_timeout: Duration,
    /// How long a client has to send a whole request body, from the moment the door starts
    /// reading it (after the token check); `408` beyond (default 60 s).
    pub body_read_timeout: Duration,
    /// How long a TLS handshake may take; the connection is closed beyond (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Most connections open at once (TLS handshakes included); a connection accepted beyond
    /// is closed at once, before anything is read from it (default 1024).
    pub max_connections: usize,
    /// The operator console (`/console`): off unless its `access` is set.
    pub console: ConsoleConfig,
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
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            console: ConsoleConfig::default(),
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
    Tls(#[from] medlake_auth::Error),
}

/// The HTTP server, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
}

/// The connection-level limits of [`Config`].
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_read_timeout: Duration,
    tls_handshake_timeout: Duration,
    max_connections: u32,
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
        if let Some(access) = &config.console.access {
            access
                .check(config.listen, "console", config.tls.is_some())
                .map_err(Error::Config)?;
        }
        for (name, value) in [
            ("console idle_timeout", config.console.idle_timeout),
            ("header_read_timeout", config.header_read_timeout),
            ("body_read_timeout", config.body_read_timeout),
            ("tls_handshake_timeout", config.tls_handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!(
                    "the HTTP door's {name} must be more than zero"
                )));
            }
        }
        let max_connections = u32::try_from(config.max_connections)
            .ok()
            .filter(|n| (1..=1 << 24).contains(n))
            .ok_or_else(|| {
                Error::Config(format!(
                    "the HTTP door's max_connections must be 1 to {}, not {}",
                    1 << 24,
                    config.max_connections
                ))
            })?;
        let limits = Limits {
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            max_connections,
        };
        let tls = config
            .tls
            .as_ref()
            .map(|files| {
                files
                    .load()
                    .map(|loaded| tokio_rustls::TlsAcceptor::from(loaded.rustls))
            })
            .transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        let console = console::router(engine.clone(), &config.console, tls.is_some());
        let state = ingest::State::new(engine, &config);
        let router = Router::new()
            .route("/v1/ingest/{target}", post(ingest::handle))
            .route("/healthz", get(ingest::health))
            .route("/metrics", get(ingest::metrics))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .with_state(state)
            .merge(console);
        Ok(Self {
            listener,
            router,
            tls,
            limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes, then lets the open connections finish their
    /// requests (idle ones are closed) and returns.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let Self {
            listener,
            router,
            tls,
            limits,
        } = self;
        let addr = listener.local_addr().ok();
        info!(
            ?addr,
            tls = tls.is_some(),
            max_connections = limits.max_connections,
            "HTTP door open"
        );
        let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
        let (closing, closed) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accepting an HTTP connection");
                        continue;
                    }
                },
            };
            // Beyond the cap the connection is closed before anything is read from it.
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                debug!(%peer, "HTTP connection cap reached; closing the new connection");
                drop(tcp);
                continue;
            };
            let router = router.clone();
            let tls = tls.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    None => serve_connection(tcp, router, limits, closed, peer).await,
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            limits.tls_handshake_timeout,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                warn!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        serve_connection(stream, router, limits, closed, peer).await;
                    }
                }
            });
        }
        drop(listener);
        let _ = closing.send(true);
        // Every connection holds a permit until it ends.
        let _ = connections.acquire_many(limits.max_connections).await;
    }
}

/// Serves one connection (HTTP/1.1, or HTTP/2 by prior knowledge or ALPN) with the header
/// deadline, until it ends or the server closes (then gracefully: requests in progress finish).
async fn serve_connection<I>(
    io: I,
    router: Router,
    limits: Limits,
    mut closed: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // HTTP/2 has no header deadline: an idle connection is pinged and closed when the client
    // does not answer.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    // Who is at the other end, for the audit of refused requests.
    let service = TowerToHyperService::new(router.layer(axum::Extension(ingest::Peer(peer))));
    // hyper's header deadline starts once the protocol is known: the first bytes have one too.
    let io = FirstBytesDeadline::new(io, limits.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = async {
            // The guard `wait_for` returns is not `Send`: drop it here.
            let _ = closed.wait_for(|closed| *closed).await.map(|_| ());
        } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// Bytes a client must send before the protocol is known (the length of the HTTP/2 preface).
const PROTOCOL_BYTES: usize = 24;

/// A connection whose first [`PROTOCOL_BYTES`] bytes must arrive within a deadline: hyper-util
/// reads them to choose between HTTP/1 and HTTP/2 before hyper's `header_read_timeout` starts,
/// and without this a client that connects and sends nothing (or one byte a minute) would hold
/// its connection slot forever.
struct FirstBytesDeadline<I> {
    io: I,
    /// `None` once the first bytes arrived.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    remaining: usize,
}

impl<I> FirstBytesDeadline<I> {
    fn new(io: I, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            remaining: PROTOCOL_BYTES,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.remaining = this.remaining.saturating_sub(read);
                if this.remaining == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
