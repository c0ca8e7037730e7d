//! The fsync durability mode (`[storage] fsync = true`): every write path syncs what it wrote
//! (deltalake's writes and the warehouse's own blind appends) and reads back the same rows.
//! The mode is process-wide: the other tests of this binary may run with it on, which only
//! makes them slower.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use medlake_lake::durable::{enable_fsync, fsync_enabled, synced_files};
use medlake_lake::{CommitOptions, TableName, Warehouse, WriteMode};

#[tokio::test]
async fn with_fsync_on_every_commit_is_synced_and_reads_back() {
    enable_fsync();
    assert!(fsync_enabled());
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let batch = |v: i64| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    };
    let name = TableName::new("bronze", "synced").unwrap();
    let before = synced_files();
    warehouse.create_table(&name, &schema, false).await.unwrap();
    let created = synced_files();
    assert!(created > before, "CREATE TABLE's log entry is synced");
    warehouse
        .write_batches(&name, vec![batch(1)], WriteMode::Append)
        .await
        .unwrap();
    let written = synced_files();
    // A data file and its log entry, at least.
    assert!(written >= created + 2, "{created} -> {written}");
    let mut appender = warehouse.open_appender(&name).await.unwrap();
    let ctx = SessionContext::new();
    let plan = ctx.read_batch(batch(2)).unwrap().logical_plan().clone();
    let state: Arc<dyn datafusion::catalog::Session> = Arc::new(ctx.state());
    warehouse
        .append_to(&mut appender, plan, state, &CommitOptions::default())
        .await
        .unwrap()
        .expect("nobody else committed");
    assert!(
        synced_files() >= written + 2,
        "the blind append is synced too"
    );
    let (provider, version) = warehouse.table_provider(&name, None).await.unwrap();
    assert_eq!(version, 2);
    let rows: usize = ctx
        .read_table(provider)
        .unwrap()
        .collect()
        .await
        .unwrap()
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 2);
}
