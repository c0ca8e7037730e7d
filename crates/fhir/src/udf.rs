//! `fhir_view(resource, '<ViewDefinition JSON>')`: the rows a ViewDefinition gives for one
//! resource's JSON text, as a list of structs (one field per column), which
//! `unnest(...)` turns into rows. The definition must be a string literal: it is checked,
//! and the struct's fields are known, when the query is planned.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, StringArray,
    StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use serde_json::Value;

use crate::FHIR_VIEW;
use crate::view::{Cell, ColumnType, ViewDefinition};

/// The longest resource text read (a larger one is an error, not an allocation).
const MAX_RESOURCE_BYTES: usize = 64 << 20;
/// The most rows one batch of resources may give.
const MAX_BATCH_ROWS: usize = 20_000_000;
/// The most text one column of one batch may hold (Utf8 offsets are 32-bit).
const MAX_TEXT_BYTES: usize = 1 << 30;

/// The function, to register with a session.
pub fn fhir_view_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(FhirView::new())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FhirView {
    signature: Signature,
}

impl FhirView {
    fn new() -> Self {
        let text = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut variants = Vec::new();
        for a in &text {
            for b in &text {
                variants.push(TypeSignature::Exact(vec![a.clone(), b.clone()]));
            }
        }
        FhirView {
            signature: Signature::one_of(variants, Volatility::Immutable),
        }
    }
}

