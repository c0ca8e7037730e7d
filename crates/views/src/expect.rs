//! Expectations at run time: an execution plan that checks every row a refresh produces,
//! counts violations per rule, drops or quarantines rows, or fails the refresh.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::{filter_record_batch, kernels::boolean};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use medlake_lake::{TableName, Warehouse};

use crate::definition::OnViolation;
use crate::error::Error;

/// One expectation, planned against the view's output schema.
#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub expression: String,
    pub on_violation: OnViolation,
    pub predicate: Arc<dyn PhysicalExpr>,
}

/// The rules of one refresh and what they found.
#[derive(Debug)]
pub(crate) struct Checks {
    pub view: TableName,
    pub rules: Vec<Rule>,
    pub refresh_id: String,
    /// Rows checked.
    pub rows: AtomicU64,
    /// Violations per rule (same order as `rules`).
    pub violations: Vec<AtomicU64>,
    /// Rows kept out of the view (dropped or quarantined).
    pub removed: AtomicU64,
    quarantined: Mutex<Vec<RecordBatch>>,
    /// Where quarantined rows go, written when the last partition ends (before the view's
    /// commit, so no quarantined row can be lost by a crash after it).
    quarantine: Option<(Warehouse, TableName)>,
    /// A full refresh replaces the quarantine (its rows are re-checked); an incremental one
    /// appends to it.
    replace_quarantine: bool,
    /// An incremental refresh that recomputes a region of the view (keys, partitions)
    /// replaces the quarantine's rows of that region: they were checked again.
    region: std::sync::OnceLock<datafusion::logical_expr::Expr>,
    partitions_left: AtomicUsize,
}

