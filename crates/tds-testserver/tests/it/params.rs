//! sp_executesql with the typed parameters tiberius sends: values filter correctly and are
//! recorded with their declarations.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, RecordBatch, StringArray, Time64NanosecondArray,
    TimestampMicrosecondArray, UInt8Array,
};
use arrow::datatypes::{Field, Schema};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use medlake_tds_testserver::{Column, Encryption, Param, SqlType, TdsServer};
use tiberius::numeric::Numeric;
use tiberius::{Query, ToSql, Uuid};

use crate::common::{TdsClient, connect, server, within};

const IDS: [&str; 3] = [
    "11111111-1111-1111-1111-111111111111",
    "22222222-2222-2222-2222-222222222222",
    "33333333-3333-3333-3333-333333333333",
];

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn epoch_days(d: NaiveDate) -> i32 {
    (d - day(1970, 1, 1)).num_days() as i32
}

fn ts(d: NaiveDate, h: u32) -> NaiveDateTime {
    d.and_hms_opt(h, 0, 0).unwrap()
}

async fn patients() -> TdsServer {
    let server = server(Encryption::Off).await;
    let columns = vec![
        Column::new("Id", SqlType::Int).not_null(),
        Column::new("Name", SqlType::NVarChar(Some(100))),
        Column::new("Born", SqlType::Date),
        Column::new(
            "Weight",
            SqlType::Decimal {
                precision: 5,
                scale: 2,
            },
        ),
        Column::new("Score", SqlType::Float),
        Column::new("Active", SqlType::Bit),
        Column::new("Updated", SqlType::DateTime2 { scale: 7 }),
        Column::new("Code", SqlType::UniqueIdentifier),
        Column::new("Blob", SqlType::VarBinary(None)),
        Column::new("Seen", SqlType::DateTimeOffset { scale: 7 }),
        Column::new("Small", SqlType::SmallInt),
        Column::new("Tiny", SqlType::TinyInt),
        Column::new("Big", SqlType::BigInt),
        Column::new("Ratio", SqlType::Real),
        Column::new("Wake", SqlType::Time { scale: 7 }),
    ];
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![1, 2, 3])),
        Arc::new(StringArray::from(vec![Some("Ada"), Some("Bob"), None])),
        Arc::new(Date32Array::from(vec![
            epoch_days(day(1990, 1, 1)),
            epoch_days(day(2000, 6, 15)),
            epoch_days(day(2010, 12, 31)),
        ])),
        Arc::new(
            Decimal128Array::from(vec![6050, 8012, 9999])
                .with_precision_and_scale(5, 2)
                .unwrap(),
        ),
        Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5])),
        Arc::new(BooleanArray::from(vec![true, false, true])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            ts(day(2024, 1, 1), 8).and_utc().timestamp_micros(),
            ts(day(2024, 1, 2), 8).and_utc().timestamp_micros(),
            ts(day(2024, 1, 3), 8).and_utc().timestamp_micros(),
        ])),
        Arc::new(StringArray::from(IDS.to_vec())),
        Arc::new(BinaryArray::from(vec![
            &[1u8][..],
            &[2, 2][..],
            &[3, 3, 3][..],
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![
                ts(day(2024, 3, 1), 10).and_utc().timestamp_micros(),
                ts(day(2024, 3, 2), 10).and_utc().timestamp_micros(),
                ts(day(2024, 3, 3), 10).and_utc().timestamp_micros(),
            ])
            .with_timezone("+00:00"),
        ),
        Arc::new(Int16Array::from(vec![-1, 0, 1])),
        Arc::new(UInt8Array::from(vec![10, 20, 30])),
        Arc::new(Int64Array::from(vec![i64::MIN, 0, i64::MAX])),
        Arc::new(Float32Array::from(vec![0.25, 0.5, 0.75])),
        Arc::new(Time64NanosecondArray::from(vec![
            6 * 3_600_000_000_000,
            7 * 3_600_000_000_000,
            8 * 3_600_000_000_000,
        ])),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .zip(&arrays)
        .map(|(c, a)| Field::new(&c.name, a.data_type().clone(), c.nullable))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    server.create_table("dbo", "Patients", columns, vec![batch]);
    server
}

async fn ids(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> Vec<i32> {
    let rows = client
        .query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_first_result()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| r.try_get::<i32, _>(0).unwrap().unwrap())
        .collect()
}

