//! [`Views`]: creating, refreshing and dropping materialized views.
//!
//! A view is a Delta table whose every refresh commit carries, in its `commitInfo`, the
//! view's definition and the versions of the inputs that commit was computed from. The
//! definition, the data and the incremental state are therefore one atomic commit: a crash
//! can never leave a view whose rows and recorded input versions disagree. Each refresh
//! commits on top of the version it read (optimistic locking), so a refresh that raced
//! another one in a second process fails instead of applying its changes twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::slice;
use std::sync::{Arc, Mutex};

use arrow::array::AsArray;
use arrow::array::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    SchemaProvider, TableProvider,
};
use datafusion::common::{DFSchema, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{EmptyRelation, Expr, LogicalPlan, LogicalPlanBuilder, cast, col};
use datafusion::physical_plan::collect;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use medlake_lake::{CommitOptions, TableName, TimeTravel, Warehouse, WriteMode, changes};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use medlake_source::{External, Registry, Watermarked};

use crate::bounds;
use crate::cost;
use crate::definition::{CreateView, RefreshPolicy, ViewDefinition};
use crate::error::{Error, Result};
use crate::expect::{Checks, ExpectationsExec, PlannedTable, Rule};
use crate::history;
use crate::incremental::{self, Shape};
use crate::lineage;
use crate::multiset;
pub use crate::outcome::{RefreshOutcome, Status, Trigger};
use crate::reach;
use crate::state::{self, Aggregated, Carry, STATE_FILE, State};
use crate::unread;

/// The key of medlake's state in a view commit's `commitInfo`.
pub(crate) const METADATA_KEY: &str = "medlake";
/// More changed groups than this and a grouped view refreshes fully.
const MAX_CHANGED_GROUPS: usize = 100_000;
/// Above this fraction of changed rows (gained plus lost, over the changed inputs' rows),
/// `REFRESH POLICY AUTO` recomputes a keyed view (GROUP BY, windows), or a linear one whose
/// inputs lost rows, instead of patching it: those plans read the input of every touched key
/// and rewrite the touched view rows, which for most of the table costs more than a full
/// refresh. Appends to a linear view are always incremental (they read only the new rows).
/// Measured (`benches/run.py threshold`, release build, 10M rows clustered by the key, a view
/// grouped by it): incremental costs as much as FULL at a change fraction of 4%, 1.2x at
/// 10%, 2.2x at 30%, 4.7x at 100%; views whose recompute writes more than this one's 80,000
/// groups favour incremental longer, so the threshold sits at 10%.
pub const AUTO_FULL_FRACTION: f64 = 0.1;
/// Below this many input rows `REFRESH POLICY AUTO` does not weigh the change: either plan
/// takes moments, and the incremental one writes less.
pub const AUTO_MIN_ROWS: u64 = 10_000;
/// `REFRESH POLICY AUTO`'s second rule: when the recompute of the keys (GROUP BY, window
/// partitions) or regions a change touches would read more than this fraction of the input
/// rows the view's whole query reads (both estimated from file statistics after filter
/// pushdown and Delta's file skipping: [`crate::cost`]), that being at least
/// [`AUTO_MIN_ROWS`], the view is recomputed instead: the touched keys span most files of
/// inputs not clustered by them, so the incremental plan would read as much as a full one and
/// also read the changes and rewrite the touched rows (once per region for region plans).
/// A starting point, not yet measured on a release build (benches/RESULTS.md, "warehouse").
pub const AUTO_READ_FRACTION: f64 = 0.5;
/// The suffix of a view's quarantine table (`silver.readings_quarantine`).
pub const QUARANTINE_SUFFIX: &str = "_quarantine";

/// What the last refresh of a view recorded, in the same commit as its rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshState {
    pub id: String,
    pub mode: String,
    pub started: DateTime<Utc>,
    /// The version of each input (`schema.table`) the view's rows were computed from.
    pub inputs: BTreeMap<String, u64>,
    /// The Delta table id of each input: a table dropped and created again under the same
    /// name is a different table, whatever its version.
    #[serde(default)]
    pub input_ids: BTreeMap<String, String>,
    /// The watermark each external input with a watermark column was read up to (`None`: no
    /// row had one). The next refresh extracts only rows above it.
    #[serde(default)]
    pub input_marks: BTreeMap<String, Option<String>>,
    /// What ran the refresh ([`Trigger::as_str`]), so that a refresh whose
    /// `system.refreshes` row was lost can be recorded as what it was
    /// ([`Views::recover_history`]); empty in commits written before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trigger: String,
}

/// How many of a view's newest refreshes [`Views::recover_history`] looks at: a row lost at
/// a kill is recorded by the next scheduler leader unless this many refreshes of the view
/// committed before that leader's recovery ran.
const RECOVERY_DEPTH: usize = 32;

/// The `system.refreshes` row of a refresh whose own row was lost, from its commit.
fn recovered_outcome(
    view: &TableName,
    state: RefreshState,
    version: u64,
    info: &Value,
    finished: DateTime<Utc>,
) -> RefreshOutcome {
    let rows_written = info
        .pointer("/operationMetrics/num_added_rows")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    RefreshOutcome {
        view: view.clone(),
        trigger: Trigger::parse(&state.trigger).unwrap_or(Trigger::Unknown),
        started: state.started,
        finished,
        mode: match state.mode.as_str() {
            "incremental" => "incremental",
            _ => "full",
        },
        reason: "recorded after a restart: the server stopped between the view's commit and \
                 this row"
            .into(),
        inputs: state.inputs,
        refresh_id: state.id,
        rows_written,
        version: Some(version),
        status: Status::Succeeded,
        error: None,
        expectations: Vec::new(),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) view: ViewDefinition,
    pub(crate) refresh: RefreshState,
}

/// A materialized view as the warehouse holds it.
#[derive(Clone, Debug)]
pub struct View {
    pub name: TableName,
    pub definition: ViewDefinition,
    /// The view table's latest version.
    pub version: u64,
    /// The version of the newest commit that carries the view's state (its last refresh,
    /// or an erasure since): later ones (OPTIMIZE, VACUUM) changed no row.
    pub state_version: u64,
    /// What the last refresh that committed recorded.
    pub last: RefreshState,
}

/// A view's query planned against pinned versions of its inputs.
struct Pinned {
    ctx: SessionContext,
    plan: LogicalPlan,
    inputs: BTreeMap<TableName, (u64, Arc<dyn TableProvider>, String)>,
    /// The inputs that are external tables (their version above is 0).
    external: BTreeMap<TableName, ExternalPin>,
}

/// An external input: read up to its high watermark when it has a watermark column.
struct ExternalPin {
    table: Arc<dyn External>,
    watermarked: Option<Arc<dyn Watermarked>>,
    mark: Option<String>,
}

impl Pinned {
    fn versions(&self) -> BTreeMap<String, u64> {
        self.inputs
            .iter()
            .map(|(name, (version, _, _))| (name.to_string(), *version))
            .collect()
    }

    fn ids(&self) -> BTreeMap<String, String> {
        self.inputs
            .iter()
            .map(|(name, (_, _, id))| (name.to_string(), id.clone()))
            .collect()
    }

    /// The error an external input's scan raised, typed (a Delta write keeps only its text).
    fn source_failure(&self) -> Option<Error> {
        self.external.iter().find_map(|(name, pin)| {
            pin.table.take_failure().map(|source| Error::Source {
                table: name.to_string(),
                source,
            })
        })
    }

    /// The values external inputs read as NULL because of their type, as expectation rows
    /// of the refresh (`system.expectations`, action `null`).
    fn source_mismatches(&self) -> Vec<(String, String, &'static str, u64, u64)> {
        let mut out = Vec::new();
        for (name, pin) in &self.external {
            let Some(m) = pin.table.take_mismatches() else {
                continue;
            };
            for (column, data_type, count) in m.columns {
                out.push((
                    format!("source type: {name}.{column}"),
                    format!("{column} holds {data_type} values"),
                    "null",
                    m.rows,
                    count,
                ));
            }
        }
        out
    }

    fn marks(&self) -> BTreeMap<String, Option<String>> {
        self.external
            .iter()
            .filter(|(_, pin)| pin.watermarked.is_some())
            .map(|(name, pin)| (name.to_string(), pin.mark.clone()))
            .collect()
    }
}

/// What a refresh of a view would do now, without doing it (`EXPLAIN REFRESH MATERIALIZED
/// VIEW`).
#[derive(Clone, Debug)]
pub struct RefreshPlan {
    pub view: TableName,
    pub policy: RefreshPolicy,
    /// `incremental`, `full`, `none` (nothing changed) or `refused` (`INCREMENTAL STRICT`
    /// and the refresh would have to recompute).
    pub mode: &'static str,
    /// What `system.refreshes.reason` would say (or the refusal).
    pub reason: String,
    /// One entry per changed input.
    pub inputs: Vec<InputVolume>,
}

/// How much one changed input of a view changed since the view's last refresh.
#[derive(Clone, Debug)]
pub struct InputVolume {
    pub table: TableName,
    /// The Delta versions the change spans (`None` for an external input, or an input the
    /// view has not read before).
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    /// Rows gained and lost, and the input's rows now: Delta inputs whose changes an
    /// incremental plan reads (`None` otherwise).
    pub inserted: Option<u64>,
    pub removed: Option<u64>,
    pub rows: Option<u64>,
}

/// What a refresh does, decided from the view's policy and what changed.
enum Decision {
    /// Nothing changed.
    Skip(String),
    Run(Plan, String),
    /// `INCREMENTAL STRICT`, and the plan is full.
    Refuse(String),
}

enum Plan {
    Full,
    /// Append the query over the changes (and remove what it yields over removed rows).
    Linear(Vec<InputChange>),
    /// Append the distinct new rows the view does not hold yet.
    Distinct(Vec<InputChange>),
    /// Recompute the partitions the changes touch.
    Keyed(Vec<InputChange>, Box<incremental::Keyed>),
    /// Recompute the regions of the view the changes touch (see [`crate::lineage`]).
    Regions(Vec<InputChange>, Box<lineage::Regions>),
}

impl Plan {
    fn changes(&self) -> &[InputChange] {
        match self {
            Plan::Full => &[],
            Plan::Linear(changes)
            | Plan::Distinct(changes)
            | Plan::Keyed(changes, _)
            | Plan::Regions(changes, _) => changes,
        }
    }

    /// Whether the incremental plan reads more than the changed rows and rewrites view rows
    /// (so that for large changes a full refresh is cheaper).
    fn rewrites(&self) -> bool {
        match self {
            Plan::Keyed(..) | Plan::Regions(..) => true,
            Plan::Linear(changes) => changes.iter().any(|c| c.removed.is_some()),
            Plan::Full | Plan::Distinct(_) => false,
        }
    }
}

/// What one changed input of a view gained and lost since the view's last refresh.
struct InputChange {
    table: TableName,
    /// The change, as `system.refreshes` says it (`bronze.t gained rows (versions 3 to 5)`).
    said: String,
    /// The rows the input gained (inserted, or new images of updated rows).
    inserted: Arc<dyn TableProvider>,
    /// The rows it lost (deleted, or old images of updated rows); `None`: it only gained.
    removed: Option<Arc<dyn TableProvider>>,
    /// The input as it was at the last refresh, when another input changed too (see
    /// [`terms`]); `None` for an external input.
    old: Option<Arc<dyn TableProvider>>,
    /// The input's version at the last refresh (Delta inputs).
    before: Option<u64>,
}

/// What a refresh writes, and how.
struct Write {
    mode: &'static str,
    reason: String,
    input: LogicalPlan,
    write_mode: WriteMode,
    /// Replace only the view rows matching this predicate (an overwrite).
    replace_where: Option<Expr>,
    /// Inputs this write takes as they were at the last refresh (their versions), for a
    /// second refresh to apply what they gained.
    held: BTreeMap<String, u64>,
    /// The view's new aggregate state ([`crate::state`]), kept once the write committed;
    /// `None`: whatever state the view had no longer matches it.
    state: Option<State>,
}

/// Materialized views over one warehouse. Cheap to clone.
#[derive(Clone)]
pub struct Views {
    inner: Arc<Inner>,
}

struct Inner {
    warehouse: Warehouse,
    /// The session every view query is planned from (functions, object stores, planner).
    state: SessionState,
    /// The connectors external inputs are opened with.
    connectors: Arc<Registry>,
    /// Views being refreshed in this process, and since when.
    running: Mutex<HashMap<TableName, DateTime<Utc>>>,
    /// Who refreshes run as (the engine's access rules); none: every refresh may run.
    authority: std::sync::OnceLock<Arc<dyn RefreshAuthority>>,
    /// Who hears of each committed refresh (the engine's alert rules).
    listener: std::sync::OnceLock<Arc<dyn RefreshListener>>,
    /// Where view queries run when not here ([`Views::set_cluster`]).
    cluster: std::sync::OnceLock<medlake_cluster::Cluster>,
}

/// Hears of every refresh that committed a new version of a view, whatever ran it (a
/// statement, a cascade, the scheduler): the engine evaluates the alert rules watching the
/// view. Called after the refresh is recorded; it must not block (hand the work to a task).
pub trait RefreshListener: Send + Sync {
    fn committed(&self, view: &TableName, version: u64);

    /// Every refresh recorded in `system.refreshes`, however it ended (for metrics).
    fn finished(&self, _outcome: &RefreshOutcome) {}
}

/// Who a refresh runs as: before a view's query runs, [`RefreshAuthority::check`] is asked
/// whether the view's owner may still run it (read its inputs, use the keys it names); a
/// refusal fails the refresh (SQLSTATE 42501) and is recorded like any failed refresh. The
/// engine implements it from its grants; the views crate knows nothing of principals.
#[async_trait::async_trait]
pub trait RefreshAuthority: Send + Sync {
    /// `Err(reason)` refuses the refresh of `view` (one of `views`), whose query is `plan`
    /// (names resolved against `default_schema`, planned in `state`).
    async fn check(
        &self,
        views: &Views,
        view: &TableName,
        plan: &datafusion::logical_expr::LogicalPlan,
        default_schema: &str,
        state: &datafusion::execution::context::SessionState,
    ) -> std::result::Result<(), String>;

