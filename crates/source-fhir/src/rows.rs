//! Rows of a FHIR table: one per resource (its JSON text kept as received) or per deleted
//! resource of an export's `deleted` output, gathered into Arrow batches and sent through the
//! scan's channel, with the watermark window applied.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, BooleanArray, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result as DfResult};
use medlake_source::scan::Window;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc::Sender;

/// One row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub resource_type: String,
    pub id: String,
    /// `meta.lastUpdated` in µs since the epoch.
    pub last_updated: Option<i64>,
    pub deleted: bool,
    pub resource: Option<String>,
    pub transaction_time: Option<i64>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
}

/// What a row needs of a resource; serde skips the rest without building it.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
    meta: Option<Meta>,
}

/// A FHIR `instant` in µs since the epoch.
pub(crate) fn micros(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.to_utc().timestamp_micros())
}

/// The row of one resource (`text`, one NDJSON line or a Bundle entry's resource), which must
/// be a `resource`. `Err` says what is wrong with it.
pub(crate) fn resource_row(
    text: &str,
    resource: &str,
    transaction_time: Option<i64>,
) -> Result<Row, String> {
    let head: Head =
        serde_json::from_str(text).map_err(|e| format!("not a JSON resource ({e})"))?;
    let kind = head.resource_type.unwrap_or_default();
    if kind != resource {
        return Err(format!(
            "a resource of type '{kind}' where the table reads {resource}"
        ));
    }
    let id = head
        .id
        .filter(|id| !id.is_empty())
        .ok_or("a resource without an id")?;
    let last_updated = match head.meta.and_then(|m| m.last_updated) {
        None => None,
        Some(t) => Some(micros(&t).ok_or_else(|| {
            format!("resource {id}: meta.lastUpdated '{t}' is not a FHIR instant")
        })?),
    };
    Ok(Row {
        resource_type: kind,
        id,
        last_updated,
        deleted: false,
        resource: Some(text.to_string()),
        transaction_time,
    })
}

/// `Type/id` from a `request.url` (relative, absolute, or with `/_history/v`).
fn type_and_id(url: &str) -> Option<(&str, &str)> {
    let path = url.split(['?', '#']).next()?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let end = segments
        .iter()
        .position(|s| *s == "_history")
        .unwrap_or(segments.len());
    if end < 2 {
        return None;
    }
    Some((segments[end - 2], segments[end - 1]))
}

/// The rows of one line of a `deleted` output: a Bundle whose entries' requests are
/// `DELETE Type/id`. Entries of other types are skipped. A deletion's `last_updated` is the
/// Bundle's `timestamp` (or `meta.lastUpdated`), else `fallback`.
pub(crate) fn deleted_rows(
    text: &str,
    resource: &str,
    fallback: Option<i64>,
    transaction_time: Option<i64>,
) -> Result<Vec<Row>, String> {
    let bundle: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("a deleted-resources line that is not a Bundle".into());
    }
    let at = bundle
        .get("timestamp")
        .or_else(|| bundle.pointer("/meta/lastUpdated"))
        .and_then(Value::as_str)
        .and_then(micros)
        .or(fallback);
    let mut rows = Vec::new();
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let method = entry.pointer("/request/method").and_then(Value::as_str);
        if method != Some("DELETE") {
            continue;
        }
        let url = entry
            .pointer("/request/url")
            .and_then(Value::as_str)
            .ok_or("a DELETE entry without request.url")?;
        let (kind, id) =
            type_and_id(url).ok_or_else(|| format!("request.url '{url}' does not name Type/id"))?;
        if kind != resource {
            continue;
        }
        rows.push(Row {
            resource_type: kind.to_string(),
            id: id.to_string(),
            last_updated: at,
            deleted: true,
            resource: None,
            transaction_time,
        });
    }
    Ok(rows)
}

/// Whether an upserted resource's row belongs to `window`: `after < last_updated <= upto`;
/// without `after`, rows without `last_updated` too.
pub(crate) fn in_window(row: &Row, window: &Window<DateTime<Utc>>) -> bool {
    let after = window.after.map(|t| t.timestamp_micros());
    let upto = window.upto.map(|t| t.timestamp_micros());
    match row.last_updated {
        None => after.is_none(),
        Some(t) => after.is_none_or(|a| t > a) && upto.is_none_or(|u| t <= u),
    }
}

