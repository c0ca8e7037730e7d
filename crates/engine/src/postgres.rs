//! The Postgres face of medlake's SQL: `pg_catalog`, the `information_schema` views Postgres
//! tools read that DataFusion lacks (or shapes differently), the catalog functions they call,
//! and the rewrites of Postgres-only syntax (`'t'::regclass`, `OPERATOR(pg_catalog.~)`, the
//! psql and pgcli queries DataFusion cannot plan).
//!
//! `pg_catalog` itself comes from `datafusion-pg-catalog` (static rows exported from a real
//! PostgreSQL, dynamic `pg_class`/`pg_namespace`/`pg_attribute` over our catalog); this module
//! fixes what Npgsql (Power BI) and psql need on top of it:
//! - `pg_type.typreceive`/`typsend` are `regproc` OIDs, so Npgsql's
//!   `JOIN pg_proc ON pg_proc.oid = a.typreceive` finds every type (the crate stores names);
//! - `pg_class`, `pg_attribute` and `pg_tables` list only the relations the session's
//!   principal lists (`access::catalog::lists`, asked of the session's `CatalogViewer`);
//! - materialized views are relkind `m` in `pg_class` (psql `\dm`), `pg_class.relacl` holds
//!   the grants as `aclitem` text and `pg_policy` has psql's column types (psql `\dp`);
//! - `information_schema.tables`/`columns` speak Postgres type names, and
//!   `table_constraints`, `key_column_usage`, `referential_constraints`,
//!   `constraint_column_usage`, `character_sets` exist (empty where we have no keys).
//!
//! It is in the engine, not in the Postgres wire server, because it is part of the SQL
//! surface: the CLI and the tests see the same catalog the wire clients see.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Array, Int32Builder, ListBuilder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemTable, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::collect;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart, OrderBy,
    OrderByKind, SelectItem, SetExpr, Statement as SqlStatement, TableFactor, Visit, Visitor,
    visit_expressions_mut, visit_relations_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::access::CatalogViewer;
use crate::access::catalog::CatalogView;
pub use crate::catalog::PG_CATALOG;
use crate::catalog::{CATALOG, LakeCatalog};
/// The PostgreSQL version medlake reports (`server_version`, `version()`): the SQL dialect
/// and catalog it imitates.
pub const SERVER_VERSION: &str = "16.6";
/// `server_version_num`.
pub const SERVER_VERSION_NUM: &str = "160006";

/// Prefix of our `information_schema` tables inside `pg_catalog` (not listed there).
const INFO_PREFIX: &str = "__information_schema_";
/// The `information_schema` views we serve instead of (or besides) DataFusion's.
const INFO_TABLES: &[&str] = &[
    "tables",
    "columns",
    "table_constraints",
    "key_column_usage",
    "referential_constraints",
    "constraint_column_usage",
    "check_constraints",
    "character_sets",
];

static PARSER: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// `version()`, as Postgres words it.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (medlake {}, Apache DataFusion 55) on {}-linux, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// Rewrites one parsed statement (`text` is its source) so that DataFusion can plan the
/// Postgres-only syntax in it. Statements with time travel keep our parse (the Postgres
/// parser does not know `VERSION AS OF`).
pub(crate) fn rewrite(text: &str, statement: SqlStatement) -> SqlStatement {
    // `SHOW TABLES` lists the warehouse, not the Postgres system catalog.
    if matches!(statement, SqlStatement::ShowTables { .. })
        && let Some(show) = show_tables(text)
    {
        return show;
    }
    let statement = if has_table_version(&statement) {
        PARSER.rewrite(statement)
    } else {
        match PARSER.parse(text) {
            Ok(mut parsed) if parsed.len() == 1 => parsed.pop().unwrap_or(statement),
            _ => PARSER.rewrite(statement),
        }
    };
    array_subqueries_as_aggregates(aggregate_catalog_subqueries(redirect_information_schema(
        statement,
    )))
}

