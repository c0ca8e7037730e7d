//! `medlake quickstart`: the reference warehouse of the repository (`catalog/`, `sql/`) end to
//! end on one machine, with no outside service.
//!
//! 1. Writes a project folder `DIR/project`: `catalog/` holds the stand-ins of
//!    `catalog/quickstart/` (Delta tables under the production names for the EHR, the trials
//!    database, the device cloud and Cosmos DB; the blob connector over the local folder
//!    `DIR/landing`), `sql/` the repository's `sql/` unchanged. Both are compiled into the
//!    binary, so the quickstart needs no checkout at run time.
//! 2. Generates a demo hospital with `medlake simulate`'s generator: patients, devices and
//!    their assignments, ward stays, nursing observations, trials, alerts and device events
//!    (into the stand-ins), `--hours` of device readings (bedside devices: as if pushed into
//!    bronze.readings_push; blood-pressure cuffs: the device cloud, some in kPa;
//!    glucometers: hourly CSV uploads in mmol/L; spot-check thermometers: hourly Parquet
//!    uploads), DICOM studies and scanned documents.
//! 3. Applies the project (`Engine::apply_project`, as `medlake apply` does).
//! 4. Opens the Postgres, Flight SQL and HTTP doors on loopback without passwords, and keeps
//!    pushing live readings through the HTTP door while the scheduler refreshes the views; or,
//!    with `--once`, pushes `--live-seconds` of readings, refreshes every view once and exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use medlake_demo::hospital::generate;
use medlake_demo::project::{
    Progress, create_stand_ins, prepare_dir, refresh_all, show_roles, write_project,
};
use medlake_demo::simulate::{Plan, SimulateArgs};
use medlake_engine::Engine;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct QuickstartArgs {
    /// Where the demo lives: DIR/warehouse (the Delta lake), DIR/landing (the blob stand-in),
    /// DIR/project (catalog/ and sql/). A folder of an earlier quickstart is started over.
    #[arg(long, value_name = "DIR", default_value = "./quickstart")]
    dir: PathBuf,
    /// Patients in the demo hospital (each with two bedside devices).
    #[arg(long, value_name = "N", default_value_t = 200)]
    patients: u32,
    /// Hours of history before now (device readings, observations, alerts).
    #[arg(long, value_name = "H", default_value_t = 24.0)]
    hours: f64,
    /// Readings per device per second in the history.
    #[arg(long, value_name = "HZ", default_value_t = 1.0)]
    rate: f64,
    /// Seed of the generated hospital (the same seed gives the same data for the same now).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Postgres wire address (loopback only; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5432")]
    pg: SocketAddr,
    /// Arrow Flight SQL address (loopback only; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    flight: SocketAddr,
    /// HTTP ingest address (loopback only; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// HL7 v2 over MLLP address (loopback only; port 0 picks a free port): a quarter of the
    /// live device gateways send ORU^R01 messages here.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2575")]
    mllp: SocketAddr,
    /// Push --live-seconds of live readings, refresh every view once, print how to connect,
    /// and exit (for CI and scripts), leaving the warehouse in DIR/warehouse.
    #[arg(long)]
    once: bool,
    /// Seconds of live readings the simulator pushes (with --once; otherwise it pushes until
    /// stopped).
    #[arg(long, value_name = "S", default_value_t = 15.0)]
    live_seconds: f64,
    /// Longest pause between two looks at the schedules, in seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    poll_seconds: u64,
    /// Only write the project folder and create the empty stand-in tables (bring your own
    /// data, then `medlake apply --project DIR/project`).
    #[arg(long)]
    prepare_only: bool,
}

