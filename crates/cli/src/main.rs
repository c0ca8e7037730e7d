//! The `medlake` binary: argument parsing and wiring only. Everything it runs goes through
//! `medlake_engine::Engine`.

mod backup;
mod cluster;
mod config;
mod connectors;
mod doors;
mod mllp_door;
mod quickstart;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use arrow::array::RecordBatch;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use medlake_engine::{Engine, Output, Statement};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

/// jemalloc, not the system allocator: a server's memory must follow what it holds. With
/// glibc's malloc, each thread that once needed memory keeps an arena of it: a log replay
/// reading 100 commit files at once (a checkpoint, a snapshot load) allocates a few hundred
/// MiB for a moment on whatever thread runs it, and the soak measured the server's RSS
/// ratcheting up by that under micro-batched ingest (19 → 513 MiB in 150 s while the heap's
/// floor stayed at ~15 MiB). jemalloc returns unused pages to the system after a decay time
/// (a background thread purges them, enabled in [`main`]).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "medlake",
    version,
    about = "medlake: the open warehouse for hospital and medical-device data",
    long_about = "medlake keeps hospital and device data as Delta Lake tables (bronze, silver, \
                  gold) and runs SQL over them with Apache DataFusion."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run SQL against the warehouse: interactively, or with -c / -f.
    #[command(after_help = "Examples:\n  \
        medlake sql --warehouse ./wh -c \"CREATE TABLE bronze.t (id INT NOT NULL)\"\n  \
        medlake sql --warehouse ./wh -f demo.sql\n  \
        medlake sql --warehouse az://lake/warehouse        (credentials from AZURE_* variables)")]
    Sql(SqlArgs),
    /// Refresh materialized views now (incrementally where their queries allow).
    Refresh(RefreshArgs),
    /// Print the warehouse's health for a person: each source's freshness (system.sources),
    /// each view's last refresh and staleness, and the alerts nobody acknowledged.
    Status(StatusArgs),
    /// Apply a project folder: catalog/*.sql, then the views of sql/**/*.sql in dependency
    /// order. Unchanged views keep their data; changed ones are replaced and refreshed.
    Apply(ApplyArgs),
    /// Run the server: applies --project at start, serves the Postgres wire protocol (psql,
    /// Power BI, JDBC) and refreshes scheduled views (REFRESH EVERY / REFRESH CRON) until
    /// stopped. Prints one line per door with the address it bound.
    #[command(after_help = "Examples:\n  \
        medlake serve --warehouse ./wh --config medlake.toml --pg 0.0.0.0:5432\n  \
        medlake serve --warehouse ./wh --insecure-no-auth     (loopback demo, no passwords)")]
    Serve(ServeArgs),
    /// Copy every external table of a schema into materialized views of the same names in
    /// another schema (bronze), a few tables at a time, with progress. Views that exist are
    /// refreshed: incrementally for tables with a 'watermark' option.
    #[command(after_help = "Examples:\n  \
        medlake sql -c \"IMPORT FOREIGN SCHEMA dbo FROM SQLSERVER 'sqlserver://ehr-db/EHR' INTO ehr OPTIONS ('user' '${EHR_USER}', 'password' '${EHR_PASSWORD}')\"\n  \
        medlake extract ehr --into bronze --parallel 4")]
    Extract(ExtractArgs),
    /// Simulate bedside devices posting vital signs to a server's HTTP ingest API, with the
    /// flaws of real feeds (glitches, duplicates, late readings, dropouts). Each batch has its
    /// own Idempotency-Key, reused on retries; exits non-zero unless every reading was
    /// acknowledged.
    #[command(after_help = "Examples:\n  \
        medlake simulate --target http://127.0.0.1:8080 --devices 50 --rate 2 --duration 300\n  \
        MEDLAKE_TOKEN=... medlake simulate --target https://lake:8080 --token-env MEDLAKE_TOKEN --gzip\n  \
        medlake simulate --output readings.ndjson --devices 100 --duration 600 --seed 1")]
    Simulate(medlake_demo::simulate::SimulateArgs),
    /// Run the reference IoMT warehouse (catalog/ and sql/) end to end on this machine: a demo
    /// hospital in local stand-ins of the five sources, the bronze/silver/gold views, live
    /// readings pushed through the HTTP door, and the Postgres, Flight SQL and HTTP doors on
    /// loopback. No outside service is needed.
    #[command(after_help = "Examples:\n  \
        medlake quickstart                                   (200 patients, 24 h of 1 Hz vitals)\n  \
        medlake quickstart --dir /tmp/qs --patients 20 --hours 2 --once --pg 127.0.0.1:0 \\\n      \
        --flight 127.0.0.1:0 --http 127.0.0.1:0             (small, refresh once and exit)")]
    Quickstart(quickstart::QuickstartArgs),
    /// Erase a patient from the warehouse for an erasure request: their rows in every table
    /// and view (bronze to gold, quarantines included), what views derived from them, and
    /// the tables' history that held them; later extractions and ingest leave them out.
    /// Runs `ERASE PATIENT` as the local operator.
    #[command(after_help = "Examples:
          medlake erase patient 123 --warehouse ./wh --dry-run     (what would be erased)
          medlake erase patient 123 --warehouse ./wh
          medlake erase patient S-0042 --column subject_id --column mrn")]
    Erase(EraseArgs),
    /// The audit log, system.audit.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy every table, materialized view and system table as of one instant to a folder or
    /// object store; a later backup to the same place copies only new commits and files.
    #[command(after_help = "Examples:\n  \
        medlake backup --warehouse ./wh --to /backups/wh\n  \
        medlake backup --warehouse az://lake/wh --to az://backups/wh --at '2026-11-23 10:00:00'")]
    Backup(backup::BackupArgs),
    /// Write a new warehouse (DEST must be empty) as a backup holds it at one instant.
    #[command(after_help = "Examples:\n  \
        medlake restore --from /backups/wh --to ./wh-restored\n  \
        medlake restore --from az://backups/wh --to az://lake/wh2 --at '2026-11-23 09:30:00'")]
    Restore(backup::RestoreArgs),
    /// Run a Ballista scheduler for a cluster of executors (mutual TLS); servers started with
    /// `--cluster ballista://ADDR` send their queries to it.
    #[command(after_help = "Examples:\n  \
        medlake scheduler --bind 10.0.0.5:50050 --cluster-ca ca.pem --cluster-cert sched.pem --cluster-key sched.key")]
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor: polls the scheduler for tasks, reads the warehouse, serves
    /// shuffle data to the other members (mutual TLS).
    #[command(after_help = "Examples:\n  \
        medlake executor --scheduler ballista://10.0.0.5:50050 --bind 10.0.0.6:50052 \\\n      \
        --cluster-ca ca.pem --cluster-cert exec1.pem --cluster-key exec1.key --warehouse az://lake/wh")]
    Executor(cluster::ExecutorArgs),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain of system.audit: walks its commits in order, reads each one's
    /// rows back and recomputes its hash. Prints the report (and the head's hash, to record
    /// elsewhere); exits 1 when the chain is broken.
    #[command(after_help = "Examples:\n  \
        medlake audit verify --warehouse ./wh\n  \
        medlake audit verify --warehouse az://lake/warehouse")]
    Verify(AuditVerifyArgs),
}

