use std::sync::atomic::AtomicUsize;

use object_store::local::LocalFileSystem;
use object_store::{ObjectStoreExt as _, PutMode};

use super::*;

/// One range of one byte.
#[allow(clippy::single_range_in_vec_init)] // a list of ranges, not a range's elements
const ONE: [Range<u64>; 1] = [0..1];

fn local(dir: &tempfile::TempDir) -> (Arc<dyn ObjectStore>, Path) {
    let root = Path::from_filesystem_path(dir.path()).unwrap();
    (bounded(Arc::new(LocalFileSystem::new())), root)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_of_a_local_store_behaves_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (store, root) = local(&dir);
    let a = root.clone().join("t").join("_delta_log").join("0.json");
    store
        .put(&a, PutPayload::from_static(b"commit"))
        .await
        .unwrap();
    let again = store
        .put_opts(&a, PutPayload::from_static(b"x"), PutMode::Create.into())
        .await;
    assert!(matches!(
        again,
        Err(object_store::Error::AlreadyExists { .. })
    ));

    // A file larger than a chunk, read whole, by ranges across chunk edges and by head.
    let body = pattern((2 * CHUNK + 12_345) as usize);
    let big = root.clone().join("t").join("part-0.parquet");
    let mut upload = store.put_multipart(&big).await.unwrap();
    for part in body.chunks(3 << 20) {
        upload
            .put_part(PutPayload::from(part.to_vec()))
            .await
            .unwrap();
    }
    upload.complete().await.unwrap();
    assert_eq!(store.get(&big).await.unwrap().bytes().await.unwrap(), body);
    let edge = (CHUNK - 10)..(2 * CHUNK + 7);
    let got = store.get_range(&big, edge.clone()).await.unwrap();
    assert_eq!(got, body[edge.start as usize..edge.end as usize]);
    let ranges = store
        .get_ranges(&big, &[0..3, 5..5, CHUNK..CHUNK + 1])
        .await
        .unwrap();
    assert_eq!(ranges[0], body[0..3]);
    assert!(ranges[1].is_empty());
    assert_eq!(ranges[2], body[CHUNK as usize..CHUNK as usize + 1]);
    let streamed: Vec<Bytes> = store
        .get(&big)
        .await
        .unwrap()
        .into_stream()
        .map(|chunk| chunk.unwrap())
        .collect()
        .await;
    assert_eq!(streamed.len(), 3, "read in 4 MiB chunks");
    assert_eq!(streamed.concat(), body);
    assert_eq!(store.head(&big).await.unwrap().size, body.len() as u64);
    let missing = store.get(&root.clone().join("nothing")).await;
    assert!(matches!(missing, Err(object_store::Error::NotFound { .. })));

    let copied = root.clone().join("t").join("copy.json");
    store.copy(&a, &copied).await.unwrap();
    let renamed = root.clone().join("t").join("renamed.json");
    store.rename(&copied, &renamed).await.unwrap();
    assert_eq!(
        store.get(&renamed).await.unwrap().bytes().await.unwrap(),
        &b"commit"[..]
    );
    let listed = store
        .list_with_delimiter(Some(&root.clone().join("t")))
        .await
        .unwrap();
    assert_eq!(listed.objects.len(), 2);
    assert_eq!(listed.common_prefixes.len(), 1);

    for i in 0..30 {
        let path = root.clone().join("many").join(format!("{i}.json"));
        store
            .put(&path, PutPayload::from_static(b"{}"))
            .await
            .unwrap();
    }
    let many = root.clone().join("many");
    assert_eq!(store.list(Some(&many)).count().await, 30);
    let paths = store
        .list(Some(&many))
        .map(|meta| meta.map(|meta| meta.location));
    let deleted: Vec<_> = store.delete_stream(paths.boxed()).collect().await;
    assert_eq!(deleted.len(), 30);
    assert!(deleted.iter().all(|d| d.is_ok()));
    assert_eq!(store.list(Some(&many)).count().await, 0);
    store.delete(&renamed).await.unwrap();
    // Bounding a bounded store changes nothing (twice, it could wait for ever).
    let again = bounded(store.clone());
    assert!(Arc::ptr_eq(&again, &store));
}

/// A store whose every read takes a while, done in place off a runtime and on a blocking task
/// on one (as `LocalFileSystem` does); it counts the reads running at once.
#[derive(Debug, Default)]
struct Slow {
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    running: AtomicUsize,
    most: AtomicUsize,
}

impl fmt::Display for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slow")
    }
}

