//! JSON records to Arrow. Each record's values are checked and normalised here, with messages
//! that name the record's index in its page and the column, and then built into a batch by
//! arrow-json's decoder (`serialize` of the normalised rows). Also: schema inference from a
//! sample page, the timestamp formats the connector reads, and watermarks as text.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::kernels::cast_utils::parse_decimal;
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, Fields, Schema, SchemaRef, TimeUnit,
};
use datafusion::arrow::json::ReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a column's value is in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// A top-level member, matched exactly, else ignoring ASCII case (SQL folds unquoted
    /// column names to lower case; APIs often write `deviceId`).
    Key(String),
    /// A JSON pointer (RFC 6901) into the record, from a `field.<column>` option.
    Pointer(String),
}

impl Path {
    pub fn find<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        match self {
            Path::Key(key) => {
                let object = record.as_object()?;
                object.get(key).or_else(|| {
                    object
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v)
                })
            }
            Path::Pointer(pointer) => record.pointer(pointer),
        }
    }
}

/// One column: its name and type, and where its value is in a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    pub path: Path,
}

/// The type a declared column is read as (`VARCHAR` → Utf8, `TIMESTAMP` → microseconds),
/// or why it cannot be read from JSON.
pub fn read_type(declared: &DataType) -> Result<DataType, String> {
    use DataType as D;
    Ok(match declared {
        D::Boolean
        | D::Int8
        | D::Int16
        | D::Int32
        | D::Int64
        | D::UInt8
        | D::UInt16
        | D::UInt32
        | D::UInt64
        | D::Float32
        | D::Float64
        | D::Date32
        | D::Utf8 => declared.clone(),
        D::Utf8View | D::LargeUtf8 => D::Utf8,
        D::Decimal128(_, scale) if *scale >= 0 => declared.clone(),
        D::Timestamp(_, tz) => D::Timestamp(TimeUnit::Microsecond, tz.clone()),
        D::Struct(fields) => D::Struct(
            fields
                .iter()
                .map(|f| {
                    Ok(Arc::new(Field::new(
                        f.name(),
                        read_type(f.data_type())?,
                        f.is_nullable(),
                    )))
                })
                .collect::<Result<Fields, String>>()?,
        ),
        D::List(f) | D::LargeList(f) | D::ListView(f) | D::LargeListView(f) => D::List(Arc::new(
            Field::new(f.name(), read_type(f.data_type())?, f.is_nullable()),
        )),
        other => {
            return Err(format!(
                "{other} is not read from JSON; declare it as VARCHAR (the JSON text), BOOLEAN, \
                 an integer, DOUBLE, DECIMAL, DATE, TIMESTAMP, a STRUCT or an array"
            ));
        }
    })
}

/// A timestamp as the connector reads it: RFC 3339 (`2024-05-01T10:00:00Z`,
/// `...+02:00`), `YYYY-MM-DD HH:MM:SS[.f]` or `YYYY-MM-DDTHH:MM:SS[.f]` (no offset: taken as
/// UTC), with an offset after a space too, or a bare date (midnight). Returns the instant and
/// whether the text carried an offset.
pub fn parse_timestamp(text: &str) -> Option<(DateTime<Utc>, bool)> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some((t.to_utc(), true));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some((t.to_utc(), true));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Some((t.and_utc(), false));
        }
    }
    if let Some(t) = s
        .strip_suffix(['Z', 'z'])
        .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok())
    {
        return Some((t.and_utc(), true));
    }
    parse_date(s).map(|d| (d.and_time(chrono::NaiveTime::MIN).and_utc(), false))
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    (s.len() == 10)
        .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// A JSON value, shortened for a message.
