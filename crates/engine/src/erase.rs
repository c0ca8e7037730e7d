//! `ERASE PATIENT 'id' [, ...] [IN COLUMNS (c, ...)] [DRY RUN]`: an erasure request honoured
//! across the warehouse, bronze to gold.
//!
//! 1. **Identifiers.** The given values, plus every value a row holding one of them has in
//!    another identifying column (a patient's MRN is found from their `patient_id` in the
//!    tables that hold both, and then matches the DICOM rows whose `patient_id` is that MRN),
//!    until nothing new is found. Identifying columns are `patient_id` and `mrn` unless
//!    `IN COLUMNS` names others; values compare as text.
//! 2. **Suppression.** The identifiers' salted hashes join `system.erasures` before anything
//!    is deleted, so that an extraction, ingest or refresh running meanwhile, and every later
//!    one, leaves their rows out (`medlake-lake`'s `erasure` module).
//! 3. **Rows.** Every Delta table and materialized view (quarantines included) with an
//!    identifying column loses the matching rows, one commit each recording no value; a view
//!    keeps its state.
//! 4. **What was derived from them.** Every view that reads such a table is refreshed (in
//!    dependency order, incrementally where it can be), so aggregates over the erased rows
//!    are recomputed without them; a view that still holds matching rows loses them again.
//! 5. **History.** Each table with an identifying column forgets its past: removed files
//!    (VACUUM without retention), change files, and log entries before the oldest version it
//!    must keep (their statistics hold old values), after checkpoints.
//!
//! External tables are the sources' own: their rows are not the warehouse's to delete, and
//! the suppression list keeps them out of every later extraction.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, cast, lit};
use datafusion::prelude::SessionContext;
use medlake_lake::TableName;
use medlake_views::Trigger;

use crate::{Error, Output, Result, Session};

/// Identifying columns when `IN COLUMNS` names none.
pub const DEFAULT_COLUMNS: &[&str] = &["patient_id", "mrn"];
/// At most this many identifiers, given and linked: more means the link columns tie many
/// people together (a shared value), which an erasure must not follow.
pub const MAX_IDENTIFIERS: usize = 64;
/// Rounds of following links between identifying columns.
const LINK_ROUNDS: usize = 4;

/// A parsed `ERASE PATIENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erase {
    pub identifiers: Vec<String>,
    pub columns: Vec<String>,
    pub dry_run: bool,
}

/// A table of the warehouse with identifying columns.
struct Target {
    name: TableName,
    columns: Vec<String>,
}

/// What the erasure did to one table.
#[derive(Default)]
struct Done {
    rows: u64,
    files: u64,
    log_entries: u64,
    notes: Vec<String>,
}

impl Target {
    /// `CAST(c AS VARCHAR) IN (identifiers)` over its identifying columns, OR-ed.
    fn predicate(&self, identifiers: &BTreeSet<String>) -> Expr {
        let values: Vec<Expr> = identifiers.iter().map(|v| lit(v.clone())).collect();
        self.columns
            .iter()
            .map(|c| {
                cast(Expr::Column(Column::from_name(c)), DataType::Utf8)
                    .in_list(values.clone(), false)
            })
            .reduce(Expr::or)
            .unwrap_or_else(|| lit(false))
    }
}

