//! Extraction through SQL Server Change Tracking (`'changes' 'change_tracking'`).
//!
//! Such a table has two more columns after the remote ones: `_change_version` (bigint: the
//! Change Tracking version of the change, `SYS_CHANGE_VERSION`) and `_change_operation`
//! (`I`, `U`, `D`, or `S` for a row read by a snapshot), and its watermark is
//! `_change_version`, a mark being `CHANGE_TRACKING_CURRENT_VERSION()`:
//!
//! - a snapshot (the first extraction, a full one) reads every current row, each with the
//!   version the extraction is pinned at and operation `S`;
//! - the changes between two marks are `CHANGETABLE(CHANGES t, after)` joined to the table on
//!   its primary key: one row per changed key with its net operation and latest version
//!   (keys whose latest change is past the upper mark wait for the next extraction, so the
//!   values read are those of that version); a deleted key has NULL in every other column;
//! - a baseline older than `CHANGE_TRACKING_MIN_VALID_VERSION` (the retention cleaned the
//!   changes after it) makes the next extraction a new snapshot
//!   ([`medlake_source::Watermarked::changes_kept_since`]).
//!
//! So per key `_change_version` only grows: `AUTO CDC ... KEYS (id) APPLY AS DELETE WHEN
//! _change_operation = 'D' SEQUENCE BY _change_version` over the bronze copy keeps the
//! source's current rows, deletes included.

use serde::{Deserialize, Serialize};
use tiberius::Client;
use tokio::net::TcpStream;
use tokio_util::compat::Compat;

use medlake_source::scan::Window;
use medlake_source::{Error, Result};

use crate::pushdown::{Param, Translation};
use crate::types::{RemoteColumn, quote};
use crate::{Column, Connection, Shared, int, rows, text};

/// The version column a change-tracked table gains.
pub const VERSION: &str = "_change_version";
/// The operation column a change-tracked table gains.
pub const OPERATION: &str = "_change_operation";

/// What a table read through Change Tracking stores: its primary key (remote names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    pub keys: Vec<String>,
}

/// Whether the options ask for Change Tracking.
pub(crate) fn wanted(options: &std::collections::BTreeMap<String, String>) -> Result<bool> {
    match options.get("changes").map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "change_tracking" => Ok(true),
        Some(other) => Err(Error::InvalidOption {
            option: "changes".into(),
            reason: format!("'{other}' is not change_tracking"),
        }),
    }
}

/// Checks at CREATE that Change Tracking is on for `[schema].[table]` and reads its primary
/// key.
pub(crate) async fn define(
    client: &mut Client<Compat<TcpStream>>,
    connection: &Connection,
    schema: &str,
    table: &str,
) -> Result<Tracked> {
    let server = connection.server();
    let qualified = format!("{schema}.{table}");
    let object = format!("{}.{}", quote(schema), quote(table));
    let valid = rows(
        client,
        "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))",
        &[Param::Text(object)],
        &server,
        &qualified,
    )
    .await?;
    if valid
        .first()
        .and_then(|r| r.first())
        .and_then(int)
        .is_none()
    {
        return Err(Error::InvalidOption {
            option: "changes".into(),
            reason: format!(
                "Change Tracking is not enabled on {qualified} (ALTER DATABASE ... SET \
                 CHANGE_TRACKING = ON; ALTER TABLE {qualified} ENABLE CHANGE_TRACKING)"
            ),
        });
    }
    let found = rows(
        client,
        "SELECT k.COLUMN_NAME FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS AS c \
         JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE AS k ON k.CONSTRAINT_NAME = c.CONSTRAINT_NAME \
         AND k.TABLE_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME \
         WHERE c.CONSTRAINT_TYPE = 'PRIMARY KEY' AND c.TABLE_SCHEMA = @P1 AND c.TABLE_NAME = @P2 \
         ORDER BY k.ORDINAL_POSITION",
        &[Param::Text(schema.into()), Param::Text(table.into())],
        &server,
        &qualified,
    )
    .await?;
    let keys: Vec<String> = found
        .iter()
        .filter_map(|r| r.first().and_then(text))
        .collect();
    if keys.is_empty() {
        return Err(Error::InvalidOption {
            option: "changes".into(),
            reason: format!("{qualified} has no primary key, which Change Tracking needs"),
        });
    }
    Ok(Tracked { keys })
}