pub fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i128)
            }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn integer_range(data_type: &DataType) -> (i128, i128) {
    use DataType as D;
    match data_type {
        D::Int8 => (i8::MIN.into(), i8::MAX.into()),
        D::Int16 => (i16::MIN.into(), i16::MAX.into()),
        D::Int32 => (i32::MIN.into(), i32::MAX.into()),
        D::UInt8 => (0, u8::MAX.into()),
        D::UInt16 => (0, u16::MAX.into()),
        D::UInt32 => (0, u32::MAX.into()),
        D::UInt64 => (0, u64::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    }
}

/// Checks a value against a column type and returns it as arrow-json reads that type
/// (timestamps and dates become numbers, nested values under text columns become JSON text).
pub fn normalize(value: &Value, data_type: &DataType) -> Result<Value, String> {
    use DataType as D;
    if value.is_null() {
        return Ok(Value::Null);
    }
    let expected = |what: &str| format!("expected {what}, found {}", describe(value));
    Ok(match data_type {
        D::Utf8 => match value {
            Value::String(_) => value.clone(),
            other => Value::String(other.to_string()),
        },
        D::Boolean => match value {
            Value::Bool(_) => value.clone(),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => return Err(expected("true or false")),
        },
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            let v = integer(value).ok_or_else(|| expected("an integer"))?;
            let (lo, hi) = integer_range(data_type);
            if v < lo || v > hi {
                return Err(format!(
                    "{} is out of range for {data_type}",
                    describe(value)
                ));
            }
            if v < 0 {
                Value::from(v as i64)
            } else {
                Value::from(v as u64)
            }
        }
        D::Float32 | D::Float64 => {
            let v = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|f| f.is_finite())
            .ok_or_else(|| expected("a number"))?;
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| expected("a finite number"))?
        }
        D::Decimal128(precision, scale) => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_string(),
                _ => return Err(expected("a decimal number")),
            };
            parse_decimal::<Decimal128Type>(&text, *precision, *scale)
                .map_err(|_| expected(&format!("a decimal that fits {data_type}")))?;
            Value::String(text)
        }
        D::Date32 => {
            let date = value
                .as_str()
                .and_then(|s| parse_date(s.trim()))
                .ok_or_else(|| expected("a date (YYYY-MM-DD)"))?;
            Value::from((date - EPOCH).num_days())
        }
        D::Timestamp(_, _) => {
            let (t, _) = value
                .as_str()
                .and_then(parse_timestamp)
                .ok_or_else(|| expected("a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS[.f])"))?;
            Value::from(t.timestamp_micros())
        }
        D::Struct(fields) => {
            if !value.is_object() {
                return Err(expected("an object"));
            }
            let mut out = Map::new();
            for field in fields {
                let found = Path::Key(field.name().clone())
                    .find(value)
                    .filter(|v| !v.is_null());
                match found {
                    None if !field.is_nullable() => {
                        return Err(format!(
                            "member '{}' is missing or null but declared NOT NULL",
                            field.name()
                        ));
                    }
                    None => {}
                    Some(v) => {
                        let v = normalize(v, field.data_type())
                            .map_err(|m| format!("member '{}': {m}", field.name()))?;
                        out.insert(field.name().clone(), v);
                    }
                }
            }
            Value::Object(out)
        }
        D::List(field) => {
            let Value::Array(items) = value else {
                return Err(expected("an array"));
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if item.is_null() && !field.is_nullable() {
                    return Err(format!("element {i} is null but declared NOT NULL"));
                }
                out.push(
                    normalize(item, field.data_type()).map_err(|m| format!("element {i}: {m}"))?,
                );
            }
            Value::Array(out)
        }
        other => return Err(format!("{other} columns are not read from JSON")),
    })
}

/// Turns the records of a page into a batch of the table's columns.
#[derive(Debug)]
pub struct Converter {
    schema: SchemaRef,
    columns: Vec<Column>,
    /// A JSON pointer from each element of the records array to the record.
    record_pointer: String,
}

impl Converter {
    pub fn new(columns: Vec<Column>, record_pointer: String) -> Self {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        ));
        Self {
            schema,
            columns,
            record_pointer,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The record an element of the records array holds.
    pub fn record<'a>(&self, element: &'a Value, index: usize) -> Result<&'a Value, String> {
        let record = if self.record_pointer.is_empty() {
            element
        } else {
            element.pointer(&self.record_pointer).ok_or_else(|| {
                format!(
                    "record index {index} has nothing at record_pointer '{}': {}",
                    self.record_pointer,
                    describe(element)
                )
            })?
        };
        if !record.is_object() {
            return Err(format!(
                "record index {index} is not a JSON object: {}",
                describe(record)
            ));
        }
        Ok(record)
    }

    /// The batch of `records`; a value that does not fit its column fails the whole page
    /// with a message naming the record's index in the page and the column.
    pub fn convert(&self, records: &[Value]) -> Result<RecordBatch, String> {
        let mut rows: Vec<Map<String, Value>> = Vec::with_capacity(records.len());
        for (index, element) in records.iter().enumerate() {
            rows.push(self.row(element, index)?);
        }
        match self.decode(&rows) {
            Ok(batch) => Ok(batch),
            // Not expected after `normalize`; find the record arrow-json refuses.
            Err(e) => {
                for (index, row) in rows.iter().enumerate() {
                    if let Err(e) = self.decode(std::slice::from_ref(row)) {
                        return Err(format!("record index {index}: {e}"));
                    }
                }
                Err(e)
            }
        }
    }

    fn row(&self, element: &Value, index: usize) -> Result<Map<String, Value>, String> {
        let record = self.record(element, index)?;
        let mut row = Map::new();
        for column in &self.columns {
            match column.path.find(record).filter(|v| !v.is_null()) {
                None if !column.nullable => {
                    return Err(format!(
                        "record index {index}: column '{}' is missing or null, but it is declared NOT NULL",
                        column.name
                    ));
                }
                None => {}
                Some(value) => {
                    let value = normalize(value, &column.data_type).map_err(|m| {
                        format!("record index {index}, column '{}': {m}", column.name)
                    })?;
                    row.insert(column.name.clone(), value);
                }
            }
        }
        Ok(row)
    }

    fn decode(&self, rows: &[Map<String, Value>]) -> Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .build_decoder()
            .map_err(|e| e.to_string())?;
        decoder.serialize(rows).map_err(|e| e.to_string())?;
        Ok(decoder
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }
}

