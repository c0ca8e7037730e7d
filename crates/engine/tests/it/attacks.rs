//! Bypasses of the access model an attacker tried (issue 23's review), each closed: a
//! materialized view reading what its creator may not, another session's pinned version
//! read by name, row filters escaping through self-joins, windows and subqueries, masks
//! escaping through a scalar subquery, INSERT OVERWRITE with only INSERT, replacing a view
//! one does not own, refreshes after the owner lost a grant, grants to unknown names.

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::{Engine, Principal, Role, Session};

use crate::{location, outcome};

fn principal(name: &str, role: Role, roles: &[&str]) -> Principal {
    let mut principal = Principal::user(name, role);
    principal.roles = roles.iter().map(|r| r.to_string()).collect();
    principal
}

async fn text(session: &Session, sql: &str) -> String {
    let batches = session
        .query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

/// An engine that knows its users, as `medlake serve` with a config does.
async fn server() -> (tempfile::TempDir, Engine, [Principal; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let users = [
        principal("ann", Role::None, &["analyst"]),
        principal("clin", Role::None, &["clinician"]),
        principal("wrt", Role::Writer, &[]),
    ];
    let engine = Engine::builder(&location(&dir))
        .users(users.clone())
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE bronze.raw (patient_id BIGINT, mrn VARCHAR);
             INSERT INTO bronze.raw VALUES (1, 'MRN-0001');
             CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, ward VARCHAR, birth DATE);
             INSERT INTO silver.patients VALUES
                 (1, 'MRN-0001', 'icu', DATE '1950-01-02'),
                 (2, 'MRN-0002', 'cardio', DATE '1960-03-04'),
                 (3, 'MRN-0003', 'icu', DATE '1970-05-06');
             CREATE TABLE silver.readings (patient_id BIGINT, hr DOUBLE);
             INSERT INTO silver.readings VALUES (1, 80.0), (2, 90.0);
             CREATE SCHEMA scratch;
             CREATE ROLE analyst;
             CREATE ROLE clinician;
             GRANT USAGE ON SCHEMA silver TO analyst, clinician;
             GRANT SELECT ON TABLE silver.patients TO analyst, clinician;
             GRANT SELECT ON TABLE silver.readings TO analyst, clinician;
             GRANT CREATE, USAGE, SELECT ON SCHEMA scratch TO analyst, clinician;
             ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END;
             ALTER TABLE silver.patients SET ROW FILTER is_member('clinician') OR ward = 'icu' ON (ward);",
        )
        .await
        .unwrap();
    (dir, engine, users)
}

#[tokio::test]
async fn a_view_reads_only_what_its_creator_may_read() {
    let (_dir, engine, [ann, _, wrt]) = server().await;
    let ann = engine.session_for(ann);
    assert_eq!(outcome(&ann, "SELECT * FROM bronze.raw").await, "42501");
    assert_eq!(
        outcome(
            &ann,
            "CREATE MATERIALIZED VIEW scratch.steal AS SELECT * FROM bronze.raw"
        )
        .await,
        "42501"
    );
    // Writers read every table, but system.audit is the auditors' and system.grants the
    // admins'.
    let wrt = engine.session_for(wrt);
    for table in ["system.audit", "system.grants"] {
        assert_eq!(
            outcome(
                &wrt,
                &format!("CREATE MATERIALIZED VIEW scratch.x AS SELECT * FROM {table}")
            )
            .await,
            "42501",
            "{table}"
        );
    }
    assert_eq!(
        outcome(
            &ann,
            "CREATE MATERIALIZED VIEW scratch.mine AS SELECT patient_id, hr FROM silver.readings"
        )
        .await,
        "ok"
    );
    // Replacing a view is its owner's: ann's CREATE on the schema is not enough for the
    // admin's view.
    engine
        .sql("CREATE MATERIALIZED VIEW scratch.theirs AS SELECT patient_id FROM silver.readings")
        .await
        .unwrap();
    assert_eq!(
        outcome(
            &ann,
            "CREATE OR REPLACE MATERIALIZED VIEW scratch.theirs AS SELECT 666 AS patient_id"
        )
        .await,
        "42501"
    );
    assert_eq!(
        outcome(
            &ann,
            "CREATE OR REPLACE MATERIALIZED VIEW scratch.mine AS SELECT patient_id FROM silver.readings"
        )
        .await,
        "ok"
    );
}

