//! Planning a rewritten query with DataFusion over the in-memory tables, and describing its
//! result columns the way SQL Server would.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::{DataFusionError, SchemaError, TableReference};
use datafusion::datasource::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr as DfExpr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;

use crate::catalog::{Key, Table};
use crate::tsql::{OutName, PreparedQuery, SqlError};
use crate::types::SqlType;

/// One column of a result set as it goes into COLMETADATA.
#[derive(Debug, Clone)]
pub(crate) struct ResultColumn {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    /// The Arrow type values are cast to before encoding.
    pub wire: DataType,
    /// `[schema, table]` of the source table, for TEXT/NTEXT metadata.
    pub table: Vec<String>,
}

pub(crate) struct Execution {
    pub columns: Vec<ResultColumn>,
    pub stream: SendableRecordBatchStream,
    /// Lower-case identifier -> spelling in the query, for errors raised while streaming.
    pub spellings: HashMap<String, String>,
}

/// Plan `query` over `tables` (the declared tables and the INFORMATION_SCHEMA views) and
/// start executing it.
pub(crate) async fn start(
    query: PreparedQuery,
    tables: &[Arc<Table>],
) -> Result<Execution, SqlError> {
    let by_key: HashMap<Key, &Arc<Table>> = tables
        .iter()
        .map(|t| (crate::catalog::key(&t.schema, &t.name), t))
        .collect();
    for key in &query.relations {
        if !by_key.contains_key(key) {
            let written = written_name(&query, key);
            return Err(SqlError::invalid_object(&written));
        }
    }

    let spellings = &query.spellings;
    let ctx = session(tables).map_err(|e| map_error(&e, spellings))?;
    let plan = ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(query.statement.clone())))
        .await
        .map_err(|e| map_error(&e, spellings))?;
    let columns = describe(&plan, &query, &by_key);
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| map_error(&e, spellings))?;
    let stream = df
        .execute_stream()
        .await
        .map_err(|e| map_error(&e, spellings))?;
    Ok(Execution {
        columns,
        stream,
        spellings: query.spellings,
    })
}

fn written_name(query: &PreparedQuery, key: &Key) -> String {
    let spell = |s: &str| {
        query
            .spellings
            .get(s)
            .cloned()
            .unwrap_or_else(|| s.to_string())
    };
    format!("{}.{}", spell(&key.0), spell(&key.1))
}

fn session(tables: &[Arc<Table>]) -> datafusion::error::Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_default_catalog_and_schema("datafusion", "dbo")
        .with_information_schema(false);
    {
        let options = config.options_mut();
        options.sql_parser.parse_float_as_decimal = true;
        options.sql_parser.map_string_types_to_utf8view = false;
        // SQL Server sorts NULL as the lowest value.
        options.sql_parser.default_null_ordering = "nulls_min".into();
        options.execution.time_zone = Some("+00:00".into());
    }
    let ctx = SessionContext::new_with_config(config);
    let tracked = tables
        .iter()
        .filter(|t| t.tracking.is_some())
        .map(|t| (crate::catalog::key(&t.schema, &t.name), t.clone()))
        .collect();
    ctx.register_udtf(
        crate::tracking::CHANGES_FUNCTION,
        Arc::new(crate::tracking::ChangeTable { tables: tracked }),
    );
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Internal("default catalog missing".into()))?;
    for t in tables {
        let schema_name = t.schema.to_lowercase();
        let schema = match catalog.schema(&schema_name) {
            Some(s) => s,
            None => {
                let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                catalog.register_schema(&schema_name, s.clone())?;
                s
            }
        };
        let table = MemTable::try_new(t.arrow_schema.clone(), vec![t.batches.clone()])?;
        schema.register_table(t.name.to_lowercase(), Arc::new(table))?;
    }
    Ok(ctx)
}

/// SQL Server's error for a DataFusion failure.
pub(crate) fn map_error(err: &DataFusionError, spellings: &HashMap<String, String>) -> SqlError {
    let spell = |s: &str| spellings.get(s).cloned().unwrap_or_else(|| s.to_string());
    match err.find_root() {
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            SchemaError::FieldNotFound { field, .. } => {
                SqlError::invalid_column(&spell(&field.name))
            }
            other => SqlError::general(other.to_string()),
        },
        DataFusionError::ArrowError(e, _)
            if matches!(e.as_ref(), arrow::error::ArrowError::DivideByZero) =>
        {
            SqlError::new(8134, 16, "Divide by zero error encountered.")
        }
        DataFusionError::Plan(msg) if msg.starts_with(crate::tracking::NOT_TRACKED) => {
            SqlError::new(22105, 16, msg[crate::tracking::NOT_TRACKED.len()..].trim())
        }
        DataFusionError::Plan(msg) if msg.contains("not found") && msg.starts_with("table") => {
            let name = msg.split('\'').nth(1).unwrap_or(msg);
            let name = name.strip_prefix("datafusion.").unwrap_or(name);
            SqlError::invalid_object(name)
        }
        other => SqlError::general(other.to_string()),
    }
}

