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
                    (*ns / 1_000_000_000) as u32,
                    (*ns % 1_000_000_000) as u32,
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
            S::TimestampMillisecond(Some(ms), Some(_)) => Param::DateTimeOffset(utc(*ms * 1000)?),
            S::TimestampSecond(Some(s), Some(_)) => Param::DateTimeOffset(utc(*s * 1_000_000)?),
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
                let hex = mark
                    .strip_prefix("0x")
                    .ok_or_else(|| bad(&"no 0x prefix"))?;
                if hex.len() % 2 != 0 {
                    return Err(bad(&"odd number of hex digits"));
                }
                Param::Binary(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad(&e))?,
                )
            }
            DataType::Utf8 => Param::Text(mark.to_string()),
            other => return Err(format!("a {other} column cannot be a watermark")),
        })
    }
}

/// A watermark value as text that [`Param::from_mark`] reads back exactly.
pub fn encode_mark(value: &ScalarValue) -> Option<String> {
    use ScalarValue as S;
    if value.is_null() {
        return None;
    }
    Some(match value {
        S::TimestampMicrosecond(Some(us), None) => DateTime::from_timestamp_micros(*us)?
            .naive_utc()
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string(),
        S::TimestampMicrosecond(Some(us), Some(_)) => {
            DateTime::from_timestamp_micros(*us)?.to_rfc3339()
        }
        S::Binary(Some(bytes)) => {
            let mut hex = String::from("0x");
            for b in bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        }
        other => other.to_string(),
    })
}

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

    /// The T-SQL of `expr`, or `None` if some part of it has no faithful T-SQL form (then
    /// nothing of it is added).
    pub fn filter(&mut self, expr: &Expr, columns: &[Column]) -> Option<String> {
        let mark = self.params.len();
        let sql = self.translate(expr, columns);
        if sql.is_none() {
            self.params.truncate(mark);
        }
        sql
    }

    fn translate(&mut self, expr: &Expr, columns: &[Column]) -> Option<String> {
        Some(match expr {
            Expr::Column(_) | Expr::Cast(_) | Expr::TryCast(_) => column(expr, columns)?.quoted(),
            Expr::Literal(value, _) => {
                let param = Param::from_scalar(value)?;
                self.param(param)
            }
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
                        self.translate(left, columns)?,
                        self.translate(right, columns)?
                    )
                } else {
                    // A comparison of a column with a value (either side).
                    comparable(left, right, columns)?;
                    format!(
                        "({} {op} {})",
                        self.translate(left, columns)?,
                        self.translate(right, columns)?
                    )
                }
            }
            Expr::Not(inner) => format!("(NOT {})", self.translate(inner, columns)?),
            Expr::IsNull(inner) => format!("({} IS NULL)", column(inner, columns)?.quoted()),
            Expr::IsNotNull(inner) => format!("({} IS NOT NULL)", column(inner, columns)?.quoted()),
            Expr::Between(Between {
                expr,
                negated,
                low,
                high,
            }) => {
                let c = column(expr, columns)?.quoted();
                literal(low)?;
                literal(high)?;
                let not = if *negated { "NOT " } else { "" };
                format!(
                    "({c} {not}BETWEEN {} AND {})",
                    self.translate(low, columns)?,
                    self.translate(high, columns)?
                )
            }
            Expr::InList(list) => {
                let c = column(&list.expr, columns)?.quoted();
                if list.list.is_empty() || list.list.len() > 2000 {
                    return None;
                }
                let mut values = Vec::with_capacity(list.list.len());
                for item in &list.list {
                    literal(item)?;
                    values.push(self.translate(item, columns)?);
                }
                let not = if list.negated { "NOT " } else { "" };
                format!("({c} {not}IN ({}))", values.join(", "))
            }
            Expr::Like(Like {
                negated,
                expr,
                pattern,
                escape_char: None,
                case_insensitive: false,
            }) => {
                let c = column(expr, columns)?.quoted();
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
                let not = if *negated { "NOT " } else { "" };
                format!(
                    "({c} {not}LIKE {})",
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

/// A comparison must be between a column and a non-NULL literal.
fn comparable(left: &Expr, right: &Expr, columns: &[Column]) -> Option<()> {
    match (left, right) {
        (l, r) if column(l, columns).is_some() && literal(r).is_some() => Some(()),
        (l, r) if literal(l).is_some() && column(r, columns).is_some() => Some(()),
        _ => None,
    }
}
