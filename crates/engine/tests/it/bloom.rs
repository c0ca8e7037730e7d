//! `ALTER TABLE t SET TBLPROPERTIES ('medlake.bloomFilterColumns' = ...)`: every later write
//! gives each row group a bloom filter for those columns, so a lookup of a key that row-group
//! statistics cannot rule out (keys scattered over every row group) skips the row groups
//! that do not hold it.

use medlake_engine::Code;

use crate::{code, count, pruning, scratch};

const BLOOM: &str = "row_groups_pruned_bloom_filter";

/// `rows` rows whose `mrn` is scattered over 'M00000'..'M99999' (7919 is prime to 100,000)
/// and missing every key ending in '7' (`mrn_absent`), into `table`.
fn scattered(table: &str, from: u64, rows: u64) -> String {
    format!(
        "INSERT INTO {table} SELECT 'M' || lpad(CAST(k AS VARCHAR), 5, '0'), k % 500, \
         CAST(k AS DOUBLE) FROM (SELECT CASE WHEN ((value + {from}) * 7919) % 100000 % 10 = 7 \
         THEN ((value + {from}) * 7919) % 100000 + 1 ELSE ((value + {from}) * 7919) % 100000 \
         END AS k FROM range(0, {rows}))"
    )
}

/// A key inside every row group's min/max range that no row holds.
const ABSENT: &str = "mrn = 'M50007'";

#[tokio::test]
async fn bloom_filter_columns_let_lookups_skip_row_groups_through_every_write() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.r (mrn VARCHAR NOT NULL, device BIGINT, v DOUBLE)")
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.r", 0, 150_000))
        .await
        .unwrap();
    // Without filters nothing but statistics prunes, and they keep all three row groups.
    let (matched, total) = pruning(&engine, "bronze.r", ABSENT, BLOOM).await;
    assert_eq!(matched, total, "no filters yet: {matched} of {total}");
    engine
        .sql(
            "ALTER TABLE bronze.r SET TBLPROPERTIES \
             ('medlake.bloomFilterColumns' = 'MRN, device')",
        )
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.r", 150_000, 150_000))
        .await
        .unwrap();
    // The new file's three row groups have filters that rule the key out; the old file's do
    // not, so they are read.
    assert_eq!(pruning(&engine, "bronze.r", ABSENT, BLOOM).await, (3, 6));
    // A key that is there is found where it is (filters have no false negatives).
    let present = "mrn = 'M50008'";
    let expected = count(
        &engine,
        "SELECT count(*) FROM bronze.r WHERE mrn = 'M50008'",
    )
    .await;
    assert!(expected > 0);
    let (matched, _) = pruning(&engine, "bronze.r", present, BLOOM).await;
    assert!(matched >= 3, "{matched}");
    // OPTIMIZE rewrites the old file with filters too: no row group holds the absent key.
    engine.sql("OPTIMIZE bronze.r").await.unwrap();
    let (matched, total) = pruning(&engine, "bronze.r", ABSENT, BLOOM).await;
    assert_eq!(matched, 0, "after OPTIMIZE: {matched} of {total}");
    // The other column's filter works for integers: device 8 is in every row group, device 7
    // (a key ending in 7) in none.
    let (matched, total) = pruning(&engine, "bronze.r", "device = 8", BLOOM).await;
    assert_eq!(matched, total);
    assert!(total > 0);
    let (matched, _) = pruning(&engine, "bronze.r", "device = 7", BLOOM).await;
    assert_eq!(matched, 0);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.r WHERE device = 8").await,
        count(
            &engine,
            "SELECT count(*) FROM bronze.r WHERE device + 0 = 8"
        )
        .await
    );
    // DML rewrites keep the filters.
    engine
        .sql("DELETE FROM bronze.r WHERE device = 3")
        .await
        .unwrap();
    engine
        .sql("UPDATE bronze.r SET v = v + 1 WHERE device = 4")
        .await
        .unwrap();
    let (matched, total) = pruning(&engine, "bronze.r", ABSENT, BLOOM).await;
    assert_eq!(matched, 0, "after DELETE and UPDATE: {matched} of {total}");
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.r WHERE mrn = 'M50008'"
        )
        .await,
        expected
    );
    assert_eq!(
        count(
            &engine,
            &format!("SELECT count(*) FROM bronze.r WHERE {ABSENT}")
        )
        .await,
        0
    );
    // '' names no column again: new files have no filter.
    engine
        .sql("ALTER TABLE bronze.r SET TBLPROPERTIES ('medlake.bloomFilterColumns' = '')")
        .await
        .unwrap();
    engine
        .sql(&scattered("bronze.r", 300_000, 70_000))
        .await
        .unwrap();
    let (matched, _) = pruning(&engine, "bronze.r", ABSENT, BLOOM).await;
    assert_eq!(matched, 2, "the new file's two row groups have no filter");
}

#[tokio::test]
async fn bloom_filter_columns_must_name_filterable_columns() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.r (mrn VARCHAR, v DOUBLE, at TIMESTAMP)")
        .await
        .unwrap();
    for value in ["nope", "mrn,,v", "v", "at", "mrn, nope"] {
        let sql = format!(
            "ALTER TABLE bronze.r SET TBLPROPERTIES ('medlake.bloomFilterColumns' = '{value}')"
        );
        assert_eq!(
            code(&engine, &sql).await,
            Code::InvalidParameterValue,
            "{value}"
        );
    }
    // A refused value sets nothing, not even its valid part: new files have no filter.
    engine
        .sql(
            "INSERT INTO bronze.r SELECT 'M' || lpad(CAST((value * 7919) % 100000 AS VARCHAR), \
             5, '0'), 1.0, NULL FROM range(0, 100000)",
        )
        .await
        .unwrap();
    let (matched, total) = pruning(&engine, "bronze.r", "mrn = 'M50007x'", BLOOM).await;
    assert_eq!((matched, total), (2, 2));
}
