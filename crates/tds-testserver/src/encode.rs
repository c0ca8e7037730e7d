//! Encoding of Arrow values as TDS row values, exactly as SQL Server puts them on the wire.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, StringArray,
    Time64NanosecondArray, TimestampMicrosecondArray, TimestampNanosecondArray, UInt8Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};

use crate::types::{COLLATION, SqlType};

/// Days from 0001-01-01 to 1970-01-01.
const DAYS_CE_TO_EPOCH: i64 = 719_162;
/// Days from 1900-01-01 to 1970-01-01.
const DAYS_1900_TO_EPOCH: i64 = 25_567;
/// Days from 0001-01-01 to 9999-12-31.
const MAX_DAY_CE: i64 = 3_652_058;
const NANOS_PER_DAY: i128 = 86_400_000_000_000;
/// Offsets (minutes) the server sends datetimeoffset values with: even rows, odd rows.
pub(crate) const DTO_OFFSETS: [i16; 2] = [120, -300];
/// PLP chunk size used for (max) values.
const PLP_CHUNK: usize = 8000;

/// One result column ready to be written row by row.
pub(crate) struct ColumnEncoder {
    ty: SqlType,
    nullable: bool,
    array: ArrayRef,
}

fn err(msg: impl Into<String>) -> String {
    msg.into()
}

impl ColumnEncoder {
    /// `array` may be of any type Arrow can cast to the wire type of `ty`.
    pub(crate) fn new(
        ty: SqlType,
        nullable: bool,
        wire_type: &DataType,
        array: &ArrayRef,
    ) -> Result<Self, String> {
        let array = if array.data_type() == wire_type {
            array.clone()
        } else {
            cast(array, wire_type).map_err(|e| {
                err(format!(
                    "cannot convert {} to {}: {e}",
                    array.data_type(),
                    ty.declaration()
                ))
            })?
        };
        Ok(ColumnEncoder {
            ty,
            nullable,
            array,
        })
    }

    pub(crate) fn is_null(&self, row: usize) -> bool {
        self.array.is_null(row)
    }

