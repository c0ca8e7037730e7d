//! The `fhir` connector: FHIR R4 resources of one type as an external table, read through the
//! FHIR Bulk Data Access API (`$export`: kick-off, status polling, NDJSON files) or through
//! plain FHIR search (Bundles followed by their `next` links).
//!
//! ```sql
//! CREATE EXTERNAL TABLE fhir.observations STORED AS FHIR
//! LOCATION 'https://ehr.example/fhir'
//! OPTIONS ('resource' 'Observation', 'export' 'system', 'client_id' 'medlake',
//!          'private_key' '${FHIR_KEY}', 'key_id' 'medlake-2024');
//! ```
//!
//! Every table has the same columns ([`schema`]): `resource_type`, `id`, `last_updated`
//! (`meta.lastUpdated`), `deleted` (a row of the export manifest's `deleted` output),
//! `resource` (the resource's JSON text exactly as the server sent it: one NDJSON line) and
//! `transaction_time` (the export's). `last_updated` is the watermark: a materialized view
//! over the table extracts incrementally, with `_since` (Bulk Data) or `_lastUpdated=gt`
//! (search) set to the mark of its last refresh ([`medlake_source::Watermarked`]).
//!
//! Authentication is SMART Backend Services (a JWT client assertion signed RS384 or ES384
//! with a key from the server's secret store, exchanged for an access token that is cached
//! until it expires: [`auth`]) or a bearer token. Secrets are `${NAME}` references resolved
//! at each scan, masked out of every message. Output files on another origin are fetched
//! only from the table's `file_origins`, and without credentials unless the manifest says
//! `requiresAccessToken` and the origin is one of `token_origins`.
//!
//! This crate knows no other connector; what it shares with `rest` (the vetted HTTP client,
//! `Retry-After`, FHIR Bundle paging) is in `medlake-source`.

pub mod auth;
mod bulk;
mod client;
mod exec;
mod rows;
mod search;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use url::{Origin, Url};

use auth::Auth;
pub use exec::FhirExec;
use medlake_source::options::{Options, invalid};
use medlake_source::scan::{Marked, Planner, Source, Table, Window};
use medlake_source::{Connector, Definition, Error, External, Policy, RemoteTable, Result};

/// Every option `STORED AS FHIR` accepts.
pub const OPTIONS: &[&str] = &[
    "resource",
    "mode",
    "export",
    "search",
    "page_size",
    "bearer_token",
    "client_id",
    "private_key",
    "key_id",
    "algorithm",
    "scope",
    "token_url",
    "file_origins",
    "token_origins",
    "allow_export_errors",
    "connect_timeout_seconds",
    "request_timeout_seconds",
    "max_retries",
    "retry_backoff_ms",
    "retry_max_wait_seconds",
    "poll_interval_seconds",
    "poll_max_wait_seconds",
    "export_timeout_seconds",
    "max_manifest_bytes",
    "max_line_bytes",
    "max_page_bytes",
    "batch_rows",
    "watermark_lag_seconds",
];

/// The watermark column of every FHIR table.
pub const WATERMARK: &str = "last_updated";

/// The columns of every FHIR table.
pub fn schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new(WATERMARK, time.clone(), true),
        Field::new("deleted", DataType::Boolean, false),
        Field::new("resource", DataType::Utf8, true),
        Field::new("transaction_time", time, true),
    ]))
}

/// Which `$export` operation a bulk table runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Export {
    System,
    Patient,
    Group(String),
}

impl Export {
    /// The kick-off path under the base URL.
    fn path(&self) -> String {
        match self {
            Export::System => "$export".into(),
            Export::Patient => "Patient/$export".into(),
            Export::Group(id) => format!("Group/{id}/$export"),
        }
    }
}

/// How a table reads its resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Bulk Data `$export`.
    Bulk(Export),
    /// `GET [base]/[resource]?<params>`, following the Bundles' `next` links.
    Search(Vec<(String, String)>),
}

/// Where and how a table reads, from LOCATION and OPTIONS.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// The FHIR base URL, ending in `/`.
    pub base: Url,
    /// The base URL as messages name it.
    pub server: String,
    pub resource: String,
    pub mode: Mode,
    pub page_size: usize,
    pub auth: Auth,
    /// Origins output files may be fetched from besides the server's own.
    pub file_origins: Vec<Origin>,
    /// Origins that may receive the access token (files, status URLs) besides the server's.
    pub token_origins: Vec<Origin>,
    pub allow_export_errors: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_max_wait: Duration,
    pub poll_interval: Duration,
    pub poll_max_wait: Duration,
    pub export_timeout: Duration,
    pub max_manifest_bytes: usize,
    pub max_line_bytes: usize,
    pub max_page_bytes: usize,
    pub batch_rows: usize,
    pub watermark_lag: chrono::Duration,
}

