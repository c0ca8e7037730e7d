//! The warehouse: schemas are folders, tables are Delta tables at `<root>/<schema>/<table>/`.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema as ArrowSchema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::catalog::{Session, TableProvider};
use datafusion::logical_expr::LogicalPlan;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitData, CommitProperties, TransactionError};
use deltalake::kernel::{Action, StructField, StructType};
use deltalake::logstore::CommitOrBytes;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde_json::Value;
use tracing::{debug, info, instrument};
use url::Url;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::location::{build_store, parse_location, redact, register_cloud_schemes};
use crate::maintenance::{AutoCompact, Compaction};

/// Schemas every warehouse has. `public` is the default schema of a session, as in Postgres.
/// `system` holds medlake's own tables (refresh history, expectation results); the engine
/// keeps it read-only for users.
pub const BUILT_IN_SCHEMAS: &[&str] = &["public", "bronze", "silver", "gold", "system"];

/// The object that makes a folder of the warehouse root a schema.
const SCHEMA_MARKER: &str = "_medlake_schema.json";
/// The object that hides a table whose files are being deleted by DROP TABLE.
pub(crate) const DROPPED_MARKER: &str = "_medlake_dropped";
pub(crate) const DELTA_LOG: &str = "_delta_log";
/// The object that makes a table folder an external table: its definition (source kind,
/// location, options with `${NAME}` secret references, never secret values).
const EXTERNAL_MARKER: &str = "_medlake_external.json";

/// A table of the warehouse: `schema.table`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Validates both parts: they become folder names.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Result<Self> {
        let (schema, table) = (schema.into(), table.into());
        validate_name("schema", &schema)?;
        validate_name("table", &table)?;
        Ok(Self { schema, table })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Names become object-store folders: keep them to letters, digits, `_` and `-`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidName {
        kind,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > 128 {
        return Err(invalid("it is longer than 128 characters"));
    }
    if name.starts_with('_') {
        return Err(invalid("names starting with '_' are reserved"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid("only letters, digits, '_' and '-' are allowed"));
    }
    Ok(())
}

/// Which state of a table to read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TimeTravel {
    /// `VERSION AS OF n`
    Version(u64),
    /// `TIMESTAMP AS OF ts`: the last version committed at or before `ts`.
    Timestamp(DateTime<Utc>),
}

/// How a write lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    Append,
    Overwrite,
}

/// What a committed write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The table version the commit created.
    pub version: u64,
    /// Rows written by the commit.
    pub rows: u64,
}

/// How a write commits; see [`Warehouse::write_with`].
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// Extra top-level fields of the commit's `commitInfo` (medlake keeps a view's definition
    /// and refresh state there, in the same atomic commit as the view's rows).
    pub metadata: Vec<(String, Value)>,
    /// Commit only directly on top of this version: if anyone committed since, nothing is
    /// written and the write fails with [`Error::Conflict`] (optimistic locking).
    pub base_version: Option<u64>,
    /// Replace the table's schema with the input's (an overwrite only).
    pub replace_schema: bool,
    /// Table properties of a table the write creates (`delta.enableExpiredLogCleanup`, ...).
    pub configuration: Vec<(String, String)>,
    /// An overwrite replaces only the rows matching this predicate (every written row must
    /// match it): the files holding such rows are rewritten without them, the rest is kept.
    pub replace_where: Option<datafusion::logical_expr::Expr>,
    /// Write the rows sorted by these columns (a view's `CLUSTER BY`): each written file's
    /// row groups then hold narrow ranges of them, which queries skip by their statistics.
    pub cluster_by: Vec<String>,
}

impl CommitOptions {
    pub(crate) fn properties(&self) -> CommitProperties {
        let mut properties = CommitProperties::default().with_metadata(self.metadata.clone());
        if self.base_version.is_some() {
            properties = properties.with_max_retries(0);
        }
        properties
    }
}

/// A table held open between commits by one long-lived appender (the HTTP ingest door's
/// writer task), so that a commit neither reloads the table nor re-reads its log: see
/// [`Warehouse::append_to`]. Server-side only; it is not plain data.
pub struct Appender {
    pub(crate) name: TableName,
    /// The table as last read from its log (at open, or when another writer's commits were
    /// read); the appender's own commits since are not replayed into it.
    pub(crate) table: DeltaTable,
    /// The newest version the appender knows: the table's, or the appender's own last commit.
    pub(crate) version: u64,
    /// The log entry of `version` as written or read: finding another one under that name
    /// means the table was dropped (and perhaps created again) since.
    entry: ObjectMeta,
    /// Whether the table's protocol allows the blind-append commit (see [`blind_appendable`]);
    /// otherwise each commit goes through deltalake's write operation.
    blind: bool,
    /// The newest checkpoint's version as far as the appender knows (`_last_checkpoint` at
    /// open, then the checkpoints it started itself): a checkpoint is due once the log has
    /// grown by `delta.checkpointInterval` entries since, so one missed (a kill while it was
    /// being written, a failure) is caught up by the next append instead of never.
    pub(crate) checkpointed: Option<u64>,
}

impl fmt::Debug for Appender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appender")
            .field("table", &self.name.to_string())
            .field("version", &self.version)
            .field("blind", &self.blind)
            .finish_non_exhaustive()
    }
}

impl Appender {
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// Whether its commits are blind appends (see [`blind_appendable`]).
    pub fn is_blind(&self) -> bool {
        self.blind
    }

    /// The version the appender knows: its next commit lands directly on top of it.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The table's schema at that version.
    pub fn schema(&self) -> Result<SchemaRef> {
        Ok(self
            .table
            .snapshot()
            .map_err(|e| Error::delta(&self.name.schema, &self.name.table, e))?
            .snapshot()
            .arrow_schema())
    }
}

/// Writer features whose tables a blind append (data files plus one log entry with their
/// `add` actions) writes correctly. Anything else (constraints, generated or identity
/// columns, column mapping, row tracking, in-commit timestamps, clustering) needs deltalake's
/// write operation. `invariants` is the feature every table upgraded from writer version 2
/// lists (deltalake adds it with `appendOnly` when it creates a table at writer version 7, as
/// every table with the change data feed is): the invariants themselves are column metadata,
/// which [`blind_appendable`] refuses on its own.
const BLIND_APPEND_FEATURES: &[&str] = &[
    "appendOnly",
    "invariants",
    "timestampNtz",
    "deletionVectors",
    "changeDataFeed",
    "domainMetadata",
    "vacuumProtocolCheck",
    "v2Checkpoint",
];

/// The table property that turns the change data feed on (see `changes.rs`).
pub const CHANGE_DATA_FEED: &str = "delta.enableChangeDataFeed";

/// The table property holding a table's `CLUSTER BY` columns (a JSON array of names): every
/// write sorts its rows by them and `OPTIMIZE` re-clusters the table along a Z-order curve of
/// them. A medlake property, not Delta's `clustering` domain metadata (a writer feature
/// deltalake 1.1 cannot write: every later write would fail).
pub const CLUSTER_BY: &str = "medlake.clusterBy";

/// Loads the newest version of the table at `url`.
///
/// A listing of `_delta_log` taken while other writers put commits can miss a new entry and
/// see a newer one: a local folder's readdir is no snapshot when entries are added during it,
/// and a listing of a busy ingest table's log (tens of thousands of entries after an hour of
/// micro-batches) is long enough for a commit to land during most of them. The Delta kernel
/// reports that as "Expected contiguous commit files, but found gap" (a generic error, known
/// only by its text). Trying the same load again races again (issue 29's hour soak: one open
/// in thousands failed four times in a row and a dashboard query got 58030), so the next try
/// loads the newest version a listing of its own saw, pinned: every commit up to it existed
/// before that load starts, and a pinned listing ignores the ones added while it runs. A
/// superseded checkpoint deleted between a load's listing and its read (see
/// `checkpoints.rs`) is the same kind of race and is tried again the same way; at most three
/// tries after the first, 20, 40 and 60 ms apart.
pub(crate) async fn load_newest(url: Url) -> std::result::Result<DeltaTable, DeltaTableError> {
    let mut tries = 0u64;
    let mut pinned = None;
    loop {
        let mut builder = DeltaTableBuilder::from_url(url.clone())?;
        if let Some(version) = pinned {
            builder = builder.with_version(version);
        }
        match builder.load().await {
            Err(e) if tries < 3 && listing_raced(&e) => {
                tries += 1;
                debug!(error = %e, tries, "a log listing raced a commit; loading again");
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                // A listing that fails leaves the next try unpinned (and its error to it).
                pinned = newest_listed(&url).await.ok().flatten();
            }
            loaded => return loaded,
        }
    }
}

/// The newest commit version a listing of the log of the table at `url` shows.
async fn newest_listed(url: &Url) -> std::result::Result<Option<u64>, DeltaTableError> {
    let table = DeltaTableBuilder::from_url(url.clone())?.build()?;
    let store = table.log_store().object_store(None);
    let listing = store
        .list_with_delimiter(Some(&Path::from(DELTA_LOG)))
        .await?;
    Ok(listing
        .objects
        .iter()
        .filter_map(|o| o.location.filename())
        .filter_map(commit_version)
        .max())
}