/// What a sample shows of a column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Date,
    Timestamp { offset: bool },
    Text,
}

pub fn kind_of(value: &Value) -> Kind {
    match value {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_i64() => Kind::Int,
        // Beyond i64: kept exactly, as text.
        Value::Number(n) if n.is_u64() => Kind::Text,
        Value::Number(_) => Kind::Float,
        Value::String(s) => {
            if parse_date(s).is_some() {
                Kind::Date
            } else {
                match parse_timestamp(s) {
                    Some((_, offset)) => Kind::Timestamp { offset },
                    None => Kind::Text,
                }
            }
        }
        Value::Object(_) | Value::Array(_) => Kind::Text,
    }
}

pub fn merge(a: Kind, b: Kind) -> Kind {
    use Kind as K;
    match (a, b) {
        (K::Null, x) | (x, K::Null) => x,
        (a, b) if a == b => a,
        (K::Int, K::Float) | (K::Float, K::Int) => K::Float,
        (K::Date, K::Timestamp { offset }) | (K::Timestamp { offset }, K::Date) => {
            K::Timestamp { offset }
        }
        (K::Timestamp { offset: a }, K::Timestamp { offset: b }) => K::Timestamp { offset: a || b },
        _ => K::Text,
    }
}

pub fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Bool => DataType::Boolean,
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Date => DataType::Date32,
        Kind::Timestamp { offset: true } => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        Kind::Timestamp { offset: false } => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::Null | Kind::Text => DataType::Utf8,
    }
}

/// The shape of the values a sample shows at one place in the records: the one lattice of
/// JSON schema inference. Scalars merge by [`merge`] (ints and floats to float, dates and
/// timestamps to timestamp, anything else to text); objects merge member by member, arrays
/// by their items; values of several shapes are `Mixed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    Null,
    Scalar(Kind),
    Object(Vec<(String, Shape)>),
    Array(Box<Shape>),
    /// Values of several shapes: kept as JSON text.
    Mixed,
}

pub fn shape_of(value: &Value) -> Shape {
    match value {
        Value::Null => Shape::Null,
        Value::Object(map) => {
            Shape::Object(map.iter().map(|(k, v)| (k.clone(), shape_of(v))).collect())
        }
        Value::Array(items) => Shape::Array(Box::new(
            items.iter().map(shape_of).fold(Shape::Null, merge_shapes),
        )),
        scalar => Shape::Scalar(kind_of(scalar)),
    }
}

pub fn merge_shapes(a: Shape, b: Shape) -> Shape {
    match (a, b) {
        (Shape::Null, x) | (x, Shape::Null) => x,
        (Shape::Scalar(a), Shape::Scalar(b)) => match merge(a, b) {
            // Text is what two different scalar kinds merge to; a real text column stays text.
            Kind::Text if a != Kind::Text || b != Kind::Text => Shape::Mixed,
            k => Shape::Scalar(k),
        },
        (Shape::Object(mut a), Shape::Object(b)) => {
            for (key, shape) in b {
                match a.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, s)) => *s = merge_shapes(std::mem::replace(s, Shape::Null), shape),
                    None => a.push((key, shape)),
                }
            }
            Shape::Object(a)
        }
        (Shape::Array(a), Shape::Array(b)) => Shape::Array(Box::new(merge_shapes(*a, *b))),
        _ => Shape::Mixed,
    }
}