fn literal(value: Option<&ScalarValue>) -> Option<&str> {
    match value? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// The Arrow type of a column.
fn column_type(ty: ColumnType, collection: bool) -> DataType {
    let scalar = match ty {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Integer => DataType::Int64,
        ColumnType::Decimal => DataType::Float64,
        ColumnType::Text => DataType::Utf8,
    };
    if collection {
        DataType::List(Arc::new(Field::new("item", scalar, true)))
    } else {
        scalar
    }
}

/// The struct fields of a view's rows.
pub fn row_fields(view: &ViewDefinition) -> Fields {
    view.columns()
        .iter()
        .map(|c| Field::new(&c.name, column_type(c.ty, c.collection), true))
        .collect()
}

fn parse(text: &str) -> DfResult<ViewDefinition> {
    ViewDefinition::parse(text)
        .map_err(|e| datafusion::error::DataFusionError::Plan(format!("{FHIR_VIEW}: {e}")))
}

impl ScalarUDFImpl for FhirView {
    fn name(&self) -> &str {
        FHIR_VIEW
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        plan_err!("{FHIR_VIEW}: the return type depends on the ViewDefinition literal")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        let Some(text) = literal(args.scalar_arguments.get(1).copied().flatten()) else {
            return plan_err!(
                "{FHIR_VIEW}(resource, definition): the definition must be a string literal \
                 holding a ViewDefinition's JSON"
            );
        };
        let view = parse(text)?;
        let item = Field::new("item", DataType::Struct(row_fields(&view)), false);
        Ok(Arc::new(Field::new(
            FHIR_VIEW,
            DataType::List(Arc::new(item)),
            false,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [resource, definition] = args.args.as_slice() else {
            return exec_err!("{FHIR_VIEW} takes 2 arguments");
        };
        let ColumnarValue::Scalar(definition) = definition else {
            return exec_err!("{FHIR_VIEW}: the definition must be a constant");
        };
        let Some(text) = literal(Some(definition)) else {
            return exec_err!("{FHIR_VIEW}: the definition must be a non-NULL string");
        };
        let view = parse(text)?;
        let scalar = matches!(resource, ColumnarValue::Scalar(_));
        let resources = resource.to_array(if scalar { 1 } else { args.number_rows })?;
        let out = evaluate(&view, &resources)?;
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// The text values of a string array of any layout.
fn texts(array: &ArrayRef) -> DfResult<Vec<Option<&str>>> {
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().collect(),
        DataType::Utf8View => array.as_string_view().iter().collect(),
        DataType::Null => vec![None; array.len()],
        other => return exec_err!("{FHIR_VIEW}: the resource must be text, not {other}"),
    })
}

/// The rows of every resource in `resources`, as one list per resource.
pub fn evaluate(view: &ViewDefinition, resources: &ArrayRef) -> DfResult<ArrayRef> {
    let fields = row_fields(view);
    let width = fields.len();
    let mut columns: Vec<Vec<Cell>> = vec![Vec::new(); width];
    let mut offsets = Vec::with_capacity(resources.len() + 1);
    offsets.push(0i32);
    let mut total = 0usize;
    for text in texts(resources)? {
        if let Some(text) = text {
            for row in rows(view, text)? {
                for (column, cell) in columns.iter_mut().zip(row) {
                    column.push(cell);
                }
                total += 1;
            }
            if total > MAX_BATCH_ROWS {
                return exec_err!(
                    "{FHIR_VIEW}: one batch of resources gives more than {MAX_BATCH_ROWS} rows"
                );
            }
        }
        let Ok(end) = i32::try_from(total) else {
            return exec_err!("{FHIR_VIEW}: more than 2^31 rows in one batch");
        };
        offsets.push(end);
    }
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .zip(fields.iter())
        .map(|(cells, field)| build(cells, field.data_type()))
        .collect::<DfResult<_>>()?;
    let rows = if width == 0 {
        StructArray::new_empty_fields(total, None)
    } else {
        StructArray::try_new(fields.clone(), arrays, None)?
    };
    let item = Arc::new(Field::new("item", DataType::Struct(fields), false));
    Ok(Arc::new(ListArray::try_new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(rows),
        None,
    )?))
}

/// One resource's rows; an error names the resource.
fn rows(view: &ViewDefinition, text: &str) -> DfResult<Vec<Vec<Cell>>> {
    if text.len() > MAX_RESOURCE_BYTES {
        return exec_err!(
            "{FHIR_VIEW}: a resource of {} bytes is larger than {MAX_RESOURCE_BYTES}",
            text.len()
        );
    }
    let resource: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return exec_err!("{FHIR_VIEW}: a resource is not JSON: {e}"),
    };
    view.rows(&resource).map_err(|e| {
        let id = resource.get("id").and_then(Value::as_str).unwrap_or("?");
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("?");
        datafusion::error::DataFusionError::Execution(format!("{FHIR_VIEW}: {ty}/{id}: {e}"))
    })
}

fn build(cells: Vec<Cell>, data_type: &DataType) -> DfResult<ArrayRef> {
    Ok(match data_type {
        DataType::Boolean => Arc::new(
            cells
                .into_iter()
                .map(|c| match c {
                    Cell::Bool(b) => Some(b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        DataType::Int64 => Arc::new(
            cells
                .into_iter()
                .map(|c| match c {
                    Cell::Int(i) => Some(i),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        DataType::Float64 => Arc::new(
            cells
                .into_iter()
                .map(|c| match c {
                    Cell::Dec(d) => Some(d),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        DataType::Utf8 => {
            let bytes: usize = cells
                .iter()
                .map(|c| match c {
                    Cell::Text(s) => s.len(),
                    _ => 0,
                })
                .sum();
            if bytes > MAX_TEXT_BYTES {
                return exec_err!(
                    "{FHIR_VIEW}: a column of one batch holds more than {MAX_TEXT_BYTES} bytes of text"
                );
            }
            Arc::new(
                cells
                    .into_iter()
                    .map(|c| match c {
                        Cell::Text(s) => Some(s),
                        _ => None,
                    })
                    .collect::<StringArray>(),
            )
        }
        DataType::List(item) => {
            let mut offsets = vec![0i32];
            let mut values = Vec::new();
            for cell in cells {
                if let Cell::List(items) = cell {
                    values.extend(items);
                }
                let Ok(end) = i32::try_from(values.len()) else {
                    return exec_err!("{FHIR_VIEW}: more than 2^31 values in one batch");
                };
                offsets.push(end);
            }
            let values = build(values, item.data_type())?;
            Arc::new(ListArray::try_new(
                item.clone(),
                OffsetBuffer::new(offsets.into()),
                values,
                None,
            )?)
        }
        other => return exec_err!("{FHIR_VIEW}: no column of type {other}"),
    })
}
