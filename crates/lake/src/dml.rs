//! DELETE, UPDATE and MERGE on a Delta table: deltalake's copy-on-write builders (files
//! holding changed rows are rewritten; no deletion vectors are written), one atomic commit
//! each.
//!
//! deltalake writes the operation's predicates into the commit's `commitInfo`
//! (`operationParameters.predicate`, MERGE's `mergePredicate` and clause predicates, and a
//! filter it derives from the source's values). A predicate such as `mrn = 'MRN-123'` would
//! then stay in `_delta_log` and `DESCRIBE HISTORY` for as long as the log does. Every commit
//! made here goes through [`ScrubbedLog`], which rewrites those parameters with the caller's
//! `hide` function (the engine replaces every literal by `?`) before the commit is written,
//! so the values never reach storage.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::logical_expr::Expr;
use datafusion::prelude::DataFrame;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder};
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde_json::Value;
use tracing::{debug, instrument};
use uuid::Uuid;

use crate::warehouse::Warehouse;
use crate::{Error, Refusal, Result, TableName};

/// What a DML commit's predicates become in its `commitInfo` (the engine: literals as `?`).
pub type Hide = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The qualifier of the target table's columns in a [`Merge`]'s expressions.
pub const MERGE_TARGET: &str = "target";
/// The qualifier of the source's columns in a [`Merge`]'s expressions.
pub const MERGE_SOURCE: &str = "source";

/// What a DELETE, UPDATE or MERGE did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// The version it committed (`None`: nothing matched, nothing was committed).
    pub version: Option<u64>,
    /// Rows deleted, updated, or (MERGE) inserted, updated and deleted.
    pub rows: u64,
}

/// Which rows a MERGE clause applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeWhen {
    /// A target row the ON condition pairs with a source row.
    Matched,
    /// A source row no target row pairs with.
    NotMatched,
    /// A target row no source row pairs with.
    NotMatchedBySource,
}

/// What a MERGE clause does. Columns are the target's (unqualified); expressions read
/// `target.c` and `source.c`.
#[derive(Clone, Debug)]
pub enum MergeAction {
    Update(Vec<(String, Expr)>),
    Delete,
    Insert(Vec<(String, Expr)>),
}

/// One `WHEN ... [AND predicate] THEN ...` clause.
#[derive(Clone, Debug)]
pub struct MergeClause {
    pub when: MergeWhen,
    pub predicate: Option<Expr>,
    pub action: MergeAction,
}

/// `MERGE INTO target USING source ON on WHEN ...`: the first clause whose kind and predicate
/// fit a row applies to it.
pub struct Merge {
    /// The source rows; their columns are read as `source.<name>`.
    pub source: DataFrame,
    pub on: Expr,
    pub clauses: Vec<MergeClause>,
}

impl Warehouse {
    /// Opens `name` at its newest version with a log store that scrubs commitInfo.
    async fn open_scrubbed(&self, name: &TableName, hide: Hide) -> Result<DeltaTable> {
        self.open_scrubbed_at(name, hide, None).await
    }

    /// Opens `name` at `version` (its newest when `None`) with a log store that scrubs
    /// commitInfo: the commits made through it keep no predicate values.
    pub(crate) async fn open_scrubbed_at(
        &self,
        name: &TableName,
        hide: Hide,
        version: Option<u64>,
    ) -> Result<DeltaTable> {
        if !self.table_exists(name).await? {
            return Err(Error::TableNotFound {
                schema: name.schema.clone(),
                table: name.table.clone(),
            });
        }
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let raw = DeltaTableBuilder::from_url(self.table_url(name)?)
            .map_err(delta)?
            .build()
            .map_err(delta)?;
        let store: LogStoreRef = Arc::new(ScrubbedLog {
            inner: raw.log_store(),
            hide,
        });
        let mut table = DeltaTable::new(store);
        match version {
            Some(version) => {
                let versions = self
                    .log_versions(&self.path(&[&name.schema, &name.table]))
                    .await?;
                if !versions.contains(&version) {
                    return Err(Error::VersionNotFound {
                        schema: name.schema.clone(),
                        table: name.table.clone(),
                        version,
                        earliest: versions.first().copied().unwrap_or(0),
                        latest: versions.last().copied().unwrap_or(0),
                    });
                }
                table.load_version(version).await.map_err(delta)?;
            }
            None => table.load().await.map_err(delta)?,
        }
        Ok(table)
    }

