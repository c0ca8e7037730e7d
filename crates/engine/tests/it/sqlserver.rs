//! The `sqlserver` connector end to end: SQL through the engine, tiberius on the wire, and the
//! TDS test server really running the T-SQL it receives (crates/tds-testserver). The login
//! comes from `${MEDLAKE_TEST_TDS_USER}` / `${MEDLAKE_TEST_TDS_PASSWORD}` (.cargo/config.toml).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray,
    Time64NanosecondArray, TimestampMicrosecondArray, UInt8Array,
};
use arrow::datatypes::{Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Code, Engine};
use medlake_tds_testserver::{Column, Encryption, Fault, ServerConfig, SqlType, TdsServer};

use super::{count, scratch};

const PASSWORD_ENV: &str = "MEDLAKE_TEST_TDS_PASSWORD";

fn password() -> String {
    std::env::var(PASSWORD_ENV).expect("set by .cargo/config.toml")
}

async fn server(encryption: Encryption) -> TdsServer {
    let user = std::env::var("MEDLAKE_TEST_TDS_USER").expect("set by .cargo/config.toml");
    TdsServer::start(
        ServerConfig {
            encryption,
            database: "EHR".into(),
            ..ServerConfig::default()
        }
        .with_user(user, password()),
    )
    .await
    .expect("the TDS test server starts")
}

/// OPTIONS for a table of `server`, plaintext unless `extra` says otherwise.
fn options(server: &TdsServer, table: &str, extra: &str) -> String {
    let encrypt = if extra.contains("'encrypt'") {
        String::new()
    } else {
        "'encrypt' 'false', ".to_string()
    };
    format!(
        "LOCATION 'sqlserver://127.0.0.1:{}/EHR' OPTIONS ({encrypt}'table' '{table}', \
         'user' '${{MEDLAKE_TEST_TDS_USER}}', 'password' '${{{PASSWORD_ENV}}}'{extra})",
        server.port()
    )
}

async fn create_schema(engine: &Engine, schema: &str) {
    engine
        .sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .unwrap();
}

fn pretty(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

fn batch(columns: Vec<ArrayRef>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// dbo.Patients: 100 patients, ids 1..=100, every tenth without a ward.
fn patients(server: &TdsServer) {
    let ids: Vec<i32> = (1..=100).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("Patient {i:03}")).collect();
    let wards: Vec<Option<&str>> = ids
        .iter()
        .map(|i| match i % 10 {
            0 => None,
            1..=4 => Some("ICU"),
            _ => Some("Cardiology"),
        })
        .collect();
    let born: Vec<i32> = ids.iter().map(|i| -3650 + i * 100).collect();
    server.create_table(
        "dbo",
        "Patients",
        vec![
            Column::new("PatientID", SqlType::Int).not_null(),
            Column::new("Name", SqlType::NVarChar(Some(100))),
            Column::new("Ward", SqlType::VarChar(Some(40))),
            Column::new("BirthDate", SqlType::Date),
        ],
        vec![batch(vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(wards)),
            Arc::new(Date32Array::from(born)),
        ])],
    );
}

