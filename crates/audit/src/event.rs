//! What one audited statement is: [`Event`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use medlake_common::Code;

use crate::normalize::Statement;

/// Where a statement came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Door {
    Postgres,
    Flight,
    Http,
    /// HL7 v2 messages over MLLP (`medlake-mllp`).
    Mllp,
    /// The local command line (`medlake sql`, `apply`, `refresh`, ...).
    Cli,
    /// The server's own scheduled work (refreshes).
    Scheduler,
    /// Alert rules evaluated after a refresh, as their owner.
    Alerts,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Postgres => "postgres",
            Door::Flight => "flight",
            Door::Http => "http",
            Door::Mllp => "mllp",
            Door::Cli => "cli",
            Door::Scheduler => "scheduler",
            Door::Alerts => "alerts",
        }
    }
}

/// How a statement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// It failed (its SQLSTATE is in [`Event::code`]).
    Error,
    /// A privilege check refused it before it ran (`42501`).
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
        }
    }
}

/// One statement as the audit records it. `seq`, `prev_hash` and `hash` are the log's.
///
/// ```
/// # use medlake_audit::{Door, Event, Outcome};
/// let event = Event {
///     rows: Some(12),
///     objects_read: vec!["silver.readings".into()],
///     ..Event::new("alice", Door::Postgres, "SELECT * FROM silver.readings WHERE mrn = 'X'")
/// };
/// assert_eq!(event.statement.as_str(), "SELECT * FROM silver.readings WHERE mrn = ?");
/// assert_eq!(event.outcome, Outcome::Ok);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When the statement started.
    pub at: DateTime<Utc>,
    pub user: String,
    pub roles: Vec<String>,
    pub door: Door,
    /// The client's address (`10.1.2.3:51234`), when the door has one.
    pub client: Option<String>,
    pub session_id: Option<String>,
    /// The statement, literals kept out.
    pub statement: Statement,
    /// `SELECT`, `INSERT`, `CREATE TABLE`, ... (the engine's name for it).
    pub kind: String,
    /// Tables and views read (`schema.table`).
    pub objects_read: Vec<String>,
    /// Tables and views written, created or dropped.
    pub objects_written: Vec<String>,
    /// Rows returned (a query) or written (a write), when known.
    pub rows: Option<u64>,
    pub outcome: Outcome,
    /// The failure kind of an `Error` or `Denied` outcome (its SQLSTATE is recorded).
    pub code: Option<Code>,
    pub duration: Duration,
    /// The reason given for an emergency access ("break glass"), if it was one.
    pub break_glass: Option<String>,
}

impl Event {
    /// An event for `sql` (normalized here) by `user` on `door`, started now: kind from the
    /// statement's first keyword, outcome `Ok`, everything else empty.
    pub fn new(user: impl Into<String>, door: Door, sql: &str) -> Self {
        Self::of(user, door, Statement::normalize(sql))
    }

    /// [`Event::new`] for a statement normalized already (or [`Statement::described`]).
    pub fn of(user: impl Into<String>, door: Door, statement: Statement) -> Self {
        Self {
            at: Utc::now(),
            user: user.into(),
            roles: Vec::new(),
            door,
            client: None,
            session_id: None,
            kind: statement.kind(),
            statement,
            objects_read: Vec::new(),
            objects_written: Vec::new(),
            rows: None,
            outcome: Outcome::Ok,
            code: None,
            duration: Duration::ZERO,
            break_glass: None,
        }
    }
}
