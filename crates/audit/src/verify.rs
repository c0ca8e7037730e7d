//! `medlake audit verify`: walks the commits of `system.audit` in order and checks the chain.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::logstore::LogStore as _;
use medlake_lake::Warehouse;
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

/// Walks every commit of `system.audit` in order: each must be the table's creation, an
/// audit append (only new data files, its `commitInfo` naming its seq range and hashes) or
/// a commit without rows (VACUUM); each audit commit's data files are read back and must
/// hold exactly its seq range, carry the previous commit's hash, and hash to its own.
/// Returns the report (`broken` set at the first failure); an error only when the table
/// cannot be read at all.
pub async fn verify(warehouse: &Warehouse) -> Result<Report> {
    let name = table_name();
    let versions = warehouse.versions(&name).await?;
    let table = warehouse.open_table(&name).await?;
    let store = table.log_store().object_store(None);
    let mut report = Report::default();
    let mut expected: Option<(String, i64)> = None;
    for (i, &version) in versions.iter().enumerate() {
        let broken = |seq: Option<i64>, reason: String| Break {
            version,
            seq,
            reason,
        };
        let Some(actions) = warehouse.commit_actions(&name, version).await? else {
            if i == 0 || expected.is_none() {
                // Expired with the log retention: start after it.
                continue;
            }
            report.broken = Some(broken(None, "its log entry is missing".into()));
            return Ok(report);
        };
        if expected.is_none() && version > 0 && report.expired_before.is_none() {
            report.expired_before = Some(version);
        }
        let step = if version == 0 {
            creation(&actions, &store).await.map(|id| {
                expected = Some((genesis(&id), 1));
            })
        } else {
            match CommitRecord::of(&actions) {
                Some(record) => {
                    let seq = record.first_seq;
                    check_append(&actions, &record, expected.as_ref(), &store)
                        .await
                        .map(|()| {
                            report.commits += 1;
                            report.events += record.rows.max(0) as u64;
                            report.head = Some(Head {
                                version,
                                seq: record.last_seq,
                                hash: record.hash.clone(),
                            });
                            expected = Some((record.hash, record.last_seq + 1));
                        })
                        .map_err(|reason| broken(Some(seq), reason))
                }
                None => without_rows(&actions).map(|()| report.other_commits += 1),
            }
        };
        match step {
            Ok(()) => {}
            Err(Break { seq, reason, .. }) => {
                report.broken = Some(broken(seq, reason));
                return Ok(report);
            }
        }
    }
    Ok(report)
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

/// An audit append: only new files, whose rows are the recorded seq range chained to the
/// commit before.
async fn check_append(
    actions: &[Value],
    record: &CommitRecord,
    expected: Option<&(String, i64)>,
    store: &Arc<dyn ObjectStore>,
) -> Result<(), String> {
    let kinds = kinds(actions);
    if let Some(other) = kinds.iter().find(|k| !matches!(**k, "commitInfo" | "add")) {
        return Err(format!(
            "the audit commit holds a '{other}' action: only appends are allowed"
        ));
    }
    if record.format != FORMAT {
        return Err(format!("unknown audit format {}", record.format));
    }
    if let Some((prev, seq)) = expected {
        if record.prev_hash != *prev {
            return Err(format!(
                "its prev_hash {} is not the previous commit's hash {prev}",
                record.prev_hash
            ));
        }
        if record.first_seq != *seq {
            return Err(format!(
                "it starts at seq {}, the previous commit ended at {}",
                record.first_seq,
                seq - 1
            ));
        }
    }
    let batches = read_adds(actions, store).await?;
    let rows = sorted_rows(batches)?;
    let seqs = int_column(&rows, "seq")?;
    let expected_seqs = record.first_seq..=record.last_seq;
    if rows.num_rows() as i64 != record.rows
        || record.last_seq - record.first_seq + 1 != record.rows
        || !seqs.iter().zip(expected_seqs).all(|(a, b)| a == Some(b))
    {
        return Err(format!(
            "its files hold {} rows, not seq {} to {} as it records",
            rows.num_rows(),
            record.first_seq,
            record.last_seq
        ));
    }
    for (column, want) in [("prev_hash", &record.prev_hash), ("hash", &record.hash)] {
        let values = text_column(&rows, column)?;
        if let Some(row) = (0..values.len()).find(|&r| values.is_null(r) || values.value(r) != want)
        {
            return Err(format!(
                "seq {}: its {column} is not the commit's",
                seqs.value(row)
            ));
        }
    }
    let hash = commit_hash(&record.prev_hash, &rows).map_err(|e| e.to_string())?;
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
        let read = read_file(store, path).await.map_err(|e| e.to_string())?;
        batches.extend(read);
    }
    Ok(batches)
}

/// Reads one data file whole (an audit commit's file holds one batch of events).
async fn read_file(store: &Arc<dyn ObjectStore>, path: &str) -> Result<Vec<RecordBatch>> {
    let failed = |reason: String| Error::Read {
        path: path.to_string(),
        reason,
    };
    let location = Path::from_url_path(path).map_err(|e| failed(e.to_string()))?;
    let bytes = store
        .get(&location)
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
