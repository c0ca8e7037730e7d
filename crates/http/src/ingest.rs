//! `POST /v1/ingest/{schema}.{table}`: validation, micro-batching, durable acknowledgement.
//!
//! Each table has one writer task (the engine's [`Writers`], shared with the MLLP door).
//! Requests queue for it (a bounded queue: a full one answers 503); the writer takes everything
//! queued, drops requests whose `Idempotency-Key` an earlier commit already holds (answered as
//! duplicates), and appends the rest in one commit that records their keys. Only then are they
//! answered 200. A request costs no lookup of its table after the first (the table and its
//! schema are remembered until the writer finds it dropped or replaced).

use medlake_common::Code;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use medlake_engine::ingest::IngestKey;
use medlake_engine::push::{Push, PushConfig, PushError, PushObserver, Pushed, Writers};
use medlake_engine::{Engine, TableName};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::decode::{self, BodyError, Refused};
use crate::metrics::Metrics;
use crate::{Auth, Config};

/// What happens to rows that fail validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidRows {
    /// The request is refused (422) with every row's reason; nothing is written.
    Refuse,
    /// Valid rows are written; the others go to `<table>_quarantine` with their reasons.
    Quarantine,
}

/// Most reasons listed in one 422 answer.
const MAX_REASONS: usize = 100;

#[derive(Clone)]
pub(crate) struct State {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    auth: Auth,
    max_body: usize,
    in_flight: Semaphore,
    invalid_rows: HashMap<String, InvalidRows>,
    body_read_timeout: std::time::Duration,
    /// Tables requests were resolved to, with their schemas (see [`resolve`]).
    targets: Arc<RwLock<HashMap<TableName, SchemaRef>>>,
    writers: Writers,
    metrics: Arc<Metrics>,
}

impl State {
    pub fn new(engine: Engine, config: &Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let targets = Arc::new(RwLock::new(HashMap::new()));
        let push = PushConfig {
            queue: config.queue_requests.max(1),
            key_commits: config.key_commits,
            door: medlake_engine::Door::Http,
            quarantine_schema: Some(decode::quarantine_schema()),
        };
        let observer = Arc::new(Observer {
            metrics: metrics.clone(),
            targets: targets.clone(),
        });
        Self {
            inner: Arc::new(Inner {
                writers: Writers::new(engine.clone(), push, observer),
                engine,
                auth: config.auth.clone(),
                max_body: config.max_body_bytes,
                in_flight: Semaphore::new(config.max_in_flight.max(1)),
                invalid_rows: config
                    .invalid_rows
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), *v))
                    .collect(),
                body_read_timeout: config.body_read_timeout,
                targets,
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// An error answer.
#[derive(Clone, Debug)]
struct Failure {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
            retry_after: None,
        }
    }

    fn busy(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(status, message)
        }
    }

    fn engine(e: &medlake_engine::Error) -> Self {
        let code = e.code();
        let status = http_status(code);
        let mut failure = Self::new(status, e.to_string());
        failure.body["sqlstate"] = json!(code.sqlstate());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            failure.retry_after = Some(1);
        }
        failure
    }
}

impl Failure {
    /// The writer's answer: nothing of the request was written.
    fn push(inner: &Inner, table: &TableName, e: &PushError) -> Self {
        match e {
            PushError::Engine(e) => {
                if e.code() == Code::UndefinedTable {
                    forget_target(inner, table);
                }
                Self::engine(e)
            }
            PushError::KeyReused(key) => Self::key_reused(key),
            PushError::Retry(why) => Self::busy(
                StatusCode::SERVICE_UNAVAILABLE,
                why.replace("idempotency key", "Idempotency-Key"),
            ),
        }
    }

