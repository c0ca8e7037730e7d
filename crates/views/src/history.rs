//! The stored tables of medlake's `system` schema: `system.refreshes` and
//! `system.expectations`, Delta tables that every refresh appends to (its outcome and its
//! expectation counts). The computed ones are in `system.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use datafusion::execution::context::{SessionContext, SessionState};
use futures::TryStreamExt;
use medlake_lake::{TableName, Warehouse};

use crate::error::{Error, Result};
use crate::outcome::RefreshOutcome;

/// The read-only schema of medlake's own tables.
pub const SCHEMA: &str = "system";
pub const REFRESHES: &str = "refreshes";
pub const EXPECTATIONS: &str = "expectations";

pub(crate) fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn refreshes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("refresh_id", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("started", timestamp(), false),
        Field::new("finished", timestamp(), false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("input_versions", DataType::Utf8, true),
        Field::new("rows_written", DataType::Int64, false),
        Field::new("table_version", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn expectations_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("refresh_id", DataType::Utf8, false),
        Field::new("expectation", DataType::Utf8, false),
        Field::new("expression", DataType::Utf8, false),
        Field::new("on_violation", DataType::Utf8, false),
        Field::new("rows_checked", DataType::Int64, false),
        Field::new("violations", DataType::Int64, false),
        Field::new("recorded", timestamp(), false),
    ]))
}

pub(crate) fn table(name: &str) -> Result<TableName> {
    Ok(TableName::new(SCHEMA, name)?)
}

