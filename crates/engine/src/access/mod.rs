//! Access control beyond the built-in levels: roles and grants ([`store`]: `system.grants`),
//! the statements that change them ([`parse`], run by `Session`), column masks and row
//! filters applied to every plan and carried through materialized views ([`protect`]), and
//! the SQL functions that tell a mask who is asking ([`functions`]).

pub(crate) mod catalog;
pub(crate) mod functions;
pub(crate) mod owner;
pub(crate) mod parse;
pub(crate) mod protect;
mod session;
pub(crate) mod store;

pub use catalog::CatalogViewer;
pub use session::BREAK_GLASS_SETTING;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::common::{DFSchema, TableReference};
use datafusion::execution::context::SessionState;
use medlake_auth::AccessState;
use medlake_lake::{TableName, Warehouse};
use medlake_views::Views;

pub(crate) use protect::{TableKey, TablePolicy};

use crate::Result;

/// How long a materialized view's inherited policy is reused before its definition is read
/// again (another server may have replaced the view; this server forgets at once).
const LINEAGE_TTL: Duration = Duration::from_secs(1);
/// Views over views deeper than this are refused (a cycle cannot be created, but bound it).
const MAX_DEPTH: usize = 32;

/// A view's inherited policy, the state it was derived from, and when.
type Derived = (Arc<AccessState>, Instant, Arc<TablePolicy>);

/// The access state and the policies derived from it.
pub(crate) struct Access {
    pub store: store::AccessStore,
    warehouse: Warehouse,
    /// Inherited policies of materialized views, with the state they were derived from.
    lineage: Mutex<HashMap<TableKey, Derived>>,
}

impl Access {
    pub async fn open(warehouse: Warehouse) -> Result<Self> {
        Ok(Self {
            store: store::AccessStore::open(warehouse.clone()).await?,
            warehouse,
            lineage: Mutex::new(HashMap::new()),
        })
    }

    /// Forgets derived policies (a view was created, replaced or dropped here).
    pub fn forget_lineage(&self) {
        self.lineage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The policy of each table in `tables` that has one (masks, filters, refusal).
    pub async fn policies(
        &self,
        state: &Arc<AccessState>,
        session: &SessionState,
        views: &Views,
        materialized: &BTreeSet<(String, String)>,
        tables: impl IntoIterator<Item = TableKey>,
    ) -> Result<HashMap<TableKey, Arc<TablePolicy>>> {
        let mut out = HashMap::new();
        for key in tables {
            if out.contains_key(&key) {
                continue;
            }
            let policy =
                Box::pin(self.policy(state, session, views, materialized, &key, 0)).await?;
            if !policy.is_empty() {
                out.insert(key, policy);
            }
        }
        Ok(out)
    }

    async fn policy(
        &self,
        state: &Arc<AccessState>,
        session: &SessionState,
        views: &Views,
        materialized: &BTreeSet<(String, String)>,
        key: &TableKey,
        depth: usize,
    ) -> Result<Arc<TablePolicy>> {
        let has_own = state.masks.contains_key(key) || state.row_filters.contains_key(key);
        let is_view = materialized.contains(key);
        // A view's quarantine table holds the view's columns (and three of its own): it is
        // protected as the view is.
        let quarantine_of = key
            .1
            .strip_suffix(medlake_views::QUARANTINE_SUFFIX)
            .map(|view| (key.0.clone(), view.to_string()))
            .filter(|view| materialized.contains(view));
        if let Some(view) = &quarantine_of
            && depth < MAX_DEPTH
        {
            let inherited =
                Box::pin(self.policy(state, session, views, materialized, view, depth + 1)).await?;
            let mut policy = TablePolicy::default();
            if has_own {
                let name = TableName::new(&key.0, &key.1)?;
                if let Ok((provider, _)) = self.warehouse.table_provider(&name, None).await {
                    let schema = DFSchema::try_from(provider.schema().as_ref().clone())?;
                    policy = protect::base_policy(session, state, key, &schema)?;
                }
            }
            merge(&mut policy, (*inherited).clone());
            return Ok(Arc::new(policy));
        }
        if !has_own && !is_view {
            return Ok(Arc::new(TablePolicy::default()));
        }
        if is_view {
            let cached = self
                .lineage
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .filter(|(s, at, _)| Arc::ptr_eq(s, state) && at.elapsed() < LINEAGE_TTL)
                .map(|(_, _, p)| p.clone());
            if let Some(policy) = cached {
                return Ok(policy);
            }
        }
        let name = TableName::new(&key.0, &key.1)?;
        let schema = match self.warehouse.table_provider(&name, None).await {
            Ok((provider, _)) => DFSchema::try_from(provider.schema().as_ref().clone())?,
            // External tables and computed system tables: masks need their schema from the
            // catalog; without one there are no columns to mask.
            Err(_) => {
                let provider = match session
                    .schema_for_ref(TableReference::partial(key.0.as_str(), key.1.as_str()))
                {
                    Ok(schema) => schema.table(&key.1).await.ok().flatten(),
                    Err(_) => None,
                };
                match provider {
                    Some(provider) => DFSchema::try_from(provider.schema().as_ref().clone())?,
                    None => return Ok(Arc::new(TablePolicy::default())),
                }
            }
        };
        let mut policy = protect::base_policy(session, state, key, &schema)?;
        if is_view && depth < MAX_DEPTH {
            if let Some(view) = views.view(&name).await? {
                let inherited = self
                    .inherited(state, session, views, materialized, key, &view, depth)
                    .await?;
                merge(&mut policy, inherited);
            }
        } else if is_view {
            policy.refused = Some(format!("{}.{}: views nested too deep", key.0, key.1));
        }
        let policy = Arc::new(policy);
        if is_view {
            self.lineage
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.clone(), (state.clone(), Instant::now(), policy.clone()));
        }
        Ok(policy)
    }

