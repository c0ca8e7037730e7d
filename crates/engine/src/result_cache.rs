//! The result cache: the rows of a query, kept for the next time the same principal asks the
//! same question of the same table versions.
//!
//! A query's entry is keyed by everything its rows depend on:
//! - its text after parameters were bound (a prepared statement's values are literals then),
//! - the principal (with its configured roles), the version of the access state (roles,
//!   grants, masks and row filters of `system.grants`) it was planned under,
//! - a fingerprint of the session's settings (DataFusion's options: time zone, default schema,
//!   dialect switches),
//! - every table it reads, resolved to `schema.table`, with the table's Delta id and version.
//!
//! The versions are read from the log before the lookup (the kept snapshot's check, three
//! HEADs per table: `medlake_lake::Warehouse::latest`), so an INSERT, a refresh, a DML
//! statement or another server's commit to any table a query reads changes its key: the next
//! query simply misses. A refresh therefore invalidates exactly the queries over the views it
//! changed. Entries that can no longer be hit (another entry read a later version of one of
//! their tables, or was planned under a later access state) are dropped when such an entry is
//! kept, instead of holding memory until the least recently used go.
//!
//! Only queries whose rows are a function of that key are kept: plain queries (`SELECT`,
//! `WITH`, `VALUES`; no time travel, no EXPLAIN) over Delta tables of the warehouse (not
//! external tables, not the `system` schema, not catalog views), outside break glass (whose
//! reads must each be real and audited as such), whose plan calls no volatile
//! or time-dependent function (`now()`, `random()`, ...; the principal's own functions such
//! as `current_user` and `is_member` are part of the key). A hit is checked against the
//! privileges the query needed when it was planned, audited like any query (its objects and
//! rows), and streamed from memory.
//!
//! `MEDLAKE_RESULT_CACHE` sizes it (`256MiB` by default; `0` or `off` turns it off); one entry holds at
//! most a sixteenth of it, larger results are not kept.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode as _, TreeNodeRecursion};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::Stream;
use medlake_lake::TableName;

use crate::privileges::Need;

/// The environment variable that sizes the cache (`0` turns it off).
pub const RESULT_CACHE_VAR: &str = "MEDLAKE_RESULT_CACHE";
/// The cache's size when `MEDLAKE_RESULT_CACHE` is not set.
pub const DEFAULT_BYTES: usize = 256 << 20;

/// Functions that are not immutable but whose result the key already fixes: the session's
/// principal and its roles and privileges (the access state's version), the server version.
const KEYED_FUNCTIONS: &[&str] = &[
    "current_user",
    "session_user",
    "user",
    "is_member",
    "is_account_group_member",
    "has_table_privilege",
    "has_schema_privilege",
    "version",
];

/// A table a query reads, at the version the lookup saw.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Read {
    pub table: TableName,
    pub id: String,
    pub version: u64,
}

/// What a query's rows depend on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub sql: String,
    pub principal: String,
    pub access_version: Option<u64>,
    pub settings: u64,
    pub reads: Vec<Read>,
}

struct Entry {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// The privileges the query needed when it was planned (checked again at each hit).
    needs: Vec<Need>,
    used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    bytes: usize,
    tick: u64,
}

/// Whether `newer` saw a later version of a table `older` read (the same Delta table: same
/// id), or a later access state: then nothing will look `older` up again.
pub(crate) fn supersedes(newer: &Key, older: &Key) -> bool {
    let access = matches!(
        (newer.access_version, older.access_version),
        (Some(n), Some(o)) if n > o
    );
    access
        || newer.reads.iter().any(|n| {
            older
                .reads
                .iter()
                .any(|o| o.table == n.table && o.id == n.id && o.version < n.version)
        })
}

/// A hit: the kept rows and the privileges they need.
pub(crate) struct Hit {
    pub needs: Vec<Need>,
    pub stream: SendableRecordBatchStream,
}

/// The engine's result cache (shared by its sessions).
pub(crate) struct ResultCache {
    capacity: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Hits and misses of the result cache since the engine opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Bytes of rows kept now.
    pub bytes: usize,
    pub entries: usize,
}