/// Creates the system tables that do not exist yet (empty).
pub(crate) async fn prepare(warehouse: &Warehouse) -> Result<()> {
    for (name, schema) in [
        (REFRESHES, refreshes_schema()),
        (EXPECTATIONS, expectations_schema()),
    ] {
        let name = table(name)?;
        if !warehouse.table_exists(&name).await? {
            warehouse.create_table(&name, &schema, true).await?;
        }
    }
    Ok(())
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn ts(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn int(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from(values))
}

fn text<S: AsRef<str>>(values: Vec<Option<S>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(
        values.iter().map(|v| v.as_ref().map(AsRef::as_ref)),
    ))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Appends one refresh to `system.refreshes` and its expectation counts to
/// `system.expectations`.
pub(crate) async fn record(warehouse: &Warehouse, o: &RefreshOutcome) -> Result<()> {
    let inputs = serde_json::to_string(&o.inputs).unwrap_or_default();
    let batch = RecordBatch::try_new(
        refreshes_schema(),
        vec![
            text(vec![Some(o.view.to_string())]),
            text(vec![Some(o.refresh_id.clone())]),
            text(vec![Some(o.trigger.as_str())]),
            ts(vec![micros(o.started)]),
            ts(vec![micros(o.finished)]),
            text(vec![Some(o.mode)]),
            text(vec![(!o.reason.is_empty()).then_some(o.reason.clone())]),
            text(vec![(!o.inputs.is_empty()).then_some(inputs)]),
            int(vec![Some(to_i64(o.rows_written))]),
            int(vec![o.version.map(to_i64)]),
            text(vec![Some(o.status.as_str())]),
            text(vec![o.error.clone()]),
        ],
    )
    .map_err(|e| Error::Internal(format!("refresh row: {e}")))?;
    warehouse
        .append_batches(&table(REFRESHES)?, vec![batch])
        .await?;
    if !o.expectations.is_empty() {
        let n = o.expectations.len();
        let e = &o.expectations;
        let batch = RecordBatch::try_new(
            expectations_schema(),
            vec![
                text(vec![Some(o.view.to_string()); n]),
                text(vec![Some(o.refresh_id.clone()); n]),
                text(e.iter().map(|x| Some(x.0.clone())).collect()),
                text(e.iter().map(|x| Some(x.1.clone())).collect()),
                text(e.iter().map(|x| Some(x.2)).collect()),
                int(e.iter().map(|x| Some(to_i64(x.3))).collect()),
                int(e.iter().map(|x| Some(to_i64(x.4))).collect()),
                ts(vec![micros(o.finished); n]),
            ],
        )
        .map_err(|e| Error::Internal(format!("expectation rows: {e}")))?;
        warehouse
            .append_batches(&table(EXPECTATIONS)?, vec![batch])
            .await?;
    }
    Ok(())
}

/// Every (view, refresh id) `system.refreshes` holds.
pub(crate) async fn recorded_ids(
    warehouse: &Warehouse,
    state: &SessionState,
) -> Result<HashSet<(String, String)>> {
    let name = table(REFRESHES)?;
    if !warehouse.table_exists(&name).await? {
        return Ok(HashSet::new());
    }
    let (provider, _) = warehouse.table_provider(&name, None).await?;
    let ctx = SessionContext::new_with_state(state.clone());
    let frame = ctx
        .read_table(provider)?
        .select_columns(&["view", "refresh_id"])?;
    let batches: Vec<RecordBatch> = frame.execute_stream().await?.try_collect().await?;
    let mut ids = HashSet::new();
    for batch in &batches {
        let text = |i: usize| {
            arrow::compute::cast(batch.column(i), &DataType::Utf8)
                .map_err(|e| Error::Internal(e.to_string()))
        };
        let (views, refreshes) = (text(0)?, text(1)?);
        let (views, refreshes) = (views.as_string::<i32>(), refreshes.as_string::<i32>());
        for row in 0..batch.num_rows() {
            ids.insert((
                views.value(row).to_string(),
                refreshes.value(row).to_string(),
            ));
        }
    }
    Ok(ids)
}

/// The latest refresh of a view, as `system.refreshes` has it.
#[derive(Clone, Debug)]
pub struct LastRefresh {
    pub status: String,
    pub trigger: String,
    pub mode: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub error: Option<String>,
    /// When the latest refresh that did not fail finished.
    pub last_success: Option<DateTime<Utc>>,
}

/// Each view's latest refresh.
pub async fn latest_refreshes(
    warehouse: &Warehouse,
    state: &SessionState,
) -> Result<HashMap<TableName, LastRefresh>> {
    let name = table(REFRESHES)?;
    if !warehouse.table_exists(&name).await? {
        return Ok(HashMap::new());
    }
    let (provider, _) = warehouse.table_provider(&name, None).await?;
    let ctx = SessionContext::new_with_state(state.clone());
    let frame = ctx.read_table(provider)?.select_columns(&[
        "view", "status", "trigger", "mode", "started", "finished", "error",
    ])?;
    let batches: Vec<RecordBatch> = frame.execute_stream().await?.try_collect().await?;
    let mut latest: HashMap<TableName, LastRefresh> = HashMap::new();
    for batch in &batches {
        let strings = |i: usize| -> Result<StringArray> {
            arrow::compute::cast(batch.column(i), &DataType::Utf8)
                .map_err(|e| Error::Internal(e.to_string()))
                .map(|a| {
                    a.as_any()
                        .downcast_ref::<StringArray>()
                        .cloned()
                        .unwrap_or_else(|| StringArray::from(Vec::<Option<&str>>::new()))
                })
        };
        let times = |i: usize| -> Result<Int64Array> {
            let a = arrow::compute::cast(
                batch.column(i),
                &DataType::Timestamp(TimeUnit::Microsecond, None),
            )
            .and_then(|a| arrow::compute::cast(&a, &DataType::Int64))
            .map_err(|e| Error::Internal(e.to_string()))?;
            Ok(a.as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new())))
        };
        let (view, status, trigger, mode) = (strings(0)?, strings(1)?, strings(2)?, strings(3)?);
        let (started, finished, error) = (times(4)?, times(5)?, strings(6)?);
        for row in 0..batch.num_rows() {
            let Some((schema, t)) = view.value(row).split_once('.') else {
                continue;
            };
            let Ok(view_name) = TableName::new(schema, t) else {
                continue;
            };
            let at =
                |a: &Int64Array| DateTime::from_timestamp_micros(a.value(row)).unwrap_or_default();
            let entry = LastRefresh {
                status: status.value(row).to_string(),
                trigger: trigger.value(row).to_string(),
                mode: mode.value(row).to_string(),
                started: at(&started),
                finished: at(&finished),
                error: error.is_valid(row).then(|| error.value(row).to_string()),
                last_success: None,
            };
            let succeeded = matches!(entry.status.as_str(), "succeeded" | "skipped");
            let slot = latest.entry(view_name).or_insert_with(|| entry.clone());
            if succeeded && slot.last_success.is_none_or(|s| s < entry.finished) {
                slot.last_success = Some(entry.finished);
            }
            if entry.finished >= slot.finished {
                let last_success = slot.last_success;
                *slot = LastRefresh {
                    last_success,
                    ..entry
                };
            }
        }
    }
    Ok(latest)
}

