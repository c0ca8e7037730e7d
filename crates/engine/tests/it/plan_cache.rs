//! The plan cache (issue 25): a statement prepared with parameters is planned, checked and
//! protected once, and each execution binds its values into that plan; never with a plan of
//! a table version, a grant, a mask or a row filter that changed since.

use arrow::util::pretty::pretty_format_batches;
use datafusion::scalar::ScalarValue;
use medlake_engine::{Engine, Output, Principal, Role, Session, Statement};

use crate::location;

/// An engine with the plan cache and without the result cache (whose hits would hide it).
async fn engine(dir: &tempfile::TempDir) -> Engine {
    Engine::builder(&location(dir))
        .result_cache(0)
        .plan_cache(16)
        .open()
        .await
        .unwrap()
}

fn prepared(session: &Session, sql: &str) -> Statement {
    session.parse(sql).unwrap().pop().unwrap()
}

/// The rows of `statement` run with `values`, as a table; or the SQLSTATE it failed with.
async fn run(session: &Session, statement: &Statement, values: Vec<ScalarValue>) -> String {
    match session.execute_bound(statement, values).await {
        Ok(Output::Rows(stream)) => {
            let batches = Output::Rows(stream).collect().await.unwrap();
            pretty_format_batches(&batches).unwrap().to_string()
        }
        Ok(Output::Command { tag, .. }) => tag,
        Err(e) => e.code().sqlstate().to_string(),
    }
}

fn int(v: i64) -> Vec<ScalarValue> {
    vec![ScalarValue::Int64(Some(v))]
}

fn user(engine: &Engine, name: &str, roles: &[&str]) -> Session {
    let mut principal = Principal::user(name, Role::None);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    engine.session_for(principal)
}

const QUERY: &str = "SELECT patient_id, mrn, ward FROM silver.patients \
                     WHERE patient_id >= $1 ORDER BY patient_id";

#[tokio::test]
async fn a_prepared_query_is_planned_once_and_replanned_when_what_it_read_changes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let admin = engine.local_session();
    admin
        .sql(
            "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, ward VARCHAR);
             INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'icu'), (2, 'MRN-0002', 'cardio'),
                                                (3, 'MRN-0003', 'icu');",
        )
        .await
        .unwrap();
    let statement = prepared(&admin, QUERY);
    let first = run(&admin, &statement, int(2)).await;
    assert!(
        first.contains("MRN-0002") && first.contains("MRN-0003"),
        "{first}"
    );
    assert!(!first.contains("MRN-0001"), "{first}");
    let stats = engine.plan_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (0, 1, 1));
    // Each later execution binds its own value into the kept plan.
    let third = run(&admin, &statement, int(3)).await;
    assert!(
        third.contains("MRN-0003") && !third.contains("MRN-0002"),
        "{third}"
    );
    let all = run(&admin, &statement, int(0)).await;
    assert_eq!(all.matches("MRN-").count(), 3, "{all}");
    assert_eq!(engine.plan_cache_stats().hits, 2);

    // A commit to the table: the next execution is planned again and sees the new row.
    admin
        .sql("INSERT INTO silver.patients VALUES (4, 'MRN-0004', 'icu')")
        .await
        .unwrap();
    let after = run(&admin, &statement, int(3)).await;
    assert!(after.contains("MRN-0004"), "{after}");
    assert_eq!(engine.plan_cache_stats().misses, 2);
    admin
        .sql("DELETE FROM silver.patients WHERE patient_id = 3")
        .await
        .unwrap();
    let after = run(&admin, &statement, int(3)).await;
    assert!(
        !after.contains("MRN-0003") && after.contains("MRN-0004"),
        "{after}"
    );

    // The same answers as the statement with its value bound into the text.
    let bound = admin
        .query("SELECT patient_id, mrn, ward FROM silver.patients WHERE patient_id >= 2 ORDER BY patient_id")
        .await
        .unwrap();
    assert_eq!(
        run(&admin, &statement, int(2)).await,
        pretty_format_batches(&bound).unwrap().to_string()
    );
    // A wrong value type is the bound statement's error, not a plan's.
    let text = run(
        &admin,
        &statement,
        vec![ScalarValue::Utf8(Some("x".into()))],
    )
    .await;
    assert_eq!(text, "22P02", "a text that is no number");
}

#[tokio::test]
async fn grants_masks_and_row_filters_apply_to_kept_plans_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
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
    let clinician = user(&engine, "cleo", &["clinician"]);
    let analyst = user(&engine, "ann", &["analyst"]);
    let statement = prepared(&clinician, QUERY);
    let seen = run(&clinician, &statement, int(0)).await;
    assert!(seen.contains("MRN-0001"), "{seen}");
    assert!(
        run(&clinician, &statement, int(0))
            .await
            .contains("MRN-0001")
    );
    assert_eq!(engine.plan_cache_stats().hits, 1);
    // Another principal: its own plan, masked; never the clinician's.
    let masked = run(&analyst, &statement, int(0)).await;
    assert!(
        masked.contains("MRN-****") && !masked.contains("MRN-0001"),
        "{masked}"
    );
    let masked = run(&analyst, &statement, int(0)).await;
    assert!(!masked.contains("MRN-0001"), "{masked}");

    // A row filter added later applies at the next execution.
    admin
        .sql("ALTER TABLE silver.patients SET ROW FILTER ward = 'icu' ON (ward)")
        .await
        .unwrap();
    let filtered = run(&clinician, &statement, int(0)).await;
    assert!(
        filtered.contains("MRN-0001") && !filtered.contains("MRN-0002"),
        "{filtered}"
    );
    // A revoke too.
    admin
        .sql("REVOKE SELECT ON TABLE silver.patients FROM clinician")
        .await
        .unwrap();
    assert_eq!(run(&clinician, &statement, int(0)).await, "42501");
    assert_eq!(run(&clinician, &statement, int(0)).await, "42501");
}

#[tokio::test]
async fn a_session_setting_or_a_zero_sized_cache_plans_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let admin = engine.local_session();
    admin
        .sql(
            "CREATE TABLE gold.t (id BIGINT, at TIMESTAMP);
             INSERT INTO gold.t VALUES (1, TIMESTAMP '2026-01-01 10:00:00');",
        )
        .await
        .unwrap();
    let statement = prepared(&admin, "SELECT id, at FROM gold.t WHERE id = $1");
    run(&admin, &statement, int(1)).await;
    run(&admin, &statement, int(1)).await;
    assert_eq!(engine.plan_cache_stats().hits, 1);
    admin
        .sql("SET datafusion.execution.time_zone = '+02:00'")
        .await
        .unwrap();
    run(&admin, &statement, int(1)).await;
    assert_eq!(engine.plan_cache_stats().misses, 2, "a SET changes the key");

    let dir = tempfile::tempdir().unwrap();
    let off = Engine::builder(&location(&dir))
        .plan_cache(0)
        .open()
        .await
        .unwrap();
    let admin = off.local_session();
    admin
        .sql("CREATE TABLE gold.t (id BIGINT); INSERT INTO gold.t VALUES (1);")
        .await
        .unwrap();
    let statement = prepared(&admin, "SELECT id FROM gold.t WHERE id = $1");
    assert!(run(&admin, &statement, int(1)).await.contains("| 1  |"));
    let stats = off.plan_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (0, 0, 0));
}
