//! The change data feed (issue 24): every table records what DELETE, UPDATE and MERGE
//! changed, and `table_changes(...)` is read as its table is: SELECT needed, masks on every
//! change row (pre-images too), row filters over every change row, audited as a read. A
//! principal that may not read the table learns nothing from it, not even whether it exists.

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Engine, Principal, Role, Session, TableName};

use crate::{outcome, scratch};

fn user(engine: &Engine, name: &str, role: Role, roles: &[&str]) -> Session {
    let mut principal = Principal::user(name, role);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    engine.session_for(principal)
}

async fn text(session: &Session, sql: &str) -> String {
    let batches = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// Version 1 inserts three patients; 2 moves patient 1 out of the ICU; 3 deletes patient 2
/// (never in the ICU); 4 renames patient 3 (in the ICU).
const SETUP: &str = "
    CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, name VARCHAR, ward VARCHAR);
    INSERT INTO silver.patients VALUES
        (1, 'MRN-0001', 'Ada Lovelace', 'icu'),
        (2, 'MRN-0002', 'Alan Turing', 'cardio'),
        (3, 'MRN-0003', 'Grace Hopper', 'icu');
    UPDATE silver.patients SET ward = 'cardio' WHERE patient_id = 1;
    DELETE FROM silver.patients WHERE patient_id = 2;
    UPDATE silver.patients SET name = 'Grace B. Hopper' WHERE patient_id = 3;
    CREATE ROLE clinician;
    CREATE ROLE analyst;
    CREATE ROLE loader;
    GRANT USAGE ON SCHEMA silver TO clinician, analyst, loader;
    GRANT SELECT ON TABLE silver.patients TO clinician, analyst;
    GRANT INSERT ON TABLE silver.patients TO loader;
    GRANT SELECT ON SCHEMA gold TO analyst;
    ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END;
    ALTER TABLE silver.patients SET ROW FILTER is_member('admin') OR is_member('clinician') OR ward = 'icu' ON (ward);
";

const ALL: &str = "SELECT patient_id, mrn, name, ward, _change_type, _commit_version \
                   FROM table_changes('silver.patients', 0) ORDER BY _commit_version, patient_id, _change_type";

#[tokio::test]
async fn change_rows_are_masked_and_filtered_as_the_table_is() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let clinician = user(&engine, "cli", Role::None, &["clinician"]);
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    // The clinician sees every change with real values, pre-images included.
    let seen = text(&clinician, ALL).await;
    for expected in [
        "MRN-0001",
        "MRN-0002",
        "update_preimage",
        "Grace Hopper",
        "delete",
    ] {
        assert!(seen.contains(expected), "{expected}: {seen}");
    }
    // The analyst: no MRN in any change row; only rows of the ICU (the filter holds over
    // each change row: patient 1's pre-image is in the ICU, its post-image is not; patient
    // 2 never was, so its insert and delete are hidden).
    let rows = text(&analyst, ALL).await;
    assert!(!rows.contains("MRN-000"), "a masked value leaked: {rows}");
    assert!(rows.contains("MRN-****"), "{rows}");
    assert!(
        !rows.contains("Alan Turing"),
        "a filtered row leaked: {rows}"
    );
    assert!(!rows.contains("cardio"), "a filtered row leaked: {rows}");
    let count = text(
        &analyst,
        "SELECT count(*) AS n FROM table_changes('silver.patients', 0)",
    )
    .await;
    assert!(count.contains("| 5 "), "{count}");
    // Filters on a masked column see the mask, not the value, on every path.
    for sql in [
        "SELECT count(*) AS n FROM table_changes('silver.patients', 0) WHERE mrn = 'MRN-0001'",
        "SELECT count(*) AS n FROM table_changes('silver.patients', 0) WHERE mrn LIKE 'MRN-0%'",
        "WITH c AS (SELECT * FROM table_changes('silver.patients', 1, 2)) SELECT count(*) AS n FROM c WHERE mrn = 'MRN-0001'",
        "SELECT count(*) AS n FROM silver.patients WHERE patient_id IN (SELECT patient_id FROM table_changes('silver.patients', 0) WHERE mrn = 'MRN-0003')",
        "SELECT count(*) AS n FROM table_changes('silver.patients', 0) WHERE _change_type = 'delete'",
    ] {
        let rows = text(&analyst, sql).await;
        assert!(rows.contains("| 0 "), "{sql} leaked: {rows}");
    }
    // A table made from the changes holds masked, filtered rows.
    let writer = user(&engine, "w", Role::Writer, &["analyst"]);
    assert_eq!(
        outcome(
            &writer,
            "CREATE TABLE gold.exfil AS SELECT * FROM table_changes('silver.patients', 0)"
        )
        .await,
        "ok"
    );
    let exfil = text(&engine.local_session(), "SELECT * FROM gold.exfil").await;
    assert!(
        !exfil.contains("MRN-000") && !exfil.contains("Alan"),
        "{exfil}"
    );
    // Prepared, then executed: the same.
    let prepared = text(
        &analyst,
        "PREPARE p AS SELECT mrn, ward FROM table_changes('silver.patients', 0); EXECUTE p",
    )
    .await;
    assert!(
        !prepared.contains("MRN-000") && !prepared.contains("cardio"),
        "{prepared}"
    );
    // EXPLAIN shows the protected logical plan only; ANALYZE would count hidden rows.
    assert_eq!(
        outcome(
            &analyst,
            "EXPLAIN SELECT * FROM table_changes('silver.patients', 0)"
        )
        .await,
        "ok"
    );
    assert_eq!(
        outcome(
            &analyst,
            "EXPLAIN ANALYZE SELECT * FROM table_changes('silver.patients', 0)"
        )
        .await,
        "42501"
    );
}

