//! The `fsync` durability mode of file:// warehouses.
//!
//! By default a local warehouse's writes reach the operating system's page cache and are
//! acknowledged then: a power loss can lose commits the last seconds acknowledged (a process
//! crash loses nothing). With [`enable_fsync`] (`[storage] fsync = true`, or
//! `MEDLAKE_FSYNC=on`) every object written — data files, deletion files, checkpoints and the
//! Delta log entry that commits them — is synced to the disk together with the folders that
//! name it (up to the table's folder) before the write returns, so a commit is acknowledged
//! only once it survives a power loss, which is PostgreSQL's promise with `fsync = on`.
//!
//! Every writer reaches the disk through one object store: the warehouse's own (blind
//! appends, markers) and deltalake's (writes, DML, OPTIMIZE), whose `file://` factory is ours
//! ([`register_local_scheme`], which also bounds local I/O). Cloud stores acknowledge a put
//! once it is durable; the mode does not change them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use deltalake::DeltaResult;
use deltalake::logstore::{
    ObjectStoreFactory, ObjectStoreRef, StorageConfig, object_store_factories,
};
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use url::Url;

static FSYNC: AtomicBool = AtomicBool::new(false);
static SYNCED: AtomicU64 = AtomicU64::new(0);

/// Folders above a written file that are synced too (its folder, the table's, the schema's):
/// enough for the first file of a new table or partition to be found after a power loss.
const FOLDERS: usize = 3;

/// Turns the mode on for this process (before the warehouse is opened).
pub fn enable_fsync() {
    FSYNC.store(true, Ordering::SeqCst);
    register_local_scheme();
}

/// Makes deltalake open `file://` tables through [`local_store`] (bounded, and durable while
/// the mode is on) instead of its own unbounded local file system. Idempotent.
pub(crate) fn register_local_scheme() {
    if let Ok(key) = Url::parse("file://") {
        object_store_factories().insert(key, Arc::new(LocalFactory));
    }
}

/// How many files were synced since the process started (for tests and metrics).
pub fn synced_files() -> u64 {
    SYNCED.load(Ordering::Relaxed)
}

/// Whether the mode is on.
pub fn fsync_enabled() -> bool {
    FSYNC.load(Ordering::SeqCst)
}

/// A local store for `url` and the path of `url` in it: its operations share the process's
/// bound on blocking threads (`medlake_common::local_io`), and it is durable while the mode
/// is on.
pub(crate) fn local_store(url: &Url) -> DeltaResult<(ObjectStoreRef, Path)> {
    let path = Path::from_url_path(url.path())?;
    let local = Arc::new(LocalFileSystem::new());
    let store: ObjectStoreRef = if fsync_enabled() {
        Arc::new(Durable { inner: local })
    } else {
        local
    };
    Ok((medlake_common::local_io::bounded(store), path))
}

/// deltalake's store factory for `file://`.
struct LocalFactory;

impl ObjectStoreFactory for LocalFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        local_store(url)
    }
}

/// A local file system whose writes are synced before they return.
#[derive(Debug)]
pub(crate) struct Durable {
    inner: Arc<LocalFileSystem>,
}

impl fmt::Display for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

/// Syncs the file at `location` and the folders above it.
async fn sync(store: &LocalFileSystem, location: &Path) -> object_store::Result<()> {
    let file = store.path_to_filesystem(location)?;
    let synced = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(move || sync_blocking(file))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "Durable",
                source: Box::new(e),
            })?,
        // On a thread of the local I/O pool (`medlake_common::local_io`): in place.
        Err(_) => sync_blocking(file),
    };
    synced.map_err(|e| object_store::Error::Generic {
        store: "Durable",
        source: Box::new(e),
    })
}

fn sync_blocking(file: PathBuf) -> std::io::Result<()> {
    std::fs::File::open(&file)?.sync_all()?;
    SYNCED.fetch_add(1, Ordering::Relaxed);
    let mut folder = file.parent();
    for _ in 0..FOLDERS {
        let Some(dir) = folder else { break };
        std::fs::File::open(dir)?.sync_all()?;
        folder = dir.parent();
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for Durable {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let put = self.inner.put_opts(location, payload, opts).await?;
        sync(&self.inner, location).await?;
        Ok(put)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            upload,
            store: self.inner.clone(),
            location: location.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        sync(&self.inner, to).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        sync(&self.inner, to).await
    }
}

/// A multipart upload synced when it completes.
#[derive(Debug)]
struct DurableUpload {
    upload: Box<dyn MultipartUpload>,
    store: Arc<LocalFileSystem>,
    location: Path,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let put = self.upload.complete().await?;
        sync(&self.store, &self.location).await?;
        Ok(put)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use object_store::ObjectStoreExt as _;

    #[tokio::test]
    async fn every_way_of_writing_reaches_the_file_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let store = Durable {
            inner: Arc::new(LocalFileSystem::new()),
        };
        let root = Path::from_url_path(url.path()).unwrap();
        let a = root.clone().join("t").join("_delta_log").join("0.json");
        store
            .put(&a, PutPayload::from_static(b"commit"))
            .await
            .unwrap();
        // Put-if-absent keeps its meaning.
        let again = store
            .put_opts(
                &a,
                PutPayload::from_static(b"x"),
                object_store::PutMode::Create.into(),
            )
            .await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let b = root.clone().join("t").join("part-0.parquet");
        let mut upload = store.put_multipart(&b).await.unwrap();
        upload
            .put_part(PutPayload::from_static(b"rows"))
            .await
            .unwrap();
        upload.complete().await.unwrap();
        let c = root.clone().join("t").join("copy.json");
        store.copy(&a, &c).await.unwrap();
        for (path, body) in [(&a, &b"commit"[..]), (&b, b"rows"), (&c, b"commit")] {
            let got = store.get(path).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], body);
        }
        assert_eq!(store.list(Some(&root)).count().await, 3);
    }
}
