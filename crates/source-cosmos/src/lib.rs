//! The `cosmos` connector: Azure Cosmos DB (NoSQL API) containers read with the Azure SDK
//! (azure_data_cosmos).
//!
//! ```sql
//! CREATE EXTERNAL TABLE events.alerts STORED AS COSMOS
//! LOCATION 'https://hospital.documents.azure.com'
//! OPTIONS ('database' 'iomt', 'container' 'alerts', 'key' '${COSMOS_KEY}', 'watermark' '_ts');
//! ```
//!
//! The options are documented in the README ("Sources: Cosmos DB"); [`OPTIONS`] lists them.
//! The columns are declared in the statement, or inferred from a sample of documents when the
//! table is created, and stored with the definition: opening a table makes no request.
//!
//! A scan is one Cosmos DB SQL query: the projected properties, the filters that translate
//! ([`query`]), `TOP n` for a LIMIT when every filter is exact, and the partition key when a
//! filter fixes it (the query then reads one partition). Pages follow continuation tokens;
//! each page becomes one Arrow batch, streamed through a channel two batches deep. A value of
//! the wrong JSON type is read as NULL and counted ([`External::take_mismatches`]), never a
//! failed scan. Throttling (429 with `x-ms-retry-after-ms`) is retried by the SDK; transient
//! failures and timeouts are retried here from the last continuation token. Errors carry the
//! Cosmos DB status and activity id, never the key.
//!
//! A table declared with `'changes' 'all_versions_and_deletes'` is extracted by the container's
//! change feed in "all versions and deletes" mode instead of a `_ts` watermark ([`feed`]): its
//! marks are change feed continuations, a snapshot is the query above with `_change_operation`
//! `S`, and the rows between two marks are the feed's changes (creates, replaces, deletes).

mod feed;
mod query;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, MaxItemCountHint, QueryOptions, Region,
    ServerCertificateValidation,
};
use azure_data_cosmos::{
    AccountReference, CosmosClientBuilder, CosmosError, CosmosRuntime, PartitionKey, Query,
    RoutingStrategy,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use medlake_source::json::{self, Shape, merge_shapes, shape_of, type_of};
use medlake_source::json::{Column, Path};
use medlake_source::options::{Options, invalid};
use medlake_source::scan::Table;
use medlake_source::secret;
use medlake_source::{Definition, External, Mismatches, Policy, RemoteTable};
use medlake_source::{Error, Result};
use query::{Fit, Sql};

/// Every option `STORED AS COSMOS` accepts, besides `field.<column>`.
pub const OPTIONS: &[&str] = &[
    "database",
    "container",
    "key",
    "access_token",
    "watermark",
    "watermark_lag_seconds",
    "changes",
    "page_size",
    "sample_size",
    "names",
    "regions",
    "emulator",
    "timeout_seconds",
    "retries",
];

/// Properties Cosmos DB adds to every document that inference leaves out (`_ts` and `id`
/// stay: they are data).
const SYSTEM: &[&str] = &["_rid", "_self", "_etag", "_attachments", "_lsn"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    /// The account key, as a `${NAME}` reference.
    Key(String),
    /// A Microsoft Entra ID access token, as a `${NAME}` reference.
    Token(String),
}

#[derive(Clone, Debug)]
struct Config {
    endpoint: Url,
    /// `host[:port]` of the account, for messages.
    server: String,
    database: String,
    container: String,
    auth: Auth,
    page_size: u32,
    sample_size: u32,
    regions: Vec<String>,
    emulator: bool,
    timeout: Duration,
    retries: u32,
    lag_seconds: i64,
    /// `'changes' 'all_versions_and_deletes'`: extraction follows the change feed.
    changes: bool,
}

impl Config {
    fn parse(location: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        check_options(options)?;
        let (endpoint, server, emulator) = parse_location(location, options)?;
        let required = |key: &str| -> Result<String> {
            options
                .get(key)
                .filter(|v| !v.trim().is_empty())
                .cloned()
                .ok_or_else(|| invalid(key, format!("required: the Cosmos DB {key} to read")))
        };
        let get = Options(options);
        Ok(Self {
            endpoint,
            server,
            database: required("database")?,
            container: required("container")?,
            auth: auth(options)?,
            page_size: get.number("page_size", 1000, 1..=100_000, "a page size")?,
            sample_size: get.number("sample_size", 1000, 1..=1_000_000, "a count")?,
            regions: options
                .get("regions")
                .map(|r| {
                    r.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            emulator,
            timeout: Duration::from_secs(get.number(
                "timeout_seconds",
                60,
                1..=86_400,
                "a number of seconds",
            )?),
            retries: get.number("retries", 3, 0..=10, "a number of retries")?,
            lag_seconds: get.number(
                "watermark_lag_seconds",
                2,
                0..=86_400,
                "a number of seconds",
            )?,
            changes: changes(options)?,
        })
    }

    fn target(&self) -> String {
        format!("{}/{}", self.database, self.container)
    }
}

/// Whether the table reads the change feed (`'changes' 'all_versions_and_deletes'`); its
/// watermark is then `_change_version`, implicitly.
fn changes(options: &BTreeMap<String, String>) -> Result<bool> {
    let Some(mode) = options.get("changes") else {
        return Ok(false);
    };
    if !mode.trim().eq_ignore_ascii_case(feed::MODE) {
        return Err(invalid(
            "changes",
            format!(
                "'{mode}' is not a change feed mode COSMOS reads; write '{}'",
                feed::MODE
            ),
        ));
    }
    match options.get("watermark") {
        Some(w) if !w.trim().eq_ignore_ascii_case(feed::VERSION) => Err(invalid(
            "watermark",
            format!(
                "a table with 'changes' '{}' is extracted by {}, its change feed position; \
                 leave 'watermark' out (it cannot be '{w}')",
                feed::MODE,
                feed::VERSION
            ),
        )),
        _ => Ok(true),
    }
}

/// Every option is one `STORED AS COSMOS` knows.
fn check_options(options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        let known = OPTIONS.contains(&key.as_str())
            || key.strip_prefix("field.").is_some_and(|c| !c.is_empty());
        if !known {
            return Err(invalid(
                key,
                format!(
                    "unknown option; COSMOS accepts {}, and field.<column>",
                    OPTIONS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The account endpoint, the server as messages name it, and whether it is a local emulator
/// (whose self-signed certificate is accepted; plain http only then).
fn parse_location(
    location: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Url, String, bool)> {
    let endpoint = Url::parse(location).map_err(|e| {
        invalid(
            "location",
            format!("'{location}' is not a URL ({e}); write https://<account>.documents.azure.com"),
        )
    })?;
    if !matches!(endpoint.scheme(), "https" | "http") || endpoint.host_str().is_none() {
        return Err(invalid(
            "location",
            format!("'{location}': write https://<account>.documents.azure.com"),
        ));
    }
    let host = endpoint.host_str().unwrap_or_default().to_string();
    let server = match endpoint.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]" | "::1");
    let emulator = match options.get("emulator").map(|s| s.to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => return Err(invalid("emulator", format!("'{v}' is not true or false"))),
    };
    if emulator && !loopback {
        return Err(invalid(
            "emulator",
            "only for an emulator on this machine (localhost, 127.0.0.1, [::1]): it accepts the emulator's self-signed certificate",
        ));
    }
    if endpoint.scheme() == "http" && !(emulator && loopback) {
        return Err(invalid(
            "location",
            "plain http:// is only for an emulator on this machine ('emulator' 'true')",
        ));
    }
    Ok((endpoint, server, emulator))
}

/// The account key or an Entra ID token, as a `${NAME}` reference.
fn auth(options: &BTreeMap<String, String>) -> Result<Auth> {
    let auth = match (options.get("key"), options.get("access_token")) {
        (Some(k), None) => {
            secret::require_reference("key", k)?;
            Auth::Key(k.clone())
        }
        (None, Some(t)) => {
            secret::require_reference("access_token", t)?;
            Auth::Token(t.clone())
        }
        (Some(_), Some(_)) => {
            return Err(invalid("key", "give 'key' or 'access_token', not both"));
        }
        (None, None) => {
            return Err(invalid(
                "key",
                "required: the account key ('key' '${COSMOS_KEY}') or a Microsoft Entra ID token ('access_token' '${COSMOS_TOKEN}')",
            ));
        }
    };
    Ok(auth)
}

/// A static Microsoft Entra ID token (read from the environment for each scan).
struct StaticToken(Secret);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(***)")
    }
}

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.secret().to_string(),
            time::OffsetDateTime::now_utc() + time::Duration::minutes(5),
        ))
    }
}

/// One column, and whether it holds any JSON value as text (inferred from a sample whose
/// values had several types) rather than values of its type only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Col {
    pub column: Column,
    #[serde(default)]
    pub json_text: bool,
}