/// A FHIR resource type name (`Observation`), or a logical id (`[A-Za-z0-9\-\.]{1,64}`).
fn fhir_name(option: &str, value: &str, id: bool) -> Result<String> {
    let ok = if id {
        !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    } else {
        value.len() <= 64
            && value.starts_with(|c: char| c.is_ascii_uppercase())
            && value.bytes().all(|b| b.is_ascii_alphabetic())
    };
    if ok {
        Ok(value.to_string())
    } else if id {
        Err(invalid(option, format!("'{value}' is not a FHIR id")))
    } else {
        Err(invalid(
            option,
            format!("'{value}' is not a FHIR resource type, e.g. 'Observation'"),
        ))
    }
}

/// A comma-separated list of origins (`https://files.example`, `http://127.0.0.1:9000`).
fn origins(get: Options<'_>, option: &str) -> Result<Vec<Origin>> {
    let Some(list) = get.get(option) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let url = Url::parse(s).map_err(|e| {
                invalid(
                    option,
                    format!("'{s}' is not an origin ({e}); write 'https://host[:port]'"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https")
                || url.path() != "/"
                || url.query().is_some()
            {
                return Err(invalid(
                    option,
                    format!("'{s}' is not an origin: write 'https://host[:port]' without a path"),
                ));
            }
            Ok(url.origin())
        })
        .collect()
}

/// The LOCATION: an http(s) base URL without credentials, query or fragment, ending in `/`.
fn parse_location(location: &str) -> Result<(Url, String)> {
    let bad = |reason: &str| {
        invalid(
            "LOCATION",
            format!(
                "'{location}' {reason}; write the FHIR base URL, e.g. 'https://ehr.example/fhir'"
            ),
        )
    };
    let mut url = Url::parse(location).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("holds credentials; give them as OPTIONS"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "has a query or fragment; search parameters go in the 'search' option",
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    let server = url.as_str().trim_end_matches('/').to_string();
    Ok((url, server))
}

/// `mode`, `export` and `search`.
fn mode(get: Options<'_>) -> Result<Mode> {
    let mode = get.get("mode").unwrap_or("bulk").to_ascii_lowercase();
    match mode.as_str() {
        "bulk" => {
            if get.contains("search") {
                return Err(invalid("search", "applies to 'mode' 'search' only"));
            }
            let export = match get.get("export").unwrap_or("system") {
                e if e.eq_ignore_ascii_case("system") => Export::System,
                e if e.eq_ignore_ascii_case("patient") => Export::Patient,
                e => match e.split_once('/') {
                    Some((group, id)) if group.eq_ignore_ascii_case("group") => {
                        Export::Group(fhir_name("export", id, true)?)
                    }
                    _ => {
                        return Err(invalid(
                            "export",
                            format!("'{e}' is not 'system', 'patient' or 'group/<id>'"),
                        ));
                    }
                },
            };
            Ok(Mode::Bulk(export))
        }
        "search" => {
            if get.contains("export") {
                return Err(invalid("export", "applies to 'mode' 'bulk' only"));
            }
            let params: Vec<(String, String)> = get
                .get("search")
                .map(|q| {
                    url::form_urlencoded::parse(q.trim_start_matches('?').as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            if let Some((k, _)) = params
                .iter()
                .find(|(k, _)| matches!(k.as_str(), "_count" | "_lastUpdated"))
            {
                return Err(invalid(
                    "search",
                    format!("'{k}' is set by the table ('page_size', the watermark)"),
                ));
            }
            Ok(Mode::Search(params))
        }
        other => Err(invalid(
            "mode",
            format!("'{other}' is not 'bulk' or 'search'"),
        )),
    }
}

fn seconds(get: Options<'_>, name: &str, default: u64, max: u64, min: u64) -> Result<Duration> {
    Ok(Duration::from_secs(get.number(
        name,
        default,
        min..=max,
        "a number of seconds",
    )?))
}

impl Config {
    fn parse(location: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        for key in options.keys() {
            if !OPTIONS.contains(&key.as_str()) {
                return Err(invalid(
                    key,
                    format!("unknown option; FHIR accepts {}", OPTIONS.join(", ")),
                ));
            }
        }
        let (base, server) = parse_location(location)?;
        let get = Options(options);
        let resource = fhir_name(
            "resource",
            get.get("resource").ok_or_else(|| {
                invalid(
                    "resource",
                    "is required: the resource type, e.g. 'Observation'",
                )
            })?,
            false,
        )?;
        Ok(Self {
            base,
            server,
            resource,
            mode: mode(get)?,
            page_size: get.number("page_size", 100, 1..=10_000, "a number of resources")?,
            auth: Auth::parse(get)?,
            file_origins: origins(get, "file_origins")?,
            token_origins: origins(get, "token_origins")?,
            allow_export_errors: get.flag("allow_export_errors", false)?,
            connect_timeout: seconds(get, "connect_timeout_seconds", 10, 3600, 1)?,
            request_timeout: seconds(get, "request_timeout_seconds", 60, 86_400, 1)?,
            max_retries: get.number("max_retries", 3, 0..=20, "a number of retries")?,
            retry_backoff: Duration::from_millis(get.number(
                "retry_backoff_ms",
                500,
                1..=600_000,
                "a number of milliseconds",
            )?),
            retry_max_wait: seconds(get, "retry_max_wait_seconds", 60, 86_400, 1)?,
            poll_interval: seconds(get, "poll_interval_seconds", 5, 3600, 0)?,
            poll_max_wait: seconds(get, "poll_max_wait_seconds", 120, 86_400, 1)?,
            export_timeout: seconds(get, "export_timeout_seconds", 3600, 7 * 86_400, 1)?,
            max_manifest_bytes: get.number(
                "max_manifest_bytes",
                16 << 20,
                1024..=1 << 30,
                "a number of bytes",
            )?,
            max_line_bytes: get.number(
                "max_line_bytes",
                16 << 20,
                1024..=1 << 30,
                "a number of bytes",
            )?,
            max_page_bytes: get.number(
                "max_page_bytes",
                64 << 20,
                1024..=1 << 30,
                "a number of bytes",
            )?,
            batch_rows: get.number("batch_rows", 1000, 1..=1_000_000, "a number of rows")?,
            watermark_lag: chrono::Duration::seconds(get.number(
                "watermark_lag_seconds",
                2,
                0..=86_400,
                "a number of seconds",
            )?),
        })
    }

    /// Whether `origin` may receive the access token.
    pub(crate) fn token_allowed(&self, origin: &Origin) -> bool {
        *origin == self.base.origin() || self.token_origins.contains(origin)
    }

    /// Whether output files may be fetched from `origin` at all.
    pub(crate) fn file_allowed(&self, origin: &Origin) -> bool {
        self.token_allowed(origin) || self.file_origins.contains(origin)
    }
}

/// A mark as stored: RFC 3339 in UTC with microseconds.
pub(crate) fn mark_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A FHIR `instant` (what `_since` and `_lastUpdated` take).
pub(crate) fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `STORED AS FHIR`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FhirConnector;

#[async_trait]
impl Connector for FhirConnector {
    fn kinds(&self) -> &'static [&'static str] {
        &["FHIR"]
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
        _location: &str,
        _options: &BTreeMap<String, String>,
        _remote_schema: &str,
        _policy: &Arc<Policy>,
    ) -> Result<Vec<RemoteTable>> {
        Err(Error::NoSchemas {
            kind: "FHIR".into(),
            hint: "create one table per resource type with CREATE EXTERNAL TABLE ... STORED AS FHIR OPTIONS ('resource' 'Observation')".into(),
        })
    }
}

/// `CREATE EXTERNAL TABLE ... STORED AS FHIR`: checks the options, then asks the server for
/// its CapabilityStatement with the table's credentials (a SMART token is requested), so that
/// a wrong URL, key or token fails now. No export is started.
pub async fn define(
    location: &str,
    options: BTreeMap<String, String>,
    declared: SchemaRef,
    policy: &Arc<Policy>,
) -> Result<Definition> {
    let config = Config::parse(location, &options)?;
    if !declared.fields().is_empty() {
        return Err(invalid(
            "columns",
            "FHIR tables have fixed columns (resource_type, id, last_updated, deleted, resource, transaction_time): leave the column list out",
        ));
    }
    medlake_source::secret::check_references(&options, policy)?;
    policy.check_literal_host(&config.base)?;
    let client = client::Client::new(Arc::new(config), policy, Default::default())?;
    client.server_time().await?;
    Definition::new(
        "fhir",
        location,
        options,
        &serde_json::json!({"columns": "fixed"}),
    )
}

/// A table's state: its config and client, shared by its scans.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub policy: Arc<Policy>,
    /// SMART access tokens, kept until they expire.
    pub tokens: Arc<client::TokenCache>,
    /// The first error a scan raised (see [`External::take_failure`]).
    pub failure: std::sync::Mutex<Option<Error>>,
}

impl Shared {
    fn open(definition: &Definition, policy: &Arc<Policy>) -> Result<Self> {
        let config = Config::parse(&definition.location, &definition.options)?;
        policy.check_literal_host(&config.base)?;
        Ok(Self {
            config: Arc::new(config),
            policy: policy.clone(),
            tokens: Default::default(),
            failure: std::sync::Mutex::new(None),
        })
    }

    pub(crate) fn record_failure(&self, e: &Error) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert_with(|| e.clone());
        }
    }
}

impl Planner for Shared {
    type Window = Window<DateTime<Utc>>;

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn filter_pushdown(&self, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
        vec![TableProviderFilterPushDown::Unsupported; filters.len()]
    }

    fn plan(
        self: &Arc<Self>,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
        window: &Self::Window,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let all = schema();
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..all.fields().len()).collect());
        Ok(Arc::new(FhirExec::new(
            self.clone(),
            projection,
            window.clone(),
            limit,
        )?))
    }
}