/// The version of a Delta log commit file's name (`00000000000000000042.json`).
fn commit_version(file: &str) -> Option<u64> {
    let digits = file.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether a table log (its listing) cannot be read from its start: no commit at all (a crashed
/// CREATE, or only checkpoints a dropped table's maintenance left), or commits with neither
/// version 0 nor a checkpoint to start from (an append that raced its table's DROP). Such a
/// log is not a table, and the next CREATE clears it.
fn headless_log(listing: &[ObjectMeta]) -> bool {
    let names = || listing.iter().filter_map(|o| o.location.filename());
    let mut commits = names().filter_map(commit_version).peekable();
    if commits.peek().is_none() {
        return true;
    }
    let starts = commits.any(|v| v == 0) || names().any(|f| f.contains(".checkpoint."));
    !starts
}

/// Whether a load failed only because its log listing raced a commit or a checkpoint's
/// deletion (see [`load_newest`]).
fn listing_raced(e: &DeltaTableError) -> bool {
    let text = medlake_common::error_chain(e);
    text.contains("Expected contiguous commit files, but found gap")
        || text.contains("Had a _last_checkpoint hint but didn't find any checkpoints")
        || (text.contains(".checkpoint.") && text.contains("not found"))
}

/// The `CLUSTER BY` columns recorded in a table's properties (none when the property is
/// absent or not a JSON array of names).
pub fn cluster_columns(configuration: &HashMap<String, String>) -> Vec<String> {
    configuration
        .get(CLUSTER_BY)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default()
}

/// The table property value recording `columns` as the table's clustering.
pub fn cluster_property(columns: &[String]) -> (String, String) {
    (
        CLUSTER_BY.to_string(),
        serde_json::to_string(columns).unwrap_or_else(|_| "[]".into()),
    )
}

/// Rows per Parquet row group of every file medlake writes: the unit a query skips by its
/// min/max statistics, and the unit scans split across cores. deltalake's writer would take
/// parquet's default of 1Mi rows (a 1M-row gold table in one row group that every query
/// reads whole, on one core).
pub const ROW_GROUP_ROWS: usize = 65_536;

/// Rows per Parquet data page at most: the unit a query skips inside a row group by the page
/// index (column index and offset index, which parquet writes by default) when its filter
/// is pushed into the scan. parquet's default of 20,000 made a row group four pages, so a
/// query for one patient's week in a clustered table still decoded a quarter of each row
/// group it could not skip.
pub const PAGE_ROWS: usize = 4_096;

/// Rows per Parquet data page at most in a clustered table's files (`CLUSTER BY`, written
/// sorted): such a table is clustered for lookups of a few keys, whose rows sit together in
/// one page; a page of [`PAGE_ROWS`] made a dashboard's lookup of one patient's week decode
/// 7 × 4,096 rows of every column it reads for 35 rows. Smaller pages cost a page header and
/// a page-index entry each (a few dozen bytes per 1,024 values) and are not worth it for
/// tables that are scanned whole.
pub const CLUSTERED_PAGE_ROWS: usize = 1_024;

/// The Parquet writer settings of every file medlake writes (Snappy, as deltalake's default,
/// row groups of [`ROW_GROUP_ROWS`], pages of at most [`PAGE_ROWS`] rows, page statistics
/// for the page index), for files written sorted by clustering columns (`clustered`) pages
/// of at most [`CLUSTERED_PAGE_ROWS`] rows.
pub fn writer_properties_for(
    clustered: bool,
) -> deltalake::parquet::file::properties::WriterProperties {
    parquet_layout(ROW_GROUP_ROWS, page_rows(clustered), &[])
}

fn page_rows(clustered: bool) -> usize {
    if clustered {
        CLUSTERED_PAGE_ROWS
    } else {
        PAGE_ROWS
    }
}

/// The Parquet writer settings for a write into `table` ([`writer_properties_for`]), with the
/// bloom filters its properties ask for (`crate::bloom`).
pub(crate) fn table_writer_properties(
    table: &DeltaTable,
    clustered: bool,
) -> deltalake::parquet::file::properties::WriterProperties {
    let bloom = table
        .snapshot()
        .map(|s| crate::bloom::bloom_filter_columns(s.metadata().configuration()))
        .unwrap_or_default();
    parquet_layout(ROW_GROUP_ROWS, page_rows(clustered), &bloom)
}

/// Parquet writer settings: Snappy, row groups of `row_group_rows`, pages of at most
/// `page_rows`, and a bloom filter for each of `bloom` (the one place these are decided:
/// a cluster's executors write with the same).
pub fn parquet_layout(
    row_group_rows: usize,
    page_rows: usize,
    bloom: &[String],
) -> deltalake::parquet::file::properties::WriterProperties {
    let builder = deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_data_page_row_count_limit(page_rows.max(1));
    crate::bloom::with_bloom_filters(builder, bloom).build()
}

/// The table properties of a table medlake creates: `configuration` (the caller's) plus the
/// change data feed, on by default for every table outside the `system` schema. The feed is
/// declared as a table feature (writer version 7, writer feature `changeDataFeed`), not by
/// the legacy writer version 4, which [`blind_appendable`] refuses. medlake's own `system`
/// tables are appended to or overwritten whole (no change files to record) and the audit log
/// must not keep deleted rows in change files: they stay as they are. A caller that names
/// the property itself decides.
pub(crate) fn table_properties(
    name: &TableName,
    configuration: &[(String, String)],
) -> Vec<(String, String)> {
    let mut properties = configuration.to_vec();
    let named = configuration
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(CHANGE_DATA_FEED));
    if name.schema != "system" && !named {
        // deltalake's create: a minimum writer version of 7 first, then the property adds
        // the `changeDataFeed` writer feature (below 7 it would raise the writer to 4).
        // deltalake also lists writer version 2's features (`appendOnly`, `invariants`, not
        // turned on) and raises the reader version to 2.
        properties.push(("delta.minWriterVersion".into(), "7".into()));
        properties.push((CHANGE_DATA_FEED.into(), "true".into()));
    }
    properties
}

/// Whether `table` takes blind appends: writer version 2, or table features all in
/// [`BLIND_APPEND_FEATURES`], without invariants in its schema or CHECK constraints.
pub(crate) fn blind_appendable(table: &DeltaTable) -> bool {
    let Ok(state) = table.snapshot() else {
        return false;
    };
    let Ok(protocol) = serde_json::to_value(state.protocol()) else {
        return false;
    };
    let writer = protocol["minWriterVersion"].as_i64().unwrap_or(i64::MAX);
    let features_ok = match protocol.get("writerFeatures").and_then(Value::as_array) {
        Some(features) => features.iter().all(|f| {
            f.as_str()
                .is_some_and(|f| BLIND_APPEND_FEATURES.contains(&f))
        }),
        None => writer <= 2,
    };
    let invariants = state
        .snapshot()
        .arrow_schema()
        .fields()
        .iter()
        .any(|f| f.metadata().contains_key("delta.invariants"));
    let constraints = state
        .metadata()
        .configuration()
        .keys()
        .any(|k| k.starts_with("delta.constraints."));
    features_ok && !invariants && !constraints
}

/// `batch` with the columns of `target` in its order and types. Only representations of the
/// same values are converted (DataFusion's `Utf8View` to the Delta writer's `Utf8`, a
/// narrower integer or float to a wider one, another timestamp unit); a batch of another
/// shape (a column missing, extra or of another type) is refused, as deltalake's write
/// refuses it.
pub(crate) fn conform(
    batch: RecordBatch,
    target: &SchemaRef,
) -> std::result::Result<RecordBatch, DeltaTableError> {
    if batch.schema() == *target {
        return Ok(batch);
    }
    let mismatch = |msg: String| DeltaTableError::SchemaMismatch { msg };
    if let Some(extra) = batch
        .schema()
        .fields()
        .iter()
        .find(|f| target.field_with_name(f.name()).is_err())
    {
        return Err(mismatch(format!(
            "the table has no column '{}'",
            extra.name()
        )));
    }
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let column = batch
                .column_by_name(field.name())
                .ok_or_else(|| mismatch(format!("the data has no column '{}'", field.name())))?;
            let (from, to) = (column.data_type(), field.data_type());
            if from == to {
                Ok(column.clone())
            } else if same_values(from, to) {
                Ok(arrow::compute::cast(column, to)?)
            } else {
                Err(mismatch(format!(
                    "column '{}' is {from} in the data and {to} in the table",
                    field.name()
                )))
            }
        })
        .collect::<std::result::Result<Vec<_>, DeltaTableError>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// Whether values of type `from` are written as `to` without changing any of them.
fn same_values(from: &arrow::datatypes::DataType, to: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::*;
    match (from, to) {
        (Null, _) => true,
        (Utf8 | Utf8View | LargeUtf8, Utf8 | Utf8View | LargeUtf8)
        | (Binary | BinaryView | LargeBinary, Binary | BinaryView | LargeBinary) => true,
        (Int8 | Int16 | Int32, Int64) | (Int8 | Int16, Int32) | (Int8, Int16) => true,
        (Float16 | Float32, Float64) | (Float16, Float32) => true,
        (Timestamp(_, a), Timestamp(_, b)) => a.is_some() == b.is_some(),
        // Nested values whose leaves differ only as above (a struct of Utf8View fields).
        (Struct(_), Struct(_))
        | (List(_) | LargeList(_) | ListView(_), List(_) | LargeList(_))
        | (Map(..), Map(..)) => arrow::compute::can_cast_types(from, to),
        _ => false,
    }
}

