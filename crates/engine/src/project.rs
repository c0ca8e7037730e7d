//! Project folders: `catalog/*.sql` (sources, schemas, tables) and `sql/**/*.sql`
//! (materialized views), applied idempotently by `medlake apply` and `medlake serve --project`.
//!
//! - `catalog/*.sql` runs first, file by file in name order, statement by statement (write
//!   them with `IF NOT EXISTS`).
//! - In `sql/**/*.sql`, statements other than `CREATE MATERIALIZED VIEW` (a `CREATE SCHEMA`,
//!   say) run next, in file order; then the views, in dependency order (a view after the
//!   views it reads), whatever their file names.
//! - A view whose definition (query, schedule, expectations) is unchanged keeps its data; a
//!   changed one is replaced and refreshed fully in one commit; a new one is created.
//! - Access statements (GRANT, masks, ...) and alert rules (`CREATE OR REPLACE ALERT`, kept
//!   as they are when unchanged) run after the views they name.
//! - A view of the warehouse that no file defines any more is kept, data and all, and
//!   reported: dropping data is a decision for `DROP MATERIALIZED VIEW`, not for a deleted
//!   file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medlake_lake::TableName;
use medlake_views::{CreateView, Trigger};

use crate::error::{Error, Result};
use crate::{Engine, Output, Statement};

/// What `apply` did to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// A view name, or `file: statement` for catalog statements.
    pub object: String,
    /// `ran`, `created`, `replaced`, `unchanged`, `kept`.
    pub action: &'static str,
    /// More about it (rows written, why kept).
    pub detail: String,
}

fn sql_files(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(files);
    };
    for entry in entries {
        let path = entry
            .map_err(|e| Error::InvalidValue {
                what: "project folder".into(),
                reason: format!("cannot list {}: {e}", dir.display()),
            })?
            .path();
        if path.is_dir() && recursive {
            files.extend(sql_files(&path, true)?);
        } else if path.extension().is_some_and(|e| e == "sql") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::InvalidValue {
        what: "project file".into(),
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

/// Says which file a failing statement came from.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Syntax { message } | Error::Views(medlake_views::Error::Syntax { message }) => {
            Error::Syntax {
                message: format!("{}: {message}", path.display()),
            }
        }
        other => other,
    }
}

impl Engine {
    /// Applies the project in `dir`; see the module docs for what that means.
    pub async fn apply_project(&self, dir: &Path) -> Result<Vec<Applied>> {
        if !dir.is_dir() {
            return Err(Error::InvalidValue {
                what: "project folder".into(),
                reason: format!("{} is not a folder", dir.display()),
            });
        }
        let mut applied = Vec::new();
        for file in sql_files(&dir.join("catalog"), false)? {
            let text = read(&file)?;
            for statement in crate::parse(&text).map_err(|e| in_file(&file, e))? {
                let output = self.execute(statement).await?;
                let tag = match output {
                    Output::Command { tag, .. } => tag,
                    Output::Rows(_) => "SELECT".into(),
                };
                applied.push(Applied {
                    object: file.display().to_string(),
                    action: "ran",
                    detail: tag,
                });
            }
        }
        let mut views: BTreeMap<TableName, (CreateView, PathBuf)> = BTreeMap::new();
        // Roles, grants, masks and row filters name the project's views: run after them.
        let mut access: Vec<(Statement, PathBuf)> = Vec::new();
        for file in sql_files(&dir.join("sql"), true)? {
            let text = read(&file)?;
            for statement in crate::parse(&text).map_err(|e| in_file(&file, e))? {
                match statement {
                    Statement::CreateMaterializedView(create) => {
                        let mut create = *create;
                        let parts = medlake_views::definition::name_parts(&create.name)?;
                        let name = self.default.table_name(&parts)?;
                        create.definition.default_schema = self.default.default_schema();
                        if let Some((_, other)) = views.get(&name) {
                            return Err(Error::InvalidValue {
                                what: "project".into(),
                                reason: format!(
                                    "{name} is defined in both {} and {}",
                                    other.display(),
                                    file.display()
                                ),
                            });
                        }
                        views.insert(name, (create, file.clone()));
                    }
                    access_statement @ Statement::Access(_) => {
                        access.push((access_statement, file.clone()));
                    }
                    // Alert rules watch views: run after them too.
                    alert @ Statement::Alert(_) => {
                        access.push((alert, file.clone()));
                    }
                    other => {
                        let output = self.execute(other).await?;
                        if let Output::Command { tag, .. } = output {
                            applied.push(Applied {
                                object: file.display().to_string(),
                                action: "ran",
                                detail: tag,
                            });
                        }
                    }
                }
            }
        }
        applied.extend(self.apply_views(&views).await?);
        for (statement, file) in access {
            if let Output::Command { tag, .. } = self.execute(statement).await? {
                applied.push(Applied {
                    object: file.display().to_string(),
                    action: "ran",
                    detail: tag,
                });
            }
        }
        for view in self.views().list().await? {
            if !views.contains_key(&view.name) {
                applied.push(Applied {
                    object: view.name.to_string(),
                    action: "kept",
                    detail: "no project file defines it any more; its data stays (DROP MATERIALIZED VIEW to remove it)".into(),
                });
            }
        }
        self.shared.catalog.refresh().await?;
        Ok(applied)
    }

    /// Creates, replaces or keeps the project's views, upstream first.
    async fn apply_views(
        &self,
        views: &BTreeMap<TableName, (CreateView, PathBuf)>,
    ) -> Result<Vec<Applied>> {
        let mut applied = Vec::new();
        let engine_views = self.views();
        let mut graph = BTreeMap::new();
        for (name, (create, _)) in views {
            // An AUTO CDC view's query is computed below, once its source exists.
            let mut reads = create.definition.clone();
            if let Some(cdc) = &reads.auto_cdc {
                reads.query = cdc.source_query();
            }
            let upstream = engine_views
                .references(&reads)?
                .into_iter()
                .filter(|r| views.contains_key(r))
                .collect();
            graph.insert(name.clone(), upstream);
        }
        for name in medlake_views::topological(&graph)? {
            let Some((mut create, _file)) = views.get(&name).cloned() else {
                continue;
            };
            self.default
                .resolve_auto_cdc(&mut create.definition)
                .await?;
            let existing = if self.warehouse().table_exists(&name).await? {
                match engine_views.view(&name).await? {
                    Some(view) => Some(view),
                    None => {
                        return Err(Error::Views(medlake_views::Error::WrongObjectType {
                            name: name.to_string(),
                            is: "a table",
                            expected: "a materialized view (the project defines one)",
                        }));
                    }
                }
            } else {
                None
            };
            let (action, detail) = match existing {
                None => {
                    let outcome = engine_views.create(&name, create, Trigger::Apply).await?;
                    let rows = outcome.map_or(0, |o| o.rows_written);
                    ("created", format!("{rows} rows"))
                }
                Some(view) if view.definition == create.definition => {
                    ("unchanged", format!("version {}", view.version))
                }
                Some(_) => {
                    let outcome = engine_views
                        .refresh_one(&name, true, Trigger::Apply, Some(create.definition))
                        .await?;
                    ("replaced", format!("{} rows", outcome.rows_written))
                }
            };
            applied.push(Applied {
                object: name.to_string(),
                action,
                detail,
            });
        }
        Ok(applied)
    }
}
