//! DataFusion filters to the Cosmos DB SQL query of a scan.
//!
//! Every value is a query parameter (`@p0`, `@p1`, ...); every property is written in
//! bracket notation with a JSON-quoted name (`c["deviceId"]`), so neither a column name nor a
//! value can change the query's shape.
//!
//! Correctness rests on one rule: where the scan reads a value as non-NULL, Cosmos DB sees
//! the same value with the same JSON type. Scalar columns are read strictly for that reason
//! (a number under a VARCHAR column is a type mismatch, read as NULL, not the text "3"), and
//! every pushed comparison carries a type guard (`IS_NUMBER(c["v"]) AND c["v"] > @p0`), so
//! the server's rules for comparing different types, `null` and missing properties never
//! matter. A pushed filter is then exactly what DataFusion would keep, or a superset of it:
//!
//! - `Exact` (DataFusion does not check again): comparisons and `IN` over DOUBLE and BOOLEAN
//!   columns, `=`/`<>`/`IN` over text, `IS [NOT] NULL` over any of those, and `AND`/`OR`/`NOT`
//!   of exact filters. SQL's NULL is kept apart: each filter has a TRUE side and a FALSE side,
//!   and `NOT f` is pushed as f's FALSE side.
//! - `Inexact` (a superset; DataFusion checks again): the same over integer columns (a JSON
//!   number with a fraction passes the server's comparison but reads as NULL here).
//! - Not pushed: `<`/`>` over text (Cosmos DB and DataFusion need not order strings alike),
//!   timestamps, dates and decimals (their JSON text does not order like their values),
//!   nested STRUCT/LIST columns, JSON-text columns, `LIKE`, casts and functions.

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::expr::{Between, InList};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::scalar::ScalarValue;
use serde_json::Value;

use super::Col;
use medlake_source::json::Path;

/// How well a filter is pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    Exact,
    Superset,
}

impl Fit {
    fn and(self, other: Fit) -> Fit {
        if self == Fit::Exact && other == Fit::Exact {
            Fit::Exact
        } else {
            Fit::Superset
        }
    }

    pub(crate) fn pushdown(self) -> TableProviderFilterPushDown {
        match self {
            Fit::Exact => TableProviderFilterPushDown::Exact,
            Fit::Superset => TableProviderFilterPushDown::Inexact,
        }
    }
}

/// A query being built: its text and its parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sql {
    pub params: Vec<(String, Value)>,
}

impl Sql {
    /// A new parameter holding `value`; returns its name.
    pub(crate) fn param(&mut self, value: Value) -> String {
        let name = format!("@p{}", self.params.len());
        self.params.push((name.clone(), value));
        name
    }
}

/// The property a column reads, in bracket notation: `c["a"]["b"]`.
pub(crate) fn accessor(path: &Path) -> String {
    let mut out = String::from("c");
    let segments: Vec<String> = match path {
        Path::Key(key) => vec![key.clone()],
        Path::Pointer(pointer) => pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    };
    for segment in segments {
        out.push('[');
        out.push_str(&Value::String(segment).to_string());
        out.push(']');
    }
    out
}

/// The property in dot notation (`c.device.model`) when every name is a plain identifier
/// that is not a keyword, else `None`.
pub(crate) fn dotted(path: &Path) -> Option<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "array",
        "as",
        "asc",
        "between",
        "by",
        "case",
        "cast",
        "convert",
        "cross",
        "desc",
        "distinct",
        "else",
        "end",
        "escape",
        "exists",
        "false",
        "for",
        "from",
        "group",
        "having",
        "in",
        "inner",
        "insert",
        "into",
        "is",
        "join",
        "left",
        "like",
        "limit",
        "not",
        "null",
        "of",
        "offset",
        "on",
        "or",
        "order",
        "outer",
        "over",
        "right",
        "select",
        "set",
        "then",
        "top",
        "true",
        "udf",
        "undefined",
        "update",
        "value",
        "when",
        "where",
        "with",
    ];
    let segments: Vec<String> = match path {
        Path::Key(key) => vec![key.clone()],
        Path::Pointer(pointer) => pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    };
    let plain = |s: &String| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !KEYWORDS.contains(&s.to_ascii_lowercase().as_str())
    };
    segments
        .iter()
        .all(plain)
        .then(|| format!("c.{}", segments.join(".")))
}

