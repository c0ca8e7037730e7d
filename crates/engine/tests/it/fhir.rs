//! The `fhir` connector end to end: SQL through the engine, and a FHIR Bulk Data server
//! written for these tests (axum on 127.0.0.1, port 0, gone with the test): SMART Backend
//! Services token endpoint verifying RS384 and ES384 client assertions with ring, kick-off,
//! 202 polling with `Retry-After` and `X-Progress`, 429/503 before success, manifests whose
//! NDJSON files live on a second origin, `deleted` output, `_since`, OperationOutcome errors,
//! expiring tokens, and FHIR search paging. Its clock is the test's: `Date`, `meta.lastUpdated`
//! and `transactionTime` all read it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, StringArray};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use medlake_engine::Engine;
use medlake_engine::runtime::RuntimeSettings;
use medlake_source::Policy;
use ring::signature::{self, KeyPair as _};
use serde_json::{Value, json};

use super::location;

const BEARER: &str = "fhir-test-bearer-6b1e";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// An Observation as the server writes it (compact JSON, members in the server's order).
fn observation(id: &str, version: u32, updated: DateTime<Utc>) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","meta":{{"versionId":"{version}","lastUpdated":"{}"}},"status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},"valueQuantity":{{"value":{},"unit":"/min"}}}}"#,
        updated.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        60 + version
    )
}

#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    authorization: Option<String>,
    prefer: Option<String>,
    accept: Option<String>,
    at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The next kick-off answers 429 with `Retry-After: 1`.
    KickOff429,
    /// The next status poll answers 503.
    Status503,
    /// The export fails: the status answers 500 with an OperationOutcome that repeats the
    /// request's Authorization header (a careless server).
    ExportFails,
    /// The next manifest puts its files on an origin the table does not list.
    ForeignFiles,
    /// The next manifest has an error file.
    ErrorFile,
    /// The next export's file has a line longer than 2 KiB.
    LongLine,
}

/// A resource as the server keeps it: version, lastUpdated, JSON text.
type Stored = (u32, DateTime<Utc>, String);

struct Server {
    clock: Mutex<DateTime<Utc>>,
    resources: Mutex<BTreeMap<String, Stored>>,
    deleted: Mutex<Vec<(String, DateTime<Utc>)>>,
    /// kid → (alg, public key)
    keys: HashMap<String, (&'static str, Vec<u8>)>,
    /// token → real expiry
    tokens: Mutex<HashMap<String, Instant>>,
    /// Lifetime the server enforces, and the one it announces.
    token_life: Mutex<(Duration, u64)>,
    jtis: Mutex<HashSet<String>>,
    algorithms: Mutex<Vec<String>>,
    exports: Mutex<HashMap<usize, (u32, Value)>>,
    files: Mutex<HashMap<String, String>>,
    faults: Mutex<VecDeque<Fault>>,
    log: Mutex<Vec<Logged>>,
    /// Where the manifests put files (set after the second origin starts).
    files_origin: Mutex<String>,
    origin: Mutex<String>,
    requires_token: Mutex<bool>,
}

impl Server {
    fn now(&self) -> DateTime<Utc> {
        *self.clock.lock().unwrap()
    }

    fn set_clock(&self, t: &str) {
        *self.clock.lock().unwrap() = at(t);
    }

    fn put(&self, id: &str, updated: &str) {
        let updated = at(updated);
        let mut resources = self.resources.lock().unwrap();
        let version = resources.get(id).map_or(1, |r| r.0 + 1);
        resources.insert(
            id.into(),
            (version, updated, observation(id, version, updated)),
        );
    }

    fn delete(&self, id: &str, when: &str) {
        self.resources.lock().unwrap().remove(id);
        self.deleted.lock().unwrap().push((id.into(), at(when)));
    }

    fn fault(&self, fault: Fault) {
        self.faults.lock().unwrap().push_back(fault);
    }

    fn take_fault(&self, wanted: &[Fault]) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults.iter().position(|f| wanted.contains(f))?;
        faults.remove(i)
    }

    fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    fn requests(&self, method: &str, path_start: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.method == method && l.path.starts_with(path_start))
            .collect()
    }

    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap) {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let query = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        self.log.lock().unwrap().push(Logged {
            method: method.to_string(),
            path: uri.path().to_string(),
            query,
            authorization: header("authorization"),
            prefer: header("prefer"),
            accept: header("accept"),
            at: Instant::now(),
        });
    }

    /// `None` when the request carries a live token, else the 401 to answer.
    fn refuse_unless_authorized(&self, headers: &HeaderMap) -> Option<Response> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = auth.strip_prefix("Bearer ").unwrap_or_default();
        let live = token == BEARER
            || self
                .tokens
                .lock()
                .unwrap()
                .get(token)
                .is_some_and(|expiry| *expiry > Instant::now());
        (!live).then(|| {
            outcome(
                StatusCode::UNAUTHORIZED,
                "login",
                "the access token is missing, unknown or expired",
            )
        })
    }
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = json!({"resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}]});
    (
        status,
        [("content-type", "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

async fn metadata(
    State(s): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.record(&method, &uri, &headers);
    if let Some(refusal) = s.refuse_unless_authorized(&headers) {
        return refusal;
    }
    let body = json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1"});
    ([("date", http_date(s.now()))], body.to_string()).into_response()
}

async fn smart_configuration(State(s): State<Arc<Server>>) -> Response {
    let origin = s.origin.lock().unwrap().clone();
    axum::Json(json!({"token_endpoint": format!("{origin}/auth/token"),
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]}))
    .into_response()
}

/// The token endpoint: verifies the client assertion as a SMART server must.
async fn token(State(s): State<Arc<Server>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let refuse = |why: &str| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": why})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        || !form.contains_key("scope")
    {
        return refuse("not a client_credentials grant with a JWT assertion");
    }
    let jwt = form.get("client_assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return refuse("the assertion is not a JWT");
    }
    let decode = |p: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    let kid = header["kid"].as_str().unwrap_or_default();
    let Some((alg, public)) = s.keys.get(kid) else {
        return refuse("unknown kid");
    };
    if header["alg"].as_str() != Some(*alg) || header["typ"].as_str() != Some("JWT") {
        return refuse("alg does not match the registered key");
    }
    let verification: &dyn signature::VerificationAlgorithm = match *alg {
        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
        _ => &signature::ECDSA_P384_SHA384_FIXED,
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
    if signature::UnparsedPublicKey::new(verification, public)
        .verify(signed.as_bytes(), &sig)
        .is_err()
    {
        return refuse("bad signature");
    }
    let now = Utc::now().timestamp();
    let origin = s.origin.lock().unwrap().clone();
    let exp = claims["exp"].as_i64().unwrap_or_default();
    let jti = claims["jti"].as_str().unwrap_or_default().to_string();
    if claims["iss"] != "medlake"
        || claims["sub"] != "medlake"
        || claims["aud"] != format!("{origin}/auth/token")
        || exp <= now
        || exp > now + 300
        || jti.len() < 16
        || !s.jtis.lock().unwrap().insert(jti)
    {
        return refuse("claims: iss/sub/aud/exp/jti");
    }
    s.algorithms.lock().unwrap().push(alg.to_string());
    let (life, announced) = *s.token_life.lock().unwrap();
    let token = format!("tok-{}", s.jtis.lock().unwrap().len());
    s.tokens
        .lock()
        .unwrap()
        .insert(token.clone(), Instant::now() + life);
    axum::Json(json!({"access_token": token, "token_type": "bearer", "expires_in": announced, "scope": form["scope"]})).into_response()
}

async fn kick_off(
    State(s): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.record(&method, &uri, &headers);
    if let Some(refusal) = s.refuse_unless_authorized(&headers) {
        return refusal;
    }
    if uri.path().contains("/Group/") && !uri.path().contains("/Group/icu/") {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "Group unknown-ward is not known to this server",
        );
    }
    if s.take_fault(&[Fault::KickOff429]).is_some() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let since = query.get("_since").map(|t| at(t));
    let now = s.now();
    let origin = s.origin.lock().unwrap().clone();
    let files_origin = s.files_origin.lock().unwrap().clone();
    let mut exports = s.exports.lock().unwrap();
    let n = exports.len() + 1;
    // Two output files (odd and even resources), one deleted file.
    let changed: Vec<String> = s
        .resources
        .lock()
        .unwrap()
        .values()
        .filter(|(_, updated, _)| since.is_none_or(|t| *updated > t) && *updated <= now)
        .map(|(_, _, text)| text.clone())
        .collect();
    let mut files = s.files.lock().unwrap();
    let mut output = Vec::new();
    for (k, part) in [0, 1].iter().enumerate() {
        let lines: Vec<&String> = changed.iter().skip(*part).step_by(2).collect();
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if k == 0 && s.take_fault(&[Fault::LongLine]).is_some() {
            text.push_str(
                &observation("huge", 1, now)
                    .replace("\"final\"", &format!("\"{}\"", "x".repeat(4000))),
            );
            text.push('\n');
        }
        let name = format!("{n}-{k}.ndjson");
        files.insert(name.clone(), text);
        output.push(json!({"type": "Observation", "url": format!("{files_origin}/files/{name}"), "count": lines.len()}));
    }
    let mut deleted = Vec::new();
    if since.is_some() {
        let gone: Vec<String> = s
            .deleted
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, when)| since.is_none_or(|t| *when > t) && *when <= now)
            .map(|(id, _)| {
                json!({"resourceType": "Bundle", "type": "transaction",
                "entry": [{"request": {"method": "DELETE", "url": format!("Observation/{id}")}}]})
                .to_string()
            })
            .collect();
        let name = format!("{n}-deleted.ndjson");
        files.insert(
            name.clone(),
            gone.iter().map(|l| format!("{l}\n")).collect(),
        );
        deleted.push(json!({"type": "Bundle", "url": format!("{files_origin}/files/{name}")}));
    }
    let mut manifest = json!({"transactionTime": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "request": uri.to_string(), "requiresAccessToken": *s.requires_token.lock().unwrap(),
        "output": output, "deleted": deleted, "error": []});
    if s.take_fault(&[Fault::ForeignFiles]).is_some() {
        manifest["output"][0]["url"] = json!("http://127.0.0.2:9/files/stolen.ndjson");
    }
    if s.take_fault(&[Fault::ErrorFile]).is_some() {
        files.insert(format!("{n}-errors.ndjson"),
            "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"processing\",\"diagnostics\":\"Observation o9 could not be serialised\"}]}\n".into());
        manifest["error"] = json!([{"type": "OperationOutcome", "url": format!("{files_origin}/files/{n}-errors.ndjson")}]);
    }
    exports.insert(n, (0, manifest));
    (
        StatusCode::ACCEPTED,
        [("content-location", format!("{origin}/status/{n}"))],
    )
        .into_response()
}

async fn status(
    State(s): State<Arc<Server>>,
    Path(n): Path<usize>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.record(&method, &uri, &headers);
    if let Some(refusal) = s.refuse_unless_authorized(&headers) {
        return refusal;
    }
    if method == Method::DELETE {
        return StatusCode::ACCEPTED.into_response();
    }
    if s.take_fault(&[Fault::ExportFails]).is_some() {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        return outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            &format!("export failed: the store is read-only (request had {auth})"),
        );
    }
    if s.take_fault(&[Fault::Status503]).is_some() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "busy",
        )
            .into_response();
    }
    let mut exports = s.exports.lock().unwrap();
    let Some((polls, manifest)) = exports.get_mut(&n) else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such export");
    };
    *polls += 1;
    match *polls {
        1 => (
            StatusCode::ACCEPTED,
            [
                ("retry-after", "1"),
                ("x-progress", "40% (collecting Observations)"),
            ],
        )
            .into_response(),
        2 => (
            StatusCode::ACCEPTED,
            [("retry-after", "0"), ("x-progress", "90%")],
        )
            .into_response(),
        _ => ([("content-type", "application/json")], manifest.to_string()).into_response(),
    }
}

