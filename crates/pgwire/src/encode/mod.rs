//! Arrow batches as Postgres `DataRow` messages and `COPY` lines, in text and binary.
//!
//! Each column is resolved once per batch to a typed accessor; the rows of a batch are then
//! written into one buffer (length-prefixed values, no allocation per value) and split into
//! messages without copying. The text of every value is PostgreSQL 15's own (see
//! [`text`]); the binary formats are PostgreSQL's `*send` formats. Types without an
//! encoder here (structs, maps, unions, nested arrays) leave the batch to `arrow-pg`.

mod binary;
pub(crate) mod text;

use std::collections::BTreeMap;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanArray, Date32Array,
    Decimal128Array, FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, IntervalMonthDayNanoArray, LargeBinaryArray, LargeStringArray, RecordBatch,
    StringArray, StringViewArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use bytes::{BufMut, BytesMut};
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;

pub(crate) use text::Zone;

/// How values are written: the session settings PostgreSQL's output depends on.
#[derive(Clone, Debug)]
pub(crate) struct Style {
    /// `TimeZone`, for `timestamptz`.
    pub zone: Zone,
    /// `extra_float_digits`: above 0, floats print as their shortest exact text.
    pub extra_float_digits: i8,
}

impl Default for Style {
    fn default() -> Self {
        Style {
            zone: Zone::Utc,
            extra_float_digits: 1,
        }
    }
}

impl Style {
    /// The style of a session's settings (names in lower case); unknown zones stay UTC,
    /// as `SET TimeZone` checks them when they are set.
    pub(crate) fn from_settings(values: &BTreeMap<String, String>) -> Style {
        let zone = values
            .get("timezone")
            .map(|name| name.trim())
            .filter(|name| {
                !matches!(
                    name.to_ascii_uppercase().as_str(),
                    "UTC" | "ETC/UTC" | "GMT" | "Z"
                )
            })
            .and_then(|name| name.parse().ok())
            .map_or(Zone::Utc, Zone::Named);
        let extra_float_digits = values
            .get("extra_float_digits")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1);
        Style {
            zone,
            extra_float_digits,
        }
    }
}

/// Microsecond-based values and what they are.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Clock {
    Timestamp,
    TimestampTz,
    Time,
    Duration,
}

/// One column of a batch, resolved to its values.
enum Column {
    Null,
    Bool(BooleanArray),
    I16(Int16Array),
    I32(Int32Array),
    I64(Int64Array),
    F32(Float32Array),
    F64(Float64Array),
    Decimal(Decimal128Array, i8),
    Utf8(StringArray),
    LargeUtf8(LargeStringArray),
    Utf8View(StringViewArray),
    Binary(BinaryArray),
    LargeBinary(LargeBinaryArray),
    BinaryView(BinaryViewArray),
    FixedBinary(FixedSizeBinaryArray),
    Date(Date32Array),
    /// Values in `unit`, converted to microseconds as they are written.
    Clock {
        values: ScalarBuffer<i64>,
        nulls: Option<NullBuffer>,
        unit: TimeUnit,
        clock: Clock,
    },
    Interval(IntervalMonthDayNanoArray),
    List {
        offsets: OffsetBuffer<i64>,
        nulls: Option<NullBuffer>,
        elements: Box<Column>,
    },
}

/// `value` in `unit` as microseconds (nanoseconds rounded half up).
fn to_micros(value: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => value.saturating_mul(1_000_000),
        TimeUnit::Millisecond => value.saturating_mul(1_000),
        TimeUnit::Microsecond => value,
        TimeUnit::Nanosecond => value.saturating_add(500).div_euclid(1_000),
    }
}

/// `array` cast to `to` (for the types sent as a wider or canonical one).
fn cast(array: &ArrayRef, to: &DataType) -> Option<Column> {
    let cast = arrow::compute::cast(array, to).ok()?;
    Column::new(&cast)
}

