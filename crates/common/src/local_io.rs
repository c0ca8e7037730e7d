//! Local file I/O on a fixed pool of threads.
//!
//! `object_store`'s `LocalFileSystem` runs every open, read, write, list and delete on
//! tokio's blocking pool, one `spawn_blocking` each. A burst of them (a FULL refresh reading
//! hundreds of small files of five inputs while it writes its own) grows the pool to as many
//! threads as there are operations in flight, and those threads never exit under a steady
//! light load afterwards: tokio hands each new blocking task to whichever idle thread its
//! condition variable wakes, so each is woken within its 10-second keep-alive. Each keeps the
//! stack pages it touched, so a server's memory stepped up with every such burst (the hour
//! soak of tests/README.md: 72 → 184 threads at the first 15-minute refresh).
//!
//! [`bounded`] wraps a local store so that its operations — those of every local store of the
//! process: the warehouse's, deltalake's, the blob connector's and DataFusion's — run on
//! [`LOCAL_IO_CONCURRENCY`] threads of their own, queued when all are busy. A pool thread has
//! no tokio context, so `LocalFileSystem` does its I/O right there instead of spawning; the
//! caller awaits the answer holding nothing. (A semaphore around the blocking tasks was tried
//! first and deadlocks: a permit is given back only when the task holding it is polled
//! again, and Delta's kernel blocks runtime threads synchronously — `block_on` — while it
//! waits for reads that would need a permit.) File payloads are read in chunks on the pool
//! too, instead of handing the caller an open file that `GetResult::bytes`/`into_stream`
//! would read on unbounded blocking tasks.

use std::fmt;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::executor::block_on;
use futures::stream::{BoxStream, StreamExt as _};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// How many threads do the process's local file I/O. Local reads are served from the page
/// cache or one disk queue: more at once than this only adds threads, not throughput.
pub const LOCAL_IO_CONCURRENCY: usize = 16;

/// The size of one read of a file payload.
const CHUNK: u64 = 4 << 20;

/// How many listed objects one pool job reads.
const LISTED: usize = 1024;

/// How many deletes of a `delete_stream` are queued at once.
const DELETES: usize = 8;

static OPERATIONS: AtomicU64 = AtomicU64::new(0);
static WAITED: AtomicU64 = AtomicU64::new(0);
/// Operations queued or running.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// What the pool did since the process started, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIoStats {
    /// Operations run on the pool.
    pub operations: u64,
    /// Of those, how many found every pool thread busy and waited in the queue.
    pub waited: u64,
    /// Operations queued or running now.
    pub in_flight: u64,
}

/// The pool's counters now.
pub fn stats() -> LocalIoStats {
    LocalIoStats {
        operations: OPERATIONS.load(Ordering::Relaxed),
        waited: WAITED.load(Ordering::Relaxed),
        in_flight: PENDING.load(Ordering::Relaxed),
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue of the pool, whose threads start with the first operation.
fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..LOCAL_IO_CONCURRENCY {
            let receiver = receiver.clone();
            // A thread that cannot start leaves the others to do the work.
            let _ = std::thread::Builder::new()
                .name(format!("medlake-io-{i}"))
                .spawn(move || work(&receiver));
        }
        sender
    })
}

fn work(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(job) = job else { return };
        // A panicking operation fails its caller (its answer is never sent), not the pool.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

fn failed(reason: &'static str) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: reason.into(),
    }
}

/// One operation counted in [`PENDING`] until dropped.
struct Pending;

impl Drop for Pending {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `job` on the pool and waits for its answer without holding a thread.
async fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> object_store::Result<T> {
    OPERATIONS.fetch_add(1, Ordering::Relaxed);
    if PENDING.fetch_add(1, Ordering::Relaxed) >= LOCAL_IO_CONCURRENCY as u64 {
        WAITED.fetch_add(1, Ordering::Relaxed);
    }
    let (answer, answered) = futures::channel::oneshot::channel();
    // Counted out when the job ends, panicking or not, or is never run.
    let pending = Pending;
    let job: Job = Box::new(move || {
        let result = job();
        drop(pending);
        let _ = answer.send(result);
    });
    if pool().send(job).is_err() {
        return Err(failed("the local I/O threads are gone"));
    }
    answered
        .await
        .map_err(|_| failed("a local file operation panicked"))
}

/// `inner` (a local file system store) with its operations run on the process's I/O pool. A
/// store that is bounded already is returned as it is.
pub fn bounded(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    if inner.to_string().starts_with(BOUNDED) {
        return inner;
    }
    Arc::new(Bounded { inner })
}

/// How a bounded store names itself (`Display`).
const BOUNDED: &str = "Bounded(";

/// A store whose operations run on the process's local I/O pool.
#[derive(Debug)]
struct Bounded {
    inner: Arc<dyn ObjectStore>,
}

impl fmt::Display for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{BOUNDED}{})", self.inner)
    }
}

