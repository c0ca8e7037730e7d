//! One row per file, as Spark's `binaryFile` source: `path`, `size`, `modified`,
//! `content_type` (from the extension) and `content`, read only when a query selects it. The
//! scan that builds such rows ([`FilesExec`]) also serves the DICOM kind.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::scalar::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use super::dicom::{DicomReader, Parsed};
use super::{Listed, Shared, file_fields};
use medlake_source::{Error, Result};

/// The columns of a BINARYFILE table (before partition columns).
pub fn fields() -> Vec<Field> {
    let mut fields = file_fields();
    fields.push(Field::new("content_type", DataType::Utf8, false));
    fields.push(Field::new("content", DataType::Binary, true));
    fields
}

const CONTENT_TYPE: usize = 3;
const CONTENT: usize = 4;

/// Plans a BINARYFILE scan.
pub fn plan(
    shared: &Arc<Shared>,
    files: Vec<Listed>,
    projection: Vec<usize>,
    limit: Option<usize>,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    FilesExec::build(shared, Kind::Binary, files, projection, limit, partitions)
}

/// Plans a DICOM scan: the same file scan, with `reader` building the rows.
pub fn plan_dicom(
    shared: &Arc<Shared>,
    reader: &DicomReader,
    files: Vec<Listed>,
    projection: Vec<usize>,
    limit: Option<usize>,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let kind = Kind::Dicom(Arc::new(reader.clone()));
    FilesExec::build(shared, kind, files, projection, limit, partitions)
}

/// A MIME type from the file name's extension.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "pdf" => "application/pdf",
        "dcm" | "dicom" => "application/dicom",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "tif" | "tiff" => "image/tiff",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "svg" => "image/svg+xml",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "htm" | "html" => "text/html",
        "xml" => "application/xml",
        "json" => "application/json",
        "ndjson" | "jsonl" => "application/x-ndjson",
        "hl7" => "x-application/hl7-v2+er7",
        "parquet" => "application/vnd.apache.parquet",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "mp4" => "video/mp4",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// What a [`FilesExec`] builds its rows from.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Binary,
    Dicom(Arc<DicomReader>),
}

/// What was read of one file.
enum Payload {
    Nothing,
    Content(Vec<u8>),
    Dicom(Parsed),
}

/// Scans files into one row each, reading their bytes only when a projected column needs
/// them; files are read a few at a time per partition and rows go out in small batches.
#[derive(Debug)]
pub(crate) struct FilesExec {
    shared: Arc<Shared>,
    kind: Kind,
    schema: SchemaRef,
    projection: Vec<usize>,
    groups: Vec<Vec<Listed>>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl FilesExec {
    pub(crate) fn build(
        shared: &Arc<Shared>,
        kind: Kind,
        files: Vec<Listed>,
        projection: Vec<usize>,
        limit: Option<usize>,
        partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = Arc::new(
            shared
                .schema
                .project(&projection)
                .map_err(|e| Error::Data {
                    what: shared.place.location.clone(),
                    message: e.to_string(),
                })?,
        );
        let files: Vec<Listed> = match limit {
            Some(n) => files.into_iter().take(n).collect(),
            None => files,
        };
        let count = partitions.min(files.len()).max(1);
        let mut groups: Vec<Vec<Listed>> = vec![Vec::new(); count];
        for (i, f) in files.into_iter().enumerate() {
            groups[i % count].push(f);
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(count),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(Self {
            shared: shared.clone(),
            kind,
            schema,
            projection,
            groups,
            limit,
            properties,
        }))
    }

    fn base_columns(&self) -> usize {
        self.shared.schema.fields().len() - self.shared.partitions.len()
    }

    /// Whether the projection needs each file's bytes.
    fn reads(&self) -> bool {
        match &self.kind {
            Kind::Binary => self.projection.contains(&CONTENT),
            Kind::Dicom(_) => {
                let base = self.base_columns();
                self.projection.iter().any(|i| *i >= 3 && *i < base)
            }
        }
    }
}

impl DisplayAs for FilesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BlobFilesExec: location={} kind={} files={} reads_content={}",
            self.shared.place.location,
            match self.kind {
                Kind::Binary => "binaryfile",
                Kind::Dicom(_) => "dicom",
            },
            self.groups.iter().map(Vec::len).sum::<usize>(),
            self.reads()
        )
    }
}