impl Column {
    /// The accessor of `array`, or `None` for a type this module does not encode.
    fn new(array: &ArrayRef) -> Option<Column> {
        Some(match array.data_type() {
            DataType::Null => Column::Null,
            DataType::Boolean => Column::Bool(array.as_boolean().clone()),
            DataType::Int16 => Column::I16(array.as_primitive().clone()),
            DataType::Int32 => Column::I32(array.as_primitive().clone()),
            DataType::Int64 => Column::I64(array.as_primitive().clone()),
            DataType::Int8 | DataType::UInt8 => return cast(array, &DataType::Int16),
            DataType::UInt16 => return cast(array, &DataType::Int32),
            DataType::UInt32 => return cast(array, &DataType::Int64),
            DataType::UInt64 => return cast(array, &DataType::Decimal128(20, 0)),
            DataType::Float16 => return cast(array, &DataType::Float32),
            DataType::Float32 => Column::F32(array.as_primitive().clone()),
            DataType::Float64 => Column::F64(array.as_primitive().clone()),
            DataType::Decimal128(_, scale) => Column::Decimal(array.as_primitive().clone(), *scale),
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => {
                return cast(array, &DataType::Decimal128(*p, *s));
            }
            DataType::Utf8 => Column::Utf8(array.as_string().clone()),
            DataType::LargeUtf8 => Column::LargeUtf8(array.as_string().clone()),
            DataType::Utf8View => Column::Utf8View(array.as_string_view().clone()),
            DataType::Binary => Column::Binary(array.as_binary().clone()),
            DataType::LargeBinary => Column::LargeBinary(array.as_binary().clone()),
            DataType::BinaryView => Column::BinaryView(array.as_binary_view().clone()),
            DataType::FixedSizeBinary(_) => {
                Column::FixedBinary(array.as_fixed_size_binary().clone())
            }
            DataType::Date32 => Column::Date(array.as_primitive().clone()),
            DataType::Date64 => return cast(array, &DataType::Date32),
            DataType::Timestamp(unit, zone) => clock(
                array,
                *unit,
                if zone.is_some() {
                    Clock::TimestampTz
                } else {
                    Clock::Timestamp
                },
            ),
            DataType::Time64(unit) => clock(array, *unit, Clock::Time),
            DataType::Time32(_) => return cast(array, &DataType::Time64(TimeUnit::Microsecond)),
            DataType::Duration(unit) => clock(array, *unit, Clock::Duration),
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                Column::Interval(array.as_primitive().clone())
            }
            DataType::Interval(_) => {
                return cast(array, &DataType::Interval(IntervalUnit::MonthDayNano));
            }
            DataType::Dictionary(_, values) => return cast(array, values),
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
                let large = arrow::compute::cast(array, &large_list(array.data_type())?).ok()?;
                let list = large.as_list::<i64>();
                let elements = Column::new(list.values())?;
                if matches!(elements, Column::List { .. }) {
                    return None;
                }
                Column::List {
                    offsets: list.offsets().clone(),
                    nulls: list.nulls().cloned(),
                    elements: Box::new(elements),
                }
            }
            _ => return None,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Null => true,
            Column::Bool(a) => a.is_null(row),
            Column::I16(a) => a.is_null(row),
            Column::I32(a) => a.is_null(row),
            Column::I64(a) => a.is_null(row),
            Column::F32(a) => a.is_null(row),
            Column::F64(a) => a.is_null(row),
            Column::Decimal(a, _) => a.is_null(row),
            Column::Utf8(a) => a.is_null(row),
            Column::LargeUtf8(a) => a.is_null(row),
            Column::Utf8View(a) => a.is_null(row),
            Column::Binary(a) => a.is_null(row),
            Column::LargeBinary(a) => a.is_null(row),
            Column::BinaryView(a) => a.is_null(row),
            Column::FixedBinary(a) => a.is_null(row),
            Column::Date(a) => a.is_null(row),
            Column::Interval(a) => a.is_null(row),
            Column::Clock { nulls, .. } | Column::List { nulls, .. } => {
                nulls.as_ref().is_some_and(|n| n.is_null(row))
            }
        }
    }

    /// The value of a non-null row as PostgreSQL's text.
    fn text(&self, row: usize, style: &Style, out: &mut BytesMut) {
        match self {
            Column::Null => {}
            Column::Bool(a) => out.put_u8(if a.value(row) { b't' } else { b'f' }),
            Column::I16(a) => text::integer(out, a.value(row)),
            Column::I32(a) => text::integer(out, a.value(row)),
            Column::I64(a) => text::integer(out, a.value(row)),
            Column::F32(a) => text::float(out, a.value(row).into(), true, style.extra_float_digits),
            Column::F64(a) => text::float(out, a.value(row), false, style.extra_float_digits),
            Column::Decimal(a, scale) => text::numeric(out, a.value(row), *scale),
            Column::Utf8(a) => out.put_slice(a.value(row).as_bytes()),
            Column::LargeUtf8(a) => out.put_slice(a.value(row).as_bytes()),
            Column::Utf8View(a) => out.put_slice(a.value(row).as_bytes()),
            Column::Binary(a) => text::bytea(out, a.value(row)),
            Column::LargeBinary(a) => text::bytea(out, a.value(row)),
            Column::BinaryView(a) => text::bytea(out, a.value(row)),
            Column::FixedBinary(a) => text::bytea(out, a.value(row)),
            Column::Date(a) => text::date(out, i64::from(a.value(row))),
            Column::Clock {
                values,
                unit,
                clock,
                ..
            } => {
                let micros = to_micros(values[row], *unit);
                match clock {
                    Clock::Timestamp => text::timestamp(out, micros, None),
                    Clock::TimestampTz => text::timestamp(out, micros, Some(&style.zone)),
                    Clock::Time => text::time(out, micros),
                    Clock::Duration => text::interval(out, 0, 0, micros),
                }
            }
            Column::Interval(a) => {
                let v = a.value(row);
                let micros = to_micros(v.nanoseconds, TimeUnit::Nanosecond);
                text::interval(out, i64::from(v.months), i64::from(v.days), micros);
            }
            Column::List {
                offsets, elements, ..
            } => {
                out.put_u8(b'{');
                for (i, element) in range(offsets, row).enumerate() {
                    if i > 0 {
                        out.put_u8(b',');
                    }
                    if elements.is_null(element) {
                        out.put_slice(b"NULL");
                    } else {
                        let start = out.len();
                        elements.text(element, style, out);
                        text::quote_element(out, start);
                    }
                }
                out.put_u8(b'}');
            }
        }
    }

    /// The value of a non-null row in PostgreSQL's binary format.
    fn binary(&self, row: usize, out: &mut BytesMut) {
        match self {
            Column::Null => {}
            Column::Bool(a) => out.put_u8(u8::from(a.value(row))),
            Column::I16(a) => out.put_i16(a.value(row)),
            Column::I32(a) => out.put_i32(a.value(row)),
            Column::I64(a) => out.put_i64(a.value(row)),
            Column::F32(a) => out.put_f32(a.value(row)),
            Column::F64(a) => out.put_f64(a.value(row)),
            Column::Decimal(a, scale) => binary::numeric(out, a.value(row), *scale),
            Column::Utf8(a) => out.put_slice(a.value(row).as_bytes()),
            Column::LargeUtf8(a) => out.put_slice(a.value(row).as_bytes()),
            Column::Utf8View(a) => out.put_slice(a.value(row).as_bytes()),
            Column::Binary(a) => out.put_slice(a.value(row)),
            Column::LargeBinary(a) => out.put_slice(a.value(row)),
            Column::BinaryView(a) => out.put_slice(a.value(row)),
            Column::FixedBinary(a) => out.put_slice(a.value(row)),
            Column::Date(a) => out.put_i32(a.value(row).saturating_sub(binary::EPOCH_DAYS)),
            Column::Clock {
                values,
                unit,
                clock,
                ..
            } => {
                let micros = to_micros(values[row], *unit);
                match clock {
                    Clock::Timestamp | Clock::TimestampTz => {
                        out.put_i64(micros.saturating_sub(binary::EPOCH_MICROS));
                    }
                    Clock::Time => out.put_i64(micros),
                    Clock::Duration => binary::interval(out, 0, 0, micros),
                }
            }
            Column::Interval(a) => {
                let v = a.value(row);
                let micros = to_micros(v.nanoseconds, TimeUnit::Nanosecond);
                binary::interval(out, v.months, v.days, micros);
            }
            Column::List {
                offsets, elements, ..
            } => {
                let range = range(offsets, row);
                let has_null = range.clone().any(|e| elements.is_null(e));
                binary::array_header(out, range.len(), has_null, elements.oid());
                for element in range {
                    put_value(out, elements, element, |out| elements.binary(element, out));
                }
            }
        }
    }

    /// The type OID of this column's values (for binary arrays).
    fn oid(&self) -> u32 {
        match self {
            Column::Null | Column::Utf8(_) | Column::LargeUtf8(_) | Column::Utf8View(_) => 25,
            Column::Bool(_) => 16,
            Column::I16(_) => 21,
            Column::I32(_) => 23,
            Column::I64(_) => 20,
            Column::F32(_) => 700,
            Column::F64(_) => 701,
            Column::Decimal(..) => 1700,
            Column::Binary(_)
            | Column::LargeBinary(_)
            | Column::BinaryView(_)
            | Column::FixedBinary(_) => 17,
            Column::Date(_) => 1082,
            Column::Clock { clock, .. } => match clock {
                Clock::Timestamp => 1114,
                Clock::TimestampTz => 1184,
                Clock::Time => 1083,
                Clock::Duration => 1186,
            },
            Column::Interval(_) => 1186,
            Column::List { .. } => 0,
        }
    }
}