#[tokio::test]
async fn refreshes_run_as_the_owner_and_grants_name_known_principals() {
    let (_dir, engine, [ann, ..]) = server().await;
    let ann = engine.session_for(ann);
    assert_eq!(
        outcome(
            &ann,
            "CREATE MATERIALIZED VIEW scratch.hr AS SELECT patient_id, hr FROM silver.readings"
        )
        .await,
        "ok"
    );
    engine
        .sql("INSERT INTO silver.readings VALUES (3, 70.0)")
        .await
        .unwrap();
    assert_eq!(
        outcome(&ann, "REFRESH MATERIALIZED VIEW scratch.hr").await,
        "ok"
    );
    // The owner loses the grant: nobody's refresh reads for them any more, an admin's
    // included.
    engine
        .sql("REVOKE SELECT ON TABLE silver.readings FROM analyst")
        .await
        .unwrap();
    engine
        .sql("INSERT INTO silver.readings VALUES (4, 71.0)")
        .await
        .unwrap();
    let admin = engine.session_for(Principal::user("root", Role::Admin));
    let refused = admin
        .sql("REFRESH MATERIALIZED VIEW scratch.hr")
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code().sqlstate(), "42501", "{refused}");
    assert!(refused.to_string().contains("owner 'ann'"), "{refused}");
    // Handing the view to someone who may read its input lets it refresh again.
    assert_eq!(
        outcome(
            &admin,
            "ALTER MATERIALIZED VIEW scratch.hr OWNER TO clinician"
        )
        .await,
        "ok"
    );
    assert_eq!(
        outcome(&admin, "REFRESH MATERIALIZED VIEW scratch.hr").await,
        "ok"
    );
    // Grants and owners name configured users, roles or PUBLIC only.
    for sql in [
        "GRANT SELECT ON TABLE silver.readings TO nosuch",
        "GRANT analyst TO nosuch",
        "ALTER TABLE silver.readings OWNER TO nosuch",
    ] {
        assert_eq!(outcome(&admin, sql).await, "42704", "{sql}");
    }
    for sql in [
        "GRANT SELECT ON TABLE silver.readings TO ann",
        "GRANT SELECT ON TABLE silver.readings TO public",
        "GRANT analyst TO wrt",
    ] {
        assert_eq!(outcome(&admin, sql).await, "ok", "{sql}");
    }
}

#[tokio::test]
async fn row_filters_do_not_escape_through_self_joins_windows_or_subqueries() {
    let (_dir, engine, [ann, clin, _]) = server().await;
    let ann = engine.session_for(ann);
    let clin = engine.session_for(clin);
    // Each created by the clinician (who sees every row), read by the analyst (icu only).
    let views = [
        (
            "self_join",
            "SELECT p.ward, q.patient_id, q.birth FROM silver.patients p CROSS JOIN silver.patients q",
            false,
        ),
        (
            "self_join_carried",
            "SELECT p.ward, q.patient_id, q.ward AS qward FROM silver.patients p CROSS JOIN silver.patients q",
            true,
        ),
        (
            "lagged",
            "SELECT ward, patient_id, lag(birth) OVER (ORDER BY patient_id) AS prev FROM silver.patients",
            false,
        ),
        (
            "counted",
            "SELECT ward, patient_id, count(*) OVER () AS n FROM silver.patients",
            false,
        ),
        (
            "per_ward",
            "SELECT ward, patient_id, count(*) OVER (PARTITION BY ward) AS n FROM silver.patients",
            true,
        ),
        (
            "subquery",
            "SELECT ward, patient_id, (SELECT max(birth) FROM silver.patients) AS latest FROM silver.patients",
            false,
        ),
        (
            "semi",
            "SELECT patient_id, hr FROM silver.readings WHERE patient_id IN (SELECT patient_id FROM silver.patients)",
            false,
        ),
    ];
    for (name, query, readable) in views {
        assert_eq!(
            outcome(
                &clin,
                &format!("CREATE MATERIALIZED VIEW scratch.{name} AS {query}")
            )
            .await,
            "ok",
            "{name}"
        );
        let read = outcome(&ann, &format!("SELECT * FROM scratch.{name}")).await;
        assert_eq!(read == "ok", readable, "{name}: {read}");
    }
    // What the carried ones show the analyst: icu rows only, both sides of the join.
    let carried = text(
        &ann,
        "SELECT DISTINCT ward, qward FROM scratch.self_join_carried ORDER BY 1, 2",
    )
    .await;
    assert!(!carried.contains("cardio"), "{carried}");
    let per_ward = text(&ann, "SELECT DISTINCT n FROM scratch.per_ward").await;
    assert!(per_ward.contains("| 2 "), "{per_ward}");
    // CREATE answers no row count for a filtered view (it would count hidden rows).
    let reply = clin
        .sql(
            "CREATE MATERIALIZED VIEW scratch.rows AS SELECT ward, patient_id FROM silver.patients",
        )
        .await
        .unwrap();
    match reply.into_iter().next() {
        Some(medlake_engine::Output::Command { rows, .. }) => assert_eq!(rows, 0),
        _ => panic!("CREATE MATERIALIZED VIEW answered rows"),
    }
}