    /// Whether the table has CHECK constraints, column invariants or generated columns:
    /// rules evaluated over whole rows when rows are rewritten.
    pub async fn has_row_checks(&self, name: &TableName) -> Result<bool> {
        let table = self.open_table(name).await?;
        let snapshot = table
            .snapshot()
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        let constraints = snapshot
            .metadata()
            .configuration()
            .keys()
            .any(|k| k.starts_with("delta.constraints."));
        let columns = snapshot.snapshot().arrow_schema().fields().iter().any(|f| {
            f.metadata().contains_key("delta.invariants")
                || f.metadata().contains_key("delta.generationExpression")
        });
        Ok(constraints || columns)
    }

    /// `DELETE FROM name [WHERE predicate]` in one commit. `predicate` reads the table's
    /// columns unqualified.
    #[instrument(skip_all, fields(table = %name))]
    pub async fn delete_rows(
        &self,
        name: &TableName,
        predicate: Option<Expr>,
        session: Arc<dyn Session>,
        hide: Hide,
    ) -> Result<ChangeOutcome> {
        self.delete_rows_with(name, predicate, session, hide, Vec::new())
            .await
    }

    /// [`Self::delete_rows`] with extra top-level `commitInfo` fields (a view's state, which
    /// an erasure's delete carries forward so that the view stays a view).
    pub(crate) async fn delete_rows_with(
        &self,
        name: &TableName,
        predicate: Option<Expr>,
        session: Arc<dyn Session>,
        hide: Hide,
        metadata: Vec<(String, serde_json::Value)>,
    ) -> Result<ChangeOutcome> {
        let table = self.open_scrubbed(name, hide).await?;
        let before = table.version();
        let properties = crate::warehouse::table_writer_properties(&table, false);
        let mut builder = table
            .delete()
            .with_session_state(session)
            .with_writer_properties(properties)
            .with_commit_properties(
                deltalake::kernel::transaction::CommitProperties::default().with_metadata(metadata),
            );
        if let Some(predicate) = predicate {
            builder = builder.with_predicate(predicate);
        }
        let (table, metrics) = builder.await.map_err(|e| refused(name, e))?;
        let version = committed(before, table.version());
        let rows = match (metrics.num_deleted_rows, version) {
            (Some(rows), _) => rows as u64,
            (None, None) => 0,
            // Whole files removed whose row counts the log does not hold: count them.
            (None, Some(version)) => self.rows_removed(name, version).await?,
        };
        debug!(?version, rows, "delete committed");
        Ok(ChangeOutcome { version, rows })
    }

    /// `UPDATE name SET column = value, ... [WHERE predicate]` in one commit. Expressions read
    /// the table's columns unqualified; a NULL for a NOT NULL column refuses the update.
    #[instrument(skip_all, fields(table = %name))]
    pub async fn update_rows(
        &self,
        name: &TableName,
        predicate: Option<Expr>,
        set: Vec<(String, Expr)>,
        session: Arc<dyn Session>,
        hide: Hide,
    ) -> Result<ChangeOutcome> {
        let table = self.open_scrubbed(name, hide).await?;
        let before = table.version();
        let schema = arrow_schema(name, &table)?;
        let properties = crate::warehouse::table_writer_properties(&table, false);
        let mut builder = table
            .update()
            .with_session_state(session)
            .with_writer_properties(properties);
        if let Some(predicate) = predicate {
            builder = builder.with_predicate(predicate);
        }
        for (column, value) in set {
            let value = required(&schema, &column, value);
            builder = builder.with_update(column, value);
        }
        let (table, metrics) = builder.await.map_err(|e| refused(name, e))?;
        let version = committed(before, table.version());
        debug!(
            ?version,
            rows = metrics.num_updated_rows,
            "update committed"
        );
        Ok(ChangeOutcome {
            version,
            rows: if version.is_some() {
                metrics.num_updated_rows as u64
            } else {
                0
            },
        })
    }

