//! The doors (Postgres wire, Flight SQL, HTTP ingest, and HL7 v2 over MLLP when asked for) as
//! `serve` and `quickstart` start them: bound together, announced together, stopped together.

use std::net::SocketAddr;
use std::time::Duration;

use medlake_engine::Engine;
use tokio::sync::watch;

use crate::Failure;

/// The configuration of every door.
pub(crate) struct DoorsConfig {
    pub pg: medlake_pgwire::Config,
    pub flight: medlake_flight::Config,
    pub http: medlake_http::Config,
    /// The HL7 v2 door, when `--mllp` or `[mllp] listen` asks for it.
    pub mllp: Option<medlake_mllp::Config>,
}

impl DoorsConfig {
    /// No authentication, no TLS, default limits: the local demo (`quickstart`). The doors
    /// refuse to bind such a configuration on anything but loopback.
    pub(crate) fn insecure_local(pg: SocketAddr, flight: SocketAddr, http: SocketAddr) -> Self {
        let access = medlake_auth::Access::InsecureNoAuth;
        Self {
            pg: medlake_pgwire::Config {
                listen: pg,
                tls: None,
                access: access.clone(),
                max_connections: medlake_pgwire::DEFAULT_MAX_CONNECTIONS,
                max_prepared_statements: medlake_pgwire::DEFAULT_MAX_PREPARED_STATEMENTS,
                logins: medlake_auth::Logins::default(),
            },
            flight: medlake_flight::Config {
                listen: flight,
                tls: None,
                access,
                token_lifetime: Duration::from_secs(3600),
                limits: medlake_flight::Limits::default(),
                logins: medlake_auth::Logins::default(),
            },
            http: medlake_http::Config::new(http, medlake_http::Auth::InsecureNoAuth),
            mllp: None,
        }
    }
}

/// The doors, bound and announced.
pub(crate) struct Doors {
    pg: medlake_pgwire::Server,
    flight: medlake_flight::Server,
    http: medlake_http::Server,
    mllp: Option<medlake_mllp::Server>,
    pub pg_addr: SocketAddr,
    pub flight_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub mllp_addr: Option<SocketAddr>,
}

impl Doors {
    /// Binds every door (none serves until [`Doors::serve`]) and prints where each listens,
    /// as `medlake {command}: ...`.
    pub(crate) async fn bind(
        engine: &Engine,
        mut config: DoorsConfig,
        command: &str,
    ) -> Result<Self, Failure> {
        // The operator console on the HTTP door logs in the password doors' users, and counts
        // its failed logins in the same record.
        config.http.console.access = Some(config.pg.access.clone());
        config.http.console.logins = config.pg.logins.clone();
        let (pg_listen, flight_listen, http_listen) =
            (config.pg.listen, config.flight.listen, config.http.listen);
        let http = medlake_http::Server::bind(engine.clone(), config.http)
            .await
            .map_err(|e| Failure::Usage(format!("http door on {http_listen}: {e}")))?;
        let flight = medlake_flight::Server::bind(engine.clone(), config.flight)
            .await
            .map_err(|e| Failure::Usage(format!("flight sql door on {flight_listen}: {e}")))?;
        let pg = medlake_pgwire::Server::bind(engine.clone(), config.pg)
            .await
            .map_err(|e| Failure::Usage(format!("postgres door on {pg_listen}: {e}")))?;
        let mllp = match config.mllp {
            Some(mllp) => {
                let listen = mllp.listen;
                Some(
                    medlake_mllp::Server::bind(engine.clone(), mllp)
                        .await
                        .map_err(|e| Failure::Usage(format!("mllp door on {listen}: {e}")))?,
                )
            }
            None => None,
        };
        let address = |a: std::io::Result<SocketAddr>, door: &str| {
            a.map_err(|e| Failure::Usage(format!("{door} door: {e}")))
        };
        let doors = Self {
            pg_addr: address(pg.local_addr(), "postgres")?,
            flight_addr: address(flight.local_addr(), "flight sql")?,
            http_addr: address(http.local_addr(), "http")?,
            mllp_addr: mllp
                .as_ref()
                .map(|m| address(m.local_addr(), "mllp"))
                .transpose()?,
            pg,
            flight,
            http,
            mllp,
        };
        let tls = |on: bool| if on { " (TLS required)" } else { "" };
        println!(
            "medlake {command}: postgres on {}{}",
            doors.pg_addr,
            tls(doors.pg.tls())
        );
        println!(
            "medlake {command}: flight sql on {}{}",
            doors.flight_addr,
            tls(doors.flight.tls())
        );
        println!(
            "medlake {command}: http on {}{}",
            doors.http_addr,
            tls(doors.http.tls())
        );
        if let (Some(addr), Some(mllp)) = (doors.mllp_addr, &doors.mllp) {
            println!("medlake {command}: hl7 mllp on {addr}{}", tls(mllp.tls()));
        }
        Ok(doors)
    }

    /// Serves until `stopped` turns true; connections in progress are then dropped (HTTP
    /// requests in progress finish).
    pub(crate) async fn serve(self, stopped: watch::Receiver<bool>) {
        let mllp = async {
            if let Some(mllp) = self.mllp {
                mllp.serve(until(stopped.clone())).await;
            }
        };
        tokio::join!(
            self.pg.serve(until(stopped.clone())),
            self.flight.serve(until(stopped.clone())),
            self.http.serve(until(stopped.clone())),
            mllp,
        );
    }
}

/// Resolves once `stopped` turns true (or its sender is gone).
pub(crate) async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
