//! One client connection: its medlake session, its Postgres settings, and the means to cancel
//! what it is running (CancelRequest, `statement_timeout`).

use medlake_common::Code;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pgwire::messages::startup::SecretKey;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::user_error;

/// A client's connection.
pub struct Connection {
    pub(crate) session: medlake_engine::Session,
    pub(crate) user: String,
    settings: Mutex<Settings>,
    /// The settings as the startup packet left them, and the schema then in use.
    defaults: Mutex<(Settings, String)>,
    cancelled: AtomicBool,
    wake: Notify,
    /// Which query a cancel applies to: a cancel between queries stops nothing.
    query: AtomicU64,
    /// Set when a write ran inside BEGIN ... (every statement commits on its own).
    pub(crate) wrote_in_transaction: AtomicBool,
    /// The names of the protocol-level prepared statements the client holds.
    prepared: Mutex<HashSet<String>>,
}

/// The Postgres settings of a connection (`SET`, `SHOW`, `RESET`).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub statement_timeout: Option<Duration>,
    /// Everything else that `SHOW` answers, by lower-case name.
    pub values: BTreeMap<String, String>,
}

/// Settings clients set and read; the value is the default. `SET` of a name not here (and not
/// a `datafusion.*` option) is an error, as in Postgres.
pub(crate) const KNOWN: &[(&str, &str)] = &[
    ("application_name", ""),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "off"),
    ("extra_float_digits", "1"),
    ("geqo", "on"),
    ("idle_in_transaction_session_timeout", "0"),
    ("intervalstyle", "postgres"),
    ("jit", "off"),
    ("lc_messages", "C.UTF-8"),
    ("lc_monetary", "C.UTF-8"),
    ("lc_numeric", "C.UTF-8"),
    ("lc_time", "C.UTF-8"),
    ("lock_timeout", "0"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", medlake_engine::postgres::SERVER_VERSION),
    (
        "server_version_num",
        medlake_engine::postgres::SERVER_VERSION_NUM,
    ),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("synchronous_commit", "on"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
    ("integer_datetimes", "on"),
    ("is_superuser", "off"),
    ("row_security", "on"),
    ("search_path_schema_check", "on"),
];

/// Settings whose change the server reports to the client (ParameterStatus), with the
/// spelling Postgres uses.
pub(crate) fn reported_name(name: &str) -> Option<&'static str> {
    match name {
        "application_name" => Some("application_name"),
        "client_encoding" => Some("client_encoding"),
        "datestyle" => Some("DateStyle"),
        "intervalstyle" => Some("IntervalStyle"),
        "timezone" => Some("TimeZone"),
        "standard_conforming_strings" => Some("standard_conforming_strings"),
        _ => None,
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            statement_timeout: None,
            values: KNOWN
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }
}

impl Connection {
    pub(crate) fn new(session: medlake_engine::Session, user: String) -> Self {
        Self {
            session,
            user,
            settings: Mutex::new(Settings::default()),
            defaults: Mutex::new((
                Settings::default(),
                medlake_engine::DEFAULT_SCHEMA.to_string(),
            )),
            cancelled: AtomicBool::new(false),
            wake: Notify::new(),
            query: AtomicU64::new(0),
            wrote_in_transaction: AtomicBool::new(false),
            prepared: Mutex::new(HashSet::new()),
        }
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many named prepared statements the client holds.
    pub(crate) fn prepared_count(&self) -> usize {
        self.prepared().len()
    }

    pub(crate) fn prepared_added(&self, name: &str) {
        self.prepared().insert(name.to_owned());
    }

    /// The names of the named prepared statements the client holds.
    pub(crate) fn prepared_names(&self) -> Vec<String> {
        self.prepared().iter().cloned().collect()
    }

    pub(crate) fn prepared_removed(&self, name: &str) {
        self.prepared().remove(name);
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records the current settings as the session defaults (after the startup packet).
    pub(crate) fn seal_startup_defaults(&self) {
        let now = (self.settings(), self.session.default_schema());
        *self
            .defaults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    }

    /// The session defaults: what RESET returns to.
    pub(crate) fn defaults(&self) -> (Settings, String) {
        self.defaults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        let mut settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut settings);
    }

    /// Marks the start of a query; returns its deadline (`statement_timeout`).
    pub(crate) fn begin_query(&self) -> Query {
        self.cancelled.store(false, Ordering::SeqCst);
        let id = self.query.fetch_add(1, Ordering::SeqCst) + 1;
        let timeout = self.settings().statement_timeout;
        Query {
            id,
            // Timeouts are bounded when set; a deadline past the clock's end is no deadline.
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Resolves with the reason when the query must stop: a CancelRequest, or its deadline.
    pub(crate) async fn stopped(&self, query: &Query) -> Stop {
        let cancelled = async {
            loop {
                let notified = self.wake.notified();
                if self.cancelled.load(Ordering::SeqCst)
                    && self.query.load(Ordering::SeqCst) == query.id
                {
                    return;
                }
                notified.await;
            }
        };
        match query.deadline {
            Some(deadline) => tokio::select! {
                () = cancelled => Stop::Cancelled,
                () = tokio::time::sleep_until(deadline) => Stop::TimedOut,
            },
            None => {
                cancelled.await;
                Stop::Cancelled
            }
        }
    }
}

/// The `name=value` pairs of a startup packet's `options` (`-c name=value`, `-cname=value`,
/// `--name=value`), names in lower case; other words are ignored. Never panics.
pub(crate) fn startup_assignments(options: &str) -> Vec<(String, String)> {
    let mut assignments = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next().unwrap_or_default()
        } else if let Some(rest) = word.strip_prefix("-c").or_else(|| word.strip_prefix("--")) {
            rest
        } else {
            continue;
        };
        if let Some((name, value)) = assignment.split_once('=') {
            assignments.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    assignments
}

/// A running query of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Query {
    id: u64,
    deadline: Option<Instant>,
}

/// Why a query stopped early.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stop {
    Cancelled,
    TimedOut,
}

impl Stop {
    pub(crate) fn error(self) -> pgwire::error::PgWireError {
        match self {
            Stop::Cancelled => user_error(
                Code::QueryCanceled,
                "canceling statement due to user request",
            ),
            Stop::TimedOut => user_error(
                Code::QueryCanceled,
                "canceling statement due to statement timeout",
            ),
        }
    }
}

/// What a CancelRequest names a connection by: its process id and secret key.
type CancelKey = (i32, Vec<u8>);

/// The connections that a CancelRequest can name.
#[derive(Default)]
pub(crate) struct Registry {
    connections: Mutex<HashMap<CancelKey, Weak<Connection>>>,
}

fn key_bytes(secret: &SecretKey) -> Vec<u8> {
    secret.to_bytes().to_vec()
}

impl Registry {
    pub(crate) fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: &SecretKey,
        connection: &Arc<Connection>,
    ) -> Registered {
        let key = (pid, key_bytes(secret));
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), Arc::downgrade(connection));
        Registered {
            registry: Arc::downgrade(self),
            key,
        }
    }

    pub(crate) fn cancel(&self, pid: i32, secret: &SecretKey) -> bool {
        let connection = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(pid, key_bytes(secret)))
            .and_then(Weak::upgrade);
        match connection {
            Some(connection) => {
                connection.cancel();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when the connection ends.
pub(crate) struct Registered {
    registry: Weak<Registry>,
    key: (i32, Vec<u8>),
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&self.key);
        }
    }
}