#[tokio::test]
async fn masks_follow_scalar_subqueries_and_pins_are_private() {
    let (_dir, engine, [ann, clin, _]) = server().await;
    let ann = engine.session_for(ann);
    let clin = engine.session_for(clin);
    // A masked table without a row filter, and an unmasked one of candidate MRNs.
    engine
        .sql(
            "CREATE TABLE silver.enc (patient_id BIGINT, mrn VARCHAR, ward VARCHAR);
             INSERT INTO silver.enc VALUES (1, 'MRN-0001', 'icu'), (2, 'MRN-0002', 'cardio');
             CREATE TABLE silver.lookup (code VARCHAR);
             INSERT INTO silver.lookup VALUES ('MRN-0001'), ('MRN-0002'), ('MRN-0009');
             GRANT SELECT ON TABLE silver.enc TO analyst, clinician;
             GRANT SELECT ON TABLE silver.lookup TO analyst, clinician;
             ALTER TABLE silver.enc ALTER COLUMN mrn SET MASK CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END;",
        )
        .await
        .unwrap();
    for (name, query) in [
        (
            "scalar",
            "SELECT patient_id, (SELECT max(mrn) FROM silver.enc) AS m FROM silver.readings",
        ),
        (
            "correlated",
            "SELECT (SELECT max(l.code) FROM silver.lookup l WHERE l.code = e.mrn) AS m FROM silver.enc e",
        ),
        (
            "joined_on",
            "SELECT l.code AS m FROM silver.lookup l JOIN silver.enc e ON l.code = e.mrn",
        ),
        (
            "joined_where",
            "SELECT l.code AS m FROM silver.lookup l, silver.enc e WHERE l.code = e.mrn",
        ),
        (
            "joined_upper",
            "SELECT l.code AS m FROM silver.lookup l JOIN silver.enc e ON l.code = upper(e.mrn)",
        ),
        (
            "rollup",
            "SELECT ward, mrn AS m, count(*) AS n FROM silver.enc GROUP BY ROLLUP (ward, mrn)",
        ),
        (
            "sets",
            "SELECT patient_id, mrn AS m, count(*) AS n FROM silver.enc GROUP BY GROUPING SETS ((patient_id, mrn))",
        ),
    ] {
        assert_eq!(
            outcome(
                &clin,
                &format!("CREATE MATERIALIZED VIEW scratch.{name} AS {query}")
            )
            .await,
            "ok",
            "{name}"
        );
        let seen = text(&ann, &format!("SELECT DISTINCT m FROM scratch.{name}")).await;
        assert!(!seen.contains("MRN-000"), "{name}: {seen}");
    }
    // Another statement's pinned version, named directly, is refused (it would bypass the
    // masks and filters its own statement applies).
    assert_eq!(
        outcome(
            &ann,
            "SELECT * FROM \"__medlake_time_travel\".\"silver.patients@0#1\""
        )
        .await,
        "42501"
    );
    let old = text(&ann, "SELECT mrn FROM silver.patients VERSION AS OF 1").await;
    assert!(!old.contains("MRN-000"), "{old}");
}

