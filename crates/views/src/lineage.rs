//! Which rows of a view a change to one of its inputs can touch: the view's *regions*.
//!
//! For each read of a changed input (a table read twice, in a self-join or in two CTEs, has
//! two reads) this finds pairs `(view expression, input expression)` such that the view rows
//! whose view expressions hold values `k` depend only on the input rows whose input
//! expressions hold `k`. Changing input rows with key `k` can then only add or remove view
//! rows of key `k`: a refresh recomputes the view where its key is one the change touched
//! and replaces those rows, whatever lies between (joins of any kind, GROUP BY, windows,
//! DISTINCT, other inputs).
//!
//! The pairs start as every column of the read and follow it up the plan:
//!
//! - projections, filters, aliases, sorts, DISTINCT and UNION ALL keep them (a projected
//!   expression of key columns, such as `CAST(taken_at AS DATE)`, is a coarser key);
//! - an inner join keeps them, and an equi-join condition `a = b` makes the other side's
//!   column a key as well; an outer (or semi/anti) join keeps them when the read is on the
//!   preserved side; on the null-supplying (or filtering) side only the preserved side's
//!   join columns are keys: a changed row of key `k` changes the preserved rows that match
//!   `k`, and those hold `k` matched or not;
//! - a GROUP BY keeps the grouping expressions that are keys; windows keep the PARTITION BY
//!   expressions all their functions share that are keys (a row's value depends on the rows
//!   of its partition only).
//!
//! Anything else over the read (LIMIT, full outer joins, grouping sets, a window without a
//! shared key partition, a subquery reading the changed input) has no key: the refresh is
//! full and says why.

use std::collections::HashMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{
    Distinct, Expr, ExprSchemable, JoinType, LogicalPlan, cast, col, lit,
};
use medlake_lake::TableName;

use crate::incremental::{matches, time_dependent};

/// Pairs `(expression over a node's output, expression over the read's columns, reach)`.
pub(crate) type Pairs = Vec<(Expr, Expr, Reach)>;

/// How far a node's value lies from the read's value it depends on: `None` when they are
/// equal (a key), `Some((low, high))` when the node's value lies in `[k + low, k + high]` for
/// the input value `k` (a range join's span, see [`crate::reach`]).
pub(crate) type Reach = Option<(i128, i128)>;

/// The key of one read of a changed input.
pub(crate) struct ReadKey {
    /// The input this read reads.
    pub table: TableName,
    /// The view expressions (over the view query's output) and the input expressions (over
    /// the input's unqualified columns) that hold the same values.
    pub pairs: Pairs,
}

