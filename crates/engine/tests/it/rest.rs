//! The `rest` connector end to end: SQL through the engine, reqwest on the wire, and an axum
//! API on 127.0.0.1 (started by each test, gone with it) that pages, filters, authenticates,
//! fails and breaks on request. Credentials come from `${MEDLAKE_TEST_REST_TOKEN}` /
//! `${MEDLAKE_TEST_REST_KEY}` (.cargo/config.toml).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::util::pretty::pretty_format_batches;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use medlake_engine::Engine;
use serde_json::{Value, json};

use super::{count, on_cluster_reading_sources, scratch};

fn token() -> String {
    std::env::var("MEDLAKE_TEST_REST_TOKEN").expect("set by .cargo/config.toml")
}

fn key() -> String {
    std::env::var("MEDLAKE_TEST_REST_KEY").expect("set by .cargo/config.toml")
}

/// Reading `i`: three devices, heart rates 60 + i, taken at 10:i UTC written three ways,
/// received 30 s later (the watermark), a nested `vitals` object.
fn reading(i: usize) -> Value {
    let (h, m) = (10 + i / 60, i % 60);
    let taken_at = match i % 3 {
        0 => format!("2024-05-01T{h:02}:{m:02}:00Z"),
        1 => format!("2024-05-01T{:02}:{m:02}:00+02:00", h + 2),
        _ => format!("2024-05-01 {h:02}:{m:02}:00.000"),
    };
    json!({
        "device_id": format!("dev-{}", i % 3 + 1),
        "hr": 60 + i,
        "taken_at": taken_at,
        "received_at": format!("2024-05-01 {h:02}:{m:02}:30"),
        "vitals": {"spo2": 95 + i % 5, "bp": [120, 80]},
        "note": if i.is_multiple_of(4) { Value::Null } else { json!(format!("reading {i}")) },
    })
}

#[derive(Clone, Debug)]
enum Fault {
    /// Answer with this status (and `Retry-After`, if given).
    Status(u16, Option<String>),
    /// `Retry-After` as an HTTP date this many seconds ahead.
    TooManyUntil(i64),
    /// Answer normally, after a pause.
    Slow(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Broken {
    No,
    /// Page 2 (and later) is cut off mid-JSON.
    NotJson,
    /// Page 2 has no records array.
    NoRecords,
    /// Page 2's fourth record has a heart rate of "fast".
    BadRecord,
}

#[derive(Clone, Debug)]
struct Request {
    style: String,
    params: BTreeMap<String, String>,
    authorized: bool,
    records: usize,
    at: Instant,
}

/// The API: its data, what it received, and the faults it will answer with.
struct Api {
    readings: Mutex<Vec<Value>>,
    log: Mutex<Vec<Request>>,
    /// Applied to the next requests in order; `None` answers normally.
    faults: Mutex<VecDeque<Option<Fault>>>,
    broken: Mutex<Broken>,
}

impl Api {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            readings: Mutex::new((0..n).map(reading).collect()),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            broken: Mutex::new(Broken::No),
        })
    }

    fn add(&self, range: std::ops::Range<usize>) {
        self.readings.lock().unwrap().extend(range.map(reading));
    }

    fn log(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    fn faults(&self, faults: Vec<Option<Fault>>) {
        *self.faults.lock().unwrap() = faults.into();
    }

    fn break_pages(&self, broken: Broken) {
        *self.broken.lock().unwrap() = broken;
    }
}

async fn start(api: Arc<Api>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/{style}", get(serve))
        .route("/moved", get(moved))
        .with_state(api);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// A redirect to the cursor endpoint: on this origin with `?same`, else to `localhost` (the
/// same server under another origin).
async fn moved(Query(pairs): Query<Vec<(String, String)>>, headers: HeaderMap) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let port = host.rsplit(':').next().unwrap_or_default();
    let target = if pairs.iter().any(|(k, _)| k == "same") {
        "/api/cursor".to_string()
    } else {
        format!("http://localhost:{port}/api/cursor")
    };
    respond(302, &[("location", target)], String::new())
}

fn respond(status: u16, headers: &[(&str, String)], body: String) -> Response {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response.body(Body::from(body)).unwrap()
}

