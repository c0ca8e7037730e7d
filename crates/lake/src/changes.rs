//! What a range of a table's commits did to its rows: Delta's change data feed.
//!
//! A table with `delta.enableChangeDataFeed` gets change files (`_change_data/`) from every
//! DELETE, UPDATE and MERGE and from overwrites with a predicate, holding the exact rows each
//! removed or rewrote (`delete`, `update_preimage`, `update_postimage`). Commits without change
//! files (appends, full overwrites, and every commit of a table without the feed) are read from
//! their data files: an added file's rows are `insert`s, a removed file's rows `delete`s. So a
//! range of commits always yields a correct change set (a DELETE on a table without the feed
//! reads as "every row of the rewritten files deleted, their kept rows inserted again"), only a
//! larger one. Commits that move rows without changing them (OPTIMIZE: `dataChange: false`)
//! yield nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::{ViewTable, provider_as_source, source_as_provider};
use datafusion::logical_expr::LogicalPlanBuilder;
use deltalake::delta_datafusion::{DeltaCdfTableProvider, DeltaScanNext as DeltaScan};
use serde_json::Value;
use url::Url;

use crate::warehouse::{TableName, TimeTravel, Warehouse};
use crate::{Error, Result};

/// The folder of a table's change files.
const CHANGE_DATA_FOLDER: &str = "_change_data";

/// The column of a change row that says what happened to it.
pub const CHANGE_TYPE: &str = "_change_type";
/// The column of a change row with the version of the commit that made it.
pub const COMMIT_VERSION: &str = "_commit_version";
/// The column of a change row with the time of the commit that made it.
pub const COMMIT_TIMESTAMP: &str = "_commit_timestamp";
/// The change types of rows a range of commits added (`insert`, `update_postimage`).
pub const ADDED: &[&str] = &["insert", "update_postimage"];
/// The change types of rows a range of commits removed (`delete`, `update_preimage`).
pub const REMOVED: &[&str] = &["delete", "update_preimage"];

/// What the commits of a range did, read from their log entries alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Data files the range added (paths relative to the table), in commit order.
    pub added: Vec<String>,
    /// Whether any commit removed or rewrote rows (a data file removed with `dataChange`, or
    /// change files written). When not, the range only appended: its rows are those of
    /// `added`.
    pub rewrote: bool,
    /// Files of `added` a compaction (`dataChange: false`) removed since, with the version of
    /// that compaction: the last snapshot holding each is the one before.
    pub compacted: BTreeMap<String, u64>,
}