async fn file(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.record(&method, &uri, &headers);
    let needs_token = *s.requires_token.lock().unwrap();
    if needs_token && let Some(refusal) = s.refuse_unless_authorized(&headers) {
        return refusal;
    }
    match s.files.lock().unwrap().get(&name) {
        Some(text) => ([("content-type", "application/fhir+ndjson")], text.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// FHIR search: `_count`, `_lastUpdated=gt..`/`le..`, `page`; each page also includes a
/// Patient (`search.mode` include) that the table must skip.
async fn search(
    State(s): State<Arc<Server>>,
    Query(pairs): Query<Vec<(String, String)>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    s.record(&method, &uri, &headers);
    if let Some(refusal) = s.refuse_unless_authorized(&headers) {
        return refusal;
    }
    let count: usize = pairs
        .iter()
        .find(|(k, _)| k == "_count")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(10);
    let page: usize = pairs
        .iter()
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let keep = |t: DateTime<Utc>| {
        pairs
            .iter()
            .filter(|(k, _)| k == "_lastUpdated")
            .all(|(_, v)| {
                if let Some(x) = v.strip_prefix("gt") {
                    t > at(x)
                } else if let Some(x) = v.strip_prefix("le") {
                    t <= at(x)
                } else {
                    true
                }
            })
    };
    let all: Vec<String> = s
        .resources
        .lock()
        .unwrap()
        .values()
        .filter(|r| keep(r.1))
        .map(|r| r.2.clone())
        .collect();
    let mut entries: Vec<String> = all
        .iter()
        .skip(page * count)
        .take(count)
        .map(|text| format!(r#"{{"fullUrl":"x","resource":{text},"search":{{"mode":"match"}}}}"#))
        .collect();
    entries.push(
        r#"{"resource":{"resourceType":"Patient","id":"p1"},"search":{"mode":"include"}}"#.into(),
    );
    let mut links = vec![json!({"relation": "self", "url": uri.to_string()})];
    if (page + 1) * count < all.len() {
        let mut next: Vec<(String, String)> =
            pairs.iter().filter(|(k, _)| k != "page").cloned().collect();
        next.push(("page".into(), (page + 1).to_string()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        links.push(json!({"relation": "next", "url": format!("Observation?{query}")}));
    }
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","link":{},"entry":[{}]}}"#,
        Value::Array(links),
        entries.join(",")
    )
    .into_response()
}

/// The FHIR server (origin A) and its file host (origin B); `keys` are the registered public
/// keys by kid.
async fn start(keys: HashMap<String, (&'static str, Vec<u8>)>) -> (Arc<Server>, String, String) {
    let server = Arc::new(Server {
        clock: Mutex::new(at("2024-05-01T10:00:00Z")),
        resources: Mutex::new(BTreeMap::new()),
        deleted: Mutex::new(Vec::new()),
        keys,
        tokens: Mutex::new(HashMap::new()),
        token_life: Mutex::new((Duration::from_secs(3600), 3600)),
        jtis: Mutex::new(HashSet::new()),
        algorithms: Mutex::new(Vec::new()),
        exports: Mutex::new(HashMap::new()),
        files: Mutex::new(HashMap::new()),
        faults: Mutex::new(VecDeque::new()),
        log: Mutex::new(Vec::new()),
        files_origin: Mutex::new(String::new()),
        origin: Mutex::new(String::new()),
        requires_token: Mutex::new(false),
    });
    let app = Router::new()
        .route("/fhir/metadata", get(metadata))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/auth/token", post(token))
        .route("/fhir/$export", get(kick_off))
        .route("/fhir/Patient/$export", get(kick_off))
        .route("/fhir/Group/{id}/$export", get(kick_off))
        .route("/status/{n}", get(status).delete(status))
        .route("/fhir/Observation", get(search))
        .route("/files/{name}", get(file))
        .with_state(server.clone());
    let mut origins = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        origins.push(format!("http://{}", listener.local_addr().unwrap()));
        let app = app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    *server.origin.lock().unwrap() = origins[0].clone();
    *server.files_origin.lock().unwrap() = origins[1].clone();
    (server, origins[0].clone(), origins[1].clone())
}

fn rsa_key() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl generates the test's RSA key");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn ec_key() -> (String, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
    let pair = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(pkcs8.as_ref())
    );
    (pem, pair.public_key().as_ref().to_vec())
}

fn rsa_public(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(body).unwrap();
    signature::RsaKeyPair::from_pkcs8(&der)
        .unwrap()
        .public()
        .as_ref()
        .to_vec()
}

async fn engine(dir: &tempfile::TempDir, secrets: &[(&str, &str)]) -> Engine {
    let mut policy = Policy {
        allowed_hosts: vec!["127.0.0.1".into()],
        ..Policy::strict()
    };
    for (name, value) in secrets {
        policy = policy.with_secret(name, value);
    }
    Engine::open_with_sources(
        &location(dir),
        RuntimeSettings {
            memory_limit: None,
            spill_dir: None,
        },
        policy,
    )
    .await
    .unwrap()
}

async fn strings(engine: &Engine, sql: &str) -> Vec<String> {
    let batches = engine.query(sql).await.expect(sql);
    let mut out = Vec::new();
    for b in batches {
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let col = col.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..col.len()).map(|i| {
            if col.is_null(i) {
                "NULL".to_string()
            } else {
                col.value(i).to_string()
            }
        }));
    }
    out
}

async fn one_count(engine: &Engine, sql: &str) -> i64 {
    super::count(engine, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_rs384_incremental_with_deletes_into_auto_cdc() {
    let rsa = rsa_key();
    let (server, a, b) = start(HashMap::from([(
        "rsa-1".to_string(),
        ("RS384", rsa_public(&rsa)),
    )]))
    .await;
    for id in ["o1", "o2", "o3", "o4"] {
        server.put(id, "2024-05-01T09:00:00Z");
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, &[("FHIR_RSA_KEY", &rsa)]).await;
    engine.sql("CREATE SCHEMA fhir").await.unwrap();
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE fhir.observations STORED AS FHIR LOCATION '{a}/fhir' \
         OPTIONS ('resource' 'Observation', 'export' 'system', 'client_id' 'medlake', \
                  'private_key' '${{FHIR_RSA_KEY}}', 'key_id' 'rsa-1', 'file_origins' '{b}', \
                  'retry_backoff_ms' '10', 'poll_interval_seconds' '0')"
        ))
        .await
        .unwrap();
    server.fault(Fault::KickOff429);
    server.fault(Fault::Status503);
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.fhir_observations AS SELECT * FROM fhir.observations")
        .await
        .unwrap();
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM bronze.fhir_observations").await,
        4
    );
    // Every resource is kept exactly as the server wrote it.
    let kept = strings(
        &engine,
        "SELECT resource FROM bronze.fhir_observations ORDER BY id",
    )
    .await;
    let written: Vec<String> = server
        .resources
        .lock()
        .unwrap()
        .values()
        .map(|r| r.2.clone())
        .collect();
    assert_eq!(kept, written);
    assert_eq!(
        strings(
            &engine,
            "SELECT DISTINCT CAST(transaction_time AS VARCHAR) FROM bronze.fhir_observations"
        )
        .await,
        vec!["2024-05-01T10:00:00Z"]
    );

    // The flow on the wire: a token from a verified RS384 assertion, the kick-off (retried
    // after 429 + Retry-After: 1) without _since, polls honouring Retry-After, files on the
    // other origin fetched without credentials, the status URL deleted at the end.
    // One token at CREATE (its check of the server), one for the refresh: the high mark's
    // request and the export share it from the table's cache.
    assert_eq!(*server.algorithms.lock().unwrap(), vec!["RS384", "RS384"]);
    let kick_offs = server.requests("GET", "/fhir/$export");
    assert_eq!(kick_offs.len(), 2, "{kick_offs:?}");
    assert!(kick_offs[1].at - kick_offs[0].at >= Duration::from_millis(900));
    let k = &kick_offs[1];
    assert_eq!(
        k.query.get("_type").map(String::as_str),
        Some("Observation")
    );
    assert_eq!(k.query.get("_since"), None);
    assert_eq!(k.prefer.as_deref(), Some("respond-async"));
    assert_eq!(k.accept.as_deref(), Some("application/fhir+json"));
    assert!(
        k.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer tok-"))
    );
    let polls = server.requests("GET", "/status/");
    assert_eq!(polls.len(), 4, "503 (retried), 202, 202, 200: {polls:?}");
    assert!(
        polls[2].at - polls[1].at >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    let files = server.requests("GET", "/files/");
    assert_eq!(files.len(), 2);
    assert!(
        files.iter().all(|f| f.authorization.is_none()),
        "no credentials to another origin"
    );
    assert_eq!(server.requests("DELETE", "/status/").len(), 1);

    // The current table: AUTO CDC over bronze, deletions from the manifest's `deleted` output.
    engine.sql("CREATE MATERIALIZED VIEW silver.observations AS AUTO CDC FROM bronze.fhir_observations \
        KEYS (resource_type, id) APPLY AS DELETE WHEN deleted SEQUENCE BY last_updated \
        COLUMNS * EXCEPT (deleted, transaction_time)").await.unwrap();
    assert_eq!(
        strings(&engine, "SELECT id FROM silver.observations ORDER BY id").await,
        ["o1", "o2", "o3", "o4"]
    );

    // At the source: o2 changes, o5 is new, o3 is deleted, o6 changes within the watermark lag.
    server.put("o2", "2024-05-01T10:05:00Z");
    server.put("o5", "2024-05-01T10:05:00Z");
    server.delete("o3", "2024-05-01T10:06:00Z");
    server.put("o6", "2024-05-01T10:09:59Z");
    server.set_clock("2024-05-01T10:10:00Z");
    server.log.lock().unwrap().clear();
    engine
        .sql("REFRESH MATERIALIZED VIEW bronze.fhir_observations")
        .await
        .unwrap();
    let kick_off = &server.requests("GET", "/fhir/$export")[0];
    assert_eq!(
        kick_off.query.get("_since").map(String::as_str),
        Some("2024-05-01T09:59:58Z"),
        "_since: the last mark"
    );
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM bronze.fhir_observations").await,
        7
    );
    assert_eq!(
        strings(
            &engine,
            "SELECT id FROM bronze.fhir_observations WHERE deleted"
        )
        .await,
        ["o3"]
    );
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.observations")
        .await
        .unwrap();
    assert_eq!(
        strings(&engine, "SELECT id FROM silver.observations ORDER BY id").await,
        ["o1", "o2", "o4", "o5"]
    );
    let o2 = strings(
        &engine,
        "SELECT resource FROM silver.observations WHERE id = 'o2'",
    )
    .await;
    assert!(o2[0].contains(r#""versionId":"2""#), "{o2:?}");

    // The next refresh picks up what the lag held back, asking only for what followed.
    server.set_clock("2024-05-01T10:20:00Z");
    server.log.lock().unwrap().clear();
    engine
        .sql("REFRESH MATERIALIZED VIEW bronze.fhir_observations")
        .await
        .unwrap();
    assert_eq!(
        server.requests("GET", "/fhir/$export")[0]
            .query
            .get("_since")
            .map(String::as_str),
        Some("2024-05-01T10:09:58Z")
    );
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.observations")
        .await
        .unwrap();
    assert_eq!(
        strings(&engine, "SELECT id FROM silver.observations ORDER BY id").await,
        ["o1", "o2", "o4", "o5", "o6"]
    );
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM bronze.fhir_observations").await,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es384_search_paging_incremental_and_expiring_tokens() {
    let (ec, public) = ec_key();
    let (server, a, b) = start(HashMap::from([("ec-1".to_string(), ("ES384", public))])).await;
    for (i, id) in ["s1", "s2", "s3", "s4", "s5"].iter().enumerate() {
        server.put(id, &format!("2024-05-01T09:0{i}:00Z"));
    }
    // Tokens announced for an hour but dead after 1 s: the 401 makes the table ask again.
    *server.token_life.lock().unwrap() = (Duration::from_secs(1), 3600);
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir, &[("FHIR_EC_KEY", &ec)]).await;
    engine.sql("CREATE SCHEMA fhir").await.unwrap();
    engine.sql(&format!(
        "CREATE EXTERNAL TABLE fhir.search STORED AS FHIR LOCATION '{a}/fhir' \
         OPTIONS ('resource' 'Observation', 'mode' 'search', 'search' 'code=8867-4', 'page_size' '2', \
                  'client_id' 'medlake', 'private_key' '${{FHIR_EC_KEY}}', 'key_id' 'ec-1', 'algorithm' 'ES384')"
    )).await.unwrap();
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM fhir.search").await,
        5
    );
    let pages = server.requests("GET", "/fhir/Observation");
    assert_eq!(pages.len(), 3, "5 resources, 2 a page");
    assert_eq!(
        pages[0].query.get("code").map(String::as_str),
        Some("8867-4")
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        strings(&engine, "SELECT id FROM fhir.search ORDER BY id").await,
        ["s1", "s2", "s3", "s4", "s5"]
    );
    assert!(
        server
            .algorithms
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "ES384")
    );
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.search AS SELECT * FROM fhir.search")
        .await
        .unwrap();
    server.put("s6", "2024-05-01T10:05:00Z");
    server.set_clock("2024-05-01T10:10:00Z");
    server.log.lock().unwrap().clear();
    engine
        .sql("REFRESH MATERIALIZED VIEW bronze.search")
        .await
        .unwrap();
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM bronze.search").await,
        6
    );
    let query = &server.requests("GET", "/fhir/Observation")[0].query;
    assert_eq!(
        query.get("_lastUpdated").map(String::as_str),
        Some("le2024-05-01T10:09:58Z"),
        "{query:?}"
    );
    let deleted = engine
        .query("SELECT deleted FROM bronze.search")
        .await
        .unwrap();
    assert!(deleted.iter().all(|b| {
        b.column(0)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap()
            .true_count()
            == 0
    }));

    // A Patient-level export whose token dies while the export runs (announced for an hour,
    // refused after 1 s, during the 1 s Retry-After): the poll's 401 brings a new token.
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE fhir.patients_obs STORED AS FHIR LOCATION '{a}/fhir' \
         OPTIONS ('resource' 'Observation', 'export' 'patient', 'client_id' 'medlake', \
                  'private_key' '${{FHIR_EC_KEY}}', 'key_id' 'ec-1', 'file_origins' '{b}', \
                  'poll_interval_seconds' '0')"
        ))
        .await
        .unwrap();
    let before = server.algorithms.lock().unwrap().len();
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM fhir.patients_obs").await,
        6
    );
    assert_eq!(server.requests("GET", "/fhir/Patient/$export").len(), 1);
    let tokens = server.algorithms.lock().unwrap().len() - before;
    assert!(tokens >= 2, "a new token after the 401: {tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_explained_and_never_show_credentials() {
    let (server, a, b) = start(HashMap::new()).await;
    server.put("o1", "2024-05-01T09:00:00Z");
    *server.requires_token.lock().unwrap() = true;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(
        &dir,
        &[
            ("FHIR_TOKEN", BEARER),
            ("WRONG_TOKEN", "fhir-wrong-token-99"),
        ],
    )
    .await;
    engine.sql("CREATE SCHEMA fhir").await.unwrap();
    let create = |name: &str, extra: &str| {
        format!(
            "CREATE EXTERNAL TABLE fhir.{name} STORED AS FHIR LOCATION '{a}/fhir' \
         OPTIONS ('resource' 'Observation', 'bearer_token' '${{FHIR_TOKEN}}', 'file_origins' '{b}', \
                  'max_retries' '1', 'retry_backoff_ms' '10', 'poll_interval_seconds' '0'{extra})"
        )
    };

    // A refused token fails CREATE (HV00N), with the server's words and no token.
    let e = engine
        .sql(&create("wrong", "").replace("FHIR_TOKEN", "WRONG_TOKEN"))
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "HV00N", "{e}");
    assert!(
        e.to_string().contains("expired") && !e.to_string().contains("fhir-wrong-token-99"),
        "{e}"
    );
    // Literal secrets and bad options never get stored.
    let e = engine
        .sql(&create("literal", "").replace("${FHIR_TOKEN}", "abc"))
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "HV024", "{e}");

    // requiresAccessToken: files on the other origin get no token (and this host refuses
    // them): the error says so; files on the server's origin or a token origin get it.
    engine.sql(&create("obs", "")).await.unwrap();
    let e = engine.query("SELECT * FROM fhir.obs").await.unwrap_err();
    assert_eq!(e.code().sqlstate(), "HV00N", "{e}");
    assert!(e.to_string().contains("file 1 of 2"), "{e}");
    engine
        .sql(&create("obs_token", &format!(", 'token_origins' '{b}'")))
        .await
        .unwrap();
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM fhir.obs_token").await,
        1
    );
    let files = server.requests("GET", "/files/");
    assert!(files.last().unwrap().authorization.as_deref() == Some(&format!("Bearer {BEARER}")));

    // An export that fails: the OperationOutcome is in the error, the token is masked, and
    // neither the failed refresh nor the system tables hold it.
    server.fault(Fault::ExportFails);
    server.fault(Fault::ExportFails);
    let e = engine
        .query("SELECT * FROM fhir.obs_token")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.code().sqlstate(), "HV000", "{e}");
    assert!(
        text.contains("export failed: the store is read-only") && text.contains("***"),
        "{text}"
    );
    assert!(!text.contains(BEARER), "{text}");
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.obs AS SELECT * FROM fhir.obs_token")
        .await
        .unwrap();
    server.put("o2", "2024-05-01T09:30:00Z");
    server.set_clock("2024-05-01T10:10:00Z");
    server.fault(Fault::ExportFails);
    server.fault(Fault::ExportFails);
    let refresh = engine.sql("REFRESH MATERIALIZED VIEW bronze.obs").await;
    assert!(refresh.is_err() || format!("{refresh:?}").contains("read-only"));
    for table in ["refreshes", "sources", "materialized_views"] {
        let rows = engine
            .query(&format!("SELECT * FROM system.{table}"))
            .await
            .unwrap();
        let shown = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(!shown.contains(BEARER), "system.{table} shows the token");
        if table == "refreshes" {
            assert!(
                shown.contains("read-only"),
                "the failure is recorded: {shown}"
            );
        }
    }
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM bronze.obs").await,
        1,
        "nothing committed"
    );

    // Unknown group: the server's OperationOutcome.
    engine
        .sql(&create("ward", ", 'export' 'group/unknown-ward'"))
        .await
        .unwrap();
    let e = engine.query("SELECT * FROM fhir.ward").await.unwrap_err();
    assert!(
        e.to_string().contains("Group unknown-ward is not known"),
        "{e}"
    );
    // Files on an origin the table does not list: refused (42501), never fetched.
    server.fault(Fault::ForeignFiles);
    let e = engine
        .query("SELECT * FROM fhir.obs_token")
        .await
        .unwrap_err();
    assert_eq!(e.code().sqlstate(), "42501", "{e}");
    // An error file fails the read unless allowed.
    server.fault(Fault::ErrorFile);
    let e = engine
        .query("SELECT * FROM fhir.obs_token")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("o9 could not be serialised"), "{e}");
    engine
        .sql(&create(
            "tolerant",
            &format!(", 'token_origins' '{b}', 'allow_export_errors' 'true'"),
        ))
        .await
        .unwrap();
    server.fault(Fault::ErrorFile);
    assert_eq!(
        one_count(&engine, "SELECT count(*) FROM fhir.tolerant").await,
        2
    );
    // A line over max_line_bytes fails cleanly.
    engine
        .sql(&create(
            "small",
            &format!(", 'token_origins' '{b}', 'max_line_bytes' '2048'"),
        ))
        .await
        .unwrap();
    server.fault(Fault::LongLine);
    let e = engine.query("SELECT * FROM fhir.small").await.unwrap_err();
    assert!(e.to_string().contains("longer than max_line_bytes"), "{e}");
    // Every export was deleted at the end, failed or not.
    assert_eq!(
        server.requests("DELETE", "/status/").len(),
        server.exports.lock().unwrap().len()
    );
}
