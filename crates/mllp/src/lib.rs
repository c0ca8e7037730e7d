//! `medlake-mllp`: the HL7 v2 door. Device gateways and interface engines send `ORU^R01`
//! observations (IHE PCD-01) and ADT events over MLLP; each message is read
//! (`medlake-hl7`), checked against its sender, written to bronze
//! (`<schema>.hl7_observations`, `<schema>.hl7_adt`) by the engine's ingest writers (one
//! micro-batched Delta commit per table for everything queued, carrying the messages'
//! idempotency keys), and only then acknowledged `AA`. A message that cannot be read or is
//! refused is kept in `<schema>.hl7_quarantine` with the reason, then answered `AE` or `AR`.
//!
//! Who sends: with mutual TLS, the client certificate (verified against `client_ca`) names
//! the sender (a DNS name in its subjectAltName); without it, an IP allow-list of private
//! networks names it. MSH-3/MSH-4 are then checked against what that sender may claim; they
//! are never taken as authentication. A sender is a principal of the engine (like an ingest
//! token): the engine decides whether it may push into each table.
//!
//! Idempotency: a message's key is `hl7:<MSH-3>|<MSH-4>|<MSH-10>` with the SHA-256 of its
//! bytes, so a retry of the same message (after a lost ACK, a restart, a SIGKILL) is
//! answered `AA` without writing it twice, and the same control id with other content is
//! answered `AE` (code 205, duplicate key).

mod conn;
pub mod rows;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use medlake_auth::TlsFiles;
use medlake_engine::push::{PushConfig, Unobserved, Writers};
use medlake_engine::{Engine, IfExists, Ingest, Principal};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

/// Who may send, and how they are recognised.
#[derive(Clone, Debug)]
pub struct Sender {
    /// Its name: the principal's, in the audit and in the rows' `sender` column.
    pub name: String,
    /// A DNS name (or IP) its client certificate must be valid for (mutual TLS).
    pub certificate: Option<String>,
    /// Networks it connects from; private networks only (RFC 1918, loopback, ULA,
    /// link-local). With `certificate` both must match.
    pub addresses: Vec<ipnet::IpNet>,
    /// MSH-3 values it may send (namespace id, the first component); empty: any.
    pub applications: Vec<String>,
    /// MSH-4 values it may send (namespace id); empty: any.
    pub facilities: Vec<String>,
    /// MSH-9 message codes it may send (`ORU`, `ADT`); empty: any.
    pub message_types: Vec<String>,
}

/// How the door authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    Senders(Vec<Sender>),
    /// Anyone, as sender `local`: only on a loopback address (demos, tests).
    InsecureNoAuth,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// CA certificates (PEM) client certificates must chain to: mutual TLS.
    pub client_ca: Option<PathBuf>,
    pub auth: Auth,
    /// The schema of the door's tables (default `bronze`).
    pub schema: String,
    /// Largest message (its MLLP frame), bytes.
    pub max_message_bytes: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Messages waiting for one table's next commit.
    pub queue: usize,
    /// How many recent commits of a table are searched for idempotency keys.
    pub key_commits: usize,
    /// MSH-11 processing ids accepted (default `P`, production); others are answered AR.
    pub processing_ids: Vec<String>,
    /// The zone of timestamps sent without an offset (default UTC).
    pub time_zone: chrono_tz::Tz,
}