/// The JSON type test that matches what the scan reads as a non-NULL value of `data_type`,
/// and how exact comparisons over it are; `None` when the column cannot be filtered.
fn guard(col: &Col) -> Option<(&'static str, Class)> {
    if col.json_text {
        return None;
    }
    let data_type = &col.column.data_type;
    Some(match data_type {
        DataType::Float64 | DataType::Float32 => ("IS_NUMBER", Class::Float),
        DataType::Boolean => ("IS_BOOL", Class::Bool),
        DataType::Utf8 => ("IS_STRING", Class::Text),
        t if t.is_integer() => ("IS_NUMBER", Class::Integer),
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Integer,
    Float,
    Bool,
    Text,
}

/// A literal as the JSON value Cosmos DB compares with, when it fits the column's class.
fn literal(value: &ScalarValue, class: Class) -> Option<Value> {
    use ScalarValue as S;
    if value.is_null() {
        return None;
    }
    Some(match (value, class) {
        (S::Int8(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::Int16(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::Int32(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::Int64(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::UInt8(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::UInt16(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::UInt32(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::UInt64(Some(v)), Class::Integer | Class::Float) => Value::from(*v),
        (S::Float64(Some(v)), Class::Float) => Value::Number(serde_json::Number::from_f64(*v)?),
        (S::Float32(Some(v)), Class::Float) => {
            Value::Number(serde_json::Number::from_f64(f64::from(*v))?)
        }
        (S::Boolean(Some(v)), Class::Bool) => Value::Bool(*v),
        (S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v)), Class::Text) => {
            Value::String(v.clone())
        }
        _ => return None,
    })
}

fn column<'a>(expr: &Expr, columns: &'a [Col]) -> Option<&'a Col> {
    let Expr::Column(c) = expr else {
        return None;
    };
    columns.iter().find(|col| col.column.name == c.name)
}

fn scalar(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// A filter as two Cosmos DB conditions: one true where DataFusion's filter is TRUE, one
/// true where it is FALSE (SQL has a third value, NULL, that a WHERE drops and NOT keeps
/// NULL, so `NOT f` is pushed as f's FALSE side, not as `NOT` of its TRUE side).
#[derive(Clone, Debug)]
struct Cond {
    t: String,
    /// `None` when the FALSE side has no condition (the filter cannot be negated).
    f: Option<String>,
    fit: Fit,
}

/// The Cosmos DB condition for `expr`, and how exact it is; `None` when it cannot be pushed.
/// Parameters are added to `sql` only when the whole filter translates.
pub(crate) fn translate(expr: &Expr, columns: &[Col], sql: &mut Sql) -> Option<(String, Fit)> {
    let mut scratch = sql.clone();
    let out = condition(expr, columns, &mut scratch)?;
    *sql = scratch;
    Some((out.t, out.fit))
}

fn condition(expr: &Expr, columns: &[Col], sql: &mut Sql) -> Option<Cond> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => junction(left, *op, right, columns, sql),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => comparison(left, *op, right, columns, sql),
            _ => None,
        },
        Expr::InList(list) => in_list(list, columns, sql),
        Expr::IsNull(inner) => null_test(inner, true, columns),
        Expr::IsNotNull(inner) => null_test(inner, false, columns),
        Expr::Column(_) => bool_column(expr, columns),
        Expr::Not(inner) => {
            let c = condition(inner, columns, sql)?;
            Some(Cond {
                t: c.f?,
                f: Some(c.t),
                fit: c.fit,
            })
        }
        Expr::Between(b) => between(b, columns, sql),
        _ => None,
    }
}

/// `l AND r`, `l OR r`: the FALSE side of a conjunction is the disjunction of the FALSE
/// sides, and the other way round.
fn junction(
    left: &Expr,
    op: Operator,
    right: &Expr,
    columns: &[Col],
    sql: &mut Sql,
) -> Option<Cond> {
    let l = condition(left, columns, sql)?;
    let r = condition(right, columns, sql)?;
    let fit = l.fit.and(r.fit);
    let (t_word, f_word) = if op == Operator::And {
        ("AND", "OR")
    } else {
        ("OR", "AND")
    };
    Some(Cond {
        t: format!("({} {t_word} {})", l.t, r.t),
        f: l.f.zip(r.f).map(|(a, b)| format!("({a} {f_word} {b})")),
        fit,
    })
}

/// `column <op> literal` (either way round).
fn comparison(
    left: &Expr,
    op: Operator,
    right: &Expr,
    columns: &[Col],
    sql: &mut Sql,
) -> Option<Cond> {
    let (col, value, op) = match (column(left, columns), column(right, columns)) {
        (Some(col), None) => (col, scalar(right)?, op),
        (None, Some(col)) => (col, scalar(left)?, op.swap()?),
        _ => return None,
    };
    let (test, class) = guard(col)?;
    if class == Class::Text && !matches!(op, Operator::Eq | Operator::NotEq) {
        // Cosmos DB and DataFusion may order strings differently.
        return None;
    }
    let value = literal(value, class)?;
    let symbol = |op: Operator| match op {
        Operator::Eq => "=",
        Operator::NotEq => "!=",
        Operator::Lt => "<",
        Operator::LtEq => "<=",
        Operator::Gt => ">",
        _ => ">=",
    };
    let fit = if class == Class::Integer {
        Fit::Superset
    } else {
        Fit::Exact
    };
    let property = accessor(&col.column.path);
    let p = sql.param(value);
    let side = |op: Operator| format!("({test}({property}) AND {property} {} {p})", symbol(op));
    Some(Cond {
        t: side(op),
        f: Some(side(op.negate()?)),
        fit,
    })
}

/// `column [NOT] IN (literals)`.
fn in_list(list: &InList, columns: &[Col], sql: &mut Sql) -> Option<Cond> {
    let col = column(&list.expr, columns)?;
    let (test, class) = guard(col)?;
    if list.list.is_empty() {
        return None;
    }
    let values: Vec<Value> = list
        .list
        .iter()
        .map(|e| literal(scalar(e)?, class))
        .collect::<Option<_>>()?;
    let fit = if class == Class::Integer {
        Fit::Superset
    } else {
        Fit::Exact
    };
    let property = accessor(&col.column.path);
    let names: Vec<String> = values.into_iter().map(|v| sql.param(v)).collect();
    let inside = format!("{property} IN ({})", names.join(", "));
    let yes = format!("({test}({property}) AND {inside})");
    let no = format!("({test}({property}) AND NOT ({inside}))");
    let (t, f) = if list.negated { (no, yes) } else { (yes, no) };
    Some(Cond { t, f: Some(f), fit })
}

/// `column IS NULL` (`is_null`) or `column IS NOT NULL`.
fn null_test(inner: &Expr, is_null: bool, columns: &[Col]) -> Option<Cond> {
    let col = column(inner, columns)?;
    let (test, class) = guard(col)?;
    let property = accessor(&col.column.path);
    let is = format!("{test}({property})");
    let is_not = format!("(NOT {test}({property}))");
    match (is_null, class) {
        // A number with a fraction reads as NULL under an integer column but passes
        // IS_NUMBER: only "IS NOT NULL" has a superset, and it cannot be negated.
        (false, Class::Integer) => Some(Cond {
            t: is,
            f: None,
            fit: Fit::Superset,
        }),
        (true, Class::Integer) => None,
        (false, _) => Some(Cond {
            t: is,
            f: Some(is_not),
            fit: Fit::Exact,
        }),
        _ => Some(Cond {
            t: is_not,
            f: Some(is),
            fit: Fit::Exact,
        }),
    }
}

/// A BOOLEAN column as a filter: `WHERE acknowledged`.
fn bool_column(expr: &Expr, columns: &[Col]) -> Option<Cond> {
    let col = column(expr, columns)?;
    let (test, class) = guard(col)?;
    if class != Class::Bool {
        return None;
    }
    let property = accessor(&col.column.path);
    Some(Cond {
        t: format!("({test}({property}) AND {property} = true)"),
        f: Some(format!("({test}({property}) AND {property} = false)")),
        fit: Fit::Exact,
    })
}

/// `x [NOT] BETWEEN low AND high`, as two comparisons.
fn between(b: &Between, columns: &[Col], sql: &mut Sql) -> Option<Cond> {
    // Normally rewritten to two comparisons before it reaches a scan.
    let low = Expr::BinaryExpr(BinaryExpr::new(
        b.expr.clone(),
        Operator::GtEq,
        b.low.clone(),
    ));
    let high = Expr::BinaryExpr(BinaryExpr::new(
        b.expr.clone(),
        Operator::LtEq,
        b.high.clone(),
    ));
    let both = Expr::BinaryExpr(BinaryExpr::new(
        Box::new(low),
        Operator::And,
        Box::new(high),
    ));
    if b.negated {
        condition(&Expr::Not(Box::new(both)), columns, sql)
    } else {
        condition(&both, columns, sql)
    }
}

/// The partition key value a filter fixes: `pk = literal` over the column that reads the
/// container's partition key path.
pub(crate) fn partition_value(expr: &Expr, columns: &[Col], partition_key: &str) -> Option<Value> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = expr
    else {
        return None;
    };
    let (col, value) = match (column(left, columns), column(right, columns)) {
        (Some(col), None) => (col, scalar(right)?),
        (None, Some(col)) => (col, scalar(left)?),
        _ => return None,
    };
    let path = match &col.column.path {
        Path::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
        Path::Pointer(p) => p.clone(),
    };
    if path != partition_key {
        return None;
    }
    let (_, class) = guard(col)?;
    match class {
        Class::Text | Class::Bool => literal(value, class),
        // Integer-valued keys only: a float key would need the exact double.
        Class::Integer | Class::Float => literal(value, Class::Integer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};
    use medlake_source::json::Column;

    fn columns() -> Vec<Col> {
        let c = |name: &str, t: DataType, path: Path, json_text: bool| Col {
            column: Column {
                name: name.into(),
                data_type: t,
                nullable: true,
                path,
            },
            json_text,
        };
        vec![
            c("id", DataType::Utf8, Path::Key("id".into()), false),
            c(
                "severity",
                DataType::Int64,
                Path::Key("severity".into()),
                false,
            ),
            c("score", DataType::Float64, Path::Key("score".into()), false),
            c("acked", DataType::Boolean, Path::Key("acked".into()), false),
            c(
                "model",
                DataType::Utf8,
                Path::Pointer("/device/model".into()),
                false,
            ),
            c("extra", DataType::Utf8, Path::Key("extra".into()), true),
            c(
                "at",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
                Path::Key("at".into()),
                false,
            ),
            c(
                "x\"]; DROP",
                DataType::Utf8,
                Path::Key("x\"]; DROP".into()),
                false,
            ),
            c(
                "deviceid",
                DataType::Utf8,
                Path::Key("deviceId".into()),
                false,
            ),
        ]
    }

    type Translated = (String, Fit, Vec<(String, Value)>);

    fn t(e: Expr) -> Option<Translated> {
        let mut sql = Sql::default();
        translate(&e, &columns(), &mut sql).map(|(s, f)| (s, f, sql.params))
    }

    #[test]
    fn comparisons_carry_a_type_guard_and_parameters() {
        let (s, f, p) = t(col("score").gt(lit(1.5))).unwrap();
        assert_eq!(s, r#"(IS_NUMBER(c["score"]) AND c["score"] > @p0)"#);
        assert_eq!(f, Fit::Exact);
        assert_eq!(p, vec![("@p0".to_string(), serde_json::json!(1.5))]);
        let (s, f, _) = t(lit(3_i64).lt_eq(col("severity"))).unwrap();
        assert_eq!(s, r#"(IS_NUMBER(c["severity"]) AND c["severity"] >= @p0)"#);
        assert_eq!(f, Fit::Superset);
        let (s, f, _) = t(col("id").eq(lit("a'b\""))).unwrap();
        assert_eq!(s, r#"(IS_STRING(c["id"]) AND c["id"] = @p0)"#);
        assert_eq!(f, Fit::Exact);
        assert!(t(col("id").gt(lit("a"))).is_none(), "string order");
        let (s, _, _) = t(col("model").eq(lit("X1"))).unwrap();
        assert_eq!(
            s,
            r#"(IS_STRING(c["device"]["model"]) AND c["device"]["model"] = @p0)"#
        );
    }

    #[test]
    fn names_and_values_cannot_change_the_query() {
        let (s, _, p) = t(col("x\"]; DROP").eq(lit("\"] OR 1=1 --"))).unwrap();
        assert_eq!(
            s,
            r#"(IS_STRING(c["x\"]; DROP"]) AND c["x\"]; DROP"] = @p0)"#
        );
        assert_eq!(p[0].1, Value::String("\"] OR 1=1 --".into()));
    }

    #[test]
    fn what_is_not_pushed() {
        assert!(t(col("extra").eq(lit("a"))).is_none(), "JSON text column");
        assert!(t(col("at").gt(lit("2024-01-01"))).is_none(), "timestamp");
        assert!(
            t(col("severity").eq(lit("3"))).is_none(),
            "literal of another type"
        );
        assert!(t(col("id").like(lit("a%"))).is_none(), "LIKE");
        assert!(
            t(col("severity").is_null()).is_none(),
            "IS NULL over integers"
        );
        assert!(
            t(Expr::Not(Box::new(col("severity").is_not_null()))).is_none(),
            "NOT of a superset without a FALSE side"
        );
        assert!(
            t(col("score").gt(lit(1.0)).and(col("at").is_null())).is_none(),
            "AND with an unpushable side is left to DataFusion whole"
        );
    }

    #[test]
    fn boolean_logic_and_null_tests() {
        let (s, f, p) = t(col("acked")
            .eq(lit(false))
            .or(col("score").is_null())
            .and(Expr::Not(Box::new(
                col("id").in_list(vec![lit("a"), lit("b")], false),
            ))))
        .unwrap();
        assert_eq!(
            s,
            r#"(((IS_BOOL(c["acked"]) AND c["acked"] = @p0) OR (NOT IS_NUMBER(c["score"]))) AND (IS_STRING(c["id"]) AND NOT (c["id"] IN (@p1, @p2))))"#
        );
        assert_eq!(f, Fit::Exact);
        assert_eq!(p.len(), 3);
        let (s, f, _) = t(col("severity").in_list(vec![lit(1_i64), lit(2_i64)], false)).unwrap();
        assert_eq!(
            s,
            r#"(IS_NUMBER(c["severity"]) AND c["severity"] IN (@p0, @p1))"#
        );
        assert_eq!(f, Fit::Superset);
        assert_eq!(
            t(col("severity").is_not_null()).unwrap().0,
            r#"IS_NUMBER(c["severity"])"#
        );
    }

    #[test]
    fn not_keeps_nulls_out() {
        // NOT (severity > 3) is TRUE only where severity is a number <= 3, never where it is
        // missing (DataFusion: NOT NULL is NULL).
        let (s, f, _) = t(Expr::Not(Box::new(col("severity").gt(lit(3_i64))))).unwrap();
        assert_eq!(s, r#"(IS_NUMBER(c["severity"]) AND c["severity"] <= @p0)"#);
        assert_eq!(f, Fit::Superset);
        let (s, _, _) = t(Expr::Not(Box::new(
            col("acked").eq(lit(true)).or(col("score").lt(lit(2.0))),
        )))
        .unwrap();
        assert_eq!(
            s,
            r#"((IS_BOOL(c["acked"]) AND c["acked"] != @p0) AND (IS_NUMBER(c["score"]) AND c["score"] >= @p1))"#
        );
    }

    #[test]
    fn dotted_paths_only_for_plain_names() {
        assert_eq!(dotted(&Path::Key("_ts".into())).as_deref(), Some("c._ts"));
        assert_eq!(
            dotted(&Path::Pointer("/device/model".into())).as_deref(),
            Some("c.device.model")
        );
        assert_eq!(dotted(&Path::Key("value".into())), None);
        assert_eq!(dotted(&Path::Key("a-b".into())), None);
    }

    #[test]
    fn the_partition_key_is_found_in_an_equality() {
        let cols = columns();
        assert_eq!(
            partition_value(&col("deviceid").eq(lit("d1")), &cols, "/deviceId"),
            Some(Value::String("d1".into()))
        );
        assert_eq!(
            partition_value(&col("id").eq(lit("d1")), &cols, "/deviceId"),
            None
        );
        assert_eq!(
            partition_value(&col("model").eq(lit("m")), &cols, "/device/model"),
            Some(Value::String("m".into()))
        );
    }
}
