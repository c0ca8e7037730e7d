//! Filters as query parameters. A `filter.<column>.<op>` option says the API keeps the
//! records whose `<column>` compares `<op>` with the parameter's value; a query's comparison of
//! that column with a literal is sent as the parameter when the API's comparison keeps every
//! record the query's keeps (`taken_at > X` with `gt` or `ge`, `taken_at >= X` with `ge` only).
//! The scan applies every pushed comparison again to each page ([`apply`]), so an API that
//! rounds, ignores or loosens a parameter cannot change an answer: pushed filters are exact.

use chrono::{DateTime, SecondsFormat};
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::{and, or_kleene};
use datafusion::arrow::compute::kernels::cmp;
use datafusion::arrow::compute::{filter_record_batch, is_null};
use datafusion::arrow::error::ArrowError;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

use medlake_source::json::Column;

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    /// The `<op>` of a `filter.<column>.<op>` option.
    pub fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "eq" => Op::Eq,
            "gt" => Op::Gt,
            "ge" | "gte" => Op::Ge,
            "lt" => Op::Lt,
            "le" | "lte" => Op::Le,
            _ => return None,
        })
    }

    fn from_operator(op: &Operator) -> Option<Op> {
        Some(match op {
            Operator::Eq => Op::Eq,
            Operator::Gt => Op::Gt,
            Operator::GtEq => Op::Ge,
            Operator::Lt => Op::Lt,
            Operator::LtEq => Op::Le,
            _ => return None,
        })
    }

    /// `a op b` as `b op' a`.
    fn flip(self) -> Op {
        match self {
            Op::Eq => Op::Eq,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
        }
    }

    /// Whether an API keeping `column self value` keeps every record that the query's
    /// `column query value` keeps.
    fn covers(self, query: Op) -> bool {
        self == query
            || matches!(
                (self, query),
                (Op::Ge, Op::Gt | Op::Eq) | (Op::Le, Op::Lt | Op::Eq)
            )
    }

    fn lower_bound(self) -> bool {
        matches!(self, Op::Gt | Op::Ge)
    }
}

/// A `filter.<column>.<op>` option: the API's query parameter for a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterParam {
    pub column: usize,
    pub op: Op,
    pub param: String,
}

/// A comparison the scan applies to every page.
#[derive(Clone, Debug, PartialEq)]
pub struct Predicate {
    pub column: usize,
    pub op: Op,
    /// Of the column's type.
    pub value: ScalarValue,
    /// Rows whose column is NULL pass too (a full extraction pinned at a watermark).
    pub or_null: bool,
}

/// A query parameter a scan sends.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamValue {
    pub name: String,
    pub op: Op,
    pub value: ScalarValue,
}

/// The text a value is sent as: numbers and text as they are, dates `YYYY-MM-DD`,
/// timestamps RFC 3339 (`Z`) for time-zone columns and `YYYY-MM-DDTHH:MM:SS[.f]` for the
/// others, or `format` (chrono strftime) when given.
pub fn format_param(value: &ScalarValue, format: Option<&str>) -> Option<String> {
    use ScalarValue as S;
    Some(match value {
        S::TimestampMicrosecond(Some(us), tz) => {
            let t = DateTime::from_timestamp_micros(*us)?;
            match (format, tz) {
                (Some(f), _) => t.format(f).to_string(),
                (None, Some(_)) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                (None, None) => t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
            }
        }
        S::Int8(Some(_))
        | S::Int16(Some(_))
        | S::Int32(Some(_))
        | S::Int64(Some(_))
        | S::UInt8(Some(_))
        | S::UInt16(Some(_))
        | S::UInt32(Some(_))
        | S::UInt64(Some(_))
        | S::Float32(Some(_))
        | S::Float64(Some(_))
        | S::Boolean(Some(_))
        | S::Decimal128(Some(_), _, _)
        | S::Date32(Some(_)) => value.to_string(),
        S::Utf8(Some(s)) => s.clone(),
        _ => return None,
    })
}

/// A filter as a predicate and the parameters it is sent as; `None` when no parameter can
/// carry it (DataFusion then applies it).
pub fn translate(
    expr: &Expr,
    columns: &[Column],
    params: &[FilterParam],
) -> Option<(Predicate, Vec<ParamValue>)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    let op = Op::from_operator(op)?;
    let (column, literal, op) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, v, op),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, v, op.flip()),
        _ => return None,
    };
    if literal.is_null() {
        return None;
    }
    let index = columns.iter().position(|c| c.name == column.name)?;
    let data_type = &columns[index].data_type;
    let value = literal.cast_to(data_type).ok()?;
    // Only a lossless cast: `hr >= 70.5` is not `hr >= 70`.
    if value.is_null() || value.cast_to(&literal.data_type()).ok()? != *literal {
        return None;
    }
    format_param(&value, None)?;
    let sent: Vec<ParamValue> = params
        .iter()
        .filter(|p| p.column == index && p.op.covers(op))
        .map(|p| ParamValue {
            name: p.param.clone(),
            op: p.op,
            value: value.clone(),
        })
        .collect();
    if sent.is_empty() {
        return None;
    }
    Some((
        Predicate {
            column: index,
            op,
            value,
            or_null: false,
        },
        sent,
    ))
}

