//! Filters translated to T-SQL. Every identifier is quoted ([`quote`]) and every value is a
//! parameter (`@P1`, `@P2`, ...) bound with its type by `sp_executesql`: nothing a user or a
//! source writes is ever spliced into the statement text.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Like, Operator};
use datafusion::scalar::ScalarValue;
use serde::{Deserialize, Serialize};
use tiberius::Query;

use super::Column;

/// A typed statement parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Param {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Decimal { value: i128, scale: u8 },
    Date(NaiveDate),
    Time(NaiveTime),
    DateTime(NaiveDateTime),
    DateTimeOffset(DateTime<FixedOffset>),
    Binary(Vec<u8>),
}

impl Param {
    pub fn bind(&self, query: &mut Query<'_>) {
        match self.clone() {
            Param::Int(v) => query.bind(v),
            Param::Float(v) => query.bind(v),
            Param::Text(v) => query.bind(v),
            Param::Bool(v) => query.bind(v),
            Param::Decimal { value, scale } => {
                query.bind(tiberius::numeric::Numeric::new_with_scale(value, scale))
            }
            Param::Date(v) => query.bind(v),
            Param::Time(v) => query.bind(v),
            Param::DateTime(v) => query.bind(v),
            Param::DateTimeOffset(v) => query.bind(v),
            Param::Binary(v) => query.bind(v),
        }
    }

    /// A parameter from a DataFusion literal; `None` for values T-SQL cannot take as one.
    pub fn from_scalar(value: &ScalarValue) -> Option<Param> {
        use ScalarValue as S;
        let utc = |micros: i64| DateTime::from_timestamp_micros(micros).map(|d| d.fixed_offset());
        Some(match value {
            S::Int8(Some(v)) => Param::Int(*v as i64),
            S::Int16(Some(v)) => Param::Int(*v as i64),
            S::Int32(Some(v)) => Param::Int(*v as i64),
            S::Int64(Some(v)) => Param::Int(*v),
            S::UInt8(Some(v)) => Param::Int(*v as i64),
            S::UInt16(Some(v)) => Param::Int(*v as i64),
            S::UInt32(Some(v)) => Param::Int(*v as i64),
            S::UInt64(Some(v)) => Param::Int(i64::try_from(*v).ok()?),
            S::Float32(Some(v)) if v.is_finite() => Param::Float(*v as f64),
            S::Float64(Some(v)) if v.is_finite() => Param::Float(*v),
            S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v)) => {
                Param::Text(v.clone())
            }
            S::Boolean(Some(v)) => Param::Bool(*v),
            S::Decimal128(Some(v), _, scale) if *scale >= 0 => Param::Decimal {
                value: *v,
                scale: *scale as u8,
            },
            S::Date32(Some(days)) => {
                Param::Date(DateTime::from_timestamp(*days as i64 * 86_400, 0)?.date_naive())
            }
            S::Time64Nanosecond(Some(ns)) => {
                Param::Time(NaiveTime::from_num_seconds_from_midnight_opt(
                    u32::try_from(*ns / 1_000_000_000).ok()?,
                    u32::try_from(*ns % 1_000_000_000).ok()?,
                )?)
            }
            S::TimestampMicrosecond(Some(us), None) => {
                Param::DateTime(DateTime::from_timestamp_micros(*us)?.naive_utc())
            }
            S::TimestampMillisecond(Some(ms), None) => {
                Param::DateTime(DateTime::from_timestamp_millis(*ms)?.naive_utc())
            }
            S::TimestampSecond(Some(s), None) => {
                Param::DateTime(DateTime::from_timestamp(*s, 0)?.naive_utc())
            }
            S::TimestampNanosecond(Some(ns), None) => {
                Param::DateTime(DateTime::from_timestamp_nanos(*ns).naive_utc())
            }
            S::TimestampMicrosecond(Some(us), Some(_)) => Param::DateTimeOffset(utc(*us)?),
            S::TimestampMillisecond(Some(ms), Some(_)) => {
                Param::DateTimeOffset(utc(ms.checked_mul(1000)?)?)
            }
            S::TimestampSecond(Some(s), Some(_)) => {
                Param::DateTimeOffset(utc(s.checked_mul(1_000_000)?)?)
            }
            S::TimestampNanosecond(Some(ns), Some(_)) => Param::DateTimeOffset(utc(*ns / 1000)?),
            S::Binary(Some(v)) | S::LargeBinary(Some(v)) | S::BinaryView(Some(v)) => {
                Param::Binary(v.clone())
            }
            _ => return None,
        })
    }

    /// A watermark as stored (see [`encode_mark`]) back into a parameter of the column's type.
    pub fn from_mark(mark: &str, data_type: &DataType) -> Result<Param, String> {
        let bad =
            |e: &dyn std::fmt::Display| format!("watermark '{mark}' is not a {data_type}: {e}");
        Ok(match data_type {
            DataType::UInt8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                Param::Int(mark.parse().map_err(|e| bad(&e))?)
            }
            DataType::Float32 | DataType::Float64 => {
                Param::Float(mark.parse().map_err(|e| bad(&e))?)
            }
            DataType::Decimal128(_, scale) => {
                let v = ScalarValue::try_from_string(mark.to_string(), data_type)
                    .map_err(|e| bad(&e))?;
                match v {
                    ScalarValue::Decimal128(Some(value), _, _) => Param::Decimal {
                        value,
                        scale: *scale as u8,
                    },
                    _ => return Err(bad(&"not a decimal")),
                }
            }
            DataType::Date32 => Param::Date(mark.parse().map_err(|e| bad(&e))?),
            DataType::Time64(_) => Param::Time(mark.parse().map_err(|e| bad(&e))?),
            DataType::Timestamp(_, None) => Param::DateTime(
                NaiveDateTime::parse_from_str(mark, "%Y-%m-%dT%H:%M:%S%.f").map_err(|e| bad(&e))?,
            ),
            DataType::Timestamp(_, Some(_)) => {
                Param::DateTimeOffset(DateTime::parse_from_rfc3339(mark).map_err(|e| bad(&e))?)
            }
            DataType::Binary => {
                Param::Binary(medlake_source::mark::parse_hex(mark).map_err(|e| bad(&e))?)
            }
            DataType::Utf8 => Param::Text(mark.to_string()),
            other => return Err(format!("a {other} column cannot be a watermark")),
        })
    }
}

