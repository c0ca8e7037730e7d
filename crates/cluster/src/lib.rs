//! medlake on Apache DataFusion Ballista 55.
//!
//! One binary runs every role: `medlake scheduler` ([`scheduler::serve`]), `medlake executor`
//! ([`executor::serve`]), and a server whose queries go to the scheduler ([`Cluster`]).
//!
//! The server keeps everything that needs its catalog, its principals or its secrets: it
//! parses, checks privileges, applies masks and row filters (the plan it ships already holds
//! them), and plans the query physically. The plan then crosses to the scheduler as a
//! physical plan (Ballista 55's `execute_physical_plan`), so the scheduler never needs the
//! catalog; it cuts the plan into stages for the executors, and the rows stream back.
//!
//! Scheduler, executor and result traffic carries patient data: every connection between them
//! is mutual TLS with one cluster CA ([`ClusterTls`]), and a peer without a certificate from
//! it is refused during the handshake.

pub mod changes;
pub mod checks;
pub mod codec;
pub mod executor;
pub mod external;
pub mod guard;
mod inline;
pub mod scan;
pub mod scheduler;
mod slice;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballista_core::extension::{EndpointOverrideFn, SessionConfigExt};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

pub use codec::{Codec, Functions};
pub use external::{Externals, Sources};
pub use scan::{distributable, reads_tables};
pub use write::{Checking, LakeWriteExec, Target, Written};

/// Errors starting a scheduler or an executor, or reaching one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("the cluster: {0}")]
    Ballista(String),
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(e.to_string())
    }
}

/// The cluster's mutual TLS: a CA every member trusts, and this member's certificate and key
/// (PEM). The same certificate serves as server and client identity.
#[derive(Clone)]
pub struct ClusterTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log.
        f.write_str("ClusterTls { .. }")
    }
}

impl ClusterTls {
    /// Reads the three PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::Read {
                path: p.to_path_buf(),
                reason: e.to_string(),
            })
        };
        Self::from_pem(read(ca)?, read(cert)?, read(key)?)
    }

    /// From PEM bytes.
    pub fn from_pem(ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>) -> Result<Self, Error> {
        for (what, pem) in [("CA", &ca), ("certificate", &cert), ("key", &key)] {
            if !pem.windows(10).any(|w| w == b"-----BEGIN") {
                return Err(Error::Config(format!("the cluster {what} is not PEM")));
            }
        }
        // tonic asks rustls for the process-default provider.
        let _ = tokio_rustls_provider();
        Ok(Self { ca, cert, key })
    }

    /// The role this member's certificate names ([`guard::Role`]).
    pub fn role(&self) -> guard::Role {
        guard::Role::of_pem(&self.cert).unwrap_or(guard::Role::Member)
    }

    pub(crate) fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            // Required, not optional (tonic's default): no certificate, no connection.
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(false)
            // A peer that never finishes its handshake does not hold a connection for long.
            .timeout(std::time::Duration::from_secs(10))
    }

    pub(crate) fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// Ballista's hook on every client endpoint it makes (to the scheduler, to executors for
    /// shuffles and results): TLS with this identity, on `https`.
    pub(crate) fn endpoint_override(&self) -> EndpointOverrideFn {
        let tls = self.client();
        Arc::new(move |endpoint: Endpoint| {
            let endpoint = if endpoint.uri().scheme_str() == Some("https") {
                endpoint
            } else {
                let uri = endpoint
                    .uri()
                    .to_string()
                    .replacen("http://", "https://", 1);
                Endpoint::from_shared(uri)?
                    .connect_timeout(std::time::Duration::from_secs(20))
                    .tcp_nodelay(true)
            };
            Ok(endpoint.tls_config(tls.clone())?)
        })
    }

    /// `config` set to reach the cluster with this identity.
    pub(crate) fn session_config(&self, config: SessionConfig) -> SessionConfig {
        let config = config
            .upgrade_for_ballista()
            // A plan carries its Delta snapshots (file lists): more than Ballista's 16 MiB.
            .with_ballista_grpc_client_max_message_size(executor::MAX_MESSAGE)
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(self.endpoint_override());
        isolated_partitions(config)
    }
}

/// `config` for tasks that each run one partition alone (every Ballista task): a file scan's
/// partition reads only its own files, never takes its idle siblings' (DataFusion's default
/// within one process, which would make every task read every file). Set on the server's
/// jobs, the scheduler's sessions (whose settings the tasks get) and the executors'.
pub(crate) fn isolated_partitions(config: SessionConfig) -> SessionConfig {
    config.set_bool(
        "datafusion.execution.enable_file_stream_work_stealing",
        false,
    )
}