/// Names, SQL types and nullability of the plan's output columns.
fn describe(
    plan: &LogicalPlan,
    query: &PreparedQuery,
    tables: &HashMap<Key, &Arc<Table>>,
) -> Vec<ResultColumn> {
    let schema: Arc<Schema> = Arc::new(plan.schema().as_arrow().clone());
    let aliases = scan_aliases(plan);
    let sources = source_columns(plan, &aliases, tables);
    let names = output_names(&query.names, &schema, &sources);
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let source = sources.get(i).cloned().flatten();
            let (ty, wire, nullable, table) = match source {
                Some(src) if &src.ty.arrow_type() == field.data_type() => (
                    src.ty,
                    src.ty.arrow_type(),
                    field.is_nullable() || src.nullable,
                    src.table,
                ),
                _ => {
                    let (ty, wire) = SqlType::for_arrow(field.data_type());
                    (ty, wire, field.is_nullable(), Vec::new())
                }
            };
            // rowversion is never NULL in a table, but an outer join can make it so.
            ResultColumn {
                name: names[i].clone(),
                ty,
                nullable,
                wire,
                table,
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Source {
    ty: SqlType,
    nullable: bool,
    name: String,
    table: Vec<String>,
}

/// Relation names (table names and aliases of scanned tables) -> table keys.
fn scan_aliases(plan: &LogicalPlan) -> HashMap<String, Key> {
    fn key_of(r: &TableReference) -> Key {
        let schema = r.schema().unwrap_or("dbo").to_lowercase();
        (schema, r.table().to_lowercase())
    }
    fn walk(plan: &LogicalPlan, out: &mut HashMap<String, Key>) {
        match plan {
            LogicalPlan::TableScan(scan) => {
                out.insert(
                    scan.table_name.to_string().to_lowercase(),
                    key_of(&scan.table_name),
                );
            }
            LogicalPlan::SubqueryAlias(alias) => {
                if let LogicalPlan::TableScan(scan) = alias.input.as_ref() {
                    out.insert(
                        alias.alias.to_string().to_lowercase(),
                        key_of(&scan.table_name),
                    );
                }
            }
            _ => {}
        }
        for input in plan.inputs() {
            walk(input, out);
        }
    }
    let mut out = HashMap::new();
    walk(plan, &mut out);
    out
}

/// For each output column that is a table column passed through (possibly renamed, or as
/// MIN/MAX/GROUP BY of one), that column.
fn source_columns(
    plan: &LogicalPlan,
    aliases: &HashMap<String, Key>,
    tables: &HashMap<Key, &Arc<Table>>,
) -> Vec<Option<Source>> {
    let width = plan.schema().fields().len();
    let mut node = plan;
    let projection = loop {
        match node {
            LogicalPlan::Limit(l) => node = &l.input,
            LogicalPlan::Sort(s) => node = &s.input,
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => node = input,
            LogicalPlan::Projection(p) => break p,
            _ => return vec![None; width],
        }
    };
    let column_source = |c: &datafusion::common::Column| -> Option<Source> {
        let relation = c.relation.as_ref()?;
        let key = aliases.get(&relation.to_string().to_lowercase())?;
        let table = tables.get(key)?;
        let column = table.column(&c.name)?;
        Some(Source {
            ty: column.sql_type,
            nullable: column.nullable,
            name: column.name.clone(),
            table: vec![table.schema.clone(), table.name.clone()],
        })
    };
    // An aggregate below the projection: its group keys and MIN/MAX keep the column type.
    let mut below = projection.input.as_ref();
    while let LogicalPlan::Filter(f) = below {
        below = &f.input;
    }
    let aggregate_source = |name: &str| -> Option<Source> {
        let LogicalPlan::Aggregate(agg) = below else {
            return None;
        };
        let idx = agg.schema.fields().iter().position(|f| f.name() == name)?;
        let expr = if idx < agg.group_expr.len() {
            agg.group_expr.get(idx)?
        } else {
            agg.aggr_expr.get(idx - agg.group_expr.len())?
        };
        match unalias(expr) {
            DfExpr::Column(c) => column_source(c),
            DfExpr::AggregateFunction(f)
                if matches!(f.func.name(), "min" | "max") && f.params.args.len() == 1 =>
            {
                match unalias(&f.params.args[0]) {
                    DfExpr::Column(c) => column_source(c).map(|s| Source {
                        nullable: true,
                        ..s
                    }),
                    _ => None,
                }
            }
            _ => None,
        }
    };
    projection
        .expr
        .iter()
        .map(|e| match unalias(e) {
            DfExpr::Column(c) if c.relation.is_some() => column_source(c),
            DfExpr::Column(c) => aggregate_source(&c.name),
            _ => None,
        })
        .collect()
}

fn unalias(e: &DfExpr) -> &DfExpr {
    match e {
        DfExpr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// The column names SQL Server would send: as written in the select list, `''` for
/// unnamed expressions, the declared names for `*`.
fn output_names(items: &[OutName], schema: &Schema, sources: &[Option<Source>]) -> Vec<String> {
    let n = schema.fields().len();
    let from_field = |i: usize| -> String {
        if let Some(Some(src)) = sources.get(i) {
            return src.name.clone();
        }
        let name = schema.field(i).name();
        if name.starts_with("__medlake_c") {
            String::new()
        } else {
            name.clone()
        }
    };
    let wildcards = items.iter().filter(|i| **i == OutName::Wildcard).count();
    let fixed = items.len() - wildcards;
    if items.is_empty() || wildcards > 1 || fixed > n {
        return (0..n).map(from_field).collect();
    }
    let mut out = Vec::with_capacity(n);
    for item in items {
        match item {
            OutName::Named(name) => out.push(name.clone()),
            OutName::Unnamed => out.push(String::new()),
            OutName::Wildcard => {
                for _ in 0..n - fixed {
                    let i = out.len();
                    out.push(from_field(i));
                }
            }
        }
    }
    if out.len() != n {
        return (0..n).map(from_field).collect();
    }
    out
}
