//! When system.audit cannot be written, statements are refused until it can.

use medlake_audit::{AuditLog, verify};
use medlake_common::Code;

use crate::support::{eventually, read, settings, warehouse, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_table_refuses_statements() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    log.record_write(write(0)).await.unwrap();
    log.ensure_available().unwrap();

    // Make the table unwritable. Read-only permissions would not stop root (these tests may
    // run as root), so the log folder is swapped for a plain file: every put under it fails,
    // whoever runs the test.
    let delta_log = dir.path().join("system").join("audit").join("_delta_log");
    let moved = dir.path().join("delta_log.moved");
    std::fs::rename(&delta_log, &moved).unwrap();
    std::fs::write(&delta_log, b"not a folder").unwrap();

    let refused = log.record_write(write(1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::AuditUnavailable, "{refused}");
    assert!(
        refused.to_string().contains("audit log is unavailable"),
        "{refused}"
    );
    assert!(!log.is_healthy());
    // Reads are refused now too, and so is any statement the engine asks about.
    let refused = log.record_read(read(2)).unwrap_err();
    assert_eq!(refused.code(), Code::AuditUnavailable, "{refused}");
    assert_eq!(
        log.ensure_available().unwrap_err().code(),
        Code::AuditUnavailable
    );
    assert!(log.flush().await.is_err());

    // Repaired: the log retries on its own, and the event whose write was refused is kept.
    std::fs::remove_file(&delta_log).unwrap();
    std::fs::rename(&moved, &delta_log).unwrap();
    eventually("the log to recover", async || log.is_healthy()).await;
    log.record_read(read(3)).unwrap();
    log.close().await.unwrap();
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.events, 3, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_closed_when_their_flush_fails() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let log = AuditLog::open(wh.clone(), settings()).await.unwrap();
    let delta_log = dir.path().join("system").join("audit").join("_delta_log");
    let moved = dir.path().join("delta_log.moved");
    std::fs::rename(&delta_log, &moved).unwrap();
    std::fs::write(&delta_log, b"not a folder").unwrap();

    // Queued while the log does not know yet; the batched commit (and its retry) fails...
    log.record_read(read(0)).unwrap();
    eventually("the failed flush", async || !log.is_healthy()).await;
    // ...and from then on reads are refused.
    let refused = log.record_read(read(1)).unwrap_err();
    assert_eq!(refused.code(), Code::AuditUnavailable, "{refused}");
    assert_eq!(log.queued(), 1, "the failed read stays queued");

    std::fs::remove_file(&delta_log).unwrap();
    std::fs::rename(&moved, &delta_log).unwrap();
    eventually("the log to recover", async || log.is_healthy()).await;
    log.close().await.unwrap();
    assert_eq!(verify(&wh).await.unwrap().events, 1);
}
