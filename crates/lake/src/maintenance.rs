//! What a blind append leaves to be done in the background so that a table micro-batched by
//! the ingest doors stays cheap to read: checkpoints and automatic compaction.
//!
//! The HTTP, Flight SQL and MLLP doors (and the audit log) commit a small file every few
//! hundred milliseconds. Without compaction such a table gains ~36,000 files an hour: every
//! reader of it replays them, every checkpoint holds them all (each larger than the last, so
//! the log grows quadratically: the soak measured 1 GB of log in 32 minutes for one HL7
//! table) and every snapshot kept in memory grows with them. So, when a checkpoint is due
//! (every `delta.checkpointInterval` commits, at most [`APPEND_CHECKPOINT_INTERVAL`], more
//! as the checkpoint grows: see `checkpoints.rs`, which also deletes superseded ones) a task
//! of its own writes it and then, when the table holds at least
//! `medlake.autoCompact.minFiles` files smaller than `medlake.autoCompact.targetFileSize`,
//! compacts them: bins of small files up to the target size, each rewritten as one file, and
//! one `OPTIMIZE` commit whose removes and adds say `dataChange: false` (so readers of the
//! change feed and incremental refreshes see no change). The compaction never blocks an
//! append: appends are put-if-absent commits of their own, and the compaction's entry is put
//! at the first free version after the appends that landed meanwhile (appends never conflict
//! with it; only a commit that removed one of its files or changed the schema or protocol
//! makes it give way, its new files deleted again). At most one such task runs per table; a
//! checkpoint that falls due while it runs is written by it afterwards (the newest such
//! version). The audit log is compacted too: `medlake audit verify` reads every audit
//! commit's rows by `seq` from whichever files hold them now.
//!
//! `ALTER TABLE t SET TBLPROPERTIES ('medlake.autoCompact' = 'false')` turns it off for a
//! table (for example one that a manual `OPTIMIZE ... ZORDER BY` keeps in order).

use std::collections::{HashMap, HashSet};
use std::sync::PoisonError;

use chrono::Utc;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::logstore::CommitOrBytes;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::warehouse::{Appender, TableName, Warehouse, conform, table_writer_properties};

/// The table property turning automatic compaction off (`'false'`) or on (`'true'`, the
/// default).
pub const AUTO_COMPACT: &str = "medlake.autoCompact";
/// The table property: how many small files a table must hold before they are compacted.
pub const AUTO_COMPACT_MIN_FILES: &str = "medlake.autoCompact.minFiles";
/// The table property: the size (bytes) below which a file counts as small, and the size of
/// the files a compaction writes.
pub const AUTO_COMPACT_TARGET_SIZE: &str = "medlake.autoCompact.targetFileSize";

/// Small files before a compaction, unless the table says otherwise.
pub const DEFAULT_MIN_FILES: usize = 50;
/// The size below which a file is small and that compactions write, unless the table says
/// otherwise: 32 MiB, a few million readings.
pub const DEFAULT_TARGET_SIZE: u64 = 32 << 20;

pub use crate::checkpoints::APPEND_CHECKPOINT_INTERVAL;

/// The smallest target size a table may set.
const MIN_TARGET_SIZE: u64 = 1 << 20;
/// The largest target size a table may set: a compaction reads each small file whole, so a
/// file below the target is held in memory for a moment.
const MAX_TARGET_SIZE: u64 = 256 << 20;

/// The table properties `ALTER TABLE ... SET TBLPROPERTIES` accepts.
pub const SETTABLE_PROPERTIES: &[&str] = &[
    AUTO_COMPACT,
    AUTO_COMPACT_MIN_FILES,
    AUTO_COMPACT_TARGET_SIZE,
    crate::bloom::BLOOM_FILTER_COLUMNS,
];

/// A table's automatic compaction policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoCompact {
    pub min_files: usize,
    pub target_size: u64,
}

