//! `POST /v1/ingest/{schema}.{table}`: validation, micro-batching, durable acknowledgement.
//!
//! Each table has one writer task. Requests queue for it (a bounded queue: a full one answers
//! 503); the writer takes everything queued, drops requests whose `Idempotency-Key` an earlier
//! commit already holds (answered as duplicates), and appends the rest in one commit that
//! records their keys. Only then are they answered 200.
//!
//! The writer keeps its table open between commits, with the keys of its recent commits, and
//! commits directly on top of the version it knows: when another process committed meanwhile
//! the commit fails without writing anything, the writer reads just the newer commits (whose
//! keys may turn requests into duplicates) and tries again. A commit thus costs no listing of
//! the log and no reload of the table; a request costs no lookup of its table after the first
//! (the table and its schema are remembered until the writer finds it dropped or replaced).

use medlake_common::Code;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use medlake_engine::ingest::{IngestKey, IngestTable};
use medlake_engine::{Engine, TableName};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

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
    queue_requests: usize,
    in_flight: Semaphore,
    invalid_rows: HashMap<String, InvalidRows>,
    key_commits: usize,
    body_read_timeout: std::time::Duration,
    /// Tables requests were resolved to, with their schemas (see [`resolve`]).
    targets: RwLock<HashMap<TableName, SchemaRef>>,
    writers: Mutex<HashMap<TableName, mpsc::Sender<Pending>>>,
    metrics: Metrics,
}

impl State {
    pub fn new(engine: Engine, config: &Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                auth: config.auth.clone(),
                max_body: config.max_body_bytes,
                queue_requests: config.queue_requests.max(1),
                in_flight: Semaphore::new(config.max_in_flight.max(1)),
                invalid_rows: config
                    .invalid_rows
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), *v))
                    .collect(),
                key_commits: config.key_commits,
                body_read_timeout: config.body_read_timeout,
                targets: RwLock::new(HashMap::new()),
                writers: Mutex::new(HashMap::new()),
                metrics: Metrics::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

/// A validated request waiting for its commit.
struct Pending {
    schema: SchemaRef,
    rows: Option<RecordBatch>,
    quarantine: Vec<Refused>,
    key: Option<IngestKey>,
    /// The token that sent it (its name), for the audit.
    token: Option<String>,
    answer: oneshot::Sender<Result<Ack, Failure>>,
}

#[derive(Clone, Debug)]
struct Ack {
    rows: u64,
    quarantined: u64,
    version: Option<u64>,
    duplicate: bool,
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
) -> Result<Ack, Failure> {
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
    let (answer, answered) = oneshot::channel();
    let pending = Pending {
        schema,
        rows,
        quarantine: refused,
        key,
        token: who.token.clone(),
        answer,
    };
    let t_decode = started.elapsed().as_micros() as u64 - t_target;
    enqueue(inner, &table, pending).await?;
    let answer = answered.await.unwrap_or_else(|_| {
        Err(Failure::busy(
            StatusCode::SERVICE_UNAVAILABLE,
            "the writer stopped before committing; retry with the same Idempotency-Key",
        ))
    });
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

/// Hands a checked request to its table's writer (503 when its queue is full).
async fn enqueue(inner: &Arc<Inner>, table: &TableName, pending: Pending) -> Result<(), Failure> {
    let writer = writer(inner, table).await;
    match writer.try_send(pending) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Failure::busy(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ingest queue of {table} is full; retry with the same Idempotency-Key"),
        )),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            inner.writers.lock().await.remove(table);
            Err(Failure::busy(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the writer of {table} stopped; retry"),
            ))
        }
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

/// The writer task of `table`, started on first use.
async fn writer(inner: &Arc<Inner>, table: &TableName) -> mpsc::Sender<Pending> {
    let mut writers = inner.writers.lock().await;
    if let Some(tx) = writers.get(table).filter(|tx| !tx.is_closed()) {
        return tx.clone();
    }
    let (tx, rx) = mpsc::channel(inner.queue_requests);
    writers.insert(table.clone(), tx.clone());
    tokio::spawn(write_loop(inner.clone(), table.clone(), rx));
    tx
}

/// Most attempts at one group's commit when other writers keep committing first.
const MAX_ATTEMPTS: usize = 8;

/// What a writer task keeps between commits: its table and quarantine table held open at the
/// newest version it knows, with the idempotency keys of their recent commits. `None` until
/// the first group, and again after a failure that leaves the state in doubt.
#[derive(Default)]
struct Logs {
    table: Option<IngestTable>,
    quarantine: Option<IngestTable>,
}

async fn write_loop(inner: Arc<Inner>, table: TableName, mut rx: mpsc::Receiver<Pending>) {
    let quarantine = TableName::new(&table.schema, format!("{}_quarantine", table.table)).ok();
    let mut logs = Logs::default();
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        commit_group(&inner, &table, quarantine.as_ref(), &mut logs, group).await;
    }
}

fn answer_all(group: Vec<Pending>, failure: &Failure) {
    for p in group {
        let _ = p.answer.send(Err(failure.clone()));
    }
}

