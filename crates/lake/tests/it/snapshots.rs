//! Kept table snapshots ([`Warehouse::latest`]) are never stale: commits by another server on
//! the same folder, a DROP, and a DROP followed by a CREATE under the same name are all seen
//! by the next read.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use medlake_lake::{Error, TableName, Warehouse, WriteMode};
use object_store::{ObjectStoreExt as _, PutPayload};

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]))
}

fn batch(values: &[i64]) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
}

/// The sum of `n` and the version read, through the warehouse's provider.
async fn read(warehouse: &Warehouse, name: &TableName) -> (i64, u64) {
    let (provider, version) = warehouse.table_provider(name, None).await.unwrap();
    let ctx = SessionContext::new();
    let batches = ctx.read_table(provider).unwrap().collect().await.unwrap();
    let mut sum = 0;
    for batch in batches {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        sum += (0..column.len()).map(|i| column.value(i)).sum::<i64>();
    }
    (sum, version)
}

async fn two_servers() -> (tempfile::TempDir, Warehouse, Warehouse, TableName) {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("wh");
    let location = location.to_str().unwrap();
    let reader = Warehouse::open(location).await.unwrap();
    let writer = Warehouse::open(location).await.unwrap();
    let name = TableName::new("gold", "kept").unwrap();
    writer.create_table(&name, &schema(), false).await.unwrap();
    (dir, reader, writer, name)
}

#[tokio::test]
async fn another_servers_commits_are_seen_by_the_next_read() {
    let (_dir, reader, writer, name) = two_servers().await;
    assert_eq!(read(&reader, &name).await, (0, 0));
    // The kept snapshot is handed out again while nothing changed.
    assert_eq!(read(&reader, &name).await, (0, 0));
    let mut expected = 0;
    for round in 1..=12_i64 {
        writer
            .write_batches(&name, vec![batch(&[round, round])], WriteMode::Append)
            .await
            .unwrap();
        expected += 2 * round;
        // Several commits between two reads are replayed together.
        if round % 3 == 0 {
            continue;
        }
        let (sum, version) = read(&reader, &name).await;
        assert_eq!(sum, expected, "round {round}");
        assert_eq!(version, u64::try_from(round).unwrap(), "round {round}");
    }
    writer
        .write_batches(&name, vec![batch(&[1000])], WriteMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(read(&reader, &name).await, (1000, 13));
}

#[tokio::test]
async fn a_table_dropped_and_created_again_is_never_read_from_the_old_snapshot() {
    let (_dir, reader, writer, name) = two_servers().await;
    writer
        .write_batches(&name, vec![batch(&[5])], WriteMode::Append)
        .await
        .unwrap();
    let (_, _, old_id) = reader.table_provider_with_id(&name).await.unwrap();
    assert_eq!(read(&reader, &name).await, (5, 1));

    writer.drop_table(&name, false).await.unwrap();
    assert!(matches!(
        reader.table_provider(&name, None).await,
        Err(Error::TableNotFound { .. })
    ));

    // Created again with as many versions as the old table had: only its log entries tell
    // the two apart.
    writer.create_table(&name, &schema(), false).await.unwrap();
    writer
        .write_batches(&name, vec![batch(&[7])], WriteMode::Append)
        .await
        .unwrap();
    assert_eq!(read(&reader, &name).await, (7, 1));
    let (_, _, new_id) = reader.table_provider_with_id(&name).await.unwrap();
    assert_ne!(old_id, new_id);
}

#[tokio::test]
async fn a_drop_marker_hides_the_kept_snapshot_at_once() {
    let (_dir, reader, writer, name) = two_servers().await;
    assert_eq!(read(&reader, &name).await, (0, 0));
    // A DROP that stopped after its marker (its files are still there).
    let store = writer.object_store();
    let root = object_store::path::Path::from_url_path(reader.url().path()).unwrap();
    let marker = root.join("gold").join("kept").join("_medlake_dropped");
    store
        .put(&marker, PutPayload::from_static(b"dropped"))
        .await
        .unwrap();
    assert!(matches!(
        reader.table_provider(&name, None).await,
        Err(Error::TableNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_during_commits_see_whole_versions() {
    let (_dir, reader, writer, name) = two_servers().await;
    let writes = tokio::spawn(async move {
        for _ in 0..20 {
            writer
                .write_batches(&name, vec![batch(&[1, 1, 1])], WriteMode::Append)
                .await
                .unwrap();
        }
        name
    });
    let name = TableName::new("gold", "kept").unwrap();
    let mut before = 0;
    while !writes.is_finished() {
        let mut seen = before;
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (reader, name) = (reader.clone(), name.clone());
                tokio::spawn(async move { read(&reader, &name).await })
            })
            .collect();
        for handle in readers {
            let (sum, version) = handle.await.unwrap();
            // Every version adds three rows of 1: the sum is the version's, never a mix.
            assert_eq!(sum, 3 * i64::try_from(version).unwrap());
            // A read that starts after another ended never sees an older version.
            assert!(version >= before, "{version} after {before}");
            seen = seen.max(version);
        }
        before = seen;
    }
    writes.await.unwrap();
    assert_eq!(read(&reader, &name).await, (60, 20));
}