fn param<T: std::str::FromStr>(params: &BTreeMap<String, String>, name: &str, default: T) -> T {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn query_string(params: &BTreeMap<String, String>) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `/api/{style}`: `fhir` (Bundle, `_count` / `_getpagesoffset`, bearer), `link` (array body,
/// `Link` header, `page` / `per_page`, API key), `cursor` (`{data, meta.next_cursor}`,
/// `limit` / `cursor`, bearer), `offset` (`{items}`, `offset` / `limit`, bearer). Every style
/// filters by `since` (received_at > since), `device` (device_id, ignoring case as a
/// collation would) and `min_hr` (hr >= min_hr), and sorts by `sort=-received_at`.
async fn serve(
    State(api): State<Arc<Api>>,
    Path(style): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let params: BTreeMap<String, String> = pairs.into_iter().collect();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let authorized = if style == "link" {
        header("x-api-key") == key()
    } else {
        header("authorization") == format!("Bearer {}", token())
    };
    let mut request = Request {
        style: style.clone(),
        params: params.clone(),
        authorized,
        records: 0,
        at: Instant::now(),
    };
    let fault = api.faults.lock().unwrap().pop_front().flatten();
    let early = match fault {
        _ if !authorized => Some(respond(
            401,
            &[],
            // Servers that echo what they got must not leak it into medlake's messages.
            format!(
                r#"{{"error": "invalid credentials '{}{}'"}}"#,
                header("authorization"),
                header("x-api-key")
            ),
        )),
        Some(Fault::Status(status, retry_after)) => Some(respond(
            status,
            &retry_after
                .map(|r| vec![("retry-after", r)])
                .unwrap_or_default(),
            r#"{"error": "try again"}"#.into(),
        )),
        Some(Fault::TooManyUntil(seconds)) => {
            let at = chrono::Utc::now() + chrono::Duration::seconds(seconds);
            Some(respond(
                429,
                &[(
                    "retry-after",
                    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                )],
                String::new(),
            ))
        }
        Some(Fault::Slow(pause)) => {
            tokio::time::sleep(pause).await;
            None
        }
        None => None,
    };
    if let Some(response) = early {
        api.log.lock().unwrap().push(request);
        return response;
    }

    let mut rows: Vec<Value> = api.readings.lock().unwrap().clone();
    let text = |r: &Value, f: &str| r[f].as_str().unwrap_or_default().to_string();
    if let Some(since) = params.get("since") {
        // Timestamps without an offset, compared as text (same format).
        let since = since.replace('T', " ");
        rows.retain(|r| text(r, "received_at") > since);
    }
    if let Some(device) = params.get("device") {
        rows.retain(|r| text(r, "device_id").eq_ignore_ascii_case(device));
    }
    if let Some(min) = params.get("min_hr") {
        let min: i64 = min.parse().unwrap();
        rows.retain(|r| r["hr"].as_i64().unwrap() >= min);
    }
    if params.get("sort").map(String::as_str) == Some("-received_at") {
        rows.sort_by_key(|r| std::cmp::Reverse(text(r, "received_at")));
    }
    let (start, size) = match style.as_str() {
        "fhir" => (
            param(&params, "_getpagesoffset", 0),
            param(&params, "_count", 10),
        ),
        "link" => {
            let size = param(&params, "per_page", 10);
            ((param(&params, "page", 1usize) - 1) * size, size)
        }
        "cursor" => {
            let at = params
                .get("cursor")
                .map(|c| c.trim_start_matches('c').parse().unwrap())
                .unwrap_or(0);
            (at, param(&params, "limit", 10))
        }
        _ => (param(&params, "offset", 0), param(&params, "limit", 10)),
    };
    let page: Vec<Value> = rows.iter().skip(start).take(size).cloned().collect();
    let more = start + page.len() < rows.len();
    request.records = page.len();
    api.log.lock().unwrap().push(request);

    let broken = *api.broken.lock().unwrap();
    if start > 0 {
        match broken {
            Broken::No => {}
            Broken::NotJson => return respond(200, &[], r#"{"data": [{"hr": 1"#.into()),
            Broken::NoRecords => {
                return respond(200, &[], r#"{"message": "maintenance"}"#.into());
            }
            Broken::BadRecord => {
                let mut page = page.clone();
                page[3]["hr"] = json!("fast");
                return respond(
                    200,
                    &[],
                    json!({"data": page, "meta": {"next_cursor": null}}).to_string(),
                );
            }
        }
    }
    let host = header("host");
    match style.as_str() {
        // `{results, links: {next}}` with a relative next link (`?elsewhere`: to another
        // origin; `?loop`: to the page itself).
        "next" => {
            let mut next = params.clone();
            next.insert("offset".into(), (start + size).to_string());
            let link = if params.contains_key("loop") {
                json!(format!("/api/next?{}", query_string(&params)))
            } else if !more {
                Value::Null
            } else if params.contains_key("elsewhere") {
                let port = host.rsplit(':').next().unwrap_or_default();
                json!(format!(
                    "http://localhost:{port}/api/next?{}",
                    query_string(&next)
                ))
            } else {
                json!(format!("/api/next?{}", query_string(&next)))
            };
            respond(
                200,
                &[],
                json!({"results": page, "links": {"next": link}}).to_string(),
            )
        }
        "fhir" => {
            let mut link = vec![
                json!({"relation": "self", "url": format!("http://{host}/api/fhir?{}", query_string(&params))}),
            ];
            if more {
                let mut next = params.clone();
                next.insert("_getpagesoffset".into(), (start + size).to_string());
                link.push(json!({"relation": "next", "url": format!("http://{host}/api/fhir?{}", query_string(&next))}));
            }
            let mut bundle = json!({
                "resourceType": "Bundle",
                "type": "searchset",
                "total": rows.len(),
                "link": link,
            });
            if !page.is_empty() {
                bundle["entry"] = page
                    .into_iter()
                    .map(|r| json!({"fullUrl": "urn:x", "resource": r}))
                    .collect();
            }
            respond(200, &[], bundle.to_string())
        }
        "link" => {
            let mut headers = Vec::new();
            if more {
                let mut next = params.clone();
                next.insert("page".into(), (start / size + 2).to_string());
                headers.push((
                    "link",
                    format!(
                        r#"</api/link?{}>; rel="next", </api/link?page=1>; rel="first""#,
                        query_string(&next)
                    ),
                ));
            }
            respond(200, &headers, Value::Array(page).to_string())
        }
        "cursor" => {
            let next = more.then(|| format!("c{}", start + size));
            respond(
                200,
                &[],
                json!({"data": page, "meta": {"next_cursor": next}}).to_string(),
            )
        }
        _ => respond(
            200,
            &[],
            json!({"items": page, "total": rows.len()}).to_string(),
        ),
    }
}

/// OPTIONS (and LOCATION) for a style of the API at `base`, plus `extra`.
fn table(base: &str, style: &str, extra: &str) -> String {
    let options = match style {
        "fhir" => {
            "'pagination' 'fhir', 'limit_param' '_count', 'page_size' '10', \
                   'bearer_token' '${MEDLAKE_TEST_REST_TOKEN}'"
        }
        "link" => {
            "'pagination' 'link_header', 'limit_param' 'per_page', 'page_size' '10', \
                   'api_key' '${MEDLAKE_TEST_REST_KEY}'"
        }
        "next" => {
            "'records_pointer' '/results', 'pagination' 'next_link', \
             'next_link_pointer' '/links/next', 'bearer_token' '${MEDLAKE_TEST_REST_TOKEN}'"
        }
        "cursor" => {
            "'records_pointer' '/data', 'pagination' 'cursor', \
                     'cursor_pointer' '/meta/next_cursor', 'limit_param' 'limit', 'page_size' '10', \
                     'bearer_token' '${MEDLAKE_TEST_REST_TOKEN}'"
        }
        _ => {
            "'records_pointer' '/items', 'pagination' 'offset', 'page_size' '10', \
              'bearer_token' '${MEDLAKE_TEST_REST_TOKEN}'"
        }
    };
    format!("STORED AS REST LOCATION '{base}/api/{style}' OPTIONS ({options}{extra})")
}

async fn setup(n: usize) -> (Arc<Api>, String, tempfile::TempDir, Engine) {
    let api = Api::new(n);
    let base = start(api.clone()).await;
    let (dir, engine) = scratch().await;
    engine
        .sql("CREATE SCHEMA IF NOT EXISTS telemetry")
        .await
        .unwrap();
    (api, base, dir, engine)
}

fn pretty(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(column), &arrow::datatypes::DataType::Utf8)
                .expect("text");
            let c = c
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("a text column");
            (0..c.len())
                .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn version(engine: &Engine, view: &str) -> i64 {
    count(
        engine,
        &format!("SELECT max(version) FROM table_history('{view}')"),
    )
    .await
}

#[tokio::test]
async fn every_pagination_style_reads_every_page_with_its_credentials() {
    let (api, base, _dir, engine) = setup(25).await;
    let hr_sum: i64 = (0..25).map(|i| 60 + i).sum();
    for (style, requests) in [
        ("fhir", 3),
        ("link", 3),
        ("next", 3),
        ("cursor", 3),
        ("offset", 4),
    ] {
        engine
            .sql(&format!(
                "CREATE EXTERNAL TABLE telemetry.r_{style} {}",
                table(&base, style, "")
            ))
            .await
            .unwrap_or_else(|e| panic!("{style}: {e}"));
        api.clear_log();
        assert_eq!(
            count(
                &engine,
                &format!("SELECT count(*) FROM telemetry.r_{style}")
            )
            .await,
            25,
            "{style}"
        );
        assert_eq!(
            count(&engine, &format!("SELECT sum(hr) FROM telemetry.r_{style}")).await,
            hr_sum,
            "{style}"
        );
        assert_eq!(
            count(
                &engine,
                &format!("SELECT count(DISTINCT device_id) FROM telemetry.r_{style}")
            )
            .await,
            3,
            "{style}"
        );
        let log = api.log();
        // Three queries; offset pagination ends at its first empty page.
        assert_eq!(log.len(), 3 * requests, "{style}: {log:#?}");
        assert!(
            log.iter().all(|r| r.authorized && r.style == style),
            "{log:#?}"
        );
        let served: Vec<usize> = log[..requests].iter().map(|r| r.records).collect();
        let expected: &[usize] = if style == "offset" {
            &[10, 10, 5, 0]
        } else {
            &[10, 10, 5]
        };
        assert_eq!(served, expected, "{style}");
        let second = &log[1].params;
        let (name, value) = match style {
            "fhir" => ("_getpagesoffset", "10"),
            "link" => ("page", "2"),
            "cursor" => ("cursor", "c10"),
            _ => ("offset", "10"),
        };
        assert_eq!(
            second.get(name).map(String::as_str),
            Some(value),
            "{style}: {second:?}"
        );
    }
    // No pagination: the first page is the table.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.first_page STORED AS REST LOCATION '{base}/api/cursor' \
             OPTIONS ('records_pointer' '/data', 'bearer_token' '${{MEDLAKE_TEST_REST_TOKEN}}')"
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM telemetry.first_page").await,
        10
    );

    // Guards: a page budget, a next link to another origin, a next link to the page itself.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.budget {}",
            table(&base, "cursor", ", 'max_pages' '2'")
        ))
        .await
        .unwrap();
    let err = engine
        .query("SELECT * FROM telemetry.budget")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV000", "{err}");
    assert!(err.to_string().contains("more than max_pages (2)"), "{err}");
    for (query, expected) in [
        (
            "elsewhere=1",
            "its next link leads to another origin (http://localhost:",
        ),
        (
            "loop=1",
            "page 1 is malformed: its next link is the page itself",
        ),
    ] {
        let name = query.split('=').next().unwrap();
        engine
            .sql(&format!(
                "CREATE EXTERNAL TABLE telemetry.{name} {}",
                table(&base, "next", "").replace("/api/next'", &format!("/api/next?{query}'"))
            ))
            .await
            .unwrap();
        api.clear_log();
        let err = engine
            .query(&format!("SELECT * FROM telemetry.{name}"))
            .await
            .unwrap_err();
        assert_eq!(err.code().sqlstate(), "HV00A", "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(api.log().len(), 1, "no request to the other origin");
    }
    // A path the API does not have.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.nothing STORED AS REST LOCATION '{base}/nothing' \
             OPTIONS ('bearer_token' '${{MEDLAKE_TEST_REST_TOKEN}}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00R", "{err}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}

#[tokio::test]
async fn credentials_are_checked_and_never_stored_or_shown() {
    let (api, base, dir, engine) = setup(5).await;
    // The API key sent as a bearer token to the endpoint that wants an API key: 401, and the
    // key the server echoes back is masked.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.x STORED AS REST LOCATION '{base}/api/link' \
             OPTIONS ('bearer_token' '${{MEDLAKE_TEST_REST_KEY}}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
    let message = err.to_string();
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(message.contains("***"), "{message}");
    assert!(!message.contains(&key()), "{message}");
    // No credentials at all.
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.x STORED AS REST LOCATION '{base}/api/offset' \
             OPTIONS ('records_pointer' '/items')"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
    assert!(api.log().iter().all(|r| !r.authorized));
    // A literal secret is refused before any request, and not repeated.
    let requests = api.log().len();
    for option in ["bearer_token", "api_key", "header.x-auth-token"] {
        let err = engine
            .sql(&format!(
                "CREATE EXTERNAL TABLE telemetry.x STORED AS REST LOCATION '{base}/api/offset' \
                 OPTIONS ('{option}' 'Sup3rSecret')"
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code().sqlstate(), "HV024", "{err}");
        assert!(!err.to_string().contains("Sup3rSecret"), "{err}");
        assert!(err.to_string().contains(option), "{err}");
    }
    // A secret the server does not provide is named (refused as a missing privilege).
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.x STORED AS REST LOCATION '{base}/api/offset' \
             OPTIONS ('bearer_token' '${{MEDLAKE_SURELY_UNSET_VARIABLE}}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "42501", "{err}");
    assert!(
        err.to_string().contains("MEDLAKE_SURELY_UNSET_VARIABLE"),
        "{err}"
    );
    // Credentials in LOCATION are refused too.
    let with_user = base.replace("http://", "http://reader:pw@");
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.x STORED AS REST LOCATION '{with_user}/api/offset'"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    assert_eq!(api.log().len(), requests, "refused before any request");

    // The right credentials: the API key in its header, a custom header from the
    // environment as well.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.x {}",
            table(
                &base,
                "link",
                ", 'header.x-session-token' '${MEDLAKE_TEST_REST_TOKEN}'"
            )
        ))
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM telemetry.x").await, 5);
    let stored =
        std::fs::read_to_string(dir.path().join("wh/telemetry/x/_medlake_external.json")).unwrap();
    assert!(stored.contains("${MEDLAKE_TEST_REST_KEY}"), "{stored}");
    assert!(!stored.contains(&key()), "{stored}");
    assert!(!stored.contains(&token()), "{stored}");
    // Redirects are followed on the LOCATION's origin only.
    let moved = |query: &str| {
        format!(
            "STORED AS REST LOCATION '{base}/moved{query}' OPTIONS ('records_pointer' '/data', \
             'bearer_token' '${{MEDLAKE_TEST_REST_TOKEN}}')"
        )
    };
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.moved {}",
            moved("?same=1")
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM telemetry.moved").await,
        5
    );
    api.clear_log();
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.away {}",
            moved("")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV000", "{err}");
    assert!(
        err.to_string().contains("HTTP 302") && err.to_string().contains("origin only"),
        "{err}"
    );
    assert!(api.log().is_empty(), "{:#?}", api.log());
    // IMPORT FOREIGN SCHEMA has nothing to import from an API.
    let err = engine
        .sql(&format!(
            "IMPORT FOREIGN SCHEMA x FROM REST '{base}/api/link' INTO telemetry"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00P", "{err}");
}

#[tokio::test]
async fn the_schema_is_inferred_from_the_first_page_and_stored() {
    let (api, base, dir, engine) = setup(25).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.readings {}",
            table(&base, "fhir", ", 'field.spo2' '/vitals/spo2'")
        ))
        .await
        .unwrap();
    // CREATE read the first page only.
    let log = api.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    let types = engine
        .query(
            "SELECT arrow_typeof(device_id), arrow_typeof(hr), arrow_typeof(taken_at), \
             arrow_typeof(received_at), arrow_typeof(vitals), arrow_typeof(note), \
             arrow_typeof(spo2) FROM telemetry.readings LIMIT 1",
        )
        .await
        .unwrap();
    let types: Vec<String> = (0..7)
        .map(|i| strings(&types, i)[0].clone().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Utf8",
            "Int64",
            "Timestamp(µs, \"UTC\")",
            "Timestamp(µs)",
            "Utf8",
            "Utf8",
            "Int64"
        ]
    );
    // Nested values are JSON text; the three timestamp spellings are the same instants.
    let rows = engine
        .query(
            "SELECT vitals, CAST(taken_at AS VARCHAR), spo2 FROM telemetry.readings \
             WHERE hr IN (60, 61, 62) ORDER BY hr",
        )
        .await
        .unwrap();
    assert_eq!(
        strings(&rows, 0)[0].as_deref(),
        Some(r#"{"bp":[120,80],"spo2":95}"#)
    );
    assert_eq!(
        strings(&rows, 1),
        [
            Some("2024-05-01T10:00:00Z".to_string()),
            Some("2024-05-01T10:01:00Z".to_string()),
            Some("2024-05-01T10:02:00Z".to_string())
        ]
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM telemetry.readings WHERE note IS NULL"
        )
        .await,
        7
    );

    // Opening (a new engine on the same warehouse) and planning make no request.
    api.clear_log();
    let reopened = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let plan = pretty(
        &reopened
            .query("EXPLAIN SELECT hr FROM telemetry.readings")
            .await
            .unwrap(),
    );
    assert!(
        plan.contains("RestExec") && plan.contains("pagination=fhir"),
        "{plan}"
    );
    assert!(api.log().is_empty(), "{:#?}", api.log());
    let stored = std::fs::read_to_string(
        dir.path()
            .join("wh/telemetry/readings/_medlake_external.json"),
    )
    .unwrap();
    assert!(
        stored.contains("\"inferred\":true") || stored.contains("\"inferred\": true"),
        "{stored}"
    );

    // An empty first page cannot show columns.
    let empty = Api::new(0);
    let empty_base = start(empty).await;
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.empty {}",
            table(&empty_base, "cursor", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    assert!(err.to_string().contains("declare them"), "{err}");
}

#[tokio::test]
async fn declared_columns_read_structs_timestamps_and_pointers() {
    let (api, base, _dir, engine) = setup(25).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.readings (device VARCHAR NOT NULL, hr INT, \
             taken_at TIMESTAMP, vitals STRUCT<spo2 INT, bp INT[]>, systolic INT) {}",
            table(
                &base,
                "offset",
                ", 'field.device' '/device_id', 'field.systolic' '/vitals/bp/0'"
            )
        ))
        .await
        .unwrap();
    let types = engine
        .query(
            "SELECT arrow_typeof(device), arrow_typeof(hr), arrow_typeof(taken_at), \
             arrow_typeof(vitals) FROM telemetry.readings LIMIT 1",
        )
        .await
        .unwrap();
    let types: Vec<String> = (0..4)
        .map(|i| strings(&types, i)[0].clone().unwrap())
        .collect();
    assert_eq!(types[..3], ["Utf8", "Int32", "Timestamp(µs)"]);
    assert!(types[3].starts_with("Struct("), "{}", types[3]);
    let nullable = engine
        .query(
            "SELECT column_name, is_nullable FROM information_schema.columns \
             WHERE table_name = 'readings' ORDER BY ordinal_position",
        )
        .await
        .unwrap();
    assert_eq!(strings(&nullable, 1)[0].as_deref(), Some("NO"));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM telemetry.readings").await,
        25
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(DISTINCT taken_at) FROM telemetry.readings"
        )
        .await,
        25
    );
    assert_eq!(
        count(
            &engine,
            "SELECT CAST(sum(vitals['spo2']) AS BIGINT) FROM telemetry.readings"
        )
        .await,
        (0..25).map(|i| 95 + i % 5).sum::<i64>()
    );
    assert_eq!(
        count(
            &engine,
            "SELECT CAST(sum(systolic) AS BIGINT) FROM telemetry.readings"
        )
        .await,
        25 * 120
    );
    // taken_at is a TIMESTAMP without time zone: instants written with an offset are kept
    // as their UTC wall time.
    let first = engine
        .query("SELECT CAST(min(taken_at) AS VARCHAR), CAST(max(taken_at) AS VARCHAR) FROM telemetry.readings")
        .await
        .unwrap();
    assert_eq!(
        (strings(&first, 0), strings(&first, 1)),
        (
            vec![Some("2024-05-01T10:00:00".to_string())],
            vec![Some("2024-05-01T10:24:00".to_string())]
        )
    );

    // Columns that do not fit the API are refused at CREATE, naming the record and column.
    api.clear_log();
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.wrong (device_id INT) {}",
            table(&base, "offset", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00A", "{err}");
    assert!(
        err.to_string()
            .contains("record index 0, column 'device_id': expected an integer, found \"dev-1\""),
        "{err}"
    );
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.wrong (id VARCHAR NOT NULL) {}",
            table(&base, "offset", "")
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("column 'id' is missing or null, but it is declared NOT NULL"),
        "{err}"
    );
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.wrong (id VARCHAR) {}",
            table(&base, "offset", ", 'field.other' '/x'")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.wrong (b BYTEA) {}",
            table(&base, "offset", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV004", "{err}");
}

#[tokio::test]
async fn comparisons_reach_the_api_as_query_parameters_and_are_checked_again() {
    let (api, base, _dir, engine) = setup(30).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.readings {}",
            table(
                &base,
                "cursor",
                ", 'filter.received_at.gt' 'since', 'filter.device_id.eq' 'device', \
                 'filter.hr.ge' 'min_hr'"
            )
        ))
        .await
        .unwrap();
    let expected = (0..30usize)
        .filter(|i| *i > 10 && i % 3 == 1 && 60 + *i >= 75)
        .count() as i64;
    api.clear_log();
    let found = count(
        &engine,
        "SELECT count(*) FROM telemetry.readings WHERE received_at > '2024-05-01 10:10:30' \
         AND device_id = 'dev-2' AND hr >= 75 AND hr + 1 < 100",
    )
    .await;
    assert_eq!(found, expected);
    let log = api.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    let sent = &log[0].params;
    assert_eq!(
        sent.get("since").map(String::as_str),
        Some("2024-05-01T10:10:30")
    );
    assert_eq!(sent.get("device").map(String::as_str), Some("dev-2"));
    assert_eq!(sent.get("min_hr").map(String::as_str), Some("75"));
    assert_eq!(
        sent.keys().map(String::as_str).collect::<Vec<_>>(),
        ["device", "limit", "min_hr", "since"]
    );
    // `>=` cannot travel as a `gt` parameter (the API would drop the boundary record).
    api.clear_log();
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM telemetry.readings WHERE received_at >= '2024-05-01 10:10:30'"
        )
        .await,
        20
    );
    assert!(api.log().iter().all(|r| !r.params.contains_key("since")));
    // The API compares devices ignoring case; the scan checks again, so the answer is SQL's.
    api.clear_log();
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM telemetry.readings WHERE device_id = 'DEV-2'"
        )
        .await,
        0
    );
    let log = api.log();
    assert_eq!(
        log[0].params.get("device").map(String::as_str),
        Some("DEV-2")
    );
    assert_eq!(log.iter().map(|r| r.records).sum::<usize>(), 10);
    // Pushed filters are exact, so a LIMIT reaches the scan: one page is enough.
    api.clear_log();
    let limited = engine
        .query("SELECT hr FROM telemetry.readings WHERE device_id = 'dev-1' LIMIT 2")
        .await
        .unwrap();
    assert_eq!(limited.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
    assert_eq!(api.log().len(), 1, "{:#?}", api.log());
    let plan = pretty(
        &engine
            .query("EXPLAIN SELECT hr FROM telemetry.readings WHERE device_id = 'dev-1' AND hr % 2 = 0")
            .await
            .unwrap(),
    );
    assert!(plan.contains("params=[device=dev-1]"), "{plan}");
    assert!(plan.contains("FilterExec"), "{plan}");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_honouring_retry_after() {
    let (api, base, _dir, engine) = setup(25).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.readings {}",
            table(
                &base,
                "offset",
                ", 'max_retries' '3', 'retry_backoff_ms' '100'"
            )
        ))
        .await
        .unwrap();
    // Page 2: 429 (Retry-After: 1 s), 500, 503, then the page.
    api.clear_log();
    api.faults(vec![
        None,
        Some(Fault::Status(429, Some("1".into()))),
        Some(Fault::Status(500, None)),
        Some(Fault::Status(503, None)),
    ]);
    let started = Instant::now();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM telemetry.readings").await,
        25
    );
    let log = api.log();
    let second_page: Vec<&Request> = log
        .iter()
        .filter(|r| r.params.get("offset").map(String::as_str) == Some("10"))
        .collect();
    assert_eq!(second_page.len(), 4, "{log:#?}");
    assert_eq!(log.len(), 7, "{log:#?}");
    // The first retry waited the second the server asked for; the next ones backed off
    // 0.2 s and 0.4 s (100 ms doubling).
    let gap = |a: usize| second_page[a + 1].at.duration_since(second_page[a].at);
    assert!(gap(0) >= Duration::from_secs(1), "{:?}", gap(0));
    assert!(gap(1) >= Duration::from_millis(200), "{:?}", gap(1));
    assert!(gap(2) >= Duration::from_millis(400), "{:?}", gap(2));
    assert!(started.elapsed() >= Duration::from_millis(1600));

    // Retry-After as an HTTP date.
    api.clear_log();
    api.faults(vec![Some(Fault::TooManyUntil(2))]);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM telemetry.readings").await,
        25
    );
    let log = api.log();
    assert!(
        log[1].at.duration_since(log[0].at) >= Duration::from_millis(900),
        "{log:#?}"
    );

    // Out of retries: the last error, with how many retries were made.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.impatient {}",
            table(
                &base,
                "offset",
                ", 'max_retries' '1', 'retry_backoff_ms' '10', 'retry_max_wait_seconds' '5', \
                 'request_timeout_seconds' '1'"
            )
        ))
        .await
        .unwrap();
    api.faults(vec![
        None,
        Some(Fault::Status(500, None)),
        Some(Fault::Status(502, None)),
    ]);
    let err = engine
        .query("SELECT * FROM telemetry.impatient")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV000", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("HTTP 502") && message.contains("page 2"),
        "{message}"
    );
    assert!(message.contains("gave up after 1 retry"), "{message}");
    // A Retry-After beyond retry_max_wait_seconds fails at once.
    api.faults(vec![Some(Fault::Status(429, Some("120".into())))]);
    let started = Instant::now();
    let err = engine
        .query("SELECT * FROM telemetry.impatient")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("asked to wait 120 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A page slower than request_timeout_seconds: timed out, retried once, timed out.
    api.faults(vec![
        Some(Fault::Slow(Duration::from_secs(3))),
        Some(Fault::Slow(Duration::from_secs(3))),
    ]);
    let err = engine
        .query("SELECT * FROM telemetry.impatient")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00N", "{err}");
    assert!(err.to_string().contains("timed out after 1 s"), "{err}");
    // Client errors are not retried.
    api.clear_log();
    api.faults(vec![Some(Fault::Status(400, None))]);
    let err = engine
        .query("SELECT * FROM telemetry.impatient")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 400"), "{err}");
    assert_eq!(api.log().len(), 1);
}