fn tokio_rustls_provider() -> bool {
    tokio_rustls::rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

/// A server's way to its cluster: the scheduler's address, its TLS identity, the codec.
#[derive(Clone)]
pub struct Cluster {
    scheduler: String,
    tls: ClusterTls,
    codec: Arc<Codec>,
    session_id: String,
    /// Whether the executors scan external tables ([`Self::with_external_tables`]).
    externals: bool,
    /// Until when the scheduler is taken as unreachable (its last connection failed): plans
    /// run on the server meanwhile instead of each waiting for a connection to fail.
    down_until: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Jobs the scheduler accepted from this server (and its clones).
    submitted: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a scheduler that could not be reached is left alone.
const DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("scheduler", &self.scheduler)
            .finish_non_exhaustive()
    }
}

/// Why a query stays on the server: some part of its plan cannot run on an executor.
#[derive(Debug)]
pub struct StaysHere(pub String);

impl Cluster {
    /// `scheduler`: `ballista://host:port` (or `https://host:port`).
    pub fn new(scheduler: &str, tls: ClusterTls, functions: Functions) -> Result<Self, Error> {
        let rest = scheduler
            .strip_prefix("ballista://")
            .or_else(|| scheduler.strip_prefix("https://"))
            .or_else(|| scheduler.strip_prefix("df://"))
            .ok_or_else(|| {
                Error::Config(format!(
                    "the cluster address must be ballista://HOST:PORT, not {scheduler}"
                ))
            })?;
        if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
            return Err(Error::Config(format!(
                "the cluster address must be ballista://HOST:PORT, not {scheduler}"
            )));
        }
        Ok(Self {
            scheduler: format!("https://{rest}"),
            tls,
            codec: Arc::new(Codec::new(functions)),
            session_id: uuid::Uuid::new_v4().to_string(),
            externals: false,
            down_until: Arc::default(),
            submitted: Arc::default(),
        })
    }

    /// The executors have the connectors and the servers' source configuration (`medlake
    /// executor --config`): they scan external tables themselves ([`external`]). Without
    /// it the server reads them (small ones travel with the plan as rows).
    pub fn with_external_tables(mut self, on_executors: bool) -> Self {
        self.externals = on_executors;
        self
    }

    /// How many jobs the scheduler accepted from this server (and its clones) so far.
    pub fn jobs_submitted(&self) -> u64 {
        self.submitted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The scheduler's address (`https://host:port`).
    pub fn scheduler(&self) -> &str {
        &self.scheduler
    }

    /// The physical plan of a logical `plan` (a query), for the cluster: optimized, its Delta
    /// scans (and external scans, [`Self::with_external_tables`]) made distributable
    /// ([`distributable`]), small scans only this server can run replaced by their rows (see
    /// [`inline`]), and no dynamic filters (a hash join's or a top-k's filter pushed into its
    /// input at planning: Ballista's scheduler reorders join inputs after planning, which such
    /// a plan refuses).
    pub async fn plan(
        &self,
        state: &SessionState,
        plan: LogicalPlan,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let externals = match self.externals {
            true => Externals::Executors,
            false => Externals::Here,
        };
        self.plan_with(state, plan, externals).await
    }

    /// [`Self::plan`] for a refresh: external scans that count values read as NULL stay here
    /// (the refresh records the count).
    pub async fn plan_refresh(
        &self,
        state: &SessionState,
        plan: LogicalPlan,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let externals = match self.externals {
            true => Externals::ExecutorsUnlessReporting,
            false => Externals::Here,
        };
        self.plan_with(state, plan, externals).await
    }

    async fn plan_with(
        &self,
        state: &SessionState,
        plan: LogicalPlan,
        externals: Externals,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = distributable(state.optimize(&plan)?, externals)?;
        // A clone, not `SessionStateBuilder::new_from_existing(..).build()`: building registers
        // a fresh default catalog in the catalog list the clone shares with the caller.
        let mut state = state.clone();
        let optimizer = &mut state.config_mut().options_mut().optimizer;
        optimizer.enable_dynamic_filter_pushdown = false;
        optimizer.enable_join_dynamic_filter_pushdown = false;
        optimizer.enable_topk_dynamic_filter_pushdown = false;
        optimizer.enable_aggregate_dynamic_filter_pushdown = false;
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await?;
        // Scans only this server can run, when small, travel as their rows.
        if reads_tables(&physical) {
            return inline::inline_leaves(physical, &self.codec, state.task_ctx()).await;
        }
        Ok(physical)
    }

    /// The plan's wire form, or why it cannot leave this server.
    pub fn encode(&self, plan: &Arc<dyn ExecutionPlan>) -> std::result::Result<(), StaysHere> {
        if let Some(reason) = unsplittable(plan) {
            return Err(StaysHere(reason));
        }
        PhysicalPlanNode::try_from_physical_plan(plan.clone(), self.codec.as_ref())
            .map(|_| ())
            .map_err(|e| StaysHere(stays_reason(&e)))
    }

    /// Runs `plan` on the cluster: its rows, streamed back. `Err(StaysHere)` when some node or
    /// function of it cannot cross (the caller runs it here instead).
    pub async fn try_execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
    ) -> std::result::Result<Result<SendableRecordBatchStream>, StaysHere> {
        self.encode(&plan)?;
        let down = || self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down().is_some_and(|until| std::time::Instant::now() < until) {
            return Err(StaysHere(
                "the scheduler was unreachable moments ago".into(),
            ));
        }
        let config = self.tls.session_config(config.clone());
        let ballista = config.ballista_config();
        let submitted = ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
            self.scheduler.clone(),
            &ballista,
            plan,
            self.codec.as_ref(),
            self.session_id.clone(),
            config,
        )
        .await;
        match submitted {
            // No connection, so no job: the plan can run here instead.
            Err(e) if unreachable(&e) => {
                *down() = Some(std::time::Instant::now() + DOWN_FOR);
                tracing::warn!(
                    scheduler = %self.scheduler,
                    "the cluster's scheduler is unreachable; plans run on this server for {}s",
                    DOWN_FOR.as_secs()
                );
                Err(StaysHere("the scheduler is unreachable".into()))
            }
            submitted => {
                *down() = None;
                if submitted.is_ok() {
                    self.submitted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(submitted.map_err(cluster_error))
            }
        }
    }
}

