//! Roles, grants, ownership, column masks and row filters (issue 23): checked for each
//! principal in `Session::execute`, stored in `system.grants` (a restart sees them), and
//! carried through materialized views, time travel, CTAS and catalog listings.

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Engine, Principal, Role, Session};

use crate::{location, outcome, scratch};

fn user(engine: &Engine, name: &str, role: Role, roles: &[&str]) -> Session {
    let mut principal = Principal::user(name, role);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    engine.session_for(principal)
}

/// The rows of `sql` as one text table.
async fn text(session: &Session, sql: &str) -> String {
    let batches = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// [`text`] with runs of spaces squeezed to one (column widths vary).
async fn squeezed(session: &Session, sql: &str) -> String {
    text(session, sql)
        .await
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

const SETUP: &str = "
    CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, name VARCHAR, ward VARCHAR, birth DATE);
    INSERT INTO silver.patients VALUES
        (1, 'MRN-0001', 'Ada Lovelace', 'icu', DATE '1950-01-02'),
        (2, 'MRN-0002', 'Alan Turing', 'cardio', DATE '1960-03-04'),
        (3, 'MRN-0003', 'Grace Hopper', 'icu', DATE '1970-05-06');
    CREATE TABLE silver.readings (patient_id BIGINT, hr DOUBLE);
    INSERT INTO silver.readings VALUES (1, 80.0), (2, 90.0), (3, 100.0), (1, 82.0);
    CREATE ROLE clinician;
    CREATE ROLE analyst;
    GRANT USAGE ON SCHEMA silver TO clinician, analyst;
    GRANT SELECT ON TABLE silver.patients TO clinician, analyst;
    GRANT SELECT ON ALL TABLES IN SCHEMA gold TO analyst;
    GRANT SELECT ON TABLE silver.readings TO analyst;
    GRANT SELECT ON SCHEMA gold TO clinician;
    ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END;
    ALTER TABLE silver.patients ALTER COLUMN name SET MASK CASE WHEN is_member('clinician') THEN name ELSE NULL END;
";

#[tokio::test]
async fn grants_decide_who_reads_what_and_survive_a_restart() {
    let (dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nobody = user(&engine, "nobody", Role::None, &[]);
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    assert_eq!(
        outcome(&nobody, "SELECT * FROM silver.patients").await,
        "42501"
    );
    assert_eq!(
        outcome(&analyst, "SELECT count(*) FROM silver.patients").await,
        "ok"
    );
    assert_eq!(
        outcome(
            &analyst,
            "INSERT INTO silver.patients (patient_id) VALUES (9)"
        )
        .await,
        "42501"
    );
    assert_eq!(
        outcome(&analyst, "GRANT SELECT ON TABLE silver.patients TO ann").await,
        "42501"
    );
    assert_eq!(
        outcome(
            &analyst,
            "ALTER TABLE silver.patients ALTER COLUMN mrn DROP MASK"
        )
        .await,
        "42501"
    );
    assert_eq!(outcome(&analyst, "CREATE ROLE x").await, "42501");
    // A grant to the user itself, and a revoke taking effect at once on an open session.
    engine
        .sql("GRANT SELECT ON TABLE silver.readings TO nobody")
        .await
        .unwrap();
    assert_eq!(
        outcome(&nobody, "SELECT * FROM silver.readings").await,
        "42501",
        "USAGE on the schema is needed too"
    );
    engine
        .sql("GRANT USAGE ON SCHEMA silver TO nobody")
        .await
        .unwrap();
    assert_eq!(
        outcome(&nobody, "SELECT * FROM silver.readings").await,
        "ok"
    );
    engine
        .sql("REVOKE SELECT ON TABLE silver.readings FROM nobody")
        .await
        .unwrap();
    assert_eq!(
        outcome(&nobody, "SELECT * FROM silver.readings").await,
        "42501"
    );
    // Role membership granted in SQL.
    engine.sql("GRANT analyst TO nobody").await.unwrap();
    assert_eq!(
        outcome(&nobody, "SELECT * FROM silver.readings").await,
        "ok"
    );
    // Bad grants are refused clearly.
    assert_eq!(
        outcome(
            &engine.local_session(),
            "GRANT CREATE ON TABLE silver.readings TO x"
        )
        .await,
        "22023"
    );
    assert_eq!(
        outcome(
            &engine.local_session(),
            "GRANT SELECT ON TABLE silver.nope TO x"
        )
        .await,
        "42P01"
    );
    assert_eq!(
        outcome(&engine.local_session(), "GRANT nosuchrole TO x").await,
        "42704"
    );
    assert_eq!(
        outcome(&engine.local_session(), "CREATE ROLE admin").await,
        "22023"
    );
    let grants = text(&engine.local_session(), "SHOW GRANTS TO analyst").await;
    assert!(
        grants.contains("| analyst   | SELECT    | table       | silver.patients |"),
        "{grants}"
    );
    // Another engine over the same warehouse (a restart) sees the same state.
    drop(engine);
    let engine = Engine::open(&location(&dir)).await.unwrap();
    let nobody = user(&engine, "nobody", Role::None, &[]);
    assert_eq!(
        outcome(&nobody, "SELECT * FROM silver.readings").await,
        "ok"
    );
    let mine = text(&nobody, "SHOW GRANTS").await;
    assert!(
        mine.contains("nobody") && !mine.contains("clinician  "),
        "{mine}"
    );
    // The grants table itself is the admins' and auditors'.
    assert_eq!(
        outcome(&nobody, "SELECT * FROM system.grants").await,
        "42501"
    );
    let reader = user(&engine, "r", Role::Reader, &[]);
    assert_eq!(
        outcome(&reader, "SELECT * FROM system.grants").await,
        "42501"
    );
}

#[tokio::test]
async fn masks_hold_on_every_path_and_follow_lineage() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.by_patient AS
               SELECT p.mrn, upper(p.name) AS shout, p.ward, count(*) AS n, avg(r.hr) AS hr
               FROM silver.patients p JOIN silver.readings r ON p.patient_id = r.patient_id
               GROUP BY p.mrn, p.name, p.ward;
             CREATE MATERIALIZED VIEW gold.mrn_copy AS
               SELECT r.patient_id, p.mrn AS id_number FROM silver.readings r JOIN silver.patients p USING (patient_id);",
        )
        .await
        .unwrap();
    let clinician = user(&engine, "cli", Role::None, &["clinician"]);
    let analyst = user(&engine, "ann", Role::Reader, &["analyst"]);
    let direct = text(
        &clinician,
        "SELECT mrn, name FROM silver.patients ORDER BY patient_id",
    )
    .await;
    assert!(
        direct.contains("MRN-0001") && direct.contains("Ada Lovelace"),
        "{direct}"
    );
    let masked = text(
        &analyst,
        "SELECT mrn, name FROM silver.patients ORDER BY patient_id",
    )
    .await;
    assert!(
        !masked.contains("MRN-000") && !masked.contains("Ada"),
        "{masked}"
    );
    assert!(masked.contains("MRN-****"), "{masked}");
    // Every other way to the MRN: filters, joins, CTAS, time travel, EXPLAIN ANALYZE output,
    // subqueries, UNION, casts in errors.
    for sql in [
        "SELECT count(*) FROM silver.patients WHERE mrn = 'MRN-0001'",
        "SELECT count(*) FROM silver.patients WHERE mrn LIKE 'MRN-0%'",
        "SELECT count(*) FROM silver.patients p JOIN (VALUES ('MRN-0002')) v(m) ON p.mrn = v.m",
        "SELECT count(*) FROM silver.patients VERSION AS OF 1 WHERE mrn = 'MRN-0001'",
        "SELECT count(*) FROM (SELECT mrn FROM silver.patients UNION ALL SELECT 'x') WHERE mrn = 'MRN-0003'",
        "SELECT count(*) FROM silver.readings WHERE patient_id IN (SELECT patient_id FROM silver.patients WHERE mrn = 'MRN-0001')",
    ] {
        let rows = text(&analyst, sql).await;
        assert!(rows.contains("| 0 "), "{sql} leaked: {rows}");
    }
    let err = analyst
        .query("SELECT CAST(mrn AS INT) FROM silver.patients")
        .await;
    if let Err(e) = err {
        assert!(!e.to_string().contains("MRN-0"), "{e}");
    }
    // Gold views: the copied MRN is masked the same way, the computed name is NULL, what is
    // not derived from a masked column is as it is.
    let gold = text(
        &analyst,
        "SELECT mrn, shout, ward, n FROM gold.by_patient ORDER BY n, ward",
    )
    .await;
    assert!(!gold.contains("MRN-000") && !gold.contains("ADA"), "{gold}");
    assert!(
        gold.contains("MRN-****") && gold.contains("icu") && gold.contains("| 2 "),
        "{gold}"
    );
    let copy = text(&analyst, "SELECT id_number FROM gold.mrn_copy").await;
    assert!(
        !copy.contains("MRN-000") && copy.contains("MRN-****"),
        "{copy}"
    );
    let seen = text(
        &clinician,
        "SELECT mrn, shout FROM gold.by_patient ORDER BY mrn",
    )
    .await;
    assert!(
        seen.contains("MRN-0001") && seen.contains("ADA LOVELACE"),
        "{seen}"
    );
    // A table made from masked rows holds masked rows.
    assert_eq!(
        outcome(
            &user(&engine, "w", Role::Writer, &[]),
            "CREATE TABLE gold.exfil AS SELECT mrn FROM silver.patients"
        )
        .await,
        "ok"
    );
    let exfil = text(&engine.local_session(), "SELECT * FROM gold.exfil").await;
    assert!(!exfil.contains("MRN-000"), "{exfil}");
    // A view computes from real values: its creator must see every masked column it reads,
    // in a filter as much as in its output.
    let writer = user(&engine, "w", Role::Writer, &[]);
    assert_eq!(
        outcome(&writer, "CREATE MATERIALIZED VIEW gold.probe AS SELECT count(*) AS n FROM silver.patients WHERE mrn = 'MRN-0001'").await,
        "42501"
    );
    assert_eq!(
        outcome(
            &writer,
            "CREATE MATERIALIZED VIEW gold.ids AS SELECT patient_id FROM silver.patients"
        )
        .await,
        "ok"
    );
    // The owner of the table (an admin here) decides; the mask goes when dropped.
    engine
        .sql("ALTER TABLE silver.patients ALTER COLUMN mrn DROP MASK")
        .await
        .unwrap();
    let unmasked = text(&analyst, "SELECT mrn FROM gold.by_patient ORDER BY mrn").await;
    assert!(unmasked.contains("MRN-0001"), "{unmasked}");
}