/// `ARRAY(SELECT x FROM ... ORDER BY ...)`, which DataFusion cannot plan (psql `\dp` builds
/// its column privileges and policies with it), becomes the scalar subquery
/// `(SELECT array_agg(x ORDER BY ...) FROM ...)`: the same array, NULL instead of an empty
/// one when there are no rows.
fn array_subqueries_as_aggregates(mut statement: SqlStatement) -> SqlStatement {
    let _ = visit_expressions_mut(&mut statement, |expr: &mut SqlExpr| {
        if let SqlExpr::Function(function) = expr
            && function.name.0.len() == 1
            && function.name.to_string().eq_ignore_ascii_case("array")
            && let FunctionArguments::Subquery(query) = &function.args
            && let SetExpr::Select(select) = query.body.as_ref()
            && select.projection.len() == 1
            && matches!(&select.group_by, GroupByExpr::Expressions(keys, _) if keys.is_empty())
            && let SelectItem::UnnamedExpr(item) | SelectItem::ExprWithAlias { expr: item, .. } =
                &select.projection[0]
        {
            // medlake has no policies (`pg_policy` is empty): psql's policy listing is
            // NULL, without planning its comparisons of `polroles`.
            if select.from.len() == 1
                && select.from[0].joins.is_empty()
                && matches!(&select.from[0].relation, TableFactor::Table { name, .. }
                    if name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| i.value.eq_ignore_ascii_case("pg_policy")))
                && let Ok(none) = Parser::new(&PostgreSqlDialect {})
                    .try_with_sql("CAST(NULL AS TEXT[])")
                    .and_then(|mut p| p.parse_expr())
            {
                *expr = none;
                return ControlFlow::Continue(());
            }
            let order = match &query.order_by {
                None => Vec::new(),
                Some(OrderBy {
                    kind: OrderByKind::Expressions(exprs),
                    ..
                }) => exprs
                    .iter()
                    .map(|e| {
                        let mut e = e.clone();
                        // `ORDER BY 1`: the one selected expression.
                        if e.expr.to_string() == "1" {
                            e.expr = item.clone();
                        }
                        e.to_string()
                    })
                    .collect(),
                Some(_) => return ControlFlow::<()>::Continue(()),
            };
            let order = match order.is_empty() {
                true => String::new(),
                false => format!(" ORDER BY {}", order.join(", ")),
            };
            let Ok(aggregated) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&format!("array_agg({item}{order})"))
                .and_then(|mut p| p.parse_expr())
            else {
                return ControlFlow::Continue(());
            };
            let mut query = query.clone();
            if let SetExpr::Select(select) = query.body.as_mut() {
                select.projection = vec![SelectItem::UnnamedExpr(aggregated)];
            }
            query.order_by = None;
            *expr = SqlExpr::Subquery(query);
        }
        ControlFlow::Continue(())
    });
    statement
}

/// Catalog queries of drivers use correlated scalar subqueries that Postgres knows return
/// at most one row (Npgsql: `(SELECT rngtypid FROM pg_range WHERE rngmultitypid = typ.oid)`);
/// DataFusion plans a correlated scalar subquery only when it is aggregated. Over
/// `pg_catalog` tables only, such a subquery's single column becomes `max(column)`: the
/// same value when there is one row, NULL when there is none.
fn aggregate_catalog_subqueries(mut statement: SqlStatement) -> SqlStatement {
    let _ = visit_expressions_mut(&mut statement, |expr: &mut SqlExpr| {
        if let SqlExpr::Subquery(query) = expr
            && let SetExpr::Select(select) = query.body.as_mut()
            && select.projection.len() == 1
            && matches!(&select.group_by, GroupByExpr::Expressions(keys, _) if keys.is_empty())
            && select.having.is_none()
            && !select.from.is_empty()
            && select.from.iter().all(|from| {
                std::iter::once(&from.relation)
                    .chain(from.joins.iter().map(|j| &j.relation))
                    .all(is_catalog_table)
            })
            && let SelectItem::UnnamedExpr(column) | SelectItem::ExprWithAlias { expr: column, .. } =
                &mut select.projection[0]
            && matches!(
                column,
                SqlExpr::Identifier(_) | SqlExpr::CompoundIdentifier(_)
            )
            && let Ok(aggregated) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&format!("max({column})"))
                .and_then(|mut p| p.parse_expr())
        {
            *column = aggregated;
        }
        ControlFlow::<()>::Continue(())
    });
    statement
}

fn is_catalog_table(factor: &TableFactor) -> bool {
    let TableFactor::Table { name, .. } = factor else {
        return false;
    };
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase()))
        .collect();
    match parts.as_slice() {
        [table] => table.starts_with("pg_"),
        [schema, _] => schema == PG_CATALOG,
        [_, schema, _] => schema == PG_CATALOG,
        _ => false,
    }
}

/// Plain `SHOW TABLES` as DataFusion answers it, without the `pg_catalog` tables.
fn show_tables(text: &str) -> Option<SqlStatement> {
    let words: Vec<String> = text
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    if words != ["show", "tables"] {
        return None;
    }
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&format!(
            "SELECT table_catalog, table_schema, table_name, table_type \
             FROM information_schema.tables WHERE table_schema <> '{PG_CATALOG}'"
        ))
        .and_then(|mut p| p.parse_statement())
        .ok()
}

fn has_table_version(statement: &SqlStatement) -> bool {
    struct Finder;
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Table {
                    version: Some(_), ..
                } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    statement.visit(&mut Finder).is_break()
}

/// `information_schema.columns` → our Postgres-shaped table in `pg_catalog`.
fn redirect_information_schema(mut statement: SqlStatement) -> SqlStatement {
    let _ = visit_relations_mut(&mut statement, |name: &mut ObjectName| {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase()))
            .collect();
        let tail = match parts.as_slice() {
            [schema, table] if schema == "information_schema" => Some(table.clone()),
            [catalog, schema, table] if catalog == CATALOG && schema == "information_schema" => {
                Some(table.clone())
            }
            _ => None,
        };
        if let Some(table) = tail.filter(|t| INFO_TABLES.contains(&t.as_str())) {
            *name = ObjectName(vec![
                ObjectNamePart::Identifier(Ident::with_quote('"', CATALOG)),
                ObjectNamePart::Identifier(Ident::with_quote('"', PG_CATALOG)),
                ObjectNamePart::Identifier(Ident::with_quote('"', format!("{INFO_PREFIX}{table}"))),
            ]);
        }
        ControlFlow::<()>::Continue(())
    });
    statement
}

