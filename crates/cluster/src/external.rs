//! External-table scans that cross the wire.
//!
//! A server whose executors have the source connectors and its source configuration (`medlake
//! executor --config`: `[secrets]` and `[sources]`) lets them scan external tables
//! themselves ([`Externals::Executors`]). What crosses is what opens the table again
//! ([`medlake_source::Reopen`]: the stored definition, with secrets only as `${NAME}`
//! references, and which rows), plus the projection, the pushed filters and the limit. The
//! executor opens it through its own [`Registry`], which resolves each secret from the
//! executor's `[secrets]` and checks the location against the executor's source policy, and
//! plans the scan again: the server's connections and resolved secrets never leave it.
//!
//! A folder of files is listed while planning; the server's listing travels with the scan
//! ([`medlake_source::Portable::fixed`]) so every task reads the files the server planned.

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
use medlake_source::{Policy, Portable, Registry, Reopen};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// Which external-table scans of a plan run on the executors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Externals {
    /// None: the server reads them (small ones travel as rows, see `inline`).
    Here,
    /// Every one: the executors have the connectors and the source configuration.
    Executors,
    /// Every one but those whose scans count values read as NULL (a refresh records the
    /// count, which only a scan on the server reports).
    ExecutorsUnlessReporting,
}

/// What an executor opens external tables with: the connectors, and the source policy with
/// its secret store (the executor's own `[secrets]` and `[sources]`).
#[derive(Clone, Debug)]
pub struct Sources {
    pub registry: Arc<Registry>,
    pub policy: Arc<Policy>,
}

/// An external table whose scans can be planned again on an executor ([`ExternalScanExec`]).
#[derive(Debug)]
pub(crate) struct ClusterExternal {
    pub(crate) table: Arc<Portable>,
}

#[async_trait]
impl TableProvider for ClusterExternal {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.table.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let fixed = self.table.fixed().await.map_err(external)?;
        let planned = fixed.scan(state, projection, filters, limit).await?;
        let scan = Scan {
            reopen: fixed.reopen().clone(),
            projection: projection.cloned(),
            filters: filters.to_vec(),
            limit,
        };
        let partitions = planned.output_partitioning().partition_count();
        Ok(Arc::new(ExternalScanExec {
            schema: planned.schema(),
            properties: planned.properties().clone(),
            planned: Arc::new(OnceCell::new_with(Some(planned))),
            scan,
            sources: None,
            partitions,
            tokens: crate::slice::tokens(partitions)?,
        }))
    }
}

fn external(e: medlake_source::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// What an external scan was planned from.
#[derive(Debug, Clone)]
struct Scan {
    reopen: Reopen,
    projection: Option<Vec<usize>>,
    filters: Vec<Expr>,
    limit: Option<usize>,
}

/// The wire form of an [`ExternalScanExec`] (JSON).
#[derive(Serialize, Deserialize)]
struct Wire {
    reopen: Reopen,
    projection: Option<Vec<usize>>,
    filters: Vec<Vec<u8>>,
    limit: Option<usize>,
    partitions: usize,
    /// The scan's columns (Arrow IPC schema, base64): the scheduler plans the stages with
    /// them without opening the table.
    schema: String,
}

/// An external-table scan an executor can plan again: on the server it runs the connector's
/// plan; decoded elsewhere, it opens the table through the process's [`Sources`] and plans the
/// scan on its first execution.
pub struct ExternalScanExec {
    scan: Scan,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    planned: Arc<OnceCell<Arc<dyn ExecutionPlan>>>,
    /// This process's connectors (an executor's); `None` on the server and the scheduler.
    sources: Option<Arc<Sources>>,
    /// The scan's partitions as planned (on the server).
    partitions: usize,
    /// Which of them each of this node's partitions reads ([`crate::slice`]).
    tokens: Arc<dyn ExecutionPlan>,
}

impl fmt::Debug for ExternalScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The definition holds no secret value, but its options are a user's: kind only.
        f.debug_struct("ExternalScanExec")
            .field("kind", &self.scan.reopen.definition.kind)
            .field("projection", &self.scan.projection)
            .field("limit", &self.scan.limit)
            .finish_non_exhaustive()
    }
}

