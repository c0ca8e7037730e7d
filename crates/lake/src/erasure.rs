//! Erasure: removing a person's rows and every trace of them in the warehouse's files, and
//! keeping them out afterwards. The engine decides which rows (`ERASE PATIENT`); this module
//! owns what touches files:
//!
//! - the suppression list, `system.erasures`: one row per erased identifier with a salted
//!   SHA-256 hash of it (never the identifier) and the columns it was erased from. Every later
//!   write of rows into a table that has one of those columns (ingest over HTTP and Flight,
//!   INSERT, CREATE TABLE AS, a refresh, a quarantine) leaves out the rows whose value in such
//!   a column hashes to an erased identifier ([`Warehouse::suppression`], applied in each
//!   write path). Another process's erasure is seen within [`RELOAD_AFTER`];
//! - [`Warehouse::erase_rows`]: a delete whose `commitInfo` keeps no values;
//! - [`Warehouse::purge_history`]: a table's history before a version, forgotten: every file a
//!   commit removed (VACUUM without retention), the change files commits wrote, files no
//!   commit references that are older than an hour, earlier checkpoints, and the column
//!   statistics earlier commits recorded (those commits are rewritten without them but keep
//!   their version, so no stale writer can commit into a freed one). Neither time travel,
//!   `table_changes`, nor the log then holds the erased rows.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{and, cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::Column;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use deltalake::operations::vacuum::VacuumMode;
use object_store::ObjectStoreExt as _;
use sha2::{Digest, Sha256};
use tracing::{info, instrument};

use crate::dml::{ChangeOutcome, Hide};
use crate::warehouse::{TableName, Warehouse, WriteMode};
use crate::{Error, Result};

/// The schema of the suppression list.
pub const ERASURES_SCHEMA: &str = "system";
/// The suppression list's table, `system.erasures`.
pub const ERASURES: &str = "erasures";
/// How long a loaded suppression list is used before its log is looked at again: another
/// process's erasure reaches this one's writes within this time.
pub const RELOAD_AFTER: Duration = Duration::from_secs(5);
/// The suffix of quarantine tables (a view's, the HTTP door's).
pub const QUARANTINE_SUFFIX: &str = "_quarantine";
/// Files no commit references are deleted by an erasure only from this age: a younger one may
/// belong to a commit in flight.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

fn erasures_table() -> TableName {
    TableName {
        schema: ERASURES_SCHEMA.into(),
        table: ERASURES.into(),
    }
}

fn erasures_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("erasure_id", DataType::Utf8, false),
        Field::new(
            "erased_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("erased_by", DataType::Utf8, false),
        Field::new("columns", DataType::Utf8, false),
        Field::new("salt", DataType::Utf8, false),
        Field::new("identifier_hash", DataType::Utf8, false),
    ]))
}

/// The salted hash the suppression list keeps of an identifier (its text form, as given).
pub fn identifier_hash(salt: &[u8], value: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(salt);
    hash.update([0u8]);
    hash.update(value.as_bytes());
    hash.finalize().into()
}

