//! `CREATE TABLE ... CLUSTER BY (...)`: the clustering is a table property that every write
//! and `OPTIMIZE` keep, so queries on the clustering columns skip row groups.

use medlake_engine::Code;

use crate::{code, count, pruning, row_groups_read, scratch};

/// `rows` rows whose `day` jumps around (7919 is prime to 50), as an unordered source
/// delivers them, into `table`.
fn scattered(table: &str, from: u64, rows: u64) -> String {
    format!(
        "INSERT INTO {table} SELECT CAST(((value + {from}) * 7919) % 50 AS INT), \
         CAST((value + {from}) % 1000 AS INT), CAST(value AS DOUBLE) FROM range(0, {rows})"
    )
}

#[tokio::test]
async fn a_clustered_table_keeps_its_order_through_inserts_and_optimize() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.c (day INT NOT NULL, patient INT, v DOUBLE) \
             CLUSTER BY (day, patient)",
        )
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.c", 0, 200_000))
        .await
        .unwrap();
    // 200,000 rows in row groups of 64Ki, sorted by day: day 7 lies in one of them.
    assert_eq!(
        row_groups_read(&engine, "bronze.c", "day = 7").await,
        (1, 4)
    );
    // A second insert is sorted too: its own file, whose row groups each hold few days.
    engine
        .sql(&scattered("bronze.c", 200_000, 140_000))
        .await
        .unwrap();
    assert_eq!(
        row_groups_read(&engine, "bronze.c", "day = 7").await,
        (2, 7)
    );
    // OPTIMIZE re-clusters the whole table along deltalake's Z-order curve of (day, patient):
    // one file again. deltalake interleaves the values' bits as they are, so the column with
    // the wider range (patient: 10 bits against day's 6) leads: a patient's rows sit in one
    // row group, a day's in most (README: Clustering).
    engine.sql("OPTIMIZE bronze.c").await.unwrap();
    let (matched, total) = row_groups_read(&engine, "bronze.c", "patient = 7").await;
    assert_eq!(total, 6);
    assert!(
        matched <= 2,
        "patient = 7 reads {matched} of {total} row groups"
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.c").await,
        340_000
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.c WHERE day = 7").await,
        6_800
    );
    // An unclustered table of the same rows: every row group holds every day.
    engine
        .sql("CREATE TABLE bronze.u (day INT NOT NULL, patient INT, v DOUBLE)")
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.u", 0, 200_000))
        .await
        .unwrap();
    assert_eq!(
        row_groups_read(&engine, "bronze.u", "day = 7").await,
        (4, 4)
    );
    // CREATE TABLE AS with CLUSTER BY writes its rows sorted, and the table stays clustered.
    engine
        .sql("CREATE TABLE gold.c2 CLUSTER BY day AS SELECT * FROM bronze.u")
        .await
        .unwrap();
    assert_eq!(row_groups_read(&engine, "gold.c2", "day = 7").await, (1, 4));
    engine.sql(&scattered("gold.c2", 0, 70_000)).await.unwrap();
    assert_eq!(row_groups_read(&engine, "gold.c2", "day = 7").await, (2, 6));
}

#[tokio::test]
async fn cluster_by_takes_distinct_columns_of_the_table() {
    let (_dir, engine) = scratch().await;
    assert_eq!(
        code(
            &engine,
            "CREATE TABLE bronze.x (a INT, b INT) CLUSTER BY (c)"
        )
        .await,
        Code::UndefinedColumn
    );
    assert_eq!(
        code(
            &engine,
            "CREATE TABLE bronze.x (a INT, b INT) CLUSTER BY (a, a)"
        )
        .await,
        Code::SyntaxError
    );
    assert_eq!(
        code(
            &engine,
            "CREATE TABLE bronze.x (a INT, b INT) CLUSTER BY (a + 1)"
        )
        .await,
        Code::SyntaxError
    );
    assert_eq!(
        code(
            &engine,
            "CREATE TABLE bronze.x CLUSTER BY (z) AS SELECT 1 AS a"
        )
        .await,
        Code::UndefinedColumn
    );
    // Nothing was created by the refused statements.
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'x'"
        )
        .await,
        0
    );
    // Quoted names keep their case.
    engine
        .sql("CREATE TABLE bronze.q (\"Day\" INT, b INT) CLUSTER BY (\"Day\")")
        .await
        .unwrap();
    engine
        .sql("INSERT INTO bronze.q VALUES (3, 1), (1, 2), (2, 3)")
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.q").await, 3);
}

