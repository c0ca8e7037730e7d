//! Errors of the connectors. Messages name the source, the table and the option or column at
//! fault, carry the source's own message, and never a secret.

use medlake_common::Code;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown source kind '{kind}': STORED AS accepts {accepted}")]
    UnknownKind { kind: String, accepted: String },

    #[error("option '{option}': {reason}")]
    InvalidOption { option: String, reason: String },

    /// A `${NAME}` the server's secret store does not hold (names the secret, never a value).
    #[error(
        "option '{option}' references secret {name}, which the server does not provide to sources: declare it in the config's [secrets] (NAME = {{ env = \"VAR\" }} or {{ file = \"/run/secrets/name\" }})"
    )]
    UnknownSecret { option: String, name: String },

    /// Something the server's source policy does not allow: a path, a host, the server's
    /// cloud identity, the warehouse's own storage.
    #[error("{what} is refused: {reason}")]
    Refused { what: String, reason: String },

    #[error("cannot connect to {server}: {message}")]
    Connect { server: String, message: String },

    #[error("{server} refused the login: {message}")]
    LoginFailed { server: String, message: String },

    #[error("{server} has no table {table}")]
    RemoteTableNotFound { server: String, table: String },

    #[error(
        "column '{column}' of {table} has type {remote_type}, which medlake cannot read: {hint}"
    )]
    UnsupportedType {
        table: String,
        column: String,
        remote_type: String,
        hint: String,
    },

    #[error("{server}: {message}")]
    Remote {
        server: String,
        /// The source's error number (SQL Server's, e.g. 208).
        code: Option<u32>,
        message: String,
    },

    #[error("{server}: the connection was lost while reading {table}: {message}")]
    ConnectionLost {
        server: String,
        table: String,
        message: String,
    },

    #[error("{server}: timed out after {seconds} s {during}")]
    Timeout {
        server: String,
        seconds: u64,
        during: String,
    },

    #[error("{what}: {message}")]
    Data { what: String, message: String },

    /// A reply that is not what the table reads: not JSON, no records where the options say,
    /// a record that does not fit the columns. `page` counts from 1.
    #[error("{server}: page {page} is malformed: {message}")]
    MalformedPage {
        server: String,
        page: usize,
        message: String,
    },

    /// A blob table's container, bucket or folder does not exist.
    #[error("{location} does not exist: {message}")]
    LocationNotFound { location: String, message: String },

    /// The source has no schemas to list (`IMPORT FOREIGN SCHEMA` of a REST API).
    #[error("{kind} sources have no schemas to import: {hint}")]
    NoSchemas { kind: String, hint: String },
}

impl Error {
    /// The error with `note` added to its message (remote, connect, connection-lost and
    /// timeout errors; others as they are): what a retry loop gave up after.
    pub fn with_note(self, note: &str) -> Error {
        match self {
            Error::Remote {
                server,
                code,
                message,
            } => Error::Remote {
                server,
                code,
                message: format!("{message} ({note})"),
            },
            Error::Connect { server, message } => Error::Connect {
                server,
                message: format!("{message} ({note})"),
            },
            Error::ConnectionLost {
                server,
                table,
                message,
            } => Error::ConnectionLost {
                server,
                table,
                message: format!("{message} ({note})"),
            },
            Error::Timeout {
                server,
                seconds,
                during,
            } => Error::Timeout {
                server,
                seconds,
                during: format!("{during} ({note})"),
            },
            other => other,
        }
    }

    /// The kind of the error (mostly the foreign-data class `HV` of the SQL standard).
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownKind { .. } => Code::FdwInvalidOptionName,
            Error::InvalidOption { .. } => Code::FdwInvalidAttributeValue,
            // Permission-style refusals: the same SQLSTATE as a missing privilege.
            Error::UnknownSecret { .. } | Error::Refused { .. } => Code::InsufficientPrivilege,
            Error::Connect { .. } | Error::LoginFailed { .. } | Error::Timeout { .. } => {
                Code::FdwUnableToEstablishConnection
            }
            Error::RemoteTableNotFound { .. } | Error::LocationNotFound { .. } => {
                Code::FdwTableNotFound
            }
            Error::UnsupportedType { .. } => Code::FdwInvalidDataType,
            Error::Remote { .. } | Error::ConnectionLost { .. } => Code::FdwError,
            Error::Data { .. } => Code::DataException,
            Error::MalformedPage { .. } => Code::FdwInvalidStringFormat,
            Error::NoSchemas { .. } => Code::FdwNoSchemas,
        }
    }

    /// The SQLSTATE of [`Self::code`].
    pub fn sqlstate(&self) -> &'static str {
        self.code().sqlstate()
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}
