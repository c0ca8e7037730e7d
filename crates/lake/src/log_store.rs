//! The Delta log store every table of the warehouse is opened with: deltalake's default one
//! (commits by put-if-absent), handing out a Delta kernel engine that reads a table's log a
//! few files at a time.
//!
//! deltalake 1.1.3 builds its kernel engine with the kernel's defaults: up to 1,000 log files
//! opened at once, each read in batches of 1,000 actions. Every open JSON commit allocates its
//! decoder up front (arrow-json's tape: `batch_size × (2 + 2 × fields)` elements and offsets,
//! ~2.6 MB for the log's ~80 fields), so replaying the 100 commits of a busy table since its
//! checkpoint held ~260 MB of decoders for files of 1-2 KB; in the soak such decoders were the
//! largest single item of the heap at any moment (`arrow_json::reader::tape::TapeDecoder::new`
//! under `buoyant_kernel_engine::json::open_json_file`: 20-74 MB of 125-200 MB sampled live).
//! Here a replay opens at most [`LOG_FILES_AT_ONCE`] files in batches of [`LOG_BATCH_ROWS`]
//! actions, in the same order (the kernel's read is ordered whatever its readahead). With
//! batches of 512 the decoders still peaked at 62 MB of the 185 MB sampled live at the soak's
//! highest moment (the 15-minute refresh wave, several tables replayed at once): a commit
//! holds a few actions, so a batch of 64 (~0.2 MB of decoder) loses nothing.

use std::num::NonZero;
use std::sync::Arc;

use async_trait::async_trait;
use buoyant_kernel::Engine;
use buoyant_kernel_engine::DefaultEngineBuilder;
use buoyant_kernel_engine::executor::tokio::{TokioBackgroundExecutor, TokioMultiThreadExecutor};
use bytes::Bytes;
use deltalake::DeltaResult;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{
    CommitOrBytes, LogStore, LogStoreConfig, LogStoreFactory, ObjectStoreRef, StorageConfig,
    default_logstore,
};
use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;
use uuid::Uuid;

/// Log files a replay opens at once (the kernel's default is 1,000): enough to overlap a
/// cloud store's round trips, few enough that their decoders stay small.
pub const LOG_FILES_AT_ONCE: usize = 16;

/// Actions per batch read from a log file or checkpoint (the kernel's default is 1,000).
pub const LOG_BATCH_ROWS: usize = 64;

/// deltalake's default log store, with [`BoundedReplay`]'s engine, for every scheme the
/// warehouse opens (`file` and the cloud schemes).
pub(crate) struct WarehouseLogStores;

impl LogStoreFactory for WarehouseLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(Arc::new(BoundedReplay {
            inner: default_logstore(prefixed_store, root_store, location, options),
        }))
    }
}

/// A log store that is its inner one in everything but [`LogStore::engine`].
pub(crate) struct BoundedReplay {
    inner: Arc<dyn LogStore>,
}

/// The kernel engine over `store` that deltalake would build, reading at most
/// [`LOG_FILES_AT_ONCE`] files at a time in batches of [`LOG_BATCH_ROWS`].
pub(crate) fn bounded_engine(store: Arc<dyn ObjectStore>) -> Arc<dyn Engine> {
    let (Some(files), Some(rows)) = (
        NonZero::new(LOG_FILES_AT_ONCE),
        NonZero::new(LOG_BATCH_ROWS),
    ) else {
        unreachable!("both bounds are non-zero constants")
    };
    let builder = DefaultEngineBuilder::new(store)
        .with_buffer_size(files)
        .with_batch_size(rows);
    // As deltalake does: a multi-thread runtime runs the kernel's tasks on itself, anything
    // else (a current-thread runtime, no runtime) on a background thread of their own.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Arc::new(
                builder
                    .with_task_executor(Arc::new(TokioMultiThreadExecutor::new(handle)))
                    .build(),
            )
        }
        _ => Arc::new(
            builder
                .with_task_executor(Arc::new(TokioBackgroundExecutor::new()))
                .build(),
        ),
    }
}

#[async_trait]
impl LogStore for BoundedReplay {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: u64) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: u64,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: u64,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: u64) -> DeltaResult<u64> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn engine(&self, operation_id: Option<Uuid>) -> Arc<dyn Engine> {
        bounded_engine(self.inner.root_object_store(operation_id))
    }

    fn to_uri(&self, location: &Path) -> String {
        self.inner.to_uri(location)
    }

    fn root_url(&self) -> &Url {
        self.inner.root_url()
    }

    fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    fn transaction_url(&self, operation_id: Option<Uuid>) -> DeltaResult<Url> {
        self.inner.transaction_url(operation_id)
    }

    async fn is_delta_table_location(&self) -> DeltaResult<bool> {
        self.inner.is_delta_table_location().await
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }

    fn object_store_url(&self) -> deltalake::datafusion::execution::object_store::ObjectStoreUrl {
        self.inner.object_store_url()
    }
}

#[cfg(test)]
mod tests;