#[tokio::test]
async fn alter_table_cluster_by_changes_how_later_writes_are_laid_out() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.a (day INT NOT NULL, patient INT, v DOUBLE)")
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.a", 0, 200_000))
        .await
        .unwrap();
    assert_eq!(
        row_groups_read(&engine, "bronze.a", "day = 7").await,
        (4, 4)
    );
    let outputs = engine
        .sql("ALTER TABLE bronze.a CLUSTER BY (day)")
        .await
        .unwrap();
    assert!(
        matches!(&outputs[0], medlake_engine::Output::Command { tag, .. } if tag == "ALTER TABLE")
    );
    // The next write is sorted: its own row groups each hold few days.
    engine
        .sql(&scattered("bronze.a", 200_000, 140_000))
        .await
        .unwrap();
    assert_eq!(
        row_groups_read(&engine, "bronze.a", "day = 7").await,
        (5, 7)
    );
    // CLUSTER BY NONE: writes in arrival order again.
    engine
        .sql("ALTER TABLE bronze.a CLUSTER BY NONE")
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.a", 340_000, 70_000))
        .await
        .unwrap();
    assert_eq!(
        row_groups_read(&engine, "bronze.a", "day = 7").await,
        (7, 9)
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.a").await,
        410_000
    );
    assert_eq!(
        code(&engine, "ALTER TABLE bronze.a CLUSTER BY (nope)").await,
        Code::UndefinedColumn
    );
    assert_eq!(
        code(&engine, "ALTER TABLE bronze.a CLUSTER BY (day, day)").await,
        Code::SyntaxError
    );
    assert_eq!(
        code(&engine, "ALTER TABLE bronze.missing CLUSTER BY (day)").await,
        Code::UndefinedTable
    );
    // A view's clustering is its definition's.
    engine
        .sql("CREATE MATERIALIZED VIEW gold.v AS SELECT day FROM bronze.a")
        .await
        .unwrap();
    assert_eq!(
        code(&engine, "ALTER TABLE gold.v CLUSTER BY (day)").await,
        Code::WrongObjectType
    );
}

#[tokio::test]
async fn only_the_owner_changes_a_tables_clustering() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.o (day INT, v DOUBLE);
             CREATE ROLE loader; GRANT USAGE ON SCHEMA bronze TO loader;
             GRANT SELECT, INSERT ON TABLE bronze.o TO loader;",
        )
        .await
        .unwrap();
    let mut principal = medlake_engine::Principal::user("rita", medlake_engine::Role::None);
    principal.roles = ["loader"].iter().map(|r| r.to_string()).collect();
    let rita = engine.session_for(principal);
    assert_eq!(
        crate::outcome(&rita, "ALTER TABLE bronze.o CLUSTER BY (day)").await,
        "42501"
    );
    assert_eq!(
        crate::outcome(&rita, "INSERT INTO bronze.o VALUES (1, 1.0)").await,
        "ok"
    );
}

