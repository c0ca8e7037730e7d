//! What the connectors' scans share: a table provider over a scan planner with an optional
//! watermark window, and the stream of a reading task (a channel two batches deep: a slow
//! reader slows the read, memory stays bounded; the task stops when the stream is dropped).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use tokio::sync::mpsc::Sender;

/// A connector's scan planning, which [`Windowed`] turns into a table provider.
pub trait Planner: Debug + Send + Sync + 'static {
    /// The watermark range a scan is restricted to (`Default`: none).
    type Window: Debug + Default + Send + Sync + 'static;

    fn schema(&self) -> SchemaRef;

    fn filter_pushdown(&self, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown>;

    fn plan(
        self: &Arc<Self>,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        window: &Self::Window,
    ) -> DfResult<Arc<dyn ExecutionPlan>>;
}

/// The rows between two watermarks: `after < watermark <= upto`; without `after`, also the
/// rows without a watermark (what a full extraction pinned at `upto` reads). `M` is how the
/// connector holds a mark (a query parameter, a scalar, a number).
#[derive(Clone, Debug, PartialEq)]
pub struct Window<M> {
    pub after: Option<M>,
    pub upto: Option<M>,
}

impl<M> Default for Window<M> {
    fn default() -> Self {
        Self {
            after: None,
            upto: None,
        }
    }
}

/// A planner whose windows are watermark ranges: the `Watermarked::upto` / `between` of
/// every connector.
pub trait Marked: Planner<Window = Window<Self::Mark>> {
    type Mark: Debug + Send + Sync + 'static;

    /// A stored mark (text) as the connector holds it.
    fn mark(&self, mark: &str) -> crate::Result<Self::Mark>;
}

/// The table, or the rows of one watermark window of it.
#[derive(Debug)]
pub struct Windowed<P: Planner> {
    pub inner: Arc<P>,
    pub window: P::Window,
}

impl<P: Planner> Windowed<P> {
    /// The whole table.
    pub fn all(inner: Arc<P>) -> Arc<dyn TableProvider> {
        Arc::new(Self {
            inner,
            window: P::Window::default(),
        })
    }
}

impl<P: Marked> Windowed<P> {
    /// The rows up to `mark` (and those without a watermark).
    pub fn upto(inner: &Arc<P>, mark: Option<&str>) -> crate::Result<Arc<dyn TableProvider>> {
        let upto = mark.map(|m| inner.mark(m)).transpose()?;
        Ok(Arc::new(Self {
            inner: inner.clone(),
            window: Window { after: None, upto },
        }))
    }

    /// The rows above `after` and up to `upto`.
    pub fn between(
        inner: &Arc<P>,
        after: &str,
        upto: &str,
    ) -> crate::Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(Self {
            inner: inner.clone(),
            window: Window {
                after: Some(inner.mark(after)?),
                upto: Some(inner.mark(upto)?),
            },
        }))
    }
}

#[async_trait]
impl<P: Planner> TableProvider for Windowed<P> {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(self.inner.filter_pushdown(filters))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.plan(projection, filters, limit, &self.window)
    }
}

/// The methods every connector scan shares as a leaf of the physical plan (no children, no
/// expressions of its own): `medlake_source::leaf_plan!("RestExec");` inside `impl ExecutionPlan`.
#[macro_export]
macro_rules! leaf_plan {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            Vec::new()
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::error::Result<
                datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        #[allow(deprecated)]
        fn with_new_children(
            self: std::sync::Arc<Self>,
            children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            if children.is_empty() {
                Ok(self)
            } else {
                Err(datafusion::error::DataFusionError::Internal(
                    concat!($name, " is a leaf").into(),
                ))
            }
        }
    };
}

/// The batches `read` sends, as a stream; `read` runs as its own task, aborted when the
/// stream is dropped (the client went away, a LIMIT was reached). A task that ends without
/// finishing (it panicked) ends the stream with an error, never as if every row had come: a
/// refresh must not commit a partial read and move its watermark past the rest.
pub fn spawned<F>(
    schema: SchemaRef,
    read: impl FnOnce(Sender<DfResult<RecordBatch>>) -> F,
) -> SendableRecordBatchStream
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let abort = AbortOnDrop(tokio::spawn(read(tx)));
    let stream = futures::stream::unfold(
        (rx, abort, false),
        |(mut rx, mut abort, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(item) => Some((item, (rx, abort, false))),
                None => match (&mut abort.0).await {
                    Err(e) if e.is_panic() => Some((
                        Err(datafusion::error::DataFusionError::Execution(
                            "the source's read stopped unexpectedly (a bug: it panicked); nothing of it is kept".into(),
                        )),
                        (rx, abort, true),
                    )),
                    _ => None,
                },
            }
        },
    );
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a connector's table state gives besides scan planning, for [`Table`].
#[async_trait]
pub trait Source: Marked {
    /// The watermark column, if the table was declared with one.
    fn watermark(&self) -> Option<&str>;

    /// The highest watermark at the source now; `None` when no row has one.
    async fn high_mark(&self) -> crate::Result<Option<String>>;

    /// Where the first error a scan raised is kept.
    fn failure(&self) -> &std::sync::Mutex<Option<crate::Error>>;

    /// See [`Watermarked::changes_kept_since`](crate::Watermarked::changes_kept_since).
    async fn changes_kept_since(&self, _after: &str) -> crate::Result<bool> {
        Ok(true)
    }

    /// The values scans read as NULL because they had the wrong type, since the last call.
    fn take_mismatches(&self) -> Option<crate::Mismatches> {
        None
    }

    /// Whether [`Self::take_mismatches`] can report anything.
    fn reports_mismatches(&self) -> bool {
        false
    }
}

/// An external table over a connector's state: [`External`](crate::External) and
/// [`Watermarked`](crate::Watermarked), written once for every connector with watermark
/// windows.
#[derive(Debug)]
pub struct Table<S>(Arc<S>);

impl<S: Source> Table<S> {
    pub fn new(inner: S) -> Self {
        Self(Arc::new(inner))
    }

    pub fn inner(&self) -> &Arc<S> {
        &self.0
    }
}

impl<S: Source> crate::External for Table<S> {
    fn provider(self: Arc<Self>) -> Arc<dyn TableProvider> {
        Windowed::all(self.0.clone())
    }

    fn watermarked(self: Arc<Self>) -> Option<Arc<dyn crate::Watermarked>> {
        self.0.watermark()?;
        Some(self as Arc<dyn crate::Watermarked>)
    }

    fn take_failure(&self) -> Option<crate::Error> {
        self.0.failure().lock().ok()?.take()
    }

    fn take_mismatches(&self) -> Option<crate::Mismatches> {
        self.0.take_mismatches()
    }

    fn reports_mismatches(&self) -> bool {
        self.0.reports_mismatches()
    }
}

#[async_trait]
impl<S: Source> crate::Watermarked for Table<S> {
    fn column(&self) -> &str {
        self.0.watermark().unwrap_or_default()
    }

    async fn high_mark(&self) -> crate::Result<Option<String>> {
        self.0.high_mark().await
    }

    fn upto(&self, mark: Option<&str>) -> crate::Result<Arc<dyn TableProvider>> {
        Windowed::upto(&self.0, mark)
    }

    fn between(&self, after: &str, upto: &str) -> crate::Result<Arc<dyn TableProvider>> {
        Windowed::between(&self.0, after, upto)
    }

    async fn changes_kept_since(&self, after: &str) -> crate::Result<bool> {
        self.0.changes_kept_since(after).await
    }
}
