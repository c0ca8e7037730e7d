//! [`AuditLog`]: events queued by the engine, committed to `system.audit` by one background
//! task, one Delta commit per batch, each commit chained to the one before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use datafusion::catalog::Session;
use medlake_lake::{Appender, CommitOptions, Warehouse};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::chain::{CommitRecord, Head, head_at, table_id};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::table::{COMMIT_KEY, FORMAT, commit_batch, create, plan_of, session, table_name};

/// How the log batches and bounds what it holds.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The longest a read's event waits for its commit (default 1 s). Writes do not wait for
    /// it: each commits at once, together with whatever is queued.
    pub flush_interval: Duration,
    /// The most events held in memory waiting for their commit (default 100,000). Beyond it,
    /// `record_read` and `record_write` refuse (fail closed) rather than wait: the engine calls
    /// them inside statements, and a log that cannot keep up must stop statements, not
    /// memory.
    pub max_queued: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            max_queued: 100_000,
        }
    }
}

/// Concurrent commits by other processes (another medlake on the same warehouse) a commit
/// gives way to before it gives up.
const MAX_CONFLICTS: usize = 64;

/// The audit log of one warehouse: cheap to clone (all clones share one queue and one
/// writer task). The writer task stops when the last clone is dropped (after committing
/// what is queued, if the runtime still runs) or on [`AuditLog::close`].
#[derive(Clone)]
pub struct AuditLog {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.handle.shared.lock();
        f.debug_struct("AuditLog")
            .field("queued", &state.pending.len())
            .field("healthy", &state.healthy)
            .finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
        // The writer commits what is queued, then stops: [`drain`] lets a process wait for
        // that before it exits (a runtime that shuts down cancels the commit).
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let mut closing = CLOSING.lock().unwrap_or_else(|e| e.into_inner());
            closing.retain(|t| !t.is_finished());
            closing.push(task);
        }
    }
}