/// What `define` stores in [`Definition::remote`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Remote {
    columns: Vec<Col>,
    /// Whether the columns were inferred from a sample (else declared).
    inferred: bool,
    /// The container's partition key path (`/deviceId`), when it has a single one.
    partition_key: Option<String>,
}

/// An error the SDK returned, classified; never holds a secret (the SDK's messages hold the
/// status, the URL path and the server's message).
fn cosmos_error(config: &Config, during: &str, e: &CosmosError, lost: bool) -> Error {
    let status = e.status();
    let code = u16::from(status.status_code());
    let activity = e
        .diagnostics()
        .map(|d| d.activity_id().to_string())
        .filter(|a| !a.is_empty());
    let mut context = format!("HTTP {code}");
    if let Some(sub) = status.sub_status() {
        context.push_str(&format!(".{sub}"));
    }
    if let Some(a) = activity {
        context.push_str(&format!(", activity id {a}"));
    }
    let message = format!("{during}: {e} ({context})");
    let server = config.server.clone();
    if transport(e) {
        return if lost {
            Error::ConnectionLost {
                server,
                table: config.target(),
                message,
            }
        } else {
            Error::Connect { server, message }
        };
    }
    match code {
        401 | 403 => Error::LoginFailed { server, message },
        404 => Error::RemoteTableNotFound {
            server,
            table: format!("{} ({message})", config.target()),
        },
        408 => Error::Timeout {
            server,
            seconds: config.timeout.as_secs(),
            during: during.to_string(),
        },
        _ => Error::Remote {
            server,
            code: Some(u32::from(code)),
            message,
        },
    }
}

/// Whether the request never got an answer (refused, reset, timed out on the way).
fn transport(e: &CosmosError) -> bool {
    let status = e.status();
    status.is_transport_generated_503()
        || (!e.is_from_wire() && u16::from(status.status_code()) == 503)
}

fn retryable(e: &CosmosError) -> bool {
    let status = e.status();
    transport(e)
        || status.is_throttled()
        || status.is_timeout()
        || status.is_service_unavailable()
        || status.is_gone()
        || matches!(u16::from(status.status_code()), 500 | 502 | 504)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5))
}

