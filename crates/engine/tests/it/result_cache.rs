//! The result cache (issue 25): a repeated query is answered from memory, and never with rows
//! that an INSERT, a DML statement, a refresh, another server's commit, a grant change or a
//! mask would have changed.

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Engine, Principal, Role, Session};

use crate::{location, outcome};

async fn engine_with_cache(dir: &tempfile::TempDir) -> Engine {
    Engine::builder(&location(dir))
        .result_cache(64 << 20)
        .open()
        .await
        .unwrap()
}

async fn rows(session: &Session, sql: &str) -> String {
    let batches = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The rows of `sql` and whether the cache answered it.
async fn answered(engine: &Engine, session: &Session, sql: &str) -> (String, bool) {
    let before = engine.result_cache_stats().hits;
    let text = rows(session, sql).await;
    (text, engine.result_cache_stats().hits > before)
}

fn user(engine: &Engine, name: &str, roles: &[&str]) -> Session {
    let mut principal = Principal::user(name, Role::None);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    engine.session_for(principal)
}

const QUERY: &str = "SELECT ward, count(*) AS n FROM gold.stays GROUP BY ward ORDER BY ward";

#[tokio::test]
async fn repeated_queries_are_answered_from_memory_until_a_table_they_read_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_cache(&dir).await;
    let admin = engine.local_session();
    admin
        .sql(
            "CREATE TABLE gold.stays (patient_id BIGINT, ward VARCHAR);
             INSERT INTO gold.stays VALUES (1, 'icu'), (2, 'icu'), (3, 'cardio');
             CREATE TABLE gold.other (x INT); INSERT INTO gold.other VALUES (1);",
        )
        .await
        .unwrap();
    let (first, hit) = answered(&engine, &admin, QUERY).await;
    assert!(!hit);
    assert!(first.contains("| icu    | 2 |"), "{first}");
    let (again, hit) = answered(&engine, &admin, QUERY).await;
    assert!(
        hit,
        "the same query over the same versions is answered from memory"
    );
    assert_eq!(again, first);

    // A commit to another table leaves the entry valid.
    admin
        .sql("INSERT INTO gold.other VALUES (2)")
        .await
        .unwrap();
    assert!(answered(&engine, &admin, QUERY).await.1);

    // An INSERT into the table read: the next query sees the new row.
    admin
        .sql("INSERT INTO gold.stays VALUES (4, 'icu')")
        .await
        .unwrap();
    let (text, hit) = answered(&engine, &admin, QUERY).await;
    assert!(!hit);
    assert!(text.contains("| icu    | 3 |"), "{text}");

    // DELETE and UPDATE too.
    admin
        .sql("DELETE FROM gold.stays WHERE patient_id = 1")
        .await
        .unwrap();
    assert!(rows(&admin, QUERY).await.contains("| icu    | 2 |"));
    admin
        .sql("UPDATE gold.stays SET ward = 'cardio' WHERE patient_id = 2")
        .await
        .unwrap();
    let text = rows(&admin, QUERY).await;
    assert!(
        text.contains("| cardio | 2 |") && text.contains("| icu    | 1 |"),
        "{text}"
    );

    // Another server on the same warehouse commits: seen at once.
    let other = Engine::open(&location(&dir)).await.unwrap();
    other
        .sql("INSERT INTO gold.stays VALUES (9, 'neuro')")
        .await
        .unwrap();
    let (text, hit) = answered(&engine, &admin, QUERY).await;
    assert!(!hit);
    assert!(text.contains("| neuro  | 1 |"), "{text}");

    // Dropped and created again with as many commits: never the old rows.
    admin
        .sql(
            "DROP TABLE gold.stays;
             CREATE TABLE gold.stays (patient_id BIGINT, ward VARCHAR);
             INSERT INTO gold.stays VALUES (7, 'maternity');",
        )
        .await
        .unwrap();
    let text = rows(&admin, QUERY).await;
    assert!(
        text.contains("maternity") && !text.contains("icu"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refresh_invalidates_the_queries_over_its_view_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_cache(&dir).await;
    let admin = engine.local_session();
    admin
        .sql(
            "CREATE TABLE bronze.r (patient_id BIGINT, hr DOUBLE);
             INSERT INTO bronze.r VALUES (1, 80.0), (2, 90.0);
             CREATE MATERIALIZED VIEW gold.hr AS
                 SELECT patient_id, max(hr) AS peak FROM bronze.r GROUP BY patient_id;
             CREATE TABLE gold.wards (ward VARCHAR); INSERT INTO gold.wards VALUES ('icu');",
        )
        .await
        .unwrap();
    let over_view = "SELECT patient_id, peak FROM gold.hr ORDER BY patient_id";
    let elsewhere = "SELECT ward FROM gold.wards";
    rows(&admin, over_view).await;
    rows(&admin, elsewhere).await;
    assert!(answered(&engine, &admin, over_view).await.1);

    admin
        .sql("INSERT INTO bronze.r VALUES (1, 130.0), (3, 70.0)")
        .await
        .unwrap();
    // The input changed, the view did not: its rows are still the view's rows.
    assert!(answered(&engine, &admin, over_view).await.1);
    admin
        .sql("REFRESH MATERIALIZED VIEW gold.hr")
        .await
        .unwrap();
    let (text, hit) = answered(&engine, &admin, over_view).await;
    assert!(!hit, "a refresh changes the view's version");
    assert!(text.contains("| 1          | 130.0 |"), "{text}");
    assert!(text.contains("| 3          | 70.0  |"), "{text}");
    assert!(
        answered(&engine, &admin, elsewhere).await.1,
        "other entries stay"
    );
}

#[tokio::test]
async fn principals_masks_and_grants_are_part_of_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_cache(&dir).await;
    let admin = engine.local_session();
    admin
        .sql(
            "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, ward VARCHAR);
             INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'icu'), (2, 'MRN-0002', 'cardio');
             CREATE ROLE clinician; CREATE ROLE analyst;
             GRANT USAGE ON SCHEMA silver TO clinician, analyst;
             GRANT SELECT ON TABLE silver.patients TO clinician, analyst;
             ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK
                 CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END;",
        )
        .await
        .unwrap();
    let sql = "SELECT patient_id, mrn FROM silver.patients ORDER BY patient_id";
    let clinician = user(&engine, "cleo", &["clinician"]);
    let analyst = user(&engine, "ann", &["analyst"]);
    let seen = rows(&clinician, sql).await;
    assert!(seen.contains("MRN-0001"), "{seen}");
    assert!(answered(&engine, &clinician, sql).await.1);
    // The same text for another principal: its own masked rows, never the clinician's.
    let (masked, hit) = answered(&engine, &analyst, sql).await;
    assert!(!hit);
    assert!(
        masked.contains("MRN-****") && !masked.contains("MRN-0001"),
        "{masked}"
    );
    assert!(answered(&engine, &analyst, sql).await.1);

    // A revoke takes effect on the next query, cached or not.
    admin
        .sql("REVOKE SELECT ON TABLE silver.patients FROM clinician")
        .await
        .unwrap();
    assert_eq!(outcome(&clinician, sql).await, "42501");

    // A row filter added later applies at once.
    admin
        .sql("ALTER TABLE silver.patients SET ROW FILTER ward = 'icu' ON (ward)")
        .await
        .unwrap();
    let filtered = rows(&analyst, sql).await;
    assert!(
        filtered.contains("| 1 ") && !filtered.contains("| 2 "),
        "{filtered}"
    );
}