#[tokio::test]
async fn reading_changes_needs_select_and_tells_nothing_without_it() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nobody = user(&engine, "nobody", Role::None, &[]);
    let loader = user(&engine, "lou", Role::None, &["loader"]);
    for session in [&nobody, &loader] {
        for sql in [
            "SELECT * FROM table_changes('silver.patients', 0)",
            "SELECT * FROM table_changes('silver.patients', 1, 1)",
            // Bounds only the table's log could judge: still refused first.
            "SELECT * FROM table_changes('silver.patients', 99)",
            "SELECT * FROM table_changes('silver.patients', 3, 1)",
            "SELECT * FROM table_changes('silver.patients', '2999-01-01')",
            // Whether a table exists is not told either.
            "SELECT * FROM table_changes('silver.nothing', 0)",
            "SELECT * FROM table_changes('silver.nothing', 99)",
            // Spellings of the same name.
            "SELECT * FROM table_changes('\"silver\".\"patients\"', 0)",
            "SELECT * FROM table_changes('SILVER.Patients', 0)",
            "SELECT * FROM table_changes('medlake.silver.patients', 0)",
            "SELECT count(*) FROM (SELECT 1) x WHERE EXISTS (SELECT 1 FROM table_changes('silver.patients', 0))",
            "WITH c AS (SELECT * FROM table_changes('silver.patients', 0)) SELECT count(*) FROM c",
            "EXPLAIN SELECT * FROM table_changes('silver.patients', 0)",
            "PREPARE q AS SELECT * FROM table_changes('silver.patients', 0)",
            "CREATE TABLE silver.copy AS SELECT * FROM table_changes('silver.patients', 0)",
            "SELECT * FROM table_changes('system.audit', 0)",
            "SELECT * FROM table_changes('system.grants', 0)",
        ] {
            assert_eq!(outcome(session, sql).await, "42501", "{sql}");
        }
    }
    // Schema-less names resolve in the session's default schema, and are refused there too.
    assert_eq!(
        outcome(
            &nobody,
            "SET datafusion.catalog.default_schema = 'silver'; SELECT * FROM table_changes('patients', 0)"
        )
        .await,
        "42501"
    );
    // Argument errors that need no table are the same for everyone.
    assert_eq!(
        outcome(
            &nobody,
            "SELECT * FROM table_changes('silver.patients', -1)"
        )
        .await,
        "22023"
    );
    assert_eq!(
        outcome(
            &nobody,
            "SELECT * FROM table_changes('silver.patients', NULL)"
        )
        .await,
        "22023"
    );
    // The message of a refusal names the table as written, nothing of its state.
    let err = nobody
        .query("SELECT * FROM table_changes('silver.patients', 99)")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        !message.contains("version") && !message.contains('/'),
        "{message}"
    );
    // With SELECT it reads.
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    assert_eq!(
        outcome(
            &analyst,
            "SELECT * FROM table_changes('silver.patients', 0)"
        )
        .await,
        "ok"
    );
    assert_eq!(
        outcome(
            &analyst,
            "SELECT * FROM table_changes('silver.patients', 99)"
        )
        .await,
        "22023"
    );
}