    /// `MERGE INTO name USING source ON ... WHEN ...` in one commit.
    #[instrument(skip_all, fields(table = %name))]
    pub async fn merge_rows(
        &self,
        name: &TableName,
        merge: Merge,
        session: Arc<dyn Session>,
        hide: Hide,
    ) -> Result<ChangeOutcome> {
        let table = self.open_scrubbed(name, hide).await?;
        let before = table.version();
        let schema = arrow_schema(name, &table)?;
        let delta = |e| refused(name, e);
        let source = without_idle_rows(&table, &schema, merge.source, &merge.on, &merge.clauses)
            .await
            .map_err(|e| Error::DataFusion(Box::new(e)))?;
        let properties = crate::warehouse::table_writer_properties(&table, false);
        let mut builder = table
            .merge(source, merge.on)
            .with_source_alias(MERGE_SOURCE)
            .with_target_alias(MERGE_TARGET)
            .with_session_state(session)
            .with_writer_properties(properties);
        for clause in merge.clauses {
            let predicate = clause.predicate;
            let with = |set: Vec<(String, Expr)>| -> Vec<(String, Expr)> {
                set.into_iter()
                    .map(|(c, v)| {
                        let v = required(&schema, &c, v);
                        (c, v)
                    })
                    .collect()
            };
            builder = match (clause.when, clause.action) {
                (MergeWhen::Matched, MergeAction::Update(set)) => builder
                    .when_matched_update(|u| {
                        with(set).into_iter().fold(
                            predicated(u, predicate, |u, p| u.predicate(p)),
                            |u, (c, v)| u.update(c, v),
                        )
                    })
                    .map_err(delta)?,
                (MergeWhen::Matched, MergeAction::Delete) => builder
                    .when_matched_delete(|d| predicated(d, predicate, |d, p| d.predicate(p)))
                    .map_err(delta)?,
                (MergeWhen::NotMatched, MergeAction::Insert(values)) => builder
                    .when_not_matched_insert(|i| {
                        with(insert_values(&schema, values)).into_iter().fold(
                            predicated(i, predicate, |i, p| i.predicate(p)),
                            |i, (c, v)| i.set(c, v),
                        )
                    })
                    .map_err(delta)?,
                (MergeWhen::NotMatchedBySource, MergeAction::Update(set)) => builder
                    .when_not_matched_by_source_update(|u| {
                        with(set).into_iter().fold(
                            predicated(u, predicate, |u, p| u.predicate(p)),
                            |u, (c, v)| u.update(c, v),
                        )
                    })
                    .map_err(delta)?,
                (MergeWhen::NotMatchedBySource, MergeAction::Delete) => builder
                    .when_not_matched_by_source_delete(|d| {
                        predicated(d, predicate, |d, p| d.predicate(p))
                    })
                    .map_err(delta)?,
                (when, action) => {
                    return Err(Error::Internal(format!(
                        "MERGE clause {when:?} cannot {action:?}"
                    )));
                }
            };
        }
        let (table, metrics) = builder.await.map_err(|e| {
            // deltalake names the data file and the row's ordinal in it, which counts rows a
            // row filter hides: the error without them.
            if e.to_string()
                .contains("MERGE matched a target row with multiple source rows")
            {
                return Error::WriteRefused {
                    schema: name.schema.clone(),
                    table: name.table.clone(),
                    kind: Refusal::Check,
                    reason: "MERGE matched one target row with several source rows".into(),
                };
            }
            delta(e)
        })?;
        let version = committed(before, table.version());
        let rows = if version.is_some() {
            (metrics.num_target_rows_inserted
                + metrics.num_target_rows_updated
                + metrics.num_target_rows_deleted) as u64
        } else {
            0
        };
        debug!(?version, rows, "merge committed");
        Ok(ChangeOutcome { version, rows })
    }

    /// Rows in version `version - 1` of `name` that are not in `version` (a delete that
    /// removed whole files whose row counts the log does not hold).
    async fn rows_removed(&self, name: &TableName, version: u64) -> Result<u64> {
        let count = |v: u64| async move {
            let (provider, _) = self
                .table_provider(name, Some(&crate::TimeTravel::Version(v)))
                .await?;
            let ctx = datafusion::prelude::SessionContext::new();
            let rows = ctx.read_table(provider)?.count().await?;
            Ok::<u64, Error>(rows as u64)
        };
        let before = count(version.saturating_sub(1)).await?;
        let after = count(version).await?;
        Ok(before.saturating_sub(after))
    }
}

