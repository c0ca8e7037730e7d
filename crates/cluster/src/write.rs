//! Data files written where the rows are: on the executors.
//!
//! A refresh on a cluster ends in [`LakeWriteExec`]: each task of the plan's last stage writes
//! the rows of its partition as Parquet data files into the table's folder, through the
//! executor's own object store (credentials never travel in a plan), and returns the Delta
//! `add` actions of the files it wrote as one row. Nothing is committed there: the server
//! collects the rows and commits every file at once on top of the version it read, so the
//! write is one atomic commit; a job that fails or is cancelled leaves files no version
//! refers to (VACUUM's to remove), never a partial table.
//!
//! A refresh with expectations checks its rows there too ([`Checking`]): the rows a rule keeps
//! out are not written, quarantined rows are written into the quarantine table's folder (its
//! `add` actions come back in the same row, for the server to commit before the view's), and
//! the counts come back for the refresh's report.

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
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::protobuf::PhysicalExprNode;
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
/// The column with the number of rows checked against the expectations.
pub const CHECKED: &str = "checked";
/// The column with the violations per rule (a JSON array, in the rules' order).
pub const VIOLATIONS: &str = "violations";
/// The column with the quarantine table's `add` actions (a JSON array).
pub const QUARANTINED: &str = "quarantined";

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
    /// The columns whose row groups carry a bloom filter (the table's
    /// `medlake.bloomFilterColumns`).
    #[serde(default)]
    pub bloom_columns: Vec<String>,
}

/// A refresh's expectations, checked by the write ([`crate::checks`]). `Fail` rules are not
/// checked there (a refresh with one checks on its server, which reports the rule).
#[derive(Debug, Clone)]
pub struct Checking {
    pub rules: Vec<crate::checks::Rule>,
    pub refresh_id: String,
    /// The quarantine table, when a rule quarantines.
    pub quarantine: Option<Target>,
}

/// Writes its input's rows into a Delta table's folder, one task per partition, and returns
/// per partition one row: the `add` actions of the files written ([`FILES`]), the rows
/// ([`ROWS`]), and what the expectations found ([`CHECKED`], [`VIOLATIONS`], [`QUARANTINED`]).
pub struct LakeWriteExec {
    input: Arc<dyn ExecutionPlan>,
    target: Target,
    checking: Option<Checking>,
    properties: Arc<PlanProperties>,
}

/// The wire form of a [`LakeWriteExec`].
#[derive(Serialize, Deserialize)]
struct Wire {
    target: Target,
    checking: Option<WireChecking>,
}

