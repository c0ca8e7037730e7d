//! Writes whose data files another process wrote (a cluster's executors): this process
//! decides whether a table can take such a write ([`Warehouse::write_elsewhere`]), and
//! commits the files in one commit ([`Warehouse::commit_written`]), exactly as its own write
//! of the same rows would have.

use arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use serde_json::Value;
use tracing::debug;

use crate::error::{Error, Result};
use crate::warehouse::{
    CommitOptions, PAGE_ROWS, ROW_GROUP_ROWS, TableName, TimeTravel, Warehouse, WriteMode,
    WriteOutcome, blind_appendable, cluster_columns,
};

/// Where and how another process writes a table's data files, as this one would.
#[derive(Debug, Clone)]
pub struct WriteTarget {
    /// The table's folder.
    pub table: String,
    /// The table's columns: the written rows must have them.
    pub schema: SchemaRef,
    /// Rows per Parquet row group and per page, and the size past which a file is closed.
    pub row_group_rows: usize,
    pub page_rows: usize,
    pub file_size: u64,
    /// The columns whose row groups carry a bloom filter (`crate::bloom`).
    pub bloom_columns: Vec<String>,
}

impl Warehouse {
    /// Where another process may write the data files of a write into `name` with `options`,
    /// or why this process must write them: writes that replace only some rows, that sort
    /// the rows (clustered tables), that must drop erased identifiers' rows, that check
    /// constraints or invariants, or into medlake's own tables.
    pub async fn write_elsewhere(
        &self,
        name: &TableName,
        options: &CommitOptions,
    ) -> Result<std::result::Result<WriteTarget, String>> {
        if built_in(name) {
            return Ok(Err("medlake's own tables are written here".into()));
        }
        if options.replace_where.is_some() {
            return Ok(Err("it replaces only some rows".into()));
        }
        if !options.cluster_by.is_empty() {
            return Ok(Err("its rows are sorted by the CLUSTER BY columns".into()));
        }
        if !self.suppression().await?.is_empty() {
            return Ok(Err(
                "the rows of erased identifiers are held back here".into()
            ));
        }
        let table = self.open_at(name, options.base_version).await?;
        let snapshot = table
            .snapshot()
            .map_err(|e| Error::delta(&name.schema, &name.table, e))?;
        if !cluster_columns(snapshot.metadata().configuration()).is_empty() {
            return Ok(Err("the table is clustered (rows sorted on write)".into()));
        }
        if !blind_appendable(&table) {
            return Ok(Err(
                "the table has constraints or writer features only this server's writer checks"
                    .into(),
            ));
        }
        Ok(Ok(WriteTarget {
            table: self.table_url(name)?.to_string(),
            schema: snapshot.snapshot().arrow_schema(),
            row_group_rows: ROW_GROUP_ROWS,
            page_rows: PAGE_ROWS,
            file_size: snapshot.table_config().target_file_size().get(),
            bloom_columns: crate::bloom::bloom_filter_columns(snapshot.metadata().configuration()),
        }))
    }

    /// Commits data files written elsewhere into `name` ([`Self::write_elsewhere`]) in one
    /// commit: appended, or replacing every row (`mode`), on top of `options.base_version`
    /// when given (anyone's commit since: [`Error::Conflict`], nothing committed). `rows` is
    /// the number of rows in `adds`.
    pub async fn commit_written(
        &self,
        name: &TableName,
        adds: Vec<Add>,
        rows: u64,
        mode: WriteMode,
        options: &CommitOptions,
    ) -> Result<WriteOutcome> {
        let started = std::time::Instant::now();
        let table = self.open_at(name, options.base_version).await?;
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let snapshot = table.snapshot().map_err(delta)?;
        let read_version = snapshot.version();
        let mut actions: Vec<Action> = Vec::with_capacity(adds.len());
        if mode == WriteMode::Overwrite {
            actions.extend(
                snapshot
                    .log_data()
                    .iter()
                    .map(|file| Action::Remove(file.remove_action(true))),
            );
        }
        let removed = actions.len();
        let added = adds.len();
        actions.extend(adds.into_iter().map(Action::Add));
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let operation = DeltaOperation::Write {
            mode: match mode {
                WriteMode::Append => SaveMode::Append,
                WriteMode::Overwrite => SaveMode::Overwrite,
            },
            partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
            predicate: None,
        };
        // The operation metrics deltalake's write records (DESCRIBE HISTORY reads them).
        let metrics = serde_json::json!({
            "execution_time_ms": started.elapsed().as_millis() as u64,
            "num_added_files": added,
            "num_added_rows": rows,
            "num_partitions": 0,
            "num_removed_files": removed,
            "num_retries": 0,
        });
        let mut options = options.clone();
        options
            .metadata
            .push(("operationMetrics".to_string(), metrics));
        options
            .metadata
            .push(("readVersion".to_string(), Value::from(read_version)));
        let committed = CommitBuilder::from(options.properties())
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(delta)?;
        debug!(
            version = committed.version,
            rows, added, removed, "files written elsewhere committed"
        );
        Ok(WriteOutcome {
            version: committed.version as u64,
            rows,
        })
    }

    async fn open_at(
        &self,
        name: &TableName,
        version: Option<u64>,
    ) -> Result<deltalake::DeltaTable> {
        match version {
            Some(version) => {
                self.open_table_as_of(name, Some(&TimeTravel::Version(version)))
                    .await
            }
            None => self.open_table(name).await,
        }
    }
}

fn built_in(name: &TableName) -> bool {
    name.schema == "system"
}