#[tokio::test]
async fn every_type_round_trips_with_nulls_and_edge_values() {
    let server = server(Encryption::NotSupported).await;
    let long_text = "é∑".repeat(3000); // > 8000 bytes as UTF-16: travels as PLP (max)
    let big_blob: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let micros = |days: i64, us: i64| days * 86_400_000_000 + us;
    server.create_table(
        "dbo",
        "AllTypes",
        vec![
            Column::new("id", SqlType::Int).not_null(),
            Column::new("tiny", SqlType::TinyInt),
            Column::new("small", SqlType::SmallInt),
            Column::new("big", SqlType::BigInt),
            Column::new("flag", SqlType::Bit),
            Column::new(
                "dose",
                SqlType::Decimal {
                    precision: 38,
                    scale: 6,
                },
            ),
            Column::new(
                "ratio",
                SqlType::Numeric {
                    precision: 5,
                    scale: 2,
                },
            ),
            Column::new("weight", SqlType::Float),
            Column::new("temp", SqlType::Real),
            Column::new("charge", SqlType::Money),
            Column::new("copay", SqlType::SmallMoney),
            Column::new("born", SqlType::Date),
            Column::new("at_time", SqlType::Time { scale: 7 }),
            Column::new("legacy_ts", SqlType::DateTime),
            Column::new("small_ts", SqlType::SmallDateTime),
            Column::new("ts2", SqlType::DateTime2 { scale: 7 }),
            Column::new("ts_off", SqlType::DateTimeOffset { scale: 7 }),
            Column::new("code", SqlType::Char(4)),
            Column::new("note", SqlType::VarChar(Some(50))),
            Column::new("ncode", SqlType::NChar(3)),
            Column::new("story", SqlType::NVarChar(None)),
            Column::new("guid", SqlType::UniqueIdentifier),
            Column::new("blob", SqlType::VarBinary(None)),
            Column::new("fixed", SqlType::Binary(4)),
            Column::new("doc", SqlType::Xml),
            Column::new("rv", SqlType::RowVersion),
        ],
        vec![batch(vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(UInt8Array::from(vec![Some(0), Some(255), None])),
            Arc::new(Int16Array::from(vec![Some(i16::MIN), Some(i16::MAX), None])),
            Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX), None])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(
                Decimal128Array::from(vec![
                    Some(99_999_999_999_999_999_999_999_999_999_999_999_999i128),
                    Some(-1_500_000),
                    None,
                ])
                .with_precision_and_scale(38, 6)
                .unwrap(),
            ),
            Arc::new(
                Decimal128Array::from(vec![Some(-99_999), Some(1), None])
                    .with_precision_and_scale(5, 2)
                    .unwrap(),
            ),
            Arc::new(Float64Array::from(vec![Some(70.25), Some(-1e300), None])),
            Arc::new(Float32Array::from(vec![Some(36.6), Some(f32::MAX), None])),
            Arc::new(
                Decimal128Array::from(vec![
                    Some(9_223_372_036_854_775_807i128),
                    Some(-12_345_678),
                    None,
                ])
                .with_precision_and_scale(19, 4)
                .unwrap(),
            ),
            Arc::new(
                Decimal128Array::from(vec![Some(2_147_483_647i128), Some(-2_147_483_648), None])
                    .with_precision_and_scale(10, 4)
                    .unwrap(),
            ),
            Arc::new(Date32Array::from(vec![
                Some(-719_162),
                Some(2_932_896),
                None,
            ])),
            Arc::new(Time64NanosecondArray::from(vec![
                Some(86_399_999_999_000),
                Some(0),
                None,
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(micros(-25_567, 0)),
                Some(micros(20_000, 3_000)),
                None,
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(micros(20_000, 60_000_000)),
                Some(micros(0, 0)),
                None,
            ])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(micros(-719_162, 0)),
                Some(micros(2_932_896, 86_399_999_999)),
                None,
            ])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(micros(20_415, 36_000_000_000)),
                    Some(micros(20_415, 36_000_000_000)),
                    None,
                ])
                .with_timezone("+00:00"),
            ),
            Arc::new(StringArray::from(vec![Some("AB12"), Some("    "), None])),
            Arc::new(StringArray::from(vec![Some(""), Some("it's; DROP"), None])),
            Arc::new(StringArray::from(vec![Some("日本語"), Some("abc"), None])),
            Arc::new(StringArray::from(vec![
                Some(long_text.as_str()),
                Some("x"),
                None,
            ])),
            Arc::new(StringArray::from(vec![
                Some("6F9619FF-8B86-D011-B42D-00C04FC964FF"),
                Some("00000000-0000-0000-0000-000000000001"),
                None,
            ])),
            Arc::new(BinaryArray::from(vec![
                Some(big_blob.as_slice()),
                Some(&b""[..]),
                None,
            ])),
            Arc::new(BinaryArray::from(vec![
                Some(&[1u8, 2, 3, 4][..]),
                Some(&[0u8, 0, 0, 0][..]),
                None,
            ])),
            Arc::new(StringArray::from(vec![
                Some("<obs code=\"8867-4\">72</obs>"),
                Some("<a/>"),
                None,
            ])),
            Arc::new(BinaryArray::from(vec![
                &[0u8, 0, 0, 0, 0, 0, 7, 209][..],
                &[0u8, 0, 0, 0, 0, 0, 7, 210][..],
                &[0u8, 0, 0, 0, 0, 0, 7, 211][..],
            ])),
        ])],
    );
    let (_dir, engine) = scratch().await;
    create_schema(&engine, "ehr").await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE ehr.all_types STORED AS SQLSERVER {}",
            options(&server, "dbo.AllTypes", "")
        ))
        .await
        .expect("create external table");

    // The schema, as mapped from INFORMATION_SCHEMA.COLUMNS.
    let types = engine
        .query(
            "SELECT arrow_typeof(id), arrow_typeof(tiny), arrow_typeof(dose), \
             arrow_typeof(charge), arrow_typeof(copay), arrow_typeof(at_time), arrow_typeof(ts2), \
             arrow_typeof(ts_off), arrow_typeof(guid), arrow_typeof(rv) FROM ehr.all_types LIMIT 1",
        )
        .await
        .unwrap();
    let types: Vec<String> = types[0]
        .columns()
        .iter()
        .map(|c| {
            c.as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0)
                .to_string()
        })
        .collect();
    assert_eq!(
        types,
        [
            "Int32",
            "UInt8",
            "Decimal128(38, 6)",
            "Decimal128(19, 4)",
            "Decimal128(10, 4)",
            "Time64(ns)",
            "Timestamp(µs)",
            "Timestamp(µs, \"UTC\")",
            "Utf8",
            "Binary"
        ]
    );

    let rows = engine
        .query(
            "SELECT id, tiny, small, big, flag, CAST(dose AS VARCHAR) AS dose, ratio, weight, temp, \
             charge, copay, born, at_time, legacy_ts, small_ts, ts2, ts_off, code, note, ncode, \
             guid, fixed, doc, rv FROM ehr.all_types ORDER BY id",
        )
        .await
        .unwrap();
    let text = pretty(&rows);
    // datetime keeps SQL Server's 1/300 s ticks (.003 arrives as .003333); datetimeoffset
    // values were sent at +02:00 / -05:00 and read as the UTC instant.
    for expected in [
        "| 1  | 0    | -32768 | -9223372036854775808 | true  | 99999999999999999999999999999999.999999 | -999.99 | 70.25  | 36.6         | 922337203685477.5807 | 214748.3647  | 0001-01-01 | 23:59:59.999999 | 1900-01-01T00:00:00        | 2024-10-04T00:01:00 | 0001-01-01T00:00:00        | 2025-11-23T10:00:00Z | AB12 |            | 日本語 | 6F9619FF-8B86-D011-B42D-00C04FC964FF | 01020304 | <obs code=\"8867-4\">72</obs> | 00000000000007d1 |",
        "| 2  | 255  | 32767  | 9223372036854775807  | false | -1.500000                               | 0.01    | -1e300 | 3.4028235e38 | -1234.5678           | -214748.3648 | 9999-12-31 | 00:00:00        | 2024-10-04T00:00:00.003333 | 1970-01-01T00:00:00 | 9999-12-31T23:59:59.999999 | 2025-11-23T10:00:00Z |      | it's; DROP | abc    | 00000000-0000-0000-0000-000000000001 | 00000000 | <a/>                        | 00000000000007d2 |",
        "| 3  |      |        |                      |       |                                         |         |        |              |                      |              |            |                 |                            |                     |                            |                      |      |            |        |                                      |          |                             | 00000000000007d3 |",
    ] {
        assert!(text.contains(expected), "{expected}\nnot in\n{text}");
    }
    // Long text and large binary arrive whole; empty values stay empty, not NULL.
    let sizes = engine
        .query(
            "SELECT character_length(story) AS chars, note IS NULL AS note_null, \
             octet_length(note) AS note_len FROM ehr.all_types ORDER BY id",
        )
        .await
        .unwrap();
    let sizes = pretty(&sizes);
    assert!(
        sizes.contains("| 6000  | false     | 0        |"),
        "{sizes}"
    );
    assert!(
        sizes.contains("| 1     | false     | 10       |"),
        "{sizes}"
    );
    let blobs = engine
        .query("SELECT blob FROM ehr.all_types ORDER BY id")
        .await
        .unwrap();
    let blobs = blobs[0]
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap();
    assert_eq!(blobs.value(0), big_blob.as_slice());
    assert_eq!(blobs.value(1), b"");
    assert!(blobs.is_null(2));
}

