//! What a refresh plan would read: the rows the scans of its planned queries read, from the
//! statistics of the files left once filters are pushed down and Delta's scans skip files on
//! their statistics (the kernel's data skipping, at planning). `REFRESH POLICY AUTO` compares
//! that for an incremental plan that recomputes keys or regions with what the view's query
//! reads in full ([`crate::refresh::AUTO_READ_FRACTION`]).
//!
//! It is an upper bound of what execution reads: Parquet row groups and pages skipped inside
//! a kept file count in full.

use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// The rows the scans of `plans` read, summed over the plans (each planned and optimized as
/// it would run, nothing executed); `None` when a plan fails to plan or a scan does not know
/// its row count (an external table).
pub(crate) async fn rows_read(ctx: &SessionContext, plans: &[LogicalPlan]) -> Option<u64> {
    read(ctx, plans, false).await
}

/// [`rows_read`], counting scans that do not know their row count as reading nothing (a
/// change feed's scans): a lower bound, for the incremental side of a comparison.
pub(crate) async fn rows_read_at_least(ctx: &SessionContext, plans: &[LogicalPlan]) -> Option<u64> {
    read(ctx, plans, true).await
}

async fn read(ctx: &SessionContext, plans: &[LogicalPlan], unknown_as_zero: bool) -> Option<u64> {
    let mut total = 0u64;
    for plan in plans {
        let physical = ctx.state().create_physical_plan(plan).await.ok()?;
        total = total.checked_add(scanned(physical.as_ref(), unknown_as_zero)?)?;
    }
    Some(total)
}

/// The row counts of the leaves of `plan` (its scans, in-memory tables and empty relations);
/// a leaf without one counts as 0 when `unknown_as_zero`, else makes the whole `None`.
fn scanned(plan: &dyn ExecutionPlan, unknown_as_zero: bool) -> Option<u64> {
    let children = plan.children();
    if children.is_empty() {
        let rows = StatisticsContext::new()
            .compute(plan, &StatisticsArgs::new())
            .ok()
            .and_then(|stats| {
                stats
                    .num_rows
                    .get_value()
                    .and_then(|n| u64::try_from(*n).ok())
            });
        return if unknown_as_zero {
            Some(rows.unwrap_or(0))
        } else {
            rows
        };
    }
    children
        .into_iter()
        .map(|c| scanned(c.as_ref(), unknown_as_zero))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use std::sync::Arc;

    fn table(rows: i64) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    #[tokio::test]
    async fn the_scans_of_every_plan_are_summed() {
        let ctx = SessionContext::new();
        ctx.register_table("a", table(7)).unwrap();
        ctx.register_table("b", table(5)).unwrap();
        let join = ctx
            .sql("SELECT a.k FROM a JOIN b ON a.k = b.k")
            .await
            .unwrap()
            .into_unoptimized_plan();
        let one = ctx
            .sql("SELECT k FROM a WHERE k > 3")
            .await
            .unwrap()
            .into_unoptimized_plan();
        assert_eq!(rows_read(&ctx, std::slice::from_ref(&join)).await, Some(12));
        // An in-memory table is read whole whatever the filter.
        assert_eq!(rows_read(&ctx, &[join, one]).await, Some(19));
        assert_eq!(rows_read(&ctx, &[]).await, Some(0));
    }
}
