//! Backup and restore of a whole warehouse, and `RESTORE TABLE` of one table.
//!
//! A backup target (a local folder or an object-store URL) holds:
//!
//! ```text
//! <target>/_medlake_backup.json          what the folder is (format), written once
//! <target>/manifests/<sequence>.json     one per backup: its instant and, per table, the
//!                                        version backed up (put-if-absent, written last)
//! <target>/tables/<delta-id>/...         the files of one table (one Delta incarnation:
//!                                        a table dropped and created again gets a new id):
//!                                        its data files and its log up to the version backed up
//! ```
//!
//! A backup is taken at one instant (now, or `--at`): every table is copied at the last
//! version committed at or before it (by the commits' own timestamps, as `TIMESTAMP AS OF`).
//! It is incremental: Delta files never change once written, so a file already in the target
//! with the same size is not copied again; only new commits and data files travel. The
//! manifest is written last: a backup that stops half way leaves files but no manifest, and
//! the next backup reuses them.
//!
//! A restore writes a new warehouse (its folder or prefix must be empty): a marker first (the
//! warehouse refuses to open while it exists), then the tables' files and logs up to the
//! version each table had at the instant asked for, then the schema markers, and removes the
//! marker last. A restore that stops half way can be run again to finish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, instrument};
use url::Url;

use crate::error::{Error, Result};
use crate::location::{build_store, parse_location, redact, register_cloud_schemes};
use crate::warehouse::{TableName, TimeTravel, Warehouse};

/// The object that makes a folder a backup target.
const TARGET_MARKER: &str = "_medlake_backup.json";
const MANIFESTS: &str = "manifests";
const TABLES: &str = "tables";
/// The object a restore puts in the warehouse it writes, and removes when it is done.
pub(crate) const RESTORING_MARKER: &str = "_medlake_restoring.json";
const SCHEMA_MARKER: &str = "_medlake_schema.json";
const EXTERNAL_MARKER: &str = "_medlake_external.json";
const DELTA_LOG: &str = "_delta_log";
/// The manifest format this code writes and reads.
const FORMAT: u32 = 1;
/// Objects copied at once.
const PARALLEL_COPIES: usize = 8;

/// What one backup holds: written last, as `manifests/<sequence>.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// 1 for the first backup into a target, then one more for each.
    pub sequence: u64,
    /// The instant the backup is of: every table at its last commit at or before it.
    pub instant: DateTime<Utc>,
    /// When the backup finished.
    pub finished: DateTime<Utc>,
    /// The warehouse backed up (credentials never are part of a location).
    pub source: String,
    pub schemas: Vec<String>,
    pub tables: Vec<BackedUpTable>,
    /// Objects and bytes this backup copied (the rest were in the target already).
    pub files_copied: u64,
    pub bytes_copied: u64,
}

/// One table of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackedUpTable {
    pub schema: String,
    pub table: String,
    #[serde(flatten)]
    pub kind: BackedUpKind,
}

/// A Delta table (by version) or an external table (by its definition).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackedUpKind {
    Delta {
        /// The table's Delta id: its folder in the target is `tables/<id>/`.
        id: String,
        /// The version backed up: the last one committed at or before the instant.
        version: u64,
    },
    External {
        definition: Value,
    },
}

/// What [`restore`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    /// The backup restored from.
    pub sequence: u64,
    /// The instant restored.
    pub instant: DateTime<Utc>,
    /// Tables restored, with the version each one has.
    pub tables: Vec<(TableName, Option<u64>)>,
    pub files_copied: u64,
    pub bytes_copied: u64,
}

fn invalid(location: &str, reason: impl Into<String>) -> Error {
    Error::BackupInvalid {
        location: redact(location),
        reason: reason.into(),
    }
}

fn refused(location: &str, reason: impl Into<String>) -> Error {
    Error::BackupRefused {
        location: redact(location),
        reason: reason.into(),
    }
}

