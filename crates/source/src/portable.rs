//! External tables another process can open again.
//!
//! On a cluster an executor scans an external table itself: from the table's stored
//! [`Definition`] (its secrets still `${NAME}` references, resolved from the executor's own
//! `[secrets]` and checked against its own source [`Policy`]) and which of its rows the scan
//! reads ([`Rows`]), never from a connection or a resolved secret of the server. Every table
//! [`Registry::open`](crate::Registry::open) opens gives [`Portable`] providers, which carry
//! that; [`Registry::reopen`](crate::Registry::reopen) opens one again from it.
//!
//! Planning must then give the same scan in both processes. Most connectors plan from the
//! definition alone; a folder of files is listed while planning, so what a scan reads there
//! is fixed on the server first ([`External::pin`]) and the other process reads exactly
//! those files, or fails if one changed.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};

use crate::{Definition, Error, External, Mismatches, Result, Watermarked};

/// Which rows of an external table a provider reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rows {
    /// Every row (a query).
    All,
    /// The rows up to a watermark and those without one ([`Watermarked::upto`]).
    Upto(Option<String>),
    /// The rows above the first watermark and up to the second ([`Watermarked::between`]).
    Between(String, String),
}

/// What another process needs to scan the same rows of an external table: plain data, no
/// secret value (the definition holds only `${NAME}` references).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reopen {
    pub definition: Definition,
    pub rows: Rows,
    /// What planning read from the source here and the other process must read the same
    /// ([`External::pin`]); `None`: the definition plans the same scan anywhere.
    pub pin: Option<serde_json::Value>,
}

/// An opened external table: the connector's, whose providers are [`Portable`].
pub(crate) struct Opened {
    pub(crate) definition: Definition,
    pub(crate) inner: Arc<dyn External>,
}

impl Opened {
    fn portable(&self, rows: Rows, provider: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
        Arc::new(Portable {
            reopen: Reopen {
                definition: self.definition.clone(),
                rows,
                pin: None,
            },
            external: self.inner.clone(),
            provider,
        })
    }

    /// The provider of `reopen`'s rows (pinned when it says so).
    pub(crate) fn rows(&self, reopen: &Reopen) -> Result<Arc<dyn TableProvider>> {
        let provider = match (&reopen.pin, &reopen.rows) {
            (Some(pin), rows) => self.inner.clone().pinned(rows, pin)?,
            (None, rows) => rows_of(&self.inner, rows)?,
        };
        Ok(Arc::new(Portable {
            reopen: reopen.clone(),
            external: self.inner.clone(),
            provider,
        }))
    }
}

/// The provider of a watermark window of `external`.
fn rows_of(external: &Arc<dyn External>, rows: &Rows) -> Result<Arc<dyn TableProvider>> {
    let marked = external.clone().watermarked();
    match (rows, marked) {
        (Rows::All, _) => Ok(external.clone().provider()),
        (Rows::Upto(mark), Some(m)) => m.upto(mark.as_deref()),
        (Rows::Between(after, upto), Some(m)) => m.between(after, upto),
        (_, None) => Err(Error::Data {
            what: "external table".into(),
            message: "a watermark window of a table without a watermark".into(),
        }),
    }
}

#[async_trait]
impl External for Opened {
    fn provider(self: Arc<Self>) -> Arc<dyn TableProvider> {
        let provider = self.inner.clone().provider();
        self.portable(Rows::All, provider)
    }

    fn watermarked(self: Arc<Self>) -> Option<Arc<dyn Watermarked>> {
        let marked = self.inner.clone().watermarked()?;
        Some(Arc::new(OpenedMarked {
            opened: self,
            marked,
        }))
    }

    fn take_failure(&self) -> Option<Error> {
        self.inner.take_failure()
    }

    fn take_mismatches(&self) -> Option<Mismatches> {
        self.inner.take_mismatches()
    }

    fn reports_mismatches(&self) -> bool {
        self.inner.reports_mismatches()
    }

    async fn pin(&self, rows: &Rows) -> Result<Option<serde_json::Value>> {
        self.inner.pin(rows).await
    }

    fn pinned(
        self: Arc<Self>,
        rows: &Rows,
        pin: &serde_json::Value,
    ) -> Result<Arc<dyn TableProvider>> {
        self.inner.clone().pinned(rows, pin)
    }
}

/// The watermark side of an [`Opened`] table: its windows are [`Portable`] too.
struct OpenedMarked {
    opened: Arc<Opened>,
    marked: Arc<dyn Watermarked>,
}

#[async_trait]
impl Watermarked for OpenedMarked {
    fn column(&self) -> &str {
        self.marked.column()
    }

    async fn high_mark(&self) -> Result<Option<String>> {
        self.marked.high_mark().await
    }

    fn upto(&self, mark: Option<&str>) -> Result<Arc<dyn TableProvider>> {
        let provider = self.marked.upto(mark)?;
        let rows = Rows::Upto(mark.map(str::to_string));
        Ok(self.opened.portable(rows, provider))
    }

    fn between(&self, after: &str, upto: &str) -> Result<Arc<dyn TableProvider>> {
        let provider = self.marked.between(after, upto)?;
        let rows = Rows::Between(after.to_string(), upto.to_string());
        Ok(self.opened.portable(rows, provider))
    }

    async fn changes_kept_since(&self, after: &str) -> Result<bool> {
        self.marked.changes_kept_since(after).await
    }
}

/// An external table's provider that another process can open again ([`Self::reopen`]); it
/// scans as the connector's provider does.
#[derive(Clone)]
pub struct Portable {
    reopen: Reopen,
    external: Arc<dyn External>,
    provider: Arc<dyn TableProvider>,
}

impl Portable {
    /// What opens these rows again elsewhere ([`crate::Registry::reopen`]).
    pub fn reopen(&self) -> &Reopen {
        &self.reopen
    }

    /// Whether its scans count values read as NULL ([`External::reports_mismatches`]).
    pub fn reports_mismatches(&self) -> bool {
        self.external.reports_mismatches()
    }

    /// These rows as another process would read them: for a source whose planning reads
    /// the source (a folder's listing), restricted to what that reads now ([`External::pin`]),
    /// so that this process and the other read the same; otherwise this table as it is.
    pub async fn fixed(self: &Arc<Self>) -> Result<Arc<Self>> {
        if self.reopen.pin.is_some() {
            return Ok(self.clone());
        }
        let Some(pin) = self.external.pin(&self.reopen.rows).await? else {
            return Ok(self.clone());
        };
        let provider = self.external.clone().pinned(&self.reopen.rows, &pin)?;
        Ok(Arc::new(Self {
            reopen: Reopen {
                pin: Some(pin),
                ..self.reopen.clone()
            },
            external: self.external.clone(),
            provider,
        }))
    }
}

#[async_trait]
impl TableProvider for Portable {
    fn schema(&self) -> SchemaRef {
        self.provider.schema()
    }

    fn table_type(&self) -> TableType {
        self.provider.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.provider.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<datafusion::common::Statistics> {
        self.provider.statistics()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.provider.scan(state, projection, filters, limit).await
    }
}

// What these show: the kind and the rows, never the connector's state (which may hold a
// resolved secret) nor the definition's options.
impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("kind", &self.definition.kind)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OpenedMarked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedMarked")
            .field("kind", &self.opened.definition.kind)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Portable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portable")
            .field("kind", &self.reopen.definition.kind)
            .field("rows", &self.reopen.rows)
            .field("pinned", &self.reopen.pin.is_some())
            .finish_non_exhaustive()
    }
}
