//! The blob connectors: folders of files in Azure Blob Storage / ADLS Gen2 (`az://`,
//! `abfss://`), S3 (`s3://`), GCS (`gs://`) or on local disk (`file://`), read through
//! object_store.
//!
//! ```sql
//! CREATE EXTERNAL TABLE landing.admissions STORED AS CSV
//! LOCATION 'az://landing/admissions/'
//! OPTIONS ('has_header' 'true', 'azure_storage_account_key' '${LANDING_KEY}');
//! ```
//!
//! Kinds: `CSV`, `JSON` / `NDJSON` (newline-delimited), `PARQUET` (DataFusion's readers),
//! `BINARYFILE` (one row per file: path, size, modified, content_type, content) and `DICOM`
//! (one row per file: the DICOM header's main attributes, or the error that kept it from being
//! read). Hive-style folders (`year=2026/month=01/`) give partition columns. Every kind
//! implements [`Watermarked`] by file discovery (see [`mark`]): a materialized view over a file
//! table takes only the files that appeared since its last refresh.
//!
//! The options are documented in the README ("Sources: Blob storage"); [`COMMON_OPTIONS`]
//! lists those every kind accepts.

mod binary;
pub mod dicom;
mod files;
pub mod mark;
pub mod store;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};

use mark::{Mark, Window};
use medlake_source::{Definition, External, Policy, RemoteTable, Rows, Watermarked};
use medlake_source::{Error, Result};
use store::Place;

/// The `STORED AS` kinds of this module.
pub const KINDS: &[&str] = &["CSV", "JSON", "NDJSON", "PARQUET", "BINARYFILE", "DICOM"];

/// The options every blob kind accepts (besides storage options `azure_*`, `aws_*`,
/// `google_*`, passed to object_store).
pub const COMMON_OPTIONS: &[&str] = &[
    "partitioned_by",
    "file_extension",
    "incremental",
    "lookback_seconds",
];

/// The default lookback window of file discovery.
pub const DEFAULT_LOOKBACK_SECONDS: i64 = 900;

/// What the files are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Parquet,
    BinaryFile,
    Dicom,
}

impl Format {
    /// The format of a `STORED AS` kind.
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "json" | "ndjson" => Some(Self::Json),
            "parquet" => Some(Self::Parquet),
            "binaryfile" => Some(Self::BinaryFile),
            "dicom" => Some(Self::Dicom),
            _ => None,
        }
    }

    /// The kind stored in the definition.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Parquet => "parquet",
            Self::BinaryFile => "binaryfile",
            Self::Dicom => "dicom",
        }
    }

    fn options(self) -> &'static [&'static str] {
        match self {
            Self::Csv => files::CSV_OPTIONS,
            Self::Json => files::JSON_OPTIONS,
            Self::Parquet | Self::BinaryFile => &[],
            Self::Dicom => dicom::OPTIONS,
        }
    }
}

/// A column as stored in the definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
}

impl Column {
    fn field(&self) -> Field {
        Field::new(&self.name, self.data_type.clone(), self.nullable)
    }
}

/// What `define` stores in [`Definition::remote`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Remote {
    /// The files' columns (CSV, JSON, Parquet); empty for the other kinds.
    #[serde(default)]
    columns: Vec<Column>,
    /// Hive-style partition columns, in folder order.
    #[serde(default)]
    partitions: Vec<Column>,
    /// A cloud LOCATION that named one object (found so at CREATE); local ones say it
    /// themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    single_file: bool,
}

fn check_options(format: Format, options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        let known = COMMON_OPTIONS.contains(&key.as_str())
            || format.options().contains(&key.as_str())
            || store::STORE_PREFIXES.iter().any(|p| key.starts_with(p));
        if !known {
            let mut accepted: Vec<&str> = COMMON_OPTIONS.to_vec();
            accepted.extend(format.options());
            return Err(Error::InvalidOption {
                option: key.clone(),
                reason: format!(
                    "unknown option; {} accepts {}, and storage options azure_*, aws_*, google_*",
                    format.kind().to_ascii_uppercase(),
                    accepted.join(", ")
                ),
            });
        }
    }
    Ok(())
}

