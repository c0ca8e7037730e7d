//! `system.audit`: its schema, its table properties, the rows of one commit and the hash
//! that chains commits.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use medlake_lake::{CommitOptions, TableName, Warehouse};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::retention::MIN_RETENTION;

pub const SCHEMA: &str = "system";
pub const TABLE: &str = "audit";

/// The key of an audit commit's `commitInfo` that holds its place in the chain:
/// `{"format": 1, "first_seq", "last_seq", "rows", "prev_hash", "hash"}`.
pub(crate) const COMMIT_KEY: &str = "medlakeAudit";

/// The encoding of rows the hashes cover (bump it with any change to [`HASHED`]).
pub(crate) const FORMAT: i64 = 1;

/// `system.audit`.
pub fn table_name() -> TableName {
    TableName {
        schema: SCHEMA.to_string(),
        table: TABLE.to_string(),
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns of `system.audit`, in order.
pub fn schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("occurred_at", timestamp(), false),
        text("user_name", false),
        text("roles", false),
        text("door", false),
        text("client_addr", true),
        text("session_id", true),
        text("statement", false),
        text("kind", false),
        text("objects_read", false),
        text("objects_written", false),
        Field::new("row_count", DataType::Int64, true),
        text("outcome", false),
        text("sqlstate", true),
        Field::new("duration_us", DataType::Int64, false),
        text("break_glass", true),
        text("prev_hash", false),
        text("hash", false),
    ]))
}

/// The columns a commit's hash covers, in the order they are encoded: all but `hash`.
pub(crate) const HASHED: &[(&str, Kind)] = &[
    ("seq", Kind::Int),
    ("occurred_at", Kind::Time),
    ("user_name", Kind::Text),
    ("roles", Kind::Text),
    ("door", Kind::Text),
    ("client_addr", Kind::Text),
    ("session_id", Kind::Text),
    ("statement", Kind::Text),
    ("kind", Kind::Text),
    ("objects_read", Kind::Text),
    ("objects_written", Kind::Text),
    ("row_count", Kind::Int),
    ("outcome", Kind::Text),
    ("sqlstate", Kind::Text),
    ("duration_us", Kind::Int),
    ("break_glass", Kind::Text),
    ("prev_hash", Kind::Text),
];

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Int,
    Time,
    Text,
}

/// Table properties of `system.audit`: append-only (Delta writers refuse to remove rows),
/// and no log cleanup below the 6 years of [`MIN_RETENTION`] (the log's commits are the
/// chain). Removed files are kept as tombstones for an hour, not 6 years nor Delta's week:
/// the automatic compaction removes every small file of the log once its rows are in a
/// larger one (`medlake audit verify` reads each commit's rows wherever they are now), and
/// every checkpoint lists every tombstone still kept. 6 years of them made each checkpoint
/// larger than the last without end; a week still did for a week (the soak's hour: 30,185
/// audit commits, a checkpoint of 30,305 tombstones, read and rewritten several times a
/// second: millions after a week). A tombstone only tells a VACUUM which files it may
/// delete, and a VACUUM of the log keeps 6 years unless an auditor forces less
/// ([`crate::check_vacuum`], the engine's rule; it lists the files, and only ever deletes
/// such replaced copies); time travel replays the log, which keeps its 6 years. Tables
/// created before keep the retention they were created with.
fn properties() -> Vec<(String, String)> {
    let days = MIN_RETENTION.as_secs() / 86_400;
    vec![
        ("delta.appendOnly".into(), "true".into()),
        (
            "delta.deletedFileRetentionDuration".into(),
            "interval 1 hours".into(),
        ),
        (
            "delta.logRetentionDuration".into(),
            format!("interval {days} days"),
        ),
    ]
}

/// A DataFusion session for the log's own writes (deltalake's planner, as the lake needs).
pub(crate) fn session() -> Arc<dyn Session> {
    Arc::new(
        SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(medlake_lake::delta_query_planner())
            .build(),
    )
}

/// A plan that produces `batch`.
pub(crate) fn plan_of(batch: RecordBatch) -> Result<LogicalPlan> {
    let internal = |e: datafusion::error::DataFusionError| Error::Internal(e.to_string());
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(internal)?;
    LogicalPlanBuilder::scan("audit", provider_as_source(Arc::new(table)), None)
        .and_then(LogicalPlanBuilder::build)
        .map_err(internal)
}

/// Creates `system.audit` (empty, version 0) unless it exists.
pub(crate) async fn create(warehouse: &Warehouse) -> Result<()> {
    let name = table_name();
    if warehouse.table_exists(&name).await? {
        return Ok(());
    }
    let plan = plan_of(RecordBatch::new_empty(schema()))?;
    let options = CommitOptions {
        configuration: properties(),
        ..CommitOptions::default()
    };
    // `None`: another process created it first; theirs is the log.
    warehouse
        .create_table_as_with(&name, plan, session(), true, &options)
        .await?;
    Ok(())
}