/// The two columns a change-tracked table gains; an error if the table has columns of those
/// names, or if `columns` (what the table reads) leaves out a key.
pub(crate) fn add_columns(
    columns: &mut Vec<Column>,
    tracked: &Tracked,
    qualified: &str,
) -> Result<()> {
    for key in &tracked.keys {
        if !columns
            .iter()
            .any(|c| c.remote.name.eq_ignore_ascii_case(key))
        {
            return Err(Error::InvalidOption {
                option: "columns".into(),
                reason: format!("the primary key column '{key}' of {qualified} must be read"),
            });
        }
    }
    for (name, data_type, remote_type, length) in [
        (
            VERSION,
            datafusion::arrow::datatypes::DataType::Int64,
            "bigint",
            None,
        ),
        (
            OPERATION,
            datafusion::arrow::datatypes::DataType::Utf8,
            "nchar",
            Some(1),
        ),
    ] {
        if columns.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
            return Err(Error::InvalidOption {
                option: "changes".into(),
                reason: format!("{qualified} has a column named {name} already"),
            });
        }
        columns.push(Column {
            name: name.into(),
            data_type,
            remote: RemoteColumn {
                name: name.into(),
                data_type: remote_type.into(),
                max_length: length,
                precision: None,
                scale: None,
                datetime_precision: None,
                nullable: false,
            },
        });
    }
    Ok(())
}

/// The `FROM` of a scan in `window` and the conditions the window adds: a snapshot (no lower
/// mark) or the changes between the marks.
pub(crate) fn source(
    shared: &Shared,
    tracked: &Tracked,
    window: &Window<Param>,
    sql: &mut Translation,
) -> (String, Vec<String>) {
    let remote: Vec<&Column> = shared
        .columns
        .iter()
        .filter(|c| c.name != VERSION && c.name != OPERATION)
        .collect();
    let (version, operation) = (quote(VERSION), quote(OPERATION));
    let from = &shared.from;
    let Some(after) = &window.after else {
        let pinned = match &window.upto {
            Some(upto) => format!("CAST({} AS bigint)", sql.param(upto.clone())),
            None => "CHANGE_TRACKING_CURRENT_VERSION()".to_string(),
        };
        let columns: Vec<String> = remote.iter().map(|c| c.quoted()).collect();
        let derived = format!(
            "(SELECT {}, {pinned} AS {version}, N'S' AS {operation} FROM {from}) AS [_c]",
            columns.join(", ")
        );
        return (derived, Vec::new());
    };
    let is_key = |c: &Column| {
        tracked
            .keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&c.remote.name))
    };
    let columns: Vec<String> = remote
        .iter()
        .map(|c| {
            let side = if is_key(c) { "[_ct]" } else { "[_t]" };
            format!("{side}.{} AS {}", c.quoted(), c.quoted())
        })
        .collect();
    let on: Vec<String> = tracked
        .keys
        .iter()
        .map(|k| format!("[_t].{} = [_ct].{}", quote(k), quote(k)))
        .collect();
    let after = sql.param(after.clone());
    let derived = format!(
        "(SELECT [_ct].[SYS_CHANGE_VERSION] AS {version}, [_ct].[SYS_CHANGE_OPERATION] AS \
         {operation}, {} FROM CHANGETABLE(CHANGES {from}, {after}) AS [_ct] \
         LEFT OUTER JOIN {from} AS [_t] ON {}) AS [_c]",
        columns.join(", "),
        on.join(" AND ")
    );
    let conditions = match &window.upto {
        Some(upto) => vec![format!("({version} <= {})", sql.param(upto.clone()))],
        None => Vec::new(),
    };
    (derived, conditions)
}

/// `CHANGE_TRACKING_CURRENT_VERSION()`: the high mark of a change-tracked table.
pub(crate) async fn current_version(shared: &Shared) -> Result<Option<String>> {
    let mut client = shared.connection.connect(&shared.policy).await?;
    let server = shared.connection.server();
    let found = rows(
        &mut client,
        "SELECT CHANGE_TRACKING_CURRENT_VERSION()",
        &[],
        &server,
        &shared.qualified,
    )
    .await?;
    match found.first().and_then(|r| r.first()).and_then(int) {
        Some(v) => Ok(Some(v.to_string())),
        None => Err(Error::Remote {
            server,
            code: None,
            message: format!(
                "Change Tracking is not enabled on the database of {}",
                shared.qualified
            ),
        }),
    }
}

/// Whether the changes after version `after` are all still kept (not cleaned up by the
/// retention period).
pub(crate) async fn kept_since(shared: &Shared, after: &str) -> Result<bool> {
    let Ok(after) = after.parse::<i64>() else {
        return Ok(false);
    };
    let mut client = shared.connection.connect(&shared.policy).await?;
    let server = shared.connection.server();
    let found = rows(
        &mut client,
        "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))",
        &[Param::Text(shared.from.clone())],
        &server,
        &shared.qualified,
    )
    .await?;
    match found.first().and_then(|r| r.first()).and_then(int) {
        Some(min_valid) => Ok(after >= min_valid),
        None => Err(Error::Remote {
            server,
            code: None,
            message: format!(
                "Change Tracking is no longer enabled on {}",
                shared.qualified
            ),
        }),
    }
}