fn flag(options: &BTreeMap<String, String>, name: &str, default: bool) -> Result<bool> {
    match options.get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "yes" | "on") => Ok(true),
        Some("false" | "no" | "off") => Ok(false),
        Some(other) => Err(Error::InvalidOption {
            option: name.into(),
            reason: format!("'{other}' is not true or false"),
        }),
    }
}

/// `CREATE EXTERNAL TABLE ... STORED AS CSV | JSON | NDJSON | PARQUET | BINARYFILE | DICOM`:
/// checks the options, lists the folder (which checks the container and the credentials) and
/// infers the files' columns unless they are declared.
pub async fn define(
    kind: &str,
    location: &str,
    options: BTreeMap<String, String>,
    declared: SchemaRef,
    policy: &Arc<Policy>,
) -> Result<Definition> {
    let format = Format::from_kind(kind).ok_or_else(|| Error::UnknownKind {
        kind: kind.to_string(),
        accepted: KINDS.join(", "),
    })?;
    check_options(format, &options)?;
    let mut place = Place::open(location, &options, policy)?;
    let mut listed = place.list().await?;
    let mut single_file = false;
    if listed.is_empty() && Place::could_be_file(location) {
        // `az://landing/readings.parquet`: no such folder, but perhaps that object.
        let file = Place::open_file(location, &options, policy)?;
        if let Ok(found) = file.list().await {
            place = file;
            listed = found;
            single_file = true;
        }
    }
    let settings = Settings::parse(format, &options)?;
    // A file named by LOCATION is read whatever its name or extension.
    let wanted: Vec<&(String, ObjectMeta)> = listed
        .iter()
        .filter(|(relative, _)| place.file.is_some() || settings.wants(relative))
        .collect();

    // Partition columns: PARTITIONED BY (typed by the declared columns, else text), or the
    // `key=value` folders of the first file.
    let declared_type = |name: &str| {
        declared
            .fields()
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.data_type().clone())
    };
    let partition_names: Vec<String> = match options.get("partitioned_by") {
        Some(names) => names
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        None => wanted
            .first()
            .map(|(relative, _)| {
                hive_segments(relative)
                    .into_iter()
                    .map(|(k, _)| k.to_string())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let partitions: Vec<Column> = partition_names
        .iter()
        .map(|name| Column {
            name: name.clone(),
            data_type: declared_type(name).unwrap_or(DataType::Utf8),
            // Partition values come from folder names: never NULL (DataFusion's file scans
            // declare them so).
            nullable: false,
        })
        .collect();
    let declared_files: Vec<Column> = declared
        .fields()
        .iter()
        .filter(|f| !partition_names.contains(f.name()))
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().clone(),
            nullable: true,
        })
        .collect();

    let columns = match format {
        Format::Csv | Format::Json | Format::Parquet => {
            if declared_files.is_empty() {
                files::infer(format, &options, &place, &wanted).await?
            } else {
                declared_files
            }
        }
        Format::BinaryFile | Format::Dicom => {
            if let Some(column) = declared_files.first() {
                return Err(Error::InvalidOption {
                    option: "columns".into(),
                    reason: format!(
                        "{} tables have fixed columns; declare none (column '{}')",
                        format.kind().to_ascii_uppercase(),
                        column.name
                    ),
                });
            }
            Vec::new()
        }
    };
    let remote = Remote {
        columns,
        partitions,
        single_file,
    };
    let definition = Definition::new(format.kind(), location, options, &remote)?;
    // Opening checks what remains (format options, DICOM tags) against the columns.
    BlobTable::open(&definition, policy)?;
    Ok(definition)
}

/// Per-table settings shared by every kind.
#[derive(Clone, Debug)]
struct Settings {
    extension: Option<String>,
    incremental: bool,
    lookback_micros: i64,
}

