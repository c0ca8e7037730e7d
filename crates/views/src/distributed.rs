//! A refresh's write on a cluster: when nothing between the view's query and its Delta write
//! must run on this server (no sort, no erased identifiers to hold back, no `FAIL UPDATE`
//! rule, no quarantine region to replace), the executors that compute the rows also check
//! them against the view's expectations and write them as data files ([`LakeWriteExec`]),
//! quarantined rows into the quarantine table's folder; this server commits the quarantine's
//! files, then the view's, each at once, on top of the versions the refresh read: the same
//! commits as when it writes them itself.

use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, collect};
use medlake_cluster::checks::Action;
use medlake_cluster::{Checking, LakeWriteExec, RemoteExec, StaysHere, Target};
use medlake_lake::{CommitOptions, TableName, Warehouse, WriteMode, WriteOutcome, WriteTarget};
use tracing::{debug, info};

use crate::error::Result;
use crate::expect::{Checks, remote_of};

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
    let Some((cluster, query, checks)) = remote_of(input) else {
        return Ok(None);
    };
    let here = |reason: &str| {
        debug!(view = %name, %reason, "the refresh writes its data files on this server");
        Ok(None)
    };
    let target = match warehouse.write_elsewhere(name, options).await? {
        Ok(target) => target,
        Err(reason) => return here(&reason),
    };
    if let Err(reason) = medlake_cluster::write::writable(&query.schema(), &target.schema) {
        return here(&reason);
    }
    let checking = match checking(warehouse, &checks, &query).await? {
        Ok(checking) => checking,
        Err(reason) => return here(&reason),
    };
    let quarantine = checking
        .as_ref()
        .and_then(|c| c.quarantine.as_ref().map(|_| checks.quarantine()));
    let mut write = LakeWriteExec::new(query, target_of(target));
    if let Some(checking) = checking {
        write = write.checking(checking);
    }
    let write: Arc<dyn ExecutionPlan> = Arc::new(write);
    let remote = match RemoteExec::new(&cluster, write, state.config()) {
        Ok(remote) => remote,
        Err(StaysHere(reason)) => return here(&reason),
    };
    let rows = collect(Arc::new(remote), state.task_ctx()).await?;
    let written = medlake_cluster::write::written(&rows)?;
    if !checks.spec().is_empty() {
        let removed = written.checked.saturating_sub(written.rows);
        checks.add_counts(written.checked, &written.violations, removed);
    }
    // The quarantine first: no quarantined row is lost if this server stops between the two.
    if let Some(Some((table, replace, _))) = quarantine {
        let quarantine_mode = if replace {
            WriteMode::Overwrite
        } else {
            WriteMode::Append
        };
        if replace || !written.quarantined.is_empty() {
            let rows = written.quarantined_rows();
            warehouse
                .commit_written(
                    table,
                    written.quarantined,
                    rows,
                    quarantine_mode,
                    &CommitOptions::default(),
                )
                .await?;
        }
    }
    let files = written.adds.len();
    let committed = warehouse
        .commit_written(name, written.adds, written.rows, mode, options)
        .await?;
    info!(
        view = %name,
        files,
        rows = written.rows,
        checked = written.checked,
        version = committed.version,
        scheduler = cluster.scheduler(),
        "the cluster wrote the refresh's data files; committed here"
    );
    Ok(Some(committed))
}

fn target_of(target: WriteTarget) -> Target {
    Target {
        table: target.table,
        row_group_rows: target.row_group_rows,
        page_rows: target.page_rows,
        file_size: target.file_size,
        bloom_columns: target.bloom_columns,
    }
}

/// What the executors check while writing, `None` when the refresh has no expectation; or
/// why the rows must be checked here.
async fn checking(
    warehouse: &Warehouse,
    checks: &Checks,
    query: &Arc<dyn ExecutionPlan>,
) -> Result<std::result::Result<Option<Checking>, String>> {
    let rules = checks.spec();
    if rules.iter().any(|r| r.action == Action::Fail) {
        return Ok(Err("a FAIL UPDATE rule is checked here".into()));
    }
    let quarantine = match checks.quarantine() {
        None => None,
        Some((_, _, Some(_))) => {
            return Ok(Err(
                "the quarantine's rows of a region are replaced here".into()
            ));
        }
        Some((table, _, None)) => {
            if !warehouse.table_exists(table).await? {
                return Ok(Err("the quarantine table is created here".into()));
            }
            let target = match warehouse
                .write_elsewhere(table, &CommitOptions::default())
                .await?
            {
                Ok(target) => target,
                Err(reason) => return Ok(Err(format!("the quarantine table: {reason}"))),
            };
            let rows = medlake_cluster::checks::quarantine_schema(&query.schema());
            if let Err(reason) = medlake_cluster::write::writable(&rows, &target.schema) {
                return Ok(Err(format!("the quarantine table: {reason}")));
            }
            Some(target_of(target))
        }
    };
    if rules.is_empty() && quarantine.is_none() {
        return Ok(Ok(None));
    }
    Ok(Ok(Some(Checking {
        rules: rules.to_vec(),
        refresh_id: checks.refresh_id.clone(),
        quarantine,
    })))
}