/// One value per parameter: the highest of several lower bounds, the lowest of several upper
/// bounds (each is re-checked by the scan, so any of them would be correct; the tightest
/// reads least), the first of several equalities.
pub fn merge(values: Vec<ParamValue>) -> Vec<ParamValue> {
    let mut merged: Vec<ParamValue> = Vec::new();
    for v in values {
        match merged.iter_mut().find(|m| m.name == v.name) {
            None => merged.push(v),
            Some(m) => {
                let tighter = match v.value.partial_cmp(&m.value) {
                    Some(std::cmp::Ordering::Greater) => v.op.lower_bound(),
                    Some(std::cmp::Ordering::Less) => !v.op.lower_bound() && v.op != Op::Eq,
                    _ => false,
                };
                if tighter {
                    *m = v;
                }
            }
        }
    }
    merged
}

/// The rows of `batch` that pass every predicate.
pub fn apply(batch: &RecordBatch, predicates: &[Predicate]) -> Result<RecordBatch, ArrowError> {
    let mut mask: Option<BooleanArray> = None;
    for p in predicates {
        let column = batch.column(p.column);
        let value = p
            .value
            .to_scalar()
            .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
        let mut keep = match p.op {
            Op::Eq => cmp::eq(column, &value),
            Op::Gt => cmp::gt(column, &value),
            Op::Ge => cmp::gt_eq(column, &value),
            Op::Lt => cmp::lt(column, &value),
            Op::Le => cmp::lt_eq(column, &value),
        }?;
        if p.or_null {
            keep = or_kleene(&keep, &is_null(column)?)?;
        }
        mask = Some(match mask {
            None => keep,
            Some(m) => and(&m, &keep)?,
        });
    }
    match mask {
        None => Ok(batch.clone()),
        Some(mask) => filter_record_batch(batch, &mask),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    use datafusion::logical_expr::{col, lit};
    use medlake_source::json::Path;

    fn columns() -> Vec<Column> {
        let column = |name: &str, data_type: DataType| Column {
            name: name.into(),
            data_type,
            nullable: true,
            path: Path::Key(name.into()),
        };
        vec![
            column("hr", DataType::Int32),
            column(
                "taken_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
        ]
    }

    #[test]
    fn comparisons_map_to_parameters_only_when_the_api_keeps_enough() {
        let since = |op| FilterParam {
            column: 1,
            op,
            param: "since".into(),
        };
        let at = ScalarValue::TimestampMicrosecond(Some(1_714_557_600_000_000), Some("UTC".into()));
        let gt = col("taken_at").gt(lit(at.clone()));
        let ge = col("taken_at").gt_eq(lit(at.clone()));
        let flipped = lit(at.clone()).lt(col("taken_at"));
        let gt_param = [since(Op::Gt)];
        let ge_param = [since(Op::Ge)];
        let (p, sent) = translate(&gt, &columns(), &gt_param).unwrap();
        assert_eq!((p.op, sent.len()), (Op::Gt, 1));
        assert_eq!(
            format_param(&sent[0].value, None).as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
        assert!(translate(&flipped, &columns(), &gt_param).is_some());
        // An API keeping `> X` loses the rows equal to X that `>= X` wants.
        assert!(translate(&ge, &columns(), &gt_param).is_none());
        assert!(translate(&ge, &columns(), &ge_param).is_some());
        assert!(translate(&gt, &columns(), &ge_param).is_some());
        // No parameter for hr; a lossy literal is never sent.
        assert!(translate(&col("hr").gt(lit(70)), &columns(), &gt_param).is_none());
        let hr = [FilterParam {
            column: 0,
            op: Op::Ge,
            param: "min_hr".into(),
        }];
        assert!(translate(&col("hr").gt_eq(lit(70)), &columns(), &hr).is_some());
        assert!(translate(&col("hr").gt_eq(lit(70.5)), &columns(), &hr).is_none());
        assert_eq!(format_param(&at, Some("%s")).as_deref(), Some("1714557600"));
    }

    #[test]
    fn the_tightest_bound_is_sent() {
        let v = |n: i32, op| ParamValue {
            name: "min".into(),
            op,
            value: ScalarValue::Int32(Some(n)),
        };
        let merged = merge(vec![v(5, Op::Gt), v(9, Op::Gt), v(7, Op::Gt)]);
        assert_eq!(merged, vec![v(9, Op::Gt)]);
        let merged = merge(vec![v(5, Op::Lt), v(3, Op::Lt)]);
        assert_eq!(merged, vec![v(3, Op::Lt)]);
    }
}
