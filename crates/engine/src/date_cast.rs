//! `CAST(ts AS DATE)` of a timestamp without a zone, computed as a floor division.
//!
//! arrow-cast 59 converts each value through chrono's calendar (`as_datetime`, then
//! `from_naive_date`): in a gold view grouping readings by `CAST(taken_at AS DATE)` that
//! conversion was ~19% of the refresh's CPU (benches/RESULTS.md, medallion, session 42). A
//! naive timestamp counts units from 1970-01-01 00:00 with no leap seconds, so its date is the
//! floor of the value divided by the units of a day: the same answer for every value chrono
//! accepts. Values outside chrono's dates fall back to arrow's cast, which refuses them exactly
//! as `CAST` does.
//!
//! [`DateCast`] is a logical optimizer rule that replaces such casts in projections, aggregates
//! and filters by [`naive_date`] (the output keeps the cast's name, type and nullability). It
//! also prunes: DataFusion 55 leaves `CAST(ts AS DATE) = d` as it is (no file or row group can be
//! skipped by it), while `naive_date(ts) = d` becomes `ts >= d 00:00 AND ts < d + 1 00:00`
//! (`preimage`; also `<`, `>`, `IN`) in the optimizer's next pass. The function is a
//! cluster function (`cluster_functions`): an executor computes it the same way.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Date32Type, Field, FieldRef, Int64Type, TimeUnit};
use chrono::NaiveDate;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchemaRef, Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The function's name (also in EXPLAIN, as `naive_date(t) AS "CAST(t AS DATE)"`).
pub const NAME: &str = "naive_date";

