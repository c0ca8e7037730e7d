//! SQL Server types: what `INFORMATION_SCHEMA.COLUMNS` says of a column, the Arrow type it maps
//! to, and the conversion of tiberius values into Arrow arrays.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64NanosecondBuilder, TimestampMicrosecondBuilder, UInt8Builder,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};
use tiberius::ColumnData;

/// Days from 0001-01-01 (TDS `date`) to 1970-01-01.
const DAYS_0001_TO_1970: i64 = 719_162;
/// Days from 1900-01-01 (TDS `datetime`) to 1970-01-01.
const DAYS_1900_TO_1970: i64 = 25_567;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A remote column as `INFORMATION_SCHEMA.COLUMNS` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteColumn {
    pub name: String,
    /// `DATA_TYPE`, lower case: `int`, `nvarchar`, `datetime2`, `timestamp` (rowversion) ...
    pub data_type: String,
    /// `CHARACTER_MAXIMUM_LENGTH` (-1 for `max`).
    pub max_length: Option<i64>,
    pub precision: Option<i64>,
    pub scale: Option<i64>,
    pub datetime_precision: Option<i64>,
    pub nullable: bool,
}

impl RemoteColumn {
    /// The type as T-SQL writes it, for messages: `decimal(18,4)`, `nvarchar(max)`.
    pub fn type_name(&self) -> String {
        let t = self.data_type.as_str();
        match t {
            "decimal" | "numeric" => format!(
                "{t}({},{})",
                self.precision.unwrap_or(18),
                self.scale.unwrap_or(0)
            ),
            "char" | "varchar" | "nchar" | "nvarchar" | "binary" | "varbinary" => {
                match self.max_length {
                    Some(-1) => format!("{t}(max)"),
                    Some(n) => format!("{t}({n})"),
                    None => t.to_string(),
                }
            }
            "time" | "datetime2" | "datetimeoffset" => match self.datetime_precision {
                Some(p) => format!("{t}({p})"),
                None => t.to_string(),
            },
            "timestamp" => "rowversion".to_string(),
            _ => t.to_string(),
        }
    }

    /// The Arrow type medlake reads this column as; `Err` holds a hint for the user.
    pub fn arrow_type(&self) -> Result<DataType, String> {
        Ok(match self.data_type.as_str() {
            "tinyint" => DataType::UInt8,
            "smallint" => DataType::Int16,
            "int" => DataType::Int32,
            "bigint" => DataType::Int64,
            "bit" => DataType::Boolean,
            "decimal" | "numeric" => {
                let precision = self.precision.unwrap_or(18).clamp(1, 38) as u8;
                let scale = self.scale.unwrap_or(0).clamp(0, precision as i64) as i8;
                DataType::Decimal128(precision, scale)
            }
            "money" => DataType::Decimal128(19, 4),
            "smallmoney" => DataType::Decimal128(10, 4),
            "float" => DataType::Float64,
            "real" => DataType::Float32,
            "date" => DataType::Date32,
            "time" => DataType::Time64(TimeUnit::Nanosecond),
            "datetime" | "smalldatetime" | "datetime2" => {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            }
            "datetimeoffset" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "xml"
            | "uniqueidentifier" | "sysname" => DataType::Utf8,
            "binary" | "varbinary" | "image" | "timestamp" | "rowversion" => DataType::Binary,
            other => {
                return Err(match other {
                    "sql_variant" => "sql_variant holds values of many types; CAST it to one type in a view on the server".into(),
                    "geography" | "geometry" => format!("{other} is a CLR spatial type; expose it as text (.STAsText()) or WKB (.STAsBinary()) in a view on the server"),
                    "hierarchyid" => "hierarchyid is a CLR type; expose it with .ToString() in a view on the server".into(),
                    _ => format!("{other} has no Arrow mapping; CAST it in a view on the server"),
                });
            }
        })
    }