impl AutoCompact {
    /// The policy a table's properties give (`None`: off). Values that do not parse (they
    /// are checked when set; another engine may have written them) mean the default.
    pub fn of(configuration: &HashMap<String, String>) -> Option<Self> {
        let get = |key: &str| {
            configuration
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim())
        };
        if get(AUTO_COMPACT).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            return None;
        }
        Some(Self {
            min_files: get(AUTO_COMPACT_MIN_FILES)
                .and_then(|v| v.parse().ok())
                .filter(|n| *n >= 2)
                .unwrap_or(DEFAULT_MIN_FILES),
            target_size: get(AUTO_COMPACT_TARGET_SIZE)
                .and_then(|v| v.parse().ok())
                .filter(|n| (MIN_TARGET_SIZE..=MAX_TARGET_SIZE).contains(n))
                .unwrap_or(DEFAULT_TARGET_SIZE),
        })
    }
}

/// Checks one `key = value` of `ALTER TABLE ... SET TBLPROPERTIES`; returns the key as it is
/// stored (its canonical spelling).
pub fn check_property(key: &str, value: &str) -> std::result::Result<&'static str, String> {
    let Some(known) = SETTABLE_PROPERTIES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(key))
    else {
        return Err(format!(
            "table property '{}' cannot be set; settable: {}",
            key.chars().take(100).collect::<String>(),
            SETTABLE_PROPERTIES.join(", ")
        ));
    };
    let value = value.trim();
    let fine = match *known {
        // Checked against the table's columns by `Warehouse::set_table_properties`.
        crate::bloom::BLOOM_FILTER_COLUMNS => true,
        AUTO_COMPACT => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        AUTO_COMPACT_MIN_FILES => value
            .parse::<usize>()
            .is_ok_and(|n| (2..=1_000_000).contains(&n)),
        _ => value
            .parse::<u64>()
            .is_ok_and(|n| (MIN_TARGET_SIZE..=MAX_TARGET_SIZE).contains(&n)),
    };
    if fine {
        Ok(known)
    } else {
        let expected = match *known {
            AUTO_COMPACT => "'true' or 'false'",
            AUTO_COMPACT_MIN_FILES => "a whole number from 2 to 1000000",
            _ => "a size in bytes from 1048576 (1 MiB) to 268435456 (256 MiB)",
        };
        Err(format!("{known} must be {expected}"))
    }
}

/// Whether a checkpoint of `version` is due: the log has `interval` entries or more since
/// the newest checkpoint `checkpointed` (or since the table's first version, when it has
/// none: the first checkpoint is of version `interval - 1`, as before).
pub(crate) fn checkpoint_due(version: u64, checkpointed: Option<u64>, interval: u64) -> bool {
    match checkpointed {
        Some(at) => version.saturating_sub(at) >= interval.max(1),
        None => version + 1 >= interval.max(1),
    }
}

/// Which tables' maintenance tasks run, and which tables may not start one.
#[derive(Debug, Default)]
pub(crate) struct Upkeep {
    /// Tables whose task runs, each with the newest version whose checkpoint fell due
    /// meanwhile.
    running: HashMap<TableName, Option<u64>>,
    /// Tables being dropped ([`Warehouse::pause_maintenance`]), with how many drops hold them.
    paused: HashMap<TableName, usize>,
}

/// Takes a table out of [`Upkeep::running`] when its task ends early (a panic, or the runtime
/// shutting down); a task that ends normally does it under the same lock in which it found
/// nothing more to do.
struct Running {
    warehouse: Warehouse,
    name: TableName,
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            self.warehouse.upkeep().running.remove(&self.name);
        }
    }
}

/// A table's maintenance paused ([`Warehouse::pause_maintenance`]) until this is dropped.
pub(crate) struct Paused {
    warehouse: Warehouse,
    name: TableName,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let mut upkeep = self.warehouse.upkeep();
        if let Some(holds) = upkeep.paused.get_mut(&self.name) {
            *holds -= 1;
            if *holds == 0 {
                upkeep.paused.remove(&self.name);
            }
        }
    }
}