/// Installs `pg_catalog` and the Postgres catalog functions into `ctx` (whose catalog
/// `medlake` is `catalog`).
pub(crate) fn install(ctx: &SessionContext, catalog: &Arc<LakeCatalog>) -> crate::Result<()> {
    datafusion_pg_catalog::setup_pg_catalog(
        ctx,
        CATALOG,
        datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
    )
    .map_err(|e| crate::Error::Internal(format!("installing pg_catalog: {e}")))?;
    let inner = catalog
        .builtin_schema(PG_CATALOG)
        .ok_or_else(|| crate::Error::Internal("pg_catalog was not registered".into()))?;
    catalog.set_builtin_schema(
        PG_CATALOG,
        Arc::new(PgCatalog {
            inner,
            catalog: Arc::downgrade(catalog),
        }),
    );
    ctx.register_udf(ScalarUDF::new_from_impl(Version::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(EncodingName::new()));
    for name in [
        "pg_get_indexdef",
        "pg_get_viewdef",
        "pg_get_triggerdef",
        "pg_get_ruledef",
        "pg_get_function_result",
        "pg_get_function_arguments",
        "pg_get_function_identity_arguments",
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_serial_sequence",
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(NullText::new(name)));
    }
    Ok(())
}

/// `pg_catalog` from `datafusion-pg-catalog`, with our fixes and our `information_schema`.
#[derive(Debug)]
struct PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    catalog: std::sync::Weak<LakeCatalog>,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(info) = name.strip_prefix(INFO_PREFIX) {
            return match INFO_TABLES.contains(&info) {
                true => Ok(Some(self.information_schema(info).await?)),
                false => Ok(None),
            };
        }
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        let patch = match name {
            "pg_type" => Patch::ProcOids(self.inner_table("pg_proc").await?),
            "pg_class" => Patch::Classes {
                namespaces: self.inner_table("pg_namespace").await?,
                catalog: self.catalog.clone(),
            },
            "pg_attribute" => Patch::Attributes {
                classes: self.inner_table("pg_class").await?,
                namespaces: self.inner_table("pg_namespace").await?,
            },
            "pg_tables" => Patch::Listed {
                schema: "schemaname",
                table: "tablename",
            },
            "pg_policy" => Patch::NoPolicies,
            "pg_database" => Patch::OneDatabase,
            _ => return Ok(Some(table)),
        };
        Ok(Some(Arc::new(Patched::new(table, patch)?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        name.strip_prefix(INFO_PREFIX)
            .is_some_and(|t| INFO_TABLES.contains(&t))
            || self.inner.table_exist(name)
    }
}

async fn collect_table(table: &Arc<dyn TableProvider>) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let ctx = SessionContext::new();
    let plan = table.scan(&ctx.state(), None, &[], None).await?;
    let batches = collect(plan, ctx.task_ctx()).await?;
    Ok((table.schema(), batches))
}

fn memtable((schema, batches): (SchemaRef, Vec<RecordBatch>)) -> DfResult<Arc<dyn TableProvider>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
}

/// What [`Patched`] changes in a `pg_catalog` table. The tables that name relations list
/// only those the session's principal lists ([`crate::access::catalog::lists`], asked of the
/// session's [`CatalogViewer`]).
#[derive(Debug)]
enum Patch {
    /// `pg_type`: receive/send functions as `pg_proc` OIDs (this is `pg_proc`).
    ProcOids(Arc<dyn TableProvider>),
    /// `pg_class`: listed relations only, materialized views as relkind `m`, and `relacl`
    /// (this is `pg_namespace`).
    Classes {
        namespaces: Arc<dyn TableProvider>,
        catalog: std::sync::Weak<LakeCatalog>,
    },
    /// `pg_attribute`: the columns of listed relations only.
    Attributes {
        classes: Arc<dyn TableProvider>,
        namespaces: Arc<dyn TableProvider>,
    },
    /// A table with schema and table name columns (`pg_tables`): listed rows only.
    Listed {
        schema: &'static str,
        table: &'static str,
    },
    /// `pg_policy`: empty (masks and row filters are not PostgreSQL policies), with
    /// `polroles` an `oid[]` as psql `\dp` reads it.
    NoPolicies,
    /// `pg_database`: only `medlake`, the one database a client can connect to.
    OneDatabase,
}

impl Patch {
    /// The other `pg_catalog` tables the patch reads.
    fn reads(&self) -> Vec<Arc<dyn TableProvider>> {
        match self {
            Patch::ProcOids(procs) => vec![procs.clone()],
            Patch::Classes { namespaces, .. } => vec![namespaces.clone()],
            Patch::Attributes {
                classes,
                namespaces,
            } => vec![classes.clone(), namespaces.clone()],
            Patch::Listed { .. } | Patch::NoPolicies | Patch::OneDatabase => Vec::new(),
        }
    }
}

/// A collected table: its schema and rows.
type Collected = (SchemaRef, Vec<RecordBatch>);