#[derive(clap::Args, Debug)]
struct EraseArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// What to erase (only `patient`).
    #[arg(value_parser = ["patient"])]
    kind: String,
    /// The patient's identifiers (linked ones, such as the MRN, are found).
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    /// An identifying column (repeatable); default patient_id and mrn.
    #[arg(long = "column", value_name = "COLUMN")]
    columns: Vec<String>,
    /// Only report what would be erased.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args, Debug)]
struct AuditVerifyArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
}

#[derive(clap::Args, Debug)]
struct ExtractArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// The schema of external tables to copy.
    #[arg(value_name = "SCHEMA")]
    from: String,
    /// The schema that receives one materialized view per table.
    #[arg(long, value_name = "SCHEMA", default_value = "bronze")]
    into: String,
    /// How many tables are copied at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
}

#[derive(clap::Args, Debug)]
struct RefreshArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// Views to refresh (schema.name), in this order.
    #[arg(required = true, value_name = "VIEW")]
    views: Vec<String>,
    /// Recompute fully even where an incremental refresh is possible.
    #[arg(long)]
    full: bool,
    /// Refresh the views they read first (each once), in dependency order.
    #[arg(long)]
    cascade: bool,
}

#[derive(clap::Args, Debug)]
struct ApplyArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// The project folder (holding catalog/ and sql/).
    #[arg(long, value_name = "DIR")]
    project: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// A project folder to apply at start.
    #[arg(long, value_name = "DIR")]
    project: Option<PathBuf>,
    /// Longest pause between two looks at the schedules, in seconds.
    #[arg(long, default_value_t = 30)]
    poll_seconds: u64,
    /// Users and TLS (TOML; passwords come from the environment or secret files).
    #[arg(long, value_name = "FILE", env = "MEDLAKE_CONFIG")]
    config: Option<PathBuf>,
    /// Postgres wire address; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5432")]
    pg: std::net::SocketAddr,
    /// Arrow Flight SQL address; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    flight: std::net::SocketAddr,
    /// HTTP address (device ingest, /healthz, /metrics); port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
    /// HL7 v2 over MLLP (device gateways, ADT feeds); off unless given here or as
    /// `[mllp] listen`. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    mllp: Option<std::net::SocketAddr>,
    /// Serve without passwords (loopback addresses only; for demos).
    #[arg(long)]
    insecure_no_auth: bool,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(clap::Args, Debug)]
