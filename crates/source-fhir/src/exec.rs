//! The scan of a FHIR table: one task runs the export (or the search) and streams batches
//! of `batch_rows` rows through a channel two batches deep: memory holds about one batch
//! and one line (or page).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use medlake_source::scan::Window;
use tracing::Instrument;

use crate::client::Client;
use crate::rows::Batches;
use crate::{Mode, Shared, bulk, mark_text, search};

/// Reads a FHIR table.
#[derive(Debug)]
pub struct FhirExec {
    shared: Arc<Shared>,
    schema: SchemaRef,
    projection: Vec<usize>,
    window: Window<DateTime<Utc>>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl FhirExec {
    pub(crate) fn new(
        shared: Arc<Shared>,
        projection: Vec<usize>,
        window: Window<DateTime<Utc>>,
        limit: Option<usize>,
    ) -> DfResult<Self> {
        let schema = Arc::new(crate::schema().project(&projection)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            shared,
            schema,
            projection,
            window,
            limit,
            properties,
        })
    }
}

impl DisplayAs for FhirExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.shared.config;
        let mode = match &config.mode {
            Mode::Bulk(export) => format!("bulk export={}", export.path()),
            Mode::Search(_) => "search".to_string(),
        };
        write!(
            f,
            "FhirExec: url={} resource={} {mode}",
            config.server, config.resource
        )?;
        if let Some(after) = self.window.after {
            write!(f, " after={}", mark_text(after))?;
        }
        if let Some(upto) = self.window.upto {
            write!(f, " upto={}", mark_text(upto))?;
        }
        if let Some(limit) = self.limit {
            write!(f, " limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for FhirExec {
    medlake_source::leaf_plan!("FhirExec");

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "FhirExec has no partition {partition}"
            )));
        }
        let shared = self.shared.clone();
        let window = self.window.clone();
        let mut batches = Batches::new(
            self.schema.clone(),
            self.projection.clone(),
            shared.config.batch_rows,
            self.limit,
        );
        let span = tracing::info_span!("fhir_scan", server = %shared.config.server, resource = %shared.config.resource);
        Ok(medlake_source::scan::spawned(
            self.schema.clone(),
            move |tx| {
                async move {
                    let read = async {
                        let client = Client::new(
                            shared.config.clone(),
                            &shared.policy,
                            shared.tokens.clone(),
                        )?;
                        match &shared.config.mode {
                            Mode::Bulk(export) => {
                                bulk::read(&client, export, &window, &mut batches, &tx).await?
                            }
                            Mode::Search(params) => {
                                search::read(&client, params, &window, &mut batches, &tx).await?
                            }
                        }
                        batches.flush(&tx).await;
                        Ok::<(), medlake_source::Error>(())
                    };
                    if let Err(e) = read.await {
                        shared.record_failure(&e);
                        let _ = tx.send(Err(DataFusionError::from(e))).await;
                    }
                }
                .instrument(span)
            },
        ))
    }
}
