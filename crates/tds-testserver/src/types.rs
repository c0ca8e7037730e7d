//! SQL Server column types: their canonical Arrow type, their INFORMATION_SCHEMA facts and
//! how SQL Server describes them in COLMETADATA (TYPE_INFO).

use arrow::datatypes::{DataType, TimeUnit};

/// A SQL Server column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlType {
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Bit,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Numeric {
        precision: u8,
        scale: u8,
    },
    Float,
    Real,
    Money,
    SmallMoney,
    Date,
    Time {
        scale: u8,
    },
    DateTime,
    SmallDateTime,
    DateTime2 {
        scale: u8,
    },
    DateTimeOffset {
        scale: u8,
    },
    /// `char(n)`, n in bytes (1..=8000).
    Char(u16),
    /// `varchar(n)`; `None` is `varchar(max)`.
    VarChar(Option<u16>),
    /// `nchar(n)`, n in characters (1..=4000).
    NChar(u16),
    /// `nvarchar(n)`; `None` is `nvarchar(max)`.
    NVarChar(Option<u16>),
    UniqueIdentifier,
    /// `binary(n)`, n in bytes.
    Binary(u16),
    /// `varbinary(n)`; `None` is `varbinary(max)`.
    VarBinary(Option<u16>),
    Xml,
    /// `rowversion` (`timestamp`): 8 bytes, never NULL.
    RowVersion,
    Text,
    NText,
    /// `sql_variant`; values are held as text and sent as an nvarchar-based sql_variant.
    SqlVariant,
}

/// Collation SQL_Latin1_General_CP1_CI_AS as it travels in TYPE_INFO and ENVCHANGE:
/// LCID 0x0409 with flags 0xD0 (info 0x00D0_0409), sort id 52 (code page 1252).
pub(crate) const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];
pub(crate) const COLLATION_NAME: &str = "SQL_Latin1_General_CP1_CI_AS";

impl SqlType {
    /// The Arrow type the server holds and executes with for this SQL type.
    pub fn arrow_type(&self) -> DataType {
        match self {
            SqlType::TinyInt => DataType::UInt8,
            SqlType::SmallInt => DataType::Int16,
            SqlType::Int => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Bit => DataType::Boolean,
            SqlType::Decimal { precision, scale } | SqlType::Numeric { precision, scale } => {
                DataType::Decimal128(*precision, *scale as i8)
            }
            SqlType::Float => DataType::Float64,
            SqlType::Real => DataType::Float32,
            SqlType::Money => DataType::Decimal128(19, 4),
            SqlType::SmallMoney => DataType::Decimal128(10, 4),
            SqlType::Date => DataType::Date32,
            SqlType::Time { .. } => DataType::Time64(TimeUnit::Nanosecond),
            SqlType::DateTime | SqlType::SmallDateTime | SqlType::DateTime2 { .. } => {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            }
            SqlType::DateTimeOffset { .. } => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
            SqlType::Char(_)
            | SqlType::VarChar(_)
            | SqlType::NChar(_)
            | SqlType::NVarChar(_)
            | SqlType::Xml
            | SqlType::Text
            | SqlType::NText
            | SqlType::UniqueIdentifier
            | SqlType::SqlVariant => DataType::Utf8,
            SqlType::Binary(_) | SqlType::VarBinary(_) | SqlType::RowVersion => DataType::Binary,
        }
    }

