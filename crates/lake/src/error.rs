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

    #[error("table '{schema}.{table}' has no version {version} (versions {earliest} to {latest} exist)")]
    VersionNotFound {
        schema: String,
        table: String,
        version: u64,
        earliest: u64,
        latest: u64,
    },

    #[error("table '{schema}.{table}' has no version at or before {timestamp}")]
    TimestampBeforeHistory {
        schema: String,
        table: String,
        timestamp: String,
    },

    /// Data that does not fit the table: NULL in a NOT NULL column, a failed CHECK,
    /// a schema mismatch. Nothing was committed.
    #[error("write to '{schema}.{table}' refused, nothing was written: {reason}")]
    WriteRefused {
        schema: String,
        table: String,
        reason: String,
    },

    /// VACUUM with a retention shorter than the table's, without FORCE.
    #[error("VACUUM of '{schema}.{table}' refused: {reason}; add FORCE to vacuum with a shorter retention (time travel to older versions will fail)")]
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
        source: DeltaTableError,
    },

    /// The Delta log or data of a table could not be read or written.
    #[error("Delta table '{schema}.{table}'")]
    Delta {
        schema: String,
        table: String,
        #[source]
        source: DeltaTableError,
    },

    /// The object store under the warehouse failed.
    #[error("object store at '{path}'")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A query feeding a write failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// A broken invariant: a bug in medlake.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps a deltalake error on a table, telling schema violations and conflicts apart from
    /// storage failures.
    pub(crate) fn delta(schema: &str, table: &str, source: DeltaTableError) -> Self {
        let (schema, table) = (schema.to_string(), table.to_string());
        match source {
            DeltaTableError::InvalidData { message } => Error::WriteRefused {
                schema,
                table,
                reason: message,
            },
            DeltaTableError::SchemaMismatch { msg } => Error::WriteRefused {
                schema,
                table,
                reason: msg,
            },
            DeltaTableError::Transaction { .. }
            | DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::CommitValidation { .. } => Error::Conflict {
                schema,
                table,
                source,
            },
            DeltaTableError::Arrow { source: arrow } => Error::WriteRefused {
                schema,
                table,
                reason: arrow.to_string(),
            },
            other => Error::Delta {
                schema,
                table,
                source: other,
            },
        }
    }

    pub(crate) fn store(path: impl ToString, source: object_store::Error) -> Self {
        Error::ObjectStore {
            path: path.to_string(),
            source,
        }
    }
}