/// The keys of every read of `table` in `plan` (the view's query, without a top-level
/// ORDER BY), or why some read has none.
pub(crate) fn read_keys(
    plan: &LogicalPlan,
    table: &TableName,
    default_schema: &str,
) -> Result<Vec<ReadKey>, String> {
    let mut all = 0;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && matches(&scan.table_name, table, default_schema)
        {
            all += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let mut direct = 0;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && matches(&scan.table_name, table, default_schema)
        {
            direct += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if all != direct {
        return Err(format!("a subquery reads {table}"));
    }
    let mut over_time = false;
    let walked = plan.apply_with_subqueries(|node| {
        over_time |= node.expressions().iter().any(time_dependent);
        Ok(if over_time {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if over_time || walked.is_err() {
        return Err("the query calls a function whose result changes over time".into());
    }
    let mut keys = Vec::new();
    for target in 0..direct {
        let mut finder = Finder {
            table,
            default_schema,
            target,
            seen: 0,
        };
        let schema = plan.schema();
        let pairs = finder
            .key(plan)?
            .map(|pairs| {
                pairs
                    .into_iter()
                    .filter(|(e, ..)| e.get_type(schema.as_ref()).is_ok_and(|t| keyable(&t)))
                    .collect::<Pairs>()
            })
            .filter(|pairs| !pairs.is_empty())
            .ok_or_else(|| format!("no column of the view is a key of {table}"))?;
        keys.push(ReadKey {
            table: table.clone(),
            pairs,
        });
    }
    Ok(keys)
}

struct Finder<'a> {
    table: &'a TableName,
    default_schema: &'a str,
    /// Which read of the table (in the order a depth-first walk meets them).
    target: usize,
    seen: usize,
}

impl Finder<'_> {
    /// The key of `plan`'s rows for the target read; `None`: `plan` does not contain it.
    fn key(&mut self, plan: &LogicalPlan) -> Result<Option<Pairs>, String> {
        if let LogicalPlan::TableScan(scan) = plan {
            if !matches(&scan.table_name, self.table, self.default_schema) {
                return Ok(None);
            }
            let me = self.seen;
            self.seen += 1;
            if me != self.target {
                return Ok(None);
            }
            if scan.fetch.is_some() {
                return Err("the changed input is read with a LIMIT".into());
            }
            let pairs = scan
                .projected_schema
                .columns()
                .into_iter()
                .map(|c| {
                    let input = col(Column::new_unqualified(c.name.clone()));
                    (Expr::Column(c), input, None)
                })
                .collect();
            return Ok(Some(pairs));
        }
        let mut found = None;
        for (side, input) in plan.inputs().into_iter().enumerate() {
            if let Some(pairs) = self.key(input)? {
                found = Some((side, pairs));
            }
        }
        let Some((side, pairs)) = found else {
            return Ok(None);
        };
        through(plan, side, pairs).map(Some)
    }
}

/// The pairs of `plan`'s output, given those of its input `side`.
fn through(plan: &LogicalPlan, side: usize, pairs: Pairs) -> Result<Pairs, String> {
    let kept = match plan {
        LogicalPlan::Filter(_) | LogicalPlan::Distinct(Distinct::All(_)) => pairs,
        LogicalPlan::Sort(s) if s.fetch.is_none() => pairs,
        LogicalPlan::Projection(p) => {
            let mut out = Vec::new();
            for (i, e) in p.expr.iter().enumerate() {
                if let Some((k, reach)) = lookup(&pairs, &e.clone().unalias()) {
                    out.push((
                        Expr::Column(Column::from(p.schema.qualified_field(i))),
                        k,
                        reach,
                    ));
                }
            }
            out
        }
        LogicalPlan::SubqueryAlias(a) => {
            renamed(pairs, a.input.schema().columns(), a.schema.columns())
        }
        LogicalPlan::Union(u) => through_union(u, side, pairs),
        LogicalPlan::Join(j) => through_join(j, side, pairs)?,
        LogicalPlan::Aggregate(a) => {
            if a.group_expr
                .iter()
                .any(|g| matches!(g, Expr::GroupingSet(_)))
            {
                return Err("the query uses grouping sets over the changed input".into());
            }
            let mut out = Vec::new();
            for (i, g) in a.group_expr.iter().enumerate() {
                if let Some((k, reach)) = lookup(&pairs, g) {
                    out.push((
                        Expr::Column(Column::from(a.schema.qualified_field(i))),
                        k,
                        reach,
                    ));
                }
            }
            if out.is_empty() {
                return Err("no GROUP BY expression over the changed input is a key".into());
            }
            out
        }
        LogicalPlan::Window(w) => through_window(w, pairs)?,
        other => {
            return Err(format!(
                "the query has {} over the changed input",
                crate::incremental::describe(other)
            ));
        }
    };
    let mut unique: Pairs = Vec::new();
    for pair in kept {
        if !unique.iter().any(|(e, ..)| *e == pair.0) {
            unique.push(pair);
        }
    }
    Ok(unique)
}

/// The pairs of a union's output, given those of its input `side`: a key whose branch type
/// differs from the union's is cast to it (the union casts the branch's values).
fn through_union(u: &datafusion::logical_expr::Union, side: usize, pairs: Pairs) -> Pairs {
    let branch = u.inputs[side].schema();
    let pairs = pairs
        .into_iter()
        .filter_map(|(e, k, reach)| {
            let Expr::Column(c) = &e else {
                return Some((e, k, reach));
            };
            let (Ok(from), Ok(i)) = (e.get_type(branch.as_ref()), branch.index_of_column(c)) else {
                return Some((e, k, reach));
            };
            let to = u.schema.field(i).data_type();
            if &from == to {
                Some((e, k, reach))
            } else {
                // (A span is in the branch type's units.)
                reach.is_none().then(|| (e, cast(k, to.clone()), None))
            }
        })
        .collect();
    renamed(pairs, branch.columns(), u.schema.columns())
}

/// The pairs of a join's output, given those of its input `side`.
fn through_join(
    j: &datafusion::logical_expr::Join,
    side: usize,
    pairs: Pairs,
) -> Result<Pairs, String> {
    let equalities = equi_pairs(j);
    let on: Vec<(&Expr, &Expr)> = equalities
        .iter()
        .map(|(l, r)| if side == 0 { (l, r) } else { (r, l) })
        .collect();
    // `a = b` compares after coercion: b holds a's value only when both have one type.
    let (mine_schema, other_schema) = if side == 0 {
        (j.left.schema(), j.right.schema())
    } else {
        (j.right.schema(), j.left.schema())
    };
    let across = || -> Pairs {
        on.iter()
            .filter(|(mine, other)| {
                matches!(
                    (mine.get_type(mine_schema.as_ref()), other.get_type(other_schema.as_ref())),
                    (Ok(a), Ok(b)) if a == b
                )
            })
            .filter_map(|(mine, other)| {
                lookup(&pairs, mine).map(|(k, reach)| ((*other).clone(), k, reach))
            })
            .chain(reaching(j, side, &pairs))
            .collect()
    };
    let preserved = matches!(
        (j.join_type, side),
        (JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti, 0)
            | (
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti,
                1
            )
    );
    let supplying = matches!(
        (j.join_type, side),
        (JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti, 1)
            | (
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti,
                0
            )
    );
    if j.join_type == JoinType::Inner {
        let mut out = across();
        out.extend(pairs);
        Ok(out)
    } else if preserved {
        Ok(pairs)
    } else if supplying {
        let out = across();
        if out.is_empty() {
            return Err(format!(
                "the changed input is on the null-supplying or filtering side of a {} join whose keys are not its columns",
                j.join_type
            ));
        }
        Ok(out)
    } else {
        Err(format!(
            "the query has a {} join over the changed input",
            j.join_type
        ))
    }
}

/// The pairs of a window node's output: the PARTITION BY expressions all its functions share
/// that are keys.
fn through_window(w: &datafusion::logical_expr::Window, pairs: Pairs) -> Result<Pairs, String> {
    let mut shared: Option<Vec<Expr>> = None;
    for e in &w.window_expr {
        let Expr::WindowFunction(f) = e.clone().unalias() else {
            return Err(format!("{e} is not a window function"));
        };
        let partition = f.params.partition_by.clone();
        shared = Some(match shared {
            None => partition,
            Some(before) => before
                .into_iter()
                .filter(|p| partition.contains(p))
                .collect(),
        });
    }
    let out: Pairs = shared
        .unwrap_or_default()
        .iter()
        .filter_map(|p| lookup(&pairs, p).map(|(k, reach)| (p.clone(), k, reach)))
        .collect();
    if out.is_empty() {
        return Err(
            "no PARTITION BY expression shared by the window functions is a key of the changed input"
                .into(),
        );
    }
    Ok(out)
}

/// The equalities `left expression = right expression` a join matches on: its equi-join
/// keys and the equalities between its sides in its ON condition (a plan not yet optimized
/// keeps them all there).
pub(crate) fn equi_pairs(j: &datafusion::logical_expr::Join) -> Vec<(Expr, Expr)> {
    let mut out = j.on.clone();
    let Some(filter) = &j.filter else {
        return out;
    };
    let within = |e: &Expr, plan: &LogicalPlan| {
        let columns = e.column_refs();
        !columns.is_empty() && columns.iter().all(|c| plan.schema().has_column(c))
    };
    for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
        if let Expr::BinaryExpr(b) = conjunct
            && b.op == datafusion::logical_expr::Operator::Eq
        {
            if within(&b.left, &j.left) && within(&b.right, &j.right) {
                out.push(((*b.left).clone(), (*b.right).clone()));
            } else if within(&b.right, &j.left) && within(&b.left, &j.right) {
                out.push(((*b.right).clone(), (*b.left).clone()));
            }
        }
    }
    out
}

/// The columns of the other side of `j` (the read is on `side`) that a range condition ties
/// to a key of the read: a changed row of key `k` changes the rows whose column lies within
/// the condition's span of `k` (see [`crate::reach`]).
fn reaching(j: &datafusion::logical_expr::Join, side: usize, pairs: &Pairs) -> Pairs {
    let mut out = Vec::new();
    for span in crate::reach::spans(j) {
        let (Some(low), Some(high)) = (span.low, span.high) else {
            continue;
        };
        // other − mine ∈ [low, high] (right − left as the span gives it, or its opposite).
        let (mine, other, low, high) = if side == 0 {
            (&span.left, &span.right, low, high)
        } else {
            (&span.right, &span.left, -high, -low)
        };
        if !matches!(other, Expr::Column(_)) {
            continue;
        }
        if let Some((k, reach)) = lookup(pairs, mine) {
            let (before, after) = reach.unwrap_or((0, 0));
            if let (Some(low), Some(high)) = (before.checked_add(low), after.checked_add(high)) {
                out.push((other.clone(), k, Some((low, high))));
            }
        }
    }
    out
}

/// The input expression whose value `expr` (over the node's input) always holds, and how far
/// from it: a pair's own expression, or `expr` with each column replaced by its pair's input
/// expression (keys only: a function of a value known up to a span is not).
fn lookup(pairs: &Pairs, expr: &Expr) -> Option<(Expr, Reach)> {
    if let Some((_, k, reach)) = pairs.iter().find(|(e, ..)| e == expr) {
        return Some((k.clone(), *reach));
    }
    if expr.column_refs().is_empty() || time_dependent(expr) || !row_wise(expr) {
        return None;
    }
    let columns: HashMap<&Column, &Expr> = pairs
        .iter()
        .filter_map(|(e, k, reach)| match e {
            Expr::Column(c) if reach.is_none() => Some((c, k)),
            _ => None,
        })
        .collect();
    let mut complete = true;
    let replaced = expr
        .clone()
        .transform_up(|e| match &e {
            Expr::Column(c) => match columns.get(c) {
                Some(k) => Ok(Transformed::yes((*k).clone())),
                None => {
                    complete = false;
                    Ok(Transformed::no(e))
                }
            },
            _ => Ok(Transformed::no(e)),
        })
        .ok()?
        .data;
    complete.then_some((replaced, None))
}

/// Whether `expr` is computed from one row alone (no aggregate, window or subquery).
fn row_wise(expr: &Expr) -> bool {
    !expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::InSubquery(_)
                    | Expr::Exists(_)
                    | Expr::SetComparison(_)
                    | Expr::Placeholder(_)
            ))
        })
        .unwrap_or(true)
}