struct SqlArgs {
    /// Warehouse location: a folder, file://, az://, abfss://, s3:// or gs:// URL.
    #[arg(long, env = "MEDLAKE_WAREHOUSE", default_value = "./warehouse")]
    warehouse: String,
    /// Run these SQL statements (may be given several times) and exit.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    commands: Vec<String>,
    /// Run the SQL script in FILE and exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print how long each statement took (always on in interactive mode).
    #[arg(long)]
    timing: bool,
    /// How query results are printed.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

/// Output formats of `medlake sql`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Aligned table with a row count, for people.
    Table,
    /// CSV with a header line, for scripts; command tags are not printed.
    Csv,
}

/// Freed pages go back to the system about a second after they were last used (jemalloc's
/// default: 10 s dirty, then 10 s more "muzzy"), so that a server's peaks — a refresh, a
/// checkpoint of a busy table, a large result — do not stay resident in each of the
/// allocator's arenas. In the soak jemalloc's own `resident` fell from ~300 to ~230 MiB with
/// it (beside ~120-170 MiB allocated); the process's anonymous RSS did not move measurably in
/// 6 minutes, so most of what RSS holds beyond `allocated` is not jemalloc's dirty pages.
/// `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF` under this binary's prefix), when set, is the
/// operator's choice instead.
fn return_freed_pages_promptly() {
    use tikv_jemalloc_ctl::{Access as _, AsName as _};
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return;
    }
    // `arenas.*` for arenas created from now on (each thread's, lazily), `arena.0.*` for the
    // one main() has used so far.
    for (name, ms) in [
        (&b"arenas.dirty_decay_ms\0"[..], 1_000isize),
        (b"arenas.muzzy_decay_ms\0", 0),
        (b"arena.0.dirty_decay_ms\0", 1_000),
        (b"arena.0.muzzy_decay_ms\0", 0),
    ] {
        if let Err(e) = name.name().write(ms) {
            eprintln!("warning: jemalloc's decay time was not set: {e}");
        }
    }
}

/// jemalloc's statistics for `/metrics` (`medlake_memory_bytes`): what the server's objects
/// hold (`allocated`), the pages they sit on (`active`), what is mapped and resident, and
/// what jemalloc keeps for reuse (`retained`). Unreadable figures are left out.
fn jemalloc_stats() -> Vec<(&'static str, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return Vec::new();
    }
    let figures = [
        ("allocated", stats::allocated::read()),
        ("active", stats::active::read()),
        ("metadata", stats::metadata::read()),
        ("resident", stats::resident::read()),
        ("mapped", stats::mapped::read()),
        ("retained", stats::retained::read()),
    ];
    figures
        .into_iter()
        .filter_map(|(kind, bytes)| Some((kind, bytes.ok()? as u64)))
        .collect()
}

fn main() -> ExitCode {
    // Purge freed pages from a thread of jemalloc's own instead of only when another
    // allocation happens to pass by (an idle server would otherwise keep its peak).
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: jemalloc's background purging is off: {e}");
    }
    return_freed_pages_promptly();
    medlake_common::memory::set_probe(jemalloc_stats);
    let cli = Cli::parse();
    // deltalake 1.1.3 warns "Missing target skipped-file metric" on every MERGE: noise.
    init_logging(match cli.command {
        // The server reports its scheduled refreshes.
        Command::Serve(_) => {
            "warn,medlake_views=info,medlake_pgwire=info,buoyant_kernel=off,deltalake_core::operations::merge=error"
        }
        // Progress lines and scheduled refreshes; the lake's lossy-timestamp notes are noise.
        Command::Quickstart(_) => {
            "warn,medlake_views=info,deltalake_core::kernel::schema::cast=error,buoyant_kernel=off,deltalake_core::operations::merge=error"
        }
        // A member of a cluster reports its address, jobs and failures.
        Command::Scheduler(_) | Command::Executor(_) => {
            "warn,medlake_cluster=info,ballista_scheduler=warn,ballista_executor=warn,buoyant_kernel=off"
        }
        _ => "warn,buoyant_kernel=off,deltalake_core::operations::merge=error",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Planning recurses over a statement's expressions (DataFusion's and ours): 32 MiB
        // per thread (address space; touched only when used) keeps every statement the
        // engine's depth limit admits (medlake_engine::MAX_DEPTH) far from the stack's end.
        .thread_stack_size(32 << 20)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs as a task on a worker thread, not on the main thread that blocks on
    // it: the workers have the 32 MiB stack that planning needs (a refresh recomputing
    // thousands of keys plans an IN list that deltalake's predicate conversion recurses over
    // once per value; the main thread's 8 MiB overflowed at 6,000 in a debug build).
    let command = async move {
        let result = match cli.command {
            Command::Sql(args) => sql(args).await,
            Command::Refresh(args) => refresh(args).await,
            Command::Status(args) => status(args).await,
            Command::Apply(args) => apply(args).await,
            Command::Serve(args) => serve(args).await,
            Command::Extract(args) => extract(args).await,
            Command::Simulate(args) => Ok(medlake_demo::simulate::run(args).await?),
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Erase(args) => erase(args).await,
            Command::Audit(AuditCommand::Verify(args)) => audit_verify(args).await,
            Command::Backup(args) => backup::run_backup(args).await,
            Command::Restore(args) => backup::run_restore(args).await,
            Command::Scheduler(args) => cluster::scheduler(args).await,
            Command::Executor(args) => cluster::executor(args).await,
        };
        // The engines are gone: their audit logs commit what they still hold before the
        // process exits.
        medlake_audit::drain().await;
        result
    };
    let result = runtime.block_on(async {
        match tokio::spawn(command).await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Err(Failure::Usage(format!("the command was cancelled: {e}"))),
            },
        }
    });
    // The runtime is not shut down: the process ends with it. Work still running on its
    // blocking threads (a log replay that a query cut short by the stop had started) holds
    // nothing to save (every commit is atomic, the audit log is drained above, checkpoints and
    // compactions were waited for), and shutting the runtime down would wait for it without
    // end (a stopped server that never exits) or, with a timeout, make the Delta kernel's
    // executor panic in it ("TokioMultiThreadExecutor has crashed") once the runtime's tasks
    // are gone.
    std::mem::forget(runtime);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::FAILURE,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            print_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `MEDLAKE_LOG` (or `RUST_LOG`) sets the filter. By default only