impl Config {
    pub fn new(listen: SocketAddr, auth: Auth) -> Self {
        Self {
            listen,
            tls: None,
            client_ca: None,
            auth,
            schema: "bronze".into(),
            max_message_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(600),
            max_connections: 512,
            queue: 4096,
            key_commits: 10_000,
            processing_ids: vec!["P".into()],
            time_zone: chrono_tz::UTC,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Auth(#[from] medlake_auth::Error),
    #[error(transparent)]
    Engine(#[from] medlake_engine::Error),
}

/// A network in the allow-list must be private: an IP allow-list is no authentication on a
/// network anyone can reach.
fn private(net: &ipnet::IpNet) -> bool {
    match net {
        ipnet::IpNet::V4(n) => {
            let a = n.network();
            (a.is_private() || a.is_loopback() || a.is_link_local())
                && n.prefix_len()
                    >= match a.octets()[0] {
                        10 | 127 => 8,
                        172 => 12,
                        192 => 16,
                        _ => 16,
                    }
        }
        ipnet::IpNet::V6(n) => {
            let first = n.network().segments()[0];
            n.network().is_loopback()
                || ((first & 0xfe00) == 0xfc00 && n.prefix_len() >= 7)
                || ((first & 0xffc0) == 0xfe80 && n.prefix_len() >= 10)
        }
    }
}

impl Config {
    /// The rules every door follows: no authentication only on loopback, TLS off loopback,
    /// senders that can be recognised.
    fn check(&self) -> Result<(), Error> {
        let loopback = self.listen.ip().is_loopback();
        let senders = match &self.auth {
            Auth::InsecureNoAuth if !loopback => {
                return Err(Error::Config(format!(
                    "no-auth mode only binds a loopback address, not {}",
                    self.listen
                )));
            }
            Auth::InsecureNoAuth => return Ok(()),
            Auth::Senders(senders) => senders,
        };
        if self.tls.is_none() && !loopback {
            return Err(Error::Config(format!(
                "{} is not a loopback address: configure [mllp] tls_cert and tls_key",
                self.listen
            )));
        }
        if senders.is_empty() {
            return Err(Error::Config("no [[mllp.senders]] configured".into()));
        }
        for s in senders {
            if s.certificate.is_none() && s.addresses.is_empty() {
                return Err(Error::Config(format!(
                    "sender '{}' has neither a certificate name nor addresses",
                    s.name
                )));
            }
            if s.certificate.is_none() && self.client_ca.is_some() {
                return Err(Error::Config(format!(
                    "sender '{}' has no certificate name: with client_ca every sender is \
                     recognised by its certificate (an address alone would take any \
                     certificate of that CA)",
                    s.name
                )));
            }
            if s.name == "local" || senders.iter().filter(|o| o.name == s.name).count() > 1 {
                return Err(Error::Config(format!(
                    "sender name '{}' is reserved or given twice",
                    s.name
                )));
            }
            if s.certificate.is_some() && self.client_ca.is_none() {
                return Err(Error::Config(format!(
                    "sender '{}' is recognised by certificate: configure [mllp] client_ca",
                    s.name
                )));
            }
            if let Some(net) = s.addresses.iter().find(|n| !private(n)) {
                return Err(Error::Config(format!(
                    "sender '{}': {net} is not a private network; an IP allow-list is only \
                     accepted on private networks (use a client certificate)",
                    s.name
                )));
            }
        }
        Ok(())
    }
}

/// The door, bound.
pub struct Server {
    listener: TcpListener,
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub engine: Engine,
    pub config: Config,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub writers: Writers,
    pub connections: Arc<Semaphore>,
    control_ids: AtomicU64,
    started: String,
}

impl Inner {
    /// A control id for an ACK (MSH-10): unique for this server's life and across restarts.
    pub(crate) fn next_control_id(&self) -> String {
        let n = self.control_ids.fetch_add(1, Ordering::Relaxed);
        format!("ML{}{n:06}", self.started)
    }

    /// The principal of a sender (an ingest principal for the door's tables).
    pub(crate) fn principal(&self, sender: &str) -> Principal {
        let schema = &self.config.schema;
        let tables = [rows::OBSERVATIONS, rows::ADT, rows::QUARANTINE]
            .iter()
            .filter_map(|t| medlake_auth::TablePattern::parse(&format!("{schema}.{t}")))
            .collect();
        Principal::ingest_token(sender, tables)
    }
}

impl Server {
    /// Checks the configuration, creates the door's tables when missing, and binds.
    pub async fn bind(engine: Engine, config: Config) -> Result<Self, Error> {
        config.check()?;
        let tls = match (&config.tls, &config.client_ca) {
            (Some(files), Some(ca)) => Some(files.load_mutual(ca)?),
            (Some(files), None) => Some(files.load()?),
            (None, Some(_)) => {
                return Err(Error::Config(
                    "client_ca (mutual TLS) needs tls_cert and tls_key".into(),
                ));
            }
            (None, None) => None,
        }
        .map(|loaded| tokio_rustls::TlsAcceptor::from(loaded.rustls));
        create_tables(&engine, &config.schema).await?;
        let listener = TcpListener::bind(config.listen).await?;
        let writers = Writers::new(
            engine.clone(),
            PushConfig {
                queue: config.queue.max(1),
                key_commits: config.key_commits,
                door: medlake_engine::Door::Mllp,
                quarantine_schema: None,
            },
            Arc::new(Unobserved),
        );
        let started = chrono::Utc::now().timestamp().to_string();
        Ok(Self {
            listener,
            inner: Arc::new(Inner {
                engine,
                connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
                config,
                tls,
                writers,
                control_ids: AtomicU64::new(0),
                started,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether connections must speak TLS.
    pub fn tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Accepts connections until `shutdown` resolves; open connections are then dropped
    /// (a message not yet acknowledged is sent again by its sender: nothing is lost).
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "mllp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.inner.connections.clone().try_acquire_owned() else {
                warn!(%peer, "mllp: too many connections; closing");
                continue;
            };
            let inner = self.inner.clone();
            tokio::spawn(async move {
                // Held for the connection's life, however it ends.
                let _permit = permit;
                conn::accept(&inner, stream, peer).await;
            });
        }
        info!("mllp door stopped");
    }
}

/// The door's tables, created when missing (as the local operator: the server's own setup).
async fn create_tables(engine: &Engine, schema: &str) -> Result<(), Error> {
    let session = engine.session_for(Principal::local("medlake"));
    session
        .sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await?;
    for (table, columns) in [
        (rows::OBSERVATIONS, rows::OBSERVATIONS_SCHEMA.clone()),
        (rows::ADT, rows::ADT_SCHEMA.clone()),
        (rows::QUARANTINE, rows::QUARANTINE_SCHEMA.clone()),
    ] {
        match engine.ingest_target(&format!("{schema}.{table}")).await {
            Ok(_) => continue,
            Err(e) if e.code() == medlake_common::Code::UndefinedTable => {}
            Err(e) => return Err(e.into()),
        }
        session
            .ingest(
                &format!("{schema}.{table}"),
                columns,
                Vec::new(),
                Ingest {
                    create: true,
                    exists: IfExists::Append,
                },
            )
            .await?;
    }
    Ok(())
}

/// Whether `ip` is in one of `nets`.
pub(crate) fn within(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}