#[derive(Serialize, Deserialize)]
struct WireChecking {
    /// Name, action and the predicate (datafusion-proto's `PhysicalExprNode`).
    rules: Vec<(String, crate::checks::Action, Vec<u8>)>,
    refresh_id: String,
    quarantine: Option<Target>,
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
        Field::new(CHECKED, DataType::UInt64, false),
        Field::new(VIOLATIONS, DataType::Utf8, false),
        Field::new(QUARANTINED, DataType::Utf8, false),
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
            checking: None,
            properties: Arc::new(properties),
        }
    }

    /// This write checking its rows first.
    pub fn checking(mut self, checking: Checking) -> Self {
        self.checking = Some(checking);
        self
    }

    /// Where it writes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    pub(crate) fn encode(
        &self,
        buf: &mut Vec<u8>,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<()> {
        let checking = match &self.checking {
            None => None,
            Some(c) => Some(WireChecking {
                rules: c
                    .rules
                    .iter()
                    .map(|r| {
                        let node = serialize_physical_expr(&r.predicate, codec)?;
                        Ok((
                            r.name.clone(),
                            r.action,
                            prost::Message::encode_to_vec(&node),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?,
                refresh_id: c.refresh_id.clone(),
                quarantine: c.quarantine.clone(),
            }),
        };
        let wire = Wire {
            target: self.target.clone(),
            checking,
        };
        serde_json::to_writer(buf, &wire)
            .map_err(|e| DataFusionError::Internal(format!("encoding a Delta write: {e}")))
    }

    pub(crate) fn decode(
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        codec: &dyn PhysicalExtensionCodec,
    ) -> Result<Self> {
        let wire: Wire = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("decoding a Delta write: {e}")))?;
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!(
                "a Delta write has one input, not {}",
                inputs.len()
            )));
        };
        let write = Self::new(input.clone(), wire.target);
        let Some(c) = wire.checking else {
            return Ok(write);
        };
        let schema = input.schema();
        let rules = c
            .rules
            .into_iter()
            .map(|(name, action, bytes)| {
                let node: PhysicalExprNode = prost::Message::decode(bytes.as_slice())
                    .map_err(|e| DataFusionError::Internal(format!("an expectation: {e}")))?;
                let predicate = parse_physical_expr(&node, ctx, &schema, codec)?;
                Ok(crate::checks::Rule {
                    name,
                    action,
                    predicate,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(write.checking(Checking {
            rules,
            refresh_id: c.refresh_id,
            quarantine: c.quarantine,
        }))
    }
}

/// What a [`LakeWriteExec`]'s rows say, summed over its partitions.
#[derive(Debug, Default)]
pub struct Written {
    /// The view's new files.
    pub adds: Vec<Add>,
    /// Rows written into them.
    pub rows: u64,
    /// Rows checked against the expectations (0 without [`Checking`]).
    pub checked: u64,
    /// Violations per rule.
    pub violations: Vec<u64>,
    /// The quarantine table's new files.
    pub quarantined: Vec<Add>,
}

impl Written {
    /// The rows of the quarantine's new files (from their statistics, which this writer
    /// always writes).
    pub fn quarantined_rows(&self) -> u64 {
        self.quarantined
            .iter()
            .filter_map(|add| {
                let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref()?).ok()?;
                stats.get("numRecords")?.as_u64()
            })
            .sum()
    }
}

/// Every `add` action and count of [`LakeWriteExec`]'s output.
pub fn written(batches: &[RecordBatch]) -> Result<Written> {
    let mut out = Written::default();
    for batch in batches {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| DataFusionError::Internal(format!("a Delta write's '{name}'")))
        };
        let count = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                .ok_or_else(|| DataFusionError::Internal(format!("a Delta write's '{name}'")))
        };
        let json = |what: &str, value: &str| {
            serde_json::from_str::<serde_json::Value>(value)
                .map_err(|e| DataFusionError::Internal(format!("a Delta write's {what}: {e}")))
        };
        let (files, rows, checked) = (text(FILES)?, count(ROWS)?, count(CHECKED)?);
        let (violations, quarantined) = (text(VIOLATIONS)?, text(QUARANTINED)?);
        for i in 0..batch.num_rows() {
            let adds = |column: &StringArray| -> Result<Vec<Add>> {
                serde_json::from_value(json("add actions", column.value(i))?)
                    .map_err(|e| DataFusionError::Internal(format!("add actions: {e}")))
            };
            out.adds.extend(adds(files)?);
            out.quarantined.extend(adds(quarantined)?);
            out.rows += rows.value(i);
            out.checked += checked.value(i);
            let found: Vec<u64> = serde_json::from_value(json("violations", violations.value(i))?)
                .map_err(|e| DataFusionError::Internal(format!("violations: {e}")))?;
            out.violations
                .resize(out.violations.len().max(found.len()), 0);
            for (sum, n) in out.violations.iter_mut().zip(found) {
                *sum += n;
            }
        }
    }
    Ok(out)
}

impl DisplayAs for LakeWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "LakeWriteExec")?;
        if let Some(c) = &self.checking {
            let rules: Vec<String> = c
                .rules
                .iter()
                .map(|r| format!("{} {:?} {}", r.name, r.action, r.predicate))
                .collect();
            write!(
                f,
                ": checks=[{}], quarantine={}",
                rules.join("; "),
                c.quarantine.is_some()
            )?;
        }
        Ok(())
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
            Ok([input]) => {
                let mut write = Self::new(input, self.target.clone());
                write.checking = self.checking.clone();
                Ok(Arc::new(write))
            }
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
        let checking = self.checking.clone();
        let stream = futures::stream::once(async move {
            write_partition(input, &target, checking.as_ref(), &ctx).await
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_schema(),
            stream,
        )))
    }
}

