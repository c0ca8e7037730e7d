//! `medlake audit verify`: walks the commits of `system.audit` in order and checks the chain.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::logstore::LogStore as _;
use medlake_lake::{TimeTravel, Warehouse};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde_json::Value;

use crate::chain::{CommitRecord, Head};
use crate::error::{Error, Result};
use crate::table::{FORMAT, commit_hash, genesis, table_name};

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Audit commits whose rows were read and whose hashes matched.
    pub commits: u64,
    /// Events in them.
    pub events: u64,
    /// Commits that hold no rows and change nothing (VACUUM's start and end).
    pub other_commits: u64,
    /// Compactions (OPTIMIZE): their files were checked by reading every audit commit's
    /// rows from the files live at the end.
    pub compactions: u64,
    /// The first version the log still holds, when older entries have expired (after the
    /// table's 6-year log retention): the chain is checked from there.
    pub expired_before: Option<u64>,
    /// The last commit verified.
    pub head: Option<Head>,
    /// Where the chain breaks, if it does.
    pub broken: Option<Break>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// The first place the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// The Delta version of `system.audit`.
    pub version: u64,
    /// The first `seq` of the commit at fault, when it is known.
    pub seq: Option<i64>,
    pub reason: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(f, "system.audit: chain intact")?,
            Some(b) => {
                write!(f, "system.audit: chain BROKEN at version {}", b.version)?;
                if let Some(seq) = b.seq {
                    write!(f, " (seq {seq})")?;
                }
                write!(f, ": {}\nverified before the break:", b.reason)?;
            }
        }
        write!(f, " {} audit commits, {} events", self.commits, self.events)?;
        if self.other_commits > 0 {
            write!(f, ", {} commits without rows (VACUUM)", self.other_commits)?;
        }
        if self.compactions > 0 {
            write!(f, ", {} compactions", self.compactions)?;
        }
        if let Some(v) = self.expired_before {
            write!(
                f,
                "; log entries before version {v} have expired, checked from there"
            )?;
        }
        if let Some(head) = &self.head {
            write!(
                f,
                "\nhead: version {}, seq {}, hash {}",
                head.version, head.seq, head.hash
            )?;
        }
        Ok(())
    }
}

/// Walks every commit of `system.audit` in order, then reads the table's rows by `seq`.
///
/// The log walk: each commit must be the table's creation, an audit append (only new data
/// files, its `commitInfo` naming its seq range, the previous commit's hash and its own), a
/// compaction (an `OPTIMIZE` whose removes and adds all say `dataChange: false`) or a
/// commit without rows (VACUUM's). The rows: the files live at the last version walked are
/// read in `seq` order, and each audit commit's seq range must be held exactly once, carry
/// its prev_hash and hash and hash to its recorded hash, wherever its rows are now (in the
/// files it added, or in a compaction's); rows no audit commit recorded are a break too.
/// So a compaction is checked by what it kept, and a commit that edits or drops a row, by
/// any name, breaks the chain at the audit commit whose row it touched.
///
/// Returns the report (`broken` set at the first failure, by version); an error only when
/// the table cannot be read at all.
pub async fn verify(warehouse: &Warehouse) -> Result<Report> {
    let name = table_name();
    let versions = warehouse.versions(&name).await?;
    let table = warehouse.open_table(&name).await?;
    let store = table.log_store().object_store(None);
    let mut report = Report::default();
    let (records, walked) = walk(warehouse, &versions, &store, &mut report).await?;
    let Some(walked) = walked else {
        return Ok(report);
    };
    let log_break = report.broken.take();
    let files = live_files(warehouse, walked).await?;
    report.broken = check_rows(&records, files, walked, &store, &mut report)
        .await
        .or(log_break);
    Ok(report)
}

/// An audit commit found by the log walk: its version and what it records.
struct Recorded {
    version: u64,
    record: CommitRecord,
}

