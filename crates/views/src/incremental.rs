//! Which view queries can be refreshed incrementally, and the plans that do it.
//!
//! A refresh is incremental when exactly one input changed since the last refresh, it only
//! gained rows (appends), and the query has one of two shapes:
//!
//! - **linear**: projections, filters, aliases, unions and joins over the changed input,
//!   where the changed input sits on the preserved side of any outer join and every other
//!   input is unchanged. The new rows of the view are the query over the input's new rows:
//!   they are appended.
//! - **grouped**: a linear part under one `GROUP BY` (optionally under a projection, with
//!   every group key among the view's columns, no HAVING). The groups the new rows touch
//!   are recomputed from the whole input and replace their old rows; every other group is
//!   kept as it is. Any aggregate function works, because touched groups are recomputed.
//!
//! - **distinct**: `SELECT DISTINCT` over a linear part. The view gains the distinct rows of
//!   the query over the new input rows that it does not hold yet (an anti-join against the
//!   view, NULLs equal): appended, so views downstream stay incremental too.
//!
//! Everything else (DISTINCT ON, window functions, LIMIT, HAVING, subqueries over the changed
//! input, a changed input read twice, two changed inputs, deletes or overwrites upstream) is
//! refreshed fully, and the refresh history says why.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ResolvedTableReference, ScalarValue, TableReference};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    Aggregate, Distinct, EmptyRelation, Expr, Filter, JoinType, LogicalPlan, Projection,
    TableScanBuilder, TableSource, Union, Volatility, col, lit,
};
use medlake_lake::TableName;

/// What an incremental refresh does.
pub(crate) enum Shape {
    /// Append the query over the new rows.
    Linear,
    /// `SELECT DISTINCT` over a linear query: append the distinct new rows the view does not
    /// hold yet.
    Distinct,
    /// Recompute the groups the new rows touch.
    Grouped(Box<Grouped>),
}

/// The pieces of a grouped view.
pub(crate) struct Grouped {
    /// The view's query without a top-level ORDER BY.
    pub plan: LogicalPlan,
    /// The aggregate node under the (optional) top projection.
    pub aggregate: Aggregate,
    /// For each group expression, the view column holding it.
    pub key_columns: Vec<String>,
}

fn matches(reference: &TableReference, table: &TableName, default_schema: &str) -> bool {
    let ResolvedTableReference {
        schema,
        table: name,
        ..
    } = reference.clone().resolve("medlake", default_schema);
    *schema == *table.schema && *name == *table.table
}

/// How many times `plan` reads `table`, subqueries included.
fn reads(plan: &LogicalPlan, table: &TableName, default_schema: &str) -> usize {
    let mut count = 0;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && matches(&scan.table_name, table, default_schema)
        {
            count += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    count
}

/// Whether `expr` calls a function whose result can change between two refreshes over the
/// same rows (`now()`, `current_date`, `random()`): the old rows of the view would not be
/// recomputed with the new value.
pub(crate) fn time_dependent(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(match e {
            Expr::ScalarFunction(f) => f.func.signature().volatility != Volatility::Immutable,
            _ => e.is_volatile_node(),
        })
    })
    .unwrap_or(true)
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::SetComparison(_)
        ))
    })
    .unwrap_or(true)
}