#[tokio::test]
async fn row_filters_must_be_carried_by_views_and_break_glass_lifts_them() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "ALTER TABLE silver.patients SET ROW FILTER is_member('admin') OR ward = 'icu' ON (ward);
             CREATE MATERIALIZED VIEW gold.wards AS SELECT ward, patient_id FROM silver.patients;
             CREATE MATERIALIZED VIEW gold.counts AS SELECT count(*) AS n FROM silver.patients;
             CREATE ROLE oncall;
             GRANT break_glass TO oncall;",
        )
        .await
        .unwrap();
    let analyst = user(&engine, "ann", Role::Reader, &["analyst"]);
    assert_eq!(
        crate::count(&engine, "SELECT count(*) FROM silver.patients").await,
        3
    );
    let icu = text(&analyst, "SELECT count(*) AS n FROM silver.patients").await;
    assert!(icu.contains("| 2 "), "{icu}");
    // A view that carries the filter's column inherits it; one that does not is refused.
    let carried = text(&analyst, "SELECT count(*) AS n FROM gold.wards").await;
    assert!(carried.contains("| 2 "), "{carried}");
    assert_eq!(
        outcome(&analyst, "SELECT * FROM gold.counts").await,
        "42501"
    );
    engine
        .sql("ALTER MATERIALIZED VIEW gold.counts DECLASSIFY")
        .await
        .unwrap();
    assert_eq!(outcome(&analyst, "SELECT * FROM gold.counts").await, "ok");
    // Break glass: only for its members, with a reason, for that connection.
    assert_eq!(
        outcome(
            &analyst,
            "SET medlake.break_glass = 'patient crashing in bay 4'"
        )
        .await,
        "42501"
    );
    let oncall = user(&engine, "doc", Role::Reader, &["oncall"]);
    assert_eq!(
        outcome(&oncall, "SET medlake.break_glass = 'x'").await,
        "22023"
    );
    let before = text(
        &oncall,
        "SELECT mrn FROM silver.patients ORDER BY patient_id",
    )
    .await;
    assert!(!before.contains("MRN-0001"), "{before}");
    assert_eq!(
        outcome(
            &oncall,
            "SET medlake.break_glass = 'patient crashing in bay 4'"
        )
        .await,
        "ok"
    );
    let after = text(
        &oncall,
        "SELECT count(*) AS n, max(mrn) AS m FROM silver.patients",
    )
    .await;
    assert!(
        after.contains("| 3 ") && after.contains("MRN-0003"),
        "{after}"
    );
    assert_eq!(
        oncall.break_glass_reason().as_deref(),
        Some("patient crashing in bay 4")
    );
    assert_eq!(outcome(&oncall, "RESET medlake.break_glass").await, "ok");
    let mended = text(&oncall, "SELECT count(*) AS n FROM silver.patients").await;
    assert!(mended.contains("| 2 "), "{mended}");
}