impl ExternalScanExec {
    /// The scan's wire form.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        let filters = self
            .scan
            .filters
            .iter()
            .map(|f| f.to_bytes().map(|b| b.to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let wire = Wire {
            reopen: self.scan.reopen.clone(),
            projection: self.scan.projection.clone(),
            filters,
            limit: self.scan.limit,
            partitions: self.partitions,
            schema: schema_to_wire(&self.schema)?,
        };
        serde_json::to_writer(buf, &wire)
            .map_err(|e| DataFusionError::Internal(format!("encoding an external scan: {e}")))
    }

    /// A scan from its wire form, to be planned on each task's first execution with
    /// `sources` (an executor's; the scheduler has none and never executes it).
    pub(crate) fn decode(
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        sources: Option<Arc<Sources>>,
    ) -> Result<Self> {
        let [tokens] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "an external scan has one input (its tokens), not {}",
                inputs.len()
            )));
        };
        let wire: Wire = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("decoding an external scan: {e}")))?;
        let filters = wire
            .filters
            .iter()
            .map(|b| Expr::from_bytes_with_ctx(b, ctx))
            .collect::<Result<Vec<_>>>()?;
        let schema = schema_from_wire(&wire.schema)?;
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(tokens.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            scan: Scan {
                reopen: wire.reopen,
                projection: wire.projection,
                filters,
                limit: wire.limit,
            },
            schema,
            properties: Arc::new(properties),
            planned: Arc::new(OnceCell::new()),
            sources,
            partitions: wire.partitions,
            tokens: tokens.clone(),
        })
    }
}

/// A scan's columns as they cross: an Arrow IPC schema message, base64.
pub(crate) fn schema_to_wire(schema: &SchemaRef) -> Result<String> {
    use base64::Engine as _;
    let ipc = arrow_flight::IpcMessage::try_from(arrow_flight::SchemaAsIpc::new(
        schema,
        &Default::default(),
    ))
    .map_err(|e| DataFusionError::Internal(format!("encoding a scan's schema: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(&ipc.0))
}

/// The columns [`schema_to_wire`] sent.
pub(crate) fn schema_from_wire(wire: &str) -> Result<SchemaRef> {
    use base64::Engine as _;
    let bad =
        |e: &dyn fmt::Display| DataFusionError::Internal(format!("decoding a scan's schema: {e}"));
    let ipc = base64::engine::general_purpose::STANDARD
        .decode(wire)
        .map_err(|e| bad(&e))?;
    let schema =
        datafusion::arrow::datatypes::Schema::try_from(arrow_flight::IpcMessage(ipc.into()))
            .map_err(|e| bad(&e))?;
    Ok(Arc::new(schema))
}

/// Plans `scan` in this process: the table opened again through `sources`.
async fn plan_here(
    scan: &Scan,
    sources: Option<&Sources>,
    ctx: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(sources) = sources else {
        return Err(DataFusionError::Execution(format!(
            "this executor cannot read external tables ({}): start it with --config naming the \
             servers' [secrets] and [sources]",
            scan.reopen.definition.kind
        )));
    };
    let table = sources
        .registry
        .reopen(&scan.reopen, &sources.policy)
        .map_err(external)?;
    let state = SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .with_default_features()
        .build();
    table
        .scan(&state, scan.projection.as_ref(), &scan.filters, scan.limit)
        .await
}

impl DisplayAs for ExternalScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ExternalScanExec: kind={}, limit={:?}",
            self.scan.reopen.definition.kind, self.scan.limit
        )
    }
}

impl ExecutionPlan for ExternalScanExec {
    fn name(&self) -> &str {
        "ExternalScanExec"
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
                "ExternalScanExec has one input (its tokens)".into(),
            ));
        };
        let count = tokens.output_partitioning().partition_count();
        Ok(Arc::new(Self {
            scan: self.scan.clone(),
            schema: self.schema.clone(),
            properties: Arc::new(crate::slice::restricted(&self.properties, count)),
            // The same plan (one execution runs one of the two nodes).
            planned: self.planned.clone(),
            sources: self.sources.clone(),
            partitions: self.partitions,
            tokens,
        }))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let scan = self.scan.clone();
        let sources = self.sources.clone();
        let planned = self.planned.clone();
        let partitions = self.partitions;
        let ordered = self.properties.output_ordering().is_some();
        let tokens = self.tokens.clone();
        let stream = futures::stream::once(async move {
            let owned = crate::slice::owned(&tokens, partition, partitions, ctx.clone()).await?;
            let plan = planned
                .get_or_try_init(|| plan_here(&scan, sources.as_deref(), &ctx))
                .await?;
            crate::scan::parts_of(plan, &owned, partitions, ordered, ctx)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