    /// A refresh that no statement asked for (the scheduler's) finished, or failed: for the
    /// audit.
    fn scheduled(&self, outcome: &RefreshOutcome);
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("warehouse", &self.inner.warehouse)
            .finish_non_exhaustive()
    }
}

/// Releases a view's refresh slot when the refresh ends, however it ends.
pub(crate) struct Running<'a> {
    views: &'a Views,
    name: TableName,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.views.inner.running.lock() {
            running.remove(&self.name);
        }
    }
}

fn refresh_id(started: DateTime<Utc>) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        started.format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

impl Views {
    /// Views over `warehouse`, planning queries from `state` (which must use the Delta query
    /// planner; see `medlake_lake::delta_query_planner`), opening external inputs with the
    /// `connectors` the engine was built with.
    pub fn new(warehouse: Warehouse, state: SessionState, connectors: Arc<Registry>) -> Self {
        Self {
            inner: Arc::new(Inner {
                warehouse,
                state,
                connectors,
                running: Mutex::new(HashMap::new()),
                authority: std::sync::OnceLock::new(),
                cluster: std::sync::OnceLock::new(),
                listener: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Makes every later refresh ask `authority` first (once; later calls are ignored).
    pub fn set_authority(&self, authority: Arc<dyn RefreshAuthority>) {
        let _ = self.inner.authority.set(authority);
    }

    /// Runs the queries of later refreshes on `cluster` where their plans can cross (once;
    /// later calls are ignored): the rows stream back, expectations, quarantine and the Delta
    /// commit stay here, so a refresh is still one atomic commit of this server.
    pub fn set_cluster(&self, cluster: medlake_cluster::Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// Makes every later committed refresh known to `listener` (once; later calls are
    /// ignored).
    pub fn set_listener(&self, listener: Arc<dyn RefreshListener>) {
        let _ = self.inner.listener.set(listener);
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.inner.warehouse
    }

    /// Creates the `system` tables that do not exist yet.
    pub async fn prepare(&self) -> Result<()> {
        history::prepare(&self.inner.warehouse).await
    }

    /// The view `name`; `None` if `name` is a plain table. A missing table is an error.
    pub async fn view(&self, name: &TableName) -> Result<Option<View>> {
        Ok(self
            .view_with_state_version(name)
            .await?
            .map(|(view, _)| view))
    }

    /// [`Self::view`] and the version of the commit that holds its state.
    pub(crate) async fn view_with_state_version(
        &self,
        name: &TableName,
    ) -> Result<Option<(View, u64)>> {
        let warehouse = &self.inner.warehouse;
        let versions = warehouse.versions(name).await?;
        let Some(&latest) = versions.last() else {
            return Ok(None);
        };
        // The newest commit that carries medlake's state (OPTIMIZE commits do not).
        for &version in versions.iter().rev() {
            let Some(actions) = warehouse.commit_actions(name, version).await? else {
                break;
            };
            let Some(info) = actions.iter().find_map(|a| a.get("commitInfo")) else {
                continue;
            };
            if let Some(stored) = info.get(METADATA_KEY) {
                let stored: Stored = serde_json::from_value(stored.clone()).map_err(|e| {
                    Error::Internal(format!(
                        "view state of {name} at version {version} is unreadable: {e}"
                    ))
                })?;
                let view = View {
                    name: name.clone(),
                    definition: stored.view,
                    version: latest,
                    state_version: version,
                    last: stored.refresh,
                };
                return Ok(Some((view, version)));
            }
            // A plain table's writes carry no state; views are written by medlake only.
            let operation = info.get("operation").and_then(Value::as_str).unwrap_or("");
            if !matches!(operation, "OPTIMIZE" | "VACUUM START" | "VACUUM END") {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Records in `system.refreshes` each committed refresh that has no row there: a server
    /// stopped (killed) between a view's commit and its row. The view's rows and incremental
    /// state are in its commit either way; this keeps the history complete. Every view's
    /// last [`RECOVERY_DEPTH`] refresh commits are looked at, not only its newest: a refresh
    /// that committed (with its row) after a lost one, such as this server's own scheduled
    /// or requested refresh before it took the lease, does not hide it. Each row
    /// is built from its commit (refresh id, trigger, mode, inputs, start, and the commit's
    /// time as the finish) and says it was recovered. Returns the views recorded, once per
    /// row. The server that takes the scheduler lease runs it.
    pub async fn recover_history(&self) -> Result<Vec<TableName>> {
        let warehouse = &self.inner.warehouse;
        // A commit from after this point is a refresh running now, which records itself.
        let since = Utc::now();
        let recorded = history::recorded_ids(warehouse, &self.inner.state).await?;
        let mut recovered = Vec::new();
        for view in self.list().await? {
            let lost = self.unrecorded_refreshes(&view.name, &recorded).await?;
            for (state, version, info) in lost.into_iter().rev() {
                let finished = info
                    .get("timestamp")
                    .and_then(Value::as_i64)
                    .and_then(DateTime::from_timestamp_millis)
                    .unwrap_or(state.started);
                if finished >= since {
                    continue;
                }
                let outcome = recovered_outcome(&view.name, state, version, &info, finished);
                history::record(warehouse, &outcome).await?;
                info!(view = %view.name, refresh_id = %outcome.refresh_id, version, "refresh recorded after a restart");
                recovered.push(view.name.clone());
            }
        }
        Ok(recovered)
    }

    /// The refresh commits among view `name`'s last [`RECOVERY_DEPTH`] that `recorded` does
    /// not hold, newest first: each one's refresh state, version and commit info.
    async fn unrecorded_refreshes(
        &self,
        name: &TableName,
        recorded: &std::collections::HashSet<(String, String)>,
    ) -> Result<Vec<(RefreshState, u64, Value)>> {
        let warehouse = &self.inner.warehouse;
        let versions = warehouse.versions(name).await?;
        let mut lost: Vec<(RefreshState, u64, Value)> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        // OPTIMIZE and VACUUM commits carry no state: a bounded walk past them too.
        for &version in versions.iter().rev().take(RECOVERY_DEPTH * 4) {
            if seen.len() >= RECOVERY_DEPTH {
                break;
            }
            let Some(actions) = warehouse.commit_actions(name, version).await? else {
                break;
            };
            let Some(info) = actions
                .into_iter()
                .find_map(|a| a.get("commitInfo").cloned())
            else {
                continue;
            };
            let Some(stored) = info.get(METADATA_KEY) else {
                continue;
            };
            let Ok(stored) = serde_json::from_value::<Stored>(stored.clone()) else {
                break;
            };
            let state = stored.refresh;
            // Two commits of one refresh (a follow-up pass) carry the same id: one row, of the
            // newer.
            if state.id.is_empty() || seen.contains(&state.id) {
                continue;
            }
            seen.push(state.id.clone());
            if !recorded.contains(&(name.to_string(), state.id.clone())) {
                lost.push((state, version, info));
            }
        }
        Ok(lost)
    }
    /// Every materialized view of the warehouse, by name.
    pub async fn list(&self) -> Result<Vec<View>> {
        let warehouse = &self.inner.warehouse;
        let mut views = Vec::new();
        for schema in warehouse.list_schemas().await? {
            if schema == history::SCHEMA {
                continue;
            }
            for table in warehouse.list_tables(&schema).await? {
                let name = TableName::new(&schema, &table)?;
                match self.view(&name).await {
                    Ok(Some(view)) => views.push(view),
                    Ok(None) => {}
                    // Dropped while we listed.
                    Err(Error::Lake(medlake_lake::Error::TableNotFound { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(views)
    }

    pub(crate) fn start(&self, name: &TableName) -> Result<Running<'_>> {
        let mut running = self
            .inner
            .running
            .lock()
            .map_err(|_| Error::Internal("refresh registry poisoned".into()))?;
        if let Some(started) = running.get(name) {
            return Err(Error::RefreshRunning {
                view: name.to_string(),
                started: started.to_rfc3339(),
            });
        }
        running.insert(name.clone(), Utc::now());
        Ok(Running {
            views: self,
            name: name.clone(),
        })
    }

    /// The tables a definition reads, resolved against its default schema.
    pub fn references(&self, definition: &ViewDefinition) -> Result<Vec<TableName>> {
        let statement = parse_query(&definition.query)?;
        let ctx = self.planning_context(definition, Arc::new(MemoryCatalogProviderList::new()));
        let mut names = BTreeSet::new();
        for reference in ctx.state().resolve_table_references(&statement)? {
            names.insert(resolve(&reference, &definition.default_schema)?);
        }
        Ok(names.into_iter().collect())
    }

    fn planning_context(
        &self,
        definition: &ViewDefinition,
        catalogs: Arc<MemoryCatalogProviderList>,
    ) -> SessionContext {
        let mut config = self.inner.state.config().clone();
        config.options_mut().catalog.default_schema = definition.default_schema.clone();
        let state = SessionStateBuilder::new_from_existing(self.inner.state.clone())
            .with_config(config)
            .with_catalog_list(catalogs)
            .build();
        SessionContext::new_with_state(state)
    }

    /// Plans the view's query over the current version of each input, pinned: the whole
    /// refresh reads that one consistent snapshot.
    async fn pin(&self, name: &TableName, definition: &ViewDefinition) -> Result<Pinned> {
        let statement = parse_query(&definition.query)?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let ctx = self.planning_context(definition, catalogs);
        let catalog = Arc::new(MemoryCatalogProvider::new());
        let mut schemas: BTreeMap<String, Arc<MemorySchemaProvider>> = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        let mut external = BTreeMap::new();
        for reference in ctx.state().resolve_table_references(&statement)? {
            let input = resolve(&reference, &definition.default_schema)?;
            if input == *name {
                return Err(Error::Cycle {
                    cycle: format!("{name} reads itself"),
                });
            }
            if inputs.contains_key(&input) {
                continue;
            }
            let (provider, version, table_id) = match self.inner.warehouse.external(&input).await? {
                Some(stored) => {
                    let policy = medlake_source::Policy::of(self.inner.state.config());
                    let (provider, id, pin) =
                        pin_external(&self.inner.connectors, &input, stored, &policy).await?;
                    external.insert(input.clone(), pin);
                    (provider, 0, id)
                }
                None => self.inner.warehouse.table_provider_with_id(&input).await?,
            };
            schemas
                .entry(input.schema.clone())
                .or_insert_with(|| Arc::new(MemorySchemaProvider::new()))
                .register_table(input.table.clone(), provider.clone())?;
            inputs.insert(input, (version, provider, table_id));
        }
        for (schema, provider) in schemas {
            catalog.register_schema(&schema, provider)?;
        }
        // The view's default schema must exist for DataFusion to plan bare names.
        if catalog.schema(&definition.default_schema).is_none() {
            catalog.register_schema(
                &definition.default_schema,
                Arc::new(MemorySchemaProvider::new()),
            )?;
        }
        ctx.register_catalog("medlake", catalog);
        let plan = ctx.state().statement_to_plan(statement).await?;
        Ok(Pinned {
            ctx,
            plan,
            inputs,
            external,
        })
    }

    /// Plans the view's expectations against the query's output.
    fn checks(
        &self,
        ctx: &SessionContext,
        name: &TableName,
        definition: &ViewDefinition,
        schema: &DFSchema,
        refresh_id: &str,
        full: bool,
    ) -> Result<Arc<Checks>> {
        let mut rules = Vec::new();
        let mut quarantine = false;
        for expectation in &definition.expectations {
            let expr = ctx
                .parse_sql_expr(&expectation.expression, schema)
                .map_err(|e| Error::InvalidDefinition {
                    reason: format!(
                        "expectation '{}' ({}): {e}",
                        expectation.name, expectation.expression
                    ),
                })?;
            let predicate =
                ctx.create_physical_expr(expr, schema)
                    .map_err(|e| Error::InvalidDefinition {
                        reason: format!(
                            "expectation '{}' ({}): {e}",
                            expectation.name, expectation.expression
                        ),
                    })?;
            quarantine |= expectation.on_violation == crate::OnViolation::Quarantine;
            rules.push(Rule {
                name: expectation.name.clone(),
                expression: expectation.expression.clone(),
                on_violation: expectation.on_violation,
                predicate,
            });
        }
        let quarantine = if quarantine {
            Some((self.inner.warehouse.clone(), quarantine_of(name)?))
        } else {
            None
        };
        Ok(Arc::new(Checks::new(
            name.clone(),
            rules,
            refresh_id.to_string(),
            quarantine,
            full,
        )))
    }

    /// The plan `plan` with its rows checked by `checks`, as a logical plan a write can take.
    async fn checked(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
        checks: &Arc<Checks>,
    ) -> Result<LogicalPlan> {
        let physical = match self.on_cluster(ctx, plan).await? {
            Some(remote) => remote,
            None => ctx.state().create_physical_plan(plan).await?,
        };
        let checked = Arc::new(ExpectationsExec::new(physical, checks.clone()));
        let table = Arc::new(PlannedTable::new(checked));
        Ok(LogicalPlanBuilder::scan("refresh", provider_as_source(table), None)?.build()?)
    }

    /// `plan` as a plan run on the cluster, when there is one and the plan reads a table the
    /// executors read and can cross ([`medlake_cluster::RemoteExec`]); `None`: it runs here.
    async fn on_cluster(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>> {
        let Some(cluster) = self.inner.cluster.get() else {
            return Ok(None);
        };
        let state = ctx.state();
        let physical = cluster.plan_refresh(&state, plan.clone()).await?;
        if !medlake_cluster::reads_tables(&physical) {
            return Ok(None);
        }
        match medlake_cluster::RemoteExec::new(cluster, physical, state.config()) {
            Ok(remote) => {
                tracing::info!(
                    scheduler = cluster.scheduler(),
                    "a refresh query runs on the cluster"
                );
                Ok(Some(Arc::new(remote)))
            }
            Err(medlake_cluster::StaysHere(reason)) => {
                tracing::debug!(%reason, "the refresh's query runs on this server");
                Ok(None)
            }
        }
    }

    /// Runs `plan` (a refresh's read of changes or of view rows, whose result is small) to its
    /// schema and batches: on the cluster when there is one and the plan can cross, else here.
    async fn collect_anywhere(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
        let physical = match self.on_cluster(ctx, plan).await? {
            Some(remote) => remote,
            None => ctx.state().create_physical_plan(plan).await?,
        };
        let schema = physical.schema();
        Ok((schema, collect(physical, ctx.task_ctx()).await?))
    }

    /// `CREATE [OR REPLACE] MATERIALIZED VIEW`: the view and its first rows in one commit.
    /// Returns `None` when the view existed and `IF NOT EXISTS` was given.
    pub async fn create(
        &self,
        name: &TableName,
        create: CreateView,
        trigger: Trigger,
    ) -> Result<Option<RefreshOutcome>> {
        if name.schema == history::SCHEMA {
            return Err(Error::NotSupported {
                what: "materialized views in the read-only system schema".into(),
            });
        }
        let definition = create.definition;
        if self.inner.warehouse.table_exists(name).await? {
            return match self.view(name).await? {
                Some(_) if create.if_not_exists => Ok(None),
                Some(_) if create.or_replace => {
                    let trigger = if trigger == Trigger::Create {
                        Trigger::Replace
                    } else {
                        trigger
                    };
                    self.refresh_one(name, true, trigger, Some(definition))
                        .await
                        .map(Some)
                }
                Some(_) => Err(Error::Lake(medlake_lake::Error::TableExists {
                    schema: name.schema.clone(),
                    table: name.table.clone(),
                })),
                None => Err(Error::WrongObjectType {
                    name: name.to_string(),
                    is: "a table",
                    expected: "a materialized view",
                }),
            };
        }
        let _running = self.start(name)?;
        let started = Utc::now();
        let id = refresh_id(started);
        let span = info_span!("create_view", view = %name, refresh_id = %id);
        let result = async {
            let pinned = self.pin(name, &definition).await?;
            check_strict(&definition, &pinned)?;
            let checks = self.checks(
                &pinned.ctx,
                name,
                &definition,
                pinned.plan.schema(),
                &id,
                true,
            )?;
            let (query, state) = match self
                .full_state(&pinned.ctx, &definition, &pinned.plan)
                .await
            {
                Some(aggregated) => (aggregated.values, Some(aggregated.state)),
                None => (pinned.plan.clone(), None),
            };
            let input = self.checked(&pinned.ctx, &query, &checks).await?;
            let inputs = pinned.versions();
            let options = commit_options(
                &definition,
                (&id, trigger),
                "full",
                started,
                &pinned.versions(),
                &pinned,
                None,
            )?;
            let created = self
                .inner
                .warehouse
                .create_table_as_with(
                    name,
                    input,
                    Arc::new(pinned.ctx.state()),
                    create.if_not_exists,
                    &options,
                )
                .await
                .map_err(|e| write_failed(&checks, &pinned, e))?;
            if let Some(created) = &created {
                self.keep_state(name, &definition, state, created.version)
                    .await;
            }
            let mut counts = expectation_counts(&checks);
            counts.extend(pinned.source_mismatches());
            Ok::<_, Error>((created, inputs, counts))
        }
        .instrument(span)
        .await;
        let (created, inputs, counts) = match result {
            Ok(done) => done,
            Err(e) => {
                let outcome = failed(name, &id, trigger, started, &e);
                self.record(&outcome).await;
                return Err(e);
            }
        };
        let Some(created) = created else {
            return Ok(None);
        };
        let outcome = RefreshOutcome {
            view: name.clone(),
            refresh_id: id,
            trigger,
            started,
            finished: Utc::now(),
            mode: "full",
            reason: "the view was created".into(),
            inputs,
            rows_written: created.rows,
            version: Some(created.version),
            status: Status::Succeeded,
            error: None,
            expectations: counts,
        };
        self.record(&outcome).await;
        Ok(Some(outcome))
    }

    /// `DROP MATERIALIZED VIEW [IF EXISTS] name`, and its quarantine table.
    pub async fn drop(&self, name: &TableName, if_exists: bool) -> Result<bool> {
        if !self.inner.warehouse.table_exists(name).await? {
            return if if_exists {
                Ok(false)
            } else {
                Err(Error::ViewNotFound {
                    view: name.to_string(),
                })
            };
        }
        if self.view(name).await?.is_none() {
            return Err(Error::WrongObjectType {
                name: name.to_string(),
                is: "a table",
                expected: "a materialized view (use DROP TABLE)",
            });
        }
        let _running = self.start(name)?;
        self.inner.warehouse.drop_table(name, false).await?;
        self.drop_quarantine(name).await?;
        Ok(true)
    }

    /// After a view's definition was replaced: drops its quarantine unless the new definition
    /// quarantines too (then its full refresh replaced the quarantine's rows). Rows
    /// quarantined under the old definition would be read through the new one's lineage.
    async fn keep_quarantine_if_used(
        &self,
        name: &TableName,
        definition: &ViewDefinition,
    ) -> Result<()> {
        let quarantines = definition
            .expectations
            .iter()
            .any(|e| e.on_violation == crate::OnViolation::Quarantine);
        if quarantines {
            Ok(())
        } else {
            self.drop_quarantine(name).await
        }
    }

    /// Drops a view's quarantine table, if it has one. Its rows are protected by the view's
    /// lineage (the masks and row filters of the view's inputs), which it would lose with the
    /// view or with a definition that no longer quarantines.
    async fn drop_quarantine(&self, view: &TableName) -> Result<()> {
        let quarantine = quarantine_of(view)?;
        if self.inner.warehouse.table_exists(&quarantine).await? {
            self.inner.warehouse.drop_table(&quarantine, true).await?;
        }
        Ok(())
    }

    /// `REFRESH MATERIALIZED VIEW name [FULL] [CASCADE]`. With `cascade`, the views it reads
    /// (transitively) are refreshed first, in dependency order; a view whose upstream failed
    /// is marked stale, not refreshed. Returns every refresh it ran; fails with the first
    /// failure after recording them all.
    pub async fn refresh(
        &self,
        name: &TableName,
        full: bool,
        cascade: bool,
        trigger: Trigger,
    ) -> Result<Vec<RefreshOutcome>> {
        self.refresh_many(std::slice::from_ref(name), full, cascade, trigger)
            .await
    }

    /// [`Self::refresh`] of several views at once: with `cascade`, each view they read is
    /// refreshed once, before every view that reads it.
    pub async fn refresh_many(
        &self,
        names: &[TableName],
        full: bool,
        cascade: bool,
        trigger: Trigger,
    ) -> Result<Vec<RefreshOutcome>> {
        let mut named = Vec::new();
        for name in names {
            let Some(view) = self.view(name).await? else {
                return Err(Error::WrongObjectType {
                    name: name.to_string(),
                    is: "a table",
                    expected: "a materialized view",
                });
            };
            if !named.contains(&view.name) {
                named.push(view.name);
            }
        }
        let order = if cascade {
            let all = self.list().await?;
            let graph = self.graph(&all)?;
            let mut wanted = BTreeSet::new();
            let mut stack = named.clone();
            while let Some(next) = stack.pop() {
                if wanted.insert(next.clone()) {
                    stack.extend(graph.get(&next).cloned().unwrap_or_default());
                }
            }
            topological(&graph)?
                .into_iter()
                .filter(|v| wanted.contains(v))
                .collect()
        } else {
            named.clone()
        };
        let mut outcomes = Vec::new();
        let mut first_error = None;
        for (outcome, error) in self
            .refresh_in_order(
                &order,
                full,
                |v| {
                    if named.contains(v) {
                        trigger
                    } else {
                        Trigger::Cascade
                    }
                },
                None,
            )
            .await?
        {
            if first_error.is_none() {
                first_error = match (error, outcome.status) {
                    (Some(e), _) => Some(e),
                    (None, Status::Stale) => Some(Error::UpstreamFailed {
                        view: outcome.view.to_string(),
                        upstream: outcome.reason.clone(),
                        why: "so it was not refreshed".into(),
                    }),
                    (None, _) => None,
                };
            }
            outcomes.push(outcome);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }

    /// Refreshes `order` (already in dependency order). A view whose upstream (among all
    /// views) failed in this run, or whose last refresh failed, is marked stale.
    pub async fn refresh_in_order(
        &self,
        order: &[TableName],
        full: bool,
        trigger: impl Fn(&TableName) -> Trigger,
        at: Option<DateTime<Utc>>,
    ) -> Result<Vec<(RefreshOutcome, Option<Error>)>> {
        let all = self.list().await?;
        let graph = self.graph(&all)?;
        let history = history::latest_refreshes(&self.inner.warehouse, &self.inner.state).await?;
        let mut bad: HashMap<TableName, String> = HashMap::new();
        for (view, last) in &history {
            if matches!(last.status.as_str(), "failed" | "stale") {
                bad.insert(
                    view.clone(),
                    format!("{view}'s last refresh {}", last.status),
                );
            }
        }
        let mut outcomes = Vec::new();
        for name in order {
            let upstream_bad = graph
                .get(name)
                .into_iter()
                .flatten()
                .find_map(|up| bad.get(up).map(|why| (up.clone(), why.clone())));
            let (outcome, error) = match upstream_bad {
                Some((upstream, why)) => {
                    let now = at.unwrap_or_else(Utc::now);
                    let outcome = RefreshOutcome {
                        view: name.clone(),
                        refresh_id: refresh_id(now),
                        trigger: trigger(name),
                        started: now,
                        finished: now,
                        mode: "none",
                        reason: format!(
                            "upstream {upstream} is not good ({why}); not refreshed on bad input"
                        ),
                        inputs: BTreeMap::new(),
                        rows_written: 0,
                        version: None,
                        status: Status::Stale,
                        error: None,
                        expectations: Vec::new(),
                    };
                    self.record(&outcome).await;
                    (outcome, None)
                }
                None => match self
                    .refresh_one_at(name, full, trigger(name), None, at.unwrap_or_else(Utc::now))
                    .await
                {
                    Ok(outcome) => (outcome, None),
                    // Someone else is refreshing it right now: its rows will be fine.
                    Err(Error::RefreshRunning { .. })
                        if matches!(
                            trigger(name),
                            Trigger::Schedule | Trigger::Change | Trigger::Cascade
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        // Already recorded by refresh_one.
                        let now = Utc::now();
                        (
                            failed(name, &refresh_id(now), trigger(name), now, &e),
                            Some(e),
                        )
                    }
                },
            };
            match outcome.status {
                Status::Failed | Status::Stale => {
                    bad.insert(
                        name.clone(),
                        format!("{} {}", name, outcome.status.as_str()),
                    );
                }
                _ => {
                    bad.remove(name);
                }
            }
            outcomes.push((outcome, error));
        }
        Ok(outcomes)
    }

    /// Each view's upstream views.
    pub fn graph(&self, views: &[View]) -> Result<BTreeMap<TableName, Vec<TableName>>> {
        let names: HashSet<&TableName> = views.iter().map(|v| &v.name).collect();
        let mut graph = BTreeMap::new();
        for view in views {
            let upstream = self
                .references(&view.definition)?
                .into_iter()
                .filter(|r| names.contains(r))
                .collect();
            graph.insert(view.name.clone(), upstream);
        }
        Ok(graph)
    }

    /// Every (view, input) edge, with whether the input is itself a view.
    pub async fn lineage(&self) -> Result<Vec<(TableName, TableName, bool)>> {
        let views = self.list().await?;
        let names: HashSet<TableName> = views.iter().map(|v| v.name.clone()).collect();
        let mut edges = Vec::new();
        for view in &views {
            for input in self.references(&view.definition)? {
                let is_view = names.contains(&input);
                edges.push((view.name.clone(), input, is_view));
            }
        }
        Ok(edges)
    }

    /// Refreshes one view: incrementally when its query and its inputs' changes allow,
    /// fully otherwise (always fully with `full`, or when `replace` gives a new definition).
    /// The outcome is recorded in `system.refreshes` whether it succeeds or fails.
    pub async fn refresh_one(
        &self,
        name: &TableName,
        full: bool,
        trigger: Trigger,
        replace: Option<ViewDefinition>,
    ) -> Result<RefreshOutcome> {
        self.refresh_one_at(name, full, trigger, replace, Utc::now())
            .await
    }

    /// Tells the authority of a refresh the scheduler ran (statements are audited by the
    /// session that ran them).
    fn scheduled(&self, outcome: &RefreshOutcome) {
        if outcome.trigger.is_automatic()
            && let Some(authority) = self.inner.authority.get()
        {
            authority.scheduled(outcome);
        }
    }

    /// [`Self::refresh_one`], recording `started` as its start (the scheduler's clock).
    async fn refresh_one_at(
        &self,
        name: &TableName,
        full: bool,
        trigger: Trigger,
        replace: Option<ViewDefinition>,
        started: DateTime<Utc>,
    ) -> Result<RefreshOutcome> {
        let _running = self.start(name)?;
        let mut started = started;
        let mut replace = replace;
        let mut followed_up = false;
        loop {
            let id = refresh_id(started);
            let span =
                info_span!("refresh", view = %name, refresh_id = %id, trigger = trigger.as_str());
            let result = self
                .run(name, full, trigger, replace.take(), started, &id)
                .instrument(span)
                .await;
            let (outcome, again) = match result {
                Ok(done) => done,
                Err(e) => return Err(self.failed_refresh(name, &id, trigger, started, e).await),
            };
            info!(view = %name, mode = outcome.mode, rows = outcome.rows_written, status = outcome.status.as_str(), "refresh finished");
            // A scheduled look that found nothing to do is not history worth a commit;
            // the scheduler remembers it in memory.
            if !(outcome.status == Status::Skipped && trigger.is_automatic()) {
                self.record(&outcome).await;
                self.scheduled(&outcome);
            }
            if outcome.status == Status::Succeeded
                && let (Some(version), Some(listener)) =
                    (outcome.version, self.inner.listener.get())
            {
                listener.committed(name, version);
            }
            // The refresh held inputs back (see `lineage::Regions`): a second one applies
            // what they gained. Once: an input rewritten again meanwhile may hold them back
            // again, and the next refresh applies them then.
            if !again || followed_up {
                return Ok(outcome);
            }
            followed_up = true;
            started = Utc::now();
        }
    }

    async fn failed_refresh(
        &self,
        name: &TableName,
        id: &str,
        trigger: Trigger,
        started: DateTime<Utc>,
        e: Error,
    ) -> Error {
        warn!(view = %name, error = %e, "refresh failed");
        let outcome = failed(name, id, trigger, started, &e);
        self.record(&outcome).await;
        self.scheduled(&outcome);
        e
    }

    /// The refresh's authority (the owner's privileges, masks) over the pinned query.
    async fn check_authority(
        &self,
        name: &TableName,
        definition: &ViewDefinition,
        pinned: &Pinned,
    ) -> Result<()> {
        if let Some(authority) = self.inner.authority.get() {
            authority
                .check(
                    self,
                    name,
                    &pinned.plan,
                    &definition.default_schema,
                    &pinned.ctx.state(),
                )
                .await
                .map_err(|reason| Error::RefreshRefused {
                    view: name.to_string(),
                    reason,
                })?;
        }
        Ok(())
    }

    /// The plan an incremental-where-possible refresh runs and why; `Err`: nothing to do,
    /// and why. A refusal (`INCREMENTAL STRICT`) is the error.
    async fn choose(
        &self,
        view: &View,
        definition: &ViewDefinition,
        pinned: &Pinned,
    ) -> Result<std::result::Result<(Plan, String), String>> {
        match self.decide(view, definition, pinned, false).await.0 {
            Decision::Run(plan, reason) => Ok(Ok((plan, reason))),
            Decision::Refuse(reason) => Err(Error::NotIncremental {
                view: view.name.to_string(),
                reason,
            }),
            Decision::Skip(reason) => Ok(Err(reason)),
        }
    }

    async fn run(
        &self,
        name: &TableName,
        full: bool,
        trigger: Trigger,
        replace: Option<ViewDefinition>,
        started: DateTime<Utc>,
        id: &str,
    ) -> Result<(RefreshOutcome, bool)> {
        let view = self.view(name).await?.ok_or_else(|| Error::ViewNotFound {
            view: name.to_string(),
        })?;
        let replacing = replace.is_some();
        let definition = replace.unwrap_or_else(|| view.definition.clone());
        let pinned = self.pin(name, &definition).await?;
        if replacing {
            check_strict(&definition, &pinned)?;
        }
        let inputs = pinned.versions();
        let chosen = if replacing {
            Ok((Plan::Full, "the definition was replaced".to_string()))
        } else if full {
            Ok((Plan::Full, "FULL was asked for".to_string()))
        } else {
            self.choose(&view, &definition, &pinned).await?
        };
        let (plan, reason) = match chosen {
            Ok(chosen) => chosen,
            Err(reason) => {
                let refresh = (name, id, trigger, started);
                return Ok((skipped(refresh, reason, inputs, view.version), false));
            }
        };
        self.check_authority(name, &definition, &pinned).await?;
        let ctx = &pinned.ctx;
        let state = Arc::new(ctx.state());
        let mut checks = self.checks(
            ctx,
            name,
            &definition,
            pinned.plan.schema(),
            id,
            matches!(plan, Plan::Full),
        )?;
        let step = Step {
            name,
            view: &view,
            definition: &definition,
            pinned: &pinned,
            id,
        };
        let Write {
            mode,
            reason,
            input,
            write_mode,
            replace_where,
            held,
            state: aggregate_state,
        } = self.write_input(&step, plan, reason, &mut checks).await?;
        let mut inputs = inputs;
        for (table, version) in &held {
            inputs.insert(table.clone(), *version);
        }
        let options = CommitOptions {
            // A full refresh takes the query's schema (an input may have gained a column).
            replace_schema: mode == "full",
            replace_where,
            ..commit_options(
                &definition,
                (id, trigger),
                mode,
                started,
                &inputs,
                &pinned,
                Some(view.version),
            )?
        };
        let warehouse = &self.inner.warehouse;
        let on_cluster = crate::distributed::write_on_cluster(
            warehouse, name, &input, write_mode, &options, &state,
        );
        let written = match on_cluster.await? {
            Some(written) => written,
            None => warehouse
                .write_with(name, input, state, write_mode, &options)
                .await
                .map_err(|e| write_failed(&checks, &pinned, e))?,
        };
        self.keep_state(name, &definition, aggregate_state, written.version)
            .await;
        if replacing {
            self.keep_quarantine_if_used(name, &definition).await?;
        }
        let outcome = RefreshOutcome {
            view: name.clone(),
            refresh_id: id.to_string(),
            trigger,
            started,
            finished: Utc::now(),
            mode,
            reason,
            inputs,
            rows_written: written.rows,
            version: Some(written.version),
            status: Status::Succeeded,
            error: None,
            expectations: {
                let mut counts = expectation_counts(&checks);
                counts.extend(pinned.source_mismatches());
                counts
            },
        };
        Ok((outcome, !held.is_empty()))
    }

    /// `EXPLAIN REFRESH MATERIALIZED VIEW name`: what a refresh would do now, with the
    /// volume of each changed input, without writing anything.
    pub async fn explain_refresh(&self, name: &TableName) -> Result<RefreshPlan> {
        let Some(view) = self.view(name).await? else {
            return Err(Error::WrongObjectType {
                name: name.to_string(),
                is: "a table",
                expected: "a materialized view",
            });
        };
        let pinned = self.pin(name, &view.definition).await?;
        let (decision, inputs) = self.decide(&view, &view.definition, &pinned, true).await;
        let (mode, reason) = match decision {
            Decision::Skip(reason) => ("none", reason),
            Decision::Run(Plan::Full, reason) => ("full", reason),
            Decision::Run(_, reason) => ("incremental", reason),
            Decision::Refuse(reason) => ("refused", reason),
        };
        Ok(RefreshPlan {
            view: name.clone(),
            policy: view.definition.policy,
            mode,
            reason,
            inputs,
        })
    }

    /// What a refresh of `view` does under its `REFRESH POLICY`, given what changed; with
    /// the volume of each changed input when `explain` (or when `AUTO` needs it).
    async fn decide(
        &self,
        view: &View,
        definition: &ViewDefinition,
        pinned: &Pinned,
        explain: bool,
    ) -> (Decision, Vec<InputVolume>) {
        let changed = changed_inputs(view, pinned);
        if changed.is_empty() {
            let reason = format!(
                "no input changed since the last refresh (view version {})",
                view.version
            );
            return (Decision::Skip(reason), Vec::new());
        }
        let unseen = self.unseen_changes(definition, pinned, &changed).await;
        let changed: Vec<(&TableName, Change)> = changed
            .into_iter()
            .filter(|(t, _)| !unseen.contains_key(*t))
            .collect();
        let unseen: Vec<String> = unseen.into_values().collect();
        if changed.is_empty() {
            let reason = format!(
                "{}; the view's result cannot differ (view version {})",
                unseen.join(", "),
                view.version
            );
            return (Decision::Skip(reason), Vec::new());
        }
        let (decision, volumes) = self
            .decide_changed(view, definition, pinned, &changed, explain)
            .await;
        let decision = match decision {
            _ if unseen.is_empty() => decision,
            Decision::Run(plan, reason) => {
                Decision::Run(plan, format!("{}; {reason}", unseen.join(", ")))
            }
            Decision::Refuse(reason) => {
                Decision::Refuse(format!("{}; {reason}", unseen.join(", ")))
            }
            Decision::Skip(reason) => Decision::Skip(reason),
        };
        (decision, volumes)
    }

    /// The inputs of `changed` whose change the view cannot see, each with what to say of it:
    /// those that changed only in columns the view's query does not read (see [`unread`]).
    async fn unseen_changes(
        &self,
        definition: &ViewDefinition,
        pinned: &Pinned,
        changed: &[(&TableName, Change)],
    ) -> BTreeMap<TableName, String> {
        let mut unseen = BTreeMap::new();
        let mut optimized: Option<LogicalPlan> = None;
        for (table, change) in changed {
            let Change::Delta {
                now,
                before: Some(before),
            } = change
            else {
                continue;
            };
            let Some((_, provider, _)) = pinned.inputs.get(*table) else {
                continue;
            };
            let all: Vec<String> = provider
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let plan = match &mut optimized {
                Some(plan) => &*plan,
                None => match pinned.ctx.state().optimize(&pinned.plan) {
                    Ok(plan) => &*optimized.insert(plan),
                    Err(e) => {
                        debug!("cannot tell the columns {} reads: {e}", definition.query);
                        return unseen;
                    }
                },
            };
            let default_schema = definition.default_schema.as_str();
            let Some(columns) = unread::columns_read(plan, table, &all, default_schema) else {
                continue;
            };
            let rewrote = self.inner.warehouse.span(table, *before, *now).await;
            if !matches!(rewrote, Ok(Ok(ref span)) if span.rewrote) {
                continue;
            }
            let cancel = match self.changed_rows(pinned, table, *before + 1, *now).await {
                Ok((inserted, removed)) => {
                    unread::cancel_out(&pinned.ctx, &inserted, &removed, &columns).await
                }
                Err(e) => Err(e),
            };
            match cancel {
                Ok(true) => {
                    let said = format!(
                        "{table} changed (versions {before} to {now}) only in columns the view \
                         does not read"
                    );
                    unseen.insert((*table).clone(), said);
                }
                Ok(false) => {}
                Err(e) => debug!("cannot weigh the change of {table}: {e}"),
            }
        }
        unseen
    }

    /// [`Self::decide`] for the inputs whose change the view can see.
    async fn decide_changed(
        &self,
        view: &View,
        definition: &ViewDefinition,
        pinned: &Pinned,
        changed: &[(&TableName, Change)],
        explain: bool,
    ) -> (Decision, Vec<InputVolume>) {
        let policy = definition.policy;
        let (plan, reason) = if policy == RefreshPolicy::Full && !explain {
            (Plan::Full, String::new())
        } else {
            self.incremental_plan(definition, pinned, changed).await
        };
        let count = explain || (policy == RefreshPolicy::Auto && plan.rewrites());
        let volumes = volumes(&self.inner.warehouse, pinned, changed, &plan, count).await;
        let decision = match policy {
            RefreshPolicy::Full => {
                let names: Vec<String> = changed.iter().map(|(t, _)| t.to_string()).collect();
                Decision::Run(
                    Plan::Full,
                    format!(
                        "{} changed; REFRESH POLICY FULL recomputes the view",
                        names.join(", ")
                    ),
                )
            }
            RefreshPolicy::IncrementalStrict if matches!(plan, Plan::Full) => {
                Decision::Refuse(reason)
            }
            RefreshPolicy::Auto
                if plan.rewrites()
                    && above_auto_fraction(&volumes)
                    && !self.merges_state(view, definition, &plan).await =>
            {
                let said: Vec<&str> = plan.changes().iter().map(|c| c.said.as_str()).collect();
                Decision::Run(
                    Plan::Full,
                    format!(
                        "{}; the changed rows are more than {}% of the inputs' rows, so REFRESH \
                         POLICY AUTO recomputes the view",
                        said.join(", "),
                        AUTO_FULL_FRACTION * 100.0
                    ),
                )
            }
            _ => Decision::Run(plan, reason),
        };
        (decision, volumes)
    }

    /// How to refresh incrementally after the `changed` inputs changed, or why the view is
    /// refreshed fully after all.
    async fn incremental_plan(
        &self,
        definition: &ViewDefinition,
        pinned: &Pinned,
        changed: &[(&TableName, Change)],
    ) -> (Plan, String) {
        let rule_over_time = definition.expectations.iter().find(|e| {
            pinned
                .ctx
                .parse_sql_expr(&e.expression, pinned.plan.schema())
                .map_or(true, |expr| incremental::time_dependent(&expr))
        });
        if let Some(rule) = rule_over_time {
            return (
                Plan::Full,
                format!(
                    "expectation '{}' depends on the time of the refresh; refreshed fully",
                    rule.name
                ),
            );
        }
        let changes = match self.input_changes(pinned, changed).await {
            Ok(changes) => changes,
            Err(reason) => return (Plan::Full, reason),
        };
        let tables: Vec<&TableName> = changes.iter().map(|c| &c.table).collect();
        let removals = changes.iter().any(|c| c.removed.is_some());
        let said = changes
            .iter()
            .map(|c| c.said.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let default_schema = definition.default_schema.as_str();
        let shape = incremental::analyze(&pinned.plan, &tables, default_schema, removals).and_then(
            |shape| {
                needs_missing_old(&pinned.plan, &changes, default_schema)?;
                Ok(shape)
            },
        );
        match shape {
            Err(reason) => {
                let changed: Vec<(&TableName, bool)> = changes
                    .iter()
                    .map(|c| (&c.table, c.removed.is_none() && c.old.is_some()))
                    .collect();
                match lineage::regions(&pinned.plan, &changed, default_schema) {
                    Ok(regions) => {
                        let later = if regions.later.is_empty() {
                            String::new()
                        } else {
                            let names: Vec<String> =
                                regions.later.iter().map(ToString::to_string).collect();
                            format!(
                                "; {} as they were (a second refresh appends what they gained)",
                                names.join(", ")
                            )
                        };
                        (
                            Plan::Regions(changes, Box::new(regions)),
                            format!("{said}; recomputed the view where they touch it{later}"),
                        )
                    }
                    Err(why) => (
                        Plan::Full,
                        format!("{said}; {reason}; {why}; refreshed fully"),
                    ),
                }
            }
            Ok(Shape::Linear) if removals => (
                Plan::Linear(changes),
                format!("{said}; applied the view's rows for them"),
            ),
            Ok(Shape::Linear) => (
                Plan::Linear(changes),
                format!("{said}; appended the view's rows for them"),
            ),
            Ok(Shape::Distinct) => (
                Plan::Distinct(changes),
                format!("{said}; appended the distinct rows the view did not hold"),
            ),
            Ok(Shape::Keyed(keyed)) => {
                let reason = format!("{said}; {}", recomputed_keys(keyed.kind));
                (Plan::Keyed(changes, keyed), reason)
            }
        }
    }

    /// What each changed input gained and lost, ordered so that only the first may lack its
    /// old version; or why that cannot be told (the view refreshes fully).
    async fn input_changes(
        &self,
        pinned: &Pinned,
        changed: &[(&TableName, Change)],
    ) -> std::result::Result<Vec<InputChange>, String> {
        let several = changed.len() > 1;
        let mut changes = Vec::new();
        for (table, change) in changed {
            changes.push(self.input_change(pinned, table, change, several).await?);
        }
        changes.sort_by_key(|c| c.old.is_some());
        Ok(changes)
    }

    /// What one changed input gained and lost since the view's last refresh.
    async fn input_change(
        &self,
        pinned: &Pinned,
        table: &TableName,
        change: &Change,
        with_old: bool,
    ) -> std::result::Result<InputChange, String> {
        let full = |reason: String| format!("{reason}; refreshed fully");
        match change {
            Change::Delta {
                now,
                before: Some(before),
            } => {
                let warehouse = &self.inner.warehouse;
                let span = warehouse
                    .span(table, *before, *now)
                    .await
                    .map_err(|e| full(e.to_string()))?
                    .map_err(full)?;
                let (inserted, removed) = if span.rewrote {
                    let (inserted, removed) = self
                        .changed_rows(pinned, table, *before + 1, *now)
                        .await
                        .map_err(|e| full(format!("cannot read the changes of {table}: {e}")))?;
                    net_change(&pinned.ctx, inserted, removed).await
                } else {
                    let now = pinned
                        .inputs
                        .get(table)
                        .map(|(_, provider, _)| provider)
                        .ok_or_else(|| format!("{table} is not pinned"))?;
                    let added = warehouse
                        .added_rows(table, &span, now)
                        .await
                        .map_err(|e| full(format!("cannot read the rows added to {table}: {e}")))?;
                    (added, None)
                };
                let old = if with_old {
                    let (old, _) = warehouse
                        .table_provider(table, Some(&TimeTravel::Version(*before)))
                        .await
                        .map_err(|e| {
                            full(format!("cannot read {table} at version {before}: {e}"))
                        })?;
                    Some(old)
                } else {
                    None
                };
                let what = if span.rewrote {
                    "changed"
                } else {
                    "gained rows"
                };
                Ok(InputChange {
                    table: table.clone(),
                    said: format!("{table} {what} (versions {before} to {now})"),
                    inserted,
                    removed,
                    old,
                    before: Some(*before),
                })
            }
            Change::Marked {
                source,
                before: Some(Some(before)),
                now: Some(now),
            } if !source
                .changes_kept_since(before)
                .await
                .map_err(|e| e.to_string())? =>
            {
                Err(format!(
                    "the source of {table} no longer keeps its changes since {} {before}; \
                     extracted fully (a new snapshot)",
                    source.column()
                ))
            }
            Change::Marked {
                source,
                before: Some(Some(before)),
                now: Some(now),
            } => Ok(InputChange {
                table: table.clone(),
                said: format!(
                    "{table} gained rows (watermark {} from {before} to {now})",
                    source.column()
                ),
                inserted: source.between(before, now).map_err(|e| e.to_string())?,
                removed: None,
                old: None,
                before: None,
            }),
            Change::Delta { before: None, .. } => Err(format!(
                "{table} is a new input, or was dropped and created again"
            )),
            Change::Marked {
                before: None,
                now,
                source,
            } => Err(format!(
                "first extraction of {table} (watermark {} up to {})",
                source.column(),
                now.as_deref().unwrap_or("none: no row has one")
            )),
            Change::Marked { source, .. } => Err(format!(
                "{table} no longer has rows with a watermark ({}); extracted fully",
                source.column()
            )),
            Change::Unmarked => Err(format!(
                "{table} is an external table without a watermark column; extracted fully"
            )),
        }
    }

    /// The rows `table` gained and lost in versions `from` to `to` (its change data feed),
    /// as two tables with the input's columns and types.
    async fn changed_rows(
        &self,
        pinned: &Pinned,
        table: &TableName,
        from: u64,
        to: u64,
    ) -> Result<(Arc<dyn TableProvider>, Arc<dyn TableProvider>)> {
        let schema = pinned
            .inputs
            .get(table)
            .map(|(_, provider, _)| provider.schema())
            .ok_or_else(|| Error::Internal(format!("{table} is not pinned")))?;
        let feed = self.inner.warehouse.changes(table, from, to).await?;
        let frame = pinned.ctx.read_table(feed)?;
        let columns = same_types(&schema);
        let pick = |kinds: &[&str]| -> Result<Arc<dyn TableProvider>> {
            let kinds = kinds
                .iter()
                .map(|k| datafusion::logical_expr::lit(*k))
                .collect();
            Ok(frame
                .clone()
                .filter(
                    col(datafusion::common::Column::new_unqualified(
                        changes::CHANGE_TYPE,
                    ))
                    .in_list(kinds, false),
                )?
                .select(columns.clone())?
                .into_view())
        };
        Ok((pick(changes::ADDED)?, pick(changes::REMOVED)?))
    }

    /// [`Self::write_input`] for a linear plan: the view's rows for what the inputs gained
    /// (appended), or, when they lost rows too, the view rows those changes rewrite.
    async fn write_linear(
        &self,
        step: &Step<'_>,
        changes: &[InputChange],
        reason: String,
        checks: &mut Arc<Checks>,
    ) -> Result<Write> {
        let ctx = &step.pinned.ctx;
        let default_schema = step.definition.default_schema.as_str();
        let plus = union_all(terms(&step.pinned.plan, changes, default_schema, false)?)?;
        if changes.iter().all(|c| c.removed.is_none()) {
            let input = self.checked(ctx, &plus, checks).await?;
            return Ok(Write {
                mode: "incremental",
                reason,
                input,
                write_mode: WriteMode::Append,
                replace_where: None,
                held: BTreeMap::new(),
                state: None,
            });
        }
        let minus = union_all(terms(&step.pinned.plan, changes, default_schema, true)?)?;
        // A term that joins an input's change with another input reads that input whole
        // (silver.reading_outliers: every patient's statistics changed, joined with all of
        // silver.readings, twice): AUTO weighs that as for keys.
        let parts = [plus.clone(), minus.clone()];
        if let Some(why) = self.reads_too_much(step, &parts, "applying them").await {
            let why = format!("{reason}; {why}");
            return self.full_after_all(step, why, checks).await;
        }
        // The expectations see what the view gains net of what it loses: a row inserted and
        // deleted again between two refreshes is no row to check.
        match self.signed(step, plus, minus, checks).await? {
            Ok(signed) => Ok(Write {
                reason: format!("{reason} ({})", signed.reason),
                ..signed
            }),
            Err(too_many) => self.full_after_all(step, too_many, checks).await,
        }
    }

    /// [`Self::write_input`] for a DISTINCT view whose inputs only gained rows: the distinct
    /// new rows it holds neither in the view nor in its quarantine (appended).
    async fn write_distinct(
        &self,
        step: &Step<'_>,
        changes: &[InputChange],
        reason: String,
        checks: &mut Arc<Checks>,
    ) -> Result<Write> {
        let ctx = &step.pinned.ctx;
        let default_schema = step.definition.default_schema.as_str();
        let delta = union_all(terms(&step.pinned.plan, changes, default_schema, false)?)?;
        // Only held rows within the bounds of what the inputs gained can equal a new
        // row: the others are not read (see `bounds`).
        let gained: Vec<_> = changes
            .iter()
            .map(|c| (&c.table, c.inserted.clone()))
            .collect();
        let bound =
            bounds::gained_rows_bound(ctx, &step.pinned.plan, &gained, default_schema).await;
        let within = |rows: LogicalPlanBuilder| match &bound {
            Some(bound) => rows.filter(bound.clone()),
            None => Ok(rows),
        };
        // The rows the view holds, as the delta's types, to subtract from it.
        let held = within(LogicalPlanBuilder::scan(
            "current",
            self.held_rows(step).await?,
            None,
        )?)?
        .project(same_types(delta.schema().as_arrow()))?
        .build()?;
        let mut fresh = LogicalPlanBuilder::except(delta, held, false)?;
        // Rows a rule quarantined are not in the view but were taken: a copy sent
        // again is no new row (a full refresh quarantines it once).
        let warehouse = &self.inner.warehouse;
        if let Some(quarantine) = checks.quarantine_table().cloned()
            && warehouse.table_exists(&quarantine).await?
        {
            let (provider, _) = warehouse.table_provider(&quarantine, None).await?;
            let quarantined = within(LogicalPlanBuilder::scan(
                "quarantined",
                provider_as_source(provider),
                None,
            )?)?
            .project(same_types(fresh.schema().as_arrow()))?
            .build()?;
            fresh = LogicalPlanBuilder::except(fresh, quarantined, false)?;
        }
        let input = self.checked(ctx, &fresh, checks).await?;
        Ok(Write {
            mode: "incremental",
            reason,
            input,
            write_mode: WriteMode::Append,
            replace_where: None,
            held: BTreeMap::new(),
            state: None,
        })
    }

    /// What to write and how, for each plan; the write is the same for all: one commit on
    /// top of the view version this refresh read. An incremental refresh whose change turns
    /// out too large turns full (and `checks` with it).
    async fn write_input(
        &self,
        step: &Step<'_>,
        plan: Plan,
        reason: String,
        checks: &mut Arc<Checks>,
    ) -> Result<Write> {
        let ctx = &step.pinned.ctx;
        let default_schema = step.definition.default_schema.as_str();
        let write = |mode, reason, input, write_mode| Write {
            mode,
            reason,
            input,
            write_mode,
            replace_where: None,
            held: BTreeMap::new(),
            state: None,
        };
        match plan {
            Plan::Full => self.full_write(step, reason, checks).await,
            Plan::Linear(changes) => self.write_linear(step, &changes, reason, checks).await,
            Plan::Distinct(changes) => self.write_distinct(step, &changes, reason, checks).await,
            Plan::Keyed(changes, keyed) => {
                let mut deltas = terms(&keyed.input, &changes, default_schema, false)?;
                deltas.extend(terms(&keyed.input, &changes, default_schema, true)?);
                // The keys of each term (a union's columns lose their qualifiers, which the
                // key expressions use).
                let keys_plan = union_all(
                    deltas
                        .into_iter()
                        .map(|delta| keyed.keys_of(delta))
                        .collect::<datafusion::error::Result<Vec<_>>>()?,
                )?;
                let (_, batches) = self.collect_anywhere(ctx, &keys_plan).await?;
                let touched: usize = batches.iter().map(RecordBatch::num_rows).sum();
                if touched > MAX_CHANGED_GROUPS {
                    let why = format!(
                        "{touched} {} partitions changed (more than {MAX_CHANGED_GROUPS}); refreshed fully",
                        keyed.kind
                    );
                    return self.full_after_all(step, why, checks).await;
                }
                if touched == 0 {
                    let nothing = LogicalPlan::EmptyRelation(EmptyRelation {
                        produce_one_row: false,
                        schema: step.pinned.plan.schema().clone(),
                    });
                    let reason = format!("{reason} (no partition changed)");
                    return Ok(write("incremental", reason, nothing, WriteMode::Append));
                }
                let keys = distinct_keys(&batches, keyed.key_exprs.len())?;
                // (Each term yields its keys: a key touched twice is one partition.)
                let touched = distinct_tuples(&batches, keyed.key_exprs.len())?;
                if let Some(merged) = self.merged_state(step, &changes, &keyed, &keys).await {
                    checks.replace_region(keyed.replaced_rows(&keys));
                    let input = self.checked(ctx, &merged.values, checks).await?;
                    let merging = format!(
                        "merged what they gained into the aggregate state of the {touched} {} \
                         partition(s) they touch",
                        keyed.kind
                    );
                    let reason = reason.replacen(&recomputed_keys(keyed.kind), &merging, 1);
                    return Ok(Write {
                        mode: "incremental",
                        reason: format!("{reason} ({} evaluated)", merged.groups),
                        input,
                        write_mode: WriteMode::Overwrite,
                        replace_where: Some(keyed.replaced_rows(&keys)),
                        held: BTreeMap::new(),
                        state: Some(merged.state),
                    });
                }
                let recompute = keyed.recompute(&keys)?;
                if let Some(why) = self
                    .reads_too_much(step, slice::from_ref(&recompute), "recomputing them")
                    .await
                {
                    let why = format!("{reason}; {touched} partition(s): {why}");
                    return self.full_after_all(step, why, checks).await;
                }
                checks.replace_region(keyed.replaced_rows(&keys));
                let (query, state) = match self.by_key_with_state(step, &keyed, &keys).await {
                    Some(aggregated) => (aggregated.values, Some(aggregated.state)),
                    None => (recompute, None),
                };
                let input = self.checked(ctx, &query, checks).await?;
                Ok(Write {
                    mode: "incremental",
                    reason: format!("{reason} ({touched} partition(s))"),
                    input,
                    write_mode: WriteMode::Overwrite,
                    replace_where: Some(keyed.replaced_rows(&keys)),
                    held: BTreeMap::new(),
                    state,
                })
            }
            Plan::Regions(changes, regions) => {
                self.regions(step, &changes, &regions, reason, checks).await
            }
        }
    }

    /// Recomputes the regions of the view that the changes touch (see [`crate::lineage`])
    /// and replaces the view's rows there; inputs held for a second refresh are read as they
    /// were at the last refresh.
    async fn regions(
        &self,
        step: &Step<'_>,
        changes: &[InputChange],
        regions: &lineage::Regions,
        reason: String,
        checks: &mut Arc<Checks>,
    ) -> Result<Write> {
        let ctx = &step.pinned.ctx;
        let default_schema = step.definition.default_schema.as_str();
        let mut held = BTreeMap::new();
        let mut sources = Vec::new();
        for change in changes.iter().filter(|c| regions.later.contains(&c.table)) {
            let (Some(old), Some(before)) = (&change.old, change.before) else {
                return Err(Error::Internal(format!(
                    "{} has no old version to hold",
                    change.table
                )));
            };
            held.insert(change.table.to_string(), before);
            sources.push((change.table.clone(), provider_as_source(old.clone())));
        }
        let query = incremental::with_sources(
            incremental::strip_sort(&step.pinned.plan).clone(),
            default_schema,
            &sources,
        )?;
        let Some(predicates) = region_predicates(ctx, changes, regions).await? else {
            // The key expressions run on every changed row, outside the guards of the view's
            // query (a WHERE that leaves out what a CAST cannot take): when they fail, the
            // view is recomputed (the error, which may quote a value, is neither the reason
            // nor logged).
            debug!(view = %step.name, "region keys failed; recomputing the view");
            let why = format!(
                "{reason}; the keys of the changed rows could not be computed; refreshed fully"
            );
            return self.full_after_all(step, why, checks).await;
        };
        if predicates.is_empty() {
            let nothing = LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: step.pinned.plan.schema().clone(),
            });
            return Ok(Write {
                mode: "incremental",
                reason: format!("{reason} (no region changed)"),
                input: nothing,
                write_mode: WriteMode::Append,
                replace_where: None,
                held,
                state: None,
            });
        }
        // Each region once: the rows of region i that no earlier region holds.
        let mut parts = Vec::new();
        for (i, predicate) in predicates.iter().enumerate() {
            // (As it is, not `IS TRUE`, which a filter means anyway: the predicate then reaches
            // the scans, and a bucket such as `local_date(taken_at) IN (...)` becomes a range
            // of the instant they skip files by.)
            let mut only = predicate.clone();
            if let Some(earlier) = predicates[..i].iter().cloned().reduce(Expr::or) {
                only = only.and(earlier.is_not_true());
            }
            // What the region bounds, carried over range joins to their other side (which
            // DataFusion does not infer): the other side's scans skip what no row of the
            // region can match.
            let bounded = reach::transfer(&query, &reach::bounds_of(predicate))?;
            parts.push(LogicalPlanBuilder::from(bounded).filter(only)?.build()?);
        }
        if let Some(why) = self.reads_too_much(step, &parts, "recomputing them").await {
            let why = format!("{reason}; {} region(s): {why}", predicates.len());
            return self.full_after_all(step, why, checks).await;
        }
        let replaced = predicates
            .iter()
            .cloned()
            .map(lineage::unqualified)
            .reduce(Expr::or)
            .unwrap_or_else(|| datafusion::logical_expr::lit(false));
        checks.replace_region(replaced.clone());
        let input = self.checked(ctx, &union_all(parts)?, checks).await?;
        Ok(Write {
            mode: "incremental",
            reason: format!("{reason} ({} region(s))", predicates.len()),
            input,
            write_mode: WriteMode::Overwrite,
            replace_where: Some(replaced),
            held,
            state: None,
        })
    }

    /// Under `REFRESH POLICY AUTO`, why running `parts` (a keyed or region plan's queries, or
    /// a linear plan's terms after removals; `doing` says which) would read more than
    /// [`AUTO_READ_FRACTION`] of what the view's query reads in full; `None`: refresh
    /// incrementally (another policy, a small view, an external input, or a read that cannot
    /// be estimated).
    async fn reads_too_much(
        &self,
        step: &Step<'_>,
        parts: &[LogicalPlan],
        doing: &str,
    ) -> Option<String> {
        // Planning an external table's scan may already reach its source: not for a guess.
        if step.definition.policy != RefreshPolicy::Auto || !step.pinned.external.is_empty() {
            return None;
        }
        let ctx = &step.pinned.ctx;
        let full = cost::rows_read(ctx, slice::from_ref(&step.pinned.plan)).await?;
        if full < AUTO_MIN_ROWS {
            return None;
        }
        // (A change feed's scans know no row count: the changed rows are few next to what
        // this rule is about, the inputs a term reads whole.)
        let incremental = cost::rows_read_at_least(ctx, parts).await?;
        let share = incremental as f64 / full as f64;
        (share > AUTO_READ_FRACTION).then(|| {
            format!(
                "{doing} would read {incremental} input rows, {:.0}% of the {full} \
                 the view's query reads (more than {}%: the files holding those keys span \
                 most of the inputs), so REFRESH POLICY AUTO recomputes the view",
                share * 100.0,
                AUTO_READ_FRACTION * 100.0
            )
        })
    }

    /// A full refresh after all, because an incremental one turned out to change too much.
    async fn full_after_all(
        &self,
        step: &Step<'_>,
        reason: String,
        checks: &mut Arc<Checks>,
    ) -> Result<Write> {
        let Step {
            name,
            definition,
            pinned,
            id,
            ..
        } = *step;
        let ctx = &pinned.ctx;
        *checks = self.checks(ctx, name, definition, pinned.plan.schema(), id, true)?;
        self.full_write(step, reason, checks).await
    }

    /// A full refresh: the view's query over all of its inputs, and the view's aggregate
    /// state when it keeps one ([`crate::state`]).
    async fn full_write(
        &self,
        step: &Step<'_>,
        reason: String,
        checks: &mut Arc<Checks>,
    ) -> Result<Write> {
        let ctx = &step.pinned.ctx;
        let (query, state) = match self
            .full_state(ctx, step.definition, &step.pinned.plan)
            .await
        {
            Some(aggregated) => (aggregated.values, Some(aggregated.state)),
            None => (step.pinned.plan.clone(), None),
        };
        let input = self.checked(ctx, &query, checks).await?;
        Ok(Write {
            mode: "full",
            reason,
            input,
            write_mode: WriteMode::Overwrite,
            replace_where: None,
            held: BTreeMap::new(),
            state,
        })
    }

    /// The rows of a view that keeps aggregate state, and that state, computed from all of
    /// its input; `None` when the view keeps none (its query is not a GROUP BY of mergeable
    /// aggregates, or its queries run on a cluster) or the state could not be computed (the
    /// query then runs as it is and reports its own error).
    async fn full_state(
        &self,
        ctx: &SessionContext,
        definition: &ViewDefinition,
        plan: &LogicalPlan,
    ) -> Option<Aggregated> {
        if self.inner.cluster.get().is_some() {
            return None;
        }
        let keyed = incremental::grouped(plan, &definition.default_schema)?;
        let whole = keyed.input.as_ref().clone();
        match state::aggregate(ctx, &keyed, vec![whole], None).await {
            Ok(aggregated) => aggregated,
            Err(e) => {
                debug!(error = %e, "the aggregate state was not computed; the query runs as it is");
                None
            }
        }
    }

    /// A keyed refresh from the view's stored aggregate state: what the changed inputs
    /// gained, aggregated and merged into the state of the groups matching `keys`. `None`:
    /// the view keeps no state, an input lost rows (a state cannot forget them), or the
    /// stored state does not match the view's current version (recompute by key).
    async fn merged_state(
        &self,
        step: &Step<'_>,
        changes: &[InputChange],
        keyed: &incremental::Keyed,
        keys: &[Vec<ScalarValue>],
    ) -> Option<Aggregated> {
        if self.inner.cluster.get().is_some() || changes.iter().any(|c| c.removed.is_some()) {
            return None;
        }
        let default_schema = step.definition.default_schema.as_str();
        let gained = terms(&keyed.input, changes, default_schema, false).ok()?;
        self.with_state(step, keyed, gained, keys, Carry::Merge)
            .await
    }

    /// Whether `plan` adds what its inputs gained to the view's aggregate state (a keyed plan
    /// without removals, a stored state matching the view): it reads only the changes, so
    /// `AUTO`'s share of changed rows does not weigh it.
    async fn merges_state(&self, view: &View, definition: &ViewDefinition, plan: &Plan) -> bool {
        let Plan::Keyed(changes, _) = plan else {
            return false;
        };
        if self.inner.cluster.get().is_some() || changes.iter().any(|c| c.removed.is_some()) {
            return false;
        }
        self.stored_state(&view.name, view.state_version, definition)
            .await
            .is_some()
    }

    /// A recompute by key that also replaces the touched groups' aggregate state (so that
    /// a removal keeps the state); `None` as for [`Self::merged_state`] (the recompute then
    /// runs without it).
    async fn by_key_with_state(
        &self,
        step: &Step<'_>,
        keyed: &incremental::Keyed,
        keys: &[Vec<ScalarValue>],
    ) -> Option<Aggregated> {
        if self.inner.cluster.get().is_some() {
            return None;
        }
        let rows = keyed.input_for(keys).ok()?;
        self.with_state(step, keyed, vec![rows], keys, Carry::Replace)
            .await
    }

    async fn with_state(
        &self,
        step: &Step<'_>,
        keyed: &incremental::Keyed,
        inputs: Vec<LogicalPlan>,
        keys: &[Vec<ScalarValue>],
        carry: Carry,
    ) -> Option<Aggregated> {
        let stored = self
            .stored_state(step.name, step.view.state_version, step.definition)
            .await?;
        let stored = Some((stored, keys, carry));
        match state::aggregate(&step.pinned.ctx, keyed, inputs, stored).await {
            Ok(aggregated) => aggregated,
            Err(e) => {
                debug!(view = %step.name, error = %e, "the aggregate state was not used; recomputing by key");
                None
            }
        }
    }

    /// The aggregate state stored for `name` when it describes the view at `version` under
    /// `definition`.
    async fn stored_state(
        &self,
        name: &TableName,
        version: u64,
        definition: &ViewDefinition,
    ) -> Option<State> {
        let bytes = match self.inner.warehouse.get_sidecar(name, STATE_FILE).await {
            Ok(bytes) => bytes?,
            Err(e) => {
                debug!(view = %name, error = %e, "the aggregate state could not be read");
                return None;
            }
        };
        let fingerprint = state::fingerprint(&definition.query, &definition.default_schema);
        state::decode(&bytes, version, &fingerprint)
    }

    /// Keeps the aggregate state a refresh computed, tagged with the view version it wrote;
    /// after any other refresh deletes what was kept (it no longer matches the view). A
    /// state that could not be written or deleted is harmless: its tag is not the view's
    /// version, so it is never used.
    async fn keep_state(
        &self,
        name: &TableName,
        definition: &ViewDefinition,
        state: Option<State>,
        version: u64,
    ) {
        let warehouse = &self.inner.warehouse;
        let fingerprint = state::fingerprint(&definition.query, &definition.default_schema);
        let kept = match state.map(|s| state::encode(&s, version, &fingerprint)) {
            Some(Ok(bytes)) => warehouse.put_sidecar(name, STATE_FILE, bytes.into()).await,
            Some(Err(e)) => {
                warn!(view = %name, error = %e, "the aggregate state could not be encoded");
                warehouse.delete_sidecar(name, STATE_FILE).await
            }
            None => warehouse.delete_sidecar(name, STATE_FILE).await,
        };
        if let Err(e) = kept {
            warn!(view = %name, error = %e, "the aggregate state was not kept; the next refresh recomputes by key");
        }
    }

    /// Applies rows gained (`plus`) and rows lost (`minus`) to a view without a key: each
    /// distinct row's count in the view changes by its count in `plus` less its count in
    /// `minus`, and the view's expectations (`checks`) judge the rows that count gains (so
    /// a row inserted and deleted again between two refreshes is never judged). Only the
    /// view rows equal to a changed row are read and rewritten (an overwrite of the rows
    /// matching their values). A count that would fall below zero is a row the view never
    /// held (its expectations dropped it: rows equal in every column fare the same): it
    /// stays at zero. `Err`: too many changed rows.
    async fn signed(
        &self,
        step: &Step<'_>,
        plus: LogicalPlan,
        minus: LogicalPlan,
        checks: &Arc<Checks>,
    ) -> Result<std::result::Result<Write, String>> {
        let ctx = &step.pinned.ctx;
        let held_source = self.held_rows(step).await?;
        let target = held_source.schema();
        let group: Vec<Expr> = target
            .fields()
            .iter()
            .map(|f| col(datafusion::common::Column::new_unqualified(f.name())))
            .collect();
        let net = self
            .judged_net(ctx, &target, &group, plus, minus, checks)
            .await?;
        let columns = target.fields().len();
        let changed: usize = net.iter().map(RecordBatch::num_rows).sum();
        if changed > MAX_CHANGED_GROUPS {
            return Ok(Err(format!(
                "{changed} distinct view rows changed (more than {MAX_CHANGED_GROUPS}); refreshed fully"
            )));
        }
        let only_gained = net.iter().all(|batch| {
            batch
                .column(columns)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .is_some_and(|w| w.values().iter().all(|w| *w > 0))
        });
        if only_gained {
            // Nothing the view holds goes: append what it gains (possibly nothing).
            let rows = multiset::apply(&target, &[], &net, columns)?;
            let written = rows.num_rows();
            let table =
                datafusion::datasource::MemTable::try_new(target.clone(), vec![vec![rows]])?;
            let input =
                LogicalPlanBuilder::scan("changed", provider_as_source(Arc::new(table)), None)?
                    .build()?;
            return Ok(Ok(Write {
                mode: "incremental",
                reason: format!("{written} view row(s) appended"),
                input,
                write_mode: WriteMode::Append,
                replace_where: None,
                held: BTreeMap::new(),
                state: None,
            }));
        }
        let keys = distinct_keys(&net, columns)?;
        let region = group
            .iter()
            .zip(&keys)
            .map(|(c, values)| incremental::key_predicate(c.clone(), values))
            .reduce(Expr::and)
            .unwrap_or_else(|| datafusion::logical_expr::lit(false));
        let held = LogicalPlanBuilder::scan("current", held_source.clone(), None)?
            .filter(region.clone())?
            .build()?;
        let (_, held) = self.collect_anywhere(ctx, &held).await?;
        let rows = multiset::apply(&target, &held, &net, columns)?;
        let written = rows.num_rows();
        let table = datafusion::datasource::MemTable::try_new(target.clone(), vec![vec![rows]])?;
        let input = LogicalPlanBuilder::scan("changed", provider_as_source(Arc::new(table)), None)?
            .build()?;
        Ok(Ok(Write {
            mode: "incremental",
            reason: format!("{changed} distinct row(s) changed, {written} view row(s) rewritten"),
            input,
            write_mode: WriteMode::Overwrite,
            replace_where: Some(region),
            held: BTreeMap::new(),
            state: None,
        }))
    }

    /// The net change `plus` less `minus` (each distinct row with its weight, zero weights
    /// left out), after the expectations (`checks`) judged the rows it gains.
    async fn judged_net(
        &self,
        ctx: &SessionContext,
        target: &arrow::datatypes::SchemaRef,
        group: &[Expr],
        plus: LogicalPlan,
        minus: LogicalPlan,
        checks: &Arc<Checks>,
    ) -> Result<Vec<RecordBatch>> {
        let weight = "__medlake_weight";
        let weighted = |plan: LogicalPlan, w: i64| -> Result<LogicalPlan> {
            let mut exprs = same_types(target);
            exprs.push(datafusion::logical_expr::lit(w).alias(weight));
            Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
        };
        let netted = |signed: LogicalPlan| -> Result<LogicalPlan> {
            Ok(LogicalPlanBuilder::from(signed)
                .aggregate(
                    group.to_vec(),
                    vec![datafusion::functions_aggregate::sum::sum(col(weight)).alias(weight)],
                )?
                .filter(col(weight).not_eq(datafusion::logical_expr::lit(0i64)))?
                .build()?)
        };
        let net = netted(
            LogicalPlanBuilder::from(weighted(plus, 1)?)
                .union(weighted(minus, -1)?)?
                .build()?,
        )?;
        let (net_schema, net) = self.collect_anywhere(ctx, &net).await?;
        let columns = target.fields().len();
        // The gains, one row per copy, through the expectations; then netted again with the
        // losses.
        let (gains, losses) = multiset::split(target, &net_schema, &net, columns)?;
        let gains_plan = LogicalPlanBuilder::scan(
            "gained",
            provider_as_source(Arc::new(datafusion::datasource::MemTable::try_new(
                target.clone(),
                vec![gains],
            )?)),
            None,
        )?
        .build()?;
        let losses_plan = LogicalPlanBuilder::scan(
            "lost",
            provider_as_source(Arc::new(datafusion::datasource::MemTable::try_new(
                net_schema,
                vec![vec![losses]],
            )?)),
            None,
        )?
        .build()?;
        let checked = self.checked(ctx, &gains_plan, checks).await?;
        let net = netted(
            LogicalPlanBuilder::from(weighted(checked, 1)?)
                .union(losses_plan)?
                .build()?,
        )?;
        let physical = ctx.state().create_physical_plan(&net).await?;
        let net = collect(physical, ctx.task_ctx()).await?;
        Ok(net)
    }

    /// The view's rows at the version this refresh read, as a table source.
    async fn held_rows(
        &self,
        step: &Step<'_>,
    ) -> Result<Arc<dyn datafusion::logical_expr::TableSource>> {
        let (current, _) = self
            .inner
            .warehouse
            .table_provider(step.name, Some(&TimeTravel::Version(step.view.version)))
            .await?;
        Ok(provider_as_source(current))
    }

    /// Writes the outcome to `system.refreshes` (and its expectation counts to
    /// `system.expectations`). A failure to record is logged, not raised: the refresh itself
    /// has already committed or failed.
    async fn record(&self, outcome: &RefreshOutcome) {
        if let Err(e) = history::record(&self.inner.warehouse, outcome).await {
            warn!(view = %outcome.view, error = %e, "could not record the refresh in system.refreshes");
        }
        if let Some(listener) = self.inner.listener.get() {
            listener.finished(outcome);
        }
    }
}

/// A refresh that found nothing to do: `refresh` is (view, refresh id, trigger, start).
fn skipped(
    (name, id, trigger, started): (&TableName, &str, Trigger, DateTime<Utc>),
    reason: String,
    inputs: BTreeMap<String, u64>,
    version: u64,
) -> RefreshOutcome {
    RefreshOutcome {
        view: name.clone(),
        refresh_id: id.to_string(),
        trigger,
        started,
        finished: Utc::now(),
        mode: "none",
        reason,
        inputs,
        rows_written: 0,
        version: Some(version),
        status: Status::Skipped,
        error: None,
        expectations: Vec::new(),
    }
}

fn failed(
    name: &TableName,
    id: &str,
    trigger: Trigger,
    started: DateTime<Utc>,
    e: &Error,
) -> RefreshOutcome {
    RefreshOutcome {
        view: name.clone(),
        refresh_id: id.to_string(),
        trigger,
        started,
        finished: Utc::now(),
        mode: "none",
        reason: String::new(),
        inputs: BTreeMap::new(),
        rows_written: 0,
        version: None,
        status: if matches!(e, Error::Lake(medlake_lake::Error::Conflict { .. })) {
            Status::Conflict
        } else {
            Status::Failed
        },
        error: Some(medlake_common::error_chain(e)),
        expectations: Vec::new(),
    }
}

/// The error of a view's failed write: a `FAIL UPDATE` rule's or an external source's (which
/// the write reports only as text), else the write's own.
fn write_failed(checks: &Checks, pinned: &Pinned, e: medlake_lake::Error) -> Error {
    checks
        .failure()
        .or_else(|| pinned.source_failure())
        .unwrap_or(Error::Lake(e))
}

fn expectation_counts(checks: &Checks) -> Vec<(String, String, &'static str, u64, u64)> {
    let rows = checks.rows.load(std::sync::atomic::Ordering::Relaxed);
    checks
        .rules
        .iter()
        .zip(&checks.violations)
        .map(|(rule, violations)| {
            (
                rule.name.clone(),
                rule.expression.clone(),
                rule.on_violation.as_str(),
                rows,
                violations.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
        .collect()
}

/// The inputs that changed since the view's last refresh, and how.
/// One predicate (over the view's columns) per region the changes of `regions.keys` touch;
/// `None` when a key expression failed on some changed row. Regions over the same view
/// columns (the reads of one input in several places, several changed inputs joined on one
/// key) are merged into one: each column holds the values of either, or the range that spans
/// both where one is known up to a reach. A superset of the regions, recomputed once (each
/// region's recompute reads what its predicate lets through: three regions of today's
/// device-days read today's readings three times).
async fn region_predicates(
    ctx: &SessionContext,
    changes: &[InputChange],
    regions: &lineage::Regions,
) -> Result<Option<Vec<Expr>>> {
    let mut merged: Vec<Vec<Touched>> = Vec::new();
    for key in &regions.keys {
        let change = changes
            .iter()
            .find(|c| c.table == key.table)
            .ok_or_else(|| Error::Internal(format!("no change of {}", key.table)))?;
        let mut rows =
            LogicalPlanBuilder::scan("changes", provider_as_source(change.inserted.clone()), None)?;
        if let Some(removed) = &change.removed {
            rows = rows.union(
                LogicalPlanBuilder::scan("changes", provider_as_source(removed.clone()), None)?
                    .build()?,
            )?;
        }
        let group: Vec<Expr> = key
            .pairs
            .iter()
            .enumerate()
            .map(|(i, (_, k, _))| k.clone().alias(format!("__medlake_key_{i}")))
            .collect();
        let touched = rows.aggregate(group, Vec::<Expr>::new())?.build()?;
        let Ok(batches) = collect_plan(ctx, &touched).await else {
            return Ok(None);
        };
        if batches.iter().all(|b| b.num_rows() == 0) {
            continue;
        }
        let values = distinct_keys(&batches, key.pairs.len())?;
        let mut region: Vec<Touched> = key
            .pairs
            .iter()
            .zip(values)
            .map(|((view, _, reach), values)| Touched {
                view: view.clone(),
                values,
                reach: *reach,
            })
            .collect();
        // (In one order, whatever order the reads' keys come in.)
        region.sort_by_cached_key(|t| t.view.schema_name().to_string());
        let same = |r: &Vec<Touched>| {
            r.len() == region.len() && r.iter().zip(&region).all(|(a, b)| a.view == b.view)
        };
        match merged.iter_mut().find(|r| same(r)) {
            Some(into) => {
                for (column, more) in into.iter_mut().zip(region) {
                    column.merge(more);
                }
            }
            None => merged.push(region),
        }
    }
    // A region inside another (its columns a superset of the other's, each holding only
    // values the other holds) adds no row: gold.data_completeness's readings counts by device,
    // ward and day lie inside its day-keyed region of the same days.
    let inside = |small: &Vec<Touched>, big: &Vec<Touched>| {
        big.iter().all(|b| {
            small.iter().any(|s| {
                s.view == b.view && s.reach.is_none() && b.reach.is_none() && {
                    let held: HashSet<&ScalarValue> = b.values.iter().collect();
                    s.values.iter().all(|v| held.contains(v))
                }
            })
        })
    };
    let mut kept: Vec<Vec<Touched>> = Vec::new();
    for (i, region) in merged.iter().enumerate() {
        let covered = merged
            .iter()
            .enumerate()
            .any(|(j, other)| j != i && inside(region, other) && (!inside(other, region) || j < i));
        if !covered {
            kept.push(region.clone());
        }
    }
    Ok(Some(
        kept.into_iter()
            .map(|region| {
                region
                    .into_iter()
                    .map(Touched::predicate)
                    .reduce(Expr::and)
                    .unwrap_or_else(|| datafusion::logical_expr::lit(true))
            })
            .collect(),
    ))
}

/// One view column of a region: the values the changed rows give it, and how far from them
/// the view's values may lie (see [`lineage::Reach`]).
#[derive(Clone)]
struct Touched {
    view: Expr,
    values: Vec<ScalarValue>,
    reach: lineage::Reach,
}

impl Touched {
    fn merge(&mut self, other: Touched) {
        self.reach = match (self.reach, other.reach) {
            (None, None) => None,
            // A value itself lies at the reach [0, 0].
            (a, b) => {
                let (a, b) = (a.unwrap_or((0, 0)), b.unwrap_or((0, 0)));
                Some((a.0.min(b.0), a.1.max(b.1)))
            }
        };
        let mut seen: HashSet<ScalarValue> = self.values.iter().cloned().collect();
        self.values
            .extend(other.values.into_iter().filter(|v| seen.insert(v.clone())));
    }

    fn predicate(self) -> Expr {
        match self.reach {
            None => lineage::region_predicate(self.view, &self.values),
            Some((low, high)) => lineage::reach_predicate(self.view, &self.values, low, high),
        }
    }
}

/// Runs `plan` to its batches.
async fn collect_plan(
    ctx: &SessionContext,
    plan: &LogicalPlan,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let physical = ctx.state().create_physical_plan(plan).await?;
    collect(physical, ctx.task_ctx()).await
}

/// `REFRESH POLICY INCREMENTAL STRICT` refuses, when the view is created or replaced, a query
/// that some change to its inputs would make recompute: every input is taken as changed,
/// rows lost included.
fn check_strict(definition: &ViewDefinition, pinned: &Pinned) -> Result<()> {
    if definition.policy != RefreshPolicy::IncrementalStrict {
        return Ok(());
    }
    let refuse = |reason: String| Error::InvalidDefinition {
        reason: format!(
            "REFRESH POLICY INCREMENTAL STRICT, but {reason}, so a refresh would recompute the \
             view (use REFRESH POLICY AUTO or INCREMENTAL)"
        ),
    };
    for rule in &definition.expectations {
        let over_time = pinned
            .ctx
            .parse_sql_expr(&rule.expression, pinned.plan.schema())
            .map_or(true, |expr| incremental::time_dependent(&expr));
        if over_time {
            return Err(refuse(format!(
                "expectation '{}' depends on the time of the refresh",
                rule.name
            )));
        }
    }
    if let Some((table, _)) = pinned
        .external
        .iter()
        .find(|(_, e)| e.watermarked.is_none())
    {
        return Err(refuse(format!(
            "{table} is an external table without a watermark column (each refresh extracts \
             it fully)"
        )));
    }
    let tables: Vec<&TableName> = pinned.inputs.keys().collect();
    if pinned.external.len() > 1 {
        return Err(refuse(format!(
            "it reads {} external tables (a refresh handles one changed external input)",
            pinned.external.len()
        )));
    }
    let default_schema = definition.default_schema.as_str();
    match incremental::analyze(&pinned.plan, &tables, default_schema, true) {
        Ok(_) => Ok(()),
        Err(reason) => {
            // What the shapes cannot take, regions may: recomputed where the change touches.
            let changed: Vec<(&TableName, bool)> = tables.iter().map(|t| (*t, false)).collect();
            lineage::regions(&pinned.plan, &changed, default_schema)
                .map(|_| ())
                .map_err(|why| refuse(format!("{reason}; {why}")))
        }
    }
}

/// The volume of each changed input when `count` and the plan reads the input's changes
/// (Delta inputs only: counting an external one would extract it twice): from the log's row
/// counts where it tells ([`Warehouse::change_volume`]), else by counting the change rows.
async fn volumes(
    warehouse: &Warehouse,
    pinned: &Pinned,
    changed: &[(&TableName, Change)],
    plan: &Plan,
    count: bool,
) -> Vec<InputVolume> {
    let mut out = Vec::new();
    for (table, change) in changed {
        let (from_version, to_version) = match change {
            Change::Delta { now, before } => (*before, Some(*now)),
            _ => (None, None),
        };
        let mut volume = InputVolume {
            table: (*table).clone(),
            from_version,
            to_version,
            inserted: None,
            removed: None,
            rows: None,
        };
        let read = plan.changes().iter().find(|c| &c.table == *table);
        if let (true, Some(read), Change::Delta { now, before }) = (count, read, change) {
            let logged = match before {
                Some(before) => warehouse
                    .change_volume(table, *before, *now)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            if let Some((inserted, removed)) = logged {
                volume.inserted = Some(inserted);
                volume.removed = Some(removed);
            } else {
                volume.inserted = count_rows(&pinned.ctx, &read.inserted).await;
                volume.removed = match &read.removed {
                    Some(removed) => count_rows(&pinned.ctx, removed).await,
                    None => Some(0),
                };
            }
            if let Some((_, provider, _)) = pinned.inputs.get(*table) {
                volume.rows = count_rows(&pinned.ctx, provider).await;
            }
        }
        out.push(volume);
    }
    out
}

async fn count_rows(ctx: &SessionContext, provider: &Arc<dyn TableProvider>) -> Option<u64> {
    let frame = ctx.read_table(provider.clone()).ok()?;
    let rows = frame.count().await.ok()?;
    u64::try_from(rows).ok()
}

/// Whether the changed rows exceed [`AUTO_FULL_FRACTION`] of the changed inputs' rows, those
/// being at least [`AUTO_MIN_ROWS`] (not when any count is unknown).
fn above_auto_fraction(volumes: &[InputVolume]) -> bool {
    let mut changed = 0u64;
    let mut rows = 0u64;
    for volume in volumes {
        let (Some(inserted), Some(removed), Some(now)) =
            (volume.inserted, volume.removed, volume.rows)
        else {
            return false;
        };
        changed = changed.saturating_add(inserted).saturating_add(removed);
        // The larger of the input's rows before and after the change.
        let before = now.saturating_add(removed).saturating_sub(inserted);
        rows = rows.saturating_add(now.max(before));
    }
    rows >= AUTO_MIN_ROWS && changed as f64 > AUTO_FULL_FRACTION * rows as f64
}

/// The quarantine table of `view` (`silver.readings_quarantine`).
pub fn quarantine_of(view: &TableName) -> Result<TableName> {
    Ok(TableName::new(
        &view.schema,
        format!("{}{QUARANTINE_SUFFIX}", view.table),
    )?)
}

fn changed_inputs<'a>(view: &View, pinned: &'a Pinned) -> Vec<(&'a TableName, Change)> {
    pinned
        .inputs
        .iter()
        .filter_map(|(t, (v, _, table_id))| {
            let key = t.to_string();
            let same_table = view
                .last
                .input_ids
                .get(&key)
                .is_none_or(|recorded| recorded == table_id);
            match pinned.external.get(t) {
                Some(ExternalPin {
                    watermarked: Some(source),
                    mark,
                    ..
                }) => {
                    let before = view.last.input_marks.get(&key).filter(|_| same_table);
                    (before != Some(mark)).then(|| {
                        (
                            t,
                            Change::Marked {
                                source: source.clone(),
                                before: before.cloned(),
                                now: mark.clone(),
                            },
                        )
                    })
                }
                Some(ExternalPin {
                    watermarked: None, ..
                }) => Some((t, Change::Unmarked)),
                None => {
                    let before = view.last.inputs.get(&key).copied().filter(|_| same_table);
                    (Some(*v) != before).then_some((t, Change::Delta { now: *v, before }))
                }
            }
        })
        .collect()
}

/// What one refresh step works on.
#[derive(Clone, Copy)]
struct Step<'a> {
    name: &'a TableName,
    view: &'a View,
    definition: &'a ViewDefinition,
    pinned: &'a Pinned,
    id: &'a str,
}

/// What a keyed refresh's reason says it does (a refresh from the aggregate state says
/// what it did instead).
fn recomputed_keys(kind: &str) -> String {
    format!("recomputed the {kind} partitions they touch")
}

/// The query `plan` over the change of each changed input in turn: input i's inserted rows
/// (or, with `removed`, its removed rows), the inputs before it as they are now, the inputs
/// after it as they were at the last refresh. For a query linear in each input the sum of
/// these terms is exactly what the query gained (lost): Q(new) − Q(old) = Σᵢ Q(new<ᵢ, Δᵢ, old>ᵢ).
fn terms(
    plan: &LogicalPlan,
    changes: &[InputChange],
    default_schema: &str,
    removed: bool,
) -> Result<Vec<LogicalPlan>> {
    let mut terms = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let source = match (removed, &change.removed) {
            (false, _) => change.inserted.clone(),
            (true, Some(rows)) => rows.clone(),
            (true, None) => continue,
        };
        // (An input without its old version is one this term does not read: see
        // `needs_missing_old`.)
        let others: Vec<_> = changes[i + 1..]
            .iter()
            .filter_map(|later| {
                later
                    .old
                    .clone()
                    .map(|old| (later.table.clone(), provider_as_source(old)))
            })
            .collect();
        terms.push(incremental::replace_scans(
            plan,
            &change.table,
            default_schema,
            provider_as_source(source),
            &others,
        )?);
    }
    Ok(terms)
}

/// Refuses changes where one input's term must read another input as it was and that input
/// is external (no old version to read).
fn needs_missing_old(
    plan: &LogicalPlan,
    changes: &[InputChange],
    default_schema: &str,
) -> std::result::Result<(), String> {
    for (i, change) in changes.iter().enumerate() {
        for later in &changes[i + 1..] {
            if later.old.is_none()
                && incremental::term_reads(plan, &change.table, &later.table, default_schema)
            {
                return Err(format!(
                    "{} and {} changed and {} is external (its rows as they were cannot be read)",
                    change.table, later.table, later.table
                ));
            }
        }
    }
    Ok(())
}

/// What an input gained and lost, less the rows it lost and gained again: as multisets of
/// whole rows, when neither side holds more than [`unread::MAX_ROWS`] rows (else as they are).
/// A view recomputed whole rewrites the rows that did not change (its change feed lists them
/// lost and gained); the views over it then refresh the rows that did, not every key.
/// `None` lost: the input only gained rows.
async fn net_change(
    ctx: &SessionContext,
    inserted: Arc<dyn TableProvider>,
    removed: Arc<dyn TableProvider>,
) -> (Arc<dyn TableProvider>, Option<Arc<dyn TableProvider>>) {
    match netted(ctx, &inserted, &removed).await {
        Ok(Some((gained, lost))) => (gained, lost),
        Ok(None) => (inserted, Some(removed)),
        Err(e) => {
            debug!("cannot net the change out: {e}");
            (inserted, Some(removed))
        }
    }
}

/// [`net_change`]'s rows; `None`: too many to net.
async fn netted(
    ctx: &SessionContext,
    inserted: &Arc<dyn TableProvider>,
    removed: &Arc<dyn TableProvider>,
) -> Result<Option<(Arc<dyn TableProvider>, Option<Arc<dyn TableProvider>>)>> {
    if unread::sizes_within(ctx, &[inserted, removed])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let target = inserted.schema();
    let weight = "__medlake_weight";
    let weighted = |provider: &Arc<dyn TableProvider>, w: i64| -> Result<LogicalPlan> {
        let mut exprs = same_types(&target);
        exprs.push(datafusion::logical_expr::lit(w).alias(weight));
        Ok(
            LogicalPlanBuilder::scan("changes", provider_as_source(provider.clone()), None)?
                .project(exprs)?
                .build()?,
        )
    };
    let group: Vec<Expr> = target
        .fields()
        .iter()
        .map(|f| col(datafusion::common::Column::new_unqualified(f.name())))
        .collect();
    let net = LogicalPlanBuilder::from(weighted(inserted, 1)?)
        .union(weighted(removed, -1)?)?
        .aggregate(
            group,
            vec![datafusion::functions_aggregate::sum::sum(col(weight)).alias(weight)],
        )?
        .filter(col(weight).not_eq(datafusion::logical_expr::lit(0i64)))?
        .build()?;
    let batches = collect_plan(ctx, &net).await?;
    let (gained, lost) = multiset::expand(&target, &batches, target.fields().len())?;
    let table = |batches: Vec<RecordBatch>| -> Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(datafusion::datasource::MemTable::try_new(
            target.clone(),
            vec![batches],
        )?))
    };
    let lost = if lost.is_empty() {
        None
    } else {
        Some(table(lost)?)
    };
    Ok(Some((table(gained)?, lost)))
}

/// The rows of every plan (all of one schema), or none.
fn union_all(plans: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    let mut plans = plans.into_iter();
    let first = plans
        .next()
        .ok_or_else(|| Error::Internal("no change to read".into()))?;
    let mut builder = LogicalPlanBuilder::from(first);
    for plan in plans {
        builder = builder.union(plan)?;
    }
    Ok(builder.build()?)
}

/// How an input changed since the view's last refresh.
enum Change {
    Delta {
        now: u64,
        before: Option<u64>,
    },
    Marked {
        source: Arc<dyn Watermarked>,
        /// `None`: never extracted; `Some(None)`: extracted when no row had a watermark.
        before: Option<Option<String>>,
        now: Option<String>,
    },
    Unmarked,
}

/// Opens an external input from its stored definition, pinned at its current high watermark.
async fn pin_external(
    connectors: &Registry,
    name: &TableName,
    stored: Value,
    policy: &Arc<medlake_source::Policy>,
) -> Result<(Arc<dyn TableProvider>, String, ExternalPin)> {
    let source_error = |e: medlake_source::Error| Error::Source {
        table: name.to_string(),
        source: e,
    };
    let definition: medlake_source::Definition = serde_json::from_value(stored)
        .map_err(|e| Error::Internal(format!("external table {name}: {e}")))?;
    let table = connectors.open(&definition, policy).map_err(source_error)?;
    let id = definition.id();
    match table.clone().watermarked() {
        Some(source) => {
            let mark = source.high_mark().await.map_err(source_error)?;
            let provider = source.upto(mark.as_deref()).map_err(source_error)?;
            Ok((
                provider,
                id,
                ExternalPin {
                    table,
                    watermarked: Some(source),
                    mark,
                },
            ))
        }
        None => Ok((
            table.clone().provider(),
            id,
            ExternalPin {
                table,
                watermarked: None,
                mark: None,
            },
        )),
    }
}

fn commit_options(
    definition: &ViewDefinition,
    (id, trigger): (&str, Trigger),
    mode: &str,
    started: DateTime<Utc>,
    inputs: &BTreeMap<String, u64>,
    pinned: &Pinned,
    base_version: Option<u64>,
) -> Result<CommitOptions> {
    let stored = Stored {
        view: definition.clone(),
        refresh: RefreshState {
            id: id.to_string(),
            mode: mode.to_string(),
            started,
            inputs: inputs.clone(),
            input_ids: pinned.ids(),
            input_marks: pinned.marks(),
            trigger: trigger.as_str().to_string(),
        },
    };
    let value = serde_json::to_value(&stored)
        .map_err(|e| Error::Internal(format!("serializing view state: {e}")))?;
    Ok(CommitOptions {
        metadata: vec![(METADATA_KEY.to_string(), value)],
        base_version,
        replace_schema: false,
        // A view's state lives in its commit log: never let old log entries expire.
        configuration: vec![("delta.enableExpiredLogCleanup".into(), "false".into())],
        replace_where: None,
        cluster_by: definition.cluster_by.clone(),
    })
}

fn parse_query(query: &str) -> Result<DfStatement> {
    let mut statements =
        DFParser::parse_sql_with_dialect(query, &GenericDialect {}).map_err(|e| Error::Syntax {
            message: e.to_string(),
        })?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        _ => Err(Error::InvalidDefinition {
            reason: "a view's query must be one SELECT statement".into(),
        }),
    }
}

fn resolve(reference: &TableReference, default_schema: &str) -> Result<TableName> {
    let resolved = reference.clone().resolve("medlake", default_schema);
    if &*resolved.catalog != "medlake" {
        return Err(Error::InvalidDefinition {
            reason: format!(
                "there is no catalog '{}'; the catalog is 'medlake'",
                resolved.catalog
            ),
        });
    }
    Ok(TableName::new(
        resolved.schema.to_string(),
        resolved.table.to_string(),
    )?)
}

/// Each column of `target`, by name, cast to its type: rows read back from a view's table
/// made to match the view query's output exactly.
fn same_types(target: &arrow::datatypes::Schema) -> Vec<Expr> {
    target
        .fields()
        .iter()
        .map(|f| {
            cast(
                col(datafusion::common::Column::new_unqualified(f.name())),
                f.data_type().clone(),
            )
            .alias(f.name())
        })
        .collect()
}

/// The distinct values of each key column.
/// How many distinct rows of their first `columns` columns `batches` hold.
fn distinct_tuples(batches: &[RecordBatch], columns: usize) -> Result<usize> {
    let mut seen: HashSet<Vec<ScalarValue>> = HashSet::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let tuple = batch.columns()[..columns.min(batch.num_columns())]
                .iter()
                .map(|column| ScalarValue::try_from_array(column, row))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            seen.insert(tuple);
        }
    }
    Ok(seen.len())
}

fn distinct_keys(batches: &[RecordBatch], columns: usize) -> Result<Vec<Vec<ScalarValue>>> {
    let mut keys: Vec<Vec<ScalarValue>> = vec![Vec::new(); columns];
    let mut seen: Vec<HashSet<ScalarValue>> = vec![HashSet::new(); columns];
    for batch in batches {
        for (c, column) in batch.columns().iter().take(columns).enumerate() {
            for row in 0..batch.num_rows() {
                let value = ScalarValue::try_from_array(column, row)?;
                if seen[c].insert(value.clone()) {
                    keys[c].push(value);
                }
            }
        }
    }
    Ok(keys)
}

/// Views in dependency order (upstream first).
pub fn topological(graph: &BTreeMap<TableName, Vec<TableName>>) -> Result<Vec<TableName>> {
    fn visit(
        node: &TableName,
        graph: &BTreeMap<TableName, Vec<TableName>>,
        done: &mut BTreeSet<TableName>,
        path: &mut Vec<TableName>,
        order: &mut Vec<TableName>,
    ) -> Result<()> {
        if done.contains(node) {
            return Ok(());
        }
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(ToString::to_string).collect();
            cycle.push(node.to_string());
            return Err(Error::Cycle {
                cycle: cycle.join(" -> "),
            });
        }
        path.push(node.clone());
        for upstream in graph.get(node).into_iter().flatten() {
            if graph.contains_key(upstream) {
                visit(upstream, graph, done, path, order)?;
            }
        }
        path.pop();
        done.insert(node.clone());
        order.push(node.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for node in graph.keys() {
        visit(node, graph, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}