    /// The type SQL Server gives a result column computed by an expression of this Arrow
    /// type, and the Arrow type the values are cast to before they are sent.
    pub(crate) fn for_arrow(data_type: &DataType) -> (SqlType, DataType) {
        let ty = match data_type {
            DataType::Null | DataType::Int32 | DataType::UInt16 => SqlType::Int,
            DataType::UInt8 => SqlType::TinyInt,
            DataType::Int8 | DataType::Int16 => SqlType::SmallInt,
            DataType::Int64 | DataType::UInt32 => SqlType::BigInt,
            DataType::UInt64 => SqlType::Decimal {
                precision: 20,
                scale: 0,
            },
            DataType::Boolean => SqlType::Bit,
            DataType::Float16 | DataType::Float32 => SqlType::Real,
            DataType::Float64 => SqlType::Float,
            DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s) => {
                let scale = (*s).clamp(0, 38) as u8;
                SqlType::Decimal {
                    precision: (*p).clamp(scale.max(1), 38),
                    scale,
                }
            }
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Time32(_) | DataType::Time64(_) => SqlType::Time { scale: 7 },
            DataType::Timestamp(unit, tz) => {
                let scale = match unit {
                    TimeUnit::Second => 0,
                    TimeUnit::Millisecond => 3,
                    TimeUnit::Microsecond => 6,
                    TimeUnit::Nanosecond => 7,
                };
                if tz.is_some() {
                    SqlType::DateTimeOffset { scale }
                } else {
                    SqlType::DateTime2 { scale }
                }
            }
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => SqlType::VarBinary(None),
            DataType::Dictionary(_, value) => return SqlType::for_arrow(value),
            _ => SqlType::NVarChar(None),
        };
        let wire = match (ty, data_type) {
            // Values keep their own precision: a nanosecond timestamp goes out as datetime2(7).
            (SqlType::DateTime2 { .. }, _) => DataType::Timestamp(TimeUnit::Nanosecond, None),
            (SqlType::DateTimeOffset { .. }, _) => {
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
            }
            _ => ty.arrow_type(),
        };
        (ty, wire)
    }

    /// The lower-case SQL Server type name (`INFORMATION_SCHEMA.COLUMNS.DATA_TYPE`).
    pub fn type_name(&self) -> &'static str {
        match self {
            SqlType::TinyInt => "tinyint",
            SqlType::SmallInt => "smallint",
            SqlType::Int => "int",
            SqlType::BigInt => "bigint",
            SqlType::Bit => "bit",
            SqlType::Decimal { .. } => "decimal",
            SqlType::Numeric { .. } => "numeric",
            SqlType::Float => "float",
            SqlType::Real => "real",
            SqlType::Money => "money",
            SqlType::SmallMoney => "smallmoney",
            SqlType::Date => "date",
            SqlType::Time { .. } => "time",
            SqlType::DateTime => "datetime",
            SqlType::SmallDateTime => "smalldatetime",
            SqlType::DateTime2 { .. } => "datetime2",
            SqlType::DateTimeOffset { .. } => "datetimeoffset",
            SqlType::Char(_) => "char",
            SqlType::VarChar(_) => "varchar",
            SqlType::NChar(_) => "nchar",
            SqlType::NVarChar(_) => "nvarchar",
            SqlType::UniqueIdentifier => "uniqueidentifier",
            SqlType::Binary(_) => "binary",
            SqlType::VarBinary(_) => "varbinary",
            SqlType::Xml => "xml",
            SqlType::RowVersion => "timestamp",
            SqlType::Text => "text",
            SqlType::NText => "ntext",
            SqlType::SqlVariant => "sql_variant",
        }
    }

    /// The declaration as it would be written in T-SQL, e.g. `nvarchar(max)`.
    pub fn declaration(&self) -> String {
        let len = |n: Option<u16>| n.map_or_else(|| "max".to_string(), |n| n.to_string());
        match self {
            SqlType::Decimal { precision, scale } | SqlType::Numeric { precision, scale } => {
                format!("{}({precision},{scale})", self.type_name())
            }
            SqlType::Time { scale }
            | SqlType::DateTime2 { scale }
            | SqlType::DateTimeOffset { scale } => format!("{}({scale})", self.type_name()),
            SqlType::Char(n) | SqlType::NChar(n) | SqlType::Binary(n) => {
                format!("{}({n})", self.type_name())
            }
            SqlType::VarChar(n) | SqlType::NVarChar(n) | SqlType::VarBinary(n) => {
                format!("{}({})", self.type_name(), len(*n))
            }
            _ => self.type_name().to_string(),
        }
    }

    /// `INFORMATION_SCHEMA.COLUMNS` facts: (CHARACTER_MAXIMUM_LENGTH, CHARACTER_OCTET_LENGTH,
    /// NUMERIC_PRECISION, NUMERIC_PRECISION_RADIX, NUMERIC_SCALE, DATETIME_PRECISION,
    /// CHARACTER_SET_NAME, COLLATION_NAME), NULL where SQL Server has NULL.
    pub(crate) fn information_schema(&self) -> InfoSchemaFacts {
        let mut f = InfoSchemaFacts::default();
        let numeric = |f: &mut InfoSchemaFacts, p: u8, radix: i16, s: Option<i32>| {
            f.numeric_precision = Some(p);
            f.numeric_precision_radix = Some(radix);
            f.numeric_scale = s;
        };
        let chars = |f: &mut InfoSchemaFacts, len: i32, octets: i32, charset: &'static str| {
            f.character_maximum_length = Some(len);
            f.character_octet_length = Some(octets);
            f.character_set_name = Some(charset);
            f.collation_name = Some(COLLATION_NAME);
        };
        match *self {
            SqlType::TinyInt => numeric(&mut f, 3, 10, Some(0)),
            SqlType::SmallInt => numeric(&mut f, 5, 10, Some(0)),
            SqlType::Int => numeric(&mut f, 10, 10, Some(0)),
            SqlType::BigInt => numeric(&mut f, 19, 10, Some(0)),
            SqlType::Decimal { precision, scale } | SqlType::Numeric { precision, scale } => {
                numeric(&mut f, precision, 10, Some(i32::from(scale)))
            }
            SqlType::Float => numeric(&mut f, 53, 2, None),
            SqlType::Real => numeric(&mut f, 24, 2, None),
            SqlType::Money => numeric(&mut f, 19, 10, Some(4)),
            SqlType::SmallMoney => numeric(&mut f, 10, 10, Some(4)),
            SqlType::Date | SqlType::SmallDateTime => f.datetime_precision = Some(0),
            SqlType::DateTime => f.datetime_precision = Some(3),
            SqlType::Time { scale }
            | SqlType::DateTime2 { scale }
            | SqlType::DateTimeOffset { scale } => f.datetime_precision = Some(i16::from(scale)),
            SqlType::Char(n) => chars(&mut f, i32::from(n), i32::from(n), "iso_1"),
            SqlType::VarChar(Some(n)) => chars(&mut f, i32::from(n), i32::from(n), "iso_1"),
            SqlType::VarChar(None) => chars(&mut f, -1, -1, "iso_1"),
            SqlType::NChar(n) => chars(&mut f, i32::from(n), 2 * i32::from(n), "UNICODE"),
            SqlType::NVarChar(Some(n)) => chars(&mut f, i32::from(n), 2 * i32::from(n), "UNICODE"),
            SqlType::NVarChar(None) => chars(&mut f, -1, -1, "UNICODE"),
            SqlType::Text => chars(&mut f, i32::MAX, i32::MAX, "iso_1"),
            SqlType::NText => chars(&mut f, 1_073_741_823, 2_147_483_646, "UNICODE"),
            SqlType::Binary(n) | SqlType::VarBinary(Some(n)) => {
                f.character_maximum_length = Some(i32::from(n));
                f.character_octet_length = Some(i32::from(n));
            }
            SqlType::VarBinary(None) | SqlType::Xml => {
                f.character_maximum_length = Some(-1);
                f.character_octet_length = Some(-1);
            }
            SqlType::Bit
            | SqlType::UniqueIdentifier
            | SqlType::RowVersion
            | SqlType::SqlVariant => {}
        }
        f
    }

    /// Whether SQL Server describes a NOT NULL column of this type with a fixed-length
    /// TYPE_INFO (INT4, FLT8, ...) instead of the nullable form (INTN, FLTN, ...).
    fn fixed_len_type(&self) -> Option<u8> {
        Some(match self {
            SqlType::TinyInt => 0x30,
            SqlType::Bit => 0x32,
            SqlType::SmallInt => 0x34,
            SqlType::Int => 0x38,
            SqlType::SmallDateTime => 0x3A,
            SqlType::Real => 0x3B,
            SqlType::Money => 0x3C,
            SqlType::DateTime => 0x3D,
            SqlType::Float => 0x3E,
            SqlType::SmallMoney => 0x7A,
            SqlType::BigInt => 0x7F,
            _ => return None,
        })
    }

    /// Whether a value of this type in a NOT NULL column is sent without its length byte.
    pub(crate) fn sent_fixed(&self, nullable: bool) -> bool {
        !nullable && self.fixed_len_type().is_some()
    }

    /// The TDS user type SQL Server puts in COLMETADATA (80 for timestamp/rowversion).
    pub(crate) fn user_type(&self) -> u32 {
        match self {
            SqlType::RowVersion => 0x50,
            _ => 0,
        }
    }

    /// Byte length of a DECIMALN/NUMERICN value (sign byte included) for a precision.
    pub(crate) fn decimal_len(precision: u8) -> u8 {
        match precision {
            0..=9 => 5,
            10..=19 => 9,
            20..=28 => 13,
            _ => 17,
        }
    }

    /// Write TYPE_INFO for this type as SQL Server sends it in COLMETADATA.
    pub(crate) fn write_type_info(&self, buf: &mut Vec<u8>, nullable: bool, table: &[&str]) {
        if !nullable && let Some(fixed) = self.fixed_len_type() {
            buf.push(fixed);
            return;
        }
        let put_u16 = |buf: &mut Vec<u8>, v: u16| buf.extend_from_slice(&v.to_le_bytes());
        match *self {
            SqlType::TinyInt => buf.extend_from_slice(&[0x26, 1]),
            SqlType::SmallInt => buf.extend_from_slice(&[0x26, 2]),
            SqlType::Int => buf.extend_from_slice(&[0x26, 4]),
            SqlType::BigInt => buf.extend_from_slice(&[0x26, 8]),
            SqlType::Bit => buf.extend_from_slice(&[0x68, 1]),
            SqlType::Decimal { precision, scale } => {
                buf.extend_from_slice(&[0x6A, Self::decimal_len(precision), precision, scale])
            }
            SqlType::Numeric { precision, scale } => {
                buf.extend_from_slice(&[0x6C, Self::decimal_len(precision), precision, scale])
            }
            SqlType::Float => buf.extend_from_slice(&[0x6D, 8]),
            SqlType::Real => buf.extend_from_slice(&[0x6D, 4]),
            SqlType::Money => buf.extend_from_slice(&[0x6E, 8]),
            SqlType::SmallMoney => buf.extend_from_slice(&[0x6E, 4]),
            SqlType::Date => buf.push(0x28),
            SqlType::Time { scale } => buf.extend_from_slice(&[0x29, scale]),
            SqlType::DateTime => buf.extend_from_slice(&[0x6F, 8]),
            SqlType::SmallDateTime => buf.extend_from_slice(&[0x6F, 4]),
            SqlType::DateTime2 { scale } => buf.extend_from_slice(&[0x2A, scale]),
            SqlType::DateTimeOffset { scale } => buf.extend_from_slice(&[0x2B, scale]),
            SqlType::Char(n) => {
                buf.push(0xAF);
                put_u16(buf, n);
                buf.extend_from_slice(&COLLATION);
            }
            SqlType::VarChar(n) => {
                buf.push(0xA7);
                put_u16(buf, n.unwrap_or(0xFFFF));
                buf.extend_from_slice(&COLLATION);
            }
            SqlType::NChar(n) => {
                buf.push(0xEF);
                put_u16(buf, n.saturating_mul(2));
                buf.extend_from_slice(&COLLATION);
            }
            SqlType::NVarChar(n) => {
                buf.push(0xE7);
                put_u16(buf, n.map_or(0xFFFF, |n| n.saturating_mul(2)));
                buf.extend_from_slice(&COLLATION);
            }
            SqlType::UniqueIdentifier => buf.extend_from_slice(&[0x24, 16]),
            SqlType::Binary(n) => {
                buf.push(0xAD);
                put_u16(buf, n);
            }
            SqlType::VarBinary(n) => {
                buf.push(0xA5);
                put_u16(buf, n.unwrap_or(0xFFFF));
            }
            SqlType::RowVersion => {
                buf.push(0xAD);
                put_u16(buf, 8);
            }
            SqlType::Xml => buf.extend_from_slice(&[0xF1, 0]),
            SqlType::Text | SqlType::NText => {
                let (ty, len) = if *self == SqlType::Text {
                    (0x23, i32::MAX as u32)
                } else {
                    (0x63, 1_073_741_823 * 2)
                };
                buf.push(ty);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&COLLATION);
                // TableName: NumParts, then each part as US_VARCHAR.
                buf.push(table.len() as u8);
                for part in table {
                    let units: Vec<u16> = part.encode_utf16().collect();
                    put_u16(buf, units.len() as u16);
                    for u in units {
                        put_u16(buf, u);
                    }
                }
            }
            SqlType::SqlVariant => {
                buf.push(0x62);
                buf.extend_from_slice(&8016u32.to_le_bytes());
            }
        }
    }

    /// Parse a T-SQL type declaration such as `nvarchar(4000)` or `decimal(10, 2)`.
    pub(crate) fn parse_declaration(decl: &str) -> Option<SqlType> {
        let decl = decl.trim().to_ascii_lowercase();
        let (name, args) = match decl.find('(') {
            Some(i) => (
                decl[..i].trim().to_string(),
                decl[i + 1..].trim_end_matches(')').to_string(),
            ),
            None => (decl.clone(), String::new()),
        };
        let args: Vec<&str> = args
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let num = |i: usize| args.get(i).and_then(|a| a.parse::<u16>().ok());
        let len = |i: usize| match args.get(i) {
            Some(&"max") => None,
            _ => num(i).or(Some(1)),
        };
        let scale = |default: u8| num(0).map_or(default, |s| s.min(7) as u8);
        Some(match name.as_str() {
            "tinyint" => SqlType::TinyInt,
            "smallint" => SqlType::SmallInt,
            "int" | "integer" => SqlType::Int,
            "bigint" => SqlType::BigInt,
            "bit" => SqlType::Bit,
            "decimal" | "dec" | "numeric" => {
                let precision = num(0).map_or(18, |p| p.clamp(1, 38) as u8);
                let scale = num(1).map_or(0, |s| (s as u8).min(precision));
                if name == "numeric" {
                    SqlType::Numeric { precision, scale }
                } else {
                    SqlType::Decimal { precision, scale }
                }
            }
            "float" => match num(0) {
                Some(n) if n <= 24 => SqlType::Real,
                _ => SqlType::Float,
            },
            "real" => SqlType::Real,
            "money" => SqlType::Money,
            "smallmoney" => SqlType::SmallMoney,
            "date" => SqlType::Date,
            "time" => SqlType::Time { scale: scale(7) },
            "datetime" => SqlType::DateTime,
            "smalldatetime" => SqlType::SmallDateTime,
            "datetime2" => SqlType::DateTime2 { scale: scale(7) },
            "datetimeoffset" => SqlType::DateTimeOffset { scale: scale(7) },
            "char" => SqlType::Char(num(0).unwrap_or(1)),
            "varchar" => SqlType::VarChar(len(0)),
            "nchar" => SqlType::NChar(num(0).unwrap_or(1)),
            "nvarchar" | "sysname" => {
                SqlType::NVarChar(if name == "sysname" { Some(128) } else { len(0) })
            }
            "uniqueidentifier" => SqlType::UniqueIdentifier,
            "binary" => SqlType::Binary(num(0).unwrap_or(1)),
            "varbinary" => SqlType::VarBinary(len(0)),
            "xml" => SqlType::Xml,
            "rowversion" | "timestamp" => SqlType::RowVersion,
            "text" => SqlType::Text,
            "ntext" => SqlType::NText,
            "sql_variant" => SqlType::SqlVariant,
            _ => return None,
        })
    }
}