/// The new version, if the operation committed one.
/// `source` without the rows no clause of a MERGE applies to (they match no target row and
/// no `WHEN NOT MATCHED` clause takes them), when the table records its changes and has
/// NOT NULL columns or row rules. deltalake 1.1.3 keeps such rows in a change-recording
/// MERGE's output (as `source_delete`, every target column NULL) and checks the table's NOT
/// NULL columns and rules on them before it sets them aside, so the MERGE would fail. Rows
/// that match no target row change nothing, so leaving them out changes nothing either.
async fn without_idle_rows(
    table: &DeltaTable,
    schema: &arrow::datatypes::Schema,
    source: DataFrame,
    on: &Expr,
    clauses: &[MergeClause],
) -> datafusion::error::Result<DataFrame> {
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::{JoinType, LogicalPlanBuilder};
    let Ok(snapshot) = table.snapshot() else {
        return Ok(source);
    };
    let configuration = snapshot.metadata().configuration();
    let records_changes = configuration
        .get("delta.enableChangeDataFeed")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let rules = configuration
        .keys()
        .any(|k| k.starts_with("delta.constraints."))
        || schema
            .fields()
            .iter()
            .any(|f| !f.is_nullable() || !f.metadata().is_empty());
    let inserts: Vec<Option<&Expr>> = clauses
        .iter()
        .filter(|c| c.when == MergeWhen::NotMatched)
        .map(|c| c.predicate.as_ref())
        .collect();
    // Every row that matches nothing is inserted: none is idle.
    if !records_changes || !rules || inserts.iter().any(Option::is_none) {
        return Ok(source);
    }
    let provider = table
        .table_provider()
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let (state, plan) = source.into_parts();
    let target =
        LogicalPlanBuilder::scan(MERGE_TARGET, provider_as_source(provider), None)?.build()?;
    let source = DataFrame::new(state.clone(), plan).alias(MERGE_SOURCE)?;
    let target = DataFrame::new(state, target);
    let matched = source
        .clone()
        .join_on(target.clone(), JoinType::LeftSemi, [on.clone()])?;
    let taken = inserts.into_iter().flatten().cloned().reduce(Expr::or);
    match taken {
        None => Ok(matched),
        Some(taken) => {
            let inserted = source
                .join_on(target, JoinType::LeftAnti, [on.clone()])?
                .filter(taken)?;
            matched.union(inserted)
        }
    }
}

fn committed(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    match (before, after) {
        (Some(b), Some(a)) if a > b => Some(a),
        (None, Some(a)) => Some(a),
        _ => None,
    }
}

fn arrow_schema(name: &TableName, table: &DeltaTable) -> Result<arrow::datatypes::SchemaRef> {
    Ok(table
        .snapshot()
        .map_err(|e| Error::delta(&name.schema, &name.table, e))?
        .snapshot()
        .arrow_schema())
}

/// `value`, refused where NULL when `column` is NOT NULL.
fn required(schema: &arrow::datatypes::Schema, column: &str, value: Expr) -> Expr {
    match schema.field_with_name(column) {
        Ok(field) if !field.is_nullable() => crate::guard::require_not_null(value, column),
        _ => value,
    }
}

/// A MERGE INSERT's values, with a NULL for every NOT NULL column it leaves out (so that the
/// refusal names the column).
fn insert_values(
    schema: &arrow::datatypes::Schema,
    mut values: Vec<(String, Expr)>,
) -> Vec<(String, Expr)> {
    for field in schema.fields() {
        if !field.is_nullable() && !values.iter().any(|(c, _)| c == field.name()) {
            let null = datafusion::common::ScalarValue::try_from(field.data_type())
                .unwrap_or(datafusion::common::ScalarValue::Null);
            values.push((field.name().clone(), datafusion::logical_expr::lit(null)));
        }
    }
    values
}

fn predicated<B>(builder: B, predicate: Option<Expr>, with: impl FnOnce(B, Expr) -> B) -> B {
    match predicate {
        Some(p) => with(builder, p),
        None => builder,
    }
}

/// A failed DML operation as the lake's error. A refusal's reason keeps its first line only:
/// deltalake's validation errors go on with a preview of the offending rows, every column of
/// them, which a principal whose view of the table is masked must not see.
fn refused(name: &TableName, e: deltalake::DeltaTableError) -> Error {
    match Error::delta(&name.schema, &name.table, e) {
        Error::WriteRefused {
            schema,
            table,
            kind,
            reason,
        } => Error::WriteRefused {
            schema,
            table,
            kind,
            reason: first_line(&reason, kind),
        },
        other => other,
    }
}

fn first_line(reason: &str, kind: Refusal) -> String {
    let line = reason.lines().next().unwrap_or_default().trim();
    match kind {
        Refusal::Check if line.starts_with("Invalid data found") => {
            format!("{line} (a NOT NULL, CHECK or invariant rule of the table)")
        }
        _ => line.to_string(),
    }
}

/// A log store that writes every commit with its DML predicates rewritten by `hide` (see the
/// module documentation); everything else is the table's own log store.
struct ScrubbedLog {
    inner: LogStoreRef,
    hide: Hide,
}

