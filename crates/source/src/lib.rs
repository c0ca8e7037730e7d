//! `medlake-source`: the contract of medlake's source connectors: tables whose rows live outside the warehouse, declared with
//! `CREATE EXTERNAL TABLE ... STORED AS <KIND> LOCATION '...' OPTIONS (...)`.
//!
//! A [`Definition`] is what the catalog stores for such a table: the kind, the location, the
//! options as written (secrets only as `${NAME}` references, resolved from the server's secret
//! store each time a connection is made) and the remote columns read when the table was created, so
//! that a table opens and plans without contacting its source.
//!
//! Every connector is a DataFusion `TableProvider`; connectors that can extract incrementally
//! also implement [`Watermarked`]: rows up to a high mark, and rows between two marks.
//!
//! This crate is the contract between the engine and the connectors: a [`Connector`] serves
//! some `STORED AS` kinds (`medlake-source-sqlserver`, `-rest`, `-blob`, `-cosmos`, `-fhir`, one crate
//! each); a [`Registry`] maps each kind to its connector and is the one place that defines,
//! opens and lists external tables. Also here, what several connectors share: the scan
//! skeleton ([`scan`]), JSON schema inference ([`json`]), watermarks as text ([`mark`]),
//! `Retry-After` and FHIR search paging ([`http`]),
//! secrets ([`secret`]) and the operator's [`Policy`].
//!
//! What a table may reach (secrets, local paths, hosts, the server's cloud identity) is the
//! operator's [`Policy`], checked at CREATE ([`Registry::define`]), when a table is opened
//! ([`Registry::open`]) and on every connection. This crate must not touch the warehouse's own
//! storage, and knows no connector by name.

pub mod error;
pub mod http;
pub mod json;
pub mod mark;
pub mod options;
pub mod policy;
pub mod portable;
mod registry;
pub mod scan;
pub mod secret;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use policy::Policy;
pub use portable::{Portable, Reopen, Rows};
pub use registry::Registry;
pub use secret::secret_references;

/// One connector: the `STORED AS` kinds it serves, and for each what a `CREATE EXTERNAL
/// TABLE`, opening a stored table and `IMPORT FOREIGN SCHEMA` do. A connector is registered
/// once in a [`Registry`]; it never touches the warehouse's own storage.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// The `STORED AS` names it serves, upper case (as DataFusion passes them).
    fn kinds(&self) -> &'static [&'static str];

    /// Validates a `CREATE EXTERNAL TABLE` of `kind` (one of [`Self::kinds`]), connects to the
    /// source to read its columns, and returns the definition to store. `declared` is the
    /// column list written in the statement (empty: every remote column).
    async fn define(
        &self,
        kind: &str,
        location: &str,
        options: BTreeMap<String, String>,
        declared: SchemaRef,
        policy: &Arc<Policy>,
    ) -> Result<Definition>;

    /// Opens a stored definition as a table; no connection is made until it is scanned. The
    /// registry has checked the definition's secret references against `policy` already.
    fn open(&self, definition: &Definition, policy: &Arc<Policy>) -> Result<Arc<dyn External>>;

    /// The tables of `remote_schema` at the source, for `IMPORT FOREIGN SCHEMA`.
    async fn list_tables(
        &self,
        kind: &str,
        location: &str,
        options: &BTreeMap<String, String>,
        remote_schema: &str,
        policy: &Arc<Policy>,
    ) -> Result<Vec<RemoteTable>>;
}

/// A stored external table definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// `sqlserver`, `rest`, `cosmos`, a blob format
    pub kind: String,
    /// Where the source is, e.g. `sqlserver://host:1433/EHR`. Never holds a secret.
    pub location: String,
    /// The options as written; secrets only as `${NAME}`.
    pub options: BTreeMap<String, String>,
    /// What the connector read from the source when the table was created (remote columns
    /// and their types).
    pub remote: serde_json::Value,
    /// When the table was created (RFC 3339).
    pub created: String,
}

impl Definition {
    /// A definition created now, with what the connector read from the source (`remote`).
    pub fn new(
        kind: &str,
        location: &str,
        options: BTreeMap<String, String>,
        remote: &impl Serialize,
    ) -> Result<Self> {
        Ok(Self {
            kind: kind.to_string(),
            location: location.to_string(),
            options,
            remote: serde_json::to_value(remote).map_err(|e| Error::Data {
                what: "definition".into(),
                message: e.to_string(),
            })?,
            created: chrono::Utc::now().to_rfc3339(),
        })
    }

