//! `medlake-audit` owns the audit log: `system.audit`, a Delta table in the warehouse that
//! holds one row per statement on every door (who, from where, the statement with its
//! literals kept out, objects read and written, rows, outcome, SQLSTATE, duration, the
//! break-glass reason).
//!
//! - [`AuditLog`] queues [`Event`]s and commits them from one background task, one Delta
//!   commit per batch: [`AuditLog::record_write`] returns once its event is committed
//!   (concurrent writers share a commit), [`AuditLog::record_read`] queues an event that is
//!   committed within [`Settings::flush_interval`]. When a commit and its retry fail, the log
//!   fails closed: `record_read` and [`AuditLog::ensure_available`] refuse
//!   ([`medlake_common::Code::AuditUnavailable`], `58M01`) until a commit succeeds.
//! - Each commit carries, in every row and in its `commitInfo`, the previous commit's hash
//!   and its own, SHA-256 over the previous hash and its rows; [`verify`] walks the commits
//!   and reports the first break.
//! - [`Statement`] is the only statement text an event can hold: literals become `?`.
//! - [`MIN_RETENTION`] and [`check_vacuum`]: 6 years unless an auditor forces it.
//!
//! It depends on `medlake-lake` for every read and write (appends through the lake's
//! [`medlake_lake::Appender`]) and knows nothing of sessions, privileges or doors: the engine
//! builds the events and decides who is an auditor.

mod chain;
mod error;
mod event;
mod log;
mod normalize;
mod retention;
mod table;
mod verify;

pub use chain::Head;
pub use error::{Error, Result};
pub use event::{Door, Event, Outcome};
pub use log::{AuditLog, Settings, drain};
pub use normalize::{MAX_STATEMENT_CHARS, Statement};
pub use retention::{MIN_RETENTION, check_vacuum};
pub use table::{SCHEMA, TABLE, schema, table_name};
pub use verify::{Break, Report, verify};

/// Opens the warehouse at `location` and verifies its audit chain (`medlake audit verify`).
pub async fn verify_location(location: &str) -> Result<Report> {
    verify(&open_warehouse(location).await?).await
}

/// The warehouse at `location`, for callers that know no other medlake crate (the command
/// line, tests).
pub async fn open_warehouse(location: &str) -> Result<medlake_lake::Warehouse> {
    Ok(medlake_lake::Warehouse::open(location).await?)
}