#[tokio::test]
async fn an_unsupported_column_type_is_refused_naming_the_column() {
    let server = server(Encryption::NotSupported).await;
    server.create_table(
        "dbo",
        "Odd",
        vec![
            Column::new("id", SqlType::Int).not_null(),
            Column::new("anything", SqlType::SqlVariant),
        ],
        vec![],
    );
    let (_dir, engine) = scratch().await;
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.odd STORED AS SQLSERVER {}",
            options(&server, "dbo.Odd", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV004", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("'anything'") && message.contains("sql_variant"),
        "{message}"
    );
    // Nothing was created; a declared subset of the columns leaves the odd one out.
    assert!(engine.query("SELECT * FROM public.odd").await.is_err());
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.odd (id INT) STORED AS SQLSERVER {}",
            options(&server, "dbo.Odd", "")
        ))
        .await
        .expect("a column list picks the readable columns");
    assert_eq!(count(&engine, "SELECT count(*) FROM public.odd").await, 0);
}

#[tokio::test]
async fn filters_projections_and_limits_reach_the_server_as_parameters() {
    let server = server(Encryption::NotSupported).await;
    patients(&server);
    let (_dir, engine) = scratch().await;
    create_schema(&engine, "ehr").await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE ehr.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", "")
        ))
        .await
        .unwrap();
    server.clear_received();

    let rows = engine
        .query(
            "SELECT patientid, name FROM ehr.patients \
             WHERE patientid BETWEEN 10 AND 40 AND ward IN ('ICU', 'Nowhere') \
             AND name LIKE 'Patient 0%' AND NOT (patientid = 12) AND birthdate IS NOT NULL \
             ORDER BY patientid",
        )
        .await
        .unwrap();
    let ids: Vec<i32> = rows
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, vec![11, 13, 14, 21, 22, 23, 24, 31, 32, 33, 34]);
    let received = server.received();
    let scan = received
        .iter()
        .find(|r| r.sql.contains("[dbo].[Patients]"))
        .expect("a scan reached the server");
    // Only the columns the query needs; every value a parameter, every name quoted.
    assert!(
        scan.sql.starts_with("SELECT [PatientID], [Name]"),
        "{}",
        scan.sql
    );
    assert!(!scan.sql.contains("[BirthDate],"), "{}", scan.sql);
    // (DataFusion's optimizer has already turned BETWEEN, the short IN list and NOT (=)
    // into comparisons.)
    for fragment in [
        "([PatientID] >= @P",
        "([PatientID] <= @P",
        "(([Ward] = @P1) OR ([Ward] = @P2))",
        "([Name] LIKE @P",
        "([PatientID] <> @P",
        "([BirthDate] IS NOT NULL)",
    ] {
        assert!(scan.sql.contains(fragment), "{fragment} in {}", scan.sql);
    }
    for literal in ["ICU", "Nowhere", "Patient 0", "40"] {
        assert!(
            !scan.sql.contains(literal),
            "{literal} spliced into {}",
            scan.sql
        );
    }
    let values: Vec<&str> = scan.params.iter().map(|p| p.value.as_str()).collect();
    assert!(
        values.contains(&"ICU") && values.contains(&"Patient 0%"),
        "{values:?}"
    );

    // LIMIT travels as TOP when every filter means the same on both sides.
    server.clear_received();
    let limited = engine
        .query("SELECT patientid FROM ehr.patients WHERE patientid > 50 LIMIT 3")
        .await
        .unwrap();
    assert_eq!(limited.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    let scan = &server.received()[0];
    assert!(
        scan.sql.starts_with("SELECT TOP (3) [PatientID]"),
        "{}",
        scan.sql
    );

    // Text comparisons follow SQL Server's (case-insensitive) collation: DataFusion checks
    // them again, so the answer is DataFusion's.
    let exact = count(
        &engine,
        "SELECT count(*) FROM ehr.patients WHERE ward = 'icu'",
    )
    .await;
    assert_eq!(exact, 0);
    // What cannot be translated (a function of a column) is applied after the scan.
    let computed = count(
        &engine,
        "SELECT count(*) FROM ehr.patients WHERE patientid % 7 = 0 AND ward = 'ICU'",
    )
    .await;
    assert_eq!(computed, 6); // 14, 21, 42, 63, 84, 91
}