/// A failure to open or refresh a table's log: the table is gone (404: it is forgotten, so
/// the next request looks it up again) or cannot be read now (503).
fn log_failure(inner: &Inner, table: &TableName, e: &medlake_engine::Error) -> Failure {
    if e.code() == Code::UndefinedTable {
        forget_target(inner, table);
        Failure::engine(e)
    } else {
        warn!(%table, error = %e, "reading the ingest log");
        Failure::busy(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the log of {table}; retry"),
        )
    }
}

/// Opens the table's ingest log unless the writer holds it already.
async fn open_log(inner: &Arc<Inner>, table: &TableName, logs: &mut Logs) -> Result<(), Failure> {
    if logs.table.is_none() {
        let log = inner
            .engine
            .ingest_open(table, inner.key_commits, false)
            .await
            .map_err(|e| log_failure(inner, table, &e))?;
        logs.table = Some(log);
    }
    Ok(())
}

/// Commits one group of requests: duplicates are answered as such, the rest are appended in
/// one commit on top of the version the writer knows. If someone else committed since, the
/// writer reads just those commits (their keys may make more requests duplicates) and tries
/// again.
async fn commit_group(
    inner: &Arc<Inner>,
    table: &TableName,
    quarantine: Option<&TableName>,
    logs: &mut Logs,
    mut group: Vec<Pending>,
) {
    let started = Instant::now();
    if let Err(failure) = open_log(inner, table, logs).await {
        return answer_all(group, &failure);
    }
    let (mut t_refresh, mut t_quarantine, mut t_append) = (0u128, 0u128, 0u128);
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(log) = logs.table.as_mut() else {
            return;
        };
        let (writing, followers) = sort_out_keys(log, group);
        if writing.is_empty() {
            return;
        }
        // The quarantine commit goes first: a crash before the table's commit leaves the
        // request unanswered, and its retry skips what the quarantine already holds.
        let t = Instant::now();
        let quarantined = match quarantine {
            Some(q) => match commit_quarantine(inner, q, &mut logs.quarantine, &writing).await {
                Ok(quarantined) => quarantined,
                Err(failure) => {
                    answer_all(writing, &failure);
                    return answer_all(followers, &failure);
                }
            },
            None => HashMap::new(),
        };
        t_quarantine += t.elapsed().as_micros();
        let Some(log) = logs.table.as_mut() else {
            return;
        };
        let batches: Vec<RecordBatch> = writing.iter().filter_map(|p| p.rows.clone()).collect();
        let row_counts: Vec<u64> = writing
            .iter()
            .map(|p| p.rows.as_ref().map_or(0, |b| b.num_rows() as u64))
            .collect();
        let result = if batches.is_empty() {
            Ok(log.version())
        } else {
            let new_keys: Vec<IngestKey> = writing.iter().filter_map(|p| p.key.clone()).collect();
            let schema = writing[0].schema.clone();
            let t = Instant::now();
            let appended = inner
                .engine
                .ingest_append(log, schema, batches, &new_keys, &senders(&writing))
                .await;
            t_append += t.elapsed().as_micros();
            match appended {
                Ok(Some(done)) => {
                    inner.metrics.committed(
                        &table.to_string(),
                        done.rows,
                        t.elapsed().as_micros() as u64,
                    );
                    debug!(
                        %table,
                        rows = done.rows,
                        version = done.version,
                        requests = writing.len(),
                        attempt,
                        refresh_us = t_refresh as u64,
                        quarantine_us = t_quarantine as u64,
                        append_us = t_append as u64,
                        total_us = started.elapsed().as_micros() as u64,
                        "ingest commit"
                    );
                    Ok(Some(done.version))
                }
                Ok(None) => {
                    // Someone committed since the version this writer knows: read just that.
                    debug!(%table, attempt, "ingest commit behind; refreshing");
                    let t = Instant::now();
                    let refreshed = inner.engine.ingest_refresh(log).await;
                    t_refresh += t.elapsed().as_micros();
                    group = writing.into_iter().chain(followers).collect();
                    match refreshed {
                        Ok(false) => continue,
                        // Another table under this name now: its schema may differ from
                        // the one these rows were checked against.
                        Ok(true) => {
                            forget_target(inner, table);
                            return answer_all(
                                group,
                                &Failure::busy(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    format!("{table} was replaced; retry"),
                                ),
                            );
                        }
                        Err(e) => {
                            logs.table = None;
                            return answer_all(group, &log_failure(inner, table, &e));
                        }
                    }
                }
                Err(e) => {
                    warn!(%table, error = %e, "ingest commit failed");
                    Err(Failure::engine(&e))
                }
            }
        };
        answer_group(writing, row_counts, followers, &result, &quarantined);
        return;
    }
    answer_all(
        group,
        &Failure::busy(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("other writers kept committing to {table} first; retry"),
        ),
    );
}