/// Whether a column of this type can hold an identifier the list compares (integers and
/// text; the text form of an integer is its decimal digits).
fn comparable(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

/// The erased identifiers (as salted hashes) and the columns they were erased from.
#[derive(Debug, Default)]
pub struct Suppression {
    /// The hashes under each salt. One salt normally; two erasures that were the first at the
    /// same time may each have made one, and both lists hold.
    hashes: Vec<(Vec<u8>, HashSet<[u8; 32]>)>,
    columns: BTreeSet<String>,
}

/// Whether `c` belongs to a token of text searched for identifiers (a `raw` JSON document):
/// letters, digits, `-` and `_`.
pub fn token_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

/// The column in which the HTTP door keeps a refused row as it was sent (in a `_quarantine`
/// table): searched token by token.
pub const RAW_COLUMN: &str = "raw";

impl Suppression {
    /// Whether nothing was ever erased.
    pub fn is_empty(&self) -> bool {
        self.hashes.iter().all(|(_, h)| h.is_empty())
    }

    /// The columns identifiers were erased from (lower case).
    pub fn columns(&self) -> &BTreeSet<String> {
        &self.columns
    }

    /// Whether `value` is an erased identifier.
    pub fn contains(&self, value: &str) -> bool {
        self.hashes
            .iter()
            .any(|(salt, hashes)| hashes.contains(&identifier_hash(salt, value)))
    }

    fn applies_to(&self, field: &Field) -> bool {
        comparable(field.data_type()) && self.columns.contains(&field.name().to_lowercase())
    }

    /// How a column of a table is searched: `Some(false)` by value, `Some(true)` token by
    /// token (a quarantine's `raw` document), `None` not at all.
    fn search(&self, field: &Field, quarantine: bool) -> Option<bool> {
        if self.applies_to(field) {
            Some(false)
        } else if quarantine
            && field.name() == RAW_COLUMN
            && matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        {
            Some(true)
        } else {
            None
        }
    }

    /// Which rows of `array` (text) hold an erased identifier as one of their tokens.
    fn erased_tokens(&self, array: &ArrayRef) -> DfResult<BooleanArray> {
        let text = cast(array, &DataType::Utf8)?;
        let text: &StringArray = text.as_string();
        Ok(text
            .iter()
            .map(|value| {
                Some(value.is_some_and(|v| {
                    v.split(|c: char| !token_char(c))
                        .filter(|t| !t.is_empty())
                        .any(|t| self.contains(t))
                }))
            })
            .collect())
    }

    /// Which rows of `array` hold an erased identifier (NULL never does).
    fn erased(&self, array: &ArrayRef) -> DfResult<BooleanArray> {
        let text = cast(array, &DataType::Utf8)?;
        let text: &StringArray = text.as_string();
        let mut seen: HashMap<&str, bool> = HashMap::new();
        Ok(text
            .iter()
            .map(|value| {
                Some(value.is_some_and(|v| *seen.entry(v).or_insert_with(|| self.contains(v))))
            })
            .collect())
    }

    /// `input` without the rows that hold an erased identifier in a column the list applies
    /// to; `input` itself when there is none.
    pub(crate) fn guard(
        self: &Arc<Self>,
        input: LogicalPlan,
        quarantine: bool,
    ) -> DfResult<LogicalPlan> {
        if self.is_empty() {
            return Ok(input);
        }
        let columns: Vec<(Expr, bool)> = input
            .schema()
            .iter()
            .filter_map(|(qualifier, field)| {
                let tokens = self.search(field, quarantine)?;
                Some((Expr::Column(Column::from((qualifier, field))), tokens))
            })
            .collect();
        if columns.is_empty() {
            return Ok(input);
        }
        let udf = |tokens: bool| {
            Arc::new(ScalarUDF::new_from_impl(Erased {
                list: self.clone(),
                tokens,
                signature: Signature::any(1, Volatility::Volatile),
            }))
        };
        let predicate = columns
            .into_iter()
            .map(|(column, tokens)| Expr::Not(Box::new(udf(tokens).call(vec![column]))))
            .reduce(Expr::and)
            .unwrap_or_else(|| datafusion::logical_expr::lit(true));
        LogicalPlanBuilder::from(input).filter(predicate)?.build()
    }

    /// `batch` without the rows that hold an erased identifier.
    pub(crate) fn filter_batch(&self, batch: RecordBatch, quarantine: bool) -> Result<RecordBatch> {
        if self.is_empty() {
            return Ok(batch);
        }
        let mut keep: Option<BooleanArray> = None;
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let erased = match self.search(field, quarantine) {
                None => continue,
                Some(false) => self.erased(batch.column(i))?,
                Some(true) => self.erased_tokens(batch.column(i))?,
            };
            let kept = arrow::compute::not(&erased).map_err(arrow_error)?;
            keep = Some(match keep {
                Some(keep) => and(&keep, &kept).map_err(arrow_error)?,
                None => kept,
            });
        }
        match keep {
            Some(keep) => filter_record_batch(&batch, &keep).map_err(arrow_error),
            None => Ok(batch),
        }
    }
}

/// `medlake_erased(value)`: whether `value` is an erased identifier.
#[derive(Debug)]
struct Erased {
    list: Arc<Suppression>,
    /// Search the value's tokens (a quarantine's `raw` document), not the value.
    tokens: bool,
    signature: Signature,
}

impl PartialEq for Erased {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.list, &other.list) && self.tokens == other.tokens
    }
}

impl Eq for Erased {}

impl Hash for Erased {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.list), state);
        self.tokens.hash(state);
    }
}

impl ScalarUDFImpl for Erased {
    fn name(&self) -> &str {
        "medlake_erased"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(value) = args.args.into_iter().next() else {
            return datafusion::common::exec_err!("medlake_erased takes one argument");
        };
        let array = value.into_array(rows)?;
        let erased = if self.tokens {
            self.list.erased_tokens(&array)?
        } else {
            self.list.erased(&array)?
        };
        Ok(ColumnarValue::Array(Arc::new(erased)))
    }
}