/// A client for the configured container (a fresh SDK runtime and connection pool: scans run
/// on whatever tokio runtime executes them).
///
/// The SDK makes its own connections (its own reqwest 0.13 client, no resolver or transport
/// medlake can replace), so the endpoint's addresses are resolved and checked by the policy
/// here, before each connection: not at connect time.
async fn connect(config: &Config, policy: &Policy) -> Result<ContainerClient> {
    let port = config.endpoint.port_or_known_default().unwrap_or(443);
    policy
        .check_host(config.endpoint.host_str().unwrap_or_default(), port)
        .await?;
    let endpoint = config
        .endpoint
        .as_str()
        .parse()
        .map_err(|e| invalid("location", format!("{e}")))?;
    let account = match &config.auth {
        Auth::Key(reference) => {
            let key = secret::resolve("key", reference, policy)?;
            AccountReference::with_authentication_key(
                endpoint,
                Secret::new(key.expose().to_string()),
            )
        }
        Auth::Token(reference) => {
            let token = secret::resolve("access_token", reference, policy)?;
            let credential: Arc<dyn TokenCredential> =
                Arc::new(StaticToken(Secret::new(token.expose().to_string())));
            AccountReference::with_credential(endpoint, credential)
        }
    };
    let mut pool = ConnectionPoolOptions::builder();
    if config.emulator {
        // The emulator serves HTTP/1.1 with a self-signed certificate.
        pool = pool
            .with_is_http2_allowed(false)
            .with_server_certificate_validation(
                ServerCertificateValidation::RequiredUnlessEmulator,
            );
    }
    let lost = |during: &str, e: &CosmosError| cosmos_error(config, during, e, false);
    let pool = pool
        .build()
        .map_err(|e| lost("configuring the connection pool", &e))?;
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .build()
        .await
        .map_err(|e| lost("starting the client", &e))?;
    let mut builder = CosmosClientBuilder::new().with_runtime(runtime);
    if config.emulator {
        // Emulators speak JSON text only.
        builder =
            builder.with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
    }
    let routing = RoutingStrategy::PreferredRegions(
        config
            .regions
            .iter()
            .map(|r| Region::from(r.clone()))
            .collect(),
    );
    let client = tokio::time::timeout(config.timeout, builder.build(account, routing))
        .await
        .map_err(|_| Error::Timeout {
            server: config.server.clone(),
            seconds: config.timeout.as_secs(),
            during: "connecting".into(),
        })?
        .map_err(|e| lost("connecting", &e))?;
    tokio::time::timeout(
        config.timeout,
        client
            .database_client(config.database.as_str())
            .container_client(config.container.as_str(), None),
    )
    .await
    .map_err(|_| Error::Timeout {
        server: config.server.clone(),
        seconds: config.timeout.as_secs(),
        during: format!("reading container {}", config.target()),
    })?
    .map_err(|e| lost(&format!("opening container {}", config.target()), &e))
}

/// [`connect`], retried with backoff while the failure is transient.
async fn connect_retrying(config: &Config, policy: &Policy) -> Result<ContainerClient> {
    let mut attempt = 0;
    loop {
        match connect(config, policy).await {
            Err(e @ (Error::Connect { .. } | Error::Timeout { .. } | Error::Remote { .. }))
                if attempt < config.retries =>
            {
                tracing::debug!(error = %e, attempt, "cosmos connect failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Reads every document a query returns (for the sample and the high mark).
async fn collect(
    config: &Config,
    container: &ContainerClient,
    query: Query,
    during: &str,
) -> Result<Vec<Value>> {
    let err = |e: &CosmosError| cosmos_error(config, during, e, false);
    let mut items = container
        .query_items::<Value>(query, FeedScope::full_container(), None)
        .await
        .map_err(|e| err(&e))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(config.timeout, items.next())
            .await
            .map_err(|_| Error::Timeout {
                server: config.server.clone(),
                seconds: config.timeout.as_secs(),
                during: during.to_string(),
            })?;
        match next {
            None => return Ok(out),
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(err(&e)),
        }
    }
}

/// The columns of a sample of documents: every top-level property but the system ones, in
/// the order first seen (names in lower case unless `exact_names`), then the `field.<column>`
/// pointers. Objects become STRUCT columns, arrays LIST columns; a property whose values have
/// several types becomes a text column holding each value's JSON.
fn infer(docs: &[Value], exact_names: bool, fields: &[(String, String)]) -> Result<Vec<Col>> {
    let mut shapes: Vec<(String, String, Shape)> = Vec::new(); // (name, key, shape)
    for doc in docs {
        let Some(object) = doc.as_object() else {
            continue;
        };
        for (key, value) in object {
            if SYSTEM.contains(&key.as_str()) {
                continue;
            }
            let name = if exact_names {
                key.clone()
            } else {
                key.to_lowercase()
            };
            if fields.iter().any(|(f, _)| *f == name) {
                continue;
            }
            match shapes.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, k, _)) if k != key => {
                    return Err(invalid(
                        "names",
                        format!(
                            "properties '{k}' and '{key}' are both '{name}' in lower case; use 'names' 'exact'"
                        ),
                    ));
                }
                Some((_, _, shape)) => {
                    *shape = merge_shapes(std::mem::replace(shape, Shape::Null), shape_of(value));
                }
                None => shapes.push((name, key.clone(), shape_of(value))),
            }
        }
    }
    let mut columns: Vec<Col> = shapes
        .into_iter()
        .map(|(name, key, shape)| {
            let (data_type, json_text) = type_of(&shape);
            Col {
                column: Column {
                    name,
                    data_type,
                    nullable: true,
                    path: Path::Key(key),
                },
                json_text,
            }
        })
        .collect();
    for (name, pointer) in fields {
        let shape = docs
            .iter()
            .filter_map(|d| d.pointer(pointer))
            .map(shape_of)
            .fold(Shape::Null, merge_shapes);
        let (data_type, json_text) = type_of(&shape);
        columns.push(Col {
            column: Column {
                name: name.clone(),
                data_type,
                nullable: true,
                path: Path::Pointer(pointer.clone()),
            },
            json_text,
        });
    }
    Ok(columns)
}

/// `CREATE EXTERNAL TABLE ... STORED AS COSMOS`: checks the options, opens the container
/// (its partition key), reads a sample of documents and infers the columns from it (or
/// matches the declared ones to the properties it shows).
pub async fn define(
    location: &str,
    options: BTreeMap<String, String>,
    declared: SchemaRef,
    policy: &Arc<Policy>,
) -> Result<Definition> {
    let config = Config::parse(location, &options)?;
    policy.check_literal_host(&config.endpoint)?;
    let exact_names = match options
        .get("names")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("lower") => false,
        Some("exact") => true,
        Some(other) => return Err(invalid("names", format!("'{other}' is not lower or exact"))),
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    for (key, value) in &options {
        if let Some(name) = key.strip_prefix("field.") {
            if !value.starts_with('/') {
                return Err(invalid(
                    key,
                    "write a JSON pointer into the document, e.g. '/device/model'",
                ));
            }
            fields.push((name.to_string(), value.clone()));
        }
    }
    let container = connect_retrying(&config, policy).await?;
    let properties = container
        .read(None)
        .await
        .and_then(|r| r.into_model())
        .map_err(|e| cosmos_error(&config, "reading the container's properties", &e, false))?;
    let paths = properties.partition_key.paths();
    let partition_key = (paths.len() == 1).then(|| paths[0].to_string());
    let sample = collect(
        &config,
        &container,
        Query::from(format!("SELECT TOP {} * FROM c", config.sample_size)),
        "reading a sample of documents",
    )
    .await?;
    let (columns, inferred) = if declared.fields().is_empty() {
        if sample.is_empty() {
            return Err(invalid(
                "columns",
                format!(
                    "container {} has no documents to infer the columns from; declare them: CREATE EXTERNAL TABLE t (id VARCHAR, ...) STORED AS COSMOS ...",
                    config.target()
                ),
            ));
        }
        (infer(&sample, exact_names, &fields)?, true)
    } else {
        let mut columns = Vec::new();
        for field in declared.fields() {
            let data_type =
                json::read_type(field.data_type()).map_err(|hint| Error::UnsupportedType {
                    table: config.target(),
                    column: field.name().clone(),
                    remote_type: field.data_type().to_string(),
                    hint,
                })?;
            let path = match fields.iter().find(|(n, _)| n == field.name()) {
                Some((_, p)) => Path::Pointer(p.clone()),
                // The property as the documents spell it (queries match names exactly).
                None => Path::Key(spelled(&sample, field.name())),
            };
            columns.push(Col {
                column: Column {
                    name: field.name().clone(),
                    data_type,
                    nullable: field.is_nullable(),
                    path,
                },
                json_text: false,
            });
        }
        if let Some((name, _)) = fields
            .iter()
            .find(|(n, _)| !columns.iter().any(|c| c.column.name == *n))
        {
            return Err(invalid(
                &format!("field.{name}"),
                format!("'{name}' is not a declared column"),
            ));
        }
        (columns, false)
    };
    let definition = Definition::new(
        "cosmos",
        location,
        options,
        &Remote {
            columns,
            inferred,
            partition_key,
        },
    )?;
    Shared::open(&definition, policy)?; // checks the watermark against the columns
    Ok(definition)
}

/// The property name the sample spells `name` with: exactly, else ignoring ASCII case, else
/// `name` itself.
fn spelled(sample: &[Value], name: &str) -> String {
    let keys = sample
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys());
    let mut fallback = None;
    for key in keys {
        if key == name {
            return key.clone();
        }
        if fallback.is_none() && key.eq_ignore_ascii_case(name) {
            fallback = Some(key.clone());
        }
    }
    fallback.unwrap_or_else(|| name.to_string())
}

