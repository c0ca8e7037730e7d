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
//! 5. **History.** Each table with an identifying column, and each view refreshed in 4,
//!    forgets its past: removed files (VACUUM without retention), change files, earlier
//!    checkpoints and the statistics of earlier commits (`medlake-lake`'s `purge_history`).
//!    Rows that came back meanwhile are erased again before and after.
//!
//! `DRY RUN` reports the rows per table and each linked identifier with the table it was found
//! in: links come from rows anyone with write access to such a table could have written.
//!
//! External tables are the sources' own: their rows are not the warehouse's to delete, and
//! the suppression list keeps them out of every later extraction.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::functions::regex::expr_fn::regexp_like;
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

impl Erase {
    /// What the audit log records: never the identifiers (the audit outlives the erasure).
    pub fn audit_text(&self) -> String {
        format!(
            "ERASE PATIENT ?{}",
            if self.dry_run { " DRY RUN" } else { "" }
        )
    }
}

/// A table of the warehouse with identifying columns.
struct Target {
    name: TableName,
    columns: Vec<String>,
    /// Text columns searched token by token: a quarantine's `raw` column (refused rows as
    /// sent), the alert log's `key` and `row` (JSON of a firing's row).
    raw: Vec<String>,
}

/// What the erasure did to one table.
#[derive(Default)]
struct Done {
    rows: u64,
    files: u64,
    log_entries: u64,
    /// Rows matched again after the first delete (derived again, or written meanwhile).
    again: bool,
    notes: Vec<String>,
}

impl Done {
    fn status(&self) -> String {
        let mut status = format!(
            "erased{}; {} file(s) and {} log entr{} purged",
            if self.again {
                " (twice: rows came back)"
            } else {
                ""
            },
            self.files,
            self.log_entries,
            if self.log_entries == 1 { "y" } else { "ies" }
        );
        for note in &self.notes {
            status.push_str("; ");
            status.push_str(note);
        }
        status
    }
}

impl Target {
    /// `CAST(c AS VARCHAR) IN (identifiers)` over its identifying columns, and an identifier
    /// as a token of its `raw` column, OR-ed.
    fn predicate(&self, identifiers: &BTreeSet<String>) -> Expr {
        let values: Vec<Expr> = identifiers.iter().map(|v| lit(v.clone())).collect();
        let by_value = self.columns.iter().map(|c| {
            cast(Expr::Column(Column::from_name(c)), DataType::Utf8).in_list(values.clone(), false)
        });
        let by_token = self.raw.iter().flat_map(|raw| {
            identifiers.iter().map(move |v| {
                let pattern = format!("(^|[^\\w-]){}($|[^\\w-])", regex_escape(v));
                regexp_like(Expr::Column(Column::from_name(raw)), lit(pattern), None)
            })
        });
        by_value
            .chain(by_token)
            .reduce(Expr::or)
            .unwrap_or_else(|| lit(false))
    }
}

fn name_of(schema: &str, table: &str) -> Result<TableName> {
    Ok(TableName::new(schema, table)?)
}