#[tokio::test]
async fn a_views_changes_carry_what_the_view_inherits() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW gold.roster AS SELECT patient_id, mrn, ward FROM silver.patients")
        .await
        .unwrap();
    // The analyst reads gold (not silver's other rows): the view's rows come masked and
    // filtered by what it inherits from silver.patients.
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    let rows = text(
        &analyst,
        "SELECT patient_id, mrn, ward, _change_type FROM table_changes('gold.roster', 0) ORDER BY patient_id",
    )
    .await;
    assert!(rows.contains("MRN-****") && rows.contains("| 3 "), "{rows}");
    assert!(
        !rows.contains("MRN-000") && !rows.contains("cardio"),
        "{rows}"
    );
    let nobody = user(&engine, "nobody", Role::None, &[]);
    assert_eq!(
        outcome(&nobody, "SELECT * FROM table_changes('gold.roster', 0)").await,
        "42501"
    );
}

#[tokio::test]
async fn reading_changes_is_audited_as_a_read_of_the_table() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    let nobody = user(&engine, "nobody", Role::None, &[]);
    let auditor = user(&engine, "aud", Role::None, &["auditor"]);
    analyst
        .query("SELECT count(*) FROM table_changes('silver.patients', 0)")
        .await
        .unwrap();
    assert_eq!(
        outcome(&nobody, "SELECT * FROM table_changes('silver.patients', 0)").await,
        "42501"
    );
    let sql = "SELECT user_name, objects_read, outcome, sqlstate FROM system.audit \
               WHERE user_name IN ('ann', 'nobody') AND statement LIKE '%table_changes%' ORDER BY seq";
    let mut log = String::new();
    for _ in 0..50 {
        let batches = auditor.query(sql).await.unwrap();
        if batches.iter().map(|b| b.num_rows()).sum::<usize>() >= 2 {
            log = pretty_format_batches(&batches).unwrap().to_string();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("silver.patients"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("ann") && lines[0].contains("ok"), "{log}");
    assert!(
        lines[1].contains("nobody") && lines[1].contains("42501"),
        "{log}"
    );
}

/// The `cdc` actions (change files) of one commit.
async fn change_files(engine: &Engine, name: &TableName, version: u64) -> Vec<String> {
    let actions = engine
        .warehouse()
        .commit_actions(name, version)
        .await
        .unwrap()
        .unwrap();
    actions
        .iter()
        .filter_map(|a| a.get("cdc")?.get("path")?.as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn dml_writes_change_files_and_new_tables_take_blind_appends() {
    let (dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.t (id INT, v VARCHAR);
             INSERT INTO bronze.t VALUES (1, 'a'), (2, 'b'), (3, 'c');
             DELETE FROM bronze.t WHERE id = 1;
             UPDATE bronze.t SET v = 'B' WHERE id = 2;
             MERGE INTO bronze.t AS t USING (SELECT CAST(3 AS INT) AS id) AS s ON t.id = s.id
               WHEN MATCHED THEN DELETE;
             CREATE TABLE bronze.s AS SELECT * FROM bronze.t;
             CREATE MATERIALIZED VIEW gold.v AS SELECT id, v FROM bronze.t;",
        )
        .await
        .unwrap();
    let t = TableName::new("bronze", "t").unwrap();
    assert!(change_files(&engine, &t, 1).await.is_empty(), "an append");
    for version in 2..=4 {
        let files = change_files(&engine, &t, version).await;
        assert!(
            !files.is_empty() && files.iter().all(|f| f.starts_with("_change_data/")),
            "version {version}: {files:?}"
        );
    }
    for name in [("bronze", "t"), ("bronze", "s"), ("gold", "v")] {
        let name = TableName::new(name.0, name.1).unwrap();
        let appender = engine.warehouse().open_appender(&name).await.unwrap();
        assert!(appender.is_blind(), "{name} must take blind appends");
    }
    // VACUUM removes change files past retention: an old range then fails clearly, without
    // a path.
    let changes = dir.path().join("wh/bronze/t/_change_data");
    let change_files_left = || std::fs::read_dir(&changes).map_or(0, |d| d.count());
    assert!(change_files_left() >= 3);
    engine
        .sql("VACUUM bronze.t RETAIN 0 HOURS FORCE")
        .await
        .unwrap();
    assert_eq!(
        change_files_left(),
        0,
        "VACUUM deletes expired change files"
    );
    let err = engine
        .query("SELECT * FROM table_changes('bronze.t', 2, 2)")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "22023", "{err}");
    let message = err.to_string();
    assert!(message.contains("removed by VACUUM"), "{message}");
    let root = dir.path().to_string_lossy().to_string();
    assert!(
        !message.contains(&root) && !message.contains("_change_data"),
        "{message}"
    );
}

#[tokio::test]
async fn a_redefined_views_older_rows_are_not_read_as_changes() {
    // Rows computed by an earlier definition (where mrn came from a masked column) would be
    // protected by the current one's lineage (where it does not): refused.
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.ids AS SELECT patient_id, ward, mrn AS id FROM silver.patients;
             CREATE OR REPLACE MATERIALIZED VIEW gold.ids AS SELECT patient_id, ward, CAST(patient_id AS VARCHAR) AS id FROM silver.patients;
             INSERT INTO silver.patients VALUES (9, 'MRN-0009', 'New', 'icu');
             REFRESH MATERIALIZED VIEW gold.ids FULL;",
        )
        .await
        .unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    for from in [0, 1] {
        let err = analyst
            .query(&format!("SELECT id FROM table_changes('gold.ids', {from})"))
            .await
            .unwrap_err();
        assert_eq!(err.code().sqlstate(), "22023", "{err}");
        assert!(err.to_string().contains("redefined"), "{err}");
    }
    let rows = text(
        &analyst,
        "SELECT id, _change_type FROM table_changes('gold.ids', 2)",
    )
    .await;
    assert!(!rows.contains("MRN-000") && rows.contains("| 9 "), "{rows}");
}

#[tokio::test]
async fn a_redefined_views_older_versions_are_not_read_by_time_travel() {
    // The same leak through VERSION AS OF: rows of the first definition hold raw MRNs that
    // the current definition's lineage would not mask.
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.ids AS SELECT patient_id, ward, mrn AS id FROM silver.patients;
             CREATE OR REPLACE MATERIALIZED VIEW gold.ids AS SELECT patient_id, ward, CAST(patient_id AS VARCHAR) AS id FROM silver.patients;
             INSERT INTO silver.patients VALUES (9, 'MRN-0009', 'New', 'icu');
             REFRESH MATERIALIZED VIEW gold.ids FULL;",
        )
        .await
        .unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    for sql in [
        "SELECT id FROM gold.ids VERSION AS OF 0",
        "SELECT id FROM gold.ids VERSION AS OF 2 UNION ALL SELECT id FROM gold.ids VERSION AS OF 0",
    ] {
        let err = analyst.query(sql).await.unwrap_err();
        assert_eq!(err.code().sqlstate(), "0A000", "{sql}: {err}");
        assert!(err.to_string().contains("redefined at version 1"), "{err}");
    }
    for version in [1, 2] {
        let rows = text(
            &analyst,
            &format!("SELECT id FROM gold.ids VERSION AS OF {version}"),
        )
        .await;
        assert!(!rows.contains("MRN-000") && rows.contains("| 3 "), "{rows}");
    }
    // Not even an admin copies a view out of its lineage: CLONE of a view or its quarantine
    // is refused (a copy would be read without the masks of the view's inputs).
    for source in ["gold.ids", "gold.ids_quarantine"] {
        let err = engine
            .sql(&format!(
                "CREATE TABLE gold.copy SHALLOW CLONE {source} VERSION AS OF 0"
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code().sqlstate(), "42809", "{source}: {err}");
    }
}

#[tokio::test]
async fn a_views_history_keeps_no_values_of_the_keys_a_refresh_rewrote() {
    // Keyed and multiset refreshes overwrite the view rows of the changed keys (a Delta
    // replaceWhere): the predicate naming those keys must not reach the commit log, where
    // DESCRIBE HISTORY would show the analyst unmasked MRNs.
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.by_mrn AS SELECT mrn, ward, count(*) AS n FROM silver.patients GROUP BY mrn, ward;
             CREATE MATERIALIZED VIEW gold.rows AS SELECT patient_id, mrn, ward FROM silver.patients;
             INSERT INTO silver.patients VALUES (7, 'MRN-0007', 'Seven', 'icu');
             UPDATE silver.patients SET ward = 'icu' WHERE patient_id = 1;
             REFRESH MATERIALIZED VIEW gold.by_mrn;
             REFRESH MATERIALIZED VIEW gold.rows;",
        )
        .await
        .unwrap();
    let local = engine.local_session();
    let modes = text(
        &local,
        "SELECT view, mode FROM system.refreshes WHERE trigger = 'manual' ORDER BY view",
    )
    .await;
    assert_eq!(modes.matches("incremental").count(), 2, "{modes}");
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    for view in ["gold.by_mrn", "gold.rows"] {
        for sql in [
            format!("DESCRIBE HISTORY {view}"),
            format!("SELECT * FROM table_history('{view}')"),
        ] {
            let history = text(&local, &sql).await;
            assert!(!history.contains("MRN-0"), "{sql}: {history}");
        }
        // The view inherits silver.patients' row filter: the analyst's history has no
        // counts, and no values either.
        let history = text(&analyst, &format!("DESCRIBE HISTORY {view}")).await;
        assert!(!history.contains("MRN-0"), "{history}");
    }
}

