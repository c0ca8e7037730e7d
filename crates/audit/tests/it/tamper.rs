//! Changing what the audit holds, behind the log's back, breaks the chain where it was done.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use medlake_audit::{AuditLog, table_name, verify};
use medlake_lake::{Warehouse, WriteMode};

use crate::support::{read, rows, settings, texts, warehouse, write};

/// Three audit commits (versions 1 to 3) of two events each.
async fn three_commits(wh: &Warehouse) {
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    for i in 0..3 {
        log.record_read(read(i)).unwrap();
        log.record_write(write(i)).await.unwrap();
    }
    log.close().await.unwrap();
    let report = verify(wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.commits, report.events), (3, 6));
}

fn table_dir(dir: &Path) -> PathBuf {
    dir.join("system").join("audit")
}

/// The data file version `version` added.
async fn file_of(wh: &Warehouse, version: u64) -> String {
    let actions = wh
        .commit_actions(&table_name(), version)
        .await
        .unwrap()
        .unwrap();
    actions
        .iter()
        .find_map(|a| a.get("add")?.get("path")?.as_str().map(str::to_string))
        .expect("an add action")
}

/// `file` rewritten with the first row's user changed.
fn tampered(file: &Path) -> Vec<u8> {
    let bytes = bytes::Bytes::from(std::fs::read(file).unwrap());
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let batch = &batches[0];
    let index = batch.schema().index_of("user_name").unwrap();
    let mut users = texts(std::slice::from_ref(batch), "user_name");
    users[0] = "nobody".into();
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(StringArray::from(users)) as ArrayRef;
    let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_data_file_breaks_the_chain_at_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    three_commits(&wh).await;
    let file = table_dir(dir.path()).join(file_of(&wh, 2).await);
    let edited = tampered(&file);
    std::fs::write(&file, edited).unwrap();

    let report = verify(&wh).await.unwrap();
    let broken = report.broken.clone().expect("the chain is broken");
    assert_eq!((broken.version, broken.seq), (2, Some(3)), "{report}");
    assert!(broken.reason.contains("a value was changed"), "{report}");
    assert_eq!(report.commits, 1, "{report}");
    assert!(
        report.to_string().contains("BROKEN at version 2 (seq 3)"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_replaces_a_file_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    three_commits(&wh).await;
    let table = table_dir(dir.path());
    let original = file_of(&wh, 2).await;
    let replacement = "part-00000-tampered-c000.snappy.parquet";
    let edited = tampered(&table.join(&original));
    std::fs::write(table.join(replacement), &edited).unwrap();
    // Version 4, written as any Delta writer would: remove the file, add the edited one.
    let now = chrono::Utc::now().timestamp_millis();
    commit_entry(
        &table,
        4,
        &[
            serde_json::json!({"commitInfo": {"timestamp": now, "operation": "WRITE", "operationParameters": {"mode": "Overwrite"}}}),
            serde_json::json!({"remove": {"path": original, "deletionTimestamp": now, "dataChange": true}}),
            serde_json::json!({"add": {"path": replacement, "partitionValues": {}, "size": edited.len(), "modificationTime": now, "dataChange": true}}),
        ],
    );
    // Readers of the table now see the edited row...
    let users = texts(&rows(&wh).await, "user_name");
    assert!(users.contains(&"nobody".to_string()), "{users:?}");
    // ...and verify names the commit that did it.
    let report = verify(&wh).await.unwrap();
    let broken = report.broken.clone().expect("the chain is broken");
    assert_eq!((broken.version, broken.seq), (4, None), "{report}");
    assert!(broken.reason.contains("not an audit append"), "{report}");
    assert_eq!((report.commits, report.events), (3, 6), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_data_file_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    three_commits(&wh).await;
    std::fs::remove_file(table_dir(dir.path()).join(file_of(&wh, 3).await)).unwrap();
    let report = verify(&wh).await.unwrap();
    let broken = report.broken.clone().expect("the chain is broken");
    assert_eq!((broken.version, broken.seq), (3, Some(5)), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_writers_refuse_to_overwrite_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    three_commits(&wh).await;
    let batches = rows(&wh).await;
    let refused = wh
        .write_batches(&table_name(), batches, WriteMode::Overwrite)
        .await;
    // deltalake refuses the removes (`delta.appendOnly`); medlake-lake reports it as a
    // conflict.
    let refused = refused.expect_err("an append-only table took an overwrite");
    let cause = format!("{:?}", std::error::Error::source(&refused));
    assert!(cause.contains("DeltaTableAppendOnly"), "{refused}: {cause}");
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
}

/// Writes `actions` as version `version` of `system.audit`'s log, behind medlake's back.
fn commit_entry(table: &Path, version: u64, actions: &[serde_json::Value]) {
    let entry = actions
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        table.join("_delta_log").join(format!("{version:020}.json")),
        entry,
    )
    .unwrap();
}

/// An `OPTIMIZE` entry as any Delta writer's compaction: `removed` out, `added` in, no
/// change of data.
fn optimize(removed: &[String], added: &[(&str, usize)]) -> Vec<serde_json::Value> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut actions = vec![serde_json::json!({"commitInfo": {
        "timestamp": now, "operation": "OPTIMIZE",
        "operationParameters": {"targetSize": "33554432"}}})];
    actions.extend(removed.iter().map(|path| {
        serde_json::json!({"remove": {"path": path, "deletionTimestamp": now, "dataChange": false}})
    }));
    actions.extend(added.iter().map(|(path, size)| {
        serde_json::json!({"add": {"path": path, "partitionValues": {}, "size": size,
            "modificationTime": now, "dataChange": false}})
    }));
    actions
}

/// The audit log is compacted automatically like any micro-batched table (one small file per
/// audit commit): verify reads every audit commit's rows from the compacted files, also
/// after VACUUM deleted the files the commits added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_and_vacuumed_audit_log_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    // 70 commits: the checkpoint of version 59 finds 59 small files (the default policy
    // compacts 50 or more).
    for i in 0..70 {
        log.record_write(write(i)).await.unwrap();
        if i == 60 {
            wh.settle().await;
        }
    }
    log.close().await.unwrap();
    wh.settle().await;
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.compactions >= 1, "{report}");
    assert_eq!((report.commits, report.events), (70, 70), "{report}");
    let live = wh
        .open_table(&table_name())
        .await
        .unwrap()
        .snapshot()
        .unwrap()
        .log_data()
        .num_files();
    assert!(live < 30, "{live} files after compaction");
    // VACUUM (forced, no retention) deletes the files the first audit commits added.
    let first = table_dir(dir.path()).join(file_of(&wh, 1).await);
    wh.vacuum(&table_name(), Some(std::time::Duration::ZERO), false, true)
        .await
        .unwrap();
    assert!(!first.exists(), "VACUUM kept {}", first.display());
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.commits, report.events), (70, 70), "{report}");
    assert!(report.other_commits >= 2, "VACUUM START and END: {report}");
    assert!(report.to_string().contains("compactions"), "{report}");
}

