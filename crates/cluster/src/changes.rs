//! Change-feed reads that cross the wire.
//!
//! A Delta table's change data feed over a range of versions (an incremental refresh's read
//! of the rows its inputs' commits changed, `table_changes(...)`) is a plan of file scans over
//! the table's change files and data files, behind an object store deltalake registers under
//! a name of its own: nothing an executor could decode or resolve. What crosses instead is
//! what opened it ([`ChangeFeed`]: the table's location and the range of versions) with the
//! projection, the pushed filters and the limit; the executor opens the same feed from the
//! table's log through its own object stores and plans it again.
//!
//! deltalake groups the feed's files into partitions through a hash map, so two processes
//! planning the same feed number its partitions differently: the scan therefore crosses as
//! one partition (one task reads the whole feed, which is the change, not the history), and
//! what reads it afterwards spreads again.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion_proto::bytes::Serializeable;
use futures::TryStreamExt;
use medlake_lake::ChangeFeed;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::external::{schema_from_wire, schema_to_wire};

/// A change feed whose scans can be planned again on an executor ([`ChangesScanExec`]).
#[derive(Debug)]
pub(crate) struct ClusterChanges {
    /// The [`ChangeFeed`].
    feed: Arc<dyn TableProvider>,
    table: url::Url,
    from: u64,
    to: u64,
}

impl ClusterChanges {
    /// `feed`, which `provider` is.
    pub(crate) fn new(feed: &ChangeFeed, provider: Arc<dyn TableProvider>) -> Self {
        let (from, to) = feed.versions();
        Self {
            feed: provider,
            table: feed.table().clone(),
            from,
            to,
        }
    }
}

#[async_trait]
impl TableProvider for ClusterChanges {
    fn schema(&self) -> SchemaRef {
        self.feed.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.feed.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planned = self.feed.scan(state, projection, filters, limit).await?;
        let scan = Scan {
            table: self.table.clone(),
            from: self.from,
            to: self.to,
            projection: projection.cloned(),
            filters: filters.to_vec(),
            limit,
        };
        Ok(Arc::new(ChangesScanExec::new(
            scan,
            planned.schema(),
            Some(planned),
            crate::slice::tokens(1)?,
        )))
    }
}

/// What a change-feed scan was planned from.
#[derive(Debug, Clone)]
struct Scan {
    table: url::Url,
    from: u64,
    to: u64,
    projection: Option<Vec<usize>>,
    filters: Vec<Expr>,
    limit: Option<usize>,
}

/// The wire form of a [`ChangesScanExec`] (JSON).
#[derive(Serialize, Deserialize)]
struct Wire {
    table: url::Url,
    from: u64,
    to: u64,
    projection: Option<Vec<usize>>,
    filters: Vec<Vec<u8>>,
    limit: Option<usize>,
    /// The scan's columns (Arrow IPC schema, base64), for the scheduler's planning.
    schema: String,
}

/// A change-feed scan an executor can plan again: on the server it runs deltalake's plan;
/// decoded elsewhere, it opens the feed from the table's log on its first execution. One
/// partition: all of the feed.
pub struct ChangesScanExec {
    scan: Scan,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    planned: Arc<OnceCell<Arc<dyn ExecutionPlan>>>,
    /// Whether this task reads the feed ([`crate::slice`]: one token, or none).
    tokens: Arc<dyn ExecutionPlan>,
}

impl fmt::Debug for ChangesScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangesScanExec")
            .field("from", &self.scan.from)
            .field("to", &self.scan.to)
            .field("projection", &self.scan.projection)
            .field("limit", &self.scan.limit)
            .finish_non_exhaustive()
    }
}

impl ChangesScanExec {
    fn new(
        scan: Scan,
        schema: SchemaRef,
        planned: Option<Arc<dyn ExecutionPlan>>,
        tokens: Arc<dyn ExecutionPlan>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(tokens.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            scan,
            schema,
            properties: Arc::new(properties),
            planned: Arc::new(OnceCell::new_with(planned)),
            tokens,
        }
    }