/// A clustered table is written in pages of 1,024 rows (unclustered: 4,096), so a lookup of a
/// few keys decodes little more than their own rows: the page index leaves one page of each
/// column for one patient of one day.
#[tokio::test]
async fn a_clustered_table_is_read_in_small_pages() {
    let (_dir, engine) = scratch().await;
    for (table, cluster) in [("bronze.c", " CLUSTER BY (day, patient)"), ("bronze.u", "")] {
        engine
            .sql(&format!(
                "CREATE TABLE {table} (day INT NOT NULL, patient INT, v DOUBLE){cluster}"
            ))
            .await
            .unwrap();
    }
    // Sorted by (day, patient) in both: the unclustered table gets its rows in order.
    engine
        .sql(
            "INSERT INTO bronze.u SELECT CAST(n / 4096 AS INT), CAST(n % 4096 AS INT), \
             CAST(n AS DOUBLE) FROM (SELECT value AS n FROM range(0, 200000)) ORDER BY n",
        )
        .await
        .unwrap();
    engine
        .sql("INSERT INTO bronze.c SELECT * FROM bronze.u")
        .await
        .unwrap();
    let lookup = "day = 7 AND patient = 2500";
    assert_eq!(
        count(
            &engine,
            &format!("SELECT count(*) FROM bronze.c WHERE {lookup}")
        )
        .await,
        1
    );
    // Day 7 is rows 28,672..32,768, in the first row group (65,536 rows) of both tables: one
    // page of 4,096 rows, or four of 1,024 of which only patients 2,048..3,071's is read.
    let pages = "page_index_pages_pruned";
    assert_eq!(pruning(&engine, "bronze.c", lookup, pages).await, (1, 64));
    assert_eq!(pruning(&engine, "bronze.u", lookup, pages).await, (1, 16));
    // OPTIMIZE of the clustered table keeps its small pages: 64 in each row group read.
    engine
        .sql("INSERT INTO bronze.c SELECT day + 50, patient, v FROM bronze.u")
        .await
        .unwrap();
    engine.sql("OPTIMIZE bronze.c").await.unwrap();
    // (Its Z-order interleaves day and patient, so the lookup's rows are spread over more
    // pages than in a sorted write: the pages themselves are still of 1,024 rows.)
    let (matched, total) = pruning(&engine, "bronze.c", lookup, pages).await;
    assert_eq!(
        total % 64,
        0,
        "after OPTIMIZE: {total} pages in the row groups read"
    );
    assert!(
        matched < total,
        "after OPTIMIZE: {matched} of {total} pages"
    );
    assert_eq!(
        count(
            &engine,
            &format!("SELECT count(*) FROM bronze.c WHERE {lookup}")
        )
        .await,
        1
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.c").await,
        400_000
    );
}

/// A predicate on the hospital's date or hour of an instant (`local_date(taken_at) = d`,
/// `local_hour(taken_at) = h`, `<`, `IN`) is a range of the instant (the functions'
/// preimage), which row-group statistics skip by; the answers stay those of the functions.
#[tokio::test]
async fn local_dates_and_hours_skip_row_groups_by_the_instants_range() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.t (taken_at TIMESTAMP NOT NULL, v DOUBLE)")
        .await
        .unwrap();
    // Three days from 2026-07-01, one reading a second, in time order: 259,200 rows in row
    // groups of 64Ki (the second day lies in groups 2 and 3 of 4).
    engine
        .sql(
            "INSERT INTO bronze.t SELECT CAST(to_timestamp_seconds(1782864000 + value) AS TIMESTAMP), \
             CAST(value AS DOUBLE) FROM range(0, 259200)",
        )
        .await
        .unwrap();
    let cases = [
        ("local_date(taken_at) = DATE '2026-07-02'", (2, 4), 86_400),
        ("local_date(taken_at) < DATE '2026-07-02'", (2, 4), 86_400),
        ("local_date(taken_at) >= '2026-07-03'", (2, 4), 86_400),
        (
            "local_hour(taken_at) = TIMESTAMP '2026-07-02 05:00:00'",
            (1, 4),
            3_600,
        ),
        (
            "local_date(taken_at) IN (DATE '2026-07-01', DATE '2026-07-02')",
            (3, 4),
            172_800,
        ),
    ];
    for (predicate, groups, rows) in cases {
        assert_eq!(
            row_groups_read(&engine, "bronze.t", predicate).await,
            groups,
            "{predicate}"
        );
        let sql = format!("SELECT count(*) FROM bronze.t WHERE {predicate}");
        assert_eq!(count(&engine, &sql).await, rows, "{predicate}");
    }
    // Not the start of an hour: the predicate stays as written, and still answers.
    let half = "local_hour(taken_at) = TIMESTAMP '2026-07-02 05:30:00'";
    assert_eq!(row_groups_read(&engine, "bronze.t", half).await, (4, 4));
    let sql = format!("SELECT count(*) FROM bronze.t WHERE {half}");
    assert_eq!(count(&engine, &sql).await, 0);
}
