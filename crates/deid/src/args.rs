//! What the functions share about their arguments: accepted types, the constant key name,
//! arrays and scalars, identifiers as canonical text.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::ColumnarValue;

/// The type an identifier argument (the value of `pseudonym`, the patient of `shift_date`)
/// is cast to, or `None` if the type is refused. Text stays text; integers become their
/// decimal text, so `123` and `'123'` are the same identifier. Other types (floats,
/// timestamps...) are refused: their text form is not stable enough to key on.
pub(crate) fn identifier_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(data_type.clone()),
        DataType::Null
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Some(DataType::Utf8),
        DataType::Dictionary(_, value) => identifier_type(value).map(|_| DataType::Utf8),
        _ => None,
    }
}

/// Whether `data_type` is a text type.
pub(crate) fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The canonical text of an identifier: surrounding white space removed (Rust's
/// `str::trim`, Unicode White_Space: SQL Server `CHAR(n)` pads with spaces), nothing else
/// (no case folding, no Unicode normalisation, inner spaces kept). Blank text is no
/// identifier: `None`, and the function returns NULL rather than one pseudonym shared by
/// every blank value.
pub(crate) fn canonical(text: &str) -> Option<&str> {
    let text = text.trim();
    (!text.is_empty()).then_some(text)
}

/// The literal text of a key name, if `value` is one.
pub(crate) fn literal_text(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// At planning time: the key name (argument `index`) must be a non-NULL string literal, so
/// that the engine can see which secret a statement uses before it runs.
pub(crate) fn require_key_literal(
    function: &str,
    scalar_arguments: &[Option<&ScalarValue>],
    index: usize,
) -> DfResult<()> {
    match scalar_arguments.get(index).copied().flatten() {
        Some(value) if literal_text(value).is_some() => Ok(()),
        _ => plan_err!(
            "{function}: argument {} must be a string literal naming a secret \
             (not a column, an expression, a parameter or NULL)",
            index + 1
        ),
    }
}

/// At execution time: the key name, which planning made sure is a constant.
pub(crate) fn key_name<'a>(function: &str, arg: &'a ColumnarValue) -> DfResult<&'a str> {
    match arg {
        ColumnarValue::Scalar(value) => match literal_text(value) {
            Some(name) => Ok(name),
            None => exec_err!("{function}: the key name must be a non-NULL string"),
        },
        ColumnarValue::Array(_) => {
            exec_err!("{function}: the key name must be a constant, not a column")
        }
    }
}

/// The arguments as arrays of one length, and whether they were all scalars (then the
/// arrays have one row and the result is a scalar again, see [`finish`]).
pub(crate) fn arrays(args: &[ColumnarValue], rows: usize) -> DfResult<(Vec<ArrayRef>, bool)> {
    let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let len = if scalar { 1 } else { rows };
    let arrays = args
        .iter()
        .map(|a| a.to_array(len))
        .collect::<DfResult<Vec<_>>>()?;
    Ok((arrays, scalar))
}

/// `array` as the function's result: a scalar if every argument was one.
pub(crate) fn finish(array: ArrayRef, scalar: bool) -> DfResult<ColumnarValue> {
    if scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

/// The values of a text array (after coercion every text argument is one of the three
/// string layouts).
pub(crate) fn strings<'a>(
    function: &str,
    array: &'a ArrayRef,
) -> DfResult<Box<dyn Iterator<Item = Option<&'a str>> + 'a>> {
    Ok(match array.data_type() {
        DataType::Utf8 => Box::new(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(array.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(array.as_string_view().iter()),
        DataType::Null => Box::new(std::iter::repeat_n(None, array.len())),
        other => return exec_err!("{function}: expected text, got {other}"),
    })
}

/// A text result built from `values`.
pub(crate) fn text_array<S: AsRef<str>>(values: impl Iterator<Item = Option<S>>) -> ArrayRef {
    Arc::new(values.collect::<arrow::array::StringArray>())
}

/// The number of arguments, or a planning error naming the expected call.
pub(crate) fn check_arity(
    function: &str,
    usage: &str,
    types: &[DataType],
    n: usize,
) -> DfResult<()> {
    if types.len() == n {
        Ok(())
    } else {
        plan_err!(
            "{function} takes {n} argument{}: {usage}",
            if n == 1 { "" } else { "s" }
        )
    }
}
