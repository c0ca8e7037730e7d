//! `medlake-engine` is the one front door of medlake: an [`Engine`] is a DataFusion session
//! over the warehouse's catalog. The CLI and every server (Postgres wire, Flight SQL, HTTP)
//! run SQL through it and nothing else, so behaviour, errors (with their [`Code`]) and, later,
//! access rules and the audit log are the same on every door.
//!
//! It owns the SQL surface: which statements exist, how DDL and DML map onto the lake
//! (`medlake-lake`), time travel, history and maintenance. It must not write files itself.

mod access;
mod alerting;
mod audit;
mod bounded;
mod catalog;
mod changes;
mod date_cast;
mod dialect;
mod dml;
mod erase;
mod error;
mod explain_refresh;
mod group_commit;
mod heartbeat;
mod history;
pub mod ingest;
mod leadership;
pub mod local_time;
mod metrics;
pub mod plan_cache;
pub mod postgres;
mod privileges;
mod project;
pub mod push;
mod restore;
pub mod result_cache;
pub mod runtime;
mod statement;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::common::{SchemaReference, TableReference};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;
pub use medlake_lake::TableName;
/// `medlake backup` / `medlake restore` (the lake's; the command line reaches it here).
pub use medlake_lake::backup;
pub use medlake_lake::durable::{enable_fsync, fsync_enabled};
use medlake_lake::{Warehouse, WriteMode};
use medlake_views::{Scheduler, Trigger, Views};
use tracing::{Instrument, debug, info_span};

pub use audit::Origin;
pub use catalog::{CATALOG, TIME_TRAVEL_SCHEMA};
pub use dialect::MedlakeDialect;
pub use error::{Code, Error, Result};
pub use ingest::Appended;
pub use leadership::{DEFAULT_SCHEDULER_LEASE, SchedulerLease};
pub use medlake_audit::Door;
pub use medlake_auth::{Object, Principal, PrincipalKind, Privilege, Role};
pub use medlake_lake::redact as redact_location;
pub use medlake_views::scheduler::Retries as RefreshRetries;
pub use medlake_views::{RefreshOutcome, Status as RefreshStatus};

pub use project::Applied;
pub use statement::{
    MAX_DEPTH, Statement, bind, ends_statement, parse, parse_timestamp, qmark_placeholders, split,
};

/// The default schema of a session, as in Postgres.
pub const DEFAULT_SCHEMA: &str = "public";

/// How [`Session::ingest`] treats its target table.
#[derive(Clone, Copy, Debug)]
pub struct Ingest {
    /// Create the table from the batches' schema when it does not exist.
    pub create: bool,
    /// What to do when it exists.
    pub exists: IfExists,
}

/// [`Ingest`] into an existing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    Fail,
    Append,
    Replace,
}

/// What a statement produced.
pub enum Output {
    /// The rows of a query, streamed as Arrow record batches.
    Rows(SendableRecordBatchStream),
    /// A command finished. `tag` is its Postgres command tag (`CREATE TABLE`, `INSERT 0 5`).
    Command { tag: String, rows: u64 },
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(stream) => f
                .debug_struct("Rows")
                .field("schema", &stream.schema())
                .finish(),
            Output::Command { tag, rows } => f
                .debug_struct("Command")
                .field("tag", tag)
                .field("rows", rows)
                .finish(),
        }
    }
}

impl Output {
    fn command(tag: impl Into<String>, rows: u64) -> Self {
        Output::Command {
            tag: tag.into(),
            rows,
        }
    }

    fn batch(batch: RecordBatch) -> Self {
        let schema = batch.schema();
        let stream = futures::stream::iter([Ok(batch)]);
        Output::Rows(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// Collects a query's rows (commands have none). For tests and small results.
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        match self {
            Output::Rows(stream) => Ok(stream.try_collect().await?),
            Output::Command { .. } => Ok(Vec::new()),
        }
    }
}

/// What a statement takes and returns, found without running it (the Postgres wire's
/// Describe, Flight SQL's prepared statements).
#[derive(Debug, Clone)]
pub struct Description {
    /// The types of its `$1`, `$2`, ... parameters, `None` where the statement does not
    /// tell (`SELECT $1`).
    pub parameters: Vec<Option<arrow::datatypes::DataType>>,
    /// The columns of its rows; `None` for a command.
    pub columns: Option<SchemaRef>,
}

/// SQL over a Delta Lake warehouse. Cheap to clone: clones share the warehouse, the catalog
/// and the runtime. Servers open one [`Session`] per client connection; `Engine::sql` and
/// friends run in the engine's own default session (the CLI's).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    default: Arc<Session>,
}

/// What every session of an engine shares.
struct Shared {
    warehouse: Warehouse,
    /// The connectors external tables are defined, opened and listed with.
    connectors: Arc<medlake_source::Registry>,
    views: Views,
    /// Roles, grants, owners, masks and row filters (`system.grants`).
    access: Arc<access::Access>,
    /// `system.audit`: every statement of every session.
    audit: medlake_audit::AuditLog,
    /// The server's configured users (`None`: the local operator's engine).
    users: access::owner::Directory,
    /// Session ids, for the audit.
    sessions: AtomicU64,
    catalog: Arc<catalog::LakeCatalog>,
    /// The template every session starts from: catalog, functions, object stores, planner.
    state: SessionState,
    statements: AtomicU64,
    /// Tables held open for Flight SQL ingest appends, one appender per table.
    appenders: std::sync::Mutex<HashMap<TableName, Arc<group_commit::AppendGroup>>>,
    /// Rows of repeated queries ([`result_cache`]).
    results: Arc<result_cache::ResultCache>,
    /// Plans of statements prepared with parameters ([`plan_cache`]).
    plans: plan_cache::PlanCache,
    /// Alert rules, their firings and deliveries ([`alerting`]).
    alerts: medlake_alerts::Alerts,
    /// Statement, session and refresh series for `/metrics`.
    metrics: Arc<metrics::Metrics>,
    /// Where queries run when not here ([`EngineBuilder::cluster`]).
    cluster: Option<medlake_cluster::Cluster>,
}

impl Shared {
    /// Refuses writes to the system schema and to materialized views.
    async fn check_writable(&self, name: &TableName, what: &str) -> Result<()> {
        if name.schema == medlake_views::system::SCHEMA {
            return Err(Error::ReadOnly {
                what: format!("the system schema is read-only ({what} {name})"),
            });
        }
        if self.warehouse.table_exists(name).await? && self.views.view(name).await?.is_some() {
            return Err(Error::Views(medlake_views::Error::WrongObjectType {
                name: name.to_string(),
                is: "a materialized view",
                expected: match what {
                    "DROP TABLE" => "a table (use DROP MATERIALIZED VIEW)",
                    _ => "a table (its rows come from REFRESH MATERIALIZED VIEW)",
                },
            }));
        }
        Ok(())
    }
}

/// One client's session: its principal (whose privileges every statement is checked
/// against, in [`Session::execute`]), its own settings (`SET ...`), the engine's warehouse
/// and catalog.
pub struct Session {
    shared: Arc<Shared>,
    ctx: SessionContext,
    principal: Principal,
    /// The statements `PREPARE`d in this session (at most [`MAX_PREPARED_PER_SESSION`]), with
    /// what running each needs (asked again at each EXECUTE).
    prepared: std::sync::Mutex<HashMap<String, Vec<privileges::Need>>>,
    /// The reason given with `SET medlake.break_glass`, while glass is broken.
    break_glass: std::sync::Mutex<Option<String>>,
    /// Where its statements come from (door, client address), for the audit.
    origin: Option<Origin>,
    /// This session's number, for the audit.
    id: u64,
    /// The tables the running statement reads and writes (from its privilege check), for
    /// the audit.
    touched: std::sync::Mutex<(Vec<String>, Vec<String>)>,
    /// The alert channels this session `LISTEN`s to, and its subscription to firings.
    listening: alerting::Listening,
}

/// SQL `PREPARE`d statements one session may hold; `DEALLOCATE` makes room.
pub const MAX_PREPARED_PER_SESSION: usize = 1000;

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.metrics.session(self.door().as_str(), -1);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("warehouse", &self.shared.warehouse)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.ctx.session_id())
            .field("principal", &self.principal.name)
            .finish_non_exhaustive()
    }
}

/// One table of [`Engine::extract`].
#[derive(Debug)]
pub struct Extracted {
    /// The external table read.
    pub source: TableName,
    /// The materialized view written.
    pub view: TableName,
    /// Whether this run created the view (its first, full extraction).
    pub created: bool,
    pub outcome: std::result::Result<RefreshOutcome, Error>,
    pub elapsed: Duration,
}

/// Every connector medlake has, for [`Engine::open`] and its variants (tests, embedders). The
/// `medlake` binary registers its own list with [`Engine::builder`].
pub fn all_connectors() -> medlake_source::Registry {
    medlake_source::Registry::new()
        .with(medlake_source_sqlserver::SqlServerConnector)
        .with(medlake_source_rest::RestConnector)
        .with(medlake_source_blob::BlobConnector)
        .with(medlake_source_cosmos::CosmosConnector)
        .with(medlake_source_fhir::FhirConnector)
}

/// The sizes of the result and plan caches: the builder's, else their environment variables'.
fn cache_sizes(results: Option<usize>, plans: Option<usize>) -> Result<(usize, usize)> {
    let results = match results {
        Some(bytes) => bytes,
        None => result_cache::ResultCache::capacity_from_env()?,
    };
    let plans = match plans {
        Some(plans) => plans,
        None => plan_cache::PlanCache::capacity_from_env()?,
    };
    Ok((results, plans))
}

/// The engine's own SQL functions, for every session, refresh and alert rule.
fn install_functions(
    ctx: &SessionContext,
    policy: &Arc<medlake_source::Policy>,
    time_zone: Option<local_time::ClinicalZone>,
) -> Result<()> {
    // De-identification: keyed functions read their keys from the secret store (the
    // privilege to USE each key is checked on every plan: privileges::for_plan).
    for udf in medlake_deid::udfs(Arc::new(access::SecretKeys(policy.clone()))) {
        ctx.register_udf(udf);
    }
    // SQL-on-FHIR v2: the rows of a ViewDefinition for a resource's JSON (FHIR VIEW).
    ctx.register_udf(medlake_fhir::fhir_view_udf());
    // Functions that could build a value of any size in one call are bounded.
    bounded::install(ctx);
    // `CAST(ts AS DATE)` without chrono (the optimizer rule date_cast::DateCast uses it).
    ctx.register_udf(date_cast::naive_date());
    // The hospital's clock: the builder's zone, else MEDLAKE_TIME_ZONE's, else UTC.
    let zone = match time_zone {
        Some(zone) => zone,
        None => local_time::ClinicalZone::from_env()?.unwrap_or_default(),
    };
    for udf in local_time::udfs(&zone) {
        ctx.register_udf(udf);
    }
    Ok(())
}