#[tokio::test]
async fn owners_manage_their_tables_and_listings_show_what_one_may_use() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.secret_notes (id INT, note VARCHAR);
             CREATE ROLE engineers;
             GRANT CREATE ON SCHEMA bronze TO engineers;
             GRANT USAGE ON SCHEMA bronze TO engineers;",
        )
        .await
        .unwrap();
    let eng = user(&engine, "eve", Role::None, &["engineers"]);
    let other = user(&engine, "oscar", Role::None, &["engineers"]);
    assert_eq!(
        outcome(&eng, "CREATE TABLE bronze.mine (x INT)").await,
        "ok"
    );
    assert_eq!(
        outcome(&eng, "INSERT INTO bronze.mine VALUES (1)").await,
        "ok"
    );
    assert_eq!(outcome(&other, "SELECT * FROM bronze.mine").await, "42501");
    assert_eq!(outcome(&other, "DROP TABLE bronze.mine").await, "42501");
    assert_eq!(
        outcome(&eng, "GRANT SELECT ON TABLE bronze.mine TO oscar").await,
        "ok"
    );
    assert_eq!(outcome(&other, "SELECT * FROM bronze.mine").await, "ok");
    // Listings: only the tables one holds a privilege on.
    let listed = text(&eng, "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = 'bronze'").await;
    assert!(
        listed.contains("mine") && !listed.contains("secret_notes"),
        "{listed}"
    );
    let has = text(&eng, "SELECT has_table_privilege('bronze.secret_notes', 'SELECT') AS a, has_table_privilege('bronze.mine', 'SELECT') AS b").await;
    assert!(has.contains("| false | true |"), "{has}");
    // The automatic compaction policy is the owner's: not a reader's, nor one with every
    // privilege but ownership, and only its own properties with sane values.
    let policy = "ALTER TABLE bronze.mine SET TBLPROPERTIES ('medlake.autoCompact' = 'false')";
    assert_eq!(outcome(&other, policy).await, "42501");
    assert_eq!(
        outcome(&eng, "GRANT ALL PRIVILEGES ON TABLE bronze.mine TO oscar").await,
        "ok"
    );
    assert_eq!(outcome(&other, policy).await, "42501");
    assert_eq!(outcome(&eng, policy).await, "ok");
    // So are its bloom filter columns (which change every later file of the table).
    let bloom = "ALTER TABLE bronze.mine SET TBLPROPERTIES ('medlake.bloomFilterColumns' = 'x')";
    assert_eq!(outcome(&other, bloom).await, "42501");
    assert_eq!(outcome(&eng, bloom).await, "ok");
    for refused in [
        "ALTER TABLE bronze.mine SET TBLPROPERTIES ('delta.appendOnly' = 'true')",
        "ALTER TABLE bronze.mine SET TBLPROPERTIES ('medlake.autoCompact.minFiles' = '0')",
        "ALTER TABLE bronze.mine SET TBLPROPERTIES ('medlake.bloomFilterColumns' = 'x, \"../etc\"')",
        "ALTER TABLE bronze.mine SET TBLPROPERTIES ('medlake.autoCompact' = 'on', 'medlake.autoCompact.minFiles' = '9')",
    ] {
        assert_eq!(outcome(&eng, refused).await, "22023", "{refused}");
    }
    assert_eq!(
        outcome(
            &user(&engine, "root", Role::Admin, &[]),
            "ALTER TABLE system.audit SET TBLPROPERTIES ('medlake.autoCompact' = 'false')"
        )
        .await,
        "42501",
        "the audit log is no one's to reconfigure, an admin's neither"
    );
    assert_eq!(
        outcome(&eng, "ALTER TABLE bronze.mine OWNER TO oscar").await,
        "ok"
    );
    assert_eq!(outcome(&eng, "DROP TABLE bronze.mine").await, "42501");
    assert_eq!(outcome(&other, "OPTIMIZE bronze.mine").await, "ok");
    assert_eq!(outcome(&other, "DROP TABLE bronze.mine").await, "ok");
    // Dropping forgot its grants: a new table of that name starts clean.
    assert_eq!(
        outcome(&eng, "CREATE TABLE bronze.mine (x INT)").await,
        "ok"
    );
    assert_eq!(outcome(&other, "SELECT * FROM bronze.mine").await, "42501");
}