/// A writer of data files into the table at `target`, through this process's store for it.
async fn writer_for(target: &Target, ctx: &TaskContext) -> Result<RecordBatchWriter> {
    let url = url::Url::parse(&target.table)
        .map_err(|e| DataFusionError::Plan(format!("a Delta write's table location: {e}")))?;
    // The executor's store for the table's location (its own credentials).
    let store = ctx.runtime_env().object_store_registry.get_store(&url)?;
    let log_store =
        deltalake::logstore::logstore_with(store, &url, StorageConfig::default()).map_err(delta)?;
    let table = BlindDeltaTable::try_new_with_log_store(log_store)
        .await
        .map_err(delta)?;
    let properties = medlake_lake::parquet_layout(
        target.row_group_rows,
        target.page_rows,
        &target.bloom_columns,
    );
    Ok(RecordBatchWriter::for_blind_appends(&table)
        .map_err(delta)?
        .with_writer_properties(properties)
        .with_target_file_size(target.file_size))
}

fn delta(e: deltalake::DeltaTableError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Writes one partition's rows (checked first, with `checking`) as data files of the table at
/// `target`: one row naming them and what the checks found.
async fn write_partition(
    mut input: SendableRecordBatchStream,
    target: &Target,
    checking: Option<&Checking>,
    ctx: &TaskContext,
) -> Result<RecordBatch> {
    let mut writer = writer_for(target, ctx).await?;
    let mut quarantine = match checking.and_then(|c| c.quarantine.as_ref()) {
        Some(q) => Some(writer_for(q, ctx).await?),
        None => None,
    };
    let schema = writer.arrow_schema();
    let rules = checking.map_or(&[][..], |c| c.rules.as_slice());
    let (mut rows, mut checked) = (0u64, 0u64);
    let mut violations = vec![0u64; rules.len()];
    let written: Result<()> = async {
        while let Some(batch) = input.next().await {
            let mut batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            if let Some(c) = checking {
                checked += batch.num_rows() as u64;
                let found = crate::checks::check(&c.rules, batch, &c.refresh_id)?;
                for (sum, n) in violations.iter_mut().zip(&found.violations) {
                    *sum += n;
                }
                if let Some((rule, n)) = found.failed {
                    return Err(DataFusionError::Execution(format!(
                        "expectation '{}' failed for {n} row(s)",
                        c.rules[rule].name
                    )));
                }
                if let Some(q) = found.quarantined {
                    let Some(quarantine) = quarantine.as_mut() else {
                        return Err(DataFusionError::Internal(
                            "a quarantine rule without a quarantine table".into(),
                        ));
                    };
                    let q = conform(q, &quarantine.arrow_schema())?;
                    quarantine.write(q).await.map_err(delta)?;
                }
                batch = found.kept;
            }
            rows += batch.num_rows() as u64;
            if batch.num_rows() > 0 {
                writer
                    .write(conform(batch, &schema)?)
                    .await
                    .map_err(delta)?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        writer.reset();
        if let Some(q) = quarantine.as_mut() {
            q.reset();
        }
        return Err(e);
    }
    let adds = writer.flush().await.map_err(delta)?;
    let quarantined = match quarantine.as_mut() {
        Some(q) => q.flush().await.map_err(delta)?,
        None => Vec::new(),
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![json(&adds)?])),
        Arc::new(UInt64Array::from(vec![rows])),
        Arc::new(UInt64Array::from(vec![checked])),
        Arc::new(StringArray::from(vec![json(&violations)?])),
        Arc::new(StringArray::from(vec![json(&quarantined)?])),
    ];
    Ok(RecordBatch::try_new(written_schema(), columns)?)
}

/// A value as JSON text for a write's row.
fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| DataFusionError::Internal(format!("encoding a write's row: {e}")))
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
