//! Delta scans that cross the wire.
//!
//! deltalake 1.1.3's scan node (`DeltaScanExec`) keeps its state private (kernel expressions,
//! deletion-vector masks, a file pruner), so no codec outside deltalake can encode it. What
//! *is* plain data is its provider: `DeltaScanNext` is serde, snapshot included (its file
//! list travels as Arrow IPC), so an executor needs neither the Delta log nor the catalog.
//!
//! Before a plan goes to the cluster, [`distributable`] wraps every Delta provider of the
//! logical plan in a [`ClusterTable`], whose scan returns a [`LakeScanExec`]: the plan deltalake
//! made (run as is when the query stays on this server), plus what made it (provider,
//! projection, pushed filters, limit). The codec sends the latter; an executor plans the scan
//! again from it, against the same snapshot, so partition values, column mapping and deletion
//! vectors are read by deltalake exactly as on the server.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::datasource::{TableType, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown, TableScan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion_proto::bytes::Serializeable;
use deltalake::delta_datafusion::DeltaScanNext;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::changes::{ChangesScanExec, ClusterChanges};
use crate::external::{ClusterExternal, ExternalScanExec, Externals};
use medlake_lake::ChangeFeed;
use medlake_source::Portable;

/// `plan` with every Delta table scan able to cross the wire ([`ClusterTable`]), and the
/// external-table scans `externals` names ([`ClusterExternal`]). Scans of anything else are
/// left alone: the codec then refuses the plan (or the server reads them, see `inline`).
pub fn distributable(plan: LogicalPlan, externals: Externals) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(Transformed::no(node));
        };
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        };
        let table: Arc<dyn TableProvider> =
            if let Some(delta) = provider.downcast_ref::<DeltaScanNext>() {
                Arc::new(ClusterTable {
                    delta: Arc::new(delta.clone()),
                })
            } else if let Some(feed) = provider.downcast_ref::<ChangeFeed>() {
                Arc::new(ClusterChanges::new(feed, provider.clone()))
            } else if let Some(portable) = provider.downcast_ref::<Portable>()
                && match externals {
                    Externals::Here => false,
                    Externals::Executors => true,
                    Externals::ExecutorsUnlessReporting => !portable.reports_mismatches(),
                }
            {
                Arc::new(ClusterExternal {
                    table: Arc::new(portable.clone()),
                })
            } else {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            };
        let scan = TableScan {
            source: provider_as_source(table),
            ..scan
        };
        Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
    })
    .map(|t| t.data)
}

/// Whether `plan` reads a table the executors read (a Delta table, an external table they
/// have the connectors for): a plan that does not has nothing to gain from a cluster.
pub fn reads_tables(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<LakeScanExec>().is_some()
        || plan.downcast_ref::<ExternalScanExec>().is_some()
        || plan.downcast_ref::<ChangesScanExec>().is_some()
        || plan.children().into_iter().any(reads_tables)
}

/// A Delta table whose scans can be planned again on an executor ([`LakeScanExec`]).
#[derive(Debug)]
pub struct ClusterTable {
    delta: Arc<DeltaScanNext>,
}

#[async_trait]
impl TableProvider for ClusterTable {
    fn schema(&self) -> SchemaRef {
        self.delta.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.delta.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planned = self.delta.scan(state, projection, filters, limit).await?;
        let scan = Scan {
            delta: self.delta.clone(),
            projection: projection.cloned(),
            filters: filters.to_vec(),
            limit,
        };
        Ok(Arc::new(LakeScanExec::planned(scan, planned)?))
    }
}

/// What a Delta scan was planned from.
#[derive(Debug, Clone)]
struct Scan {
    delta: Arc<DeltaScanNext>,
    projection: Option<Vec<usize>>,
    filters: Vec<Expr>,
    limit: Option<usize>,
}

/// The wire form of a [`LakeScanExec`] (JSON: deltalake's provider is serde).
#[derive(Serialize)]
struct WireOut<'a> {
    delta: &'a DeltaScanNext,
    projection: &'a Option<Vec<usize>>,
    filters: Vec<Vec<u8>>,
    limit: Option<usize>,
    partitions: usize,
}