impl Settings {
    fn parse(format: Format, options: &BTreeMap<String, String>) -> Result<Self> {
        let lookback = match options.get("lookback_seconds") {
            None => DEFAULT_LOOKBACK_SECONDS,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|s| (0..=7 * 86_400).contains(s))
                .ok_or_else(|| Error::InvalidOption {
                    option: "lookback_seconds".into(),
                    reason: format!("'{v}' is not a number of seconds from 0 to 604800"),
                })?,
        };
        let extension = match options.get("file_extension") {
            Some(e) if e.is_empty() => None,
            Some(e) => Some(e.clone()),
            None => files::default_extension(format, options)?,
        };
        Ok(Self {
            extension,
            incremental: flag(options, "incremental", true)?,
            lookback_micros: lookback * 1_000_000,
        })
    }

    /// Whether a listed object is one of the table's files: not hidden (no path segment
    /// starting with `.` or `_`, as Spark and Hive write `_SUCCESS`, `_temporary/`, `.crc`),
    /// with the extension if one is set.
    fn wants(&self, relative: &str) -> bool {
        !relative.is_empty()
            && !relative
                .split('/')
                .any(|s| s.starts_with('.') || s.starts_with('_'))
            && self
                .extension
                .as_ref()
                .is_none_or(|e| relative.ends_with(e.as_str()))
    }
}

/// The `key=value` folders of a relative path, in order.
fn hive_segments(relative: &str) -> Vec<(&str, &str)> {
    let mut segments: Vec<&str> = relative.split('/').collect();
    segments.pop(); // the file name
    segments
        .into_iter()
        .filter_map(|s| s.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// A file a scan reads: where it is and its partition values.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub relative: String,
    pub meta: ObjectMeta,
    pub partition_values: Vec<ScalarValue>,
}

/// An external table over a folder of files.
#[derive(Debug)]
pub struct BlobTable {
    inner: Arc<Shared>,
    window: Window,
}

/// How a kind reads its files.
#[derive(Debug)]
enum Reader {
    Files(files::FileReader),
    Binary,
    Dicom(dicom::DicomReader),
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub place: Place,
    /// A URL of the table's own (`medlake-blob-<hash>://store`), under which its store is
    /// registered in the session, so that two tables on one container never share credentials.
    pub store_url: ObjectStoreUrl,
    settings: Settings,
    pub partitions: Vec<FieldRef>,
    reader: Reader,
    pub schema: SchemaRef,
    failure: std::sync::Mutex<Option<Error>>,
}

impl Shared {
    fn record_failure(&self, e: Error) -> DataFusionError {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert_with(|| e.clone());
        }
        DataFusionError::External(Box::new(e))
    }

    /// The table's files now, with their partition values.
    async fn list(&self) -> Result<Vec<Listed>> {
        let listed = self.place.list().await?;
        let mut files = Vec::new();
        for (relative, meta) in listed {
            if self.place.file.is_none() && !self.settings.wants(&relative) {
                continue;
            }
            let segments = hive_segments(&relative);
            let mut partition_values = Vec::with_capacity(self.partitions.len());
            for field in &self.partitions {
                // As DataFusion's listing tables: a file outside the partition folders is not
                // part of the table.
                let Some(raw) = segments
                    .iter()
                    .find(|(k, _)| *k == field.name())
                    .map(|(_, v)| *v)
                else {
                    break;
                };
                let value = ScalarValue::try_from_string(percent_decode(raw), field.data_type())
                    .map_err(|e| Error::Data {
                        what: format!("{}{relative}", self.place.location),
                        message: format!("partition column '{}': {e}", field.name()),
                    })?;
                partition_values.push(value);
            }
            if partition_values.len() < self.partitions.len() {
                continue;
            }
            files.push(Listed {
                relative,
                meta,
                partition_values,
            });
        }
        Ok(files)
    }

    fn mark(&self, files: &[Listed]) -> Mark {
        let keys: Vec<(String, i64)> = files
            .iter()
            .map(|f| (self.key(f), f.meta.last_modified.timestamp_micros()))
            .collect();
        Mark::of(
            keys.iter().map(|(k, m)| (k.as_str(), *m)),
            self.settings.lookback_micros,
        )
    }

    /// How a mark names a file: its path in the folder; for a table of one file, its name
    /// and last-modified time, so that incremental discovery is "the file changed or not"
    /// (a rewritten file is taken again, whole).
    fn key(&self, file: &Listed) -> String {
        if self.place.file.is_some() {
            format!(
                "{}@{}",
                file.relative,
                file.meta.last_modified.timestamp_micros()
            )
        } else {
            file.relative.clone()
        }
    }

    async fn plan(
        self: &Arc<Self>,
        state: &dyn Session,
        window: &Window,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files: Vec<Listed> = self
            .list()
            .await?
            .into_iter()
            .filter(|f| window.admits(&self.key(f), f.meta.last_modified.timestamp_micros()))
            .collect();
        if let Window::Pinned(pinned) = window
            && files.len() != pinned.len()
        {
            return Err(Error::Data {
                what: self.place.location.clone(),
                message: format!(
                    "{} of the {} file(s) the server listed while planning changed or went \
                     away before this scan; run the statement again",
                    pinned.len().saturating_sub(files.len()),
                    pinned.len()
                ),
            });
        }
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        state
            .runtime_env()
            .register_object_store(self.store_url.as_ref(), self.place.store.clone());
        let partitions = state.config().target_partitions().max(1);
        match &self.reader {
            Reader::Files(reader) => {
                reader
                    .plan(self, state, files, projection, limit, partitions)
                    .await
            }
            Reader::Binary => Ok(binary::plan(self, files, projection, limit, partitions)?),
            Reader::Dicom(reader) => Ok(binary::plan_dicom(
                self, reader, files, projection, limit, partitions,
            )?),
        }
    }
}