pub use medlake_source::mark::encode_mark;

/// A filter being translated: the statement text so far and its parameters.
#[derive(Debug, Default)]
pub struct Translation {
    pub params: Vec<Param>,
}

impl Translation {
    /// `@Pn` for a new parameter.
    pub fn param(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("@P{}", self.params.len())
    }

    /// The T-SQL of the predicate `expr`, or `None` if some part of it has no faithful T-SQL
    /// form (then nothing of it is added).
    ///
    /// Text compares under the column's collation at SQL Server (usually case- and
    /// trailing-space-insensitive), so a pushed text predicate must select a superset of what
    /// DataFusion selects (DataFusion then checks it again): `=`, `IN` and `LIKE`, never
    /// negated, never ordered (`<`, `BETWEEN`: orders differ between collations).
    pub fn filter(&mut self, expr: &Expr, columns: &[Column]) -> Option<String> {
        let mark = self.params.len();
        let sql = self.predicate(expr, columns, true);
        if sql.is_none() {
            self.params.truncate(mark);
        }
        sql
    }

    fn operand(&mut self, expr: &Expr, columns: &[Column]) -> Option<String> {
        match expr {
            Expr::Column(_) | Expr::Cast(_) | Expr::TryCast(_) => {
                Some(column(expr, columns)?.quoted())
            }
            Expr::Literal(value, _) => {
                let param = Param::from_scalar(value)?;
                Some(self.param(param))
            }
            _ => None,
        }
    }

