//! `ERASE PATIENT` (issue 24): a patient's rows leave every table and view, what views derived
//! from them is recomputed, no file of the warehouse holds their identifiers afterwards, and
//! later writes leave them out.

use std::path::Path;

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Engine, Principal, Role};

use crate::{count, outcome, scratch};

const SETUP: &str = "
    CREATE TABLE bronze.patients (patient_id BIGINT NOT NULL, mrn VARCHAR, name VARCHAR, ward VARCHAR);
    INSERT INTO bronze.patients VALUES
        (1, 'MRN-KEEP-0001', 'Ada Keeping', 'icu'),
        (123, 'MRN-ERASE-0123', 'Zebedee Erasable', 'icu'),
        (7, 'MRN-KEEP-0007', 'Bo Keeping', 'cardio');
    UPDATE bronze.patients SET ward = 'cardio' WHERE patient_id = 123;
    CREATE TABLE bronze.readings (patient_id BIGINT, metric VARCHAR, value DOUBLE);
    INSERT INTO bronze.readings VALUES (1, 'hr', 80), (123, 'hr', 95), (123, 'hr', -1), (7, 'hr', 70);
    CREATE TABLE bronze.dicom (patient_id VARCHAR, path VARCHAR);
    INSERT INTO bronze.dicom VALUES ('MRN-ERASE-0123', 'studies/zebedee.dcm'), ('MRN-KEEP-0001', 'studies/ada.dcm');
    CREATE MATERIALIZED VIEW silver.readings
        CONSTRAINT plausible EXPECT (value >= 0) ON VIOLATION QUARANTINE AS
    SELECT r.patient_id, p.mrn, p.ward, r.metric, r.value
    FROM bronze.readings r JOIN bronze.patients p ON p.patient_id = r.patient_id;
    CREATE MATERIALIZED VIEW gold.ward_load AS
    SELECT ward, count(*) AS readings, sum(value) AS total FROM silver.readings GROUP BY ward;
    CREATE MATERIALIZED VIEW gold.by_mrn AS
    SELECT mrn, count(*) AS readings, max(value) AS top FROM silver.readings GROUP BY mrn;
    CREATE MATERIALIZED VIEW silver.studies AS
    SELECT d.path, p.patient_id FROM bronze.dicom d LEFT JOIN bronze.patients p ON p.mrn = d.patient_id;
";

/// The files under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

async fn text(engine: &Engine, sql: &str) -> String {
    let batches = engine
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn an_erased_patient_leaves_every_table_view_and_file_and_stays_out() {
    let (dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let identifiers = ["MRN-ERASE-0123", "Zebedee"];
    for needle in identifiers {
        assert!(
            !files_holding(dir.path(), needle).is_empty(),
            "the grep must see {needle} before the erasure (else it proves nothing)"
        );
    }
    assert_eq!(
        count(&engine, "SELECT count(*) FROM silver.readings_quarantine").await,
        1
    );
    // The aggregate state of a view grouped by MRN holds it too (a sidecar of the view).
    assert!(
        files_holding(dir.path(), "MRN-ERASE-0123")
            .iter()
            .any(|f| f.contains("gold/by_mrn/_medlake_sidecar")),
        "{:?}",
        files_holding(dir.path(), "MRN-ERASE-0123")
    );

    // A dry run reports and changes nothing.
    let dry = text(&engine, "ERASE PATIENT 123 DRY RUN").await;
    assert!(
        dry.contains("bronze.dicom") && dry.contains("would be erased"),
        "{dry}"
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.readings WHERE patient_id = 123"
        )
        .await,
        2
    );

    // Only an admin erases.
    let nurse = engine.session_for(Principal::user("nina", Role::None));
    assert_eq!(outcome(&nurse, "ERASE PATIENT 123").await, "42501");

    assert!(
        engine.result_cache_stats().entries > 0,
        "the counts above are kept by the result cache"
    );
    let report = text(&engine, "ERASE PATIENT 123").await;
    assert!(report.contains("bronze.patients"), "{report}");
    // No result kept from before the erasure (the patient's rows among them) stays in memory.
    assert_eq!(engine.result_cache_stats().entries, 0);
    for (sql, expected) in [
        ("SELECT count(*) FROM bronze.patients", 2),
        ("SELECT count(*) FROM bronze.readings", 2),
        ("SELECT count(*) FROM bronze.dicom", 1),
        ("SELECT count(*) FROM silver.readings", 2),
        ("SELECT count(*) FROM silver.readings_quarantine", 0),
        ("SELECT count(*) FROM silver.studies", 1),
        (
            "SELECT count(*) FROM silver.studies WHERE patient_id IS NULL",
            0,
        ),
        // The aggregate no longer counts the erased patient's reading.
        (
            "SELECT readings FROM gold.ward_load WHERE ward = 'cardio'",
            1,
        ),
    ] {
        assert_eq!(count(&engine, sql).await, expected, "{sql}");
    }
    for needle in identifiers {
        assert_eq!(
            files_holding(dir.path(), needle),
            Vec::<String>::new(),
            "{needle} is still in the warehouse"
        );
    }
    // Time travel and the change feed no longer reach before the erasure.
    assert_ne!(
        outcome(
            &engine.local_session(),
            "SELECT mrn, name FROM bronze.patients VERSION AS OF 1"
        )
        .await,
        "ok"
    );
    assert_eq!(
        outcome(
            &engine.local_session(),
            "SELECT * FROM table_changes('bronze.patients', 0)"
        )
        .await,
        "22023"
    );
    // The statement kept no identifier in the audit log.
    let mut auditor = Principal::user("aud", Role::None);
    auditor.roles = ["auditor".to_string()].into_iter().collect();
    let auditor = engine.session_for(auditor);
    let mut audited = String::new();
    for _ in 0..50 {
        let batches = auditor
            .query("SELECT statement FROM system.audit WHERE statement LIKE 'ERASE%' ORDER BY statement")
            .await
            .unwrap();
        audited = pretty_format_batches(&batches).unwrap().to_string();
        if audited.matches("ERASE").count() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        audited.contains("ERASE PATIENT ? DRY RUN")
            && audited.contains("ERASE PATIENT ?")
            && !audited.contains("123"),
        "{audited}"
    );

    // Later writes leave the patient out: INSERT, and the refreshes that read them.
    engine
        .sql(
            "INSERT INTO bronze.readings VALUES (123, 'hr', 99), (1, 'hr', 81);
             INSERT INTO bronze.dicom VALUES ('MRN-ERASE-0123', 'studies/again.dcm')",
        )
        .await
        .unwrap();
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.readings WHERE patient_id = 123"
        )
        .await,
        0
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.readings").await,
        3
    );
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.dicom").await, 1);
    // The views are still views, and refresh as before.
    engine
        .sql("REFRESH MATERIALIZED VIEW gold.ward_load CASCADE")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM silver.readings").await,
        3
    );
    let full = text(&engine, "SELECT ward, count(*) AS readings, sum(value) AS total FROM silver.readings GROUP BY ward ORDER BY ward").await;
    let kept = text(
        &engine,
        "SELECT ward, readings, total FROM gold.ward_load ORDER BY ward",
    )
    .await;
    assert_eq!(kept, full);
    // The suppression list holds salted hashes only.
    assert_eq!(
        count(&engine, "SELECT count(*) FROM system.erasures").await,
        2
    );
    for needle in identifiers {
        assert_eq!(files_holding(dir.path(), needle), Vec::<String>::new());
    }
}

