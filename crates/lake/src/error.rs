//! Errors of the lake: one enum, named context, user errors apart from `Internal`.

use deltalake::DeltaTableError;

/// Result of a lake operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The warehouse location cannot be understood or opened.
    #[error("invalid warehouse location '{location}': {reason}")]
    InvalidLocation { location: String, reason: String },

    /// A schema or table name that cannot be a folder of the warehouse.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },

    #[error("schema '{schema}' does not exist")]
    SchemaNotFound { schema: String },

    #[error("schema '{schema}' already exists")]
    SchemaExists { schema: String },

    #[error("schema '{schema}' is not empty (it holds {tables}); use DROP SCHEMA {schema} CASCADE")]
    SchemaNotEmpty { schema: String, tables: String },

    #[error("schema '{schema}' is built in and cannot be dropped")]
    SchemaBuiltIn { schema: String },

    #[error("table '{schema}.{table}' does not exist")]
    TableNotFound { schema: String, table: String },

    #[error("table '{schema}.{table}' already exists")]
    TableExists { schema: String, table: String },

    #[error(
        "table '{schema}.{table}' has no version {version} (versions {earliest} to {latest} exist)"
    )]
    VersionNotFound {
        schema: String,
        table: String,
        version: u64,
        earliest: u64,
        latest: u64,
    },

    /// A range of versions (of changes) that names no commits.
    #[error("table '{schema}.{table}': invalid range of versions: {reason}")]
    InvalidRange {
        schema: String,
        table: String,
        reason: String,
    },

    #[error("table '{schema}.{table}' has no version at or before {timestamp}")]
    TimestampBeforeHistory {
        schema: String,
        table: String,
        timestamp: String,
    },

    /// Data that does not fit the table: NULL in a NOT NULL column, a failed CHECK,
    /// a value of the wrong type. Nothing was committed.
    #[error("write to '{schema}.{table}' refused, nothing was written: {reason}")]
    WriteRefused {
        schema: String,
        table: String,
        kind: Refusal,
        reason: String,
    },

    /// VACUUM with a retention shorter than the table's, without FORCE.
    #[error(
        "VACUUM of '{schema}.{table}' refused: {reason}; add FORCE to vacuum with a shorter retention (time travel to older versions will fail)"
    )]
    RetentionTooShort {
        schema: String,
        table: String,
        reason: String,
    },

    /// Another writer committed a conflicting change; nothing was written.
    #[error("write to '{schema}.{table}' conflicted with a concurrent commit; nothing was written")]
    Conflict {
        schema: String,
        table: String,
        #[source]
        source: Box<DeltaTableError>,
    },

    /// The Delta log or data of a table could not be read or written.
    #[error("Delta table '{schema}.{table}'")]
    Delta {
        schema: String,
        table: String,
        #[source]
        source: Box<DeltaTableError>,
    },

    /// The object store under the warehouse failed.
    #[error("object store at '{path}'")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A backup target or restore request that cannot be used as given (no backup there, an
    /// instant no backup covers, an unreadable manifest).
    #[error("backup at '{location}': {reason}")]
    BackupInvalid { location: String, reason: String },

    /// A backup or restore that would overwrite or mix with what is there (a non-empty
    /// destination, an unfinished restore, a concurrent backup).
    #[error("'{location}' refused: {reason}")]
    BackupRefused { location: String, reason: String },

    /// `RESTORE TABLE` to a version it cannot go back to (the current one or later).
    #[error("RESTORE TABLE '{schema}.{table}' refused: {reason}")]
    RestoreRefused {
        schema: String,
        table: String,
        reason: String,
    },

    /// `CREATE TABLE ... CLONE` of a table that cannot be cloned that way.
    #[error("cannot clone '{schema}.{table}': {reason}")]
    CloneRefused {
        schema: String,
        table: String,
        reason: String,
    },

    /// `CLUSTER BY` names a column the written rows do not have.
    #[error("CLUSTER BY column \"{column}\" is not a column of {table}")]
    InvalidClusterBy { table: String, column: String },

    /// `ALTER TABLE ... SET TBLPROPERTIES` with a property that cannot be set or a value out
    /// of its range.
    #[error("cannot set the properties of {table}: {reason}")]
    InvalidTableProperty { table: String, reason: String },

    /// A query feeding a write failed.
    #[error(transparent)]
    DataFusion(Box<datafusion::error::DataFusionError>),

    /// A broken invariant: a bug in medlake.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A NULL in a NOT NULL column.
    NotNull,
    /// A CHECK constraint or invariant failed.
    Check,
    /// A value that does not convert to the column's type.
    Type,
    /// The data's columns do not match the table's.
    Schema,
}

