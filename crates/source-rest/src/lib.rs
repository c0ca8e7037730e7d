//! The `rest` connector: JSON APIs read page by page over HTTP(S) (reqwest, rustls).
//!
//! ```sql
//! CREATE EXTERNAL TABLE telemetry.readings STORED AS REST
//! LOCATION 'https://devices.example/v1/readings'
//! OPTIONS ('records_pointer' '/data', 'pagination' 'cursor', 'cursor_pointer' '/meta/next',
//!          'bearer_token' '${DEVICES_TOKEN}', 'filter.taken_at.gt' 'since');
//! ```
//!
//! The options are documented in the README ("Sources: REST APIs (pull)"); [`OPTIONS`] lists
//! them. The columns are declared in the statement or inferred from the first page when the
//! table is created, and stored with the definition: opening a table makes no request. A scan
//! walks the pages in order and streams one Arrow batch per page; comparisons that an API
//! can filter on (`filter.<column>.<op>` options) are sent as query parameters and checked
//! again on every page. A `watermark` column makes incremental refreshes possible
//! ([`Watermarked`]).

mod exec;
mod http;
pub mod pushdown;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use serde::{Deserialize, Serialize};
use url::Url;

pub use exec::RestExec;
use http::{Http, Pager};
use medlake_source::json::{self, Converter};
pub use medlake_source::json::{Column, Path};
use medlake_source::mark::{encode_mark, max_of, parse_mark};
use medlake_source::options::{Options, invalid};
use medlake_source::scan::Table;
use medlake_source::secret;
use medlake_source::{Definition, External, Policy, RemoteTable};
use medlake_source::{Error, Result};
use pushdown::{FilterParam, Op, ParamValue, Predicate};

/// Every option `STORED AS REST` accepts, besides the `filter.<column>.<op>`,
/// `field.<column>` and `header.<name>` families ([`OPTION_PREFIXES`]).
pub const OPTIONS: &[&str] = &[
    "records_pointer",
    "record_pointer",
    "pagination",
    "next_link_pointer",
    "cursor_pointer",
    "cursor_param",
    "offset_param",
    "limit_param",
    "page_size",
    "max_pages",
    "bearer_token",
    "api_key",
    "api_key_header",
    "names",
    "watermark",
    "high_mark_query",
    "timestamp_param_format",
    "connect_timeout_seconds",
    "request_timeout_seconds",
    "max_retries",
    "retry_backoff_ms",
    "retry_max_wait_seconds",
    "max_page_bytes",
];

/// Option families: `filter.<column>.<op>`, `field.<column>`, `header.<name>`.
pub const OPTION_PREFIXES: &[&str] = &["filter.", "field.", "header."];

/// How the API says where the next page is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pagination {
    /// One page.
    None,
    /// A FHIR Bundle: the `link` entry whose `relation` is `next`.
    Fhir,
    /// A URL at a JSON pointer in the body.
    NextLink { pointer: String },
    /// The `Link` header's `rel="next"`.
    LinkHeader,
    /// A cursor at a JSON pointer in the body, sent back as a query parameter.
    Cursor { pointer: String, param: String },
    /// `offset` / `limit` query parameters.
    Offset { offset_param: String },
}

impl Pagination {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::Fhir => "fhir",
            Pagination::NextLink { .. } => "next_link",
            Pagination::LinkHeader => "link_header",
            Pagination::Cursor { .. } => "cursor",
            Pagination::Offset { .. } => "offset",
        }
    }
}

/// How requests authenticate; secrets stay `${NAME}` references here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Bearer(String),
    ApiKey { header: String, reference: String },
}

