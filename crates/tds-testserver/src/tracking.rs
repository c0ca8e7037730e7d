//! SQL Server Change Tracking, as the connector reads it: a database-wide version that every
//! change of a tracked table advances, each tracked table's log of (version, operation, primary
//! key), `CHANGE_TRACKING_CURRENT_VERSION()`, `CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(..))`
//! and `CHANGETABLE(CHANGES t, @last_sync_version)` with SQL Server's columns and net semantics
//! (one row per changed key: its latest version, `I` when the key was inserted after the
//! baseline and still exists, `D` when it no longer exists, else `U`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Expr;

use crate::catalog::{Catalog, Key, Table, key};
use crate::error::{Error, Result};

/// The name the rewriter gives `CHANGETABLE(CHANGES ...)` for DataFusion.
pub(crate) const CHANGES_FUNCTION: &str = "__medlake_changetable_changes";

/// How the change table function's "not tracked" error starts, for SQL Server's 22105.
pub(crate) const NOT_TRACKED: &str = "CHANGETABLE: not tracked:";

/// A tracked table's change log.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracking {
    /// Indices of the primary key columns.
    pub keys: Vec<usize>,
    /// Changes in version order.
    pub log: Vec<Logged>,
    /// `CHANGE_TRACKING_MIN_VALID_VERSION`: changes after it are all in the log.
    pub min_valid: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub version: i64,
    pub operation: char,
    pub key: Vec<ScalarValue>,
}

/// What the rewriter answers without reading a table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub current_version: i64,
    pub min_valid: HashMap<Key, i64>,
}

pub(crate) fn facts(catalog: &Catalog) -> Facts {
    Facts {
        current_version: catalog.version,
        min_valid: catalog
            .tables
            .iter()
            .filter_map(|(k, t)| Some((k.clone(), t.tracking.as_ref()?.min_valid)))
            .collect(),
    }
}