    /// An `Idempotency-Key` already committed (or being committed) for another request: a
    /// different body or another token. Nothing is written: taking it for a retry would drop
    /// the rows silently.
    fn key_reused(key: &str) -> Self {
        let mut failure = Self::new(
            StatusCode::CONFLICT,
            format!(
                "Idempotency-Key '{key}' was already used for another request (another body or \
                 another token); nothing was written: send new rows under a new key"
            ),
        );
        failure.body["sqlstate"] = json!(Code::UniqueViolation.sqlstate());
        failure
    }
}

/// The HTTP status of each failure kind (one entry per kind: a new kind must be placed here).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::UndefinedTable | Code::UndefinedSchema => StatusCode::NOT_FOUND,
        Code::InsufficientPrivilege => StatusCode::FORBIDDEN,
        Code::InvalidAuthorization | Code::InvalidPassword => StatusCode::UNAUTHORIZED,
        Code::SerializationFailure
        | Code::ObjectInUse
        | Code::OutOfMemory
        | Code::FdwUnableToEstablishConnection
        | Code::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::UniqueViolation => StatusCode::CONFLICT,
        Code::FeatureNotSupported
        | Code::DataException
        | Code::NumericValueOutOfRange
        | Code::InvalidParameterValue
        | Code::InvalidTextRepresentation
        | Code::DivisionByZero
        | Code::NotNullViolation
        | Code::CheckViolation
        | Code::SyntaxError
        | Code::UndefinedFunction
        | Code::UndefinedColumn
        | Code::UndefinedObject
        | Code::DuplicateTable
        | Code::DuplicateSchema
        | Code::DuplicateObject
        | Code::DatatypeMismatch
        | Code::WrongObjectType
        | Code::InvalidObjectDefinition
        | Code::ProtocolViolation
        | Code::FdwInvalidDataType
        | Code::FdwInvalidOptionName
        | Code::FdwInvalidAttributeValue
        | Code::FdwNoSchemas => StatusCode::UNPROCESSABLE_ENTITY,
        Code::ProgramLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        Code::DependentObjectsStillExist
        | Code::CantChangeRuntimeParam
        | Code::ObjectNotInPrerequisiteState
        | Code::InvalidCatalogName
        | Code::FdwTableNotFound => StatusCode::UNPROCESSABLE_ENTITY,
        Code::QueryCanceled => StatusCode::GATEWAY_TIMEOUT,
        Code::Warning
        | Code::Internal
        | Code::IoError
        | Code::UndefinedFile
        | Code::FdwError
        | Code::FdwInvalidStringFormat => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"medlake\""),
            );
        }
        response
    }
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(Extract(state): Extract<State>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().text()
            + &result_cache_text(&state.inner.engine)
            + &state.inner.engine.metrics_text().await,
    )
        .into_response()
}