#[tokio::test]
async fn history_needs_select_on_its_table_and_tells_no_filtered_counts() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    // Only SELECT on gold: the history of silver's table is not theirs to read, whatever
    // the default schema.
    let nobody = user(&engine, "nob", Role::None, &[]);
    engine
        .sql("CREATE TABLE gold.g (x INT); GRANT SELECT ON SCHEMA gold TO nob")
        .await
        .unwrap();
    nobody.set_default_schema("gold").unwrap();
    for sql in [
        "SELECT * FROM table_history('silver.patients')",
        "SELECT count(*) FROM (SELECT * FROM table_history('silver.patients', 3)) h",
        "SELECT * FROM gold.g, table_history('silver.patients')",
        "DESCRIBE HISTORY silver.patients",
    ] {
        assert_eq!(outcome(&nobody, sql).await, "42501", "{sql}");
    }
    assert_eq!(
        outcome(&nobody, "SELECT * FROM table_history('g')").await,
        "ok"
    );
    // The analyst reads silver.patients through a row filter: history's row counts would
    // tell the rows it hides, so table_history is refused and DESCRIBE HISTORY shows none.
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    assert_eq!(
        outcome(&analyst, "SELECT * FROM table_history('silver.patients')").await,
        "42501"
    );
    let history = text(&analyst, "DESCRIBE HISTORY silver.patients").await;
    assert!(!history.contains("num_deleted_rows"), "{history}");
    let local = text(&engine.local_session(), "DESCRIBE HISTORY silver.patients").await;
    assert!(local.contains("num_deleted_rows"), "{local}");
}