/// Where and how a table's pages are requested, from LOCATION and OPTIONS.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub url: Url,
    /// The LOCATION without its query: what messages name.
    pub server: String,
    pub records_pointer: String,
    pub record_pointer: String,
    pub pagination: Pagination,
    pub page_size: usize,
    pub limit_param: Option<String>,
    pub max_pages: Option<usize>,
    pub auth: Auth,
    /// `header.<name>` options: lower-case name, value as written.
    pub headers: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_max_wait: Duration,
    pub max_page_bytes: usize,
    pub timestamp_param_format: Option<String>,
    pub high_mark_query: Option<Vec<(String, String)>>,
}

fn pointer(option: &str, value: &str) -> Result<String> {
    if value.is_empty() || value.starts_with('/') {
        Ok(value.to_string())
    } else {
        Err(invalid(
            option,
            format!("'{value}' is not a JSON pointer: write '' (the whole value) or '/a/b'"),
        ))
    }
}

/// Header names whose values are credentials: they must be `${NAME}` references.
fn sensitive_header(name: &str) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
        || ["key", "token", "secret", "password", "auth", "session"]
            .iter()
            .any(|s| name.contains(s))
}

impl Config {
    fn parse(location: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let (url, server) = parse_location(location)?;
        let get = Options(options);
        let pagination = pagination(get)?;
        let fhir = pagination == Pagination::Fhir;
        let records_pointer = pointer(
            "records_pointer",
            get.get("records_pointer")
                .unwrap_or(if fhir { "/entry" } else { "" }),
        )?;
        let record_pointer = pointer(
            "record_pointer",
            get.get("record_pointer")
                .unwrap_or(if fhir { "/resource" } else { "" }),
        )?;
        let page_size =
            get.number::<usize>("page_size", 100, 1..=100_000, "a number of records")?;
        let limit_param = match (&pagination, get.get("limit_param")) {
            (_, Some(p)) => Some(p.to_string()),
            (Pagination::Offset { .. }, None) => Some("limit".to_string()),
            (_, None) if get.contains("page_size") => {
                return Err(invalid(
                    "page_size",
                    "is sent as the 'limit_param' query parameter: name it (e.g. '_count' for FHIR, 'per_page')",
                ));
            }
            (_, None) => None,
        };
        Ok(Self {
            url,
            server,
            records_pointer,
            record_pointer,
            pagination,
            page_size,
            limit_param,
            max_pages: get
                .optional_number("max_pages", 1..=u64::from(u32::MAX), "a number of pages")?
                .map(|n| n as usize),
            auth: auth(get)?,
            headers: headers(options)?,
            connect_timeout: Duration::from_secs(get.number(
                "connect_timeout_seconds",
                10,
                1..=3600,
                "a number of seconds",
            )?),
            request_timeout: Duration::from_secs(get.number(
                "request_timeout_seconds",
                60,
                1..=86_400,
                "a number of seconds",
            )?),
            max_retries: get.number("max_retries", 3, 0..=20, "a number of retries")?,
            retry_backoff: Duration::from_millis(get.number(
                "retry_backoff_ms",
                500,
                1..=600_000,
                "a number of milliseconds",
            )?),
            retry_max_wait: Duration::from_secs(get.number(
                "retry_max_wait_seconds",
                60,
                1..=86_400,
                "a number of seconds",
            )?),
            max_page_bytes: get.number(
                "max_page_bytes",
                64 << 20,
                1024..=1 << 30,
                "a number of bytes",
            )?,
            timestamp_param_format: timestamp_param_format(get)?,
            high_mark_query: high_mark_query(get)?,
        })
    }
}