pub(crate) async fn run(args: QuickstartArgs) -> Result<(), Failure> {
    for (door, addr) in [
        ("--pg", args.pg),
        ("--flight", args.flight),
        ("--http", args.http),
        ("--mllp", args.mllp),
    ] {
        if !addr.ip().is_loopback() {
            return Err(Failure::Usage(format!(
                "{door} {addr}: the quickstart serves without passwords, on loopback only"
            )));
        }
    }
    if args.patients == 0 || args.patients > 100_000 {
        return Err(Failure::Usage(
            "--patients must be between 1 and 100000".into(),
        ));
    }
    if !(args.hours > 0.0 && args.hours <= 24.0 * 14.0) {
        return Err(Failure::Usage(
            "--hours must be above 0 and at most 336".into(),
        ));
    }
    if !(args.rate > 0.0 && args.rate <= 10.0) {
        return Err(Failure::Usage(
            "--rate must be above 0 and at most 10".into(),
        ));
    }
    let progress = Progress::start();
    let dir = prepare_dir(&args.dir)?;
    let landing = dir.join("landing");
    let project = dir.join("project");
    write_project(&project, &landing)?;
    progress.say(format!(
        "project written to {} (catalog/: local stand-ins of the five sources; sql/: the \
         repository's views)",
        project.display()
    ));
    let warehouse = dir.join("warehouse");
    // Its own stand-ins only: the landing folder, and loopback for local stand-in services.
    let sources = medlake_source::Policy {
        allowed_paths: vec![landing.clone()],
        allowed_hosts: vec!["127.0.0.1".into(), "::1".into(), "localhost".into()],
        ..medlake_source::Policy::strict()
    };
    // The ward pager: a local webhook receiver that prints each alert the rules of
    // sql/alerts/ fire (signed, as a real receiver would check).
    let pager = Pager::start(&dir).await?;
    let engine = crate::connectors::engine(&warehouse.display().to_string())
        .policy(sources)
        .alerts(medlake_alerts::Settings {
            webhooks: vec![pager.webhook()],
            active: true,
            ..Default::default()
        })
        .open()
        .await?;
    create_stand_ins(&engine, &project).await?;
    progress.say("stand-in sources created: ehr.*, trials.*, telemetry.device_cloud, events.*, landing.* (blob connector on DIR/landing), bronze.readings_push");
    if args.prepare_only {
        println!(
            "load your data into the stand-ins, then: medlake apply --warehouse {} --project {}",
            warehouse.display(),
            project.display()
        );
        return Ok(());
    }
    let now_ms = Utc::now().timestamp() / 60 * 60_000;
    let start_ms = now_ms - (args.hours * 3_600_000.0) as i64;
    let plan = Plan {
        devices: args.patients * 2,
        rate: args.rate,
        duration_s: (now_ms - start_ms) as f64 / 1000.0,
        batch: 4096,
        seed: args.seed,
        start_ms,
    };
    let hospital = generate(&engine, &plan, &warehouse, &landing, &progress).await?;
    progress.say(hospital.summary());
    progress.say("applying catalog/ and sql/ (bronze, silver, gold materialized views)");
    let applied = engine.apply_project(&project).await?;
    let views = applied.iter().filter(|a| a.action != "ran").count();
    for a in applied.iter().filter(|a| a.object.starts_with("gold.")) {
        progress.say(format!("  {} {} ({})", a.action, a.object, a.detail));
    }
    progress.say(format!(
        "{views} views created; gold.news2_hourly is queryable"
    ));
    show_roles(&engine, &progress).await?;
    serve(&engine, &args, &plan, now_ms, &progress).await
}

// ---------------------------------------------------------------------------------------------
// The ward pager

/// A webhook receiver on loopback standing in for the ward's pager: it checks each payload's
/// signature, prints the alert and appends it to `DIR/alerts.ndjson`.
struct Pager {
    url: url::Url,
    secret: medlake_alerts::Secret,
}

