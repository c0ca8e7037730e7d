//! Every SqlType through tiberius: edge values, NULLs, and the TYPE_INFO SQL Server uses.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, RecordBatch, StringArray, Time64NanosecondArray,
    TimestampMicrosecondArray, UInt8Array,
};
use arrow::datatypes::{Field, Schema};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use medlake_tds_testserver::{Column, Encryption, SqlType};
use tiberius::numeric::Numeric;
use tiberius::xml::XmlData;
use tiberius::{ColumnType, Row, Uuid};

use crate::common::{connect, server, within};

const GUID: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn days(d: NaiveDate) -> i32 {
    (d - date(1970, 1, 1)).num_days() as i32
}

fn micros(dt: NaiveDateTime) -> i64 {
    dt.and_utc().timestamp_micros()
}

fn at(d: NaiveDate, h: u32, m: u32, s: u32, micro: u32) -> NaiveDateTime {
    d.and_time(NaiveTime::from_hms_micro_opt(h, m, s, micro).unwrap())
}

fn long_unicode() -> String {
    "Ωmega-日本語-🎉-".repeat(700) // > 8000 bytes in UTF-16
}

fn long_ascii() -> String {
    "varchar(max) ".repeat(1000) // 13000 bytes
}

fn big_blob() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

fn columns() -> Vec<Column> {
    vec![
        Column::new("Id", SqlType::Int).not_null(),
        Column::new("TinyCol", SqlType::TinyInt),
        Column::new("SmallCol", SqlType::SmallInt),
        Column::new("IntCol", SqlType::Int),
        Column::new("BigCol", SqlType::BigInt),
        Column::new("BitCol", SqlType::Bit),
        Column::new(
            "Dec38",
            SqlType::Decimal {
                precision: 38,
                scale: 10,
            },
        ),
        Column::new(
            "Num10",
            SqlType::Numeric {
                precision: 10,
                scale: 2,
            },
        ),
        Column::new("FloatCol", SqlType::Float),
        Column::new("RealCol", SqlType::Real),
        Column::new("MoneyCol", SqlType::Money),
        Column::new("SmallMoneyCol", SqlType::SmallMoney),
        Column::new("DateCol", SqlType::Date),
        Column::new("TimeCol", SqlType::Time { scale: 7 }),
        Column::new("DateTimeCol", SqlType::DateTime),
        Column::new("SmallDateTimeCol", SqlType::SmallDateTime),
        Column::new("DateTime2Col", SqlType::DateTime2 { scale: 7 }),
        Column::new("DtoCol", SqlType::DateTimeOffset { scale: 7 }),
        Column::new("CharCol", SqlType::Char(10)),
        Column::new("VarCharCol", SqlType::VarChar(Some(50))),
        Column::new("VarCharMax", SqlType::VarChar(None)),
        Column::new("NCharCol", SqlType::NChar(5)),
        Column::new("NVarCharCol", SqlType::NVarChar(Some(100))),
        Column::new("NVarCharMax", SqlType::NVarChar(None)),
        Column::new("GuidCol", SqlType::UniqueIdentifier),
        Column::new("BinaryCol", SqlType::Binary(4)),
        Column::new("VarBinaryCol", SqlType::VarBinary(Some(16))),
        Column::new("VarBinaryMax", SqlType::VarBinary(None)),
        Column::new("XmlCol", SqlType::Xml),
        Column::new("RowVer", SqlType::RowVersion),
        Column::new("TextCol", SqlType::Text),
        Column::new("NTextCol", SqlType::NText),
        Column::new("VariantCol", SqlType::SqlVariant),
    ]
}

