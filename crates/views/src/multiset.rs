//! Counting rows as a multiset: the arithmetic of an incremental refresh of a view without a
//! key, where a row is identified only by its values.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use datafusion::error::DataFusionError;

use crate::error::{Error, Result};

fn arrow(e: arrow::error::ArrowError) -> Error {
    Error::from(DataFusionError::ArrowError(Box::new(e), None))
}

/// The weight of each row of `batch` (its Int64 column after the first `columns`; NULL: 0).
fn weights(batch: &RecordBatch, columns: usize) -> Result<impl Fn(usize) -> i64 + '_> {
    let weights = batch
        .column(columns)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::Internal("a change weight that is not an Int64".into()))?;
    Ok(move |i: usize| {
        if weights.is_valid(i) {
            weights.value(i)
        } else {
            0
        }
    })
}

/// `net` (rows of `columns` columns plus an Int64 weight) split into the rows it gains, each
/// repeated as often as its positive weight, as `target`'s rows; and the rows it loses (a
/// negative weight), as they are (`schema`: `net`'s).
pub(crate) fn split(
    target: &SchemaRef,
    schema: &SchemaRef,
    net: &[RecordBatch],
    columns: usize,
) -> Result<(Vec<RecordBatch>, RecordBatch)> {
    let mut gains = Vec::new();
    let mut losses = Vec::new();
    for batch in net {
        let weight = weights(batch, columns)?;
        let mut gained: Vec<u32> = Vec::new();
        let mut lost: Vec<u32> = Vec::new();
        for i in 0..batch.num_rows() {
            let w = weight(i);
            let index =
                u32::try_from(i).map_err(|_| Error::Internal("a batch over 2^32 rows".into()))?;
            if w > 0 {
                gained.extend(std::iter::repeat_n(index, usize::try_from(w).unwrap_or(0)));
            } else if w < 0 {
                lost.push(index);
            }
        }
        let take = |indices: Vec<u32>, upto: usize| -> Result<Vec<arrow::array::ArrayRef>> {
            let indices = arrow::array::UInt32Array::from(indices);
            batch.columns()[..upto]
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &indices, None).map_err(arrow))
                .collect()
        };
        if !gained.is_empty() {
            gains
                .push(RecordBatch::try_new(target.clone(), take(gained, columns)?).map_err(arrow)?);
        }
        if !lost.is_empty() {
            losses.push(
                RecordBatch::try_new(schema.clone(), take(lost, columns + 1)?).map_err(arrow)?,
            );
        }
    }
    let losses = arrow::compute::concat_batches(schema, &losses).map_err(arrow)?;
    Ok((gains, losses))
}

/// `net` (rows of `columns` columns plus an Int64 weight) as the rows it gains and the rows it
/// loses, each repeated as often as its weight says, as `target`'s rows.
pub(crate) fn expand(
    target: &SchemaRef,
    net: &[RecordBatch],
    columns: usize,
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let mut sides = (Vec::new(), Vec::new());
    for batch in net {
        let weight = weights(batch, columns)?;
        let mut gained: Vec<u32> = Vec::new();
        let mut lost: Vec<u32> = Vec::new();
        for i in 0..batch.num_rows() {
            let w = weight(i);
            let index =
                u32::try_from(i).map_err(|_| Error::Internal("a batch over 2^32 rows".into()))?;
            let copies = usize::try_from(w.unsigned_abs()).unwrap_or(0);
            let side = if w > 0 { &mut gained } else { &mut lost };
            side.extend(std::iter::repeat_n(index, copies));
        }
        for (indices, out) in [(gained, &mut sides.0), (lost, &mut sides.1)] {
            if indices.is_empty() {
                continue;
            }
            let indices = arrow::array::UInt32Array::from(indices);
            let arrays = batch.columns()[..columns]
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &indices, None).map_err(arrow))
                .collect::<Result<Vec<_>>>()?;
            out.push(RecordBatch::try_new(target.clone(), arrays).map_err(arrow)?);
        }
    }
    Ok(sides)
}

/// The rows of `held` with each distinct row's count changed by its weight in `net` (rows of
/// the same columns plus a last Int64 column: the weight). A count below zero stays at zero.
/// The result has `target`'s schema; `columns` is how many columns a row has.
pub(crate) fn apply(
    target: &SchemaRef,
    held: &[RecordBatch],
    net: &[RecordBatch],
    columns: usize,
) -> Result<RecordBatch> {
    let fields = target
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(arrow)?;
    let mut counts: HashMap<OwnedRow, i64> = HashMap::new();
    let mut order: Vec<OwnedRow> = Vec::new();
    let mut add = |row: OwnedRow, by: i64| {
        let count = counts.entry(row).or_insert_with_key(|row| {
            order.push(row.clone());
            0
        });
        *count += by;
    };
    for batch in held {
        let rows = converter
            .convert_columns(&batch.columns()[..columns])
            .map_err(arrow)?;
        for row in rows.iter() {
            add(row.owned(), 1);
        }
    }
    for batch in net {
        let weights = batch
            .column(columns)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::Internal("a change weight that is not an Int64".into()))?;
        let rows = converter
            .convert_columns(&batch.columns()[..columns])
            .map_err(arrow)?;
        for (i, row) in rows.iter().enumerate() {
            let weight = if weights.is_valid(i) {
                weights.value(i)
            } else {
                0
            };
            add(row.owned(), weight);
        }
    }
    let mut out = Vec::new();
    for row in &order {
        let count = counts.get(row).copied().unwrap_or(0).max(0);
        for _ in 0..count {
            out.push(row.row());
        }
    }
    let arrays = converter.convert_rows(out).map_err(arrow)?;
    RecordBatch::try_new(target.clone(), arrays).map_err(arrow)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(values: &[Option<&str>], weights: Option<&[i64]>) -> RecordBatch {
        let mut fields = vec![Field::new("v", DataType::Utf8, true)];
        let mut arrays: Vec<Arc<dyn Array>> = vec![Arc::new(StringArray::from(values.to_vec()))];
        if let Some(w) = weights {
            fields.push(Field::new("w", DataType::Int64, false));
            arrays.push(Arc::new(Int64Array::from(w.to_vec())));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    fn values(batch: &RecordBatch) -> Vec<Option<String>> {
        let mut v: Vec<Option<String>> = batch
            .column(0)
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn counts_change_by_their_weights_and_never_fall_below_zero() {
        let target = batch(&[], None).schema();
        let held = batch(&[Some("a"), Some("a"), Some("b"), None], None);
        let net = batch(
            &[Some("a"), Some("b"), Some("c"), None, Some("d")],
            Some(&[-1, 2, 1, -1, -3]),
        );
        let out = apply(&target, &[held], &[net], 1).unwrap();
        assert_eq!(
            values(&out),
            vec![
                Some("a".into()),
                Some("b".into()),
                Some("b".into()),
                Some("b".into()),
                Some("c".into())
            ]
        );
    }
}