impl Counts {
    fn read(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the slow store answers to anything but reads (the tests only read).
fn not_here(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.to_string(),
        implementer: "Slow".to_string(),
    }
}

#[async_trait]
impl ObjectStore for Slow {
    async fn put_opts(
        &self,
        _: &Path,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(not_here("put"))
    }
    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(not_here("put_multipart"))
    }
    async fn get_opts(&self, _: &Path, _: GetOptions) -> object_store::Result<GetResult> {
        Err(not_here("get"))
    }
    async fn get_ranges(
        &self,
        _: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let n = ranges.len();
        let counts = self.counts.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || counts.read())
                .await
                .map_err(|_| failed("the read panicked"))?,
            Err(_) => counts.read(),
        }
        Ok(vec![Bytes::new(); n])
    }
    fn delete_stream(
        &self,
        _: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        futures::stream::iter([Err(not_here("delete"))]).boxed()
    }
    fn list(&self, _: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        futures::stream::iter([Err(not_here("list"))]).boxed()
    }
    async fn list_with_delimiter(&self, _: Option<&Path>) -> object_store::Result<ListResult> {
        Err(not_here("list_with_delimiter"))
    }
    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(not_here("copy"))
    }
}

/// Threads a runtime started, and the most reads running at once, while 96 concurrent reads
/// ran through `store` (which wraps the store of `counts`).
fn burst(store: Arc<dyn ObjectStore>, counts: &Counts) -> (usize, usize) {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    runtime.block_on(async move {
        let reads = (0..96).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let path = Path::from(format!("f{i}"));
                store.get_ranges(&path, &ONE).await.unwrap()
            })
        });
        for read in futures::future::join_all(reads).await {
            assert_eq!(read.unwrap().len(), 1);
        }
    });
    runtime.shutdown_background();
    (
        started.load(Ordering::SeqCst),
        counts.most.load(Ordering::SeqCst),
    )
}

#[test]
fn a_burst_of_reads_runs_on_the_pool_and_grows_no_blocking_pool() {
    let slow = Slow::default();
    let counts = slow.counts.clone();
    let (threads, most) = burst(Arc::new(slow), &counts);
    // Unbounded, the runtime starts a blocking thread per read in flight (the load is real).
    assert!(
        threads > 2 + 4 * LOCAL_IO_CONCURRENCY,
        "{threads} threads unbounded"
    );
    assert!(
        most > 4 * LOCAL_IO_CONCURRENCY,
        "{most} reads at once unbounded"
    );

    let slow = Slow::default();
    let counts = slow.counts.clone();
    let (threads, most) = burst(bounded(Arc::new(slow)), &counts);
    assert_eq!(
        threads, 2,
        "only the runtime's workers: the reads ran on the pool"
    );
    assert!(most <= LOCAL_IO_CONCURRENCY, "{most} reads at once bounded");
    assert!(
        stats().waited > 0,
        "reads queued for the pool: {:?}",
        stats()
    );
}

/// A runtime thread that blocks synchronously on a bounded read (as Delta's kernel does with
/// `block_on`) while its own tasks' bounded reads are queued or running still gets its answer:
/// nothing the pool needs is held by a task that cannot be polled.
#[test]
fn a_runtime_blocked_on_a_read_does_not_stop_the_pool() {
    let store = bounded(Arc::new(Slow::default()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    runtime.block_on(async move {
        let reads: Vec<_> = (0..3 * LOCAL_IO_CONCURRENCY)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let path = Path::from(format!("f{i}"));
                    store.get_ranges(&path, &ONE).await.unwrap()
                })
            })
            .collect();
        // The tasks submit their reads, then the only runtime thread blocks.
        tokio::task::yield_now().await;
        let blocked = store.clone();
        let helper = std::thread::spawn(move || {
            let read = block_on(blocked.get_ranges(&Path::from("sync"), &ONE));
            let _ = done.send(read.map(|r| r.len()));
        });
        let answer = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the blocked thread's read was answered");
        assert_eq!(answer.unwrap(), 1);
        helper.join().unwrap();
        for read in reads {
            assert_eq!(read.await.unwrap().len(), 1);
        }
    });
}

/// An operation that panics on the pool fails its caller with an error, and the pool carries
/// on.
#[tokio::test]
async fn a_panicking_operation_fails_its_caller_and_not_the_pool() {
    let failed = run(|| -> u8 { panic!("an operation panics") }).await;
    assert!(failed.is_err());
    assert_eq!(run(|| 7u8).await.unwrap(), 7);
}
