//! Group commit of concurrent ingests into one table (the Flight SQL door's path): requests
//! that wait together share a Delta commit, every acknowledged row is there exactly once, and a
//! request whose rows break the table fails alone.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use medlake_engine::{Engine, IfExists, Ingest, TableName};

use crate::{count, scratch};

const APPEND: Ingest = Ingest {
    create: false,
    exists: IfExists::Append,
};

fn batch(values: Vec<Option<i64>>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
}

async fn ingest(engine: &Engine, values: Vec<Option<i64>>) -> medlake_engine::Result<u64> {
    let batch = batch(values);
    engine
        .local_session()
        .ingest("bronze.g", batch.schema(), vec![batch], APPEND)
        .await
}

async fn versions(engine: &Engine) -> usize {
    let name = TableName::new("bronze", "g").unwrap();
    engine.warehouse().versions(&name).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_share_commits_and_keep_every_row_once() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.g (n BIGINT NOT NULL)")
        .await
        .unwrap();
    // Opens the table's appender.
    assert_eq!(ingest(&engine, vec![Some(0)]).await.unwrap(), 1);
    let before = versions(&engine).await;
    let requests: Vec<_> = (1..=24_i64)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { ingest(&engine, vec![Some(i), Some(i)]).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), 2);
    }
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.g").await, 49);
    assert_eq!(
        count(&engine, "SELECT CAST(sum(n) AS BIGINT) FROM bronze.g").await,
        2 * (1..=24).sum::<i64>()
    );
    let commits = versions(&engine).await - before;
    assert!(
        (1..24).contains(&commits),
        "24 concurrent ingests took {commits} commits: they should share some"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_breaks_the_table_fails_alone() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.g (n BIGINT NOT NULL)")
        .await
        .unwrap();
    ingest(&engine, vec![Some(0)]).await.unwrap();
    let requests: Vec<_> = (1..=12_i64)
        .map(|i| {
            let engine = engine.clone();
            // Every fourth request sends a NULL into the NOT NULL column.
            let values = if i % 4 == 0 {
                vec![Some(i), None]
            } else {
                vec![Some(i)]
            };
            tokio::spawn(async move { (i, ingest(&engine, values).await) })
        })
        .collect();
    let mut good = 1;
    for request in requests {
        let (i, outcome) = request.await.unwrap();
        if i % 4 == 0 {
            let error = outcome.expect_err("a NULL in a NOT NULL column");
            assert_eq!(error.code().sqlstate(), "23502", "{error}");
        } else {
            assert_eq!(outcome.unwrap(), 1);
            good += 1;
        }
    }
    assert_eq!(count(&engine, "SELECT count(*) FROM bronze.g").await, good);
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.g WHERE n % 4 = 0 AND n > 0"
        )
        .await,
        0
    );
}
