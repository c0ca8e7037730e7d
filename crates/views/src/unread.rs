//! Changes a view cannot see: an input that changed only in columns the view's query does not
//! read (an EHR row whose `modified_at` moved, a latest-version view that rewrote a row with a
//! new timestamp) leaves the view's result as it was, so it is no reason to recompute anything.
//!
//! The view's query reads, of each input, the columns its optimized plan scans (projections
//! and pushed-down filters, subqueries included). An input's change is unseen when its rows
//! gained and lost, cut to those columns, cancel out as multisets: every gained row has a lost
//! twin and the other way round. Then the input holds, in those columns, the same rows as
//! before, and the view would compute the same result from either version.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SessionContext;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::{Expr, LogicalPlan, col, lit};

use medlake_lake::TableName;

use crate::error::Result;
use crate::incremental;

/// More changed rows than this (gained or lost) and a change is not looked at row by row: it
/// is taken as seen.
pub(crate) const MAX_ROWS: usize = 1_000_000;

/// The columns of `table` that `plan` reads (in any scan of it, subqueries included), or
/// `None` when it reads all of them or does not scan the table at all (nothing to prune).
pub(crate) fn columns_read(
    plan: &LogicalPlan,
    table: &TableName,
    all: &[String],
    default_schema: &str,
) -> Option<BTreeSet<String>> {
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut scans = 0usize;
    let mut every = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && incremental::matches(&scan.table_name, table, default_schema)
        {
            scans += 1;
            match &scan.projection {
                None => every = true,
                Some(indices) => {
                    let schema = scan.source.schema();
                    for i in indices {
                        match schema.fields().get(*i) {
                            Some(field) => {
                                read.insert(field.name().clone());
                            }
                            None => every = true,
                        }
                    }
                }
            }
            for filter in &scan.filters {
                for column in filter.column_refs() {
                    read.insert(column.name.clone());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let unread = all.iter().any(|c| !read.contains(c));
    (scans > 0 && !every && unread).then_some(read)
}

/// The row count of each of `sides`, or `None` when one holds more than [`MAX_ROWS`] rows
/// (counted no further).
pub(crate) async fn sizes_within(
    ctx: &SessionContext,
    sides: &[&Arc<dyn TableProvider>],
) -> Result<Option<Vec<usize>>> {
    let limit = MAX_ROWS + 1;
    let mut counts = Vec::new();
    for side in sides {
        let rows = ctx
            .read_table((*side).clone())?
            .limit(0, Some(limit))?
            .count()
            .await?;
        if rows >= limit {
            return Ok(None);
        }
        counts.push(rows);
    }
    Ok(Some(counts))
}

/// Whether the rows `inserted` and `removed` (providers with the input's columns), cut to
/// `columns`, cancel out as multisets. `false` when either holds more than [`MAX_ROWS`] rows.
pub(crate) async fn cancel_out(
    ctx: &SessionContext,
    inserted: &Arc<dyn TableProvider>,
    removed: &Arc<dyn TableProvider>,
    columns: &BTreeSet<String>,
) -> Result<bool> {
    let Some(counts) = sizes_within(ctx, &[inserted, removed]).await? else {
        return Ok(false);
    };
    // Multisets of different sizes differ (an append, a delete).
    if counts[0] != counts[1] {
        return Ok(false);
    }
    let picked: Vec<Expr> = columns
        .iter()
        .map(|c| col(datafusion::common::Column::new_unqualified(c)))
        .collect();
    let weighted = |provider: &Arc<dyn TableProvider>, weight: i64| -> Result<_> {
        let mut select = picked.clone();
        select.push(lit(weight).alias("__weight"));
        Ok(ctx.read_table(provider.clone())?.select(select)?)
    };
    let both = weighted(inserted, 1)?.union(weighted(removed, -1)?)?;
    let net = both
        .aggregate(picked, vec![sum(col("__weight")).alias("__net")])?
        .filter(col("__net").not_eq(lit(0i64)))?
        .limit(0, Some(1))?
        .count()
        .await?;
    Ok(net == 0)
}