/// The suppression list as this process last read it.
pub(crate) struct Loaded {
    checked: Instant,
    version: Option<u64>,
    list: Arc<Suppression>,
}

/// A table's history purged by an erasure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Data and change files deleted.
    pub files: usize,
    /// Log entries (commits and checkpoints) deleted.
    pub log_entries: usize,
}

impl Warehouse {
    /// The suppression list, read again when it was last checked more than [`RELOAD_AFTER`]
    /// ago and its table has a new version since.
    pub async fn suppression(&self) -> Result<Arc<Suppression>> {
        let mut loaded = self.erasures.lock().await;
        if let Some(current) = loaded.as_ref()
            && current.checked.elapsed() < RELOAD_AFTER
        {
            return Ok(current.list.clone());
        }
        let folder = self.path(&[ERASURES_SCHEMA, ERASURES]);
        let version = self.log_versions(&folder).await?.last().copied();
        if let Some(current) = loaded.as_mut()
            && current.version == version
        {
            current.checked = Instant::now();
            return Ok(current.list.clone());
        }
        let list = match version {
            None => Arc::new(Suppression::default()),
            Some(_) => Arc::new(self.read_erasures().await?),
        };
        *loaded = Some(Loaded {
            checked: Instant::now(),
            version,
            list: list.clone(),
        });
        Ok(list)
    }

    async fn read_erasures(&self) -> Result<Suppression> {
        let (provider, _) = self.table_provider(&erasures_table(), None).await?;
        let batches = SessionContext::new()
            .read_table(provider)?
            .select_columns(&["columns", "salt", "identifier_hash"])?
            .collect()
            .await?;
        let mut list = Suppression::default();
        for batch in &batches {
            // Scans may hand text out as views; read every column as plain UTF-8.
            let column = |i: usize| cast(batch.column(i), &DataType::Utf8).map_err(arrow_error);
            let (columns, salts, hashes) = (column(0)?, column(1)?, column(2)?);
            let (Some(columns), Some(salts), Some(hashes)) = (
                columns.as_string_opt::<i32>(),
                salts.as_string_opt::<i32>(),
                hashes.as_string_opt::<i32>(),
            ) else {
                return Err(Error::Internal(
                    "system.erasures has unexpected columns".into(),
                ));
            };
            for row in 0..batch.num_rows() {
                list.columns.extend(
                    columns
                        .value(row)
                        .split(',')
                        .map(|c| c.trim().to_lowercase())
                        .filter(|c| !c.is_empty()),
                );
                let salt = hex_bytes(salts.value(row))?;
                let hash: [u8; 32] = hex_bytes(hashes.value(row))?
                    .try_into()
                    .map_err(|_| Error::Internal("system.erasures holds a short hash".into()))?;
                match list.hashes.iter_mut().find(|(s, _)| *s == salt) {
                    Some((_, set)) => {
                        set.insert(hash);
                    }
                    None => list.hashes.push((salt, HashSet::from([hash]))),
                }
            }
        }
        Ok(list)
    }