/// Checks that `plan` distributes over appends to `table`: the query over old ∪ new rows is the
/// query over the old rows plus the query over the new rows.
fn linear(plan: &LogicalPlan, table: &TableName, default_schema: &str) -> Result<(), String> {
    if reads(plan, table, default_schema) == 0 {
        // A part that does not read the changed input is unchanged.
        return Ok(());
    }
    let exprs_ok = |exprs: &[Expr], what: &str| -> Result<(), String> {
        for e in exprs {
            if time_dependent(e) {
                return Err(format!(
                    "the {what} calls a function whose result changes over time ({e})"
                ));
            }
            if has_subquery(e) {
                return Err(format!("the {what} has a subquery ({e})"));
            }
        }
        Ok(())
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.fetch.is_some() {
                return Err("the input is read with a LIMIT".into());
            }
            Ok(())
        }
        LogicalPlan::Projection(p) => {
            exprs_ok(&p.expr, "select list")?;
            linear(&p.input, table, default_schema)
        }
        LogicalPlan::Filter(f) => {
            exprs_ok(std::slice::from_ref(&f.predicate), "WHERE clause")?;
            linear(&f.input, table, default_schema)
        }
        LogicalPlan::SubqueryAlias(a) => linear(&a.input, table, default_schema),
        LogicalPlan::Union(u) => u
            .inputs
            .iter()
            .try_for_each(|input| linear(input, table, default_schema)),
        LogicalPlan::Join(j) => {
            if let Some(filter) = &j.filter {
                exprs_ok(std::slice::from_ref(filter), "join condition")?;
            }
            let keys: Vec<Expr> =
                j.on.iter()
                    .flat_map(|(l, r)| [l.clone(), r.clone()])
                    .collect();
            exprs_ok(&keys, "join condition")?;
            let left = reads(&j.left, table, default_schema) > 0;
            let right = reads(&j.right, table, default_schema) > 0;
            let ok = match j.join_type {
                JoinType::Inner => true,
                JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => !right,
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => !left,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "the changed input is on the null-supplying or filtering side of a {} join",
                    j.join_type
                ));
            }
            linear(&j.left, table, default_schema)?;
            linear(&j.right, table, default_schema)
        }
        other => Err(format!(
            "the query has {} over the changed input",
            describe(other)
        )),
    }
}

fn describe(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Aggregate(_) => "an aggregate".into(),
        LogicalPlan::Distinct(_) => "DISTINCT".into(),
        LogicalPlan::Window(_) => "a window function".into(),
        LogicalPlan::Sort(_) => "ORDER BY".into(),
        LogicalPlan::Limit(_) => "LIMIT".into(),
        LogicalPlan::Join(_) => "a join".into(),
        other => other.display().to_string(),
    }
}

/// Removes a top-level ORDER BY (without LIMIT): a table has no order.
fn strip_sort(plan: &LogicalPlan) -> &LogicalPlan {
    match plan {
        LogicalPlan::Sort(s) if s.fetch.is_none() => strip_sort(&s.input),
        other => other,
    }
}

/// Decides how `plan` can be refreshed when only `table` changed (by appends), or says why
/// it cannot.
pub(crate) fn analyze(
    plan: &LogicalPlan,
    table: &TableName,
    default_schema: &str,
) -> Result<Shape, String> {
    let plan = strip_sort(plan);
    let count = reads(plan, table, default_schema);
    if count != 1 {
        return Err(format!("the query reads {table} {count} times"));
    }
    let linear_reason = match linear(plan, table, default_schema) {
        Ok(()) => return Ok(Shape::Linear),
        Err(reason) => reason,
    };
    if let LogicalPlan::Distinct(Distinct::All(input)) = plan {
        return linear(input, table, default_schema)
            .map(|()| Shape::Distinct)
            .map_err(|reason| format!("under the DISTINCT, {reason}"));
    }
    let (projection, aggregate) = match plan {
        LogicalPlan::Projection(p) => match p.input.as_ref() {
            LogicalPlan::Aggregate(a) => (Some(p), a),
            _ => return Err(linear_reason),
        },
        LogicalPlan::Aggregate(a) => (None, a),
        _ => return Err(linear_reason),
    };
    if aggregate.group_expr.is_empty() {
        return Err("the aggregate has no GROUP BY".into());
    }
    if aggregate
        .group_expr
        .iter()
        .chain(&aggregate.aggr_expr)
        .any(|e| matches!(e, Expr::GroupingSet(_)) || time_dependent(e) || has_subquery(e))
    {
        return Err(
            "the GROUP BY uses grouping sets, subqueries or functions whose result changes over time"
                .into(),
        );
    }
    linear(&aggregate.input, table, default_schema)
        .map_err(|reason| format!("under the GROUP BY, {reason}"))?;
    let output = aggregate.schema.columns();
    let mut key_columns = Vec::new();
    for (i, group) in aggregate.group_expr.iter().enumerate() {
        let key = &output[i];
        let column = match projection {
            None => Some(key.name.clone()),
            Some(p) => p
                .expr
                .iter()
                .zip(p.schema.fields())
                .find(|(e, _)| matches!((*e).clone().unalias(), Expr::Column(c) if c == *key))
                .map(|(_, field)| field.name().clone()),
        };
        match column {
            Some(c) => key_columns.push(c),
            None => {
                return Err(format!(
                    "group key {group} is not one of the view's columns"
                ));
            }
        }
    }
    if let Some(p) = projection {
        for e in &p.expr {
            if time_dependent(e) || has_subquery(e) {
                return Err(format!("the select list computes {e} over the groups"));
            }
        }
    }
    Ok(Shape::Grouped(Box::new(Grouped {
        plan: plan.clone(),
        aggregate: aggregate.clone(),
        key_columns,
    })))
}

