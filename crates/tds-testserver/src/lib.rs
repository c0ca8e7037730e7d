//! A test-only SQL Server stand-in: it speaks TDS 7.4 the way SQL Server does (PRELOGIN with
//! TLS wrapped in PRELOGIN packets, LOGIN7, SQL batches, `sp_executesql` RPCs, COLMETADATA /
//! ROW / NBCROW / DONE tokens, SQL Server's error numbers) and answers by really running the
//! received T-SQL with DataFusion over tables declared in memory.
//!
//! It exists so medlake's SQL Server connector can be tested with its real client (tiberius)
//! on a machine without SQL Server; tests can also see what the server received
//! ([`TdsServer::received`]) to check pushdown, and inject faults ([`Fault`]). It owns nothing
//! else in medlake and must not be used outside tests. Every server binds `127.0.0.1:0` and
//! stops on [`TdsServer::shutdown`] or when dropped.
//!
//! Values are held in Arrow with one canonical type per [`SqlType`] ([`SqlType::arrow_type`]).
//! Result columns that project a table column (directly, renamed, grouped by, or as its MIN /
//! MAX) keep its SQL type; other columns get the SQL type of their Arrow type (Int64 → bigint,
//! Utf8 → nvarchar(max), Decimal128 → decimal(p,s), Timestamp(µs) → datetime2(6), ...).
//!
//! # T-SQL understood
//! Parsed with sqlparser's `MsSqlDialect`, rewritten, planned by DataFusion:
//! - `SELECT` with `WHERE`, `GROUP BY`, `HAVING`, joins, subqueries, CTEs, `UNION`,
//!   `ORDER BY` (also by ordinal; NULLs sort first as in SQL Server), `DISTINCT`;
//!   `TOP (n)` / `TOP n` and `OFFSET n ROWS FETCH NEXT m ROWS ONLY` (→ LIMIT/OFFSET);
//! - `[bracketed]` (with `]]` escapes) and `"quoted"` identifiers; names resolve
//!   case-insensitively and come back spelled as written (`*` gives the declared names, an
//!   expression without alias has an empty name); `db.schema.table` / `db..table` (the
//!   database is ignored) and `schema.table.column`; `WITH (NOLOCK)` hints are ignored;
//! - `@P1..@Pn` (any `@name`) from `sp_executesql`, substituted as typed literals;
//!   `N'..'` strings; integer literals are `int`; `COUNT` is `int`, `COUNT_BIG` `bigint`;
//! - `CAST` / `CONVERT` / `TRY_CONVERT` to T-SQL type names (`bit`, `tinyint`, `money`,
//!   `nvarchar(max)`, `datetime2(7)`, `datetimeoffset`, `uniqueidentifier`, ...);
//! - `BETWEEN`, `IN`, `LIKE` (`%`, `_`), `IS [NOT] NULL`, `AND` / `OR` / `NOT`, `MIN` / `MAX`
//!   and DataFusion's other functions; `ISNULL`, `LEN`, `DATALENGTH`, `GETDATE` and friends,
//!   `DB_NAME()`, `SCHEMA_NAME()`, `SERVERPROPERTY(..)`, `@@VERSION`, `@@SPID`; `'a' + x` on a
//!   string literal concatenates;
//! - `SET ...` (acknowledged with DONE), `USE db`, several statements per batch (one result
//!   each);
//! - `INFORMATION_SCHEMA.TABLES` and `INFORMATION_SCHEMA.COLUMNS` for the declared tables,
//!   filled as SQL Server fills them; `TABLE_CONSTRAINTS` and `KEY_COLUMN_USAGE` with the
//!   primary keys of tables with change tracking;
//! - Change Tracking ([`TdsServer::enable_change_tracking`], then [`TdsServer::append_rows`],
//!   [`TdsServer::update_rows`], [`TdsServer::delete_rows`] each one version):
//!   `CHANGE_TRACKING_CURRENT_VERSION()`, `CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(..))`
//!   (NULL for an untracked table) and `CHANGETABLE(CHANGES t, @last_sync_version) AS ct`
//!   (`SYS_CHANGE_VERSION`, `SYS_CHANGE_CREATION_VERSION`, `SYS_CHANGE_OPERATION`,
//!   `SYS_CHANGE_COLUMNS`, `SYS_CHANGE_CONTEXT` and the key columns; one row per changed key,
//!   net of its changes since the baseline); [`TdsServer::forget_changes`] plays the retention
//!   cleanup.
//!
//! Not SQL Server: text comparisons are case- and trailing-space-sensitive (DataFusion's), a
//! GUID compares as its lower-case text, `LIKE '[a-c]%'` classes, `+` between two string
//! columns, T-SQL's integer `AVG` / `SUM` result types, DML / DDL / procedures (error 50000 or
//! 2812), TDS 8.0 strict encryption and MARS are not supported; an Attention is acknowledged
//! between requests only.

