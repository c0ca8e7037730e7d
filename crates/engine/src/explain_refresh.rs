//! `EXPLAIN REFRESH MATERIALIZED VIEW v`: what a refresh of `v` would do now (incremental,
//! full, nothing, or refused under `REFRESH POLICY INCREMENTAL STRICT`), why, and how much
//! each changed input changed, without writing anything. It needs what `REFRESH` needs
//! (checked with every other privilege in `Session::execute`). The row counts of the inputs
//! are shown to admins and the local operator only: the view's inputs may carry row filters
//! (or be tables the caller cannot read at all), whose hidden rows a count would reveal.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use medlake_lake::TableName;

use crate::{Error, Output, Result, Session};

/// The columns of `EXPLAIN REFRESH`: one row per changed input (one row with NULL inputs
/// when none changed).
pub(crate) fn schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let int = |name: &str| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        text("view", false),
        text("policy", false),
        text("mode", false),
        text("reason", false),
        text("input", true),
        int("from_version"),
        int("to_version"),
        int("inserted_rows"),
        int("removed_rows"),
        int("input_rows"),
    ]))
}

impl Session {
    pub(crate) async fn explain_refresh(&self, name: &TableName) -> Result<Output> {
        let plan = self.shared.views.explain_refresh(name).await?;
        let counts =
            self.principal.is_admin() || self.principal.kind == medlake_auth::PrincipalKind::Local;
        let rows = plan.inputs.len().max(1);
        let repeat = |value: String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                value, rows,
            )))
        };
        let number = |value: Option<u64>| value.and_then(|v| i64::try_from(v).ok());
        let column =
            |pick: &dyn Fn(&medlake_views::InputVolume) -> Option<u64>, shown: bool| -> ArrayRef {
                let values: Vec<Option<i64>> = if plan.inputs.is_empty() {
                    vec![None]
                } else {
                    plan.inputs
                        .iter()
                        .map(|input| if shown { number(pick(input)) } else { None })
                        .collect()
                };
                Arc::new(Int64Array::from(values))
            };
        let inputs: ArrayRef = Arc::new(StringArray::from(if plan.inputs.is_empty() {
            vec![None]
        } else {
            plan.inputs
                .iter()
                .map(|input| Some(input.table.to_string()))
                .collect::<Vec<_>>()
        }));
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                repeat(plan.view.to_string()),
                repeat(plan.policy.to_string()),
                repeat(plan.mode.to_string()),
                repeat(plan.reason.clone()),
                inputs,
                column(&|i| i.from_version, true),
                column(&|i| i.to_version, true),
                column(&|i| i.inserted, counts),
                column(&|i| i.removed, counts),
                column(&|i| i.rows, counts),
            ],
        )
        .map_err(|e| Error::Internal(format!("building EXPLAIN REFRESH's rows: {e}")))?;
        Ok(Output::batch(batch))
    }
}