    /// The select-list expression that reads this column: money arrives from tiberius as a
    /// float, so it is read as the exact decimal it is.
    pub fn select_expr(&self) -> String {
        let quoted = quote(&self.name);
        match self.data_type.as_str() {
            "money" => format!("CAST({quoted} AS decimal(19,4)) AS {quoted}"),
            "smallmoney" => format!("CAST({quoted} AS decimal(10,4)) AS {quoted}"),
            _ => quoted,
        }
    }

    /// String comparisons in SQL Server follow the column's collation (usually case- and
    /// trailing-space-insensitive), so filters on text are re-checked by DataFusion.
    pub fn compares_like_datafusion(&self) -> bool {
        !matches!(
            self.data_type.as_str(),
            "char"
                | "varchar"
                | "nchar"
                | "nvarchar"
                | "text"
                | "ntext"
                | "xml"
                | "sysname"
                | "uniqueidentifier"
        )
    }
}

/// `[name]`, with `]` doubled: every identifier medlake sends is quoted this way.
pub fn quote(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// Builds one Arrow column from tiberius values.
pub enum ColumnBuilder {
    U8(UInt8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    F32(Float32Builder),
    F64(Float64Builder),
    Decimal(Decimal128Builder, DataType, i8),
    Date(Date32Builder),
    Time(Time64NanosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
}

impl ColumnBuilder {
    pub fn new(data_type: &DataType, capacity: usize) -> Result<Self, String> {
        Ok(match data_type {
            DataType::UInt8 => Self::U8(UInt8Builder::with_capacity(capacity)),
            DataType::Int16 => Self::I16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => Self::I32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Self::I64(Int64Builder::with_capacity(capacity)),
            DataType::Boolean => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            DataType::Float32 => Self::F32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Self::F64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal128(_, scale) => Self::Decimal(
                Decimal128Builder::with_capacity(capacity),
                data_type.clone(),
                *scale,
            ),
            DataType::Date32 => Self::Date(Date32Builder::with_capacity(capacity)),
            DataType::Time64(TimeUnit::Nanosecond) => {
                Self::Time(Time64NanosecondBuilder::with_capacity(capacity))
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                tz.clone(),
            ),
            DataType::Utf8 => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
            DataType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            other => return Err(format!("no reader for Arrow type {other}")),
        })
    }

    /// Appends one value; `Err` describes a value that does not fit the column.
    pub fn append(&mut self, value: ColumnData<'_>) -> Result<(), String> {
        use ColumnData as C;
        let mismatch = |expected: &str, got: &ColumnData<'_>| {
            Err(format!(
                "expected {expected}, the server sent {}",
                variant(got)
            ))
        };
        match self {
            Self::U8(b) => match value {
                C::U8(v) => b.append_option(v),
                other => return mismatch("tinyint", &other),
            },
            Self::I16(b) => match value {
                C::I16(v) => b.append_option(v),
                C::U8(v) => b.append_option(v.map(i16::from)),
                other => return mismatch("smallint", &other),
            },
            Self::I32(b) => match value {
                C::I32(v) => b.append_option(v),
                C::I16(v) => b.append_option(v.map(i32::from)),
                C::U8(v) => b.append_option(v.map(i32::from)),
                other => return mismatch("int", &other),
            },
            Self::I64(b) => match value {
                C::I64(v) => b.append_option(v),
                C::I32(v) => b.append_option(v.map(i64::from)),
                C::I16(v) => b.append_option(v.map(i64::from)),
                C::U8(v) => b.append_option(v.map(i64::from)),
                other => return mismatch("bigint", &other),
            },
            Self::Bool(b) => match value {
                C::Bit(v) => b.append_option(v),
                other => return mismatch("bit", &other),
            },
            Self::F32(b) => match value {
                C::F32(v) => b.append_option(v),
                other => return mismatch("real", &other),
            },
            Self::F64(b) => match value {
                C::F64(v) => b.append_option(v),
                C::F32(v) => b.append_option(v.map(f64::from)),
                other => return mismatch("float", &other),
            },
            Self::Decimal(b, _, scale) => match value {
                C::Numeric(None) => b.append_null(),
                C::Numeric(Some(n)) => b.append_value(rescale(n.value(), n.scale() as i8, *scale)?),
                other => return mismatch("decimal", &other),
            },
            Self::Date(b) => match value {
                C::Date(v) => {
                    b.append_option(v.map(|d| (d.days() as i64 - DAYS_0001_TO_1970) as i32))
                }
                other => return mismatch("date", &other),
            },
            Self::Time(b) => match value {
                C::Time(v) => b.append_option(v.map(|t| time_nanos(t.increments(), t.scale()))),
                other => return mismatch("time", &other),
            },
            Self::Timestamp(b, _) => match value {
                C::DateTime(v) => b.append_option(v.map(|d| {
                    (d.days() as i64 - DAYS_1900_TO_1970) * MICROS_PER_DAY
                        + (d.seconds_fragments() as i64 * 10_000 + 1) / 3
                })),
                C::SmallDateTime(v) => b.append_option(v.map(|d| {
                    (d.days() as i64 - DAYS_1900_TO_1970) * MICROS_PER_DAY
                        + d.seconds_fragments() as i64 * 60_000_000
                })),
                C::DateTime2(v) => b.append_option(v.map(datetime2_micros)),
                // TDS carries the UTC instant and the offset it was written with: the instant
                // is the value (normalised to UTC).
                C::DateTimeOffset(v) => b.append_option(v.map(|d| datetime2_micros(d.datetime2()))),
                other => return mismatch("a date and time", &other),
            },
            Self::Utf8(b) => match value {
                C::String(v) => b.append_option(v),
                C::Xml(v) => b.append_option(v.map(|x| x.to_string())),
                C::Guid(v) => {
                    b.append_option(v.map(|g| g.hyphenated().to_string().to_ascii_uppercase()))
                }
                other => return mismatch("text", &other),
            },
            Self::Binary(b) => match value {
                C::Binary(v) => b.append_option(v),
                other => return mismatch("binary", &other),
            },
        }
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::U8(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Decimal(b, data_type, _) => {
                Arc::new(b.finish().with_data_type(data_type.clone()))
            }
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
        }
    }
}

fn time_nanos(increments: u64, scale: u8) -> i64 {
    let scale = scale.min(9) as u32;
    increments as i64 * 10_i64.pow(9 - scale)
}

fn datetime2_micros(d: tiberius::time::DateTime2) -> i64 {
    let days = d.date().days() as i64 - DAYS_0001_TO_1970;
    days * MICROS_PER_DAY + time_nanos(d.time().increments(), d.time().scale()) / 1_000
}

fn rescale(value: i128, from: i8, to: i8) -> Result<i128, String> {
    match from.cmp(&to) {
        std::cmp::Ordering::Equal => Ok(value),
        std::cmp::Ordering::Less => 10_i128
            .checked_pow((to - from) as u32)
            .and_then(|f| value.checked_mul(f))
            .ok_or_else(|| format!("decimal {value}e-{from} overflows scale {to}")),
        std::cmp::Ordering::Greater => Ok(value / 10_i128.pow((from - to) as u32)),
    }
}

fn variant(value: &ColumnData<'_>) -> &'static str {
    match value {
        ColumnData::U8(_) => "tinyint",
        ColumnData::I16(_) => "smallint",
        ColumnData::I32(_) => "int",
        ColumnData::I64(_) => "bigint",
        ColumnData::F32(_) => "real",
        ColumnData::F64(_) => "float",
        ColumnData::Bit(_) => "bit",
        ColumnData::String(_) => "text",
        ColumnData::Guid(_) => "uniqueidentifier",
        ColumnData::Binary(_) => "binary",
        ColumnData::Numeric(_) => "decimal",
        ColumnData::Xml(_) => "xml",
        ColumnData::DateTime(_) => "datetime",
        ColumnData::SmallDateTime(_) => "smalldatetime",
        ColumnData::Time(_) => "time",
        ColumnData::Date(_) => "date",
        ColumnData::DateTime2(_) => "datetime2",
        ColumnData::DateTimeOffset(_) => "datetimeoffset",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Date32Array, TimestampMicrosecondArray};
    use tiberius::time::{Date, DateTime2, DateTimeOffset, Time};

    fn column(data_type: &str) -> RemoteColumn {
        RemoteColumn {
            name: "c".into(),
            data_type: data_type.into(),
            max_length: None,
            precision: Some(12),
            scale: Some(3),
            datetime_precision: Some(7),
            nullable: true,
        }
    }

    #[test]
    fn every_listed_type_maps_and_the_rest_are_refused_with_a_hint() {
        for t in [
            "tinyint",
            "smallint",
            "int",
            "bigint",
            "bit",
            "decimal",
            "numeric",
            "money",
            "smallmoney",
            "float",
            "real",
            "date",
            "time",
            "datetime",
            "smalldatetime",
            "datetime2",
            "datetimeoffset",
            "char",
            "varchar",
            "nchar",
            "nvarchar",
            "xml",
            "uniqueidentifier",
            "binary",
            "varbinary",
            "timestamp",
            "text",
            "ntext",
            "image",
        ] {
            assert!(column(t).arrow_type().is_ok(), "{t}");
        }
        assert_eq!(
            column("decimal").arrow_type(),
            Ok(DataType::Decimal128(12, 3))
        );
        let refused = column("sql_variant").arrow_type().unwrap_err();
        assert!(refused.contains("CAST"), "{refused}");
        assert!(column("geography").arrow_type().is_err());
    }

    #[test]
    fn dates_convert_at_the_edges_and_offsets_normalise_to_utc() {
        let mut dates = ColumnBuilder::new(&DataType::Date32, 2).unwrap();
        dates.append(ColumnData::Date(Some(Date::new(0)))).unwrap();
        dates
            .append(ColumnData::Date(Some(Date::new(3_652_058))))
            .unwrap();
        let dates = dates.finish();
        let dates = dates.as_any().downcast_ref::<Date32Array>().unwrap();
        assert_eq!(dates.value_as_date(0).unwrap().to_string(), "0001-01-01");
        assert_eq!(dates.value_as_date(1).unwrap().to_string(), "9999-12-31");

        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut ts = ColumnBuilder::new(&ts_type, 1).unwrap();
        // 1970-01-02 00:00:00.5 UTC, written at +02:00.
        let utc = DateTime2::new(
            Date::new((DAYS_0001_TO_1970 + 1) as u32),
            Time::new(5_000_000, 7),
        );
        ts.append(ColumnData::DateTimeOffset(Some(DateTimeOffset::new(
            utc, 120,
        ))))
        .unwrap();
        ts.append(ColumnData::DateTimeOffset(None)).unwrap();
        let ts = ts.finish();
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), MICROS_PER_DAY + 500_000);
        assert!(ts.is_null(1));
    }

    #[test]
    fn decimals_rescale_and_mismatches_are_named() {
        assert_eq!(rescale(12345, 2, 4), Ok(1_234_500));
        assert_eq!(rescale(12345, 4, 2), Ok(123));
        let mut b = ColumnBuilder::new(&DataType::Int32, 1).unwrap();
        let err = b.append(ColumnData::String(Some("x".into()))).unwrap_err();
        assert!(
            err.contains("expected int") && err.contains("text"),
            "{err}"
        );
    }

    #[test]
    fn identifiers_are_quoted_with_closing_brackets_doubled() {
        assert_eq!(quote("Patients"), "[Patients]");
        assert_eq!(quote("a]b; DROP TABLE x--"), "[a]]b; DROP TABLE x--]");
    }
}