/// The log walk of [`verify`]: the audit commits in order, and the last version walked
/// without a break (`None` when there is none); a break sets `report.broken`.
async fn walk(
    warehouse: &Warehouse,
    versions: &[u64],
    store: &Arc<dyn ObjectStore>,
    report: &mut Report,
) -> Result<(Vec<Recorded>, Option<u64>)> {
    let name = table_name();
    let mut records = Vec::new();
    let mut walked = None;
    let mut expected: Option<(String, i64)> = None;
    for (i, &version) in versions.iter().enumerate() {
        let Some(actions) = warehouse.commit_actions(&name, version).await? else {
            if i == 0 || expected.is_none() {
                // Expired with the log retention: start after it.
                continue;
            }
            report.broken = Some(Break {
                version,
                seq: None,
                reason: "its log entry is missing".into(),
            });
            break;
        };
        if expected.is_none() && version > 0 && report.expired_before.is_none() {
            report.expired_before = Some(version);
        }
        let step = if version == 0 {
            creation(&actions, store).await.map(|id| {
                expected = Some((genesis(&id), 1));
            })
        } else if let Some(record) = CommitRecord::of(&actions) {
            check_append(&actions, &record, expected.as_ref()).map(|()| {
                expected = Some((record.hash.clone(), record.last_seq + 1));
                records.push(Recorded { version, record });
            })
        } else if operation(&actions) == "OPTIMIZE" {
            compaction(&actions).map(|()| report.compactions += 1)
        } else {
            without_rows(&actions).map(|()| report.other_commits += 1)
        };
        if let Err(b) = step {
            report.broken = Some(Break { version, ..b });
            break;
        }
        walked = Some(version);
    }
    Ok((records, walked))
}

/// The data files of `system.audit` at `version`, by the smallest `seq` their statistics
/// record (files without statistics first).
async fn live_files(warehouse: &Warehouse, version: u64) -> Result<Vec<LiveFile>> {
    let table = warehouse
        .open_table_as_of(&table_name(), Some(&TimeTravel::Version(version)))
        .await?;
    let snapshot = table
        .snapshot()
        .map_err(|e| Error::Internal(format!("system.audit has no snapshot: {e}")))?;
    let mut files: Vec<LiveFile> = snapshot
        .log_data()
        .iter()
        .map(|file| {
            let min_seq = file
                .stats()
                .and_then(|stats| serde_json::from_str::<Value>(&stats).ok())
                .and_then(|stats| stats.get("minValues")?.get("seq")?.as_i64())
                .unwrap_or(i64::MIN);
            LiveFile {
                min_seq,
                path: file.object_store_path(),
                deletion_vector: file.deletion_vector_descriptor().is_some(),
            }
        })
        .collect();
    files.sort_by_key(|f| f.min_seq);
    Ok(files)
}

struct LiveFile {
    min_seq: i64,
    path: Path,
    deletion_vector: bool,
}