/// The LOCATION: an http(s) URL without credentials or fragment; and the server as messages
/// name it (no query string).
fn parse_location(location: &str) -> Result<(Url, String)> {
    let bad_location = |reason: &str| {
        invalid(
            "LOCATION",
            format!("'{location}' {reason}; write 'https://host/path'"),
        )
    };
    let mut url = Url::parse(location).map_err(|e| bad_location(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad_location("is not an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad_location(
            "holds credentials; give them as OPTIONS ('bearer_token' '${NAME}') or ('api_key' '${NAME}')",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad_location("has no host"));
    }
    url.set_fragment(None);
    let server = {
        let mut s = url.clone();
        s.set_query(None);
        s.to_string()
    };
    Ok((url, server))
}

/// The `pagination` option and the options of its style.
fn pagination(get: Options<'_>) -> Result<Pagination> {
    let style = get
        .get("pagination")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "none".into());
    let pagination = match style.as_str() {
        "none" => Pagination::None,
        "fhir" => Pagination::Fhir,
        "next_link" => Pagination::NextLink {
            pointer: pointer(
                "next_link_pointer",
                get.get("next_link_pointer").unwrap_or("/next"),
            )?,
        },
        "link_header" => Pagination::LinkHeader,
        "cursor" => Pagination::Cursor {
            pointer: pointer(
                "cursor_pointer",
                get.get("cursor_pointer").ok_or_else(|| {
                    invalid(
                        "cursor_pointer",
                        "is required with 'pagination' 'cursor': where the next cursor is in a page, e.g. '/meta/next_cursor'",
                    )
                })?,
            )?,
            param: get.get("cursor_param").unwrap_or("cursor").to_string(),
        },
        "offset" => Pagination::Offset {
            offset_param: get.get("offset_param").unwrap_or("offset").to_string(),
        },
        other => {
            return Err(invalid(
                "pagination",
                format!("'{other}' is not one of none, fhir, next_link, link_header, cursor, offset"),
            ));
        }
    };
    for (option, style) in [
        ("next_link_pointer", "next_link"),
        ("cursor_pointer", "cursor"),
        ("cursor_param", "cursor"),
        ("offset_param", "offset"),
    ] {
        if get.contains(option) && pagination.name() != style {
            return Err(invalid(
                option,
                format!("applies to 'pagination' '{style}' only"),
            ));
        }
    }
    Ok(pagination)
}

/// `bearer_token` or `api_key` (with `api_key_header`), as `${NAME}` references.
fn auth(get: Options<'_>) -> Result<Auth> {
    let auth = match (get.get("bearer_token"), get.get("api_key")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "api_key",
                "give 'bearer_token' or 'api_key', not both",
            ));
        }
        (Some(token), None) => {
            secret::require_reference("bearer_token", token)?;
            Auth::Bearer(token.to_string())
        }
        (None, Some(key)) => {
            secret::require_reference("api_key", key)?;
            Auth::ApiKey {
                header: get
                    .get("api_key_header")
                    .unwrap_or("x-api-key")
                    .to_ascii_lowercase(),
                reference: key.to_string(),
            }
        }
        (None, None) => {
            if get.contains("api_key_header") {
                return Err(invalid("api_key_header", "needs 'api_key'"));
            }
            Auth::None
        }
    };
    Ok(auth)
}

/// The `header.<name>` options; those that carry credentials must be `${NAME}` references.
fn headers(options: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    for (key, value) in options {
        let Some(name) = key.strip_prefix("header.") else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(key, format!("'{name}' is not an HTTP header name")));
        }
        if sensitive_header(&name) && secret::reference(value).is_none() {
            return Err(invalid(
                key,
                "this header carries a credential and secrets are never stored: write a reference to an environment variable, e.g. '${API_TOKEN}'",
            ));
        }
        headers.push((name, value.clone()));
    }
    Ok(headers)
}

/// How a timestamp filter is written in a query parameter (a chrono strftime format).
fn timestamp_param_format(get: Options<'_>) -> Result<Option<String>> {
    let Some(f) = get.get("timestamp_param_format") else {
        return Ok(None);
    };
    use chrono::format::{Item, StrftimeItems};
    if f.is_empty() || StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
        return Err(invalid(
            "timestamp_param_format",
            format!("'{f}' is not a chrono strftime format, e.g. '%Y-%m-%dT%H:%M:%SZ' or '%s'"),
        ));
    }
    Ok(Some(f.to_string()))
}