/// An object store and a prefix in it.
#[derive(Clone)]
pub(crate) struct Place {
    url: Url,
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl Place {
    fn open(location: &str) -> Result<Self> {
        register_cloud_schemes();
        let url = parse_location(location)?;
        let (store, root) = build_store(&url)?;
        Ok(Self { url, store, root })
    }

    pub(crate) fn of(warehouse: &Warehouse) -> Self {
        Self {
            url: warehouse.url().clone(),
            store: warehouse.object_store(),
            root: warehouse.path(&[]),
        }
    }

    /// `rel` (already encoded, `/`-separated) under this place's root.
    fn at(&self, rel: &str) -> Result<Path> {
        join(&self.root, rel)
    }

    async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = self.at(rel)?;
        match self.store.get(&path).await {
            Ok(got) => Ok(Some(
                got.bytes()
                    .await
                    .map_err(|e| Error::store(&path, e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// Puts `body` at `rel` unless something is there; `Ok(false)` if it was.
    async fn create(&self, rel: &str, body: Vec<u8>) -> Result<bool> {
        let path = self.at(rel)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// Every object under `rel` (a folder), by its path relative to that folder, with its size.
    async fn list(&self, rel: &str) -> Result<BTreeMap<String, u64>> {
        let prefix = self.at(rel)?;
        let base = prefix.as_ref().len();
        self.store
            .list(Some(&prefix))
            .map_err(|e| Error::store(&prefix, e))
            .try_filter_map(|meta| async move {
                let full = meta.location.as_ref();
                let rel = full.get(base..).unwrap_or_default().trim_start_matches('/');
                Ok((!rel.is_empty()).then(|| (rel.to_string(), meta.size)))
            })
            .try_collect()
            .await
    }

    /// Whether anything at all is under the root.
    async fn is_empty(&self) -> Result<bool> {
        let mut listing = self.store.list(Some(&self.root));
        match listing.next().await {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(Error::store(&self.root, e)),
        }
    }
}

fn join(root: &Path, rel: &str) -> Result<Path> {
    let text = if root.as_ref().is_empty() {
        rel.to_string()
    } else if rel.is_empty() {
        root.as_ref().to_string()
    } else {
        format!("{}/{rel}", root.as_ref())
    };
    Path::parse(&text).map_err(|e| Error::Internal(format!("object path {text:?}: {e}")))
}

/// The version a `_delta_log/` file belongs to (`00000000000000000012.json`,
/// `...12.checkpoint.parquet`, `...12.crc`); `None` for `_last_checkpoint` and the like.
fn log_file_version(file: &str) -> Option<u64> {
    let digits = file.get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || file.as_bytes().get(20) != Some(&b'.') {
        return None;
    }
    digits.parse().ok()
}

/// Whether `rel` (a path in a table folder) is a checkpoint file of its log.
fn is_checkpoint(rel: &str) -> bool {
    rel.strip_prefix(DELTA_LOG)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|file| {
            log_file_version(file).is_some() && file[20..].starts_with(".checkpoint.")
        })
}

/// Which objects of a table folder belong to the table at `version`: every data file (a file
/// no version needs is harmless), the log up to `version`. `_last_checkpoint` may point past
/// `version`: left out, readers list the log instead. Markers are the warehouse's, not the
/// table's.
fn wanted(rel: &str, version: u64) -> bool {
    match rel
        .strip_prefix(DELTA_LOG)
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(file) => !file.contains('/') && log_file_version(file).is_some_and(|v| v <= version),
        None => !rel.starts_with("_medlake_"),
    }
}

/// Copies `rels` from `from/<from_dir>/` to `to/<to_dir>/` (bounded concurrency).
pub(crate) async fn copy_all(
    from: &Place,
    from_dir: &str,
    to: &Place,
    to_dir: &str,
    rels: Vec<(String, u64)>,
) -> Result<(u64, u64)> {
    let copies = futures::stream::iter(rels)
        .map(|(rel, size)| async move {
            let source = from.at(&format!("{from_dir}/{rel}"))?;
            let target = to.at(&format!("{to_dir}/{rel}"))?;
            let got = match from.store.get(&source).await {
                // A checkpoint is a shortcut through the log, deleted once superseded
                // (`checkpoints.rs`) while a copy of a live warehouse runs: the commits it
                // summarizes are copied, so a reader of the copy replays them instead.
                Err(object_store::Error::NotFound { .. }) if is_checkpoint(&rel) => {
                    return Ok(None);
                }
                got => got.map_err(|e| Error::store(&source, e))?,
            };
            let bytes = match got.bytes().await {
                Err(object_store::Error::NotFound { .. }) if is_checkpoint(&rel) => {
                    return Ok(None);
                }
                bytes => bytes.map_err(|e| Error::store(&source, e))?,
            };
            to.store
                .put(&target, PutPayload::from(bytes))
                .await
                .map_err(|e| Error::store(&target, e))?;
            Ok::<Option<u64>, Error>(Some(size))
        })
        .buffer_unordered(PARALLEL_COPIES);
    copies
        .try_fold((0u64, 0u64), |(n, b), copied| async move {
            Ok(copied.map_or((n, b), |size| (n + 1, b + size)))
        })
        .await
}

/// The objects of `wanted_in` (relative path → size) that `present` lacks or holds with
/// another size (a copy cut short).
fn missing(
    wanted_in: BTreeMap<String, u64>,
    present: &BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    wanted_in
        .into_iter()
        .filter(|(rel, size)| present.get(rel) != Some(size))
        .collect()
}

/// Refuses to open a warehouse that a restore is still writing.
pub(crate) async fn refuse_unfinished_restore(warehouse: &Warehouse) -> Result<()> {
    let path = warehouse.path(&[RESTORING_MARKER]);
    match warehouse.object_store().head(&path).await {
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        Ok(_) => Err(refused(
            warehouse.url().as_str(),
            "a restore into this warehouse has not finished: run the same `medlake restore` again to finish it",
        )),
        Err(e) => Err(Error::store(&path, e)),
    }
}

/// The manifests of a target, by sequence.
async fn manifests(target: &Place) -> Result<BTreeMap<u64, Manifest>> {
    let mut found = BTreeMap::new();
    for rel in target.list(MANIFESTS).await?.into_keys() {
        let Some(sequence) = rel
            .strip_suffix(".json")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(bytes) = target.read(&format!("{MANIFESTS}/{rel}")).await? else {
            continue;
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            invalid(
                target.url.as_str(),
                format!("manifest {rel} is unreadable: {e}"),
            )
        })?;
        if manifest.format != FORMAT {
            return Err(invalid(
                target.url.as_str(),
                format!(
                    "manifest {rel} has format {}; this medlake reads format {FORMAT}",
                    manifest.format
                ),
            ));
        }
        found.insert(sequence, manifest);
    }
    Ok(found)
}

/// Makes `target` a backup target (or checks that it is one); refuses a non-empty folder
/// that is not.
async fn prepare_target(target: &Place) -> Result<()> {
    if target.read(TARGET_MARKER).await?.is_some() {
        return Ok(());
    }
    if !target.is_empty().await? {
        return Err(refused(
            target.url.as_str(),
            "it is not empty and holds no medlake backup",
        ));
    }
    let body = serde_json::json!({ "medlake_backup": FORMAT, "created": Utc::now() });
    target
        .create(TARGET_MARKER, body.to_string().into_bytes())
        .await?;
    Ok(())
}

/// Whether one location lies inside the other.
fn nested(a: &Url, b: &Url) -> bool {
    a.as_str().starts_with(b.as_str()) || b.as_str().starts_with(a.as_str())
}

/// [`backup`] of the warehouse at `location` (for callers that know no other medlake crate).
pub async fn backup_location(
    location: &str,
    target: &str,
    at: Option<DateTime<Utc>>,
) -> Result<Manifest> {
    backup(&Warehouse::open(location).await?, target, at).await
}

/// `medlake backup`: copies every table of `warehouse` as it was at `at` (default: now) into
/// `target`, incrementally. Returns the new manifest.
#[instrument(skip_all, fields(target = %redact(target)))]
pub async fn backup(
    warehouse: &Warehouse,
    target: &str,
    at: Option<DateTime<Utc>>,
) -> Result<Manifest> {
    let now = Utc::now();
    let instant = at.unwrap_or(now);
    if instant > now {
        return Err(invalid(
            target,
            format!("--at {} is in the future", instant.to_rfc3339()),
        ));
    }
    let source = Place::of(warehouse);
    let target = Place::open(target)?;
    if nested(&source.url, &target.url) {
        return Err(invalid(
            target.url.as_str(),
            "the backup target and the warehouse must not lie inside one another",
        ));
    }
    prepare_target(&target).await?;
    let sequence = manifests(&target).await?.keys().max().map_or(1, |s| s + 1);
    let schemas = warehouse.list_schemas().await?;
    let (mut tables, mut files, mut bytes) = (Vec::new(), 0, 0);
    for schema in &schemas {
        for table in warehouse.list_tables(schema).await? {
            let name = TableName::new(schema, &table)?;
            let Some((entry, n, b)) = backup_table(warehouse, &target, &name, instant).await?
            else {
                continue;
            };
            tables.push(entry);
            files += n;
            bytes += b;
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        sequence,
        instant,
        finished: Utc::now(),
        source: redact(warehouse.url().as_str()),
        schemas,
        tables,
        files_copied: files,
        bytes_copied: bytes,
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    if !target
        .create(&format!("{MANIFESTS}/{sequence:020}.json"), body)
        .await?
    {
        return Err(refused(
            target.url.as_str(),
            format!("another backup wrote manifest {sequence} first; run this backup again"),
        ));
    }
    info!(sequence, files, bytes, "backup written");
    Ok(manifest)
}

/// Backs up one table as it was at `instant`; `None` if it did not exist then.
async fn backup_table(
    warehouse: &Warehouse,
    target: &Place,
    name: &TableName,
    instant: DateTime<Utc>,
) -> Result<Option<(BackedUpTable, u64, u64)>> {
    let entry = |kind| BackedUpTable {
        schema: name.schema.clone(),
        table: name.table.clone(),
        kind,
    };
    if let Some(definition) = warehouse.external(name).await? {
        return Ok(Some((entry(BackedUpKind::External { definition }), 0, 0)));
    }
    let table = match warehouse
        .open_table_as_of(name, Some(&TimeTravel::Timestamp(instant)))
        .await
    {
        Ok(table) => table,
        // Created after the instant (or dropped since the listing).
        Err(Error::TimestampBeforeHistory { .. } | Error::TableNotFound { .. }) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let version = table.version().unwrap_or_default();
    let id = table
        .snapshot()
        .map_err(|e| Error::delta(&name.schema, &name.table, e))?
        .metadata()
        .id()
        .to_string();
    let source = Place::of(warehouse);
    check_id(&source, &id)?;
    let folder = format!("{}/{}", name.schema, name.table);
    let dir = format!("{TABLES}/{id}");
    let in_source: BTreeMap<String, u64> = source
        .list(&folder)
        .await?
        .into_iter()
        .filter(|(rel, _)| wanted(rel, version))
        .collect();
    let todo = missing(in_source, &target.list(&dir).await?);
    let (files, bytes) = copy_all(&source, &folder, target, &dir, todo).await?;
    info!(table = %name, version, files, bytes, "table backed up");
    Ok(Some((
        entry(BackedUpKind::Delta { id, version }),
        files,
        bytes,
    )))
}

/// The commit timestamp (ms) of a log entry's `commitInfo`.
fn commit_millis(entry: &[u8]) -> Option<i64> {
    String::from_utf8_lossy(entry).lines().find_map(|line| {
        let action: Value = serde_json::from_str(line).ok()?;
        let info = action.get("commitInfo")?;
        info.get("inCommitTimestamp")
            .or_else(|| info.get("timestamp"))
            .and_then(Value::as_i64)
    })
}

/// The last version of a backed-up table committed at or before `instant` (at most `latest`);
/// `None` if its first backed-up commit is later.
async fn version_at(
    from: &Place,
    dir: &str,
    latest: u64,
    instant: DateTime<Utc>,
    name: &str,
) -> Result<Option<u64>> {
    let log = from.list(&format!("{dir}/{DELTA_LOG}")).await?;
    let commits: Vec<u64> = log
        .keys()
        .filter_map(|f| f.strip_suffix(".json").filter(|v| v.len() == 20))
        .filter_map(|v| v.parse().ok())
        .filter(|v| *v <= latest)
        .collect();
    let cutoff = instant.timestamp_millis();
    let (mut low, mut high) = (0usize, commits.len());
    while low < high {
        let mid = low + (high - low) / 2;
        let rel = format!("{dir}/{DELTA_LOG}/{:020}.json", commits[mid]);
        let stamp = from
            .read(&rel)
            .await?
            .as_deref()
            .and_then(commit_millis)
            .ok_or_else(|| {
                invalid(
                    from.url.as_str(),
                    format!("{name}: commit {} has no timestamp", commits[mid]),
                )
            })?;
        if stamp <= cutoff {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    let found = low.checked_sub(1).map(|i| commits[i]);
    if found.is_none() && commits.first().is_some_and(|first| *first > 0) {
        return Err(invalid(
            from.url.as_str(),
            format!(
                "{name}: its log before version {} was cleaned up, so its state at {} is unknown",
                commits[0],
                instant.to_rfc3339()
            ),
        ));
    }
    Ok(found)
}

/// Picks the backup to restore `at` from: the first one taken at or after it (it holds every
/// commit up to it), or the newest without `at`.
fn choose(
    location: &str,
    manifests: BTreeMap<u64, Manifest>,
    at: Option<DateTime<Utc>>,
) -> Result<(Manifest, DateTime<Utc>)> {
    let Some(newest) = manifests.values().next_back().cloned() else {
        return Err(invalid(location, "it holds no finished backup"));
    };
    let Some(at) = at else {
        let instant = newest.instant;
        return Ok((newest, instant));
    };
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    // The first backup at or after `at` holds every commit up to it (commits before the
    // oldest backup are in the oldest).
    match manifests.into_values().find(|m| m.instant >= at) {
        Some(manifest) => Ok((manifest, at)),
        None => Err(invalid(
            location,
            format!(
                "no backup covers {}: the newest backup is of {}; restore without --at, or --at an earlier instant",
                fmt(at),
                fmt(newest.instant)
            ),
        )),
    }
}

/// `medlake restore`: writes the warehouse that `from` held at `at` (default: its newest
/// backup's instant) into `to`, which must be empty (or hold this same restore, unfinished).
#[instrument(skip_all, fields(from = %redact(from), to = %redact(to)))]
pub async fn restore(from: &str, to: &str, at: Option<DateTime<Utc>>) -> Result<RestoreReport> {
    let source = Place::open(from)?;
    if source.read(TARGET_MARKER).await?.is_none() {
        return Err(invalid(from, "it holds no medlake backup"));
    }
    let dest = Place::open(to)?;
    if nested(&source.url, &dest.url) {
        return Err(invalid(
            to,
            "the restored warehouse and the backup must not lie inside one another",
        ));
    }
    let (manifest, instant) = choose(from, manifests(&source).await?, at)?;
    let plan = plan_restore(&source, &manifest, instant).await?;
    let claim = serde_json::json!({
        "from": redact(source.url.as_str()),
        "sequence": manifest.sequence,
        "instant": instant,
    });
    claim_destination(&dest, &claim).await?;
    let (mut tables, mut files, mut bytes) = (Vec::new(), 0, 0);
    for (name, what) in plan {
        let folder = format!("{}/{}", name.schema, name.table);
        match what {
            Planned::External(definition) => {
                let body = definition.to_string().into_bytes();
                dest.create(&format!("{folder}/{EXTERNAL_MARKER}"), body)
                    .await?;
                tables.push((name, None));
            }
            Planned::Delta { dir, version } => {
                let todo: BTreeMap<String, u64> = source
                    .list(&dir)
                    .await?
                    .into_iter()
                    .filter(|(rel, _)| wanted(rel, version))
                    .collect();
                let todo = missing(todo, &dest.list(&folder).await?);
                let (n, b) = copy_all(&source, &dir, &dest, &folder, todo).await?;
                files += n;
                bytes += b;
                tables.push((name, Some(version)));
            }
        }
    }
    let schemas: BTreeSet<&String> = manifest.schemas.iter().collect();
    for schema in schemas {
        let body = serde_json::json!({ "schema": schema, "created": Utc::now() });
        dest.create(
            &format!("{schema}/{SCHEMA_MARKER}"),
            body.to_string().into_bytes(),
        )
        .await?;
    }
    let marker = dest.at(RESTORING_MARKER)?;
    dest.store
        .delete(&marker)
        .await
        .map_err(|e| Error::store(&marker, e))?;
    info!(
        sequence = manifest.sequence,
        files, bytes, "restore finished"
    );
    Ok(RestoreReport {
        sequence: manifest.sequence,
        instant,
        tables,
        files_copied: files,
        bytes_copied: bytes,
    })
}

/// What a restore writes for one table.
enum Planned {
    /// The backed-up folder `dir` with its log up to `version`.
    Delta {
        dir: String,
        version: u64,
    },
    External(Value),
}

/// The tables of `manifest` as they were at `instant`, before anything is written: a table
/// created after `instant` is left out; an instant before every table is refused.
async fn plan_restore(
    source: &Place,
    manifest: &Manifest,
    instant: DateTime<Utc>,
) -> Result<Vec<(TableName, Planned)>> {
    let mut plan = Vec::new();
    for entry in &manifest.tables {
        let name = TableName::new(&entry.schema, &entry.table)?;
        match &entry.kind {
            BackedUpKind::External { definition } => {
                plan.push((name, Planned::External(definition.clone())));
            }
            BackedUpKind::Delta { id, version } => {
                check_id(source, id)?;
                let dir = format!("{TABLES}/{id}");
                let at = if instant >= manifest.instant {
                    Some(*version)
                } else {
                    version_at(source, &dir, *version, instant, &name.to_string()).await?
                };
                if let Some(version) = at {
                    plan.push((name, Planned::Delta { dir, version }));
                }
            }
        }
    }
    let delta_tables = |p: &[(TableName, Planned)]| {
        p.iter()
            .filter(|(_, what)| matches!(what, Planned::Delta { .. }))
            .count()
    };
    if delta_tables(&plan) == 0
        && manifest
            .tables
            .iter()
            .any(|t| matches!(t.kind, BackedUpKind::Delta { .. }))
    {
        return Err(invalid(
            source.url.as_str(),
            format!(
                "no table of the backup existed at {}: it is before the first backed-up commit",
                instant.to_rfc3339_opts(SecondsFormat::Millis, true)
            ),
        ));
    }
    Ok(plan)
}

/// A Delta id read from a manifest becomes a folder name: hex digits and dashes only.
fn check_id(source: &Place, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(invalid(
            source.url.as_str(),
            format!("a manifest names table id {id:?}, which is not a Delta table id"),
        ));
    }
    Ok(())
}

/// Puts the restore marker into an empty destination; a destination holding the marker of
/// this same restore is taken up again; anything else is refused.
async fn claim_destination(dest: &Place, claim: &Value) -> Result<()> {
    if let Some(existing) = dest.read(RESTORING_MARKER).await? {
        let existing: Value = serde_json::from_slice(&existing).unwrap_or(Value::Null);
        if &existing == claim {
            return Ok(());
        }
        return Err(refused(
            dest.url.as_str(),
            format!("an unfinished restore of another backup or instant is in it ({existing})"),
        ));
    }
    if !dest.is_empty().await? {
        return Err(refused(
            dest.url.as_str(),
            "it is not empty: restore into a new folder or prefix",
        ));
    }
    if !dest
        .create(RESTORING_MARKER, claim.to_string().into_bytes())
        .await?
    {
        return Err(refused(
            dest.url.as_str(),
            "another restore into it started",
        ));
    }
    Ok(())
}

/// What `RESTORE TABLE` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRestored {
    /// The version the restore committed.
    pub version: u64,
    /// The version whose state it brought back.
    pub restored: u64,
    pub files_added: u64,
    pub files_removed: u64,
}

impl Warehouse {
    /// `RESTORE TABLE name TO VERSION AS OF n | TIMESTAMP AS OF ts`: one commit that makes the
    /// table's files those of the earlier version again (its history stays: the restore can
    /// itself be undone). The timestamp is resolved by the commits' own timestamps, as
    /// `TIMESTAMP AS OF` is (deltalake's own uses the log files' modification times).
    #[instrument(skip(self), fields(table = %name))]
    pub async fn restore_table(&self, name: &TableName, to: &TimeTravel) -> Result<TableRestored> {
        let target = self.open_table_as_of(name, Some(to)).await?;
        let restored = target.version().unwrap_or_default();
        let table = self.open_table(name).await?;
        let current = table.version().unwrap_or_default();
        if restored >= current {
            return Err(Error::RestoreRefused {
                schema: name.schema.clone(),
                table: name.table.clone(),
                reason: format!(
                    "version {restored} is the table's current version; RESTORE goes back to an earlier one (0 to {})",
                    current.saturating_sub(1)
                ),
            });
        }
        let (table, metrics) = table
            .restore()
            .with_version_to_restore(restored)
            .await
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        Ok(TableRestored {
            version: table.version().unwrap_or(current + 1),
            restored,
            files_added: metrics.num_restored_file as u64,
            files_removed: metrics.num_removed_file as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_up_to_a_version() {
        assert!(wanted("_delta_log/00000000000000000003.json", 3));
        assert!(wanted(
            "_delta_log/00000000000000000002.checkpoint.parquet",
            3
        ));
        assert!(!wanted("_delta_log/00000000000000000004.json", 3));
        assert!(!wanted("_delta_log/_last_checkpoint", 3));
        assert!(is_checkpoint(
            "_delta_log/00000000000000000002.checkpoint.parquet"
        ));
        assert!(!is_checkpoint("_delta_log/00000000000000000002.json"));
        assert!(!is_checkpoint("_delta_log/_last_checkpoint"));
        assert!(!is_checkpoint("part-00000.checkpoint.parquet"));
        assert!(!wanted("_delta_log/_commits/x.json", 3));
        assert!(wanted("part-0001.parquet", 0));
        assert!(wanted("date=2026-01-01/part-0001.parquet", 0));
        assert!(!wanted("_medlake_dropped", 0));
        assert_eq!(log_file_version("0000000000000000000x.json"), None);
        assert_eq!(log_file_version("00000000000000000012.crc"), Some(12));
    }
}