async fn fetch(shared: &Shared, kind: &Kind, reads: bool, file: &Listed) -> Result<Payload> {
    if !reads {
        return Ok(Payload::Nothing);
    }
    match kind {
        Kind::Binary => {
            let bytes = shared
                .place
                .store
                .get(&file.meta.location)
                .await
                .map_err(|e| shared.place.error(e))?
                .bytes()
                .await
                .map_err(|e| shared.place.error(e))?;
            Ok(Payload::Content(bytes.to_vec()))
        }
        Kind::Dicom(reader) => Ok(Payload::Dicom(reader.read(shared, file).await?)),
    }
}

impl FilesExec {
    fn batch(&self, files: &[Listed], payloads: Vec<Payload>) -> Result<RecordBatch> {
        let base = self.base_columns();
        let location = &self.shared.place.location;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.projection.len());
        for &i in &self.projection {
            let array: ArrayRef = match i {
                0 => Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| format!("{location}{}", f.relative)),
                )),
                1 => Arc::new(Int64Array::from_iter_values(
                    files.iter().map(|f| f.meta.size as i64),
                )),
                2 => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        files
                            .iter()
                            .map(|f| f.meta.last_modified.timestamp_micros()),
                    )
                    .with_timezone("UTC"),
                ),
                i if i >= base => {
                    let j = i - base;
                    ScalarValue::iter_to_array(files.iter().map(|f| f.partition_values[j].clone()))
                        .map_err(|e| Error::Data {
                            what: location.clone(),
                            message: e.to_string(),
                        })?
                }
                i => match &self.kind {
                    Kind::Binary if i == CONTENT_TYPE => Arc::new(StringArray::from_iter_values(
                        files.iter().map(|f| content_type(&f.relative)),
                    )),
                    Kind::Binary => {
                        let mut builder = BinaryBuilder::new();
                        for p in &payloads {
                            match p {
                                Payload::Content(bytes) => builder.append_value(bytes),
                                _ => builder.append_null(),
                            }
                        }
                        Arc::new(builder.finish())
                    }
                    Kind::Dicom(reader) => {
                        let parsed: Vec<Option<&Parsed>> = payloads
                            .iter()
                            .map(|p| match p {
                                Payload::Dicom(d) => Some(d),
                                _ => None,
                            })
                            .collect();
                        reader.column(i, &parsed)?
                    }
                },
            };
            columns.push(array);
        }
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(files.len())),
        )
        .map_err(|e| Error::Data {
            what: location.clone(),
            message: e.to_string(),
        })
    }
}

impl ExecutionPlan for FilesExec {
    medlake_source::leaf_plan!("BlobFilesExec");

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("BlobFilesExec has no partition {partition}"))
        })?;
        let reads = self.reads();
        // Rows per batch: small when whole files travel in them.
        let rows = match (&self.kind, reads) {
            (Kind::Binary, true) => 16,
            _ => 256,
        };
        let this = Arc::new(Self {
            shared: self.shared.clone(),
            kind: self.kind.clone(),
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            groups: Vec::new(),
            limit: self.limit,
            properties: self.properties.clone(),
        });
        let chunks: Vec<Vec<Listed>> = files.chunks(rows).map(<[Listed]>::to_vec).collect();
        let stream = futures::stream::iter(chunks)
            .then(move |chunk| {
                let this = this.clone();
                async move {
                    let payloads: Vec<Payload> = futures::stream::iter(chunk.clone())
                        .map(|f| {
                            let this = this.clone();
                            async move { fetch(&this.shared, &this.kind, reads, &f).await }
                        })
                        .buffered(4)
                        .try_collect()
                        .await
                        .map_err(|e| this.shared.record_failure(e))?;
                    this.batch(&chunk, payloads)
                        .map_err(|e| this.shared.record_failure(e))
                }
            })
            .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