#[tokio::test]
async fn names_and_values_cannot_inject_t_sql() {
    let server = server(Encryption::NotSupported).await;
    let hostile_column = "x]; DROP TABLE dbo.Patients; --";
    server.create_table(
        "dbo",
        "Odd]Name",
        vec![
            Column::new("id", SqlType::Int).not_null(),
            Column::new(hostile_column, SqlType::NVarChar(Some(50))),
        ],
        vec![batch(vec![
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![
                "'; DROP TABLE dbo.Patients; --",
                "ok",
            ])),
        ])],
    );
    patients(&server);
    let (_dir, engine) = scratch().await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.odd STORED AS SQLSERVER {}",
            options(&server, "[dbo].[Odd]]Name]", "")
        ))
        .await
        .unwrap();
    let hostile_value = "'; DROP TABLE dbo.Patients; --";
    let rows = engine
        .query(&format!(
            "SELECT id FROM public.odd WHERE \"{}\" = '{}'",
            hostile_column.to_lowercase(),
            hostile_value.replace('\'', "''")
        ))
        .await
        .unwrap();
    assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    let scan = server
        .received()
        .into_iter()
        .find(|r| r.sql.contains("[Odd]]Name]"))
        .unwrap();
    assert!(
        scan.sql.contains("[x]]; DROP TABLE dbo.Patients; --]"),
        "{}",
        scan.sql
    );
    assert!(!scan.sql.contains(hostile_value), "{}", scan.sql);
    // The patients are still there.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", "")
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM public.patients").await,
        100
    );
}

#[tokio::test]
async fn partitioned_reads_cover_the_range_in_parallel_statements() {
    let server = server(Encryption::NotSupported).await;
    patients(&server);
    let (_dir, engine) = scratch().await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(
                &server,
                "dbo.Patients",
                ", 'partition_column' 'PatientID', 'lower_bound' '20', 'upper_bound' '80', \
                 'num_partitions' '4', 'batch_size' '7'"
            )
        ))
        .await
        .unwrap();
    server.clear_received();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM public.patients").await,
        100
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(DISTINCT patientid) FROM public.patients"
        )
        .await,
        100
    );
    let scans: Vec<String> = server
        .received()
        .into_iter()
        .map(|r| r.sql)
        .filter(|s| s.contains("[dbo].[Patients]"))
        .collect();
    assert_eq!(scans.len(), 8, "{scans:#?}"); // 4 partitions, two queries
    assert!(
        scans
            .iter()
            .any(|s| s.contains("[PatientID] < @P1 OR [PatientID] IS NULL"))
    );
    assert!(
        scans
            .iter()
            .any(|s| s.contains("[PatientID] >= @P1 AND [PatientID] < @P2"))
    );
    assert!(scans.iter().any(|s| s.ends_with("([PatientID] >= @P1)")));
    let plan = pretty(
        &engine
            .query("EXPLAIN SELECT * FROM public.patients")
            .await
            .unwrap(),
    );
    assert!(
        plan.contains("SqlServerExec") && plan.contains("partitions=4"),
        "{plan}"
    );
}