/// The engine's SQL functions an executor of a cluster has too (`medlake executor`,
/// `medlake scheduler`): DataFusion's, the bounded ones, Safe Harbor's, `fhir_view`,
/// `naive_date` (what `CAST(ts AS DATE)` becomes, date_cast.rs). Not the
/// keyed de-identification functions (their keys stay here), nor the clinical-clock ones (the
/// zone is this server's setting), nor a session's identity functions.
pub fn cluster_functions() -> Vec<Arc<datafusion::logical_expr::ScalarUDF>> {
    #[derive(Debug)]
    struct NoKeys;
    impl medlake_deid::Keys for NoKeys {
        fn key(&self, _name: &str) -> std::result::Result<Vec<u8>, String> {
            Err("keyed functions run only on the server".into())
        }
    }
    let ctx = SessionContext::new();
    for udf in medlake_deid::udfs(Arc::new(NoKeys)) {
        ctx.register_udf(udf);
    }
    ctx.register_udf(medlake_fhir::fhir_view_udf());
    bounded::install(&ctx);
    ctx.register_udf(date_cast::naive_date());
    ctx.state().scalar_functions().values().cloned().collect()
}

/// How an [`Engine`] is built ([`Engine::builder`]).
#[derive(Debug)]
pub struct EngineBuilder {
    location: String,
    runtime: Option<runtime::RuntimeSettings>,
    policy: medlake_source::Policy,
    connectors: medlake_source::Registry,
    audit: bool,
    users: access::owner::Directory,
    result_cache: Option<usize>,
    plan_cache: Option<usize>,
    alerts: medlake_alerts::Settings,
    time_zone: Option<local_time::ClinicalZone>,
    cluster: Option<medlake_cluster::Cluster>,
}

