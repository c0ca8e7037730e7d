//! Range joins: how far apart the two sides of a join's inequality conditions may lie.
//!
//! A join such as `o.hour <= h.hour AND o.hour > h.hour - INTERVAL '12 hours'` holds only rows
//! where `h.hour − o.hour` lies in `[0, 12 hours]` (a [`Span`]). Two uses:
//!
//! - lineage: a changed row whose `o.hour` is `k` can only change the view's rows whose
//!   `h.hour` lies in `[k, k + 12 hours]`, a key known up to a span (a *reach*, see
//!   [`crate::lineage`]): a refresh recomputes those hours, not every hour of the key's
//!   other columns;
//! - a region's recompute ([`transfer`]): when the view's rows are recomputed for `h.hour`
//!   in `[a, b]`, the join's other side needs only `o.hour` in `[a − 12 hours, b]`.
//!   DataFusion infers filters across equalities only, so this adds the range as a filter on
//!   the other side, which the optimizer pushes to the scans (files and row groups outside
//!   it are skipped).
//!
//! Offsets are whole integers for integer columns and nanoseconds (literal intervals of
//! hours, minutes and seconds: no days or months, whose length varies) for timestamps.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Distinct, Expr, ExprSchemable, Filter, JoinType, LogicalPlan, Operator,
    lit,
};

/// `right − left ∈ [low, high]` for the rows a join keeps (either end may be unknown).
pub(crate) struct Span {
    /// An expression over the join's left input.
    pub left: Expr,
    /// An expression over the join's right input.
    pub right: Expr,
    pub low: Option<i128>,
    pub high: Option<i128>,
}

/// The spans a join's inequality conditions put between its two sides (the conditions of
/// one pair of expressions combined).
pub(crate) fn spans(j: &datafusion::logical_expr::Join) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let Some(filter) = &j.filter else {
        return out;
    };
    for conjunct in split_conjunction(filter) {
        let Some(span) = span_of(conjunct, j.left.schema(), j.right.schema()) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|s| s.left == span.left && s.right == span.right)
        {
            Some(s) => {
                s.low = tighter(s.low, span.low, i128::max);
                s.high = tighter(s.high, span.high, i128::min);
            }
            None => out.push(span),
        }
    }
    out
}

fn tighter(a: Option<i128>, b: Option<i128>, pick: fn(i128, i128) -> i128) -> Option<i128> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// The span one condition `p op q` (op one of <, <=, >, >=) puts between the sides.
fn span_of(conjunct: &Expr, left: &DFSchema, right: &DFSchema) -> Option<Span> {
    let Expr::BinaryExpr(BinaryExpr {
        left: p,
        op,
        right: q,
    }) = conjunct
    else {
        return None;
    };
    let less = match op {
        Operator::Lt | Operator::LtEq => true,
        Operator::Gt | Operator::GtEq => false,
        _ => return None,
    };
    let (p_base, p_shift) = shifted(p)?;
    let (q_base, q_shift) = shifted(q)?;
    // Written as `a + sa op b + sb` with `a` over the left input and `b` over the right one.
    let (a, sa, b, sb, less) = if within(&p_base, left) && within(&q_base, right) {
        (p_base, p_shift, q_base, q_shift, less)
    } else if within(&p_base, right) && within(&q_base, left) {
        (q_base, q_shift, p_base, p_shift, !less)
    } else {
        return None;
    };
    let kind = a.get_type(left).ok()?;
    if kind != b.get_type(right).ok()? {
        return None;
    }
    let (sa, sb) = (offsets(&sa, &kind)?, offsets(&sb, &kind)?);
    // a + sa <= b + sb: b − a >= sa − sb, at least min(sa) − max(sb); a + sa >= b + sb:
    // b − a <= sa − sb, at most max(sa) − min(sb).
    let (low, high) = if less {
        (Some(sa.0.checked_sub(sb.1)?), None)
    } else {
        (None, Some(sa.1.checked_sub(sb.0)?))
    };
    Some(Span {
        left: a,
        right: b,
        low,
        high,
    })
}