#[tokio::test]
async fn a_watermark_makes_bronze_refreshes_pull_only_changed_rows() {
    let server = server(Encryption::NotSupported).await;
    let readings = |ids: std::ops::RangeInclusive<i64>, modified_day: i64| {
        let ids: Vec<i64> = ids.collect();
        let at: Vec<i64> = ids
            .iter()
            .map(|i| modified_day * 86_400_000_000 + i * 1_000_000)
            .collect();
        let hr: Vec<f64> = ids.iter().map(|i| 60.0 + *i as f64).collect();
        batch(vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(Float64Array::from(hr)),
            Arc::new(TimestampMicrosecondArray::from(at)),
        ])
    };
    let columns = || {
        vec![
            Column::new("ReadingID", SqlType::BigInt).not_null(),
            Column::new("HeartRate", SqlType::Float),
            Column::new("ModifiedAt", SqlType::DateTime2 { scale: 7 }).not_null(),
        ]
    };
    server.create_table("dbo", "Readings", columns(), vec![readings(1..=50, 20_000)]);
    let (_dir, engine) = scratch().await;
    create_schema(&engine, "ehr").await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE ehr.readings STORED AS SQLSERVER {}",
            options(&server, "dbo.Readings", ", 'watermark' 'ModifiedAt'")
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.readings AS SELECT * FROM ehr.readings")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.readings").await,
        50
    );

    // Unchanged source: nothing read but the high mark, nothing committed.
    server.clear_received();
    let outcome = engine
        .refresh("bronze.readings", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].status.as_str(), "skipped", "{:?}", outcome[0]);
    assert!(
        server
            .received()
            .iter()
            .all(|r| r.sql.starts_with("SELECT MAX("))
    );

    // New rows and a changed row (a later ModifiedAt): only they are pulled and appended.
    server.append_rows("dbo", "Readings", vec![readings(51..=60, 20_001)]);
    server.append_rows("dbo", "Readings", vec![readings(7..=7, 20_002)]);
    server.clear_received();
    let outcome = engine
        .refresh("bronze.readings", false, false)
        .await
        .unwrap();
    let outcome = &outcome[0];
    assert_eq!(outcome.mode, "incremental", "{outcome:?}");
    assert_eq!(outcome.rows_written, 11, "{outcome:?}");
    assert!(
        outcome.reason.contains("watermark modifiedat"),
        "{}",
        outcome.reason
    );
    let scan = server
        .received()
        .into_iter()
        .find(|r| r.sql.contains("FROM [dbo].[Readings] WHERE"))
        .expect("an incremental scan");
    assert!(
        scan.sql
            .contains("([ModifiedAt] > @P1 AND [ModifiedAt] <= @P2)"),
        "{}",
        scan.sql
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.readings").await,
        61
    );
    // Bronze keeps every version of a changed row; silver picks the latest.
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.readings WHERE readingid = 7"
        )
        .await,
        2
    );
    let history = engine
        .query(
            "SELECT mode, status FROM system.refreshes WHERE view = 'bronze.readings' \
             ORDER BY started",
        )
        .await
        .unwrap();
    let history = pretty(&history);
    assert!(history.contains("incremental | succeeded"), "{history}");

    // FULL re-extracts everything up to the current mark.
    let outcome = engine
        .refresh("bronze.readings", true, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].rows_written, 61);
}

#[tokio::test]
async fn tls_required_and_login_only_encryption_connect() {
    for (encryption, extra) in [
        (
            Encryption::Required,
            ", 'encrypt' 'true', 'trust_server_certificate' 'true'",
        ),
        (
            Encryption::Off,
            ", 'encrypt' 'login', 'trust_server_certificate' 'true'",
        ),
    ] {
        let server = server(encryption).await;
        patients(&server);
        let (_dir, engine) = scratch().await;
        engine
            .sql(&format!(
                "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
                options(&server, "dbo.Patients", extra)
            ))
            .await
            .unwrap_or_else(|e| panic!("{encryption:?}: {e}"));
        assert_eq!(
            count(&engine, "SELECT count(*) FROM public.patients").await,
            100
        );
        let logins = server.logins();
        assert!(
            logins.iter().all(|l| l.encrypted && l.success),
            "{encryption:?}: {logins:?}"
        );
    }
    // A server that requires TLS refuses a client that will not encrypt.
    let server = server(Encryption::Required).await;
    patients(&server);
    let (_dir, engine) = scratch().await;
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
    // Without trusting it, a self-signed certificate is refused.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", ", 'encrypt' 'true', 'retries' '0'")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
}

#[tokio::test]
async fn a_refused_login_reports_the_servers_message_and_never_the_password() {
    let server = TdsServer::start(
        ServerConfig {
            encryption: Encryption::NotSupported,
            database: "EHR".into(),
            ..ServerConfig::default()
        }
        .with_user("someone_else", "whatever"),
    )
    .await
    .unwrap();
    patients(&server);
    let (dir, engine) = scratch().await;
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("Login failed for user 'medlake_reader'"),
        "{message}"
    );
    assert!(message.contains("18456"), "{message}");
    assert!(!message.contains(&password()), "{message}");
    // A literal password is refused before anything is stored.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.p STORED AS SQLSERVER LOCATION 'sqlserver://127.0.0.1:{}/EHR' \
             OPTIONS ('table' 'dbo.Patients', 'user' 'sa', 'password' 'Sup3rSecret!')",
            server.port()
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    assert!(!err.to_string().contains("Sup3rSecret"), "{err}");
    // An unset variable is named.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.p STORED AS SQLSERVER LOCATION 'sqlserver://127.0.0.1:{}/EHR' \
             OPTIONS ('encrypt' 'false', 'table' 'dbo.Patients', 'user' 'sa', 'password' '${{MEDLAKE_SURELY_UNSET_VARIABLE}}')",
            server.port()
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("MEDLAKE_SURELY_UNSET_VARIABLE"),
        "{err}"
    );
    // What the catalog stores holds the reference only.
    let good = TdsServer::start(
        ServerConfig {
            encryption: Encryption::NotSupported,
            database: "EHR".into(),
            ..ServerConfig::default()
        }
        .with_user("medlake_reader", password()),
    )
    .await
    .unwrap();
    patients(&good);
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(&good, "dbo.Patients", "")
        ))
        .await
        .unwrap();
    let stored =
        std::fs::read_to_string(dir.path().join("wh/public/patients/_medlake_external.json"))
            .unwrap();
    assert!(stored.contains("${MEDLAKE_TEST_TDS_PASSWORD}"), "{stored}");
    assert!(!stored.contains(&password()), "{stored}");
}

