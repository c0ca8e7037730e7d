//! The one table of failure kinds: each [`Code`] is one SQLSTATE medlake reports.

/// What kind of failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// A notice that is not an error (`01000`).
    Warning,
    /// The client broke the wire protocol (`08P01`).
    ProtocolViolation,
    FeatureNotSupported,
    DataException,
    NumericValueOutOfRange,
    InvalidParameterValue,
    InvalidTextRepresentation,
    DivisionByZero,
    NotNullViolation,
    UniqueViolation,
    CheckViolation,
    /// The login is refused before a password is checked (`28000`).
    InvalidAuthorization,
    /// A wrong password or an unknown user (`28P01`).
    InvalidPassword,
    DependentObjectsStillExist,
    /// The database named at connect time does not exist (`3D000`).
    InvalidCatalogName,
    UndefinedSchema,
    SerializationFailure,
    SyntaxError,
    InsufficientPrivilege,
    UndefinedFunction,
    UndefinedTable,
    UndefinedColumn,
    /// A setting, prepared statement or other named object that does not exist (`42704`).
    UndefinedObject,
    DuplicateTable,
    DuplicateSchema,
    /// A named object other than a table or schema exists already (an alert rule: `42710`).
    DuplicateObject,
    DatatypeMismatch,
    /// The object is of the wrong kind for the statement (DROP TABLE of a view, ...).
    WrongObjectType,
    InvalidObjectDefinition,
    OutOfMemory,
    /// A bound of the server was reached (prepared statements, ...).
    ProgramLimitExceeded,
    /// The object is not in a state that allows the statement (upstream view failed).
    ObjectNotInPrerequisiteState,
    /// The object is busy (a refresh of the view is running).
    ObjectInUse,
    /// A setting that can only be given at connect time (`55P02`).
    CantChangeRuntimeParam,
    QueryCanceled,
    IoError,
    /// `58M01`: the audit log (`system.audit`) cannot be written, so statements are refused
    /// (fail closed) until it can. Class 58 (system error, external to the SQL engine), an
    /// implementation-defined subclass (`M`: medlake).
    AuditUnavailable,
    /// A data file the table's log refers to is missing (e.g. removed by VACUUM).
    UndefinedFile,
    /// The foreign-data class `HV` (external tables), `HV000`: the source failed.
    FdwError,
    /// `HV004`: a remote type that has no column type here.
    FdwInvalidDataType,
    /// `HV00A`: a reply that is not what the table reads.
    FdwInvalidStringFormat,
    /// `HV00D`: an unknown source kind.
    FdwInvalidOptionName,
    /// `HV00N`: the source cannot be reached or refused the login.
    FdwUnableToEstablishConnection,
    /// `HV00P`: the source has no schemas to import.
    FdwNoSchemas,
    /// `HV00R`: the remote table, container or folder does not exist.
    FdwTableNotFound,
    /// `HV024`: an option value that does not make sense.
    FdwInvalidAttributeValue,
    /// A broken invariant: a bug in medlake (`XX000`).
    Internal,
}

impl Code {
    /// Every code, for tables that must cover them all.
    pub const ALL: &'static [Code] = &[
        Code::Warning,
        Code::ProtocolViolation,
        Code::FeatureNotSupported,
        Code::DataException,
        Code::NumericValueOutOfRange,
        Code::InvalidParameterValue,
        Code::InvalidTextRepresentation,
        Code::DivisionByZero,
        Code::NotNullViolation,
        Code::UniqueViolation,
        Code::CheckViolation,
        Code::InvalidAuthorization,
        Code::InvalidPassword,
        Code::DependentObjectsStillExist,
        Code::InvalidCatalogName,
        Code::UndefinedSchema,
        Code::SerializationFailure,
        Code::SyntaxError,
        Code::InsufficientPrivilege,
        Code::UndefinedFunction,
        Code::UndefinedTable,
        Code::UndefinedColumn,
        Code::UndefinedObject,
        Code::DuplicateTable,
        Code::DuplicateSchema,
        Code::DuplicateObject,
        Code::DatatypeMismatch,
        Code::WrongObjectType,
        Code::InvalidObjectDefinition,
        Code::OutOfMemory,
        Code::ProgramLimitExceeded,
        Code::ObjectNotInPrerequisiteState,
        Code::ObjectInUse,
        Code::CantChangeRuntimeParam,
        Code::QueryCanceled,
        Code::IoError,
        Code::AuditUnavailable,
        Code::UndefinedFile,
        Code::FdwError,
        Code::FdwInvalidDataType,
        Code::FdwInvalidStringFormat,
        Code::FdwInvalidOptionName,
        Code::FdwUnableToEstablishConnection,
        Code::FdwNoSchemas,
        Code::FdwTableNotFound,
        Code::FdwInvalidAttributeValue,
        Code::Internal,
    ];

    /// The Postgres SQLSTATE of this code.
    pub fn sqlstate(self) -> &'static str {
        match self {
            Code::Warning => "01000",
            Code::ProtocolViolation => "08P01",
            Code::FeatureNotSupported => "0A000",
            Code::DataException => "22000",
            Code::NumericValueOutOfRange => "22003",
            Code::InvalidParameterValue => "22023",
            Code::InvalidTextRepresentation => "22P02",
            Code::DivisionByZero => "22012",
            Code::NotNullViolation => "23502",
            Code::UniqueViolation => "23505",
            Code::CheckViolation => "23514",
            Code::InvalidAuthorization => "28000",
            Code::InvalidPassword => "28P01",
            Code::DependentObjectsStillExist => "2BP01",
            Code::InvalidCatalogName => "3D000",
            Code::UndefinedSchema => "3F000",
            Code::SerializationFailure => "40001",
            Code::SyntaxError => "42601",
            Code::InsufficientPrivilege => "42501",
            Code::UndefinedFunction => "42883",
            Code::UndefinedTable => "42P01",
            Code::UndefinedColumn => "42703",
            Code::UndefinedObject => "42704",
            Code::DuplicateTable => "42P07",
            Code::DuplicateSchema => "42P06",
            Code::DuplicateObject => "42710",
            Code::DatatypeMismatch => "42804",
            Code::WrongObjectType => "42809",
            Code::InvalidObjectDefinition => "42P17",
            Code::OutOfMemory => "53200",
            Code::ProgramLimitExceeded => "54000",
            Code::ObjectNotInPrerequisiteState => "55000",
            Code::ObjectInUse => "55006",
            Code::CantChangeRuntimeParam => "55P02",
            Code::QueryCanceled => "57014",
            Code::IoError => "58030",
            Code::AuditUnavailable => "58M01",
            Code::UndefinedFile => "58P01",
            Code::FdwError => "HV000",
            Code::FdwInvalidDataType => "HV004",
            Code::FdwInvalidStringFormat => "HV00A",
            Code::FdwInvalidOptionName => "HV00D",
            Code::FdwUnableToEstablishConnection => "HV00N",
            Code::FdwNoSchemas => "HV00P",
            Code::FdwTableNotFound => "HV00R",
            Code::FdwInvalidAttributeValue => "HV024",
            Code::Internal => "XX000",
        }
    }

    /// The code of a SQLSTATE this table holds.
    pub fn from_sqlstate(sqlstate: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.sqlstate() == sqlstate)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sqlstate())
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn every_code_has_its_own_well_formed_sqlstate() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let state = code.sqlstate();
            assert_eq!(state.len(), 5, "{code:?}");
            assert!(
                state
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
                "{code:?}"
            );
            assert!(seen.insert(state), "{state} twice");
            assert_eq!(Code::from_sqlstate(state), Some(*code));
        }
    }
}