    /// Adds `identifiers`, erased from `columns`, to the suppression list in one commit, and
    /// uses the new list at once in this process. Returns the erasure's id.
    #[instrument(skip_all, fields(identifiers = identifiers.len()))]
    pub async fn record_erasure(
        &self,
        erased_by: &str,
        columns: &[String],
        identifiers: &[String],
    ) -> Result<String> {
        let erasure_id = uuid::Uuid::new_v4().to_string();
        let current = self.suppression_now().await?;
        let salt = match current.hashes.first() {
            Some((salt, _)) => salt.clone(),
            None => {
                let mut salt = Vec::with_capacity(32);
                salt.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                salt.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                salt
            }
        };
        let n = identifiers.len();
        let now = chrono::Utc::now().timestamp_micros();
        let columns = columns
            .iter()
            .map(|c| c.to_lowercase())
            .collect::<Vec<_>>()
            .join(",");
        let text = |v: String| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let hashes: Vec<String> = identifiers
            .iter()
            .map(|v| hex_string(&identifier_hash(&salt, v)))
            .collect();
        let batch = RecordBatch::try_new(
            erasures_schema(),
            vec![
                text(erasure_id.clone()),
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::from(vec![now; n])
                        .with_timezone("UTC"),
                ),
                text(erased_by.to_string()),
                text(columns),
                text(hex_string(&salt)),
                Arc::new(StringArray::from(hashes)),
            ],
        )
        .map_err(arrow_error)?;
        self.write_batches(&erasures_table(), vec![batch], WriteMode::Append)
            .await?;
        *self.erasures.lock().await = None;
        self.suppression().await?;
        Ok(erasure_id)
    }

    /// `input` without the rows of erased identifiers, for a write into `name` (the
    /// `system` schema's tables are medlake's own and hold none).
    pub(crate) async fn suppress_plan(
        &self,
        name: &TableName,
        input: LogicalPlan,
    ) -> Result<LogicalPlan> {
        if name.schema == ERASURES_SCHEMA {
            return Ok(input);
        }
        let quarantine = name.table.ends_with(QUARANTINE_SUFFIX);
        Ok(self.suppression().await?.guard(input, quarantine)?)
    }

    /// `batches` without the rows of erased identifiers, for a write into `name`.
    pub(crate) async fn suppress_batches(
        &self,
        name: &TableName,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        if name.schema == ERASURES_SCHEMA {
            return Ok(batches);
        }
        let list = self.suppression().await?;
        if list.is_empty() {
            return Ok(batches);
        }
        let quarantine = name.table.ends_with(QUARANTINE_SUFFIX);
        batches
            .into_iter()
            .map(|batch| list.filter_batch(batch, quarantine))
            .collect()
    }

    /// The suppression list read from its table now, whatever this process last read.
    async fn suppression_now(&self) -> Result<Arc<Suppression>> {
        *self.erasures.lock().await = None;
        self.suppression().await
    }

    /// Deletes the rows of `name` matching `predicate` in one commit that records no value
    /// (`commitInfo` says only that erased rows were deleted); `metadata` goes into the
    /// commit's `commitInfo` as it is (a view's state, carried forward).
    #[instrument(skip_all, fields(table = %name))]
    pub async fn erase_rows(
        &self,
        name: &TableName,
        predicate: Expr,
        session: Arc<dyn Session>,
        metadata: Vec<(String, serde_json::Value)>,
    ) -> Result<ChangeOutcome> {
        let hide: Hide = Arc::new(|_: &str| "the erased identifiers".to_string());
        self.delete_rows_with(name, Some(predicate), session, hide, metadata)
            .await
    }

    /// Deletes what `name`'s files remember from before version `keep_from`: every data file
    /// a commit removed (whatever its age), files no commit references that are older than
    /// an hour, the change files commits wrote, checkpoints before the latest version's (one
    /// is written), and the statistics of the commits before `keep_from`.
    #[instrument(skip(self), fields(table = %name))]
    pub async fn purge_history(&self, name: &TableName, keep_from: u64) -> Result<Purged> {
        let mut purged = Purged::default();
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let table = self.open_table(name).await?;
        let latest = table.version().unwrap_or(0);
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(chrono::Duration::zero())
            .with_enforce_retention_duration(false)
            .await
            .map_err(delta)?;
        purged.files += metrics.files_deleted.len();
        purged.files += self.delete_change_files(name, latest).await?;
        let table = self.open_table(name).await?;
        let (_, metrics) = table
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(
                chrono::Duration::from_std(ORPHAN_AGE)
                    .map_err(|e| Error::Internal(format!("orphan age: {e}")))?,
            )
            .with_enforce_retention_duration(false)
            .await
            .map_err(delta)?;
        purged.files += metrics.files_deleted.len();
        purged.log_entries = self.truncate_log(name, keep_from).await?;
        info!(
            files = purged.files,
            log_entries = purged.log_entries,
            "history purged"
        );
        Ok(purged)
    }

    /// Deletes the change files the commits up to `upto` wrote (not those of a commit still
    /// in flight, which no commit names yet; unreferenced ones go with the orphans).
    async fn delete_change_files(&self, name: &TableName, upto: u64) -> Result<usize> {
        let folder = self.path(&[&name.schema, &name.table]);
        let mut deleted = 0;
        for version in self.versions(name).await? {
            if version > upto {
                break;
            }
            let Some(actions) = self.commit_actions(name, version).await? else {
                continue;
            };
            for action in &actions {
                let Some(path) = action
                    .get("cdc")
                    .and_then(|c| c.get("path"))
                    .and_then(serde_json::Value::as_str)
                else {
                    continue;
                };
                let Ok(relative) = object_store::path::Path::parse(path) else {
                    continue;
                };
                let location = relative
                    .parts()
                    .fold(folder.clone(), |p, part| p.join(part.as_ref()));
                match self.store.delete(&location).await {
                    Ok(()) => deleted += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::store(&location, e)),
                }
            }
        }
        Ok(deleted)
    }

    /// Forgets what the log remembers of the rows before version `keep_from`: writes a
    /// checkpoint at the latest version, deletes the checkpoints (and checksums) of earlier
    /// versions, and rewrites each earlier commit without the column statistics of the files
    /// it added (their minimum and maximum values). The commits themselves stay, so that no
    /// writer holding an old snapshot can put a commit into a freed version.
    async fn truncate_log(&self, name: &TableName, keep_from: u64) -> Result<usize> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let latest = self.open_table(name).await?;
        deltalake::checkpoints::create_checkpoint(&latest, None)
            .await
            .map_err(delta)?;
        let latest = latest.version().unwrap_or(0);
        let log = self.path(&[&name.schema, &name.table, "_delta_log"]);
        let listing = self
            .store
            .list_with_delimiter(Some(&log))
            .await
            .map_err(|e| Error::store(&log, e))?;
        let mut changed = 0;
        for object in listing.objects {
            let Some(file) = object.location.filename() else {
                continue;
            };
            let digits: String = file.chars().take_while(char::is_ascii_digit).collect();
            let Some(version) = (digits.len() == 20)
                .then(|| digits.parse::<u64>().ok())
                .flatten()
            else {
                continue;
            };
            let commit = file.len() == 25 && file.ends_with(".json");
            if version >= keep_from || (!commit && version >= latest) {
                continue;
            }
            if commit {
                if self.strip_statistics(&object.location).await? {
                    changed += 1;
                }
                continue;
            }
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => changed += 1,
                Err(e) => return Err(Error::store(&object.location, e)),
            }
        }
        Ok(changed)
    }

    /// Rewrites one commit file without the `stats` of its `add` actions; whether it had any.
    async fn strip_statistics(&self, path: &object_store::path::Path) -> Result<bool> {
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|e| Error::store(path, e))?
            .bytes()
            .await
            .map_err(|e| Error::store(path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let mut stripped = false;
        let mut out = String::with_capacity(text.len());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut action: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::Internal(format!("{path} is not a Delta commit: {e}")))?;
            if let Some(add) = action
                .get_mut("add")
                .and_then(serde_json::Value::as_object_mut)
                && add.remove("stats").is_some()
            {
                stripped = true;
            }
            out.push_str(&action.to_string());
            out.push('\n');
        }
        if stripped {
            self.store
                .put(path, object_store::PutPayload::from(out))
                .await
                .map_err(|e| Error::store(path, e))?;
        }
        Ok(stripped)
    }
}