/// A `pg_catalog` table corrected when it is scanned, not when it is looked up:
/// `datafusion-pg-catalog` looks up every table of every schema (ours included) while it
/// builds `pg_class` and `pg_attribute`, so a lookup must not scan.
#[derive(Debug)]
struct Patched {
    inner: Arc<dyn TableProvider>,
    patch: Patch,
    schema: SchemaRef,
}

impl Patched {
    fn new(inner: Arc<dyn TableProvider>, patch: Patch) -> DfResult<Self> {
        let reads = patch
            .reads()
            .iter()
            .map(|t| (t.schema(), Vec::new()))
            .collect();
        let (schema, _) = Self::apply(&patch, (inner.schema(), Vec::new()), reads, None)?;
        Ok(Self {
            inner,
            patch,
            schema,
        })
    }

    /// The patched table from the collected `table` and the tables the patch `reads`, as
    /// `view` sees it (`None`: outside a session, only the catalogs' own relations).
    fn apply(
        patch: &Patch,
        table: Collected,
        mut reads: Vec<Collected>,
        view: Option<&CatalogView>,
    ) -> DfResult<Collected> {
        let lists = |schema: &str, table: &str| match view {
            Some(view) => view.lists(schema, table),
            None => crate::access::catalog::CATALOG_SCHEMAS.contains(&schema),
        };
        let mut read = || {
            if reads.is_empty() {
                return Err(DataFusionError::Internal(
                    "a pg_catalog patch is missing a table".into(),
                ));
            }
            Ok(reads.remove(0))
        };
        match patch {
            Patch::ProcOids(_) => pg_type_with_proc_oids(table, read()?),
            Patch::Classes { catalog, .. } => pg_class_for(
                table,
                &namespace_names(&read()?)?,
                &catalog
                    .upgrade()
                    .map(|c| c.materialized_views())
                    .unwrap_or_default(),
                &lists,
                view,
            ),
            Patch::Attributes { .. } => {
                let classes = read()?;
                let relations = relation_names(&classes, &namespace_names(&read()?)?)?;
                pg_attribute_for(table, &relations, &lists)
            }
            Patch::Listed {
                schema,
                table: name,
            } => listed_rows(table, schema, name, &|s, t| lists(s, t)),
            Patch::NoPolicies => Ok((no_policies(&table.0), Vec::new())),
            Patch::OneDatabase => only_our_database(table),
        }
    }
}

