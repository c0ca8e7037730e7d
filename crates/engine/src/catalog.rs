//! The `medlake` DataFusion catalog: one schema provider per warehouse schema, whose tables are
//! the schema's Delta tables, plus a hidden schema holding the pinned versions that a
//! statement's `VERSION AS OF` / `TIMESTAMP AS OF` clauses asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, RwLock};

/// The schema of the Postgres system catalog.
pub const PG_CATALOG: &str = "pg_catalog";

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use medlake_lake::{TableName, Warehouse};
use medlake_views::Views;

/// Name of the DataFusion catalog (and of the Postgres database clients connect to).
pub const CATALOG: &str = "medlake";
/// The hidden schema of pinned table versions. Not listed; not writable by SQL.
pub const TIME_TRAVEL_SCHEMA: &str = "__medlake_time_travel";

/// The warehouse as a DataFusion catalog.
#[derive(Debug)]
pub struct LakeCatalog {
    warehouse: Warehouse,
    schemas: RwLock<BTreeMap<String, Arc<LakeSchema>>>,
    time_travel: Arc<MemorySchemaProvider>,
    /// Tables of the `system` schema that are computed, not stored.
    computed: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
    /// Schemas that are not in the warehouse (`pg_catalog`).
    builtin: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
    /// The materialized views, to tell them from tables in listings.
    views: OnceLock<Views>,
    /// What external tables may reach (the engine's, also in its session config).
    policy: Arc<medlake_source::Policy>,
    /// The connectors external tables are opened with.
    connectors: Arc<medlake_source::Registry>,
}

impl LakeCatalog {
    pub fn new(
        warehouse: Warehouse,
        policy: Arc<medlake_source::Policy>,
        connectors: Arc<medlake_source::Registry>,
    ) -> Self {
        Self {
            policy,
            connectors,
            warehouse,
            schemas: RwLock::new(BTreeMap::new()),
            time_travel: Arc::new(MemorySchemaProvider::new()),
            computed: RwLock::new(BTreeMap::new()),
            builtin: RwLock::new(BTreeMap::new()),
            views: OnceLock::new(),
        }
    }

    /// Lets listings tell materialized views from tables (relkind `m`, table type VIEW).
    pub fn set_views(&self, views: Views) {
        let _ = self.views.set(views);
    }

    /// A schema that lives outside the warehouse (`pg_catalog`).
    pub fn builtin_schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.builtin
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Adds or replaces a schema that lives outside the warehouse.
    pub fn set_builtin_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) {
        self.builtin
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), schema);
    }

    /// Adds the computed tables of the `system` schema (materialized views, lineage).
    pub fn set_computed_system_tables(&self, tables: Vec<(&'static str, Arc<dyn TableProvider>)>) {
        *self
            .computed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tables
            .into_iter()
            .map(|(name, table)| (name.to_string(), table))
            .collect();
    }

    /// Whether `table` is one of the computed tables of the `system` schema.
    pub fn is_computed_system_table(&self, table: &str) -> bool {
        self.computed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(table)
    }

    /// The schema of pinned versions.
    pub fn time_travel(&self) -> &Arc<MemorySchemaProvider> {
        &self.time_travel
    }

    /// The materialized views as the last listing saw them: (schema, name).
    pub fn materialized_views(&self) -> BTreeSet<(String, String)> {
        self.schemas()
            .iter()
            .flat_map(|(schema, s)| s.views.iter().map(|v| (schema.clone(), v.clone())))
            .collect()
    }

    /// Re-reads schemas and table names from the warehouse, so that listings (SHOW TABLES,
    /// information_schema) see what other processes created. Tables themselves are always
    /// opened from the warehouse when a statement names them.
    pub async fn refresh(&self) -> medlake_lake::Result<()> {
        let mut fresh = BTreeMap::new();
        let views: BTreeSet<TableName> = match self.views.get() {
            Some(views) => match views.list().await {
                Ok(list) => list.into_iter().map(|v| v.name).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "listing materialized views");
                    BTreeSet::new()
                }
            },
            None => BTreeSet::new(),
        };
        for schema in self.warehouse.list_schemas().await? {
            let name = schema.clone();
            let tables = self.warehouse.list_tables(&schema).await?;
            let computed = if schema == medlake_views::system::SCHEMA {
                self.computed
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            } else {
                BTreeMap::new()
            };
            fresh.insert(
                schema.clone(),
                Arc::new(LakeSchema {
                    policy: self.policy.clone(),
                    connectors: self.connectors.clone(),
                    warehouse: self.warehouse.clone(),
                    name: schema,
                    views: views
                        .iter()
                        .filter(|v| v.schema == name)
                        .map(|v| v.table.clone())
                        .collect(),
                    tables: RwLock::new(tables.into_iter().collect()),
                    computed,
                }),
            );
        }
        *self
            .schemas
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn schemas(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LakeSchema>>> {
        self.schemas
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CatalogProvider for LakeCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.schemas().keys().cloned().collect();
        names.extend(
            self.builtin
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned(),
        );
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == TIME_TRAVEL_SCHEMA {
            return Some(self.time_travel.clone());
        }
        if let Some(builtin) = self.builtin_schema(name) {
            return Some(builtin);
        }
        self.schemas()
            .get(name)
            .map(|s| s.clone() as Arc<dyn SchemaProvider>)
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        if name == PG_CATALOG {
            let previous = self.builtin_schema(name);
            self.set_builtin_schema(name, schema);
            return Ok(previous);
        }
        Err(DataFusionError::NotImplemented(format!(
            "registering schema '{name}' in memory; use CREATE SCHEMA"
        )))
    }
}