    /// An identity that changes when the table is dropped and created again.
    pub fn id(&self) -> String {
        format!("{}:{}", self.kind, self.created)
    }

    /// The watermark column, if the table was declared with one.
    pub fn watermark(&self) -> Option<&str> {
        self.options.get("watermark").map(String::as_str)
    }
}

/// An external table: a table provider, plus incremental extraction when it has a watermark.
#[async_trait]
pub trait External: Send + Sync + std::fmt::Debug {
    /// Every row of the table.
    fn provider(self: Arc<Self>) -> Arc<dyn TableProvider>;

    /// The watermark side, if the table was declared with a watermark column.
    fn watermarked(self: Arc<Self>) -> Option<Arc<dyn Watermarked>>;

    /// The first error a scan of this table raised, taken (once). A Delta write that read
    /// the scan reports only the error's text; this keeps its kind (SQLSTATE).
    fn take_failure(&self) -> Option<Error>;

    /// The values scans of this table read as NULL because they had the wrong type, since
    /// the last call (taken). Sources that fail a scan on such a value have none.
    fn take_mismatches(&self) -> Option<Mismatches> {
        None
    }

    /// Whether scans count values read as NULL ([`Self::take_mismatches`]): a refresh that
    /// records the count keeps such scans on its own server.
    fn reports_mismatches(&self) -> bool {
        false
    }

    /// For a scan planned again in another process (an executor, [`portable`]): what planning
    /// reads from the source that the other process must read the same, fixed now (a
    /// folder's files as listed). `None` (the default): planning reads nothing from the
    /// source, so the definition plans the same scan anywhere.
    async fn pin(&self, _rows: &Rows) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// The provider of `rows` restricted to what `pin` names (from [`Self::pin`], maybe in
    /// another process); a scan fails if the source no longer has it as it was.
    fn pinned(
        self: Arc<Self>,
        _rows: &Rows,
        _pin: &serde_json::Value,
    ) -> Result<Arc<dyn TableProvider>> {
        Err(Error::Data {
            what: "external table".into(),
            message: "this source fixes nothing while planning; a pinned scan of it is a bug"
                .into(),
        })
    }
}

/// What lenient scans read: documents, and per column (name, type) the values of another
/// type read as NULL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mismatches {
    pub rows: u64,
    pub columns: Vec<(String, String, u64)>,
}

/// Incremental extraction by a watermark column (a modified-at column, a rowversion, an
/// increasing id). Marks are strings so that they can be stored in a commit's metadata.
#[async_trait]
pub trait Watermarked: Send + Sync + std::fmt::Debug {
    /// The watermark column.
    fn column(&self) -> &str;

    /// The highest watermark at the source now; `None` when no row has one.
    async fn high_mark(&self) -> Result<Option<String>>;

    /// The rows whose watermark is at most `mark`, and those without a watermark (NULL):
    /// what a full extraction pinned at `mark` reads.
    fn upto(&self, mark: Option<&str>) -> Result<Arc<dyn TableProvider>>;

    /// The rows whose watermark is above `after` and at most `upto`: what changed between two
    /// extractions.
    fn between(&self, after: &str, upto: &str) -> Result<Arc<dyn TableProvider>>;

    /// Whether the source still keeps every change after `after`, so that [`Self::between`]
    /// is complete. `false` when the source's change retention has passed the mark (SQL
    /// Server Change Tracking's `CHANGE_TRACKING_MIN_VALID_VERSION`, a Cosmos DB change feed
    /// continuation that expired): the next extraction must be a full one (a re-snapshot).
    /// Sources whose rows carry their own watermark always keep them.
    async fn changes_kept_since(&self, _after: &str) -> Result<bool> {
        Ok(true)
    }
}

/// The tables of a remote schema, for `IMPORT FOREIGN SCHEMA`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteTable {
    pub schema: String,
    pub name: String,
    /// The OPTIONS that name this table to its connector (SQL Server: `table` as
    /// `[schema].[name]`), laid over the import's own options to define it.
    pub options: BTreeMap<String, String>,
}
