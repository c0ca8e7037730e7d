//! Data files written where the rows are: on the executors.
//!
//! A refresh on a cluster ends in [`LakeWriteExec`]: each task of the plan's last stage writes
//! the rows of its partition as Parquet data files into the table's folder, through the
//! executor's own object store (credentials never travel in a plan), and returns the Delta
//! `add` actions of the files it wrote as one row. Nothing is committed there: the server
//! collects the rows and commits every file at once on top of the version it read, so the
//! write is one atomic commit; a job that fails or is cancelled leaves files no version
//! refers to (VACUUM's to remove), never a partial table.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use deltalake::kernel::Add;
use deltalake::logstore::StorageConfig;
use deltalake::table::BlindDeltaTable;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The column of [`LakeWriteExec`]'s rows with the `add` actions (a JSON array).
pub const FILES: &str = "files";
/// The column of [`LakeWriteExec`]'s rows with the number of rows written.
pub const ROWS: &str = "rows";

/// Where and how an executor writes: the table's folder and the Parquet layout the server
/// writes with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    /// The table's folder (`file:///...`, `az://...`).
    pub table: String,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Rows per data page.
    pub page_rows: usize,
    /// A file is closed and another begun past this size (bytes; 0: one file per task).
    pub file_size: u64,
}

/// Writes its input's rows into a Delta table's folder, one task per partition, and returns
/// per partition one row: the `add` actions of the files written ([`FILES`]) and the rows
/// ([`ROWS`]).
pub struct LakeWriteExec {
    input: Arc<dyn ExecutionPlan>,
    target: Target,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for LakeWriteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeWriteExec").finish_non_exhaustive()
    }
}

/// The schema of [`LakeWriteExec`]'s rows.
pub fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(FILES, DataType::Utf8, false),
        Field::new(ROWS, DataType::UInt64, false),
    ]))
}

impl LakeWriteExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, target: Target) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_schema()),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            target,
            properties: Arc::new(properties),
        }
    }

    /// Where it writes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    pub(crate) fn encode(&self, buf: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(buf, &self.target)
            .map_err(|e| DataFusionError::Internal(format!("encoding a Delta write: {e}")))
    }

    pub(crate) fn decode(buf: &[u8], inputs: &[Arc<dyn ExecutionPlan>]) -> Result<Self> {
        let target: Target = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("decoding a Delta write: {e}")))?;
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "a Delta write has one input, not {}",
                inputs.len()
            )));
        };
        Ok(Self::new(input.clone(), target))
    }
}

/// The files a write's rows name, and the rows written: every `add` action of
/// [`LakeWriteExec`]'s output.
pub fn written_files(batches: &[RecordBatch]) -> Result<(Vec<Add>, u64)> {
    let mut adds = Vec::new();
    let mut rows = 0;
    for batch in batches {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                DataFusionError::Internal(format!("a Delta write's rows lack '{name}'"))
            })
        };
        let files = column(FILES)?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("files is not text".into()))?;
        let counts = column(ROWS)?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| DataFusionError::Internal("rows is not UInt64".into()))?;
        for i in 0..batch.num_rows() {
            let part: Vec<Add> = serde_json::from_str(files.value(i)).map_err(|e| {
                DataFusionError::Internal(format!("a Delta write's add actions: {e}"))
            })?;
            adds.extend(part);
            rows += counts.value(i);
        }
    }
    Ok((adds, rows))
}

impl DisplayAs for LakeWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakeWriteExec")
    }
}

impl ExecutionPlan for LakeWriteExec {
    fn name(&self) -> &str {
        "LakeWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // More partitions would be more tasks, each writing its own (smaller) files.
        vec![false]
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(Self::new(input, self.target.clone()))),
            Err(_) => Err(DataFusionError::Internal(
                "LakeWriteExec has one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, ctx.clone())?;
        let target = self.target.clone();
        let stream =
            futures::stream::once(async move { write_partition(input, &target, &ctx).await });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_schema(),
            stream,
        )))
    }
}

/// Writes one partition's rows as data files of the table at `target`: one row naming them.
async fn write_partition(
    mut input: SendableRecordBatchStream,
    target: &Target,
    ctx: &TaskContext,
) -> Result<RecordBatch> {
    let delta = |e: deltalake::DeltaTableError| DataFusionError::External(Box::new(e));
    let url = url::Url::parse(&target.table)
        .map_err(|e| DataFusionError::Plan(format!("a Delta write's table location: {e}")))?;
    // The executor's store for the table's location (its own credentials).
    let store = ctx.runtime_env().object_store_registry.get_store(&url)?;
    let log_store =
        deltalake::logstore::logstore_with(store, &url, StorageConfig::default()).map_err(delta)?;
    let table = BlindDeltaTable::try_new_with_log_store(log_store)
        .await
        .map_err(delta)?;
    let properties = deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(target.row_group_rows.max(1)))
        .set_data_page_row_count_limit(target.page_rows.max(1))
        .build();
    let mut writer = RecordBatchWriter::for_blind_appends(&table)
        .map_err(delta)?
        .with_writer_properties(properties)
        .with_target_file_size(target.file_size);
    let schema = writer.arrow_schema();
    let mut rows = 0u64;
    let written: Result<()> = async {
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            rows += batch.num_rows() as u64;
            writer
                .write(conform(batch, &schema)?)
                .await
                .map_err(delta)?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        writer.reset();
        return Err(e);
    }
    let adds = writer.flush().await.map_err(delta)?;
    let files = serde_json::to_string(&adds)
        .map_err(|e| DataFusionError::Internal(format!("encoding add actions: {e}")))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![files])),
        Arc::new(UInt64Array::from(vec![rows])),
    ];
    Ok(RecordBatch::try_new(written_schema(), columns)?)
}

/// `batch` as the table's schema: the same columns by position, cast where only the Arrow
/// type of the same values differs (`Utf8View` and `Utf8`); a NULL in a NOT NULL column fails.
fn conform(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch);
    }
    if batch.num_columns() != target.fields().len() {
        return Err(DataFusionError::Execution(format!(
            "a Delta write got {} columns for a table of {}",
            batch.num_columns(),
            target.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                Ok(datafusion::arrow::compute::cast(column, field.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// Whether rows of `from` can be written into a table of `to` by [`LakeWriteExec`]: the same
/// column names in the same order, the same values (Arrow's string and binary views count as
/// their plain types), and no NULL allowed where the table has none.
pub fn writable(from: &Schema, to: &Schema) -> std::result::Result<(), String> {
    if from.fields().len() != to.fields().len() {
        return Err(format!(
            "the query has {} columns, the table {}",
            from.fields().len(),
            to.fields().len()
        ));
    }
    for (a, b) in from.fields().iter().zip(to.fields()) {
        if a.name() != b.name() {
            return Err(format!(
                "column '{}' is '{}' in the table",
                a.name(),
                b.name()
            ));
        }
        if plain(a.data_type()) != plain(b.data_type()) {
            return Err(format!(
                "column '{}' is {} in the query and {} in the table",
                a.name(),
                a.data_type(),
                b.data_type()
            ));
        }
        if a.is_nullable() != b.is_nullable() {
            return Err(format!(
                "column '{}' is nullable in one of the query and the table only",
                a.name()
            ));
        }
    }
    Ok(())
}

fn plain(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}
