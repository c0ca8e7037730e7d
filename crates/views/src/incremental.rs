//! Which view queries can be refreshed incrementally, and the plans that do it.
//!
//! A refresh reads what each changed input gained and lost since the view's last refresh
//! (new data files when an input only gained rows, its change data feed otherwise) and
//! handles any number of changed inputs. The query must read each changed input once and
//! have one of these shapes:
//!
//! - **linear**: projections, filters, aliases, UNION ALL and joins, where each changed input
//!   sits on the preserved side of any outer join. Such a query distributes over changes to
//!   each input, so what the view gains (loses) is the sum, over the changed inputs in turn,
//!   of the query over that input's gained (lost) rows, the inputs before it as they are now
//!   and those after it as they were: Q(new) − Q(old) = Σᵢ Q(new<ᵢ, Δᵢ, old>ᵢ). Gained rows
//!   only: they are appended. Lost rows too: the rows equal to a changed one are rewritten
//!   with their new count (a view without a key is a multiset).
//! - **distinct**: `SELECT DISTINCT` over a linear part, inputs that only gained rows: the
//!   view gains the distinct new rows it does not hold yet (an anti-join, NULLs equal).
//! - **keyed**: row-wise operations (projections, filters such as `rn = 1` or HAVING,
//!   aliases) over one node whose output falls into independent partitions by key: a GROUP
//!   BY, window functions sharing PARTITION BY columns (`row_number() = 1` dedups, `lag()`),
//!   or a DISTINCT under removals; under it a linear part. The keys the changes touch (gained
//!   and lost rows alike) are recomputed from the whole input and replace the view's rows of
//!   those keys (an overwrite of the matching rows only). Any aggregate or window function
//!   works, min/max under deletes included, because touched partitions are recomputed. The
//!   key is the node's keys that are also view columns (a subset partitions coarser, which
//!   is still exact).
//!
//! Everything else (DISTINCT ON, LIMIT, subqueries over a changed input, an input read
//! twice, a changed input on the null-supplying side of an outer join, functions of the
//! clock such as `now()`, inputs whose schema changed, or more than one changed external
//! input) is refreshed fully, and the refresh history says why.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ResolvedTableReference, ScalarValue, TableReference};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    Aggregate, Distinct, EmptyRelation, Expr, Filter, JoinType, LogicalPlan, TableScanBuilder,
    TableSource, Union, Volatility, col, lit,
};
use medlake_lake::TableName;

/// What an incremental refresh does.
pub(crate) enum Shape {
    /// The query distributes over changes to each changed input: the view gains the query
    /// over the inputs' new rows and loses the query over their removed rows.
    Linear,
    /// `SELECT DISTINCT` over a linear query, inputs that only gained rows: append the
    /// distinct new rows the view does not hold yet.
    Distinct,
    /// A query whose rows fall into independent partitions by key (GROUP BY, window
    /// functions' PARTITION BY, DISTINCT): recompute the partitions the changes touch.
    Keyed(Box<Keyed>),
}

/// The pieces of a keyed view: `plan` is row-wise operations (projections, filters, aliases)
/// over one keyed node (an aggregate, a window or a DISTINCT) over a linear part.
pub(crate) struct Keyed {
    /// The view's query without a top-level ORDER BY.
    pub plan: LogicalPlan,
    /// The keyed node's input.
    pub input: Arc<LogicalPlan>,
    /// The partition key, as expressions over `input`.
    pub key_exprs: Vec<Expr>,
    /// For each key expression, the view column holding it.
    pub key_columns: Vec<String>,
    /// What partitions the view (`GROUP BY`, `window PARTITION BY`, `DISTINCT`).
    pub kind: &'static str,
    /// How many single-input steps below `plan` the keyed node is.
    depth: usize,
}

