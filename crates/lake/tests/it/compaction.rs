//! Automatic compaction of blind-appended tables (`maintenance.rs`): a table micro-batched by
//! an ingest door keeps few files, no row is lost or doubled while appends race the
//! compaction's commit, the change ranges across it stay readable (incremental refreshes
//! stay incremental), and the policy is the table's (`ALTER TABLE ... SET TBLPROPERTIES`).

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use medlake_lake::maintenance::{AUTO_COMPACT, AUTO_COMPACT_MIN_FILES};
use medlake_lake::{Appender, CommitOptions, Error, TableName, Warehouse};

/// One single-row commit through `appender`, taken again after someone else's commit (the
/// compaction) as the ingest doors do.
async fn append(warehouse: &Warehouse, appender: &mut Appender, n: i64) -> u64 {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![n]))]).unwrap();
    let ctx = SessionContext::new();
    let plan = ctx.read_batch(batch).unwrap().logical_plan().clone();
    for _ in 0..100 {
        let state: Arc<dyn datafusion::catalog::Session> = Arc::new(ctx.state());
        let committed = warehouse
            .append_to(appender, plan.clone(), state, &CommitOptions::default())
            .await
            .unwrap();
        if let Some(version) = committed {
            return version;
        }
        warehouse
            .refresh_appender(appender)
            .await
            .unwrap()
            .expect("the same table");
    }
    panic!("append {n} never committed");
}

async fn rows(warehouse: &Warehouse, name: &TableName) -> (i64, i64, i64) {
    let (provider, _) = warehouse.table_provider(name, None).await.unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("t", provider).unwrap();
    let batches = ctx
        .sql("SELECT count(*), count(DISTINCT n), sum(n) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let column = |i: usize| {
        batches[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    (column(0), column(1), column(2))
}

async fn files(warehouse: &Warehouse, name: &TableName) -> usize {
    let table = warehouse.open_table(name).await.unwrap();
    table.snapshot().unwrap().log_data().num_files()
}

async fn compactions(warehouse: &Warehouse, name: &TableName) -> Vec<u64> {
    let mut found = Vec::new();
    for version in warehouse.versions(name).await.unwrap() {
        let actions = warehouse
            .commit_actions(name, version)
            .await
            .unwrap()
            .unwrap();
        let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
        if info.get("medlakeAutoCompaction").is_some() {
            assert_eq!(info["operation"], "OPTIMIZE");
            for action in &actions {
                for kind in ["add", "remove"] {
                    if let Some(file) = action.get(kind) {
                        assert_eq!(file["dataChange"], false, "{kind} of a compaction");
                    }
                }
            }
            found.push(version);
        }
    }
    found
}

#[tokio::test]
async fn appended_tables_are_compacted_without_losing_or_doubling_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let name = TableName::new("bronze", "pushed").unwrap();
    warehouse.create_table(&name, &schema, false).await.unwrap();

    // The policy is checked before anything is written.
    for (key, value) in [
        ("delta.appendOnly", "true"),
        (AUTO_COMPACT_MIN_FILES, "1"),
        (AUTO_COMPACT, "sometimes"),
    ] {
        let refused = warehouse
            .set_table_properties(&name, &[(key.into(), value.into())])
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::InvalidTableProperty { .. }),
            "{key}: {refused}"
        );
    }
    assert_eq!(warehouse.versions(&name).await.unwrap(), vec![0]);
    warehouse
        .set_table_properties(&name, &[(AUTO_COMPACT_MIN_FILES.into(), "10".into())])
        .await
        .unwrap();

    // Appends; from the first checkpoint with 10 small files on, compactions run while the
    // appends go on (their commits land between the appends').
    let mut appender = warehouse.open_appender(&name).await.unwrap();
    let mut n = 0;
    while appender.version() < 99 {
        n += 1;
        append(&warehouse, &mut appender, n).await;
    }
    for _ in 0..60 {
        n += 1;
        append(&warehouse, &mut appender, n).await;
    }
    warehouse.settle().await;
    let compacted = compactions(&warehouse, &name).await;
    assert!(!compacted.is_empty(), "compacted");
    assert_eq!(rows(&warehouse, &name).await, (n, n, n * (n + 1) / 2));
    let after = files(&warehouse, &name).await;
    assert!(
        after <= 25,
        "{n} appends, at most ~20 live files (minFiles 10, a checkpoint every 10 commits): {after}"
    );

    // A change range across the compaction still reads the rows its appends added: the
    // compacted files stay until VACUUM.
    let latest = *warehouse.versions(&name).await.unwrap().last().unwrap();
    let span = warehouse.span(&name, 1, latest).await.unwrap().unwrap();
    assert_eq!(span.added.len() as i64, n, "one file per append");
    let first = dir.path().join("wh/bronze/pushed").join(&span.added[0]);
    std::fs::remove_file(first).unwrap();
    let gone = warehouse.span(&name, 1, latest).await.unwrap().unwrap_err();
    assert!(gone.contains("vacuumed"), "{gone}");

    // Turned off, the table keeps its small files.
    warehouse
        .set_table_properties(&name, &[(AUTO_COMPACT.into(), "FALSE".into())])
        .await
        .unwrap();
    let mut appender = warehouse.open_appender(&name).await.unwrap();
    for _ in 0..120 {
        n += 1;
        append(&warehouse, &mut appender, n).await;
    }
    warehouse.settle().await;
    assert_eq!(compactions(&warehouse, &name).await, compacted);
    assert_eq!(rows(&warehouse, &name).await, (n, n, n * (n + 1) / 2));
}

/// `OPTIMIZE` without ZORDER BY commits the way the automatic compaction does: appends that
/// land while it rewrites the files never make it fail (deltalake's OPTIMIZE rechecked its
/// whole read set per newer commit and gave up with a conflict under a busy ingest door),
/// and no row is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_lands_while_appends_keep_landing() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let name = TableName::new("bronze", "busy").unwrap();
    warehouse.create_table(&name, &schema, false).await.unwrap();
    warehouse
        .set_table_properties(&name, &[(AUTO_COMPACT.into(), "false".into())])
        .await
        .unwrap();
    let mut appender = warehouse.open_appender(&name).await.unwrap();
    for n in 1..=40 {
        append(&warehouse, &mut appender, n).await;
    }
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let appending = tokio::spawn({
        let warehouse = warehouse.clone();
        async move {
            let mut n = 40;
            while !*stopped.borrow_and_update() || n < 60 {
                n += 1;
                append(&warehouse, &mut appender, n).await;
            }
            n
        }
    });
    let before = warehouse.versions(&name).await.unwrap().len();
    let session: Arc<dyn datafusion::catalog::Session> = Arc::new(SessionContext::new().state());
    let optimized = warehouse
        .optimize(&name, Vec::new(), &[], None, session)
        .await
        .expect("OPTIMIZE under appends");
    stop.send(true).unwrap();
    let n = appending.await.unwrap();
    assert!(optimized.files_removed >= 40, "{optimized:?}");
    assert_eq!(optimized.files_added, 1, "{optimized:?}");
    assert!(
        optimized.version as usize >= before,
        "{optimized:?} after {before} versions"
    );
    assert_eq!(rows(&warehouse, &name).await, (n, n, n * (n + 1) / 2));
    assert_eq!(
        files(&warehouse, &name).await as u64,
        (n as u64) - optimized.files_removed + 1
    );
    let actions = warehouse
        .commit_actions(&name, optimized.version)
        .await
        .unwrap()
        .unwrap();
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(info["operation"], "OPTIMIZE");
    assert!(info.get("medlakeAutoCompaction").is_none(), "{info}");
}