impl Warehouse {
    /// After a blind append: when a checkpoint is due (the log has grown by
    /// `delta.checkpointInterval` entries, at most [`APPEND_CHECKPOINT_INTERVAL`], since the
    /// newest checkpoint the appender knows), a task of its own writes it, cleans up expired
    /// log entries when the table asks for it (as deltalake's post-commit hook does) and
    /// compacts the table's small files when its policy says so (see the module
    /// documentation). The appender's next commit does not wait for it. One task per table:
    /// a checkpoint that falls due while it runs is left to it (the newest such version),
    /// written when it is done with the last one. A failure is logged, not returned: the
    /// commit stands, and readers only replay more log.
    pub(crate) fn maintain_after_append(&self, appender: &mut Appender) {
        let Ok(state) = appender.table.snapshot() else {
            return;
        };
        let config = state.table_config();
        let actions = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&appender.name)
            .map_or(0, |log| log.actions);
        let interval =
            crate::checkpoints::append_interval(config.checkpoint_interval().get(), actions);
        if !checkpoint_due(appender.version, appender.checkpointed, interval) {
            return;
        }
        let retention = config.log_retention_duration();
        let cleanup = config.enable_expired_log_cleanup();
        let (name, version) = (appender.name.clone(), appender.version);
        appender.checkpointed = Some(version);
        {
            let mut upkeep = self.upkeep();
            if upkeep.paused.contains_key(&name) {
                return;
            }
            if let Some(pending) = upkeep.running.get_mut(&name) {
                *pending = Some(version);
                return;
            }
            upkeep.running.insert(name.clone(), None);
        }
        let running = Running {
            warehouse: self.clone(),
            name: name.clone(),
            ended: false,
        };
        let warehouse = self.clone();
        let Ok(mut background) = self.background.lock() else {
            return;
        };
        while background.try_join_next().is_some() {}
        background.spawn(async move {
            // The whole guard moves in (a block naming only its `ended` would copy the bool and
            // leave the guard to be dropped here, at once).
            let mut running = running;
            let mut version = version;
            loop {
                if let Err(e) = warehouse
                    .checkpoint_and_compact(&name, version, cleanup.then_some(retention))
                    .await
                {
                    warn!(table = %name, version, error = %medlake_common::error_chain(&e), "checkpoint or compaction after an append failed");
                }
                let mut upkeep = warehouse.upkeep();
                let next = upkeep.running.get_mut(&name).and_then(Option::take);
                match next.filter(|_| !upkeep.paused.contains_key(&name)) {
                    Some(next) => version = next,
                    None => {
                        upkeep.running.remove(&name);
                        running.ended = true;
                        return;
                    }
                }
            }
        });
    }

    fn upkeep(&self) -> std::sync::MutexGuard<'_, Upkeep> {
        self.maintaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops `name`'s maintenance until the returned guard is dropped: no task starts, and the
    /// running one (if any) has ended when this returns. `DROP TABLE` holds it while it hides
    /// and deletes the table: a checkpoint or compaction written after the DROP marker would
    /// be kept as a new table's (see `clear_dropped`) and bring the dropped one back.
    pub(crate) async fn pause_maintenance(&self, name: &TableName) -> Paused {
        *self.upkeep().paused.entry(name.clone()).or_default() += 1;
        let paused = Paused {
            warehouse: self.clone(),
            name: name.clone(),
        };
        while self.upkeep().running.contains_key(name) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        paused
    }

    /// The checkpoint of the newest version (`version` or later), the expired log cleaned up
    /// (entries older than `cleanup`, when given), then the automatic compaction.
    async fn checkpoint_and_compact(
        &self,
        name: &TableName,
        version: u64,
        cleanup: Option<std::time::Duration>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        // The newest version, not `version` itself: a compaction committed since the
        // checkpoint fell due has already replaced files that `version` still lists.
        let table = crate::warehouse::load_newest(self.table_url(name)?)
            .await
            .map_err(delta)?;
        let version = table.version().unwrap_or(version);
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .map_err(delta)?;
        let actions = self.last_checkpoint_hint(name).await.map_or(0, |(_, n)| n);
        let (anchor, listed) = self.checkpoint_log(name, |log| {
            log.actions = actions;
            (log.anchor, log.listed)
        });
        // Every CLEANUP_EVERY the whole log is listed: the expired-log cleanup (which keeps
        // the newest checkpoint at or before the oldest version it keeps), then the thinning
        // from the first checkpoint left (never deleted: the versions after it need it).
        let whole = listed.is_none_or(|at| at.elapsed() >= crate::checkpoints::CLEANUP_EVERY);
        if let Some(retention) = cleanup.filter(|_| whole) {
            let cutoff = Utc::now().timestamp_millis() - retention.as_millis() as i64;
            deltalake::checkpoints::cleanup_expired_logs_for(
                version,
                table.log_store().as_ref(),
                cutoff,
                None,
            )
            .await
            .map_err(delta)?;
        }
        let anchor = self
            .thin_checkpoints(name, if whole { None } else { anchor })
            .await?;
        self.checkpoint_log(name, |log| {
            log.anchor = anchor;
            if whole {
                log.listed = Some(std::time::Instant::now());
            }
        });
        debug!(
            table = %name,
            version,
            actions,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        self.auto_compact(name, table).await?;
        Ok(())
    }

    /// `f` applied to what is remembered of `name`'s checkpoints.
    fn checkpoint_log<T>(
        &self,
        name: &TableName,
        f: impl FnOnce(&mut crate::checkpoints::CheckpointLog) -> T,
    ) -> T {
        let mut logs = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(logs.entry(name.clone()).or_default())
    }

    /// Deletes the checkpoints of `name` that [`crate::checkpoints::thinning`] lets go (those
    /// newer than `anchor`, or all when `None`, are looked at); returns the new anchor.
    async fn thin_checkpoints(&self, name: &TableName, anchor: Option<u64>) -> Result<Option<u64>> {
        use futures::TryStreamExt as _;
        let log = self.path(&[&name.schema, &name.table, crate::warehouse::DELTA_LOG]);
        let offset = anchor.map(|a| log.clone().join(format!("{a:020}.checkpoint.parquet")));
        let listing = match &offset {
            Some(offset) => self.store.list_with_offset(Some(&log), offset),
            None => self.store.list(Some(&log)),
        };
        let files: Vec<object_store::ObjectMeta> = listing
            .try_collect()
            .await
            .map_err(|e| Error::store(&log, e))?;
        let checkpoints: Vec<(u64, Path, chrono::DateTime<Utc>)> = files
            .into_iter()
            .filter_map(|meta| {
                let file = meta.location.filename()?;
                let (digits, rest) = file.split_at_checked(20)?;
                let version = digits.parse::<u64>().ok()?;
                rest.starts_with(".checkpoint.").then_some((
                    version,
                    meta.location,
                    meta.last_modified,
                ))
            })
            .collect();
        let listed: Vec<_> = checkpoints.iter().map(|(v, _, at)| (*v, *at)).collect();
        let (anchor, delete) =
            crate::checkpoints::thinning(anchor, &listed, Utc::now(), self.checkpoint_grace);
        for (version, path, _) in &checkpoints {
            if delete.contains(version) {
                match self.store.delete(path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::store(path, e)),
                }
            }
        }
        if !delete.is_empty() {
            debug!(table = %name, deleted = delete.len(), ?anchor, "superseded checkpoints deleted");
        }
        Ok(anchor)
    }

    /// `ALTER TABLE name SET TBLPROPERTIES (...)`: one metadata commit setting the given
    /// properties, each checked by [`check_property`] first (nothing is set when one is
    /// refused). Returns the new version.
    pub async fn set_table_properties(
        &self,
        name: &TableName,
        properties: &[(String, String)],
    ) -> Result<u64> {
        let invalid = |reason| Error::InvalidTableProperty {
            table: name.to_string(),
            reason,
        };
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let table = self.open_table(name).await?;
        let mut set = HashMap::new();
        for (key, value) in properties {
            let key = check_property(key, value).map_err(invalid)?;
            let value = if key == crate::bloom::BLOOM_FILTER_COLUMNS {
                let schema = table.snapshot().map_err(delta)?.snapshot().arrow_schema();
                crate::bloom::resolve(value, &schema).map_err(invalid)?
            } else {
                value.trim().to_ascii_lowercase()
            };
            set.insert(key.to_string(), value);
        }
        let table = table
            .set_tbl_properties()
            .with_properties(set)
            .with_raise_if_not_exists(false)
            .await
            .map_err(delta)?;
        Ok(table.version().unwrap_or_default())
    }

    /// Compacts `table`'s small files when its policy says so (see the module
    /// documentation). Returns the version committed, if it did.
    pub(crate) async fn auto_compact(
        &self,
        name: &TableName,
        table: DeltaTable,
    ) -> Result<Option<u64>> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let snapshot = table.snapshot().map_err(delta)?;
        let Some(policy) = AutoCompact::of(snapshot.metadata().configuration()) else {
            return Ok(None);
        };
        Ok(match self.compact(name, &table, &policy, true).await? {
            Compaction::Committed { version, .. } => Some(version),
            Compaction::Nothing | Compaction::GaveWay => None,
        })
    }

    /// Whether [`Warehouse::compact`] can compact `table`: it holds no partitions (medlake
    /// creates none) and no file with a deletion vector (written by another engine); those
    /// are left to deltalake's OPTIMIZE.
    pub(crate) fn compactable(table: &DeltaTable) -> bool {
        table.snapshot().is_ok_and(|snapshot| {
            snapshot.metadata().partition_columns().is_empty()
                && snapshot
                    .log_data()
                    .iter()
                    .all(|file| file.deletion_vector_descriptor().is_none())
        })
    }

    /// Rewrites `table`'s files smaller than `policy.target_size` into bins of up to that
    /// size, when there are at least `policy.min_files` of them, and commits one `OPTIMIZE`
    /// (`dataChange: false`) at the first free version: appends landing meanwhile never
    /// stand in its way (see [`Warehouse::commit_compaction`]). Automatic compactions and
    /// `OPTIMIZE` without ZORDER BY share it.
    pub(crate) async fn compact(
        &self,
        name: &TableName,
        table: &DeltaTable,
        policy: &AutoCompact,
        automatic: bool,
    ) -> Result<Compaction> {
        if !Self::compactable(table) {
            return Ok(Compaction::Nothing);
        }
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let snapshot = table.snapshot().map_err(delta)?;
        let small: Vec<_> = snapshot
            .log_data()
            .iter()
            .filter(|file| (file.size().max(0) as u64) < policy.target_size)
            .collect();
        if small.len() < policy.min_files {
            return Ok(Compaction::Nothing);
        }
        let started = std::time::Instant::now();
        // Bins of files whose sizes add up to at most the target, in the snapshot's order.
        let mut bins: Vec<Vec<_>> = vec![Vec::new()];
        let mut filled = 0u64;
        for file in small {
            let size = file.size().max(0) as u64;
            if filled + size > policy.target_size && !bins.last().is_some_and(Vec::is_empty) {
                bins.push(Vec::new());
                filled = 0;
            }
            filled += size;
            if let Some(bin) = bins.last_mut() {
                bin.push(file);
            }
        }
        bins.retain(|bin| bin.len() > 1);
        let (removes, adds) = self.rewrite_bins(name, table, &bins).await?;
        if removes.is_empty() {
            return Ok(Compaction::Nothing);
        }
        let removed: HashSet<String> = removes.iter().map(|r| r.path.clone()).collect();
        let (files_removed, files_added) = (removes.len(), adds.len());
        let read_version = table.version().unwrap_or_default();
        let entry = compaction_entry(
            removes,
            &adds,
            policy.target_size,
            read_version,
            bins.len(),
            automatic,
        )
        .map_err(delta)?;
        let committed = self
            .commit_compaction(name, table, read_version, entry, &removed)
            .await;
        let version = match committed {
            Ok(Some(version)) => version,
            outcome => {
                // Nothing refers to the files just written: take them away again.
                for add in &adds {
                    let path = self.data_file(name, &Path::from(add.path.as_str()));
                    let _ = self.store.delete(&path).await;
                }
                return outcome.map(|_| Compaction::GaveWay);
            }
        };
        info!(
            table = %name,
            version,
            files_removed,
            files_added,
            automatic,
            ms = started.elapsed().as_millis() as u64,
            "compaction"
        );
        Ok(Compaction::Committed {
            version,
            files_removed: files_removed as u64,
            files_added: files_added as u64,
        })
    }

    /// A data file of `name` by its path relative to the table.
    fn data_file(&self, name: &TableName, relative: &Path) -> Path {
        self.path(&[&name.schema, &name.table])
            .parts()
            .chain(relative.parts())
            .collect()
    }

    /// Writes each bin's files as one new file (each small file is read whole): the remove
    /// actions of the files read and the add actions of the files written.
    async fn rewrite_bins(
        &self,
        name: &TableName,
        table: &DeltaTable,
        bins: &[Vec<deltalake::kernel::LogicalFileView>],
    ) -> Result<(Vec<deltalake::kernel::Remove>, Vec<deltalake::kernel::Add>)> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let mut removes = Vec::new();
        let mut adds = Vec::new();
        for bin in bins {
            let mut writer = RecordBatchWriter::for_table(table)
                .map_err(delta)?
                .with_writer_properties(table_writer_properties(table, false));
            let target = writer.arrow_schema();
            for file in bin {
                let path = self.data_file(name, &file.object_store_path());
                // A small file (below the target size) is read whole.
                let bytes = self
                    .store
                    .get(&path)
                    .await
                    .map_err(|e| Error::store(&path, e))?
                    .bytes()
                    .await
                    .map_err(|e| Error::store(&path, e))?;
                let read = |e: deltalake::parquet::errors::ParquetError| {
                    Error::Internal(format!("{name}: reading {path} to compact it: {e}"))
                };
                let batches = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(read)?
                    .build()
                    .map_err(read)?;
                for batch in batches {
                    let batch = batch.map_err(|e| read(e.into()))?;
                    let batch = conform(batch, &target).map_err(delta)?;
                    writer.write(batch).await.map_err(delta)?;
                }
                removes.push(file.remove_action(false));
            }
            adds.extend(writer.flush().await.map_err(delta)?);
        }
        Ok((removes, adds))
    }

    /// Puts a compaction's log entry at the first free version after `read_version`. Only a
    /// commit that removed one of the compacted files (a DELETE, UPDATE, MERGE, OPTIMIZE or
    /// RESTORE) or changed the table's schema or protocol stands in its way (`Ok(None)`):
    /// appends never do. Each step is one put-if-absent and, when it loses, one read of the
    /// winning entry, so a compaction is not starved by appends landing every few
    /// milliseconds (deltalake's OPTIMIZE recomputes its whole read set per winning commit
    /// and gave up after 15 tries under the soak's ingest).
    async fn commit_compaction(
        &self,
        name: &TableName,
        table: &DeltaTable,
        read_version: u64,
        entry: bytes::Bytes,
        removed: &HashSet<String>,
    ) -> Result<Option<u64>> {
        const MAX_STEPS: u64 = 10_000;
        let log_store = table.log_store();
        for version in read_version + 1..=read_version + MAX_STEPS {
            match log_store
                .write_commit_entry(
                    version,
                    CommitOrBytes::LogBytes(entry.clone()),
                    uuid::Uuid::new_v4(),
                )
                .await
            {
                Ok(()) => return Ok(Some(version)),
                Err(TransactionError::VersionAlreadyExists(_)) => {}
                Err(e) => return Err(Error::delta(&name.schema, &name.table, e.into())),
            }
            let Some(winner) = self.commit_actions(name, version).await? else {
                return Ok(None);
            };
            let conflicts = winner.iter().any(|action| {
                action.get("metaData").is_some()
                    || action.get("protocol").is_some()
                    || action
                        .get("remove")
                        .and_then(|r| r.get("path"))
                        .and_then(Value::as_str)
                        .is_some_and(|path| {
                            removed.contains(path)
                                || Path::from_url_path(path)
                                    .is_ok_and(|p| removed.contains(p.as_ref()))
                        })
            });
            if conflicts {
                debug!(table = %name, version, "automatic compaction gave way to a commit that rewrote its files");
                return Ok(None);
            }
        }
        Ok(None)
    }
}

