//! Errors of materialized views: one enum, named context, user errors apart from `Internal`.

use datafusion::error::DataFusionError;

/// Result of a views operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong defining or refreshing a materialized view.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement does not parse.
    #[error("syntax error: {message}")]
    Syntax { message: String },

    /// The statement parses but cannot define a view (bad interval, duplicate rule, ...).
    #[error("invalid materialized view: {reason}")]
    InvalidDefinition { reason: String },

    /// A number outside its allowed range, or one that does not parse (a `REFRESH EVERY`
    /// interval, a cron field): SQLSTATE 22023.
    #[error("invalid value for {what}: {reason}")]
    InvalidValue { what: String, reason: String },

    /// A column an `AUTO CDC` clause names is not a column of its source: 42703.
    #[error(
        "AUTO CDC {clause} names '{column}', which is not a column of {source_name} (its columns: {columns})"
    )]
    UnknownColumn {
        column: String,
        clause: String,
        source_name: String,
        columns: String,
    },

    /// Valid SQL that views do not support.
    #[error("not supported: {what}")]
    NotSupported { what: String },

    #[error("materialized view '{view}' does not exist")]
    ViewNotFound { view: String },

    /// The name belongs to a plain table (or the other way round).
    #[error("'{name}' is {is}, not {expected}")]
    WrongObjectType {
        name: String,
        is: &'static str,
        expected: &'static str,
    },

    /// A refresh of the same view is running in this server; the second is refused.
    #[error(
        "a refresh of '{view}' is already running (started {started}); this refresh was not started"
    )]
    RefreshRunning { view: String, started: String },

    /// An expectation with `ON VIOLATION FAIL UPDATE` was broken: nothing was committed.
    #[error(
        "refresh of '{view}' failed: expectation '{expectation}' ({expression}) was violated (by {rows} row(s) of the first failing batch); nothing was committed"
    )]
    ExpectationFailed {
        view: String,
        expectation: String,
        expression: String,
        rows: u64,
    },

    /// An upstream view failed (or is stale), so this one was not refreshed on bad input.
    #[error("'{view}' was not refreshed: upstream '{upstream}' {why}")]
    UpstreamFailed {
        view: String,
        upstream: String,
        why: String,
    },

    /// The view's `REFRESH POLICY` is `INCREMENTAL STRICT` and this refresh would have to
    /// recompute the view: 55000.
    #[error(
        "'{view}' was not refreshed: its REFRESH POLICY is INCREMENTAL STRICT, and {reason} (REFRESH MATERIALIZED VIEW ... FULL recomputes it)"
    )]
    NotIncremental { view: String, reason: String },

    /// The view's owner may no longer run its query (a refresh runs as its owner): 42501.
    #[error("refresh of '{view}' refused: {reason}")]
    RefreshRefused { view: String, reason: String },

    /// Views that read each other in a circle.
    #[error("materialized views depend on each other in a cycle: {cycle}")]
    Cycle { cycle: String },

    /// An error of the warehouse (missing table, conflict, storage failure, ...).
    #[error(transparent)]
    Lake(#[from] medlake_lake::Error),

    /// An error planning or running the view's query.
    #[error(transparent)]
    DataFusion(Box<DataFusionError>),

    /// An external input (a source connector) failed: unreachable, refused, or lost mid-read.
    #[error("{table}: {source}")]
    Source {
        table: String,
        #[source]
        source: medlake_source::Error,
    },

    /// A broken invariant: a bug in medlake.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(views) => *views,
                Err(inner) => match inner.downcast::<medlake_lake::Error>() {
                    Ok(lake) => Error::Lake(*lake),
                    Err(inner) => Error::DataFusion(Box::new(DataFusionError::External(inner))),
                },
            },
            DataFusionError::Context(_, inner)
                if matches!(inner.as_ref(), DataFusionError::External(_)) =>
            {
                Error::from(*inner)
            }
            other => Error::DataFusion(Box::new(other)),
        }
    }
}