/// `pairs` with the columns of `from` renamed to the same positions of `to`.
fn renamed(pairs: Pairs, from: Vec<Column>, to: Vec<Column>) -> Pairs {
    let map: HashMap<Column, Column> = from.into_iter().zip(to).collect();
    pairs
        .into_iter()
        .filter_map(|(e, k, reach)| {
            let mut complete = true;
            let e = e
                .transform_up(|e| match &e {
                    Expr::Column(c) => match map.get(c) {
                        Some(to) => Ok(Transformed::yes(Expr::Column(to.clone()))),
                        None => {
                            complete = false;
                            Ok(Transformed::no(e))
                        }
                    },
                    _ => Ok(Transformed::no(e)),
                })
                .ok()?
                .data;
            complete.then_some((e, k, reach))
        })
        .collect()
}

/// Whether values of `data_type` can bound a region: compared, ordered and written as
/// literals in the predicate Delta records (nested, interval and binary types cannot).
fn keyable(data_type: &DataType) -> bool {
    use datafusion::arrow::datatypes::TimeUnit;
    matches!(
        data_type,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Timestamp(TimeUnit::Microsecond, _)
    )
}

/// `expr IN (values)` or, for many values, the range that holds them: see
/// [`crate::incremental::key_predicate`].
pub(crate) fn region_predicate(expr: Expr, values: &[ScalarValue]) -> Expr {
    crate::incremental::key_predicate(expr, values)
}