/// The result and plan caches' series (engine-wide: every door's queries).
fn result_cache_text(engine: &medlake_engine::Engine) -> String {
    let stats = engine.result_cache_stats();
    let plans = engine.plan_cache_stats();
    let series = [
        (
            "medlake_result_cache_hits_total",
            "counter",
            "Queries answered by the result cache.",
            stats.hits,
        ),
        (
            "medlake_result_cache_misses_total",
            "counter",
            "Cacheable queries the result cache could not answer.",
            stats.misses,
        ),
        (
            "medlake_result_cache_bytes",
            "gauge",
            "Bytes of rows the result cache holds.",
            stats.bytes as u64,
        ),
        (
            "medlake_result_cache_entries",
            "gauge",
            "Results the result cache holds.",
            stats.entries as u64,
        ),
        (
            "medlake_plan_cache_hits_total",
            "counter",
            "Executions of prepared statements that reused a kept plan.",
            plans.hits,
        ),
        (
            "medlake_plan_cache_misses_total",
            "counter",
            "Executions of prepared statements that were planned.",
            plans.misses,
        ),
        (
            "medlake_plan_cache_entries",
            "gauge",
            "Plans the plan cache holds.",
            plans.entries as u64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in series {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

pub(crate) async fn health(Extract(state): Extract<State>) -> Response {
    match state.inner.engine.warehouse().schema_exists("public").await {
        Ok(true) => (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response(),
        Ok(false) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the warehouse has no public schema",
        )
        .into_response(),
        Err(e) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the warehouse cannot be read: {e}"),
        )
        .into_response(),
    }
}

/// The label of `/metrics` series for requests that did not reach a table their token may
/// push into (no or unknown token, a table outside its scope or missing, a malformed target):
/// one fixed series, so that what unauthenticated clients send cannot grow the metrics.
pub(crate) const OTHER_TARGET: &str = "_other";

/// Who sent a request, once its token is checked.
#[derive(Clone, Debug)]
pub(crate) struct Authenticated {
    /// The token's name (never its secret); `None` without authentication (`InsecureNoAuth`).
    pub token: Option<String>,
}

/// The address of a request's client (set on each connection).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub std::net::SocketAddr);

pub(crate) async fn handle(
    Extract(state): Extract<State>,
    Path(target): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let inner = &state.inner;
    // Only a request whose token may push into an existing table gets that table's series.
    let mut label = OTHER_TARGET.to_string();
    let result = ingest(inner, &target, &headers, body, &mut label).await;
    match result {
        Ok(ack) => {
            inner.metrics.request(&label, 200);
            if ack.duplicate {
                inner.metrics.duplicate();
            }
            let mut body = json!({
                "table": label,
                "rows": ack.rows,
                "version": ack.version,
                "duplicate": ack.duplicate,
            });
            if ack.quarantined > 0 {
                body["quarantined"] = json!(ack.quarantined);
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(failure) => {
            inner.metrics.request(&label, failure.status.as_u16());
            if matches!(
                failure.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                audit_refused(
                    inner,
                    peer.map(|p| p.0.0),
                    &headers,
                    &target,
                    failure.status,
                );
            }
            failure.into_response()
        }
    }
}

/// One request: who sent it and whether it may push into `target` (the table must exist) are
/// settled from its headers before a byte of its body is read; then the body is read, within
/// the size limit and the body deadline.
async fn ingest(
    inner: &Arc<Inner>,
    target: &str,
    headers: &HeaderMap,
    body: Body,
    label: &mut String,
) -> Result<Pushed, Failure> {
    let who = authenticate(inner, headers, target)?;
    let key = idempotency_key(headers)?;
    let started = Instant::now();
    let (table, mut schema, remembered) = resolve(inner, target).await?;
    *label = table.to_string();
    let t_target = started.elapsed().as_micros() as u64;
    let (gzip, array) = body_format(headers)?;
    let Ok(_permit) = inner.in_flight.try_acquire() else {
        return Err(Failure::busy(
            StatusCode::TOO_MANY_REQUESTS,
            "too many ingest requests in flight; retry with the same Idempotency-Key",
        ));
    };
    inner.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&inner.metrics);
    let raw = read_body(inner, headers, body).await?;
    let key = key.map(|key| IngestKey {
        key,
        body_sha256: Some(sha256_hex(&raw)),
        token: who.token.clone(),
    });
    let body = if gzip {
        decode::gunzip(&raw, inner.max_body).map_err(body_failure)?
    } else {
        raw.to_vec()
    };
    drop(raw);
    let array =
        array.unwrap_or_else(|| body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'['));
    let mode = inner
        .invalid_rows
        .get(&table.to_string())
        .copied()
        .unwrap_or(InvalidRows::Refuse);
    // A refused request lists the first reasons only; a quarantine keeps every row's.
    let keep = match mode {
        InvalidRows::Refuse => MAX_REASONS,
        InvalidRows::Quarantine => usize::MAX,
    };
    let values = decode::values(&body, array).map_err(body_failure)?;
    let total = values.len();
    let mut checked = decode::rows(&schema, values, keep);
    if checked.refused_total > 0 && remembered {
        // The remembered schema may be that of a table since dropped and created again:
        // look again before refusing anything.
        forget_target(inner, &table);
        let (_, now, _) = resolve(inner, target).await?;
        if now.fields() != schema.fields() {
            schema = now;
            let values = decode::values(&body, array).map_err(body_failure)?;
            checked = decode::rows(&schema, values, keep);
        }
    }
    let decode::Checked {
        batch: rows,
        refused,
        refused_total,
    } = checked;
    if refused_total > 0 {
        inner.metrics.refused(refused_total as u64);
        if mode == InvalidRows::Refuse {
            return Err(refusal(refused, refused_total, total));
        }
    }
    let quarantine = (!refused.is_empty())
        .then(|| decode::quarantine_rows(&refused, key.as_ref().map(|k| k.key.as_str())));
    let push = Push {
        schema,
        rows,
        quarantine,
        key,
        sender: who.token.clone(),
    };
    let t_decode = started.elapsed().as_micros() as u64 - t_target;
    let answer = inner
        .writers
        .push(&table, push)
        .await
        .map_err(|e| Failure::push(inner, &table, &e));
    debug!(
        %table,
        target_us = t_target,
        decode_us = t_decode,
        wait_us = started.elapsed().as_micros() as u64 - t_target - t_decode,
        "ingest request"
    );
    answer
}

/// The request's `Idempotency-Key`, if it sent one (1 to 200 visible ASCII characters).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 200 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

/// How the body is sent: gzip or not, and a JSON array (`Some(true)`), NDJSON
/// (`Some(false)`) or to be told by its first byte (`None`).
fn body_format(headers: &HeaderMap) -> Result<(bool, Option<bool>), Failure> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let gzip = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding '{other}' is not supported; send gzip or nothing"),
            ));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let array = if content_type.starts_with("application/json") {
        Some(true)
    } else if content_type.is_empty() {
        None
    } else if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
        || content_type.starts_with("application/jsonlines")
        || content_type.starts_with("text/plain")
    {
        Some(false)
    } else {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type '{content_type}': send application/x-ndjson or application/json"),
        ));
    };
    Ok((gzip, array))
}