#[tokio::test]
async fn an_unreachable_server_fails_after_retries_with_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, engine) = scratch().await;
    let started = std::time::Instant::now();
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.p STORED AS SQLSERVER LOCATION 'sqlserver://127.0.0.1:{port}/EHR' \
             OPTIONS ('encrypt' 'false', 'table' 'dbo.Patients', 'user' '${{MEDLAKE_TEST_TDS_USER}}', \
             'password' '${{{PASSWORD_ENV}}}', 'retries' '2')"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FdwUnableToEstablishConnection, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("sqlserver://127.0.0.1:{port}/EHR")),
        "{err}"
    );
    // Two retries: 0.2 s + 0.4 s of backoff.
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn a_connection_dropped_mid_read_leaves_bronze_unchanged() {
    let server = server(Encryption::NotSupported).await;
    patients(&server);
    let (_dir, engine) = scratch().await;
    create_schema(&engine, "ehr").await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE ehr.patients STORED AS SQLSERVER {}",
            options(
                &server,
                "dbo.Patients",
                ", 'batch_size' '10', 'retries' '0'"
            )
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.patients AS SELECT * FROM ehr.patients")
        .await
        .unwrap();
    let version = |engine: &Engine| {
        let engine = engine.clone();
        async move {
            count(
                &engine,
                "SELECT max(version) FROM table_history('bronze.patients')",
            )
            .await
        }
    };
    let before = version(&engine).await;

    server.set_fault(Some(Fault::DropConnectionAfterRows(35)));
    let err = engine
        .refresh("bronze.patients", false, false)
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV000", "{err:?}");
    assert!(err.to_string().contains("connection was lost"), "{err}");
    assert_eq!(version(&engine).await, before);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.patients").await,
        100
    );

    // The server goes away while rows are streaming.
    server.set_fault(Some(Fault::DelayPerRow(Duration::from_millis(5))));
    let refresh = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.refresh("bronze.patients", true, false).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown().await;
    let err = tokio::time::timeout(Duration::from_secs(30), refresh)
        .await
        .expect("the refresh ends")
        .unwrap()
        .unwrap_err();
    assert!(err.code().sqlstate().starts_with("HV"), "{err}");
    assert_eq!(version(&engine).await, before);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.patients").await,
        100
    );
    let failed = engine
        .query("SELECT status FROM system.refreshes WHERE view = 'bronze.patients' AND status = 'failed'")
        .await
        .unwrap();
    assert_eq!(failed.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
}

#[tokio::test]
async fn a_whole_schema_imports_and_extracts_into_bronze() {
    let server = server(Encryption::NotSupported).await;
    let tables = 12;
    for t in 0..tables {
        let rows = 50 + t * 10;
        let ids: Vec<i32> = (0..rows).collect();
        let values: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
        server.create_table(
            "dbo",
            &format!("Table{t:02}"),
            vec![
                Column::new("Id", SqlType::Int).not_null(),
                Column::new("Value", SqlType::NVarChar(Some(40))),
            ],
            vec![batch(vec![
                Arc::new(Int32Array::from(ids)),
                Arc::new(StringArray::from(values)),
            ])],
        );
    }
    server.create_table(
        "dbo",
        "Spatial",
        vec![Column::new("shape", SqlType::SqlVariant)],
        vec![],
    );
    server.create_table(
        "audit",
        "Log",
        vec![Column::new("id", SqlType::Int)],
        vec![],
    );
    let (_dir, engine) = scratch().await;
    create_schema(&engine, "ehr").await;
    let imported = engine
        .query(&format!(
            "IMPORT FOREIGN SCHEMA dbo EXCEPT (Table11) FROM SQLSERVER 'sqlserver://127.0.0.1:{}/EHR' INTO ehr \
             OPTIONS ('encrypt' 'false', 'user' '${{MEDLAKE_TEST_TDS_USER}}', 'password' '${{{PASSWORD_ENV}}}')",
            server.port()
        ))
        .await
        .unwrap();
    let text = pretty(&imported);
    assert!(
        text.contains("| ehr.table00 | dbo.Table00  | created"),
        "{text}"
    );
    assert!(
        !text.contains("Table11") && !text.contains("audit"),
        "{text}"
    );
    assert!(
        text.contains("dbo.Spatial") && text.contains("skipped: column 'shape'"),
        "{text}"
    );
    let created = imported
        .iter()
        .map(|b| {
            b.column(2)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .iter()
                .filter(|s| *s == Some("created"))
                .count()
        })
        .sum::<usize>();
    assert_eq!(created, 11);

    let progress = std::sync::Mutex::new(Vec::new());
    let results = engine
        .extract("ehr", "bronze", 3, &|e, n, total| {
            progress
                .lock()
                .unwrap()
                .push((n, total, e.view.to_string(), e.outcome.is_ok()));
        })
        .await
        .unwrap();
    assert_eq!(results.len(), 11);
    assert!(
        results.iter().all(|r| r.created && r.outcome.is_ok()),
        "{results:?}"
    );
    let progress = progress.into_inner().unwrap();
    assert_eq!(
        progress.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    assert!(
        server.max_concurrent_queries() <= 3,
        "{}",
        server.max_concurrent_queries()
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.table00").await,
        50
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.table10").await,
        150
    );
    // A second run refreshes the views it made (no watermark: a full extraction each).
    let again = engine
        .extract("ehr", "bronze", 4, &|_, _, _| {})
        .await
        .unwrap();
    assert!(again.iter().all(|r| !r.created && r.outcome.is_ok()));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.table10").await,
        150
    );
}