fn arrow_error(e: arrow::error::ArrowError) -> Error {
    Error::from(datafusion::error::DataFusionError::ArrowError(
        Box::new(e),
        None,
    ))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_bytes(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return Err(Error::Internal("system.erasures holds odd hex".into()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| Error::Internal("system.erasures holds bad hex".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn list(values: &[&str], columns: &[&str]) -> Suppression {
        let salt = b"salt".to_vec();
        let hashes = values.iter().map(|v| identifier_hash(&salt, v)).collect();
        Suppression {
            hashes: vec![(salt, hashes)],
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn batches_lose_rows_of_erased_identifiers_in_listed_columns_only() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("patient_id", DataType::Int64, true),
            Field::new("mrn", DataType::Utf8, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(123), None, Some(7)])),
                Arc::new(StringArray::from(vec![
                    Some("MRN-1"),
                    Some("MRN-123"),
                    Some("MRN-9"),
                    None,
                ])),
                Arc::new(StringArray::from(vec![
                    Some("123"),
                    None,
                    Some("MRN-9"),
                    None,
                ])),
            ],
        )
        .unwrap();
        let kept = list(&["123", "MRN-9"], &["patient_id", "mrn"])
            .filter_batch(batch.clone(), false)
            .unwrap();
        let ids = kept.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some(1), Some(7)]);
        // Nothing erased: the batch as it was.
        assert_eq!(
            Suppression::default()
                .filter_batch(batch.clone(), false)
                .unwrap(),
            batch
        );
        // A column not listed is not looked at ("123" in note).
        assert_eq!(
            list(&["123"], &["mrn"])
                .filter_batch(batch, false)
                .unwrap()
                .num_rows(),
            4
        );
    }

    #[test]
    fn hashes_are_salted_and_exact() {
        assert_ne!(identifier_hash(b"a", "123"), identifier_hash(b"b", "123"));
        assert_ne!(identifier_hash(b"a", "123"), identifier_hash(b"a", "123 "));
        assert_eq!(
            hex_bytes(&hex_string(&[0, 1, 254])).unwrap(),
            vec![0, 1, 254]
        );
        assert!(hex_bytes("abc").is_err() && hex_bytes("zz").is_err());
    }
}