/// `text` with the regular expression syntax escaped (as `regex::escape` does).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
        let (identifiers, links) = self
            .linked_identifiers(&erase.identifiers, &targets)
            .await?;
        if erase.dry_run {
            let mut report = Vec::new();
            for target in &targets {
                let rows = self.count_matching(target, &identifiers).await?;
                report.push((target.name.to_string(), rows, "would be erased".to_string()));
            }
            // What the links added, so that an admin sees whom the erasure takes.
            for (identifier, table) in links {
                report.push((
                    table.to_string(),
                    0,
                    format!("linked identifier '{identifier}' found here"),
                ));
            }
            return erasure_report(report, identifiers.len());
        }
        let listed: Vec<String> = identifiers.iter().cloned().collect();
        self.shared
            .warehouse
            .record_erasure(&self.principal.name, &columns, &listed)
            .await?;
        // Another process on the warehouse reads the new list within this time; its writes
        // planned before then may still add rows, which the checks below catch.
        tokio::time::sleep(medlake_lake::erasure::RELOAD_AFTER).await;
        let mut done: Vec<Done> = Vec::new();
        for target in &targets {
            done.push(self.erase_target(target, &identifiers).await?);
        }
        let (downstream, refreshes) = self.refresh_after_erasure(&targets, &mut done).await?;
        self.erase_what_came_back(&targets, &identifiers, &mut done)
            .await?;
        for (target, done) in targets.iter().zip(done.iter_mut()) {
            let purged = self.purge(&target.name).await?;
            done.files += purged.files as u64;
            done.log_entries += purged.log_entries as u64;
        }
        // Views without identifying columns hold aggregates over the erased rows in their
        // history: it goes too.
        let mut purged_views = Vec::new();
        for view in downstream
            .iter()
            .filter(|v| !targets.iter().any(|t| t.name == **v))
        {
            let purged = self.purge(view).await?;
            purged_views.push((view.to_string(), purged));
        }
        self.erase_what_came_back(&targets, &identifiers, &mut done)
            .await?;
        self.shared.catalog.refresh().await?;
        // The alert log lost the patient's firings: this server's copy of it too.
        self.shared.alerts.reload().await?;
        let mut report: Vec<(String, u64, String)> = targets
            .iter()
            .zip(done)
            .map(|(t, d)| (t.name.to_string(), d.rows, d.status()))
            .collect();
        report.extend(refreshes);
        report.extend(purged_views.into_iter().map(|(view, p)| {
            let status = format!(
                "recomputed without them; {} file(s) and {} log entr{} purged",
                p.files,
                p.log_entries,
                if p.log_entries == 1 { "y" } else { "ies" }
            );
            (view, 0, status)
        }));
        erasure_report(report, identifiers.len())
    }

    async fn purge(&self, name: &TableName) -> Result<medlake_lake::Purged> {
        let keep_from = self.shared.views.history_needed_from(name).await?;
        Ok(self.shared.warehouse.purge_history(name, keep_from).await?)
    }

    /// Erases again the rows a refresh derived again, or a write planned before the
    /// suppression list reached it added (a few rounds; what is still there is reported).
    async fn erase_what_came_back(
        &self,
        targets: &[Target],
        identifiers: &BTreeSet<String>,
        done: &mut [Done],
    ) -> Result<()> {
        for (target, done) in targets.iter().zip(done.iter_mut()) {
            for round in 0..=3 {
                if self.count_matching(target, identifiers).await? == 0 {
                    break;
                }
                if round == 3 {
                    done.notes
                        .push("rows keep coming back: run ERASE PATIENT again".into());
                    break;
                }
                let again = self.erase_target(target, identifiers).await?;
                done.rows += again.rows;
                done.again = true;
            }
        }
        Ok(())
    }

    /// Every Delta table and view of the warehouse (not `system`, not external tables) with at
    /// least one of `columns`, of an integer or text type.
    async fn erasure_targets(&self, columns: &[String]) -> Result<Vec<Target>> {
        let warehouse = &self.shared.warehouse;
        let mut targets = Vec::new();
        for schema in warehouse.list_schemas().await? {
            for table in warehouse.list_tables(&schema).await? {
                // medlake's own tables hold no patient rows, but the alert log does (each
                // firing's key and row).
                let alert_log =
                    schema == medlake_alerts::log::SCHEMA && table == medlake_alerts::log::EVENTS;
                if schema == medlake_lake::erasure::ERASURES_SCHEMA && !alert_log {
                    continue;
                }
                // An alert log nothing was ever written to (version 0) holds no one.
                if alert_log
                    && warehouse.versions(&name_of(&schema, &table)?).await?.last() == Some(&0)
                {
                    continue;
                }
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
                let raw = provider
                    .schema()
                    .fields()
                    .iter()
                    .find(|f| {
                        f.name() == medlake_lake::erasure::RAW_COLUMN
                            && matches!(
                                f.data_type(),
                                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                            )
                    })
                    .filter(|_| table.ends_with(medlake_lake::erasure::QUARANTINE_SUFFIX))
                    .map(|f| f.name().clone());
                let mut raw: Vec<String> = raw.into_iter().collect();
                if alert_log {
                    raw = vec!["key".into(), "row".into()];
                }
                if !found.is_empty() || !raw.is_empty() {
                    targets.push(Target {
                        name,
                        columns: found,
                        raw,
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
    ) -> Result<(BTreeSet<String>, Vec<(String, TableName)>)> {
        let mut identifiers: BTreeSet<String> = given.iter().cloned().collect();
        let mut links: Vec<(String, TableName)> = Vec::new();
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
                let mut found = BTreeSet::new();
                for batch in &batches {
                    for column in batch.columns() {
                        collect_text(column, &mut found);
                    }
                }
                for identifier in found {
                    if identifiers.insert(identifier.clone()) {
                        links.push((identifier, target.name.clone()));
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
        Ok((identifiers, links))
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
    ) -> Result<(Vec<TableName>, Vec<(String, u64, String)>)> {
        let names: Vec<TableName> = targets.iter().map(|t| t.name.clone()).collect();
        let mut others = Vec::new();
        let downstream = self.shared.views.downstream(&names).await?;
        for view in downstream.iter().cloned() {
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
        Ok((downstream, others))
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