/// The table an `OBJECT_ID('[schema].[table]')` argument names (schema `dbo` when left out).
pub(crate) fn object_key(name: &str) -> Key {
    let parts: Vec<String> = name
        .split('.')
        .map(|p| {
            p.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .collect();
    match parts.as_slice() {
        [table] => key("dbo", table),
        [.., schema, table] => key(if schema.is_empty() { "dbo" } else { schema }, table),
        [] => key("dbo", ""),
    }
}

fn key_rows(batch: &RecordBatch, keys: &[usize]) -> Result<Vec<Vec<ScalarValue>>> {
    (0..batch.num_rows())
        .map(|row| {
            keys.iter()
                .map(|k| ScalarValue::try_from_array(batch.column(*k), row))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Column {
                    column: String::new(),
                    detail: e.to_string(),
                })
        })
        .collect()
}

impl Catalog {
    fn tracked(&self, schema: &str, table: &str) -> Result<Table> {
        let t = self
            .tables
            .get(&key(schema, table))
            .ok_or_else(|| Error::TableNotFound {
                schema: schema.into(),
                table: table.into(),
            })?;
        Ok(Table::clone(t))
    }

    /// `ALTER TABLE t ENABLE CHANGE_TRACKING` with `keys` as its primary key.
    pub(crate) fn enable_tracking(
        &mut self,
        schema: &str,
        table: &str,
        keys: &[&str],
    ) -> Result<()> {
        let mut t = self.tracked(schema, table)?;
        let keys = keys
            .iter()
            .map(|k| {
                t.columns
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(k))
                    .ok_or_else(|| Error::Column {
                        column: k.to_string(),
                        detail: format!("not a column of {schema}.{table}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        t.tracking = Some(Tracking {
            keys,
            log: Vec::new(),
            min_valid: self.version,
        });
        self.tables.insert(key(schema, table), Arc::new(t));
        Ok(())
    }

    /// Logs `rows`' keys as `operation` at a new version (one transaction), if `t` is tracked.
    pub(crate) fn log_changes(
        &mut self,
        t: &mut Table,
        rows: &RecordBatch,
        operation: char,
    ) -> Result<()> {
        let Some(keys) = t.tracking.as_ref().map(|x| x.keys.clone()) else {
            return Ok(());
        };
        let found = key_rows(rows, &keys)?;
        self.version += 1;
        let version = self.version;
        if let Some(tracking) = t.tracking.as_mut() {
            tracking.log.extend(found.into_iter().map(|key| Logged {
                version,
                operation,
                key,
            }));
        }
        Ok(())
    }

    /// Replaces the rows whose primary key is in `batch` (an update: whole rows), or removes
    /// them (`delete`: `batch` holds the key columns only), logged as one transaction.
    pub(crate) fn change_rows(
        &mut self,
        schema: &str,
        table: &str,
        batch: RecordBatch,
        delete: bool,
    ) -> Result<()> {
        let mut t = self.tracked(schema, table)?;
        let keys = match &t.tracking {
            Some(tracking) => tracking.keys.clone(),
            None => {
                return Err(Error::Column {
                    column: String::new(),
                    detail: format!("{schema}.{table} has no primary key (enable change tracking)"),
                });
            }
        };
        let changed = if delete {
            // A batch of the key columns only, in key order.
            if batch.num_columns() != keys.len() {
                return Err(Error::ColumnCount {
                    schema: schema.into(),
                    table: table.into(),
                    got: batch.num_columns(),
                    want: keys.len(),
                });
            }
            let columns = keys
                .iter()
                .zip(batch.columns())
                .map(|(k, a)| cast(a, t.arrow_schema.field(*k).data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let all: Vec<usize> = (0..keys.len()).collect();
            key_rows(&RecordBatch::try_new(key_schema(&t, &keys), columns)?, &all)?
        } else {
            let batch = crate::catalog::conform(&t, batch)?;
            let found = key_rows(&batch, &keys)?;
            t.batches.push(batch);
            found
        };
        let changed: HashSet<Vec<ScalarValue>> = changed.into_iter().collect();
        let kept = remove_keys(&t, &keys, &changed, !delete)?;
        t.batches = kept;
        let logged = key_batch(&t, &keys, &changed)?;
        self.log_changes(&mut t, &logged, if delete { 'D' } else { 'U' })?;
        self.tables.insert(key(schema, table), Arc::new(t));
        Ok(())
    }

    /// As if the retention period passed: changes up to now are forgotten.
    pub(crate) fn forget_changes(&mut self, schema: &str, table: &str) -> Result<()> {
        let mut t = self.tracked(schema, table)?;
        if let Some(tracking) = t.tracking.as_mut() {
            tracking.log.clear();
            tracking.min_valid = self.version;
        }
        self.tables.insert(key(schema, table), Arc::new(t));
        Ok(())
    }
}

/// The table's rows without those whose key is in `changed`; with `keep_last`, the rows of the
/// last batch (the new versions) stay.
fn remove_keys(
    t: &Table,
    keys: &[usize],
    changed: &HashSet<Vec<ScalarValue>>,
    keep_last: bool,
) -> Result<Vec<RecordBatch>> {
    let n = t.batches.len();
    let mut out = Vec::with_capacity(n);
    for (i, batch) in t.batches.iter().enumerate() {
        if keep_last && i + 1 == n {
            out.push(batch.clone());
            continue;
        }
        let rows = key_rows(batch, keys)?;
        let keep: BooleanArray = rows.iter().map(|k| Some(!changed.contains(k))).collect();
        out.push(filter_record_batch(batch, &keep)?);
    }
    Ok(out)
}

fn key_schema(t: &Table, keys: &[usize]) -> Arc<Schema> {
    Arc::new(Schema::new(
        keys.iter()
            .map(|k| {
                Field::new(
                    t.arrow_schema.field(*k).name(),
                    t.arrow_schema.field(*k).data_type().clone(),
                    true,
                )
            })
            .collect::<Vec<_>>(),
    ))
}

/// A batch of the table's rows shape holding only `changed` keys (other columns NULL), for
/// [`Catalog::log_changes`].
fn key_batch(
    t: &Table,
    keys: &[usize],
    changed: &HashSet<Vec<ScalarValue>>,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = t
        .arrow_schema
        .fields()
        .iter()
        .map(|f| arrow::array::new_null_array(f.data_type(), changed.len()))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let values = changed.iter().map(|row| row[i].clone());
        columns[*k] = ScalarValue::iter_to_array(values).map_err(|e| Error::Column {
            column: t.columns[*k].name.clone(),
            detail: e.to_string(),
        })?;
    }
    let schema = Arc::new(Schema::new(
        t.arrow_schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `CHANGETABLE(CHANGES t, v)` over the tables of one query.
#[derive(Debug)]
pub(crate) struct ChangeTable {
    pub tables: HashMap<Key, Arc<Table>>,
}

fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        Expr::TryCast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        _ => None,
    }
}

impl TableFunctionImpl for ChangeTable {
    fn call(&self, args: &[Expr]) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let bad = |m: &str| DataFusionError::Plan(format!("CHANGETABLE: {m}"));
        let [name, version] = args else {
            return Err(bad("expects CHANGES table, last_sync_version"));
        };
        let Some(ScalarValue::Utf8(Some(name))) = literal(name) else {
            return Err(bad("the table must be a name"));
        };
        let since = match literal(version).map(|v| v.cast_to(&DataType::Int64)) {
            Some(Ok(ScalarValue::Int64(v))) => v,
            _ => return Err(bad("last_sync_version must be a bigint")),
        };
        let table = self
            .tables
            .get(&object_key(&name))
            .filter(|t| t.tracking.is_some())
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "{NOT_TRACKED} Change tracking is not enabled on table '{name}'."
                ))
            })?;
        Ok(Arc::new(net_changes(table, since)?))
    }
}