impl EngineBuilder {
    /// Runs queries on a Ballista cluster (`medlake serve --cluster`): every query reading a
    /// Delta table whose plan can cross ([`medlake_cluster`]); the others, and every write,
    /// run here. Privileges, masks and row filters are applied here first either way.
    pub fn cluster(mut self, cluster: medlake_cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The hospital's time zone for `local_date()`, `local_hour()` and `local_day_start()`
    /// (`[clinical] time_zone`; see [`local_time`]). Default: `MEDLAKE_TIME_ZONE`, else UTC.
    pub fn time_zone(mut self, zone: local_time::ClinicalZone) -> Self {
        self.time_zone = Some(zone);
        self
    }

    /// How alert rules are delivered, and whether this engine evaluates them
    /// ([`medlake_alerts::Settings::active`]: `medlake serve`). Webhooks reach only what the
    /// engine's source policy allows (`[sources] allowed_hosts`).
    pub fn alerts(mut self, settings: medlake_alerts::Settings) -> Self {
        self.alerts = settings;
        self
    }

    /// Bytes of query results kept for repeated queries ([`result_cache`]; `0` turns the
    /// cache off). Default: `MEDLAKE_RESULT_CACHE`, else 256 MiB.
    pub fn result_cache(mut self, bytes: usize) -> Self {
        self.result_cache = Some(bytes);
        self
    }

    /// Plans kept for statements prepared with parameters ([`plan_cache`]; `0` turns the
    /// cache off). Default: `MEDLAKE_PLAN_CACHE`, else 1024.
    pub fn plan_cache(mut self, plans: usize) -> Self {
        self.plan_cache = Some(plans);
        self
    }

    /// The users the server knows (its configuration's): a materialized view owned by one of
    /// them refreshes with that user's privileges, and grants name only known users or roles.
    /// Without it (the local command line, `--insecure-no-auth`) refreshes run as the
    /// operator and any name may be granted to.
    pub fn users(mut self, users: impl IntoIterator<Item = Principal>) -> Self {
        self.users = Some(Arc::new(
            users.into_iter().map(|p| (p.name.clone(), p)).collect(),
        ));
        self
    }

    /// Whether statements are recorded in `system.audit` (default: yes). Off only when the
    /// operator says so (`[audit] enabled = false`): the engine then records nothing, which a
    /// HIPAA deployment must not do; benchmarks measure the audit's cost this way.
    pub fn audit(mut self, enabled: bool) -> Self {
        self.audit = enabled;
        self
    }

    /// Memory and spill settings (default: [`runtime::RuntimeSettings::from_env`]).
    pub fn runtime(mut self, runtime: runtime::RuntimeSettings) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The operator's rules for external tables (default: [`medlake_source::Policy::strict`]).
    /// The policy gains the warehouse (its root and storage may never be read by an external
    /// table) and the spill folder as forbidden paths, and reaches the connectors through the
    /// session config (`SessionConfig::with_extension`), for every session of the engine.
    pub fn policy(mut self, policy: medlake_source::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Registers a connector for the `STORED AS` kinds it serves.
    pub fn with_connector(mut self, connector: impl medlake_source::Connector + 'static) -> Self {
        self.connectors = self.connectors.with(connector);
        self
    }

    /// Registers every connector of `connectors` (replacing those registered before for the
    /// same kinds).
    pub fn connectors(mut self, connectors: medlake_source::Registry) -> Self {
        self.connectors = self.connectors.merge(connectors);
        self
    }

    /// Opens the warehouse and starts the engine.
    pub async fn open(self) -> Result<Engine> {
        Engine::build(self).await
    }
}

impl Engine {
    /// Opens the warehouse at `location` (a local folder, `file://`, `az://`, `abfss://`,
    /// `s3://`, `gs://`) and starts a session over it.
    ///
    /// Memory and spilling follow `MEDLAKE_MEMORY_LIMIT` and `MEDLAKE_SPILL_DIR`
    /// ([`runtime::RuntimeSettings::from_env`]).
    pub async fn open(location: &str) -> Result<Self> {
        Self::open_with(location, runtime::RuntimeSettings::from_env()?).await
    }

    /// [`Engine::open`] with the given memory and spill settings instead of the environment's,
    /// and the permissive source policy of the local CLI ([`medlake_source::Policy::permissive`]:
    /// `${NAME}` falls back to the environment; never for `medlake serve`).
    pub async fn open_with(location: &str, runtime: runtime::RuntimeSettings) -> Result<Self> {
        Self::open_with_sources(location, runtime, medlake_source::Policy::permissive()).await
    }

    /// [`Engine::open_with`] with the operator's rules for external tables (see
    /// [`EngineBuilder::policy`]) and every connector medlake has ([`all_connectors`]).
    pub async fn open_with_sources(
        location: &str,
        runtime: runtime::RuntimeSettings,
        policy: medlake_source::Policy,
    ) -> Result<Self> {
        Self::builder(location)
            .runtime(runtime)
            .policy(policy)
            .connectors(all_connectors())
            .open()
            .await
    }

    /// An engine over the warehouse at `location`, configured step by step: no connector
    /// (every `STORED AS` is refused until one is registered with
    /// [`EngineBuilder::with_connector`]), the strict source policy, memory and spilling from
    /// the environment.
    pub fn builder(location: &str) -> EngineBuilder {
        EngineBuilder {
            location: location.to_string(),
            runtime: None,
            policy: medlake_source::Policy::strict(),
            connectors: medlake_source::Registry::new(),
            audit: true,
            users: None,
            result_cache: None,
            plan_cache: None,
            alerts: medlake_alerts::Settings::default(),
            time_zone: None,
            cluster: None,
        }
    }

    async fn build(builder: EngineBuilder) -> Result<Self> {
        let EngineBuilder {
            location,
            runtime,
            mut policy,
            connectors,
            audit,
            users,
            result_cache,
            plan_cache,
            alerts,
            time_zone,
            cluster,
        } = builder;
        let (result_cache, plan_cache) = cache_sizes(result_cache, plan_cache)?;
        let runtime = match runtime {
            Some(runtime) => runtime,
            None => runtime::RuntimeSettings::from_env()?,
        };
        let connectors = Arc::new(connectors);
        let location = location.as_str();
        let warehouse = Warehouse::open(location).await?;
        if let Ok(root) = warehouse.url().to_file_path() {
            policy.forbidden_paths.push(root);
        }
        if let Some(spill) = &runtime.spill_dir {
            policy.forbidden_paths.push(spill.clone());
        }
        policy.warehouse = Some(warehouse.url().clone());
        let policy = Arc::new(policy);
        let catalog = Arc::new(catalog::LakeCatalog::new(
            warehouse.clone(),
            policy.clone(),
            connectors.clone(),
        ));
        catalog.refresh().await?;
        let config = SessionConfig::new()
            .with_extension(policy.clone())
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            // deltalake's workaround: IN-list pushdown of hash joins can panic on the
            // dictionary-encoded partition values of Delta scans.
            .set_usize("datafusion.optimizer.hash_join_inlist_pushdown_max_size", 0)
            .set_usize(
                "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
                0,
            );
        // Bounded memory with spilling when a limit is set (runtime.rs); one pool for every
        // session, refresh and write of the process.
        if let Some(limit) = runtime.memory_limit {
            tracing::info!(memory_limit = limit, spill_dir = ?runtime.spill_dir, "bounded memory");
        }
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime.runtime_env()?)
            .with_query_planner(medlake_lake::delta_query_planner())
            .with_optimizer_rule(Arc::new(date_cast::DateCast::new()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(CATALOG, catalog.clone() as Arc<dyn CatalogProvider>);
        install_functions(&ctx, &policy, time_zone)?;
        postgres::install(&ctx, &catalog)?;
        ctx.register_udtf(
            "table_history",
            Arc::new(history::TableHistoryFunction {
                warehouse: warehouse.clone(),
            }),
        );
        // `table_changes(...)` is replaced before planning (changes.rs); this refuses the
        // calls that are not.
        ctx.register_udtf(changes::FUNCTION, Arc::new(changes::Unreplaced));
        // Object-store warehouses: DataFusion reads the tables' files through this store.
        if warehouse.url().scheme() != "file" {
            ctx.register_object_store(warehouse.url(), warehouse.object_store());
        }
        let state = ctx.state();
        let views = Views::new(warehouse.clone(), state.clone(), connectors.clone());
        cluster.iter().for_each(|c| views.set_cluster(c.clone()));
        views.prepare().await?;
        let access = Arc::new(access::Access::open(warehouse.clone()).await?);
        let audit = if audit {
            medlake_audit::AuditLog::open(warehouse.clone(), medlake_audit::Settings::default())
                .await?
        } else {
            tracing::warn!("auditing is off: statements are not recorded in system.audit");
            medlake_audit::AuditLog::disabled()
        };
        views.set_authority(Arc::new(access::owner::OwnerAuthority {
            access: access.clone(),
            directory: users.clone(),
            audit: audit.clone(),
        }));
        catalog.set_views(views.clone());
        let (alerts, metrics, evaluations) =
            alerting::open(&warehouse, &state, &views, &catalog, alerts, &policy).await?;
        let shared = Arc::new(Shared {
            warehouse,
            connectors,
            views,
            access,
            audit,
            users,
            sessions: AtomicU64::new(0),
            catalog,
            state,
            statements: AtomicU64::new(0),
            appenders: Default::default(),
            results: Arc::new(result_cache::ResultCache::new(result_cache)),
            plans: plan_cache::PlanCache::new(plan_cache),
            alerts,
            metrics,
            cluster,
        });
        alerting::spawn_evaluator(Arc::downgrade(&shared), evaluations);
        heartbeat::spawn(&shared);
        let default = Arc::new(Session::new(shared.clone(), Principal::local("local")));
        Ok(Self { shared, default })
    }

    /// The engine's Prometheus series: statement durations and open sessions by door,
    /// refresh durations and rows by view, each view's seconds since its last successful
    /// refresh, alert firings and deliveries by rule and status.
    pub async fn metrics_text(&self) -> String {
        let mut out = self.shared.metrics.text();
        alerting::metrics_text(&self.shared, &mut out).await;
        metrics::memory_text(
            &mut out,
            &self.shared.warehouse.kept_snapshots(),
            &self.shared.state.runtime_env().cache_manager,
        );
        out
    }

    /// Hits, misses and size of the result cache ([`result_cache`]).
    pub fn result_cache_stats(&self) -> result_cache::CacheStats {
        self.shared.results.stats()
    }

    /// Hits, misses and size of the plan cache ([`plan_cache`]).
    pub fn plan_cache_stats(&self) -> plan_cache::PlanCacheStats {
        self.shared.plans.stats()
    }

    /// The warehouse under this engine.
    pub fn warehouse(&self) -> &Warehouse {
        &self.shared.warehouse
    }

    /// The materialized views of the warehouse.
    pub fn views(&self) -> &Views {
        &self.shared.views
    }

    /// The scheduler of views with a `REFRESH EVERY` / `REFRESH CRON` schedule; `medlake
    /// serve` runs it.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler::new(self.shared.views.clone(), self.shared.state.clone())
    }

    /// Refreshes the view named `name` (as written in SQL), with its upstream views first when
    /// `cascade`; what `REFRESH MATERIALIZED VIEW` runs.
    pub async fn refresh(
        &self,
        name: &str,
        full: bool,
        cascade: bool,
    ) -> Result<Vec<RefreshOutcome>> {
        self.refresh_many(&[name], full, cascade).await
    }

    /// Refreshes the views `names` (as written in SQL), with their upstream views first, each
    /// once, when `cascade`; what `medlake refresh` runs.
    pub async fn refresh_many(
        &self,
        names: &[&str],
        full: bool,
        cascade: bool,
    ) -> Result<Vec<RefreshOutcome>> {
        let mut views = Vec::new();
        for name in names {
            let parsed =
                datafusion::sql::sqlparser::parser::Parser::new(&MedlakeDialect::default())
                    .try_with_sql(name)
                    .and_then(|mut p| p.parse_object_name(false))
                    .map_err(|e| Error::Syntax {
                        message: format!("'{name}' is not a view name: {e}"),
                    })?;
            views.push(self.default.table_name(&statement::name_parts(&parsed)?)?);
        }
        Ok(self
            .shared
            .views
            .refresh_many(&views, full, cascade, Trigger::Manual)
            .await?)
    }

    /// Copies every external table of schema `from` into a materialized view of the same name
    /// in schema `into` (`into.t AS SELECT * FROM from.t`, created on first use), at most
    /// `parallel` tables at a time: the original design's "copy the EHR's tables into bronze"
    /// pipeline. Each view is its own atomic commit, so a table whose source fails is left as
    /// it was and the others still land; `progress` hears of each table as it ends.
    pub async fn extract(
        &self,
        from: &str,
        into: &str,
        parallel: usize,
        progress: &(dyn Fn(&Extracted, usize, usize) + Send + Sync),
    ) -> Result<Vec<Extracted>> {
        use futures::StreamExt as _;
        let warehouse = &self.shared.warehouse;
        if !warehouse.schema_exists(into).await? {
            return Err(medlake_lake::Error::SchemaNotFound {
                schema: into.to_string(),
            }
            .into());
        }
        let mut sources = Vec::new();
        for table in warehouse.list_tables(from).await? {
            let name = TableName::new(from, table)?;
            if warehouse.external(&name).await?.is_some() {
                sources.push(name);
            }
        }
        if sources.is_empty() {
            return Err(Error::InvalidValue {
                what: format!("schema {from}"),
                reason: "holds no external tables (IMPORT FOREIGN SCHEMA or CREATE EXTERNAL TABLE first)".into(),
            });
        }
        let total = sources.len();
        let done = AtomicU64::new(0);
        let results: Vec<Extracted> = futures::stream::iter(sources)
            .map(|source| {
                let done = &done;
                async move {
                    let started = std::time::Instant::now();
                    let view = TableName::new(into, source.table.clone())?;
                    let (created, outcome) = self.extract_one(&source, &view).await;
                    let extracted = Extracted {
                        source,
                        view,
                        created,
                        outcome,
                        elapsed: started.elapsed(),
                    };
                    let n = done.fetch_add(1, Ordering::Relaxed) as usize + 1;
                    progress(&extracted, n, total);
                    Ok::<_, Error>(extracted)
                }
            })
            .buffer_unordered(parallel.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        self.shared.catalog.refresh().await?;
        Ok(results)
    }

    async fn extract_one(
        &self,
        source: &TableName,
        view: &TableName,
    ) -> (bool, std::result::Result<RefreshOutcome, Error>) {
        let existing = match self.shared.views.view(view).await {
            Ok(existing) => existing,
            Err(medlake_views::Error::Lake(medlake_lake::Error::TableNotFound { .. })) => None,
            Err(e) => return (false, Err(e.into())),
        };
        if existing.is_some() {
            let refreshed = self
                .shared
                .views
                .refresh(view, false, false, Trigger::Manual)
                .await
                .map_err(Error::from)
                .and_then(|outcomes| {
                    outcomes
                        .into_iter()
                        .find(|o| &o.view == view)
                        .ok_or_else(|| Error::Internal(format!("no outcome for {view}")))
                });
            return (false, refreshed);
        }
        let sql = format!(
            "CREATE MATERIALIZED VIEW \"{}\".\"{}\" AS SELECT * FROM \"{}\".\"{}\"",
            view.schema, view.table, source.schema, source.table
        );
        let create = match statement::parse_one(&sql) {
            Ok(Statement::CreateMaterializedView(create)) => *create,
            Ok(_) => return (false, Err(Error::Internal(format!("parsing {sql}")))),
            Err(e) => return (false, Err(e)),
        };
        let mut create = create;
        create.definition.default_schema = view.schema.clone();
        match self
            .shared
            .views
            .create(view, create, Trigger::Create)
            .await
        {
            Ok(Some(outcome)) => (true, Ok(outcome)),
            Ok(None) => (
                false,
                Err(Error::Internal(format!("{view} was not created"))),
            ),
            Err(e) => (false, Err(e.into())),
        }
    }

    /// A new session for `principal` (one per client connection): every statement it runs
    /// is checked against the principal's privileges; settings changed with `SET` stay in it.
    /// Doors call [`Engine::session_for_at`] with the principal they authenticated, never
    /// [`Engine::local_session`].
    pub fn session_for(&self, principal: Principal) -> Session {
        Session::new(self.shared.clone(), principal)
    }

    /// A session for `principal` whose statements come from `origin` (which door, which
    /// client address: recorded in `system.audit`).
    pub fn session_for_at(&self, principal: Principal, origin: Origin) -> Session {
        Session::at(self.shared.clone(), principal, Some(origin))
    }

    /// A new session of the local operator (an admin): for the command line on the
    /// server's own machine and for tests, never for a network client.
    pub fn local_session(&self) -> Session {
        Session::new(self.shared.clone(), Principal::local("local"))
    }

    /// Runs every statement of `sql` in the engine's default session; see [`Session::sql`].
    pub async fn sql(&self, sql: &str) -> Result<Vec<Output>> {
        self.default.sql(sql).await
    }

    /// Runs `sql` in the default session and collects the rows of its last statement.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.default.query(sql).await
    }

    /// Runs one statement in the default session.
    pub async fn execute(&self, statement: Statement) -> Result<Output> {
        self.default.execute(statement).await
    }
}

/// A statement prepared with parameters: its text with placeholders, and one execution's
/// values ([`Session::execute_bound`]).
struct Template {
    statement: datafusion::sql::parser::Statement,
    values: Vec<datafusion::scalar::ScalarValue>,
}

impl Session {
    fn new(shared: Arc<Shared>, principal: Principal) -> Self {
        Self::at(shared, principal, None)
    }

    fn at(shared: Arc<Shared>, principal: Principal, origin: Option<Origin>) -> Self {
        let ctx = SessionContext::new_with_state(shared.state.clone());
        let id = shared.sessions.fetch_add(1, Ordering::Relaxed);
        // Who is asking: current_user(), is_member(), has_table_privilege() answer for this
        // session's principal.
        for udf in access::functions::udfs(principal.clone(), shared.access.clone()) {
            ctx.register_udf(udf);
        }
        // What pg_catalog lists for it (scans of pg_class, pg_attribute, ... ask).
        ctx.state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(access::CatalogViewer::new(
                principal.clone(),
                shared.access.clone(),
            )));
        let session = Self {
            shared,
            ctx,
            principal,
            prepared: Default::default(),
            break_glass: Default::default(),
            origin,
            id,
            touched: Default::default(),
            listening: Default::default(),
        };
        session.shared.metrics.session(session.door().as_str(), 1);
        session
    }

    /// Who runs this session's statements.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Checks that this session's principal may push rows into `table` (the HTTP ingest
    /// door asks before reading a request's body).
    pub fn authorize_ingest(&self, table: &TableName) -> Result<()> {
        privileges::check(
            &self.principal,
            &self.shared.access.store.cached(),
            &[privileges::Need {
                privilege: Privilege::Insert,
                object: table_object(table),
            }],
        )
    }

    /// Checks the privileges one of our own statements needs.
    fn check_own(&self, statement: &Statement, state: &medlake_auth::AccessState) -> Result<()> {
        let needs = privileges::for_own(statement, |parts| {
            Ok(table_object(&self.table_name(parts)?))
        })?;
        self.touch(&needs);
        privileges::check(&self.principal, state, &needs)
    }

    /// Checks the privileges a planned SQL statement needs.
    fn check_plan(
        &self,
        plan: &LogicalPlan,
        state: &medlake_auth::AccessState,
    ) -> Result<Vec<privileges::Need>> {
        use datafusion::logical_expr::Statement as PlanStatement;
        if let LogicalPlan::Statement(
            PlanStatement::SetVariable(datafusion::logical_expr::SetVariable { variable, .. })
            | PlanStatement::ResetVariable(datafusion::logical_expr::ResetVariable { variable }),
        ) = plan
            && privileges::operator_only(variable)
        {
            return Err(Error::PermissionDenied {
                principal: self.principal.to_string(),
                privilege: "SET",
                object: format!(
                    "setting {variable} (the server's memory and spill settings are the operator's: MEDLAKE_MEMORY_LIMIT, MEDLAKE_SPILL_DIR)"
                ),
            });
        }
        let needs = privileges::for_plan(plan, &self.default_schema_name())?;
        self.touch(&needs);
        privileges::check(&self.principal, state, &needs)?;
        Ok(needs)
    }

    /// Notes the tables a statement reads and writes, for its audit event.
    fn touch(&self, needs: &[privileges::Need]) {
        let (read, written) = audit::objects(needs);
        let mut touched = self
            .touched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        touched.0.extend(read);
        touched.1.extend(written);
    }

    /// Parses and runs every statement of `sql` in order, returning each one's output.
    /// Query outputs are streams: consume them in order.
    pub async fn sql(&self, sql: &str) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for statement in self.parse(sql)? {
            outputs.push(self.execute(statement).await?);
        }
        Ok(outputs)
    }