#[tokio::test]
async fn a_stalled_read_times_out_and_external_tables_drop_like_tables() {
    let server = server(Encryption::NotSupported).await;
    patients(&server);
    let (dir, engine) = scratch().await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(
                &server,
                "dbo.Patients",
                ", 'query_timeout_seconds' '1', 'retries' '0'"
            )
        ))
        .await
        .unwrap();
    server.set_fault(Some(Fault::DelayPerRow(Duration::from_millis(1500))));
    let err = engine
        .query("SELECT * FROM public.patients")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
    assert!(err.to_string().contains("timed out after 1 s"), "{err}");
    server.set_fault(None);

    // An external table is listed, described, and dropped like any table.
    let tables = pretty(&engine.query("SHOW TABLES").await.unwrap());
    assert!(
        tables.contains("| medlake       | public             | patients           | BASE TABLE |"),
        "{tables}"
    );
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "42P07", "{err}");
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS public.patients STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", "")
        ))
        .await
        .unwrap();
    engine.sql("DROP TABLE public.patients").await.unwrap();
    assert!(!dir.path().join("wh/public/patients").exists());
    let err = engine
        .query("SELECT * FROM public.patients")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "42P01", "{err}");
    // Unknown kinds and options are refused with the list of what is accepted.
    let err = engine
        .sql("CREATE EXTERNAL TABLE public.x STORED AS ORACLE LOCATION 'oracle://db' ")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "0A000", "{err}");
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.x STORED AS SQLSERVER {}",
            options(&server, "dbo.Patients", ", 'pasword' 'x'")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    assert!(
        err.to_string().contains("'pasword'") && err.to_string().contains("password"),
        "{err}"
    );
}

#[tokio::test]
async fn azure_sql_signs_in_with_an_azure_ad_access_token_over_tls() {
    let token = std::env::var("MEDLAKE_TEST_TDS_AAD_TOKEN").expect("set by .cargo/config.toml");
    let server = TdsServer::start(ServerConfig {
        encryption: Encryption::Required,
        database: "EHR".into(),
        aad_tokens: vec![token.clone()],
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    patients(&server);
    let (_dir, engine) = scratch().await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.trials STORED AS SQLSERVER \
             LOCATION 'sqlserver://127.0.0.1:{}/EHR' OPTIONS ('table' 'dbo.Patients', \
             'access_token' '${{MEDLAKE_TEST_TDS_AAD_TOKEN}}', 'encrypt' 'true', \
             'trust_server_certificate' 'true')",
            server.port()
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM public.trials").await,
        100
    );
    let logins = server.logins();
    assert!(
        logins.iter().all(|l| l.success
            && l.encrypted
            && l.auth == medlake_tds_testserver::LoginAuth::AadToken),
        "{logins:?}"
    );
    // A token and a login at once is ambiguous: refused before connecting.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE public.t2 STORED AS SQLSERVER \
             LOCATION 'sqlserver://127.0.0.1:{}/EHR' OPTIONS ('table' 'dbo.Patients', \
             'access_token' '${{MEDLAKE_TEST_TDS_AAD_TOKEN}}', 'user' 'x', 'password' '${{X}}')",
            server.port()
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    assert!(!err.to_string().contains(&token), "{err}");
}

/// The source's current patients as `id|name|ward` lines, to compare with silver.
async fn current_rows(engine: &Engine, sql: &str) -> Vec<String> {
    let batches = engine.query(sql).await.unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int32).unwrap();
        let ids = ids.as_any().downcast_ref::<Int32Array>().unwrap();
        let names = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
        let names = names.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            out.push(format!("{}|{}", ids.value(i), names.value(i)));
        }
    }
    out.sort();
    out
}