/// One schema of the warehouse.
#[derive(Debug)]
pub struct LakeSchema {
    policy: Arc<medlake_source::Policy>,
    connectors: Arc<medlake_source::Registry>,
    warehouse: Warehouse,
    name: String,
    /// The tables of this schema that are materialized views.
    views: BTreeSet<String>,
    tables: RwLock<BTreeSet<String>>,
    computed: BTreeMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        let tables = self
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables
            .iter()
            .chain(self.computed.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(computed) = self.computed.get(name) {
            return Ok(Some(computed.clone()));
        }
        let Ok(table) = TableName::new(&self.name, name) else {
            return Ok(None);
        };
        match self.warehouse.external(&table).await {
            Ok(Some(stored)) => {
                return external_provider(&self.connectors, &table, stored, &self.policy).map(Some);
            }
            Ok(None) => {}
            Err(e) => return Err(DataFusionError::External(Box::new(e))),
        }
        match self.warehouse.table_provider(&table, None).await {
            Ok((provider, _version)) => Ok(Some(provider)),
            Err(medlake_lake::Error::TableNotFound { .. }) => Ok(None),
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::NotImplemented(format!(
            "registering table '{}.{name}' in memory; use CREATE TABLE",
            self.name
        )))
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        if self.views.contains(name) {
            return Ok(Some(TableType::View));
        }
        Ok(self.table(name).await?.map(|t| t.table_type()))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.computed.contains_key(name)
            || self
                .tables
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(name)
    }
}

/// An external table's provider, from its stored definition (no connection is made).
pub(crate) fn external_provider(
    connectors: &Arc<medlake_source::Registry>,
    table: &TableName,
    stored: serde_json::Value,
    policy: &Arc<medlake_source::Policy>,
) -> DfResult<Arc<dyn TableProvider>> {
    let definition: medlake_source::Definition = serde_json::from_value(stored)
        .map_err(|e| DataFusionError::Internal(format!("external table {table}: {e}")))?;
    match connectors.open(&definition, policy) {
        Ok(external) => Ok(external.provider()),
        // A table the policy refuses now (a location swapped for a symlink, a secret
        // removed) must not break the listings of every other table (information_schema,
        // SHOW TABLES, client metadata): it is listed without columns, and reading it fails
        // with the refusal.
        Err(refused) if refused.code() == crate::Code::InsufficientPrivilege => {
            Ok(Arc::new(Refused {
                table: table.to_string(),
                definition,
                connectors: connectors.clone(),
                policy: policy.clone(),
                schema: Arc::new(arrow::datatypes::Schema::empty()),
            }))
        }
        Err(other) => Err(other.into()),
    }
}

/// An external table its source policy refuses: no columns; a scan opens it again and
/// fails with the refusal (or with a clear error if it became readable since planning).
#[derive(Debug)]
struct Refused {
    table: String,
    definition: medlake_source::Definition,
    connectors: Arc<medlake_source::Registry>,
    policy: Arc<medlake_source::Policy>,
    schema: arrow::datatypes::SchemaRef,
}

#[async_trait]
impl TableProvider for Refused {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        match self.connectors.open(&self.definition, &self.policy) {
            Err(e) => Err(e.into()),
            Ok(_) => Err(DataFusionError::Plan(format!(
                "external table {} became readable while the statement was planned; run it again",
                self.table
            ))),
        }
    }
}