impl ResultCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The capacity `MEDLAKE_RESULT_CACHE` asks for (an unreadable size is refused).
    pub fn capacity_from_env() -> crate::Result<usize> {
        match std::env::var(RESULT_CACHE_VAR) {
            Ok(text) if matches!(text.trim().to_ascii_lowercase().as_str(), "0" | "off") => Ok(0),
            Ok(text) if !text.trim().is_empty() => {
                crate::runtime::parse_bytes(&text).map_err(|reason| crate::Error::InvalidValue {
                    what: RESULT_CACHE_VAR.to_string(),
                    reason,
                })
            }
            _ => Ok(DEFAULT_BYTES),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn max_entry(&self) -> usize {
        self.capacity / 16
    }

    /// Forgets every kept result (after an erasure: no erased row stays in memory).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.map.clear();
        entries.bytes = 0;
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: entries.bytes,
            entries: entries.map.len(),
        }
    }

    /// The kept rows of `key`, if any.
    pub fn get(&self, key: &Key) -> Option<Hit> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.tick += 1;
        let tick = entries.tick;
        let Some(entry) = entries.map.get_mut(key) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        entry.used = tick;
        self.hits.fetch_add(1, Ordering::Relaxed);
        let batches: Vec<_> = entry.batches.iter().cloned().map(Ok).collect();
        let stream =
            RecordBatchStreamAdapter::new(entry.schema.clone(), futures::stream::iter(batches));
        Some(Hit {
            needs: entry.needs.clone(),
            stream: Box::pin(stream),
        })
    }

    fn insert(&self, key: Key, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.tick += 1;
        let entry = Entry {
            used: entries.tick,
            ..entry
        };
        if let Some(old) = entries.map.remove(&key) {
            entries.bytes -= old.bytes;
        }
        // An entry over an older version of a table (or an older access state) than another
        // entry's can never be hit again: lookups see versions only grow. Such entries go at
        // once instead of ageing out (the cache held dead results up to its size, and the
        // soak's RSS grew with them); a result that is already stale is not kept.
        if entries.map.keys().any(|other| supersedes(other, &key)) {
            return;
        }
        let before = entries.map.len();
        let mut freed = 0;
        entries.map.retain(|other, kept| {
            let dead = supersedes(&key, other);
            if dead {
                freed += kept.bytes;
            }
            !dead
        });
        if entries.map.len() != before {
            entries.bytes -= freed;
        }
        while entries.bytes + entry.bytes > self.capacity {
            let Some(oldest) = entries
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = entries.map.remove(&oldest) {
                entries.bytes -= old.bytes;
            }
        }
        entries.bytes += entry.bytes;
        entries.map.insert(key, entry);
    }

    /// `stream`, whose rows are kept under `key` once it ends (unless they are more than one
    /// entry may hold, or it fails).
    pub fn keep(
        self: &Arc<Self>,
        key: Key,
        needs: Vec<Need>,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        // The key counts too: many distinct long statements with small results must not grow
        // the cache past its size.
        let key_bytes = key.sql.len()
            + key.principal.len()
            + key
                .reads
                .iter()
                .map(|r| r.table.schema.len() + r.table.table.len() + r.id.len() + 8)
                .sum::<usize>();
        Box::pin(Keeping {
            schema: stream.schema(),
            inner: stream,
            cache: self.clone(),
            key: Some(key),
            needs,
            batches: Vec::new(),
            bytes: key_bytes,
        })
    }
}

/// A query's stream that copies its batches into the cache as they pass.
struct Keeping {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    cache: Arc<ResultCache>,
    /// `None` once the rows will not be kept.
    key: Option<Key>,
    needs: Vec<Need>,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl Stream for Keeping {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(batch))) if this.key.is_some() => {
                this.bytes += batch.get_array_memory_size();
                if this.bytes > this.cache.max_entry() {
                    this.key = None;
                    this.batches = Vec::new();
                } else {
                    this.batches.push(batch.clone());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.key = None;
                this.batches = Vec::new();
            }
            Poll::Ready(None) => {
                if let Some(key) = this.key.take() {
                    this.cache.insert(
                        key,
                        Entry {
                            schema: this.schema.clone(),
                            batches: std::mem::take(&mut this.batches),
                            bytes: this.bytes,
                            needs: std::mem::take(&mut this.needs),
                            used: 0,
                        },
                    );
                }
            }
            _ => {}
        }
        polled
    }
}

