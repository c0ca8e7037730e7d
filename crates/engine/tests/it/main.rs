//! Engine integration tests: what sqllogictest files cannot express (timestamps taken from
//! the history, restarts, files on disk, concurrent writers).

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use medlake_engine::{Code, Engine};

mod aggregate_state;
mod alerts;
mod attacks;
mod blob;
mod bloom;
mod changes;
mod cluster;
mod cosmos;
mod dml;
mod erase;
mod fhir;
mod fhir_view;
mod grants;
mod group_commit;
mod on_change;
mod plan_cache;
mod policy;
mod reference_sql;
mod rest;
mod restore;
mod result_cache;
mod scheduler_lease;
mod security;
mod spill;
mod sqlserver;
mod views;

fn location(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("wh")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// Runs `sql` in `session` and returns its SQLSTATE, or "ok".
async fn outcome(session: &medlake_engine::Session, sql: &str) -> String {
    let run = async {
        for output in session.sql(sql).await? {
            output.collect().await?;
        }
        Ok::<_, medlake_engine::Error>(())
    };
    match run.await {
        Ok(()) => "ok".into(),
        Err(e) => e.code().sqlstate().to_string(),
    }
}

/// The SQLSTATE `sql` fails with (it must fail).
async fn code(engine: &Engine, sql: &str) -> medlake_engine::Code {
    match engine.sql(sql).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => e.code(),
    }
}

/// A new engine over a scratch warehouse (kept while the TempDir lives).
async fn scratch() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&location(&dir)).await.unwrap();
    (dir, engine)
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine.query(sql).await.expect(sql);
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("a count")
        .value(0)
}

/// The row groups `SELECT count(*) FROM table WHERE predicate` reads, and how many there are
/// (from EXPLAIN ANALYZE's `row_groups_pruned_statistics=N total → M matched`).
async fn row_groups_read(engine: &Engine, table: &str, predicate: &str) -> (u64, u64) {
    pruning(engine, table, predicate, "row_groups_pruned_statistics").await
}

/// A pruning metric of the Parquet scan of `SELECT count(*) FROM table WHERE predicate`
/// (EXPLAIN ANALYZE): the units it matched and their total.
async fn pruning(engine: &Engine, table: &str, predicate: &str, metric: &str) -> (u64, u64) {
    use arrow::array::Array as _;
    let sql = format!("EXPLAIN ANALYZE SELECT count(*) FROM {table} WHERE {predicate}");
    let batches = engine.query(&sql).await.expect("explain analyze");
    let mut text = String::new();
    for batch in &batches {
        let plans = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for row in 0..plans.len() {
            text.push_str(plans.value(row));
        }
    }
    let named = format!("{metric}=");
    let at = text
        .find(&named)
        .unwrap_or_else(|| panic!("no {metric} in\n{text}"));
    let words: Vec<&str> = text[at..].split_whitespace().collect();
    let total = words[0].trim_start_matches(&named);
    assert_eq!(words[1], "total", "{text}");
    let matched = words[3];
    (matched.parse().unwrap(), total.parse().unwrap())
}

fn column<T: 'static>(batches: &[RecordBatch], index: usize) -> &T {
    batches[0]
        .column(index)
        .as_any()
        .downcast_ref::<T>()
        .expect("column type")
}

#[tokio::test]
async fn timestamp_as_of_reads_the_version_committed_at_or_before() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.t (id INT NOT NULL); INSERT INTO bronze.t VALUES (1)")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    engine
        .sql("INSERT INTO bronze.t VALUES (2), (3)")
        .await
        .unwrap();

    let history = engine
        .query("SELECT version, timestamp FROM table_history('bronze.t') ORDER BY version")
        .await
        .unwrap();
    let stamps = column::<TimestampMicrosecondArray>(&history, 1);
    let v1 = chrono::DateTime::from_timestamp_micros(stamps.value(1)).unwrap();
    let v2 = chrono::DateTime::from_timestamp_micros(stamps.value(2)).unwrap();
    assert!(v2 > v1);

    let at = |ts: chrono::DateTime<chrono::Utc>| {
        format!(
            "SELECT count(*) FROM bronze.t TIMESTAMP AS OF '{}'",
            ts.format("%Y-%m-%d %H:%M:%S%.6f")
        )
    };
    assert_eq!(count(&engine, &at(v1)).await, 1);
    let between = v1 + (v2 - v1) / 2;
    assert_eq!(count(&engine, &at(between)).await, 1);
    assert_eq!(count(&engine, &at(v2)).await, 3);
    let rfc3339 = format!(
        "SELECT count(*) FROM bronze.t TIMESTAMP AS OF '{}'",
        v2.to_rfc3339()
    );
    assert_eq!(count(&engine, &rfc3339).await, 3);
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(&location(&dir)).await.unwrap();
        engine
            .sql(
                "CREATE SCHEMA ehr;
                 CREATE TABLE ehr.patients (id INT NOT NULL, name VARCHAR);
                 INSERT INTO ehr.patients VALUES (1, 'Ada'), (2, 'Grace');
                 CREATE TABLE gold.census AS SELECT count(*) AS patients FROM ehr.patients;
                 INSERT INTO ehr.patients VALUES (3, 'Marie')",
            )
            .await
            .unwrap();
    }
    let engine = Engine::open(&location(&dir)).await.unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM ehr.patients").await, 3);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM ehr.patients VERSION AS OF 1").await,
        2
    );
    assert_eq!(count(&engine, "SELECT patients FROM gold.census").await, 2);
    let schemas = engine
        .query("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ehr'")
        .await
        .unwrap();
    assert_eq!(column::<Int64Array>(&schemas, 0).value(0), 1);
}

