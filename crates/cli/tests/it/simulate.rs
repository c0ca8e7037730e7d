//! `medlake simulate` against a mock of the HTTP ingest API (axum on 127.0.0.1:0, stopped with
//! its runtime at the end of each test): what it posts, how it retries, and how it stops.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::BIN;

/// How the mock answers.
#[derive(Clone, Copy, Default)]
struct Script {
    /// The bearer token it wants (`None`: no auth).
    token: Option<&'static str>,
    /// Of the batches it sees for the first time, the 5n+2nd get 503 with `Retry-After: 1`
    /// (nothing written) and the 7n+3rd are written but answered 500 (the answer was lost).
    flaky: bool,
}

/// One request as the mock saw it.
struct Seen {
    table: String,
    headers: HeaderMap,
    key: String,
    /// The body, decompressed.
    body: Vec<u8>,
    at: Instant,
    received_ms: i64,
    status: u16,
}

#[derive(Default)]
struct Mock {
    script: Script,
    seen: Vec<Seen>,
    /// Written batches: key -> rows.
    committed: HashMap<String, Vec<Value>>,
    new_keys: usize,
}

type Shared = Arc<Mutex<Mock>>;

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn ingest(
    State(mock): State<Shared>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut mock = mock.lock().unwrap();
    let script = mock.script;
    let key = header(&headers, "idempotency-key").unwrap_or_default();
    let mut raw = Vec::new();
    let decoded = if header(&headers, "content-encoding").as_deref() == Some("gzip") {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .is_ok()
    } else {
        raw = body.to_vec();
        true
    };
    let rows: Option<Vec<Value>> = std::str::from_utf8(&raw).ok().and_then(|text| {
        text.lines()
            .map(|l| serde_json::from_str(l).ok())
            .collect::<Option<Vec<Value>>>()
    });
    let before = mock.seen.iter().any(|s| s.key == key);
    let (status, response) = if script
        .token
        .is_some_and(|t| header(&headers, "authorization") != Some(format!("Bearer {t}")))
    {
        let r = answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid bearer token"}),
        );
        (401, r)
    } else if table != "bronze.readings" {
        let r = answer(
            StatusCode::NOT_FOUND,
            json!({"error": format!("table '{table}' does not exist")}),
        );
        (404, r)
    } else if !decoded || key.is_empty() || key.len() > 200 {
        (
            400,
            answer(StatusCode::BAD_REQUEST, json!({"error": "bad request"})),
        )
    } else if let Some(rows) = rows {
        let n = rows.len();
        if mock.committed.contains_key(&key) {
            let r = json!({"table": table, "rows": n, "version": 1, "duplicate": true});
            (200, answer(StatusCode::OK, r))
        } else {
            let nth = if before { None } else { Some(mock.new_keys) };
            if !before {
                mock.new_keys += 1;
            }
            match nth {
                Some(i) if script.flaky && i % 5 == 2 => {
                    let mut r = answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "too busy, retry later"}),
                    );
                    r.headers_mut().insert("retry-after", "1".parse().unwrap());
                    (503, r)
                }
                Some(i) if script.flaky && i % 7 == 3 => {
                    mock.committed.insert(key.clone(), rows);
                    (
                        500,
                        answer(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "lost"})),
                    )
                }
                _ => {
                    mock.committed.insert(key.clone(), rows);
                    let r = json!({"table": table, "rows": n, "version": 1, "duplicate": false});
                    (200, answer(StatusCode::OK, r))
                }
            }
        }
    } else {
        (
            400,
            answer(StatusCode::BAD_REQUEST, json!({"error": "not NDJSON"})),
        )
    };
    mock.seen.push(Seen {
        table,
        headers,
        key,
        body: raw,
        at: Instant::now(),
        received_ms: chrono::Utc::now().timestamp_millis(),
        status,
    });
    response
}

/// Starts the mock on a free loopback port; it stops when the runtime is dropped.
fn start(script: Script) -> (tokio::runtime::Runtime, Shared, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock: Shared = Arc::new(Mutex::new(Mock {
        script,
        ..Mock::default()
    }));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/ingest/{table}", post(ingest))
        .with_state(mock.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });
    (runtime, mock, url)
}

