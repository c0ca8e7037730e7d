//! CSV, JSON (newline-delimited) and Parquet folders, read by DataFusion's own file formats
//! over the files a scan selected (no ListingTable: its listing cache would hide new files and
//! could not be restricted to a refresh's window).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::config::{ConfigField, CsvOptions, JsonOptions};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::context::SessionContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use object_store::ObjectMeta;

use super::store::Place;
use super::{Column, Format, Listed, Shared};
use medlake_source::{Error, Result};

/// CSV options (DataFusion's `format.*` CSV options, without the prefix).
pub const CSV_OPTIONS: &[&str] = &[
    "has_header",
    "delimiter",
    "quote",
    "terminator",
    "escape",
    "double_quote",
    "newlines_in_values",
    "compression",
    "schema_infer_max_rec",
    "date_format",
    "datetime_format",
    "timestamp_format",
    "timestamp_tz_format",
    "time_format",
    "null_value",
    "null_regex",
    "comment",
    "truncated_rows",
];

/// JSON options.
pub const JSON_OPTIONS: &[&str] = &["compression", "schema_infer_max_rec", "newline_delimited"];

/// How many files schema inference reads at most.
const INFER_FILES: usize = 32;

fn format_of(format: Format, options: &BTreeMap<String, String>) -> Result<Arc<dyn FileFormat>> {
    let bad = |key: &str, e: datafusion::error::DataFusionError| Error::InvalidOption {
        option: key.to_string(),
        reason: e.to_string(),
    };
    Ok(match format {
        Format::Csv => {
            let mut csv = CsvOptions::default();
            for (k, v) in options
                .iter()
                .filter(|(k, _)| CSV_OPTIONS.contains(&k.as_str()))
            {
                csv.set(k, v).map_err(|e| bad(k, e))?;
            }
            Arc::new(CsvFormat::default().with_options(csv))
        }
        Format::Json => {
            let mut json = JsonOptions::default();
            for (k, v) in options
                .iter()
                .filter(|(k, _)| JSON_OPTIONS.contains(&k.as_str()))
            {
                json.set(k, v).map_err(|e| bad(k, e))?;
            }
            Arc::new(JsonFormat::default().with_options(json))
        }
        Format::Parquet => Arc::new(ParquetFormat::default()),
        Format::BinaryFile | Format::Dicom => {
            return Err(Error::Data {
                what: format.kind().into(),
                message: "not a columnar file format".into(),
            });
        }
    })
}

fn compression(format: Format, options: &BTreeMap<String, String>) -> Result<FileCompressionType> {
    Ok(match format {
        Format::Csv => {
            let mut csv = CsvOptions::default();
            if let Some(v) = options.get("compression") {
                csv.set("compression", v)
                    .map_err(|e| Error::InvalidOption {
                        option: "compression".into(),
                        reason: e.to_string(),
                    })?;
            }
            csv.compression.into()
        }
        Format::Json => {
            let mut json = JsonOptions::default();
            if let Some(v) = options.get("compression") {
                json.set("compression", v)
                    .map_err(|e| Error::InvalidOption {
                        option: "compression".into(),
                        reason: e.to_string(),
                    })?;
            }
            json.compression.into()
        }
        _ => FileCompressionType::UNCOMPRESSED,
    })
}

/// The extension a kind's files have by default (`.csv`, `.csv.gz`, `.json`, `.parquet`);
/// `None`: every file.
pub fn default_extension(
    format: Format,
    options: &BTreeMap<String, String>,
) -> Result<Option<String>> {
    match format {
        Format::Csv | Format::Json | Format::Parquet => {
            let f = format_of(format, options)?;
            let ext = f
                .get_ext_with_compression(&compression(format, options)?)
                .map_err(|e| Error::InvalidOption {
                    option: "compression".into(),
                    reason: e.to_string(),
                })?;
            Ok(Some(format!(".{}", ext.trim_start_matches('.'))))
        }
        Format::BinaryFile | Format::Dicom => Ok(None),
    }
}

/// Infers the files' columns from up to [`INFER_FILES`] of them.
pub async fn infer(
    format: Format,
    options: &BTreeMap<String, String>,
    place: &Place,
    files: &[&(String, ObjectMeta)],
) -> Result<Vec<Column>> {
    if files.is_empty() {
        return Err(Error::InvalidOption {
            option: "columns".into(),
            reason: format!(
                "{} has no {} files to infer the columns from; declare the columns",
                place.location,
                format.kind().to_ascii_uppercase()
            ),
        });
    }
    let file_format = format_of(format, options)?;
    let ctx = SessionContext::new();
    let state = ctx.state();
    let objects: Vec<ObjectMeta> = files
        .iter()
        .take(INFER_FILES)
        .map(|(_, m)| m.clone())
        .collect();
    let schema = file_format
        .infer_schema(&state, &place.store, &objects)
        .await
        .map_err(|e| match e {
            datafusion::error::DataFusionError::ObjectStore(e) => place.error(*e),
            other => Error::Data {
                what: place.location.clone(),
                message: format!("cannot infer the columns: {other}"),
            },
        })?;
    Ok(schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().clone(),
            nullable: true,
        })
        .collect())
}

/// Reads CSV, JSON or Parquet files with DataFusion's file format.
#[derive(Debug)]
pub struct FileReader {
    format: Arc<dyn FileFormat>,
    file_schema: SchemaRef,
}

impl FileReader {
    pub fn new(
        format: Format,
        options: &BTreeMap<String, String>,
        file_schema: SchemaRef,
    ) -> Result<Self> {
        Ok(Self {
            format: format_of(format, options)?,
            file_schema,
        })
    }

    pub async fn plan(
        &self,
        shared: &Arc<Shared>,
        state: &dyn Session,
        files: Vec<Listed>,
        projection: Vec<usize>,
        limit: Option<usize>,
        partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let internal = |e: datafusion::error::DataFusionError| Error::Data {
            what: shared.place.location.clone(),
            message: e.to_string(),
        };
        if files.is_empty() {
            let schema = shared
                .schema
                .project(&projection)
                .map_err(|e| Error::Data {
                    what: shared.place.location.clone(),
                    message: e.to_string(),
                })?;
            return Ok(Arc::new(EmptyExec::new(Arc::new(schema))));
        }
        let groups_count = partitions.min(files.len()).max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups_count];
        for (i, file) in files.into_iter().enumerate() {
            groups[i % groups_count].push(
                PartitionedFile::from(file.meta).with_partition_values(file.partition_values),
            );
        }
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(shared.partitions.clone())
            .build();
        let source = self.format.file_source(table_schema);
        let config = FileScanConfigBuilder::new(shared.store_url.clone(), source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(projection))
            .map_err(internal)?
            .with_limit(limit)
            .build();
        self.format
            .create_physical_plan(state, config)
            .await
            .map_err(internal)
    }
}