/// The row check of [`verify`]: every recorded seq range, in order, from the live files.
/// Counts what it verified into `report`; returns the first break.
async fn check_rows(
    records: &[Recorded],
    files: Vec<LiveFile>,
    walked: u64,
    store: &Arc<dyn ObjectStore>,
    report: &mut Report,
) -> Option<Break> {
    // Rows below the first recorded seq belong to commits whose log entries expired.
    let floor = records.first().map_or(i64::MAX, |r| r.record.first_seq);
    let mut rows = SeqRows::new(files, floor);
    for Recorded { version, record } in records {
        let checked = match rows.take(record.first_seq, record.last_seq, store).await {
            Ok(batch) => check_commit_rows(record, &batch),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = checked {
            return Some(Break {
                version: *version,
                seq: Some(record.first_seq),
                reason,
            });
        }
        report.commits += 1;
        report.events += record.rows.max(0) as u64;
        report.head = Some(Head {
            version: *version,
            seq: record.last_seq,
            hash: record.hash.clone(),
        });
    }
    match rows.rest(store).await {
        Ok(None) => None,
        Ok(Some(seq)) => Some(Break {
            version: walked,
            seq: Some(seq),
            reason: format!("the table holds a row of seq {seq} that no audit commit recorded"),
        }),
        Err(reason) => Some(Break {
            version: walked,
            seq: None,
            reason,
        }),
    }
}

/// The live files' rows in `seq` order: files are read when a range reaches their smallest
/// seq, so only rows not yet checked are held (a compacted file's rows until their ranges
/// come).
struct SeqRows {
    files: std::vec::IntoIter<LiveFile>,
    next: Option<LiveFile>,
    /// Rows read and not yet taken, by seq.
    pending: Option<RecordBatch>,
    /// Rows below it belong to expired commits and are passed over.
    floor: i64,
}

impl SeqRows {
    fn new(files: Vec<LiveFile>, floor: i64) -> Self {
        let mut files = files.into_iter();
        let next = files.next();
        Self {
            files,
            next,
            pending: None,
            floor,
        }
    }

    /// Reads every file whose smallest seq is at most `upto` into `pending`.
    async fn read_upto(&mut self, upto: i64, store: &Arc<dyn ObjectStore>) -> Result<(), String> {
        let mut batches: Vec<RecordBatch> = self.pending.take().into_iter().collect();
        while let Some(file) = self.next.take_if(|f| f.min_seq <= upto) {
            self.next = self.files.next();
            if file.deletion_vector {
                return Err(format!(
                    "file {} has rows hidden by a deletion vector",
                    file.path
                ));
            }
            let read = read_file(store, &file.path)
                .await
                .map_err(|e| e.to_string())?;
            batches.extend(read);
        }
        if !batches.is_empty() {
            self.pending = Some(sorted_rows(batches)?);
        }
        Ok(())
    }

    /// The rows of seq `first` to `last` (checked by the caller); a row below `first` that
    /// is still held was seen twice.
    async fn take(
        &mut self,
        first: i64,
        last: i64,
        store: &Arc<dyn ObjectStore>,
    ) -> Result<RecordBatch, String> {
        self.read_upto(last, store).await?;
        let Some(pending) = self.pending.take() else {
            return Err(format!(
                "the table holds 0 of its rows, not seq {first} to {last} as it records"
            ));
        };
        let seqs = int_column(&pending, "seq")?;
        if seqs.null_count() > 0 {
            return Err("the table holds rows without a seq".into());
        }
        let values = seqs.values();
        let start = values.partition_point(|&s| s < first);
        let end = values.partition_point(|&s| s <= last);
        if let Some(twice) = values[..start].iter().find(|&&s| s >= self.floor) {
            return Err(format!("seq {twice} is held more than once"));
        }
        let rows = pending.slice(start, end - start);
        self.pending = Some(pending.slice(end, pending.num_rows() - end));
        Ok(rows)
    }

    /// After the last range: the first seq still held that no commit recorded, if any.
    async fn rest(&mut self, store: &Arc<dyn ObjectStore>) -> Result<Option<i64>, String> {
        self.read_upto(i64::MAX, store).await?;
        let Some(pending) = self.pending.take() else {
            return Ok(None);
        };
        let seqs = int_column(&pending, "seq")?;
        Ok(seqs.iter().flatten().find(|&s| s >= self.floor))
    }
}

/// What kinds of actions a commit holds (`add`, `remove`, `metaData`, ...).
fn kinds(actions: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = actions
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys().map(String::as_str))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

fn operation(actions: &[Value]) -> String {
    actions
        .iter()
        .find_map(|a| a.get("commitInfo")?.get("operation")?.as_str())
        .unwrap_or("unknown operation")
        .to_string()
}

fn not_a_break(reason: String) -> Break {
    Break {
        version: 0,
        seq: None,
        reason,
    }
}

/// Version 0: the table's metadata (its id starts the chain) and no rows.
async fn creation(actions: &[Value], store: &Arc<dyn ObjectStore>) -> Result<String, Break> {
    let id = actions
        .iter()
        .find_map(|a| a.get("metaData")?.get("id")?.as_str())
        .ok_or_else(|| not_a_break("the table's first commit has no metadata".into()))?;
    if CommitRecord::of(actions).is_some() {
        return Err(not_a_break(
            "the table's first commit claims audit rows".into(),
        ));
    }
    let rows = read_adds(actions, store).await.map_err(not_a_break)?;
    if rows.iter().any(|b| b.num_rows() > 0) {
        return Err(not_a_break("the table's first commit holds rows".into()));
    }
    Ok(id.to_string())
}

/// A commit that is not an audit append must hold nothing but its `commitInfo`.
fn without_rows(actions: &[Value]) -> Result<(), Break> {
    let kinds = kinds(actions);
    if kinds.iter().all(|k| matches!(*k, "commitInfo" | "txn")) {
        Ok(())
    } else {
        Err(not_a_break(format!(
            "{} is not an audit append (it holds {} actions)",
            operation(actions),
            kinds.join(", ")
        )))
    }
}

/// An audit append: only new files (no deletion vectors), its record chained to the commit
/// before. Its rows are checked by [`check_commit_rows`], wherever they are now.
fn check_append(
    actions: &[Value],
    record: &CommitRecord,
    expected: Option<&(String, i64)>,
) -> Result<(), Break> {
    let broken = |reason: String| Break {
        seq: Some(record.first_seq),
        ..not_a_break(reason)
    };
    let kinds = kinds(actions);
    if let Some(other) = kinds.iter().find(|k| !matches!(**k, "commitInfo" | "add")) {
        return Err(broken(format!(
            "the audit commit holds a '{other}' action: only appends are allowed"
        )));
    }
    if record.format != FORMAT {
        return Err(broken(format!("unknown audit format {}", record.format)));
    }
    if record.rows < 1 || record.last_seq - record.first_seq + 1 != record.rows {
        return Err(broken(format!(
            "it records {} rows for seq {} to {}",
            record.rows, record.first_seq, record.last_seq
        )));
    }
    if let Some(path) = with_deletion_vector(actions) {
        return Err(broken(format!(
            "file {path} has rows hidden by a deletion vector"
        )));
    }
    if let Some((prev, seq)) = expected {
        if record.prev_hash != *prev {
            return Err(broken(format!(
                "its prev_hash {} is not the previous commit's hash {prev}",
                record.prev_hash
            )));
        }
        if record.first_seq != *seq {
            return Err(broken(format!(
                "it starts at seq {}, the previous commit ended at {}",
                record.first_seq,
                seq - 1
            )));
        }
    }
    Ok(())
}

/// A compaction (`OPTIMIZE`, automatic or not): files removed and added, none of them a
/// change of data. Whether the added files hold exactly the removed files' rows is checked
/// by the rows' check, which reads every recorded seq from the files live after it.
fn compaction(actions: &[Value]) -> Result<(), Break> {
    let kinds = kinds(actions);
    let changes = |kind: &str| {
        actions
            .iter()
            .filter_map(|a| a.get(kind))
            .any(|a| a.get("dataChange").and_then(Value::as_bool) != Some(false))
    };
    if kinds
        .iter()
        .any(|k| !matches!(*k, "commitInfo" | "add" | "remove"))
        || !kinds.contains(&"remove")
        || changes("add")
        || changes("remove")
    {
        return Err(not_a_break(format!(
            "OPTIMIZE is not a compaction: it holds {} actions, not only removes and adds \
             without a change of data",
            kinds.join(", ")
        )));
    }
    if let Some(path) = with_deletion_vector(actions) {
        return Err(not_a_break(format!(
            "file {path} has rows hidden by a deletion vector"
        )));
    }
    Ok(())
}

/// The first added file that carries a deletion vector.
fn with_deletion_vector(actions: &[Value]) -> Option<&str> {
    actions
        .iter()
        .filter_map(|a| a.get("add"))
        .find(|add| add.get("deletionVector").is_some_and(|d| !d.is_null()))
        .map(|add| add.get("path").and_then(Value::as_str).unwrap_or("?"))
}

/// The rows of one audit commit (by seq, from wherever they are held now): exactly its seq
/// range, each carrying its prev_hash and hash, hashing to its recorded hash.
fn check_commit_rows(record: &CommitRecord, rows: &RecordBatch) -> Result<(), String> {
    let seqs = int_column(rows, "seq")?;
    let expected_seqs = record.first_seq..=record.last_seq;
    if rows.num_rows() as i64 != record.rows
        || !seqs.iter().zip(expected_seqs).all(|(a, b)| a == Some(b))
    {
        return Err(format!(
            "the table holds {} of its rows, not seq {} to {} as it records",
            rows.num_rows(),
            record.first_seq,
            record.last_seq
        ));
    }
    for (column, want) in [("prev_hash", &record.prev_hash), ("hash", &record.hash)] {
        let values = text_column(rows, column)?;
        if let Some(row) = (0..values.len()).find(|&r| values.is_null(r) || values.value(r) != want)
        {
            return Err(format!(
                "seq {}: its {column} is not the commit's",
                seqs.value(row)
            ));
        }
    }
    let hash = commit_hash(&record.prev_hash, rows).map_err(|e| e.to_string())?;
    if hash != record.hash {
        return Err(format!(
            "its rows hash to {hash}, not to the recorded {}: a value was changed",
            record.hash
        ));
    }
    Ok(())
}

/// The rows of the files a commit adds.
async fn read_adds(
    actions: &[Value],
    store: &Arc<dyn ObjectStore>,
) -> Result<Vec<RecordBatch>, String> {
    let mut batches = Vec::new();
    for add in actions.iter().filter_map(|a| a.get("add")) {
        let path = add
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| "an add action without a path".to_string())?;
        if add.get("deletionVector").is_some_and(|d| !d.is_null()) {
            return Err(format!("file {path} has rows hidden by a deletion vector"));
        }
        let location = Path::from_url_path(path).map_err(|e| e.to_string())?;
        let read = read_file(store, &location)
            .await
            .map_err(|e| e.to_string())?;
        batches.extend(read);
    }
    Ok(batches)
}