#[tokio::test]
async fn a_malformed_page_fails_the_refresh_and_the_view_keeps_its_version() {
    let (api, base, _dir, engine) = setup(25).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.readings {}",
            table(&base, "cursor", "")
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.readings AS SELECT * FROM telemetry.readings")
        .await
        .unwrap();
    let before = version(&engine, "bronze.readings").await;
    for (broken, expected) in [
        (Broken::NotJson, "page 2 is malformed: the body is not JSON"),
        (
            Broken::NoRecords,
            "page 2 is malformed: there is nothing at records_pointer '/data'",
        ),
        (
            Broken::BadRecord,
            "page 2 is malformed: record index 3, column 'hr': expected an integer, found \"fast\"",
        ),
    ] {
        api.break_pages(broken);
        let err = engine
            .refresh("bronze.readings", false, false)
            .await
            .unwrap_err();
        assert_eq!(err.code().sqlstate(), "HV00A", "{broken:?}: {err}");
        assert!(err.to_string().contains(expected), "{broken:?}: {err}");
        assert_eq!(version(&engine, "bronze.readings").await, before);
        assert_eq!(
            count(&engine, "SELECT count(*) FROM bronze.readings").await,
            25
        );
        // A query fails the same way.
        let err = engine
            .query("SELECT count(*) FROM telemetry.readings")
            .await
            .unwrap_err();
        assert_eq!(err.code().sqlstate(), "HV00A", "{err}");
    }
    // A page above max_page_bytes is refused before it is parsed.
    api.break_pages(Broken::No);
    let sized = |size: usize| {
        format!(
            "STORED AS REST LOCATION '{base}/api/cursor' OPTIONS ('records_pointer' '/data', \
             'pagination' 'cursor', 'cursor_pointer' '/meta/next_cursor', 'limit_param' 'limit', \
             'page_size' '{size}', 'max_page_bytes' '1024', \
             'bearer_token' '${{MEDLAKE_TEST_REST_TOKEN}}')"
        )
    };
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.big_pages {}",
            sized(10)
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV00A", "{err}");
    assert!(
        err.to_string()
            .contains("page 1 is malformed: the body is larger than max_page_bytes (1024 bytes)"),
        "{err}"
    );
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.small_pages {}",
            sized(2)
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM telemetry.small_pages").await,
        25
    );
    let err = engine
        .sql("CREATE EXTERNAL TABLE telemetry.nowhere STORED AS REST LOCATION 'devices/v1'")
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    let failed = engine
        .query(
            "SELECT status FROM system.refreshes WHERE view = 'bronze.readings' \
             AND status = 'failed'",
        )
        .await
        .unwrap();
    assert_eq!(failed.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    api.break_pages(Broken::No);
    let outcome = engine
        .refresh("bronze.readings", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].rows_written, 25);
    assert_eq!(version(&engine, "bronze.readings").await, before + 1);
}

