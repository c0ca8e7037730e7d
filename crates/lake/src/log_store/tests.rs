use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use deltalake::DeltaTableBuilder;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::*;

/// A local store that counts the reads whose payloads are open (from `get` until the
/// payload is dropped) and remembers the most at once.
#[derive(Debug)]
struct Counting {
    inner: LocalFileSystem,
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// Gives its count back when the payload it rides in is dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counting")
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, opts: GetOptions) -> object_store::Result<GetResult> {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let open = Open(self.open.clone());
        let result = self.inner.get_opts(location, opts).await?;
        let (meta, range, attributes) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
        );
        let bytes = result.bytes().await?;
        let payload = futures::stream::once(async move {
            let _open = open;
            Ok(bytes)
        });
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload.boxed()),
            meta,
            range,
            attributes,
        })
    }
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
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
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        opts: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, opts).await
    }
}

/// A table of `commits` commits without a checkpoint: a protocol and schema, then one added
/// file per commit (the files need not exist to load the log).
fn table_of(dir: &std::path::Path, commits: usize) {
    let log = dir.join("_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    let schema = r#"{\"type\":\"struct\",\"fields\":[{\"name\":\"x\",\"type\":\"long\",\"nullable\":true,\"metadata\":{}}]}"#;
    let first = format!(
        "{{\"protocol\":{{\"minReaderVersion\":1,\"minWriterVersion\":2}}}}\n\
         {{\"metaData\":{{\"id\":\"t\",\"format\":{{\"provider\":\"parquet\",\"options\":{{}}}},\
         \"schemaString\":\"{schema}\",\"partitionColumns\":[],\"configuration\":{{}},\
         \"createdTime\":0}}}}\n"
    );
    std::fs::write(log.join(format!("{:020}.json", 0)), first).unwrap();
    for version in 1..commits {
        let add = format!(
            "{{\"add\":{{\"path\":\"part-{version}.parquet\",\"partitionValues\":{{}},\
             \"size\":1,\"modificationTime\":0,\"dataChange\":true}}}}\n"
        );
        std::fs::write(log.join(format!("{version:020}.json")), add).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_replayed_a_few_files_at_a_time() {
    crate::location::register_cloud_schemes();
    let dir = tempfile::tempdir().unwrap();
    table_of(dir.path(), 60);
    let url = Url::from_directory_path(dir.path()).unwrap();
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let store = Arc::new(Counting {
        inner: LocalFileSystem::new(),
        open: open.clone(),
        most: most.clone(),
    });
    let table = DeltaTableBuilder::from_url(url.clone())
        .unwrap()
        .with_storage_backend(store, url)
        .load()
        .await
        .unwrap();
    assert_eq!(table.version(), Some(59));
    assert_eq!(table.snapshot().unwrap().log_data().num_files(), 59);
    assert_eq!(open.load(Ordering::SeqCst), 0);
    // deltalake's own engine held all 60 open at once (checked by raising the bound).
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=LOG_FILES_AT_ONCE + 1).contains(&most),
        "{most} log files open at once"
    );
}
