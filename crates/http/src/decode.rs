//! Request bodies into Arrow: NDJSON or a JSON array of objects, validated row by row against
//! the target table's schema. Every refused row is counted and, up to a caller's limit, gets
//! its own reason (each at most [`MAX_REASON_BYTES`]); nothing is dropped silently and nothing
//! is coerced that could change a value.

use std::io::Read;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, LargeStringBuilder,
    RecordBatch, StringBuilder, StringViewBuilder, TimestampMicrosecondBuilder,
    TimestampMillisecondBuilder, TimestampNanosecondBuilder, TimestampSecondBuilder, UInt8Builder,
    UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value;

/// Why a body could not be read at all (400 / 413).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid gzip: {0}")]
    Gzip(String),
    #[error("the body decompresses to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("the body holds no rows")]
    Empty,
}

/// Longest reason given for one refused row (longer ones are cut, marked with `…`): a reason
/// quotes what was sent, so without a cap a body of bad rows costs many times its size.
pub const MAX_REASON_BYTES: usize = 256;

/// Longest column list quoted by an "unknown column" reason.
const MAX_COLUMNS_BYTES: usize = 160;

/// `text` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The rows of a body checked against a schema.
#[derive(Debug)]
pub struct Checked {
    /// The accepted rows as one batch (in the table's schema); `None` if none was accepted.
    pub batch: Option<RecordBatch>,
    /// The first refused rows (at most the `keep` asked for), with their reasons.
    pub refused: Vec<Refused>,
    /// How many rows were refused in all.
    pub refused_total: usize,
}

/// One refused row: its position in the body (0-based) and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Refused {
    pub row: usize,
    pub reason: String,
    /// The row as sent, for the quarantine.
    #[serde(skip)]
    pub raw: String,
}

/// Decompresses a gzip body, refusing to inflate past `limit` bytes.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Gzip(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
}

/// The JSON values of a body: a JSON array, or one value per non-empty line (NDJSON).
pub fn values(body: &[u8], array: bool) -> Result<Vec<Value>, BodyError> {
    let values = if array {
        match serde_json::from_slice::<Value>(body).map_err(|e| BodyError::Json(e.to_string()))? {
            Value::Array(values) => values,
            other => vec![other],
        }
    } else {
        let text = std::str::from_utf8(body).map_err(|e| BodyError::Json(e.to_string()))?;
        let mut values = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            values.push(
                serde_json::from_str(line)
                    .map_err(|e| BodyError::Json(format!("line {}: {e}", i + 1)))?,
            );
        }
        values
    };
    if values.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(values)
}