/// Splits a group by idempotency key: the requests to write (no key, or the first of a new
/// key) and the followers (the same key again in this group, answered like the first).
/// Requests whose key is committed are answered now: duplicates, unless they are provably
/// another request under a used key (another body or token: 409, nothing written).
fn sort_out_keys(log: &IngestTable, group: Vec<Pending>) -> (Vec<Pending>, Vec<Pending>) {
    let mut writing: Vec<Pending> = Vec::new();
    let mut followers: Vec<Pending> = Vec::new();
    let mut seen: HashMap<String, IngestKey> = HashMap::new();
    for p in group {
        let Some(k) = &p.key else {
            writing.push(p);
            continue;
        };
        if let Some(recorded) = log.recorded(&k.key) {
            let answer = if recorded.conflicts_with(k) {
                Err(Failure::key_reused(&k.key))
            } else {
                Ok(Ack {
                    rows: 0,
                    quarantined: 0,
                    version: log.version(),
                    duplicate: true,
                })
            };
            let _ = p.answer.send(answer);
        } else if let Some(first) = seen.get(&k.key) {
            if first.conflicts_with(k) {
                let failure = Failure::key_reused(&k.key);
                let _ = p.answer.send(Err(failure));
            } else {
                followers.push(p);
            }
        } else {
            seen.insert(k.key.clone(), k.clone());
            writing.push(p);
        }
    }
    (writing, followers)
}

/// Answers the requests of a commit (or of its failure), and their followers as duplicates.
fn answer_group(
    writing: Vec<Pending>,
    row_counts: Vec<u64>,
    followers: Vec<Pending>,
    result: &Result<Option<u64>, Failure>,
    quarantined: &HashMap<Option<String>, u64>,
) {
    let mut answers: HashMap<Option<String>, Result<Ack, Failure>> = HashMap::new();
    let name = |p: &Pending| p.key.as_ref().map(|k| k.key.clone());
    for (p, rows) in writing.into_iter().zip(row_counts) {
        let answer = result.clone().map(|version| Ack {
            rows,
            quarantined: quarantined.get(&name(&p)).copied().unwrap_or(0),
            version,
            duplicate: false,
        });
        if p.key.is_some() {
            answers.insert(name(&p), answer.clone());
        }
        let _ = p.answer.send(answer);
    }
    for p in followers {
        let answer = answers
            .get(&name(&p))
            .cloned()
            .unwrap_or_else(|| Err(Failure::busy(StatusCode::SERVICE_UNAVAILABLE, "retry")));
        let _ = p.answer.send(answer.map(|ack| Ack {
            duplicate: true,
            ..ack
        }));
    }
}

/// Writes the refused rows of `writing` that the quarantine table does not hold yet (by
/// idempotency key) to it, creating it on first use; returns how many rows each key had
/// refused.
/// The names of the tokens that sent `requests` (for the audit; never their secrets).
fn senders(requests: &[Pending]) -> Vec<String> {
    let mut names: Vec<String> = requests.iter().filter_map(|p| p.token.clone()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

async fn commit_quarantine(
    inner: &Arc<Inner>,
    q: &TableName,
    log: &mut Option<IngestTable>,
    writing: &[Pending],
) -> Result<HashMap<Option<String>, u64>, Failure> {
    let rows: Vec<(Option<&IngestKey>, &Vec<Refused>)> = writing
        .iter()
        .filter(|p| !p.quarantine.is_empty())
        .map(|p| (p.key.as_ref(), &p.quarantine))
        .collect();
    let quarantined = rows
        .iter()
        .map(|(k, refused)| (k.map(|k| k.key.clone()), refused.len() as u64))
        .collect();
    if rows.is_empty() {
        return Ok(quarantined);
    }
    let failed = |e: &medlake_engine::Error| {
        warn!(table = %q, error = %e, "quarantine commit failed");
        Failure::engine(e)
    };
    for _ in 0..MAX_ATTEMPTS {
        if log.is_none() {
            *log = Some(
                inner
                    .engine
                    .ingest_open(q, inner.key_commits, true)
                    .await
                    .map_err(|e| failed(&e))?,
            );
        }
        let Some(open) = log.as_mut() else {
            continue;
        };
        let fresh: Vec<&(Option<&IngestKey>, &Vec<Refused>)> = rows
            .iter()
            .filter(|(k, _)| k.is_none_or(|k| !open.contains(&k.key)))
            .collect();
        if fresh.is_empty() {
            return Ok(quarantined);
        }
        let batches: Vec<RecordBatch> = fresh
            .iter()
            .map(|(k, refused)| decode::quarantine_rows(refused, k.map(|k| k.key.as_str())))
            .collect();
        let keys: Vec<IngestKey> = fresh
            .iter()
            .filter_map(|(k, _)| k.map(IngestKey::clone))
            .collect();
        match inner
            .engine
            .ingest_append(
                open,
                decode::quarantine_schema(),
                batches,
                &keys,
                &senders(writing),
            )
            .await
        {
            Ok(Some(done)) => {
                inner.metrics.quarantined(done.rows);
                return Ok(quarantined);
            }
            Ok(None) => {
                if let Err(e) = inner.engine.ingest_refresh(open).await {
                    *log = None;
                    return Err(failed(&e));
                }
            }
            Err(e) => return Err(failed(&e)),
        }
    }
    Err(Failure::busy(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("other writers kept committing to {q} first; retry"),
    ))
}