/// Rows waiting to be sent, in batches of `batch_rows`, up to `limit`.
pub(crate) struct Batches {
    rows: Vec<Row>,
    schema: SchemaRef,
    projection: Vec<usize>,
    batch_rows: usize,
    limit: Option<usize>,
    sent: usize,
    /// Rows left out by the window, for the log.
    pub outside: usize,
}

impl Batches {
    pub fn new(
        schema: SchemaRef,
        projection: Vec<usize>,
        batch_rows: usize,
        limit: Option<usize>,
    ) -> Self {
        Self {
            rows: Vec::new(),
            schema,
            projection,
            batch_rows,
            limit,
            sent: 0,
            outside: 0,
        }
    }

    /// Whether the scan has all it needs (its LIMIT).
    pub fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.sent + self.rows.len() >= l)
    }

    /// Adds a row; sends a batch when enough are waiting. `false`: stop reading (the reader
    /// went away or the LIMIT is reached).
    pub async fn push(&mut self, row: Row, tx: &Sender<DfResult<RecordBatch>>) -> bool {
        if self.done() {
            return false;
        }
        self.rows.push(row);
        if self.rows.len() >= self.batch_rows || self.done() {
            return self.flush(tx).await && !self.done();
        }
        true
    }

    /// Sends what is waiting. `false`: the reader went away.
    pub async fn flush(&mut self, tx: &Sender<DfResult<RecordBatch>>) -> bool {
        if self.rows.is_empty() {
            return true;
        }
        let rows = std::mem::take(&mut self.rows);
        self.sent += rows.len();
        let batch = self.batch(&rows);
        tx.send(batch).await.is_ok()
    }

    fn batch(&self, rows: &[Row]) -> DfResult<RecordBatch> {
        let time = |f: fn(&Row) -> Option<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from_iter(rows.iter().map(f)).with_timezone("UTC"))
        };
        let columns: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|&i| -> DfResult<ArrayRef> {
                Ok(match i {
                    0 => Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.resource_type.as_str()),
                    )),
                    1 => Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.id.as_str()),
                    )),
                    2 => time(|r| r.last_updated),
                    3 => Arc::new(BooleanArray::from_iter(
                        rows.iter().map(|r| Some(r.deleted)),
                    )),
                    4 => Arc::new(StringArray::from_iter(
                        rows.iter().map(|r| r.resource.as_deref()),
                    )),
                    5 => time(|r| r.transaction_time),
                    other => {
                        return Err(DataFusionError::Internal(format!(
                            "FHIR tables have no column {other}"
                        )));
                    }
                })
            })
            .collect::<DfResult<_>>()?;
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_deletions_become_rows() {
        let line = r#"{"resourceType":"Observation","id":"o1","meta":{"lastUpdated":"2024-05-01T10:00:00.5+02:00"},"status":"final"}"#;
        let row = resource_row(line, "Observation", None).unwrap();
        assert_eq!(row.id, "o1");
        assert_eq!(row.resource.as_deref(), Some(line));
        assert_eq!(row.last_updated, micros("2024-05-01T08:00:00.500Z"));
        assert!(resource_row(line, "Patient", None).is_err());
        assert!(resource_row(r#"{"resourceType":"Observation"}"#, "Observation", None).is_err());
        assert!(resource_row("{not json", "Observation", None).is_err());
        assert!(
            resource_row(
                r#"{"resourceType":"Observation","id":"x","meta":{"lastUpdated":"yesterday"}}"#,
                "Observation",
                None
            )
            .is_err()
        );
        let deleted = r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"request":{"method":"DELETE","url":"Observation/o2"}},
            {"request":{"method":"DELETE","url":"https://ehr.example/fhir/Observation/o3/_history/4"}},
            {"request":{"method":"DELETE","url":"Patient/p1"}}]}"#;
        let rows = deleted_rows(deleted, "Observation", Some(7), None).unwrap();
        let ids: Vec<_> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.deleted, r.last_updated))
            .collect();
        assert_eq!(ids, vec![("o2", true, Some(7)), ("o3", true, Some(7))]);
        assert!(
            deleted_rows(
                r#"{"resourceType":"Bundle","entry":[{"request":{"method":"DELETE","url":"x"}}]}"#,
                "Observation",
                None,
                None
            )
            .is_err()
        );
    }
}