#[tokio::test]
async fn declassify_does_not_outlive_the_query_or_the_inputs_owner() {
    let (_dir, engine, [ann, ..]) = server().await;
    let admin = engine.session_for(Principal::user("root", Role::Admin));
    engine
        .sql(
            "CREATE TABLE scratch.mine (k VARCHAR);
             INSERT INTO scratch.mine VALUES ('a'), ('b');
             ALTER TABLE scratch.mine OWNER TO ann;",
        )
        .await
        .unwrap();
    let ann = engine.session_for(ann);
    for sql in [
        "ALTER TABLE scratch.mine SET ROW FILTER k = 'a' ON (k)",
        "CREATE MATERIALIZED VIEW scratch.dv AS SELECT count(*) AS n FROM scratch.mine",
        "ALTER MATERIALIZED VIEW scratch.dv DECLASSIFY",
        "SELECT * FROM scratch.dv",
    ] {
        assert_eq!(outcome(&ann, sql).await, "ok", "{sql}");
    }
    // The input handed to someone else: the view's rows are no longer ann's to release.
    assert_eq!(
        outcome(&admin, "ALTER TABLE scratch.mine OWNER TO clin").await,
        "ok"
    );
    assert_eq!(outcome(&ann, "SELECT * FROM scratch.dv").await, "42501");
    assert_eq!(
        outcome(&admin, "ALTER TABLE scratch.mine OWNER TO ann").await,
        "ok"
    );
    assert_eq!(outcome(&ann, "SELECT * FROM scratch.dv").await, "ok");
    // A new query replaces the declassification with the definition.
    assert_eq!(
        outcome(
            &ann,
            "CREATE OR REPLACE MATERIALIZED VIEW scratch.dv AS SELECT patient_id, birth FROM silver.patients"
        )
        .await,
        "ok"
    );
    assert_eq!(outcome(&ann, "SELECT * FROM scratch.dv").await, "42501");
}

#[tokio::test]
async fn statements_nested_too_deep_are_refused_not_a_crash() {
    let (_dir, engine, [ann, ..]) = server().await;
    let ann = engine.session_for(ann);
    let terms = |n: usize, op: &str| vec!["1"; n].join(op);
    assert_eq!(
        outcome(&ann, &format!("SELECT {}", terms(100, " + "))).await,
        "ok"
    );
    for sql in [
        format!("SELECT {}", terms(5000, " + ")),
        format!("SELECT {}", terms(400, " || ")),
        vec!["SELECT 1"; 400].join(" UNION ALL "),
        format!(
            "CREATE MATERIALIZED VIEW scratch.deep AS SELECT {}",
            terms(5000, " + ")
        ),
    ] {
        assert_eq!(outcome(&ann, &sql).await, "54000", "{}", &sql[..40]);
    }
}

#[tokio::test]
async fn overwriting_needs_delete_as_well_as_insert() {
    let (_dir, engine, [ann, ..]) = server().await;
    engine
        .sql(
            "CREATE TABLE bronze.inbox (id BIGINT, note VARCHAR);
             INSERT INTO bronze.inbox VALUES (1, 'keep');
             GRANT USAGE ON SCHEMA bronze TO analyst;
             GRANT INSERT ON TABLE bronze.inbox TO analyst;",
        )
        .await
        .unwrap();
    let ann = engine.session_for(ann);
    assert_eq!(
        outcome(&ann, "INSERT INTO bronze.inbox VALUES (2, 'new')").await,
        "ok"
    );
    assert_eq!(
        outcome(&ann, "INSERT OVERWRITE bronze.inbox VALUES (9, 'wiped')").await,
        "42501"
    );
    assert_eq!(
        crate::count(&engine, "SELECT count(*) FROM bronze.inbox").await,
        2
    );
}