pub(crate) fn percent_decode(value: &str) -> String {
    if !value.contains('%') {
        return value.to_string();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The columns every listing-based kind starts with.
pub(crate) fn file_fields() -> Vec<Field> {
    vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new(
            "modified",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]
}

impl BlobTable {
    /// Opens a stored definition; nothing is listed or read until a scan.
    /// The LOCATION is checked against the policy again (paths, the warehouse's storage,
    /// ambient identity) and the store's connections keep it.
    pub fn open(definition: &Definition, policy: &Arc<Policy>) -> Result<Self> {
        let format = Format::from_kind(&definition.kind).ok_or_else(|| Error::UnknownKind {
            kind: definition.kind.clone(),
            accepted: KINDS.join(", "),
        })?;
        let options = &definition.options;
        let remote: Remote =
            serde_json::from_value(definition.remote.clone()).map_err(|e| Error::Data {
                what: "external table definition".into(),
                message: e.to_string(),
            })?;
        let place = if remote.single_file {
            Place::open_file(&definition.location, options, policy)?
        } else {
            Place::open(&definition.location, options, policy)?
        };
        let settings = Settings::parse(format, options)?;
        let partitions: Vec<FieldRef> = remote
            .partitions
            .iter()
            .map(|c| Arc::new(c.field()))
            .collect();
        let (reader, mut fields) = match format {
            Format::Csv | Format::Json | Format::Parquet => {
                let file_schema = Arc::new(Schema::new(
                    remote.columns.iter().map(Column::field).collect::<Vec<_>>(),
                ));
                let reader = files::FileReader::new(format, options, file_schema.clone())?;
                (
                    Reader::Files(reader),
                    file_schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone())
                        .collect(),
                )
            }
            Format::BinaryFile => (Reader::Binary, binary::fields()),
            Format::Dicom => {
                let reader = dicom::DicomReader::new(options)?;
                let fields = reader.fields();
                (Reader::Dicom(reader), fields)
            }
        };
        for p in &partitions {
            if fields.iter().any(|f| f.name() == p.name()) {
                return Err(Error::InvalidOption {
                    option: "partitioned_by".into(),
                    reason: format!("'{}' is also a column of the files", p.name()),
                });
            }
            fields.push(p.as_ref().clone());
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &definition.kind,
            &definition.location,
            &definition.options,
            &definition.created,
        )
            .hash(&mut hasher);
        let store_url =
            ObjectStoreUrl::parse(format!("medlake-blob-{:016x}://store", hasher.finish()))
                .map_err(|e| Error::Data {
                    what: "store URL".into(),
                    message: e.to_string(),
                })?;
        Ok(Self {
            inner: Arc::new(Shared {
                place,
                store_url,
                settings,
                partitions,
                reader,
                schema: Arc::new(Schema::new(fields)),
                failure: std::sync::Mutex::new(None),
            }),
            window: Window::All,
        })
    }

    fn windowed(&self, window: Window) -> Arc<dyn TableProvider> {
        Arc::new(BlobTable {
            inner: self.inner.clone(),
            window,
        })
    }
}

#[async_trait]
impl TableProvider for BlobTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner
            .plan(state, &self.window, projection, limit)
            .await
            .map_err(|e| self.inner.record_failure(e))
    }
}

