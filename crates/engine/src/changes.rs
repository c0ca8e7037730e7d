//! `table_changes('schema.table', from [, to])`: the rows a range of a table's commits
//! inserted, deleted and updated (Delta's change data feed; see `medlake_lake::changes`), as
//! in Databricks: both bounds included, each a version or a timestamp (a string), `to` the
//! latest version when left out; the table's columns plus `_change_type` (`insert`,
//! `delete`, `update_preimage`, `update_postimage`), `_commit_version` and
//! `_commit_timestamp`.
//!
//! It is not a DataFusion table function. Like `VERSION AS OF`, each call is replaced before
//! planning ([`crate::statement::pin_versions`]) by a reference into the time-travel schema
//! that names the table it reads, so the plan holds a scan of `schema.table` that the one
//! access path treats as a read of that table: SELECT is needed (`privileges::for_plan`), its
//! masks and row filters are applied to every change row (`access::protect`), and the audit
//! records a read of it. A function of the same name is registered only to refuse the calls
//! that path does not reach (a materialized view's query, `COPY (...)`, `LATERAL`).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr as DfExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, ObjectName, TableFunctionArgs, UnaryOperator, Value,
};
use datafusion::sql::sqlparser::parser::Parser;
use medlake_lake::changes::{COMMIT_TIMESTAMP, COMMIT_VERSION};
use medlake_lake::{TableName, TimeTravel, Warehouse};

use crate::dialect::MedlakeDialect;
use crate::error::{Error, Result};

/// The function's name.
pub const FUNCTION: &str = "table_changes";

const USAGE: &str = "table_changes('schema.table', from [, to]): from and to are versions \
                     (whole numbers) or timestamps ('2026-11-23 10:00:00')";

/// A call of `table_changes`, its arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The table's name as written in the first argument (normalized parts).
    pub parts: Vec<String>,
    /// The first commit of the range.
    pub from: TimeTravel,
    /// The last one (`None`: the latest).
    pub to: Option<TimeTravel>,
}

/// Whether a table reference with arguments is a call of `table_changes`.
pub fn is_call(name: &ObjectName) -> bool {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .is_some_and(|i| crate::statement::normalize(i) == FUNCTION),
        _ => false,
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        what: FUNCTION.into(),
        reason: reason.into(),
    }
}

/// The arguments of a call: literals only.
pub fn parse_call(args: &TableFunctionArgs) -> Result<Call> {
    if args.settings.is_some() || !(2..=3).contains(&args.args.len()) {
        return Err(invalid(USAGE));
    }
    let mut values = Vec::with_capacity(args.args.len());
    for arg in &args.args {
        let FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) = arg else {
            return Err(invalid(format!("named or wildcard arguments: {USAGE}")));
        };
        values.push(literal(expr)?);
    }
    let parts = match &values[0] {
        Literal::Text(text) => table_name_parts(text)?,
        _ => return Err(invalid(format!("the table's name is a string: {USAGE}"))),
    };
    let bound = |value: &Literal, which: &str| match value {
        Literal::Version(v) => Ok(TimeTravel::Version(*v)),
        Literal::Text(text) => crate::statement::parse_timestamp(text)
            .map(TimeTravel::Timestamp)
            .map_err(|_| {
                invalid(format!(
                    "{which} '{text}' is neither a version nor a timestamp: {USAGE}"
                ))
            }),
    };
    let from = bound(&values[1], "from")?;
    let to = values.get(2).map(|v| bound(v, "to")).transpose()?;
    Ok(Call { parts, from, to })
}

/// An argument's value.
enum Literal {
    Text(String),
    Version(u64),
}

fn literal(expr: &Expr) -> Result<Literal> {
    match expr {
        Expr::Nested(inner) => literal(inner),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Ok(Literal::Text(s.clone())),
            Value::Number(n, _) => n.parse::<u64>().map(Literal::Version).map_err(|_| {
                invalid(format!(
                    "'{n}' is not a table version (a whole number from 0 to {})",
                    u64::MAX
                ))
            }),
            Value::Null => Err(invalid(format!("arguments must not be NULL: {USAGE}"))),
            Value::Placeholder(_) => Err(Error::NotSupported {
                what: "parameters in table_changes(...) arguments; write the values".into(),
            }),
            other => Err(invalid(format!("unexpected argument {other}: {USAGE}"))),
        },
        Expr::TypedString(t) => match &t.value.value {
            Value::SingleQuotedString(s) => Ok(Literal::Text(s.clone())),
            other => Err(invalid(format!("unexpected argument {other}: {USAGE}"))),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            ..
        } => Err(invalid("versions are not negative")),
        other => Err(Error::NotSupported {
            what: format!("table_changes(...) arguments other than literals ({other})"),
        }),
    }
}

/// The parts of a table name written in a string (`'bronze.readings'`, `'"bronze"."t"'`):
/// one SQL name and nothing else.
fn table_name_parts(text: &str) -> Result<Vec<String>> {
    let not_a_name = || {
        invalid(format!(
            "'{text}' is not a table name (write 'schema.table')"
        ))
    };
    let dialect = MedlakeDialect::default();
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|_| not_a_name())?;
    let name = parser.parse_object_name(false).map_err(|_| not_a_name())?;
    if parser.peek_token().token != datafusion::sql::sqlparser::tokenizer::Token::EOF {
        return Err(not_a_name());
    }
    let parts = crate::statement::name_parts(&name)?;
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(String::is_empty) {
        return Err(not_a_name());
    }
    Ok(parts)
}