    /// Write the non-NULL value at `row`; `ordinal` is the row's position in the result.
    pub(crate) fn write_value(
        &self,
        row: usize,
        ordinal: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), String> {
        let fixed = self.ty.sent_fixed(self.nullable);
        let len_prefix = |buf: &mut Vec<u8>, n: u8| {
            if !fixed {
                buf.push(n)
            }
        };
        let a = &self.array;
        match self.ty {
            SqlType::TinyInt => {
                len_prefix(buf, 1);
                buf.push(downcast::<UInt8Array>(a)?.value(row));
            }
            SqlType::SmallInt => {
                len_prefix(buf, 2);
                buf.extend_from_slice(&downcast::<Int16Array>(a)?.value(row).to_le_bytes());
            }
            SqlType::Int => {
                len_prefix(buf, 4);
                buf.extend_from_slice(&downcast::<Int32Array>(a)?.value(row).to_le_bytes());
            }
            SqlType::BigInt => {
                len_prefix(buf, 8);
                buf.extend_from_slice(&downcast::<Int64Array>(a)?.value(row).to_le_bytes());
            }
            SqlType::Bit => {
                len_prefix(buf, 1);
                buf.push(u8::from(downcast::<BooleanArray>(a)?.value(row)));
            }
            SqlType::Float => {
                len_prefix(buf, 8);
                buf.extend_from_slice(&downcast::<Float64Array>(a)?.value(row).to_le_bytes());
            }
            SqlType::Real => {
                len_prefix(buf, 4);
                buf.extend_from_slice(&downcast::<Float32Array>(a)?.value(row).to_le_bytes());
            }
            SqlType::Decimal { precision, .. } | SqlType::Numeric { precision, .. } => {
                let v = downcast::<Decimal128Array>(a)?.value(row);
                write_decimal(buf, precision, v)?;
            }
            SqlType::Money | SqlType::SmallMoney => self.write_money(row, buf, fixed)?,
            SqlType::Date => {
                let days = i64::from(downcast::<Date32Array>(a)?.value(row)) + DAYS_CE_TO_EPOCH;
                buf.push(3);
                write_date(buf, days)?;
            }
            SqlType::Time { scale } => {
                let ns = downcast::<Time64NanosecondArray>(a)?.value(row);
                let ns = u64::try_from(ns).map_err(|_| err("negative time value"))?;
                buf.push(time_len(scale));
                write_time(buf, scale, ns);
            }
            SqlType::DateTime
            | SqlType::SmallDateTime
            | SqlType::DateTime2 { .. }
            | SqlType::DateTimeOffset { .. } => self.write_datetime(row, ordinal, buf, fixed)?,
            SqlType::Char(n) => {
                let mut bytes = cp1252(downcast::<StringArray>(a)?.value(row));
                if bytes.len() < usize::from(n) {
                    bytes.resize(usize::from(n), b' ');
                }
                write_u16_len(buf, &bytes)?;
            }
            SqlType::VarChar(Some(_)) => {
                write_u16_len(buf, &cp1252(downcast::<StringArray>(a)?.value(row)))?
            }
            SqlType::VarChar(None) => {
                write_plp(buf, &cp1252(downcast::<StringArray>(a)?.value(row)))
            }
            SqlType::NChar(n) => {
                let s = downcast::<StringArray>(a)?.value(row);
                let mut units: Vec<u16> = s.encode_utf16().collect();
                if units.len() < usize::from(n) {
                    units.resize(usize::from(n), u16::from(b' '));
                }
                write_u16_len(buf, &units_to_bytes(&units))?;
            }
            SqlType::NVarChar(Some(_)) => {
                write_u16_len(buf, &utf16(downcast::<StringArray>(a)?.value(row)))?
            }
            SqlType::NVarChar(None) | SqlType::Xml => {
                write_plp(buf, &utf16(downcast::<StringArray>(a)?.value(row)))
            }
            SqlType::UniqueIdentifier => {
                let s = downcast::<StringArray>(a)?.value(row);
                buf.push(16);
                buf.extend_from_slice(&guid_to_wire(s)?);
            }
            SqlType::Binary(n) => {
                let mut bytes = downcast::<BinaryArray>(a)?.value(row).to_vec();
                if bytes.len() < usize::from(n) {
                    bytes.resize(usize::from(n), 0);
                }
                write_u16_len(buf, &bytes)?;
            }
            SqlType::VarBinary(Some(_)) | SqlType::RowVersion => {
                write_u16_len(buf, downcast::<BinaryArray>(a)?.value(row))?
            }
            SqlType::VarBinary(None) => write_plp(buf, downcast::<BinaryArray>(a)?.value(row)),
            SqlType::Text | SqlType::NText | SqlType::SqlVariant => {
                self.write_legacy_text(row, buf)?
            }
        }
        Ok(())
    }

