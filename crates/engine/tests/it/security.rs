//! Privileges are checked in `Session::execute` (and `describe`, `ingest`) for the session's
//! principal, from what the statement does: every statement kind, including statements
//! nested in others. These tests fail on the code before the principal model (a door's
//! `is_read_only` on the SQL text decided, and let `SELECT ... INTO`, `EXPLAIN ANALYZE`
//! writes and runtime `SET`s through).

use medlake_engine::{Engine, IfExists, Ingest, Principal, Role, Session};

use crate::{outcome, scratch};

async fn prepared() -> (tempfile::TempDir, Engine) {
    let (dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.t (id INT, hr DOUBLE); \
             INSERT INTO bronze.t VALUES (1, 80.0), (2, 90.0)",
        )
        .await
        .unwrap();
    (dir, engine)
}

fn as_role(engine: &Engine, role: Role) -> Session {
    engine.session_for(Principal::user(format!("{role:?}").to_lowercase(), role))
}

async fn rows(engine: &Engine, sql: &str) -> usize {
    engine
        .query(sql)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

const WRITES: &[&str] = &[
    "INSERT INTO bronze.t VALUES (3, 1.0)",
    "INSERT OVERWRITE bronze.t SELECT * FROM bronze.t",
    "CREATE TABLE bronze.new (x INT)",
    "CREATE TABLE bronze.new AS SELECT * FROM bronze.t",
    "SELECT * INTO bronze.new FROM bronze.t",
    "DROP TABLE bronze.t",
    "CREATE SCHEMA evil",
    "DROP SCHEMA bronze CASCADE",
    "EXPLAIN ANALYZE INSERT INTO bronze.t VALUES (3, 1.0)",
    "EXPLAIN ANALYZE CREATE TABLE bronze.new AS SELECT 1",
    "CREATE MATERIALIZED VIEW bronze.mv AS SELECT * FROM bronze.t",
    "OPTIMIZE bronze.t",
    "VACUUM bronze.t RETAIN 0 HOURS DRY RUN",
    "CREATE EXTERNAL TABLE bronze.ext STORED AS PARQUET LOCATION '/etc/'",
    "PREPARE p AS INSERT INTO bronze.t VALUES ($1, 1.0)",
];

#[tokio::test]
async fn a_reader_reads_and_every_kind_of_write_is_refused_with_42501() {
    let (_dir, engine) = prepared().await;
    let reader = as_role(&engine, Role::Reader);
    for sql in WRITES {
        assert_eq!(outcome(&reader, sql).await, "42501", "{sql}");
    }
    // Nothing changed.
    assert_eq!(rows(&engine, "SELECT * FROM bronze.t").await, 2);
    let tables = rows(
        &engine,
        "SELECT * FROM information_schema.tables WHERE table_schema IN ('bronze', 'evil')",
    )
    .await;
    assert_eq!(tables, 1);
    // Reads work, including nested ones and history.
    for sql in [
        "SELECT count(*) FROM bronze.t",
        "SELECT * FROM bronze.t WHERE id IN (SELECT id FROM bronze.t)",
        "EXPLAIN SELECT * FROM bronze.t",
        "EXPLAIN ANALYZE SELECT * FROM bronze.t",
        "DESCRIBE HISTORY bronze.t",
        "SHOW MATERIALIZED VIEWS",
        "SET datafusion.catalog.default_schema = 'bronze'",
    ] {
        assert_eq!(outcome(&reader, sql).await, "ok", "{sql}");
    }
}

#[tokio::test]
async fn describe_checks_like_execute() {
    let (_dir, engine) = prepared().await;
    let reader = as_role(&engine, Role::Reader);
    for sql in [
        "DROP TABLE bronze.t",
        "SELECT 1 INTO bronze.x",
        "OPTIMIZE bronze.t",
    ] {
        let statement = medlake_engine::parse(sql).unwrap().remove(0);
        let e = reader.describe(&statement).await.unwrap_err();
        assert_eq!(e.code().sqlstate(), "42501", "{sql}: {e}");
    }
    let statement = medlake_engine::parse("SELECT * FROM bronze.t")
        .unwrap()
        .remove(0);
    assert!(reader.describe(&statement).await.is_ok());
}

#[tokio::test]
async fn writers_write_but_need_permission_for_external_tables() {
    let (dir, engine) = prepared().await;
    let writer = as_role(&engine, Role::Writer);
    assert_eq!(
        outcome(&writer, "INSERT INTO bronze.t VALUES (3, 1.0)").await,
        "ok"
    );
    assert_eq!(
        outcome(&writer, "CREATE TABLE bronze.w AS SELECT * FROM bronze.t").await,
        "ok"
    );
    assert_eq!(
        outcome(&writer, "SELECT * INTO bronze.w2 FROM bronze.t").await,
        "ok"
    );
    let folder = dir.path().join("landing");
    std::fs::create_dir_all(&folder).unwrap();
    let create = format!(
        "CREATE EXTERNAL TABLE bronze.ext STORED AS PARQUET LOCATION '{}'",
        folder.display()
    );
    assert_eq!(outcome(&writer, &create).await, "42501");
    assert_eq!(
        outcome(
            &writer,
            "IMPORT FOREIGN SCHEMA dbo FROM SQLSERVER 'sqlserver://127.0.0.1:9/EHR' INTO bronze"
        )
        .await,
        "42501"
    );
    // With the permission, but a secret it was not given is refused before anything is
    // reached.
    let mut etl = Principal::user("etl", Role::Writer);
    etl.create_external = true;
    let etl_session = engine.session_for(etl.clone());
    let with_secret = "CREATE EXTERNAL TABLE bronze.ext2 STORED AS REST LOCATION 'http://127.0.0.1:9/' \
         OPTIONS ('bearer_token' '${SOME_PASSWORD}')";
    assert_eq!(outcome(&etl_session, with_secret).await, "42501");
    etl.secrets.insert("SOME_PASSWORD".into());
    // The privilege holds now; what fails is the source (the secret is not in the store).
    let e = engine
        .session_for(etl)
        .sql(with_secret)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("lacks the USE SECRET privilege") && e.contains("SOME_PASSWORD"),
        "the privilege holds; whatever fails now is the source's: {e}"
    );
}