/// The `operationParameters` of deltalake's DELETE, UPDATE and MERGE commits that hold SQL
/// predicates; any other parameter of those commits is dropped.
const PREDICATES: &[&str] = &["predicate", "mergePredicate"];
const CLAUSE_PREDICATES: &[&str] = &[
    "matchedPredicates",
    "notMatchedPredicates",
    "notMatchedBySourcePredicates",
];

/// `bytes` (a commit's newline-delimited actions) with its commitInfo's predicates hidden.
pub(crate) fn scrub_commit(bytes: &[u8], hide: &dyn Fn(&str) -> String) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| {
            if !line.starts_with("{\"commitInfo\"") {
                return line.to_string();
            }
            let Ok(mut action) = serde_json::from_str::<Value>(line) else {
                // Never write what could not be checked.
                return "{\"commitInfo\":{}}".to_string();
            };
            if let Some(Value::Object(parameters)) = action
                .get_mut("commitInfo")
                .and_then(|info| info.get_mut("operationParameters"))
            {
                scrub_parameters(parameters, hide);
            }
            serde_json::to_string(&action).unwrap_or_else(|_| "{\"commitInfo\":{}}".into())
        })
        .collect();
    lines.join("\n").into_bytes()
}

fn scrub_parameters(
    parameters: &mut serde_json::Map<String, Value>,
    hide: &dyn Fn(&str) -> String,
) {
    let old = std::mem::take(parameters);
    for (key, value) in old {
        let Value::String(text) = value else {
            continue;
        };
        if PREDICATES.contains(&key.as_str()) {
            parameters.insert(key, Value::String(hide(&text)));
        } else if CLAUSE_PREDICATES.contains(&key.as_str()) {
            let Ok(Value::Array(mut clauses)) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            for clause in &mut clauses {
                if let Some(Value::Object(clause)) = Some(clause) {
                    let predicate = clause.remove("predicate");
                    if let Some(Value::String(p)) = predicate {
                        clause.insert("predicate".into(), Value::String(hide(&p)));
                    }
                    clause.retain(|k, _| k == "predicate" || k == "actionType");
                }
            }
            parameters.insert(key, Value::String(Value::Array(clauses).to_string()));
        }
    }
}

impl std::fmt::Debug for ScrubbedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubbedLog")
            .field("inner", &self.inner.name())
            .finish()
    }
}

#[async_trait]
impl LogStore for ScrubbedLog {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: u64) -> DeltaResult<Option<bytes::Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: u64,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        let scrubbed = match commit_or_bytes {
            CommitOrBytes::LogBytes(bytes) => {
                CommitOrBytes::LogBytes(scrub_commit(&bytes, self.hide.as_ref()).into())
            }
            CommitOrBytes::TmpCommit(path) => {
                // Stores without conditional puts stage the commit first: scrub it in place.
                let store = self.inner.object_store(Some(operation_id));
                let staged = store
                    .get(&path)
                    .await
                    .map_err(TransactionError::from)?
                    .bytes()
                    .await
                    .map_err(TransactionError::from)?;
                let clean = scrub_commit(&staged, self.hide.as_ref());
                store
                    .put(&path, clean.into())
                    .await
                    .map_err(TransactionError::from)?;
                CommitOrBytes::TmpCommit(path)
            }
        };
        self.inner
            .write_commit_entry(version, scrubbed, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: u64,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: u64) -> DeltaResult<u64> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn engine(&self, operation_id: Option<Uuid>) -> Arc<dyn buoyant_kernel::Engine> {
        self.inner.engine(operation_id)
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_info_predicates_are_hidden() {
        let hide = |s: &str| s.replace("'secret'", "?");
        let commit = concat!(
            r#"{"commitInfo":{"timestamp":1,"operation":"MERGE","operationParameters":{"predicate":"target.mrn = 'secret'","mergePredicate":"target.mrn = 'secret'","matchedPredicates":"[{\"actionType\":\"update\",\"predicate\":\"source.mrn = 'secret'\"}]","notMatchedPredicates":"[]","other":"x 'secret'"}}}"#,
            "\n",
            r#"{"add":{"path":"a.parquet"}}"#
        );
        let out = String::from_utf8(scrub_commit(commit.as_bytes(), &hide)).unwrap();
        assert!(!out.contains("secret"), "{out}");
        assert!(out.contains("target.mrn = ?"), "{out}");
        assert!(out.ends_with(r#"{"add":{"path":"a.parquet"}}"#), "{out}");
    }
}
