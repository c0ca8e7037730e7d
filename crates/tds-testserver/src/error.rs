//! Why a connection ended or a table declaration was refused.
//!
//! T-SQL errors the server *sends* (208, 18456, ...) are [`crate::tsql::SqlError`] values, part
//! of normal operation; this type is for the server's own failures.

use std::io;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("unexpected packet type 0x{0:02X}")]
    UnexpectedPacket(u8),
    #[error("login failed for '{user}'")]
    LoginFailed { user: String },
    #[error("connection dropped by fault injection")]
    FaultDrop,
    #[error("table {schema}.{table} has no columns")]
    NoColumns { schema: String, table: String },
    #[error("table {schema}.{table} is not declared")]
    TableNotFound { schema: String, table: String },
    #[error("a batch for {schema}.{table} has {got} columns, the table has {want}")]
    ColumnCount {
        schema: String,
        table: String,
        got: usize,
        want: usize,
    },
    #[error("column '{column}': {detail}")]
    Column { column: String, detail: String },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