#[tokio::test]
async fn explain_shows_no_statistics_paths_or_metrics_of_protected_tables() {
    let (_dir, engine, [ann, clin, _]) = server().await;
    let ann = engine.session_for(ann);
    ann.sql("SET datafusion.explain.show_statistics = true")
        .await
        .unwrap();
    // Physical plans carry row counts and min/max of hidden rows ('cardio' is only in the
    // filtered row) and file paths; ANALYZE counts the rows a filter pruned.
    for sql in [
        "EXPLAIN VERBOSE SELECT * FROM silver.patients",
        "EXPLAIN ANALYZE SELECT * FROM silver.patients",
        "EXPLAIN ANALYZE VERBOSE SELECT count(*) FROM silver.patients",
    ] {
        assert_eq!(outcome(&ann, sql).await, "42501", "{sql}");
    }
    for sql in [
        "EXPLAIN SELECT * FROM silver.patients",
        "EXPLAIN FORMAT TREE SELECT * FROM silver.patients",
        "EXPLAIN SELECT p.mrn FROM silver.readings r JOIN silver.patients p USING (patient_id)",
    ] {
        let plan = text(&ann, sql).await;
        assert!(plan.contains("logical_plan"), "{sql}: {plan}");
        for leak in ["physical_plan", "Rows=", "parquet", "cardio", "MRN-0"] {
            assert!(!plan.contains(leak), "{sql} shows {leak}: {plan}");
        }
    }
    // A table without policies, and a principal the policies do not restrict: as before.
    let plan = text(&ann, "EXPLAIN VERBOSE SELECT * FROM silver.readings").await;
    assert!(plan.contains("physical_plan"), "{plan}");
    let clin = engine.session_for(clin);
    let plan = text(&clin, "EXPLAIN ANALYZE SELECT * FROM silver.patients").await;
    assert!(plan.contains("output_rows=3"), "{plan}");
}

#[tokio::test]
async fn system_tables_show_a_reader_only_the_views_it_lists_and_no_refresh_errors() {
    let (_dir, engine, [ann, _, wrt]) = server().await;
    engine
        .sql(
            "CREATE TABLE bronze.codes (code VARCHAR);
             INSERT INTO bronze.codes VALUES ('1');
             CREATE MATERIALIZED VIEW silver.codes AS SELECT CAST(code AS BIGINT) AS code FROM bronze.codes;
             CREATE MATERIALIZED VIEW bronze.hidden AS SELECT count(*) AS n FROM bronze.raw;
             INSERT INTO bronze.codes VALUES ('MRN-SECRET-7');
             GRANT SELECT ON TABLE silver.codes TO analyst;
             GRANT USAGE, SELECT ON SCHEMA system TO analyst;",
        )
        .await
        .unwrap();
    // The refresh fails on the value it could not cast, and says so to its maintainers.
    assert_ne!(
        outcome(
            &engine.local_session(),
            "REFRESH MATERIALIZED VIEW silver.codes"
        )
        .await,
        "ok"
    );
    let wrt = engine.session_for(wrt);
    let all = text(
        &wrt,
        "SELECT view, rows_written, error FROM system.refreshes ORDER BY view, started",
    )
    .await;
    assert!(
        all.contains("MRN-SECRET-7") && all.contains("bronze.hidden"),
        "{all}"
    );
    let ann = engine.session_for(ann);
    for sql in [
        "SELECT * FROM system.refreshes",
        "SELECT * FROM system.materialized_views",
        "SELECT * FROM system.lineage",
        "SELECT * FROM system.expectations",
    ] {
        let rows = text(&ann, sql).await;
        assert!(
            !rows.contains("hidden") && !rows.contains("bronze.raw"),
            "{sql}: {rows}"
        );
        assert!(!rows.contains("MRN-SECRET-7"), "{sql}: {rows}");
    }
    let refreshes = text(
        &ann,
        "SELECT view, status, rows_written, error FROM system.refreshes ORDER BY started",
    )
    .await;
    assert!(
        refreshes.contains("silver.codes") && refreshes.contains("view's owner"),
        "{refreshes}"
    );
    let views = text(&ann, "SELECT name, rows FROM system.materialized_views").await;
    assert!(
        views.contains("codes") && !views.contains("| 1 "),
        "{views}"
    );
}