/// The change rows of `name` from `from` to `to`, for the time-travel schema. `view`: the
/// table is a materialized view.
pub async fn provider(
    warehouse: &Warehouse,
    name: &TableName,
    from: &TimeTravel,
    to: Option<&TimeTravel>,
    view: bool,
) -> Result<Arc<dyn TableProvider>> {
    if warehouse.external(name).await?.is_some() {
        return Err(Error::NotSupported {
            what: format!("table_changes of {name}, an external table (its source keeps no log)"),
        });
    }
    let (from, to) = warehouse.change_versions(name, from, to).await?;
    if view {
        check_definition(warehouse, name, from).await?;
    }
    let inner = warehouse.changes(name, from, to).await?;
    Ok(Arc::new(ChangeRows::new(inner)))
}

/// A materialized view's masks and row filters come from its current definition (lineage),
/// so rows read from its past must all have been computed by that definition: the rows it
/// held at `floor` (those a range of changes from `floor + 1` removes, or those `VERSION AS OF
/// floor` reads) and every commit after. A `CREATE OR REPLACE` rewrites all rows in the
/// commit that records the new definition, so this holds when the definition in effect at
/// `floor` and every definition recorded after it equal the current one. Each commit of a
/// view records its definition in its `commitInfo` (`medlake.view`, written by the views
/// crate); commits without one (OPTIMIZE) carry the rows they had. `Err(version)`: the view
/// was redefined at `version` (or, if a log entry is gone, what it held cannot be told, and
/// `version` is that entry's successor).
pub(crate) async fn same_definition_since(
    warehouse: &Warehouse,
    name: &TableName,
    floor: u64,
) -> Result<std::result::Result<(), u64>> {
    let versions = warehouse.versions(name).await?;
    let mut current: Option<(serde_json::Value, u64)> = None;
    for &version in versions.iter().rev() {
        let Some(actions) = warehouse.commit_actions(name, version).await? else {
            let since = current.map_or(version.saturating_add(1), |(_, oldest)| oldest);
            return Ok(Err(since));
        };
        if let Some(definition) = actions
            .iter()
            .find_map(|a| a.get("commitInfo")?.get("medlake")?.get("view"))
        {
            match &mut current {
                None => current = Some((definition.clone(), version)),
                Some((def, oldest)) if def == definition => *oldest = version,
                Some((_, oldest)) => return Ok(Err(*oldest)),
            }
            if version <= floor {
                break;
            }
        }
    }
    Ok(Ok(()))
}

/// Refuses a range of a view's changes that reaches rows of an earlier definition.
async fn check_definition(warehouse: &Warehouse, name: &TableName, from: u64) -> Result<()> {
    match same_definition_since(warehouse, name, from.saturating_sub(1)).await? {
        Ok(()) => Ok(()),
        Err(since) => Err(Error::Lake(medlake_lake::Error::InvalidRange {
            schema: name.schema.clone(),
            table: name.table.clone(),
            reason: format!(
                "the materialized view was redefined (CREATE OR REPLACE) at version \
                 {since}; read its changes from version {} on",
                since.saturating_add(1)
            ),
        })),
    }
}

/// The change rows with medlake's types for the commit columns (those of `table_history`):
/// the version as BIGINT, the time as a UTC timestamp in microseconds.
#[derive(Debug)]
struct ChangeRows {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl ChangeRows {
    fn new(inner: Arc<dyn TableProvider>) -> Self {
        let fields: Vec<Field> = inner
            .schema()
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                COMMIT_VERSION => Field::new(COMMIT_VERSION, DataType::Int64, f.is_nullable()),
                COMMIT_TIMESTAMP => Field::new(
                    COMMIT_TIMESTAMP,
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    f.is_nullable(),
                ),
                _ => f.as_ref().clone(),
            })
            .collect();
        Self {
            inner,
            schema: Arc::new(Schema::new(fields)),
        }
    }
}

#[async_trait]
impl TableProvider for ChangeRows {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters are not pushed down: DataFusion applies them over these rows (row filters
    /// included), after the cast.
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[DfExpr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, &[], limit).await?;
        // deltalake unions a scan per kind of file (change files, added, removed); a kind
        // without files is a scan of no partitions, which a sort pushed below the union
        // cannot run over ("does not satisfy distribution requirements"): nothing, instead.
        let plan = plan
            .transform_up(|node| {
                if node.children().is_empty() && node.output_partitioning().partition_count() == 0 {
                    let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(node.schema()));
                    return Ok(Transformed::yes(empty));
                }
                Ok(Transformed::no(node))
            })?
            .data;
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let input = plan.schema();
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(indices.len());
        for (position, index) in indices.iter().enumerate() {
            let field = self.schema.field(*index);
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(field.name(), position));
            let expr = if input.field(position).data_type() == field.data_type() {
                column
            } else {
                Arc::new(CastExpr::new(column, field.data_type().clone(), None))
            };
            exprs.push((expr, field.name().clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}

/// The function registered under [`FUNCTION`]: every call that reaches it was not replaced
/// before planning (see the module docs), and is refused.
#[derive(Debug)]
pub(crate) struct Unreplaced;

impl TableFunctionImpl for Unreplaced {
    fn call_with_args(
        &self,
        _: datafusion::catalog::TableFunctionArgs,
    ) -> DfResult<Arc<dyn TableProvider>> {
        Err(DataFusionError::NotImplemented(
            "table_changes(...) here (a materialized view's query, COPY or LATERAL): \
             read it in a query of its own"
                .into(),
        ))
    }
}