#[tokio::test]
async fn a_second_engine_sees_tables_created_by_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = Engine::open(&location(&dir)).await.unwrap();
    let second = Engine::open(&location(&dir)).await.unwrap();
    first
        .sql("CREATE TABLE silver.x AS SELECT 42 AS answer")
        .await
        .unwrap();
    assert_eq!(
        count(
            &second,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'x'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&second, "SELECT CAST(answer AS BIGINT) FROM silver.x").await,
        42
    );
}

#[tokio::test]
async fn concurrent_appends_both_commit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(&location(&dir)).await.unwrap());
    engine
        .sql("CREATE TABLE bronze.telemetry (device INT NOT NULL, value DOUBLE)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for device in 0..4 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .sql(&format!(
                    "INSERT INTO bronze.telemetry SELECT {device}, CAST(v AS DOUBLE) FROM (SELECT unnest(range(100)) AS v)"
                ))
                .await
                .map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.telemetry").await,
        400
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM table_history('bronze.telemetry')"
        )
        .await,
        5
    );
}

#[tokio::test]
async fn vacuum_deletes_unneeded_files_and_old_versions_then_fail_clearly() {
    let (dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.e (id INT NOT NULL);
             INSERT INTO bronze.e VALUES (1);
             INSERT INTO bronze.e VALUES (2);
             OPTIMIZE bronze.e",
        )
        .await
        .unwrap();
    let parquet = |dir: &tempfile::TempDir| {
        std::fs::read_dir(dir.path().join("wh/bronze/e"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            })
            .count()
    };
    assert_eq!(parquet(&dir), 3);
    let dry = engine
        .query("VACUUM bronze.e RETAIN 0 HOURS DRY RUN FORCE")
        .await
        .unwrap();
    assert_eq!(dry[0].num_rows(), 2);
    assert_eq!(parquet(&dir), 3, "a dry run deletes nothing");
    engine
        .query("VACUUM bronze.e RETAIN 0 HOURS FORCE")
        .await
        .unwrap();
    assert_eq!(parquet(&dir), 1);
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.e").await, 2);
    // Version 1's file is gone: reading it fails with an error, not with wrong rows.
    let err = engine
        .query("SELECT * FROM bronze.e VERSION AS OF 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::UndefinedFile, "{err}");
}

#[tokio::test]
async fn errors_carry_codes_and_clear_messages() {
    let (_dir, engine) = scratch().await;
    let err = engine.sql("SELEC 1").await.unwrap_err();
    assert_eq!(err.code(), Code::SyntaxError, "{err}");
    let err = engine
        .sql("SELECT * FROM bronze.missing")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::UndefinedTable, "{err}");
    engine
        .sql("CREATE TABLE bronze.v (id INT NOT NULL, name VARCHAR NOT NULL)")
        .await
        .unwrap();
    let err = engine
        .sql("INSERT INTO bronze.v (id) VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotNullViolation);
    assert_eq!(
        err.to_string(),
        "write to 'bronze.v' refused, nothing was written: NULL in NOT NULL column 'name'"
    );
    let err = engine
        .sql("SELECT * FROM bronze.v VERSION AS OF 5")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "table 'bronze.v' has no version 5 (versions 0 to 0 exist)"
    );
}

#[tokio::test]
async fn sessions_share_the_warehouse_but_not_their_settings() {
    let (_dir, engine) = scratch().await;
    let (first, second) = (engine.local_session(), engine.local_session());
    first
        .sql("SET datafusion.execution.batch_size = 17; CREATE TABLE bronze.s AS SELECT 1 AS x")
        .await
        .unwrap();
    let setting = "SELECT CAST(value AS BIGINT) FROM information_schema.df_settings \
                   WHERE name = 'datafusion.execution.batch_size'";
    let batch_size = |batches: Vec<RecordBatch>| column::<Int64Array>(&batches, 0).value(0);
    assert_eq!(batch_size(first.query(setting).await.unwrap()), 17);
    assert_ne!(batch_size(second.query(setting).await.unwrap()), 17);
    assert_eq!(
        batch_size(
            second
                .query("SELECT CAST(count(*) AS BIGINT) FROM bronze.s")
                .await
                .unwrap()
        ),
        1
    );
}

/// A server whose cluster's executors scan external tables (`--cluster-sources executors`),
/// the executors opening tables with `policy` (their own `[secrets]` and `[sources]`).
async fn on_cluster_reading_sources(
    policy: medlake_source::Policy,
) -> (
    medlake_cluster::testing::LocalCluster,
    tempfile::TempDir,
    Engine,
) {
    let functions = medlake_cluster::Functions::new(medlake_engine::cluster_functions());
    let sources = medlake_cluster::Sources {
        registry: Arc::new(medlake_engine::all_connectors()),
        policy: Arc::new(policy),
    };
    let members =
        medlake_cluster::testing::LocalCluster::start_with_sources(2, functions.clone(), sources)
            .await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path().join("wh").to_str().unwrap())
        .connectors(medlake_engine::all_connectors())
        .policy(medlake_source::Policy::permissive())
        .cluster(members.client(functions).with_external_tables(true))
        .open()
        .await
        .unwrap();
    (members, dir, engine)
}