#[tokio::test]
async fn pseudonym_keys_are_secrets_that_need_usage() {
    let dir = tempfile::tempdir().unwrap();
    let policy = medlake_source::Policy::strict()
        .with_secret("PSEUDO_KEY", "0123456789abcdef0123456789abcdef");
    let engine = Engine::open_with_sources(
        &location(&dir),
        medlake_engine::runtime::RuntimeSettings::default(),
        policy,
    )
    .await
    .unwrap();
    engine.sql(SETUP).await.unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    let sql = "SELECT pseudonym(mrn, 'PSEUDO_KEY') AS p FROM silver.patients";
    assert_eq!(outcome(&analyst, sql).await, "42501");
    assert_eq!(
        outcome(&analyst, "CREATE MATERIALIZED VIEW gold.p AS SELECT pseudonym(mrn, 'PSEUDO_KEY') AS p FROM silver.patients").await,
        "42501"
    );
    // Nor through a mask or row filter on a table of their own, or a view's expectation
    // (each is evaluated with the key for whoever reads).
    engine
        .sql("CREATE SCHEMA own; GRANT CREATE, USAGE ON SCHEMA own TO analyst")
        .await
        .unwrap();
    analyst
        .sql("CREATE TABLE own.k (v VARCHAR); INSERT INTO own.k VALUES ('MRN-0001')")
        .await
        .unwrap();
    for sql in [
        "ALTER TABLE own.k ALTER COLUMN v SET MASK pseudonym(v, 'PSEUDO_KEY')",
        "ALTER TABLE own.k SET ROW FILTER pseudonym(v, 'PSEUDO_KEY') = 'x' ON (v)",
        "CREATE MATERIALIZED VIEW own.kx CONSTRAINT c EXPECT (CAST(pseudonym(v, 'PSEUDO_KEY') AS INT) > 0) AS SELECT v FROM own.k",
    ] {
        assert_eq!(outcome(&analyst, sql).await, "42501", "{sql}");
    }
    engine
        .sql("GRANT USAGE ON SECRET PSEUDO_KEY TO analyst")
        .await
        .unwrap();
    assert_eq!(
        outcome(
            &analyst,
            "ALTER TABLE own.k ALTER COLUMN v SET MASK pseudonym(v, 'PSEUDO_KEY')"
        )
        .await,
        "ok"
    );
    // The pseudonym is of the value the analyst sees (masked here): consistent, not the MRN.
    let rows = text(&analyst, sql).await;
    assert!(
        !rows.contains("MRN") && !rows.contains("0123456789abcdef"),
        "{rows}"
    );
    let clinician = user(&engine, "cli", Role::None, &["clinician"]);
    engine
        .sql("GRANT USAGE ON SECRET PSEUDO_KEY TO clinician")
        .await
        .unwrap();
    let a = text(&clinician, sql).await;
    let b = text(&clinician, sql).await;
    assert_eq!(a, b);
    // A key that is not a literal is refused when planned.
    assert_ne!(
        outcome(&analyst, "SELECT pseudonym(mrn, mrn) FROM silver.patients").await,
        "ok"
    );
}