/// deltalake turns DataFusion errors met while writing into strings
/// (`DeltaTableError::Generic`): tell the data errors among them apart from the rest.
/// `text` without the backtrace the Delta kernel appends to its errors when `RUST_BACKTRACE`
/// is set (numbered frames, with the build's source paths): a client gets the message only.
pub(crate) fn strip_backtrace(text: &str) -> String {
    let frame = |line: &str| {
        let line = line.trim_start();
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        (digits > 0 && line[digits..].starts_with(": "))
            || line.starts_with("at /")
            || line.starts_with("Stack backtrace:")
    };
    let kept: Vec<&str> = text.lines().take_while(|line| !frame(line)).collect();
    kept.join("\n").trim_end().to_string()
}

fn classify_write_failure(message: &str) -> Option<(Refusal, String)> {
    let last = message
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && *l != "caused by")
        .unwrap_or(message);
    let clean = |text: &str| {
        let mut text = text.trim();
        for prefix in [
            "Generic DeltaTable error:",
            "External error:",
            "Execution error:",
            "Arrow error:",
        ] {
            text = text.strip_prefix(prefix).map_or(text, str::trim);
        }
        text.to_string()
    };
    if let Some(at) = message.find(crate::guard::NOT_NULL_MESSAGE) {
        let line = message[at..].lines().next().unwrap_or_default();
        return Some((Refusal::NotNull, line.to_string()));
    }
    if message.contains("Cast error")
        || message.contains("Can't cast")
        || message.contains("Cannot cast")
    {
        return Some((Refusal::Type, clean(last)));
    }
    if message.contains("Invalid data found") || message.contains("Invariant violations") {
        let first = message.lines().next().unwrap_or(message);
        let kind = if message.contains("non-nullable") || message.contains("null") {
            Refusal::NotNull
        } else {
            Refusal::Check
        };
        return Some((kind, clean(first)));
    }
    None
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

impl Error {
    /// Wraps a deltalake error on a table, telling schema violations and conflicts apart from
    /// storage failures.
    pub(crate) fn delta(schema: &str, table: &str, source: DeltaTableError) -> Self {
        match Self::delta_unstripped(schema, table, source) {
            Error::WriteRefused {
                schema,
                table,
                kind,
                reason,
            } => Error::WriteRefused {
                schema,
                table,
                kind,
                reason: strip_backtrace(&reason),
            },
            other => other,
        }
    }

    fn delta_unstripped(schema: &str, table: &str, source: DeltaTableError) -> Self {
        let (schema, table) = (schema.to_string(), table.to_string());
        match source {
            DeltaTableError::InvalidData { message } => Error::WriteRefused {
                schema,
                table,
                kind: Refusal::Check,
                reason: message,
            },
            DeltaTableError::SchemaMismatch { msg } => Error::WriteRefused {
                schema,
                table,
                kind: Refusal::Schema,
                reason: msg,
            },
            DeltaTableError::Transaction { .. }
            | DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::CommitValidation { .. } => Error::Conflict {
                schema,
                table,
                source: Box::new(source),
            },
            DeltaTableError::Arrow { source: arrow } => Error::WriteRefused {
                schema,
                table,
                kind: Refusal::Type,
                reason: arrow.to_string(),
            },
            other => match classify_write_failure(&other.to_string()) {
                Some((kind, reason)) => Error::WriteRefused {
                    schema,
                    table,
                    kind,
                    reason,
                },
                None => Error::Delta {
                    schema,
                    table,
                    source: Box::new(other),
                },
            },
        }
    }

    /// A write that lost `attempts` commits in a row to other writers; nothing was written.
    pub fn conflict_after(name: &crate::TableName, attempts: usize) -> Self {
        Error::Conflict {
            schema: name.schema.clone(),
            table: name.table.clone(),
            source: Box::new(DeltaTableError::Generic(format!(
                "{attempts} attempts found their version taken by another writer"
            ))),
        }
    }

    pub(crate) fn store(path: impl ToString, source: object_store::Error) -> Self {
        Error::ObjectStore {
            path: path.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_backtrace;

    #[test]
    fn backtraces_never_reach_a_message() {
        let text = "External error: Schema error: Invalid data type for Delta Lake: Duration(ns)\n   \
                    0: buoyant_kernel::error::Error::with_backtrace\n             \
                    at /root/.cargo/registry/src/kernel/src/error.rs:12:5\n   \
                    1: core::ops::function::FnOnce::call_once";
        assert_eq!(
            strip_backtrace(text),
            "External error: Schema error: Invalid data type for Delta Lake: Duration(ns)"
        );
        let plain = "Invalid data found:\ncolumn x is NULL";
        assert_eq!(strip_backtrace(plain), plain);
    }
}