/// `IMPORT FOREIGN SCHEMA` does not list Cosmos DB containers.
pub async fn list_tables(
    _location: &str,
    _options: &BTreeMap<String, String>,
    _remote_schema: &str,
    _policy: &Arc<Policy>,
) -> Result<Vec<RemoteTable>> {
    Err(Error::NoSchemas {
        kind: "COSMOS".into(),
        hint: "create one table per container with CREATE EXTERNAL TABLE ... STORED AS COSMOS"
            .into(),
    })
}

#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    columns: Vec<Col>,
    schema: SchemaRef,
    partition_key: Option<String>,
    watermark: Option<usize>,
    failure: Mutex<Option<Error>>,
    /// Documents read, and values read as NULL per column because of their type, since the
    /// last `take_mismatches`.
    mismatches: Mutex<(u64, Vec<u64>)>,
    /// What the table's connections may reach, and its secrets.
    policy: Arc<Policy>,
}

impl Shared {
    /// Opens a stored definition; no request is made (an endpoint given as an address is
    /// checked now, names before each connection).
    pub fn open(definition: &Definition, policy: &Arc<Policy>) -> Result<Self> {
        let config = Config::parse(&definition.location, &definition.options)?;
        policy.check_literal_host(&config.endpoint)?;
        let remote: Remote =
            serde_json::from_value(definition.remote.clone()).map_err(|e| Error::Data {
                what: "external table definition".into(),
                message: e.to_string(),
            })?;
        let columns = remote.columns;
        if config.changes
            && let Some(c) = columns
                .iter()
                .find(|c| [feed::OPERATION, feed::VERSION].contains(&c.column.name.as_str()))
        {
            return Err(invalid(
                "changes",
                format!(
                    "the documents' column '{}' has the name of a change column; rename it with 'field.<other name>' or declare the columns",
                    c.column.name
                ),
            ));
        }
        let watermark = match definition.options.get("watermark") {
            _ if config.changes => None,
            None => None,
            Some(name) => {
                let w = columns
                    .iter()
                    .position(|c| c.column.name == *name)
                    .or_else(|| {
                        columns
                            .iter()
                            .position(|c| c.column.name.eq_ignore_ascii_case(name))
                    })
                    .ok_or_else(|| {
                        invalid(
                            "watermark",
                            format!("'{name}' is not a column of the table (declare _ts BIGINT)"),
                        )
                    })?;
                let col = &columns[w];
                if !col.column.data_type.is_integer() || col.json_text {
                    return Err(invalid(
                        "watermark",
                        format!(
                            "'{name}' is {}: the watermark is a number the server keeps increasing, normally _ts (BIGINT)",
                            col.column.data_type
                        ),
                    ));
                }
                Some(w)
            }
        };
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                Field::new(
                    &c.column.name,
                    c.column.data_type.clone(),
                    c.column.nullable,
                )
            })
            .collect();
        if config.changes {
            fields.push(Field::new(feed::OPERATION, DataType::Utf8, false));
            fields.push(Field::new(feed::VERSION, DataType::Int64, false));
        }
        let schema = Arc::new(Schema::new(fields));
        let n = columns.len();
        Ok(Self {
            config,
            columns,
            schema,
            partition_key: remote.partition_key,
            watermark,
            failure: Mutex::new(None),
            mismatches: Mutex::new((0, vec![0; n])),
            policy: policy.clone(),
        })
    }
}

