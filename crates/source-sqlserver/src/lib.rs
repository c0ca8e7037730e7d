//! The `sqlserver` connector: SQL Server and Azure SQL Database tables over tiberius.
//!
//! ```sql
//! CREATE EXTERNAL TABLE ehr.patients STORED AS SQLSERVER
//! LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
//! OPTIONS ('table' 'dbo.Patients', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}');
//! ```
//!
//! The options are documented in the README ("Sources: SQL Server and Azure SQL"); [`OPTIONS`]
//! lists them. Scans push projections, filters and limits down as parameterised T-SQL
//! (`sp_executesql`), read in parallel partitions over a column's range, and stream rows into
//! Arrow batches through a bounded channel: a table never sits whole in memory.

mod exec;
pub mod pushdown;
pub mod tracking;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tiberius::{AuthMethod, Client, ColumnData, EncryptionLevel, Query};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use tracing::{debug, warn};

pub use exec::SqlServerExec;
use medlake_source::options::Options;
use medlake_source::scan::Table;
use medlake_source::secret;
use medlake_source::{Definition, External, Policy, RemoteTable};
use medlake_source::{Error, Result};
use pushdown::{Param, Translation};
use types::{ColumnBuilder, RemoteColumn, quote};

/// Every option `STORED AS SQLSERVER` accepts.
pub const OPTIONS: &[&str] = &[
    "table",
    "user",
    "password",
    "access_token",
    "encrypt",
    "trust_server_certificate",
    "ca_certificate",
    "application_name",
    "names",
    "watermark",
    "partition_column",
    "lower_bound",
    "upper_bound",
    "num_partitions",
    "batch_size",
    "changes",
    "connect_timeout_seconds",
    "query_timeout_seconds",
    "retries",
];

/// How a connection is made, from LOCATION and OPTIONS. Secrets stay `${NAME}` references
/// here; they are resolved when connecting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub access_token: Option<String>,
    pub encrypt: Encrypt,
    pub trust_server_certificate: bool,
    pub ca_certificate: Option<String>,
    pub application_name: String,
    pub connect_timeout_seconds: u64,
    pub query_timeout_seconds: Option<u64>,
    pub retries: u32,
}

/// The `encrypt` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encrypt {
    /// `true` (the default; Azure SQL requires it): TLS for the whole session.
    Required,
    /// `login`: TLS for the login only, as SQL Server's own default.
    LoginOnly,
    /// `false`: no TLS at all.
    None,
}

impl Connection {
    /// `sqlserver://host:port/database`, never a secret: what messages name.
    pub fn server(&self) -> String {
        format!("sqlserver://{}:{}/{}", self.host, self.port, self.database)
    }