impl Warehouse {
    /// Classifies the commits after version `from` up to `to` from their log entries, or says
    /// why their rows cannot be read as changes: a commit left the log, changed the table's
    /// schema or protocol, added files to a partitioned table or with deletion vectors, or
    /// a file the range added was compacted away and then deleted by VACUUM.
    pub async fn span(
        &self,
        name: &TableName,
        from: u64,
        to: u64,
    ) -> Result<std::result::Result<Span, String>> {
        if to < from {
            return Ok(Err(format!(
                "{name} is older (version {to}) than it was (version {from}); it was recreated"
            )));
        }
        let mut span = Span::default();
        let mut compacted = HashMap::new();
        for version in from + 1..=to {
            let Some(actions) = self.commit_actions(name, version).await? else {
                return Ok(Err(format!(
                    "{name} version {version} is no longer in its log"
                )));
            };
            let operation = actions
                .iter()
                .find_map(|a| a.get("commitInfo")?.get("operation")?.as_str())
                .unwrap_or("an unknown operation")
                .to_string();
            for action in &actions {
                if let Some(add) = action.get("add") {
                    if add.get("dataChange").and_then(Value::as_bool) != Some(true) {
                        continue;
                    }
                    let partitioned = add
                        .get("partitionValues")
                        .and_then(Value::as_object)
                        .is_some_and(|p| !p.is_empty());
                    if partitioned || add.get("deletionVector").is_some_and(|d| !d.is_null()) {
                        return Ok(Err(format!(
                            "{name} is partitioned or has deletion vectors"
                        )));
                    }
                    let path = add
                        .get("path")
                        .and_then(Value::as_str)
                        .ok_or_else(|| Error::Internal("an add action without a path".into()))?;
                    span.added.push(path.to_string());
                } else if let Some(remove) = action.get("remove") {
                    if remove.get("dataChange").and_then(Value::as_bool) == Some(false) {
                        if let Some(path) = remove.get("path").and_then(Value::as_str) {
                            compacted.insert(path.to_string(), version);
                        }
                    } else {
                        span.rewrote = true;
                    }
                } else if action.get("cdc").is_some() {
                    span.rewrote = true;
                } else if action.get("metaData").is_some() || action.get("protocol").is_some() {
                    return Ok(Err(format!(
                        "{name} version {version} ({operation}) changed the table's schema or properties"
                    )));
                }
            }
        }
        // A file the range added and a compaction (OPTIMIZE, automatic or not) removed since
        // is no longer in the table's snapshot, but its rows are still read from it by path
        // until VACUUM deletes it (after the table's retention, 7 days by default).
        span.compacted = span
            .added
            .iter()
            .filter_map(|f| Some((f.clone(), *compacted.get(f)?)))
            .collect();
        for path in span.compacted.keys() {
            let relative = object_store::path::Path::from_url_path(path)
                .map_err(|e| Error::Internal(format!("{name}: data file path {path}: {e}")))?;
            let file: object_store::path::Path = self
                .path(&[&name.schema, &name.table])
                .parts()
                .chain(relative.parts())
                .collect();
            if !self.exists(&file).await? {
                return Ok(Err(format!(
                    "{name} was compacted (OPTIMIZE) and vacuumed after rows were added"
                )));
            }
        }
        Ok(Ok(span))
    }

    /// The versions a change range names, both included: `from` is a version or the first
    /// commit at or after a timestamp, `to` a version, the last commit at or before a
    /// timestamp, or (`None`) the latest version. Every version of the range must still be in
    /// the table's log, and `from` must not come after `to`.
    pub async fn change_versions(
        &self,
        name: &TableName,
        from: &TimeTravel,
        to: Option<&TimeTravel>,
    ) -> Result<(u64, u64)> {
        let versions = self.versions(name).await?;
        let (Some(&earliest), Some(&latest)) = (versions.first(), versions.last()) else {
            return Err(Error::TableNotFound {
                schema: name.schema.clone(),
                table: name.table.clone(),
            });
        };
        let missing = |version| Error::VersionNotFound {
            schema: name.schema.clone(),
            table: name.table.clone(),
            version,
            earliest,
            latest,
        };
        let to = match to {
            None => latest,
            Some(TimeTravel::Version(v)) if (earliest..=latest).contains(v) => *v,
            Some(TimeTravel::Version(v)) => return Err(missing(*v)),
            Some(at @ TimeTravel::Timestamp(_)) => self.version_as_of(name, at).await?,
        };
        let from = match from {
            TimeTravel::Version(v) if (earliest..=latest).contains(v) => *v,
            TimeTravel::Version(v) => return Err(missing(*v)),
            TimeTravel::Timestamp(ts) => match self.first_version_from(name, ts, earliest).await? {
                v if v > latest => {
                    return Err(Error::InvalidRange {
                        schema: name.schema.clone(),
                        table: name.table.clone(),
                        reason: format!("nothing was committed at or after {}", ts.to_rfc3339()),
                    });
                }
                v => v,
            },
        };
        if from > to {
            return Err(Error::InvalidRange {
                schema: name.schema.clone(),
                table: name.table.clone(),
                reason: format!("it starts at version {from}, after its end (version {to})"),
            });
        }
        self.check_change_files(name, from, to).await?;
        Ok((from, to))
    }