/// `e` as a base expression and the offsets added to it: `x`, `x + c` or `x - c` (the
/// offsets negated), with `c` a literal or a CASE whose results are all literals.
fn shifted(e: &Expr) -> Option<(Expr, Vec<ScalarValue>)> {
    if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e
        && matches!(op, Operator::Plus | Operator::Minus)
        && let Some(values) = constants(right)
    {
        let values = if *op == Operator::Minus {
            values
                .iter()
                .map(ScalarValue::arithmetic_negate)
                .collect::<DfResult<Vec<_>>>()
                .ok()?
        } else {
            values
        };
        return (constants(left).is_none()).then(|| ((**left).clone(), values));
    }
    (constants(e).is_none()).then(|| (e.clone(), Vec::new()))
}

/// The values `e` can take when it is a literal or a CASE of literals.
fn constants(e: &Expr) -> Option<Vec<ScalarValue>> {
    match e {
        Expr::Literal(v, _) => Some(vec![v.clone()]),
        Expr::Case(case) => {
            let mut values = Vec::new();
            for (_, then) in &case.when_then_expr {
                values.extend(constants(then)?);
            }
            values.extend(constants(case.else_expr.as_deref()?)?);
            Some(values)
        }
        _ => None,
    }
}

/// The least and greatest of `values` as offsets of a `kind` column (0 when there are none).
fn offsets(values: &[ScalarValue], kind: &DataType) -> Option<(i128, i128)> {
    let mut range: Option<(i128, i128)> = None;
    for value in values {
        let v = offset(value, kind)?;
        range = Some(range.map_or((v, v), |(l, h)| (l.min(v), h.max(v))));
    }
    Some(range.unwrap_or((0, 0)))
}