#[tokio::test]
async fn time_dependent_and_external_queries_are_never_kept() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_cache(&dir).await;
    let admin = engine.local_session();
    admin
        .sql("CREATE TABLE gold.t (x INT); INSERT INTO gold.t VALUES (1)")
        .await
        .unwrap();
    for sql in [
        "SELECT x, now() AS at FROM gold.t",
        "SELECT x, random() AS r FROM gold.t",
        "SELECT count(*) FROM information_schema.tables",
        "SELECT 1",
        "SELECT x FROM gold.t VERSION AS OF 1",
    ] {
        rows(&admin, sql).await;
        let (_, hit) = answered(&engine, &admin, sql).await;
        assert!(!hit, "{sql} must not be answered from memory");
    }
    // The session's settings are part of the key.
    let sql = "SELECT CAST(TIMESTAMP '2026-01-01 00:00:00' AS VARCHAR) AS t FROM gold.t";
    rows(&admin, sql).await;
    assert!(answered(&engine, &admin, sql).await.1);
    admin
        .sql("SET datafusion.execution.batch_size = 1000")
        .await
        .unwrap();
    assert!(!answered(&engine, &admin, sql).await.1);
}

#[tokio::test]
async fn a_zero_sized_cache_answers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(&location(&dir))
        .result_cache(0)
        .open()
        .await
        .unwrap();
    let admin = engine.local_session();
    admin
        .sql("CREATE TABLE gold.t (x INT); INSERT INTO gold.t VALUES (1)")
        .await
        .unwrap();
    for _ in 0..3 {
        rows(&admin, "SELECT x FROM gold.t").await;
    }
    let stats = engine.result_cache_stats();
    assert_eq!((stats.hits, stats.entries), (0, 0));
}