mod catalog;
mod encode;
mod error;
mod exec;
mod request;
mod session;
mod tls;
mod tracking;
mod tsql;
mod types;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use types::{Column, SqlType};

/// How the server answers the client's PRELOGIN ENCRYPTION option.
///
/// | server \ client  | OFF (0x00)            | ON (0x01) / REQ (0x03) | NOT_SUP (0x02)        |
/// |------------------|-----------------------|------------------------|-----------------------|
/// | `NotSupported`   | NOT_SUP, plaintext    | NOT_SUP (client quits) | NOT_SUP, plaintext    |
/// | `Off`            | OFF, TLS for login    | ON, TLS throughout     | NOT_SUP, plaintext    |
/// | `On`             | ON, TLS throughout    | ON, TLS throughout     | NOT_SUP, plaintext    |
/// | `Required`       | REQ, TLS throughout   | ON, TLS throughout     | REQ, then closed      |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// No certificate: plaintext only.
    NotSupported,
    /// SQL Server's default: the login is encrypted if the client can, the rest is plaintext
    /// unless the client asks for encryption.
    #[default]
    Off,
    /// Full TLS with every client that can encrypt; clients that cannot get plaintext.
    On,
    /// Force Encryption: full TLS, clients that cannot encrypt are refused.
    Required,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// SQL logins (user, password); user names match case-insensitively.
    pub users: Vec<(String, String)>,
    pub encryption: Encryption,
    /// Azure AD access tokens accepted through FEDAUTH (tiberius `AuthMethod::AADToken`).
    pub aad_tokens: Vec<String>,
    /// The database of this server (default `master`). Logins naming it or `master` (or no
    /// database) succeed; any other name fails with 4060 and 18456.
    pub database: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            users: Vec::new(),
            encryption: Encryption::Off,
            aad_tokens: Vec::new(),
            database: "master".into(),
        }
    }
}

impl ServerConfig {
    /// Add a SQL login.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((user.into(), password.into()));
        self
    }
}

/// Misbehaviour injected into every query that starts after [`TdsServer::set_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Send that many ROW tokens of a result, then reset the connection.
    DropConnectionAfterRows(u64),
    /// Wait this long before each row (rows are flushed one by one).
    DelayPerRow(Duration),
    /// Behave like a server that is down: accept TCP connections, then close them.
    RefuseLogins,
    /// Answer every query with this error (class 16, state 1).
    ErrorOnQuery { number: u32, message: String },
}

/// A request the server received, recorded before it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The batch text, or the `@stmt` of an `sp_executesql` call (the procedure name for
    /// any other RPC).
    pub sql: String,
    pub params: Vec<Param>,
    /// Whether it came as an RPC (packet type 3).
    pub rpc: bool,
}

/// A parameter of an RPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// As sent, e.g. `@P1`.
    pub name: String,
    /// As declared in `@params`, e.g. `int`, `nvarchar(4000)`; from the wire type otherwise.
    pub type_decl: String,
    /// The value as SQL Server would show it (`NULL` for NULL, `0x..` for binary, local
    /// time with offset for datetimeoffset).
    pub value: String,
}

/// How a login authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAuth {
    Sql,
    AadToken,
}

/// A LOGIN7 the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// The SQL login, or `<token-identified principal>` for FEDAUTH.
    pub user: String,
    pub database: String,
    pub app_name: String,
    /// Whether the LOGIN7 travelled inside TLS.
    pub encrypted: bool,
    pub auth: LoginAuth,
    pub success: bool,
}