    fn parse(location: &str, options: &BTreeMap<String, String>) -> Result<Self> {
        let bad_location = |reason: &str| Error::InvalidOption {
            option: "LOCATION".into(),
            reason: format!("'{location}' {reason}; write 'sqlserver://host[:port]/database'"),
        };
        let url = url::Url::parse(location).map_err(|e| bad_location(&e.to_string()))?;
        if url.scheme() != "sqlserver" {
            return Err(bad_location("is not a sqlserver:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad_location(
                "holds credentials; give them as OPTIONS ('user' '${NAME}', 'password' '${NAME}')",
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad_location("has no host"))?
            .to_string();
        let database = url.path().trim_matches('/').to_string();
        if database.is_empty() || database.contains('/') {
            return Err(bad_location("names no database"));
        }
        let options = Options(options);
        let get = |name: &str| options.get(name);
        // Bounded: a day at most (untrusted numbers never reach a timer unchecked).
        let seconds = "a whole number of seconds";
        let encrypt = match get("encrypt").map(str::to_ascii_lowercase).as_deref() {
            None | Some("true" | "yes" | "required" | "mandatory") => Encrypt::Required,
            Some("login") => Encrypt::LoginOnly,
            Some("false" | "no" | "none") => Encrypt::None,
            Some(other) => {
                return Err(Error::InvalidOption {
                    option: "encrypt".into(),
                    reason: format!("'{other}' is not one of true, login, false"),
                });
            }
        };
        let password = get("password").map(str::to_string);
        if let Some(p) = &password {
            secret::require_reference("password", p)?;
        }
        let access_token = get("access_token").map(str::to_string);
        if let Some(t) = &access_token {
            secret::require_reference("access_token", t)?;
        }
        let user = get("user").map(str::to_string);
        match (&user, &password, &access_token) {
            (Some(_), Some(_), None) | (None, None, Some(_)) => {}
            (_, _, Some(_)) => {
                return Err(Error::InvalidOption {
                    option: "access_token".into(),
                    reason: "an Azure AD access token replaces 'user' and 'password'; give one or the other".into(),
                });
            }
            _ => {
                return Err(Error::InvalidOption {
                    option: "user".into(),
                    reason: "a SQL login needs 'user' and 'password' (Azure AD: 'access_token')"
                        .into(),
                });
            }
        }
        Ok(Self {
            host,
            port: url.port().unwrap_or(1433),
            database,
            user,
            password,
            access_token,
            encrypt,
            trust_server_certificate: options.flag("trust_server_certificate", false)?,
            ca_certificate: get("ca_certificate").map(str::to_string),
            application_name: get("application_name").unwrap_or("medlake").to_string(),
            connect_timeout_seconds: options.number(
                "connect_timeout_seconds",
                15,
                1..=86_400,
                seconds,
            )?,
            query_timeout_seconds: options.optional_number(
                "query_timeout_seconds",
                1..=86_400,
                seconds,
            )?,
            retries: options.number("retries", 3, 0..=10, "a number")?,
        })
    }

    fn config(&self, policy: &Policy) -> Result<tiberius::Config> {
        let mut config = tiberius::Config::new();
        config.host(&self.host);
        config.port(self.port);
        config.database(&self.database);
        config.application_name(&self.application_name);
        config.encryption(match self.encrypt {
            Encrypt::Required => EncryptionLevel::Required,
            Encrypt::LoginOnly => EncryptionLevel::Off,
            Encrypt::None => EncryptionLevel::NotSupported,
        });
        if self.trust_server_certificate {
            config.trust_cert();
        } else if self.ca_certificate.is_some() {
            // A file of the server: only under the policy's allowed paths.
            let ca = self.ca_file(policy)?;
            config.trust_cert_ca(ca.to_string_lossy());
        }
        let auth = match (&self.user, &self.password, &self.access_token) {
            (_, _, Some(token)) => {
                AuthMethod::aad_token(secret::resolve("access_token", token, policy)?.expose())
            }
            (Some(user), Some(password), None) => AuthMethod::sql_server(
                secret::resolve("user", user, policy)?.expose(),
                secret::resolve("password", password, policy)?.expose(),
            ),
            _ => {
                return Err(Error::InvalidOption {
                    option: "user".into(),
                    reason: "no credentials".into(),
                });
            }
        };
        config.authentication(auth);
        Ok(config)
    }

    /// The `ca_certificate` file, checked against the policy's paths (canonical).
    fn ca_file(&self, policy: &Policy) -> Result<std::path::PathBuf> {
        match &self.ca_certificate {
            Some(ca) => policy.check_path("option 'ca_certificate'", std::path::Path::new(ca)),
            None => Ok(std::path::PathBuf::new()),
        }
    }

    /// What can be checked without connecting: the `ca_certificate` file and a host given as
    /// an address (names are checked when they are resolved).
    pub fn check(&self, policy: &Policy) -> Result<()> {
        if self.ca_certificate.is_some() && !self.trust_server_certificate {
            self.ca_file(policy)?;
        }
        if let Ok(ip) = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            && !policy.any_host()
        {
            policy.check_ip(&self.host, ip)?;
        }
        Ok(())
    }

    /// Connects and logs in, retrying with backoff (0.2 s, 0.4 s, 0.8 s ...) while the server
    /// cannot be reached; a refused login is not retried. Every TCP connection (the gateway's
    /// redirect too) goes to an address the policy vetted.
    pub async fn connect(&self, policy: &Policy) -> Result<Client<Compat<TcpStream>>> {
        let config = self.config(policy)?;
        let mut attempt: u32 = 0;
        loop {
            match self.connect_once(config.clone(), policy).await {
                Ok(client) => return Ok(client),
                Err(e @ (Error::Connect { .. } | Error::Timeout { .. }))
                    if attempt < self.retries =>
                {
                    let wait = Duration::from_millis(200u64 << attempt.min(10));
                    warn!(server = %self.server(), error = %e, ?wait, "connecting failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_once(
        &self,
        config: tiberius::Config,
        policy: &Policy,
    ) -> Result<Client<Compat<TcpStream>>> {
        let timeout = Duration::from_secs(self.connect_timeout_seconds.max(1));
        let server = self.server();
        let attempt = async {
            let mut config = config;
            let (mut host, mut port) = (self.host.clone(), self.port);
            // Azure SQL's gateway may redirect the login to another host once.
            for _ in 0..2 {
                let tcp = medlake_source::policy::connect_tcp(policy, &host, port)
                    .await
                    .map_err(|e| match e {
                        Error::Connect { message, .. } => Error::Connect {
                            server: server.clone(),
                            message,
                        },
                        other => other,
                    })?;
                let _ = tcp.set_nodelay(true);
                match Client::connect(config.clone(), tcp.compat_write()).await {
                    Ok(client) => return Ok(client),
                    Err(tiberius::error::Error::Routing {
                        host: to_host,
                        port: to_port,
                    }) => {
                        debug!(host = %to_host, port = to_port, "redirected");
                        config.host(&to_host);
                        config.port(to_port);
                        // The next connection goes to the redirect's host, vetted again.
                        host = to_host;
                        port = to_port;
                    }
                    Err(e) => return Err(login_error(&server, e)),
                }
            }
            Err(Error::Connect {
                server: server.clone(),
                message: "redirected more than once".into(),
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| Error::Timeout {
                server: self.server(),
                seconds: timeout.as_secs(),
                during: "connecting".into(),
            })?
    }
}

fn login_error(server: &str, e: tiberius::error::Error) -> Error {
    use tiberius::error::Error as T;
    match e {
        T::Server(token) if token.code() == 18456 || token.class() == 14 => Error::LoginFailed {
            server: server.into(),
            message: format!("{} (error {})", token.message(), token.code()),
        },
        T::Server(token) => Error::Remote {
            server: server.into(),
            code: Some(token.code()),
            message: token.message().to_string(),
        },
        T::Io { message, .. } => Error::Connect {
            server: server.into(),
            message,
        },
        other => Error::Connect {
            server: server.into(),
            message: other.to_string(),
        },
    }
}

/// An error while running a statement at the server.
pub(crate) fn query_error(server: &str, table: &str, e: tiberius::error::Error) -> Error {
    use tiberius::error::Error as T;
    match e {
        T::Server(token) if token.code() == 208 => Error::RemoteTableNotFound {
            server: server.into(),
            table: table.into(),
        },
        T::Server(token) => Error::Remote {
            server: server.into(),
            code: Some(token.code()),
            message: format!("{} (error {})", token.message(), token.code()),
        },
        T::Io { message, .. } => Error::ConnectionLost {
            server: server.into(),
            table: table.into(),
            message,
        },
        other => Error::ConnectionLost {
            server: server.into(),
            table: table.into(),
            message: other.to_string(),
        },
    }
}

/// Runs a query and collects its rows (for small metadata queries).
async fn rows(
    client: &mut Client<Compat<TcpStream>>,
    sql: &str,
    params: &[Param],
    server: &str,
    what: &str,
) -> Result<Vec<Vec<ColumnData<'static>>>> {
    let mut query = Query::new(sql.to_string());
    for p in params {
        p.bind(&mut query);
    }
    let stream = query
        .query(client)
        .await
        .map_err(|e| query_error(server, what, e))?;
    let rows = stream
        .into_first_result()
        .await
        .map_err(|e| query_error(server, what, e))?;
    Ok(rows.into_iter().map(|r| r.into_iter().collect()).collect())
}

fn text(value: &ColumnData<'_>) -> Option<String> {
    match value {
        ColumnData::String(Some(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn int(value: &ColumnData<'_>) -> Option<i64> {
    match value {
        ColumnData::U8(v) => v.map(i64::from),
        ColumnData::I16(v) => v.map(i64::from),
        ColumnData::I32(v) => v.map(i64::from),
        ColumnData::I64(v) => *v,
        _ => None,
    }
}

/// `dbo.Patients`, `[dbo].[Odd.Name]` or `Patients` (schema `dbo`).
fn parse_table(option: &str) -> Result<(String, String)> {
    let bad = |reason: &str| Error::InvalidOption {
        option: "table".into(),
        reason: format!("'{option}' {reason}; write 'schema.table'"),
    };
    let mut parts = Vec::new();
    let mut rest = option.trim();
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let mut name = String::new();
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == ']' {
                    if chars.peek().map(|(_, c)| *c) == Some(']') {
                        chars.next();
                        name.push(']');
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    name.push(c);
                }
            }
            let end = end.ok_or_else(|| bad("has an unclosed ["))?;
            parts.push(name);
            rest = &inner[end..];
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            parts.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
        if let Some(after) = rest.strip_prefix('.') {
            rest = after;
            if rest.is_empty() {
                return Err(bad("ends with a dot"));
            }
        } else if !rest.is_empty() {
            return Err(bad("is not a table name"));
        }
    }
    match parts.as_slice() {
        [table] if !table.is_empty() => Ok(("dbo".into(), table.clone())),
        [schema, table] if !schema.is_empty() && !table.is_empty() => {
            Ok((schema.clone(), table.clone()))
        }
        _ => Err(bad("is not a table name")),
    }
}

/// One column of an external table: its local name and type, and the remote column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    pub remote: RemoteColumn,
}

impl Column {
    pub fn quoted(&self) -> String {
        quote(&self.remote.name)
    }
}

/// What `define` stores in [`Definition::remote`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Remote {
    schema: String,
    table: String,
    columns: Vec<Column>,
    /// Read through Change Tracking (`'changes' 'change_tracking'`): the primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracked: Option<tracking::Tracked>,
}

fn check_options(options: &BTreeMap<String, String>) -> Result<()> {
    for key in options.keys() {
        if !OPTIONS.contains(&key.as_str()) {
            return Err(Error::InvalidOption {
                option: key.clone(),
                reason: format!("unknown option; SQLSERVER accepts {}", OPTIONS.join(", ")),
            });
        }
    }
    Ok(())
}

/// Reads the remote columns of `schema.table` from `INFORMATION_SCHEMA.COLUMNS`.
async fn remote_columns(
    client: &mut Client<Compat<TcpStream>>,
    connection: &Connection,
    schema: &str,
    table: &str,
) -> Result<Vec<RemoteColumn>> {
    let server = connection.server();
    let found = rows(
        client,
        "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, \
         NUMERIC_SCALE, DATETIME_PRECISION, IS_NULLABLE FROM INFORMATION_SCHEMA.COLUMNS \
         WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2 ORDER BY ORDINAL_POSITION",
        &[Param::Text(schema.into()), Param::Text(table.into())],
        &server,
        &format!("{schema}.{table}"),
    )
    .await?;
    if found.is_empty() {
        return Err(Error::RemoteTableNotFound {
            server,
            table: format!("{schema}.{table}"),
        });
    }
    found
        .iter()
        .map(|row| {
            let get = |i: usize| row.get(i).cloned().unwrap_or(ColumnData::I32(None));
            Ok(RemoteColumn {
                name: text(&get(0)).ok_or_else(|| Error::Data {
                    what: format!("{server} INFORMATION_SCHEMA.COLUMNS"),
                    message: "a column without a name".into(),
                })?,
                data_type: text(&get(1)).unwrap_or_default().to_ascii_lowercase(),
                max_length: int(&get(2)),
                precision: int(&get(3)),
                scale: int(&get(4)),
                datetime_precision: int(&get(5)),
                nullable: text(&get(6)).is_none_or(|n| n.eq_ignore_ascii_case("YES")),
            })
        })
        .collect()
}

/// `CREATE EXTERNAL TABLE ... STORED AS SQLSERVER`: checks the options, reads the remote
/// columns and maps their types.
pub async fn define(
    location: &str,
    options: BTreeMap<String, String>,
    declared: SchemaRef,
    policy: &Arc<Policy>,
) -> Result<Definition> {
    check_options(&options)?;
    let connection = Connection::parse(location, &options)?;
    connection.check(policy)?;
    let (schema, table) =
        parse_table(options.get("table").ok_or_else(|| Error::InvalidOption {
            option: "table".into(),
            reason: "is required: the remote table, e.g. 'dbo.Patients'".into(),
        })?)?;
    let exact_names = match options
        .get("names")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("lower") => false,
        Some("exact") => true,
        Some(other) => {
            return Err(Error::InvalidOption {
                option: "names".into(),
                reason: format!("'{other}' is not lower or exact"),
            });
        }
    };
    let mut client = connection.connect(policy).await?;
    let remote = remote_columns(&mut client, &connection, &schema, &table).await?;
    let qualified = format!("{schema}.{table}");
    let mut columns: Vec<Column> = Vec::new();
    for column in remote {
        let wanted = declared.fields().is_empty()
            || declared
                .fields()
                .iter()
                .any(|f| f.name().eq_ignore_ascii_case(&column.name));
        if !wanted {
            continue;
        }
        let data_type = column.arrow_type().map_err(|hint| Error::UnsupportedType {
            table: qualified.clone(),
            column: column.name.clone(),
            remote_type: column.type_name(),
            hint,
        })?;
        let name = if exact_names {
            column.name.clone()
        } else {
            column.name.to_lowercase()
        };
        if columns.iter().any(|c| c.name == name) {
            return Err(Error::InvalidOption {
                option: "names".into(),
                reason: format!(
                    "{qualified} has two columns named '{name}' in lower case; use 'names' 'exact'"
                ),
            });
        }
        columns.push(Column {
            name,
            data_type,
            remote: column,
        });
    }
    for field in declared.fields() {
        let Some(column) = columns
            .iter()
            .find(|c| c.remote.name.eq_ignore_ascii_case(field.name()))
        else {
            return Err(Error::InvalidOption {
                option: "columns".into(),
                reason: format!("column '{}' is not in {qualified}", field.name()),
            });
        };
        if column.data_type != *field.data_type() {
            return Err(Error::InvalidOption {
                option: "columns".into(),
                reason: format!(
                    "column '{}' is declared {} but {qualified} has {} (read as {}); leave the type out or declare {}",
                    field.name(),
                    field.data_type(),
                    column.remote.type_name(),
                    column.data_type,
                    column.data_type
                ),
            });
        }
    }
    let tracked = if tracking::wanted(&options)? {
        let tracked = tracking::define(&mut client, &connection, &schema, &table).await?;
        tracking::add_columns(&mut columns, &tracked, &qualified)?;
        Some(tracked)
    } else {
        None
    };
    let remote = Remote {
        schema,
        table,
        columns,
        tracked,
    };
    let definition = Definition::new("sqlserver", location, options, &remote)?;
    // Opening checks the scan options (watermark, partitions) against the columns.
    Shared::open(&definition, policy)?;
    Ok(definition)
}

/// The tables and views of `remote_schema`.
pub async fn list_tables(
    location: &str,
    options: &BTreeMap<String, String>,
    remote_schema: &str,
    policy: &Arc<Policy>,
) -> Result<Vec<RemoteTable>> {
    check_options(options)?;
    let connection = Connection::parse(location, options)?;
    connection.check(policy)?;
    let mut client = connection.connect(policy).await?;
    let found = rows(
        &mut client,
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM INFORMATION_SCHEMA.TABLES \
         WHERE TABLE_SCHEMA = @P1 AND TABLE_TYPE IN ('BASE TABLE', 'VIEW') ORDER BY TABLE_NAME",
        &[Param::Text(remote_schema.into())],
        &connection.server(),
        &format!("schema {remote_schema}"),
    )
    .await?;
    Ok(found
        .iter()
        .filter_map(|row| {
            let (schema, name) = (text(row.first()?)?, text(row.get(1)?)?);
            let quoted = format!(
                "[{}].[{}]",
                schema.replace(']', "]]"),
                name.replace(']', "]]")
            );
            Some(RemoteTable {
                schema,
                name,
                options: BTreeMap::from([("table".to_string(), quoted)]),
            })
        })
        .collect())
}

/// Spark-style partitioned reads: `num_partitions` ranges of `partition_column` between
/// `lower_bound` and `upper_bound` (the first range also takes everything below and NULLs,
/// the last everything above).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Partitioning {
    column: usize,
    bounds: Vec<Param>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub connection: Connection,
    /// `[schema].[table]`
    pub from: String,
    /// `schema.table`, for messages.
    pub qualified: String,
    pub columns: Vec<Column>,
    pub schema: SchemaRef,
    partitioning: Option<Partitioning>,
    pub watermark: Option<usize>,
    /// Read through Change Tracking: the watermark is `_change_version`.
    pub(crate) tracked: Option<tracking::Tracked>,
    pub batch_size: usize,
    /// The first error a scan raised (see [`External::take_failure`]).
    pub failure: std::sync::Mutex<Option<Error>>,
    /// What the table's connections may reach, and its secrets.
    pub policy: Arc<Policy>,
}

impl Shared {
    pub(crate) fn record_failure(&self, e: &Error) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert_with(|| e.clone());
        }
    }
}

impl Shared {
    /// Opens a stored definition; no connection is made (what the policy can check without
    /// one is checked now).
    pub fn open(definition: &Definition, policy: &Arc<Policy>) -> Result<Self> {
        let options = &definition.options;
        let connection = Connection::parse(&definition.location, options)?;
        connection.check(policy)?;
        let remote: Remote =
            serde_json::from_value(definition.remote.clone()).map_err(|e| Error::Data {
                what: "external table definition".into(),
                message: e.to_string(),
            })?;
        let schema = Arc::new(Schema::new(
            remote
                .columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.remote.nullable))
                .collect::<Vec<_>>(),
        ));
        let find = |option: &str| -> Result<Option<usize>> {
            let Some(name) = options.get(option) else {
                return Ok(None);
            };
            remote
                .columns
                .iter()
                .position(|c| c.name == *name || c.remote.name.eq_ignore_ascii_case(name))
                .map(Some)
                .ok_or_else(|| Error::InvalidOption {
                    option: option.into(),
                    reason: format!(
                        "'{name}' is not a column of {}.{}",
                        remote.schema, remote.table
                    ),
                })
        };
        let tracked = match (tracking::wanted(options)?, &remote.tracked) {
            (true, Some(t)) => Some(t.clone()),
            (false, None) => None,
            _ => {
                return Err(Error::InvalidOption {
                    option: "changes".into(),
                    reason: "the table was defined without it; create it again".into(),
                });
            }
        };
        let watermark = if tracked.is_some() {
            let version = remote
                .columns
                .iter()
                .position(|c| c.name == tracking::VERSION);
            match options.get("watermark") {
                Some(w) if !w.eq_ignore_ascii_case(tracking::VERSION) => {
                    return Err(Error::InvalidOption {
                        option: "watermark".into(),
                        reason: format!(
                            "a table read through Change Tracking is extracted by {}",
                            tracking::VERSION
                        ),
                    });
                }
                _ => version,
            }
        } else {
            find("watermark")?
        };
        if let Some(w) = watermark {
            let t = &remote.columns[w].data_type;
            if matches!(t, DataType::Boolean | DataType::Float32 | DataType::Float64) {
                return Err(Error::InvalidOption {
                    option: "watermark".into(),
                    reason: format!("a {t} column cannot be a watermark"),
                });
            }
        }
        let partitioning = match find("partition_column")? {
            None => {
                for o in ["lower_bound", "upper_bound", "num_partitions"] {
                    if options.contains_key(o) {
                        return Err(Error::InvalidOption {
                            option: o.into(),
                            reason: "needs 'partition_column'".into(),
                        });
                    }
                }
                None
            }
            Some(column) => Some(partitioning(&remote.columns[column], column, options)?),
        };
        let batch_size = match options.get("batch_size") {
            None => 8192,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| Error::InvalidOption {
                    option: "batch_size".into(),
                    reason: format!("'{v}' is not a number of rows from 1 to 1000000"),
                })?,
        };
        Ok(Self {
            connection,
            from: format!("{}.{}", quote(&remote.schema), quote(&remote.table)),
            qualified: format!("{}.{}", remote.schema, remote.table),
            columns: remote.columns,
            schema,
            partitioning,
            watermark,
            tracked,
            batch_size,
            failure: std::sync::Mutex::new(None),
            policy: policy.clone(),
        })
    }
}

fn partitioning(
    column: &Column,
    index: usize,
    options: &BTreeMap<String, String>,
) -> Result<Partitioning> {
    let get = |o: &str| {
        options.get(o).ok_or_else(|| Error::InvalidOption {
            option: o.into(),
            reason: "is required with 'partition_column'".into(),
        })
    };
    let count: usize = get("num_partitions")?
        .parse()
        .ok()
        .filter(|n| (1..=256).contains(n))
        .ok_or_else(|| Error::InvalidOption {
            option: "num_partitions".into(),
            reason: "must be a number from 1 to 256".into(),
        })?;
    let (lower, upper) = (get("lower_bound")?, get("upper_bound")?);
    let bad = |o: &str, v: &str, what: &str| Error::InvalidOption {
        option: o.into(),
        reason: format!("'{v}' is not {what} (the type of '{}')", column.name),
    };
    // Bounds as numbers on a line: integers, or microseconds / days for dates and times.
    let (lo, hi, to_param): (i128, i128, Box<dyn Fn(i128) -> Param>) = match &column.data_type {
        DataType::UInt8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => (
            lower
                .parse()
                .map_err(|_| bad("lower_bound", lower, "an integer"))?,
            upper
                .parse()
                .map_err(|_| bad("upper_bound", upper, "an integer"))?,
            Box::new(|v| Param::Int(v as i64)),
        ),
        DataType::Decimal128(_, scale) => {
            let scale = *scale;
            let parse = |o: &str, v: &str| match ScalarValue::try_from_string(
                v.to_string(),
                &column.data_type,
            ) {
                Ok(ScalarValue::Decimal128(Some(v), _, _)) => Ok(v),
                _ => Err(bad(o, v, "a decimal")),
            };
            (
                parse("lower_bound", lower)?,
                parse("upper_bound", upper)?,
                Box::new(move |v| Param::Decimal {
                    value: v,
                    scale: scale as u8,
                }),
            )
        }
        DataType::Date32 => {
            let parse = |o: &str, v: &str| {
                v.parse::<chrono::NaiveDate>()
                    .map_err(|_| bad(o, v, "a date (YYYY-MM-DD)"))
            };
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
            let days = |d: chrono::NaiveDate| (d - epoch).num_days() as i128;
            (
                days(parse("lower_bound", lower)?),
                days(parse("upper_bound", upper)?),
                Box::new(move |v| Param::Date(epoch + chrono::Duration::days(v as i64))),
            )
        }
        DataType::Timestamp(_, tz) => {
            let parse = |o: &str, v: &str| {
                v.parse::<chrono::NaiveDateTime>()
                    .or_else(|_| {
                        v.parse::<chrono::NaiveDate>()
                            .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight"))
                    })
                    .map_err(|_| bad(o, v, "a timestamp (YYYY-MM-DDTHH:MM:SS)"))
            };
            let micros = |d: chrono::NaiveDateTime| d.and_utc().timestamp_micros() as i128;
            let utc = tz.is_some();
            (
                micros(parse("lower_bound", lower)?),
                micros(parse("upper_bound", upper)?),
                Box::new(move |v| {
                    let t = chrono::DateTime::from_timestamp_micros(v as i64).unwrap_or_default();
                    if utc {
                        Param::DateTimeOffset(t.fixed_offset())
                    } else {
                        Param::DateTime(t.naive_utc())
                    }
                }),
            )
        }
        other => {
            return Err(Error::InvalidOption {
                option: "partition_column".into(),
                reason: format!(
                    "'{}' is {other}; partition by an integer, decimal, date or timestamp column",
                    column.name
                ),
            });
        }
    };
    if hi <= lo {
        return Err(Error::InvalidOption {
            option: "upper_bound".into(),
            reason: "must be above 'lower_bound'".into(),
        });
    }
    let count = count
        .min(usize::try_from(hi - lo).unwrap_or(usize::MAX))
        .max(1);
    let stride = (hi - lo) / count as i128;
    let bounds = (1..count)
        .map(|i| to_param(lo + stride * i as i128))
        .collect();
    Ok(Partitioning {
        column: index,
        bounds,
    })
}

/// Rows restricted by a watermark range, on top of the table's own filters.
pub(crate) type Window = medlake_source::scan::Window<Param>;

impl medlake_source::scan::Planner for Shared {
    type Window = Window;

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn filter_pushdown(&self, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
        filters
            .iter()
            .map(|f| {
                if Translation::default().filter(f, &self.columns).is_none() {
                    TableProviderFilterPushDown::Unsupported
                } else if pushdown::exact(f, &self.columns) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect()
    }

    /// Plans a scan: one T-SQL statement per partition.
    fn plan(
        self: &Arc<Self>,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        window: &Window,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        let select = if projection.is_empty() {
            "1 AS [_]".to_string()
        } else {
            projection
                .iter()
                .map(|i| self.columns[*i].remote.select_expr())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut base = Translation::default();
        let mut conditions = Vec::new();
        let mut all_exact = true;
        for filter in filters {
            match base.filter(filter, &self.columns) {
                Some(sql) => {
                    all_exact &= pushdown::exact(filter, &self.columns);
                    conditions.push(sql);
                }
                None => all_exact = false,
            }
        }
        let from = match &self.tracked {
            Some(tracked) => {
                let (from, window_conditions) = tracking::source(self, tracked, window, &mut base);
                conditions.extend(window_conditions);
                from
            }
            None => self.from.clone(),
        };
        if let (Some(w), None) = (self.watermark, &self.tracked) {
            let column = self.columns[w].quoted();
            match (&window.after, &window.upto) {
                (Some(after), Some(upto)) => {
                    let a = base.param(after.clone());
                    let u = base.param(upto.clone());
                    conditions.push(format!("({column} > {a} AND {column} <= {u})"));
                }
                (None, Some(upto)) => {
                    let u = base.param(upto.clone());
                    conditions.push(format!("({column} <= {u} OR {column} IS NULL)"));
                }
                (Some(after), None) => {
                    let a = base.param(after.clone());
                    conditions.push(format!("({column} > {a})"));
                }
                (None, None) => {}
            }
        }
        let top = match limit {
            Some(n) if all_exact => format!("TOP ({n}) "),
            _ => String::new(),
        };
        let ranges: Vec<Option<(String, Vec<Param>)>> = match &self.partitioning {
            None => vec![None],
            Some(p) => {
                let column = self.columns[p.column].quoted();
                let n = p.bounds.len() + 1;
                (0..n)
                    .map(|i| {
                        let first = base.params.len() + 1;
                        let lower = (i > 0).then(|| p.bounds[i - 1].clone());
                        let upper = (i + 1 < n).then(|| p.bounds[i].clone());
                        let mut params = Vec::new();
                        let mut next = |param: Param| {
                            params.push(param);
                            format!("@P{}", first + params.len() - 1)
                        };
                        let sql = match (lower, upper) {
                            (None, Some(u)) => {
                                format!("({column} < {} OR {column} IS NULL)", next(u))
                            }
                            (Some(l), Some(u)) => {
                                let l = next(l);
                                format!("({column} >= {l} AND {column} < {})", next(u))
                            }
                            (Some(l), None) => format!("({column} >= {})", next(l)),
                            (None, None) => "(1 = 1)".to_string(),
                        };
                        Some((sql, params))
                    })
                    .collect()
            }
        };
        let statements = ranges
            .into_iter()
            .map(|range| {
                let mut conditions = conditions.clone();
                let mut params = base.params.clone();
                if let Some((sql, extra)) = range {
                    conditions.push(sql);
                    params.extend(extra);
                }
                let mut sql = format!("SELECT {top}{select} FROM {from}");
                if !conditions.is_empty() {
                    sql.push_str(" WHERE ");
                    sql.push_str(&conditions.join(" AND "));
                }
                (sql, params)
            })
            .collect();
        Ok(Arc::new(SqlServerExec::new(
            self.clone(),
            schema,
            projection,
            statements,
        )))
    }
}

impl medlake_source::scan::Marked for Shared {
    type Mark = Param;

    fn mark(&self, mark: &str) -> Result<Param> {
        let w = self.watermark.ok_or_else(|| Error::InvalidOption {
            option: "watermark".into(),
            reason: "the table has no watermark column".into(),
        })?;
        Param::from_mark(mark, &self.columns[w].data_type).map_err(|reason| Error::InvalidOption {
            option: "watermark".into(),
            reason,
        })
    }
}

#[async_trait]
impl medlake_source::scan::Source for Shared {
    fn watermark(&self) -> Option<&str> {
        self.watermark.map(|w| self.columns[w].name.as_str())
    }

    /// The highest watermark at the source now.
    async fn high_mark(&self) -> Result<Option<String>> {
        let Some(w) = self.watermark else {
            return Ok(None);
        };
        if self.tracked.is_some() {
            return tracking::current_version(self).await;
        }
        let column = &self.columns[w];
        let mut client = self.connection.connect(&self.policy).await?;
        let server = self.connection.server();
        let found = rows(
            &mut client,
            &format!("SELECT MAX({}) FROM {}", column.quoted(), self.from),
            &[],
            &server,
            &self.qualified,
        )
        .await?;
        let Some(value) = found.into_iter().next().and_then(|r| r.into_iter().next()) else {
            return Ok(None);
        };
        let mut builder = ColumnBuilder::new(&column.data_type, 1).map_err(|m| Error::Data {
            what: format!("{}.{}", self.qualified, column.remote.name),
            message: m,
        })?;
        builder.append(value).map_err(|m| Error::Data {
            what: format!("watermark {}.{}", self.qualified, column.remote.name),
            message: m,
        })?;
        let array = builder.finish();
        let scalar = ScalarValue::try_from_array(&array, 0).map_err(|e| Error::Data {
            what: "watermark".into(),
            message: e.to_string(),
        })?;
        Ok(pushdown::encode_mark(&scalar))
    }

    fn failure(&self) -> &std::sync::Mutex<Option<Error>> {
        &self.failure
    }

    async fn changes_kept_since(&self, after: &str) -> Result<bool> {
        match self.tracked {
            Some(_) => tracking::kept_since(self, after).await,
            None => Ok(true),
        }
    }
}

/// Consumes a query's rows into batches of `batch_size`, sending each to `sink`.
pub(crate) async fn stream_rows(
    shared: &Shared,
    sql: &str,
    params: &[Param],
    schema: &SchemaRef,
    projection: &[usize],
    sent_any: &mut bool,
    sink: &tokio::sync::mpsc::Sender<DfResult<datafusion::arrow::record_batch::RecordBatch>>,
) -> Result<()> {
    use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
    let server = shared.connection.server();
    let mut client = shared.connection.connect(&shared.policy).await?;
    let mut query = Query::new(sql.to_string());
    for p in params {
        p.bind(&mut query);
    }
    debug!(%server, sql, "sqlserver scan");
    let stream = query
        .query(&mut client)
        .await
        .map_err(|e| query_error(&server, &shared.qualified, e))?;
    let mut rows = stream.into_row_stream();
    let new_builders = || -> Result<Vec<ColumnBuilder>> {
        projection
            .iter()
            .map(|i| {
                ColumnBuilder::new(&shared.columns[*i].data_type, shared.batch_size).map_err(|m| {
                    Error::Data {
                        what: format!("{}.{}", shared.qualified, shared.columns[*i].remote.name),
                        message: m,
                    }
                })
            })
            .collect()
    };
    let mut builders = new_builders()?;
    let mut count = 0usize;
    let timeout = shared
        .connection
        .query_timeout_seconds
        .map(Duration::from_secs);
    let finish = |builders: &mut Vec<ColumnBuilder>, count: usize| -> Result<RecordBatch> {
        let columns = builders.iter_mut().map(ColumnBuilder::finish).collect();
        RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(count)),
        )
        .map_err(|e| Error::Data {
            what: shared.qualified.clone(),
            message: e.to_string(),
        })
    };
    loop {
        let next = match timeout {
            None => rows.try_next().await,
            Some(t) => tokio::time::timeout(t, rows.try_next())
                .await
                .map_err(|_| Error::Timeout {
                    server: server.clone(),
                    seconds: t.as_secs(),
                    during: format!("waiting for rows of {}", shared.qualified),
                })?,
        };
        let row = match next {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => return Err(query_error(&server, &shared.qualified, e)),
        };
        for (value, (builder, i)) in row.into_iter().zip(builders.iter_mut().zip(projection)) {
            builder.append(value).map_err(|m| Error::Data {
                what: format!("{}.{}", shared.qualified, shared.columns[*i].remote.name),
                message: m,
            })?;
        }
        count += 1;
        if count == shared.batch_size {
            let batch = finish(&mut builders, count)?;
            count = 0;
            *sent_any = true;
            if sink.send(Ok(batch)).await.is_err() {
                return Ok(()); // the reader is gone
            }
        }
    }
    if count > 0 {
        let batch = finish(&mut builders, count)?;
        *sent_any = true;
        let _ = sink.send(Ok(batch)).await;
    }
    Ok(())
}

/// The `SQLSERVER` connector, registered in a [`medlake_source::Registry`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SqlServerConnector;

#[async_trait]
impl medlake_source::Connector for SqlServerConnector {
    fn kinds(&self) -> &'static [&'static str] {
        &["SQLSERVER"]
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

    #[test]
    fn table_names_parse_with_brackets_and_defaults() {
        assert_eq!(
            parse_table("dbo.Patients").unwrap(),
            ("dbo".into(), "Patients".into())
        );
        assert_eq!(
            parse_table("Patients").unwrap(),
            ("dbo".into(), "Patients".into())
        );
        assert_eq!(
            parse_table("[my schema].[odd.name]]x]").unwrap(),
            ("my schema".into(), "odd.name]x".into())
        );
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_table("[unclosed").is_err());
        assert!(parse_table("dbo.").is_err());
    }

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn timeouts_are_bounded() {
        for (option, value) in [
            ("connect_timeout_seconds", "18446744073709551615"),
            ("query_timeout_seconds", "18446744073709551615"),
            ("query_timeout_seconds", "0"),
            ("retries", "4294967295"),
        ] {
            let o = options(&[("user", "sa"), ("password", "${PW}"), (option, value)]);
            let e = Connection::parse("sqlserver://db/EHR", &o).unwrap_err();
            assert_eq!(e.sqlstate(), "HV024", "{option} {value}");
        }
    }