fn offset(value: &ScalarValue, kind: &DataType) -> Option<i128> {
    match (value, kind) {
        (ScalarValue::IntervalMonthDayNano(Some(v)), DataType::Timestamp(..))
            if v.months == 0 && v.days == 0 =>
        {
            Some(i128::from(v.nanoseconds))
        }
        (ScalarValue::IntervalDayTime(Some(v)), DataType::Timestamp(..)) if v.days == 0 => {
            Some(i128::from(v.milliseconds) * 1_000_000)
        }
        (_, DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64) => {
            match value.cast_to(&DataType::Int64).ok()? {
                ScalarValue::Int64(Some(v)) => Some(i128::from(v)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether every column of `e` (at least one) is `schema`'s.
fn within(e: &Expr, schema: &DFSchema) -> bool {
    let columns = e.column_refs();
    !columns.is_empty() && columns.iter().all(|c| schema.has_column(c))
}

/// `value` moved by `by` (an offset of its type, see the module's comment); `None` when it
/// cannot be (another type, an overflow, a step finer than the timestamp's unit).
pub(crate) fn shift(value: &ScalarValue, by: i128) -> Option<ScalarValue> {
    if by == 0 {
        return Some(value.clone());
    }
    let moved = |v: &i64, unit_nanos: i128| -> Option<i64> {
        (by % unit_nanos == 0)
            .then(|| i128::from(*v) + by / unit_nanos)
            .and_then(|n| i64::try_from(n).ok())
    };
    Some(match value {
        ScalarValue::TimestampSecond(Some(v), tz) => {
            ScalarValue::TimestampSecond(Some(moved(v, 1_000_000_000)?), tz.clone())
        }
        ScalarValue::TimestampMillisecond(Some(v), tz) => {
            ScalarValue::TimestampMillisecond(Some(moved(v, 1_000_000)?), tz.clone())
        }
        ScalarValue::TimestampMicrosecond(Some(v), tz) => {
            ScalarValue::TimestampMicrosecond(Some(moved(v, 1_000)?), tz.clone())
        }
        ScalarValue::TimestampNanosecond(Some(v), tz) => {
            ScalarValue::TimestampNanosecond(Some(moved(v, 1)?), tz.clone())
        }
        ScalarValue::Int8(Some(_))
        | ScalarValue::Int16(Some(_))
        | ScalarValue::Int32(Some(_))
        | ScalarValue::Int64(Some(_)) => {
            let ScalarValue::Int64(Some(v)) = value.cast_to(&DataType::Int64).ok()? else {
                return None;
            };
            let n = i64::try_from(i128::from(v).checked_add(by)?).ok()?;
            ScalarValue::Int64(Some(n))
                .cast_to(&value.data_type())
                .ok()?
        }
        _ => return None,
    })
}

/// Known bounds of one column's values: every row that matters holds a value in
/// `[low, high]` (either end may be open).
#[derive(Clone, Debug)]
pub(crate) struct Bound {
    pub column: Column,
    pub low: Option<ScalarValue>,
    pub high: Option<ScalarValue>,
}

impl Bound {
    fn renamed(&self, column: Column) -> Bound {
        Bound {
            column,
            ..self.clone()
        }
    }

    fn predicate(&self, e: Expr) -> Option<Expr> {
        let low = self.low.clone().map(|v| e.clone().gt_eq(lit(v)));
        let high = self.high.clone().map(|v| e.clone().lt_eq(lit(v)));
        match (low, high) {
            (Some(l), Some(h)) => Some(l.and(h)),
            (l, h) => l.or(h),
        }
    }

    /// The bound a column `c` has when `c − self ∈ [low, high]`.
    fn moved(&self, column: Column, low: Option<i128>, high: Option<i128>) -> Option<Bound> {
        let bound = Bound {
            column,
            low: self.low.as_ref().zip(low).and_then(|(v, by)| shift(v, by)),
            high: self
                .high
                .as_ref()
                .zip(high)
                .and_then(|(v, by)| shift(v, by)),
        };
        (bound.low.is_some() || bound.high.is_some()).then_some(bound)
    }
}

/// The bounds a predicate's conjuncts put on bare columns: `c BETWEEN x AND y`,
/// `c IN (x, ...)`, `c = x`, `c >= x`, `c <= x` (and strict ones, closed) with literals.
pub(crate) fn bounds_of(predicate: &Expr) -> Vec<Bound> {
    let mut out: Vec<Bound> = Vec::new();
    for conjunct in split_conjunction(predicate) {
        let Some(bound) = bound_of(conjunct) else {
            continue;
        };
        match out.iter_mut().find(|b| b.column == bound.column) {
            Some(b) => {
                b.low = pick(b.low.take(), bound.low, true);
                b.high = pick(b.high.take(), bound.high, false);
            }
            None => out.push(bound),
        }
    }
    out
}

/// The tighter of two ends: the greater low (`greater`) or the lesser high.
fn pick(a: Option<ScalarValue>, b: Option<ScalarValue>, greater: bool) -> Option<ScalarValue> {
    match (a, b) {
        (Some(a), Some(b)) => match a.partial_cmp(&b) {
            Some(order) if order.is_gt() == greater => Some(a),
            Some(_) => Some(b),
            None => Some(a),
        },
        (a, b) => a.or(b),
    }
}

fn bound_of(conjunct: &Expr) -> Option<Bound> {
    let value = |e: &Expr| match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v.clone()),
        _ => None,
    };
    let column = |e: &Expr| match e {
        Expr::Column(c) => Some(c.clone()),
        _ => None,
    };
    match conjunct {
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => Some(Bound {
            column: column(expr)?,
            low: Some(value(low)?),
            high: Some(value(high)?),
        }),
        Expr::InList(list) if !list.negated => {
            let mut values = list.list.iter().map(value);
            let first = values.next()??;
            let (mut low, mut high) = (first.clone(), first);
            for v in values {
                let v = v?;
                low = pick(Some(low), Some(v.clone()), false)?;
                high = pick(Some(high), Some(v), true)?;
            }
            Some(Bound {
                column: column(&list.expr)?,
                low: Some(low),
                high: Some(high),
            })
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (c, op, v) = match (column(left), value(right), column(right), value(left)) {
                (Some(c), Some(v), ..) => (c, *op, v),
                (_, _, Some(c), Some(v)) => (c, op.swap()?, v),
                _ => return None,
            };
            let (low, high) = match op {
                Operator::Eq => (Some(v.clone()), Some(v)),
                Operator::Gt | Operator::GtEq => (Some(v), None),
                Operator::Lt | Operator::LtEq => (None, Some(v)),
                _ => return None,
            };
            Some(Bound {
                column: c,
                low,
                high,
            })
        }
        _ => None,
    }
}

/// `plan` with filters added where a join's conditions carry `bounds` (on `plan`'s output
/// columns, holding for every output row that matters) to its other side: a range join's
/// spans and its equalities, toward the side whose rows only matter by what they match (an
/// inner join's either side, an outer or semi join's filtering side). Bounds follow output
/// columns down through filters, sorts, DISTINCT, projections and aliases of columns, GROUP
/// BY columns, windows' shared PARTITION BY columns, unions and joins (to the side whose
/// rows the join keeps); elsewhere they stop. The result is the same for every output row
/// within `bounds`.
pub(crate) fn transfer(plan: &LogicalPlan, bounds: &[Bound]) -> DfResult<LogicalPlan> {
    if bounds.is_empty() {
        return Ok(plan.clone());
    }
    let below: Vec<Vec<Bound>> = match plan {
        LogicalPlan::Filter(_)
        | LogicalPlan::Distinct(Distinct::All(_))
        | LogicalPlan::Repartition(_) => vec![bounds.to_vec()],
        LogicalPlan::Sort(s) if s.fetch.is_none() => vec![bounds.to_vec()],
        LogicalPlan::Projection(p) => vec![mapped(bounds, plan, |i| {
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => Some(c),
                _ => None,
            }
        })],
        LogicalPlan::SubqueryAlias(a) => {
            let from = a.input.schema().columns();
            vec![mapped(bounds, plan, |i| from.get(i).cloned())]
        }
        LogicalPlan::Aggregate(a) => vec![mapped(bounds, plan, |i| match a.group_expr.get(i) {
            Some(Expr::Column(c)) => Some(c.clone()),
            _ => None,
        })],
        LogicalPlan::Window(w) => {
            let shared = |c: &Column| {
                w.window_expr.iter().all(|e| match e.clone().unalias() {
                    Expr::WindowFunction(f) => {
                        f.params.partition_by.contains(&Expr::Column(c.clone()))
                    }
                    _ => false,
                })
            };
            let input = w.input.schema();
            vec![
                bounds
                    .iter()
                    .filter(|b| input.has_column(&b.column) && shared(&b.column))
                    .cloned()
                    .collect(),
            ]
        }
        LogicalPlan::Union(u) => u
            .inputs
            .iter()
            .map(|branch| {
                let to = branch.schema().columns();
                mapped(bounds, plan, |i| to.get(i).cloned())
            })
            .collect(),
        LogicalPlan::Join(j) => return across_join(plan, j, bounds),
        _ => return Ok(plan.clone()),
    };
    let inputs = plan
        .inputs()
        .into_iter()
        .zip(below)
        .map(|(input, bounds)| transfer(input, &bounds))
        .collect::<DfResult<Vec<_>>>()?;
    plan.with_new_exprs(plan.expressions(), inputs)
}

/// `bounds` on output column `i` of `plan` as bounds on the input column `to(i)`.
fn mapped(
    bounds: &[Bound],
    plan: &LogicalPlan,
    to: impl Fn(usize) -> Option<Column>,
) -> Vec<Bound> {
    let schema = plan.schema();
    bounds
        .iter()
        .filter_map(|b| {
            let i = schema.index_of_column(&b.column).ok()?;
            to(i).map(|c| b.renamed(c))
        })
        .collect()
}

fn across_join(
    plan: &LogicalPlan,
    j: &datafusion::logical_expr::Join,
    bounds: &[Bound],
) -> DfResult<LogicalPlan> {
    use JoinType::*;
    // Which sides' rows the join keeps by their own values (bounds on their columns hold
    // for them), and which sides' rows matter only by what they match.
    let (keeps_left, keeps_right) = match j.join_type {
        Inner => (true, true),
        Left | LeftSemi | LeftAnti | LeftMark => (true, false),
        Right | RightSemi | RightAnti | RightMark => (false, true),
        Full => (false, false),
    };
    let mut sides: [Vec<Bound>; 2] = [Vec::new(), Vec::new()];
    let schemas = [j.left.schema(), j.right.schema()];
    for b in bounds {
        for (side, keeps) in [(0, keeps_left), (1, keeps_right)] {
            if keeps && schemas[side].has_column(&b.column) {
                sides[side].push(b.clone());
            }
        }
    }
    // Carried across: from a side to the other when the other's rows matter only by what
    // they match on an inner join's either side or an outer join's kept side.
    let mut added: [Vec<(Expr, Bound)>; 2] = [Vec::new(), Vec::new()];
    let mut relations: Vec<Span> = spans(j);
    for (l, r) in crate::lineage::equi_pairs(j) {
        relations.push(Span {
            left: l,
            right: r,
            low: Some(0),
            high: Some(0),
        });
    }
    for span in &relations {
        for (from, to, other) in [(0, 1, &span.right), (1, 0, &span.left)] {
            let mine = if from == 0 { &span.left } else { &span.right };
            let Expr::Column(c) = mine else { continue };
            let Some(known) = sides[from].iter().find(|b| b.column == *c) else {
                continue;
            };
            // right − left ∈ [low, high]: right ∈ left + [low, high], left ∈ right − [high, low].
            let (low, high) = if from == 0 {
                (span.low, span.high)
            } else {
                (span.high.map(|h| -h), span.low.map(|l| -l))
            };
            // (A bound of a kept side holds for the rows that matter; the other side's rows
            // matter only by what they match, whatever the join keeps of them.)
            let column = match other {
                Expr::Column(c) => c.clone(),
                _ => Column::new_unqualified(other.schema_name().to_string()),
            };
            if let Some(bound) = known.moved(column, low, high) {
                added[to].push((other.clone(), bound));
            }
        }
    }
    let mut inputs = Vec::new();
    for (side, input) in [&j.left, &j.right].into_iter().enumerate() {
        let mut known = sides[side].clone();
        let mut filters = Vec::new();
        for (e, bound) in &added[side] {
            filters.extend(bound.predicate(e.clone()));
            if matches!(e, Expr::Column(_)) {
                known.push(bound.clone());
            }
        }
        let mut input = transfer(input, &known)?;
        if let Some(predicate) = filters.into_iter().reduce(Expr::and) {
            input = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?);
        }
        inputs.push(input);
    }
    plan.with_new_exprs(plan.expressions(), inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::prelude::SessionContext;

    const QUERY: &str = "SELECT h.patient, h.hour, count(*) AS n, max(o.value) AS top \
         FROM (SELECT DISTINCT patient, hour FROM obs) h \
         JOIN obs o ON o.patient = h.patient AND o.hour <= h.hour \
          AND o.hour > h.hour - CASE WHEN o.value > 100 THEN INTERVAL '3 hours' ELSE INTERVAL '1 hour' END \
         GROUP BY h.patient, h.hour";

    async fn rows(ctx: &SessionContext, plan: LogicalPlan) -> String {
        let frame = datafusion::dataframe::DataFrame::new(ctx.state(), plan)
            .sort_by(vec![
                datafusion::prelude::col("patient"),
                datafusion::prelude::col("hour"),
            ])
            .unwrap();
        pretty_format_batches(&frame.collect().await.unwrap())
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_bound_of_the_region_crosses_a_range_join_to_the_other_side() {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE obs AS SELECT * FROM (VALUES \
             ('p1', TIMESTAMP '2026-01-01 07:00:00', 120.0), ('p1', TIMESTAMP '2026-01-01 08:00:00', 1.0), \
             ('p1', TIMESTAMP '2026-01-01 09:00:00', 2.0), ('p1', TIMESTAMP '2026-01-01 11:00:00', 3.0), \
             ('p2', TIMESTAMP '2026-01-01 10:00:00', 4.0), ('p2', TIMESTAMP '2026-01-01 12:00:00', 5.0), \
             ('p3', TIMESTAMP '2026-01-01 09:00:00', 6.0)) AS t(patient, hour, value)",
        )
        .await
        .unwrap();
        let plan = ctx.sql(QUERY).await.unwrap().into_unoptimized_plan();
        let schema = plan.schema().clone();
        let at = |h: i64| {
            ScalarValue::TimestampNanosecond(
                Some(1_767_225_600_000_000_000 + h * 3_600_000_000_000),
                None,
            )
        };
        let region = Expr::Column(Column::from(schema.qualified_field(1)))
            .between(lit(at(9)), lit(at(10)))
            .and(
                Expr::Column(Column::from(schema.qualified_field(0)))
                    .in_list(vec![lit("p1"), lit("p2")], false),
            );
        let bounds = bounds_of(&region);
        assert_eq!(bounds.len(), 2);
        let bounded = transfer(&plan, &bounds).unwrap();
        // The other side (o) is filtered: the hour within [9 − 3 hours, 10] (the CASE's longest
        // span), the patient within [p1, p2] (an equality).
        let mut carried = Vec::new();
        bounded
            .apply(|node| {
                if let LogicalPlan::Filter(f) = node
                    && let LogicalPlan::SubqueryAlias(a) = f.input.as_ref()
                    && a.alias.table() == "o"
                {
                    carried.extend(bounds_of(&f.predicate));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        let of = |name: &str| {
            carried
                .iter()
                .find(|b| b.column.name == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            (of("hour").low, of("hour").high),
            (Some(at(6)), Some(at(10)))
        );
        assert_eq!(
            (of("patient").low, of("patient").high),
            (Some(ScalarValue::from("p1")), Some(ScalarValue::from("p2")))
        );
        // Within the region, the same rows with and without the filters.
        let filtered = |p: LogicalPlan| {
            datafusion::logical_expr::LogicalPlanBuilder::from(p)
                .filter(region.clone())
                .unwrap()
                .build()
                .unwrap()
        };
        let expected = rows(&ctx, filtered(plan)).await;
        assert_eq!(rows(&ctx, filtered(bounded)).await, expected);
        assert!(
            expected.contains("| p1      | 2026-01-01T09:00:00 | 2 | 120.0 |"),
            "{expected}"
        );
    }

    #[test]
    fn spans_read_strict_and_shifted_conditions_from_either_side() {
        let schema = |q: &str| {
            DFSchema::try_from_qualified_schema(
                q,
                &datafusion::arrow::datatypes::Schema::new(vec![
                    datafusion::arrow::datatypes::Field::new("x", DataType::Int64, true),
                ]),
            )
            .unwrap()
        };
        let (l, r) = (schema("l"), schema("r"));
        let x = |q: &str| datafusion::prelude::col(format!("{q}.x"));
        // r.x − l.x ∈ [2, 5]: l.x + 2 <= r.x and r.x < l.x + 5 (closed: an upper bound).
        let low = span_of(&(x("l") + lit(2_i64)).lt_eq(x("r")), &l, &r).unwrap();
        let high = span_of(&x("r").lt(x("l") + lit(5_i64)), &l, &r).unwrap();
        assert_eq!(
            (low.low, low.high, high.low, high.high),
            (Some(2), None, None, Some(5))
        );
        assert!(span_of(&x("l").eq(x("r")), &l, &r).is_none());
        assert!(span_of(&x("l").lt(lit(3_i64)), &l, &r).is_none());
    }

    #[test]
    fn shifts_stay_in_their_type_and_refuse_what_they_cannot_hold() {
        let hour = 3_600_000_000_000_i128;
        let t = ScalarValue::TimestampMicrosecond(Some(7_200_000_000), Some("UTC".into()));
        assert_eq!(
            shift(&t, -hour),
            Some(ScalarValue::TimestampMicrosecond(
                Some(3_600_000_000),
                Some("UTC".into())
            ))
        );
        assert_eq!(shift(&t, 1), None, "a nanosecond is finer than the unit");
        assert_eq!(
            shift(&ScalarValue::Int32(Some(5)), 3),
            Some(ScalarValue::Int32(Some(8)))
        );
        assert_eq!(shift(&ScalarValue::Int8(Some(120)), 10), None);
        assert_eq!(shift(&ScalarValue::Utf8(Some("a".into())), 1), None);
    }
}
