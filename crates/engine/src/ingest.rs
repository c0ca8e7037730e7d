//! Pushed rows (the HTTP ingest door): appends that carry the idempotency keys of the requests
//! they answer in the same Delta commit, so that "was this batch written?" has a durable,
//! atomic answer that survives a crash between the commit and the acknowledgement.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::LogicalPlanBuilder;
use medlake_lake::{CommitOptions, TableName, WriteMode};
use serde_json::{Value, json};

use crate::{Engine, Error, Result};

/// The key of the ingest record in a commit's `commitInfo`.
pub const INGEST_METADATA_KEY: &str = "medlake_ingest";

/// What an ingest commit wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub rows: u64,
    pub version: u64,
}

impl Engine {
    /// The Delta table `name` (`schema.table`) rows can be pushed into, and its schema now.
    /// Materialized views, external tables and the system schema are refused.
    pub async fn ingest_target(&self, name: &str) -> Result<(TableName, SchemaRef)> {
        let parts: Vec<String> = name.split('.').map(str::to_string).collect();
        let table = match parts.as_slice() {
            [schema, table] => TableName::new(schema.to_lowercase(), table.to_lowercase())?,
            _ => {
                return Err(Error::InvalidValue {
                    what: "ingest target".into(),
                    reason: format!("'{name}' is not schema.table"),
                });
            }
        };
        if table.schema == medlake_views::system::SCHEMA {
            return Err(Error::ReadOnly {
                what: format!("the system schema is read-only (ingest into {table})"),
            });
        }
        let warehouse = self.warehouse();
        if warehouse.external(&table).await?.is_some() {
            return Err(medlake_views::Error::WrongObjectType {
                name: table.to_string(),
                is: "an external table",
                expected: "a Delta table",
            }
            .into());
        }
        if warehouse.table_exists(&table).await? && self.views().view(&table).await?.is_some() {
            return Err(medlake_views::Error::WrongObjectType {
                name: table.to_string(),
                is: "a materialized view",
                expected: "a table (its rows come from REFRESH MATERIALIZED VIEW)",
            }
            .into());
        }
        let (provider, _) = warehouse.table_provider(&table, None).await?;
        Ok((table, provider.schema()))
    }

    /// Appends `batches` to `table` in one commit that records `keys` (the idempotency keys of
    /// the requests answered); with `create`, a missing table is created by that commit.
    /// Schema enforcement is INSERT's: a batch that does not fit writes nothing.
    pub async fn append_keyed(
        &self,
        table: &TableName,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        keys: &[String],
        create: bool,
    ) -> Result<Appended> {
        let provider = MemTable::try_new(schema, vec![batches])?;
        let plan =
            LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(provider)), None)?
                .build()?;
        let options = CommitOptions {
            metadata: vec![(INGEST_METADATA_KEY.to_string(), json!({ "keys": keys }))],
            ..CommitOptions::default()
        };
        let state = Arc::new(self.session().ctx.state());
        let warehouse = self.warehouse();
        if create && !warehouse.table_exists(table).await? {
            let created = warehouse
                .create_table_as_with(table, plan.clone(), state.clone(), true, &options)
                .await?;
            if let Some(outcome) = created {
                return Ok(Appended {
                    rows: outcome.rows,
                    version: outcome.version,
                });
            }
        }
        let outcome = warehouse
            .write_with(table, plan, state, WriteMode::Append, &options)
            .await?;
        Ok(Appended {
            rows: outcome.rows,
            version: outcome.version,
        })
    }

    /// The idempotency keys recorded by the newest `commits` commits of `table` with version
    /// above `after` (all of them when `after` is `None`), and the newest version read.
    pub async fn ingest_keys(
        &self,
        table: &TableName,
        after: Option<u64>,
        commits: usize,
    ) -> Result<(HashSet<String>, Option<u64>)> {
        let warehouse = self.warehouse();
        let versions = warehouse.versions(table).await?;
        let newest = versions.last().copied();
        let mut keys = HashSet::new();
        let fresh: Vec<u64> = versions
            .into_iter()
            .filter(|v| after.is_none_or(|a| *v > a))
            .collect();
        for version in fresh.iter().rev().take(commits) {
            let Some(actions) = warehouse.commit_actions(table, *version).await? else {
                continue;
            };
            for action in actions {
                let recorded = action
                    .get("commitInfo")
                    .and_then(|info| info.get(INGEST_METADATA_KEY))
                    .and_then(|ingest| ingest.get("keys"))
                    .and_then(Value::as_array);
                if let Some(recorded) = recorded {
                    keys.extend(
                        recorded
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string),
                    );
                }
            }
        }
        Ok((keys, newest))
    }
}
