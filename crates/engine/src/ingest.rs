//! Pushed rows (the HTTP ingest door): appends that carry the idempotency keys of the requests
//! they answer in the same Delta commit, so that "was this batch written?" has a durable,
//! atomic answer that survives a crash between the commit and the acknowledgement.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use medlake_lake::{Appender, CommitOptions, TableName};
use serde_json::{Value, json};
use tracing::debug;

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
        let table = Self::ingest_name(name)?;
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

    /// The table `name` (`schema.table`) names as an ingest target, without looking at the
    /// warehouse; the system schema is refused.
    pub fn ingest_name(name: &str) -> Result<TableName> {
        let parts: Vec<&str> = name.split('.').collect();
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
        Ok(table)
    }

    /// Opens `table` for one writer: the table at its newest version, and the idempotency
    /// keys recorded by its newest `window` commits. With `create`, a missing table is fine
    /// (the first [`Self::ingest_append`] creates it); without, it is `TableNotFound`.
    pub async fn ingest_open(
        &self,
        table: &TableName,
        window: usize,
        create: bool,
    ) -> Result<IngestTable> {
        let mut log = IngestTable {
            name: table.clone(),
            appender: None,
            keys: HashMap::new(),
            commits: VecDeque::new(),
            window: window.max(1),
            create,
        };
        self.ingest_load(&mut log).await?;
        Ok(log)
    }

    /// (Re)reads `log` from scratch: the newest version, and the keys of the newest `window`
    /// commits up to it.
    async fn ingest_load(&self, log: &mut IngestTable) -> Result<()> {
        log.appender = None;
        log.keys.clear();
        log.commits.clear();
        let warehouse = self.warehouse();
        let appender = match warehouse.open_appender(&log.name).await {
            Ok(appender) => appender,
            Err(medlake_lake::Error::TableNotFound { .. }) if log.create => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Commits after the opened version are read by the next refresh.
        let newest = appender.version();
        let versions = warehouse.versions(&log.name).await?;
        let recent: Vec<u64> = versions
            .into_iter()
            .filter(|v| *v <= newest)
            .rev()
            .take(log.window)
            .collect();
        for version in recent.into_iter().rev() {
            let keys = self.ingest_keys_of(&log.name, version).await?;
            log.remember(version, keys);
        }
        log.appender = Some(appender);
        Ok(())
    }

    /// The idempotency keys one commit records (none if its log entry is gone, cleaned up
    /// after a checkpoint).
    async fn ingest_keys_of(&self, table: &TableName, version: u64) -> Result<Vec<String>> {
        let Some(actions) = self.warehouse().commit_actions(table, version).await? else {
            return Ok(Vec::new());
        };
        let mut keys = Vec::new();
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
        Ok(keys)
    }

    /// Brings `log` up to the table's newest commit (by anyone), reading only the log entries
    /// after the version it knows. Returns true when the table under that name turned out to
    /// be another one (dropped, perhaps created again) and was read from scratch: rows checked
    /// against the old one's schema must be checked again.
    pub async fn ingest_refresh(&self, log: &mut IngestTable) -> Result<bool> {
        let read = match log.appender.as_mut() {
            Some(appender) => self.warehouse().refresh_appender(appender).await?,
            None if !log.create => None,
            // No table yet: it is there once someone created it.
            None if !self.warehouse().table_exists(&log.name).await? => return Ok(false),
            None => {
                self.ingest_load(log).await?;
                return Ok(false);
            }
        };
        let Some(read) = read else {
            debug!(table = %log.name, "ingest table replaced; reading it again");
            self.ingest_load(log).await?;
            return Ok(true);
        };
        for version in read {
            let keys = self.ingest_keys_of(&log.name, version).await?;
            log.remember(version, keys);
        }
        Ok(false)
    }

    /// Appends `batches` in one commit that records `keys` (the idempotency keys of the
    /// requests answered), directly on top of the version `log` knows; schema enforcement is
    /// INSERT's (a batch that does not fit writes nothing). `Ok(None)` when someone committed
    /// since (or the table was dropped): nothing was committed; [`Self::ingest_refresh`], drop
    /// the requests whose keys are now known, and try again. A table opened with `create`
    /// and still missing is created by the commit.
    pub async fn ingest_append(
        &self,
        log: &mut IngestTable,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        keys: &[String],
    ) -> Result<Option<Appended>> {
        let started = std::time::Instant::now();
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let provider = MemTable::try_new(schema, vec![batches])?;
        let plan: LogicalPlan =
            LogicalPlanBuilder::scan("ingest", provider_as_source(Arc::new(provider)), None)?
                .build()?;
        let options = CommitOptions {
            metadata: vec![(INGEST_METADATA_KEY.to_string(), json!({ "keys": keys }))],
            ..CommitOptions::default()
        };
        let state = Arc::new(self.local_session().ctx.state());
        let warehouse = self.warehouse();
        debug!(table = %log.name, prepare_us = started.elapsed().as_micros() as u64, "ingest append");
        let version = match log.appender.as_mut() {
            Some(appender) => {
                let Some(version) = warehouse.append_to(appender, plan, state, &options).await?
                else {
                    return Ok(None);
                };
                version
            }
            None if log.create => {
                let Some(created) = warehouse
                    .create_table_as_with(&log.name, plan, state, true, &options)
                    .await?
                else {
                    // Someone else created it first.
                    return Ok(None);
                };
                // Read from scratch: whatever was committed right after the creation too.
                self.ingest_load(log).await?;
                return Ok(Some(Appended {
                    rows,
                    version: created.version,
                }));
            }
            None => {
                return Err(medlake_lake::Error::TableNotFound {
                    schema: log.name.schema.clone(),
                    table: log.name.table.clone(),
                }
                .into());
            }
        };
        log.remember(version, keys.to_vec());
        Ok(Some(Appended { rows, version }))
    }
}

/// One table's ingest state as its writer keeps it between commits: the table held open at
/// the newest version the writer knows, and the idempotency keys of its newest `window`
/// commits (older ones are forgotten, so memory stays bounded).
#[derive(Debug)]
pub struct IngestTable {
    name: TableName,
    /// `None` while a table opened with `create` does not exist.
    appender: Option<Appender>,
    /// Key → the version that recorded it.
    keys: HashMap<String, u64>,
    /// The remembered commits that recorded keys, oldest first.
    commits: VecDeque<(u64, Vec<String>)>,
    window: usize,
    create: bool,
}

impl IngestTable {
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// Whether a remembered commit holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The version the writer knows (`None` while the table does not exist).
    pub fn version(&self) -> Option<u64> {
        self.appender.as_ref().map(Appender::version)
    }

    fn remember(&mut self, version: u64, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            self.keys.insert(key.clone(), version);
        }
        self.commits.push_back((version, keys));
        while self.commits.len() > self.window {
            let Some((old, keys)) = self.commits.pop_front() else {
                break;
            };
            for key in keys {
                if self.keys.get(&key) == Some(&old) {
                    self.keys.remove(&key);
                }
            }
        }
    }
}