/// `plan` with every read of `table` replaced by `source` (the table's new rows), and every
/// UNION branch that does not read `table` emptied (those branches produced their rows at an
/// earlier refresh already).
pub(crate) fn replace_scan(
    plan: &LogicalPlan,
    table: &TableName,
    default_schema: &str,
    source: Arc<dyn TableSource>,
) -> DfResult<LogicalPlan> {
    let plan = plan
        .clone()
        .transform_down(|node| match node {
            LogicalPlan::Union(union) => {
                let inputs = union
                    .inputs
                    .iter()
                    .map(|input| {
                        if reads(input, table, default_schema) == 0 {
                            Arc::new(LogicalPlan::EmptyRelation(EmptyRelation {
                                produce_one_row: false,
                                schema: input.schema().clone(),
                            }))
                        } else {
                            input.clone()
                        }
                    })
                    .collect();
                Ok(Transformed::yes(LogicalPlan::Union(Union {
                    inputs,
                    schema: union.schema,
                })))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(scan) if matches(&scan.table_name, table, default_schema) => {
            let replaced = TableScanBuilder::new(scan.table_name.clone(), source.clone())
                .with_projection(scan.projection.clone())
                .with_filters(scan.filters.clone())
                .with_fetch(scan.fetch)
                .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(replaced)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// `expr IN (values) [OR expr IS NULL]` for the distinct values of one group key.
pub(crate) fn key_predicate(expr: Expr, values: &[ScalarValue]) -> Expr {
    let has_null = values.iter().any(ScalarValue::is_null);
    let list: Vec<Expr> = values
        .iter()
        .filter(|v| !v.is_null())
        .cloned()
        .map(lit)
        .collect();
    let in_list = if list.is_empty() {
        lit(false)
    } else {
        expr.clone().in_list(list, false)
    };
    if has_null {
        in_list.or(expr.is_null())
    } else {
        in_list
    }
}

impl Grouped {
    /// The view's query restricted to the groups whose keys satisfy `keys` (one predicate per
    /// group expression, over the aggregate's input).
    pub fn recompute(&self, keys: &[Vec<ScalarValue>]) -> DfResult<LogicalPlan> {
        let predicate = self
            .aggregate
            .group_expr
            .iter()
            .zip(keys)
            .map(|(group, values)| key_predicate(group.clone(), values))
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true));
        let filtered =
            LogicalPlan::Filter(Filter::try_new(predicate, self.aggregate.input.clone())?);
        let aggregate = LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::new(filtered),
            self.aggregate.group_expr.clone(),
            self.aggregate.aggr_expr.clone(),
        )?);
        match &self.plan {
            LogicalPlan::Projection(p) => Ok(LogicalPlan::Projection(Projection::try_new(
                p.expr.clone(),
                Arc::new(aggregate),
            )?)),
            _ => Ok(aggregate),
        }
    }

    /// The predicate over the view's columns that selects the rows `recompute` replaces.
    pub fn replaced_rows(&self, keys: &[Vec<ScalarValue>]) -> Expr {
        self.key_columns
            .iter()
            .zip(keys)
            .map(|(column, values)| {
                key_predicate(col(Column::new_unqualified(column.clone())), values)
            })
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true))
    }

    /// The plan that lists the distinct group keys of `input` (the aggregate's input over
    /// new rows only).
    pub fn keys_of(&self, input: LogicalPlan) -> DfResult<LogicalPlan> {
        Ok(LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::new(input),
            self.aggregate.group_expr.clone(),
            Vec::new(),
        )?))
    }
}