/// The columns of `pg_policy` with `polroles` as `oid[]`.
fn no_policies(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "polroles" => Field::new(f.name(), DataType::new_list(DataType::Int32, true), true),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

#[async_trait]
impl TableProvider for Patched {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let table = collect_table(&self.inner).await?;
        let mut reads = Vec::new();
        for read in self.patch.reads() {
            reads.push(collect_table(&read).await?);
        }
        let view = match state.config().get_extension::<CatalogViewer>() {
            Some(viewer) => Some(
                viewer
                    .view()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            ),
            None => None,
        };
        memtable(Self::apply(&self.patch, table, reads, view.as_ref())?)?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// `pg_type` with `typreceive`/`typsend` as the OIDs of their `pg_proc` rows (Postgres
/// `regproc`), so joins on `pg_proc.oid` work.
fn pg_type_with_proc_oids(
    (schema, batches): (SchemaRef, Vec<RecordBatch>),
    (proc_schema, procs): (SchemaRef, Vec<RecordBatch>),
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let oid_at = proc_schema.index_of("oid")?;
    let name_at = proc_schema.index_of("proname")?;
    let mut by_name: HashMap<String, i32> = HashMap::new();
    for batch in &procs {
        let oids = cast_i32(batch.column(oid_at))?;
        let names = cast_utf8(batch.column(name_at))?;
        for row in 0..batch.num_rows() {
            if names.is_valid(row) && oids.is_valid(row) {
                let oid = oids.value(row);
                by_name
                    .entry(names.value(row).to_string())
                    .and_modify(|o| *o = (*o).min(oid))
                    .or_insert(oid);
            }
        }
    }
    let columns = ["typreceive", "typsend"];
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if columns.contains(&f.name().as_str()) {
                Field::new(f.name(), DataType::Int32, true).with_metadata(
                    [("pg.oid_alias".to_string(), "regproc".to_string())]
                        .into_iter()
                        .collect(),
                )
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let new_schema = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
        for (i, field) in schema.fields().iter().enumerate() {
            let column = batch.column(i);
            if columns.contains(&field.name().as_str()) && column.data_type() != &DataType::Int32 {
                let names = cast_utf8(column)?;
                let mut oids = Int32Builder::with_capacity(names.len());
                for row in 0..names.len() {
                    // `-` is Postgres's "no function" (oid 0).
                    let oid = names
                        .is_valid(row)
                        .then(|| by_name.get(names.value(row)).copied().unwrap_or(0));
                    oids.append_option(oid.or(Some(0)));
                }
                arrays.push(Arc::new(oids.finish()));
            } else {
                arrays.push(column.clone());
            }
        }
        out.push(RecordBatch::try_new(new_schema.clone(), arrays)?);
    }
    Ok((new_schema, out))
}

/// Namespace OIDs to names, from a collected `pg_namespace`.
fn namespace_names((schema, batches): &Collected) -> DfResult<HashMap<i32, String>> {
    let mut names = HashMap::new();
    if let (Ok(oid_at), Ok(name_at)) = (schema.index_of("oid"), schema.index_of("nspname")) {
        for batch in batches {
            let oids = cast_i32(batch.column(oid_at))?;
            let nspnames = cast_utf8(batch.column(name_at))?;
            for row in 0..batch.num_rows() {
                if oids.is_valid(row) && nspnames.is_valid(row) {
                    names.insert(oids.value(row), nspnames.value(row).to_string());
                }
            }
        }
    }
    Ok(names)
}

/// Relation OIDs to (schema, name), from a collected `pg_class`.
fn relation_names(
    (schema, batches): &Collected,
    namespaces: &HashMap<i32, String>,
) -> DfResult<HashMap<i32, (String, String)>> {
    let (oid_at, name_at, ns_at) = (
        schema.index_of("oid")?,
        schema.index_of("relname")?,
        schema.index_of("relnamespace")?,
    );
    let mut relations = HashMap::new();
    for batch in batches {
        let oids = cast_i32(batch.column(oid_at))?;
        let names = cast_utf8(batch.column(name_at))?;
        let spaces = cast_i32(batch.column(ns_at))?;
        for row in 0..batch.num_rows() {
            if !(oids.is_valid(row) && names.is_valid(row) && spaces.is_valid(row)) {
                continue;
            }
            if let Some(space) = namespaces.get(&spaces.value(row)) {
                relations.insert(
                    oids.value(row),
                    (space.clone(), names.value(row).to_string()),
                );
            }
        }
    }
    Ok(relations)
}

/// `pg_class` as one principal sees it: the relations it lists, materialized views as
/// relkind `m` (the `system` views stay `v`), and `relacl` (`aclitem[]` as text items,
/// [`CatalogView::acl`]).
fn pg_class_for(
    (schema, batches): Collected,
    schema_names: &HashMap<i32, String>,
    views: &std::collections::BTreeSet<(String, String)>,
    lists: &dyn Fn(&str, &str) -> bool,
    view: Option<&CatalogView>,
) -> DfResult<Collected> {
    let at = schema.index_of("relkind")?;
    let name_at = schema.index_of("relname")?;
    let ns_at = schema.index_of("relnamespace")?;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new_list(
        "relacl",
        Field::new_list_field(DataType::Utf8, true),
        true,
    ));
    let out_schema = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let kinds = cast_utf8(batch.column(at))?;
        let names = cast_utf8(batch.column(name_at))?;
        let namespaces = cast_i32(batch.column(ns_at))?;
        let mut patched = StringBuilder::new();
        let mut acls = ListBuilder::new(StringBuilder::new())
            .with_field(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        let mut keep = BooleanBuilder::new();
        for row in 0..batch.num_rows() {
            let kind = kinds.is_valid(row).then(|| kinds.value(row));
            let relation = (names.is_valid(row) && namespaces.is_valid(row))
                .then(|| {
                    schema_names
                        .get(&namespaces.value(row))
                        .map(|s| (s.as_str(), names.value(row)))
                })
                .flatten();
            let is_view = kind == Some("v")
                && relation.is_some_and(|(s, t)| views.contains(&(s.to_string(), t.to_string())));
            patched.append_option(if is_view { Some("m") } else { kind });
            keep.append_value(relation.is_some_and(|(s, t)| lists(s, t)));
            match relation.and_then(|(s, t)| view.and_then(|v| v.acl(s, t))) {
                Some(items) => {
                    for item in items {
                        acls.values().append_value(item);
                    }
                    acls.append(true);
                }
                None => acls.append(false),
            }
        }
        let mut columns = batch.columns().to_vec();
        columns[at] = Arc::new(patched.finish());
        columns.push(Arc::new(acls.finish()));
        let batch = RecordBatch::try_new(out_schema.clone(), columns)?;
        out.push(arrow::compute::filter_record_batch(&batch, &keep.finish())?);
    }
    Ok((out_schema, out))
}

/// `pg_attribute` as one principal sees it: the columns of the relations it lists, and
/// `attacl` an `aclitem[]` (always NULL: medlake has no column privileges).
fn pg_attribute_for(
    (schema, batches): Collected,
    relations: &HashMap<i32, (String, String)>,
    lists: &dyn Fn(&str, &str) -> bool,
) -> DfResult<Collected> {
    let at = schema.index_of("attrelid")?;
    let acl_at = schema.index_of("attacl")?;
    let acl_type = DataType::new_list(DataType::Utf8, true);
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match i == acl_at {
            true => Field::new(f.name(), acl_type.clone(), true),
            false => f.as_ref().clone(),
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut columns = batch.columns().to_vec();
        columns[acl_at] = arrow::array::new_null_array(&acl_type, batch.num_rows());
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let oids = cast_i32(batch.column(at))?;
        let keep: arrow::array::BooleanArray = oids
            .iter()
            .map(|oid| {
                Some(
                    oid.and_then(|oid| relations.get(&oid))
                        .is_some_and(|(s, t)| lists(s, t)),
                )
            })
            .collect();
        out.push(arrow::compute::filter_record_batch(&batch, &keep)?);
    }
    Ok((schema, out))
}

/// The rows of a table naming relations in columns `schema_column` and `table_column` that
/// the principal lists.
fn listed_rows(
    (schema, batches): Collected,
    schema_column: &str,
    table_column: &str,
    lists: &dyn Fn(&str, &str) -> bool,
) -> DfResult<Collected> {
    let (s_at, t_at) = (
        schema.index_of(schema_column)?,
        schema.index_of(table_column)?,
    );
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let schemas = cast_utf8(batch.column(s_at))?;
        let tables = cast_utf8(batch.column(t_at))?;
        let keep: arrow::array::BooleanArray = schemas
            .iter()
            .zip(tables.iter())
            .map(|(s, t)| Some(s.zip(t).is_some_and(|(s, t)| lists(s, t))))
            .collect();
        out.push(arrow::compute::filter_record_batch(&batch, &keep)?);
    }
    Ok((schema, out))
}

