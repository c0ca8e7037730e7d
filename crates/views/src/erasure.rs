//! What an erasure (`ERASE PATIENT`, driven by the engine) needs of views: deleting rows
//! from a view without losing its definition and refresh state, the views that read erased
//! tables (refreshed next, so that what they derived from the erased rows goes too), and how
//! much of a view's history must stay for it to remain a view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::logical_expr::Expr;
use medlake_lake::{ChangeOutcome, TableName};

use crate::error::{Error, Result};
use crate::refresh::{METADATA_KEY, Stored, Views, topological};

impl Views {
    /// Deletes the rows of `name` (a table or a view) matching `predicate` in one commit that
    /// records no value. A view's commit carries its definition and refresh state forward:
    /// its next refresh reads the changes of its inputs since the versions it last recorded,
    /// as if the rows had never been there.
    pub async fn erase_rows(
        &self,
        name: &TableName,
        predicate: Expr,
        session: Arc<dyn Session>,
    ) -> Result<ChangeOutcome> {
        let _running = self.start(name)?;
        let is_view = self.view(name).await?;
        let metadata = match is_view {
            Some(view) => {
                let stored = Stored {
                    view: view.definition,
                    refresh: view.last,
                };
                let value = serde_json::to_value(stored)
                    .map_err(|e| Error::Internal(format!("view state of {name}: {e}")))?;
                vec![(METADATA_KEY.to_string(), value)]
            }
            None => Vec::new(),
        };
        let view = !metadata.is_empty();
        let erased = self
            .warehouse()
            .erase_rows(name, predicate, session, metadata)
            .await?;
        if view {
            // The aggregate state holds the erased rows' groups: it goes (the view's next
            // full refresh computes it again from what is left).
            self.warehouse()
                .delete_sidecar(name, crate::state::STATE_FILE)
                .await?;
        }
        Ok(erased)
    }

    /// The oldest version of `name` whose log entry must stay: a view's state lives in its
    /// newest commit that carries it (OPTIMIZE and VACUUM commits do not), a table needs only
    /// its latest version.
    pub async fn history_needed_from(&self, name: &TableName) -> Result<u64> {
        if let Some((_, version)) = self.view_with_state_version(name).await? {
            return Ok(version);
        }
        let versions = self.warehouse().versions(name).await?;
        Ok(versions.last().copied().unwrap_or(0))
    }

    /// The views that read any of `tables`, directly or through other views, each after the
    /// views it reads.
    pub async fn downstream(&self, tables: &[TableName]) -> Result<Vec<TableName>> {
        let all = self.list().await?;
        let mut reads: BTreeMap<TableName, Vec<TableName>> = BTreeMap::new();
        for view in &all {
            reads.insert(view.name.clone(), self.references(&view.definition)?);
        }
        let sources: BTreeSet<&TableName> = tables.iter().collect();
        let mut wanted: BTreeSet<TableName> = BTreeSet::new();
        loop {
            let found: Vec<TableName> = reads
                .iter()
                .filter(|(view, _)| !wanted.contains(*view))
                .filter(|(_, inputs)| {
                    inputs
                        .iter()
                        .any(|i| sources.contains(i) || wanted.contains(i))
                })
                .map(|(view, _)| view.clone())
                .collect();
            if found.is_empty() {
                break;
            }
            wanted.extend(found);
        }
        let graph = self.graph(&all)?;
        Ok(topological(&graph)?
            .into_iter()
            .filter(|v| wanted.contains(v))
            .collect())
    }
}