/// warnings, and not the Delta kernel's own error lines: medlake reports those errors itself.
/// `MEDLAKE_LOG_FORMAT=json` writes one JSON object per line (for log shippers).
fn init_logging(default: &str) {
    let filter = std::env::var("MEDLAKE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let json =
        std::env::var("MEDLAKE_LOG_FORMAT").is_ok_and(|f| f.trim().eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

enum Failure {
    /// The error was printed already.
    Reported,
    /// A problem with the command line or the configuration.
    Usage(String),
    Error(medlake_engine::Error),
}

impl From<medlake_engine::Error> for Failure {
    fn from(e: medlake_engine::Error) -> Self {
        Failure::Error(e)
    }
}

impl From<medlake_demo::Failure> for Failure {
    fn from(e: medlake_demo::Failure) -> Self {
        match e {
            medlake_demo::Failure::Reported => Failure::Reported,
            medlake_demo::Failure::Usage(message) => Failure::Usage(message),
            medlake_demo::Failure::Error(e) => Failure::Error(e),
        }
    }
}

async fn refresh(args: RefreshArgs) -> Result<(), Failure> {
    let engine = connectors::open_local(&args.warehouse).await?;
    let views: Vec<&str> = args.views.iter().map(String::as_str).collect();
    let result = engine.refresh_many(&views, args.full, args.cascade).await;
    engine.warehouse().settle().await;
    for outcome in result? {
        println!(
            "{}: {} ({}), {} rows written, version {}: {}",
            outcome.view,
            outcome.status.as_str(),
            outcome.mode,
            outcome.rows_written,
            outcome.version.map_or("-".to_string(), |v| v.to_string()),
            outcome.reason
        );
    }
    Ok(())
}

/// `medlake status`: sources, views and open alerts, as tables.
async fn status(args: StatusArgs) -> Result<(), Failure> {
    let engine = connectors::open_local(&args.warehouse).await?;
    for (title, sql) in [
        (
            "Sources (system.sources)",
            "SELECT view, sources, freshness, last_success, lag_seconds, rows, \
             consecutive_failures AS failures, last_error FROM system.sources ORDER BY view",
        ),
        (
            "Views (system.materialized_views)",
            "SELECT schema || '.' || name AS view, schedule, status, last_refresh, staleness \
             FROM system.materialized_views ORDER BY 1",
        ),
        (
            "Open alerts (system.alerts, not acknowledged)",
            "SELECT alert, severity, count(DISTINCT firing) AS firings, min(fired_at) AS first, \
             max(fired_at) AS latest, sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) \
             AS failed_deliveries FROM system.alerts WHERE acknowledged_by IS NULL \
             GROUP BY alert, severity ORDER BY alert, severity",
        ),
    ] {
        println!("{title}");
        let mut outputs = engine.sql(sql).await?;
        if let Some(medlake_engine::Output::Rows(stream)) = outputs.pop() {
            let schema = stream.schema();
            let batches = medlake_engine::Output::Rows(stream).collect().await?;
            print_rows(&schema, &batches);
        }
        println!();
    }
    Ok(())
}

async fn erase(args: EraseArgs) -> Result<(), Failure> {
    if args.kind != "patient" {
        return Err(Failure::Usage(format!("cannot erase a {}", args.kind)));
    }
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let ids: Vec<String> = args.ids.iter().map(|id| quote(id)).collect();
    let mut sql = format!("ERASE PATIENT {}", ids.join(", "));
    if !args.columns.is_empty() {
        let columns: Vec<String> = args
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect();
        sql.push_str(&format!(" IN COLUMNS ({})", columns.join(", ")));
    }
    if args.dry_run {
        sql.push_str(" DRY RUN");
    }
    let engine = connectors::open_local(&args.warehouse).await?;
    let result = run_script(&engine, &sql, false, Format::Table).await;
    engine.warehouse().settle().await;
    result
}

async fn extract(args: ExtractArgs) -> Result<(), Failure> {
    let engine = connectors::open_local(&args.warehouse).await?;
    let started = std::time::Instant::now();
    eprintln!(
        "extracting the external tables of {} into {}, {} at a time",
        args.from, args.into, args.parallel
    );
    let report = |e: &medlake_engine::Extracted, n: usize, total: usize| {
        let width = total.to_string().len();
        let line = match &e.outcome {
            Ok(o) => format!(
                "{} {} rows, {:.1} s, {}: {}",
                o.status.as_str(),
                o.rows_written,
                e.elapsed.as_secs_f64(),
                o.mode,
                o.reason
            ),
            Err(err) => format!("FAILED after {:.1} s: {err}", e.elapsed.as_secs_f64()),
        };
        println!("[{n:>width$}/{total}] {} <- {}: {line}", e.view, e.source);
    };
    let results = engine
        .extract(&args.from, &args.into, args.parallel, &report)
        .await?;
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    let rows: u64 = results
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .map(|o| o.rows_written)
        .sum();
    println!(
        "{} tables: {} succeeded, {failed} failed; {rows} rows written in {:.1} s",
        results.len(),
        results.len() - failed,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        return Err(Failure::Reported);
    }
    Ok(())
}

async fn apply(args: ApplyArgs) -> Result<(), Failure> {
    let engine = connectors::open_local(&args.warehouse).await?;
    print_applied(&engine.apply_project(&args.project).await?);
    Ok(())
}

fn print_applied(applied: &[medlake_engine::Applied]) {
    for a in applied {
        println!("{:<9} {} ({})", a.action, a.object, a.detail);
    }
}

/// The Flight SQL door's limits: the defaults, with `[flight]`'s settings on top.
fn flight_limits(flight: Option<&config::FlightEntry>) -> medlake_flight::Limits {
    let mut limits = medlake_flight::Limits::default();
    let Some(f) = flight else {
        return limits;
    };
    if let Some(n) = f.max_message_bytes {
        limits.max_message_bytes = n.max(1 << 16);
    }
    if let Some(n) = f.max_ingest_bytes {
        limits.max_ingest_bytes = n;
    }
    if let Some(n) = f.max_parameter_rows {
        limits.max_parameter_rows = n;
    }
    if let Some(n) = f.max_prepared_per_user {
        limits.max_prepared_per_user = n.max(1);
    }
    if let Some(s) = f.prepared_idle_seconds {
        limits.prepared_idle = std::time::Duration::from_secs(s.clamp(1, 366 * 86_400));
    }
    if let Some(n) = f.max_connections {
        limits.max_connections = n.max(1);
    }
    limits
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let config = match &args.config {
        Some(path) => config::Config::load(path).map_err(Failure::Usage)?,
        None => config::Config::default(),
    };
    let (access, http_auth) = access_of(&config, args.insecure_no_auth)?;
    let policy = config.source_policy().map_err(Failure::Usage)?;
    tracing::debug!(policy = ?policy, "source policy");
    if config.fsync() {
        // Before the warehouse opens: every store it and deltalake build is then durable.
        medlake_engine::enable_fsync();
        tracing::info!("fsync durability: writes are synced to disk before they are acknowledged");
    }
    let runtime = medlake_engine::runtime::RuntimeSettings::from_env()?.or_default_limit();
    let lease_ttl = config.scheduler_lease().map_err(Failure::Usage)?;
    // Alerts are evaluated and delivered by the server holding the scheduler lease.
    let alerts = medlake_alerts::Settings {
        standby: true,
        ..config.alert_settings(true).map_err(Failure::Usage)?
    };
    let mut engine = connectors::engine(&args.warehouse)
        .runtime(runtime)
        .policy(policy)
        .audit(config.audit_enabled())
        .alerts(alerts);
    if let Some(zone) = config.time_zone().map_err(Failure::Usage)? {
        engine = engine.time_zone(zone);
    }
    if let medlake_auth::Access::Users(users) = &access {
        // Views owned by a user refresh with that user's privileges; grants name known users.
        engine = engine.users(users.iter().map(medlake_auth::User::principal));
    }
    if let Some(cluster) = args.cluster.cluster(config.cluster.as_ref())? {
        println!("queries run on the cluster at {}", cluster.scheduler());
        engine = engine.cluster(cluster);
    }
    let engine = engine.open().await?;
    if let Some(project) = &args.project {
        print_applied(&engine.apply_project(project).await?);
    }
    let mut doors_config = doors_config(&args, &config, access, http_auth);
    doors_config.mllp = mllp_door::config(args.mllp, &config, args.insecure_no_auth)?;
    let tls = doors_config.http.tls.is_some();
    let doors = doors::Doors::bind(&engine, doors_config, "serve").await?;
    engine.set_alert_link_base(&format!(
        "{}://{}",
        if tls { "https" } else { "http" },
        doors.http_addr
    ));
    println!(
        "medlake serve: refreshing scheduled views of {} (Ctrl-C stops)",
        medlake_engine::redact_location(engine.warehouse().url().as_str())
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        doors::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let lease = engine.contend_for_scheduler(lease_ttl, stopped.clone());
    tokio::spawn(say_leadership(lease.leading.clone(), lease.holder.clone()));
    let scheduler = engine
        .scheduler()
        .with_retries(config.scheduler_retries())
        .with_leadership(lease.leading.clone());
    tokio::join!(
        doors.serve(stopped.clone()),
        scheduler.run(
            std::time::Duration::from_secs(args.poll_seconds.max(1)),
            doors::until(stopped),
        ),
    );
    lease.released(std::time::Duration::from_secs(5)).await;
    settle(&engine).await;
    println!("medlake serve: stopped");
    Ok(())
}

/// Waits (at most 30 s) for the checkpoints and compactions the last commits started, so a
/// stopped server leaves none half-done (they are safe to cut, only wasted).
pub(crate) async fn settle(engine: &Engine) {
    if tokio::time::timeout(
        std::time::Duration::from_secs(30),
        engine.warehouse().settle(),
    )
    .await
    .is_err()
    {
        tracing::warn!("stopping without waiting longer for a checkpoint or compaction");
    }
}

/// Prints each change of who runs the scheduler, as the doors' addresses are printed.
async fn say_leadership(mut leading: tokio::sync::watch::Receiver<bool>, holder: String) {
    println!(
        "medlake serve: scheduler lease holder id {holder}; standing by until it holds the lease"
    );
    while leading.changed().await.is_ok() {
        if *leading.borrow_and_update() {
            println!(
                "medlake serve: scheduler lease held by this server ({holder}): it runs scheduled refreshes, alerts and heartbeats"
            );
        } else {
            println!(
                "medlake serve: scheduler lease not held by this server: another runs the scheduler (see system.scheduler_lease)"
            );
        }
    }
}

/// Who may use the password doors, and the HTTP door: configured users and tokens, or no
/// authentication at all (`--insecure-no-auth`, loopback only), never a mix.
fn access_of(
    config: &config::Config,
    insecure_no_auth: bool,
) -> Result<(medlake_auth::Access, medlake_http::Auth), Failure> {
    let users = config.users().map_err(Failure::Usage)?;
    let access = match (users.is_empty(), insecure_no_auth) {
        (false, false) => medlake_auth::Access::Users(users),
        (true, true) => medlake_auth::Access::InsecureNoAuth,
        (false, true) => {
            return Err(Failure::Usage(
                "--insecure-no-auth and configured users exclude each other".into(),
            ));
        }
        (true, false) => {
            return Err(Failure::Usage(
                "no users are configured: give --config FILE with [[users]] entries, or \
                 --insecure-no-auth for a loopback demo"
                    .into(),
            ));
        }
    };
    let tokens = config.ingest_tokens().map_err(Failure::Usage)?;
    let http_auth = match (&access, tokens.is_empty()) {
        (medlake_auth::Access::InsecureNoAuth, true) => medlake_http::Auth::InsecureNoAuth,
        (medlake_auth::Access::InsecureNoAuth, false) => {
            return Err(Failure::Usage(
                "--insecure-no-auth and configured ingest tokens exclude each other".into(),
            ));
        }
        (medlake_auth::Access::Users(_), _) => medlake_http::Auth::Tokens(tokens),
    };
    Ok((access, http_auth))
}

/// Every door's configuration from the server's config file.
fn doors_config(
    args: &ServeArgs,
    config: &config::Config,
    access: medlake_auth::Access,
    http_auth: medlake_http::Auth,
) -> doors::DoorsConfig {
    let tls = config.tls.as_ref().map(|t| medlake_auth::TlsFiles {
        cert: t.cert.clone(),
        key: t.key.clone(),
    });
    // One record of failed logins for every door: a lockout on one is a lockout on all.
    let logins = medlake_auth::Logins::new(
        config
            .logins
            .as_ref()
            .map(config::LoginsEntry::policy)
            .unwrap_or_default(),
    );
    let mut http_config = medlake_http::Config::new(args.http, http_auth);
    http_config.tls = tls.clone();
    if let Some(http) = &config.http {
        if let Some(n) = http.max_body_bytes {
            http_config.max_body_bytes = n;
        }
        if let Some(n) = http.queue_requests {
            http_config.queue_requests = n;
        }
        if let Some(n) = http.max_in_flight {
            http_config.max_in_flight = n;
        }
        let seconds = |s: u64| std::time::Duration::from_secs(s.clamp(1, 86_400));
        if let Some(s) = http.header_read_timeout_seconds {
            http_config.header_read_timeout = seconds(s);
        }
        if let Some(s) = http.body_read_timeout_seconds {
            http_config.body_read_timeout = seconds(s);
        }
        if let Some(s) = http.tls_handshake_timeout_seconds {
            http_config.tls_handshake_timeout = seconds(s);
        }
        if let Some(n) = http.max_connections {
            http_config.max_connections = n;
        }
        for table in &http.quarantine {
            http_config
                .invalid_rows
                .insert(table.clone(), medlake_http::InvalidRows::Quarantine);
        }
    }
    let postgres = config.postgres.as_ref();
    doors::DoorsConfig {
        pg: medlake_pgwire::Config {
            listen: args.pg,
            tls: tls.clone(),
            access: access.clone(),
            max_connections: postgres
                .and_then(|p| p.max_connections)
                .unwrap_or(medlake_pgwire::DEFAULT_MAX_CONNECTIONS),
            max_prepared_statements: postgres
                .and_then(|p| p.max_prepared_statements)
                .unwrap_or(medlake_pgwire::DEFAULT_MAX_PREPARED_STATEMENTS),
            logins: logins.clone(),
        },
        flight: medlake_flight::Config {
            listen: args.flight,
            tls,
            access,
            token_lifetime: std::time::Duration::from_secs(
                config
                    .flight
                    .as_ref()
                    .and_then(|f| f.token_lifetime_seconds)
                    .unwrap_or(3600)
                    .clamp(1, 366 * 86_400),
            ),
            limits: flight_limits(config.flight.as_ref()),
            logins,
        },
        http: http_config,
        mllp: None,
    }
}

async fn sql(args: SqlArgs) -> Result<(), Failure> {
    let mut engine = connectors::local(&args.warehouse);
    if let Some(cluster) = args.cluster.cluster(None)? {
        engine = engine.cluster(cluster);
    }
    let engine = engine.open().await?;
    let scripted = !args.commands.is_empty() || !args.files.is_empty();
    if !scripted {
        let result = interactive(&engine).await;
        engine.warehouse().settle().await;
        return result;
    }
    for command in &args.commands {
        if let Err(e) = run_script(&engine, command, args.timing, args.format).await {
            engine.warehouse().settle().await;
            return Err(e);
        }
    }
    let mut result = Ok(());
    for file in &args.files {
        let script = match std::fs::read_to_string(file) {
            Ok(script) => script,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                result = Err(Failure::Reported);
                break;
            }
        };
        result = run_script(&engine, &script, args.timing, args.format).await;
        if result.is_err() {
            break;
        }
    }
    // A checkpoint an INSERT started finishes before the process ends.
    engine.warehouse().settle().await;
    result
}

/// Runs every statement of `script`, printing each result; stops at the first error.
async fn run_script(
    engine: &Engine,
    script: &str,
    timing: bool,
    format: Format,
) -> Result<(), Failure> {
    for statement in medlake_engine::parse(script)? {
        run_statement(engine, statement, timing, format).await?;
    }
    Ok(())
}

async fn run_statement(
    engine: &Engine,
    statement: Statement,
    timing: bool,
    format: Format,
) -> Result<(), Failure> {
    let started = Instant::now();
    let output = engine.execute(statement).await?;
    match (output, format) {
        (Output::Command { tag, .. }, Format::Table) => println!("{tag}"),
        (Output::Command { .. }, Format::Csv) => {}
        (Output::Rows(stream), Format::Table) => {
            let schema = stream.schema();
            let batches = Output::Rows(stream).collect().await?;
            print_rows(&schema, &batches);
        }
        (Output::Rows(mut stream), Format::Csv) => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::stdout());
            let mut wrote = false;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(medlake_engine::Error::from)?;
                writer.write(&batch).map_err(|e| {
                    eprintln!("error: cannot write CSV: {e}");
                    Failure::Reported
                })?;
                wrote = true;
            }
            if !wrote {
                // A result without rows still has a header.
                let schema = stream.schema();
                let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                println!("{}", header.join(","));
            }
        }
    }
    if timing {
        let took = format!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
        match format {
            Format::Table => println!("{took}"),
            // Standard output stays pure CSV.
            Format::Csv => eprintln!("{took}"),
        }
    }
    Ok(())
}