impl Checks {
    pub fn new(
        view: TableName,
        rules: Vec<Rule>,
        refresh_id: String,
        quarantine: Option<(Warehouse, TableName)>,
        replace_quarantine: bool,
    ) -> Self {
        let violations = rules.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            view,
            rules,
            refresh_id,
            rows: AtomicU64::new(0),
            violations,
            removed: AtomicU64::new(0),
            quarantined: Mutex::new(Vec::new()),
            quarantine,
            replace_quarantine,
            region: std::sync::OnceLock::new(),
            partitions_left: AtomicUsize::new(0),
        }
    }

    /// The quarantine table rows are written to, if the view has one.
    pub fn quarantine_table(&self) -> Option<&TableName> {
        self.quarantine.as_ref().map(|(_, table)| table)
    }

    /// The refresh recomputes the view's rows matching `region` (a predicate over the view's
    /// columns): the quarantine's rows there are replaced by the ones this refresh finds.
    pub fn replace_region(&self, region: datafusion::logical_expr::Expr) {
        let _ = self.region.set(region);
    }

    /// The failure a `FAIL UPDATE` rule caused, if one did. Writes report errors from their
    /// input as text; this gives the refresh its real error back.
    pub fn failure(&self) -> Option<Error> {
        self.rules
            .iter()
            .zip(&self.violations)
            .find(|(rule, count)| {
                rule.on_violation == OnViolation::Fail && count.load(Ordering::Relaxed) > 0
            })
            .map(|(rule, count)| Error::ExpectationFailed {
                view: self.view.to_string(),
                expectation: rule.name.clone(),
                expression: rule.expression.clone(),
                rows: count.load(Ordering::Relaxed),
            })
    }

    fn check(&self, batch: RecordBatch) -> DfResult<RecordBatch> {
        let n = batch.num_rows();
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
        if self.rules.is_empty() || n == 0 {
            return Ok(batch);
        }
        let mut keep = BooleanArray::from(vec![true; n]);
        let mut quarantine = BooleanArray::from(vec![false; n]);
        let mut broken: Vec<Vec<&str>> = vec![Vec::new(); n];
        for (i, rule) in self.rules.iter().enumerate() {
            let value = rule.predicate.evaluate(&batch)?.into_array(n)?;
            let value = value
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| {
                    DataFusionError::Plan(format!(
                        "expectation '{}' ({}) is not a boolean expression",
                        rule.name, rule.expression
                    ))
                })?;
            // NULL counts as met, as in a CHECK constraint.
            let violated = BooleanArray::from_iter(
                (0..n).map(|row| Some(value.is_valid(row) && !value.value(row))),
            );
            let count = violated.true_count() as u64;
            if count == 0 {
                continue;
            }
            self.violations[i].fetch_add(count, Ordering::Relaxed);
            match rule.on_violation {
                OnViolation::Keep => {}
                OnViolation::Drop => keep = boolean::and(&keep, &boolean::not(&violated)?)?,
                OnViolation::Quarantine => {
                    keep = boolean::and(&keep, &boolean::not(&violated)?)?;
                    quarantine = boolean::or(&quarantine, &violated)?;
                    for (row, names) in broken.iter_mut().enumerate() {
                        if violated.value(row) {
                            names.push(&rule.name);
                        }
                    }
                }
                OnViolation::Fail => {
                    return Err(DataFusionError::External(Box::new(
                        Error::ExpectationFailed {
                            view: self.view.to_string(),
                            expectation: rule.name.clone(),
                            expression: rule.expression.clone(),
                            rows: count,
                        },
                    )));
                }
            }
        }
        self.removed
            .fetch_add((n - keep.true_count()) as u64, Ordering::Relaxed);
        if quarantine.true_count() > 0 {
            let rows = filter_record_batch(&batch, &quarantine)?;
            let names: StringArray = broken
                .iter()
                .enumerate()
                .filter(|(row, _)| quarantine.value(*row))
                .map(|(_, names)| Some(names.join(",")))
                .collect();
            let now = chrono::Utc::now().timestamp_micros();
            let count = rows.num_rows();
            let mut fields: Vec<Arc<Field>> = rows.schema().fields().iter().cloned().collect();
            fields.extend(quarantine_fields());
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(names));
            columns.push(Arc::new(StringArray::from(vec![
                self.refresh_id.as_str();
                count
            ])));
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(vec![now; count]).with_timezone("UTC"),
            ));
            let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            self.quarantined
                .lock()
                .map_err(|_| DataFusionError::Internal("quarantine lock poisoned".into()))?
                .push(rows);
        }
        Ok(filter_record_batch(&batch, &keep)?)
    }

    async fn finish_partition(&self, schema: SchemaRef) -> DfResult<()> {
        if self.partitions_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Ok(());
        }
        let Some((warehouse, table)) = &self.quarantine else {
            return Ok(());
        };
        let batches: Vec<RecordBatch> = self
            .quarantined
            .lock()
            .map_err(|_| DataFusionError::Internal("quarantine lock poisoned".into()))?
            .clone();
        let result = if self.replace_quarantine {
            // Written even when empty: a view with QUARANTINE rules has its quarantine table
            // from its first refresh on, so that views and reports downstream can read it.
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.extend(quarantine_fields());
            let empty = RecordBatch::new_empty(Arc::new(Schema::new(fields)));
            let batches = if batches.is_empty() {
                vec![empty]
            } else {
                batches
            };
            warehouse
                .write_batches(table, batches, medlake_lake::WriteMode::Overwrite)
                .await
        } else if let Some(region) = self.region.get() {
            let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
            fields.extend(quarantine_fields());
            warehouse
                .replace_rows_where(
                    table,
                    batches,
                    Arc::new(Schema::new(fields)),
                    region.clone(),
                )
                .await
        } else if batches.is_empty() {
            return Ok(());
        } else {
            warehouse.append_batches(table, batches).await
        };
        result.map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(())
    }
}