fn expected_rows(ids: impl Iterator<Item = i32>, renamed: &[(i32, &str)]) -> Vec<String> {
    let mut out: Vec<String> = ids
        .map(|i| match renamed.iter().find(|(id, _)| *id == i) {
            Some((_, name)) => format!("{i}|{name}"),
            None => format!("{i}|Patient {i:03}"),
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn change_tracking_brings_updates_and_deletes_at_the_source_to_silver() {
    let server = server(Encryption::NotSupported).await;
    patients(&server);
    let (_dir, engine) = scratch().await;
    create_schema(&engine, "ehr").await;
    let define = |table: &str, extra: &str| {
        format!(
            "CREATE EXTERNAL TABLE ehr.patients STORED AS SQLSERVER {}",
            options(&server, table, extra)
        )
    };
    // Change Tracking must be on, and the table is extracted by its version, not another column.
    let err = engine
        .sql(&define("dbo.Patients", ", 'changes' 'change_tracking'"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Change Tracking is not enabled"),
        "{err}"
    );
    server.enable_change_tracking("dbo", "Patients", &["PatientID"]);
    let err = engine
        .sql(&define(
            "dbo.Patients",
            ", 'changes' 'change_tracking', 'watermark' 'BirthDate'",
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("_change_version"), "{err}");
    engine
        .sql(&define("dbo.Patients", ", 'changes' 'change_tracking'"))
        .await
        .unwrap();
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM ehr.patients WHERE _change_operation = 'S'"
        )
        .await,
        100
    );
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.patients AS SELECT * FROM ehr.patients")
        .await
        .unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW silver.patients AS AUTO CDC FROM bronze.patients \
             KEYS (patientid) APPLY AS DELETE WHEN _change_operation = 'D' \
             SEQUENCE BY _change_version COLUMNS * EXCEPT (_change_operation, _change_version)",
        )
        .await
        .unwrap();
    let silver = "SELECT patientid, name FROM silver.patients";
    assert_eq!(
        current_rows(&engine, silver).await,
        expected_rows(1..=100, &[])
    );

    // Inserts, an update and deletes at the source, then an update of a new row.
    let more: Vec<i32> = (101..=105).collect();
    let rows = |ids: Vec<i32>, name: &dyn Fn(i32) -> String| {
        let names: Vec<String> = ids.iter().map(|i| name(*i)).collect();
        let n = ids.len();
        batch(vec![
            Arc::new(Int32Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(vec![Some("ICU"); n])),
            Arc::new(Date32Array::from(vec![Some(0); n])),
        ])
    };
    server.append_rows(
        "dbo",
        "Patients",
        vec![rows(more, &|i| format!("Patient {i:03}"))],
    );
    server.update_rows(
        "dbo",
        "Patients",
        rows(vec![1, 104], &|i| format!("Renamed {i}")),
    );
    let keys = |ids: Vec<i32>| batch(vec![Arc::new(Int32Array::from(ids)) as ArrayRef]);
    server.delete_rows("dbo", "Patients", keys(vec![2, 3, 105]));
    server.clear_received();
    let outcome = engine
        .refresh("bronze.patients", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].mode, "incremental", "{:?}", outcome[0]);
    // 101..=104 inserted (104 renamed since: still one net insert), 1 updated, 2 and 3
    // deleted, 105 inserted and deleted since the baseline: a delete of a key bronze never had.
    assert_eq!(outcome[0].rows_written, 8, "{:?}", outcome[0]);
    let scan = server
        .received()
        .into_iter()
        .find(|r| r.sql.contains("CHANGETABLE(CHANGES [dbo].[Patients], @P"))
        .expect("changes are read through CHANGETABLE");
    assert!(
        scan.sql.contains("LEFT OUTER JOIN [dbo].[Patients]"),
        "{}",
        scan.sql
    );
    let outcome = engine
        .refresh("silver.patients", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].mode, "incremental", "{:?}", outcome[0]);
    let expected = expected_rows(
        (1..=104).filter(|i| ![2, 3].contains(i)),
        &[(1, "Renamed 1"), (104, "Renamed 104")],
    );
    assert_eq!(current_rows(&engine, silver).await, expected);
    let unchanged = engine
        .refresh("bronze.patients", false, false)
        .await
        .unwrap();
    assert_eq!(
        unchanged[0].status.as_str(),
        "skipped",
        "{:?}",
        unchanged[0]
    );

    // The retention cleaned the changes after bronze's baseline: a new snapshot.
    server.delete_rows("dbo", "Patients", keys(vec![4]));
    server.forget_changes("dbo", "Patients");
    let outcome = engine
        .refresh("bronze.patients", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].mode, "full", "{:?}", outcome[0]);
    assert!(
        outcome[0].reason.contains("no longer keeps"),
        "{}",
        outcome[0].reason
    );
    engine
        .refresh("silver.patients", false, false)
        .await
        .unwrap();
    let expected = expected_rows(
        (1..=104).filter(|i| ![2, 3, 4].contains(i)),
        &[(1, "Renamed 1"), (104, "Renamed 104")],
    );
    assert_eq!(current_rows(&engine, silver).await, expected);

    // And the feed goes on from the snapshot.
    server.update_rows("dbo", "Patients", rows(vec![5], &|_| "Renamed 5".into()));
    let outcome = engine
        .refresh("bronze.patients", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].mode, "incremental", "{:?}", outcome[0]);
    engine
        .refresh("silver.patients", false, false)
        .await
        .unwrap();
    let expected = expected_rows(
        (1..=104).filter(|i| ![2, 3, 4].contains(i)),
        &[(1, "Renamed 1"), (5, "Renamed 5"), (104, "Renamed 104")],
    );
    assert_eq!(current_rows(&engine, silver).await, expected);
}
