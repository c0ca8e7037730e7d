//! Engine-wide Prometheus series (every door's statements, every refresh, alert deliveries),
//! served by the HTTP door's `/metrics` beside its own ingest series.
//!
//! Labels are bounded by what the operator created (views, alert rules, the four doors),
//! never by what a client sends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use medlake_views::RefreshOutcome;

/// Refresh durations, seconds.
const REFRESH_BUCKETS: [f64; 9] = [0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 1800.0];
/// Statement durations (until the statement answers; a query until its rows start), seconds.
const STATEMENT_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Per bucket bound, observations at or below it (not cumulative here).
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        if let Some(i) = bounds.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(&self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// A label value as Prometheus text quotes it.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[derive(Default)]
pub(crate) struct Metrics {
    /// (view, status) → durations.
    refreshes: Mutex<BTreeMap<(String, &'static str), Histogram>>,
    /// view → rows written by its refreshes.
    refresh_rows: Mutex<BTreeMap<String, u64>>,
    /// (door, outcome) → durations.
    statements: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    /// door → open sessions.
    sessions: Mutex<BTreeMap<&'static str, i64>>,
    /// Queries of a server with a cluster: run there, and kept here.
    cluster: [std::sync::atomic::AtomicU64; 2],
}

impl Metrics {
    pub fn refreshed(&self, outcome: &RefreshOutcome) {
        let seconds = (outcome.finished - outcome.started)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if let Ok(mut m) = self.refreshes.lock() {
            m.entry((outcome.view.to_string(), outcome.status.as_str()))
                .or_default()
                .observe(&REFRESH_BUCKETS, seconds);
        }
        if let Ok(mut m) = self.refresh_rows.lock() {
            *m.entry(outcome.view.to_string()).or_default() += outcome.rows_written;
        }
    }

    pub fn statement(&self, door: &'static str, ok: bool, seconds: f64) {
        if let Ok(mut m) = self.statements.lock() {
            m.entry((door, if ok { "ok" } else { "error" }))
                .or_default()
                .observe(&STATEMENT_BUCKETS, seconds);
        }
    }

    pub fn session(&self, door: &'static str, delta: i64) {
        if let Ok(mut m) = self.sessions.lock() {
            *m.entry(door).or_default() += delta;
        }
    }

    /// A query of a server with a cluster ran there (`true`) or here.
    pub fn cluster_query(&self, there: bool) {
        self.cluster[usize::from(there)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The series this struct counts.
    pub fn text(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "medlake_cluster_queries_total",
            "counter",
            "Queries reading Delta tables of a server with a cluster, by where they ran.",
        );
        for (place, i) in [("server", 0), ("cluster", 1)] {
            let n = self.cluster[i].load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(out, "medlake_cluster_queries_total{{ran=\"{place}\"}} {n}");
        }
        header(
            &mut out,
            "medlake_refresh_duration_seconds",
            "histogram",
            "Refreshes of materialized views by view and status (failed ones included).",
        );
        for ((view, status), h) in self.refreshes.lock().map(|m| m.clone()).unwrap_or_default() {
            let labels = format!("view=\"{}\",status=\"{status}\"", label(&view));
            h.write(
                &mut out,
                "medlake_refresh_duration_seconds",
                &labels,
                &REFRESH_BUCKETS,
            );
        }
        header(
            &mut out,
            "medlake_refresh_rows_written_total",
            "counter",
            "Rows written to each view by its refreshes.",
        );
        for (view, rows) in self
            .refresh_rows
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "medlake_refresh_rows_written_total{{view=\"{}\"}} {rows}",
                label(&view)
            );
        }
        header(
            &mut out,
            "medlake_statement_duration_seconds",
            "histogram",
            "Statements by door and outcome, until they answer (queries: until rows start).",
        );
        for ((door, outcome), h) in self
            .statements
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
        {
            let labels = format!("door=\"{door}\",outcome=\"{outcome}\"");
            h.write(
                &mut out,
                "medlake_statement_duration_seconds",
                &labels,
                &STATEMENT_BUCKETS,
            );
        }
        header(
            &mut out,
            "medlake_sessions",
            "gauge",
            "Open sessions by door (a Postgres connection is one).",
        );
        for (door, n) in self.sessions.lock().map(|m| m.clone()).unwrap_or_default() {
            let _ = writeln!(out, "medlake_sessions{{door=\"{door}\"}} {n}");
        }
        out
    }
}

/// The allocator's figures (when the binary registered a probe: see
/// [`medlake_common::memory`]) and what the kept table snapshots hold, for telling what a
/// server's memory grows with.
pub(crate) fn memory_text(
    out: &mut String,
    snapshots: &medlake_lake::KeptSnapshots,
    caches: &datafusion::execution::cache::cache_manager::CacheManager,
) {
    let figures = medlake_common::memory::probe();
    if !figures.is_empty() {
        header(
            out,
            "medlake_memory_bytes",
            "gauge",
            "The allocator's bytes by kind: allocated (held by objects), active, metadata, \
             resident, mapped, retained (kept by the allocator for reuse).",
        );
        for (kind, bytes) in figures {
            let _ = writeln!(out, "medlake_memory_bytes{{kind=\"{kind}\"}} {bytes}");
        }
    }
    // DataFusion's Parquet footer cache (one per process; `datafusion.runtime.
    // metadata_cache_limit`, 50 MiB by default).
    let footers = caches.get_file_metadata_cache();
    let footer_bytes: usize = footers
        .list_entries()
        .values()
        .map(|entry| entry.size_bytes)
        .sum();
    let series = [
        (
            "medlake_parquet_metadata_cache_bytes",
            "Bytes of Parquet footers DataFusion keeps.",
            footer_bytes as u64,
        ),
        (
            "medlake_parquet_metadata_cache_limit_bytes",
            "Bytes of Parquet footers DataFusion may keep (its metadata_cache_limit).",
            footers.cache_limit() as u64,
        ),
        (
            "medlake_parquet_metadata_cache_entries",
            "Parquet footers DataFusion keeps.",
            footers.len() as u64,
        ),
        (
            "medlake_table_snapshots",
            "Table snapshots kept between statements.",
            snapshots.tables,
        ),
        (
            "medlake_table_snapshot_files",
            "Data files the kept table snapshots list.",
            snapshots.files,
        ),
        (
            "medlake_table_snapshot_replayed_commits",
            "Commits replayed onto the kept snapshots since each was loaded.",
            snapshots.replayed,
        ),
    ];
    for (name, help, value) in series {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    local_io_text(out);
}

/// The process's threads and its local I/O pool (`medlake_common::local_io`): a burst of
/// local reads used to grow tokio's blocking pool for good.
fn local_io_text(out: &mut String) {
    let io = medlake_common::local_io::stats();
    let series = [
        (
            "medlake_local_io_operations_total",
            "counter",
            "Local file operations run on the process's I/O threads.",
            io.operations,
        ),
        (
            "medlake_local_io_waits_total",
            "counter",
            "Local file operations that queued because every I/O thread was busy.",
            io.waited,
        ),
        (
            "medlake_local_io_in_flight",
            "gauge",
            "Local file operations queued or running now.",
            io.in_flight,
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(threads) = process_threads() {
        header(
            out,
            "medlake_process_threads",
            "gauge",
            "Threads of the server process.",
        );
        let _ = writeln!(out, "medlake_process_threads {threads}");
    }
}

/// The `Threads:` line of `/proc/self/status` (Linux).
fn process_threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_quoted() {
        let metrics = Metrics::default();
        metrics.statement("postgres", true, 0.002);
        metrics.statement("postgres", true, 0.2);
        metrics.statement("postgres", true, 99.0);
        let text = metrics.text();
        assert!(text.contains(
            "medlake_statement_duration_seconds_bucket{door=\"postgres\",outcome=\"ok\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "medlake_statement_duration_seconds_bucket{door=\"postgres\",outcome=\"ok\",le=\"0.25\"} 2"
        ));
        assert!(text.contains(
            "medlake_statement_duration_seconds_bucket{door=\"postgres\",outcome=\"ok\",le=\"+Inf\"} 3"
        ));
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