/// A compaction is checked by what it kept: one that rewrites a file with a value changed
/// breaks the chain at the audit commit whose row it changed; one that drops a file's rows,
/// at the commit whose rows are gone; one that holds a row twice, there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_that_changes_drops_or_repeats_rows_breaks_the_chain() {
    for (case, version, seq, reason) in [
        ("changed", 2, 3, "a value was changed"),
        ("dropped", 3, 5, "the table holds 0 of its rows"),
        ("repeated", 2, 3, "the table holds 4 of its rows"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let wh = warehouse(dir.path()).await;
        three_commits(&wh).await;
        let table = table_dir(dir.path());
        let (second, third) = (file_of(&wh, 2).await, file_of(&wh, 3).await);
        let entry = match case {
            "changed" => {
                let edited = tampered(&table.join(&second));
                std::fs::write(
                    table.join("part-00000-compacted-c000.snappy.parquet"),
                    &edited,
                )
                .unwrap();
                optimize(
                    std::slice::from_ref(&second),
                    &[("part-00000-compacted-c000.snappy.parquet", edited.len())],
                )
            }
            "dropped" => optimize(std::slice::from_ref(&third), &[]),
            _ => {
                let copy = std::fs::read(table.join(&second)).unwrap();
                let copies = [
                    "part-00000-a-c000.snappy.parquet",
                    "part-00000-b-c000.snappy.parquet",
                ];
                for name in copies {
                    std::fs::write(table.join(name), &copy).unwrap();
                }
                optimize(
                    std::slice::from_ref(&second),
                    &copies.map(|name| (name, copy.len())),
                )
            }
        };
        commit_entry(&table, 4, &entry);
        let report = verify(&wh).await.unwrap();
        let broken = report.broken.clone().expect("the chain is broken");
        assert_eq!(
            (broken.version, broken.seq),
            (version, Some(seq)),
            "{case}: {report}"
        );
        assert!(broken.reason.contains(reason), "{case}: {report}");
        assert_eq!(report.commits, version - 1, "{case}: {report}");
    }
}

/// An entry that says OPTIMIZE but changes data (a remove with `dataChange: true`) is not a
/// compaction: the chain breaks at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimize_that_changes_data_is_not_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    three_commits(&wh).await;
    let table = table_dir(dir.path());
    let mut entry = optimize(&[file_of(&wh, 3).await], &[]);
    entry[1]["remove"]["dataChange"] = true.into();
    commit_entry(&table, 4, &entry);
    let report = verify(&wh).await.unwrap();
    let broken = report.broken.clone().expect("the chain is broken");
    assert_eq!((broken.version, broken.seq), (4, None), "{report}");
    assert!(broken.reason.contains("not a compaction"), "{report}");
    assert_eq!((report.commits, report.events), (3, 6), "{report}");
}