#[derive(Deserialize)]
struct WireIn {
    delta: DeltaScanNext,
    projection: Option<Vec<usize>>,
    filters: Vec<Vec<u8>>,
    limit: Option<usize>,
    partitions: usize,
}

/// A Delta scan that an executor can plan again: on the server it runs the plan deltalake
/// made; decoded elsewhere, it plans the scan from the same snapshot on first execution.
pub struct LakeScanExec {
    scan: Scan,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    planned: Arc<OnceCell<Arc<dyn ExecutionPlan>>>,
    /// The scan's partitions as planned (on the server).
    partitions: usize,
    /// Which of them each of this node's partitions reads ([`crate::slice`]).
    tokens: Arc<dyn ExecutionPlan>,
}

impl fmt::Debug for LakeScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeScanExec")
            .field("projection", &self.scan.projection)
            .field("filters", &self.scan.filters)
            .field("limit", &self.scan.limit)
            .finish_non_exhaustive()
    }
}

impl LakeScanExec {
    fn planned(scan: Scan, planned: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let partitions = planned.output_partitioning().partition_count();
        Ok(Self {
            scan,
            schema: planned.schema(),
            properties: planned.properties().clone(),
            planned: Arc::new(OnceCell::new_with(Some(planned))),
            partitions,
            tokens: crate::slice::tokens(partitions)?,
        })
    }

    /// The scan's wire form.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        let filters = self
            .scan
            .filters
            .iter()
            .map(|f| f.to_bytes().map(|b| b.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let wire = WireOut {
            delta: &self.scan.delta,
            projection: &self.scan.projection,
            filters,
            limit: self.scan.limit,
            partitions: self.partitions,
        };
        serde_json::to_writer(buf, &wire)
            .map_err(|e| DataFusionError::Internal(format!("encoding a Delta scan: {e}")))
    }

    /// A scan from its wire form, planned on its first execution. The tasks of one stage
    /// carry the same scan: an executor decodes it once ([`DECODED`]), but plans it for each
    /// task (a physical plan is made for one execution: DataFusion 55's file scans share
    /// their files between the partitions of one execution, and a second execution of the
    /// same plan finds them taken).
    pub(crate) fn decode(
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
    ) -> Result<Self> {
        let [tokens] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "a Delta scan has one input (its tokens), not {}",
                inputs.len()
            )));
        };
        Ok(Self::decode_scan(buf, ctx)?.with_tokens(tokens.clone()))
    }

    /// This scan reading the partitions `tokens` names.
    fn with_tokens(self, tokens: Arc<dyn ExecutionPlan>) -> Self {
        let count = tokens.output_partitioning().partition_count();
        Self {
            properties: Arc::new(crate::slice::restricted(&self.properties, count)),
            tokens,
            ..self
        }
    }

    fn decode_scan(buf: &[u8], ctx: &TaskContext) -> Result<Self> {
        let hash = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = DECODED_KEYS.build_hasher();
            h.write(buf);
            h.finish()
        };
        let mut decoded = DECODED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, scan)) = decoded
            .iter()
            .find(|(h, bytes, _)| *h == hash && bytes.as_ref() == buf)
        {
            return Ok(scan.unplanned());
        }
        drop(decoded);
        let scan = Self::decode_new(buf, ctx)?;
        if buf.len() <= DECODED_BYTES / 4 {
            decoded = DECODED.lock().unwrap_or_else(|e| e.into_inner());
            decoded.push_back((hash, Arc::from(buf), scan.unplanned()));
            while decoded.len() > DECODED_KEPT
                || decoded.iter().map(|(_, b, _)| b.len()).sum::<usize>() > DECODED_BYTES
            {
                decoded.pop_front();
            }
        }
        Ok(scan)
    }

    /// This scan, to be planned again.
    fn unplanned(&self) -> Self {
        Self {
            scan: self.scan.clone(),
            schema: self.schema.clone(),
            properties: self.properties.clone(),
            planned: Arc::new(OnceCell::new()),
            partitions: self.partitions,
            tokens: self.tokens.clone(),
        }
    }

    fn decode_new(buf: &[u8], ctx: &TaskContext) -> Result<Self> {
        let wire: WireIn = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("decoding a Delta scan: {e}")))?;
        let filters = wire
            .filters
            .iter()
            .map(|b| Expr::from_bytes_with_ctx(b, ctx))
            .collect::<Result<Vec<_>>>()?;
        let delta = Arc::new(wire.delta);
        let full = delta.schema();
        let schema = match &wire.projection {
            Some(p) => Arc::new(full.project(p)?),
            None => full,
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(wire.partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            scan: Scan {
                delta,
                projection: wire.projection,
                filters,
                limit: wire.limit,
            },
            schema,
            properties: Arc::new(properties),
            planned: Arc::new(OnceCell::new()),
            partitions: wire.partitions,
            // Replaced by the decoded input.
            tokens: crate::slice::tokens(0)?,
        })
    }
}