    #[tokio::test]
    async fn connections_and_ca_files_follow_the_policy() {
        let o = options(&[
            ("user", "sa"),
            ("password", "${PW}"),
            ("ca_certificate", "/etc/ssl/certs/ca-certificates.crt"),
        ]);
        let c = Connection::parse("sqlserver://127.0.0.1:1/EHR", &o).unwrap();
        let strict = Policy::default().with_secret("PW", "x");
        assert_eq!(c.check(&strict).unwrap_err().sqlstate(), "42501");
        let hosts_only = Policy {
            allowed_hosts: vec!["127.0.0.1".into()],
            ..strict.clone()
        };
        // The CA file is not under an allowed path.
        assert_eq!(c.check(&hosts_only).unwrap_err().sqlstate(), "42501");
        let o = options(&[("user", "sa"), ("password", "${PW}")]);
        let c = Connection::parse("sqlserver://localhost:1/EHR", &o).unwrap();
        // A name is checked on the addresses it resolves to, when connecting.
        assert!(c.check(&strict).is_ok());
        let e = c.connect(&strict).await.unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{e}");
    }

    #[test]
    fn locations_and_credentials_are_checked() {
        let ok = options(&[("user", "sa"), ("password", "${PW}")]);
        let c = Connection::parse("sqlserver://db.local/EHR", &ok).unwrap();
        assert_eq!(
            (c.port, c.database.as_str(), c.encrypt),
            (1433, "EHR", Encrypt::Required)
        );
        assert_eq!(c.server(), "sqlserver://db.local:1433/EHR");
        let literal = options(&[("user", "sa"), ("password", "hunter2")]);
        let err = Connection::parse("sqlserver://db/EHR", &literal).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(Connection::parse("sqlserver://u:p@db/EHR", &ok).is_err());
        assert!(Connection::parse("postgres://db/EHR", &ok).is_err());
        assert!(Connection::parse("sqlserver://db", &ok).is_err());
        assert!(Connection::parse("sqlserver://db/EHR", &options(&[("user", "sa")])).is_err());
        let token = options(&[("access_token", "${AZ_TOKEN}"), ("encrypt", "login")]);
        assert_eq!(
            Connection::parse("sqlserver://x.database.windows.net/trials", &token)
                .unwrap()
                .encrypt,
            Encrypt::LoginOnly
        );
    }
}