#[tokio::test]
async fn a_mask_set_after_a_view_was_created_stops_its_owners_refreshes() {
    let (_dir, engine, [ann, clin, _]) = server().await;
    let ann = engine.session_for(ann);
    let clin = engine.session_for(clin);
    for session in [&ann, &clin] {
        let who = &session.principal().name;
        session
            .sql(&format!(
                "CREATE MATERIALIZED VIEW scratch.high_{who} AS SELECT patient_id FROM silver.readings WHERE hr > 85"
            ))
            .await
            .unwrap();
    }
    engine
        .sql("ALTER TABLE silver.readings ALTER COLUMN hr SET MASK CASE WHEN is_member('clinician') THEN hr ELSE NULL END")
        .await
        .unwrap();
    engine
        .sql("INSERT INTO silver.readings VALUES (3, 120.0)")
        .await
        .unwrap();
    // The WHERE would keep telling ann which patients' hidden hr is above 85.
    let refused = ann
        .sql("REFRESH MATERIALIZED VIEW scratch.high_ann")
        .await
        .expect_err("the refresh reads a column masked for its owner");
    assert_eq!(refused.code().sqlstate(), "42501", "{refused}");
    assert!(
        refused.to_string().contains("silver.readings.hr"),
        "{refused}"
    );
    // The operator's refresh of ann's view runs as ann, and is refused the same way.
    assert_eq!(
        outcome(
            &engine.local_session(),
            "REFRESH MATERIALIZED VIEW scratch.high_ann"
        )
        .await,
        "42501"
    );
    assert_eq!(
        text(&ann, "SELECT count(*) AS n FROM scratch.high_ann")
            .await
            .matches("| 1 ")
            .count(),
        1
    );
    // The clinician sees hr: their view refreshes.
    clin.sql("REFRESH MATERIALIZED VIEW scratch.high_clin")
        .await
        .unwrap();
    assert!(
        text(&clin, "SELECT count(*) AS n FROM scratch.high_clin")
            .await
            .contains("| 2 ")
    );
}

#[test]
fn huge_parameter_numbers_and_in_lists_are_refused_before_planning() {
    // The server's workers have 32 MiB stacks (`medlake serve`): so does this test.
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(huge_parameters_and_in_lists())
        })
        .unwrap()
        .join()
        .unwrap();
}

