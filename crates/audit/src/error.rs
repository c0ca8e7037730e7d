//! Errors of the audit log: one enum, each variant with its [`Code`].

use medlake_common::Code;

/// Result of an audit operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The audit log cannot be written: the statement must be refused (fail closed).
    #[error(
        "the audit log is unavailable, statements are refused until it can be written: {reason}"
    )]
    Unavailable { reason: String },

    /// More events wait for their commit than the log holds in memory
    /// ([`crate::Settings::max_queued`]): the statement must be refused until it drains.
    #[error(
        "the audit log is behind ({queued} events wait for their commit): statements are refused until it catches up"
    )]
    QueueFull { queued: usize },

    /// The log was closed (the server is stopping).
    #[error("the audit log is closed")]
    Closed,

    /// A VACUUM (or retention change) of `system.audit` below [`crate::MIN_RETENTION`]
    /// without an auditor forcing it.
    #[error(
        "VACUUM of system.audit refused: a retention of {requested_hours} hours is below the audit log's {minimum_hours} hours (6 years); only an auditor may force it"
    )]
    RetentionTooShort {
        requested_hours: u64,
        minimum_hours: u64,
    },

    /// The warehouse could not be read while verifying or opening the log.
    #[error(transparent)]
    Lake(#[from] medlake_lake::Error),

    /// A data file of the log could not be read while verifying.
    #[error("reading audit data file '{path}': {reason}")]
    Read { path: String, reason: String },

    /// A broken invariant: a bug in medlake.
    #[error("internal error in the audit log: {0}")]
    Internal(String),
}

impl Error {
    /// The failure kind, for the doors.
    pub fn code(&self) -> Code {
        match self {
            Error::Unavailable { .. } | Error::QueueFull { .. } | Error::Closed => {
                Code::AuditUnavailable
            }
            Error::RetentionTooShort { .. } => Code::InvalidParameterValue,
            Error::Lake(e) => lake_code(e),
            Error::Read { .. } => Code::IoError,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// A lake failure while writing: the log is unavailable.
    pub(crate) fn unavailable(e: &(dyn std::error::Error + 'static)) -> Self {
        Error::Unavailable {
            reason: medlake_common::error_chain(e),
        }
    }
}

/// The code of a lake failure met while opening or verifying the log.
fn lake_code(e: &medlake_lake::Error) -> Code {
    use medlake_lake::Error as L;
    match e {
        L::TableNotFound { .. } | L::VersionNotFound { .. } => Code::UndefinedTable,
        L::SchemaNotFound { .. } => Code::UndefinedSchema,
        L::InvalidLocation { .. } | L::InvalidName { .. } => Code::InvalidParameterValue,
        // Writing the log: whatever keeps it from being written makes it unavailable.
        L::WriteRefused { .. }
        | L::Conflict { .. }
        | L::SchemaExists { .. }
        | L::SchemaNotEmpty { .. }
        | L::SchemaBuiltIn { .. }
        | L::TableExists { .. }
        | L::TimestampBeforeHistory { .. }
        | L::InvalidRange { .. }
        | L::RetentionTooShort { .. }
        | L::RestoreRefused { .. }
        | L::CloneRefused { .. }
        | L::InvalidClusterBy { .. }
        | L::InvalidTableProperty { .. } => Code::AuditUnavailable,
        // A warehouse a restore has not finished writing.
        L::BackupInvalid { .. } | L::BackupRefused { .. } => Code::ObjectNotInPrerequisiteState,
        L::Delta { .. } | L::ObjectStore { .. } | L::DataFusion(_) => Code::IoError,
        L::Internal(_) => Code::Internal,
    }
}