/// The columns a quarantine table adds to the view's.
pub(crate) fn quarantine_fields() -> Vec<Arc<Field>> {
    vec![
        Arc::new(Field::new("_medlake_rules", DataType::Utf8, true)),
        Arc::new(Field::new("_medlake_refresh_id", DataType::Utf8, true)),
        Arc::new(Field::new(
            "_medlake_quarantined_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        )),
    ]
}

/// Runs an already planned query and checks its rows. A leaf to the plans around it: the
/// query under it was optimized when it was planned.
#[derive(Debug)]
pub(crate) struct ExpectationsExec {
    input: Arc<dyn ExecutionPlan>,
    checks: Arc<Checks>,
}

impl ExpectationsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, checks: Arc<Checks>) -> Self {
        checks.partitions_left.store(
            input.properties().partitioning.partition_count(),
            Ordering::Release,
        );
        Self { input, checks }
    }
}

impl DisplayAs for ExpectationsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<&str> = self.checks.rules.iter().map(|r| r.name.as_str()).collect();
        write!(
            f,
            "ExpectationsExec: view={} rules=[{}]",
            self.checks.view,
            rules.join(", ")
        )
    }
}

impl ExecutionPlan for ExpectationsExec {
    fn name(&self) -> &str {
        "ExpectationsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        for rule in &self.checks.rules {
            if f(&rule.predicate)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ExpectationsExec is a leaf".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let checks = self.checks.clone();
        let checked = input.map(move |batch| batch.and_then(|b| checks.check(b)));
        let checks = self.checks.clone();
        let input_schema = schema.clone();
        // When the partition ends, the last one writes the quarantine.
        let end = futures::stream::once(async move {
            checks.finish_partition(input_schema).await.map(|()| None)
        })
        .filter_map(|r: DfResult<Option<RecordBatch>>| async move { r.transpose() });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            checked.chain(end),
        )))
    }
}

/// An already planned physical plan as a table, so that it can feed a Delta write (whose
/// input is a logical plan) or a union.
#[derive(Debug)]
pub(crate) struct PlannedTable {
    plan: Arc<dyn ExecutionPlan>,
}

impl PlannedTable {
    pub fn new(plan: Arc<dyn ExecutionPlan>) -> Self {
        Self { plan }
    }
}

/// The cluster and the plan a write's `input` runs there, when nothing between it and the write runs
/// here: `input` scans a [`PlannedTable`] of an [`ExpectationsExec`] with no rules over a
/// [`medlake_cluster::RemoteExec`] (a refresh's query, planned by `Views::checked`).
pub(crate) fn unchecked_remote(
    input: &datafusion::logical_expr::LogicalPlan,
) -> Option<(medlake_cluster::Cluster, Arc<dyn ExecutionPlan>)> {
    let datafusion::logical_expr::LogicalPlan::TableScan(scan) = input else {
        return None;
    };
    if scan.projection.is_some() || !scan.filters.is_empty() || scan.fetch.is_some() {
        return None;
    }
    let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
    let planned = provider.downcast_ref::<PlannedTable>()?;
    let checked = planned.plan.downcast_ref::<ExpectationsExec>()?;
    if !checked.checks.rules.is_empty() || checked.checks.quarantine.is_some() {
        return None;
    }
    let remote = checked
        .input
        .downcast_ref::<medlake_cluster::RemoteExec>()?;
    Some((remote.cluster().clone(), remote.plan().clone()))
}

#[async_trait]
impl TableProvider for PlannedTable {
    fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match projection {
            Some(columns)
                if *columns != (0..self.plan.schema().fields().len()).collect::<Vec<_>>() =>
            {
                let schema = self.plan.schema();
                let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = columns
                    .iter()
                    .map(|&i| {
                        let name = schema.field(i).name().clone();
                        let column: Arc<dyn PhysicalExpr> = Arc::new(
                            datafusion::physical_expr::expressions::Column::new(&name, i),
                        );
                        (column, name)
                    })
                    .collect();
                Ok(Arc::new(ProjectionExec::try_new(exprs, self.plan.clone())?))
            }
            _ => Ok(self.plan.clone()),
        }
    }
}