/// One commit of a table, as `DESCRIBE HISTORY` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp: Option<DateTime<Utc>>,
    pub operation: Option<String>,
    /// The operation's parameters as a JSON object.
    pub parameters: String,
    /// Rows the commit wrote, when the writer recorded it.
    pub rows_written: Option<u64>,
    /// The operation's metrics as a JSON object.
    pub metrics: String,
    pub engine: Option<String>,
}

/// What OPTIMIZE did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptimizeOutcome {
    pub version: u64,
    pub files_added: u64,
    pub files_removed: u64,
}

/// What VACUUM did (or would do, on a dry run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VacuumOutcome {
    pub dry_run: bool,
    pub files: Vec<String>,
}

/// A Delta Lake warehouse at one location.
#[derive(Clone)]
pub struct Warehouse {
    url: Url,
    pub(crate) store: Arc<dyn ObjectStore>,
    root: Path,
    /// Work a commit left running (checkpoints): [`Warehouse::settle`] waits for it.
    pub(crate) background: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    /// The suppression list of erased identifiers, as last read ([`Warehouse::suppression`]).
    pub(crate) erasures: Arc<tokio::sync::Mutex<Option<crate::erasure::Loaded>>>,
    /// Table snapshots kept between statements ([`Warehouse::latest`]).
    pub(crate) snapshots: Arc<crate::snapshots::Snapshots>,
    /// Tables whose checkpoint or automatic compaction is running (`maintenance.rs`: one task
    /// per table), and tables being dropped, whose maintenance may not start.
    pub(crate) maintaining: Arc<std::sync::Mutex<crate::maintenance::Upkeep>>,
    /// What the maintenance tasks remember of each table's checkpoints (`checkpoints.rs`).
    pub(crate) checkpoints:
        Arc<std::sync::Mutex<HashMap<TableName, crate::checkpoints::CheckpointLog>>>,
    /// How long a superseded checkpoint stays ([`crate::checkpoints::GRACE`]).
    pub(crate) checkpoint_grace: std::time::Duration,
    /// One gate per table appended to: appends hold it shared from their check of the
    /// table to their commit, `DROP TABLE` exclusively ([`Warehouse::table_gate`]).
    gates: Arc<std::sync::Mutex<HashMap<TableName, Arc<tokio::sync::RwLock<()>>>>>,
}

impl fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warehouse")
            .field("url", &redact(self.url.as_str()))
            .finish_non_exhaustive()
    }
}

impl Warehouse {
    /// Opens (and, the first time, initialises) the warehouse at `location`.
    #[instrument(skip_all, fields(location = %redact(location)))]
    pub async fn open(location: &str) -> Result<Self> {
        register_cloud_schemes();
        let url = parse_location(location)?;
        let (store, root) = build_store(&url)?;
        let warehouse = Self {
            url,
            store,
            root,
            background: Arc::default(),
            erasures: Arc::default(),
            snapshots: Arc::default(),
            maintaining: Arc::default(),
            gates: Arc::default(),
            checkpoints: Arc::default(),
            checkpoint_grace: crate::checkpoints::GRACE,
        };
        crate::backup::refuse_unfinished_restore(&warehouse).await?;
        for schema in BUILT_IN_SCHEMAS {
            warehouse.put_schema_marker(schema).await?;
        }
        info!(url = %redact(warehouse.url.as_str()), "warehouse open");
        Ok(warehouse)
    }

    /// This warehouse with superseded checkpoints deleted `grace` after the checkpoint that
    /// supersedes them was written instead of [`crate::checkpoints::GRACE`]: for tests.
    #[doc(hidden)]
    pub fn with_checkpoint_grace(mut self, grace: std::time::Duration) -> Self {
        self.checkpoint_grace = grace;
        self
    }

