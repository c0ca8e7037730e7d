//! A table's commit history, as `DESCRIBE HISTORY t` and as the table function
//! `table_history('schema.table' [, limit])`, which composes with the rest of SQL.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use medlake_lake::{HistoryEntry, TableName, Warehouse};

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("operation", DataType::Utf8, true),
        Field::new("parameters", DataType::Utf8, false),
        Field::new("rows_written", DataType::Int64, true),
        Field::new("metrics", DataType::Utf8, false),
        Field::new("engine", DataType::Utf8, true),
    ]))
});

/// The history as one record batch, newest commit first.
pub(crate) fn history_batch(history: &[HistoryEntry]) -> DfResult<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            history
                .iter()
                .map(|h| i64::try_from(h.version).unwrap_or(i64::MAX)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                history
                    .iter()
                    .map(|h| h.timestamp.map(|t| t.timestamp_micros())),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            history.iter().map(|h| h.operation.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            history.iter().map(|h| h.parameters.as_str()),
        )),
        Arc::new(Int64Array::from_iter(
            history
                .iter()
                .map(|h| h.rows_written.and_then(|r| i64::try_from(r).ok())),
        )),
        Arc::new(StringArray::from_iter_values(
            history.iter().map(|h| h.metrics.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            history.iter().map(|h| h.engine.as_deref()),
        )),
    ];
    Ok(RecordBatch::try_new(SCHEMA.clone(), columns)?)
}

/// The name of the function.
pub(crate) const FUNCTION: &str = "table_history";

/// The table a `table_history('...')` call names, as the function reads it: `table` or
/// `schema.table` (`None`: not a name the function accepts). The statement's pins
/// ([`crate::statement::pin_versions`]) read the same parts, so that SELECT on exactly the
/// table whose history is shown is checked before the query is planned.
pub(crate) fn target_parts(text: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = text.split('.').map(str::to_string).collect();
    (1..=2).contains(&parts.len()).then_some(parts)
}

/// `table_history('schema.table' [, limit])`
#[derive(Debug)]
pub(crate) struct TableHistoryFunction {
    pub(crate) warehouse: Warehouse,
}

impl TableFunctionImpl for TableHistoryFunction {
    fn call_with_args(&self, call: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let args = call.exprs();
        let default_schema = &call.session().config().options().catalog.default_schema;
        let usage = || {
            DataFusionError::Plan(
                "table_history takes a table name and an optional limit: table_history('bronze.readings', 10)".into(),
            )
        };
        let literal = |expr: &Expr| match expr {
            Expr::Literal(value, _) => Some(value.clone()),
            _ => None,
        };
        let name = match args.first().and_then(literal) {
            Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => s,
            _ => return Err(usage()),
        };
        let limit = match args.get(1).map(literal) {
            None => None,
            Some(Some(ScalarValue::Int64(Some(n)))) if n >= 0 => usize::try_from(n).ok(),
            Some(_) => return Err(usage()),
        };
        if args.len() > 2 {
            return Err(usage());
        }
        let name = match target_parts(&name).as_deref() {
            Some([table]) => TableName::new(default_schema, table),
            Some([schema, table]) => TableName::new(schema, table),
            _ => return Err(usage()),
        }
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(HistoryTable {
            warehouse: self.warehouse.clone(),
            name,
            limit,
        }))
    }
}

/// The history of one table, read when the query runs.
#[derive(Debug)]
struct HistoryTable {
    warehouse: Warehouse,
    name: TableName,
    limit: Option<usize>,
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        SCHEMA.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let history = self
            .warehouse
            .history(&self.name, self.limit)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = history_batch(&history)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            SCHEMA.clone(),
            projection.cloned(),
        )?)
    }
}