/// The `422` of a request whose invalid rows are refused: nothing is written.
fn refusal(refused: Vec<Refused>, refused_total: usize, total: usize) -> Failure {
    let mut body = json!({
        "error": format!("{refused_total} of {total} rows were refused; nothing was written"),
        "rows": refused,
    });
    if refused_total > refused.len() {
        body["more_rows_refused"] = json!(refused_total - refused.len());
    }
    Failure {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body,
        retry_after: None,
    }
}

/// The table `target` names and its schema, and whether they were remembered: looked up in
/// the warehouse the first time (is it a Delta table rows may be pushed into?), then
/// remembered until its writer finds it dropped or replaced (a table's schema is fixed for its
/// life).
async fn resolve(inner: &Inner, target: &str) -> Result<(TableName, SchemaRef, bool), Failure> {
    let name = Engine::ingest_name(target).map_err(|e| Failure::engine(&e))?;
    let known = inner
        .targets
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&name)
        .cloned();
    if let Some(schema) = known {
        return Ok((name, schema, true));
    }
    let (table, schema) = inner
        .engine
        .ingest_target(target)
        .await
        .map_err(|e| Failure::engine(&e))?;
    inner
        .targets
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(table.clone(), schema.clone());
    Ok((table, schema, false))
}

fn forget_target(inner: &Inner, table: &TableName) {
    inner
        .targets
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(table);
}