#[tokio::test]
async fn runtime_settings_are_refused_even_for_admins() {
    let (_dir, engine) = prepared().await;
    for role in [Role::Reader, Role::Writer, Role::Admin] {
        let session = as_role(&engine, role);
        for sql in [
            "SET datafusion.runtime.memory_limit = '1G'",
            "SET datafusion.runtime.temp_directory = '/tmp/elsewhere'",
            "RESET datafusion.runtime.memory_limit",
        ] {
            let got = outcome(&session, sql).await;
            assert!(got == "42501" || got == "42601", "{role:?} {sql}: {got}");
        }
    }
    // Settings outside the allow-list are the admin's.
    let writer = as_role(&engine, Role::Writer);
    assert_eq!(
        outcome(
            &writer,
            "SET datafusion.optimizer.hash_join_inlist_pushdown_max_size = 100"
        )
        .await,
        "42501"
    );
    assert_eq!(
        outcome(
            &as_role(&engine, Role::Admin),
            "SET datafusion.optimizer.hash_join_inlist_pushdown_max_size = 0"
        )
        .await,
        "ok"
    );
}

#[tokio::test]
async fn ingest_needs_insert_and_ingest_tokens_reach_only_their_tables() {
    let (_dir, engine) = prepared().await;
    let batch = engine
        .query("SELECT * FROM bronze.t")
        .await
        .unwrap()
        .remove(0);
    let append = Ingest {
        create: true,
        exists: IfExists::Append,
    };
    let reader = as_role(&engine, Role::Reader);
    let e = reader
        .ingest("bronze.t", batch.schema(), vec![batch.clone()], append)
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "42501");
    let token = engine.session_for(Principal::ingest_token(
        "gw",
        vec![medlake_auth::TablePattern::parse("bronze.t").unwrap()],
    ));
    token
        .ingest("bronze.t", batch.schema(), vec![batch.clone()], append)
        .await
        .unwrap();
    let e = token
        .ingest("bronze.other", batch.schema(), vec![batch.clone()], append)
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "42501");
    assert_eq!(outcome(&token, "SELECT * FROM bronze.t").await, "42501");
    assert_eq!(rows(&engine, "SELECT * FROM bronze.t").await, 4);
}

#[tokio::test]
async fn sql_prepared_statements_per_session_are_bounded() {
    let (_dir, engine) = prepared().await;
    let session = as_role(&engine, Role::Reader);
    let limit = medlake_engine::MAX_PREPARED_PER_SESSION;
    for n in 0..limit {
        let sql = format!("PREPARE p{n} AS SELECT * FROM bronze.t WHERE id = $1");
        assert_eq!(outcome(&session, &sql).await, "ok", "{sql}");
    }
    let beyond = "PREPARE one_too_many AS SELECT 1";
    assert_eq!(outcome(&session, beyond).await, "54000");
    // A failed PREPARE (an existing name) takes no room, and DEALLOCATE makes room.
    assert_ne!(outcome(&session, "PREPARE p0 AS SELECT 1").await, "ok");
    assert_eq!(outcome(&session, "DEALLOCATE p0").await, "ok");
    assert_eq!(outcome(&session, beyond).await, "ok");
    assert_eq!(outcome(&session, "EXECUTE p1(2)").await, "ok");
    // Another session has its own room.
    let other = as_role(&engine, Role::Reader);
    assert_eq!(outcome(&other, beyond).await, "ok");
}