    #[allow(clippy::too_many_arguments)]
    async fn inherited(
        &self,
        state: &Arc<AccessState>,
        session: &SessionState,
        views: &Views,
        materialized: &BTreeSet<(String, String)>,
        key: &TableKey,
        view: &medlake_views::View,
        depth: usize,
    ) -> Result<TablePolicy> {
        let mut planning = session.clone();
        planning.config_mut().options_mut().catalog.default_schema =
            view.definition.default_schema.clone();
        let plan = planning
            .create_logical_plan(&view.definition.query)
            .await
            .map_err(crate::unwrap_lake_error)?;
        let default_schema = view.definition.default_schema.clone();
        let resolve = |r: &TableReference| Some(table_key(r, &default_schema));
        let mut sources = HashMap::new();
        for reference in protect::scanned(&plan) {
            let source = table_key(&reference, &default_schema);
            if sources.contains_key(&source) {
                continue;
            }
            let policy =
                Box::pin(self.policy(state, session, views, materialized, &source, depth + 1))
                    .await?;
            sources.insert(source, policy);
        }
        protect::lineage(
            &plan,
            &sources,
            &resolve,
            &format!("{}.{}", key.0, key.1),
            // DECLASSIFY holds while the view's owner still owns each filtered input (its
            // check when it ran): an input handed to someone else takes its rows back.
            &|source: &TableKey| {
                let owner = |k: &TableKey| state.owner(&medlake_auth::Securable::table(&k.0, &k.1));
                state.declassified.contains(key) && owner(key) == owner(source)
            },
        )
    }
}

/// A view's own masks come after (over) what it inherits.
fn merge(policy: &mut TablePolicy, inherited: TablePolicy) {
    for (column, mut inherited_column) in inherited.columns {
        match policy.columns.get_mut(&column) {
            Some(own) => {
                inherited_column.masks.append(&mut own.masks);
                inherited_column.direct = false;
                inherited_column.exact = false;
                *own = inherited_column;
            }
            None => {
                policy.columns.insert(column, inherited_column);
            }
        }
    }
    policy.filters.extend(inherited.filters);
    if policy.refused.is_none() {
        policy.refused = inherited.refused;
    }
}

/// The de-identification functions' keys: secrets of the store (`[secrets]`), by name. Key
/// bytes never appear in `Debug`, errors or plans.
pub(crate) struct SecretKeys(pub Arc<medlake_source::Policy>);

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKeys(***)")
    }
}

impl medlake_deid::Keys for SecretKeys {
    fn key(&self, name: &str) -> std::result::Result<Vec<u8>, String> {
        match self.0.secret(name) {
            Some(secret) => Ok(secret.expose().as_bytes().to_vec()),
            None => Err(format!("secret '{name}' is not declared in [secrets]")),
        }
    }
}

/// The key of a table reference under `default_schema`.
pub(crate) fn table_key(reference: &TableReference, default_schema: &str) -> TableKey {
    let schema = reference.schema().unwrap_or(default_schema);
    (schema.to_lowercase(), reference.table().to_lowercase())
}
