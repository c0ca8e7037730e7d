//! medlake's `system` schema: refresh history and expectation results (Delta tables that
//! refreshes append to), and the views and lineage (computed when read).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use medlake_lake::{TableName, Warehouse};

use crate::error::{Error, Result};
use crate::refresh::{RefreshOutcome, Views};

/// The read-only schema of medlake's own tables.
pub const SCHEMA: &str = "system";
pub const REFRESHES: &str = "refreshes";
pub const EXPECTATIONS: &str = "expectations";
pub const MATERIALIZED_VIEWS: &str = "materialized_views";
pub const LINEAGE: &str = "lineage";

fn timestamp() -> DataType {
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

fn table(name: &str) -> Result<TableName> {
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

fn micros(t: DateTime<Utc>) -> i64 {
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

fn to_i64(v: u64) -> i64 {
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

fn materialized_views_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("schema", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("last_refresh", timestamp(), true),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("staleness", DataType::Utf8, false),
        Field::new("table_version", DataType::Int64, false),
        Field::new("expectations", DataType::Int64, false),
        Field::new("definition", DataType::Utf8, false),
    ]))
}

fn lineage_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("input", DataType::Utf8, false),
        Field::new("input_is_view", DataType::Boolean, false),
    ]))
}

/// `SHOW MATERIALIZED VIEWS` / `system.materialized_views`: one row per view with its
/// schedule, last refresh, status, row count and staleness (which inputs moved on since).
pub async fn materialized_views(views: &Views, state: &SessionState) -> Result<RecordBatch> {
    let warehouse = views.warehouse();
    let list = views.list().await?;
    let history = latest_refreshes(warehouse, state).await?;
    let ctx = SessionContext::new_with_state(state.clone());
    let (
        mut schema,
        mut name,
        mut schedule,
        mut last,
        mut status,
        mut rows,
        mut staleness,
        mut version,
        mut rules,
        mut definition,
    ) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    for view in &list {
        let mut moved = Vec::new();
        for input in views.references(&view.definition)? {
            let now = warehouse
                .versions(&input)
                .await
                .ok()
                .and_then(|v| v.last().copied());
            let before = view.last.inputs.get(&input.to_string()).copied();
            match (before, now) {
                (Some(b), Some(n)) if n > b => moved.push(format!("{input} +{} version(s)", n - b)),
                (Some(_), Some(_)) => {}
                (_, None) => moved.push(format!("{input} is missing")),
                (None, Some(_)) => moved.push(format!("{input} is new")),
            }
        }
        let latest = history.get(&view.name);
        let state_text = match latest {
            Some(l) => l.status.clone(),
            None => "succeeded".to_string(),
        };
        let count = match warehouse.table_provider(&view.name, None).await {
            Ok((provider, _)) => match ctx.read_table(provider).map(|f| f.count()) {
                Ok(counting) => counting.await.ok().map(|c| c as i64),
                Err(_) => None,
            },
            Err(_) => None,
        };
        schema.push(view.name.schema.clone());
        name.push(view.name.table.clone());
        // A schedule stored by an older medlake that cannot run says so here.
        schedule.push(view.definition.schedule.as_ref().map(|s| match s.check() {
            Ok(()) => s.to_string(),
            Err(e) => format!("{s} (not scheduled: {e})"),
        }));
        last.push(Some(
            latest
                .and_then(|l| l.last_success)
                .unwrap_or(view.last.started)
                .timestamp_micros(),
        ));
        status.push(state_text);
        rows.push(count);
        staleness.push(if moved.is_empty() {
            "fresh".to_string()
        } else {
            format!("stale: {}", moved.join(", "))
        });
        version.push(to_i64(view.version));
        rules.push(view.definition.expectations.len() as i64);
        definition.push(view.definition.to_sql(&view.name.schema, &view.name.table));
    }
    RecordBatch::try_new(
        materialized_views_schema(),
        vec![
            Arc::new(StringArray::from(schema)),
            Arc::new(StringArray::from(name)),
            Arc::new(StringArray::from(schedule)),
            Arc::new(TimestampMicrosecondArray::from(last).with_timezone("UTC")),
            Arc::new(StringArray::from(status)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(StringArray::from(staleness)),
            Arc::new(Int64Array::from(version)),
            Arc::new(Int64Array::from(rules)),
            Arc::new(StringArray::from(definition)),
        ],
    )
    .map_err(|e| Error::Internal(format!("materialized views listing: {e}")))
}

async fn lineage(views: &Views) -> Result<RecordBatch> {
    let edges = views.lineage().await?;
    RecordBatch::try_new(
        lineage_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                edges.iter().map(|e| e.0.to_string()),
            )),
            Arc::new(StringArray::from_iter_values(
                edges.iter().map(|e| e.1.to_string()),
            )),
            Arc::new(BooleanArray::from_iter(edges.iter().map(|e| Some(e.2)))),
        ],
    )
    .map_err(|e| Error::Internal(format!("lineage: {e}")))
}

/// A system table computed when it is read.
pub struct ComputedTable {
    name: &'static str,
    views: Views,
    state: SessionState,
}

impl std::fmt::Debug for ComputedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputedTable")
            .field("name", &self.name)
            .finish()
    }
}

/// The computed system tables (`materialized_views`, `lineage`), by name. `state` plans
/// what they read; it must not be a session whose catalog holds these tables' schema lock.
pub fn computed_tables(
    views: &Views,
    state: &SessionState,
) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
    [MATERIALIZED_VIEWS, LINEAGE]
        .into_iter()
        .map(|name| {
            let table: Arc<dyn TableProvider> = Arc::new(ComputedTable {
                name,
                views: views.clone(),
                state: state.clone(),
            });
            (name, table)
        })
        .collect()
}

#[async_trait]
impl TableProvider for ComputedTable {
    fn schema(&self) -> SchemaRef {
        if self.name == LINEAGE {
            lineage_schema()
        } else {
            materialized_views_schema()
        }
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = if self.name == LINEAGE {
            lineage(&self.views).await
        } else {
            materialized_views(&self.views, &self.state).await
        }
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let table = MemTable::try_new(self.schema(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}