/// A listing read on the pool, [`LISTED`] objects a job (the stream is made there, so a
/// local listing walks its folders in place instead of on blocking tasks).
fn pooled_listing(
    list: impl FnOnce() -> BoxStream<'static, object_store::Result<ObjectMeta>> + Send + 'static,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    type Listing = BoxStream<'static, object_store::Result<ObjectMeta>>;
    enum State<F> {
        Start(F),
        Listing(Listing),
        Done,
    }
    let next_chunk = |mut listing: Listing| {
        let mut chunk = Vec::new();
        while chunk.len() < LISTED {
            match block_on(listing.next()) {
                Some(item) => chunk.push(item),
                None => return (chunk, None),
            }
        }
        (chunk, Some(listing))
    };
    futures::stream::unfold(State::Start(list), move |state| async move {
        let answer = match state {
            State::Start(list) => run(move || next_chunk(list())).await,
            State::Listing(listing) => run(move || next_chunk(listing)).await,
            State::Done => return None,
        };
        let (chunk, rest) = match answer {
            Ok(answer) => answer,
            Err(e) => return Some((futures::stream::iter(vec![Err(e)]), State::Done)),
        };
        let state = rest.map_or(State::Done, State::Listing);
        Some((futures::stream::iter(chunk), state))
    })
    .flatten()
    // Callers may poll a finished stream again (Delta's kernel does): it stays finished.
    .fuse()
    .boxed()
}

/// Reads `range` of `file` lazily in chunks, each a job of the pool.
fn chunked(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let file = Arc::new(file);
    futures::stream::unfold(range.start, move |offset| {
        let file = file.clone();
        let end = range.end;
        async move {
            if offset >= end {
                return None;
            }
            let len = (end - offset).min(CHUNK);
            let read = run(move || read_at(&file, offset, len)).await;
            let bytes = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    let e = object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    };
                    return Some((Err(e), end));
                }
                Err(e) => return Some((Err(e), end)),
            };
            Some((Ok(bytes), offset + len))
        }
    })
    .fuse()
    .boxed()
}

fn read_at(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt as _;
    let mut buffer = vec![0; len as usize];
    file.read_exact_at(&mut buffer, offset)?;
    Ok(buffer.into())
}

#[async_trait]
impl ObjectStore for Bounded {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let (inner, location) = (self.inner.clone(), location.clone());
        run(move || block_on(inner.put_opts(&location, payload, opts))).await?
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let (inner, location) = (self.inner.clone(), location.clone());
        let upload = run(move || block_on(inner.put_multipart_opts(&location, opts))).await??;
        Ok(Box::new(BoundedUpload {
            upload: Arc::new(Mutex::new(upload)),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let (inner, location) = (self.inner.clone(), location.clone());
        let result = run(move || block_on(inner.get_opts(&location, options))).await??;
        let payload = match result.payload {
            GetResultPayload::File(file, _) => {
                GetResultPayload::Stream(chunked(file, result.range.clone()))
            }
            GetResultPayload::Stream(stream) => GetResultPayload::Stream(stream),
        };
        Ok(GetResult { payload, ..result })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let (inner, location, ranges) = (self.inner.clone(), location.clone(), ranges.to_vec());
        run(move || block_on(inner.get_ranges(&location, &ranges))).await?
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        locations
            .map(move |location| {
                let inner = inner.clone();
                async move {
                    let location = location?;
                    let deleted = run(move || {
                        let one = futures::stream::iter([Ok(location)]).boxed();
                        block_on(inner.delete_stream(one).next())
                    })
                    .await?;
                    deleted.unwrap_or_else(|| Err(failed("a delete answered nothing")))
                }
            })
            .buffered(DELETES)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, prefix) = (self.inner.clone(), prefix.cloned());
        pooled_listing(move || inner.list(prefix.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (inner, prefix, offset) = (self.inner.clone(), prefix.cloned(), offset.clone());
        pooled_listing(move || inner.list_with_offset(prefix.as_ref(), &offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let (inner, prefix) = (self.inner.clone(), prefix.cloned());
        run(move || block_on(inner.list_with_delimiter(prefix.as_ref()))).await?
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let (inner, from, to) = (self.inner.clone(), from.clone(), to.clone());
        run(move || block_on(inner.copy_opts(&from, &to, options))).await?
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let (inner, from, to) = (self.inner.clone(), from.clone(), to.clone());
        run(move || block_on(inner.rename_opts(&from, &to, options))).await?
    }
}

/// A multipart upload whose parts, completion and abort run on the pool.
#[derive(Debug)]
struct BoundedUpload {
    upload: Arc<Mutex<Box<dyn MultipartUpload>>>,
}

impl BoundedUpload {
    async fn on_pool<T: Send + 'static>(
        &self,
        step: impl FnOnce(&mut dyn MultipartUpload) -> T + Send + 'static,
    ) -> object_store::Result<T> {
        let upload = self.upload.clone();
        run(move || {
            step(
                upload
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut(),
            )
        })
        .await
    }
}

#[async_trait]
impl MultipartUpload for BoundedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        // A local part takes its place in the file now; it is written when polled, which
        // happens on the pool.
        let part = self
            .upload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put_part(data);
        Box::pin(async move { run(move || block_on(part)).await? })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.on_pool(|upload| block_on(upload.complete())).await?
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.on_pool(|upload| block_on(upload.abort())).await?
    }
}

#[cfg(test)]
mod tests;