/// `pg_database` without the `postgres` row datafusion-pg-catalog adds: connecting to any
/// database but `medlake` is refused.
fn only_our_database(
    (schema, batches): (SchemaRef, Vec<RecordBatch>),
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let at = schema.index_of("datname")?;
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let names = cast_utf8(batch.column(at))?;
        let keep: arrow::array::BooleanArray =
            names.iter().map(|n| Some(n == Some(CATALOG))).collect();
        out.push(arrow::compute::filter_record_batch(&batch, &keep)?);
    }
    Ok((schema, out))
}

fn cast_utf8(array: &ArrayRef) -> DfResult<StringArray> {
    let cast = arrow::compute::cast(array, &DataType::Utf8)?;
    Ok(cast.as_string::<i32>().clone())
}

fn cast_i32(array: &ArrayRef) -> DfResult<Int32Array> {
    let cast = arrow::compute::cast(array, &DataType::Int32)?;
    Ok(cast.as_primitive::<Int32Type>().clone())
}

/// One column of a table, as `information_schema.columns` describes it.
struct ColumnInfo {
    schema: String,
    table: String,
    ordinal: i32,
    field: Arc<Field>,
}

impl PgCatalog {
    /// A `pg_catalog` table as `datafusion-pg-catalog` makes it.
    async fn inner_table(&self, name: &str) -> DfResult<Arc<dyn TableProvider>> {
        self.inner
            .table(name)
            .await?
            .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog has no {name}")))
    }

    /// Every schema's tables (with their type) from the live catalog.
    async fn relations(&self) -> DfResult<Vec<(String, String, TableType, SchemaRef)>> {
        let Some(catalog) = self.catalog.upgrade() else {
            return Ok(Vec::new());
        };
        let mut relations = Vec::new();
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            for table_name in schema.table_names() {
                if let Some(table) = schema.table(&table_name).await? {
                    let kind = schema
                        .table_type(&table_name)
                        .await?
                        .unwrap_or(TableType::Base);
                    relations.push((schema_name.clone(), table_name, kind, table.schema()));
                }
            }
        }
        Ok(relations)
    }

    /// `information_schema.tables`: every relation, with PostgreSQL's columns.
    async fn tables(&self) -> DfResult<RecordBatch> {
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        let relations = self.relations().await?;
        let mut b: BTreeMap<&str, StringBuilder> = BTreeMap::new();
        let names = [
            "table_catalog",
            "table_schema",
            "table_name",
            "table_type",
            "self_referencing_column_name",
            "reference_generation",
            "user_defined_type_catalog",
            "user_defined_type_schema",
            "user_defined_type_name",
            "is_insertable_into",
            "is_typed",
            "commit_action",
        ];
        for n in names {
            b.insert(n, StringBuilder::new());
        }
        for (schema, table, kind, _) in &relations {
            let is_view = *kind == TableType::View;
            let row: [Option<&str>; 12] = [
                Some(CATALOG),
                Some(schema),
                Some(table),
                Some(if is_view { "VIEW" } else { "BASE TABLE" }),
                None,
                None,
                None,
                None,
                None,
                Some(if is_view || schema == PG_CATALOG || schema == "system" {
                    "NO"
                } else {
                    "YES"
                }),
                Some("NO"),
                None,
            ];
            for (n, v) in names.iter().zip(row) {
                if let Some(builder) = b.get_mut(n) {
                    builder.append_option(v);
                }
            }
        }
        let fields: Vec<Field> = names.iter().map(|n| text(n)).collect();
        let columns: Vec<ArrayRef> = names
            .iter()
            .map(|n| {
                Arc::new(b.get_mut(n).map_or_else(
                    || StringArray::from(Vec::<Option<&str>>::new()),
                    |x| x.finish(),
                )) as ArrayRef
            })
            .collect();
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    async fn information_schema(&self, name: &str) -> DfResult<Arc<dyn TableProvider>> {
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        let int = |n: &str| Field::new(n, DataType::Int32, true);
        let batch = match name {
            "tables" => self.tables().await?,
            "columns" => {
                let mut columns = Vec::new();
                for (schema, table, _, table_schema) in self.relations().await? {
                    for (i, field) in table_schema.fields().iter().enumerate() {
                        columns.push(ColumnInfo {
                            schema: schema.clone(),
                            table: table.clone(),
                            ordinal: i32::try_from(i + 1).unwrap_or(i32::MAX),
                            field: field.clone(),
                        });
                    }
                }
                columns_batch(&columns)?
            }
            "character_sets" => character_sets()?,
            // Delta tables have no primary, unique or foreign keys: these are empty, with the
            // columns Postgres has, so tools that join them get no rows instead of an error.
            "table_constraints" => empty(vec![
                text("constraint_catalog"),
                text("constraint_schema"),
                text("constraint_name"),
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("constraint_type"),
                text("is_deferrable"),
                text("initially_deferred"),
                text("enforced"),
                text("nulls_distinct"),
            ])?,
            "key_column_usage" => empty(vec![
                text("constraint_catalog"),
                text("constraint_schema"),
                text("constraint_name"),
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("column_name"),
                int("ordinal_position"),
                int("position_in_unique_constraint"),
            ])?,
            "referential_constraints" => empty(vec![
                text("constraint_catalog"),
                text("constraint_schema"),
                text("constraint_name"),
                text("unique_constraint_catalog"),
                text("unique_constraint_schema"),
                text("unique_constraint_name"),
                text("match_option"),
                text("update_rule"),
                text("delete_rule"),
            ])?,
            "constraint_column_usage" => empty(vec![
                text("table_catalog"),
                text("table_schema"),
                text("table_name"),
                text("column_name"),
                text("constraint_catalog"),
                text("constraint_schema"),
                text("constraint_name"),
            ])?,
            "check_constraints" => empty(vec![
                text("constraint_catalog"),
                text("constraint_schema"),
                text("constraint_name"),
                text("check_clause"),
            ])?,
            other => {
                return Err(DataFusionError::Plan(format!(
                    "information_schema.{other} does not exist"
                )));
            }
        };
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }
}