/// The files of a folder `rows` reads.
fn window_of(rows: &Rows) -> Result<Window> {
    Ok(match rows {
        Rows::All => Window::All,
        Rows::Upto(mark) => Window::Upto(mark.as_deref().map(Mark::decode).transpose()?),
        Rows::Between(after, upto) => Window::Between(Mark::decode(after)?, Mark::decode(upto)?),
    })
}

#[async_trait]
impl External for BlobTable {
    fn provider(self: Arc<Self>) -> Arc<dyn TableProvider> {
        self
    }

    /// The files `rows` reads now, by key and last-modified time: an executor reads exactly
    /// these.
    async fn pin(&self, rows: &Rows) -> Result<Option<serde_json::Value>> {
        let window = window_of(rows)?;
        let files: BTreeMap<String, i64> = self
            .inner
            .list()
            .await?
            .iter()
            .map(|f| (self.inner.key(f), f.meta.last_modified.timestamp_micros()))
            .filter(|(key, modified)| window.admits(key, *modified))
            .collect();
        serde_json::to_value(files)
            .map(Some)
            .map_err(|e| Error::Data {
                what: self.inner.place.location.clone(),
                message: e.to_string(),
            })
    }

    fn pinned(
        self: Arc<Self>,
        _rows: &Rows,
        pin: &serde_json::Value,
    ) -> Result<Arc<dyn TableProvider>> {
        let files: BTreeMap<String, i64> =
            serde_json::from_value(pin.clone()).map_err(|e| Error::Data {
                what: self.inner.place.location.clone(),
                message: format!("the files a server listed: {e}"),
            })?;
        Ok(self.windowed(Window::Pinned(Arc::new(files))))
    }

    fn watermarked(self: Arc<Self>) -> Option<Arc<dyn Watermarked>> {
        self.inner
            .settings
            .incremental
            .then_some(self as Arc<dyn Watermarked>)
    }

    fn take_failure(&self) -> Option<Error> {
        self.inner.failure.lock().ok()?.take()
    }
}

#[async_trait]
impl Watermarked for BlobTable {
    fn column(&self) -> &str {
        "last_modified"
    }

    async fn high_mark(&self) -> Result<Option<String>> {
        let files = self.inner.list().await?;
        Ok(Some(self.inner.mark(&files).encode()))
    }

    fn upto(&self, mark: Option<&str>) -> Result<Arc<dyn TableProvider>> {
        let rows = Rows::Upto(mark.map(str::to_string));
        Ok(self.windowed(window_of(&rows)?))
    }

    fn between(&self, after: &str, upto: &str) -> Result<Arc<dyn TableProvider>> {
        let rows = Rows::Between(after.to_string(), upto.to_string());
        Ok(self.windowed(window_of(&rows)?))
    }
}

/// The `CSV`, `JSON`, `NDJSON`, `PARQUET`, `BINARYFILE`, `DICOM` connector, registered in a [`medlake_source::Registry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BlobConnector;