/// How a view that extracts a source has been doing, from `system.refreshes`.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub last_success: Option<DateTime<Utc>>,
    /// Rows the last successful refresh wrote.
    pub last_rows: Option<u64>,
    /// Failed refreshes since the last successful one.
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_status: Option<String>,
}

/// Each view's [`Health`].
pub async fn health(
    warehouse: &Warehouse,
    state: &SessionState,
) -> Result<HashMap<TableName, Health>> {
    let name = table(REFRESHES)?;
    if !warehouse.table_exists(&name).await? {
        return Ok(HashMap::new());
    }
    let (provider, _) = warehouse.table_provider(&name, None).await?;
    let ctx = SessionContext::new_with_state(state.clone());
    let frame = ctx.read_table(provider)?.select_columns(&[
        "view",
        "status",
        "finished",
        "rows_written",
        "error",
    ])?;
    let batches: Vec<RecordBatch> = frame.execute_stream().await?.try_collect().await?;
    let mut rows: Vec<(TableName, String, i64, i64, Option<String>)> = Vec::new();
    for batch in &batches {
        let text = |i: usize| -> Result<StringArray> {
            let a = arrow::compute::cast(batch.column(i), &DataType::Utf8)
                .map_err(|e| Error::Internal(e.to_string()))?;
            Ok(a.as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .unwrap_or_else(|| StringArray::new_null(batch.num_rows())))
        };
        let number = |i: usize, via: DataType| -> Result<Int64Array> {
            let a = arrow::compute::cast(batch.column(i), &via)
                .and_then(|a| arrow::compute::cast(&a, &DataType::Int64))
                .map_err(|e| Error::Internal(e.to_string()))?;
            Ok(a.as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .unwrap_or_else(|| Int64Array::new_null(batch.num_rows())))
        };
        let (view, status, error) = (text(0)?, text(1)?, text(4)?);
        let finished = number(2, DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let written = number(3, DataType::Int64)?;
        for row in 0..batch.num_rows() {
            let Some((schema, t)) = view.value(row).split_once('.') else {
                continue;
            };
            let Ok(name) = TableName::new(schema, t) else {
                continue;
            };
            rows.push((
                name,
                status.value(row).to_string(),
                finished.value(row),
                written.value(row),
                error.is_valid(row).then(|| error.value(row).to_string()),
            ));
        }
    }
    rows.sort_by_key(|r| r.2);
    let mut health: HashMap<TableName, Health> = HashMap::new();
    for (name, status, finished, written, error) in rows {
        let h = health.entry(name).or_default();
        match status.as_str() {
            "succeeded" | "skipped" => {
                h.last_success = DateTime::from_timestamp_micros(finished);
                if status == "succeeded" {
                    h.last_rows = u64::try_from(written).ok();
                }
                h.failures = 0;
            }
            "failed" => {
                h.failures += 1;
                h.last_error = error;
            }
            _ => {}
        }
        h.last_status = Some(status);
    }
    Ok(health)
}