/// Reads one data file whole (an audit commit's file holds one batch of events).
async fn read_file(store: &Arc<dyn ObjectStore>, location: &Path) -> Result<Vec<RecordBatch>> {
    let failed = |reason: String| Error::Read {
        path: location.to_string(),
        reason,
    };
    let bytes = store
        .get(location)
        .await
        .map_err(|e| failed(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| failed(e.to_string()))?;
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| failed(e.to_string()))?
        .build()
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))
}

/// All rows of a commit in one batch, by `seq`.
fn sorted_rows(batches: Vec<RecordBatch>) -> Result<RecordBatch, String> {
    let Some(first) = batches.first() else {
        return Err("the audit commit adds no rows".into());
    };
    let all = arrow::compute::concat_batches(&first.schema(), &batches)
        .map_err(|e| format!("its files do not share a schema: {e}"))?;
    let seq = all
        .column_by_name("seq")
        .ok_or_else(|| "its rows have no seq column".to_string())?;
    let order = arrow::compute::sort_to_indices(seq, None, None).map_err(|e| e.to_string())?;
    arrow::compute::take_record_batch(&all, &order).map_err(|e| e.to_string())
}

fn int_column(batch: &RecordBatch, name: &str) -> Result<Int64Array, String> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("its rows have no {name} column"))?;
    let column = arrow::compute::cast(column, &DataType::Int64).map_err(|e| e.to_string())?;
    column
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| format!("its {name} column is not an integer"))
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<StringArray, String> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("its rows have no {name} column"))?;
    let column = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
    column
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| format!("its {name} column is not text"))
}