/// The Arrow type of a shape, and whether values are kept as JSON text.
pub fn type_of(shape: &Shape) -> (DataType, bool) {
    match shape {
        Shape::Null | Shape::Mixed => (DataType::Utf8, true),
        Shape::Scalar(kind) => (data_type(*kind), false),
        Shape::Object(fields) if fields.is_empty() => (DataType::Utf8, true),
        Shape::Object(fields) => (
            DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|(k, s)| Field::new(k, type_of(s).0, true))
                    .collect::<Vec<_>>(),
            )),
            false,
        ),
        Shape::Array(item) => (
            DataType::List(Arc::new(Field::new("item", type_of(item).0, true))),
            false,
        ),
    }
}

/// The Arrow type of a shape for a connector that reads nested values as JSON text (objects,
/// arrays and mixed values are text columns).
pub fn flat_type(shape: &Shape) -> DataType {
    match shape {
        Shape::Scalar(kind) => data_type(*kind),
        Shape::Null | Shape::Mixed | Shape::Object(_) | Shape::Array(_) => DataType::Utf8,
    }
}

/// The columns of a sample page: every top-level member (names in lower case unless
/// `exact_names`) in name order for the first record, then the members first seen in later
/// records (serde_json keeps members sorted), then the `field.<column>` pointers. Every inferred column is nullable: a sample cannot show that a member is always
/// present.
pub fn infer(
    records: &[Value],
    record_pointer: &str,
    exact_names: bool,
    fields: &[(String, String)],
) -> Result<Vec<Column>, String> {
    let probe = Converter::new(Vec::new(), record_pointer.to_string());
    let sample: Vec<&Value> = records
        .iter()
        .enumerate()
        .map(|(i, e)| probe.record(e, i))
        .collect::<Result<_, _>>()?;
    let mut columns: Vec<Column> = Vec::new();
    for record in &sample {
        let Some(object) = record.as_object() else {
            continue;
        };
        for key in object.keys() {
            let name = if exact_names {
                key.clone()
            } else {
                key.to_lowercase()
            };
            if fields.iter().any(|(f, _)| *f == name) {
                continue;
            }
            match columns.iter().find(|c| c.name == name) {
                Some(Column {
                    path: Path::Key(k), ..
                }) if k != key => {
                    return Err(format!(
                        "members '{k}' and '{key}' are both '{name}' in lower case; use 'names' 'exact'"
                    ));
                }
                Some(_) => {}
                None => columns.push(Column {
                    name,
                    data_type: DataType::Utf8,
                    nullable: true,
                    path: Path::Key(key.clone()),
                }),
            }
        }
    }
    for (name, pointer) in fields {
        columns.push(Column {
            name: name.clone(),
            data_type: DataType::Utf8,
            nullable: true,
            path: Path::Pointer(pointer.clone()),
        });
    }
    for column in &mut columns {
        let shape = sample
            .iter()
            .filter_map(|r| column.path.find(r))
            .map(shape_of)
            .fold(Shape::Null, merge_shapes);
        column.data_type = flat_type(&shape);
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        AsArray, Int32Array, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use serde_json::json;

    #[test]
    fn timestamps_parse_in_every_documented_form() {
        let utc = |s: &str| parse_timestamp(s).map(|(t, o)| (t.to_rfc3339(), o));
        let at = "2024-05-01T08:00:00+00:00".to_string();
        assert_eq!(utc("2024-05-01T08:00:00Z"), Some((at.clone(), true)));
        assert_eq!(utc("2024-05-01T10:00:00+02:00"), Some((at.clone(), true)));
        assert_eq!(utc("2024-05-01 10:00:00+02:00"), Some((at.clone(), true)));
        assert_eq!(utc("2024-05-01 08:00:00Z"), Some((at.clone(), true)));
        assert_eq!(utc("2024-05-01 08:00:00"), Some((at.clone(), false)));
        assert_eq!(utc("2024-05-01T08:00:00"), Some((at, false)));
        assert_eq!(
            utc("2024-05-01 08:00:00.25"),
            Some(("2024-05-01T08:00:00.250+00:00".into(), false))
        );
        assert_eq!(
            utc("2024-05-01"),
            Some(("2024-05-01T00:00:00+00:00".into(), false))
        );
        assert_eq!(utc("May 1st"), None);
        assert_eq!(utc("2024-13-01 00:00:00"), None);
    }

    #[test]
    fn inference_merges_the_kinds_seen_per_member() {
        let records = vec![
            json!({"deviceId": "a", "hr": 60, "at": "2024-05-01T10:00:00Z", "vitals": {"spo2": 97}, "day": "2024-05-01", "gone": null}),
            json!({"deviceId": "b", "hr": 61.5, "at": "2024-05-01 10:00:00", "flag": true, "day": "2024-05-02 10:00:00"}),
        ];
        let columns = infer(
            &records,
            "",
            false,
            &[("spo2".into(), "/vitals/spo2".into())],
        )
        .unwrap();
        let described: Vec<(String, String)> = columns
            .iter()
            .map(|c| (c.name.clone(), c.data_type.to_string()))
            .collect();
        // serde_json keeps object members sorted (no `preserve_order`): a record's members
        // come in name order, then those first seen in later records.
        let expected = [
            ("at", "Timestamp(µs, \"UTC\")"),
            ("day", "Timestamp(µs)"),
            ("deviceid", "Utf8"),
            ("gone", "Utf8"),
            ("hr", "Float64"),
            ("vitals", "Utf8"),
            ("flag", "Boolean"),
            ("spo2", "Int64"),
        ];
        assert_eq!(
            described,
            expected
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(columns.iter().all(|c| c.nullable));
        let clash = vec![json!({"Id": 1, "id": 2})];
        assert!(
            infer(&clash, "", false, &[])
                .unwrap_err()
                .contains("'names' 'exact'")
        );
        assert_eq!(infer(&clash, "", true, &[]).unwrap().len(), 2);
    }

    #[test]
    fn records_convert_and_errors_name_the_record_and_column() {
        let columns = vec![
            Column {
                name: "device_id".into(),
                data_type: DataType::Utf8,
                nullable: false,
                path: Path::Key("deviceId".into()),
            },
            Column {
                name: "hr".into(),
                data_type: DataType::Int32,
                nullable: true,
                path: Path::Key("hr".into()),
            },
            Column {
                name: "taken_at".into(),
                data_type: DataType::Timestamp(TimeUnit::Microsecond, None),
                nullable: true,
                path: Path::Key("taken_at".into()),
            },
            Column {
                name: "vitals".into(),
                data_type: DataType::Struct(Fields::from(vec![Field::new(
                    "spo2",
                    DataType::Int32,
                    true,
                )])),
                nullable: true,
                path: Path::Key("vitals".into()),
            },
            Column {
                name: "raw".into(),
                data_type: DataType::Utf8,
                nullable: true,
                path: Path::Key("vitals".into()),
            },
        ];
        let converter = Converter::new(columns, "/resource".into());
        let page = vec![
            json!({"resource": {"deviceId": "a", "hr": "72", "taken_at": "2024-05-01T10:00:00+02:00", "vitals": {"SpO2": 97}}}),
            json!({"resource": {"deviceid": "b", "hr": 70.0, "taken_at": "2024-05-01 08:00:00.5"}}),
        ];
        let batch = converter.convert(&page).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!((ids.value(0), ids.value(1)), ("a", "b"));
        let hr = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!((hr.value(0), hr.value(1)), (72, 70));
        let at = batch
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(at.value(1) - at.value(0), 500_000);
        let vitals: &StructArray = batch.column(3).as_struct();
        assert_eq!(
            vitals
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                .value(0),
            97
        );
        assert!(batch.column(3).is_null(1));
        let raw = batch
            .column(4)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(raw.value(0), r#"{"SpO2":97}"#);

        let bad = |record: Value| {
            converter
                .convert(&[page[0].clone(), json!({ "resource": record })])
                .unwrap_err()
        };
        assert_eq!(
            bad(json!({"deviceId": "c", "hr": "fast"})),
            "record index 1, column 'hr': expected an integer, found \"fast\""
        );
        assert_eq!(
            bad(json!({"hr": 1})),
            "record index 1: column 'device_id' is missing or null, but it is declared NOT NULL"
        );
        assert!(bad(json!({"deviceId": "c", "hr": 72.5})).contains("expected an integer"));
        assert!(bad(json!({"deviceId": "c", "hr": 3_000_000_000u64})).contains("out of range"));
        assert!(
            bad(json!({"deviceId": "c", "taken_at": 1714557600})).contains("expected a timestamp")
        );
        assert!(bad(json!({"deviceId": "c", "vitals": {"spo2": "x"}})).contains("member 'spo2'"));
        assert!(
            converter
                .convert(&[json!({"other": 1})])
                .unwrap_err()
                .contains("nothing at record_pointer '/resource'")
        );
    }
}
