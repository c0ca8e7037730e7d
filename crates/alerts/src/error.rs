//! Errors of alert rules and their delivery.

/// Result of an alert operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An alert statement that does not parse (42601).
    #[error("syntax error: {0}")]
    Syntax(String),

    /// A rule name that cannot be a `LISTEN` channel (42602 in spirit; reported as 42601).
    #[error(
        "invalid alert name '{name}': use lower-case letters, digits and _ (at most 63, not starting with a digit)"
    )]
    InvalidName { name: String },

    /// No rule of that name (42704).
    #[error("alert \"{name}\" does not exist")]
    NotFound { name: String },

    /// A rule of that name exists (42710).
    #[error("alert \"{name}\" already exists (CREATE OR REPLACE ALERT replaces it)")]
    Exists { name: String },

    /// `NOTIFY` names a webhook the server does not declare (42704).
    #[error(
        "webhook '{name}' is not declared in the server's [[webhooks]] (NOTIFY names one of them, or 'postgres')"
    )]
    UnknownTarget { name: String },

    /// `ACKNOWLEDGE ... KEY (...)` with the wrong number of values (42601).
    #[error("alert \"{name}\" has {expected} KEY column(s); {given} value(s) were given")]
    KeyArity {
        name: String,
        expected: usize,
        given: usize,
    },

    /// The warehouse failed (writing or reading `system.alert_events`).
    #[error(transparent)]
    Lake(#[from] medlake_lake::Error),

    /// A broken invariant: a bug in medlake.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Internal(e.to_string())
    }
}