/// The net change of each key changed after `since` (every retained change when NULL).
fn net_changes(t: &Table, since: Option<i64>) -> datafusion::error::Result<MemTable> {
    let Some(tracking) = t.tracking.as_ref() else {
        return Err(DataFusionError::Plan(format!(
            "{NOT_TRACKED} Change tracking is not enabled on table '{}'.",
            t.name
        )));
    };
    let mut net: BTreeMap<usize, (i64, Option<i64>, char, char)> = BTreeMap::new();
    let mut first_of: HashMap<&Vec<ScalarValue>, usize> = HashMap::new();
    let mut order: Vec<&Vec<ScalarValue>> = Vec::new();
    for change in tracking
        .log
        .iter()
        .filter(|c| since.is_none_or(|s| c.version > s))
    {
        let slot = *first_of.entry(&change.key).or_insert_with(|| {
            order.push(&change.key);
            order.len() - 1
        });
        let created = (change.operation == 'I').then_some(change.version);
        net.entry(slot)
            .and_modify(|(version, creation, _, last)| {
                *version = change.version;
                *creation = creation.or(created);
                *last = change.operation;
            })
            .or_insert((change.version, created, change.operation, change.operation));
    }
    let mut fields = vec![
        Field::new("sys_change_version", DataType::Int64, true),
        Field::new("sys_change_creation_version", DataType::Int64, true),
        Field::new("sys_change_operation", DataType::Utf8, true),
        Field::new("sys_change_columns", DataType::Binary, true),
        Field::new("sys_change_context", DataType::Binary, true),
    ];
    let n = order.len();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter(net.values().map(|v| Some(v.0)))),
        Arc::new(Int64Array::from_iter(net.values().map(|v| v.1))),
        Arc::new(StringArray::from_iter(net.values().map(
            |(_, _, first, last)| {
                Some(match (first, last) {
                    (_, 'D') => "D",
                    ('I', _) => "I",
                    _ => "U",
                })
            },
        ))),
        arrow::array::new_null_array(&DataType::Binary, n),
        arrow::array::new_null_array(&DataType::Binary, n),
    ];
    for (i, k) in tracking.keys.iter().enumerate() {
        let field = t.arrow_schema.field(*k);
        fields.push(Field::new(field.name(), field.data_type().clone(), true));
        let values = order.iter().map(|key| key[i].clone());
        columns.push(if n == 0 {
            arrow::array::new_empty_array(field.data_type())
        } else {
            ScalarValue::iter_to_array(values)?
        });
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    MemTable::try_new(schema, vec![vec![batch]])
}

/// A tracked table's primary key, as INFORMATION_SCHEMA shows it.
pub(crate) struct PrimaryKey {
    pub schema: String,
    pub table: String,
    /// `PK_<table>`
    pub constraint: String,
    pub columns: Vec<String>,
}

/// INFORMATION_SCHEMA.TABLE_CONSTRAINTS and KEY_COLUMN_USAGE rows: the primary key of each
/// tracked table.
pub(crate) fn primary_keys(catalog: &Catalog) -> Vec<PrimaryKey> {
    catalog
        .tables
        .values()
        .filter_map(|t| {
            let tracking = t.tracking.as_ref()?;
            Some(PrimaryKey {
                schema: t.schema.clone(),
                table: t.name.clone(),
                constraint: format!("PK_{}", t.name),
                columns: tracking
                    .keys
                    .iter()
                    .map(|k| t.columns[*k].name.clone())
                    .collect(),
            })
        })
        .collect()
}
