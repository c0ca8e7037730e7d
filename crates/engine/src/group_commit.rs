//! Group commit of appends into one table (Flight SQL ingest, and any session's
//! [`crate::Session::ingest`] into an existing table).
//!
//! Each table has one appender ([`medlake_lake::Appender`], kept open between commits) and a
//! queue. A request queues its rows and waits for the appender; whoever gets it takes every
//! request queued by then (with the same columns as its own) and appends them all in one Delta
//! commit, then answers each of them. While a commit is being written the next requests queue
//! up, so under load the commits carry many requests and their number follows the time a
//! commit takes, not the number of clients. A request is answered only once the commit that
//! holds its rows exists. When a shared commit fails (a row one request sent breaks the
//! table's NOT NULL, say) each of its requests is committed again on its own, so a request
//! fails only for its own rows.

use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use medlake_lake::{Appender, TableName};
use tokio::sync::oneshot;

use crate::{Error, Result};

/// Most requests one commit takes.
const MAX_REQUESTS: usize = 256;
/// Attempts of one commit against other writers' commits.
const ATTEMPTS: usize = 8;

/// One table's appender and the requests waiting for it.
#[derive(Default)]
pub(crate) struct AppendGroup {
    appender: tokio::sync::Mutex<Option<Appender>>,
    waiting: Mutex<Vec<Waiting>>,
}

impl AppendGroup {
    /// Whether the appender is open (or being used).
    pub fn is_open(&self) -> bool {
        self.appender
            .try_lock()
            .map_or(true, |appender| appender.is_some())
    }
}

struct Waiting {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows: u64,
    answer: oneshot::Sender<Result<u64>>,
}

fn plan_of(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<LogicalPlan> {
    // One partition: one data file per commit, as a single request writes.
    let provider = MemTable::try_new(schema, vec![batches])?;
    Ok(
        LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(provider)), None)?
            .build()?,
    )
}

impl crate::Session {
    /// Appends `batches` to the existing `table` in a commit shared with the other requests
    /// waiting for it (see the module documentation). Returns the rows appended.
    ///
    /// The commit runs in a task of its own: a request whose client goes away while its
    /// commit (which may hold other requests' rows) is being written does not stop it.
    pub(crate) async fn append_grouped(
        &self,
        table: &TableName,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        rows: u64,
    ) -> Result<u64> {
        let group = self.append_group(table);
        let (answer, answered) = oneshot::channel();
        group
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Waiting {
                schema,
                batches,
                rows,
                answer,
            });
        let committer = Committer {
            shared: self.shared.clone(),
            state: self.ctx.state(),
            table: table.clone(),
        };
        tokio::spawn(async move {
            let mut appender = group.appender.lock().await;
            // Earlier tasks may have taken every waiting request, this one's included.
            let taken = {
                let mut waiting = group.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                take_alike(&mut waiting)
            };
            if !taken.is_empty() {
                committer.commit_group(&mut appender, taken).await;
            }
        });
        answered
            .await
            .unwrap_or_else(|_| Err(Error::Internal("an ingest's commit task ended".into())))
    }

    fn append_group(&self, table: &TableName) -> Arc<AppendGroup> {
        self.shared
            .appenders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(table.clone())
            .or_default()
            .clone()
    }
}

/// What a commit task needs of the engine and of the session that started it.
struct Committer {
    shared: Arc<crate::Shared>,
    state: datafusion::execution::SessionState,
    table: TableName,
}

impl Committer {
    /// Commits `taken` together; when that fails and there were several, each alone.
    async fn commit_group(&self, appender: &mut Option<Appender>, taken: Vec<Waiting>) {
        let schema = taken[0].schema.clone();
        let batches: Vec<RecordBatch> = taken.iter().flat_map(|w| w.batches.clone()).collect();
        let together = match plan_of(schema, batches) {
            Ok(plan) => self.append_once(appender, plan).await,
            Err(e) => Err(e),
        };
        match together {
            Ok(()) => {
                for waiting in taken {
                    let _ = waiting.answer.send(Ok(waiting.rows));
                }
            }
            Err(e) if taken.len() == 1 => {
                if let Some(waiting) = taken.into_iter().next() {
                    let _ = waiting.answer.send(Err(e));
                }
            }
            Err(_) => {
                for waiting in taken {
                    let alone = match plan_of(waiting.schema, waiting.batches) {
                        Ok(plan) => self.append_once(appender, plan).await,
                        Err(e) => Err(e),
                    };
                    let _ = waiting.answer.send(alone.map(|()| waiting.rows));
                }
            }
        }
    }

    /// One commit of `plan` through the table's appender, on top of other writers' commits.
    async fn append_once(&self, slot: &mut Option<Appender>, plan: LogicalPlan) -> Result<()> {
        let table = &self.table;
        let warehouse = &self.shared.warehouse;
        let session: Arc<dyn datafusion::catalog::Session> = Arc::new(self.state.clone());
        let options = medlake_lake::CommitOptions::default();
        for _ in 0..ATTEMPTS {
            let appender = match slot.as_mut() {
                Some(appender) => appender,
                None => {
                    // Checked at every open: a dropped table's name may now be a view's.
                    self.shared.check_writable(table, "ingest into").await?;
                    slot.insert(warehouse.open_appender(table).await?)
                }
            };
            let version = warehouse
                .append_to(appender, plan.clone(), session.clone(), &options)
                .await?;
            if version.is_some() {
                return Ok(());
            }
            // Someone committed first, or the table was dropped (perhaps created again).
            if warehouse.refresh_appender(appender).await?.is_none() {
                *slot = None;
            }
        }
        Err(medlake_lake::Error::conflict_after(table, ATTEMPTS).into())
    }
}

/// The first waiting request and every other with the same columns (at most
/// [`MAX_REQUESTS`]), in the order they came; the others stay queued.
fn take_alike(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let Some(first) = waiting.first() else {
        return Vec::new();
    };
    let schema = first.schema.clone();
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for w in waiting.drain(..) {
        if taken.len() < MAX_REQUESTS && w.schema == schema {
            taken.push(w);
        } else {
            kept.push(w);
        }
    }
    *waiting = kept;
    taken
}