/// Waits until `system.audit` holds at least `n` events matching `filter` (queries are
/// recorded within a second).
async fn audited(auditor: &Session, filter: &str, n: usize) -> String {
    let sql = format!(
        "SELECT user_name, door, kind, statement, objects_read, objects_written, row_count, outcome, sqlstate, break_glass FROM system.audit WHERE {filter} ORDER BY seq"
    );
    for _ in 0..50 {
        let batches = auditor.query(&sql).await.unwrap();
        if batches.iter().map(|b| b.num_rows()).sum::<usize>() >= n {
            return pretty_format_batches(&batches).unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} audit events for {filter}");
}

#[tokio::test]
async fn every_statement_is_audited_without_its_literals_and_only_auditors_read_it() {
    let (dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql("CREATE ROLE oncall; GRANT break_glass TO oncall")
        .await
        .unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst", "oncall"]);
    let auditor = user(&engine, "aud", Role::None, &["auditor"]);
    let admin = user(&engine, "root", Role::Admin, &[]);
    assert_eq!(outcome(&admin, "SELECT * FROM system.audit").await, "42501");
    assert_eq!(
        outcome(&analyst, "SELECT * FROM system.audit").await,
        "42501"
    );
    assert_eq!(outcome(&auditor, "DELETE FROM system.audit").await, "42501");
    assert_eq!(outcome(&auditor, "OPTIMIZE system.audit").await, "42501");
    assert_eq!(
        outcome(&auditor, "VACUUM system.audit RETAIN 24 HOURS").await,
        "22023"
    );
    let rows = text(
        &analyst,
        "SELECT patient_id FROM silver.patients WHERE mrn = 'MRN-0001' OR patient_id > 0",
    )
    .await;
    assert!(rows.contains("| 3 "), "{rows}");
    assert_eq!(
        outcome(&analyst, "INSERT INTO silver.readings VALUES (7, 70.0)").await,
        "42501"
    );
    assert_eq!(
        outcome(&analyst, "SET medlake.break_glass = 'sepsis alert bed 12'").await,
        "ok"
    );
    let log = audited(&auditor, "user_name = 'ann'", 4).await;
    assert!(
        !log.contains("MRN-0001"),
        "a literal reached the audit: {log}"
    );
    assert!(
        log.contains("silver.patients") && log.contains("| 3 "),
        "{log}"
    );
    assert!(
        log.contains("denied") && log.contains("42501") && log.contains("silver.readings"),
        "{log}"
    );
    assert!(log.contains("sepsis alert bed 12"), "{log}");
    // A query that fails while its rows stream is recorded as the error it was.
    assert_eq!(
        outcome(
            &analyst,
            "SELECT 1 / patient_id * 0 / 0 FROM silver.readings"
        )
        .await,
        "22012"
    );
    let failed = audited(&auditor, "user_name = 'ann' AND sqlstate = '22012'", 1).await;
    assert!(failed.contains("error"), "{failed}");
    // SQL that does not parse is recorded too, without its literals.
    assert_eq!(
        outcome(
            &analyst,
            "SELEC * FROM silver.patients WHERE mrn = 'MRN-0002'"
        )
        .await,
        "42601"
    );
    let unparsed = audited(&auditor, "user_name = 'ann' AND sqlstate = '42601'", 1).await;
    assert!(!unparsed.contains("MRN-0002"), "{unparsed}");
    // A view's statement is recorded whole: OR REPLACE, its schedule and its expectations.
    admin
        .sql("CREATE OR REPLACE MATERIALIZED VIEW silver.ids CONSTRAINT positive EXPECT (patient_id > 0) AS SELECT patient_id FROM silver.readings")
        .await
        .unwrap();
    let created = audited(&auditor, "user_name = 'root' AND kind LIKE 'CREATE%'", 1).await;
    assert!(
        created.contains("CREATE OR REPLACE MATERIALIZED VIEW silver.ids CONSTRAINT positive EXPECT (patient_id > ?)"),
        "{created}"
    );
    // The chain verifies.
    let report = medlake_audit::verify(engine.warehouse()).await.unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    // Fail closed: when the audit table cannot be written, statements are refused.
    let log_dir = dir
        .path()
        .join("wh")
        .join("system")
        .join("audit")
        .join("_delta_log");
    if log_dir.is_dir() {
        let aside = log_dir.with_extension("aside");
        std::fs::rename(&log_dir, &aside).unwrap();
        std::fs::write(&log_dir, b"not a folder").unwrap();
        let mut refused = false;
        for _ in 0..3 {
            if outcome(&admin, "INSERT INTO silver.readings VALUES (8, 80.0)").await == "58M01" {
                refused = true;
                break;
            }
        }
        assert!(refused, "a write was acknowledged without its audit");
        assert_eq!(outcome(&admin, "SELECT 1").await, "58M01");
        std::fs::remove_file(&log_dir).unwrap();
        std::fs::rename(&aside, &log_dir).unwrap();
    } else {
        panic!("no audit log folder at {}", log_dir.display());
    }
}

#[tokio::test]
async fn quarantined_rows_are_masked_as_their_view_is() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.checked
               CONSTRAINT known EXPECT (patient_id > 1) ON VIOLATION QUARANTINE
               AS SELECT patient_id, mrn FROM silver.patients",
        )
        .await
        .unwrap();
    let analyst = user(&engine, "ann", Role::None, &["analyst"]);
    let quarantined = text(&analyst, "SELECT mrn FROM gold.checked_quarantine").await;
    assert!(
        quarantined.contains("MRN-****") && !quarantined.contains("MRN-000"),
        "{quarantined}"
    );
    let raw = text(
        &engine.local_session(),
        "SELECT count(*) AS n FROM gold.checked_quarantine",
    )
    .await;
    assert!(raw.contains("| 1 "), "{raw}");
}

