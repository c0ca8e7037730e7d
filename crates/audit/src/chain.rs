//! The chain's place in the Delta log: what an audit commit's `commitInfo` records, and
//! where a writer continues.

use medlake_lake::Warehouse;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::table::{COMMIT_KEY, FORMAT, genesis, table_name};

/// The newest commit of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its Delta version of `system.audit` (0: the table's creation, no event yet).
    pub version: u64,
    /// The `seq` of its last event (0 before the first event).
    pub seq: i64,
    /// Its hash: the next commit's `prev_hash`.
    pub hash: String,
}

/// What an audit commit records about itself in its `commitInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommitRecord {
    pub format: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub rows: i64,
    pub prev_hash: String,
    pub hash: String,
}

impl CommitRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "format": self.format,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "rows": self.rows,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        })
    }

    /// The record of a commit, from its actions; `None` if it is not an audit commit.
    pub fn of(actions: &[Value]) -> Option<Self> {
        let info = actions
            .iter()
            .find_map(|a| a.get("commitInfo"))?
            .get(COMMIT_KEY)?;
        Some(Self {
            format: info.get("format")?.as_i64()?,
            first_seq: info.get("first_seq")?.as_i64()?,
            last_seq: info.get("last_seq")?.as_i64()?,
            rows: info.get("rows")?.as_i64()?,
            prev_hash: info.get("prev_hash")?.as_str()?.to_string(),
            hash: info.get("hash")?.as_str()?.to_string(),
        })
    }
}

/// The Delta id of `system.audit` (what its genesis hash is bound to).
pub(crate) async fn table_id(warehouse: &Warehouse) -> Result<String> {
    let name = table_name();
    let table = warehouse.open_table(&name).await?;
    let snapshot = table
        .snapshot()
        .map_err(|e| Error::Internal(format!("system.audit has no snapshot: {e}")))?;
    Ok(snapshot.metadata().id().to_string())
}

/// The chain's head at or before `version`: the newest audit commit, skipping the commits
/// that are not (VACUUM's), or the genesis at version 0.
pub(crate) async fn head_at(warehouse: &Warehouse, version: u64, table_id: &str) -> Result<Head> {
    let name = table_name();
    let mut v = version;
    loop {
        let Some(actions) = warehouse.commit_actions(&name, v).await? else {
            return Err(Error::Internal(format!(
                "system.audit: the chain's head cannot be found, log entry {v} is gone"
            )));
        };
        if let Some(record) = CommitRecord::of(&actions) {
            if record.format != FORMAT {
                return Err(Error::Internal(format!(
                    "system.audit version {v} is of audit format {}, this medlake writes {FORMAT}",
                    record.format
                )));
            }
            return Ok(Head {
                version: v,
                seq: record.last_seq,
                hash: record.hash,
            });
        }
        if v == 0 {
            return Ok(Head {
                version: 0,
                seq: 0,
                hash: genesis(table_id),
            });
        }
        v -= 1;
    }
}
