//! Runs `tests/sql/**/*.slt` with sqllogictest-rs: each file gets its own engine over its own
//! scratch warehouse. `--complete` rewrites the expected results from what medlake returns;
//! any other argument filters the files by path.
//!
//! With `MEDLAKE_SLT_CLUSTER=1`, the engines run their queries and refreshes on a Ballista
//! cluster started here (a scheduler and two executors on loopback, mutual TLS): the same
//! files must give the same answers (tests/run.sh runs both).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use medlake_engine::{Engine, Output};
use sqllogictest::{DBOutput, DefaultColumnType};

/// A medlake error as the runner sees it: the message, and the SQLSTATE for `(XXXXX)` checks.
#[derive(Debug)]
struct SltError(medlake_engine::Error);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for SltError {}

struct Db {
    engine: Arc<Engine>,
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let mut outputs = self.engine.sql(sql).await.map_err(SltError)?;
        let Some(last) = outputs.pop() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        for earlier in outputs {
            earlier.collect().await.map_err(SltError)?;
        }
        match last {
            Output::Command { rows, .. } => Ok(DBOutput::StatementComplete(rows)),
            Output::Rows(stream) => {
                let schema = stream.schema();
                let batches = Output::Rows(stream).collect().await.map_err(SltError)?;
                let types = schema
                    .fields()
                    .iter()
                    .map(|f| column_type(f.data_type()))
                    .collect();
                Ok(DBOutput::Rows {
                    types,
                    rows: rows(&batches),
                })
            }
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "medlake"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }

    fn error_sql_state(err: &SltError) -> Option<String> {
        Some(err.0.code().sqlstate().to_string())
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .expect("every Arrow type we return has a text form");
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| {
                        let text = f.value(row).to_string();
                        if text.is_empty() && !c.is_null(row) {
                            "(empty)".to_string()
                        } else {
                            text
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

/// `medlake_cluster_queries_total` of an engine's metrics: (on the cluster, kept here).
fn cluster_queries(metrics: &str) -> (u64, u64) {
    let count = |ran: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("medlake_cluster_queries_total{{ran=\"{ran}\"}} "))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("cluster"), count("server"))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sql");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.retain(|f| {
        filters.is_empty()
            || filters
                .iter()
                .any(|p| f.to_string_lossy().contains(p.as_str()))
    });
    assert!(!files.is_empty(), "no .slt files under {}", root.display());

    let functions = medlake_cluster::Functions::new(medlake_engine::cluster_functions());
    let cluster = match std::env::var("MEDLAKE_SLT_CLUSTER") {
        Ok(v) if !v.is_empty() && v != "0" => {
            println!("queries and refreshes run on a loopback Ballista cluster (2 executors)");
            Some(medlake_cluster::testing::LocalCluster::start(2, functions.clone()).await)
        }
        _ => None,
    };
    let (mut on_cluster, mut kept_here) = (0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let scratch = tempfile::tempdir().expect("a scratch folder");
        let location = scratch.path().join("warehouse");
        let opened = match &cluster {
            None => Engine::open(location.to_str().expect("utf-8 temp path")).await,
            Some(cluster) => {
                Engine::builder(location.to_str().expect("utf-8 temp path"))
                    .policy(medlake_source::Policy::permissive())
                    .connectors(medlake_engine::all_connectors())
                    .cluster(cluster.client(functions.clone()))
                    .open()
                    .await
            }
        };
        let engine = match opened {
            Ok(engine) => Arc::new(engine),
            Err(e) => {
                failures.push(format!("{}: cannot open a warehouse: {e}", file.display()));
                continue;
            }
        };
        let counted = engine.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let engine = engine.clone();
            async move { Ok(Db { engine }) }
        });
        runner.with_column_validator(sqllogictest::strict_column_validator);
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let result = if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::strict_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            runner
                .run_file_async(file)
                .await
                .map_err(|e| e.display(true).to_string())
        };
        if cluster.is_some() {
            let (there, here) = cluster_queries(&counted.metrics_text().await);
            on_cluster += there;
            kept_here += here;
        }
        match result {
            Ok(()) => println!("ok      {name}"),
            Err(e) => {
                println!("FAILED  {name}");
                failures.push(format!("{name}:\n{e}"));
            }
        }
    }
    if cluster.is_some() {
        println!("{on_cluster} queries ran on the cluster, {kept_here} stayed on the server");
        // Nothing silently stays home: most queries reading tables must have crossed.
        if on_cluster <= kept_here {
            failures.push(format!(
                "only {on_cluster} queries ran on the cluster ({kept_here} stayed here)"
            ));
        }
    }
    if !failures.is_empty() {
        eprintln!("\n{}", failures.join("\n\n"));
        eprintln!(
            "\n{} of {} sqllogictest files failed",
            failures.len(),
            files.len()
        );
        std::process::exit(1);
    }
    println!("{} sqllogictest files passed", files.len());
}