/// Nodes a whole plan can carry over the wire but Ballista 55 cannot cut into stages (a
/// stage's plan is decoded alone on an executor), or that executors refuse to run
/// ([`guard::refused`]: file scans other than Delta scans, sinks): why, for the first one.
fn unsplittable(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if let Some(refused) = guard::refused(plan) {
        return Some(format!(
            "{refused}: executors read files only through Delta scans"
        ));
    }
    scalar_subquery(plan)
}

fn scalar_subquery(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    // DataFusion 55 plans an uncorrelated scalar subquery as ScalarSubqueryExec, whose
    // expressions decode only together with it: a stage below it fails on the executor.
    if plan.name() == "ScalarSubqueryExec" {
        return Some("a scalar subquery (Ballista 55 cannot split its plan into stages)".into());
    }
    plan.children().into_iter().find_map(scalar_subquery)
}

/// Whether `e` is Ballista failing to connect to the scheduler (tonic's transport error, in
/// Ballista's Debug form): nothing was submitted.
fn unreachable(e: &DataFusionError) -> bool {
    let text = format!("{e:?}");
    text.contains("ConnectError") || text.contains("Connection refused")
}

fn stays_reason(e: &DataFusionError) -> String {
    let text = e.to_string();
    let text = text.lines().next().unwrap_or_default();
    text.trim_start_matches("This feature is not implemented: ")
        .trim_start_matches("Internal error: ")
        .to_string()
}

fn cluster_error(e: DataFusionError) -> DataFusionError {
    DataFusionError::Execution(format!("the cluster could not run the query: {e}"))
}

/// A plan that runs on the cluster, as one partition of this server's plan: its rows stream
/// back here, where the rest of the plan (a refresh's expectations and its Delta write) runs.
pub struct RemoteExec {
    cluster: Cluster,
    plan: Arc<dyn ExecutionPlan>,
    config: SessionConfig,
    properties: Arc<datafusion::physical_plan::PlanProperties>,
}

impl std::fmt::Debug for RemoteExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteExec")
            .field("scheduler", &self.cluster.scheduler)
            .finish_non_exhaustive()
    }
}

impl RemoteExec {
    /// `plan` (from [`Cluster::plan`]) to run on `cluster`, or why it cannot leave.
    pub fn new(
        cluster: &Cluster,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
    ) -> std::result::Result<Self, StaysHere> {
        cluster.encode(&plan)?;
        let properties = datafusion::physical_plan::PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(plan.schema()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(1),
            datafusion::physical_plan::execution_plan::EmissionType::Incremental,
            datafusion::physical_plan::execution_plan::Boundedness::Bounded,
        );
        Ok(Self {
            cluster: cluster.clone(),
            plan,
            config: config.clone(),
            properties: Arc::new(properties),
        })
    }

    /// The plan that runs on the cluster.
    pub fn plan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.plan
    }

    /// The cluster it runs on.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

impl datafusion::physical_plan::DisplayAs for RemoteExec {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter,
    ) -> std::fmt::Result {
        write!(f, "RemoteExec: scheduler={}", self.cluster.scheduler)
    }
}

impl ExecutionPlan for RemoteExec {
    fn name(&self) -> &str {
        "RemoteExec"
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        // The plan that runs remotely is not a child: nothing here may rewrite or run it.
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("RemoteExec is a leaf".into()))
        }
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<datafusion::execution::TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "RemoteExec has one partition, not {partition}"
            )));
        }
        let cluster = self.cluster.clone();
        let plan = self.plan.clone();
        let config = self.config.clone();
        let stream = futures::stream::once(async move {
            match cluster.try_execute(plan.clone(), &config).await {
                Ok(stream) => stream,
                // The scheduler is down: the plan (a valid plan anywhere) runs here.
                Err(StaysHere(reason)) => {
                    tracing::info!(%reason, "a plan meant for the cluster runs on this server");
                    let one = Arc::new(
                        datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(
                            plan,
                        ),
                    );
                    one.execute(0, ctx)
                }
            }
        })
        .try_flatten();
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(self.schema(), stream),
        ))
    }
}