#[tokio::test]
async fn erasure_is_seen_by_another_process_writing_to_the_warehouse() {
    let (dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.obs (patient_id VARCHAR, v INT);
             INSERT INTO bronze.obs VALUES ('P-1', 1), ('P-2', 2)",
        )
        .await
        .unwrap();
    // A second engine on the same warehouse (another server) has read the empty list.
    let other = Engine::open(&crate::location(&dir)).await.unwrap();
    other
        .sql("INSERT INTO bronze.obs VALUES ('P-1', 3)")
        .await
        .unwrap();
    engine.sql("ERASE PATIENT 'P-1'").await.unwrap();
    tokio::time::sleep(medlake_lake::erasure::RELOAD_AFTER).await;
    other
        .sql("INSERT INTO bronze.obs VALUES ('P-1', 4), ('P-3', 5)")
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.obs").await, 2);
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.obs WHERE patient_id = 'P-1'"
        )
        .await,
        0
    );
    // Push ingest (the Flight door's path, and the HTTP door's appender) too.
    let batch = engine
        .query("SELECT patient_id, CAST(v AS INT) AS v FROM (VALUES ('P-1', 6), ('P-4', 7)) AS t(patient_id, v)")
        .await
        .unwrap()
        .remove(0);
    let how = medlake_engine::Ingest {
        create: false,
        exists: medlake_engine::IfExists::Append,
    };
    other
        .local_session()
        .ingest("bronze.obs", batch.schema(), vec![batch], how)
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.obs").await, 3);
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.obs WHERE patient_id = 'P-1'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn bad_erasures_are_refused_before_anything_changes() {
    let (_dir, engine) = scratch().await;
    let session = engine.local_session();
    for (sql, state) in [
        ("ERASE PATIENT", "42601"),
        ("ERASE PATIENT ''", "22023"),
        ("ERASE 123", "42601"),
        ("ERASE PATIENT $1", "42601"),
        ("ERASE PATIENT 1 IN COLUMNS", "42601"),
        ("ERASE PATIENT 1 EVERYWHERE", "42601"),
    ] {
        assert_eq!(outcome(&session, sql).await, state, "{sql}");
    }
    // A value shared by many rows would link everyone: refused, nothing recorded.
    engine
        .sql(
            "CREATE TABLE bronze.people (patient_id BIGINT, mrn VARCHAR);
             INSERT INTO bronze.people SELECT value, 'SHARED' FROM generate_series(1, 100)",
        )
        .await
        .unwrap();
    assert_eq!(outcome(&session, "ERASE PATIENT 5").await, "22023");
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.people").await,
        100
    );
    assert_eq!(
        outcome(&session, "SELECT count(*) FROM system.erasures").await,
        "42P01"
    );
}