#[tokio::test]
async fn the_postgres_catalog_lists_only_what_one_may_use_with_its_privileges() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR);
             CREATE TABLE silver.notes (patient_id BIGINT, note VARCHAR);
             CREATE ROLE clinician;
             CREATE ROLE loader;
             GRANT USAGE ON SCHEMA silver TO clinician, loader;
             GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE silver.patients TO clinician;
             GRANT SELECT ON TABLE silver.patients TO alice;
             GRANT INSERT ON TABLE silver.notes TO loader;",
        )
        .await
        .unwrap();
    let nobody = user(&engine, "nobody", Role::None, &[]);
    let alice = user(&engine, "alice", Role::None, &["clinician"]);
    let loader = user(&engine, "lou", Role::None, &["loader"]);
    let columns = "SELECT c.relname, a.attname FROM pg_catalog.pg_attribute a \
        JOIN pg_catalog.pg_class c ON a.attrelid = c.oid \
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
        WHERE n.nspname = 'silver' ORDER BY 1, 2";
    let classes = "SELECT c.relname FROM pg_catalog.pg_class c \
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'silver'";
    // No privilege: no relation, no column, in any catalog; DESCRIBE is refused.
    for sql in [
        columns,
        classes,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'silver'",
        "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'silver'",
    ] {
        let rows = text(&nobody, sql).await;
        assert!(
            !rows.contains("patients") && !rows.contains("mrn") && !rows.contains("note"),
            "{sql}: {rows}"
        );
    }
    assert_eq!(outcome(&nobody, "DESCRIBE silver.patients").await, "42501");
    // INSERT alone lists a table and its columns (one may see what one writes).
    let rows = squeezed(&loader, columns).await;
    assert!(
        rows.contains("| notes | note |") && !rows.contains("patients"),
        "{rows}"
    );
    assert_eq!(outcome(&loader, "DESCRIBE silver.notes").await, "ok");
    assert_eq!(outcome(&loader, "DESCRIBE silver.patients").await, "42501");
    // relacl: PostgreSQL's aclitem text, the grants one may see (an admin: all).
    let acl = "SELECT c.relname, array_to_string(c.relacl, ',') AS acl FROM pg_catalog.pg_class c \
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
        WHERE n.nspname = 'silver' ORDER BY 1";
    let admin = user(&engine, "root", Role::Admin, &[]);
    let rows = squeezed(&admin, acl).await;
    assert!(
        rows.contains("| notes | loader=a/medlake |")
            && rows.contains("| patients | alice=r/medlake,clinician=arwd/medlake |"),
        "{rows}"
    );
    let rows = squeezed(&alice, acl).await;
    assert!(
        rows.contains("| patients | alice=r/medlake,clinician=arwd/medlake |")
            && !rows.contains("notes"),
        "{rows}"
    );
    let rows = squeezed(&loader, acl).await;
    assert!(rows.contains("| notes | loader=a/medlake |"), "{rows}");
}