    /// `positive`: whether the predicate is under an even number of NOTs.
    fn predicate(&mut self, expr: &Expr, columns: &[Column], positive: bool) -> Option<String> {
        let collated = |c: &Column| !c.remote.compares_like_datafusion();
        Some(match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let op = match op {
                    Operator::Eq => "=",
                    Operator::NotEq => "<>",
                    Operator::Lt => "<",
                    Operator::LtEq => "<=",
                    Operator::Gt => ">",
                    Operator::GtEq => ">=",
                    Operator::And => "AND",
                    Operator::Or => "OR",
                    _ => return None,
                };
                if matches!(op, "AND" | "OR") {
                    format!(
                        "({} {op} {})",
                        self.predicate(left, columns, positive)?,
                        self.predicate(right, columns, positive)?
                    )
                } else {
                    // A comparison of a column with a value (either side).
                    let c = comparable(left, right, columns)?;
                    if collated(c) && !(op == "=" && positive) {
                        return None;
                    }
                    format!(
                        "({} {op} {})",
                        self.operand(left, columns)?,
                        self.operand(right, columns)?
                    )
                }
            }
            Expr::Not(inner) => format!("(NOT {})", self.predicate(inner, columns, !positive)?),
            Expr::IsNull(inner) => format!("({} IS NULL)", column(inner, columns)?.quoted()),
            Expr::IsNotNull(inner) => format!("({} IS NOT NULL)", column(inner, columns)?.quoted()),
            Expr::Between(Between {
                expr,
                negated,
                low,
                high,
            }) => {
                let c = column(expr, columns)?;
                if collated(c) {
                    return None;
                }
                literal(low)?;
                literal(high)?;
                let not = if *negated { "NOT " } else { "" };
                format!(
                    "({} {not}BETWEEN {} AND {})",
                    c.quoted(),
                    self.operand(low, columns)?,
                    self.operand(high, columns)?
                )
            }
            Expr::InList(list) => {
                let c = column(&list.expr, columns)?;
                if list.list.is_empty()
                    || list.list.len() > 2000
                    || collated(c) && (list.negated || !positive)
                {
                    return None;
                }
                let mut values = Vec::with_capacity(list.list.len());
                for item in &list.list {
                    literal(item)?;
                    values.push(self.operand(item, columns)?);
                }
                let not = if list.negated { "NOT " } else { "" };
                format!("({} {not}IN ({}))", c.quoted(), values.join(", "))
            }
            Expr::Like(Like {
                negated: false,
                expr,
                pattern,
                escape_char: None,
                case_insensitive: false,
            }) if positive => {
                let c = column(expr, columns)?;
                if !collated(c) || c.data_type != DataType::Utf8 {
                    return None;
                }
                let Expr::Literal(value, _) = pattern.as_ref() else {
                    return None;
                };
                let pattern = match value {
                    ScalarValue::Utf8(Some(p))
                    | ScalarValue::Utf8View(Some(p))
                    | ScalarValue::LargeUtf8(Some(p)) => p,
                    _ => return None,
                };
                // T-SQL patterns also give `[` a meaning, and DataFusion's `\` escapes: only
                // patterns free of both mean the same on both sides.
                if pattern.contains('[') || pattern.contains('\\') {
                    return None;
                }
                format!(
                    "({} LIKE {})",
                    c.quoted(),
                    self.param(Param::Text(pattern.clone()))
                )
            }
            _ => return None,
        })
    }
}

/// Whether the filter means exactly the same in SQL Server as in DataFusion, so DataFusion need
/// not check it again: no text comparison (collations) and no LIKE.
pub fn exact(expr: &Expr, columns: &[Column]) -> bool {
    let mut exact = true;
    let _ = expr.apply(|e| {
        match e {
            Expr::Like(_) => exact = false,
            Expr::Column(_) | Expr::Cast(_) | Expr::TryCast(_) => {
                if let Some(c) = column(e, columns)
                    && !c.remote.compares_like_datafusion()
                {
                    exact = false;
                }
            }
            _ => {}
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    exact
}

use datafusion::common::tree_node::TreeNode as _;

/// The table column `expr` reads: a column, or a lossless widening cast of one (which DataFusion
/// adds to compare an `int` with a `bigint` value).
fn column<'a>(expr: &Expr, columns: &'a [Column]) -> Option<&'a Column> {
    match expr {
        Expr::Column(c) => columns.iter().find(|col| col.name == c.name),
        Expr::Cast(cast) => widening(column(&cast.expr, columns)?, cast.field.data_type()),
        Expr::TryCast(cast) => widening(column(&cast.expr, columns)?, cast.field.data_type()),
        _ => None,
    }
}

fn widening<'a>(column: &'a Column, to: &DataType) -> Option<&'a Column> {
    use DataType as D;
    let ok = match (&column.data_type, to) {
        (D::UInt8, D::Int16 | D::Int32 | D::Int64) => true,
        (D::Int16, D::Int32 | D::Int64) => true,
        (D::Int32, D::Int64) => true,
        (D::Float32, D::Float64) => true,
        (D::Utf8, D::Utf8View | D::LargeUtf8) => true,
        (D::Date32, D::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, None)) => true,
        (D::Timestamp(TimeUnit::Microsecond, a), D::Timestamp(TimeUnit::Nanosecond, b)) => a == b,
        _ => false,
    };
    ok.then_some(column)
}

fn literal(expr: &Expr) -> Option<()> {
    matches!(expr, Expr::Literal(v, _) if !v.is_null()).then_some(())
}