/// Writer tasks of logs whose last handle was dropped, finishing their last commit.
static CLOSING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits until every audit log of this process that was dropped has committed what it had
/// queued. A command-line process calls it before it exits.
pub async fn drain() {
    let tasks: Vec<JoinHandle<()>> =
        std::mem::take(&mut *CLOSING.lock().unwrap_or_else(|e| e.into_inner()));
    for task in tasks {
        let _ = task.await;
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    settings: Settings,
    /// False for [`AuditLog::disabled`]: every event is dropped and nothing is written.
    enabled: bool,
}

/// A caller of `record_write` or `flush`, told when what was queued before it is committed.
type Waiter = oneshot::Sender<std::result::Result<(), String>>;

struct State {
    /// Events waiting for their commit, oldest first (a failed commit's events stay here).
    pending: VecDeque<Event>,
    /// When the next commit is due at the latest (the oldest read's deadline, or the next
    /// retry after a failure); `None` with nothing pending.
    due: Option<Instant>,
    /// Callers waiting for the next commit: it is due now.
    waiters: Vec<Waiter>,
    /// False once a commit and its retry failed, until a commit succeeds.
    healthy: bool,
    last_error: Option<String>,
    closed: bool,
}

impl State {
    /// Nothing queued, healthy, open.
    fn empty() -> Self {
        Self {
            pending: VecDeque::new(),
            due: None,
            waiters: Vec::new(),
            healthy: true,
            last_error: None,
            closed: false,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed (every change
        // is a single assignment or push): keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    fn unavailable(state: &State) -> Error {
        Error::Unavailable {
            reason: state
                .last_error
                .clone()
                .unwrap_or_else(|| "the last commit failed".into()),
        }
    }

    /// Queues `event`; with `wait`, returns the receiver told when it is committed.
    fn queue(
        &self,
        event: Option<Event>,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<std::result::Result<(), String>>>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Closed);
        }
        if event.is_some() && state.pending.len() >= self.settings.max_queued {
            return Err(Error::QueueFull {
                queued: state.pending.len(),
            });
        }
        if let Some(event) = event {
            if state.pending.is_empty() {
                state.due = Some(Instant::now() + self.settings.flush_interval);
            }
            state.pending.push_back(event);
        }
        let receiver = wait.then(|| {
            let (sender, receiver) = oneshot::channel();
            state.waiters.push(sender);
            receiver
        });
        drop(state);
        self.wake.notify_one();
        Ok(receiver)
    }
}

impl AuditLog {
    /// Opens the audit log of `warehouse`: creates `system.audit` if it does not exist,
    /// finds the chain's head (the last audit commit, whoever wrote it), and starts the writer
    /// task (on the current tokio runtime).
    pub async fn open(warehouse: Warehouse, settings: Settings) -> Result<Self> {
        create(&warehouse).await?;
        let mut writer = Writer {
            table_id: table_id(&warehouse).await?,
            warehouse,
            appender: None,
            head: Head {
                version: 0,
                seq: 0,
                hash: String::new(),
            },
            session: session(),
        };
        writer.reopen().await?;
        info!(
            target: "medlake::audit",
            version = writer.head.version,
            seq = writer.head.seq,
            "audit log open"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State::empty()),
            wake: Notify::new(),
            settings,
            enabled: true,
        });
        let task = tokio::spawn(run(shared.clone(), writer));
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// A log that records nothing: for an operator who turned auditing off (`[audit]
    /// enabled = false` in `medlake serve`'s config; benchmarks measure its cost that way).
    /// Every `record_*` succeeds at once and nothing touches the warehouse.
    pub fn disabled() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::empty()),
            wake: Notify::new(),
            settings: Settings::default(),
            enabled: false,
        });
        Self {
            handle: Arc::new(Handle {
                shared,
                task: Mutex::new(None),
            }),
        }
    }

    /// False for [`AuditLog::disabled`].
    pub fn is_enabled(&self) -> bool {
        self.shared().enabled
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Records a write (or any statement whose acknowledgement must wait for its audit):
    /// returns once the event is in a committed Delta commit. Writers that call at the same
    /// time share a commit. An error means the event is not durable yet: refuse the
    /// statement's acknowledgement (the event stays queued and is retried).
    pub async fn record_write(&self, event: Event) -> Result<()> {
        if !self.shared().enabled {
            return Ok(());
        }
        let receiver = self.shared().queue(Some(event), true)?;
        wait(receiver).await
    }

    /// Queues a read's event: committed within [`Settings::flush_interval`]. Fails (fail
    /// closed: the engine refuses the statement) while the log cannot be written (a commit
    /// and its retry failed, until a commit succeeds) and when the queue is full.
    pub fn record_read(&self, event: Event) -> Result<()> {
        if !self.shared().enabled {
            return Ok(());
        }
        {
            let state = self.shared().lock();
            if state.closed {
                return Err(Error::Closed);
            }
            if !state.healthy {
                return Err(Shared::unavailable(&state));
            }
        }
        self.shared().queue(Some(event), false).map(|_| ())
    }

    /// Whether a statement may run now: the log is open, writable as far as it knows, and
    /// has room. The engine calls this before running a write, so that a write is refused
    /// before it runs rather than after.
    pub fn ensure_available(&self) -> Result<()> {
        if !self.shared().enabled {
            return Ok(());
        }
        let state = self.shared().lock();
        if state.closed {
            return Err(Error::Closed);
        }
        if !state.healthy {
            return Err(Shared::unavailable(&state));
        }
        if state.pending.len() >= self.shared().settings.max_queued {
            return Err(Error::QueueFull {
                queued: state.pending.len(),
            });
        }
        Ok(())
    }

    /// Commits everything queued now and waits for it.
    pub async fn flush(&self) -> Result<()> {
        if !self.shared().enabled {
            return Ok(());
        }
        {
            let state = self.shared().lock();
            if state.pending.is_empty() && state.waiters.is_empty() && !state.closed {
                return if state.healthy {
                    Ok(())
                } else {
                    Err(Shared::unavailable(&state))
                };
            }
        }
        let receiver = self.shared().queue(None, true)?;
        wait(receiver).await
    }

    /// False while the log cannot be written (a commit and its retry failed, and no commit
    /// succeeded since).
    pub fn is_healthy(&self) -> bool {
        self.shared().lock().healthy
    }

    /// Events waiting for their commit.
    pub fn queued(&self) -> usize {
        self.shared().lock().pending.len()
    }

    /// Stops the log: commits what is queued, stops the writer task, and reports whether
    /// anything queued could not be written. Every clone refuses events afterwards.
    pub async fn close(&self) -> Result<()> {
        self.shared().close();
        let task = self
            .handle
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.await
                .map_err(|e| Error::Internal(format!("audit writer task: {e}")))?;
        }
        let state = self.shared().lock();
        if state.pending.is_empty() {
            Ok(())
        } else {
            Err(Error::Unavailable {
                reason: format!(
                    "{} audit events were not written before the log closed: {}",
                    state.pending.len(),
                    state.last_error.as_deref().unwrap_or("closed")
                ),
            })
        }
    }
}

async fn wait(receiver: Option<oneshot::Receiver<std::result::Result<(), String>>>) -> Result<()> {
    let Some(receiver) = receiver else {
        return Ok(());
    };
    match receiver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(Error::Unavailable { reason }),
        Err(_) => Err(Error::Closed),
    }
}