/// The query parameters that ask the API for the highest watermark.
fn high_mark_query(get: Options<'_>) -> Result<Option<Vec<(String, String)>>> {
    let high_mark_query = get.get("high_mark_query").map(|q| {
        url::form_urlencoded::parse(q.trim_start_matches('?').as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect::<Vec<_>>()
    });
    if high_mark_query.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid(
            "high_mark_query",
            "write query parameters, e.g. 'sort=-updated_at&limit=1'",
        ));
    }
    Ok(high_mark_query)
}

fn check_options(options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        let known = OPTIONS.contains(&key.as_str())
            || OPTION_PREFIXES
                .iter()
                .any(|p| key.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if !known {
            return Err(invalid(
                key,
                format!(
                    "unknown option; REST accepts {}, and filter.<column>.<op>, field.<column>, header.<name>",
                    OPTIONS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// What `define` stores in [`Definition::remote`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Remote {
    columns: Vec<Column>,
    /// Whether the columns were inferred from the first page (else declared).
    inferred: bool,
}

/// `CREATE EXTERNAL TABLE ... STORED AS REST`: checks the options, reads the first page, and
/// infers the columns from it (or checks the declared ones against it).
pub async fn define(
    location: &str,
    options: BTreeMap<String, String>,
    declared: SchemaRef,
    policy: &Arc<Policy>,
) -> Result<Definition> {
    check_options(&options)?;
    let config = Config::parse(location, &options)?;
    policy.check_literal_host(&config.url)?;
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
            if value.is_empty() {
                return Err(invalid(
                    key,
                    "write a JSON pointer into the record, e.g. '/vitals/hr'",
                ));
            }
            fields.push((name.to_string(), pointer(key, value)?));
        }
    }
    let http = Http::new(&config, policy)?;
    let first = Pager::single(&http, &config, &[])
        .next()
        .await?
        .map(|p| p.records)
        .unwrap_or_default();
    let malformed = |message: String| Error::MalformedPage {
        server: config.server.clone(),
        page: 1,
        message,
    };
    let (columns, inferred) = if declared.fields().is_empty() {
        if first.is_empty() {
            return Err(invalid(
                "columns",
                format!(
                    "the first page of {} has no records to infer the columns from; declare them: CREATE EXTERNAL TABLE t (id VARCHAR, ...) STORED AS REST ...",
                    config.server
                ),
            ));
        }
        let columns =
            json::infer(&first, &config.record_pointer, exact_names, &fields).map_err(malformed)?;
        if columns.is_empty() {
            return Err(invalid(
                "columns",
                "the records of the first page have no members; declare the columns",
            ));
        }
        (columns, true)
    } else {
        let mut columns = Vec::new();
        for field in declared.fields() {
            let data_type =
                json::read_type(field.data_type()).map_err(|hint| Error::UnsupportedType {
                    table: config.server.clone(),
                    column: field.name().clone(),
                    remote_type: field.data_type().to_string(),
                    hint,
                })?;
            let path = match fields.iter().find(|(n, _)| n == field.name()) {
                Some((_, p)) => Path::Pointer(p.clone()),
                None => Path::Key(field.name().clone()),
            };
            columns.push(Column {
                name: field.name().clone(),
                data_type,
                nullable: field.is_nullable(),
                path,
            });
        }
        if let Some((name, _)) = fields
            .iter()
            .find(|(n, _)| !columns.iter().any(|c| c.name == *n))
        {
            return Err(invalid(
                &format!("field.{name}"),
                format!("'{name}' is not a declared column"),
            ));
        }
        (columns, false)
    };
    let definition = Definition::new("rest", location, options, &Remote { columns, inferred })?;
    // Opening checks the watermark and filter options against the columns; the first page
    // must fit them (a declared column list that does not fit the API fails here).
    let table = Shared::open(&definition, policy)?;
    table.converter.convert(&first).map_err(malformed)?;
    Ok(definition)
}

/// `IMPORT FOREIGN SCHEMA` has nothing to list at a REST API.
pub async fn list_tables(
    _location: &str,
    _options: &BTreeMap<String, String>,
    _remote_schema: &str,
) -> Result<Vec<RemoteTable>> {
    Err(Error::NoSchemas {
        kind: "REST".into(),
        hint: "create one table per endpoint with CREATE EXTERNAL TABLE ... STORED AS REST".into(),
    })
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub converter: Converter,
    pub schema: SchemaRef,
    pub filters: Vec<FilterParam>,
    pub watermark: Option<usize>,
    /// The first error a scan raised (see [`External::take_failure`]).
    pub failure: std::sync::Mutex<Option<Error>>,
    /// What the table's requests may reach, and its secrets.
    pub policy: Arc<Policy>,
}

impl Shared {
    /// Opens a stored definition; no request is made (a host given as an address is checked
    /// now, names when they are resolved).
    pub fn open(definition: &Definition, policy: &Arc<Policy>) -> Result<Self> {
        let options = &definition.options;
        let config = Config::parse(&definition.location, options)?;
        policy.check_literal_host(&config.url)?;
        let remote: Remote =
            serde_json::from_value(definition.remote.clone()).map_err(|e| Error::Data {
                what: "external table definition".into(),
                message: e.to_string(),
            })?;
        let columns = remote.columns;
        let find = |option: &str, name: &str| -> Result<usize> {
            columns
                .iter()
                .position(|c| c.name == name)
                .or_else(|| {
                    columns
                        .iter()
                        .position(|c| c.name.eq_ignore_ascii_case(name))
                })
                .ok_or_else(|| invalid(option, format!("'{name}' is not a column of the table")))
        };
        let watermark = options
            .get("watermark")
            .map(|name| find("watermark", name))
            .transpose()?;
        if let Some(w) = watermark {
            let t = &columns[w].data_type;
            let usable = t.is_integer()
                || matches!(
                    t,
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Utf8
                );
            if !usable {
                return Err(invalid(
                    "watermark",
                    format!(
                        "a {t} column cannot be a watermark: use an integer, date, timestamp or text column"
                    ),
                ));
            }
        } else if options.contains_key("high_mark_query") {
            return Err(invalid("high_mark_query", "needs 'watermark'"));
        }
        let reserved: Vec<&str> = [
            config.limit_param.as_deref(),
            match &config.pagination {
                Pagination::Cursor { param, .. } => Some(param.as_str()),
                Pagination::Offset { offset_param } => Some(offset_param.as_str()),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut filters = Vec::new();
        for (key, param) in options {
            let Some(rest) = key.strip_prefix("filter.") else {
                continue;
            };
            let (column, op) = rest
                .rsplit_once('.')
                .and_then(|(c, op)| Some((c, Op::parse(op)?)))
                .ok_or_else(|| {
                    invalid(
                        key,
                        "write 'filter.<column>.<op>' with <op> one of eq, gt, ge, lt, le",
                    )
                })?;
            if param.is_empty() {
                return Err(invalid(key, "name the API's query parameter, e.g. 'since'"));
            }
            if reserved.contains(&param.as_str()) {
                return Err(invalid(
                    key,
                    format!("'{param}' is the pagination's own parameter"),
                ));
            }
            filters.push(FilterParam {
                column: find(key, column)?,
                op,
                param: param.clone(),
            });
        }
        let converter = Converter::new(columns, config.record_pointer.clone());
        Ok(Self {
            schema: converter.schema(),
            config,
            converter,
            filters,
            watermark,
            failure: std::sync::Mutex::new(None),
            policy: policy.clone(),
        })
    }
}

/// Rows restricted by a watermark range, on top of the table's own filters.
pub(crate) type Window = medlake_source::scan::Window<ScalarValue>;

impl Shared {
    pub(crate) fn record_failure(&self, e: &Error) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert_with(|| e.clone());
        }
    }

    fn malformed(&self, page: usize, message: String) -> Error {
        Error::MalformedPage {
            server: self.config.server.clone(),
            page,
            message,
        }
    }

    /// Reads every page of a scan into `sink`, one batch per page.
    pub(crate) async fn read(
        &self,
        params: &[(String, String)],
        predicates: &[Predicate],
        projection: &[usize],
        limit: Option<usize>,
        sink: &tokio::sync::mpsc::Sender<DfResult<RecordBatch>>,
    ) -> Result<()> {
        let http = Http::new(&self.config, &self.policy)?;
        let mut pager = Pager::new(&http, &self.config, params);
        let mut remaining = limit;
        while let Some(page) = pager.next().await? {
            let batch = self
                .converter
                .convert(&page.records)
                .map_err(|m| self.malformed(page.number, m))?;
            drop(page.records);
            let mut batch = pushdown::apply(&batch, predicates)
                .and_then(|b| b.project(projection))
                .map_err(|e| Error::Data {
                    what: format!("{} page {}", self.config.server, page.number),
                    message: e.to_string(),
                })?;
            if let Some(left) = remaining.as_mut() {
                batch = batch.slice(0, batch.num_rows().min(*left));
                *left -= batch.num_rows();
            }
            if batch.num_rows() > 0 && sink.send(Ok(batch)).await.is_err() {
                return Ok(()); // the reader is gone
            }
            if remaining == Some(0) {
                break;
            }
        }
        Ok(())
    }
}

impl medlake_source::scan::Planner for Shared {
    type Window = Window;

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn filter_pushdown(&self, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
        let columns = self.converter.columns();
        filters
            .iter()
            .map(|f| {
                if pushdown::translate(f, columns, &self.filters).is_some() {
                    // The scan checks it again on every page ([`pushdown::apply`]).
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
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
        let columns = self.converter.columns();
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..columns.len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        let mut predicates = Vec::new();
        let mut sent: Vec<ParamValue> = Vec::new();
        for filter in filters {
            if let Some((predicate, params)) = pushdown::translate(filter, columns, &self.filters) {
                predicates.push(predicate);
                sent.extend(params);
            }
        }
        if let Some(w) = self.watermark {
            if let Some(after) = &window.after {
                predicates.push(Predicate {
                    column: w,
                    op: Op::Gt,
                    value: after.clone(),
                    or_null: false,
                });
                // The API's since-parameter with the stored mark: only new records are read.
                sent.extend(
                    self.filters
                        .iter()
                        .filter(|p| p.column == w && matches!(p.op, Op::Gt | Op::Ge))
                        .map(|p| ParamValue {
                            name: p.param.clone(),
                            op: p.op,
                            value: after.clone(),
                        }),
                );
            }
            if let Some(upto) = &window.upto {
                predicates.push(Predicate {
                    column: w,
                    op: Op::Le,
                    value: upto.clone(),
                    or_null: window.after.is_none(),
                });
            }
        }
        let format = self.config.timestamp_param_format.as_deref();
        let params = pushdown::merge(sent)
            .into_iter()
            .filter_map(|p| Some((p.name, pushdown::format_param(&p.value, format)?)))
            .collect();
        Ok(Arc::new(RestExec::new(
            self.clone(),
            schema,
            projection,
            params,
            predicates,
            limit,
        )))
    }
}

impl medlake_source::scan::Marked for Shared {
    type Mark = ScalarValue;

    fn mark(&self, mark: &str) -> Result<ScalarValue> {
        let w = self
            .watermark
            .ok_or_else(|| invalid("watermark", "the table has no watermark column"))?;
        parse_mark(mark, &self.converter.columns()[w].data_type)
            .map_err(|reason| invalid("watermark", reason))
    }
}

#[async_trait]
impl medlake_source::scan::Source for Shared {
    fn watermark(&self) -> Option<&str> {
        self.watermark
            .map(|w| self.converter.columns()[w].name.as_str())
    }

    /// The highest watermark: over the first page of the `high_mark_query` request, else
    /// over every page.
    async fn high_mark(&self) -> Result<Option<String>> {
        let Some(w) = self.watermark else {
            return Ok(None);
        };
        let http = Http::new(&self.config, &self.policy)?;
        let mut pager = match &self.config.high_mark_query {
            Some(query) => Pager::single(&http, &self.config, query),
            None => Pager::new(&http, &self.config, &[]),
        };
        let mut best: Option<ScalarValue> = None;
        while let Some(page) = pager.next().await? {
            let batch = self
                .converter
                .convert(&page.records)
                .map_err(|m| self.malformed(page.number, m))?;
            let found = max_of(&batch, w).map_err(|m| self.malformed(page.number, m))?;
            if let Some(v) = found
                && best
                    .as_ref()
                    .is_none_or(|b| v.partial_cmp(b) == Some(std::cmp::Ordering::Greater))
            {
                best = Some(v);
            }
        }
        Ok(best.as_ref().and_then(encode_mark))
    }

    fn failure(&self) -> &std::sync::Mutex<Option<Error>> {
        &self.failure
    }
}

/// The `REST` connector, registered in a [`medlake_source::Registry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RestConnector;

#[async_trait]
impl medlake_source::Connector for RestConnector {
    fn kinds(&self) -> &'static [&'static str] {
        &["REST"]
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
        let _ = policy;
        list_tables(location, options, remote_schema).await
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
    fn options_are_checked_and_secrets_must_be_references() {
        let location = "https://devices.example/v1/readings?site=3";
        let c = Config::parse(location, &options(&[("pagination", "fhir")])).unwrap();
        assert_eq!(c.server, "https://devices.example/v1/readings");
        assert_eq!(
            (c.records_pointer.as_str(), c.record_pointer.as_str()),
            ("/entry", "/resource")
        );
        let c = Config::parse(
            location,
            &options(&[("pagination", "offset"), ("page_size", "50")]),
        )
        .unwrap();
        assert_eq!(c.limit_param.as_deref(), Some("limit"));
        for (bad, option) in [
            (options(&[("bearer_token", "abc123")]), "bearer_token"),
            (options(&[("api_key", "abc123")]), "api_key"),
            (
                options(&[("header.x-auth-token", "abc123")]),
                "header.x-auth-token",
            ),
            (options(&[("pagination", "pages")]), "pagination"),
            (options(&[("pagination", "cursor")]), "cursor_pointer"),
            (options(&[("cursor_pointer", "/next")]), "cursor_pointer"),
            (options(&[("page_size", "10")]), "page_size"),
            (options(&[("records_pointer", "data")]), "records_pointer"),
            (options(&[("max_retries", "many")]), "max_retries"),
            (
                options(&[("timestamp_param_format", "%Q")]),
                "timestamp_param_format",
            ),
        ] {
            match Config::parse(location, &bad) {
                Err(Error::InvalidOption { option: o, reason }) => {
                    assert_eq!(o, option, "{reason}");
                    assert!(!reason.contains("abc123"), "{reason}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(Config::parse("https://u:p@devices.example/r", &options(&[])).is_err());
        assert!(Config::parse("ftp://devices.example/r", &options(&[])).is_err());
        // A literal header that is not a credential is fine.
        assert!(
            Config::parse(
                location,
                &options(&[("header.accept", "application/fhir+json")])
            )
            .is_ok()
        );
        assert!(check_options(&options(&[("paginaton", "fhir")])).is_err());
        assert!(
            check_options(&options(&[
                ("filter.taken_at.gt", "since"),
                ("field.hr", "/v/hr")
            ]))
            .is_ok()
        );
    }
}