fn param(name: &str, type_decl: &str, value: &str) -> Param {
    Param {
        name: name.into(),
        type_decl: type_decl.into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn typed_parameters_filter_and_are_recorded() {
    let server = patients().await;
    within("parameter queries", async {
        let mut c = connect(&server).await;
        server.clear_received();

        let sql =
            "SELECT [Id] FROM [dbo].[Patients] WHERE [Id] > @P1 AND [Name] LIKE @P2 ORDER BY [Id]";
        assert_eq!(ids(&mut c, sql, &[&1i32, &"B%"]).await, vec![2]);
        let received = server.received();
        assert_eq!(received.len(), 1);
        assert!(received[0].rpc);
        assert_eq!(received[0].sql, sql);
        assert_eq!(
            received[0].params,
            vec![
                param("@P1", "int", "1"),
                param("@P2", "nvarchar(4000)", "B%")
            ]
        );

        server.clear_received();
        let born = day(2000, 1, 1);
        let weight = Numeric::new_with_scale(8012, 2);
        let got = ids(
            &mut c,
            "SELECT Id FROM dbo.Patients WHERE Born >= @P1 AND Weight = @P2 AND Score > @P3 \
             AND Active = @P4 AND Big = @P5 AND Small = @P6 AND Tiny = @P7 AND Ratio = @P8",
            &[
                &born, &weight, &1.0f64, &false, &0i64, &0i16, &20u8, &0.5f32,
            ],
        )
        .await;
        assert_eq!(got, vec![2]);
        assert_eq!(
            server.received()[0].params,
            vec![
                param("@P1", "date", "2000-01-01"),
                param("@P2", "numeric(4,2)", "80.12"),
                param("@P3", "float(53)", "1"),
                param("@P4", "bit", "0"),
                param("@P5", "bigint", "0"),
                param("@P6", "smallint", "0"),
                param("@P7", "tinyint", "20"),
                param("@P8", "float(24)", "0.5"),
            ]
        );

        server.clear_received();
        let updated = ts(day(2024, 1, 2), 0);
        let code = Uuid::parse_str(IDS[2]).unwrap();
        let seen: DateTime<FixedOffset> = FixedOffset::east_opt(2 * 3600)
            .unwrap()
            .from_local_datetime(&ts(day(2024, 3, 2), 12))
            .unwrap(); // 10:00 UTC
        let wake = NaiveTime::from_hms_opt(7, 0, 0).unwrap();
        let blob: &[u8] = &[2, 2];
        assert_eq!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Updated > @P1 ORDER BY Id",
                &[&updated]
            )
            .await,
            vec![2, 3]
        );
        assert_eq!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Code = @P1",
                &[&code]
            )
            .await,
            vec![3]
        );
        assert_eq!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Seen = @P1",
                &[&seen]
            )
            .await,
            vec![2]
        );
        assert_eq!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Wake = @P1",
                &[&wake]
            )
            .await,
            vec![2]
        );
        assert_eq!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Blob = @P1",
                &[&blob]
            )
            .await,
            vec![2]
        );
        let recorded: Vec<Param> = server
            .received()
            .into_iter()
            .flat_map(|r| r.params)
            .collect();
        assert_eq!(
            recorded,
            vec![
                param("@P1", "datetime2", "2024-01-02 00:00:00.0000000"),
                param("@P1", "uniqueidentifier", IDS[2]),
                param(
                    "@P1",
                    "datetimeoffset",
                    "2024-03-02 12:00:00.0000000 +02:00"
                ),
                param("@P1", "time", "07:00:00.0000000"),
                param("@P1", "varbinary(8000)", "0x0202"),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn null_parameters_and_query_builder() {
    let server = patients().await;
    within("null parameters", async {
        let mut c = connect(&server).await;
        server.clear_received();
        // A NULL compares unknown: no rows, as in SQL Server.
        let none: Option<i32> = None;
        assert!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Id = @P1",
                &[&none]
            )
            .await
            .is_empty()
        );
        let no_text: Option<&str> = None;
        assert_eq!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Name IS NULL OR Name = @P1",
                &[&no_text]
            )
            .await,
            vec![3]
        );
        let recorded: Vec<Param> = server
            .received()
            .into_iter()
            .flat_map(|r| r.params)
            .collect();
        assert_eq!(
            recorded,
            vec![
                param("@P1", "int", "NULL"),
                param("@P1", "nvarchar(4000)", "NULL")
            ]
        );

        // tiberius's Query builder sends the same RPC.
        let mut q = Query::new("SELECT Id FROM dbo.Patients WHERE Id IN (@P1, @P2) ORDER BY Id");
        q.bind(3i32);
        q.bind(1i32);
        let rows = q
            .query(&mut c)
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        let got: Vec<i32> = rows
            .iter()
            .map(|r| r.try_get::<i32, _>(0).unwrap().unwrap())
            .collect();
        assert_eq!(got, vec![1, 3]);

        // A long string parameter travels as nvarchar(max).
        server.clear_received();
        let long = "x".repeat(5000);
        assert!(
            ids(
                &mut c,
                "SELECT Id FROM dbo.Patients WHERE Name = @P1",
                &[&long.as_str()]
            )
            .await
            .is_empty()
        );
        assert_eq!(server.received()[0].params[0].type_decl, "nvarchar(max)");
        assert_eq!(server.received()[0].params[0].value, long);
    })
    .await;
}

#[tokio::test]
async fn undeclared_parameter_is_error_137() {
    let server = patients().await;
    within("undeclared parameter", async {
        let mut c = connect(&server).await;
        let err = c
            .query("SELECT Id FROM dbo.Patients WHERE Id = @P2", &[&1i32])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(137));
        assert!(
            err.to_string()
                .contains("Must declare the scalar variable \"@P2\"")
        );
    })
    .await;
}