fn clock(array: &ArrayRef, unit: TimeUnit, clock: Clock) -> Column {
    let data = array.to_data();
    let values = ScalarBuffer::<i64>::new(data.buffers()[0].clone(), data.offset(), data.len());
    Column::Clock {
        values,
        nulls: array.logical_nulls(),
        unit,
        clock,
    }
}

/// The `LargeList` type a list type is read as.
fn large_list(t: &DataType) -> Option<DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(DataType::LargeList(f.clone()))
        }
        _ => None,
    }
}

/// The element indexes of list row `row`.
fn range(offsets: &OffsetBuffer<i64>, row: usize) -> std::ops::Range<usize> {
    let start = usize::try_from(offsets[row]).unwrap_or(0);
    let end = usize::try_from(offsets[row + 1]).unwrap_or(start);
    start..end.max(start)
}

/// A length-prefixed value (`-1` for NULL), written by `write`.
fn put_value(out: &mut BytesMut, column: &Column, row: usize, write: impl FnOnce(&mut BytesMut)) {
    if column.is_null(row) {
        out.put_i32(-1);
        return;
    }
    let at = out.len();
    out.put_i32(0);
    write(out);
    let len = i32::try_from(out.len() - at - 4).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A batch's columns, ready to write rows.
pub(crate) struct Encoder {
    columns: Vec<(Column, bool)>,
    rows: usize,
}

impl Encoder {
    /// The encoder of `batch` for `fields` (their formats), or `None` when a column has a
    /// type without an encoder here.
    pub(crate) fn new(fields: &[FieldInfo], batch: &RecordBatch) -> Option<Encoder> {
        let columns = batch
            .columns()
            .iter()
            .enumerate()
            .map(|(i, array)| {
                let binary = fields
                    .get(i)
                    .is_some_and(|f| f.format() == FieldFormat::Binary);
                Column::new(array).map(|c| (c, binary))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Encoder {
            columns,
            rows: batch.num_rows(),
        })
    }

    /// Every row as a `DataRow`, written into one buffer.
    pub(crate) fn data_rows(&self, style: &Style) -> Vec<DataRow> {
        let mut out = BytesMut::with_capacity(self.rows * (8 * self.columns.len() + 16));
        let mut ends = Vec::with_capacity(self.rows);
        for row in 0..self.rows {
            for (column, binary) in &self.columns {
                put_value(&mut out, column, row, |out| {
                    if *binary {
                        column.binary(row, out);
                    } else {
                        column.text(row, style, out);
                    }
                });
            }
            ends.push(out.len());
        }
        let field_count = i16::try_from(self.columns.len()).unwrap_or(i16::MAX);
        let mut taken = 0;
        ends.into_iter()
            .map(|end| {
                let data = out.split_to(end - taken);
                taken = end;
                DataRow::new(data, field_count)
            })
            .collect()
    }

    /// Every row as a line of `COPY ... TO STDOUT` (text format, or CSV with `csv`).
    pub(crate) fn copy_lines(&self, style: &Style, copy: &CopyFormat<'_>, out: &mut BytesMut) {
        let mut value = BytesMut::with_capacity(64);
        for row in 0..self.rows {
            for (i, (column, _)) in self.columns.iter().enumerate() {
                if i > 0 {
                    out.put_slice(copy.delimiter);
                }
                if column.is_null(row) {
                    out.put_slice(copy.null);
                    continue;
                }
                value.clear();
                column.text(row, style, &mut value);
                copy.field(&value, out);
            }
            out.put_u8(b'\n');
        }
    }
}

/// The options of a `COPY ... TO STDOUT` that shape its lines.
pub(crate) struct CopyFormat<'a> {
    pub csv: bool,
    pub delimiter: &'a [u8],
    pub null: &'a [u8],
}

impl CopyFormat<'_> {
    /// One field's text, quoted (CSV) or escaped (text format).
    pub(crate) fn field(&self, value: &[u8], out: &mut BytesMut) {
        if self.csv {
            let needs_quotes = value.is_empty()
                || value == self.null
                || value
                    .iter()
                    .any(|b| *b == b'"' || *b == b'\n' || *b == b'\r')
                || value
                    .windows(self.delimiter.len())
                    .any(|w| w == self.delimiter);
            if !needs_quotes {
                return out.put_slice(value);
            }
            out.put_u8(b'"');
            for b in value {
                if *b == b'"' {
                    out.put_u8(b'"');
                }
                out.put_u8(*b);
            }
            return out.put_u8(b'"');
        }
        let single = (self.delimiter.len() == 1).then(|| self.delimiter[0]);
        for b in value {
            match b {
                b'\\' => out.put_slice(b"\\\\"),
                b'\n' => out.put_slice(b"\\n"),
                b'\r' => out.put_slice(b"\\r"),
                b'\t' if single == Some(b'\t') => out.put_slice(b"\\t"),
                b if single == Some(*b) => {
                    out.put_u8(b'\\');
                    out.put_u8(*b);
                }
                b => out.put_u8(*b),
            }
        }
    }
}

#[cfg(test)]
mod tests;