#[tokio::test]
async fn a_quarantine_follows_its_view() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.ids CONSTRAINT k EXPECT (patient_id > 1) ON VIOLATION QUARANTINE
                 AS SELECT patient_id, ward, mrn AS id FROM silver.patients;
             INSERT INTO silver.patients VALUES (0, 'MRN-0000', 'Zero', 'icu');
             REFRESH MATERIALIZED VIEW gold.ids;",
        )
        .await
        .unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    let rows = text(&analyst, "SELECT id FROM gold.ids_quarantine").await;
    assert!(
        rows.contains("MRN-****") && !rows.contains("MRN-000"),
        "{rows}"
    );
    // Its past is not read (rows of an earlier definition would take the current lineage).
    for sql in [
        "SELECT id FROM gold.ids_quarantine VERSION AS OF 0",
        "SELECT id FROM table_changes('gold.ids_quarantine', 0)",
    ] {
        assert_eq!(outcome(&analyst, sql).await, "0A000", "{sql}");
    }
    // A definition without QUARANTINE takes the quarantine away with the old lineage.
    engine
        .sql("CREATE OR REPLACE MATERIALIZED VIEW gold.ids AS SELECT patient_id, ward, CAST(patient_id AS VARCHAR) AS id FROM silver.patients")
        .await
        .unwrap();
    assert_eq!(
        outcome(&analyst, "SELECT id FROM gold.ids_quarantine").await,
        "42P01"
    );
    // DROP MATERIALIZED VIEW drops its quarantine too.
    engine
        .sql(
            "CREATE OR REPLACE MATERIALIZED VIEW gold.ids CONSTRAINT k EXPECT (patient_id > 1) ON VIOLATION QUARANTINE
                 AS SELECT patient_id, ward, mrn AS id FROM silver.patients;
             DROP MATERIALIZED VIEW gold.ids;",
        )
        .await
        .unwrap();
    assert_eq!(
        outcome(&engine.local_session(), "SELECT * FROM gold.ids_quarantine").await,
        "42P01"
    );
    // Time travel inside a view's query is refused, not silently ignored.
    let err = engine
        .sql("CREATE MATERIALIZED VIEW gold.old AS SELECT * FROM silver.patients VERSION AS OF 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "0A000", "{err}");
}
