//! A table's sidecar files: objects medlake keeps beside a table's data, under its folder's
//! `_medlake_sidecar/`, that no Delta reader lists (they are in no commit), VACUUM leaves
//! alone (it skips folders whose name starts with `_`) and DROP deletes with the table. What
//! a sidecar holds must be derivable again: a lost or stale one is recomputed, never trusted
//! (its writer tags it with the table version it describes).

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};

use crate::error::{Error, Result};
use crate::warehouse::{TableName, Warehouse};

/// The folder, inside a table's, that holds its sidecar files.
pub const SIDECAR_FOLDER: &str = "_medlake_sidecar";

impl Warehouse {
    fn sidecar_path(&self, name: &TableName, file: &str) -> Result<Path> {
        crate::warehouse::validate_name("sidecar file", file)?;
        Ok(self.path(&[&name.schema, &name.table, SIDECAR_FOLDER, file]))
    }

    /// Writes (or replaces, at once) the sidecar `file` of table `name`.
    pub async fn put_sidecar(&self, name: &TableName, file: &str, bytes: Bytes) -> Result<()> {
        let path = self.sidecar_path(name, file)?;
        self.object_store()
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| Error::store(&path, e))?;
        Ok(())
    }

    /// The sidecar `file` of table `name`; `None` when there is none.
    pub async fn get_sidecar(&self, name: &TableName, file: &str) -> Result<Option<Bytes>> {
        let path = self.sidecar_path(name, file)?;
        match self.object_store().get(&path).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(|e| Error::store(&path, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// Deletes the sidecar `file` of table `name` (nothing when there is none).
    pub async fn delete_sidecar(&self, name: &TableName, file: &str) -> Result<()> {
        let path = self.sidecar_path(name, file)?;
        match self.object_store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(&path, e)),
        }
    }
}
