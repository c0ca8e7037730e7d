//! medlake's `system` schema: the views and lineage (computed when read), and the refresh
//! history and expectation results (Delta tables that refreshes append to, written by
//! the `history` module and re-exported here).

use std::sync::Arc;

use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{Error, Result};
pub use crate::history::{EXPECTATIONS, LastRefresh, REFRESHES, SCHEMA, latest_refreshes};
use crate::history::{timestamp, to_i64};
use crate::refresh::Views;

pub const MATERIALIZED_VIEWS: &str = "materialized_views";
pub const LINEAGE: &str = "lineage";
pub const SOURCES: &str = "sources";

fn sources_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("sources", DataType::Utf8, false),
        Field::new("last_success", timestamp(), true),
        Field::new("lag_seconds", DataType::Int64, true),
        Field::new("rows", DataType::Int64, true),
        Field::new("consecutive_failures", DataType::Int64, false),
        Field::new("last_status", DataType::Utf8, true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("freshness", DataType::Utf8, false),
        Field::new("warn_after_seconds", DataType::Int64, true),
        Field::new("error_after_seconds", DataType::Int64, true),
    ]))
}

/// `system.sources`: one row per view that extracts an external table (or declares
/// FRESHNESS): when it last succeeded and how long ago, the rows that refresh wrote, failures
/// since, the last error, and `fresh` / `warn` / `error` by its FRESHNESS (`never` before a
/// first success, `unknown` without FRESHNESS).
pub async fn sources(views: &Views, state: &SessionState) -> Result<RecordBatch> {
    let warehouse = views.warehouse();
    let health = crate::history::health(warehouse, state).await?;
    let now = chrono::Utc::now();
    let mut c: [Vec<Option<String>>; 5] = Default::default();
    let mut last = Vec::new();
    let mut ints: [Vec<Option<i64>>; 5] = Default::default();
    for view in views.list().await? {
        let mut external = Vec::new();
        for input in views.references(&view.definition)? {
            if warehouse.external(&input).await.ok().flatten().is_some() {
                external.push(input.to_string());
            }
        }
        let freshness = view.definition.freshness;
        if external.is_empty() && freshness.is_none() {
            continue;
        }
        let h = health.get(&view.name).cloned().unwrap_or_default();
        let lag = h.last_success.map(|t| (now - t).num_seconds().max(0));
        let status = match (lag, freshness) {
            (None, _) => "never".to_string(),
            (Some(_), None) => "unknown".to_string(),
            (Some(lag), Some(f)) => f.status(u64::try_from(lag).unwrap_or(0)).to_string(),
        };
        for (column, value) in c.iter_mut().zip([
            Some(view.name.to_string()),
            Some(external.join(", ")),
            h.last_status.clone(),
            h.last_error.clone(),
            Some(status),
        ]) {
            column.push(value);
        }
        last.push(h.last_success.map(|t| t.timestamp_micros()));
        for (column, value) in ints.iter_mut().zip([
            lag,
            h.last_rows.map(to_i64),
            Some(i64::from(h.failures)),
            freshness.map(|f| to_i64(f.warn_after)),
            freshness.and_then(|f| f.error_after.map(to_i64)),
        ]) {
            column.push(value);
        }
    }
    let [view, sources, status, error, freshness] = c;
    let [lag, rows, failures, warn, error_after] = ints;
    RecordBatch::try_new(
        sources_schema(),
        vec![
            Arc::new(StringArray::from(view)),
            Arc::new(StringArray::from(sources)),
            Arc::new(TimestampMicrosecondArray::from(last).with_timezone("UTC")),
            Arc::new(Int64Array::from(lag)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from(failures)),
            Arc::new(StringArray::from(status)),
            Arc::new(StringArray::from(error)),
            Arc::new(StringArray::from(freshness)),
            Arc::new(Int64Array::from(warn)),
            Arc::new(Int64Array::from(error_after)),
        ],
    )
    .map_err(|e| Error::Internal(format!("sources listing: {e}")))
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
    [MATERIALIZED_VIEWS, LINEAGE, SOURCES]
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
        match self.name {
            LINEAGE => lineage_schema(),
            SOURCES => sources_schema(),
            _ => materialized_views_schema(),
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
        let batch = match self.name {
            LINEAGE => lineage(&self.views).await,
            SOURCES => sources(&self.views, &self.state).await,
            _ => materialized_views(&self.views, &self.state).await,
        }
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let table = MemTable::try_new(self.schema(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}
