//! HTTP ingest through `medlake serve`, SIGKILLed while clients push: after a restart the
//! clients retry every batch with its Idempotency-Key, and every batch (in particular every
//! acknowledged one) is in the table exactly once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{BIN, ok};

const CLIENTS: usize = 6;
const BATCHES: usize = 40;
const ROWS: usize = 50;

fn serve(warehouse: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--insecure-no-auth"])
        .args([
            "--pg",
            "127.0.0.1:0",
            "--flight",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--warehouse")
        .arg(warehouse)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("medlake serve starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve prints its doors")
            .expect("utf-8");
        if let Some(addr) = line.strip_prefix("medlake serve: http on ") {
            break addr.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, format!("http://{addr}/v1/ingest/bronze.readings"))
}

fn batch(client: usize, batch: usize) -> String {
    (0..ROWS)
        .map(|i| {
            format!(
                "{{\"device_id\":\"gw-{client}\",\"patient_id\":{batch},\"metric\":\"heart_rate\",\"value\":{i},\"unit\":\"bpm\",\"taken_at\":\"2026-11-23T08:00:00Z\"}}\n"
            )
        })
        .collect()
}

/// Posts `batch` until it is acknowledged (or `stop`); whether the answer said duplicate.
async fn push(
    http: &reqwest::Client,
    url: &str,
    client: usize,
    b: usize,
    stop: &AtomicBool,
) -> Option<bool> {
    while !stop.load(Ordering::Relaxed) {
        let sent = http
            .post(url)
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", format!("gw-{client}/batch-{b}"))
            .body(batch(client, b))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                let answer: serde_json::Value = response.json().await.ok()?;
                return Some(answer["duplicate"] == true);
            }
            Ok(response)
                if response.status().as_u16() == 429 || response.status().as_u16() == 503 =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(response) => panic!("unexpected answer {}", response.status()),
            // The server is gone (killed): this batch is unacknowledged.
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn every_acknowledged_batch_survives_a_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    ok(
        &wh,
        &[
            "-c",
            "CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, patient_id INT NOT NULL, \
                 metric VARCHAR NOT NULL, value DOUBLE, unit VARCHAR, taken_at TIMESTAMP NOT NULL)",
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Phase 1: push until killed.
    let (mut server, url) = serve(&wh);
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Vec<Vec<usize>> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for b in 0..BATCHES {
                    match push(&http, &url, c, b, &stop).await {
                        Some(_) => acked.push(b),
                        None => break,
                    }
                }
                acked
            }));
        }
        // Let some batches land, then SIGKILL mid-stream.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let wh = wh.clone();
            let commits = tokio::task::spawn_blocking(move || {
                std::fs::read_dir(wh.join("bronze/readings/_delta_log"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .await
            .unwrap();
            if commits >= 4 {
                break;
            }
        }
        server.kill().expect("SIGKILL");
        let _ = server.wait();
        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for task in tasks {
            acked.push(task.await.unwrap());
        }
        acked
    });
    let acked_total: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(acked_total > 0, "nothing was acknowledged before the kill");
    assert!(
        acked_total < CLIENTS * BATCHES,
        "everything was acknowledged before the kill: the test proves nothing"
    );

    // The audit log was written by the same server, each acknowledged batch's commit audited
    // before its answer: its hash chain still verifies after the kill.
    audit_chain_verifies(&wh);

    // Phase 2: restart; every client retries every batch with the same key.
    let (mut server, url) = serve(&wh);
    let duplicates: Vec<Vec<usize>> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let never = AtomicBool::new(false);
                let mut duplicates = Vec::new();
                for b in 0..BATCHES {
                    let duplicate = push(&http, &url, c, b, &never)
                        .await
                        .expect("the restarted server acknowledges every batch");
                    if duplicate {
                        duplicates.push(b);
                    }
                }
                duplicates
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.unwrap());
        }
        all
    });
    // The binary's allocator reports what it holds, beside the kept snapshots.
    let metrics = runtime.block_on(async {
        let url = url.replace("/v1/ingest/bronze.readings", "/metrics");
        http.get(url).send().await.unwrap().text().await.unwrap()
    });
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in /metrics:\n{metrics}"))
    };
    for kind in ["allocated", "resident", "retained"] {
        let bytes = value(&format!("medlake_memory_bytes{{kind=\"{kind}\"}}"));
        assert!(kind == "retained" || bytes > 1e6, "{kind}: {bytes}");
    }
    for series in [
        "medlake_table_snapshots",
        "medlake_table_snapshot_files",
        "medlake_table_snapshot_replayed_commits",
        "medlake_local_io_waits_total",
        "medlake_local_io_in_flight",
    ] {
        assert!(value(series) >= 0.0, "{series}");
    }
    // The server's local reads and writes ran on the process's I/O pool.
    assert!(value("medlake_local_io_operations_total") > 0.0);
    assert!(value("medlake_process_threads") >= 2.0);
    server.kill().unwrap();
    let _ = server.wait();

    // Every batch acknowledged before the kill was recognised as already written.
    for (c, acked) in acknowledged.iter().enumerate() {
        for b in acked {
            assert!(
                duplicates[c].contains(b),
                "gw-{c}/batch-{b} was acknowledged before the kill but written again"
            );
        }
    }
    // Every batch is in the table exactly once.
    let out = ok(
        &wh,
        &[
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n, count(DISTINCT device_id || '/' || CAST(patient_id AS VARCHAR) || '/' || CAST(value AS VARCHAR)) AS d FROM bronze.readings",
        ],
    );
    let expected = CLIENTS * BATCHES * ROWS;
    assert!(
        out.contains(&format!("{expected},{expected}")),
        "expected {expected} distinct rows exactly once:\n{out}"
    );
    audit_chain_verifies(&wh);
}

/// `medlake audit verify` passes on the warehouse, and the chain holds audit commits.
fn audit_chain_verifies(wh: &Path) {
    let out = std::process::Command::new(super::BIN)
        .args(["audit", "verify", "--warehouse"])
        .arg(wh)
        .output()
        .unwrap();
    let report = super::stdout(&out);
    assert!(
        out.status.success() && report.contains("chain intact"),
        "{report}{}",
        super::stderr(&out)
    );
}