    /// Parses `sql` for this session. Text that does not parse is audited as the error it is
    /// (normalized, as every statement), so probing with malformed SQL leaves a trace.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        self.audit_unparsed(sql, parse(sql))
    }

    /// [`split`] for this session: text that does not split is audited like [`Self::parse`].
    pub fn split(&self, sql: &str) -> Result<Vec<String>> {
        self.audit_unparsed(sql, split(sql))
    }

    /// Audits `sql` as the error `parsed` is, if it is one.
    pub fn audit_unparsed<T>(&self, sql: &str, parsed: Result<T>) -> Result<T> {
        parsed.or_else(|e| {
            self.audit_door_statement(sql, Some(e.code()))?;
            Err(e)
        })
    }

    /// Runs `sql` and collects the rows of its last statement.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let mut last = Vec::new();
        for output in self.sql(sql).await? {
            last = output.collect().await?;
        }
        Ok(last)
    }

    /// Runs one statement, audited (`system.audit`): refused while the audit log cannot be
    /// written; a command is acknowledged once its event is committed.
    pub async fn execute(&self, statement: Statement) -> Result<Output> {
        self.execute_with(statement, None).await
    }

    /// Runs a statement prepared with parameters (`$1`, ...) with one execution's `values`:
    /// as [`Self::execute`] of the statement with the values bound into its text (that is what
    /// is audited and what the result cache is keyed by), planned once per statement shape by
    /// the plan cache ([`plan_cache`]) and only bound at each later execution.
    pub async fn execute_bound(
        &self,
        statement: &Statement,
        values: Vec<datafusion::scalar::ScalarValue>,
    ) -> Result<Output> {
        let bound = statement::bind(statement, values.clone())?;
        let template = match statement {
            Statement::Sql(sql) if !values.is_empty() && self.shared.plans.enabled() => {
                Some(Template {
                    statement: (**sql).clone(),
                    values,
                })
            }
            _ => None,
        };
        self.execute_with(bound, template).await
    }

    async fn execute_with(
        &self,
        statement: Statement,
        template: Option<Template>,
    ) -> Result<Output> {
        self.audit_available()?;
        let event = self.audit_event(&statement);
        let started = std::time::Instant::now();
        let result = Box::pin(self.run(statement, template)).await;
        let result = self.audited(event, started, result).await;
        self.shared.metrics.statement(
            self.door().as_str(),
            result.is_ok(),
            started.elapsed().as_secs_f64(),
        );
        result
    }

    /// `CREATE [OR REPLACE] MATERIALIZED VIEW`: its creator must read what it reads; replacing
    /// one is its owner's; the creator owns it.
    async fn create_view(&self, create: medlake_views::CreateView) -> Result<Output> {
        let mut create = create;
        let name = self.table_name(&medlake_views::definition::name_parts(&create.name)?)?;
        create.definition.default_schema = self.default_schema_name();
        self.resolve_auto_cdc(&mut create.definition).await?;
        statement::check_query_depth(&create.definition.query)?;
        statement::refuse_changes_in_view(&create.definition.query)?;
        if create.or_replace
            && self.shared.warehouse.table_exists(&name).await?
            && self.shared.views.view(&name).await?.is_some()
        {
            // Replacing a view replaces what everyone who reads it reads: its
            // owner's (or an admin's) decision, like DROP.
            privileges::check(
                &self.principal,
                &*self.access_state().await?,
                &[privileges::Need {
                    privilege: Privilege::Owner,
                    object: Object::Table {
                        schema: name.schema.clone(),
                        table: name.table.clone(),
                    },
                }],
            )?;
        }
        self.check_view_reads(&create.definition).await?;
        self.check_view_masks(&create.definition.query).await?;
        if create.or_replace {
            // A new query over other inputs: its owner declassifies it again if
            // it may.
            self.undeclassify(&name).await?;
        }
        let outcome = self
            .shared
            .views
            .create(&name, create, Trigger::Create)
            .await;
        // The listings changed (or raced); the statement's own error comes first.
        let listed = self.shared.catalog.refresh().await;
        self.shared.access.forget_lineage();
        let rows = outcome?.map_or(0, |o| o.rows_written);
        listed?;
        self.record_owner(medlake_auth::Securable::table(&name.schema, &name.table))
            .await?;
        let rows = self.reportable_rows(&name, rows).await?;
        Ok(Output::command("CREATE MATERIALIZED VIEW", rows))
    }

    /// An `AUTO CDC` view's query, computed from its source's columns (nothing to do for
    /// other views). The source must exist (42P01) and be listed by this session's principal
    /// (42501, as DESCRIBE: the errors name its columns); its SELECT privilege and masks are
    /// checked on the computed query like any view's.
    async fn resolve_auto_cdc(&self, definition: &mut medlake_views::ViewDefinition) -> Result<()> {
        let Some(cdc) = &definition.auto_cdc else {
            return Ok(());
        };
        let parts = medlake_views::definition::name_parts(&cdc.source_name()?)?;
        let source = self.table_name(&parts)?;
        if !self.shared.warehouse.table_exists(&source).await? {
            return Err(Error::Lake(medlake_lake::Error::TableNotFound {
                schema: source.schema,
                table: source.table,
            }));
        }
        let Some(schema) = self.table_columns(&source.schema, &source.table).await? else {
            tracing::warn!(target: "medlake::audit", principal = %self.principal.name, table = %source, "permission denied: AUTO CDC source");
            return Err(Error::PermissionDenied {
                principal: self.principal.to_string(),
                privilege: "SELECT",
                object: format!("table {source}"),
            });
        };
        definition.resolve(&schema)?;
        Ok(())
    }

    async fn run(&self, statement: Statement, template: Option<Template>) -> Result<Output> {
        let id = self.shared.statements.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("statement", id);
        async move {
            if !matches!(statement, Statement::Sql(_)) {
                let state = self.access_state().await?;
                self.check_own(&statement, &state)?;
            }
            match statement {
                Statement::Sql(statement) => self.execute_sql(*statement, id, template).await,
                Statement::Access(access) => self.execute_access(*access).await,
                Statement::CreateMaterializedView(create) => self.create_view(*create).await,
                Statement::RefreshMaterializedView {
                    name,
                    full,
                    cascade,
                } => {
                    let name = self.table_name(&statement::name_parts(&name)?)?;
                    let outcomes = self
                        .shared
                        .views
                        .refresh(&name, full, cascade, Trigger::Manual)
                        .await?;
                    let rows = outcomes
                        .iter()
                        .find(|o| o.view == name)
                        .map_or(0, |o| o.rows_written);
                    let rows = self.reportable_rows(&name, rows).await?;
                    Ok(Output::command("REFRESH MATERIALIZED VIEW", rows))
                }
                Statement::ExplainRefresh { name } => {
                    let name = self.table_name(&statement::name_parts(&name)?)?;
                    self.explain_refresh(&name).await
                }
                Statement::DropMaterializedView { name, if_exists } => {
                    let name = self.table_name(&statement::name_parts(&name)?)?;
                    let dropped = self.shared.views.drop(&name, if_exists).await;
                    let listed = self.shared.catalog.refresh().await;
                    dropped?;
                    listed?;
                    self.forget(&name.schema, Some(&name.table)).await?;
                    Ok(Output::command("DROP MATERIALIZED VIEW", 0))
                }
                Statement::ShowMaterializedViews => {
                    let batch = medlake_views::system::materialized_views(
                        &self.shared.views,
                        &self.shared.state,
                    )
                    .await?;
                    Ok(Output::batch(batch))
                }
                Statement::DescribeHistory { table, limit } => {
                    let name = self.table_name(&statement::name_parts(&table)?)?;
                    self.describe_history(&name, limit).await
                }
                Statement::Optimize { table, zorder } => self.optimize(&table, zorder).await,
                Statement::ClusterBy { table, columns } => {
                    let name = self.table_name(&statement::name_parts(&table)?)?;
                    self.check_writable(&name, "ALTER TABLE ... CLUSTER BY")
                        .await?;
                    self.shared
                        .warehouse
                        .set_cluster_by(&name, &columns)
                        .await?;
                    Ok(Output::command("ALTER TABLE", 0))
                }
                Statement::SetTableProperties { table, properties } => {
                    let name = self.table_name(&statement::name_parts(&table)?)?;
                    self.check_writable(&name, "ALTER TABLE ... SET TBLPROPERTIES")
                        .await?;
                    self.shared
                        .warehouse
                        .set_table_properties(&name, &properties)
                        .await?;
                    Ok(Output::command("ALTER TABLE", 0))
                }
                Statement::Vacuum {
                    table,
                    retain_hours,
                    dry_run,
                    force,
                } => self.vacuum(&table, retain_hours, dry_run, force).await,
                Statement::Alert(alert) => self.alert_statement(alert).await,
                Statement::RestoreTable { table, to } => self.restore_table(&table, &to).await,
                Statement::Erase(erase) => {
                    let erased = self.erase(erase).await;
                    // Results kept from before hold the patient's rows: none may stay (nor
                    // plans of the snapshots before the erasure).
                    self.shared.results.clear();
                    self.shared.plans.clear();
                    erased
                }
                Statement::CloneTable {
                    target,
                    source,
                    at,
                    deep,
                    if_not_exists,
                } => {
                    self.clone_table(&target, &source, at.as_ref(), deep, if_not_exists)
                        .await
                }
                Statement::ImportForeignSchema(import) => {
                    let imported = self.import_foreign_schema(*import).await;
                    let listed = self.shared.catalog.refresh().await;
                    let batch = imported?;
                    listed?;
                    Ok(Output::batch(batch))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// `OPTIMIZE t [ZORDER BY (...)]`; never `system.audit`, whose files its chain covers.
    async fn optimize(
        &self,
        table: &datafusion::sql::sqlparser::ast::ObjectName,
        zorder: Vec<String>,
    ) -> Result<Output> {
        let name = self.table_name(&statement::name_parts(table)?)?;
        if name.schema == medlake_audit::SCHEMA && name.table == medlake_audit::TABLE {
            return Err(Error::ReadOnly {
                what: "system.audit is append-only (OPTIMIZE would rewrite the files its hash chain covers)".into(),
            });
        }
        // A materialized view is clustered as its definition says (views made before the
        // table property existed have it only there).
        let cluster_by = match self.shared.views.view(&name).await? {
            Some(view) => view.definition.cluster_by,
            None => Vec::new(),
        };
        let outcome = self
            .shared
            .warehouse
            .optimize(&name, zorder, &cluster_by, None, Arc::new(self.ctx.state()))
            .await?;
        Ok(Output::batch(record_batch(vec![
            ("table", text([name.to_string()])),
            ("version", int([outcome.version])),
            ("files_added", int([outcome.files_added])),
            ("files_removed", int([outcome.files_removed])),
        ])?))
    }

    /// `VACUUM t [RETAIN n HOURS] [DRY RUN] [FORCE]`; `system.audit` keeps six years unless
    /// an auditor (the only one who gets here for it) forces less.
    async fn vacuum(
        &self,
        table: &datafusion::sql::sqlparser::ast::ObjectName,
        retain_hours: Option<u64>,
        dry_run: bool,
        force: bool,
    ) -> Result<Output> {
        let name = self.table_name(&statement::name_parts(table)?)?;
        let retain = retain_hours.map(|h| Duration::from_secs(h.saturating_mul(3600)));
        if name.schema == medlake_audit::SCHEMA && name.table == medlake_audit::TABLE {
            medlake_audit::check_vacuum(retain.unwrap_or(medlake_audit::MIN_RETENTION), force)?;
        }
        let outcome = self
            .shared
            .warehouse
            .vacuum(&name, retain, dry_run, force)
            .await?;
        Ok(Output::batch(record_batch(vec![(
            "path",
            text(outcome.files),
        )])?))
    }

    /// Writes Arrow batches into a table in one commit (Flight SQL ingest): creates the table
    /// from the batches' schema when it is missing and `how.create` allows it (table and rows
    /// in version 0), appends or replaces when it exists. The table's schema is enforced as for
    /// INSERT: a mismatched or NULL-in-NOT-NULL batch refuses the whole write.
    pub async fn ingest(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        how: Ingest,
    ) -> Result<u64> {
        self.audit_available()?;
        let mut event = self.audit_event(&Statement::ShowMaterializedViews);
        event.statement = medlake_audit::Statement::normalize(&format!("INGEST INTO {name}"));
        event.kind = "INGEST".into();
        event.objects_written = vec![name.to_lowercase()];
        let started = std::time::Instant::now();
        let result = self
            .ingest_unaudited(name, schema, batches, how)
            .await
            .map(|rows| Output::command("INGEST", rows));
        match self.audited(event, started, result).await? {
            Output::Command { rows, .. } => Ok(rows),
            Output::Rows(_) => Err(Error::Internal("an ingest returned rows".into())),
        }
    }

    async fn ingest_unaudited(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        how: Ingest,
    ) -> Result<u64> {
        use datafusion::datasource::{MemTable, provider_as_source};
        use datafusion::logical_expr::LogicalPlanBuilder;
        let parts: Vec<String> = name.split('.').map(str::to_string).collect();
        let table = self.table_name(&parts)?;
        self.authorize_ingest(&table)?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let provider = MemTable::try_new(schema.clone(), vec![batches.clone()])?;
        let plan =
            LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(provider)), None)?
                .build()?;
        let session: Arc<dyn datafusion::catalog::Session> = Arc::new(self.ctx.state());
        // A table already held open for appends was checked when it was opened.
        if matches!(how.exists, IfExists::Append) && self.appender_open(&table) {
            match self
                .append_grouped(&table, schema.clone(), batches.clone(), rows)
                .await
            {
                Err(Error::Lake(medlake_lake::Error::TableNotFound { .. })) if how.create => {}
                appended => return appended,
            }
        }
        self.check_writable(&table, "ingest into").await?;
        let warehouse = &self.shared.warehouse;
        let exists = warehouse.table_exists(&table).await?;
        let written = match (exists, how.exists) {
            (false, _) if !how.create => {
                return Err(Error::Lake(medlake_lake::Error::TableNotFound {
                    schema: table.schema.clone(),
                    table: table.table.clone(),
                }));
            }
            (false, _) => {
                privileges::check(
                    &self.principal,
                    self.access_state().await?.as_ref(),
                    &[privileges::Need {
                        privilege: Privilege::Create,
                        object: table_object(&table),
                    }],
                )?;
                let rows = warehouse
                    .create_table_as(&table, plan, session, false)
                    .await?
                    .map(|o| o.rows)
                    .unwrap_or(0);
                self.record_owner(medlake_auth::Securable::table(&table.schema, &table.table))
                    .await?;
                rows
            }
            (true, IfExists::Fail) => {
                return Err(Error::Lake(medlake_lake::Error::TableExists {
                    schema: table.schema.clone(),
                    table: table.table.clone(),
                }));
            }
            (true, IfExists::Append) => {
                return self.append_grouped(&table, schema, batches, rows).await;
            }
            (true, IfExists::Replace) => {
                // Replacing removes every row: DELETE as well as INSERT.
                privileges::check(
                    &self.principal,
                    self.access_state().await?.as_ref(),
                    &[privileges::Need {
                        privilege: Privilege::Delete,
                        object: table_object(&table),
                    }],
                )?;
                self.refuse_restricted_overwrite(&table, "a replacing ingest")
                    .await?;
                warehouse
                    .write(&table, plan, session, WriteMode::Overwrite)
                    .await?
                    .rows
            }
        };
        self.shared.catalog.refresh().await?;
        Ok(written)
    }

    /// Whether the engine holds `table` open for ingest appends.
    fn appender_open(&self, table: &TableName) -> bool {
        self.shared
            .appenders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(table)
            .is_some_and(|group| group.is_open())
    }

    /// What `statement` takes and returns, without running it. Side-effect free: commands
    /// are planned, not run. A statement refused or failing here (a prepare: the extended
    /// protocol's Parse/Describe, a Flight SQL prepared statement) is audited then, since it
    /// may never be executed; one that succeeds is audited when it runs.
    pub async fn describe(&self, statement: &Statement) -> Result<Description> {
        let started = std::time::Instant::now();
        let result = self.describe_unaudited(statement).await;
        if let Err(error) = &result {
            self.audit_failure(statement, error, started)?;
        }
        result
    }

    async fn describe_unaudited(&self, statement: &Statement) -> Result<Description> {
        let static_columns = |columns: Vec<(&str, arrow::datatypes::DataType)>| {
            Some(Arc::new(Schema::new(
                columns
                    .into_iter()
                    .map(|(n, t)| Field::new(n, t, false))
                    .collect::<Vec<_>>(),
            )) as SchemaRef)
        };
        let no_parameters = |columns| Description {
            parameters: Vec::new(),
            columns,
        };
        use arrow::datatypes::DataType as T;
        let state = self.access_state().await?;
        if !matches!(statement, Statement::Sql(_)) {
            self.check_own(statement, &state)?;
        }
        match statement {
            Statement::Sql(sql) => {
                let id = self.shared.statements.fetch_add(1, Ordering::Relaxed);
                let mut sql = (**sql).clone();
                let pinned = statement::pin_versions(&mut sql, id)?;
                self.refresh_listings_for(&sql).await?;
                let planned = match self.register_pins(&pinned).await {
                    Ok(_) => match self.ctx.state().statement_to_plan(sql.clone()).await {
                        Ok(plan) => Ok(plan),
                        Err(e) => Err(self.refuse_unlisted(&sql, unwrap_lake_error(e)).await),
                    },
                    Err(e) => Err(e),
                };
                self.deregister_pins(&pinned)?;
                let plan = planned?;
                self.check_plan(&plan, &state)?;
                let types = plan.get_parameter_types()?;
                let count = types
                    .keys()
                    .filter_map(|k| k.trim_start_matches('$').parse::<usize>().ok())
                    .max()
                    .unwrap_or(0);
                let parameters = (1..=count)
                    .map(|i| types.get(&format!("${i}")).cloned().flatten())
                    .collect();
                let columns = match &plan {
                    LogicalPlan::Ddl(_)
                    | LogicalPlan::Dml(_)
                    | LogicalPlan::Copy(_)
                    | LogicalPlan::Statement(_) => None,
                    plan => Some(Arc::new(plan.schema().as_arrow().clone()) as SchemaRef),
                };
                Ok(Description {
                    parameters,
                    columns,
                })
            }
            // Read-only: run them and keep the schema of their rows.
            Statement::Access(access)
                if !matches!(**access, access::parse::AccessStatement::ShowGrants { .. }) =>
            {
                Ok(no_parameters(None))
            }
            Statement::ShowMaterializedViews
            | Statement::DescribeHistory { .. }
            | Statement::Access(_) => match self.execute(statement.clone()).await? {
                Output::Rows(stream) => Ok(no_parameters(Some(stream.schema()))),
                Output::Command { .. } => Ok(no_parameters(None)),
            },
            Statement::Optimize { .. } => Ok(no_parameters(static_columns(vec![
                ("table", T::Utf8),
                ("version", T::Int64),
                ("files_added", T::Int64),
                ("files_removed", T::Int64),
            ]))),
            Statement::Vacuum { .. } => Ok(no_parameters(static_columns(vec![("path", T::Utf8)]))),
            Statement::Erase(_) => Ok(no_parameters(static_columns(vec![
                ("table", T::Utf8),
                ("rows_erased", T::Int64),
                ("identifiers", T::Int64),
                ("status", T::Utf8),
            ]))),
            Statement::RestoreTable { .. } => {
                Ok(no_parameters(static_columns(restore::COLUMNS.to_vec())))
            }
            Statement::CloneTable { .. }
            | Statement::ClusterBy { .. }
            | Statement::SetTableProperties { .. } => Ok(no_parameters(None)),
            Statement::Alert(medlake_alerts::AlertStatement::Show) => {
                Ok(no_parameters(Some(medlake_alerts::tables::rules_schema())))
            }
            Statement::Alert(_) => Ok(no_parameters(None)),
            Statement::ImportForeignSchema(_) => Ok(no_parameters(static_columns(vec![
                ("table", T::Utf8),
                ("remote_table", T::Utf8),
                ("status", T::Utf8),
            ]))),
            Statement::ExplainRefresh { .. } => Ok(no_parameters(Some(explain_refresh::schema()))),
            Statement::CreateMaterializedView(_)
            | Statement::RefreshMaterializedView { .. }
            | Statement::DropMaterializedView { .. } => Ok(no_parameters(None)),
        }
    }

    /// The session's default schema (Postgres `search_path`).
    pub fn default_schema(&self) -> String {
        self.default_schema_name()
    }

    /// Changes the session's default schema (Postgres `SET search_path`).
    pub fn set_default_schema(&self, schema: &str) -> Result<()> {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        state.config_mut().options_mut().catalog.default_schema = schema.to_string();
        Ok(())
    }

    fn default_schema_name(&self) -> String {
        self.ctx
            .state()
            .config()
            .options()
            .catalog
            .default_schema
            .clone()
    }

    /// Refuses writes to the `system` schema and plain-table writes to materialized views.
    async fn check_writable(&self, name: &TableName, what: &str) -> Result<()> {
        self.shared.check_writable(name, what).await
    }

    /// Resolves a written table name (1 to 3 parts) against the session's defaults
    /// (`SET datafusion.catalog.default_schema = 'bronze'` changes the default schema).
    fn table_name(&self, parts: &[String]) -> Result<TableName> {
        let default_schema = self
            .ctx
            .state()
            .config()
            .options()
            .catalog
            .default_schema
            .clone();
        let (catalog, schema, table) = match parts {
            [table] => (CATALOG, default_schema.as_str(), table.as_str()),
            [schema, table] => (CATALOG, schema.as_str(), table.as_str()),
            [catalog, schema, table] => (catalog.as_str(), schema.as_str(), table.as_str()),
            _ => {
                return Err(Error::InvalidValue {
                    what: "table name".into(),
                    reason: format!("'{}' has too many parts", parts.join(".")),
                });
            }
        };
        self.check_catalog(catalog)?;
        if schema == TIME_TRAVEL_SCHEMA {
            return Err(Error::NotSupported {
                what: "writing to a past version of a table".into(),
            });
        }
        Ok(TableName::new(schema, table)?)
    }

    fn check_catalog(&self, catalog: &str) -> Result<()> {
        if catalog == CATALOG {
            Ok(())
        } else {
            Err(Error::InvalidValue {
                what: "catalog".into(),
                reason: format!("there is no catalog '{catalog}'; the catalog is '{CATALOG}'"),
            })
        }
    }

    fn resolve(&self, reference: &TableReference) -> Result<TableName> {
        let parts: Vec<String> = match reference {
            TableReference::Bare { table } => vec![table.to_string()],
            TableReference::Partial { schema, table } => {
                vec![schema.to_string(), table.to_string()]
            }
            TableReference::Full {
                catalog,
                schema,
                table,
            } => vec![catalog.to_string(), schema.to_string(), table.to_string()],
        };
        self.table_name(&parts)
    }

    async fn execute_sql(
        &self,
        mut statement: datafusion::sql::parser::Statement,
        id: u64,
        template: Option<Template>,
    ) -> Result<Output> {
        let pinned = statement::pin_versions(&mut statement, id)?;
        self.refresh_listings_for(&statement).await?;
        let template = template.filter(|_| pinned.is_empty());
        let key = if pinned.is_empty() {
            self.cache_key(&statement, template.is_some()).await?
        } else {
            None
        };
        // The plan cache's key: the same, with the template's text.
        let plan_key = match (&template, &key) {
            (Some(template), Some(key)) => Some(result_cache::Key {
                sql: template.statement.to_string(),
                ..key.clone()
            }),
            _ => None,
        };
        let key = key.filter(|_| self.shared.results.enabled());
        if let Some(key) = &key
            && let Some(hit) = self.shared.results.get(key)
        {
            self.touch(&hit.needs);
            let state = self.access_state().await?;
            privileges::check(&self.principal, &state, &hit.needs)?;
            return Ok(Output::Rows(hit.stream));
        }
        if let (Some(plan_key), Some(template)) = (plan_key, template)
            && let Some(output) = self.run_template(plan_key, template, key.clone()).await?
        {
            return Ok(output);
        }
        let registered = self.register_pins(&pinned).await;
        let result = match registered {
            // Boxed: planning and running nest deep futures; on the caller's stack they
            // overflow a 2 MiB thread in debug builds.
            Ok(aliases) => Box::pin(self.plan_and_run(statement, &aliases, key)).await,
            Err(e) => Err(e),
        };
        self.deregister_pins(&pinned)?;
        result
    }

    /// Opens what each pinned reference of a statement reads (a past version, a range of
    /// changes) into the time-travel schema, and returns the table each alias reads. A pin
    /// is a read of its table: this session's principal must hold SELECT on it before it is
    /// opened, so that a table it may not read tells nothing of its versions, its history or
    /// its existence (the plan is checked again as a whole, and masked and filtered, like
    /// any other).
    async fn register_pins(
        &self,
        pinned: &[statement::PinnedTable],
    ) -> Result<HashMap<String, access::TableKey>> {
        let mut aliases = HashMap::new();
        if pinned.is_empty() {
            return Ok(aliases);
        }
        let state = self.access_state().await?;
        for pin in pinned {
            let name = self.table_name(&pin.parts)?;
            let needs = [privileges::Need::new(
                Privilege::Select,
                table_object(&name),
            )];
            self.touch(&needs);
            privileges::check(&self.principal, &state, &needs)?;
            let warehouse = &self.shared.warehouse;
            if pin.at != statement::Pin::History && self.is_quarantine(&name).await? {
                return Err(Error::NotSupported {
                    what: format!(
                        "reading past versions or changes of {name}, a materialized view's \
                         quarantine (its rows are protected through the view's current \
                         definition, which earlier rows may not share); read its current rows"
                    ),
                });
            }
            let provider = match &pin.at {
                statement::Pin::AsOf(at) => {
                    let (provider, version) = warehouse.table_provider(&name, Some(at)).await?;
                    debug!(table = %name, version, "pinned for time travel");
                    if self.shared.views.view(&name).await?.is_some()
                        && let Err(since) =
                            changes::same_definition_since(warehouse, &name, version).await?
                    {
                        return Err(Error::NotSupported {
                            what: format!(
                                "reading {name} at version {version}: the materialized view \
                                     was redefined at version {since}, and its masks and row \
                                     filters follow its current definition; read a version \
                                     from {since} on"
                            ),
                        });
                    }
                    provider
                }
                statement::Pin::History => {
                    // The history's row counts would tell what the table's row filter
                    // hides from this principal.
                    if self.row_filtered(&name).await? {
                        return Err(Error::PermissionDenied {
                            principal: self.principal.name.clone(),
                            privilege: "SELECT",
                            object: format!(
                                "the history of {name} (its row counts would tell rows its row \
                                 filter hides from you)"
                            ),
                        });
                    }
                    continue;
                }
                statement::Pin::Changes { from, to } => {
                    let view = self.shared.views.view(&name).await?.is_some();
                    changes::provider(warehouse, &name, from, to.as_ref(), view).await?
                }
            };
            self.shared
                .catalog
                .time_travel()
                .register_table(pin.alias.clone(), provider)?;
            aliases.insert(pin.alias.clone(), (name.schema, name.table));
        }
        Ok(aliases)
    }

    /// Whether `name` is the quarantine table of a materialized view.
    async fn is_quarantine(&self, name: &TableName) -> Result<bool> {
        let Some(view) = name.table.strip_suffix(medlake_views::QUARANTINE_SUFFIX) else {
            return Ok(false);
        };
        let Ok(view) = TableName::new(&name.schema, view) else {
            return Ok(false);
        };
        Ok(self.shared.views.view(&view).await?.is_some())
    }

    /// Removes a statement's pins from the time-travel schema (those registered).
    fn deregister_pins(&self, pinned: &[statement::PinnedTable]) -> Result<()> {
        for pin in pinned.iter().filter(|p| p.at != statement::Pin::History) {
            self.shared
                .catalog
                .time_travel()
                .deregister_table(&pin.alias)?;
        }
        Ok(())
    }

    /// Tables are always opened from the warehouse, but the names DataFusion plans against
    /// (schemas; table lists for SHOW and information_schema) are a cache. Re-list the
    /// warehouse only when a statement needs it: it lists tables, or names a schema the cache
    /// does not know (created by another process). Plain queries list nothing.
    async fn refresh_listings_for(
        &self,
        statement: &datafusion::sql::parser::Statement,
    ) -> Result<()> {
        let references = self.ctx.state().resolve_table_references(statement)?;
        let known = self.shared.catalog.schema_names();
        let stale = references.iter().any(|reference| match reference.schema() {
            Some("information_schema" | postgres::PG_CATALOG) => true,
            Some(TIME_TRAVEL_SCHEMA) | None => false,
            Some(schema) => !known.iter().any(|k| k == schema),
        });
        if stale {
            self.shared.catalog.refresh().await?;
        }
        Ok(())
    }

    async fn plan_and_run(
        &self,
        statement: datafusion::sql::parser::Statement,
        aliases: &HashMap<String, access::TableKey>,
        key: Option<result_cache::Key>,
    ) -> Result<Output> {
        let mut statement = statement;
        let cluster_by = statement::take_cluster_by(&mut statement)?;
        self.check_described(&statement).await?;
        let plan = match self.ctx.state().statement_to_plan(statement.clone()).await {
            Ok(plan) => plan,
            Err(e) => {
                return Err(self.refuse_unlisted(&statement, unwrap_lake_error(e)).await);
            }
        };
        if let Some(output) = self.set_or_reset_break_glass(&plan).await? {
            return Ok(output);
        }
        let access = self.access_state().await?;
        let needs = self.check_plan(&plan, &access)?;
        // Masks and row filters, for every statement that reads a table.
        let explained = matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        let unprotected = explained.then(|| plan.clone());
        let plan = self.protect(plan, &access, aliases).await?;
        if let Some(unprotected) = unprotected
            && unprotected != plan
        {
            return self.explain_protected(plan).await;
        }
        match plan {
            LogicalPlan::Ddl(ddl) => {
                let output = self.execute_ddl(ddl, cluster_by).await;
                // Our own DDL changed the listings (even a failed one may have raced another).
                self.shared.catalog.refresh().await?;
                output
            }
            LogicalPlan::Dml(dml) => self.execute_dml(dml).await,
            // DataFusion would run these writes itself, around the lake's write path.
            LogicalPlan::Analyze(analyze)
                if matches!(analyze.input.as_ref(), LogicalPlan::Dml(_)) =>
            {
                Err(Error::NotSupported {
                    what: "EXPLAIN ANALYZE of a write".into(),
                })
            }
            LogicalPlan::Copy(_) => Err(Error::NotSupported {
                what: "COPY ... TO files on the server".into(),
            }),
            plan => {
                let prepared = self.count_prepared(&plan)?;
                let output = self.run_query(plan, needs, key).await?;
                prepared();
                Ok(output)
            }
        }
    }

    /// Runs a checked and protected query plan; its rows are kept in the result cache under
    /// `key` if they are a function of it.
    async fn run_query(
        &self,
        plan: LogicalPlan,
        needs: Vec<privileges::Need>,
        key: Option<result_cache::Key>,
    ) -> Result<Output> {
        let key = key.filter(|key| result_cache::keepable(&plan, &key.reads));
        let on_cluster = match &self.shared.cluster {
            Some(cluster) => self.on_cluster(cluster, &plan).await?,
            None => None,
        };
        let stream = match on_cluster {
            Some(stream) => stream,
            None => {
                let frame = self
                    .ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(unwrap_lake_error)?;
                frame.execute_stream().await.map_err(unwrap_lake_error)?
            }
        };
        Ok(Output::Rows(match key {
            Some(key) => self.shared.results.keep(key, needs, stream),
            None => stream,
        }))
    }

    /// The rows of a checked and protected query plan run on `cluster`; `None` when the plan
    /// reads no table the executors read or some part of it must run here (a system table's
    /// scan, a large external table's when executors do not read them, a function holding
    /// the session's identity or a secret): the caller runs it here.
    async fn on_cluster(
        &self,
        cluster: &medlake_cluster::Cluster,
        plan: &LogicalPlan,
    ) -> Result<Option<datafusion::execution::SendableRecordBatchStream>> {
        if !matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::Values(_)
        ) {
            // Statements (SET, SHOW), EXPLAIN, DESCRIBE: here.
            return Ok(None);
        }
        let state = self.ctx.state();
        let physical = match cluster.plan(&state, plan.clone()).await {
            Ok(physical) => physical,
            Err(e) => {
                tracing::debug!(error = %e, "planning for the cluster failed; the query runs here");
                return Ok(None);
            }
        };
        if !medlake_cluster::reads_tables(&physical) {
            return Ok(None);
        }
        match cluster.try_execute(physical, state.config()).await {
            Ok(stream) => {
                self.shared.metrics.cluster_query(true);
                Ok(Some(stream.map_err(unwrap_lake_error)?))
            }
            Err(medlake_cluster::StaysHere(reason)) => {
                tracing::debug!(%reason, "the query runs on this server");
                self.shared.metrics.cluster_query(false);
                Ok(None)
            }
        }
    }

    /// Runs a statement prepared with parameters from the plan of its template, planned,
    /// checked and protected at its first execution and kept under `plan_key`; `None` when the
    /// template does not plan on its own (the caller runs the bound statement instead).
    async fn run_template(
        &self,
        plan_key: result_cache::Key,
        template: Template,
        key: Option<result_cache::Key>,
    ) -> Result<Option<Output>> {
        use plan_cache::Planned;
        let (plan, needs) = match self.shared.plans.get(&plan_key) {
            Some(Planned::Plan { plan, needs }) => {
                // Planned under this access state's version (the key), checked again as
                // every hit of the result cache is.
                self.touch(&needs);
                let access = self.access_state().await?;
                privileges::check(&self.principal, &access, &needs)?;
                (plan, needs)
            }
            Some(Planned::Unfit) => return Ok(None),
            None => match self.plan_template(&template.statement).await {
                Some((plan, needs)) => {
                    let planned = Planned::Plan {
                        plan: plan.clone(),
                        needs: needs.clone(),
                    };
                    self.shared.plans.insert(plan_key, planned);
                    (plan, needs)
                }
                None => {
                    self.shared.plans.insert(plan_key, Planned::Unfit);
                    return Ok(None);
                }
            },
        };
        let Ok(plan) = plan.with_param_values(template.values) else {
            return Ok(None);
        };
        self.run_query(plan, needs, key).await.map(Some)
    }

    /// The checked and protected plan of a query with placeholders; `None` when it does not
    /// plan, is not a query, or is refused (the bound statement then says why).
    async fn plan_template(
        &self,
        statement: &datafusion::sql::parser::Statement,
    ) -> Option<(LogicalPlan, Vec<privileges::Need>)> {
        let plan = self
            .ctx
            .state()
            .statement_to_plan(statement.clone())
            .await
            .ok()?;
        if matches!(
            plan,
            LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Dml(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_)
        ) {
            return None;
        }
        let access = self.access_state().await.ok()?;
        let needs = self.check_plan(&plan, &access).ok()?;
        let plan = self.protect(plan, &access, &HashMap::new()).await.ok()?;
        Some((plan, needs))
    }

    /// EXPLAIN of a plan that masks or row filters changed for this principal: the logical
    /// plan only. Physical plans carry the table's statistics (row counts and min/max of
    /// hidden rows and of masked columns) and file paths, and EXPLAIN ANALYZE's metrics count
    /// the rows a filter hid, so VERBOSE and ANALYZE are the unrestricted principals'.
    async fn explain_protected(&self, plan: LogicalPlan) -> Result<Output> {
        let explain = match plan {
            LogicalPlan::Explain(explain) if !explain.verbose => explain,
            _ => {
                return Err(Error::PermissionDenied {
                    principal: self.principal.to_string(),
                    privilege: "EXPLAIN VERBOSE/ANALYZE",
                    object: "a table with column masks or row filters that apply to you \
                         (plain EXPLAIN shows its logical plan)"
                        .into(),
                });
            }
        };
        // The tree format draws the physical plan: the indented logical plan instead.
        let plan = LogicalPlan::Explain(datafusion::logical_expr::Explain {
            explain_format: datafusion::common::format::ExplainFormat::Indent,
            show_statistics: Some(false),
            ..explain
        });
        let mut state = self.ctx.state();
        let explain = &mut state.config_mut().options_mut().explain;
        explain.logical_plan_only = true;
        explain.show_statistics = false;
        explain.physical_plan_only = false;
        let physical = state
            .create_physical_plan(&plan)
            .await
            .map_err(unwrap_lake_error)?;
        let stream = datafusion::physical_plan::execute_stream(physical, state.task_ctx())
            .map_err(unwrap_lake_error)?;
        Ok(Output::Rows(stream))
    }

    /// `SET medlake.break_glass = 'reason'` and `RESET medlake.break_glass`.
    async fn set_or_reset_break_glass(&self, plan: &LogicalPlan) -> Result<Option<Output>> {
        use datafusion::logical_expr::Statement as PlanStatement;
        let LogicalPlan::Statement(statement) = plan else {
            return Ok(None);
        };
        let (variable, value) = match statement {
            PlanStatement::SetVariable(set) => (&set.variable, Some(set.value.clone())),
            PlanStatement::ResetVariable(reset) => (&reset.variable, None),
            _ => return Ok(None),
        };
        if !variable
            .trim()
            .eq_ignore_ascii_case(access::BREAK_GLASS_SETTING)
        {
            return Ok(None);
        }
        let reason = value.map(|v| v.trim().trim_matches('\'').to_string());
        self.break_glass(reason).await.map(Some)
    }

    /// Refuses a `PREPARE` beyond the session's bound; what it returns records the plan's
    /// effect on the prepared statements once the plan ran.
    fn count_prepared(&self, plan: &LogicalPlan) -> Result<impl FnOnce() + '_> {
        use datafusion::logical_expr::Statement as PlanStatement;
        let names = || {
            self.prepared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (added, removed) = match plan {
            LogicalPlan::Statement(PlanStatement::Prepare(prepare)) => {
                if names().len() >= MAX_PREPARED_PER_SESSION {
                    return Err(Error::LimitExceeded {
                        what: "prepared statements in this session",
                        limit: MAX_PREPARED_PER_SESSION,
                        hint: ": DEALLOCATE some",
                    });
                }
                // DataFusion would EXECUTE a prepared write through the table provider,
                // around the lake's write path (its checks, atomic commit and audit).
                let mut writes = false;
                prepare.input.apply_with_subqueries(|node| {
                    writes |= matches!(
                        node,
                        LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Copy(_)
                    );
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })?;
                if writes {
                    return Err(Error::NotSupported {
                        what: "PREPARE of a write or DDL in SQL (use the protocol's prepared \
                               statements: psycopg, JDBC and ADBC parameters do)"
                            .into(),
                    });
                }
                // What it reads is asked again at each EXECUTE (a grant revoked since counts).
                let needs = privileges::for_plan(&prepare.input, &self.default_schema_name())?;
                (Some((prepare.name.clone(), needs)), None)
            }
            LogicalPlan::Statement(PlanStatement::Execute(execute)) => {
                let needs = names().get(&execute.name).cloned().unwrap_or_default();
                privileges::check(&self.principal, &self.shared.access.store.cached(), &needs)?;
                (None, None)
            }
            LogicalPlan::Statement(PlanStatement::Deallocate(deallocate)) => {
                (None, Some(deallocate.name.clone()))
            }
            _ => (None, None),
        };
        Ok(move || {
            let mut names = names();
            if let Some((name, needs)) = added {
                names.insert(name, needs);
            }
            if let Some(name) = removed {
                names.remove(&name);
            }
        })
    }

    async fn execute_ddl(&self, ddl: DdlStatement, cluster_by: Vec<String>) -> Result<Output> {
        match ddl {
            DdlStatement::CreateCatalogSchema(create) => {
                let parts: Vec<&str> = create.schema_name.split('.').collect();
                let schema = match parts.as_slice() {
                    [schema] => *schema,
                    [catalog, schema] => {
                        self.check_catalog(catalog)?;
                        *schema
                    }
                    _ => {
                        return Err(Error::InvalidValue {
                            what: "schema name".into(),
                            reason: format!("'{}' has too many parts", create.schema_name),
                        });
                    }
                };
                self.shared
                    .warehouse
                    .create_schema(schema, create.if_not_exists)
                    .await?;
                self.record_owner(medlake_auth::Securable::Schema(schema.to_lowercase()))
                    .await?;
                Ok(Output::command("CREATE SCHEMA", 0))
            }
            DdlStatement::DropCatalogSchema(drop) => {
                let schema = match &drop.name {
                    SchemaReference::Bare { schema } => schema.to_string(),
                    SchemaReference::Full { schema, catalog } => {
                        self.check_catalog(catalog)?;
                        schema.to_string()
                    }
                };
                self.shared
                    .warehouse
                    .drop_schema(&schema, drop.if_exists, drop.cascade)
                    .await?;
                self.forget(&schema, None).await?;
                Ok(Output::command("DROP SCHEMA", 0))
            }
            DdlStatement::CreateMemoryTable(create) => self.create_table(create, cluster_by).await,
            DdlStatement::DropTable(drop) => {
                let name = self.resolve(&drop.name)?;
                self.check_writable(&name, "DROP TABLE").await?;
                self.shared
                    .warehouse
                    .drop_table(&name, drop.if_exists)
                    .await?;
                self.forget(&name.schema, Some(&name.table)).await?;
                Ok(Output::command("DROP TABLE", 0))
            }
            DdlStatement::CreateView(_) | DdlStatement::DropView(_) => Err(Error::NotSupported {
                what: "plain views; use CREATE MATERIALIZED VIEW".into(),
            }),
            DdlStatement::CreateExternalTable(create) => self.create_external_table(*create).await,
            other => Err(Error::NotSupported {
                what: other.name().to_string(),
            }),
        }
    }

    /// `CREATE TABLE`, `CREATE TABLE AS` and `SELECT ... INTO`: a new Delta table, clustered
    /// by `cluster_by` (`CLUSTER BY`) if given.
    async fn create_table(
        &self,
        create: datafusion::logical_expr::CreateMemoryTable,
        cluster_by: Vec<String>,
    ) -> Result<Output> {
        let name = self.resolve(&create.name)?;
        self.check_writable(&name, "CREATE TABLE").await?;
        if create.temporary {
            return Err(Error::NotSupported {
                what: "TEMPORARY tables".into(),
            });
        }
        if create.or_replace {
            return Err(Error::NotSupported {
                what: "CREATE OR REPLACE TABLE; drop the table first, or use INSERT OVERWRITE"
                    .into(),
            });
        }
        if !create.column_defaults.is_empty() {
            return Err(Error::NotSupported {
                what: "DEFAULT values for columns (Delta tables have none)".into(),
            });
        }
        if !create.constraints.is_empty() {
            return Err(Error::NotSupported {
                what: "PRIMARY KEY and UNIQUE constraints (Delta tables cannot enforce them)"
                    .into(),
            });
        }
        match create.input.as_ref() {
            LogicalPlan::EmptyRelation(empty) if !empty.produce_one_row => {
                let schema = empty.schema.as_arrow();
                self.shared
                    .warehouse
                    .create_table_clustered(&name, schema, create.if_not_exists, &cluster_by)
                    .await?;
                self.record_owner(medlake_auth::Securable::table(&name.schema, &name.table))
                    .await?;
                Ok(Output::command("CREATE TABLE", 0))
            }
            _ => {
                let input = Arc::unwrap_or_clone(create.input);
                let outcome = self
                    .shared
                    .warehouse
                    .create_table_as_with(
                        &name,
                        input,
                        Arc::new(self.ctx.state()),
                        create.if_not_exists,
                        &medlake_lake::CommitOptions {
                            cluster_by: cluster_by.clone(),
                            ..Default::default()
                        },
                    )
                    .await?;
                if outcome.is_some() && !cluster_by.is_empty() {
                    self.shared
                        .warehouse
                        .set_cluster_by(&name, &cluster_by)
                        .await?;
                }
                let rows = outcome.map_or(0, |o| o.rows);
                self.record_owner(medlake_auth::Securable::table(&name.schema, &name.table))
                    .await?;
                Ok(Output::command(format!("SELECT {rows}"), rows))
            }
        }
    }

    /// `CREATE EXTERNAL TABLE`: the source is contacted and the definition stored.
    async fn create_external_table(
        &self,
        create: datafusion::logical_expr::CreateExternalTable,
    ) -> Result<Output> {
        let name = self.resolve(&create.name)?;
        self.check_writable(&name, "CREATE EXTERNAL TABLE").await?;
        if create.or_replace {
            return Err(Error::NotSupported {
                what: "CREATE OR REPLACE EXTERNAL TABLE; drop the table first".into(),
            });
        }
        let kind = create.file_type.to_ascii_uppercase();
        if !self.shared.connectors.serves(&kind) {
            return Err(Error::NotSupported {
                what: format!(
                    "STORED AS {kind}: external tables read {}; warehouse tables are Delta tables made with CREATE TABLE",
                    self.shared.connectors.kinds().join(", ")
                ),
            });
        }
        if self.shared.warehouse.table_exists(&name).await? {
            if create.if_not_exists {
                return Ok(Output::command("CREATE EXTERNAL TABLE", 0));
            }
            return Err(medlake_lake::Error::TableExists {
                schema: name.schema.clone(),
                table: name.table.clone(),
            }
            .into());
        }
        // DataFusion files bare option keys under `format.`.
        let mut options: std::collections::BTreeMap<String, String> = create
            .options
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("format.").unwrap_or(&k).to_string(), v))
            .collect();
        // PARTITIONED BY (the Hive-style folders of file tables) travels as an option.
        if !create.table_partition_cols.is_empty() {
            options.insert(
                "partitioned_by".into(),
                create.table_partition_cols.join(","),
            );
        }
        let declared = Arc::new(create.schema.as_arrow().clone());
        let location = match create.locations.as_slice() {
            [location] => location.clone(),
            _ => {
                return Err(Error::InvalidValue {
                    what: "LOCATION".into(),
                    reason: "an external table reads one source location".into(),
                });
            }
        };
        let policy = medlake_source::Policy::of(&self.ctx.copied_config());
        let definition = self
            .shared
            .connectors
            .define(&kind, &location, options, declared, &policy)
            .await?;
        let stored = serde_json::to_value(&definition)
            .map_err(|e| Error::Internal(format!("external table definition: {e}")))?;
        self.shared
            .warehouse
            .create_external(&name, &stored, create.if_not_exists)
            .await?;
        self.record_owner(medlake_auth::Securable::table(&name.schema, &name.table))
            .await?;
        Ok(Output::command("CREATE EXTERNAL TABLE", 0))
    }

    async fn execute_dml(&self, dml: DmlStatement) -> Result<Output> {
        if matches!(
            dml.op,
            WriteOp::Delete | WriteOp::Update | WriteOp::MergeInto(_)
        ) {
            return self.execute_change(dml).await;
        }
        let name = self.resolve(&dml.table_name)?;
        self.check_writable(&name, "INSERT INTO").await?;
        let mode = match dml.op {
            WriteOp::Insert(InsertOp::Append) => WriteMode::Append,
            WriteOp::Insert(InsertOp::Overwrite) => WriteMode::Overwrite,
            other => {
                return Err(Error::NotSupported {
                    what: format!("{} on Delta tables", other.name()),
                });
            }
        };
        if mode == WriteMode::Overwrite {
            self.refuse_restricted_overwrite(&name, "INSERT OVERWRITE")
                .await?;
        }
        let input = Arc::unwrap_or_clone(dml.input);
        let outcome = self
            .shared
            .warehouse
            .write(&name, input, Arc::new(self.ctx.state()), mode)
            .await?;
        Ok(Output::command(
            format!("INSERT 0 {}", outcome.rows),
            outcome.rows,
        ))
    }

    /// Creates one external table per table of the remote schema. A table that cannot be
    /// imported (an unsupported column type) is reported with the reason and the others are
    /// still created; a table that exists is left as it is.
    async fn import_foreign_schema(
        &self,
        import: statement::ImportForeignSchema,
    ) -> Result<RecordBatch> {
        let local_schema = import.into.clone();
        if local_schema == medlake_views::system::SCHEMA {
            return Err(Error::ReadOnly {
                what: "the system schema is read-only (IMPORT FOREIGN SCHEMA)".into(),
            });
        }
        if !self.shared.warehouse.schema_exists(&local_schema).await? {
            return Err(medlake_lake::Error::SchemaNotFound {
                schema: local_schema,
            }
            .into());
        }
        let options: std::collections::BTreeMap<String, String> =
            import.options.iter().cloned().collect();
        if options.contains_key("table") {
            return Err(Error::InvalidValue {
                what: "option 'table'".into(),
                reason: "IMPORT FOREIGN SCHEMA names every table itself".into(),
            });
        }
        let mut remote = self
            .shared
            .connectors
            .list_tables(
                &import.kind,
                &import.location,
                &options,
                &import.remote_schema,
                &medlake_source::Policy::of(&self.ctx.copied_config()),
            )
            .await?;
        if let Some((limit_to, names)) = &import.only {
            if *limit_to {
                for name in names {
                    if !remote.iter().any(|t| t.name.eq_ignore_ascii_case(name)) {
                        return Err(medlake_source::Error::RemoteTableNotFound {
                            server: medlake_lake::redact(&import.location),
                            table: format!("{}.{name}", import.remote_schema),
                        }
                        .into());
                    }
                }
            }
            remote.retain(|t| names.iter().any(|n| t.name.eq_ignore_ascii_case(n)) == *limit_to);
        }
        let (mut tables, mut remotes, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
        for table in remote {
            let local = TableName::new(&local_schema, table.name.to_lowercase());
            let remote_name = format!("{}.{}", table.schema, table.name);
            let (shown, status) = match local {
                Err(e) => (String::new(), format!("skipped: {e}")),
                Ok(local) => {
                    let status = self.import_one(&import, &options, &table, &local).await?;
                    (local.to_string(), status)
                }
            };
            tables.push(shown);
            remotes.push(remote_name);
            statuses.push(status);
        }
        record_batch(vec![
            ("table", text(tables)),
            ("remote_table", text(remotes)),
            ("status", text(statuses)),
        ])
    }

    /// Imports one remote table as `local`; the status to report.
    async fn import_one(
        &self,
        import: &statement::ImportForeignSchema,
        options: &std::collections::BTreeMap<String, String>,
        table: &medlake_source::RemoteTable,
        local: &TableName,
    ) -> Result<String> {
        if self.shared.warehouse.table_exists(local).await? {
            return Ok("exists".into());
        }
        let mut options = options.clone();
        options.extend(table.options.clone());
        let defined = self
            .shared
            .connectors
            .define(
                &import.kind,
                &import.location,
                options,
                Arc::new(Schema::empty()),
                &medlake_source::Policy::of(&self.ctx.copied_config()),
            )
            .await;
        let definition = match defined {
            Ok(definition) => definition,
            Err(e @ medlake_source::Error::UnsupportedType { .. }) => {
                return Ok(format!("skipped: {e}"));
            }
            Err(e) => return Err(e.into()),
        };
        let stored = serde_json::to_value(&definition)
            .map_err(|e| Error::Internal(format!("external table definition: {e}")))?;
        let created = self
            .shared
            .warehouse
            .create_external(local, &stored, true)
            .await?;
        Ok(if created { "created" } else { "exists" }.into())
    }

    async fn describe_history(&self, name: &TableName, limit: Option<usize>) -> Result<Output> {
        let mut history = self.shared.warehouse.history(name, limit).await?;
        // Row counts would tell what the table's row filter hides from this principal.
        if self.row_filtered(name).await? {
            for entry in &mut history {
                entry.rows_written = None;
                entry.metrics = "{}".into();
            }
        }
        Ok(Output::batch(history::history_batch(&history)?))
    }
}

