//! Small inputs that only the server can read, shipped with the plan.
//!
//! Some scans cannot run on an executor: external tables (their connectors hold connections
//! and resolved secrets), medlake's system tables. When such a scan is a leaf of a plan that also reads Delta tables, and its
//! rows are few (at most [`INLINE_BYTES`] in Arrow memory), the server reads it while planning
//! and puts its rows into the plan as an in-memory scan (DataFusion's `MemorySourceConfig`,
//! which crosses as data): the typical join of a large Delta table with a small dimension
//! from the EHR then runs on the cluster. A larger one keeps the whole query on the server.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;

use crate::Codec;
use crate::scan::LakeScanExec;

/// The most Arrow memory of rows read on the server and shipped in one plan.
pub const INLINE_BYTES: usize = 64 << 20;

/// `plan` with each leaf that cannot run on an executor replaced by its rows, while they fit
/// in what is left of [`INLINE_BYTES`]; leaves that do not fit are left as they are (the
/// plan then stays on the server).
pub(crate) async fn inline_leaves(
    plan: Arc<dyn ExecutionPlan>,
    codec: &Codec,
    ctx: Arc<TaskContext>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut budget = INLINE_BYTES;
    inline(plan, codec, &ctx, &mut budget).await
}

fn inline<'a>(
    plan: Arc<dyn ExecutionPlan>,
    codec: &'a Codec,
    ctx: &'a Arc<TaskContext>,
    budget: &'a mut usize,
) -> futures::future::BoxFuture<'a, Result<Arc<dyn ExecutionPlan>>> {
    Box::pin(async move {
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        if children.is_empty() {
            // File scans of this server's stores (change-feed reads) stay as they are: the
            // plan then stays here.
            if crosses(&plan, codec) || crate::guard::refused(&plan).is_some() {
                return Ok(plan);
            }
            return match read_capped(&plan, ctx, budget).await? {
                Some(partitions) => {
                    tracing::debug!(
                        node = plan.name(),
                        "a scan only this server can run is shipped with the plan as its rows"
                    );
                    let memory: Arc<dyn ExecutionPlan> =
                        MemorySourceConfig::try_new_exec(&partitions, plan.schema(), None)?;
                    Ok(memory)
                }
                None => Ok(plan),
            };
        }
        let mut changed = false;
        let mut new_children = Vec::with_capacity(children.len());
        for child in children {
            let new = inline(child.clone(), codec, ctx, budget).await?;
            changed |= !Arc::ptr_eq(&new, &child);
            new_children.push(new);
        }
        if changed {
            datafusion::physical_plan::replace_children_if_necessary(plan, new_children)
        } else {
            Ok(plan)
        }
    })
}

/// Whether a leaf runs on an executor as it is.
fn crosses(leaf: &Arc<dyn ExecutionPlan>, codec: &Codec) -> bool {
    if leaf.downcast_ref::<LakeScanExec>().is_some() {
        return true;
    }
    crate::guard::refused(leaf).is_none()
        && PhysicalPlanNode::try_from_physical_plan(leaf.clone(), codec).is_ok()
}

/// Every partition's rows of `leaf`, if they fit in `budget` (which they then use up). The
/// partitions are read together, as an execution reads them (some scans' partitions share
/// their work and wait for each other).
async fn read_capped(
    leaf: &Arc<dyn ExecutionPlan>,
    ctx: &Arc<TaskContext>,
    budget: &mut usize,
) -> Result<Option<Vec<Vec<RecordBatch>>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let limit = *budget;
    let used = Arc::new(AtomicUsize::new(0));
    let reads = (0..leaf.output_partitioning().partition_count()).map(|partition| {
        let used = used.clone();
        let stream = leaf.execute(partition, ctx.clone());
        async move {
            let mut stream = stream?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.try_next().await? {
                let size = batch.get_array_memory_size();
                if used.fetch_add(size, Ordering::Relaxed) + size > limit {
                    // Too large: stop reading (the others stop at their next batch).
                    return Ok(None);
                }
                batches.push(batch);
            }
            Ok::<_, datafusion::error::DataFusionError>(Some(batches))
        }
    });
    let partitions: Option<Vec<Vec<RecordBatch>>> = futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .collect();
    if partitions.is_some() {
        *budget -= used.load(Ordering::Relaxed);
    }
    Ok(partitions)
}