async fn huge_parameters_and_in_lists() {
    let (_dir, engine, [ann, _, _]) = server().await;
    let ann = engine.session_for(ann);
    // Describing `$99999999999` once allocated a slot per number below it and aborted.
    for sql in [
        "SELECT $99999999999",
        "SELECT $65536",
        "SELECT $0",
        "SELECT $184467440737095516160",
    ] {
        let error = medlake_engine::parse(sql).expect_err(sql);
        assert_eq!(error.code().sqlstate(), "54000", "{sql}: {error}");
    }
    let statement = medlake_engine::parse("SELECT $65535").unwrap().remove(0);
    assert_eq!(
        ann.describe(&statement).await.unwrap().parameters.len(),
        65_535
    );
    // A 30,000-value IN list overflowed a worker's stack in the scan's pruning.
    let list = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let long = format!(
        "SELECT * FROM silver.readings WHERE hr IN ({})",
        list(30_000)
    );
    assert_eq!(outcome(&ann, &long).await, "54000");
    let fine = format!(
        "SELECT count(*) FROM silver.readings WHERE hr IN ({})",
        list(10_000)
    );
    assert_eq!(outcome(&ann, &fine).await, "ok");
    // Lists the planner merges or walks like an IN list (review 4), a CASE whose
    // simplification takes minutes, and a select list wider than PostgreSQL's.
    let ors = format!(
        "SELECT * FROM silver.readings WHERE hr IN ({0}) OR hr IN ({0}) OR hr IN ({0})",
        list(5_000)
    );
    let any = format!(
        "SELECT * FROM silver.readings WHERE hr = ANY(ARRAY[{}])",
        list(30_000)
    );
    let has = format!(
        "SELECT * FROM silver.readings WHERE array_has(make_array({}), hr)",
        list(30_000)
    );
    let case = format!(
        "SELECT CASE {} ELSE 0 END FROM silver.readings",
        (0..300)
            .map(|i| format!("WHEN hr = {i} THEN {i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let wide = format!(
        "SELECT {} FROM silver.readings",
        vec!["hr"; 2_000].join(", ")
    );
    for sql in [&ors, &any, &has, &case, &wide] {
        assert_eq!(outcome(&ann, sql).await, "54000", "{}", &sql[..80]);
    }
    // Many short arrays (a bulk INSERT of array rows) are fine.
    let rows = (0..2_000)
        .map(|i| format!("({i}, [1.0, 2.0])"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(medlake_engine::parse(&format!("INSERT INTO t VALUES {rows}")).is_ok());
    // One function call building gigabytes (no memory pool or timeout stops it midway).
    for sql in [
        "SELECT repeat('x', 2147483647)",
        "SELECT cardinality(array_repeat(1, 400000000))",
        "SELECT count(*) FROM silver.readings WHERE length(lpad('x', 2000000000)) > hr",
    ] {
        assert_eq!(outcome(&ann, sql).await, "54000", "{sql}");
    }
}

#[tokio::test]
async fn insert_overwrite_is_refused_where_a_mask_or_row_filter_holds() {
    let (_dir, engine, [ann, clin, _]) = server().await;
    engine
        .sql("GRANT INSERT, DELETE ON TABLE silver.patients TO analyst, clinician")
        .await
        .unwrap();
    let ann = engine.session_for(ann);
    // It would drop the cardio row ann cannot see and write 'MRN-****' over real MRNs.
    assert_eq!(
        outcome(
            &ann,
            "INSERT OVERWRITE silver.patients SELECT * FROM silver.patients"
        )
        .await,
        "42501"
    );
    let all = text(
        &engine.session_for(clin.clone()),
        "SELECT mrn FROM silver.patients ORDER BY mrn",
    )
    .await;
    assert!(
        all.contains("MRN-0002") && all.contains("MRN-0003"),
        "{all}"
    );
    // Appending is still allowed; the clinician, for whom nothing holds, may overwrite.
    assert_eq!(
        outcome(
            &ann,
            "INSERT INTO silver.patients VALUES (4, 'MRN-0004', 'icu', NULL)"
        )
        .await,
        "ok"
    );
    let clin = engine.session_for(clin);
    assert_eq!(
        outcome(
            &clin,
            "INSERT OVERWRITE silver.patients SELECT * FROM silver.patients WHERE patient_id < 4"
        )
        .await,
        "ok"
    );
}

#[tokio::test]
async fn sql_prepare_of_a_write_is_refused_and_execute_asks_again() {
    let (_dir, engine, [ann, _, wrt]) = server().await;
    let ann = engine.session_for(ann);
    let wrt = engine.session_for(wrt);
    // DataFusion would EXECUTE these through the table provider, around the lake's write path.
    for sql in [
        "PREPARE p1 AS INSERT INTO silver.readings VALUES ($1, 1.0)",
        "PREPARE p2 AS DELETE FROM silver.readings WHERE patient_id = $1",
        "PREPARE p3 AS UPDATE silver.readings SET hr = $1",
    ] {
        assert_eq!(outcome(&wrt, sql).await, "0A000", "{sql}");
    }
    assert_eq!(
        outcome(
            &ann,
            "PREPARE p4 AS SELECT mrn FROM silver.patients WHERE patient_id = $1"
        )
        .await,
        "ok"
    );
    assert!(text(&ann, "EXECUTE p4(1)").await.contains("MRN-****"));
    // A grant revoked after PREPARE stops EXECUTE.
    engine
        .sql("REVOKE SELECT ON TABLE silver.patients FROM analyst")
        .await
        .unwrap();
    assert_eq!(outcome(&ann, "EXECUTE p4(1)").await, "42501");
}

#[tokio::test]
async fn planning_errors_do_not_name_the_columns_of_tables_one_cannot_list() {
    let (_dir, engine, [ann, _, _]) = server().await;
    let ann = engine.session_for(ann);
    for sql in [
        "SELECT nosuch FROM bronze.raw",
        "UPDATE bronze.raw SET nosuch = 1",
        "DELETE FROM bronze.raw WHERE nosuch = 1",
        "SELECT nosuch FROM system.audit",
    ] {
        let error = ann.sql(sql).await.expect_err(sql);
        assert_eq!(error.code().sqlstate(), "42501", "{sql}: {error}");
        let text = error.to_string();
        assert!(
            !text.contains("mrn") && !text.contains("statement"),
            "{sql}: {text}"
        );
    }
    // A table one lists says what is wrong, as before; so does a name nobody has.
    assert_eq!(
        outcome(&ann, "SELECT nosuch FROM silver.patients").await,
        "42703"
    );
    assert_eq!(
        outcome(&ann, "SELECT * FROM bronze.nothing_here").await,
        "42P01"
    );
}