    /// Refuses a range whose change rows cannot all be read: a commit's files (its change
    /// files, or the data files it added or removed) were deleted by VACUUM, or the range
    /// starts at a commit that set the table's properties without the change data feed
    /// (deltalake refuses to read from there).
    async fn check_change_files(&self, name: &TableName, from: u64, to: u64) -> Result<()> {
        let refused = |reason: String| Error::InvalidRange {
            schema: name.schema.clone(),
            table: name.table.clone(),
            reason,
        };
        let folder = self.path(&[&name.schema, &name.table]);
        for version in from..=to {
            let Some(actions) = self.commit_actions(name, version).await? else {
                return Err(refused(format!(
                    "version {version} is no longer in its log"
                )));
            };
            let feed_off = |metadata: &Value| {
                metadata
                    .pointer("/configuration/delta.enableChangeDataFeed")
                    .and_then(Value::as_str)
                    .is_none_or(|v| !v.eq_ignore_ascii_case("true"))
            };
            if version == from
                && actions
                    .iter()
                    .filter_map(|a| a.get("metaData"))
                    .any(feed_off)
            {
                return Err(refused(format!(
                    "version {version} set the table's properties without the change data feed;                      start the range after it"
                )));
            }
            let has_cdc = actions.iter().any(|a| a.get("cdc").is_some());
            let files = actions.iter().filter_map(|a| {
                let file = match has_cdc {
                    true => a.get("cdc"),
                    false => a.get("add").or_else(|| a.get("remove")),
                }?;
                (file.get("dataChange").and_then(Value::as_bool) != Some(false) || has_cdc)
                    .then(|| file.get("path")?.as_str())
                    .flatten()
            });
            for file in files {
                let path = object_store::path::Path::from_url_path(format!("{folder}/{file}"))
                    .map_err(|_| Error::Internal(format!("{name}: a file path in its log")))?;
                if !self.exists(&path).await? {
                    return Err(refused(format!(
                        "the files of version {version} were removed by VACUUM (past the \
                         table's retention); read a later range"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The version `name` was at `at`.
    async fn version_as_of(&self, name: &TableName, at: &TimeTravel) -> Result<u64> {
        self.open_table_as_of(name, Some(at))
            .await?
            .version()
            .ok_or_else(|| Error::Internal(format!("{name} opened without a version")))
    }

    /// The first version of `name` committed at or after `ts`.
    async fn first_version_from(
        &self,
        name: &TableName,
        ts: &chrono::DateTime<chrono::Utc>,
        earliest: u64,
    ) -> Result<u64> {
        let Some(before) = ts.checked_sub_signed(chrono::TimeDelta::microseconds(1)) else {
            return Ok(earliest);
        };
        match self
            .version_as_of(name, &TimeTravel::Timestamp(before))
            .await
        {
            // Committed before `ts`: the range starts with the next commit.
            Ok(version) => Ok(version.saturating_add(1)),
            Err(Error::TimestampBeforeHistory { .. }) => Ok(earliest),
            Err(e) => Err(e),
        }
    }

    /// Deletes (or, in a dry run, lists) the change files of `name` written longer than
    /// `retention` ago: VACUUM's part for the change data feed. Returns their paths relative
    /// to the table. Ranges of changes that read them then fail (see
    /// [`Self::change_versions`]).
    pub(crate) async fn expire_change_files(
        &self,
        name: &TableName,
        retention: chrono::Duration,
        dry_run: bool,
    ) -> Result<Vec<String>> {
        use futures::TryStreamExt as _;
        use object_store::ObjectStoreExt as _;
        let folder = self.path(&[&name.schema, &name.table]);
        let changes = folder.clone().join(CHANGE_DATA_FOLDER);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let expired: Vec<object_store::path::Path> = self
            .store
            .list(Some(&changes))
            .try_filter(|meta| std::future::ready(meta.last_modified <= cutoff))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| Error::store(&changes, e))?;
        let mut deleted = Vec::with_capacity(expired.len());
        for path in expired {
            if !dry_run {
                match self.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::store(&path, e)),
                }
            }
            let relative = path
                .prefix_match(&folder)
                .map(|parts| {
                    parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_else(|| path.to_string());
            deleted.push(relative);
        }
        Ok(deleted)
    }

    /// The rows of the data files `span` added to `name`, as a table with `now`'s columns:
    /// `now` (the table's provider at the span's last version) limited to those files
    /// (deltalake's file selection, so the rows are read as any scan of the table reads them,
    /// and the scan crosses to a cluster as plain data); files a compaction removed since are
    /// read from the last snapshot that held them.
    pub async fn added_rows(
        &self,
        name: &TableName,
        span: &Span,
        now: &Arc<dyn TableProvider>,
    ) -> Result<Arc<dyn TableProvider>> {
        if span.added.is_empty() {
            return Ok(Arc::new(EmptyTable::new(now.schema())));
        }
        // The files of each snapshot: `None` is `now`'s.
        let mut by_snapshot: BTreeMap<Option<u64>, Vec<&String>> = BTreeMap::new();
        for path in &span.added {
            let holder = span.compacted.get(path).map(|v| v.saturating_sub(1));
            by_snapshot.entry(holder).or_default().push(path);
        }
        let not_delta = || Error::Internal(format!("{name} is not read through deltalake's scan"));
        let mut scans = Vec::new();
        for (holder, files) in by_snapshot {
            let provider = match holder {
                None => now.clone(),
                Some(version) => {
                    self.table_provider(name, Some(&TimeTravel::Version(version)))
                        .await?
                        .0
                }
            };
            let delta = provider.downcast_ref::<DeltaScan>().ok_or_else(not_delta)?;
            let selected = delta.clone().with_file_paths(files.into_iter().cloned());
            scans.push(provider_as_source(Arc::new(selected)));
        }
        let mut scans = scans.into_iter();
        let first = scans.next().ok_or_else(not_delta)?;
        if scans.len() == 0 {
            return Ok(source_as_provider(&first)?);
        }
        let mut plan = LogicalPlanBuilder::scan("added", first, None)?;
        for scan in scans {
            plan = plan.union(LogicalPlanBuilder::scan("added", scan, None)?.build()?)?;
        }
        Ok(Arc::new(ViewTable::new(plan.build()?, None)))
    }

    /// The rows `name` gained and lost in versions `from` to `to` (both included), as a table
    /// with the table's columns (as of `to`) and [`CHANGE_TYPE`], [`COMMIT_VERSION`] and
    /// [`COMMIT_TIMESTAMP`]. See the module docs for what a range without change files yields.
    pub async fn changes(
        &self,
        name: &TableName,
        from: u64,
        to: u64,
    ) -> Result<Arc<dyn TableProvider>> {
        let table = self
            .open_table_as_of(name, Some(&TimeTravel::Version(to)))
            .await?;
        let feed = ChangeFeed::of(table, self.table_url(name)?, from, to)
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        Ok(Arc::new(feed))
    }

    /// How many rows the commits after version `from` up to `to` inserted and removed, as
    /// their change feed yields them when no commit wrote change files (an added data file's
    /// rows inserted, a removed one's deleted; OPTIMIZE moves rows and counts for nothing),
    /// from the log alone: each added file's `numRecords`, each removed file's from the commit
    /// in the range that added it or from the snapshot at `from`. `None` when the log cannot
    /// tell (a commit left the log or wrote change files, a file without row counts): count
    /// the feed's rows instead. What `REFRESH POLICY AUTO` weighs: counting the feed of a
    /// table rewritten whole read every row twice (issue 24: 3-4 s per view over a rewritten
    /// 35M-row input, to decide to recompute it).
    pub async fn change_volume(
        &self,
        name: &TableName,
        from: u64,
        to: u64,
    ) -> Result<Option<(u64, u64)>> {
        let mut in_range: HashMap<String, u64> = HashMap::new();
        let mut before: Vec<String> = Vec::new();
        let (mut inserted, mut removed) = (0u64, 0u64);
        for version in from.saturating_add(1)..=to {
            let Some(actions) = self.commit_actions(name, version).await? else {
                return Ok(None);
            };
            for action in &actions {
                if action.get("cdc").is_some() {
                    return Ok(None);
                }
                if let Some(add) = action.get("add") {
                    let (Some(path), Some(rows)) = (file_path(add), records(add)) else {
                        return Ok(None);
                    };
                    if add.get("dataChange").and_then(Value::as_bool) != Some(false) {
                        inserted = inserted.saturating_add(rows);
                    }
                    in_range.insert(path, rows);
                } else if let Some(remove) = action.get("remove") {
                    if remove.get("dataChange").and_then(Value::as_bool) == Some(false) {
                        continue;
                    }
                    let Some(path) = file_path(remove) else {
                        return Ok(None);
                    };
                    match in_range.get(&path) {
                        Some(rows) => removed = removed.saturating_add(*rows),
                        None => before.push(path),
                    }
                }
            }
        }
        if !before.is_empty() {
            let table = self
                .open_table_as_of(name, Some(&TimeTravel::Version(from)))
                .await?;
            let snapshot = table
                .snapshot()
                .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
            let rows: HashMap<String, Option<usize>> = snapshot
                .log_data()
                .iter()
                .map(|file| (normalized(&file.path()), file.num_records()))
                .collect();
            for path in before {
                let Some(Some(n)) = rows.get(&path) else {
                    return Ok(None);
                };
                removed = removed.saturating_add(*n as u64);
            }
        }
        Ok(Some((inserted, removed)))
    }
}

/// A table's change data feed over a range of versions (what [`Warehouse::changes`] gives):
/// deltalake's provider, and what it was opened from, so that another process (a cluster's
/// executor) can open the same feed again ([`ChangeFeed::open`]).
#[derive(Debug)]
pub struct ChangeFeed {
    table: Url,
    from: u64,
    to: u64,
    inner: DeltaCdfTableProvider,
}

impl ChangeFeed {
    fn of(
        table: deltalake::DeltaTable,
        url: Url,
        from: u64,
        to: u64,
    ) -> deltalake::DeltaResult<Self> {
        let builder = table
            .scan_cdf()
            .with_starting_version(from)
            .with_ending_version(to);
        Ok(Self {
            table: url,
            from,
            to,
            inner: DeltaCdfTableProvider::try_new(builder)?,
        })
    }

    /// The feed of the Delta table at `table` from version `from` to `to`, read through this
    /// process's object stores.
    pub async fn open(table: &Url, from: u64, to: u64) -> deltalake::DeltaResult<Self> {
        let loaded = deltalake::DeltaTableBuilder::from_url(table.clone())?
            .with_version(to)
            .load()
            .await?;
        Self::of(loaded, table.clone(), from, to)
    }

    /// The table's location.
    pub fn table(&self) -> &Url {
        &self.table
    }

    /// The first and last version of the range (both included).
    pub fn versions(&self) -> (u64, u64) {
        (self.from, self.to)
    }
}

#[async_trait::async_trait]
impl TableProvider for ChangeFeed {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> datafusion::error::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }
}

/// The path of an add or remove action, as [`normalized`] compares it.
fn file_path(action: &Value) -> Option<String> {
    action.get("path").and_then(Value::as_str).map(normalized)
}

/// A data file's path (relative to its table) in one spelling: the log's is URL-encoded.
fn normalized(path: &str) -> String {
    object_store::path::Path::from_url_path(path)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// The `numRecords` of an add action's statistics.
fn records(add: &Value) -> Option<u64> {
    let stats = add.get("stats")?;
    let stats: Value = match stats {
        Value::String(text) => serde_json::from_str(text).ok()?,
        other => other.clone(),
    };
    stats.get("numRecords")?.as_u64()
}
