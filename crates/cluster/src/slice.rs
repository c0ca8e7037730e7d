//! Which partitions of a scan a task reads.
//!
//! Ballista 55 runs a stage as tasks that each own a slice of the stage's partitions, and
//! restricts each task's plan to its slice by rewriting the leaves it knows (shuffle readers,
//! file and memory scans). A leaf it does not know keeps every partition, and then every task
//! of the stage reads all of them: rows come back once per task. medlake's scans
//! ([`crate::scan::LakeScanExec`], [`crate::external::ExternalScanExec`]) are planned again on
//! the executor, so they cannot be such a leaf. Each takes one input instead: a memory scan of
//! *tokens*, one per partition of the scan, each a row holding its partition's number.
//! Ballista restricts that input as it restricts any memory scan, and the scan's partition `k`
//! reads the partitions named by the tokens of its input's partition `k`: exactly the task's
//! slice. Whatever happens to the tokens on the way, each is one partition read once.

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::TryStreamExt;

/// A scan's tokens: `partitions` partitions, partition `i` one row holding `i`.
pub(crate) fn tokens(partitions: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "partition",
        DataType::UInt32,
        false,
    )]));
    let batches = (0..partitions)
        .map(|i| {
            let i = u32::try_from(i)
                .map_err(|_| DataFusionError::Internal("too many partitions".into()))?;
            let column = Arc::new(UInt32Array::from(vec![i]));
            Ok(vec![RecordBatch::try_new(schema.clone(), vec![column])?])
        })
        .collect::<Result<Vec<_>>>()?;
    let tokens: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(&batches, schema, None)?;
    Ok(tokens)
}

/// The scan partitions (of `partitions`) partition `k` of a scan over `tokens` reads. Tokens
/// come from a peer: anything but one number below `partitions` per token, each once, is an
/// error, never a panic or a partition read twice.
pub(crate) async fn owned(
    tokens: &Arc<dyn ExecutionPlan>,
    k: usize,
    partitions: usize,
    ctx: Arc<TaskContext>,
) -> Result<Vec<usize>> {
    let bad = |what: &str| DataFusionError::Execution(format!("a scan's partition tokens: {what}"));
    if k >= tokens.output_partitioning().partition_count() {
        return Err(bad("no such partition"));
    }
    let batches: Vec<RecordBatch> = tokens.execute(k, ctx)?.try_collect().await?;
    let mut owned = Vec::new();
    for batch in &batches {
        let column = match batch.columns() {
            [column] => column.as_any().downcast_ref::<UInt32Array>(),
            _ => None,
        }
        .ok_or_else(|| bad("not one column of numbers"))?;
        if column.null_count() > 0 {
            return Err(bad("a missing number"));
        }
        for &i in column.values() {
            let i = i as usize;
            if i >= partitions || owned.contains(&i) {
                return Err(bad("a number out of range or repeated"));
            }
            owned.push(i);
        }
    }
    Ok(owned)
}

/// `properties` of a scan whose tokens have `partitions` partitions now.
pub(crate) fn restricted(properties: &PlanProperties, partitions: usize) -> PlanProperties {
    let partitioning = match properties.output_partitioning() {
        Partitioning::Hash(exprs, n) if *n == partitions => Partitioning::Hash(exprs.clone(), *n),
        _ => Partitioning::UnknownPartitioning(partitions),
    };
    properties.clone().with_partitioning(partitioning)
}