/// The accepted rows as one batch (in the table's schema), and the refused ones: all are
/// counted, the first `keep` are kept with their reasons.
pub fn rows(schema: &SchemaRef, values: Vec<Value>, keep: usize) -> Checked {
    let mut builders: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column::new(f, values.len()))
        .collect();
    let columns = bounded(
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", "),
        MAX_COLUMNS_BYTES,
    );
    let mut refused = Vec::new();
    let mut refused_total = 0usize;
    let mut refuse = |row: usize, reason: &dyn Fn() -> String, raw: &dyn Fn() -> String| {
        refused_total += 1;
        if refused.len() < keep {
            refused.push(Refused {
                row,
                reason: bounded(reason(), MAX_REASON_BYTES),
                raw: raw(),
            });
        }
    };
    let mut accepted = 0;
    'rows: for (index, value) in values.into_iter().enumerate() {
        let Value::Object(object) = value else {
            refuse(
                index,
                &|| format!("expected a JSON object, got {}", kind(&value)),
                &|| value.to_string(),
            );
            continue;
        };
        if let Some(unknown) = object.keys().find(|k| schema.field_with_name(k).is_err()) {
            refuse(
                index,
                &|| {
                    format!(
                        "unknown column '{}' (the table has {columns})",
                        bounded(unknown.clone(), 64)
                    )
                },
                &|| Value::Object(object.clone()).to_string(),
            );
            continue;
        }
        // Check every field first, so that a refused row leaves no trace in the builders.
        let mut parsed = Vec::with_capacity(builders.len());
        for (field, builder) in schema.fields().iter().zip(&builders) {
            match builder.parse(field, object.get(field.name())) {
                Ok(v) => parsed.push(v),
                Err(reason) => {
                    refuse(
                        index,
                        &|| format!("column '{}': {reason}", field.name()),
                        &|| Value::Object(object.clone()).to_string(),
                    );
                    continue 'rows;
                }
            }
        }
        for (builder, value) in builders.iter_mut().zip(parsed) {
            builder.append(value);
        }
        accepted += 1;
    }
    if accepted == 0 {
        return Checked {
            batch: None,
            refused,
            refused_total,
        };
    }
    let columns: Vec<ArrayRef> = builders.iter_mut().map(Column::finish).collect();
    match RecordBatch::try_new(schema.clone(), columns) {
        Ok(batch) => Checked {
            batch: Some(batch),
            refused,
            refused_total,
        },
        Err(e) => {
            // Not reachable for rows that passed the checks; refuse rather than lose them.
            Checked {
                batch: None,
                refused: vec![Refused {
                    row: 0,
                    reason: bounded(format!("could not build the batch: {e}"), MAX_REASON_BYTES),
                    raw: String::new(),
                }],
                refused_total: refused_total + accepted,
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A checked value, ready to append.
enum Parsed {
    Null,
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Text(String),
    I128(i128),
}

struct Column {
    builder: Box<dyn ArrayBuilder>,
    data_type: DataType,
}

impl Column {
    fn new(field: &Field, capacity: usize) -> Self {
        Self {
            builder: arrow::array::make_builder(field.data_type(), capacity),
            data_type: field.data_type().clone(),
        }
    }

    fn parse(&self, field: &Field, value: Option<&Value>) -> Result<Parsed, String> {
        let value = match value {
            None | Some(Value::Null) if field.is_nullable() => return Ok(Parsed::Null),
            None => return Err("missing, and the column is NOT NULL".into()),
            Some(Value::Null) => return Err("null, and the column is NOT NULL".into()),
            Some(v) => v,
        };
        let wrong = |expected: &str| Err(format!("expected {expected}, got {}", kind(value)));
        use DataType as D;
        match &self.data_type {
            D::Int8 | D::Int16 | D::Int32 | D::Int64 => {
                let Some(v) = value.as_i64() else {
                    return wrong("an integer");
                };
                let (min, max) = match self.data_type {
                    D::Int8 => (i8::MIN as i64, i8::MAX as i64),
                    D::Int16 => (i16::MIN as i64, i16::MAX as i64),
                    D::Int32 => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if v < min || v > max {
                    return Err(format!("{v} is out of range for {}", self.data_type));
                }
                Ok(Parsed::I64(v))
            }
            D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
                let Some(v) = value.as_u64() else {
                    return wrong("a non-negative integer");
                };
                let max = match self.data_type {
                    D::UInt8 => u8::MAX as u64,
                    D::UInt16 => u16::MAX as u64,
                    D::UInt32 => u32::MAX as u64,
                    _ => u64::MAX,
                };
                if v > max {
                    return Err(format!("{v} is out of range for {}", self.data_type));
                }
                Ok(Parsed::U64(v))
            }
            D::Float32 | D::Float64 => match value.as_f64() {
                Some(v) => Ok(Parsed::F64(v)),
                None => wrong("a number"),
            },
            D::Boolean => match value.as_bool() {
                Some(v) => Ok(Parsed::Bool(v)),
                None => wrong("true or false"),
            },
            D::Utf8 | D::LargeUtf8 | D::Utf8View => match value {
                Value::String(s) => Ok(Parsed::Text(s.clone())),
                _ => wrong("a string"),
            },
            D::Decimal128(precision, scale) => {
                let text = match value {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return wrong("a decimal number"),
                };
                decimal(&text, *precision, *scale).map(Parsed::I128)
            }
            D::Date32 => match value {
                Value::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map(|d| {
                        Parsed::I64(
                            (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days(),
                        )
                    })
                    .map_err(|_| format!("'{s}' is not a date (YYYY-MM-DD)")),
                _ => wrong("a date string"),
            },
            D::Timestamp(unit, _) => {
                let micros_or = match value {
                    Value::String(s) => timestamp(s),
                    _ => return wrong("a timestamp string (RFC 3339)"),
                };
                let (seconds, nanos) = micros_or?;
                let v = match unit {
                    TimeUnit::Second => Some(seconds),
                    TimeUnit::Millisecond => seconds
                        .checked_mul(1_000)
                        .and_then(|v| v.checked_add(i64::from(nanos / 1_000_000))),
                    TimeUnit::Microsecond => seconds
                        .checked_mul(1_000_000)
                        .and_then(|v| v.checked_add(i64::from(nanos / 1_000))),
                    TimeUnit::Nanosecond => seconds
                        .checked_mul(1_000_000_000)
                        .and_then(|v| v.checked_add(i64::from(nanos))),
                };
                v.map(Parsed::I64)
                    .ok_or_else(|| format!("{value} is out of range for {}", self.data_type))
            }
            other => Err(format!(
                "columns of type {other} cannot be ingested over HTTP"
            )),
        }
    }

    fn append(&mut self, value: Parsed) {
        macro_rules! put {
            ($builder:ty, $v:expr) => {
                if let Some(b) = self.builder.as_any_mut().downcast_mut::<$builder>() {
                    b.append_option($v);
                }
            };
        }
        use DataType as D;
        let int = match value {
            Parsed::I64(v) => Some(v),
            _ => None,
        };
        match (&self.data_type, value) {
            (D::Int8, _) => put!(Int8Builder, int.map(|v| v as i8)),
            (D::Int16, _) => put!(Int16Builder, int.map(|v| v as i16)),
            (D::Int32, _) => put!(Int32Builder, int.map(|v| v as i32)),
            (D::Int64, _) => put!(Int64Builder, int),
            (D::UInt8, v) => put!(UInt8Builder, unsigned(v).map(|v| v as u8)),
            (D::UInt16, v) => put!(UInt16Builder, unsigned(v).map(|v| v as u16)),
            (D::UInt32, v) => put!(UInt32Builder, unsigned(v).map(|v| v as u32)),
            (D::UInt64, v) => put!(UInt64Builder, unsigned(v)),
            (D::Float32, v) => put!(Float32Builder, float(v).map(|v| v as f32)),
            (D::Float64, v) => put!(Float64Builder, float(v)),
            (D::Boolean, Parsed::Bool(v)) => put!(BooleanBuilder, Some(v)),
            (D::Boolean, _) => put!(BooleanBuilder, None::<bool>),
            (D::Utf8, v) => put!(StringBuilder, text(v)),
            (D::LargeUtf8, v) => put!(LargeStringBuilder, text(v)),
            (D::Utf8View, v) => put!(StringViewBuilder, text(v)),
            (D::Decimal128(..), Parsed::I128(v)) => put!(Decimal128Builder, Some(v)),
            (D::Decimal128(..), _) => put!(Decimal128Builder, None::<i128>),
            (D::Date32, _) => put!(Date32Builder, int.map(|v| v as i32)),
            (D::Timestamp(TimeUnit::Second, _), _) => put!(TimestampSecondBuilder, int),
            (D::Timestamp(TimeUnit::Millisecond, _), _) => put!(TimestampMillisecondBuilder, int),
            (D::Timestamp(TimeUnit::Microsecond, _), _) => put!(TimestampMicrosecondBuilder, int),
            (D::Timestamp(TimeUnit::Nanosecond, _), _) => put!(TimestampNanosecondBuilder, int),
            _ => {}
        }
    }

    fn finish(&mut self) -> ArrayRef {
        let array = self.builder.finish();
        if array.data_type() == &self.data_type {
            return array;
        }
        // A builder that finished with default parameters (decimal precision and scale, time
        // zone): the values are right, the type is relabelled (never cast: that would rescale).
        match array
            .to_data()
            .into_builder()
            .data_type(self.data_type.clone())
            .build()
        {
            Ok(data) => arrow::array::make_array(data),
            Err(_) => array,
        }
    }
}

fn unsigned(v: Parsed) -> Option<u64> {
    match v {
        Parsed::U64(v) => Some(v),
        _ => None,
    }
}

fn float(v: Parsed) -> Option<f64> {
    match v {
        Parsed::F64(v) => Some(v),
        _ => None,
    }
}

fn text(v: Parsed) -> Option<String> {
    match v {
        Parsed::Text(v) => Some(v),
        _ => None,
    }
}

/// RFC 3339 (`2026-11-23T08:00:00Z`, any offset: the instant) or a naive
/// `YYYY-MM-DD[T ]HH:MM:SS[.f]` (taken as UTC): seconds and nanoseconds since the epoch.
fn timestamp(s: &str) -> Result<(i64, u32), String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok((t.timestamp(), t.timestamp_subsec_nanos()));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            let t = t.and_utc();
            return Ok((t.timestamp(), t.timestamp_subsec_nanos()));
        }
    }
    Err(format!(
        "'{s}' is not a timestamp (RFC 3339, e.g. 2026-11-23T08:00:00Z)"
    ))
}

/// A decimal literal as the unscaled integer of `Decimal128(precision, scale)`, refusing
/// values with more fractional digits than the scale (no silent rounding) or too many digits.
fn decimal(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let bad = || format!("'{text}' is not a decimal({precision},{scale})");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let scale = scale.max(0) as usize;
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > scale {
        return Err(format!("'{text}' has more than {scale} decimal places"));
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() + scale > precision as usize {
        return Err(format!(
            "'{text}' has too many digits for decimal({precision},{scale})"
        ));
    }
    let mut unscaled = format!("{whole}{fraction}");
    unscaled.extend(std::iter::repeat_n('0', scale - fraction.len()));
    let value: i128 = if unscaled.is_empty() {
        0
    } else {
        unscaled.parse().map_err(|_| bad())?
    };
    Ok(if negative { -value } else { value })
}

/// The schema of a quarantine table for pushed rows.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(vec![
        Field::new("raw", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("idempotency_key", DataType::Utf8, true),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Refused rows as a batch of the quarantine table.
pub fn quarantine_rows(refused: &[Refused], key: Option<&str>) -> RecordBatch {
    let now = chrono::Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(arrow::array::StringArray::from_iter_values(
            refused.iter().map(|r| r.raw.as_str()),
        )),
        Arc::new(arrow::array::StringArray::from_iter_values(
            refused
                .iter()
                .map(|r| format!("row {}: {}", r.row, r.reason)),
        )),
        Arc::new(arrow::array::StringArray::from(vec![key; refused.len()])),
        Arc::new(
            arrow::array::TimestampMicrosecondArray::from(vec![now; refused.len()])
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(quarantine_schema(), columns).expect("the quarantine schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("patient_id", DataType::Int32, false),
            Field::new("value", DataType::Float64, true),
            Field::new("dose", DataType::Decimal128(6, 2), true),
            Field::new(
                "taken_at",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]))
    }

    #[test]
    fn ndjson_rows_are_checked_one_by_one_with_reasons() {
        let body = br#"
{"device_id":"m-1","patient_id":1001,"value":72,"dose":"1.50","taken_at":"2026-11-23T08:00:00Z"}
{"device_id":"m-1","patient_id":"x","value":72,"taken_at":"2026-11-23T08:00:00Z"}
{"device_id":"m-2","patient_id":1002,"taken_at":"2026-11-23 08:00:01.5"}
{"patient_id":1003,"taken_at":"2026-11-23T08:00:00Z"}
{"device_id":"m-3","patient_id":3000000000,"taken_at":"2026-11-23T08:00:00Z"}
{"device_id":"m-3","patient_id":1,"taken_at":"yesterday"}
{"device_id":"m-3","patient_id":1,"taken_at":"2026-11-23T08:00:00Z","colour":"red"}
{"device_id":"m-3","patient_id":1,"dose":1.234,"taken_at":"2026-11-23T08:00:00Z"}
[1,2]
"#;
        let values = values(body, false).unwrap();
        let checked = rows(&schema(), values, usize::MAX);
        let (batch, refused) = (checked.batch.unwrap(), checked.refused);
        assert_eq!(checked.refused_total, 7);
        assert_eq!(batch.num_rows(), 2);
        let reasons: Vec<(usize, &str)> =
            refused.iter().map(|r| (r.row, r.reason.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (1, "column 'patient_id': expected an integer, got a string"),
                (3, "column 'device_id': missing, and the column is NOT NULL"),
                (
                    4,
                    "column 'patient_id': 3000000000 is out of range for Int32"
                ),
                (
                    5,
                    "column 'taken_at': 'yesterday' is not a timestamp (RFC 3339, e.g. 2026-11-23T08:00:00Z)"
                ),
                (
                    6,
                    "unknown column 'colour' (the table has device_id, patient_id, value, dose, taken_at)"
                ),
                (7, "column 'dose': '1.234' has more than 2 decimal places"),
                (8, "expected a JSON object, got an array"),
            ]
        );
        assert_eq!(batch.schema(), schema());
    }

    #[test]
    fn bodies_that_are_not_json_or_inflate_too_far_are_refused() {
        assert!(matches!(values(b"{\"a\":", false), Err(BodyError::Json(_))));
        assert!(matches!(values(b"\n\n", false), Err(BodyError::Empty)));
        assert_eq!(values(b"[{\"a\":1},{\"a\":2}]", true).unwrap().len(), 2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &vec![b' '; 10_000]).unwrap();
        let gz = gz.finish().unwrap();
        assert!(matches!(
            gunzip(&gz, 1000),
            Err(BodyError::TooLarge { limit: 1000 })
        ));
        assert_eq!(gunzip(&gz, 10_000).unwrap().len(), 10_000);
        assert!(matches!(gunzip(b"not gzip", 100), Err(BodyError::Gzip(_))));
    }

    /// `cat a.gz b.gz` (and pigz) make several gzip members: every one is read, and bytes
    /// after the last that are not gzip are refused rather than dropped.
    #[test]
    fn every_member_of_a_concatenated_gzip_body_is_read() {
        let member = |text: &str| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
            gz.finish().unwrap()
        };
        let mut body = member("{\"a\":1}\n{\"a\":2}\n");
        body.extend(member("{\"a\":3}\n{\"a\":4}\n"));
        let text = gunzip(&body, 1000).unwrap();
        assert_eq!(values(&text, false).unwrap().len(), 4);
        body.extend(b"{\"a\":5}\n");
        assert!(matches!(gunzip(&body, 1000), Err(BodyError::Gzip(_))));
    }

    /// Found by the fuzz target `http_decode`: the last second a nanosecond timestamp can
    /// hold plus a fraction past i64::MAX overflowed (a panic in debug builds, a timestamp in
    /// 1677 in release). It is refused as out of range.
    #[test]
    fn nanosecond_timestamps_past_2262_are_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )]));
        let body = br#"{"t":"2262-04-11T23:47:16.854775807Z"}
{"t":"2262-04-11T23:47:16.9Z"}
{"t":"+262143-12-31T23:59:59.999999999Z"}"#;
        let Checked { batch, refused, .. } = rows(&schema, values(body, false).unwrap(), 100);
        assert_eq!(batch.map(|b| b.num_rows()), Some(1));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].reason.contains("out of range"), "{refused:?}");
    }

    #[test]
    fn refused_rows_are_all_counted_but_reasons_are_bounded() {
        // Many columns with long names: the old reason repeated all of them for every row.
        let fields: Vec<Field> = (0..200)
            .map(|i| {
                Field::new(
                    format!("a_rather_long_column_name_{i:03}"),
                    DataType::Int32,
                    true,
                )
            })
            .collect();
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(fields));
        let long = "x".repeat(10_000);
        let mut body = String::new();
        for _ in 0..5_000 {
            body.push_str(&format!("{{\"{long}\":1}}\n"));
        }
        let checked = rows(&schema, values(body.as_bytes(), false).unwrap(), 100);
        assert!(checked.batch.is_none());
        assert_eq!(checked.refused_total, 5_000);
        assert_eq!(checked.refused.len(), 100);
        for r in &checked.refused {
            assert!(r.reason.len() <= MAX_REASON_BYTES, "{}", r.reason);
            assert!(r.reason.starts_with("unknown column 'xxx"), "{}", r.reason);
        }
        // A value quoted in a reason is cut too.
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )]));
        let body = format!("{{\"t\":\"{}\"}}", "é".repeat(50_000));
        let checked = rows(&schema, values(body.as_bytes(), false).unwrap(), usize::MAX);
        assert_eq!(checked.refused.len(), 1);
        assert!(checked.refused[0].reason.len() <= MAX_REASON_BYTES);
        assert!(checked.refused[0].reason.ends_with('…'));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal("12.5", 6, 2), Ok(1250));
        assert_eq!(decimal("-0.01", 6, 2), Ok(-1));
        assert_eq!(decimal("7", 6, 2), Ok(700));
        assert!(decimal("12345.6", 6, 2).is_err());
        assert!(decimal("1e3", 6, 2).is_err());
    }
}