/// State shared by the listener, the connections and the test.
pub(crate) struct Shared {
    config: ServerConfig,
    catalog: RwLock<catalog::Catalog>,
    received: Mutex<Vec<Received>>,
    logins: Mutex<Vec<LoginRecord>>,
    fault: Mutex<Option<Fault>>,
    connections_total: AtomicU64,
    running_queries: AtomicU64,
    max_concurrent: AtomicU64,
    tls: Option<tls::Tls>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn fault(&self) -> Option<Fault> {
        lock(&self.fault).clone()
    }

    fn lock_received(&self) -> MutexGuard<'_, Vec<Received>> {
        lock(&self.received)
    }

    fn lock_logins(&self) -> MutexGuard<'_, Vec<LoginRecord>> {
        lock(&self.logins)
    }

    /// The declared tables and the INFORMATION_SCHEMA views, as of now.
    fn snapshot(&self, database: &str) -> Vec<Arc<catalog::Table>> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut tables: Vec<Arc<catalog::Table>> = catalog.tables.values().cloned().collect();
        match catalog::information_schema(&catalog, database) {
            Ok(views) => tables.extend(views.into_iter().map(Arc::new)),
            Err(error) => tracing::error!(%error, "INFORMATION_SCHEMA views could not be built"),
        }
        tables
    }

    /// What `CHANGE_TRACKING_*` functions answer, as of now.
    fn tracking_facts(&self) -> tracking::Facts {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tracking::facts(&catalog)
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, catalog::Catalog> {
        self.catalog
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Connection tasks; once `closed`, new connections are aborted as soon as they start.
#[derive(Default)]
struct Tasks {
    closed: bool,
    handles: Vec<JoinHandle<()>>,
}

/// A running TDS server on `127.0.0.1`.
pub struct TdsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Arc<Mutex<Tasks>>,
    listener: Option<JoinHandle<()>>,
}

impl TdsServer {
    /// Bind `127.0.0.1:0` and start accepting connections.
    pub async fn start(config: ServerConfig) -> std::io::Result<TdsServer> {
        let tls = match config.encryption {
            Encryption::NotSupported => None,
            _ => Some(tls::self_signed()?),
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            catalog: RwLock::new(catalog::Catalog::default()),
            received: Mutex::new(Vec::new()),
            logins: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
            connections_total: AtomicU64::new(0),
            running_queries: AtomicU64::new(0),
            max_concurrent: AtomicU64::new(0),
            tls,
        });
        let tasks: Arc<Mutex<Tasks>> = Arc::default();
        let accept = {
            let shared = shared.clone();
            let tasks = tasks.clone();
            let next_spid = AtomicU16::new(51);
            tokio::spawn(async move {
                loop {
                    let (tcp, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    shared.connections_total.fetch_add(1, Ordering::SeqCst);
                    let spid = next_spid.fetch_add(1, Ordering::SeqCst);
                    tracing::debug!(%peer, spid, "connection accepted");
                    let handle = tokio::spawn(session::serve(shared.clone(), tcp, spid));
                    let mut tasks = lock(&tasks);
                    if tasks.closed {
                        handle.abort();
                        return;
                    }
                    tasks.handles.retain(|t| !t.is_finished());
                    tasks.handles.push(handle);
                }
            })
        };
        Ok(TdsServer {
            shared,
            addr,
            tasks,
            listener: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The self-signed certificate (PEM) of this server, for clients to trust; empty with
    /// [`Encryption::NotSupported`].
    pub fn cert_pem(&self) -> String {
        self.shared
            .tls
            .as_ref()
            .map(|t| t.cert_pem.clone())
            .unwrap_or_default()
    }

    /// Declare `schema.table` (replacing it if it exists) with its rows.
    ///
    /// Batches hold the canonical Arrow type of each column ([`SqlType::arrow_type`]); other
    /// types Arrow can cast are accepted. Batch column names are not used.
    ///
    /// # Panics
    /// If a batch does not fit the columns (count, types, NULL in a NOT NULL column, bad
    /// GUID text): the test declared impossible data.
    pub fn create_table(
        &self,
        schema: &str,
        table: &str,
        columns: Vec<Column>,
        batches: Vec<RecordBatch>,
    ) {
        if let Err(e) = self
            .shared
            .catalog_mut()
            .create(schema, table, columns, batches)
        {
            panic!("create_table({schema}.{table}): {e}");
        }
    }

    /// Add rows to a declared table.
    ///
    /// # Panics
    /// If the table is not declared or a batch does not fit its columns.
    pub fn append_rows(&self, schema: &str, table: &str, batches: Vec<RecordBatch>) {
        if let Err(e) = self.shared.catalog_mut().append(schema, table, batches) {
            panic!("append_rows({schema}.{table}): {e}");
        }
    }

    pub fn drop_table(&self, schema: &str, table: &str) {
        self.shared.catalog_mut().drop_table(schema, table);
    }

    /// `ALTER TABLE schema.table ENABLE CHANGE_TRACKING`, with `keys` as the table's primary
    /// key (change tracking needs one; it shows in INFORMATION_SCHEMA.TABLE_CONSTRAINTS and
    /// KEY_COLUMN_USAGE as `PK_<table>`). From now on [`Self::append_rows`],
    /// [`Self::update_rows`] and [`Self::delete_rows`] on it are logged, one version per call.
    ///
    /// # Panics
    /// If the table is not declared or a key is not one of its columns.
    pub fn enable_change_tracking(&self, schema: &str, table: &str, keys: &[&str]) {
        if let Err(e) = self
            .shared
            .catalog_mut()
            .enable_tracking(schema, table, keys)
        {
            panic!("enable_change_tracking({schema}.{table}): {e}");
        }
    }

    /// `UPDATE`: the rows of `batch` (whole rows) replace the rows with the same primary key.
    ///
    /// # Panics
    /// If the table has no primary key (change tracking) or the batch does not fit it.
    pub fn update_rows(&self, schema: &str, table: &str, batch: RecordBatch) {
        let result = self
            .shared
            .catalog_mut()
            .change_rows(schema, table, batch, false);
        if let Err(e) = result {
            panic!("update_rows({schema}.{table}): {e}");
        }
    }

    /// `DELETE`: removes the rows whose primary key is in `keys` (a batch of the key columns,
    /// in key order).
    ///
    /// # Panics
    /// If the table has no primary key (change tracking) or the batch does not fit it.
    pub fn delete_rows(&self, schema: &str, table: &str, keys: RecordBatch) {
        let result = self
            .shared
            .catalog_mut()
            .change_rows(schema, table, keys, true);
        if let Err(e) = result {
            panic!("delete_rows({schema}.{table}): {e}");
        }
    }

    /// As if the change retention period passed: the table's changes so far are forgotten and
    /// `CHANGE_TRACKING_MIN_VALID_VERSION` moves to the current version.
    ///
    /// # Panics
    /// If the table is not declared.
    pub fn forget_changes(&self, schema: &str, table: &str) {
        if let Err(e) = self.shared.catalog_mut().forget_changes(schema, table) {
            panic!("forget_changes({schema}.{table}): {e}");
        }
    }

    /// Every batch and RPC received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock_received().clone()
    }

    pub fn clear_received(&self) {
        self.shared.lock_received().clear();
    }

    /// Every LOGIN7 received so far, successful or not.
    pub fn logins(&self) -> Vec<LoginRecord> {
        self.shared.lock_logins().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections_total(&self) -> u64 {
        self.shared.connections_total.load(Ordering::SeqCst)
    }

    /// The most batches/RPCs that were running at the same time.
    pub fn max_concurrent_queries(&self) -> u64 {
        self.shared.max_concurrent.load(Ordering::SeqCst)
    }

    /// Inject (or with `None` clear) a fault for every following query / connection.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.shared.fault) = fault;
    }

    /// Close the listener and every open connection now, and wait until they are gone.
    pub async fn shutdown(mut self) {
        let handles = self.stop();
        for handle in handles {
            let _ = handle.await;
        }
    }

    fn stop(&mut self) -> Vec<JoinHandle<()>> {
        let mut handles: Vec<JoinHandle<()>> = {
            let mut tasks = lock(&self.tasks);
            tasks.closed = true;
            tasks.handles.drain(..).collect()
        };
        if let Some(listener) = self.listener.take() {
            handles.push(listener);
        }
        for handle in &handles {
            handle.abort();
        }
        handles
    }
}

impl Drop for TdsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
