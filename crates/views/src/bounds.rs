//! Where the rows a DISTINCT view gains can lie, so the rows it holds are read only there.
//!
//! A `SELECT DISTINCT` view whose inputs only gained rows appends the distinct new rows it
//! does not hold yet: the new rows minus the rows held (an anti-join). Without a bound that
//! reads the whole view at every refresh (35M rows of `silver.readings` for a minute of new
//! readings). But a view column that holds the values of an input expression (a key pair
//! of [`crate::lineage`]: `taken_at` of `silver.readings` is `taken_at` of each reading
//! channel) can only hold, in a new row, a value that expression takes on the input's new
//! rows. So the held rows that could equal a new row lie, for each such column, between the
//! least and the greatest value of the new rows (or are NULL where a new row is), and the
//! anti-join reads only those: the scan skips the files and row groups outside by their
//! statistics. Exact for any data; it pays when the view's files are ordered by a bounded
//! column (appended in time order, or `CLUSTER BY`).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionContext;
use datafusion::functions_aggregate::expr_fn::{count, max, min};
use datafusion::logical_expr::{
    Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, cast, col, lit,
};
use datafusion::physical_plan::collect;
use medlake_lake::TableName;

use crate::incremental::{stored_type, strip_sort, totally_ordered};
use crate::lineage;

/// The values one view column takes in the new rows.
#[derive(Default)]
struct Bound {
    least: Option<ScalarValue>,
    greatest: Option<ScalarValue>,
    null: bool,
}

impl Bound {
    fn widen(&mut self, least: ScalarValue, greatest: ScalarValue, null: bool) {
        self.null |= null;
        if least.is_null() {
            return;
        }
        let lower = |a: &ScalarValue| least.partial_cmp(a).is_some_and(|o| o.is_lt());
        if self.least.as_ref().is_none_or(lower) {
            self.least = Some(least.clone());
        }
        let higher = |a: &ScalarValue| greatest.partial_cmp(a).is_some_and(|o| o.is_gt());
        if self.greatest.as_ref().is_none_or(higher) {
            self.greatest = Some(greatest);
        }
    }

    /// The predicate over the view's column `name`.
    fn predicate(&self, name: &str) -> Expr {
        let column = col(Column::new_unqualified(name));
        let range = match (&self.least, &self.greatest) {
            (Some(least), Some(greatest)) => Some(
                column
                    .clone()
                    .between(lit(stored_type(least)), lit(stored_type(greatest))),
            ),
            _ => None,
        };
        match (range, self.null) {
            (Some(range), true) => range.or(column.is_null()),
            (Some(range), false) => range,
            (None, true) => column.is_null(),
            (None, false) => lit(false),
        }
    }
}

/// A predicate over the view's columns that every row the view's query `plan` gains from the
/// `gained` rows of its changed inputs satisfies (see the module's comment); `None`: no
/// column of the view is bounded by every changed input (or a bound could not be computed).
pub(crate) async fn gained_rows_bound(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    gained: &[(&TableName, Arc<dyn TableProvider>)],
    default_schema: &str,
) -> Option<Expr> {
    let plan = strip_sort(plan);
    let schema = plan.schema();
    let mut bounds: Option<BTreeMap<String, Bound>> = None;
    for (table, rows) in gained {
        let keys = lineage::read_keys(plan, table, default_schema).ok()?;
        let [key] = keys.as_slice() else {
            return None;
        };
        // Each view column of an ordered type with the input expression holding its values,
        // among those every earlier input bounds.
        let mut columns: Vec<(String, DataType, Expr)> = Vec::new();
        for (view, input, reach) in &key.pairs {
            let Expr::Column(c) = view else { continue };
            if reach.is_some() {
                continue;
            }
            let Ok(data_type) = view.get_type(schema.as_ref()) else {
                continue;
            };
            let earlier = bounds.as_ref().is_none_or(|b| b.contains_key(&c.name));
            if totally_ordered(&data_type) && earlier && !columns.iter().any(|(n, ..)| *n == c.name)
            {
                columns.push((c.name.clone(), data_type, input.clone()));
            }
        }
        if columns.is_empty() {
            return None;
        }
        let mut aggregates = Vec::new();
        for (i, (_, data_type, input)) in columns.iter().enumerate() {
            let value = cast(input.clone(), data_type.clone());
            aggregates.push(min(value.clone()).alias(format!("least_{i}")));
            aggregates.push(max(value.clone()).alias(format!("greatest_{i}")));
            aggregates.push(count(value).alias(format!("values_{i}")));
        }
        aggregates.push(count(lit(1)).alias("rows"));
        let query = LogicalPlanBuilder::scan("gained", provider_as_source(rows.clone()), None)
            .ok()?
            .aggregate(Vec::<Expr>::new(), aggregates)
            .ok()?
            .build()
            .ok()?;
        let physical = ctx.state().create_physical_plan(&query).await.ok()?;
        let batches = collect(physical, ctx.task_ctx()).await.ok()?;
        let batch = batches.iter().find(|b| b.num_rows() > 0)?;
        let at = |column: usize| ScalarValue::try_from_array(batch.column(column), 0).ok();
        let rows = match at(columns.len() * 3)? {
            ScalarValue::Int64(Some(n)) => n,
            _ => return None,
        };
        let mut next: BTreeMap<String, Bound> = BTreeMap::new();
        for (i, (name, ..)) in columns.iter().enumerate() {
            let mut bound = bounds
                .as_mut()
                .and_then(|b| b.remove(name))
                .unwrap_or_default();
            if rows > 0 {
                let values = match at(i * 3 + 2)? {
                    ScalarValue::Int64(Some(n)) => n,
                    _ => return None,
                };
                bound.widen(at(i * 3)?, at(i * 3 + 1)?, values < rows);
            }
            next.insert(name.clone(), bound);
        }
        bounds = Some(next);
    }
    bounds?
        .iter()
        .map(|(name, bound)| bound.predicate(name))
        .reduce(Expr::and)
}