/// `information_schema.character_sets`: UTF8 only.
fn character_sets() -> DfResult<RecordBatch> {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            text("character_set_catalog"),
            text("character_set_schema"),
            text("character_set_name"),
            text("character_repertoire"),
            text("form_of_use"),
            text("default_collate_catalog"),
            text("default_collate_schema"),
            text("default_collate_name"),
        ])),
        vec![
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(StringArray::from(vec![None::<&str>])),
            Arc::new(StringArray::from(vec!["UTF8"])),
            Arc::new(StringArray::from(vec!["UCS"])),
            Arc::new(StringArray::from(vec!["UTF8"])),
            Arc::new(StringArray::from(vec![CATALOG])),
            Arc::new(StringArray::from(vec!["pg_catalog"])),
            Arc::new(StringArray::from(vec!["C.UTF-8"])),
        ],
    )?)
}

fn empty(fields: Vec<Field>) -> DfResult<RecordBatch> {
    Ok(RecordBatch::new_empty(Arc::new(Schema::new(fields))))
}

/// The Postgres description of an Arrow type: (`data_type`, `udt_name`, numeric precision,
/// numeric scale, datetime precision).
fn pg_type_of(
    dt: &DataType,
) -> (
    &'static str,
    &'static str,
    Option<i32>,
    Option<i32>,
    Option<i32>,
) {
    match dt {
        DataType::Boolean => ("boolean", "bool", None, None, None),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => {
            ("smallint", "int2", Some(16), Some(0), None)
        }
        DataType::Int32 | DataType::UInt16 => ("integer", "int4", Some(32), Some(0), None),
        DataType::Int64 | DataType::UInt32 => ("bigint", "int8", Some(64), Some(0), None),
        DataType::UInt64 => ("numeric", "numeric", Some(20), Some(0), None),
        DataType::Float16 | DataType::Float32 => ("real", "float4", Some(24), None, None),
        DataType::Float64 => ("double precision", "float8", Some(53), None, None),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => (
            "numeric",
            "numeric",
            Some(i32::from(*p)),
            Some(i32::from(*s)),
            None,
        ),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            ("text", "text", None, None, None)
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => ("bytea", "bytea", None, None, None),
        DataType::Date32 | DataType::Date64 => ("date", "date", None, None, Some(0)),
        DataType::Time32(_) | DataType::Time64(_) => {
            ("time without time zone", "time", None, None, Some(6))
        }
        DataType::Timestamp(unit, tz) => {
            let precision = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond | TimeUnit::Nanosecond => 6,
            };
            match tz {
                Some(_) => (
                    "timestamp with time zone",
                    "timestamptz",
                    None,
                    None,
                    Some(precision),
                ),
                None => (
                    "timestamp without time zone",
                    "timestamp",
                    None,
                    None,
                    Some(precision),
                ),
            }
        }
        DataType::Interval(_) | DataType::Duration(_) => {
            ("interval", "interval", None, None, Some(6))
        }
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(_, _)
        | DataType::ListView(_)
        | DataType::LargeListView(_) => ("ARRAY", "_text", None, None, None),
        DataType::Dictionary(_, value) => pg_type_of(value),
        DataType::Struct(_) => ("record", "record", None, None, None),
        _ => ("text", "text", None, None, None),
    }
}

/// The `udt_name` of a list's element type (`_int4`), as Postgres names array types.
fn array_udt(dt: &DataType) -> Option<String> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(format!("_{}", pg_type_of(f.data_type()).1))
        }
        _ => None,
    }
}

