//! `IMPORT FOREIGN SCHEMA` and `medlake extract` as users run them, against the TDS test server:
//! progress lines, a summary, and a failing source that leaves bronze as it was.

use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use medlake_tds_testserver::{Column, Encryption, ServerConfig, SqlType, TdsServer};

use super::{BIN, ok, stderr, stdout};

#[test]
fn extract_copies_every_imported_table_into_bronze_with_progress() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        let server = TdsServer::start(
            ServerConfig {
                encryption: Encryption::NotSupported,
                database: "EHR".into(),
                ..ServerConfig::default()
            }
            .with_user(
                std::env::var("MEDLAKE_TEST_TDS_USER").unwrap(),
                std::env::var("MEDLAKE_TEST_TDS_PASSWORD").unwrap(),
            ),
        )
        .await
        .unwrap();
        for (t, name) in ["Patients", "Devices", "Encounters"].iter().enumerate() {
            let n = 10 * (t as i32 + 1);
            let schema = Arc::new(Schema::new(vec![
                Field::new("c0", DataType::Int32, false),
                Field::new("c1", DataType::Utf8, true),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int32Array::from_iter_values(0..n)),
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("{name} {i}")),
                    )),
                ],
            )
            .unwrap();
            server.create_table(
                "dbo",
                name,
                vec![
                    Column::new("Id", SqlType::Int).not_null(),
                    Column::new("Label", SqlType::NVarChar(Some(60))),
                ],
                vec![batch],
            );
        }
        server
    });
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let imported = ok(
        &wh,
        &[
            "-c",
            "CREATE SCHEMA ehr",
            "-c",
            &format!(
                "IMPORT FOREIGN SCHEMA dbo FROM SQLSERVER 'sqlserver://127.0.0.1:{}/EHR' INTO ehr \
                 OPTIONS ('encrypt' 'false', 'user' '${{MEDLAKE_TEST_TDS_USER}}', \
                 'password' '${{MEDLAKE_TEST_TDS_PASSWORD}}')",
                server.port()
            ),
        ],
    );
    assert!(imported.contains("ehr.encounters"), "{imported}");
    let run = || {
        std::process::Command::new(BIN)
            .args([
                "extract",
                "ehr",
                "--into",
                "bronze",
                "--parallel",
                "2",
                "--warehouse",
            ])
            .arg(&wh)
            .output()
            .unwrap()
    };
    let out = run();
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}\n{}", stderr(&out));
    for expected in [
        "[1/3] bronze.",
        "[3/3] bronze.",
        "3 tables: 3 succeeded, 0 failed; 60 rows written",
    ] {
        assert!(printed.contains(expected), "{expected} in\n{printed}");
    }
    assert!(
        printed.contains("bronze.encounters <- ehr.encounters: succeeded 30 rows"),
        "{printed}"
    );
    let counted = ok(
        &wh,
        &[
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM bronze.encounters",
        ],
    );
    assert!(counted.contains("\n30"), "{counted}");

    // The source goes away: every table fails with the reason, the exit code says so, and
    // bronze keeps what it had.
    runtime.block_on(server.shutdown());
    let out = run();
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("FAILED"), "{printed}");
    assert!(
        printed.contains("3 tables: 0 succeeded, 3 failed"),
        "{printed}"
    );
    let counted = ok(
        &wh,
        &[
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM bronze.encounters",
        ],
    );
    assert!(counted.contains("\n30"), "{counted}");
}
