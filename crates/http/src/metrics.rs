//! Prometheus metrics of the HTTP door (`GET /metrics`, text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Metrics {
    /// (table, HTTP status) → requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// table → rows committed.
    rows: Mutex<BTreeMap<String, u64>>,
    rows_refused: AtomicU64,
    rows_quarantined: AtomicU64,
    duplicates: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    rejected_busy: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Metrics {
    pub fn request(&self, table: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((table.to_string(), status)).or_default() += 1;
        }
        if status == 429 || status == 503 {
            self.rejected_busy.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn committed(&self, table: &str, rows: u64, micros: u64) {
        if let Ok(mut m) = self.rows.lock() {
            *m.entry(table.to_string()).or_default() += rows;
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn refused(&self, rows: u64) {
        self.rows_refused.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn quarantined(&self, rows: u64) {
        self.rows_quarantined.fetch_add(rows, Ordering::Relaxed);
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of every series.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "medlake_ingest_requests_total",
            "Ingest requests by table and HTTP status.",
        );
        if let Ok(m) = self.requests.lock() {
            for ((table, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "medlake_ingest_requests_total{{table=\"{}\",status=\"{status}\"}} {n}",
                    escape(table)
                );
            }
        }
        header(
            &mut out,
            "medlake_ingest_rows_total",
            "Rows committed by ingest, by table.",
        );
        if let Ok(m) = self.rows.lock() {
            for (table, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "medlake_ingest_rows_total{{table=\"{}\"}} {n}",
                    escape(table)
                );
            }
        }
        let simple = [
            (
                "medlake_ingest_rows_refused_total",
                "Rows refused by validation.",
                &self.rows_refused,
            ),
            (
                "medlake_ingest_rows_quarantined_total",
                "Rows written to a quarantine table.",
                &self.rows_quarantined,
            ),
            (
                "medlake_ingest_duplicates_total",
                "Requests acknowledged as duplicates of a committed Idempotency-Key.",
                &self.duplicates,
            ),
            (
                "medlake_ingest_commits_total",
                "Delta commits made by ingest.",
                &self.commits,
            ),
            (
                "medlake_ingest_rejected_busy_total",
                "Requests answered 429 or 503 (backpressure).",
                &self.rejected_busy,
            ),
        ];
        for (name, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP medlake_ingest_commit_seconds_total Time spent committing ingest batches.\n\
             # TYPE medlake_ingest_commit_seconds_total counter\n\
             medlake_ingest_commit_seconds_total {:.6}",
            self.commit_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP medlake_ingest_in_flight Ingest requests being handled now.\n\
             # TYPE medlake_ingest_in_flight gauge\n\
             medlake_ingest_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