/// Rows restricted by a watermark range, on top of the table's own filters.
pub(crate) type Window = medlake_source::scan::Window<Mark>;

/// A stored mark as the connector holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// A value of the watermark column (`_ts`).
    Value(i64),
    /// A change feed position: the SDK's continuation token (see [`feed`]).
    Feed(String),
}

/// A planned scan: the query and where it runs.
#[derive(Clone, Debug)]
struct Planned {
    text: String,
    params: Vec<(String, Value)>,
    /// The partition key value, when a filter fixes it.
    partition: Option<Value>,
    /// Document columns of the table the scan returns, in order (the change columns follow).
    projection: Vec<usize>,
    limit: Option<usize>,
    /// Whether the scan returns `_change_operation` and `_change_version`.
    operation: bool,
    version: bool,
    /// Changes between two change feed marks (after, upto) instead of the query.
    feed: Option<(String, String)>,
}

impl Shared {
    fn record_failure(&self, e: &Error) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert_with(|| e.clone());
        }
    }

    /// A document's values for the scan's columns; a value of the wrong type is left out
    /// (NULL) and counted.
    fn row(
        &self,
        doc: &Value,
        projection: &[usize],
        mismatches: &mut [u64],
    ) -> std::result::Result<Map<String, Value>, String> {
        let mut row = Map::new();
        for &i in projection {
            let col = &self.columns[i];
            let found = col.column.path.find(doc).filter(|v| !v.is_null());
            let value = match found {
                None => None,
                Some(v) => match strict(v, col) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        mismatches[i] += 1;
                        None
                    }
                },
            };
            match value {
                Some(v) => {
                    row.insert(col.column.name.clone(), v);
                }
                None if !col.column.nullable => {
                    return Err(format!(
                        "document {}: column '{}' is declared NOT NULL but the document has {}",
                        doc.get("id").map(json::describe).unwrap_or_default(),
                        col.column.name,
                        match found {
                            None => "no value".to_string(),
                            Some(v) => format!("a value of another type: {}", json::describe(v)),
                        }
                    ));
                }
                None => {}
            }
        }
        Ok(row)
    }

    /// The batch of one page; `changes` holds each document's operation and version (`None`:
    /// rows of a snapshot, `S` and 0).
    fn convert(
        &self,
        docs: &[Value],
        planned: &Planned,
        schema: &SchemaRef,
        changes: Option<&[(&'static str, i64)]>,
    ) -> std::result::Result<RecordBatch, String> {
        let projection = planned.projection.as_slice();
        if schema.fields().is_empty() {
            return RecordBatch::try_new_with_options(
                schema.clone(),
                Vec::new(),
                &RecordBatchOptions::new().with_row_count(Some(docs.len())),
            )
            .map_err(|e| e.to_string());
        }
        let mut counts = vec![0u64; self.columns.len()];
        let mut rows = Vec::with_capacity(docs.len());
        for (i, doc) in docs.iter().enumerate() {
            let mut row = self.row(doc, projection, &mut counts)?;
            let (operation, version) = changes.and_then(|c| c.get(i)).copied().unwrap_or(("S", 0));
            if planned.operation {
                row.insert(feed::OPERATION.into(), Value::from(operation));
            }
            if planned.version {
                row.insert(feed::VERSION.into(), Value::from(version));
            }
            rows.push(row);
        }
        if let Ok(mut m) = self.mismatches.lock() {
            m.0 += docs.len() as u64;
            for (total, n) in m.1.iter_mut().zip(&counts) {
                *total += n;
            }
        }
        let mut decoder = ReaderBuilder::new(schema.clone())
            .build_decoder()
            .map_err(|e| e.to_string())?;
        decoder.serialize(&rows).map_err(|e| e.to_string())?;
        Ok(decoder
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
    }

    /// Runs a planned scan, sending one batch per page to `sink`.
    async fn read(
        &self,
        planned: &Planned,
        schema: &SchemaRef,
        sink: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
    ) -> Result<()> {
        let config = &self.config;
        let container = connect_retrying(config, &self.policy).await?;
        let mut token = None;
        let mut pages_read = 0usize;
        let mut attempt = 0u32;
        let mut remaining = planned.limit;
        'query: loop {
            let mut query = Query::from(planned.text.clone());
            for (name, value) in &planned.params {
                query = query
                    .with_parameter(name.clone(), value)
                    .map_err(|e| cosmos_error(config, "building the query", &e, false))?;
            }
            let scope = match &planned.partition {
                Some(Value::String(s)) => FeedScope::partition(PartitionKey::from(s.clone())),
                Some(Value::Bool(b)) => FeedScope::partition(PartitionKey::from(*b)),
                Some(Value::Number(n)) if n.as_i64().is_some() => {
                    FeedScope::partition(PartitionKey::from(n.as_i64().unwrap_or_default()))
                }
                _ => FeedScope::full_container(),
            };
            let mut options = QueryOptions::default().with_max_item_count(MaxItemCountHint::Limit(
                std::num::NonZeroU32::new(config.page_size).unwrap_or(std::num::NonZeroU32::MIN),
            ));
            if let Some(t) = token.clone() {
                options = options.with_continuation_token(t);
            }
            let started = container
                .query_items::<Value>(query, scope, Some(options))
                .await;
            let mut pages = match started {
                Ok(items) => items.into_pages(),
                Err(e) if retryable(&e) && attempt < config.retries => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue 'query;
                }
                Err(e) => {
                    return Err(cosmos_error(
                        config,
                        "starting the query",
                        &e,
                        pages_read > 0,
                    ));
                }
            };
            loop {
                let during = format!("reading page {} of {}", pages_read + 1, config.target());
                let next = match tokio::time::timeout(config.timeout, pages.next()).await {
                    Ok(next) => next,
                    Err(_) if attempt < config.retries && (token.is_some() || pages_read == 0) => {
                        attempt += 1;
                        continue 'query;
                    }
                    Err(_) => {
                        return Err(Error::Timeout {
                            server: config.server.clone(),
                            seconds: config.timeout.as_secs(),
                            during,
                        });
                    }
                };
                let page = match next {
                    None => return Ok(()),
                    Some(Ok(page)) => page,
                    // Resume after the last page read (or from the start if none was).
                    Some(Err(e))
                        if retryable(&e)
                            && attempt < config.retries
                            && (token.is_some() || pages_read == 0) =>
                    {
                        tracing::debug!(error = %e, attempt, "cosmos page failed; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue 'query;
                    }
                    Some(Err(e)) => return Err(cosmos_error(config, &during, &e, pages_read > 0)),
                };
                attempt = 0;
                pages_read += 1;
                token = pages.to_continuation_token().ok();
                let docs = page.into_items();
                let mut batch = self
                    .convert(&docs, planned, schema, None)
                    .map_err(|message| Error::MalformedPage {
                        server: config.server.clone(),
                        page: pages_read,
                        message,
                    })?;
                drop(docs);
                if let Some(left) = remaining.as_mut() {
                    batch = batch.slice(0, batch.num_rows().min(*left));
                    *left -= batch.num_rows();
                }
                if batch.num_rows() > 0 && sink.send(Ok(batch)).await.is_err() {
                    return Ok(()); // the reader is gone
                }
                if remaining == Some(0) {
                    return Ok(());
                }
            }
        }
    }
}

/// A value as the scan reads it into `col`: scalar columns take values of their JSON type
/// only (see [`query`] for why), then [`json::normalize`] checks and converts.
fn strict(value: &Value, col: &Col) -> std::result::Result<Value, String> {
    let t = &col.column.data_type;
    if !col.json_text {
        let fits = match t {
            DataType::Utf8 => value.is_string(),
            DataType::Boolean => value.is_boolean(),
            t if t.is_integer() || t.is_floating() => value.is_number(),
            _ => true,
        };
        if !fits {
            return Err(format!("expected {t}, found {}", json::describe(value)));
        }
    }
    json::normalize(value, t)
}

/// The scan planning [`Windowed`] turns into the table provider.
impl medlake_source::scan::Planner for Shared {
    type Window = Window;

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn filter_pushdown(&self, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
        filters
            .iter()
            .map(|f| {
                let mut scratch = Sql::default();
                match query::translate(f, &self.columns, &mut scratch) {
                    // A change feed read applies no filter: DataFusion checks them all again.
                    Some(_) if self.config.changes => TableProviderFilterPushDown::Inexact,
                    Some((_, fit)) => fit.pushdown(),
                    None => TableProviderFilterPushDown::Unsupported,
                }
            })
            .collect()
    }

    fn plan(
        self: &Arc<Self>,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        window: &Window,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize>;
        let projection = match projection {
            Some(p) => p,
            None => {
                all = (0..self.schema.fields().len()).collect();
                &all
            }
        };
        let schema = Arc::new(self.schema.project(projection)?);
        let n = self.columns.len();
        let change_column = |name: &str| {
            projection.iter().any(|&i| {
                self.schema
                    .fields()
                    .get(i)
                    .is_some_and(|f| i >= n && f.name() == name)
            })
        };
        let (operation, version) = (change_column(feed::OPERATION), change_column(feed::VERSION));
        let projection: Vec<usize> = projection.iter().copied().filter(|&i| i < n).collect();
        if let (Some(Mark::Feed(after)), Some(Mark::Feed(upto))) = (&window.after, &window.upto) {
            let planned = Planned {
                text: String::new(),
                params: Vec::new(),
                partition: None,
                projection,
                limit,
                operation,
                version,
                feed: Some((after.clone(), upto.clone())),
            };
            return Ok(Arc::new(CosmosExec::new(self.clone(), schema, planned)));
        }
        let mut sql = Sql::default();
        let mut conditions = Vec::new();
        let mut all_exact = true;
        for filter in filters {
            match query::translate(filter, &self.columns, &mut sql) {
                Some((c, fit)) => {
                    all_exact &= fit == Fit::Exact;
                    conditions.push(c);
                }
                None => all_exact = false,
            }
        }
        if let Some(w) = self.watermark {
            let property = query::accessor(&self.columns[w].column.path);
            if let Some(Mark::Value(after)) = window.after {
                let p = sql.param(Value::from(after));
                conditions.push(format!("{property} > {p}"));
            }
            if let Some(Mark::Value(upto)) = window.upto {
                let p = sql.param(Value::from(upto));
                conditions.push(if window.after.is_some() {
                    format!("{property} <= {p}")
                } else {
                    format!("(NOT IS_NUMBER({property}) OR {property} <= {p})")
                });
            }
        }
        let partition = self.partition_key.as_deref().and_then(|pk| {
            filters
                .iter()
                .find_map(|f| query::partition_value(f, &self.columns, pk))
        });
        // The top-level properties the projected columns read.
        let mut keys: Vec<String> = Vec::new();
        for &i in &projection {
            let key = match &self.columns[i].column.path {
                Path::Key(k) => k.clone(),
                Path::Pointer(p) => p
                    .split('/')
                    .nth(1)
                    .unwrap_or_default()
                    .replace("~1", "/")
                    .replace("~0", "~"),
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let top = match limit {
            Some(n) if all_exact => format!("TOP {n} "),
            _ => String::new(),
        };
        let select = if keys.is_empty() {
            format!("SELECT {top}VALUE 1")
        } else {
            let list: Vec<String> = keys
                .iter()
                .map(|k| query::accessor(&Path::Key(k.clone())))
                .collect();
            format!("SELECT {top}{}", list.join(", "))
        };
        let mut text = format!("{select} FROM c");
        if !conditions.is_empty() {
            text.push_str(" WHERE ");
            text.push_str(&conditions.join(" AND "));
        }
        let planned = Planned {
            text,
            params: sql.params,
            partition,
            projection,
            limit,
            operation,
            version,
            feed: None,
        };
        Ok(Arc::new(CosmosExec::new(self.clone(), schema, planned)))
    }
}

impl medlake_source::scan::Marked for Shared {
    type Mark = Mark;

    fn mark(&self, mark: &str) -> Result<Mark> {
        if self.config.changes {
            return if feed::is_token(mark) {
                Ok(Mark::Feed(mark.trim().to_string()))
            } else {
                Err(invalid(
                    "watermark",
                    format!("'{mark}' is not a change feed position of this table"),
                ))
            };
        }
        mark.trim()
            .parse()
            .map(Mark::Value)
            .map_err(|_| invalid("watermark", format!("watermark '{mark}' is not an integer")))
    }
}

#[async_trait]
impl medlake_source::scan::Source for Shared {
    fn watermark(&self) -> Option<&str> {
        if self.config.changes {
            return Some(feed::VERSION);
        }
        self.watermark.map(|w| self.columns[w].column.name.as_str())
    }

    async fn changes_kept_since(&self, after: &str) -> Result<bool> {
        if !self.config.changes {
            return Ok(true);
        }
        self.feed_kept_since(after).await
    }

    /// The highest watermark now, held back by `watermark_lag_seconds` when it is `_ts`
    /// (whole seconds: documents written later in the same second must not fall below it).
    async fn high_mark(&self) -> Result<Option<String>> {
        if self.config.changes {
            return self.feed_position().await.map(Some);
        }
        let Some(w) = self.watermark else {
            return Ok(None);
        };
        let config = &self.config;
        let container = connect_retrying(config, &self.policy).await?;
        let path = &self.columns[w].column.path;
        let property = query::accessor(path);
        // The SDK plans ORDER BY across partitions itself, and only over dotted paths
        // (`c._ts`); another path is read whole (`SELECT VALUE`, numbers only).
        let text = match query::dotted(path) {
            Some(dotted) => format!(
                "SELECT TOP 1 VALUE {dotted} FROM c WHERE IS_NUMBER({dotted}) ORDER BY {dotted} DESC"
            ),
            None => format!("SELECT VALUE {property} FROM c WHERE IS_NUMBER({property})"),
        };
        let found = collect(
            config,
            &container,
            Query::from(text),
            "reading the high watermark",
        )
        .await?;
        let Some(max) = found
            .iter()
            .filter_map(Value::as_f64)
            .max_by(|a, b| a.total_cmp(b))
        else {
            return Ok(None);
        };
        let mut mark = max.floor() as i64;
        if matches!(&self.columns[w].column.path, Path::Key(k) if k == "_ts") {
            mark = mark.min(chrono::Utc::now().timestamp() - config.lag_seconds);
        }
        Ok(Some(mark.to_string()))
    }

    fn failure(&self) -> &std::sync::Mutex<Option<Error>> {
        &self.failure
    }

    fn reports_mismatches(&self) -> bool {
        true
    }

    fn take_mismatches(&self) -> Option<Mismatches> {
        let mut m = self.mismatches.lock().ok()?;
        let (rows, counts) = std::mem::replace(&mut *m, (0, vec![0; self.columns.len()]));
        let columns: Vec<(String, String, u64)> = self
            .columns
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (c.column.name.clone(), c.column.data_type.to_string(), n))
            .collect();
        (rows > 0).then_some(Mismatches { rows, columns })
    }
}

/// Reads a Cosmos DB container with one query, page by page.
#[derive(Debug)]
pub struct CosmosExec {
    shared: Arc<Shared>,
    schema: SchemaRef,
    planned: Planned,
    properties: Arc<PlanProperties>,
}

impl CosmosExec {
    fn new(shared: Arc<Shared>, schema: SchemaRef, planned: Planned) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            shared,
            schema,
            planned,
            properties,
        }
    }

    /// The Cosmos DB SQL query the scan sends.
    pub fn query(&self) -> &str {
        &self.planned.text
    }
}

