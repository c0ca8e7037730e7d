//! A refresh's expectations, checked where the rows are.
//!
//! The one implementation of what a rule does to a batch: the server's `ExpectationsExec`
//! (crates/views) checks with it, and so does an executor writing a refresh's files
//! ([`crate::LakeWriteExec`] with [`Checking`]): kept rows go to the view's files,
//! quarantined ones (with the rules they broke, the refresh and the time) to the quarantine
//! table's, and the counts come back to the server in the write's rows.

use std::sync::Arc;

use datafusion::arrow::array::TimestampMicrosecondArray;
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{filter_record_batch, kernels::boolean};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};

/// What a rule does with the rows that violate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Keep the row, count it.
    Keep,
    /// Leave the row out.
    Drop,
    /// Leave the row out and write it to the quarantine table.
    Quarantine,
    /// Fail the refresh.
    Fail,
}

/// One expectation, planned against the rows it checks.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// A boolean expression; NULL counts as met, as in a CHECK constraint.
    pub predicate: Arc<dyn PhysicalExpr>,
}

/// A batch checked against rules.
#[derive(Debug)]
pub struct Checked {
    /// The rows that stay.
    pub kept: RecordBatch,
    /// The rows quarantined, with [`quarantine_fields`] after the batch's columns.
    pub quarantined: Option<RecordBatch>,
    /// Violations per rule (in the rules' order).
    pub violations: Vec<u64>,
    /// The first `Fail` rule violated (its index) and by how many rows.
    pub failed: Option<(usize, u64)>,
}

/// The columns a quarantine table adds to the view's: the rules a row broke, the refresh
/// that found it, and when.
pub fn quarantine_fields() -> Vec<FieldRef> {
    vec![
        Arc::new(Field::new("_medlake_rules", DataType::Utf8, true)),
        Arc::new(Field::new("_medlake_refresh_id", DataType::Utf8, true)),
        Arc::new(Field::new(
            "_medlake_quarantined_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        )),
    ]
}

/// The quarantine table's schema for a view of `view` columns.
pub fn quarantine_schema(view: &Schema) -> SchemaRef {
    let mut fields: Vec<FieldRef> = view.fields().iter().cloned().collect();
    fields.extend(quarantine_fields());
    Arc::new(Schema::new(fields))
}

/// Checks `batch` against `rules` (a refresh `refresh_id`'s).
pub fn check(rules: &[Rule], batch: RecordBatch, refresh_id: &str) -> Result<Checked> {
    let n = batch.num_rows();
    let mut violations = vec![0; rules.len()];
    if rules.is_empty() || n == 0 {
        return Ok(Checked {
            kept: batch,
            quarantined: None,
            violations,
            failed: None,
        });
    }
    let mut keep = BooleanArray::from(vec![true; n]);
    let mut quarantine = BooleanArray::from(vec![false; n]);
    let mut broken: Vec<Vec<&str>> = vec![Vec::new(); n];
    let mut failed = None;
    for (i, rule) in rules.iter().enumerate() {
        let value = rule.predicate.evaluate(&batch)?.into_array(n)?;
        let value = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "expectation '{}' is not a boolean expression",
                    rule.name
                ))
            })?;
        let violated = BooleanArray::from_iter(
            (0..n).map(|row| Some(value.is_valid(row) && !value.value(row))),
        );
        let count = violated.true_count() as u64;
        violations[i] = count;
        if count == 0 {
            continue;
        }
        match rule.action {
            Action::Keep => {}
            Action::Drop => keep = boolean::and(&keep, &boolean::not(&violated)?)?,
            Action::Quarantine => {
                keep = boolean::and(&keep, &boolean::not(&violated)?)?;
                quarantine = boolean::or(&quarantine, &violated)?;
                for (row, names) in broken.iter_mut().enumerate() {
                    if violated.value(row) {
                        names.push(&rule.name);
                    }
                }
            }
            Action::Fail => {
                failed = failed.or(Some((i, count)));
            }
        }
    }
    let quarantined = if quarantine.true_count() > 0 {
        let rows = filter_record_batch(&batch, &quarantine)?;
        let names: StringArray = broken
            .iter()
            .enumerate()
            .filter(|(row, _)| quarantine.value(*row))
            .map(|(_, names)| Some(names.join(",")))
            .collect();
        let count = rows.num_rows();
        let now = chrono_now_micros();
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(names));
        columns.push(Arc::new(StringArray::from(vec![refresh_id; count])));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![now; count]).with_timezone("UTC"),
        ));
        Some(RecordBatch::try_new(
            quarantine_schema(&rows.schema()),
            columns,
        )?)
    } else {
        None
    };
    Ok(Checked {
        kept: filter_record_batch(&batch, &keep)?,
        quarantined,
        violations,
        failed,
    })
}

fn chrono_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
