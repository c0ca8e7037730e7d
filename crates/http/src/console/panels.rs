//! The console's panels: each one SQL statement (or a few) run in a session of the logged-in
//! principal, so privileges, row filters and masks apply as on any other door. A statement
//! that fails (a table that is missing or not granted) gives an empty panel that says which,
//! never the error's text.

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use medlake_engine::{Code, Session};
use serde_json::{Map, Value, json};

/// Rows a panel shows at most (the statements have their own `LIMIT`s too).
const MAX_ROWS: usize = 500;

/// Sample rows shown per quarantine table.
const SAMPLES: usize = 5;

/// The panels, by name, as the API serves them.
pub(crate) const PANELS: [&str; 7] = [
    "dag",
    "refreshes",
    "quarantine",
    "alerts",
    "ward",
    "sources",
    "overview",
];

const VIEWS: &str = "SELECT schema, name, schedule, last_refresh, status, staleness, rows \
    FROM system.materialized_views ORDER BY schema, name";
const LINEAGE: &str =
    "SELECT \"view\", input, input_is_view FROM system.lineage ORDER BY \"view\", input";
const REFRESHES: &str = "SELECT \"view\", \"trigger\", started, finished, mode, rows_written, status, \
    error FROM system.refreshes ORDER BY started DESC LIMIT 200";
const EXPECTATIONS: &str = "SELECT \"view\", expectation, on_violation, \
    sum(violations) AS violations, sum(rows_checked) AS rows_checked, max(recorded) AS last \
    FROM system.expectations GROUP BY \"view\", expectation, on_violation \
    ORDER BY violations DESC, \"view\", expectation LIMIT 200";
const ALERTS: &str = "SELECT alert, \"view\", severity, \"key\", fired_at, status, acknowledged_by \
    FROM system.alerts \
    ORDER BY acknowledged_by IS NULL DESC, fired_at DESC LIMIT 200";
const WARD: &str = "WITH ranked AS (\
    SELECT patient_id, hour, ward, bed, news2, risk, \
    lag(news2) OVER (PARTITION BY patient_id ORDER BY hour) AS previous, \
    row_number() OVER (PARTITION BY patient_id ORDER BY hour DESC) AS latest \
    FROM gold.news2_hourly) \
    SELECT ward, bed, patient_id, hour, news2 AS score, risk, previous, \
    CASE WHEN news2 IS NULL OR previous IS NULL THEN 'new' \
    WHEN news2 > previous THEN 'up' WHEN news2 < previous THEN 'down' ELSE 'same' END AS trend \
    FROM ranked WHERE latest = 1 ORDER BY ward, bed, patient_id LIMIT 500";
const SOURCES: &str = "SELECT * FROM system.sources LIMIT 200";

/// One panel: its rows, or why it has none.
fn panel(result: Result<Vec<Map<String, Value>>, &'static str>) -> Value {
    match result {
        Ok(rows) => json!({ "available": true, "rows": rows }),
        Err(reason) => json!({ "available": false, "reason": reason, "rows": [] }),
    }
}

/// Runs `sql` as the session's principal; a failure becomes a short reason.
async fn rows(session: &Session, sql: &str) -> Result<Vec<Map<String, Value>>, &'static str> {
    match session.query(sql).await {
        Ok(batches) => Ok(to_rows(&batches)),
        Err(e) => {
            let code = e.code();
            tracing::debug!(error = %e, ?code, "a console panel's statement failed");
            Err(match code {
                Code::InsufficientPrivilege => "not granted",
                Code::UndefinedTable | Code::UndefinedSchema => "missing",
                _ => "unavailable",
            })
        }
    }
}

/// The panel called `name` (one of [`PANELS`]); `None` for another name.
pub(crate) async fn get(session: &Session, name: &str) -> Option<Value> {
    Some(match name {
        "dag" => dag(session).await,
        "refreshes" => panel(rows(session, REFRESHES).await),
        "quarantine" => quarantine(session).await,
        "alerts" => panel(rows(session, ALERTS).await),
        "ward" => panel(rows(session, WARD).await),
        "sources" => panel(rows(session, SOURCES).await),
        "overview" => {
            let mut all = Map::new();
            for name in PANELS.iter().filter(|p| **p != "overview") {
                if let Some(value) = Box::pin(get(session, name)).await {
                    all.insert((*name).to_string(), value);
                }
            }
            Value::Object(all)
        }
        _ => return None,
    })
}

/// The view DAG: the views with their status, and the lineage edges.
async fn dag(session: &Session) -> Value {
    let views = rows(session, VIEWS).await;
    let edges = rows(session, LINEAGE).await;
    let mut value = panel(views);
    value["edges"] = match edges {
        Ok(edges) => Value::Array(edges.into_iter().map(Value::Object).collect()),
        Err(_) => Value::Array(vec![]),
    };
    value
}