impl DisplayAs for CosmosExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CosmosExec: container={} ", self.shared.config.target())?;
        if self.planned.feed.is_some() {
            return write!(
                f,
                "change feed (all versions and deletes) between two marks"
            );
        }
        if let Some(p) = &self.planned.partition {
            write!(f, "partition={p} ")?;
        }
        write!(f, "query={}", self.planned.text)?;
        if !self.planned.params.is_empty() {
            let params: Vec<String> = self
                .planned
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, " params=[{}]", params.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for CosmosExec {
    medlake_source::leaf_plan!("CosmosExec");

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "CosmosExec has no partition {partition}"
            )));
        }
        let shared = self.shared.clone();
        let planned = self.planned.clone();
        let schema = self.schema.clone();
        Ok(medlake_source::scan::spawned(
            self.schema.clone(),
            move |tx| async move {
                let read = match &planned.feed {
                    Some((after, upto)) => {
                        shared.read_feed(&planned, after, upto, &schema, &tx).await
                    }
                    None => shared.read(&planned, &schema, &tx).await,
                };
                if let Err(e) = read {
                    shared.record_failure(&e);
                    let _ = tx.send(Err(DataFusionError::from(e))).await;
                }
            },
        ))
    }
}

/// The `COSMOS` connector, registered in a [`medlake_source::Registry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CosmosConnector;