/// Row 0: minimum values, row 1: maximum values, row 2: NULLs, row 3: ordinary values.
fn batch() -> RecordBatch {
    let ten38 = 10i128.pow(38) - 1;
    let s = |v: [Option<&str>; 4]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
    let long_u = long_unicode();
    let long_a = long_ascii();
    let blob = big_blob();
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![0, 1, 2, 3])),
        Arc::new(UInt8Array::from(vec![Some(0), Some(255), None, Some(7)])),
        Arc::new(Int16Array::from(vec![
            Some(i16::MIN),
            Some(i16::MAX),
            None,
            Some(-7),
        ])),
        Arc::new(Int32Array::from(vec![
            Some(i32::MIN),
            Some(i32::MAX),
            None,
            Some(42),
        ])),
        Arc::new(Int64Array::from(vec![
            Some(i64::MIN),
            Some(i64::MAX),
            None,
            Some(-42),
        ])),
        Arc::new(BooleanArray::from(vec![
            Some(false),
            Some(true),
            None,
            Some(true),
        ])),
        Arc::new(
            Decimal128Array::from(vec![Some(-ten38), Some(ten38), None, Some(12_345_678_901)])
                .with_precision_and_scale(38, 10)
                .unwrap(),
        ),
        Arc::new(
            Decimal128Array::from(vec![
                Some(-9_999_999_999),
                Some(9_999_999_999),
                None,
                Some(5),
            ])
            .with_precision_and_scale(10, 2)
            .unwrap(),
        ),
        Arc::new(Float64Array::from(vec![
            Some(f64::MIN),
            Some(f64::MAX),
            None,
            Some(0.1),
        ])),
        Arc::new(Float32Array::from(vec![
            Some(f32::MIN),
            Some(f32::MAX),
            None,
            Some(1.5),
        ])),
        Arc::new(
            Decimal128Array::from(vec![
                Some(i128::from(i64::MIN)),
                Some(i128::from(i64::MAX)),
                None,
                Some(-123_456_789),
            ])
            .with_precision_and_scale(19, 4)
            .unwrap(),
        ),
        Arc::new(
            Decimal128Array::from(vec![
                Some(i128::from(i32::MIN)),
                Some(i128::from(i32::MAX)),
                None,
                Some(-15_000),
            ])
            .with_precision_and_scale(10, 4)
            .unwrap(),
        ),
        Arc::new(Date32Array::from(vec![
            Some(days(date(1, 1, 1))),
            Some(days(date(9999, 12, 31))),
            None,
            Some(days(date(2024, 2, 29))),
        ])),
        Arc::new(Time64NanosecondArray::from(vec![
            Some(0),
            Some(86_399_999_999_900),
            None,
            Some(45_296_123_456_700),
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(micros(at(date(1753, 1, 1), 0, 0, 0, 0))),
            Some(micros(at(date(9999, 12, 31), 23, 59, 59, 997_000))),
            None,
            Some(micros(at(date(2024, 5, 6), 7, 8, 9, 0))),
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(micros(at(date(1900, 1, 1), 0, 0, 0, 0))),
            Some(micros(at(date(2079, 6, 6), 23, 59, 0, 0))),
            None,
            Some(micros(at(date(2024, 5, 6), 7, 8, 0, 0))),
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(micros(at(date(1, 1, 1), 0, 0, 0, 0))),
            Some(micros(at(date(9999, 12, 31), 23, 59, 59, 999_999))),
            None,
            Some(micros(at(date(2024, 5, 6), 7, 8, 9, 123_456))),
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(micros(at(date(2000, 1, 1), 0, 0, 0, 0))),
                Some(micros(at(date(9999, 12, 30), 12, 0, 0, 0))),
                None,
                Some(micros(at(date(2024, 5, 6), 7, 8, 9, 123_456))),
            ])
            .with_timezone("+00:00"),
        ),
        s([Some(""), Some("abcdefghij"), None, Some("abc")]),
        s([Some(""), Some("café ☃"), None, Some("plain")]),
        Arc::new(StringArray::from(vec![
            Some(""),
            Some(long_a.as_str()),
            None,
            Some("x"),
        ])),
        s([Some(""), Some("αβγδε"), None, Some("ab")]),
        s([Some(""), Some("héllo wörld ✓ 日本語 🎉"), None, Some("n")]),
        Arc::new(StringArray::from(vec![
            Some(""),
            Some(long_u.as_str()),
            None,
            Some("y"),
        ])),
        s([
            Some(GUID),
            Some("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
            None,
            Some(GUID),
        ]),
        Arc::new(BinaryArray::from(vec![
            Some(&[][..]),
            Some(&[1, 2, 3, 4][..]),
            None,
            Some(&[9][..]),
        ])),
        Arc::new(BinaryArray::from(vec![
            Some(&[][..]),
            Some(&[0xDE, 0xAD, 0xBE, 0xEF][..]),
            None,
            Some(&[0][..]),
        ])),
        Arc::new(BinaryArray::from(vec![
            Some(&[][..]),
            Some(blob.as_slice()),
            None,
            Some(&[1, 2][..]),
        ])),
        s([
            Some("<a/>"),
            Some("<root><b>ü</b></root>"),
            None,
            Some("<x>1</x>"),
        ]),
        Arc::new(BinaryArray::from(vec![
            Some(&[0, 0, 0, 0, 0, 0, 0, 1][..]),
            Some(&[0xFF; 8][..]),
            Some(&[0, 0, 0, 0, 0, 0, 0, 3][..]),
            Some(&[0, 0, 0, 0, 0, 0, 0, 4][..]),
        ])),
        s([Some(""), Some("text € value"), None, Some("t")]),
        s([Some(""), Some("ntext ✓ value"), None, Some("nt")]),
        s([Some(""), Some("variant ✓"), None, Some("v")]),
    ];
    let fields: Vec<Field> = columns()
        .iter()
        .zip(&arrays)
        .map(|(c, a)| Field::new(&c.name, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

async fn rows(sql: &str) -> Vec<Row> {
    let server = server(Encryption::Off).await;
    server.create_table("dbo", "AllTypes", columns(), vec![batch()]);
    within("query", async {
        let mut client = connect(&server).await;
        client
            .simple_query(sql)
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap()
    })
    .await
}

fn get<'a, T: tiberius::FromSql<'a>>(row: &'a Row, col: &str) -> Option<T> {
    row.try_get::<T, _>(col)
        .unwrap_or_else(|e| panic!("column {col}: {e}"))
}

#[tokio::test]
async fn every_type_round_trips_with_edge_values() {
    let rows = rows("SELECT * FROM dbo.AllTypes ORDER BY Id").await;
    assert_eq!(rows.len(), 4);
    let (min, max, nulls, plain) = (&rows[0], &rows[1], &rows[2], &rows[3]);

    // Column names and order as declared.
    let names: Vec<&str> = min.columns().iter().map(|c| c.name()).collect();
    let declared: Vec<String> = columns().into_iter().map(|c| c.name).collect();
    assert_eq!(names, declared);

    assert_eq!(get::<u8>(min, "TinyCol"), Some(0));
    assert_eq!(get::<u8>(max, "TinyCol"), Some(255));
    assert_eq!(get::<i16>(min, "SmallCol"), Some(i16::MIN));
    assert_eq!(get::<i16>(max, "SmallCol"), Some(i16::MAX));
    assert_eq!(get::<i32>(min, "IntCol"), Some(i32::MIN));
    assert_eq!(get::<i32>(max, "IntCol"), Some(i32::MAX));
    assert_eq!(get::<i64>(min, "BigCol"), Some(i64::MIN));
    assert_eq!(get::<i64>(max, "BigCol"), Some(i64::MAX));
    assert_eq!(get::<bool>(min, "BitCol"), Some(false));
    assert_eq!(get::<bool>(max, "BitCol"), Some(true));

    let ten38 = 10i128.pow(38) - 1;
    let d: Numeric = get(min, "Dec38").unwrap();
    assert_eq!((d.value(), d.scale()), (-ten38, 10));
    let d: Numeric = get(max, "Dec38").unwrap();
    assert_eq!((d.value(), d.scale()), (ten38, 10));
    let d: Numeric = get(plain, "Dec38").unwrap();
    assert_eq!(d.to_string(), "1.2345678901");
    let n: Numeric = get(min, "Num10").unwrap();
    assert_eq!(n.to_string(), "-99999999.99");

    assert_eq!(get::<f64>(min, "FloatCol"), Some(f64::MIN));
    assert_eq!(get::<f64>(max, "FloatCol"), Some(f64::MAX));
    assert_eq!(get::<f64>(plain, "FloatCol"), Some(0.1));
    assert_eq!(get::<f32>(min, "RealCol"), Some(f32::MIN));
    assert_eq!(get::<f32>(max, "RealCol"), Some(f32::MAX));

    // tiberius reads money as f64.
    assert_eq!(get::<f64>(plain, "MoneyCol"), Some(-12_345.678_9));
    assert_eq!(get::<f64>(min, "MoneyCol"), Some(i64::MIN as f64 / 1e4));
    assert_eq!(get::<f64>(max, "SmallMoneyCol"), Some(214_748.364_7));
    assert_eq!(get::<f64>(plain, "SmallMoneyCol"), Some(-1.5));

    assert_eq!(get::<NaiveDate>(min, "DateCol"), Some(date(1, 1, 1)));
    assert_eq!(get::<NaiveDate>(max, "DateCol"), Some(date(9999, 12, 31)));
    assert_eq!(get::<NaiveDate>(plain, "DateCol"), Some(date(2024, 2, 29)));

    assert_eq!(
        get::<NaiveTime>(max, "TimeCol"),
        NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_900)
    );
    assert_eq!(
        get::<NaiveTime>(plain, "TimeCol"),
        NaiveTime::from_hms_nano_opt(12, 34, 56, 123_456_700)
    );

    // datetime ticks are 1/300 s: .997 travels as 299 ticks.
    assert_eq!(
        get::<NaiveDateTime>(min, "DateTimeCol"),
        Some(at(date(1753, 1, 1), 0, 0, 0, 0))
    );
    let dt: NaiveDateTime = get(max, "DateTimeCol").unwrap();
    let expected = at(date(9999, 12, 31), 23, 59, 59, 997_000);
    assert!((dt - expected).num_milliseconds().abs() <= 1, "{dt}");
    assert_eq!(
        get::<NaiveDateTime>(max, "SmallDateTimeCol"),
        Some(at(date(2079, 6, 6), 23, 59, 0, 0))
    );
    assert_eq!(
        get::<NaiveDateTime>(min, "DateTime2Col"),
        Some(at(date(1, 1, 1), 0, 0, 0, 0))
    );
    assert_eq!(
        get::<NaiveDateTime>(max, "DateTime2Col"),
        Some(at(date(9999, 12, 31), 23, 59, 59, 999_999))
    );

    // datetimeoffset: the same instant, sent with +02:00 on even rows and -05:00 on odd rows.
    let even: DateTime<FixedOffset> = get(min, "DtoCol").unwrap();
    assert_eq!(even.offset().local_minus_utc(), 2 * 3600);
    assert_eq!(
        even.with_timezone(&Utc).naive_utc(),
        at(date(2000, 1, 1), 0, 0, 0, 0)
    );
    assert_eq!(even.naive_local(), at(date(2000, 1, 1), 2, 0, 0, 0));
    // tiberius 0.13 quirk: reading a datetimeoffset as DateTime<Utc> subtracts the offset
    // from the (already UTC) wire value; read DateTime<FixedOffset> instead.
    let skewed: DateTime<Utc> = get(min, "DtoCol").unwrap();
    assert_eq!(skewed.naive_utc(), at(date(1999, 12, 31), 22, 0, 0, 0));
    let odd: DateTime<FixedOffset> = get(max, "DtoCol").unwrap();
    assert_eq!(odd.offset().local_minus_utc(), -5 * 3600);
    assert_eq!(odd.naive_utc(), at(date(9999, 12, 30), 12, 0, 0, 0));

    // char(n) / nchar(n) come back padded, as SQL Server stores them.
    assert_eq!(get::<&str>(min, "CharCol"), Some("          "));
    assert_eq!(get::<&str>(plain, "CharCol"), Some("abc       "));
    assert_eq!(get::<&str>(plain, "NCharCol"), Some("ab   "));
    assert_eq!(get::<&str>(max, "NCharCol"), Some("αβγδε"));
    // varchar is code page 1252: é survives, ☃ does not.
    assert_eq!(get::<&str>(min, "VarCharCol"), Some(""));
    assert_eq!(get::<&str>(max, "VarCharCol"), Some("café ?"));
    assert_eq!(get::<&str>(max, "VarCharMax"), Some(long_ascii().as_str()));
    assert_eq!(get::<&str>(min, "NVarCharCol"), Some(""));
    assert_eq!(
        get::<&str>(max, "NVarCharCol"),
        Some("héllo wörld ✓ 日本語 🎉")
    );
    assert_eq!(get::<&str>(min, "NVarCharMax"), Some(""));
    assert_eq!(
        get::<&str>(max, "NVarCharMax"),
        Some(long_unicode().as_str())
    );

    assert_eq!(
        get::<Uuid>(min, "GuidCol"),
        Some(Uuid::parse_str(GUID).unwrap())
    );
    assert_eq!(
        get::<Uuid>(max, "GuidCol"),
        Some(Uuid::from_u128(u128::MAX))
    );

    assert_eq!(get::<&[u8]>(min, "BinaryCol"), Some(&[0u8, 0, 0, 0][..]));
    assert_eq!(get::<&[u8]>(plain, "BinaryCol"), Some(&[9u8, 0, 0, 0][..]));
    assert_eq!(get::<&[u8]>(min, "VarBinaryCol"), Some(&[][..]));
    assert_eq!(
        get::<&[u8]>(max, "VarBinaryCol"),
        Some(&[0xDE, 0xAD, 0xBE, 0xEF][..])
    );
    assert_eq!(
        get::<&[u8]>(max, "VarBinaryMax"),
        Some(big_blob().as_slice())
    );
    assert_eq!(get::<&[u8]>(min, "VarBinaryMax"), Some(&[][..]));

    let xml: &XmlData = get(max, "XmlCol").unwrap();
    assert_eq!(xml.to_string(), "<root><b>ü</b></root>");
    assert_eq!(get::<&[u8]>(max, "RowVer"), Some(&[0xFF; 8][..]));
    assert_eq!(get::<&str>(max, "TextCol"), Some("text € value"));
    assert_eq!(get::<&str>(min, "TextCol"), Some(""));
    assert_eq!(get::<&str>(max, "NTextCol"), Some("ntext ✓ value"));
    assert_eq!(get::<&str>(max, "VariantCol"), Some("variant ✓"));

    // Row 2: every nullable column is NULL (sent as NBCROW).
    for c in columns().iter().filter(|c| c.nullable) {
        let value = nulls.get::<tiberius::ColumnData<'_>, _>(c.name.as_str());
        let is_null = match value {
            Some(v) => format!("{v:?}").contains("(None)"),
            None => true,
        };
        assert!(is_null, "{} should be NULL", c.name);
    }
    assert_eq!(get::<i32>(nulls, "Id"), Some(2));
    assert_eq!(
        get::<&[u8]>(nulls, "RowVer"),
        Some(&[0, 0, 0, 0, 0, 0, 0, 3][..])
    );
}

#[tokio::test]
async fn type_info_is_what_sql_server_sends() {
    let rows = rows("SELECT TOP (1) * FROM dbo.AllTypes").await;
    let types: Vec<ColumnType> = rows[0].columns().iter().map(|c| c.column_type()).collect();
    use ColumnType::*;
    // tiberius reports INTN(1/2/4/8) as Int1/2/4/8 and FLTN(8/4) as Float8/4.
    assert_eq!(
        types,
        vec![
            Int4,
            Int1,
            Int2,
            Int4,
            Int8,
            Bitn,
            Decimaln,
            Numericn,
            Float8,
            Float4,
            Money,
            Money,
            Daten,
            Timen,
            Datetimen,
            Datetimen,
            Datetime2,
            DatetimeOffsetn,
            BigChar,
            BigVarChar,
            BigVarChar,
            NChar,
            NVarchar,
            NVarchar,
            Guid,
            BigBinary,
            BigVarBin,
            BigVarBin,
            Xml,
            BigBinary,
            Text,
            NText,
            SSVariant,
        ]
    );
}

#[tokio::test]
async fn computed_columns_take_types_from_arrow_and_may_be_unnamed() {
    let rows = rows(
        "SELECT MAX(IntCol), COUNT(*), COUNT_BIG(*), MIN(DateTime2Col) AS FirstSeen, \
         SUM(BigCol) AS total, UPPER(NVarCharCol) FROM dbo.AllTypes GROUP BY NVarCharCol \
         ORDER BY 2",
    )
    .await;
    let cols = rows[0].columns();
    let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["", "", "", "FirstSeen", "total", ""]);
    // MAX of an int column keeps int; COUNT is int; COUNT_BIG bigint; UPPER nvarchar(max).
    assert_eq!(cols[0].column_type(), ColumnType::Int4);
    assert_eq!(cols[1].column_type(), ColumnType::Int4);
    assert_eq!(cols[2].column_type(), ColumnType::Int8);
    assert_eq!(cols[3].column_type(), ColumnType::Datetime2);
    assert_eq!(cols[5].column_type(), ColumnType::NVarchar);
    assert_eq!(rows[0].try_get::<i32, _>(1).unwrap(), Some(1));
    assert_eq!(rows[0].try_get::<i64, _>(2).unwrap(), Some(1));
}