/// A comparison must be between a column and a non-NULL literal: the column.
fn comparable<'a>(left: &Expr, right: &Expr, columns: &'a [Column]) -> Option<&'a Column> {
    match (left, right) {
        (l, r) if literal(r).is_some() => column(l, columns),
        (l, r) if literal(l).is_some() => column(r, columns),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RemoteColumn;
    use datafusion::prelude::{col, lit};

    #[test]
    fn literals_out_of_range_are_not_parameters_and_do_not_panic() {
        let utc = Some(std::sync::Arc::from("UTC"));
        for value in [
            ScalarValue::TimestampMillisecond(Some(i64::MAX), utc.clone()),
            ScalarValue::TimestampMillisecond(Some(i64::MIN), utc.clone()),
            ScalarValue::TimestampSecond(Some(i64::MAX), utc.clone()),
            ScalarValue::Time64Nanosecond(Some(-1)),
            ScalarValue::Time64Nanosecond(Some(i64::MAX)),
        ] {
            assert!(Param::from_scalar(&value).is_none(), "{value:?}");
        }
    }

    fn columns() -> Vec<Column> {
        let column = |name: &str, remote: &str, data_type: DataType| Column {
            name: name.into(),
            data_type,
            remote: RemoteColumn {
                name: name.to_uppercase(),
                data_type: remote.into(),
                max_length: None,
                precision: None,
                scale: None,
                datetime_precision: None,
                nullable: true,
            },
        };
        vec![
            column("id", "int", DataType::Int32),
            column("ward", "nvarchar", DataType::Utf8),
        ]
    }

    fn sql(expr: Expr) -> Option<(String, usize)> {
        let mut t = Translation::default();
        t.filter(&expr, &columns()).map(|s| (s, t.params.len()))
    }

    #[test]
    fn text_predicates_are_pushed_only_when_the_collation_cannot_lose_rows() {
        assert_eq!(sql(col("ward").eq(lit("ICU"))).unwrap().0, "([WARD] = @P1)");
        assert!(sql(col("ward").not_eq(lit("ICU"))).is_none());
        assert!(sql(col("ward").gt(lit("M"))).is_none());
        assert!(sql(Expr::Not(Box::new(col("ward").eq(lit("ICU"))))).is_none());
        assert!(sql(col("ward").in_list(vec![lit("a")], true)).is_none());
        assert!(sql(col("ward").not_like(lit("a%"))).is_none());
        assert_eq!(
            sql(col("ward").like(lit("Card%"))).unwrap().0,
            "([WARD] LIKE @P1)"
        );
        // Numbers compare alike on both sides, negated or not.
        assert_eq!(
            sql(Expr::Not(Box::new(col("id").gt(lit(5))))).unwrap().0,
            "(NOT ([ID] > @P1))"
        );
        // A bare column is not a T-SQL predicate.
        assert!(sql(col("id")).is_none());
        // Untranslatable parts leave no parameters behind.
        let mut t = Translation::default();
        assert!(
            t.filter(
                &col("id").gt(lit(1)).and(col("ward").not_eq(lit("x"))),
                &columns()
            )
            .is_none()
        );
        assert!(t.params.is_empty());
        assert_eq!(
            sql(col("id").gt(lit(1)).or(col("ward").eq(lit("x")))),
            Some(("(([ID] > @P1) OR ([WARD] = @P2))".into(), 2))
        );
    }

    #[test]
    fn marks_round_trip_through_text() {
        let ts = ScalarValue::TimestampMicrosecond(Some(1_764_000_000_123_456), None);
        let mark = encode_mark(&ts).unwrap();
        assert_eq!(mark, "2025-11-24T16:00:00.123456");
        assert_eq!(
            Param::from_mark(&mark, &DataType::Timestamp(TimeUnit::Microsecond, None)).unwrap(),
            Param::DateTime(
                DateTime::from_timestamp_micros(1_764_000_000_123_456)
                    .unwrap()
                    .naive_utc()
            )
        );
        let rv = ScalarValue::Binary(Some(vec![0, 0, 0, 0, 0, 0, 7, 209]));
        let mark = encode_mark(&rv).unwrap();
        assert_eq!(mark, "0x00000000000007d1");
        assert_eq!(
            Param::from_mark(&mark, &DataType::Binary).unwrap(),
            Param::Binary(vec![0, 0, 0, 0, 0, 0, 7, 209])
        );
        assert!(Param::from_mark("0x0", &DataType::Binary).is_err());
        assert_eq!(
            Param::from_mark("42", &DataType::Int64).unwrap(),
            Param::Int(42)
        );
    }
}