    /// MONEY (8 bytes: high then low 32 bits) and SMALLMONEY (4 bytes), in ten-thousandths.
    fn write_money(&self, row: usize, buf: &mut Vec<u8>, fixed: bool) -> Result<(), String> {
        let a = &self.array;
        let len_prefix = |buf: &mut Vec<u8>, n: u8| {
            if !fixed {
                buf.push(n)
            }
        };
        match self.ty {
            SqlType::Money => {
                let v = downcast::<Decimal128Array>(a)?.value(row);
                let v = i64::try_from(v).map_err(|_| err("money value out of range"))?;
                len_prefix(buf, 8);
                buf.extend_from_slice(&((v >> 32) as i32).to_le_bytes());
                buf.extend_from_slice(&(v as u32).to_le_bytes());
            }
            SqlType::SmallMoney => {
                let v = downcast::<Decimal128Array>(a)?.value(row);
                let v = i32::try_from(v).map_err(|_| err("smallmoney value out of range"))?;
                len_prefix(buf, 4);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            _ => return Err(err("not a money type")),
        }
        Ok(())
    }

    /// DATETIME (days since 1900 and 1/300 s ticks), SMALLDATETIME (days and minutes),
    /// DATETIME2 and DATETIMEOFFSET (time increments, days since year 1, the offset); `ordinal`
    /// picks the demo offset of a DATETIMEOFFSET row.
    fn write_datetime(
        &self,
        row: usize,
        ordinal: u64,
        buf: &mut Vec<u8>,
        fixed: bool,
    ) -> Result<(), String> {
        let len_prefix = |buf: &mut Vec<u8>, n: u8| {
            if !fixed {
                buf.push(n)
            }
        };
        match self.ty {
            SqlType::DateTime => {
                let (days, ns) = split_nanos(self.timestamp_nanos(row)?);
                let mut days = days + DAYS_1900_TO_EPOCH;
                let mut ticks = (i128::from(ns) * 300 + 500_000_000) / 1_000_000_000;
                if ticks >= 300 * 86_400 {
                    days += 1;
                    ticks = 0;
                }
                let days = i32::try_from(days)
                    .ok()
                    .filter(|d| (-53_690..=2_958_463).contains(d))
                    .ok_or_else(|| err("datetime value out of range (1753-01-01..9999-12-31)"))?;
                len_prefix(buf, 8);
                buf.extend_from_slice(&days.to_le_bytes());
                buf.extend_from_slice(&(ticks as u32).to_le_bytes());
            }
            SqlType::SmallDateTime => {
                let (days, ns) = split_nanos(self.timestamp_nanos(row)?);
                let mut days = days + DAYS_1900_TO_EPOCH;
                let mut minutes = (ns + 30_000_000_000) / 60_000_000_000;
                if minutes >= 1440 {
                    days += 1;
                    minutes = 0;
                }
                let days = u16::try_from(days).map_err(|_| {
                    err("smalldatetime value out of range (1900-01-01..2079-06-06)")
                })?;
                len_prefix(buf, 4);
                buf.extend_from_slice(&days.to_le_bytes());
                buf.extend_from_slice(&(minutes as u16).to_le_bytes());
            }
            SqlType::DateTime2 { scale } => {
                let (days, ns) = split_nanos(self.timestamp_nanos(row)?);
                buf.push(time_len(scale) + 3);
                write_time(buf, scale, ns);
                write_date(buf, days + DAYS_CE_TO_EPOCH)?;
            }
            SqlType::DateTimeOffset { scale } => {
                // The date and time travel in UTC; the offset says how to show them locally.
                let (days, ns) = split_nanos(self.timestamp_nanos(row)?);
                buf.push(time_len(scale) + 5);
                write_time(buf, scale, ns);
                write_date(buf, days + DAYS_CE_TO_EPOCH)?;
                let offset = DTO_OFFSETS[(ordinal % 2) as usize];
                buf.extend_from_slice(&offset.to_le_bytes());
            }
            _ => return Err(err("not a date-and-time type")),
        }
        Ok(())
    }

    /// TEXT/NTEXT (a text pointer, a timestamp, then the data) and SQL_VARIANT (as NVARCHAR).
    fn write_legacy_text(&self, row: usize, buf: &mut Vec<u8>) -> Result<(), String> {
        let a = &self.array;
        match self.ty {
            SqlType::Text | SqlType::NText => {
                let s = downcast::<StringArray>(a)?.value(row);
                let bytes = if self.ty == SqlType::Text {
                    cp1252(s)
                } else {
                    utf16(s)
                };
                // TEXTPTR (16 bytes), TIMESTAMP (8 bytes), then the data with a 4-byte length.
                buf.push(16);
                buf.extend_from_slice(&[0xAB; 16]);
                buf.extend_from_slice(&[0; 8]);
                let len = u32::try_from(bytes.len()).map_err(|_| err("text value too long"))?;
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&bytes);
            }
            SqlType::SqlVariant => {
                let data = utf16(downcast::<StringArray>(a)?.value(row));
                if data.len() > 8000 {
                    return Err(err("sql_variant value longer than 8000 bytes"));
                }
                // Base type NVARCHAR with 7 property bytes: collation (5) + max length (2).
                let total = 2 + 7 + data.len() as u32;
                buf.extend_from_slice(&total.to_le_bytes());
                buf.push(0xE7);
                buf.push(7);
                buf.extend_from_slice(&COLLATION);
                buf.extend_from_slice(&8000u16.to_le_bytes());
                buf.extend_from_slice(&data);
            }
            _ => return Err(err("not a TEXT, NTEXT or SQL_VARIANT type")),
        }
        Ok(())
    }