fn comparable(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

impl Session {
    pub(crate) async fn erase(&self, erase: Erase) -> Result<Output> {
        let columns: Vec<String> = if erase.columns.is_empty() {
            DEFAULT_COLUMNS.iter().map(|c| c.to_string()).collect()
        } else {
            erase.columns.iter().map(|c| c.to_lowercase()).collect()
        };
        let targets = self.erasure_targets(&columns).await?;
        let identifiers = self
            .linked_identifiers(&erase.identifiers, &targets)
            .await?;
        if erase.dry_run {
            let mut report = Vec::new();
            for target in &targets {
                let rows = self.count_matching(target, &identifiers).await?;
                report.push((target.name.to_string(), rows, "would be erased".to_string()));
            }
            return erasure_report(report, identifiers.len());
        }
        let listed: Vec<String> = identifiers.iter().cloned().collect();
        self.shared
            .warehouse
            .record_erasure(&self.principal.name, &columns, &listed)
            .await?;
        let mut done: Vec<Done> = Vec::new();
        for target in &targets {
            done.push(self.erase_target(target, &identifiers).await?);
        }
        let refreshes = self.refresh_after_erasure(&targets, &mut done).await?;
        for (target, done) in targets.iter().zip(done.iter_mut()) {
            if self.count_matching(target, &identifiers).await? > 0 {
                let again = self.erase_target(target, &identifiers).await?;
                done.rows += again.rows;
                done.notes
                    .push("derived again by its refresh; erased again".into());
            }
            let keep_from = self.shared.views.history_needed_from(&target.name).await?;
            let purged = self
                .shared
                .warehouse
                .purge_history(&target.name, keep_from)
                .await?;
            done.files += purged.files as u64;
            done.log_entries += purged.log_entries as u64;
        }
        self.shared.catalog.refresh().await?;
        let mut report: Vec<(String, u64, String)> = targets
            .iter()
            .zip(done)
            .map(|(t, d)| {
                let status = if d.notes.is_empty() {
                    format!(
                        "erased; {} file(s) and {} log entr{} purged",
                        d.files,
                        d.log_entries,
                        if d.log_entries == 1 { "y" } else { "ies" }
                    )
                } else {
                    d.notes.join("; ")
                };
                (t.name.to_string(), d.rows, status)
            })
            .collect();
        report.extend(refreshes);
        erasure_report(report, identifiers.len())
    }

    /// Every Delta table and view of the warehouse (not `system`, not external tables) with at
    /// least one of `columns`, of an integer or text type.
    async fn erasure_targets(&self, columns: &[String]) -> Result<Vec<Target>> {
        let warehouse = &self.shared.warehouse;
        let mut targets = Vec::new();
        for schema in warehouse.list_schemas().await? {
            if schema == medlake_lake::erasure::ERASURES_SCHEMA {
                continue;
            }
            for table in warehouse.list_tables(&schema).await? {
                let name = TableName::new(&schema, &table)?;
                if warehouse.external(&name).await?.is_some() {
                    continue;
                }
                let (provider, _) = match warehouse.table_provider(&name, None).await {
                    Ok(provider) => provider,
                    Err(medlake_lake::Error::TableNotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                let found: Vec<String> = provider
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| comparable(f.data_type()))
                    .filter(|f| columns.contains(&f.name().to_lowercase()))
                    .map(|f| f.name().clone())
                    .collect();
                if !found.is_empty() {
                    targets.push(Target {
                        name,
                        columns: found,
                    });
                }
            }
        }
        Ok(targets)
    }

    /// The given identifiers and those linked to them through rows holding several
    /// identifying columns.
    async fn linked_identifiers(
        &self,
        given: &[String],
        targets: &[Target],
    ) -> Result<BTreeSet<String>> {
        let mut identifiers: BTreeSet<String> = given.iter().cloned().collect();
        for _ in 0..LINK_ROUNDS {
            let before = identifiers.len();
            for target in targets.iter().filter(|t| t.columns.len() > 1) {
                let frame = self.raw_frame(&target.name).await?;
                let selected: Vec<Expr> = target
                    .columns
                    .iter()
                    .map(|c| cast(Expr::Column(Column::from_name(c)), DataType::Utf8))
                    .collect();
                let batches = frame
                    .filter(target.predicate(&identifiers))?
                    .select(selected)?
                    .collect()
                    .await?;
                for batch in &batches {
                    for column in batch.columns() {
                        collect_text(column, &mut identifiers);
                    }
                }
                if identifiers.len() > MAX_IDENTIFIERS {
                    return Err(Error::InvalidValue {
                        what: "ERASE PATIENT".into(),
                        reason: format!(
                            "the identifiers link to more than {MAX_IDENTIFIERS} others through {} (a value shared by many rows?); name the columns to match with IN COLUMNS",
                            target.name
                        ),
                    });
                }
            }
            if identifiers.len() == before {
                break;
            }
        }
        Ok(identifiers)
    }

    async fn raw_frame(&self, name: &TableName) -> Result<datafusion::dataframe::DataFrame> {
        let (provider, _) = self.shared.warehouse.table_provider(name, None).await?;
        Ok(SessionContext::new().read_table(provider)?)
    }

    async fn count_matching(&self, target: &Target, identifiers: &BTreeSet<String>) -> Result<u64> {
        let frame = self.raw_frame(&target.name).await?;
        let rows = frame.filter(target.predicate(identifiers))?.count().await?;
        Ok(rows as u64)
    }

    async fn erase_target(&self, target: &Target, identifiers: &BTreeSet<String>) -> Result<Done> {
        let outcome = self
            .shared
            .views
            .erase_rows(
                &target.name,
                target.predicate(identifiers),
                Arc::new(self.ctx.state()),
            )
            .await?;
        Ok(Done {
            rows: outcome.rows,
            ..Done::default()
        })
    }

    /// Refreshes every view that reads an erased table, in dependency order. A failed
    /// refresh is reported on its table's row, or on a row of its own for a view without
    /// identifying columns (the erasure goes on).
    async fn refresh_after_erasure(
        &self,
        targets: &[Target],
        done: &mut [Done],
    ) -> Result<Vec<(String, u64, String)>> {
        let names: Vec<TableName> = targets.iter().map(|t| t.name.clone()).collect();
        let mut others = Vec::new();
        for view in self.shared.views.downstream(&names).await? {
            let refreshed = self
                .shared
                .views
                .refresh(&view, false, false, Trigger::Manual)
                .await;
            if let Err(e) = refreshed {
                let message = format!("refresh of {view} failed: {}", Error::from(e));
                match names.iter().position(|n| *n == view) {
                    Some(i) => done[i].notes.push(message),
                    None => others.push((view.to_string(), 0, message)),
                }
            }
        }
        Ok(others)
    }
}

fn collect_text(column: &ArrayRef, into: &mut BTreeSet<String>) {
    let Ok(column) = arrow::compute::cast(column, &DataType::Utf8) else {
        return;
    };
    let Some(text) = column.as_string_opt::<i32>() else {
        return;
    };
    let text: &StringArray = text;
    for i in 0..text.len() {
        if text.is_valid(i) {
            let value = text.value(i).trim();
            if !value.is_empty() {
                into.insert(value.to_string());
            }
        }
    }
}

fn erasure_report(rows: Vec<(String, u64, String)>, identifiers: usize) -> Result<Output> {
    let mut tables = Vec::new();
    let mut counts = Vec::new();
    let mut statuses = Vec::new();
    for (table, count, status) in rows {
        tables.push(table);
        counts.push(count);
        statuses.push(status);
    }
    let n = tables.len();
    Ok(Output::batch(crate::record_batch(vec![
        ("table", crate::text(tables)),
        ("rows_erased", crate::int(counts)),
        ("identifiers", crate::int(vec![identifiers as u64; n])),
        ("status", crate::text(statuses)),
    ])?))
}
