//! `CLUSTER BY`: the rows of a write sorted by the clustering columns, so that each written
//! file's row groups hold narrow ranges of them (which queries skip by their statistics).
//!
//! The sort cannot be a `Sort` node in the plan handed to deltalake's write: its physical
//! plan puts the input under a validation operator that does not keep the input's order, and
//! DataFusion's `EnforceSorting` then drops the sort as useless. So the sorted plan is run
//! here and handed to the write as a one-shot stream, which no optimizer reorders.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Column;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::execute_stream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use crate::error::{Error, Result};
use crate::warehouse::TableName;

/// `input` sorted by `columns` (ascending, NULLs last), as a plan that reads the sorted rows
/// once; `input` itself when there are no columns. A column the input does not have is an
/// error naming it.
pub(crate) async fn sorted(
    name: &TableName,
    input: LogicalPlan,
    columns: &[String],
    session: &dyn Session,
) -> Result<LogicalPlan> {
    if columns.is_empty() {
        return Ok(input);
    }
    let mut keys = Vec::with_capacity(columns.len());
    for column in columns {
        let Some((qualifier, field)) = input.schema().iter().find(|(_, f)| f.name() == column)
        else {
            return Err(Error::InvalidClusterBy {
                table: name.to_string(),
                column: column.clone(),
            });
        };
        let column = Column::new(qualifier.cloned(), field.name());
        keys.push(Expr::Column(column).sort(true, false));
    }
    let plan = LogicalPlanBuilder::from(input).sort(keys)?.build()?;
    let physical = session.create_physical_plan(&plan).await?;
    let schema = physical.schema();
    let stream = execute_stream(physical, session.task_ctx())?;
    let once = Once {
        schema: schema.clone(),
        stream: Mutex::new(Some(stream)),
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(once)])?;
    let plan = LogicalPlanBuilder::scan("clustered", provider_as_source(Arc::new(table)), None)?
        .build()?;
    Ok(plan)
}

/// A stream of rows that can be read once.
struct Once {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once").finish_non_exhaustive()
    }
}

impl PartitionStream for Once {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match taken {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async {
                    Err(DataFusionError::Internal(
                        "the sorted rows of a clustered write were read twice".into(),
                    ))
                }),
            )),
        }
    }
}
