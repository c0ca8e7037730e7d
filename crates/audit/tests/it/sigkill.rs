//! A writer killed with SIGKILL in the middle of its commits leaves a chain that verifies
//! and that a new writer continues.

use std::process::{Command, Stdio};
use std::time::Duration;

use medlake_audit::{AuditLog, Settings, table_name, verify};

use crate::support::{read, warehouse, write};

/// Set (to a warehouse folder) only in the child process.
const CHILD: &str = "MEDLAKE_AUDIT_SIGKILL_CHILD";

/// The child: writes audit commits as fast as it can until it is killed. In the test run
/// itself (without the variable) it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_writes_until_killed() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let settings = Settings {
        flush_interval: Duration::from_millis(20),
        ..Settings::default()
    };
    let log = AuditLog::open(warehouse(dir.as_ref()).await, settings)
        .await
        .unwrap();
    for round in 0usize.. {
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record_write(write(round * 4 + i)).await })
            })
            .collect();
        log.record_read(read(round)).unwrap();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
    }
}

/// A moment that differs from run to run, below `bound` (no random crate needed).
fn jitter(bound: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_nanos(nanos % bound.as_nanos() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_verifies_after_a_sigkill_mid_write() {
    let dir = tempfile::tempdir().unwrap();
    let wh = warehouse(dir.path()).await;
    let exe = std::env::current_exe().unwrap();
    for round in 0..3 {
        let before = if round == 0 {
            0
        } else {
            wh.versions(&table_name()).await.unwrap().len()
        };
        let mut child = Command::new(&exe)
            .args([
                "sigkill::child_writes_until_killed",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it commit a few times, then kill it wherever it is.
        let mut waited = 0;
        loop {
            let versions = match wh.table_exists(&table_name()).await.unwrap() {
                true => wh.versions(&table_name()).await.unwrap().len(),
                false => 0,
            };
            if versions >= before + 5 {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "the child writer died");
            waited += 1;
            assert!(waited < 2400, "the child wrote no audit commits in 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(jitter(Duration::from_millis(150))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let report = verify(&wh).await.unwrap();
        // Data files no commit refers to: the kill landed between a commit's data file and
        // its log entry (it does in most runs; when it does not, it hit between commits).
        let files = std::fs::read_dir(dir.path().join("system").join("audit"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".parquet")
            })
            .count();
        eprintln!(
            "kill {round}: {} audit commits, {} data files written",
            report.commits, files
        );
        assert!(report.is_ok(), "after kill {round}: {report}");
        assert!(report.events >= 5, "{report}");
    }

    let head = verify(&wh).await.unwrap().head.unwrap();
    let log = AuditLog::open(wh.clone(), Settings::default())
        .await
        .unwrap();
    log.record_write(write(0)).await.unwrap();
    log.close().await.unwrap();
    let report = verify(&wh).await.unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        report.head.unwrap().seq,
        head.seq + 1,
        "the chain continues"
    );
}