    /// A scan of the feed of `table` (versions 1 to 2, no columns), for tests.
    #[cfg(test)]
    pub(crate) fn reading(table: url::Url) -> Result<Self> {
        let scan = Scan {
            table,
            from: 1,
            to: 2,
            projection: None,
            filters: Vec::new(),
            limit: None,
        };
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        Ok(Self::new(scan, schema, None, crate::slice::tokens(1)?))
    }

    /// The location of the table whose feed this scan reads.
    pub fn table(&self) -> &url::Url {
        &self.scan.table
    }

    /// The scan's wire form.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        let filters = self
            .scan
            .filters
            .iter()
            .map(|f| f.to_bytes().map(|b| b.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let wire = Wire {
            table: self.scan.table.clone(),
            from: self.scan.from,
            to: self.scan.to,
            projection: self.scan.projection.clone(),
            filters,
            limit: self.scan.limit,
            schema: schema_to_wire(&self.schema)?,
        };
        serde_json::to_writer(buf, &wire)
            .map_err(|e| DataFusionError::Internal(format!("encoding a change-feed scan: {e}")))
    }

    /// A scan from its wire form, planned on each task's first execution.
    pub(crate) fn decode(
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
    ) -> Result<Self> {
        let [tokens] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "a change-feed scan has one input (its tokens), not {}",
                inputs.len()
            )));
        };
        let wire: Wire = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("decoding a change-feed scan: {e}")))?;
        if wire.to < wire.from {
            return Err(DataFusionError::Internal(
                "a change-feed scan whose range ends before it starts".into(),
            ));
        }
        let filters = wire
            .filters
            .iter()
            .map(|b| Expr::from_bytes_with_ctx(b, ctx))
            .collect::<Result<Vec<_>>>()?;
        let scan = Scan {
            table: wire.table,
            from: wire.from,
            to: wire.to,
            projection: wire.projection,
            filters,
            limit: wire.limit,
        };
        Ok(Self::new(
            scan,
            schema_from_wire(&wire.schema)?,
            None,
            tokens.clone(),
        ))
    }
}

/// Plans `scan` in this process: the feed opened from the table's log.
async fn plan_here(
    scan: &Scan,
    schema: &SchemaRef,
    ctx: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    let feed = ChangeFeed::open(&scan.table, scan.from, scan.to)
        .await
        .map_err(|e| {
            DataFusionError::Execution(format!(
                "opening the change feed of a table (versions {} to {}): {e}",
                scan.from, scan.to
            ))
        })?;
    let state = SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .with_default_features()
        .build();
    let plan = feed
        .scan(&state, scan.projection.as_ref(), &scan.filters, scan.limit)
        .await?;
    if !plan.schema().fields().eq(schema.fields()) {
        return Err(DataFusionError::Execution(
            "the change feed planned on this executor has other columns than the server's".into(),
        ));
    }
    Ok(plan)
}

impl DisplayAs for ChangesScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ChangesScanExec: versions={}..={}, limit={:?}",
            self.scan.from, self.scan.to, self.scan.limit
        )
    }
}

impl ExecutionPlan for ChangesScanExec {
    fn name(&self) -> &str {
        "ChangesScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.tokens]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Ok([tokens]) = <[_; 1]>::try_from(children) else {
            return Err(DataFusionError::Internal(
                "ChangesScanExec has one input (its tokens)".into(),
            ));
        };
        let mut copy = Self::new(self.scan.clone(), self.schema.clone(), None, tokens);
        // The same plan (one execution runs one of the two nodes).
        copy.planned = self.planned.clone();
        Ok(Arc::new(copy))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let scan = self.scan.clone();
        let schema = self.schema.clone();
        let planned = self.planned.clone();
        let tokens = self.tokens.clone();
        let stream = futures::stream::once(async move {
            let owned = crate::slice::owned(&tokens, partition, 1, ctx.clone()).await?;
            let plan = planned
                .get_or_try_init(|| plan_here(&scan, &schema, &ctx))
                .await?;
            crate::scan::parts_of(plan, &owned, 1, false, ctx)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