#[async_trait]
impl medlake_source::Connector for CosmosConnector {
    fn kinds(&self) -> &'static [&'static str] {
        &["COSMOS"]
    }

    async fn define(
        &self,
        _kind: &str,
        location: &str,
        options: BTreeMap<String, String>,
        declared: SchemaRef,
        policy: &Arc<Policy>,
    ) -> Result<Definition> {
        define(location, options, declared, policy).await
    }

    fn open(&self, definition: &Definition, policy: &Arc<Policy>) -> Result<Arc<dyn External>> {
        Ok(Arc::new(Table::new(Shared::open(definition, policy)?)))
    }

    async fn list_tables(
        &self,
        _kind: &str,
        location: &str,
        options: &BTreeMap<String, String>,
        remote_schema: &str,
        policy: &Arc<Policy>,
    ) -> Result<Vec<RemoteTable>> {
        list_tables(location, options, remote_schema, policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_checked_and_secrets_must_be_references() {
        let base = [("database", "d"), ("container", "c")];
        let parse = |extra: &[(&str, &str)], location: &str| {
            let mut o = options(&base);
            o.extend(options(extra));
            Config::parse(location, &o)
        };
        let url = "https://acct.documents.azure.com";
        assert!(parse(&[("key", "${K}")], url).is_ok());
        assert!(parse(&[("access_token", "${T}")], url).is_ok());
        let e = parse(&[("key", "c2VjcmV0")], url).unwrap_err().to_string();
        assert!(e.contains("never stored") && !e.contains("c2VjcmV0"), "{e}");
        assert!(
            parse(&[], url)
                .unwrap_err()
                .to_string()
                .contains("access_token")
        );
        assert!(parse(&[("key", "${K}"), ("access_token", "${T}")], url).is_err());
        assert!(parse(&[("key", "${K}"), ("bogus", "1")], url).is_err());
        assert!(
            parse(&[("key", "${K}")], "http://acct.documents.azure.com").is_err(),
            "plain http only for a local emulator"
        );
        assert!(
            parse(&[("key", "${K}"), ("emulator", "true")], url).is_err(),
            "the emulator option only on loopback"
        );
        assert!(
            parse(
                &[("key", "${K}"), ("emulator", "true")],
                "http://127.0.0.1:8081"
            )
            .is_ok()
        );
        assert!(parse(&[("key", "${K}"), ("page_size", "0")], url).is_err());
        // The change feed mode, and its implicit watermark.
        let changes = ("changes", "all_versions_and_deletes");
        assert!(parse(&[("key", "${K}"), changes], url).unwrap().changes);
        assert!(
            parse(
                &[("key", "${K}"), changes, ("watermark", "_change_version")],
                url
            )
            .is_ok()
        );
        let e = parse(&[("key", "${K}"), changes, ("watermark", "_ts")], url).unwrap_err();
        assert!(e.to_string().contains("_change_version"), "{e}");
        assert_eq!(e.sqlstate(), "HV024");
        let e = parse(&[("key", "${K}"), ("changes", "latest_version")], url).unwrap_err();
        assert!(e.to_string().contains("all_versions_and_deletes"), "{e}");
        // Untrusted numbers are bounded (the old code took any u32 / u64 / i64).
        for (option, value) in [
            ("retries", "4294967295"),
            ("page_size", "4294967295"),
            ("sample_size", "4294967295"),
            ("timeout_seconds", "18446744073709551615"),
            ("watermark_lag_seconds", "9223372036854775807"),
            ("watermark_lag_seconds", "-1"),
        ] {
            let e = parse(&[("key", "${K}"), (option, value)], url).unwrap_err();
            assert_eq!(e.sqlstate(), "HV024", "{option} {value}");
        }
    }

    #[tokio::test]
    async fn endpoints_are_checked_before_the_sdk_connects() {
        let o = options(&[("database", "d"), ("container", "c"), ("key", "${K}")]);
        let policy = Arc::new(Policy::default().with_secret("K", "a2V5"));
        let config = Config::parse("https://127.0.0.1:8081", &o).unwrap();
        let Err(e) = connect(&config, &policy).await else {
            panic!("connected to a loopback endpoint under the strict policy");
        };
        assert_eq!(e.sqlstate(), "42501", "{e}");
        let config = Config::parse("https://localhost:8081", &o).unwrap();
        let Err(e) = connect(&config, &policy).await else {
            panic!("connected to a loopback endpoint under the strict policy");
        };
        assert_eq!(e.sqlstate(), "42501", "{e}");
    }

    #[test]
    fn inference_maps_objects_to_structs_arrays_to_lists_and_mixed_values_to_json_text() {
        let docs = vec![
            json!({"id": "a", "_rid": "x", "_ts": 10, "severity": 3, "device": {"id": "d1", "fw": "1.2"},
                   "tags": ["icu"], "value": 1.5, "note": "x", "raisedAt": "2026-11-23T10:00:00Z"}),
            json!({"id": "b", "_ts": 11, "severity": "high", "device": {"id": "d2", "battery": 80},
                   "tags": [], "value": 2, "ack": true}),
        ];
        let cols = infer(&docs, false, &[("model".into(), "/device/id".into())]).unwrap();
        let get = |n: &str| cols.iter().find(|c| c.column.name == n).unwrap();
        assert!(cols.iter().all(|c| c.column.name != "_rid"));
        assert_eq!(get("_ts").column.data_type, DataType::Int64);
        assert_eq!(get("value").column.data_type, DataType::Float64);
        assert!(get("severity").json_text, "number and text: JSON text");
        assert!(matches!(get("device").column.data_type, DataType::Struct(ref f) if f.len() == 3));
        assert!(matches!(get("tags").column.data_type, DataType::List(_)));
        assert_eq!(get("raisedat").column.path, Path::Key("raisedAt".into()));
        assert!(matches!(
            get("raisedat").column.data_type,
            DataType::Timestamp(..)
        ));
        assert_eq!(get("ack").column.data_type, DataType::Boolean);
        assert_eq!(get("model").column.path, Path::Pointer("/device/id".into()));
    }

    #[test]
    fn strict_reading_nulls_and_counts_values_of_the_wrong_type() {
        let col = |t: DataType, json_text: bool| Col {
            column: Column {
                name: "v".into(),
                data_type: t,
                nullable: true,
                path: Path::Key("v".into()),
            },
            json_text,
        };
        assert!(strict(&json!(3), &col(DataType::Utf8, false)).is_err());
        assert_eq!(
            strict(&json!(3), &col(DataType::Utf8, true)).unwrap(),
            json!("3")
        );
        assert!(strict(&json!("3"), &col(DataType::Int64, false)).is_err());
        assert!(strict(&json!(3.5), &col(DataType::Int64, false)).is_err());
        assert_eq!(
            strict(&json!(3.0), &col(DataType::Int64, false)).unwrap(),
            json!(3)
        );
        assert!(strict(&json!("true"), &col(DataType::Boolean, false)).is_err());
    }
}
