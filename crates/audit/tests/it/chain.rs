//! The chain across commits, reopens and concurrent writers; group commit; batched reads.

use std::time::Duration;

use medlake_audit::{AuditLog, Settings, check_vacuum, table_name, verify};
use medlake_common::Code;

use crate::support::{denied, eventually, read, rows, settings, texts, warehouse, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_holds_across_commits_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    for i in 0..3 {
        log.record_write(write(i)).await.unwrap();
    }
    for i in 0..5 {
        log.record_read(read(i)).unwrap();
    }
    log.record_read(denied(9)).unwrap();
    log.flush().await.unwrap();
    log.close().await.unwrap();
    assert!(log.record_read(read(7)).is_err(), "a closed log refuses");

    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.commits, report.events), (4, 9), "{report}");
    let head = report.head.clone().unwrap();
    assert_eq!(head.seq, 9);

    // A new writer (a restart) continues the chain.
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    log.record_write(write(10)).await.unwrap();
    log.close().await.unwrap();
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.commits, report.events), (5, 10), "{report}");
    assert_eq!(report.head.as_ref().unwrap().seq, 10);

    let batches = rows(&wh).await;
    let seqs = texts(&batches, "seq");
    assert_eq!(seqs, (1..=10).map(|s| s.to_string()).collect::<Vec<_>>());
    // Each commit's prev_hash is the hash of the commit before.
    let (prev, hash) = (texts(&batches, "prev_hash"), texts(&batches, "hash"));
    for i in 1..10 {
        if hash[i] != hash[i - 1] {
            assert_eq!(prev[i], hash[i - 1], "row {i}");
        }
    }
    assert_eq!(hash[9], report.head.unwrap().hash);
    // What was recorded, literals kept out.
    let statements = texts(&batches, "statement");
    assert_eq!(statements[0], "INSERT INTO bronze.readings VALUES (?, ?)");
    assert_eq!(
        statements[3],
        "SELECT * FROM silver.readings r JOIN ehr.patients p ON r.mrn = p.mrn WHERE p.mrn = ? AND r.hr > ?"
    );
    for batch in &batches {
        let text = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
            .unwrap()
            .to_string();
        assert!(
            !text.contains("MRN-"),
            "a literal reached the audit:\n{text}"
        );
    }
    assert_eq!(texts(&batches, "kind")[3], "SELECT");
    assert_eq!(texts(&batches, "roles")[3], "clinician,reader");
    assert_eq!(
        texts(&batches, "objects_read")[3],
        "ehr.patients,silver.readings"
    );
    assert_eq!(texts(&batches, "objects_written")[0], "bronze.readings");
    assert_eq!(texts(&batches, "door")[0], "flight");
    assert_eq!(texts(&batches, "client_addr")[3], "10.1.2.3:40000");
    assert_eq!(texts(&batches, "row_count")[4], "1");
    assert_eq!(texts(&batches, "duration_us")[4], "1501");
    let last_read = 8;
    assert_eq!(texts(&batches, "outcome")[last_read], "denied");
    assert_eq!(texts(&batches, "sqlstate")[last_read], "42501");
    assert_eq!(
        texts(&batches, "break_glass")[last_read],
        "code blue, bed 4"
    );
    assert_eq!(texts(&batches, "sqlstate")[0], "NULL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    let writers: Vec<_> = (0..24)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record_write(write(i)).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    // Every write returned after its commit: all are there before the log closes.
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.events, 24, "{report}");
    assert!(
        report.commits < 24,
        "24 concurrent writes took {} commits",
        report.commits
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_committed_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    for i in 0..3 {
        log.record_read(read(i)).unwrap();
    }
    // Queued, not committed yet (the interval has not passed).
    assert_eq!(log.queued(), 3);
    eventually("the reads' commit", async || {
        verify(&wh).await.unwrap().events == 3
    })
    .await;
    assert_eq!(log.queued(), 0);
    let report = verify(&wh).await.unwrap();
    assert_eq!(report.commits, 1, "{report}");
    // Dropping the last clone stops the writer task, after committing what is queued.
    log.record_read(read(3)).unwrap();
    drop(log);
    eventually("the last read's commit", async || {
        verify(&wh).await.unwrap().events == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_warehouse_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    // Two servers (or a server and `medlake sql`) on the same warehouse.
    let a = AuditLog::open(wh.clone(), settings()).await.unwrap();
    let b = AuditLog::open(warehouse(dir.path()).await, settings())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let log = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { log.record_write(write(i)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.events, 16, "{report}");
    assert_eq!(report.head.unwrap().seq, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let settings = Settings {
        flush_interval: Duration::from_secs(3600),
        max_queued: 3,
    };
    let log = AuditLog::open(wh.clone(), settings).await.unwrap();
    for i in 0..3 {
        log.record_read(read(i)).unwrap();
    }
    let refused = log.record_read(read(3)).unwrap_err();
    assert_eq!(refused.code(), Code::AuditUnavailable, "{refused}");
    assert_eq!(
        log.ensure_available().unwrap_err().code(),
        Code::AuditUnavailable
    );
    assert!(log.is_healthy(), "full is not failing");
    log.flush().await.unwrap();
    log.ensure_available().unwrap();
    log.record_read(read(3)).unwrap();
    log.close().await.unwrap();
    assert_eq!(verify(&wh).await.unwrap().events, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_below_six_years_is_refused_by_the_table_too() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    log.record_write(write(0)).await.unwrap();
    log.close().await.unwrap();
    // The table's properties: append-only, 6 years of log entries, an hour of tombstones
    // (removed files are compacted copies; checkpoints list every tombstone kept).
    let created = wh.commit_actions(&table_name(), 0).await.unwrap().unwrap();
    let config = created
        .iter()
        .find_map(|a| a.get("metaData")?.get("configuration").cloned())
        .unwrap();
    assert_eq!(config["delta.appendOnly"], "true", "{config}");
    assert_eq!(
        config["delta.deletedFileRetentionDuration"], "interval 1 hours",
        "{config}"
    );
    assert_eq!(config["delta.logRetentionDuration"], "interval 2192 days");
    // Writer version 2 (appendOnly is a legacy feature): the lake appends blindly.
    let protocol = created.iter().find_map(|a| a.get("protocol")).unwrap();
    assert_eq!(protocol["minWriterVersion"], 2, "{protocol}");
    let week = Duration::from_secs(7 * 86_400);
    // The engine refuses a VACUUM of the log keeping less than 6 years unless an auditor
    // forces it; the table's own tombstone retention is an hour (what deltalake checks), and
    // what such a VACUUM deletes are files whose rows a compaction copied.
    assert!(check_vacuum(week, false).is_err());
    assert!(check_vacuum(week, true).is_ok());
    wh.vacuum(&table_name(), Some(week), true, false)
        .await
        .unwrap();
    // A VACUUM with the table's retention runs and the chain still verifies (its commits
    // hold no rows).
    wh.vacuum(&table_name(), None, false, false).await.unwrap();
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    // The writer continues the chain after VACUUM's commits.
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    log.record_write(write(1)).await.unwrap();
    log.close().await.unwrap();
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.events, 2, "{report}");
}
