//! `medlake audit verify` on a warehouse whose audit log was written by `medlake-audit`.

use std::process::Command;

use medlake_audit::{AuditLog, Door, Event, Settings};

use super::{BIN, stderr, stdout};

/// Writes three audit commits into the warehouse at `dir`.
fn write_audit(dir: &std::path::Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let warehouse = medlake_audit::open_warehouse(dir.to_str().unwrap())
            .await
            .unwrap();
        let log = AuditLog::open(warehouse, Settings::default())
            .await
            .unwrap();
        for i in 0..3 {
            let sql = format!("SELECT * FROM ehr.patients WHERE mrn = 'MRN-{i}'");
            log.record_write(Event::new("alice", Door::Cli, &sql))
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    });
}

fn verify(dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["audit", "verify", "--warehouse"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn audit_verify_reports_the_chain_and_fails_when_it_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    // No audit log yet: an error, not a pass.
    let out = verify(dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("42P01"), "{}", stderr(&out));

    write_audit(dir.path());
    let out = verify(dir.path());
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("chain intact 3 audit commits, 3 events"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("head: version 3, seq 3, hash "));

    // A data file of version 2 deleted behind the log's back.
    let table = dir.path().join("system").join("audit");
    let log =
        std::fs::read_to_string(table.join("_delta_log").join(format!("{:020}.json", 2))).unwrap();
    let add: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|a| a.get("add").cloned())
        .unwrap();
    std::fs::remove_file(table.join(add["path"].as_str().unwrap())).unwrap();
    let out = verify(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("chain BROKEN at version 2 (seq 2)"),
        "{}",
        stdout(&out)
    );
}