pub(crate) fn matches(reference: &TableReference, table: &TableName, default_schema: &str) -> bool {
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
        // Each input row unnests into its own rows (a FHIR VIEW's `unnest(fhir_view(...))`):
        // the rows of a change are the unnested rows of the changed rows.
        LogicalPlan::Unnest(u) => linear(&u.input, table, default_schema),
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

pub(crate) fn describe(plan: &LogicalPlan) -> String {
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
pub(crate) fn strip_sort(plan: &LogicalPlan) -> &LogicalPlan {
    match plan {
        LogicalPlan::Sort(s) if s.fetch.is_none() => strip_sort(&s.input),
        other => other,
    }
}

/// Decides how `plan` can be refreshed after the `changed` inputs changed (`removals`: some
/// of them lost or rewrote rows), or says why it cannot.
pub(crate) fn analyze(
    plan: &LogicalPlan,
    changed: &[&TableName],
    default_schema: &str,
    removals: bool,
) -> Result<Shape, String> {
    let plan = strip_sort(plan);
    for table in changed {
        let count = reads(plan, table, default_schema);
        if count != 1 {
            return Err(format!("the query reads {table} {count} times"));
        }
    }
    let all_linear = |p: &LogicalPlan| {
        changed
            .iter()
            .try_for_each(|table| linear(p, table, default_schema))
    };
    let linear_reason = match all_linear(plan) {
        Ok(()) => return Ok(Shape::Linear),
        Err(reason) => reason,
    };
    if let LogicalPlan::Distinct(Distinct::All(input)) = plan
        && !removals
        && all_linear(input).is_ok()
    {
        return Ok(Shape::Distinct);
    }
    let keyed_node = plan
        .exists(|node| {
            Ok(matches!(
                node,
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Distinct(_)
            ))
        })
        .unwrap_or(false);
    if !keyed_node {
        return Err(linear_reason);
    }
    match keyed(plan, changed, default_schema) {
        Ok(keyed) => Ok(Shape::Keyed(Box::new(keyed))),
        Err(Some(reason)) => Err(reason),
        Err(None) => Err(linear_reason),
    }
}

/// Checks that the expressions of a row-wise node above a keyed one neither depend on time
/// nor hold subqueries.
fn row_wise(exprs: &[Expr]) -> Result<(), String> {
    match exprs.iter().find(|e| time_dependent(e) || has_subquery(e)) {
        Some(e) => Err(format!(
            "the query computes {e} over the partitions (it depends on time or has a subquery)"
        )),
        None => Ok(()),
    }
}

/// The keyed shape of `plan`: row-wise nodes over an aggregate, a chain of windows or a
/// DISTINCT over a part linear in every changed input. `Err(None)`: not this shape at all.
fn keyed(
    plan: &LogicalPlan,
    changed: &[&TableName],
    default_schema: &str,
) -> Result<Keyed, Option<String>> {
    let mut depth = 0;
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(p) => row_wise(&p.expr).map_err(Some)?,
            LogicalPlan::Filter(f) => row_wise(std::slice::from_ref(&f.predicate)).map_err(Some)?,
            LogicalPlan::SubqueryAlias(_) => {}
            LogicalPlan::Sort(s) if s.fetch.is_none() => {}
            _ => break,
        }
        node = node.inputs()[0];
        depth += 1;
    }
    let (input, candidates, kind, depth) = match node {
        LogicalPlan::Aggregate(a) => {
            if a.group_expr.is_empty() {
                return Err(Some("the aggregate has no GROUP BY".into()));
            }
            if a.group_expr
                .iter()
                .chain(&a.aggr_expr)
                .any(|e| matches!(e, Expr::GroupingSet(_)) || time_dependent(e) || has_subquery(e))
            {
                return Err(Some(
                    "the GROUP BY uses grouping sets, subqueries or functions whose result changes over time"
                        .into(),
                ));
            }
            let output = a.schema.columns();
            let candidates = a.group_expr.iter().cloned().zip(output).collect::<Vec<_>>();
            (a.input.clone(), candidates, "GROUP BY", depth)
        }
        LogicalPlan::Window(_) => window_keys(node, depth).map_err(Some)?,
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let candidates = input
                .schema()
                .columns()
                .into_iter()
                .map(|c| (Expr::Column(c.clone()), c))
                .collect();
            (input.clone(), candidates, "DISTINCT", depth)
        }
        _ => return Err(None),
    };
    for table in changed {
        linear(&input, table, default_schema)
            .map_err(|reason| Some(format!("under the {kind}, {reason}")))?;
    }
    let mut key_exprs = Vec::new();
    let mut key_columns = Vec::new();
    for (expr, column) in candidates {
        if let Some(view_column) = trace(plan, depth, &column) {
            key_exprs.push(expr);
            key_columns.push(view_column.name);
        }
    }
    if key_exprs.is_empty() {
        return Err(Some(format!(
            "no key of the {kind} is one of the view's columns"
        )));
    }
    Ok(Keyed {
        plan: plan.clone(),
        input,
        key_exprs,
        key_columns,
        kind,
        depth,
    })
}

