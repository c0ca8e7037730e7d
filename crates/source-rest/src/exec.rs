//! The scan of a REST table: one task walks the pages in order (each page's request is made
//! when the one before has been converted and handed over) and streams one Arrow batch per
//! page through a channel of two batches: memory holds about one page.

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

use super::Shared;
use super::pushdown::Predicate;

/// Reads a REST table, page by page.
#[derive(Debug)]
pub struct RestExec {
    shared: Arc<Shared>,
    schema: SchemaRef,
    projection: Vec<usize>,
    /// Query parameters added to the first request.
    params: Vec<(String, String)>,
    predicates: Vec<Predicate>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl RestExec {
    pub(crate) fn new(
        shared: Arc<Shared>,
        schema: SchemaRef,
        projection: Vec<usize>,
        params: Vec<(String, String)>,
        predicates: Vec<Predicate>,
        limit: Option<usize>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            shared,
            schema,
            projection,
            params,
            predicates,
            limit,
            properties,
        }
    }

    /// The query parameters the scan adds to its first request (what EXPLAIN shows).
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }
}

impl DisplayAs for RestExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        write!(
            f,
            "RestExec: url={} pagination={} params=[{params}] checks={}",
            self.shared.config.server,
            self.shared.config.pagination.name(),
            self.predicates.len()
        )?;
        if let Some(limit) = self.limit {
            write!(f, " limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RestExec {
    medlake_source::leaf_plan!("RestExec");

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "RestExec has no partition {partition}"
            )));
        }
        let shared = self.shared.clone();
        let params = self.params.clone();
        let predicates = self.predicates.clone();
        let projection = self.projection.clone();
        let limit = self.limit;
        Ok(medlake_source::scan::spawned(
            self.schema.clone(),
            move |tx| async move {
                let read = shared.read(&params, &predicates, &projection, limit, &tx);
                if let Err(e) = read.await {
                    shared.record_failure(&e);
                    let _ = tx.send(Err(DataFusionError::from(e))).await;
                }
            },
        ))
    }
}