/// `naive_date(ts)`: the date of a timestamp without a zone (what `CAST(ts AS DATE)` gives).
pub fn naive_date() -> ScalarUDF {
    ScalarUDF::new_from_impl(NaiveDateFn {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

/// The optimizer rule that computes `CAST(ts AS DATE)` with [`naive_date`].
#[derive(Debug)]
pub struct DateCast {
    function: Arc<ScalarUDF>,
}

impl DateCast {
    pub fn new() -> Self {
        Self {
            function: Arc::new(naive_date()),
        }
    }

    /// `CAST(e AS DATE)` of a naive timestamp `e` as `naive_date(e)`; anything else unchanged.
    fn replace(&self, expr: Expr, schema: &DFSchemaRef) -> DfResult<Transformed<Expr>> {
        let Expr::Cast(Cast { expr: inner, field }) = expr else {
            return Ok(Transformed::no(expr));
        };
        let naive = matches!(inner.get_type(schema), Ok(DataType::Timestamp(_, None)));
        if *field.data_type() != DataType::Date32 || !naive {
            return Ok(Transformed::no(Expr::Cast(Cast { expr: inner, field })));
        }
        Ok(Transformed::yes(self.function.call(vec![*inner])))
    }
}

impl Default for DateCast {
    fn default() -> Self {
        Self::new()
    }
}

impl OptimizerRule for DateCast {
    fn name(&self) -> &str {
        "medlake_date_cast"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let schema = match &plan {
            LogicalPlan::Projection(p) => p.input.schema().clone(),
            LogicalPlan::Aggregate(a) => a.input.schema().clone(),
            LogicalPlan::Filter(f) => f.input.schema().clone(),
            _ => return Ok(Transformed::no(plan)),
        };
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| self.replace(e, &schema))?;
            Ok(rewritten.update_data(|e| saved.restore(e)))
        })
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct NaiveDateFn {
    signature: Signature,
}

/// Units of a day of a timestamp's unit.
fn per_day(unit: TimeUnit) -> i64 {
    86_400
        * match unit {
            TimeUnit::Second => 1,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1_000_000,
            TimeUnit::Nanosecond => 1_000_000_000,
        }
}

/// The days since 1970-01-01 of chrono's first and last dates (arrow's cast refuses others).
fn day_bounds() -> (i64, i64) {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let days = |d: NaiveDate| d.signed_duration_since(epoch).num_days();
    (days(NaiveDate::MIN), days(NaiveDate::MAX))
}

/// The dates of naive timestamps.
fn dates(input: &ArrayRef) -> DfResult<ArrayRef> {
    let DataType::Timestamp(unit, None) = input.data_type() else {
        return exec_err!("{NAME}() takes a timestamp without a time zone");
    };
    let per_day = per_day(*unit);
    let (first, last) = day_bounds();
    // A timestamp's values are its Int64s (a cast that shares the buffer).
    let values = arrow::compute::cast(input, &DataType::Int64)?;
    let days = values
        .as_primitive::<Int64Type>()
        .try_unary::<_, Date32Type, ()>(|v| {
            let day = v.div_euclid(per_day);
            if (first..=last).contains(&day) {
                Ok(day as i32)
            } else {
                Err(())
            }
        });
    match days {
        Ok(days) => Ok(Arc::new(days)),
        // Outside chrono's dates: arrow's cast, which refuses the value as CAST does.
        Err(()) => Ok(arrow::compute::cast(input, &DataType::Date32)?),
    }
}

impl ScalarUDFImpl for NaiveDateFn {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [t @ DataType::Timestamp(_, None)] => Ok(vec![t.clone()]),
            [other] => plan_err!("{NAME}() takes a timestamp without a time zone, not {other}"),
            _ => plan_err!("{NAME}() takes one argument"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Date32)
    }

    /// Nullable exactly when the timestamp is (as the cast it replaces).
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(NAME, DataType::Date32, nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [input] = args.args.as_slice() else {
            return exec_err!("{NAME}() takes one argument");
        };
        match input {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(dates(array)?)),
            ColumnarValue::Scalar(value) => {
                let output = dates(&value.to_array_of_size(1)?)?;
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                    &output, 0,
                )?))
            }
        }
    }

    /// `naive_date(ts) = d` is `ts >= d 00:00 AND ts < (d + 1) 00:00` (so with `<`, `>`, `IN`).
    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> DfResult<PreimageResult> {
        let (Expr::Literal(ScalarValue::Date32(Some(day)), _), [arg]) = (lit_expr, args) else {
            return Ok(PreimageResult::None);
        };
        let Ok(DataType::Timestamp(unit, None)) = info.get_data_type(arg) else {
            return Ok(PreimageResult::None);
        };
        let per_day = per_day(unit);
        let bound = |day: i64| day.checked_mul(per_day);
        let (Some(lower), Some(upper)) = (bound(i64::from(*day)), bound(i64::from(*day) + 1))
        else {
            return Ok(PreimageResult::None);
        };
        let scalar = |v: i64| match unit {
            TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), None),
            TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(v), None),
            TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(v), None),
            TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(v), None),
        };
        Ok(PreimageResult::Range {
            expr: arg.clone(),
            interval: Box::new(Interval::try_new(scalar(lower), scalar(upper))?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, TimestampMicrosecondArray, TimestampSecondArray};

    fn via_arrow(input: &ArrayRef) -> ArrayRef {
        arrow::compute::cast(input, &DataType::Date32).unwrap()
    }

    #[test]
    fn dates_equal_arrows_cast_around_midnight_and_before_1970() {
        let day = 86_400_000_000i64;
        let mut values: Vec<Option<i64>> = vec![None];
        for d in [-800_000i64, -719_528, -1, 0, 1, 20_000, 2_932_896] {
            for offset in [-1i64, 0, 1, day / 2, day - 1] {
                values.push(Some(d * day + offset));
            }
        }
        let input: ArrayRef = Arc::new(TimestampMicrosecondArray::from(values));
        assert_eq!(dates(&input).unwrap().as_ref(), via_arrow(&input).as_ref());
    }

    #[test]
    fn a_value_outside_chronos_dates_is_refused_as_cast_refuses_it() {
        let input: ArrayRef = Arc::new(TimestampSecondArray::from(vec![0, i64::MAX]));
        let ours = dates(&input).unwrap_err().to_string();
        let theirs = arrow::compute::cast(&input, &DataType::Date32)
            .unwrap_err()
            .to_string();
        assert!(ours.contains(&theirs), "{ours} vs {theirs}");
        let fine: ArrayRef = Arc::new(TimestampSecondArray::from(vec![86_399, 86_400]));
        let expected: ArrayRef = Arc::new(Date32Array::from(vec![0, 1]));
        assert_eq!(dates(&fine).unwrap().as_ref(), expected.as_ref());
    }

    fn context(rule: bool) -> datafusion::prelude::SessionContext {
        use datafusion::execution::SessionStateBuilder;
        let mut builder = SessionStateBuilder::new().with_default_features();
        if rule {
            builder = builder.with_optimizer_rule(Arc::new(DateCast::new()));
        }
        let ctx = datafusion::prelude::SessionContext::new_with_state(builder.build());
        ctx.register_udf(naive_date());
        ctx
    }

    const SETUP: &str = "CREATE TABLE r (p VARCHAR NOT NULL, at TIMESTAMP NOT NULL, maybe TIMESTAMP, v DOUBLE) \
        AS SELECT 'p' || CAST(value % 7 AS VARCHAR), \
        to_timestamp_micros(value * 3600000007 - 86400000000 * 400), \
        CASE WHEN value % 3 = 0 THEN NULL ELSE to_timestamp_seconds(value * 7919) END, \
        CAST(value AS DOUBLE) FROM generate_series(0, 5000)";

    const QUERY: &str = "SELECT p, CAST(at AS DATE) AS day, CAST(maybe AS DATE), count(*) AS n, sum(v) \
        FROM r WHERE CAST(at AS DATE) > DATE '1969-01-01' GROUP BY p, CAST(at AS DATE), CAST(maybe AS DATE) \
        ORDER BY 1, 2, 3";

    /// The rewritten plan names, types and nulls its columns as the cast's and answers the
    /// same rows; the filter becomes a range of `at`, which statistics can prune by.
    #[tokio::test]
    async fn the_rule_changes_only_how_the_date_is_computed() {
        let mut answers = Vec::new();
        for rule in [false, true] {
            let ctx = context(rule);
            ctx.sql(SETUP).await.unwrap().collect().await.unwrap();
            let frame = ctx.sql(QUERY).await.unwrap();
            let plan = frame.clone().into_optimized_plan().unwrap();
            let shown = plan.display_indent().to_string();
            assert_eq!(shown.contains("naive_date(r.at)"), rule, "{shown}");
            // DataFusion keeps a cast's comparison; naive_date's is a range of `at`.
            assert_eq!(
                shown.contains("Filter: r.at >= TimestampNanosecond("),
                rule,
                "{shown}"
            );
            let schema = plan.schema().as_arrow().clone();
            let batches = frame.collect().await.unwrap();
            let text = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            answers.push((schema, text));
        }
        assert_eq!(answers[0], answers[1]);
        assert!(answers[1].1.lines().count() > 100, "{}", answers[1].1);
    }

    /// A NOT NULL timestamp's date is NOT NULL, as the cast's is (a view's Delta schema keeps it).
    #[tokio::test]
    async fn the_date_of_a_required_timestamp_is_required() {
        use arrow::array::RecordBatch;
        use arrow::datatypes::Schema;
        let field = Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        );
        let values = TimestampMicrosecondArray::from(vec![0, 86_400_000_000]);
        let batch =
            RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![Arc::new(values)])
                .unwrap();
        let ctx = context(true);
        ctx.register_batch("t", batch).unwrap();
        let frame = ctx
            .sql("SELECT CAST(at AS DATE) AS day FROM t")
            .await
            .unwrap();
        let plan = frame.clone().into_optimized_plan().unwrap();
        assert!(plan.display_indent().to_string().contains("naive_date"));
        assert!(!plan.schema().field(0).is_nullable());
        let batches = frame.collect().await.unwrap();
        let expected: ArrayRef = Arc::new(Date32Array::from(vec![0, 1]));
        assert_eq!(batches[0].column(0).as_ref(), expected.as_ref());
    }

    /// Through a view's projection a filter on the date is still a range of the timestamp.
    #[tokio::test]
    async fn a_date_filter_through_a_rewritten_projection_is_a_range() {
        let ctx = context(true);
        ctx.sql(SETUP).await.unwrap().collect().await.unwrap();
        ctx.sql("CREATE VIEW d AS SELECT p, CAST(at AS DATE) AS day FROM r")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let frame = ctx
            .sql("SELECT count(*) FROM d WHERE day = DATE '1969-03-01'")
            .await
            .unwrap();
        let shown = frame
            .clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string();
        assert!(shown.contains("r.at >= TimestampNanosecond("), "{shown}");
        let expected = context(false);
        expected.sql(SETUP).await.unwrap().collect().await.unwrap();
        let want = expected
            .sql("SELECT count(*) FROM r WHERE CAST(at AS DATE) = DATE '1969-03-01'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(frame.collect().await.unwrap(), want);
    }
}
