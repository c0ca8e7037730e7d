//! What a range of a table's commits did to its rows: Delta's change data feed.
//!
//! A table with `delta.enableChangeDataFeed` gets change files (`_change_data/`) from every
//! DELETE, UPDATE and MERGE and from overwrites with a predicate, holding the exact rows each
//! removed or rewrote (`delete`, `update_preimage`, `update_postimage`). Commits without change
//! files (appends, full overwrites, and every commit of a table without the feed) are read from
//! their data files: an added file's rows are `insert`s, a removed file's rows `delete`s. So a
//! range of commits always yields a correct change set (a DELETE on a table without the feed
//! reads as "every row of the rewritten files deleted, their kept rows inserted again"), only a
//! larger one. Commits that move rows without changing them (OPTIMIZE: `dataChange: false`)
//! yield nothing.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use deltalake::delta_datafusion::DeltaCdfTableProvider;
use serde_json::Value;

use crate::warehouse::{TableName, TimeTravel, Warehouse};
use crate::{Error, Result};

/// The column of a change row that says what happened to it.
pub const CHANGE_TYPE: &str = "_change_type";
/// The column of a change row with the version of the commit that made it.
pub const COMMIT_VERSION: &str = "_commit_version";
/// The column of a change row with the time of the commit that made it.
pub const COMMIT_TIMESTAMP: &str = "_commit_timestamp";
/// The change types of rows a range of commits added (`insert`, `update_postimage`).
pub const ADDED: &[&str] = &["insert", "update_postimage"];
/// The change types of rows a range of commits removed (`delete`, `update_preimage`).
pub const REMOVED: &[&str] = &["delete", "update_preimage"];

/// What the commits of a range did, read from their log entries alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Data files the range added (paths relative to the table), in commit order.
    pub added: Vec<String>,
    /// Whether any commit removed or rewrote rows (a data file removed with `dataChange`, or
    /// change files written). When not, the range only appended: its rows are those of
    /// `added`.
    pub rewrote: bool,
}

impl Warehouse {
    /// Classifies the commits after version `from` up to `to` from their log entries, or says
    /// why their rows cannot be read as changes: a commit left the log, changed the table's
    /// schema or protocol, added files to a partitioned table or with deletion vectors, or
    /// compacted files the range added (their rows cannot be read from the files that added
    /// them then).
    pub async fn span(
        &self,
        name: &TableName,
        from: u64,
        to: u64,
    ) -> Result<std::result::Result<Span, String>> {
        if to < from {
            return Ok(Err(format!(
                "{name} is older (version {to}) than it was (version {from}); it was recreated"
            )));
        }
        let mut span = Span::default();
        let mut compacted = std::collections::HashSet::new();
        for version in from + 1..=to {
            let Some(actions) = self.commit_actions(name, version).await? else {
                return Ok(Err(format!(
                    "{name} version {version} is no longer in its log"
                )));
            };
            let operation = actions
                .iter()
                .find_map(|a| a.get("commitInfo")?.get("operation")?.as_str())
                .unwrap_or("an unknown operation")
                .to_string();
            for action in &actions {
                if let Some(add) = action.get("add") {
                    if add.get("dataChange").and_then(Value::as_bool) != Some(true) {
                        continue;
                    }
                    let partitioned = add
                        .get("partitionValues")
                        .and_then(Value::as_object)
                        .is_some_and(|p| !p.is_empty());
                    if partitioned || add.get("deletionVector").is_some_and(|d| !d.is_null()) {
                        return Ok(Err(format!(
                            "{name} is partitioned or has deletion vectors"
                        )));
                    }
                    let path = add
                        .get("path")
                        .and_then(Value::as_str)
                        .ok_or_else(|| Error::Internal("an add action without a path".into()))?;
                    span.added.push(path.to_string());
                } else if let Some(remove) = action.get("remove") {
                    if remove.get("dataChange").and_then(Value::as_bool) == Some(false) {
                        if let Some(path) = remove.get("path").and_then(Value::as_str) {
                            compacted.insert(path.to_string());
                        }
                    } else {
                        span.rewrote = true;
                    }
                } else if action.get("cdc").is_some() {
                    span.rewrote = true;
                } else if action.get("metaData").is_some() || action.get("protocol").is_some() {
                    return Ok(Err(format!(
                        "{name} version {version} ({operation}) changed the table's schema or properties"
                    )));
                }
            }
        }
        if span.added.iter().any(|f| compacted.contains(f)) {
            return Ok(Err(format!(
                "{name} was compacted (OPTIMIZE) after rows were added"
            )));
        }
        Ok(Ok(span))
    }

    /// The rows `name` gained and lost in versions `from` to `to` (both included), as a table
    /// with the table's columns (as of `to`) and [`CHANGE_TYPE`], [`COMMIT_VERSION`] and
    /// [`COMMIT_TIMESTAMP`]. See the module docs for what a range without change files yields.
    pub async fn changes(
        &self,
        name: &TableName,
        from: u64,
        to: u64,
    ) -> Result<Arc<dyn TableProvider>> {
        let table = self
            .open_table_as_of(name, Some(&TimeTravel::Version(to)))
            .await?;
        let builder = table
            .scan_cdf()
            .with_starting_version(from)
            .with_ending_version(to);
        let provider = DeltaCdfTableProvider::try_new(builder)
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        Ok(Arc::new(provider))
    }
}