/// Scans an executor decoded lately, by their wire form (and its hash): the last
/// [`DECODED_KEPT`], within [`DECODED_BYTES`].
static DECODED: std::sync::Mutex<std::collections::VecDeque<Decoded>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// A decoded scan: its wire form's hash, the wire form, the scan.
type Decoded = (u64, Arc<[u8]>, LakeScanExec);
static DECODED_KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
const DECODED_KEPT: usize = 16;
/// At most this many bytes of wire forms are kept (each one a quarter of it at most).
const DECODED_BYTES: usize = 64 << 20;

/// Plans `scan` on this process, with the task's configuration and object stores.
async fn plan_here(scan: &Scan, ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    let state = SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .with_default_features()
        .build();
    scan.delta
        .scan(&state, scan.projection.as_ref(), &scan.filters, scan.limit)
        .await
}

impl DisplayAs for LakeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakeScanExec: limit={:?}", self.scan.limit)
    }
}

impl ExecutionPlan for LakeScanExec {
    fn name(&self) -> &str {
        "LakeScanExec"
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
        match <[_; 1]>::try_from(children) {
            Ok([tokens]) => {
                // The same plan (one execution runs one of the two nodes).
                let copy = Self {
                    planned: self.planned.clone(),
                    ..self.unplanned()
                };
                Ok(Arc::new(copy.with_tokens(tokens)))
            }
            Err(_) => Err(DataFusionError::Internal(
                "LakeScanExec has one input (its tokens)".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let scan = self.scan.clone();
        let planned = self.planned.clone();
        let partitions = self.partitions;
        let ordered = self.properties.output_ordering().is_some();
        let tokens = self.tokens.clone();
        let stream = futures::stream::once(async move {
            let owned = crate::slice::owned(&tokens, partition, partitions, ctx.clone()).await?;
            let plan = planned.get_or_try_init(|| plan_here(&scan, &ctx)).await?;
            parts_of(plan, &owned, partitions, ordered, ctx)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// The partitions `owned` of `partitions`, read from `plan` one after another.
pub(crate) fn parts_of(
    plan: &Arc<dyn ExecutionPlan>,
    owned: &[usize],
    partitions: usize,
    ordered: bool,
    ctx: Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    if let [one] = owned {
        return part_of(plan, *one, partitions, ordered, ctx);
    }
    let streams = owned
        .iter()
        .map(|&p| part_of(plan, p, partitions, ordered, ctx.clone()))
        .collect::<Result<Vec<_>>>()?;
    let chained = futures::stream::iter(streams).flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        plan.schema(),
        chained,
    )))
}

/// Partition `partition` of `partitions`, read from `plan`: the same partition when the scan
/// planned here has as many as the server's; otherwise every `partitions`-th of its own, one
/// after another (each row still read once; an ordered scan must match exactly).
pub(crate) fn part_of(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
    partitions: usize,
    ordered: bool,
    ctx: Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    let here = plan.output_partitioning().partition_count();
    if here == partitions {
        return plan.execute(partition, ctx);
    }
    if ordered {
        return Err(DataFusionError::Execution(format!(
            "the Delta scan was planned with {partitions} ordered partition(s) on the server \
             and {here} on this executor: the two processes' settings differ"
        )));
    }
    let schema = plan.schema();
    let streams = (partition..here)
        .step_by(partitions.max(1))
        .map(|p| plan.execute(p, ctx.clone()))
        .collect::<Result<Vec<_>>>()?;
    let chained = futures::stream::iter(streams).flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, chained)))
}