fn simulate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.arg("simulate").args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("medlake runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first number after `label` in the summary.
fn summary(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no '{label}' in:\n{stdout}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in '{line}'"))
}

/// Plausible values per metric, in the unit the row names.
fn plausible(metric: &str, unit: &str, value: f64) -> bool {
    let range = match (metric, unit) {
        ("heart_rate", "bpm") => 20.0..=250.0,
        ("spo2", "%") => 50.0..=100.0,
        ("respiration_rate", "/min") => 4.0..=60.0,
        ("temperature", "degC") => 30.0..=43.0,
        ("temperature", "degF") => 86.0..=109.4,
        ("systolic_bp", "mmHg") => 50.0..=250.0,
        ("diastolic_bp", "mmHg") => 25.0..=150.0,
        ("glucose", "mg/dL") => 20.0..=600.0,
        _ => panic!("unexpected metric and unit: {metric} {unit}"),
    };
    range.contains(&value)
}

#[test]
fn simulate_posts_realistic_readings_and_retries_a_batch_with_the_same_key() {
    let (_runtime, mock, url) = start(Script {
        token: Some("sesame"),
        flaky: true,
    });
    let out = simulate(
        &[
            "--target",
            &url,
            "--devices",
            "30",
            "--rate",
            "10",
            "--duration",
            "4",
            "--batch",
            "40",
            "--seed",
            "7",
            "--gzip",
            "--token-env",
            "SIM_TOKEN",
            "--concurrency",
            "4",
        ],
        &[("SIM_TOKEN", "sesame")],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let mock = mock.lock().unwrap();

    // Every request: the right path and headers.
    assert!(!mock.seen.is_empty());
    for s in &mock.seen {
        assert_eq!(s.table, "bronze.readings");
        assert_eq!(
            header(&s.headers, "content-type").as_deref(),
            Some("application/x-ndjson")
        );
        assert_eq!(
            header(&s.headers, "content-encoding").as_deref(),
            Some("gzip")
        );
        assert_eq!(
            header(&s.headers, "authorization").as_deref(),
            Some("Bearer sesame")
        );
        assert!(!s.key.is_empty() && s.key.len() <= 200, "{}", s.key);
    }

    // One key per batch; a retry sends the same batch with the same key.
    let mut by_key: HashMap<&str, Vec<&Seen>> = HashMap::new();
    for s in &mock.seen {
        by_key.entry(&s.key).or_default().push(s);
    }
    let mut bodies = HashSet::new();
    let (mut after_503, mut after_500) = (0, 0);
    for (key, tries) in &by_key {
        assert!(
            tries.iter().all(|t| t.body == tries[0].body),
            "{key}: a retry changed the batch"
        );
        assert!(
            bodies.insert(&tries[0].body),
            "{key}: two keys for the same batch"
        );
        assert_eq!(
            tries.last().unwrap().status,
            200,
            "{key}: not acknowledged in the end"
        );
        for pair in tries.windows(2) {
            match pair[0].status {
                503 => {
                    after_503 += 1;
                    let waited = pair[1].at - pair[0].at;
                    assert!(
                        waited >= Duration::from_millis(900),
                        "{key}: Retry-After: 1 not honoured ({waited:?})"
                    );
                }
                500 => after_500 += 1,
                other => panic!("{key}: retried after {other}"),
            }
        }
    }
    assert!(after_503 >= 2 && after_500 >= 2, "{after_503} {after_500}");

    // The summary agrees with what the server wrote, each batch once.
    let sent = summary(&stdout, "readings sent:");
    let written: usize = mock.committed.values().map(Vec::len).sum();
    assert_eq!(sent as usize, written, "{stdout}");
    assert_eq!(summary(&stdout, "readings acknowledged:"), sent, "{stdout}");
    assert_eq!(mock.committed.len(), by_key.len());
    let lost_answers = mock.seen.iter().filter(|s| s.status == 500).count() as u64;
    assert_eq!(
        summary(&stdout, "acknowledged as duplicate:") > 0,
        lost_answers > 0
    );
    let duplicate_batches: u64 = stdout
        .lines()
        .find(|l| l.starts_with("acknowledged as duplicate:"))
        .and_then(|l| {
            l.split(" in ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    assert_eq!(duplicate_batches, lost_answers, "{stdout}");
    assert_eq!(
        summary(&stdout, "retries:"),
        (mock.seen.len() - by_key.len()) as u64
    );
    assert!(stdout.contains("readings/s"), "{stdout}");
    assert!(
        stdout.contains("p50 ") && stdout.contains("p99 "),
        "{stdout}"
    );

    // The rows: the columns of bronze.readings, realistic values with some flaws.
    let columns = [
        "device_id",
        "metric",
        "patient_id",
        "taken_at",
        "unit",
        "value",
    ];
    let mut metrics = HashSet::new();
    let (mut implausible, mut missing, mut fahrenheit, mut late) = (0, 0, 0, 0);
    let mut lines = HashSet::new();
    let mut duplicates = 0;
    let mut rows = 0;
    for (key, tries) in &by_key {
        let first = tries[0];
        let received = tries.last().unwrap().received_ms;
        for line in std::str::from_utf8(&first.body).unwrap().lines() {
            rows += 1;
            if !lines.insert(line.to_string()) {
                duplicates += 1;
            }
            let row: Value = serde_json::from_str(line).unwrap();
            let object = row.as_object().unwrap();
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, columns, "{key}: {line}");
            assert!(object["device_id"].as_str().is_some_and(|d| !d.is_empty()));
            assert!(
                object["patient_id"]
                    .as_i64()
                    .is_some_and(|p| p > 0 && p < i64::from(i32::MAX))
            );
            let metric = object["metric"].as_str().unwrap();
            let unit = object["unit"].as_str().unwrap();
            metrics.insert(metric.to_string());
            fahrenheit += usize::from(unit == "degF");
            let taken_at = object["taken_at"].as_str().unwrap();
            assert!(
                taken_at.ends_with('Z') && taken_at.len() == 24,
                "{taken_at}"
            );
            let t = chrono::DateTime::parse_from_rfc3339(taken_at)
                .unwrap()
                .timestamp_millis();
            assert!(t <= received + 1000, "{taken_at} is in the future");
            if received - t > 60_000 {
                late += 1;
            }
            match object["value"].as_f64() {
                Some(v) => implausible += usize::from(!plausible(metric, unit, v)),
                None => {
                    assert!(object["value"].is_null(), "{line}");
                    missing += 1;
                }
            }
        }
    }
    assert_eq!(rows, written);
    assert_eq!(metrics.len(), 7, "{metrics:?}");
    assert!(
        implausible > 0 && implausible * 50 < rows,
        "{implausible} of {rows} implausible"
    );
    assert!(
        duplicates > 0 && duplicates * 20 < rows,
        "{duplicates} exact duplicates in {rows}"
    );
    assert!(late > 0, "no late readings");
    assert!(fahrenheit > 0, "no thermometer in degF");
    assert!(missing * 50 < rows);
}

#[test]
fn simulate_stops_at_a_401_without_retrying() {
    let (_runtime, mock, url) = start(Script {
        token: Some("sesame"),
        flaky: false,
    });
    let started = Instant::now();
    let out = simulate(
        &[
            "--target",
            &url,
            "--devices",
            "5",
            "--rate",
            "20",
            "--duration",
            "60",
            "--batch",
            "10",
            "--token-env",
            "SIM_TOKEN",
        ],
        &[("SIM_TOKEN", "wrong")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the run went on after a 401"
    );
    assert!(stderr.contains("error: the server refused the credentials (401 Unauthorized): invalid bearer token; give --token-env"), "{stderr}");
    assert!(
        !stderr.contains("wrong"),
        "the token leaked into the output: {stderr}"
    );
    let stdout = text(&out.stdout);
    assert_eq!(summary(&stdout, "readings acknowledged:"), 0, "{stdout}");
    let mock = mock.lock().unwrap();
    assert!(!mock.seen.is_empty());
    let keys: HashSet<&str> = mock.seen.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys.len(), mock.seen.len(), "a 401 was retried");
    assert!(mock.seen.iter().all(|s| s.status == 401));
}

#[test]
fn simulate_posts_plain_ndjson_and_refuses_unknown_tables_and_missing_tokens() {
    let (_runtime, mock, url) = start(Script::default());
    let out = simulate(
        &[
            "--target",
            &url,
            "--devices",
            "3",
            "--rate",
            "5",
            "--duration",
            "2",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let sent = summary(&stdout, "readings sent:");
    assert!(sent >= 30, "{stdout}");
    assert_eq!(summary(&stdout, "readings acknowledged:"), sent);
    assert_eq!(summary(&stdout, "retries:"), 0);
    {
        let mock = mock.lock().unwrap();
        for s in &mock.seen {
            assert_eq!(s.status, 200);
            assert_eq!(header(&s.headers, "authorization"), None);
            assert_eq!(header(&s.headers, "content-encoding"), None);
            assert_eq!(
                header(&s.headers, "content-type").as_deref(),
                Some("application/x-ndjson")
            );
        }
    }

    let out = simulate(
        &[
            "--target",
            &url,
            "--table",
            "bronze.nope",
            "--duration",
            "30",
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: the server has no table bronze.nope (404 Not Found): table 'bronze.nope' does not exist"), "{stderr}");

    let out = simulate(
        &[
            "--target",
            &url,
            "--token-env",
            "MEDLAKE_SIMULATE_TEST_UNSET",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("MEDLAKE_SIMULATE_TEST_UNSET is not set"),
        "{}",
        text(&out.stderr)
    );

    let out = simulate(&["--devices", "3"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--target or --output is required"
    );
    let out = simulate(&["--target", &url, "--rate", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--rate"));

    let help = simulate(&["--help"], &[]);
    assert!(help.status.success());
    for option in [
        "--target",
        "--devices",
        "--rate",
        "--duration",
        "--batch",
        "--token-env",
        "--seed",
        "--gzip",
    ] {
        assert!(text(&help.stdout).contains(option), "{option}");
    }
}

#[test]
fn simulate_output_is_the_same_for_the_same_seed() {
    let args = |seed: &'static str| {
        [
            "--output",
            "-",
            "--devices",
            "12",
            "--rate",
            "2",
            "--duration",
            "30",
            "--seed",
            seed,
            "--start",
            "2026-11-23T08:00:00Z",
        ]
    };
    let a = simulate(&args("5"), &[]);
    let b = simulate(&args("5"), &[]);
    let c = simulate(&args("6"), &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    let stdout = text(&a.stdout);
    let rows = stdout.lines().count();
    assert!(rows >= 12 * 2 * 30, "{rows}");
    assert!(
        text(&a.stderr).contains(&format!("wrote {rows} rows to stdout")),
        "{}",
        text(&a.stderr)
    );
    for line in stdout.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert!(
            row["taken_at"]
                .as_str()
                .is_some_and(|t| t.starts_with("2026-11-23T0"))
        );
    }
}