#[async_trait]
impl medlake_source::Connector for BlobConnector {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    async fn define(
        &self,
        kind: &str,
        location: &str,
        options: BTreeMap<String, String>,
        declared: SchemaRef,
        policy: &Arc<Policy>,
    ) -> Result<Definition> {
        define(kind, location, options, declared, policy).await
    }

    fn open(&self, definition: &Definition, policy: &Arc<Policy>) -> Result<Arc<dyn External>> {
        Ok(Arc::new(BlobTable::open(definition, policy)?))
    }

    async fn list_tables(
        &self,
        kind: &str,
        location: &str,
        options: &BTreeMap<String, String>,
        remote_schema: &str,
        policy: &Arc<Policy>,
    ) -> Result<Vec<RemoteTable>> {
        let _ = (location, options, remote_schema, policy);
        Err(Error::NoSchemas {
            kind: kind.to_string(),
            hint: "create one external table per folder".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_folders_and_hidden_files() {
        assert_eq!(
            hive_segments("year=2026/month=01/part-0.csv"),
            [("year", "2026"), ("month", "01")]
        );
        assert!(hive_segments("a.csv").is_empty());
        let settings = Settings::parse(Format::Csv, &BTreeMap::new()).unwrap();
        assert!(settings.wants("year=2026/a.csv"));
        assert!(!settings.wants("_SUCCESS"));
        assert!(!settings.wants("_temporary/a.csv"));
        assert!(!settings.wants(".a.csv.crc"));
        assert!(!settings.wants("notes.txt"));
        assert_eq!(percent_decode("a%20b%3D"), "a b=");
        // A `%` before a multi-byte character or at the end is kept, never a panic.
        assert_eq!(percent_decode("%é%2"), "%é%2");
        assert_eq!(percent_decode("x%41"), "xA");
    }

    /// The rows of `provider` scanned in a fresh context, or the scan's error.
    async fn scan_all(provider: Arc<dyn TableProvider>) -> DfResult<usize> {
        let ctx = datafusion::prelude::SessionContext::new();
        let batches = ctx.read_table(provider)?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    /// What crosses to an executor (`Portable::fixed`, `Registry::reopen`): the files the
    /// server listed, read only while each is unchanged; a file added since is not read.
    #[tokio::test]
    async fn a_pinned_scan_reads_the_files_listed_when_it_was_planned() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, rows: &str| {
            std::fs::write(dir.path().join(name), format!("id,ward\n{rows}")).unwrap();
        };
        file("a.csv", "1,icu\n2,er\n");
        file("b.csv", "3,icu\n");
        let policy = Arc::new(Policy::permissive());
        let registry = medlake_source::Registry::new().with(BlobConnector);
        let location = format!("file://{}/", dir.path().display());
        let options: BTreeMap<String, String> = [("has_header".into(), "true".into())].into();
        let declared = Arc::new(Schema::empty());
        let definition = registry
            .define("CSV", &location, options, declared, &policy)
            .await
            .unwrap();
        let provider = registry.open(&definition, &policy).unwrap().provider();
        let portable = Arc::new(
            provider
                .downcast_ref::<medlake_source::Portable>()
                .expect("opened tables are portable")
                .clone(),
        );
        let fixed = portable.fixed().await.unwrap();
        let reopen = fixed.reopen().clone();
        assert!(reopen.pin.is_some(), "a folder's listing is fixed");
        // Another process (here: this one) opens the same rows again.
        let again = || registry.reopen(&reopen, &policy).unwrap();
        assert_eq!(scan_all(again()).await.unwrap(), 3);
        // A file landing after planning is not part of the planned scan.
        file("c.csv", "4,icu\n");
        assert_eq!(scan_all(again()).await.unwrap(), 3);
        assert_eq!(scan_all(portable.clone()).await.unwrap(), 4);
        // A listed file rewritten since (another modification time) fails the scan.
        std::thread::sleep(std::time::Duration::from_millis(20));
        file("b.csv", "3,icu\n5,er\n");
        let err = scan_all(again()).await.unwrap_err().to_string();
        assert!(err.contains("1 of the 2 file(s)"), "{err}");
    }
}
