//! medlake errors as Postgres ErrorResponses, with their SQLSTATE.

use medlake_common::Code;
use pgwire::error::{ErrorInfo, PgWireError};
use tracing::warn;

/// An `ERROR` with `code` and `message`.
pub(crate) fn user_error(code: Code, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.sqlstate().to_owned(),
        message.into(),
    )))
}

/// An engine error: its SQLSTATE, its message, and its causes as the detail. `XX000` (a bug
/// of ours) is logged.
pub(crate) fn engine_error(error: &medlake_engine::Error) -> PgWireError {
    let code = error.code();
    let message = error.to_string();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) && !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    if code == Code::Internal {
        warn!(error = %message, "internal error answered to a postgres client");
    }
    let mut info = ErrorInfo::new("ERROR".to_owned(), code.sqlstate().to_owned(), message);
    if !causes.is_empty() {
        info.detail = Some(causes.join(": "));
    }
    PgWireError::UserError(Box::new(info))
}

/// A DataFusion error met while streaming rows (after the statement started).
pub(crate) fn stream_error(error: datafusion::error::DataFusionError) -> PgWireError {
    engine_error(&medlake_engine::Error::from(error))
}
