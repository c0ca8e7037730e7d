//! Errors of the engine, and the one table that maps every error to a status code.
//!
//! [`Code`] is `medlake-common`'s table. Servers translate it once at their boundary: the
//! Postgres wire sends [`Code::sqlstate`], Flight SQL maps it to a gRPC status, HTTP to a
//! status. `Internal` (SQLSTATE `XX000`) is for broken invariants only.

use datafusion::error::DataFusionError;
pub use medlake_common::Code;
use medlake_lake::Refusal;

/// Result of an engine operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a statement can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL text does not parse.
    #[error("syntax error: {message}")]
    Syntax { message: String },

    /// Valid SQL that medlake does not (yet) run.
    #[error("not supported: {what}")]
    NotSupported { what: String },

    /// A value that does not make sense for the statement (bad retention, bad timestamp, ...).
    #[error("invalid value for {what}: {reason}")]
    InvalidValue { what: String, reason: String },

    /// A statement nested too deeply to plan safely (54000).
    #[error("statement too complex: {what}")]
    TooComplex { what: String },

    /// A role or user a statement names does not exist (42704).
    #[error("role \"{name}\" does not exist")]
    UndefinedRole { name: String },

    /// The session's principal lacks a privilege the statement needs.
    #[error("permission denied: {principal} lacks the {privilege} privilege on {object}")]
    PermissionDenied {
        principal: String,
        privilege: &'static str,
        object: String,
    },

    /// A per-session bound was reached (prepared statements, ...).
    #[error("too many {what} (at most {limit}){hint}")]
    LimitExceeded {
        what: &'static str,
        limit: usize,
        hint: &'static str,
    },

    /// A write to medlake's read-only `system` schema.
    #[error("permission denied: {what}")]
    ReadOnly { what: String },

    /// An error of the warehouse (missing table, refused write, storage failure, ...).
    #[error(transparent)]
    Lake(#[from] medlake_lake::Error),

    /// An error of a materialized view (definition, refresh, expectation, ...).
    #[error(transparent)]
    Views(#[from] medlake_views::Error),

    /// The audit log cannot be written: statements are refused (fail closed).
    #[error(transparent)]
    Audit(#[from] medlake_audit::Error),

    /// An alert rule's error (definition, acknowledgement, the alert log).
    #[error(transparent)]
    Alerts(#[from] medlake_alerts::Error),

    /// A source connector's error (external tables).
    #[error(transparent)]
    Source(#[from] medlake_source::Error),

    /// An error planning or running a query.
    #[error(transparent)]
    DataFusion(Box<DataFusionError>),

    /// A broken invariant: a bug in medlake.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

impl Error {
    /// The status of this error (the one mapping table).
    pub fn code(&self) -> Code {
        // A source's failure keeps its code through whatever wrapped it (a refresh's write).
        if let Some(source) = find_source_error(self) {
            return source_code(source);
        }
        match self {
            Error::Syntax { .. } => Code::SyntaxError,
            Error::NotSupported { .. } => Code::FeatureNotSupported,
            Error::InvalidValue { .. } => Code::InvalidParameterValue,
            Error::UndefinedRole { .. } => Code::UndefinedObject,
            Error::TooComplex { .. } => Code::ProgramLimitExceeded,
            Error::Internal(_) => Code::Internal,
            Error::ReadOnly { .. } => Code::InsufficientPrivilege,
            Error::PermissionDenied { .. } => Code::InsufficientPrivilege,
            Error::LimitExceeded { .. } => Code::ProgramLimitExceeded,
            Error::Lake(e) => lake_code(e),
            Error::Audit(e) => e.code(),
            Error::Views(e) => views_code(e),
            Error::DataFusion(e) => datafusion_code(e),
            Error::Source(e) => source_code(e),
            Error::Alerts(e) => alerts_code(e),
        }
    }
}

fn alerts_code(e: &medlake_alerts::Error) -> Code {
    use medlake_alerts::Error as A;
    match e {
        A::Syntax(_) | A::InvalidName { .. } | A::KeyArity { .. } => Code::SyntaxError,
        A::NotFound { .. } | A::UnknownTarget { .. } => Code::UndefinedObject,
        A::Exists { .. } => Code::DuplicateObject,
        A::Lake(e) => lake_code(e),
        A::Internal(_) => Code::Internal,
    }
}

fn lake_code(e: &medlake_lake::Error) -> Code {
    use medlake_lake::Error as L;
    match e {
        L::InvalidLocation { .. } => Code::InvalidParameterValue,
        L::InvalidName { .. } => Code::InvalidParameterValue,
        L::SchemaNotFound { .. } => Code::UndefinedSchema,
        L::SchemaExists { .. } => Code::DuplicateSchema,
        L::SchemaNotEmpty { .. } => Code::DependentObjectsStillExist,
        L::SchemaBuiltIn { .. } => Code::InsufficientPrivilege,
        L::TableNotFound { .. } => Code::UndefinedTable,
        L::TableExists { .. } => Code::DuplicateTable,
        L::VersionNotFound { .. } | L::TimestampBeforeHistory { .. } | L::InvalidRange { .. } => {
            Code::InvalidParameterValue
        }
        L::WriteRefused { kind, reason, .. } => match kind {
            Refusal::NotNull => Code::NotNullViolation,
            Refusal::Check => Code::CheckViolation,
            Refusal::Type => arrow_code(reason),
            Refusal::Schema => Code::DatatypeMismatch,
        },
        L::RetentionTooShort { .. } => Code::InvalidParameterValue,
        L::BackupInvalid { .. } | L::RestoreRefused { .. } => Code::InvalidParameterValue,
        L::BackupRefused { .. } => Code::ObjectNotInPrerequisiteState,
        L::CloneRefused { .. } => Code::FeatureNotSupported,
        L::InvalidClusterBy { .. } => Code::UndefinedColumn,
        L::InvalidTableProperty { .. } => Code::InvalidParameterValue,
        L::Conflict { .. } => Code::SerializationFailure,
        L::Delta { .. } | L::ObjectStore { .. } => Code::IoError,
        L::DataFusion(e) => datafusion_code(e),
        L::Internal(_) => Code::Internal,
    }
}

fn views_code(e: &medlake_views::Error) -> Code {
    use medlake_views::Error as V;
    match e {
        V::Syntax { .. } => Code::SyntaxError,
        V::InvalidDefinition { .. } | V::Cycle { .. } => Code::InvalidObjectDefinition,
        V::NotSupported { .. } => Code::FeatureNotSupported,
        V::UnknownColumn { .. } => Code::UndefinedColumn,
        V::InvalidValue { .. } => Code::InvalidParameterValue,
        V::ViewNotFound { .. } => Code::UndefinedTable,
        V::WrongObjectType { .. } => Code::WrongObjectType,
        V::RefreshRunning { .. } => Code::ObjectInUse,
        V::RefreshRefused { .. } => Code::InsufficientPrivilege,
        V::ExpectationFailed { .. } => Code::CheckViolation,
        V::UpstreamFailed { .. } | V::NotIncremental { .. } => Code::ObjectNotInPrerequisiteState,
        V::Lake(e) => lake_code(e),
        V::DataFusion(e) => datafusion_code(e),
        V::Source { source, .. } => source_code(source),
        V::Internal(_) => Code::Internal,
    }
}

/// DataFusion reports most user errors as `Plan`/`Execution` strings: classify the common ones
/// so that clients get a useful SQLSTATE instead of `XX000`.
fn source_code(e: &medlake_source::Error) -> Code {
    e.code()
}

/// A connector's error inside `e`: wrapped by DataFusion (raised while a scan runs), by a
/// Delta write that read from the scan, or by a refresh.
fn find_source_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a medlake_source::Error> {
    let mut current: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(found) = current.downcast_ref::<medlake_source::Error>() {
            return Some(found);
        }
        if let Some(DataFusionError::External(inner)) = current.downcast_ref::<DataFusionError>() {
            current = inner.as_ref();
            continue;
        }
        current = current.source()?;
    }
}

pub(crate) fn datafusion_code(e: &DataFusionError) -> Code {
    if let Some(source) = find_source_error(e as &(dyn std::error::Error + 'static)) {
        return source_code(source);
    }
    let message = e.to_string();
    if message.contains("Object at location") && message.contains("not found") {
        return Code::UndefinedFile;
    }
    match e.find_root() {
        DataFusionError::SQL(..) => Code::SyntaxError,
        DataFusionError::NotImplemented(_) => Code::FeatureNotSupported,
        DataFusionError::SchemaError(err, _) => {
            let msg = err.to_string();
            if msg.contains("No field named") || msg.contains("not found") {
                Code::UndefinedColumn
            } else {
                Code::DatatypeMismatch
            }
        }
        DataFusionError::ResourcesExhausted(_) => Code::OutOfMemory,
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => Code::IoError,
        DataFusionError::ArrowError(arrow, _) => arrow_code(&arrow.to_string()),
        DataFusionError::Internal(_) => Code::Internal,
        other => {
            let msg = other.to_string();
            if msg.contains("program limit exceeded") {
                // crate::bounded's refusals.
                Code::ProgramLimitExceeded
            } else if msg.contains("table") && msg.contains("not found") {
                Code::UndefinedTable
            } else if msg.contains("Invalid function")
                || msg.contains("function") && msg.contains("not found")
            {
                Code::UndefinedFunction
            } else if msg.contains("non-nullable") || msg.contains("Non-nullable") {
                Code::NotNullViolation
            } else if msg.contains("No field named") || msg.contains("Unknown column") {
                Code::UndefinedColumn
            } else if msg.contains("Cannot cast")
                || msg.contains("Overflow")
                || msg.contains("overflow")
            {
                arrow_code(&msg)
            } else {
                Code::DataException
            }
        }
    }
}

fn arrow_code(msg: &str) -> Code {
    if msg.contains("Divide by zero") || msg.contains("Division by zero") {
        Code::DivisionByZero
    } else if msg.contains("verflow")
        || msg.contains("out of range")
        || msg.contains("Can't cast value")
    {
        Code::NumericValueOutOfRange
    } else if msg.contains("Cannot cast string") || msg.contains("Cannot parse") {
        Code::InvalidTextRepresentation
    } else {
        Code::DataException
    }
}
