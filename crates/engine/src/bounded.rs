//! Functions whose one call can build a value of any size from a small statement:
//! `repeat('x', 2147483647)`, `lpad`/`rpad` to two billion characters, `array_repeat(1, 1e9)`,
//! `array_resize`, `range`/`generate_series` as arrays, `replace`/`regexp_replace` nested
//! (each multiplies the length), `concat` of many large values. One such call allocates gigabytes inside
//! a single function evaluation, where neither the memory pool nor `statement_timeout` can
//! stop it. Each is registered over DataFusion's own under the same name, refusing (`54000`)
//! a batch whose results would hold more than [`MAX_VALUES`] characters or elements, and
//! otherwise running DataFusion's function unchanged.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

/// The most characters (or array elements) the results of one call of a bounded function may
/// hold, over one batch: 64 Mi.
pub const MAX_VALUES: u128 = 64 << 20;

/// How a function's result size follows from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Size {
    /// `f(text, n)`: the text's length times `n` (repeat).
    TimesText,
    /// `f(x, n, ...)`: `n` (lpad, rpad, array_repeat, array_resize).
    Count,
    /// `f(start, stop [, step])` over integers: the number of steps (range, generate_series).
    Steps,
    /// `f(text, ...)`: the texts' lengths together (concat, concat_ws).
    Sum,
    /// `f(text, x, replacement, ...)`: the text's length times the replacement's, as if every
    /// character were replaced (replace, regexp_replace): nesting them multiplies.
    Replace,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    size: Size,
}

/// Registers the bounded versions over DataFusion's functions of the same names.
pub(crate) fn install(ctx: &SessionContext) {
    let state = ctx.state();
    let functions = state.scalar_functions();
    for (name, size) in [
        ("repeat", Size::TimesText),
        ("lpad", Size::Count),
        ("rpad", Size::Count),
        ("array_repeat", Size::Count),
        ("array_resize", Size::Count),
        ("range", Size::Steps),
        ("generate_series", Size::Steps),
        ("concat", Size::Sum),
        ("concat_ws", Size::Sum),
        ("replace", Size::Replace),
        ("regexp_replace", Size::Replace),
    ] {
        if let Some(inner) = functions.get(name) {
            let inner = inner.as_ref().clone();
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, size }));
        }
    }
}

/// Argument `index` of row `row`, as an integer (NULL, absent or not an integer: `None`).
fn int_at(args: &[ColumnarValue], index: usize, row: usize) -> Option<i64> {
    match args.get(index)? {
        ColumnarValue::Scalar(value) => match value.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(v) => v,
            _ => None,
        },
        ColumnarValue::Array(array) => {
            let array = arrow::compute::cast(array, &DataType::Int64).ok()?;
            let ints = array.as_primitive::<Int64Type>();
            (row < ints.len() && ints.is_valid(row)).then(|| ints.value(row))
        }
    }
}

/// The length in bytes of text argument `index` at `row` (0 when not text).
fn text_len_at(args: &[ColumnarValue], index: usize, row: usize) -> u128 {
    let scalar_len = |value: &ScalarValue| match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.len() as u128,
        _ => 0,
    };
    match args.get(index) {
        Some(ColumnarValue::Scalar(value)) => scalar_len(value),
        Some(ColumnarValue::Array(array)) => {
            ScalarValue::try_from_array(array as &ArrayRef, row).map_or(0, |v| scalar_len(&v))
        }
        None => 0,
    }
}

impl Bounded {
    /// What the results of one row would hold.
    fn row_size(&self, args: &[ColumnarValue], row: usize) -> u128 {
        let count = |index| int_at(args, index, row).map_or(0, |n| n.max(0) as u128);
        match self.size {
            Size::TimesText => text_len_at(args, 0, row).max(1) * count(1),
            Size::Count => count(1),
            Size::Steps => {
                let (start, stop) = match (int_at(args, 0, row), int_at(args, 1, row)) {
                    (Some(start), Some(stop)) => (start, stop),
                    // One argument: range(stop) from 0.
                    (Some(stop), None) => (0, stop),
                    _ => return 0,
                };
                let step = int_at(args, 2, row).unwrap_or(1).unsigned_abs().max(1) as u128;
                (i128::from(stop) - i128::from(start)).unsigned_abs() / step
            }
            Size::Sum => (0..args.len()).map(|i| text_len_at(args, i, row)).sum(),
            Size::Replace => text_len_at(args, 0, row) * text_len_at(args, 2, row).max(1),
        }
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows.max(1);
        let mut total: u128 = 0;
        for row in 0..rows {
            total = total.saturating_add(self.row_size(&args.args, row));
            if total > MAX_VALUES {
                return exec_err!(
                    "{}: the result would hold more than {MAX_VALUES} characters or elements: program limit exceeded",
                    self.inner.name()
                );
            }
        }
        self.inner.inner().invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> DfResult<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn huge_results_are_refused_and_small_ones_unchanged() {
        let ctx = SessionContext::new();
        install(&ctx);
        for sql in [
            "SELECT repeat('x', 2147483647)",
            "SELECT lpad('x', 2147483647)",
            "SELECT rpad('x', 2147483647, 'y')",
            "SELECT cardinality(array_repeat(1, 400000000))",
            "SELECT range(1, 9223372036854775807)",
            "SELECT generate_series(-9223372036854775807, 9223372036854775807, 1)",
            "SELECT array_resize([1], 1000000000, 0)",
            "SELECT repeat(s, 40000000) FROM (VALUES ('ab'), ('cd')) AS t(s)",
            "SELECT length(replace(replace(repeat('a', 1000000), 'a', repeat('b', 100)), 'b', 'cc'))",
            "SELECT length(regexp_replace(repeat('a', 1000000), 'a', repeat('b', 100), 'g'))",
            "SELECT length(concat(repeat('a', 40000000), repeat('b', 40000000)))",
        ] {
            let error = run(&ctx, sql)
                .await
                .err()
                .unwrap_or_else(|| panic!("{sql}"));
            assert!(
                error.to_string().contains("program limit exceeded"),
                "{sql}: {error}"
            );
        }
        let batches = ctx
            .sql("SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, cardinality(range(1, 11)) AS n, cardinality(generate_series(1, 10, 3)) AS g, replace('abc', 'b', 'XYZ') AS x, concat('q', 'rs') AS c")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            text.contains("ababab")
                && text.contains("007")
                && text.contains("| 10 ")
                && text.contains("| 4 ")
                && text.contains("aXYZc")
                && text.contains("qrs"),
            "{text}"
        );
    }
}