/// The privilege object of a table.
fn table_object(table: &TableName) -> Object {
    Object::Table {
        schema: table.schema.clone(),
        table: table.table.clone(),
    }
}

fn text(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn int(values: impl IntoIterator<Item = u64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        values
            .into_iter()
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
    ))
}

fn record_batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect())
        .map_err(|e| Error::Internal(format!("building a result batch: {e}")))
}

/// Errors of the lake that travelled through DataFusion (from a table provider) come back
/// as themselves, so that they keep their status code.
pub(crate) fn unwrap_lake_error(e: datafusion::error::DataFusionError) -> Error {
    use datafusion::error::DataFusionError;
    match e {
        DataFusionError::External(inner) => match inner.downcast::<medlake_lake::Error>() {
            Ok(lake) => Error::Lake(*lake),
            Err(other) => Error::from(DataFusionError::External(other)),
        },
        DataFusionError::Diagnostic(diagnostic, inner) => match unwrap_lake_error(*inner) {
            Error::DataFusion(inner) => Error::from(DataFusionError::Diagnostic(diagnostic, inner)),
            lake => lake,
        },
        DataFusionError::Context(context, inner) => match unwrap_lake_error(*inner) {
            Error::DataFusion(inner) => Error::from(DataFusionError::Context(context, inner)),
            lake => lake,
        },
        DataFusionError::Plan(message) => match missing_table(&message) {
            Some(error) => error,
            None => Error::from(DataFusionError::Plan(message)),
        },
        other => Error::from(other),
    }
}

/// DataFusion's planner says "table 'medlake.s.t' not found"; say it as the lake does.
fn missing_table(message: &str) -> Option<Error> {
    let name = message
        .strip_prefix("table '")?
        .strip_suffix("' not found")?;
    let parts: Vec<&str> = name.split('.').collect();
    let [catalog, schema, table] = parts.as_slice() else {
        return None;
    };
    (*catalog == CATALOG && *schema != TIME_TRAVEL_SCHEMA).then(|| {
        Error::Lake(medlake_lake::Error::TableNotFound {
            schema: (*schema).to_string(),
            table: (*table).to_string(),
        })
    })
}