    fn timestamp_nanos(&self, row: usize) -> Result<i128, String> {
        match self.array.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, _) => Ok(i128::from(
                downcast::<TimestampMicrosecondArray>(&self.array)?.value(row),
            ) * 1000),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => Ok(i128::from(
                downcast::<TimestampNanosecondArray>(&self.array)?.value(row),
            )),
            other => Err(err(format!("unexpected timestamp array {other}"))),
        }
    }
}

fn downcast<T: 'static>(array: &ArrayRef) -> Result<&T, String> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| err(format!("unexpected array type {}", array.data_type())))
}

/// (days since 1970-01-01, nanoseconds into that day)
fn split_nanos(ns: i128) -> (i64, u64) {
    let days = ns.div_euclid(NANOS_PER_DAY);
    let rest = ns.rem_euclid(NANOS_PER_DAY);
    (days as i64, rest as u64)
}

pub(crate) fn time_len(scale: u8) -> u8 {
    match scale {
        0..=2 => 3,
        3..=4 => 4,
        _ => 5,
    }
}

fn write_time(buf: &mut Vec<u8>, scale: u8, ns_of_day: u64) {
    let increments = ns_of_day / 10u64.pow(9 - u32::from(scale.min(7)));
    let bytes = increments.to_le_bytes();
    buf.extend_from_slice(&bytes[..usize::from(time_len(scale))]);
}

fn write_date(buf: &mut Vec<u8>, days_ce: i64) -> Result<(), String> {
    if !(0..=MAX_DAY_CE).contains(&days_ce) {
        return Err(err("date value out of range (0001-01-01..9999-12-31)"));
    }
    buf.extend_from_slice(&(days_ce as u32).to_le_bytes()[..3]);
    Ok(())
}

fn write_decimal(buf: &mut Vec<u8>, precision: u8, v: i128) -> Result<(), String> {
    let len = SqlType::decimal_len(precision);
    buf.push(len);
    buf.push(u8::from(v >= 0));
    let magnitude = v.unsigned_abs();
    let bytes = magnitude.to_le_bytes();
    let width = usize::from(len - 1);
    if bytes[width..].iter().any(|b| *b != 0) {
        return Err(err(format!(
            "Arithmetic overflow error converting {v} to decimal({precision})"
        )));
    }
    buf.extend_from_slice(&bytes[..width]);
    Ok(())
}