/// An AUTO CDC view reads its source like any view: its creator must list the source (or its
/// columns are not named in errors), hold SELECT on it and see unmasked what the view reads,
/// which is only the columns it names (the tie order reads no others).
#[tokio::test]
async fn auto_cdc_views_read_their_source_as_any_view() {
    let (_dir, engine) = scratch().await;
    engine.sql(SETUP).await.unwrap();
    let nobody = user(&engine, "nobody", Role::None, &[]);
    let writer = user(&engine, "w", Role::Writer, &[]);
    for sql in [
        "CREATE MATERIALIZED VIEW gold.cdc AS AUTO CDC FROM silver.patients KEYS (patient_id) SEQUENCE BY birth",
        // An unknown column is not told apart from a known one: the source is not listed.
        "CREATE MATERIALIZED VIEW gold.cdc AS AUTO CDC FROM silver.patients KEYS (secret) SEQUENCE BY birth",
    ] {
        assert_eq!(outcome(&nobody, sql).await, "42501", "{sql}");
    }
    // mrn and name are masked for the writer: a view of every column would compute from them.
    assert_eq!(
        outcome(
            &writer,
            "CREATE MATERIALIZED VIEW gold.cdc AS AUTO CDC FROM silver.patients KEYS (patient_id) SEQUENCE BY birth"
        )
        .await,
        "42501"
    );
    assert_eq!(
        outcome(
            &writer,
            "CREATE MATERIALIZED VIEW gold.cdc AS AUTO CDC FROM silver.patients KEYS (patient_id) SEQUENCE BY birth COLUMNS * EXCEPT (mrn, name)"
        )
        .await,
        "ok"
    );
    let rows = squeezed(
        &engine.local_session(),
        "SELECT patient_id, ward FROM gold.cdc ORDER BY patient_id",
    )
    .await;
    assert!(
        rows.contains("| 1 | icu |") && rows.contains("| 3 | icu |"),
        "{rows}"
    );
}