impl RecordBatchStream for Keeping {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Whether `plan`'s rows are a function of the key: it scans only `reads` and calls no
/// function whose result may change between two runs.
pub(crate) fn keepable(plan: &LogicalPlan, reads: &[Read]) -> bool {
    let mut keepable = true;
    let visited = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = &scan.table_name;
            let known = reads.iter().any(|read| {
                name.table() == read.table.table
                    && name.schema() == Some(read.table.schema.as_str())
            });
            if !known {
                keepable = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        for expr in node.expressions() {
            expr.apply(|e| {
                if !stable_under_key(e) {
                    keepable = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if keepable {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    visited.is_ok() && keepable
}

fn stable_under_key(expr: &Expr) -> bool {
    let volatility = match expr {
        Expr::ScalarFunction(f) => (f.func.name(), f.func.signature().volatility),
        Expr::AggregateFunction(f) => (f.func.name(), f.func.signature().volatility),
        Expr::WindowFunction(f) => match &f.fun {
            datafusion::logical_expr::WindowFunctionDefinition::AggregateUDF(u) => {
                (u.name(), u.signature().volatility)
            }
            datafusion::logical_expr::WindowFunctionDefinition::WindowUDF(u) => {
                (u.name(), u.signature().volatility)
            }
        },
        _ => return true,
    };
    match volatility {
        (_, Volatility::Immutable) => true,
        (name, _) => KEYED_FUNCTIONS.contains(&name),
    }
}

/// A fingerprint of the session's settings (every DataFusion option and extension).
pub(crate) fn settings_fingerprint(state: &datafusion::execution::SessionState) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for entry in state.config_options().entries() {
        entry.key.hash(&mut hasher);
        entry.value.hash(&mut hasher);
    }
    hasher.finish()
}

impl crate::Session {
    /// The key under which the result cache (and, with `plans`, the plan cache) may answer
    /// `statement`; `None` for a statement they never answer (see the module documentation)
    /// or when the caches it would serve are off.
    pub(crate) async fn cache_key(
        &self,
        statement: &datafusion::sql::parser::Statement,
        plans: bool,
    ) -> crate::Result<Option<Key>> {
        use datafusion::sql::parser::Statement as DfStatement;
        use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
        let wanted = self.shared.results.enabled() || (plans && self.shared.plans.enabled());
        if !wanted || self.break_glass_reason().is_some() {
            return Ok(None);
        }
        let DfStatement::Statement(inner) = statement else {
            return Ok(None);
        };
        if !matches!(inner.as_ref(), SqlStatement::Query(_)) {
            return Ok(None);
        }
        let state = self.ctx.state();
        let Ok(references) = state.resolve_table_references(statement) else {
            return Ok(None);
        };
        if references.is_empty() {
            return Ok(None);
        }
        let mut reads = Vec::with_capacity(references.len());
        for reference in references {
            let Ok(table) = self.resolve(&reference) else {
                return Ok(None);
            };
            if UNKEPT_SCHEMAS.contains(&table.schema.as_str()) {
                return Ok(None);
            }
            let warehouse = &self.shared.warehouse;
            if !matches!(warehouse.external(&table).await, Ok(None)) {
                return Ok(None);
            }
            let Ok((_, version, id)) = warehouse.table_provider_with_id(&table).await else {
                return Ok(None);
            };
            reads.push(Read { table, id, version });
        }
        reads.sort_by(|a, b| a.table.cmp(&b.table));
        reads.dedup();
        let access_version = self.shared.access.store.current_version().await?;
        Ok(Some(Key {
            sql: statement.to_string(),
            principal: format!("{:?}", self.principal),
            access_version,
            settings: settings_fingerprint(&state),
            reads,
        }))
    }
}

/// Schemas whose tables the cache never answers for: medlake's own (the audit changes with
/// every statement; grants are the principal's business) and the catalog views.
const UNKEPT_SCHEMAS: &[&str] = &[
    medlake_views::system::SCHEMA,
    crate::TIME_TRAVEL_SCHEMA,
    "information_schema",
    crate::postgres::PG_CATALOG,
];

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn key(sql: &str, access: u64, reads: &[(&str, u64)]) -> Key {
        Key {
            sql: sql.into(),
            principal: "clinician".into(),
            access_version: Some(access),
            settings: 0,
            reads: reads
                .iter()
                .map(|(table, version)| Read {
                    table: TableName::new("gold", *table).unwrap(),
                    id: format!("id-{table}"),
                    version: *version,
                })
                .collect(),
        }
    }

    fn entry() -> Entry {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1]))])
            .unwrap();
        Entry {
            schema,
            batches: vec![batch],
            bytes: 100,
            needs: Vec::new(),
            used: 0,
        }
    }

    #[test]
    fn results_over_superseded_versions_go_at_once() {
        let cache = ResultCache::new(1 << 20);
        cache.insert(key("a", 1, &[("vitals", 3)]), entry());
        cache.insert(key("b", 1, &[("vitals", 3), ("news2", 7)]), entry());
        cache.insert(key("c", 1, &[("news2", 7)]), entry());
        assert_eq!(cache.stats().entries, 3);
        // A query that saw vitals at version 4: both entries over version 3 are dead.
        cache.insert(key("d", 1, &[("vitals", 4)]), entry());
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes), (2, 200));
        assert!(cache.get(&key("c", 1, &[("news2", 7)])).is_some());
        assert!(cache.get(&key("a", 1, &[("vitals", 3)])).is_none());
        // A result that was stale when it ended (its query saw version 3) is not kept.
        cache.insert(key("e", 1, &[("vitals", 3)]), entry());
        assert!(cache.get(&key("e", 1, &[("vitals", 3)])).is_none());
        assert_eq!(cache.stats().entries, 2);
        // A table dropped and created again (another id) is another table.
        let mut other = key("f", 1, &[("vitals", 1)]);
        other.reads[0].id = "id-recreated".into();
        cache.insert(other.clone(), entry());
        assert!(cache.get(&other).is_some());
        // New grants, masks or row filters: every entry planned under the old ones goes.
        cache.insert(key("g", 2, &[("labs", 1)]), entry());
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes), (1, 100));
    }
}