impl Pager {
    async fn start(dir: &Path) -> Result<Self, Failure> {
        let secret = medlake_alerts::Secret::new(medlake_auth::random_token(32));
        let log = dir.join("alerts.ndjson");
        let checking = secret.clone();
        let app = axum::Router::new().route(
            "/pager",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (secret, log) = (checking.clone(), log.clone());
                async move { Pager::receive(&secret, &log, &headers, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Failure::Usage(format!("cannot start the ward pager: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::Usage(format!("cannot start the ward pager: {e}")))?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = url::Url::parse(&format!("http://{addr}/pager"))
            .map_err(|e| Failure::Usage(format!("the ward pager's address: {e}")))?;
        Ok(Self { url, secret })
    }

    fn webhook(&self) -> medlake_alerts::Webhook {
        medlake_alerts::Webhook {
            name: "ward-pager".into(),
            url: self.url.clone(),
            secret: Some(self.secret.clone()),
            timeout: Duration::from_secs(5),
            heartbeat: None,
        }
    }

    fn receive(
        secret: &medlake_alerts::Secret,
        log: &Path,
        headers: &axum::http::HeaderMap,
        body: &str,
    ) -> axum::http::StatusCode {
        let signature = headers
            .get(medlake_alerts::deliver::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let now = Utc::now().timestamp();
        if !medlake_alerts::deliver::verify(secret, signature, body, now, 300) {
            return axum::http::StatusCode::UNAUTHORIZED;
        }
        let payload: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        println!(
            "[ward pager] {} {} {} {}",
            payload["severity"].as_str().unwrap_or("?"),
            payload["alert"].as_str().unwrap_or("?"),
            payload["key"],
            payload["link"].as_str().unwrap_or("")
        );
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(file, "{body}");
        }
        axum::http::StatusCode::NO_CONTENT
    }
}

// ---------------------------------------------------------------------------------------------
// Serving

async fn serve(
    engine: &Engine,
    args: &QuickstartArgs,
    plan: &Plan,
    now_ms: i64,
    progress: &Progress,
) -> Result<(), Failure> {
    let mut config = crate::doors::DoorsConfig::insecure_local(args.pg, args.flight, args.http);
    config.mllp = Some(medlake_mllp::Config::new(
        args.mllp,
        medlake_mllp::Auth::InsecureNoAuth,
    ));
    let doors = crate::doors::Doors::bind(engine, config, "quickstart").await?;
    let mllp_addr = doors.mllp_addr;
    let (pg_addr, flight_addr, http_addr) = (doors.pg_addr, doors.flight_addr, doors.http_addr);
    engine.set_alert_link_base(&format!("http://{http_addr}"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let doors = tokio::spawn(doors.serve(stopped.clone()));
    let live_start = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_else(Utc::now);
    let target = format!("http://{http_addr}");
    let result = if args.once {
        progress.say(format!(
            "pushing {} s of live readings from {} devices through the HTTP door (a quarter of \
             the gateways as HL7 v2 over MLLP)",
            args.live_seconds, plan.devices
        ));
        let pushed = medlake_demo::simulate::run(
            SimulateArgs::quickstart(
                target,
                plan.devices,
                args.live_seconds,
                plan.seed,
                live_start,
            )
            .with_mllp(mllp_addr),
        )
        .await
        .map_err(Failure::from);
        match pushed {
            Ok(()) => {
                progress.say("refreshing every view once (upstream first)");
                let refreshed = refresh_all(engine, progress).await.map_err(Failure::from);
                if refreshed.is_ok() {
                    let (firings, pending) = engine
                        .settle_alerts(Duration::from_secs(30))
                        .await
                        .map_err(Failure::from)?;
                    progress.say(format!(
                        "alert rules of sql/alerts/: {firings} firing(s) so far, {pending} delivery(ies) pending (DIR/alerts.ndjson; SELECT * FROM system.alerts)"
                    ));
                    print_connect(pg_addr, flight_addr, http_addr, &args.dir);
                    progress.say("done (--once): the warehouse stays in DIR/warehouse");
                }
                refreshed
            }
            Err(e) => Err(e),
        }
    } else {
        print_connect(pg_addr, flight_addr, http_addr, &args.dir);
        progress.say(
            "serving; the simulator pushes live readings and the scheduler refreshes the views \
             (Ctrl-C stops)",
        );
        let scheduler = engine.scheduler();
        let live = tokio::spawn(medlake_demo::simulate::run(
            SimulateArgs::quickstart(target, plan.devices, 7.0 * 86_400.0, plan.seed, live_start)
                .with_mllp(mllp_addr),
        ));
        let poll = Duration::from_secs(args.poll_seconds.max(1));
        tokio::select! {
            _ = scheduler.run(poll, crate::doors::until(stopped.clone())) => {}
            _ = crate::doors::shutdown_signal() => {}
        }
        live.abort();
        Ok(())
    };
    let _ = stop.send(true);
    let _ = doors.await;
    crate::settle(engine).await;
    println!("medlake quickstart: stopped");
    result
}

fn print_connect(pg: SocketAddr, flight: SocketAddr, http: SocketAddr, dir: &Path) {
    println!(
        "
Connect (no password: the quickstart serves loopback only):

  Operator console (view DAG, refreshes, sources, quarantine, alerts, NEWS2 ward board):
  http://{http}/console
  Alerts the rules of sql/alerts/ fire go to the ward pager (printed here, DIR/alerts.ndjson)
  and to Postgres clients that ran LISTEN news2_deterioration.

  psql \"host={pg_ip} port={pg_port} dbname=medlake user=demo sslmode=disable\"

  # Python, ADBC Flight SQL (pip install adbc-driver-flightsql pyarrow)
  import adbc_driver_flightsql.dbapi as flight_sql
  conn = flight_sql.connect(\"grpc://{flight}\")
  cur = conn.cursor()
  cur.execute(\"SELECT * FROM gold.news2_hourly WHERE risk = 'high' ORDER BY hour DESC LIMIT 10\")
  print(cur.fetch_arrow_table().to_pandas())

  # push a reading (NDJSON) like a bedside gateway
  curl -H 'Content-Type: application/x-ndjson' --data-binary \\
    '{{\"device_id\":\"monitor-001\",\"patient_id\":1001,\"metric\":\"heart_rate\",\"value\":88,\"unit\":\"bpm\",\"taken_at\":\"{now}\"}}' \\
    http://{http}/v1/ingest/bronze.readings_push

Three queries worth running:

  -- who is deteriorating: the latest NEWS2 of each patient at medium or high risk
  SELECT patient_id, ward, bed, hour, news2, risk, respiration_rate, spo2, on_oxygen,
         systolic_bp, pulse, consciousness, temperature
  FROM gold.news2_hourly
  JOIN (SELECT max(hour) AS latest FROM gold.news2_hourly) AS l ON hour = l.latest
  WHERE complete AND risk IN ('medium', 'high')
  ORDER BY news2 DESC;

  -- how fast each ward answers its alerts
  SELECT ward, severity, sum(alerts) AS alerts, sum(open) AS still_open,
         round(avg(median_seconds_to_acknowledge)) AS median_s,
         round(max(p90_seconds_to_acknowledge)) AS p90_s
  FROM gold.alert_response GROUP BY ward, severity ORDER BY ward, severity;

  -- what data quality rejected, and the devices losing most data
  SELECT _medlake_rules AS rule, count(*) AS readings
  FROM silver.readings_quarantine GROUP BY 1 ORDER BY 2 DESC;
  SELECT device_id, ward, day, expected, accepted, completeness_pct
  FROM gold.data_completeness ORDER BY completeness_pct LIMIT 10;

The warehouse is {wh}: any Delta reader can read its tables, and
`medlake sql --warehouse {wh}` opens it (after the quickstart stopped: one scheduler per
warehouse).
",
        pg_ip = pg.ip(),
        pg_port = pg.port(),
        now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        wh = dir.join("warehouse").display(),
    );
}