/// The `prev_hash` of a table's first commit: bound to the table's Delta id, so that a chain
/// cannot be passed off as another table's.
pub(crate) fn genesis(table_id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"medlake-audit/genesis\n");
    hash.update(table_id.as_bytes());
    hex(&hash.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A list of names as one text value: sorted, without duplicates, joined by `,`. A name
/// holding `,` or `"` (medlake's own names cannot) is double-quoted as in SQL.
fn names(list: &[String]) -> String {
    let mut list: Vec<&str> = list.iter().map(String::as_str).collect();
    list.sort_unstable();
    list.dedup();
    list.iter()
        .map(|n| {
            if n.contains([',', '"']) {
                format!("\"{}\"", n.replace('"', "\"\""))
            } else {
                n.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The rows of one commit: `events` numbered from `first_seq`, chained to `prev_hash`.
/// Returns the batch (with its `hash` column) and the hash.
pub(crate) fn commit_batch(
    events: &[Event],
    first_seq: i64,
    prev_hash: &str,
) -> Result<(RecordBatch, String)> {
    let n = events.len();
    let text = |f: &dyn Fn(&Event) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(events.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            (0..n as i64).map(|i| first_seq + i),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                events.iter().map(|e| e.at.timestamp_micros()),
            )
            .with_timezone("UTC"),
        ),
        text(&|e| Some(e.user.clone())),
        text(&|e| Some(names(&e.roles))),
        text(&|e| Some(e.door.as_str().to_string())),
        text(&|e| e.client.clone()),
        text(&|e| e.session_id.clone()),
        text(&|e| Some(e.statement.as_str().to_string())),
        text(&|e| Some(e.kind.clone())),
        text(&|e| Some(names(&e.objects_read))),
        text(&|e| Some(names(&e.objects_written))),
        Arc::new(Int64Array::from_iter(
            events.iter().map(|e| e.rows.map(to_i64)),
        )),
        text(&|e| Some(e.outcome.as_str().to_string())),
        text(&|e| e.code.map(|c| c.sqlstate().to_string())),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| {
            to_i64(e.duration.as_micros().try_into().unwrap_or(u64::MAX))
        }))),
        text(&|e| e.break_glass.clone()),
        text(&|_| Some(prev_hash.to_string())),
    ];
    let full = schema();
    let hashed = Arc::new(Schema::new(
        full.fields()[..full.fields().len() - 1].to_vec(),
    ));
    let internal = |e: arrow::error::ArrowError| Error::Internal(format!("audit rows: {e}"));
    let unhashed = RecordBatch::try_new(hashed, columns).map_err(internal)?;
    let hash = commit_hash(prev_hash, &unhashed)?;
    let mut columns = unhashed.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec![hash.clone(); n])));
    let batch = RecordBatch::try_new(full, columns).map_err(internal)?;
    Ok((batch, hash))
}

/// One hashed column, in the type the encoding reads.
enum Column {
    Int(Int64Array),
    Text(StringArray),
}

fn column(batch: &RecordBatch, name: &str, kind: Kind) -> Result<Column> {
    let missing = || Error::Internal(format!("audit rows have no column '{name}'"));
    let array = batch.column_by_name(name).ok_or_else(missing)?;
    let cast = |to: &DataType| {
        arrow::compute::cast(array, to)
            .map_err(|e| Error::Internal(format!("audit column '{name}': {e}")))
    };
    let wrong = || Error::Internal(format!("audit column '{name}' has an unexpected type"));
    Ok(match kind {
        Kind::Int | Kind::Time => {
            let array = match kind {
                // Any timestamp as µs since the epoch (the unit the table stores).
                Kind::Time => arrow::compute::cast(&cast(&timestamp())?, &DataType::Int64)
                    .map_err(|e| Error::Internal(format!("audit column '{name}': {e}")))?,
                _ => cast(&DataType::Int64)?,
            };
            Column::Int(
                array
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(wrong)?
                    .clone(),
            )
        }
        Kind::Text => Column::Text(
            cast(&DataType::Utf8)?
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(wrong)?
                .clone(),
        ),
    })
}

/// SHA-256 of `prev_hash` and the rows of one commit (in their order: by `seq`), each value
/// of the [`HASHED`] columns encoded as a tag (0 NULL, 1 a value) then the value: 8 bytes
/// big-endian for integers and timestamps (µs), a big-endian u64 length and UTF-8 for text.
pub(crate) fn commit_hash(prev_hash: &str, batch: &RecordBatch) -> Result<String> {
    let columns = HASHED
        .iter()
        .map(|(name, kind)| column(batch, name, *kind))
        .collect::<Result<Vec<_>>>()?;
    let mut hash = Sha256::new();
    hash.update(format!("medlake-audit/{FORMAT}\n{prev_hash}\n").as_bytes());
    for row in 0..batch.num_rows() {
        for column in &columns {
            let valid = match column {
                Column::Int(a) => a.is_valid(row),
                Column::Text(a) => a.is_valid(row),
            };
            if !valid {
                hash.update([0u8]);
                continue;
            }
            hash.update([1u8]);
            match column {
                Column::Int(a) => hash.update(a.value(row).to_be_bytes()),
                Column::Text(a) => {
                    let value = a.value(row).as_bytes();
                    hash.update((value.len() as u64).to_be_bytes());
                    hash.update(value);
                }
            }
        }
    }
    Ok(hex(&hash.finalize()))
}
