//! A refresh's write on a cluster: when nothing between the view's query and its Delta write
//! must run on this server (no expectation, no sort, no erased identifiers to hold back), the
//! executors that compute the rows also write them as data files ([`LakeWriteExec`]) and this
//! server commits the files at once, on top of the view version the refresh read: one
//! atomic commit, as when it writes them itself.

use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, collect};
use medlake_cluster::{LakeWriteExec, RemoteExec, StaysHere, Target};
use medlake_lake::{CommitOptions, TableName, Warehouse, WriteMode, WriteOutcome};
use tracing::{debug, info};

use crate::error::Result;
use crate::expect::unchecked_remote;

/// Writes the rows of `input` (a refresh's checked query) into `name` on the cluster its
/// query runs on. `None`: the query runs here or something must happen here between it and
/// the write; write here then.
pub(crate) async fn write_on_cluster(
    warehouse: &Warehouse,
    name: &TableName,
    input: &LogicalPlan,
    mode: WriteMode,
    options: &CommitOptions,
    state: &SessionState,
) -> Result<Option<WriteOutcome>> {
    let Some((cluster, query)) = unchecked_remote(input) else {
        return Ok(None);
    };
    let target = match warehouse.write_elsewhere(name, options).await? {
        Ok(target) => target,
        Err(reason) => {
            debug!(view = %name, %reason, "the refresh writes its data files on this server");
            return Ok(None);
        }
    };
    if let Err(reason) = medlake_cluster::write::writable(&query.schema(), &target.schema) {
        debug!(view = %name, %reason, "the refresh writes its data files on this server");
        return Ok(None);
    }
    let write: Arc<dyn ExecutionPlan> = Arc::new(LakeWriteExec::new(
        query,
        Target {
            table: target.table,
            row_group_rows: target.row_group_rows,
            page_rows: target.page_rows,
            file_size: target.file_size,
        },
    ));
    let remote = match RemoteExec::new(&cluster, write, state.config()) {
        Ok(remote) => remote,
        Err(StaysHere(reason)) => {
            debug!(view = %name, %reason, "the refresh writes its data files on this server");
            return Ok(None);
        }
    };
    let rows = collect(Arc::new(remote), state.task_ctx()).await?;
    let (adds, rows) = medlake_cluster::write::written_files(&rows)?;
    let files = adds.len();
    let written = warehouse
        .commit_written(name, adds, rows, mode, options)
        .await?;
    info!(
        view = %name,
        files,
        rows,
        version = written.version,
        scheduler = cluster.scheduler(),
        "the cluster wrote the refresh's data files; committed here"
    );
    Ok(Some(written))
}