/// The per-type columns of `INFORMATION_SCHEMA.COLUMNS`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct InfoSchemaFacts {
    pub character_maximum_length: Option<i32>,
    pub character_octet_length: Option<i32>,
    pub numeric_precision: Option<u8>,
    pub numeric_precision_radix: Option<i16>,
    pub numeric_scale: Option<i32>,
    pub datetime_precision: Option<i16>,
    pub character_set_name: Option<&'static str>,
    pub collation_name: Option<&'static str>,
}

/// A column of a declared table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub sql_type: SqlType,
    pub nullable: bool,
}

impl Column {
    /// A nullable column (`RowVersion` columns are always NOT NULL, as in SQL Server).
    pub fn new(name: impl Into<String>, sql_type: SqlType) -> Self {
        Column {
            name: name.into(),
            sql_type,
            nullable: sql_type != SqlType::RowVersion,
        }
    }

    /// The same column declared NOT NULL.
    pub fn not_null(mut self) -> Self {
        self.nullable = false;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_round_trip() {
        for ty in [
            SqlType::Decimal {
                precision: 38,
                scale: 10,
            },
            SqlType::NVarChar(None),
            SqlType::NVarChar(Some(4000)),
            SqlType::DateTime2 { scale: 3 },
            SqlType::VarBinary(Some(16)),
            SqlType::Char(10),
        ] {
            assert_eq!(SqlType::parse_declaration(&ty.declaration()), Some(ty));
        }
        assert_eq!(
            SqlType::parse_declaration("float(53)"),
            Some(SqlType::Float)
        );
        assert_eq!(SqlType::parse_declaration("float(24)"), Some(SqlType::Real));
        assert_eq!(
            SqlType::parse_declaration("datetime2"),
            Some(SqlType::DateTime2 { scale: 7 })
        );
    }

    #[test]
    fn not_null_int_is_sent_as_int4() {
        let mut buf = Vec::new();
        SqlType::Int.write_type_info(&mut buf, false, &[]);
        assert_eq!(buf, [0x38]);
        buf.clear();
        SqlType::Int.write_type_info(&mut buf, true, &[]);
        assert_eq!(buf, [0x26, 4]);
    }
}