fn body_failure(e: BodyError) -> Failure {
    let status = match e {
        BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    Failure::new(status, e.to_string())
}

/// The bearer token a request presents, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

/// Records a request refused for its credentials (401) or their scope (403) in
/// `system.audit`, as the token's name when it is a known token.
fn audit_refused(
    inner: &Inner,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    target: &str,
    status: StatusCode,
) {
    let presented = bearer(headers);
    let claimed = match (&inner.auth, presented) {
        (Auth::Tokens(tokens), Some(presented)) => tokens
            .iter()
            .find(|t| t.matches(presented.trim()))
            .map_or_else(|| "(unknown bearer token)".to_string(), |t| t.name.clone()),
        (_, None) => "(no credentials)".into(),
        _ => "(bearer token)".into(),
    };
    let (code, what) = if status == StatusCode::FORBIDDEN {
        // The target is the client's text: quoted as a literal, so normalized away unless it
        // names a table.
        let what = match Engine::ingest_name(target) {
            Ok(table) => format!("INGEST INTO {table}"),
            Err(_) => "INGEST INTO ?".into(),
        };
        (Code::InsufficientPrivilege, what)
    } else {
        (Code::InvalidAuthorization, "LOGIN".into())
    };
    let door = medlake_engine::Door::Http;
    let client = peer.map(|p| p.to_string());
    if let Err(e) = inner
        .engine
        .audit_refused(door, client, &claimed, &what, code)
    {
        tracing::warn!(target: "medlake::audit", error = %e, "a refused request could not be audited");
    }
}

/// Who sent a request and whether they may push into `target`: the bearer token is checked
/// against the configured ones (in constant time) and its table scope against `target`, from
/// the headers alone. No or unknown token `401`, a table outside the token's scope `403`.
fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    target: &str,
) -> Result<Authenticated, Failure> {
    let tokens = match &inner.auth {
        Auth::InsecureNoAuth => return Ok(Authenticated { token: None }),
        Auth::Tokens(tokens) => tokens,
    };
    let presented = bearer(headers).ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token>",
        )
    })?;
    let token = tokens
        .iter()
        .find(|t| t.matches(presented.trim()))
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "unknown bearer token"))?;
    // The privilege is the engine's to decide, for the token's principal.
    let allowed = Engine::ingest_name(target).is_ok_and(|table| {
        inner
            .engine
            .session_for(token.principal())
            .authorize_ingest(&table)
            .is_ok()
    });
    if allowed {
        Ok(Authenticated {
            token: Some(token.name.clone()),
        })
    } else {
        Err(Failure::new(
            StatusCode::FORBIDDEN,
            format!(
                "token '{}' may not push into {}",
                token.name,
                bounded_target(target)
            ),
        ))
    }
}

/// A target as quoted back in an answer (it is whatever the client sent).
fn bounded_target(target: &str) -> String {
    if target.len() <= 200 {
        return target.to_string();
    }
    let mut end = 200;
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &target[..end])
}

/// Keeps the in-flight gauge right however the request ends.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads a request body (after the token check): at most `max_body` bytes (a larger
/// `Content-Length` is refused before reading), within the body deadline.
async fn read_body(inner: &Inner, headers: &HeaderMap, body: Body) -> Result<Bytes, Failure> {
    let limit = inner.max_body;
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buffer = bytes::BytesMut::with_capacity(
            declared.map_or(0, |n| n as usize).min(limit).min(1 << 20),
        );
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body could not be read: {e}"),
                )
            })?;
            if buffer.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    };
    match tokio::time::timeout(inner.body_read_timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body was not received within {} s",
                inner.body_read_timeout.as_secs_f64()
            ),
        )),
    }
}

/// Lowercase hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// What the door hears of its writers: commits and quarantines for its metrics, and tables
/// found dropped or replaced, whose remembered schema it forgets.
struct Observer {
    metrics: Arc<Metrics>,
    targets: Arc<RwLock<HashMap<TableName, SchemaRef>>>,
}

impl PushObserver for Observer {
    fn committed(&self, table: &TableName, rows: u64, micros: u64) {
        self.metrics.committed(&table.to_string(), rows, micros);
    }

    fn quarantined(&self, rows: u64) {
        self.metrics.quarantined(rows);
    }

    fn forget(&self, table: &TableName) {
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(table);
    }
}
