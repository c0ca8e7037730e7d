//! One scheduler per warehouse: the servers that share a warehouse contend for its scheduler
//! lease ([`medlake_lake::lease`]); the one that holds it runs scheduled and on-change
//! refreshes ([`Scheduler::with_leadership`](medlake_views::Scheduler::with_leadership)),
//! evaluates alert rules, delivers their firings and sends heartbeats. The others serve every
//! door (queries, ingest, manual `REFRESH`) and take the lease over when its holder stops
//! renewing it. `system.scheduler_lease` shows the lease as the warehouse holds it.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use medlake_lake::Warehouse;
use medlake_lake::lease::{self, Lease};
use tokio::sync::watch;
use tracing::{info, warn};

/// The scheduler lease's time to live unless configured (`[scheduler] lease_seconds`).
pub const DEFAULT_SCHEDULER_LEASE: Duration = lease::DEFAULT_TTL;

/// The system table that shows the scheduler lease.
pub const TABLE: &str = "scheduler_lease";

/// This server's part in the scheduler lease.
#[derive(Debug)]
pub struct SchedulerLease {
    /// Whether this server holds the lease now.
    pub leading: watch::Receiver<bool>,
    /// This server's holder id (host/pid/random), as `system.scheduler_lease` shows it.
    pub holder: String,
    task: tokio::task::JoinHandle<()>,
}

impl SchedulerLease {
    /// Waits (at most `within`) for the lease to be released after the shutdown signal.
    pub async fn released(self, within: Duration) {
        let _ = tokio::time::timeout(within, self.task).await;
    }
}

impl crate::Engine {
    /// Contends for the warehouse's scheduler lease (time to live `ttl`) until `shutdown`
    /// says `true`, then releases it. Its `leading` says whether this server leads now, for
    /// [`Scheduler::with_leadership`](medlake_views::Scheduler::with_leadership); alert
    /// evaluation, deliveries and heartbeats follow it when the engine's alert settings are
    /// `standby` (`medlake serve`'s are).
    pub fn contend_for_scheduler(
        &self,
        ttl: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> SchedulerLease {
        let lease = Arc::new(Lease::new(
            self.warehouse(),
            lease::SCHEDULER,
            lease::holder_id(),
            ttl,
        ));
        info!(
            holder = lease.holder(),
            ttl_ms = ttl.as_millis() as u64,
            mechanism = lease.mechanism().as_str(),
            "contending for the scheduler lease"
        );
        let holder = lease.holder().to_string();
        let (leading, task) = lease.keep(shutdown);
        let alerts = self.shared.alerts.clone();
        let views = self.views().clone();
        let mut follow = leading.clone();
        tokio::spawn(async move {
            let mut led = false;
            loop {
                let now = *follow.borrow_and_update();
                if let Err(e) = alerts.set_leading(now).await {
                    warn!(error = %e, "alert evaluation could not take over (reading the alert log failed)");
                }
                if now && !led {
                    // A server killed between a view's commit and its system.refreshes row
                    // left a refresh unrecorded: the new leader records it.
                    let views = views.clone();
                    tokio::spawn(async move {
                        match views.recover_history().await {
                            Ok(recovered) if !recovered.is_empty() => {
                                info!(
                                    views = recovered.len(),
                                    "recorded refreshes a stopped server left unrecorded"
                                )
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(error = %e, "could not check system.refreshes against the views' commits")
                            }
                        }
                    });
                }
                led = now;
                if follow.changed().await.is_err() {
                    let _ = alerts.set_leading(false).await;
                    return;
                }
            }
        });
        SchedulerLease {
            leading,
            holder,
            task,
        }
    }
}

/// `system.scheduler_lease`: one row, the lease as written in the warehouse (none before a
/// server first took it).
#[derive(Debug)]
pub(crate) struct LeaseTable {
    pub warehouse: Warehouse,
}

fn schema() -> SchemaRef {
    let at = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("lease", DataType::Utf8, false),
        Field::new("holder", DataType::Utf8, false),
        Field::new("sequence", DataType::Int64, false),
        Field::new("acquired_at", at(), false),
        Field::new("renewed_at", at(), false),
        Field::new("expires_at", at(), false),
        Field::new("ttl_seconds", DataType::Float64, false),
        Field::new("released", DataType::Boolean, false),
        Field::new("mechanism", DataType::Utf8, false),
    ]))
}

async fn rows(warehouse: &Warehouse) -> DfResult<RecordBatch> {
    let current = lease::current(warehouse, lease::SCHEDULER)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let Some((r, mechanism)) = current else {
        return Ok(RecordBatch::new_empty(schema()));
    };
    let micros = |t: chrono::DateTime<chrono::Utc>| {
        TimestampMicrosecondArray::from(vec![t.timestamp_micros()]).with_timezone("UTC")
    };
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![lease::SCHEDULER])),
            Arc::new(StringArray::from(vec![r.holder.clone()])),
            Arc::new(Int64Array::from(vec![
                i64::try_from(r.sequence).unwrap_or(i64::MAX),
            ])),
            Arc::new(micros(r.acquired_at)),
            Arc::new(micros(r.renewed_at)),
            Arc::new(micros(r.expires_at())),
            Arc::new(Float64Array::from(vec![r.ttl_ms as f64 / 1000.0])),
            Arc::new(BooleanArray::from(vec![r.released])),
            Arc::new(StringArray::from(vec![mechanism.as_str()])),
        ],
    )?)
}

#[async_trait]
impl TableProvider for LeaseTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = rows(&self.warehouse).await?;
        let table = MemTable::try_new(schema(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}