/// What [`Warehouse::compact`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compaction {
    /// Too few small files (or a table it leaves to deltalake's OPTIMIZE).
    Nothing,
    /// A commit that rewrote one of its files, or changed the schema or protocol, landed
    /// first: nothing was committed, its files were deleted again.
    GaveWay,
    Committed {
        version: u64,
        files_removed: u64,
        files_added: u64,
    },
}

/// The log entry of a compaction: its removes, its adds (`dataChange: false`) and an
/// `OPTIMIZE` commitInfo with deltalake's operation metrics.
fn compaction_entry(
    removes: Vec<deltalake::kernel::Remove>,
    adds: &[deltalake::kernel::Add],
    target_size: u64,
    read_version: u64,
    bins: usize,
    automatic: bool,
) -> std::result::Result<bytes::Bytes, deltalake::DeltaTableError> {
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: target_size.min(i64::MAX as u64) as i64,
    };
    let mut metadata: HashMap<String, Value> = [
        (
            "operationMetrics".to_string(),
            serde_json::json!({
                "numFilesAdded": adds.len(),
                "numFilesRemoved": removes.len(),
                "numBatches": bins,
                "totalConsideredFiles": removes.len(),
            }),
        ),
        ("readVersion".to_string(), read_version.into()),
    ]
    .into_iter()
    .collect();
    if automatic {
        metadata.insert("medlakeAutoCompaction".to_string(), true.into());
    }
    let actions: Vec<Action> = removes
        .into_iter()
        .map(Action::Remove)
        .chain(adds.iter().cloned().map(|mut add| {
            add.data_change = false;
            Action::Add(add)
        }))
        .collect();
    Ok(CommitData::new(actions, operation, metadata, Vec::new()).get_bytes()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_comes_from_the_table_properties() {
        let props = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(
            AutoCompact::of(&props(&[])),
            Some(AutoCompact {
                min_files: DEFAULT_MIN_FILES,
                target_size: DEFAULT_TARGET_SIZE
            })
        );
        assert_eq!(AutoCompact::of(&props(&[(AUTO_COMPACT, "FALSE")])), None);
        let set = AutoCompact::of(&props(&[
            (AUTO_COMPACT_MIN_FILES, "8"),
            (AUTO_COMPACT_TARGET_SIZE, "2097152"),
        ]));
        assert_eq!(
            set,
            Some(AutoCompact {
                min_files: 8,
                target_size: 2 << 20
            })
        );
        // Written by someone else, out of range: the defaults.
        let odd = AutoCompact::of(&props(&[
            (AUTO_COMPACT_MIN_FILES, "1"),
            (AUTO_COMPACT_TARGET_SIZE, "x"),
        ]));
        assert_eq!(
            odd,
            Some(AutoCompact {
                min_files: DEFAULT_MIN_FILES,
                target_size: DEFAULT_TARGET_SIZE
            })
        );
    }

    #[test]
    fn only_known_properties_with_sane_values_are_settable() {
        assert_eq!(
            check_property("MEDLAKE.AUTOCOMPACT", " false "),
            Ok(AUTO_COMPACT)
        );
        assert!(check_property(AUTO_COMPACT, "maybe").is_err());
        assert!(check_property(AUTO_COMPACT_MIN_FILES, "1").is_err());
        assert!(check_property(AUTO_COMPACT_MIN_FILES, "-5").is_err());
        assert_eq!(
            check_property(AUTO_COMPACT_MIN_FILES, "64"),
            Ok(AUTO_COMPACT_MIN_FILES)
        );
        assert!(check_property(AUTO_COMPACT_TARGET_SIZE, "1024").is_err());
        assert!(check_property(AUTO_COMPACT_TARGET_SIZE, "18446744073709551615").is_err());
        assert!(check_property(AUTO_COMPACT_TARGET_SIZE, "1099511627776").is_err());
        assert!(check_property(AUTO_COMPACT_TARGET_SIZE, "268435456").is_ok());
        let refused = check_property("delta.appendOnly", "true").unwrap_err();
        assert!(refused.contains("cannot be set"), "{refused}");
        assert!(check_property("delta.enableChangeDataFeed", "false").is_err());
        assert!(check_property(&"x".repeat(10_000), "1").unwrap_err().len() < 400);
    }

    #[test]
    fn a_checkpoint_is_due_after_an_interval_of_log_since_the_newest() {
        assert!(!checkpoint_due(98, None, 100));
        assert!(checkpoint_due(99, None, 100));
        assert!(!checkpoint_due(150, Some(99), 100));
        assert!(checkpoint_due(199, Some(99), 100));
        // A missed one (a kill while it was written) is caught up by the next append.
        assert!(checkpoint_due(257, Some(99), 100));
    }
}
