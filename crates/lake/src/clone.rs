//! `CREATE TABLE t SHALLOW CLONE s` and `DEEP CLONE`: a new Delta table whose version 0 holds
//! the source's schema, properties and files at one version of it.
//!
//! - SHALLOW: no data is copied; the new log's `add` actions name the source's files by
//!   absolute URL (deltalake 1.1 reads those). Writes to the clone land in its own folder and
//!   its VACUUM only deletes files in its own folder, never the source's; but a VACUUM of the
//!   source can delete files the clone still reads, and a backup of the clone holds only
//!   those references.
//! - DEEP: the files are copied into the clone's folder first; the clone is independent.
//!
//! Either way the clone exists once its version 0 is written (one put-if-absent): a clone that
//! stops half way leaves no table (copied files in a folder without a log; CREATE clears it).

use chrono::Utc;
use deltalake::kernel::Action;
use futures::TryStreamExt as _;
use object_store::{PutMode, PutOptions, PutPayload};
use serde_json::{Value, json};
use tracing::instrument;
use url::Url;

use crate::backup::{Place, copy_all};
use crate::error::{Error, Result};
use crate::warehouse::{TableName, TimeTravel, Warehouse};

/// What a clone did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloned {
    /// The source's version the clone holds.
    pub source_version: u64,
    pub files: u64,
    /// Bytes copied (0 for a shallow clone).
    pub bytes_copied: u64,
}

impl Warehouse {
    /// Clones `source` (at `at`, default its latest version) as the new table `target`.
    /// `Ok(None)` when `target` exists and `if_not_exists` was given.
    #[instrument(skip(self), fields(source = %source, target = %target))]
    pub async fn clone_table(
        &self,
        source: &TableName,
        at: Option<&TimeTravel>,
        target: &TableName,
        deep: bool,
        if_not_exists: bool,
    ) -> Result<Option<Cloned>> {
        let refused = |reason: String| Error::CloneRefused {
            schema: source.schema.clone(),
            table: source.table.clone(),
            reason,
        };
        if self.external(source).await?.is_some() {
            return Err(refused(
                "it is an external table; CREATE TABLE ... AS SELECT copies its rows".into(),
            ));
        }
        let table = self.open_table_as_of(source, at).await?;
        let delta = |e| Error::delta(&source.schema, &source.table, e);
        let source_version = table.version().unwrap_or_default();
        let files: Vec<_> = table
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .map_err(delta)?;
        let state = table.snapshot().map_err(delta)?;
        let (metadata, protocol) = (state.metadata().clone(), state.protocol().clone());
        let source_url = self.table_url(source)?;
        let (mut adds, mut rels) = (Vec::new(), Vec::new());
        for file in &files {
            // The action as the log holds it, to be written again (deltalake would rather we
            // used its Arrow arrays; a clone's commit is made of actions).
            #[allow(deprecated)]
            let mut add = file.add_action();
            if add.deletion_vector.is_some() {
                return Err(refused("its files have deletion vectors".into()));
            }
            let absolute = Url::parse(&add.path).is_ok();
            if deep && absolute {
                return Err(refused(
                    "it is itself a shallow clone; DEEP CLONE its source, or CREATE TABLE ... AS SELECT".into(),
                ));
            }
            if deep {
                rels.push((file.object_store_path().to_string(), add.size.max(0) as u64));
            } else if !absolute {
                add.path = source_url
                    .join(&add.path)
                    .map_err(|e| refused(format!("file {}: {e}", add.path)))?
                    .to_string();
            }
            add.data_change = true;
            adds.push(add);
        }
        if !self.prepare_create(target, if_not_exists).await? {
            return Ok(None);
        }
        let place = Place::of(self);
        let from = format!("{}/{}", source.schema, source.table);
        let to = format!("{}/{}", target.schema, target.table);
        let (_, bytes_copied) = copy_all(&place, &from, &place, &to, rels).await?;
        let info = json!({ "commitInfo": {
            "timestamp": Utc::now().timestamp_millis(),
            "operation": if deep { "DEEP CLONE" } else { "SHALLOW CLONE" },
            "operationParameters": {
                "source": source.to_string(),
                "sourceVersion": source_version,
                "isShallow": !deep,
            },
            "operationMetrics": { "numFiles": adds.len(), "copiedBytes": bytes_copied },
            "engineInfo": "medlake",
        }});
        let mut metadata = to_json(&Action::Metadata(metadata))?;
        metadata["metaData"]["id"] = Value::from(uuid::Uuid::new_v4().to_string());
        metadata["metaData"]["name"] = Value::from(target.table.clone());
        metadata["metaData"]["createdTime"] = Value::from(Utc::now().timestamp_millis());
        let mut lines = vec![info, to_json(&Action::Protocol(protocol))?, metadata];
        for add in &adds {
            lines.push(to_json(&Action::Add(add.clone()))?);
        }
        let body: Vec<String> = lines.iter().map(Value::to_string).collect();
        self.put_first_commit(target, body.join("\n")).await?;
        Ok(Some(Cloned {
            source_version,
            files: adds.len() as u64,
            bytes_copied,
        }))
    }

    /// Writes version 0 of `name` (put-if-absent: a table created meanwhile wins).
    async fn put_first_commit(&self, name: &TableName, body: String) -> Result<()> {
        let path = self
            .path(&[&name.schema, &name.table, "_delta_log"])
            .join(format!("{:020}.json", 0));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .object_store()
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Self::exists_error(name)),
            Err(e) => Err(Error::store(&path, e)),
        }
    }
}

fn to_json(action: &Action) -> Result<Value> {
    serde_json::to_value(action).map_err(|e| Error::Internal(format!("a Delta action: {e}")))
}