impl Marked for Shared {
    type Mark = DateTime<Utc>;

    fn mark(&self, mark: &str) -> Result<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(mark)
            .map(|t| t.to_utc())
            .map_err(|e| Error::Data {
                what: format!("the stored mark of {}", self.config.server),
                message: format!("'{mark}' is not an RFC 3339 instant: {e}"),
            })
    }
}

#[async_trait]
impl Source for Shared {
    fn watermark(&self) -> Option<&str> {
        Some(WATERMARK)
    }

    /// The server's clock now (its `Date` header, less `watermark_lag_seconds`): every
    /// resource with `meta.lastUpdated` at or before it is visible to an export started after
    /// it, whose `transactionTime` is later.
    async fn high_mark(&self) -> Result<Option<String>> {
        let client = client::Client::new(self.config.clone(), &self.policy, self.tokens.clone())?;
        let now = client.server_time().await?;
        Ok(Some(mark_text(now - self.config.watermark_lag)))
    }

    fn failure(&self) -> &std::sync::Mutex<Option<Error>> {
        &self.failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_checked() {
        let base = "https://ehr.example/fhir";
        let ok = Config::parse(base, &options(&[("resource", "Observation")])).unwrap();
        assert_eq!(ok.base.as_str(), "https://ehr.example/fhir/");
        assert_eq!(ok.mode, Mode::Bulk(Export::System));
        let group = Config::parse(
            base,
            &options(&[("resource", "Patient"), ("export", "group/icu-1")]),
        )
        .unwrap();
        assert_eq!(group.mode, Mode::Bulk(Export::Group("icu-1".into())));
        for bad in [
            vec![("resource", "Observation'; DROP")],
            vec![("resource", "Observation"), ("export", "group/../x")],
            vec![("resource", "Observation"), ("export", "everything")],
            vec![("resource", "Observation"), ("bearer_token", "literal")],
            vec![("resource", "Observation"), ("poll_interval_seconds", "-1")],
            vec![
                ("resource", "Observation"),
                ("max_line_bytes", "99999999999999"),
            ],
            vec![
                ("resource", "Observation"),
                ("file_origins", "https://x/path"),
            ],
            vec![
                ("resource", "Observation"),
                ("mode", "search"),
                ("export", "system"),
            ],
            vec![("resource", "Observation"), ("nope", "1")],
            vec![],
        ] {
            let e = Config::parse(base, &options(&bad)).unwrap_err();
            assert_eq!(e.sqlstate(), "HV024", "{bad:?}: {e}");
        }
        assert!(
            Config::parse(
                "https://u:p@ehr.example/fhir",
                &options(&[("resource", "Patient")])
            )
            .is_err()
        );
        assert!(
            Config::parse(
                "ftp://ehr.example/fhir",
                &options(&[("resource", "Patient")])
            )
            .is_err()
        );
    }

    #[test]
    fn origins_decide_files_and_tokens() {
        let c = Config::parse(
            "https://ehr.example/fhir",
            &options(&[
                ("resource", "Observation"),
                (
                    "file_origins",
                    "https://files.example, http://127.0.0.1:9000",
                ),
                ("token_origins", "https://secure-files.example"),
            ]),
        )
        .unwrap();
        let o = |s: &str| Url::parse(s).unwrap().origin();
        assert!(c.token_allowed(&o("https://ehr.example/other")));
        assert!(!c.token_allowed(&o("https://files.example/a")));
        assert!(c.file_allowed(&o("https://files.example/a")));
        assert!(c.file_allowed(&o("http://127.0.0.1:9000/a")));
        assert!(!c.file_allowed(&o("http://127.0.0.1:9001/a")));
        assert!(c.token_allowed(&o("https://secure-files.example/x")));
        assert!(!c.file_allowed(&o("https://evil.example/x")));
    }
}
