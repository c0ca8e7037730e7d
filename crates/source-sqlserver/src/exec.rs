//! The scan of a SQL Server table: one T-SQL statement per partition, each run on its own
//! connection by a task that streams rows into Arrow batches through a channel of two batches
//! (backpressure: a slow reader slows the read, memory stays bounded).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

use super::pushdown::Param;
use super::{Shared, stream_rows};
use medlake_source::Error;

/// Reads a SQL Server table, one partition per statement.
#[derive(Debug)]
pub struct SqlServerExec {
    shared: Arc<Shared>,
    schema: SchemaRef,
    projection: Vec<usize>,
    statements: Vec<(String, Vec<Param>)>,
    properties: Arc<PlanProperties>,
}

impl SqlServerExec {
    pub(crate) fn new(
        shared: Arc<Shared>,
        schema: SchemaRef,
        projection: Vec<usize>,
        statements: Vec<(String, Vec<Param>)>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(statements.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            shared,
            schema,
            projection,
            statements,
            properties,
        }
    }

    /// The T-SQL of each partition (what EXPLAIN shows).
    pub fn statements(&self) -> Vec<&str> {
        self.statements.iter().map(|(s, _)| s.as_str()).collect()
    }
}

impl DisplayAs for SqlServerExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SqlServerExec: server={} table={} partitions={} sql={}",
            self.shared.connection.server(),
            self.shared.qualified,
            self.statements.len(),
            self.statements.first().map_or("", |(s, _)| s.as_str())
        )
    }
}

impl ExecutionPlan for SqlServerExec {
    medlake_source::leaf_plan!("SqlServerExec");

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let (sql, params) = self.statements.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("SqlServerExec has no partition {partition}"))
        })?;
        let shared = self.shared.clone();
        let schema = self.schema.clone();
        let projection = self.projection.clone();
        Ok(medlake_source::scan::spawned(
            self.schema.clone(),
            move |tx| async move {
                let mut attempt = 0;
                loop {
                    let mut sent_any = false;
                    let result = stream_rows(
                        &shared,
                        &sql,
                        &params,
                        &schema,
                        &projection,
                        &mut sent_any,
                        &tx,
                    )
                    .await;
                    match result {
                        Ok(()) => return,
                        // Nothing reached the reader yet: reading again from the start is safe.
                        Err(e @ Error::ConnectionLost { .. })
                            if !sent_any && attempt < shared.connection.retries =>
                        {
                            tracing::warn!(error = %e, "sqlserver scan lost its connection before any row; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(
                                200u64 << attempt.min(10),
                            ))
                            .await;
                            attempt += 1;
                        }
                        Err(e) => {
                            shared.record_failure(&e);
                            let _ = tx.send(Err(DataFusionError::from(e))).await;
                            return;
                        }
                    }
                }
            },
        ))
    }
}