/// Expectation violations by rule, with a few rows of each quarantine table.
async fn quarantine(session: &Session) -> Value {
    let counts = rows(session, EXPECTATIONS).await;
    let mut samples = Map::new();
    if let Ok(counts) = &counts {
        let mut quarantined: Vec<&str> = counts
            .iter()
            .filter(|r| r.get("on_violation").and_then(Value::as_str) == Some("quarantine"))
            .filter_map(|r| r.get("view").and_then(Value::as_str))
            .collect();
        quarantined.sort_unstable();
        quarantined.dedup();
        for view in quarantined.into_iter().take(20) {
            let Some(table) = quarantine_table(view) else {
                continue;
            };
            let sql = format!("SELECT * FROM {table} LIMIT {SAMPLES}");
            if let Ok(sample) = rows(session, &sql).await {
                samples.insert(
                    view.to_string(),
                    Value::Array(sample.into_iter().map(Value::Object).collect()),
                );
            }
        }
    }
    let mut value = panel(counts);
    value["samples"] = Value::Object(samples);
    value
}

/// `schema.view` → `"schema"."view_quarantine"`, for plain identifiers only (a name from
/// the catalog, still never spliced into SQL unchecked).
fn quarantine_table(view: &str) -> Option<String> {
    let (schema, table) = view.split_once('.')?;
    let plain = |s: &str| {
        !s.is_empty() && s.len() <= 120 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    (plain(schema) && plain(table)).then(|| format!("\"{schema}\".\"{table}_quarantine\""))
}

/// Record batches as JSON objects: integers and floats as numbers, booleans as booleans,
/// everything else as its display text; NULL as null.
pub(crate) fn to_rows(batches: &[RecordBatch]) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let columns: Vec<Vec<Value>> = batch.columns().iter().map(column_values).collect();
        for row in 0..batch.num_rows() {
            if out.len() >= MAX_ROWS {
                return out;
            }
            let mut object = Map::new();
            for (field, values) in schema.fields().iter().zip(&columns) {
                let value = values.get(row).cloned().unwrap_or(Value::Null);
                object.insert(field.name().clone(), value);
            }
            out.push(object);
        }
    }
    out
}

fn column_values(array: &ArrayRef) -> Vec<Value> {
    let len = array.len().min(MAX_ROWS);
    let as_type = |to: &DataType| arrow::compute::cast(array, to).ok();
    match array.data_type() {
        DataType::Boolean => match array.as_any().downcast_ref::<BooleanArray>() {
            Some(a) => (0..len)
                .map(|i| {
                    if a.is_null(i) {
                        Value::Null
                    } else {
                        json!(a.value(i))
                    }
                })
                .collect(),
            None => vec![Value::Null; len],
        },
        t if t.is_integer() => match as_type(&DataType::Int64) {
            Some(cast) => match cast.as_any().downcast_ref::<Int64Array>() {
                Some(a) => (0..len)
                    .map(|i| {
                        if a.is_null(i) {
                            Value::Null
                        } else {
                            json!(a.value(i))
                        }
                    })
                    .collect(),
                None => vec![Value::Null; len],
            },
            None => text_values(array, len),
        },
        t if t.is_floating()
            || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
        {
            match as_type(&DataType::Float64) {
                Some(cast) => match cast.as_any().downcast_ref::<Float64Array>() {
                    Some(a) => (0..len)
                        .map(|i| {
                            if a.is_null(i) {
                                Value::Null
                            } else {
                                serde_json::Number::from_f64(a.value(i))
                                    .map_or(Value::Null, Value::Number)
                            }
                        })
                        .collect(),
                    None => vec![Value::Null; len],
                },
                None => text_values(array, len),
            }
        }
        _ => text_values(array, len),
    }
}

fn text_values(array: &ArrayRef, len: usize) -> Vec<Value> {
    let options = FormatOptions::default();
    match ArrayFormatter::try_new(array.as_ref(), &options) {
        Ok(formatter) => (0..len)
            .map(|i| {
                if array.is_null(i) {
                    Value::Null
                } else {
                    Value::String(formatter.value(i).to_string())
                }
            })
            .collect(),
        Err(_) => vec![Value::Null; len],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_tables_are_plain_identifiers_only() {
        assert_eq!(
            quarantine_table("silver.readings").as_deref(),
            Some("\"silver\".\"readings_quarantine\"")
        );
        assert_eq!(quarantine_table("silver.x\"; DROP"), None);
        assert_eq!(quarantine_table("nodot"), None);
        assert_eq!(quarantine_table(".x"), None);
    }
}