fn write_u16_len(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let len = u16::try_from(bytes.len())
        .ok()
        .filter(|l| *l <= 8000)
        .ok_or_else(|| err("value longer than 8000 bytes for a sized column"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
    Ok(())
}

/// PLP: total length, chunks of (u32 length, data), then a zero-length terminator chunk.
fn write_plp(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    for chunk in bytes.chunks(PLP_CHUNK) {
        buf.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        buf.extend_from_slice(chunk);
    }
    buf.extend_from_slice(&0u32.to_le_bytes());
}

pub(crate) fn utf16(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 2);
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

fn units_to_bytes(units: &[u16]) -> Vec<u8> {
    units.iter().flat_map(|u| u.to_le_bytes()).collect()
}

/// Encode text in code page 1252 (the code page of SQL_Latin1_General_CP1_CI_AS); characters
/// the code page lacks become `?`, as SQL Server stores them in a varchar column.
pub(crate) fn cp1252(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| {
            let cp = c as u32;
            match cp {
                0..=0x7F | 0xA0..=0xFF => cp as u8,
                0x81 | 0x8D | 0x8F | 0x90 | 0x9D => cp as u8,
                _ => CP1252_HIGH
                    .iter()
                    .find(|(_, ch)| *ch == c)
                    .map_or(b'?', |(b, _)| *b),
            }
        })
        .collect()
}

const CP1252_HIGH: [(u8, char); 27] = [
    (0x80, '\u{20AC}'),
    (0x82, '\u{201A}'),
    (0x83, '\u{0192}'),
    (0x84, '\u{201E}'),
    (0x85, '\u{2026}'),
    (0x86, '\u{2020}'),
    (0x87, '\u{2021}'),
    (0x88, '\u{02C6}'),
    (0x89, '\u{2030}'),
    (0x8A, '\u{0160}'),
    (0x8B, '\u{2039}'),
    (0x8C, '\u{0152}'),
    (0x8E, '\u{017D}'),
    (0x91, '\u{2018}'),
    (0x92, '\u{2019}'),
    (0x93, '\u{201C}'),
    (0x94, '\u{201D}'),
    (0x95, '\u{2022}'),
    (0x96, '\u{2013}'),
    (0x97, '\u{2014}'),
    (0x98, '\u{02DC}'),
    (0x99, '\u{2122}'),
    (0x9A, '\u{0161}'),
    (0x9B, '\u{203A}'),
    (0x9C, '\u{0153}'),
    (0x9E, '\u{017E}'),
    (0x9F, '\u{0178}'),
];

/// Decode code page 1252 text (parameters sent as varchar).
pub(crate) fn cp1252_decode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            CP1252_HIGH
                .iter()
                .find(|(byte, _)| byte == b)
                .map_or(char::from(*b), |(_, c)| *c)
        })
        .collect()
}

/// Parse a GUID in its 36-character form into RFC 4122 byte order.
pub(crate) fn parse_guid(s: &str) -> Result<[u8; 16], String> {
    let hex: Vec<u8> = s
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .bytes()
        .filter(|b| *b != b'-')
        .collect();
    let bad = || {
        err(format!(
            "Conversion failed when converting '{s}' to uniqueidentifier."
        ))
    };
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// SQL Server's GUID byte order: the first three groups little-endian.
pub(crate) fn reorder_guid(bytes: &mut [u8; 16]) {
    bytes.swap(0, 3);
    bytes.swap(1, 2);
    bytes.swap(4, 5);
    bytes.swap(6, 7);
}

fn guid_to_wire(s: &str) -> Result<[u8; 16], String> {
    let mut bytes = parse_guid(s)?;
    reorder_guid(&mut bytes);
    Ok(bytes)
}

/// Canonical lower-case 36-character form of RFC 4122 bytes.
pub(crate) fn format_guid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Lower-case canonical text of the values of a GUID column (input normalisation).
pub(crate) fn normalize_guid_array(array: &ArrayRef) -> Result<ArrayRef, String> {
    let strings = array.as_string::<i32>();
    let out: StringArray = strings
        .iter()
        .map(|v| {
            v.map(|s| parse_guid(s).map(|b| format_guid(&b)))
                .transpose()
        })
        .collect::<Result<_, _>>()?;
    Ok(std::sync::Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trip() {
        let s = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
        let b = parse_guid(s).unwrap();
        assert_eq!(format_guid(&b), s);
        let wire = guid_to_wire(s).unwrap();
        assert_eq!(&wire[..4], &[0xff, 0x19, 0x96, 0x6f]);
    }

    #[test]
    fn cp1252_maps_euro_and_unknown() {
        assert_eq!(cp1252("a€é☃"), vec![b'a', 0x80, 0xE9, b'?']);
        assert_eq!(cp1252_decode(&[b'a', 0x80, 0xE9]), "a€é");
    }

    #[test]
    fn decimal_widths() {
        let mut buf = Vec::new();
        write_decimal(&mut buf, 38, -(10i128.pow(38) - 1)).unwrap();
        assert_eq!(buf.len(), 18);
        assert_eq!(buf[1], 0);
        buf.clear();
        assert!(write_decimal(&mut buf, 9, 10_000_000_000).is_err());
    }
}