fn print_rows(schema: &arrow::datatypes::SchemaRef, batches: &[RecordBatch]) {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let table = if rows == 0 {
        let empty = RecordBatch::new_empty(schema.clone());
        arrow::util::pretty::pretty_format_batches(&[empty])
    } else {
        arrow::util::pretty::pretty_format_batches(batches)
    };
    match table {
        Ok(table) => println!("{table}"),
        Err(e) => eprintln!("error: cannot format the result: {e}"),
    }
    println!("({rows} row{})", if rows == 1 { "" } else { "s" });
}

/// One clear message with its cause chain and SQLSTATE, never a debug dump.
/// `medlake audit verify`: the report on stdout; exit 1 on a broken chain.
async fn audit_verify(args: AuditVerifyArgs) -> Result<(), Failure> {
    let report = medlake_audit::verify_location(&args.warehouse)
        .await
        .map_err(|e| {
            eprintln!("error [{}]: {e}", e.code().sqlstate());
            Failure::Reported
        })?;
    println!("{report}");
    if report.is_ok() {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}

fn print_error(e: &medlake_engine::Error) {
    let mut lines = vec![format!("error [{}]: {e}", e.code().sqlstate())];
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !lines.iter().any(|l| l.contains(&text)) {
            lines.push(format!("  caused by: {text}"));
        }
        source = cause.source();
    }
    eprintln!("{}", lines.join("\n"));
}