    /// The warehouse's root URL (ends with `/`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object store under the warehouse, rooted at its bucket or container.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The path of `parts` under the warehouse root, in its object store.
    pub(crate) fn path(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.root.clone(), |p, part| p.join(*part))
    }

    /// The URL of a table's folder.
    pub fn table_url(&self, name: &TableName) -> Result<Url> {
        self.url
            .join(&format!("{}/{}/", name.schema, name.table))
            .map_err(|e| Error::Internal(format!("table url for {name}: {e}")))
    }

    pub(crate) async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store(path, e)),
        }
    }

    /// Writes the schema marker; `Ok(false)` if it already existed.
    async fn put_schema_marker(&self, schema: &str) -> Result<bool> {
        let path = self.path(&[schema, SCHEMA_MARKER]);
        let body = serde_json::json!({ "schema": schema, "created": Utc::now().to_rfc3339() });
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body.to_string()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// Whether `schema` exists.
    pub async fn schema_exists(&self, schema: &str) -> Result<bool> {
        if validate_name("schema", schema).is_err() {
            return Ok(false);
        }
        self.exists(&self.path(&[schema, SCHEMA_MARKER])).await
    }

    /// Every schema of the warehouse, sorted.
    pub async fn list_schemas(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| Error::store(&self.root, e))?;
        let mut schemas = Vec::new();
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            if validate_name("schema", name).is_ok()
                && self.exists(&prefix.clone().join(SCHEMA_MARKER)).await?
            {
                schemas.push(name.to_string());
            }
        }
        schemas.sort();
        Ok(schemas)
    }

    /// `CREATE SCHEMA [IF NOT EXISTS] name`
    pub async fn create_schema(&self, schema: &str, if_not_exists: bool) -> Result<()> {
        validate_name("schema", schema)?;
        if !self.put_schema_marker(schema).await? && !if_not_exists {
            return Err(Error::SchemaExists {
                schema: schema.to_string(),
            });
        }
        Ok(())
    }

    /// `DROP SCHEMA [IF EXISTS] name [CASCADE]`
    pub async fn drop_schema(&self, schema: &str, if_exists: bool, cascade: bool) -> Result<()> {
        validate_name("schema", schema)?;
        if BUILT_IN_SCHEMAS.contains(&schema) {
            return Err(Error::SchemaBuiltIn {
                schema: schema.to_string(),
            });
        }
        if !self.schema_exists(schema).await? {
            return if if_exists {
                Ok(())
            } else {
                Err(Error::SchemaNotFound {
                    schema: schema.to_string(),
                })
            };
        }
        let tables = self.list_tables(schema).await?;
        if !tables.is_empty() && !cascade {
            return Err(Error::SchemaNotEmpty {
                schema: schema.to_string(),
                tables: tables.join(", "),
            });
        }
        for table in &tables {
            self.drop_table(&TableName::new(schema, table)?, true)
                .await?;
        }
        // The marker goes first: from then on the schema no longer exists.
        let marker = self.path(&[schema, SCHEMA_MARKER]);
        self.store
            .delete(&marker)
            .await
            .map_err(|e| Error::store(&marker, e))?;
        self.delete_prefix(&self.path(&[schema])).await
    }

    /// The tables of `schema`, sorted.
    pub async fn list_tables(&self, schema: &str) -> Result<Vec<String>> {
        validate_name("schema", schema)?;
        let prefix = self.path(&[schema]);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| Error::store(&prefix, e))?;
        let mut tables = Vec::new();
        for table_prefix in listing.common_prefixes {
            let Some(name) = table_prefix.filename() else {
                continue;
            };
            if validate_name("table", name).is_ok() && self.is_live_table(&table_prefix).await? {
                tables.push(name.to_string());
            }
        }
        tables.sort();
        Ok(tables)
    }

    /// A folder is a live table if it has a Delta log and no DROP marker.
    async fn is_live_table(&self, folder: &Path) -> Result<bool> {
        let listing = self
            .store
            .list_with_delimiter(Some(folder))
            .await
            .map_err(|e| Error::store(folder, e))?;
        let has_log = listing
            .common_prefixes
            .iter()
            .any(|p| p.filename() == Some(DELTA_LOG));
        let dropped = listing
            .objects
            .iter()
            .any(|o| o.location.filename() == Some(DROPPED_MARKER));
        let external = listing
            .objects
            .iter()
            .any(|o| o.location.filename() == Some(EXTERNAL_MARKER));
        if dropped {
            return Ok(false);
        }
        if external {
            return Ok(true);
        }
        if !has_log {
            return Ok(false);
        }
        // A folder whose log holds no commit yet (a crashed CREATE) is not a table, nor one
        // whose log cannot be read from its start (see `headless_log`).
        Ok(!headless_log(&self.log_listing(folder).await?))
    }

    /// Whether the table exists.
    pub async fn table_exists(&self, name: &TableName) -> Result<bool> {
        self.is_live_table(&self.path(&[&name.schema, &name.table]))
            .await
    }

    async fn require_schema(&self, schema: &str) -> Result<()> {
        if self.schema_exists(schema).await? {
            Ok(())
        } else {
            Err(Error::SchemaNotFound {
                schema: schema.to_string(),
            })
        }
    }

    fn not_found(name: &TableName) -> Error {
        Error::TableNotFound {
            schema: name.schema.clone(),
            table: name.table.clone(),
        }
    }

    /// Opens the table at its latest version.
    pub async fn open_table(&self, name: &TableName) -> Result<DeltaTable> {
        self.open_table_as_of(name, None).await
    }

    /// Opens the table at its latest version or at a past one.
    #[instrument(skip(self), fields(table = %name))]
    pub async fn open_table_as_of(
        &self,
        name: &TableName,
        at: Option<&TimeTravel>,
    ) -> Result<DeltaTable> {
        if !self.table_exists(name).await? {
            return Err(Self::not_found(name));
        }
        let url = self.table_url(name)?;
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let builder = DeltaTableBuilder::from_url(url.clone()).map_err(delta)?;
        match at {
            None => load_newest(url).await.map_err(delta),
            Some(TimeTravel::Version(version)) => {
                let versions = self
                    .log_versions(&self.path(&[&name.schema, &name.table]))
                    .await?;
                if !versions.contains(version) {
                    return Err(Error::VersionNotFound {
                        schema: name.schema.clone(),
                        table: name.table.clone(),
                        version: *version,
                        earliest: versions.first().copied().unwrap_or(0),
                        latest: versions.last().copied().unwrap_or(0),
                    });
                }
                builder.with_version(*version).load().await.map_err(delta)
            }
            Some(TimeTravel::Timestamp(ts)) => {
                let before_history = || Error::TimestampBeforeHistory {
                    schema: name.schema.clone(),
                    table: name.table.clone(),
                    timestamp: ts.to_rfc3339(),
                };
                // The version is found by the commits' own timestamps (what DESCRIBE HISTORY
                // shows), not by the log files' modification times, which trail them by the
                // time a commit takes to write. Timestamps only grow: binary search.
                let folder = self.path(&[&name.schema, &name.table]);
                let versions = self.log_versions(&folder).await?;
                if versions.is_empty() {
                    return Err(Self::not_found(name));
                }
                let (mut low, mut high) = (0usize, versions.len());
                while low < high {
                    let mid = low + (high - low) / 2;
                    let stamp = self
                        .commit_entry(name, versions[mid])
                        .await?
                        .and_then(|entry| entry.timestamp);
                    let Some(stamp) = stamp else {
                        // A commit without its log entry (cleaned up after a checkpoint):
                        // let deltalake decide from the files.
                        return self.load_at_datetime(name, builder, ts).await;
                    };
                    if stamp <= *ts {
                        low = mid + 1;
                    } else {
                        high = mid;
                    }
                }
                // `low` is the number of commits at or before `ts`.
                match low.checked_sub(1).map(|i| versions[i]) {
                    None => Err(before_history()),
                    Some(version) => builder.with_version(version).load().await.map_err(delta),
                }
            }
        }
    }

    async fn load_at_datetime(
        &self,
        name: &TableName,
        builder: DeltaTableBuilder,
        ts: &DateTime<Utc>,
    ) -> Result<DeltaTable> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let mut table = builder.build().map_err(delta)?;
        match table.load_with_datetime(*ts).await {
            Ok(()) => Ok(table),
            Err(
                DeltaTableError::InvalidDateTimeString { .. }
                | DeltaTableError::InvalidVersion(_)
                | DeltaTableError::Generic(_)
                | DeltaTableError::KernelError(_),
            ) => Err(Error::TimestampBeforeHistory {
                schema: name.schema.clone(),
                table: name.table.clone(),
                timestamp: ts.to_rfc3339(),
            }),
            Err(e) => Err(delta(e)),
        }
    }

    /// The table's provider at its latest version, that version, and the table's Delta id
    /// (which changes when a table is dropped and created again under the same name).
    pub async fn table_provider_with_id(
        &self,
        name: &TableName,
    ) -> Result<(Arc<dyn TableProvider>, u64, String)> {
        let latest = self.latest(name).await?;
        Ok((latest.provider, latest.version, latest.id))
    }

    /// A DataFusion table provider over the table, at its latest version (a kept snapshot,
    /// checked to be the newest: [`Self::latest`]) or a past one.
    pub async fn table_provider(
        &self,
        name: &TableName,
        at: Option<&TimeTravel>,
    ) -> Result<(Arc<dyn TableProvider>, u64)> {
        if at.is_none() {
            let latest = self.latest(name).await?;
            return Ok((latest.provider, latest.version));
        }
        let table = self.open_table_as_of(name, at).await?;
        let version = table.version().unwrap_or_default();
        let provider = table.table_provider().await.map_err(Error::from)?;
        Ok((provider, version))
    }

    /// `CREATE TABLE [IF NOT EXISTS] name (columns)`: version 0 of an empty table.
    /// Returns false when the table existed and `if_not_exists` was given.
    #[instrument(skip(self, schema), fields(table = %name))]
    pub async fn create_table(
        &self,
        name: &TableName,
        schema: &ArrowSchema,
        if_not_exists: bool,
    ) -> Result<bool> {
        self.create_table_clustered(name, schema, if_not_exists, &[])
            .await
    }

    /// [`Self::create_table`] with `CLUSTER BY` columns (each one of `schema`'s), recorded in
    /// the table's properties ([`CLUSTER_BY`]) for its writes and `OPTIMIZE`.
    pub async fn create_table_clustered(
        &self,
        name: &TableName,
        schema: &ArrowSchema,
        if_not_exists: bool,
        cluster_by: &[String],
    ) -> Result<bool> {
        if let Some(column) = cluster_by
            .iter()
            .find(|c| schema.field_with_name(c).is_err())
        {
            return Err(Error::InvalidClusterBy {
                table: name.to_string(),
                column: column.clone(),
            });
        }
        let configuration: Vec<(String, String)> = if cluster_by.is_empty() {
            Vec::new()
        } else {
            vec![cluster_property(cluster_by)]
        };
        if !self.prepare_create(name, if_not_exists).await? {
            return Ok(false);
        }
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let kernel: StructType = schema.try_into_kernel().map_err(|e| Error::WriteRefused {
            schema: name.schema.clone(),
            table: name.table.clone(),
            kind: crate::Refusal::Schema,
            reason: format!("unsupported column type: {e}"),
        })?;
        let columns: Vec<StructField> = kernel.fields().cloned().collect();
        let table = DeltaTable::try_from_url(self.table_url(name)?)
            .await
            .map_err(delta)?;
        let created = table
            .create()
            .with_table_name(name.table.clone())
            .with_columns(columns)
            .with_configuration(
                table_properties(name, &configuration)
                    .into_iter()
                    .map(|(k, v)| (k, Some(v))),
            )
            .with_save_mode(SaveMode::ErrorIfExists)
            // deltalake refuses table properties it does not know (ours: `medlake.*`) unless
            // told otherwise; the Delta protocol allows any.
            .with_raise_if_key_not_exists(false)
            .with_commit_properties(Self::creating(CommitProperties::default()))
            .await;
        match created {
            Ok(_) => Ok(true),
            Err(e) if Self::lost_create_race(&e) && if_not_exists => Ok(false),
            Err(e) if Self::lost_create_race(&e) => Err(Self::exists_error(name)),
            Err(e) => Err(delta(e)),
        }
    }

    /// `CREATE TABLE name AS query`: the table and its rows in one commit (version 0).
    pub async fn create_table_as(
        &self,
        name: &TableName,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        if_not_exists: bool,
    ) -> Result<Option<WriteOutcome>> {
        self.create_table_as_with(
            name,
            input,
            session,
            if_not_exists,
            &CommitOptions::default(),
        )
        .await
    }

    /// Records `columns` as the table's `CLUSTER BY` ([`CLUSTER_BY`]) in a commit of its own
    /// (deltalake's writer cannot create a table with a property it does not know, so a
    /// `CREATE TABLE ... CLUSTER BY ... AS SELECT` commits its rows, sorted, and then this).
    #[instrument(skip(self), fields(table = %name))]
    pub async fn set_cluster_by(&self, name: &TableName, columns: &[String]) -> Result<u64> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let table = self.open_table(name).await?;
        let schema = table.snapshot().map_err(delta)?.snapshot().arrow_schema();
        if let Some(column) = columns.iter().find(|c| schema.field_with_name(c).is_err()) {
            return Err(Error::InvalidClusterBy {
                table: name.to_string(),
                column: column.clone(),
            });
        }
        let (key, value) = cluster_property(columns);
        let table = table
            .set_tbl_properties()
            .with_properties(HashMap::from([(key, value)]))
            .with_raise_if_not_exists(false)
            .await
            .map_err(delta)?;
        Ok(table.version().unwrap_or_default())
    }

    /// [`Self::create_table_as`] with commit options (metadata for the first commit).
    #[instrument(skip(self, input, session, options), fields(table = %name))]
    pub async fn create_table_as_with(
        &self,
        name: &TableName,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        if_not_exists: bool,
        options: &CommitOptions,
    ) -> Result<Option<WriteOutcome>> {
        if !self.prepare_create(name, if_not_exists).await? {
            return Ok(None);
        }
        let input = self.suppress_plan(name, input).await?;
        let input =
            crate::cluster::sorted(name, input, &options.cluster_by, session.as_ref()).await?;
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let table = DeltaTable::try_from_url(self.table_url(name)?)
            .await
            .map_err(delta)?;
        let written = table
            .write(Vec::new())
            .with_writer_properties(writer_properties_for(!options.cluster_by.is_empty()))
            .with_input_plan(input)
            .with_session_state(session)
            .with_table_name(name.table.clone())
            .with_save_mode(SaveMode::ErrorIfExists)
            .with_configuration(
                table_properties(name, &options.configuration)
                    .into_iter()
                    .map(|(k, v)| (k, Some(v))),
            )
            .with_commit_properties(Self::creating(options.properties()))
            .await;
        match written {
            Ok(table) => Ok(Some(self.outcome(name, &table).await?)),
            Err(e) if Self::lost_create_race(&e) && if_not_exists => Ok(None),
            Err(e) if Self::lost_create_race(&e) => Err(Self::exists_error(name)),
            Err(e) => Err(delta(e)),
        }
    }

    /// Checks the schema, refuses an existing table, and clears what a dropped table left.
    ///
    /// Nothing else in the folder is deleted: creation is atomic by the put-if-absent of the
    /// first log entry (`_delta_log/00000000000000000000.json`, `PutMode::Create` in
    /// deltalake's log store), so of two concurrent CREATEs of one name exactly one commits
    /// and the other fails with `TableExists` (see [`Self::creating`]) without touching the
    /// winner's files. Data files of a crashed or lost CREATE stay behind unreferenced by any
    /// log entry (readers never see them; VACUUM removes them).
    pub(crate) async fn prepare_create(
        &self,
        name: &TableName,
        if_not_exists: bool,
    ) -> Result<bool> {
        self.require_schema(&name.schema).await?;
        if self.table_exists(name).await? {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(Self::exists_error(name))
            };
        }
        // A dropped table whose files were not all deleted (a crash during DROP): its log
        // would stand in the way of the new table's.
        let folder = self.path(&[&name.schema, &name.table]);
        self.clear_dropped(&folder).await?;
        self.clear_headless_log(&folder).await?;
        // Delta's kernel wants a local table folder to exist before its first commit.
        if self.url.scheme() == "file" {
            let url = self.table_url(name)?;
            if let Ok(dir) = url.to_file_path() {
                tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                    Error::store(
                        dir.display(),
                        object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(e),
                        },
                    )
                })?;
            }
        }
        Ok(true)
    }

    /// Commit properties of a commit that creates a table: version 0 or nothing. deltalake
    /// would otherwise take a lost version 0 (another creator's) as a conflict to resolve and
    /// retry on top of it, as version 1 of the winner's table.
    fn creating(properties: CommitProperties) -> CommitProperties {
        properties.with_max_retries(0)
    }

    /// A lost race to create the same table is "already exists": the version 0 put found one
    /// there (without retries: [`Self::creating`]), or the table was there when the write
    /// looked.
    fn lost_create_race(e: &DeltaTableError) -> bool {
        matches!(e, DeltaTableError::VersionAlreadyExists(_))
            || matches!(
                e,
                DeltaTableError::Transaction {
                    source: TransactionError::MaxCommitAttempts(_)
                        | TransactionError::VersionAlreadyExists(_)
                }
            )
            || matches!(e, DeltaTableError::Generic(m) if m.contains("already exists"))
            // deltalake's write found the table there: "A table already exists at: <url>".
            || matches!(
                e,
                DeltaTableError::GenericError { source } if source.to_string().contains("already exists")
            )
    }

    pub(crate) fn exists_error(name: &TableName) -> Error {
        Error::TableExists {
            schema: name.schema.clone(),
            table: name.table.clone(),
        }
    }

    /// Appends (or overwrites with) the result of `input`, streamed, in one commit. The
    /// table's schema is enforced: a missing NOT NULL value or a mismatched column refuses the
    /// whole write and the table stays at its previous version.
    pub async fn write(
        &self,
        name: &TableName,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        mode: WriteMode,
    ) -> Result<WriteOutcome> {
        self.write_with(name, input, session, mode, &CommitOptions::default())
            .await
    }

    /// [`Self::write`] with commit options: commit metadata, optimistic locking on a base
    /// version, schema replacement.
    #[instrument(skip(self, input, session, options), fields(table = %name))]
    pub async fn write_with(
        &self,
        name: &TableName,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        mode: WriteMode,
        options: &CommitOptions,
    ) -> Result<WriteOutcome> {
        let table = match (&options.replace_where, options.base_version) {
            // deltalake records a replaceWhere predicate in the commit's commitInfo, where
            // DESCRIBE HISTORY would show its values (a view's changed keys, read from inputs
            // whose masks and row filters its readers are held to): the commit keeps none.
            (Some(_), version) if mode == WriteMode::Overwrite => {
                let hide: crate::dml::Hide =
                    Arc::new(|_: &str| "the rows of the changed keys".to_string());
                self.open_scrubbed_at(name, hide, version).await?
            }
            (_, Some(version)) => {
                self.open_table_as_of(name, Some(&TimeTravel::Version(version)))
                    .await?
            }
            (_, None) => self.open_table(name).await?,
        };
        let schema = table
            .snapshot()
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?
            .snapshot()
            .arrow_schema();
        let replace_schema = options.replace_schema && mode == WriteMode::Overwrite;
        let input = if replace_schema {
            input
        } else {
            crate::guard::guard_not_null(input, &schema)?
        };
        let input = self.suppress_plan(name, input).await?;
        // The writer's own clustering (a view's definition) or else the table's.
        let cluster_by = if options.cluster_by.is_empty() {
            let snapshot = table
                .snapshot()
                .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
            cluster_columns(snapshot.metadata().configuration())
        } else {
            options.cluster_by.clone()
        };
        let input = crate::cluster::sorted(name, input, &cluster_by, session.as_ref()).await?;
        let save_mode = match mode {
            WriteMode::Append => SaveMode::Append,
            WriteMode::Overwrite => SaveMode::Overwrite,
        };
        let sources = crate::guard::source_columns(&input);
        let properties = table_writer_properties(&table, !cluster_by.is_empty());
        let mut builder = table
            .write(Vec::new())
            .with_writer_properties(properties)
            .with_input_plan(input)
            .with_session_state(session)
            .with_save_mode(save_mode)
            .with_commit_properties(options.properties());
        if replace_schema {
            builder = builder.with_schema_mode(SchemaMode::Overwrite);
        }
        if let (WriteMode::Overwrite, Some(predicate)) = (mode, &options.replace_where) {
            builder = builder.with_replace_where(predicate.clone());
        }
        let table = builder.await.map_err(|e| {
            crate::guard::name_null_column(Error::delta(&name.schema, &name.table, e), &sources)
        })?;
        let outcome = self.outcome(name, &table).await?;
        debug!(
            version = outcome.version,
            rows = outcome.rows,
            "write committed"
        );
        Ok(outcome)
    }

    /// Waits for the work commits left running (checkpoints), so that a process can end
    /// without cutting it off: a command-line run calls it before it exits.
    pub async fn settle(&self) {
        let mut running = match self.background.lock() {
            Ok(mut background) => std::mem::take(&mut *background),
            Err(_) => return,
        };
        while running.join_next().await.is_some() {}
    }

    /// Opens `name` at its newest version for [`Self::append_to`].
    #[instrument(skip(self), fields(table = %name))]
    pub async fn open_appender(&self, name: &TableName) -> Result<Appender> {
        let table = self.open_table(name).await?;
        let version = table
            .version()
            .ok_or_else(|| Error::Internal(format!("{name} opened without a version")))?;
        let entry = self
            .log_entry(name, version)
            .await?
            .ok_or_else(|| Self::not_found(name))?;
        let checkpointed = self.last_checkpoint(name).await;
        Ok(Appender {
            name: name.clone(),
            blind: blind_appendable(&table),
            table,
            version,
            entry,
            checkpointed,
        })
    }

    /// The version in a table's `_last_checkpoint`, if the file is there and readable (a
    /// missing or damaged hint only makes the next checkpoint come sooner).
    async fn last_checkpoint(&self, name: &TableName) -> Option<u64> {
        self.last_checkpoint_hint(name)
            .await
            .map(|(version, _)| version)
    }

    /// The version and the number of actions (`size`; 0 when missing) in a table's
    /// `_last_checkpoint`, if the file is there and readable.
    pub(crate) async fn last_checkpoint_hint(&self, name: &TableName) -> Option<(u64, u64)> {
        let path = self
            .path(&[&name.schema, &name.table, DELTA_LOG])
            .join("_last_checkpoint");
        let bytes = self.store.get(&path).await.ok()?.bytes().await.ok()?;
        let hint: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let size = hint.get("size").and_then(serde_json::Value::as_u64);
        Some((hint.get("version")?.as_u64()?, size.unwrap_or(0)))
    }

    /// The metadata of a table's log entry for `version`, if it is there.
    pub(crate) async fn log_entry(
        &self,
        name: &TableName,
        version: u64,
    ) -> Result<Option<ObjectMeta>> {
        let path = self
            .path(&[&name.schema, &name.table, DELTA_LOG])
            .join(format!("{version:020}.json"));
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// The gate that orders `name`'s appends against its DROP in this process: an append that
    /// found the table current must not put its log entry after the DROP marker (Delta would
    /// take the lone entry, kept as a newer table's, for a table). Another server's append
    /// can still race a DROP; the next CREATE clears what it leaves (`prepare_create`).
    fn table_gate(&self, name: &TableName) -> Arc<tokio::sync::RwLock<()>> {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// Whether the appender's version is still the log entry it read (one HEAD): the table
    /// was neither dropped nor replaced since.
    async fn appender_current(&self, appender: &Appender) -> Result<bool> {
        let entry = self.log_entry(&appender.name, appender.version).await?;
        Ok(entry.is_some_and(|e| {
            e.e_tag == appender.entry.e_tag
                && e.size == appender.entry.size
                && e.last_modified == appender.entry.last_modified
        }))
    }

    /// Brings `appender` to the table's newest version. Returns the versions committed by
    /// others since its own (empty if there were none: one HEAD), or `None` when the table
    /// under that name is no longer the one opened (dropped, or dropped and created again):
    /// open a new appender then.
    #[instrument(skip_all, fields(table = %appender.name))]
    pub async fn refresh_appender(
        &self,
        appender: &mut Appender,
    ) -> Result<Option<std::ops::RangeInclusive<u64>>> {
        if !self.appender_current(appender).await? {
            return Ok(None);
        }
        let name = appender.name.clone();
        let before = appender.version;
        if self.log_entry(&name, before + 1).await?.is_none() {
            return Ok(Some(before + 1..=before));
        }
        // Someone else committed: read the table again (their commits may have changed its
        // schema or protocol). Its log still holds the appender's version unchanged, so it
        // is the same table.
        let table = self.open_table(&name).await?;
        let after = table.version().unwrap_or(before);
        let Some(entry) = self.log_entry(&name, after).await? else {
            return Ok(None);
        };
        appender.blind = blind_appendable(&table);
        appender.table = table;
        appender.version = after;
        appender.entry = entry;
        if let Some(newest) = self.last_checkpoint(&name).await {
            appender.checkpointed = Some(appender.checkpointed.map_or(newest, |c| c.max(newest)));
        }
        Ok(Some(before + 1..=after))
    }

    /// Appends the result of `input` in one commit directly on top of the version `appender`
    /// knows, with the same schema enforcement as [`Self::write_with`]; the appender moves to
    /// the new version, which is returned. `Ok(None)` when anyone committed since, or the
    /// table was dropped or replaced: nothing was committed (the data files written, if any,
    /// belong to no version); refresh and try again.
    ///
    /// A table that takes blind appends (most do; see [`blind_appendable`]) gets one: the
    /// data files, then its log entry put only if absent. Nothing else is read (deltalake's
    /// write operation would bring its snapshot of every data file up to date after each
    /// commit, which grows with the table); a checkpoint is written every
    /// `delta.checkpointInterval` commits as deltalake does. Besides the put, one HEAD of the
    /// appender's log entry before the write and one of the new entry after it.
    #[instrument(skip_all, fields(table = %appender.name, base = appender.version))]
    pub async fn append_to(
        &self,
        appender: &mut Appender,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        options: &CommitOptions,
    ) -> Result<Option<u64>> {
        let started = std::time::Instant::now();
        let _gate = self.table_gate(&appender.name).read_owned().await;
        if !self.appender_current(appender).await? {
            return Ok(None);
        }
        let check_us = started.elapsed().as_micros() as u64;
        let name = appender.name.clone();
        let schema = appender.schema()?;
        let input = crate::guard::guard_not_null(input, &schema)?;
        let input = self.suppress_plan(&name, input).await?;
        let sources = crate::guard::source_columns(&input);
        let refused = |e| {
            crate::guard::name_null_column(Error::delta(&name.schema, &name.table, e), &sources)
        };
        let committed = if appender.blind {
            self.blind_append(appender, input, session, options)
                .await
                .map_err(refused)?
        } else {
            self.write_append(appender, input, session, options)
                .await
                .map_err(refused)?
        };
        let Some(version) = committed else {
            return Ok(None);
        };
        let write_us = started.elapsed().as_micros() as u64 - check_us;
        let entry = self.log_entry(&name, version).await?.ok_or_else(|| {
            Error::Internal(format!(
                "{name}: version {version} vanished after its commit"
            ))
        })?;
        appender.version = version;
        appender.entry = entry;
        debug!(
            version,
            check_us,
            write_us,
            entry_us = started.elapsed().as_micros() as u64 - check_us - write_us,
            "append committed"
        );
        if appender.blind {
            self.maintain_after_append(appender);
        }
        Ok(Some(version))
    }

    /// The blind append of [`Self::append_to`]: `Ok(None)` when the version after the
    /// appender's already exists.
    async fn blind_append(
        &self,
        appender: &Appender,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        options: &CommitOptions,
    ) -> std::result::Result<Option<u64>, DeltaTableError> {
        let started = std::time::Instant::now();
        let plan = session.create_physical_plan(&input).await?;
        let mut batches = datafusion::physical_plan::execute_stream(plan, session.task_ctx())?;
        let mut writer = RecordBatchWriter::for_table(&appender.table)?
            .with_writer_properties(table_writer_properties(&appender.table, false));
        let target = writer.arrow_schema();
        let mut rows = 0;
        while let Some(batch) = batches.try_next().await? {
            rows += batch.num_rows();
            writer.write(conform(batch, &target)?).await?;
        }
        let adds = writer.flush().await?;
        let state = appender.table.snapshot()?;
        let partition_columns: Vec<String> = state.metadata().partition_columns().to_vec();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
            predicate: None,
        };
        // The same operation metrics deltalake's write records (DESCRIBE HISTORY reads them).
        let metrics = serde_json::json!({
            "execution_time_ms": started.elapsed().as_millis() as u64,
            "num_added_files": adds.len(),
            "num_added_rows": rows,
            "num_partitions": 0,
            "num_removed_files": 0,
            "num_retries": 0,
        });
        let metadata = options
            .metadata
            .iter()
            .cloned()
            .chain([
                ("operationMetrics".to_string(), metrics),
                ("readVersion".to_string(), appender.version.into()),
            ])
            .collect();
        let actions = adds.into_iter().map(Action::Add).collect();
        let entry = CommitData::new(actions, operation, metadata, Vec::new()).get_bytes()?;
        let version = appender.version + 1;
        let log_store = appender.table.log_store();
        match log_store
            .write_commit_entry(version, CommitOrBytes::LogBytes(entry), Uuid::new_v4())
            .await
        {
            Ok(()) => Ok(Some(version)),
            Err(TransactionError::VersionAlreadyExists(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The append of [`Self::append_to`] through deltalake's write operation.
    async fn write_append(
        &self,
        appender: &mut Appender,
        input: LogicalPlan,
        session: Arc<dyn Session>,
        options: &CommitOptions,
    ) -> std::result::Result<Option<u64>, DeltaTableError> {
        let options = CommitOptions {
            base_version: Some(appender.version),
            ..options.clone()
        };
        let written = appender
            .table
            .clone()
            .write(Vec::new())
            .with_writer_properties(table_writer_properties(&appender.table, false))
            .with_input_plan(input)
            .with_session_state(session)
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(options.properties())
            .await;
        match written {
            Ok(table) => {
                let version = table.version().ok_or_else(|| {
                    DeltaTableError::Generic("no version after a write".to_string())
                })?;
                appender.table = table;
                Ok(Some(version))
            }
            // With no retries, a newer version fails the commit (deltalake's optimistic
            // concurrency): nothing was committed.
            Err(
                DeltaTableError::Transaction {
                    source: TransactionError::MaxCommitAttempts(_),
                }
                | DeltaTableError::VersionAlreadyExists(_)
                | DeltaTableError::InvalidVersion(_),
            ) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Appends record batches in one commit, creating the table (in an existing schema) on
    /// the first append; new columns are merged into the table's schema. For medlake's own
    /// tables (refresh history, quarantine), not for user writes.
    pub async fn append_batches(
        &self,
        name: &TableName,
        batches: Vec<RecordBatch>,
    ) -> Result<WriteOutcome> {
        self.write_batches(name, batches, WriteMode::Append).await
    }

    /// Appends (new columns merged) or overwrites (schema replaced) with record batches in
    /// one commit, creating the table on the first write. For medlake's own tables.
    #[instrument(skip(self, batches), fields(table = %name))]
    pub async fn write_batches(
        &self,
        name: &TableName,
        batches: Vec<RecordBatch>,
        mode: WriteMode,
    ) -> Result<WriteOutcome> {
        let (save_mode, schema_mode) = match mode {
            WriteMode::Append => (SaveMode::Append, SchemaMode::Merge),
            WriteMode::Overwrite => (SaveMode::Overwrite, SchemaMode::Overwrite),
        };
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let batches = self.suppress_batches(name, batches).await?;
        for attempt in 0..2 {
            let table = if self.table_exists(name).await? {
                self.open_table(name).await?
            } else {
                self.prepare_create(name, true).await?;
                DeltaTable::try_from_url(self.table_url(name)?)
                    .await
                    .map_err(delta)?
            };
            let properties = table_writer_properties(&table, false);
            let written = table
                .write(batches.clone())
                .with_writer_properties(properties)
                .with_table_name(name.table.clone())
                .with_save_mode(save_mode)
                .with_schema_mode(schema_mode)
                .await;
            match written {
                Ok(table) => return self.outcome(name, &table).await,
                // Another writer created the table first: append to theirs.
                Err(e) if attempt == 0 && Self::lost_create_race(&e) => continue,
                Err(e) => return Err(delta(e)),
            }
        }
        Err(Error::Internal(format!("append to {name} did not settle")))
    }

    /// Replaces the rows of `name` matching `predicate` with `batches` (each must match it)
    /// in one commit; a table that does not exist yet is created with them. For medlake's
    /// own tables (a view's quarantine after an incremental refresh recomputed a region).
    /// The commit does not record the predicate's values.
    #[instrument(skip(self, batches, schema, predicate), fields(table = %name))]
    pub async fn replace_rows_where(
        &self,
        name: &TableName,
        batches: Vec<RecordBatch>,
        schema: SchemaRef,
        predicate: datafusion::logical_expr::Expr,
    ) -> Result<WriteOutcome> {
        if !self.table_exists(name).await? {
            if batches.is_empty() {
                return Ok(WriteOutcome {
                    version: 0,
                    rows: 0,
                });
            }
            return self.write_batches(name, batches, WriteMode::Append).await;
        }
        let hide: crate::dml::Hide = Arc::new(|_: &str| "the rows of the changed keys".to_string());
        let table = self.open_scrubbed_at(name, hide, None).await?;
        let batches = self.suppress_batches(name, batches).await?;
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(schema)]
        } else {
            batches
        };
        let properties = table_writer_properties(&table, false);
        let table = table
            .write(batches)
            .with_writer_properties(properties)
            .with_table_name(name.table.clone())
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(predicate)
            .await
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        self.outcome(name, &table).await
    }

    async fn outcome(&self, name: &TableName, table: &DeltaTable) -> Result<WriteOutcome> {
        let version = table
            .version()
            .ok_or_else(|| Error::Internal(format!("{name} has no version after a write")))?;
        let rows = self
            .commit_entry(name, version)
            .await?
            .and_then(|entry| entry.rows_written)
            .unwrap_or(0);
        Ok(WriteOutcome { version, rows })
    }

    /// `DROP TABLE [IF EXISTS] name`. One put hides the table (atomic); its files are then
    /// deleted. A crash in between leaves a hidden folder that the next CREATE clears.
    #[instrument(skip(self), fields(table = %name))]
    pub async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<()> {
        if !self.table_exists(name).await? {
            if !self.schema_exists(&name.schema).await? && !if_exists {
                return Err(Error::SchemaNotFound {
                    schema: name.schema.clone(),
                });
            }
            return if if_exists {
                Ok(())
            } else {
                Err(Self::not_found(name))
            };
        }
        // No checkpoint or compaction of the table, and no append of this process, may land
        // after its marker.
        let _paused = self.pause_maintenance(name).await;
        let _gate = self.table_gate(name).write_owned().await;
        let folder = self.path(&[&name.schema, &name.table]);
        let marker = folder.clone().join(DROPPED_MARKER);
        self.store
            .put(&marker, PutPayload::from_static(b"dropped"))
            .await
            .map_err(|e| Error::store(&marker, e))?;
        // A table created again under the name starts its checkpoints afresh.
        self.checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.clear_dropped(&folder).await
    }

    /// Deletes what the dropped table in `folder` left: every object written no later than
    /// its DROP marker, then the marker. Objects written after the marker belong to a table
    /// created since under the same name (a CREATE racing this cleanup) and are kept: each is
    /// looked at again just before it is deleted. Does nothing without a marker.
    async fn clear_dropped(&self, folder: &Path) -> Result<()> {
        let marker = folder.clone().join(DROPPED_MARKER);
        let dropped_at = match self.store.head(&marker).await {
            Ok(meta) => meta.last_modified,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(Error::store(&marker, e)),
        };
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(folder))
            .try_collect()
            .await
            .map_err(|e| Error::store(folder, e))?;
        let mut dirs = std::collections::BTreeSet::new();
        for meta in objects {
            if meta.location == marker || meta.last_modified > dropped_at {
                continue;
            }
            self.delete_if_not_after(&meta.location, dropped_at).await?;
            let mut parent: Vec<_> = meta.location.parts().collect();
            while parent.pop().is_some() && parent.len() > folder.parts().count() {
                dirs.insert(Path::from_iter(parent.clone()));
            }
        }
        // Local folders stay behind as empty directories: remove the empty ones (a folder
        // with a new table's files is not empty and stays).
        if self.url.scheme() == "file" {
            let mut dirs: Vec<Path> = dirs.into_iter().collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.parts().count()));
            for dir in dirs {
                let _ = tokio::fs::remove_dir(format!("/{}", dir.as_ref())).await;
            }
        }
        self.delete_if_not_after(&marker, dropped_at).await?;
        if self.url.scheme() == "file" {
            let _ = tokio::fs::remove_dir(format!("/{}", folder.as_ref())).await;
        }
        Ok(())
    }

    /// Deletes what a log that cannot be read from its start holds (see `headless_log`):
    /// checkpoints and `_last_checkpoint` in a log without commits (a dropped table's
    /// checkpoint written after its DROP marker by another server's maintenance; this one's
    /// waits for DROP), or lone commits with neither version 0 nor a checkpoint before them
    /// (another server's append that raced the DROP; this one's waits for it). Delta would
    /// take either for a table, and a new table's log starts with version 0 alone.
    async fn clear_headless_log(&self, folder: &Path) -> Result<()> {
        let listing = self.log_listing(folder).await?;
        if !headless_log(&listing) {
            return Ok(());
        }
        for meta in listing {
            let path = &meta.location;
            let leftover = path.filename().is_some_and(|f| {
                f == "_last_checkpoint" || f.contains(".checkpoint.") || commit_version(f).is_some()
            });
            if leftover {
                match self.store.delete(path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::store(path, e)),
                }
            }
        }
        Ok(())
    }

    /// Deletes every object under `prefix`, the DROP marker last (DROP SCHEMA, once the schema
    /// marker is gone).
    async fn delete_prefix(&self, prefix: &Path) -> Result<()> {
        let mut objects: Vec<Path> = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| Error::store(prefix, e))?;
        objects.sort_by_key(|p| p.filename() == Some(DROPPED_MARKER));
        for path in objects {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(&path, e)),
            }
        }
        // Local folders stay behind as empty directories: remove them too.
        if self.url.scheme() == "file" {
            let dir = std::path::PathBuf::from(format!("/{}", prefix.as_ref()));
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::store(
                        prefix,
                        object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(e),
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// Deletes `path` unless it is gone or was written after `instant` (then it is not the
    /// object a cleanup listed but a new one under the same name).
    async fn delete_if_not_after(&self, path: &Path, instant: DateTime<Utc>) -> Result<()> {
        match self.store.head(path).await {
            Ok(meta) if meta.last_modified <= instant => {}
            Ok(_) | Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(Error::store(path, e)),
        }
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(path, e)),
        }
    }

    /// `CREATE EXTERNAL TABLE`: stores the definition of a table whose rows live in a source
    /// (one atomic put). Returns false when the table existed and `if_not_exists` was given.
    #[instrument(skip(self, definition), fields(table = %name))]
    pub async fn create_external(
        &self,
        name: &TableName,
        definition: &Value,
        if_not_exists: bool,
    ) -> Result<bool> {
        if !self.prepare_create(name, if_not_exists).await? {
            return Ok(false);
        }
        let path = self.path(&[&name.schema, &name.table, EXTERNAL_MARKER]);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(definition.to_string()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) if if_not_exists => Ok(false),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Self::exists_error(name)),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// The stored definition of an external table; `None` if `name` is not one (a Delta
    /// table, or nothing).
    pub async fn external(&self, name: &TableName) -> Result<Option<Value>> {
        let folder = self.path(&[&name.schema, &name.table]);
        if self.exists(&folder.clone().join(DROPPED_MARKER)).await? {
            return Ok(None);
        }
        let path = folder.join(EXTERNAL_MARKER);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| Error::store(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(&path, e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Internal(format!("external table {name}: unreadable definition: {e}"))
        })
    }

    /// The files directly in a table folder's `_delta_log`.
    async fn log_listing(&self, folder: &Path) -> Result<Vec<ObjectMeta>> {
        let log = folder.clone().join(DELTA_LOG);
        let listing = self
            .store
            .list_with_delimiter(Some(&log))
            .await
            .map_err(|e| Error::store(&log, e))?;
        Ok(listing.objects)
    }

    /// The commit versions present in a table folder's log, ascending.
    pub(crate) async fn log_versions(&self, folder: &Path) -> Result<Vec<u64>> {
        let mut versions: Vec<u64> = self
            .log_listing(folder)
            .await?
            .iter()
            .filter_map(|o| o.location.filename())
            .filter_map(commit_version)
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn commit_entry(&self, name: &TableName, version: u64) -> Result<Option<HistoryEntry>> {
        let Some(actions) = self.commit_actions(name, version).await? else {
            return Ok(None);
        };
        if let Some(info) = actions.iter().find_map(|action| action.get("commitInfo")) {
            return Ok(Some(history_entry(version, info)));
        }
        Ok(Some(HistoryEntry {
            version,
            timestamp: None,
            operation: None,
            parameters: "{}".into(),
            rows_written: None,
            metrics: "{}".into(),
            engine: None,
        }))
    }

    /// The versions in a table's log, ascending.
    pub async fn versions(&self, name: &TableName) -> Result<Vec<u64>> {
        if !self.table_exists(name).await? {
            return Err(Self::not_found(name));
        }
        self.log_versions(&self.path(&[&name.schema, &name.table]))
            .await
    }

    /// Every action of one commit (`commitInfo`, `add`, `remove`, `metaData`, ...), as JSON
    /// objects; `None` if the commit's log entry is gone (cleaned up after a checkpoint).
    pub async fn commit_actions(
        &self,
        name: &TableName,
        version: u64,
    ) -> Result<Option<Vec<Value>>> {
        let path = self
            .path(&[&name.schema, &name.table, DELTA_LOG])
            .join(format!("{version:020}.json"));
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| Error::store(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(&path, e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(Some(
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .collect(),
        ))
    }

    /// `DESCRIBE HISTORY name [LIMIT n]`: newest commit first.
    pub async fn history(
        &self,
        name: &TableName,
        limit: Option<usize>,
    ) -> Result<Vec<HistoryEntry>> {
        if !self.table_exists(name).await? {
            return Err(Self::not_found(name));
        }
        let versions = self
            .log_versions(&self.path(&[&name.schema, &name.table]))
            .await?;
        let mut entries = Vec::new();
        for version in versions.into_iter().rev().take(limit.unwrap_or(usize::MAX)) {
            if let Some(entry) = self.commit_entry(name, version).await? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// `OPTIMIZE name [ZORDER BY (cols)]`: compacts small files in one commit. Without
    /// ZORDER BY, a clustered table (`cluster_by`, a view's definition, or else the table's
    /// [`CLUSTER_BY`] property) is rewritten along a Z-order curve of its clustering columns.
    #[instrument(skip(self, session), fields(table = %name))]
    pub async fn optimize(
        &self,
        name: &TableName,
        zorder: Vec<String>,
        cluster_by: &[String],
        target_size: Option<NonZeroU64>,
        session: Arc<dyn Session>,
    ) -> Result<OptimizeOutcome> {
        let table = self.open_table(name).await?;
        let before = table.version().unwrap_or_default();
        // A clustered table is re-clustered: a Z-order of its CLUSTER BY columns.
        let zorder = if zorder.is_empty() && cluster_by.is_empty() {
            let snapshot = table
                .snapshot()
                .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
            cluster_columns(snapshot.metadata().configuration())
        } else if zorder.is_empty() {
            cluster_by.to_vec()
        } else {
            zorder
        };
        // Bin-packing of a table medlake can compact itself: its own compaction, whose
        // commit never loses to appends (deltalake's rechecks its whole read set for every
        // newer commit and gave up under a busy ingest door with 40001).
        if zorder.is_empty() && Self::compactable(&table) {
            let target = match target_size {
                Some(size) => size.get(),
                None => table
                    .snapshot()
                    .map_err(|e| Error::delta(&name.schema, &name.table, e))?
                    .table_config()
                    .target_file_size()
                    .get(),
            };
            let policy = AutoCompact {
                min_files: 2,
                target_size: target,
            };
            // A commit that rewrote files it was compacting (the automatic compaction, a
            // DELETE or MERGE) makes it start over from the new snapshot, twice at most.
            let mut outcome = self.compact(name, &table, &policy, false).await?;
            for _ in 0..2 {
                if outcome != Compaction::GaveWay {
                    break;
                }
                let table = self.open_table(name).await?;
                outcome = self.compact(name, &table, &policy, false).await?;
            }
            return match outcome {
                Compaction::Nothing => Ok(OptimizeOutcome {
                    version: before,
                    files_added: 0,
                    files_removed: 0,
                }),
                Compaction::GaveWay => Err(Error::Conflict {
                    schema: name.schema.clone(),
                    table: name.table.clone(),
                    source: Box::new(deltalake::DeltaTableError::Generic(
                        "a concurrent commit rewrote files OPTIMIZE was compacting".into(),
                    )),
                }),
                Compaction::Committed {
                    version,
                    files_removed,
                    files_added,
                } => Ok(OptimizeOutcome {
                    version,
                    files_added,
                    files_removed,
                }),
            };
        }
        let properties = table_writer_properties(&table, !zorder.is_empty());
        let mut builder = table
            .optimize()
            .with_session_state(session)
            .with_writer_properties(properties);
        if !zorder.is_empty() {
            builder = builder.with_type(OptimizeType::ZOrder(zorder));
        }
        if let Some(size) = target_size {
            builder = builder.with_target_size(size);
        }
        let (table, metrics) = builder
            .await
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        Ok(OptimizeOutcome {
            version: table.version().unwrap_or(before),
            files_added: metrics.num_files_added,
            files_removed: metrics.num_files_removed,
        })
    }

    /// `VACUUM name [RETAIN n HOURS] [DRY RUN]`: deletes files no version within the retention
    /// needs. A retention below the table's (7 days by default) is refused unless `force`.
    #[instrument(skip(self), fields(table = %name))]
    pub async fn vacuum(
        &self,
        name: &TableName,
        retain: Option<Duration>,
        dry_run: bool,
        force: bool,
    ) -> Result<VacuumOutcome> {
        let table = self.open_table(name).await?;
        let retention = match retain {
            Some(retain) => retain,
            None => table
                .snapshot()
                .map_err(|e| Error::delta(&name.schema, &name.table, e))?
                .table_config()
                .deleted_file_retention_duration(),
        };
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| Error::Internal(format!("retention out of range: {e}")))?;
        let mut builder = table
            .vacuum()
            .with_dry_run(dry_run)
            .with_enforce_retention_duration(!force);
        if retain.is_some() {
            builder = builder.with_retention_period(retention);
        }
        let (_table, metrics) = builder.await.map_err(|e| match e {
            DeltaTableError::GenericError { source }
                if source.to_string().contains("retention") =>
            {
                Error::RetentionTooShort {
                    schema: name.schema.clone(),
                    table: name.table.clone(),
                    reason: source.to_string(),
                }
            }
            e => Error::delta(&name.schema, &name.table, e),
        })?;
        // deltalake's (lite) vacuum deletes only files a commit removed; change files are
        // never removed, so they are deleted here once past the same retention.
        let mut files = metrics.files_deleted;
        files.extend(self.expire_change_files(name, retention, dry_run).await?);
        Ok(VacuumOutcome {
            dry_run: metrics.dry_run,
            files,
        })
    }
}

fn history_entry(version: u64, info: &Value) -> HistoryEntry {
    let timestamp = info
        .get("inCommitTimestamp")
        .or_else(|| info.get("timestamp"))
        .and_then(Value::as_i64)
        .and_then(DateTime::from_timestamp_millis);
    let metrics = info.get("operationMetrics").cloned().unwrap_or(Value::Null);
    let rows_written = ["num_added_rows", "numOutputRows", "numTargetRowsInserted"]
        .iter()
        .find_map(|k| metrics.get(*k))
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
    let object = |v: Option<&Value>| match v {
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => "{}".to_string(),
    };
    HistoryEntry {
        version,
        timestamp,
        operation: info
            .get("operation")
            .and_then(Value::as_str)
            .map(str::to_string),
        parameters: object(info.get("operationParameters")),
        rows_written,
        metrics: object(info.get("operationMetrics")),
        engine: info
            .get("engineInfo")
            .or_else(|| info.get("clientVersion"))
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listing_that_raced_a_commit_is_loaded_again() {
        let raced = DeltaTableError::Generic(
            "Generic delta kernel error: Expected contiguous commit files, but found gap: \
             ParsedLogPath { filename: \"00000000000000002347.json\" }"
                .into(),
        );
        assert!(listing_raced(&raced));
        let thinned = DeltaTableError::Generic(
            "Kernel error: Arrow error: External: Object at location /w/bronze/t/_delta_log/\
             00000000000000000070.checkpoint.parquet not found: No such file or directory"
                .into(),
        );
        assert!(listing_raced(&thinned));
        let data = DeltaTableError::Generic(
            "Object at location /w/bronze/t/part-00000.parquet not found".into(),
        );
        assert!(!listing_raced(&data));
        let other = DeltaTableError::Generic("No files in log segment".into());
        assert!(!listing_raced(&other));
        assert!(!listing_raced(&DeltaTableError::NotATable("t".into())));
    }
}
