//! NOT NULL enforcement with a clear message. deltalake refuses NULLs in non-nullable columns
//! too, but only says "N rows failed validation check"; this guard names the column, and runs
//! before any file is written.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::{Column, ScalarValue, exec_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};

/// The text every NOT NULL refusal starts with (the lake recognises it in deltalake's errors).
pub(crate) const NOT_NULL_MESSAGE: &str = "NULL in NOT NULL column";

static REQUIRE_NOT_NULL: LazyLock<Arc<ScalarUDF>> =
    LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(RequireNotNull::default())));

/// `medlake_require_not_null(value, 'column')`: `value`, or an error if it holds a NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RequireNotNull {
    signature: Signature,
}

impl Default for RequireNotNull {
    fn default() -> Self {
        // Volatile: never folded at planning time, so a query that yields no NULL row (say,
        // `WHERE false`) is not refused for a NULL it never produces.
        Self {
            signature: Signature::any(2, Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for RequireNotNull {
    fn name(&self) -> &str {
        "medlake_require_not_null"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        let data_type = args
            .arg_fields
            .first()
            .map_or(DataType::Null, |f| f.data_type().clone());
        Ok(Arc::new(Field::new(self.name(), data_type, false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let column = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name)))) => name.clone(),
            _ => "?".to_string(),
        };
        match args.args.into_iter().next() {
            Some(ColumnarValue::Array(array)) if array.null_count() > 0 => {
                let n = array.null_count();
                exec_err!(
                    "{NOT_NULL_MESSAGE} '{column}' ({n} row{})",
                    if n == 1 { "" } else { "s" }
                )
            }
            Some(ColumnarValue::Scalar(value)) if value.is_null() => {
                exec_err!("{NOT_NULL_MESSAGE} '{column}'")
            }
            Some(value) => Ok(value),
            None => exec_err!("medlake_require_not_null takes two arguments"),
        }
    }
}

/// Wraps `input` (whose columns carry the table's names) so that every column the table
/// declares NOT NULL is checked as rows stream through.
pub(crate) fn guard_not_null(input: LogicalPlan, table: &Schema) -> DfResult<LogicalPlan> {
    let needs_guard = input.schema().fields().iter().any(|f| {
        table
            .field_with_name(f.name())
            .is_ok_and(|t| !t.is_nullable())
            && f.is_nullable()
    });
    if !needs_guard {
        return Ok(input);
    }
    let exprs: Vec<Expr> = input
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let column = Expr::Column(Column::from_name(f.name()));
            let required = table
                .field_with_name(f.name())
                .is_ok_and(|t| !t.is_nullable());
            if required && f.is_nullable() {
                REQUIRE_NOT_NULL
                    .call(vec![column, lit(f.name().as_str())])
                    .alias(f.name())
            } else {
                column
            }
        })
        .collect();
    LogicalPlanBuilder::from(input).project(exprs)?.build()
}

/// For each output column of an INSERT's input, the column it was computed from (DataFusion
/// names the columns of `VALUES` `column1`, `column2`, ...), so errors can name the table's
/// column instead.
pub(crate) fn source_columns(input: &LogicalPlan) -> Vec<(String, String)> {
    let LogicalPlan::Projection(projection) = input else {
        return Vec::new();
    };
    projection
        .expr
        .iter()
        .filter_map(|expr| {
            let Expr::Alias(alias) = expr else {
                return None;
            };
            let mut inner = alias.expr.as_ref();
            loop {
                match inner {
                    Expr::Cast(cast) => inner = cast.expr.as_ref(),
                    Expr::TryCast(cast) => inner = cast.expr.as_ref(),
                    Expr::Column(column) => return Some((column.name.clone(), alias.name.clone())),
                    _ => return None,
                }
            }
        })
        .collect()
}

/// Arrow refuses a NULL in a non-nullable `VALUES` column before our guard sees it: say so
/// in the guard's words, with the table's column name.
pub(crate) fn name_null_column(error: crate::Error, sources: &[(String, String)]) -> crate::Error {
    const ARROW: &str = "is declared as non-nullable but contains null values";
    match error {
        crate::Error::WriteRefused {
            schema,
            table,
            reason,
            ..
        } if reason.contains(ARROW) => {
            let column = reason
                .split('\'')
                .nth(1)
                .map(|c| {
                    sources
                        .iter()
                        .find(|(source, _)| source == c)
                        .map_or(c, |(_, target)| target.as_str())
                        .to_string()
                })
                .unwrap_or_default();
            crate::Error::WriteRefused {
                schema,
                table,
                kind: crate::Refusal::NotNull,
                reason: format!("{NOT_NULL_MESSAGE} '{column}'"),
            }
        }
        other => other,
    }
}

/// `value`, or an error naming `column` where it is NULL (an UPDATE's or MERGE's new value
/// of a NOT NULL column).
pub(crate) fn require_not_null(value: Expr, column: &str) -> Expr {
    REQUIRE_NOT_NULL.call(vec![value, lit(column)])
}