/// `expr` within the reach `[low, high]` of the least and greatest of `values` (none: false).
pub(crate) fn reach_predicate(expr: Expr, values: &[ScalarValue], low: i128, high: i128) -> Expr {
    if values.iter().all(ScalarValue::is_null) {
        return lit(false);
    }
    // Not one ordered type: every row of the other key columns.
    let Some((least, greatest)) = crate::incremental::extremes(values) else {
        return lit(true);
    };
    match (
        crate::reach::shift(&least, low),
        crate::reach::shift(&greatest, high),
    ) {
        (Some(from), Some(to)) => expr.between(lit(from), lit(to)),
        _ => lit(true),
    }
}

/// A refresh by regions: the view's rows in the regions the changes of `keys` touch are
/// recomputed and replaced. The inputs in `later` only gained rows and the view's query
/// takes them incrementally on its own (appends): this refresh reads them as they were at
/// the last refresh, and a second refresh right after applies what they gained.
pub(crate) struct Regions {
    pub keys: Vec<ReadKey>,
    pub later: Vec<TableName>,
}

/// The regions of `plan` for the `changed` inputs (each with whether it only gained rows
/// and has an old version to read), or why a change has no region.
pub(crate) fn regions(
    plan: &LogicalPlan,
    changed: &[(&TableName, bool)],
    default_schema: &str,
) -> Result<Regions, String> {
    let plan = crate::incremental::strip_sort(plan);
    let gained: Vec<&TableName> = changed
        .iter()
        .filter(|(_, gained_only)| *gained_only)
        .map(|(t, _)| *t)
        .collect();
    let later = if !gained.is_empty()
        && gained.len() < changed.len()
        && crate::incremental::analyze(plan, &gained, default_schema, false).is_ok()
    {
        gained
    } else {
        Vec::new()
    };
    let mut keys = Vec::new();
    for (table, _) in changed {
        if !later.contains(table) {
            keys.extend(read_keys(plan, table, default_schema)?);
        }
    }
    Ok(Regions {
        keys,
        later: later.into_iter().cloned().collect(),
    })
}

/// `expr` with its columns unqualified (a predicate over the view table's own columns).
pub(crate) fn unqualified(expr: Expr) -> Expr {
    expr.transform_up(|e| match e {
        Expr::Column(c) => Ok(Transformed::yes(col(Column::new_unqualified(c.name)))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
    .unwrap_or_else(|_| lit(false))
}