/// The keyed shape of a view's query when its keyed node is a GROUP BY, whatever changed
/// (the shape [`crate::state`] keeps per-group aggregate state for).
pub(crate) fn grouped(plan: &LogicalPlan, default_schema: &str) -> Option<Keyed> {
    keyed(strip_sort(plan), &[], default_schema)
        .ok()
        .filter(|k| k.kind == "GROUP BY")
}

type KeyCandidates = (Arc<LogicalPlan>, Vec<(Expr, Column)>, &'static str, usize);

/// The partition columns shared by every window function of a chain of window nodes (at
/// `depth`), and the chain's input.
fn window_keys(top: &LogicalPlan, depth: usize) -> Result<KeyCandidates, String> {
    let mut node = top;
    let mut depth = depth;
    let mut shared: Option<Vec<Column>> = None;
    while let LogicalPlan::Window(window) = node {
        for e in &window.window_expr {
            if time_dependent(e) || has_subquery(e) {
                return Err(format!(
                    "the window function {e} depends on time or has a subquery"
                ));
            }
            let Expr::WindowFunction(f) = e.clone().unalias() else {
                return Err(format!("{e} is not a window function"));
            };
            let columns: Vec<Column> = f
                .params
                .partition_by
                .iter()
                .filter_map(|p| match p {
                    Expr::Column(c) => Some(c.clone()),
                    _ => None,
                })
                .collect();
            shared = Some(match shared {
                None => columns,
                Some(before) => before.into_iter().filter(|c| columns.contains(c)).collect(),
            });
        }
        if !matches!(window.input.as_ref(), LogicalPlan::Window(_)) {
            let candidates = shared
                .unwrap_or_default()
                .into_iter()
                .map(|c| (Expr::Column(c.clone()), c))
                .collect::<Vec<_>>();
            if candidates.is_empty() {
                return Err("a window function has no PARTITION BY column".into());
            }
            return Ok((
                window.input.clone(),
                candidates,
                "window PARTITION BY",
                depth,
            ));
        }
        node = &window.input;
        depth += 1;
    }
    Err("expected a window".into())
}

/// The view column (of `plan`'s output) that carries `column` of the node `depth` steps
/// below, through projections that keep it as it is, aliases, filters, sorts and windows.
fn trace(plan: &LogicalPlan, depth: usize, column: &Column) -> Option<Column> {
    if depth == 0 {
        return Some(column.clone());
    }
    let below = trace(plan.inputs().first()?, depth - 1, column)?;
    match plan {
        LogicalPlan::Projection(p) => p
            .expr
            .iter()
            .position(|e| matches!(e.clone().unalias(), Expr::Column(c) if c == below))
            .map(|i| Column::from(p.schema.qualified_field(i))),
        LogicalPlan::SubqueryAlias(a) => {
            let i = a.input.schema().index_of_column(&below).ok()?;
            Some(Column::from(a.schema.qualified_field(i)))
        }
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Window(_) => Some(below),
        _ => None,
    }
}

/// `plan` with every read of `delta_of` replaced by `source` (its changed rows) and every
/// read of the tables in `others` by the given sources (other inputs at another version),
/// and every UNION branch that does not read `delta_of` emptied (those branches are the same
/// before and after the change: they contribute no change).
pub(crate) fn replace_scans(
    plan: &LogicalPlan,
    delta_of: &TableName,
    default_schema: &str,
    source: Arc<dyn TableSource>,
    others: &[(TableName, Arc<dyn TableSource>)],
) -> DfResult<LogicalPlan> {
    let plan = branches_reading(plan, delta_of, default_schema)?;
    let mut sources = vec![(delta_of.clone(), source)];
    sources.extend(others.iter().cloned());
    with_sources(plan, default_schema, &sources)
}

/// Whether the term of `delta_of` (see [`replace_scans`]) reads `other`: then it needs
/// `other` as it was at the last refresh.
pub(crate) fn term_reads(
    plan: &LogicalPlan,
    delta_of: &TableName,
    other: &TableName,
    default_schema: &str,
) -> bool {
    branches_reading(plan, delta_of, default_schema)
        .map_or(true, |plan| reads(&plan, other, default_schema) > 0)
}

/// `plan` with every UNION branch that does not read `delta_of` emptied.
fn branches_reading(
    plan: &LogicalPlan,
    delta_of: &TableName,
    default_schema: &str,
) -> DfResult<LogicalPlan> {
    Ok(plan
        .clone()
        .transform_down(|node| match node {
            LogicalPlan::Union(union) => {
                let inputs = union
                    .inputs
                    .iter()
                    .map(|input| {
                        if reads(input, delta_of, default_schema) == 0 {
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
        .data)
}

/// `plan` with every read of a table in `sources` replaced by its given source (its rows at
/// another version, or its changed rows).
pub(crate) fn with_sources(
    plan: LogicalPlan,
    default_schema: &str,
    sources: &[(TableName, Arc<dyn TableSource>)],
) -> DfResult<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(scan) => {
            let replacement = sources
                .iter()
                .find(|(t, _)| matches(&scan.table_name, t, default_schema))
                .map(|(_, s)| s.clone());
            let Some(replacement) = replacement else {
                return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
            };
            let replaced = TableScanBuilder::new(scan.table_name.clone(), replacement)
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

/// The most values a key column lists in a key or region predicate (`IN (...)`); beyond,
/// the predicate is the range from the least to the greatest value (for keys whose values
/// have a total order: integers, decimals, strings, dates, timestamps). A superset is still
/// exact: a refresh recomputes and replaces the rows of the same predicate. Long lists also
/// cost deltalake's predicate conversion one level of recursion per value (a refresh of
/// 6,000 keys overflowed an 8 MiB stack in a debug build).
pub(crate) const MAX_LISTED: usize = 1000;

/// Above this many values, a listed key also carries the range that holds them. DataFusion
/// turns `f(x) IN (a, b, c)` into ranges of `x` for a function with a preimage up to three
/// values (`THRESHOLD_INLINE_INLIST`), and prunes by lists only when short.
const BOUNDED_LIST: usize = 3;

/// `expr IN (values) [OR expr IS NULL]` for the distinct values of one group key, or
/// `expr BETWEEN least AND greatest [OR expr IS NULL]` for more than [`MAX_LISTED`] values of
/// a totally ordered type.
pub(crate) fn key_predicate(expr: Expr, values: &[ScalarValue]) -> Expr {
    let has_null = values.iter().any(ScalarValue::is_null);
    if values.len() > MAX_LISTED
        && let Some(range) = key_range(&expr, values)
    {
        return if has_null {
            range.or(expr.is_null())
        } else {
            range
        };
    }
    // As the types Delta stores (a view's rows read back may come as view types): the
    // predicate also validates written rows in deltalake's replace-where, uncoerced.
    let list: Vec<Expr> = values
        .iter()
        .filter(|v| !v.is_null())
        .map(stored_type)
        .map(lit)
        .collect();
    let in_list = if list.is_empty() {
        lit(false)
    } else if list.len() > BOUNDED_LIST
        && let Some(range) = key_range(&expr, values)
    {
        // The range as well: scans skip files and row groups by it (a list only when short),
        // also through a bucketing function such as `local_date(taken_at)`, whose range
        // becomes one of the instant (its preimage).
        expr.clone().in_list(list, false).and(range)
    } else {
        expr.clone().in_list(list, false)
    };
    if has_null {
        in_list.or(expr.is_null())
    } else {
        in_list
    }
}

/// `expr BETWEEN least AND greatest` of the non-null `values`, when all are of one totally
/// ordered type (no floats: NaN has no place in a range).
fn key_range(expr: &Expr, values: &[ScalarValue]) -> Option<Expr> {
    let (least, greatest) = extremes(values)?;
    Some(expr.clone().between(lit(least), lit(greatest)))
}

/// The least and greatest of the non-null `values` (as Delta stores them), when there is one
/// and all are of one totally ordered type.
pub(crate) fn extremes(values: &[ScalarValue]) -> Option<(ScalarValue, ScalarValue)> {
    let present: Vec<ScalarValue> = values
        .iter()
        .filter(|v| !v.is_null())
        .map(stored_type)
        .collect();
    let first = present.first()?;
    let kind = first.data_type();
    if !totally_ordered(&kind) || present.iter().any(|v| v.data_type() != kind) {
        return None;
    }
    let mut least = first;
    let mut greatest = first;
    for value in &present {
        match (value.partial_cmp(least), value.partial_cmp(greatest)) {
            (Some(to_least), Some(to_greatest)) => {
                if to_least.is_lt() {
                    least = value;
                }
                if to_greatest.is_gt() {
                    greatest = value;
                }
            }
            _ => return None,
        }
    }
    Some((least.clone(), greatest.clone()))
}

/// Whether values of `data_type` have a total order a range can bound: integers, decimals,
/// strings, dates, timestamps (no floats: NaN has no place in a range).
pub(crate) fn totally_ordered(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Decimal128(..)
            | DataType::Utf8
            | DataType::Utf8View
            | DataType::LargeUtf8
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
    )
}

/// `value` as the type Delta stores (strings and binaries as plain Utf8/Binary).
pub(crate) fn stored_type(value: &ScalarValue) -> ScalarValue {
    match value {
        ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => ScalarValue::Utf8(s.clone()),
        ScalarValue::BinaryView(b) | ScalarValue::LargeBinary(b) => ScalarValue::Binary(b.clone()),
        other => other.clone(),
    }
}

/// `plan` with `predicate` filtering the input of the node `depth` steps below.
fn filter_below(plan: &LogicalPlan, depth: usize, predicate: &Expr) -> DfResult<LogicalPlan> {
    let inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
    let [input] = <[LogicalPlan; 1]>::try_from(inputs).map_err(|_| {
        datafusion::error::DataFusionError::Internal(format!(
            "a keyed view's node has several inputs: {}",
            plan.display()
        ))
    })?;
    let input = if depth == 0 {
        LogicalPlan::Filter(Filter::try_new(predicate.clone(), Arc::new(input))?)
    } else {
        filter_below(&input, depth - 1, predicate)?
    };
    plan.with_new_exprs(plan.expressions(), vec![input])
}

/// `plan` with the node `depth` single-input steps below replaced by `replacement`.
fn replace_at(plan: &LogicalPlan, depth: usize, replacement: LogicalPlan) -> DfResult<LogicalPlan> {
    if depth == 0 {
        return Ok(replacement);
    }
    let input = replace_at(plan.inputs()[0], depth - 1, replacement)?;
    plan.with_new_exprs(plan.expressions(), vec![input])
}

impl Keyed {
    /// The view's query restricted to the partitions whose keys satisfy `keys` (one list of
    /// values per key expression).
    pub fn recompute(&self, keys: &[Vec<ScalarValue>]) -> DfResult<LogicalPlan> {
        filter_below(&self.plan, self.depth, &self.key_filter(keys))
    }

    /// The keyed node's input restricted to the partitions whose keys satisfy `keys`.
    pub fn input_for(&self, keys: &[Vec<ScalarValue>]) -> DfResult<LogicalPlan> {
        Ok(LogicalPlan::Filter(Filter::try_new(
            self.key_filter(keys),
            self.input.clone(),
        )?))
    }

    fn key_filter(&self, keys: &[Vec<ScalarValue>]) -> Expr {
        self.key_exprs
            .iter()
            .zip(keys)
            .map(|(key, values)| key_predicate(key.clone(), values))
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true))
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

    /// The keyed node itself.
    pub fn node(&self) -> &LogicalPlan {
        let mut node = &self.plan;
        for _ in 0..self.depth {
            node = node.inputs()[0];
        }
        node
    }

    /// The view's query with its keyed node replaced by `replacement` (a plan with the
    /// node's schema).
    pub fn replace_node(&self, replacement: LogicalPlan) -> DfResult<LogicalPlan> {
        replace_at(&self.plan, self.depth, replacement)
    }

    /// The plan that lists the distinct keys of `input` (the keyed node's input over changed
    /// rows only).
    pub fn keys_of(&self, input: LogicalPlan) -> DfResult<LogicalPlan> {
        Ok(LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::new(input),
            self.key_exprs.clone(),
            Vec::new(),
        )?))
    }
}