const HELP: &str = "Statements end with ';' and may span lines.
  \\q, quit, exit      leave
  \\?, help            this help
  \\dt [schema]        list tables
  \\d name             a table's columns (DESCRIBE name)
  \\dn                 list schemas
  \\dm                 list materialized views (status, rows, staleness)
  DESCRIBE HISTORY t  a table's commits; SELECT ... FROM t VERSION AS OF n reads one";

async fn interactive(engine: &Engine) -> Result<(), Failure> {
    let mut editor = DefaultEditor::new().map_err(|e| {
        eprintln!("error: cannot start the line editor: {e}");
        Failure::Reported
    })?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".medlake_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    if std::io::stdin().is_terminal() {
        println!(
            "medlake {} on {} — type \\? for help, \\q to quit",
            env!("CARGO_PKG_VERSION"),
            medlake_lake_location(engine)
        );
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "medlake> "
        } else {
            "medlake-> "
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => {
                // As psql: a last statement without its `;` still runs at the end of input.
                if !buffer.trim().is_empty() {
                    let _ = editor.add_history_entry(buffer.trim());
                    if let Err(Failure::Error(e)) =
                        run_script(engine, &buffer, true, Format::Table).await
                    {
                        print_error(&e);
                    }
                }
                break;
            }
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        };
        let trimmed = line.trim();
        if buffer.is_empty() {
            let meta = match trimmed {
                "\\q" | "quit" | "exit" => break,
                "\\?" | "help" => {
                    println!("{HELP}");
                    continue;
                }
                "\\dn" => Some("SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 'medlake' AND schema_name NOT IN ('information_schema', 'pg_catalog') ORDER BY 1;".to_string()),
                "\\dt" => Some("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'system') ORDER BY 1, 2;".to_string()),
                "\\dm" => Some("SELECT schema, name, schedule, status, rows, staleness FROM system.materialized_views ORDER BY 1, 2;".to_string()),
                "\\d" => Some("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'system') ORDER BY 1, 2;".to_string()),
                _ if trimmed.starts_with("\\d ") => {
                    let name = trimmed[3..].split([' ', ';']).find(|w| !w.is_empty()).unwrap_or("");
                    Some(format!("DESCRIBE {name};"))
                }
                _ if trimmed.starts_with("\\dt ") => Some(format!(
                    "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = '{}' ORDER BY 2;",
                    trimmed[4..].trim().replace('\'', "''")
                )),
                _ if trimmed.starts_with('\\') => {
                    eprintln!("unknown command {trimmed}; \\? lists the commands");
                    continue;
                }
                _ => None,
            };
            if let Some(query) = meta {
                let _ = editor.add_history_entry(trimmed);
                if let Err(Failure::Error(e)) =
                    run_script(engine, &query, true, Format::Table).await
                {
                    print_error(&e);
                }
                continue;
            }
        }
        if trimmed.is_empty() && buffer.is_empty() {
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !complete(&buffer) {
            continue;
        }
        let _ = editor.add_history_entry(buffer.trim());
        if let Err(Failure::Error(e)) = run_script(engine, &buffer, true, Format::Table).await {
            print_error(&e);
        }
        buffer.clear();
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

fn medlake_lake_location(engine: &Engine) -> String {
    medlake_engine::redact_location(engine.warehouse().url().as_str())
}

/// A buffer is complete when its last token is a `;` outside strings and comments.
fn complete(buffer: &str) -> bool {
    medlake_engine::ends_statement(buffer)
}