#[tokio::test]
async fn a_watermark_makes_refreshes_read_only_new_records() {
    let (api, base, _dir, engine) = setup(25).await;
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.readings {}",
            table(
                &base,
                "cursor",
                ", 'watermark' 'received_at', 'filter.received_at.gt' 'since', \
                 'high_mark_query' 'sort=-received_at&limit=1'"
            )
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.readings AS SELECT * FROM telemetry.readings")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.readings").await,
        25
    );

    // Unchanged: one request for the high mark, nothing else, nothing committed.
    api.clear_log();
    let outcome = engine
        .refresh("bronze.readings", false, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].status.as_str(), "skipped", "{:?}", outcome[0]);
    let log = api.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(
        log[0].params.get("sort").map(String::as_str),
        Some("-received_at")
    );
    assert_eq!(log[0].params.get("limit").map(String::as_str), Some("1"));
    assert_eq!(log[0].records, 1);

    // Seven new readings: the incremental read asks for records after the stored mark and
    // receives only those.
    api.add(25..32);
    api.clear_log();
    let outcome = engine
        .refresh("bronze.readings", false, false)
        .await
        .unwrap();
    let outcome = &outcome[0];
    assert_eq!(outcome.mode, "incremental", "{outcome:?}");
    assert_eq!(outcome.rows_written, 7, "{outcome:?}");
    assert!(
        outcome
            .reason
            .contains("watermark received_at from 2024-05-01T10:24:30"),
        "{}",
        outcome.reason
    );
    let log = api.log();
    let reads: Vec<&Request> = log
        .iter()
        .filter(|r| !r.params.contains_key("sort"))
        .collect();
    assert!(!reads.is_empty());
    assert!(
        reads
            .iter()
            .all(|r| r.params.get("since").map(String::as_str) == Some("2024-05-01T10:24:30")),
        "{reads:#?}"
    );
    assert_eq!(reads.iter().map(|r| r.records).sum::<usize>(), 7);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.readings").await,
        32
    );
    assert_eq!(
        count(&engine, "SELECT count(DISTINCT hr) FROM bronze.readings").await,
        32
    );

    // Without high_mark_query the high mark is read from every page (documented cost); the
    // refresh is still incremental and appends only the new records.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE telemetry.scanned {}",
            table(
                &base,
                "offset",
                ", 'watermark' 'received_at', 'filter.received_at.gt' 'since'"
            )
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.scanned AS SELECT * FROM telemetry.scanned")
        .await
        .unwrap();
    api.add(32..35);
    api.clear_log();
    let outcome = engine
        .refresh("bronze.scanned", false, false)
        .await
        .unwrap();
    assert_eq!(
        (outcome[0].mode, outcome[0].rows_written),
        ("incremental", 3),
        "{:?}",
        outcome[0]
    );
    let log = api.log();
    let (high_mark, reads): (Vec<&Request>, Vec<&Request>) =
        log.iter().partition(|r| !r.params.contains_key("since"));
    assert_eq!(high_mark.iter().map(|r| r.records).sum::<usize>(), 35);
    assert_eq!(reads.iter().map(|r| r.records).sum::<usize>(), 3);
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.scanned").await,
        35
    );

    // FULL re-extracts everything up to the current mark.
    let outcome = engine
        .refresh("bronze.readings", true, false)
        .await
        .unwrap();
    assert_eq!(outcome[0].rows_written, 35);
}