/// The writer task: waits until a commit is due, commits everything queued in one Delta
/// commit, tells the waiters.
async fn run(shared: Arc<Shared>, mut writer: Writer) {
    loop {
        let due = {
            let state = shared.lock();
            if state.pending.is_empty() && state.waiters.is_empty() {
                if state.closed {
                    break;
                }
                None
            } else if !state.waiters.is_empty() || state.closed {
                Some(Instant::now())
            } else {
                state.due
            }
        };
        match due {
            None => {
                shared.wake.notified().await;
                continue;
            }
            Some(at) if at > Instant::now() => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
                continue;
            }
            Some(_) => {}
        }
        let (events, waiters, closed) = {
            let mut state = shared.lock();
            let events: Vec<Event> = state.pending.drain(..).collect();
            (events, std::mem::take(&mut state.waiters), state.closed)
        };
        let result = if events.is_empty() {
            Ok(())
        } else {
            writer.commit_with_retry(&events).await
        };
        let mut state = shared.lock();
        match result {
            Ok(()) => {
                if !state.healthy {
                    info!(target: "medlake::audit", "audit log writable again");
                }
                state.healthy = true;
                state.last_error = None;
                state.due = (!state.pending.is_empty())
                    .then(|| Instant::now() + shared.settings.flush_interval);
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                error!(
                    target: "medlake::audit",
                    error = %reason,
                    events = events.len(),
                    "audit commit failed: statements are refused until the log can be written"
                );
                state.healthy = false;
                state.last_error = Some(reason.clone());
                // Keep the events, oldest first, and try again after an interval (or as
                // soon as a writer waits).
                for event in events.into_iter().rev() {
                    state.pending.push_front(event);
                }
                state.due = Some(Instant::now() + shared.settings.flush_interval);
                for waiter in waiters {
                    let _ = waiter.send(Err(reason.clone()));
                }
                if closed {
                    error!(
                        target: "medlake::audit",
                        events = state.pending.len(),
                        "audit log closed with events it could not write"
                    );
                    break;
                }
            }
        }
    }
    debug!(target: "medlake::audit", "audit writer stopped");
}

/// What the writer task holds: the table open for appends and the chain's head.
struct Writer {
    warehouse: Warehouse,
    table_id: String,
    /// `None` after a failure: opened again (and the head read again) before the next commit.
    appender: Option<Appender>,
    head: Head,
    session: Arc<dyn Session>,
}

impl Writer {
    /// Opens the table again and reads the chain's head from its log.
    async fn reopen(&mut self) -> Result<()> {
        let name = table_name();
        if !self.warehouse.table_exists(&name).await? {
            return Err(Error::Unavailable {
                reason: "system.audit does not exist (was it dropped?)".into(),
            });
        }
        let appender = self.warehouse.open_appender(&name).await?;
        self.table_id = table_id(&self.warehouse).await?;
        self.head = head_at(&self.warehouse, appender.version(), &self.table_id).await?;
        self.appender = Some(appender);
        Ok(())
    }

    /// One commit, and one more try (the table opened again) if it fails.
    async fn commit_with_retry(&mut self, events: &[Event]) -> Result<()> {
        match self.commit(events).await {
            Ok(()) => Ok(()),
            Err(first) => {
                warn!(
                    target: "medlake::audit",
                    error = %first,
                    "audit commit failed, trying once more"
                );
                self.appender = None;
                self.commit(events)
                    .await
                    .inspect_err(|_| self.appender = None)
            }
        }
    }

    /// Commits `events` in one Delta commit on top of the chain's head; when another process
    /// committed first, reads the new head and tries again.
    async fn commit(&mut self, events: &[Event]) -> Result<()> {
        let unavailable = |e: Error| match e {
            e @ (Error::Unavailable { .. } | Error::Internal(_)) => e,
            e => Error::unavailable(&e),
        };
        for _ in 0..MAX_CONFLICTS {
            if self.appender.is_none() {
                self.reopen().await.map_err(unavailable)?;
            }
            let Some(appender) = self.appender.as_mut() else {
                continue;
            };
            let first_seq = self.head.seq + 1;
            let (batch, hash) = commit_batch(events, first_seq, &self.head.hash)?;
            let rows = i64::try_from(events.len()).unwrap_or(i64::MAX);
            let record = CommitRecord {
                format: FORMAT,
                first_seq,
                last_seq: first_seq + rows - 1,
                rows,
                prev_hash: self.head.hash.clone(),
                hash: hash.clone(),
            };
            let options = CommitOptions {
                metadata: vec![(COMMIT_KEY.to_string(), record.to_json())],
                ..CommitOptions::default()
            };
            let committed = self
                .warehouse
                .append_to(appender, plan_of(batch)?, self.session.clone(), &options)
                .await
                .map_err(|e| Error::unavailable(&e))?;
            if let Some(version) = committed {
                debug!(target: "medlake::audit", version, first_seq, rows, "audit commit");
                self.head = Head {
                    version,
                    seq: record.last_seq,
                    hash,
                };
                return Ok(());
            }
            // Someone committed since the head was read: read it again.
            match self
                .warehouse
                .refresh_appender(appender)
                .await
                .map_err(|e| Error::unavailable(&e))?
            {
                Some(_) => {
                    self.head = head_at(&self.warehouse, appender.version(), &self.table_id)
                        .await
                        .map_err(unavailable)?;
                }
                None => self.appender = None,
            }
        }
        Err(Error::Unavailable {
            reason: format!("{MAX_CONFLICTS} concurrent commits to system.audit in a row"),
        })
    }
}
