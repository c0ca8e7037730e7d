//! Expectations at run time: an execution plan that checks every row a refresh produces,
//! counts violations per rule, drops or quarantines rows, or fails the refresh.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
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

use medlake_cluster::checks::Action;

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
    /// The rules as [`medlake_cluster::checks`] applies them.
    spec: Vec<medlake_cluster::checks::Rule>,
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
        let spec = rules
            .iter()
            .map(|r| medlake_cluster::checks::Rule {
                name: r.name.clone(),
                action: match r.on_violation {
                    OnViolation::Keep => Action::Keep,
                    OnViolation::Drop => Action::Drop,
                    OnViolation::Quarantine => Action::Quarantine,
                    OnViolation::Fail => Action::Fail,
                },
                predicate: r.predicate.clone(),
            })
            .collect();
        Self {
            view,
            spec,
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
        let checked = medlake_cluster::checks::check(&self.spec, batch, &self.refresh_id)?;
        for (count, found) in self.violations.iter().zip(&checked.violations) {
            count.fetch_add(*found, Ordering::Relaxed);
        }
        if let Some((rule, rows)) = checked.failed {
            let rule = &self.rules[rule];
            return Err(DataFusionError::External(Box::new(
                Error::ExpectationFailed {
                    view: self.view.to_string(),
                    expectation: rule.name.clone(),
                    expression: rule.expression.clone(),
                    rows,
                },
            )));
        }
        self.removed
            .fetch_add((n - checked.kept.num_rows()) as u64, Ordering::Relaxed);
        if let Some(rows) = checked.quarantined {
            self.quarantined
                .lock()
                .map_err(|_| DataFusionError::Internal("quarantine lock poisoned".into()))?
                .push(rows);
        }
        Ok(checked.kept)
    }

    /// Counts an executor found checking rows for this refresh (its write's rows).
    pub fn add_counts(&self, rows: u64, violations: &[u64], removed: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        for (count, found) in self.violations.iter().zip(violations) {
            count.fetch_add(*found, Ordering::Relaxed);
        }
        self.removed.fetch_add(removed, Ordering::Relaxed);
    }

    /// The rules as executors check them.
    pub fn spec(&self) -> &[medlake_cluster::checks::Rule] {
        &self.spec
    }

    /// Where quarantined rows go, and whether this refresh replaces the quarantine's rows
    /// (whole, or a region of it: `Some(region)`) or appends to it.
    pub fn quarantine(&self) -> Option<(&TableName, bool, Option<&Expr>)> {
        let (_, table) = self.quarantine.as_ref()?;
        Some((table, self.replace_quarantine, self.region.get()))
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
            let empty = RecordBatch::new_empty(medlake_cluster::checks::quarantine_schema(&schema));
            let batches = if batches.is_empty() {
                vec![empty]
            } else {
                batches
            };
            warehouse
                .write_batches(table, batches, medlake_lake::WriteMode::Overwrite)
                .await
        } else if let Some(region) = self.region.get() {
            warehouse
                .replace_rows_where(
                    table,
                    batches,
                    medlake_cluster::checks::quarantine_schema(&schema),
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

/// The cluster, the plan a write's `input` runs there, and the checks of its rows, when
/// nothing but those checks is between it and the write: `input` scans a [`PlannedTable`] of
/// an [`ExpectationsExec`] over a [`medlake_cluster::RemoteExec`] (a refresh's query, planned
/// by `Views::checked`).
pub(crate) fn remote_of(
    input: &datafusion::logical_expr::LogicalPlan,
) -> Option<(
    medlake_cluster::Cluster,
    Arc<dyn ExecutionPlan>,
    Arc<Checks>,
)> {
    let datafusion::logical_expr::LogicalPlan::TableScan(scan) = input else {
        return None;
    };
    if scan.projection.is_some() || !scan.filters.is_empty() || scan.fetch.is_some() {
        return None;
    }
    let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
    let planned = provider.downcast_ref::<PlannedTable>()?;
    let checked = planned.plan.downcast_ref::<ExpectationsExec>()?;
    let remote = checked
        .input
        .downcast_ref::<medlake_cluster::RemoteExec>()?;
    Some((
        remote.cluster().clone(),
        remote.plan().clone(),
        checked.checks.clone(),
    ))
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