/// Executors scan a REST table themselves: each opens it from its definition, whose bearer
/// token is a `${NAME}` reference resolved from the executor's own secrets and checked
/// against its own source policy; the server's resolved secret never crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executors_scan_a_rest_table_with_their_own_secrets_and_policy() {
    let api = Api::new(25);
    let base = start(api.clone()).await;
    let loopback = || medlake_source::Policy {
        allowed_hosts: vec!["127.0.0.1".into()],
        ..medlake_source::Policy::strict()
    };
    let join = "SELECT d.ward, count(*) AS n, sum(r.hr) AS hr FROM telemetry.api r \
                JOIN bronze.devices d ON r.device_id = d.id GROUP BY d.ward ORDER BY d.ward";
    let tables = format!(
        "CREATE SCHEMA telemetry;
         CREATE TABLE bronze.devices (id VARCHAR, ward VARCHAR);
         INSERT INTO bronze.devices VALUES ('dev-1', 'icu'), ('dev-2', 'icu'), ('dev-3', 'er');
         CREATE EXTERNAL TABLE telemetry.api {}",
        table(&base, "offset", "")
    );
    let setup = |engine: Engine| {
        let tables = tables.clone();
        async move {
            engine.sql(&tables).await.unwrap();
            engine
        }
    };
    let expected = |engine: &Engine| {
        let local = engine.local_session();
        async move { pretty(&local.query(join).await.unwrap()) }
    };

    let (_members, _dir, engine) =
        on_cluster_reading_sources(loopback().with_secret("MEDLAKE_TEST_REST_TOKEN", &token()))
            .await;
    let engine = setup(engine).await;
    api.clear_log();
    let on_cluster = pretty(&engine.query(join).await.unwrap());
    assert!(on_cluster.contains("| er   | 8  | 580  |"), "{on_cluster}");
    let metrics = engine.metrics_text().await;
    assert!(
        metrics.contains("medlake_cluster_queries_total{ran=\"cluster\"} 1"),
        "the query did not run on the cluster:\n{metrics}"
    );
    let log = api.log();
    assert!(
        !log.is_empty() && log.iter().all(|r| r.authorized),
        "{log:#?}"
    );
    assert_eq!(on_cluster, expected(&engine).await);
    // A materialized view over it refreshes on the cluster with the same rows.
    engine
        .sql(&format!(
            "CREATE MATERIALIZED VIEW silver.by_ward AS {join}"
        ))
        .await
        .unwrap();
    assert_eq!(
        pretty(
            &engine
                .query("SELECT * FROM silver.by_ward ORDER BY ward")
                .await
                .unwrap()
        ),
        on_cluster
    );

    // Executors without the secret: the scan fails there, naming the secret, never a value.
    let (_members, _dir, engine) = on_cluster_reading_sources(loopback()).await;
    let engine = setup(engine).await;
    let err = engine.query(join).await.unwrap_err().to_string();
    assert!(err.contains("MEDLAKE_TEST_REST_TOKEN"), "{err}");
    assert!(!err.contains(&token()), "{err}");

    // Executors whose policy binds the secret to another API: refused there, even though
    // the server would send it to this one.
    let mut bound = loopback().with_secret("MEDLAKE_TEST_REST_TOKEN", &token());
    bound.secret_locations.insert(
        "MEDLAKE_TEST_REST_TOKEN".into(),
        vec!["https://ehr.example.org/".into()],
    );
    let (_members, _dir, engine) = on_cluster_reading_sources(bound).await;
    let engine = setup(engine).await;
    api.clear_log();
    let err = engine.query(join).await.unwrap_err().to_string();
    assert!(
        err.contains("may be sent only under its [secrets] locations"),
        "{err}"
    );
    assert!(api.log().is_empty(), "the refused table was contacted");
}