fn columns_batch(columns: &[ColumnInfo]) -> DfResult<RecordBatch> {
    let text_names = [
        "table_catalog",
        "table_schema",
        "table_name",
        "column_name",
        "column_default",
        "is_nullable",
        "data_type",
        "udt_catalog",
        "udt_schema",
        "udt_name",
        "is_identity",
        "is_generated",
        "is_updatable",
        "collation_name",
    ];
    let mut texts: BTreeMap<&str, StringBuilder> = text_names
        .iter()
        .map(|n| (*n, StringBuilder::new()))
        .collect();
    let mut ordinal = Int32Builder::new();
    let mut char_len = Int32Builder::new();
    let mut precision = Int32Builder::new();
    let mut radix = Int32Builder::new();
    let mut scale = Int32Builder::new();
    let mut datetime = Int32Builder::new();
    for c in columns {
        let (data_type, udt, p, s, d) = pg_type_of(c.field.data_type());
        let udt = array_udt(c.field.data_type()).unwrap_or_else(|| udt.to_string());
        let values: [(&str, Option<&str>); 14] = [
            ("table_catalog", Some(CATALOG)),
            ("table_schema", Some(&c.schema)),
            ("table_name", Some(&c.table)),
            ("column_name", Some(c.field.name())),
            ("column_default", None),
            (
                "is_nullable",
                Some(if c.field.is_nullable() { "YES" } else { "NO" }),
            ),
            ("data_type", Some(data_type)),
            ("udt_catalog", Some(CATALOG)),
            ("udt_schema", Some(PG_CATALOG)),
            ("udt_name", Some(&udt)),
            ("is_identity", Some("NO")),
            ("is_generated", Some("NEVER")),
            ("is_updatable", Some("NO")),
            ("collation_name", None),
        ];
        for (name, value) in values {
            if let Some(b) = texts.get_mut(name) {
                b.append_option(value);
            }
        }
        ordinal.append_value(c.ordinal);
        char_len.append_null();
        precision.append_option(p);
        radix.append_option(p.map(|_| if data_type == "numeric" { 10 } else { 2 }));
        scale.append_option(s);
        datetime.append_option(d);
    }
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut push_text =
        |name: &'static str, fields: &mut Vec<Field>, arrays: &mut Vec<ArrayRef>| {
            fields.push(Field::new(name, DataType::Utf8, true));
            arrays.push(Arc::new(texts.get_mut(name).map_or_else(
                || StringArray::from(Vec::<Option<&str>>::new()),
                |b| b.finish(),
            )));
        };
    for name in ["table_catalog", "table_schema", "table_name", "column_name"] {
        push_text(name, &mut fields, &mut arrays);
    }
    fields.push(Field::new("ordinal_position", DataType::Int32, true));
    arrays.push(Arc::new(ordinal.finish()));
    for name in ["column_default", "is_nullable", "data_type"] {
        push_text(name, &mut fields, &mut arrays);
    }
    for (name, builder) in [
        ("character_maximum_length", &mut char_len),
        ("numeric_precision", &mut precision),
        ("numeric_precision_radix", &mut radix),
        ("numeric_scale", &mut scale),
        ("datetime_precision", &mut datetime),
    ] {
        fields.push(Field::new(name, DataType::Int32, true));
        arrays.push(Arc::new(builder.finish()));
    }
    for name in [
        "udt_catalog",
        "udt_schema",
        "udt_name",
        "is_identity",
        "is_generated",
        "is_updatable",
        "collation_name",
    ] {
        push_text(name, &mut fields, &mut arrays);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// `version()`: a Postgres-style version string (tools parse its first two words).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Version {
    signature: Signature,
}

impl Version {
    fn new() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Version {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(
            datafusion::scalar::ScalarValue::Utf8(Some(version_string())),
        ))
    }
}

/// `pg_encoding_to_char(encoding)`: Postgres's name of an encoding number (medlake speaks
/// UTF8, number 6).
#[derive(Debug, PartialEq, Eq, Hash)]
struct EncodingName {
    signature: Signature,
}

impl EncodingName {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for EncodingName {
    fn name(&self) -> &str {
        "pg_encoding_to_char"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = |n: Option<i64>| match n {
            Some(0) => Some("SQL_ASCII"),
            Some(6) => Some("UTF8"),
            Some(_) => Some(""),
            None => None,
        };
        let arg = args.args[0].to_array(args.number_rows)?;
        let numbers = arrow::compute::cast(&arg, &DataType::Int64)?;
        let names: StringArray = numbers
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .map(name)
            .collect();
        Ok(ColumnarValue::Array(Arc::new(names)))
    }
}

/// Catalog functions whose answer is "nothing" for medlake's objects (no indexes, triggers,
/// comments, sequences): they exist so that the tools' catalog queries plan, and return NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: &'static str,
    signature: Signature,
}

impl NullText {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.args.iter().find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        });
        Ok(match rows {
            Some(rows) => ColumnarValue::Array(arrow::array::new_null_array(&DataType::Utf8, rows)),
            None => ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Utf8(None)),
        })
    }
}
