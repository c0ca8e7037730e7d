//! The writers of pushed rows, shared by the doors that take them (HTTP ingest, HL7 v2 over
//! MLLP): one task per table takes every request queued for it, drops those whose idempotency
//! key an earlier commit already holds (answered as duplicates), and appends the rest in one
//! commit that records their keys. Only then is each request answered.
//!
//! A writer keeps its table open between commits, with the keys of its recent commits, and
//! commits directly on top of the version it knows: when another process committed meanwhile
//! the commit fails without writing anything, the writer reads just the newer commits (whose
//! keys may turn requests into duplicates) and tries again. A commit thus costs no listing of
//! the log and no reload of the table.
//!
//! Refused rows a door wants kept go to `<table>_quarantine` first (its own commit, carrying
//! the same keys): a crash between the two commits leaves the request unanswered, and its
//! retry skips what the quarantine already holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use medlake_audit::Door;
use medlake_common::Code;
use medlake_lake::TableName;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, warn};

use crate::ingest::{IngestKey, IngestTable};
use crate::{Engine, Error};

/// One request for a table's writer.
pub struct Push {
    /// The schema `rows` were checked against (the table's, when the door looked it up).
    pub schema: SchemaRef,
    /// The rows to append (`None`: nothing valid to write).
    pub rows: Option<RecordBatch>,
    /// Refused rows to keep in `<table>_quarantine`, in the writer's quarantine schema.
    pub quarantine: Option<RecordBatch>,
    pub key: Option<IngestKey>,
    /// Who sent it (a token's or sender's name, never a secret), for the audit.
    pub sender: Option<String>,
}

/// How a request was answered.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub rows: u64,
    pub quarantined: u64,
    /// The version that holds the rows (`None`: nothing was written and the table is new).
    pub version: Option<u64>,
    /// The key was committed before (or by an earlier request of the same group).
    pub duplicate: bool,
}

/// Why a request was not written. Nothing of it was committed.
#[derive(Clone, Debug)]
pub enum PushError {
    /// The engine refused or failed; its `Code` says which.
    Engine(Arc<Error>),
    /// The idempotency key was used for another request (another body or sender).
    KeyReused(String),
    /// Nothing is wrong with the request: send it again (with the same key).
    Retry(String),
}

impl PushError {
    fn engine(e: Error) -> Self {
        Self::Engine(Arc::new(e))
    }
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Engine(e) => write!(f, "{e}"),
            PushError::KeyReused(key) => write!(
                f,
                "idempotency key '{key}' was already used for another request (another body or \
                 another sender); nothing was written: send new rows under a new key"
            ),
            PushError::Retry(why) => f.write_str(why),
        }
    }
}

/// What a door hears of its writers' commits (metrics, and tables it remembered).
pub trait PushObserver: Send + Sync {
    /// A commit of `rows` rows into `table` took `micros`.
    fn committed(&self, _table: &TableName, _rows: u64, _micros: u64) {}
    /// `rows` refused rows were committed to a quarantine table.
    fn quarantined(&self, _rows: u64) {}
    /// `table` is gone or was replaced: forget what was remembered of it (its schema).
    fn forget(&self, _table: &TableName) {}
}

/// An observer that hears nothing.
pub struct Unobserved;

impl PushObserver for Unobserved {}

/// How writers behave.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Requests waiting for one table's next commit (beyond: [`PushError::Retry`]).
    pub queue: usize,
    /// How many recent commits of a table are searched for idempotency keys.
    pub key_commits: usize,
    /// The door the commits are audited as.
    pub door: Door,
    /// The schema of the quarantine tables (`None`: requests carry no quarantine).
    pub quarantine_schema: Option<SchemaRef>,
}

/// The writer tasks of one door, one per table, started on first use.
#[derive(Clone)]
pub struct Writers {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: PushConfig,
    observer: Arc<dyn PushObserver>,
    writers: Mutex<HashMap<TableName, mpsc::Sender<Pending>>>,
}

struct Pending {
    push: Push,
    answer: oneshot::Sender<Result<Pushed, PushError>>,
}

/// Most attempts at one group's commit when other writers keep committing first.
const MAX_ATTEMPTS: usize = 8;

impl Writers {
    pub fn new(engine: Engine, config: PushConfig, observer: Arc<dyn PushObserver>) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                config,
                observer,
                writers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Hands `push` to `table`'s writer and waits for its answer: after the commit that holds
    /// it, or the failure that wrote nothing of it. The caller has checked that its sender
    /// may push into `table` and the rows against the table's schema.
    pub async fn push(&self, table: &TableName, push: Push) -> Result<Pushed, PushError> {
        let (answer, answered) = oneshot::channel();
        self.enqueue(table, Pending { push, answer }).await?;
        answered.await.unwrap_or_else(|_| {
            Err(PushError::Retry(
                "the writer stopped before committing; retry with the same idempotency key".into(),
            ))
        })
    }

    async fn enqueue(&self, table: &TableName, pending: Pending) -> Result<(), PushError> {
        let writer = self.writer(table).await;
        match writer.try_send(pending) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(PushError::Retry(format!(
                "the ingest queue of {table} is full; retry with the same idempotency key"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.inner.writers.lock().await.remove(table);
                Err(PushError::Retry(format!(
                    "the writer of {table} stopped; retry"
                )))
            }
        }
    }

    async fn writer(&self, table: &TableName) -> mpsc::Sender<Pending> {
        let mut writers = self.inner.writers.lock().await;
        if let Some(tx) = writers.get(table).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.config.queue.max(1));
        writers.insert(table.clone(), tx.clone());
        tokio::spawn(write_loop(self.inner.clone(), table.clone(), rx));
        tx
    }
}

/// What a writer task keeps between commits: its table and quarantine table held open at the
/// newest version it knows, with the idempotency keys of their recent commits. `None` until
/// the first group, and again after a failure that leaves the state in doubt.
#[derive(Default)]
struct Logs {
    table: Option<IngestTable>,
    quarantine: Option<IngestTable>,
}

async fn write_loop(inner: Arc<Inner>, table: TableName, mut rx: mpsc::Receiver<Pending>) {
    let quarantine = TableName::new(&table.schema, format!("{}_quarantine", table.table)).ok();
    let mut logs = Logs::default();
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        commit_group(&inner, &table, quarantine.as_ref(), &mut logs, group).await;
    }
}

fn answer_all(group: Vec<Pending>, failure: &PushError) {
    for p in group {
        let _ = p.answer.send(Err(failure.clone()));
    }
}

/// A failure to open or refresh a table's log: the table is gone (it is forgotten, so the
/// next request looks it up again) or cannot be read now (retry).
fn log_failure(inner: &Inner, table: &TableName, e: Error) -> PushError {
    if e.code() == Code::UndefinedTable {
        inner.observer.forget(table);
        PushError::engine(e)
    } else {
        warn!(%table, error = %e, "reading the ingest log");
        PushError::Retry(format!("cannot read the log of {table}; retry"))
    }
}

/// Opens the table's ingest log unless the writer holds it already.
async fn open_log(inner: &Inner, table: &TableName, logs: &mut Logs) -> Result<(), PushError> {
    if logs.table.is_none() {
        let log = inner
            .engine
            .ingest_open(table, inner.config.key_commits, false)
            .await
            .map_err(|e| log_failure(inner, table, e))?;
        logs.table = Some(log);
    }
    Ok(())
}

/// What one attempt at a group's commit came to.
enum Attempt {
    /// Answered (committed or failed).
    Done,
    /// Someone committed first; the log was refreshed: try the group again.
    Again(Vec<Pending>),
}

/// Commits one group of requests: duplicates are answered as such, the rest are appended in
/// one commit on top of the version the writer knows. If someone else committed since, the
/// writer reads just those commits (their keys may make more requests duplicates) and tries
/// again.
async fn commit_group(
    inner: &Inner,
    table: &TableName,
    quarantine: Option<&TableName>,
    logs: &mut Logs,
    mut group: Vec<Pending>,
) {
    let started = Instant::now();
    if let Err(failure) = open_log(inner, table, logs).await {
        return answer_all(group, &failure);
    }
    for attempt in 1..=MAX_ATTEMPTS {
        match commit_attempt(inner, table, quarantine, logs, group).await {
            Attempt::Done => {
                debug!(%table, attempt, total_us = started.elapsed().as_micros() as u64, "ingest group");
                return;
            }
            Attempt::Again(again) => group = again,
        }
    }
    answer_all(
        group,
        &PushError::Retry(format!(
            "other writers kept committing to {table} first; retry"
        )),
    );
}

async fn commit_attempt(
    inner: &Inner,
    table: &TableName,
    quarantine: Option<&TableName>,
    logs: &mut Logs,
    group: Vec<Pending>,
) -> Attempt {
    let Some(log) = logs.table.as_mut() else {
        return Attempt::Done;
    };
    let (writing, followers) = sort_out_keys(log, group);
    if writing.is_empty() {
        return Attempt::Done;
    }
    let quarantined = match quarantine {
        Some(q) => match commit_quarantine(inner, q, &mut logs.quarantine, &writing).await {
            Ok(quarantined) => quarantined,
            Err(failure) => {
                answer_all(writing, &failure);
                answer_all(followers, &failure);
                return Attempt::Done;
            }
        },
        None => HashMap::new(),
    };
    let Some(log) = logs.table.as_mut() else {
        return Attempt::Done;
    };
    let batches: Vec<RecordBatch> = writing.iter().filter_map(|p| p.push.rows.clone()).collect();
    let row_counts: Vec<u64> = writing.iter().map(|p| rows_of(&p.push.rows)).collect();
    let result = if batches.is_empty() {
        Ok(log.version())
    } else {
        let keys: Vec<IngestKey> = writing.iter().filter_map(|p| p.push.key.clone()).collect();
        let schema = writing[0].push.schema.clone();
        let t = Instant::now();
        let appended = inner
            .engine
            .ingest_append(
                log,
                schema,
                batches,
                &keys,
                &senders(&writing),
                inner.config.door,
            )
            .await;
        match appended {
            Ok(Some(done)) => {
                let micros = t.elapsed().as_micros() as u64;
                inner.observer.committed(table, done.rows, micros);
                debug!(%table, rows = done.rows, version = done.version, requests = writing.len(), append_us = micros, "ingest commit");
                Ok(Some(done.version))
            }
            Ok(None) => {
                // Someone committed since the version this writer knows: read just that.
                debug!(%table, "ingest commit behind; refreshing");
                let refreshed = inner.engine.ingest_refresh(log).await;
                let group = writing.into_iter().chain(followers).collect();
                return match refreshed {
                    Ok(false) => Attempt::Again(group),
                    // Another table under this name now: its schema may differ from the one
                    // these rows were checked against.
                    Ok(true) => {
                        inner.observer.forget(table);
                        answer_all(
                            group,
                            &PushError::Retry(format!("{table} was replaced; retry")),
                        );
                        Attempt::Done
                    }
                    Err(e) => {
                        logs.table = None;
                        answer_all(group, &log_failure(inner, table, e));
                        Attempt::Done
                    }
                };
            }
            Err(e) => {
                warn!(%table, error = %e, "ingest commit failed");
                Err(PushError::engine(e))
            }
        }
    };
    answer_group(writing, row_counts, followers, &result, &quarantined);
    Attempt::Done
}

fn rows_of(batch: &Option<RecordBatch>) -> u64 {
    batch.as_ref().map_or(0, |b| b.num_rows() as u64)
}

/// Splits a group by idempotency key: the requests to write (no key, or the first of a new
/// key) and the followers (the same key again in this group, answered like the first).
/// Requests whose key is committed are answered now: duplicates, unless they are provably
/// another request under a used key (another body or sender: nothing written).
fn sort_out_keys(log: &IngestTable, group: Vec<Pending>) -> (Vec<Pending>, Vec<Pending>) {
    let mut writing: Vec<Pending> = Vec::new();
    let mut followers: Vec<Pending> = Vec::new();
    let mut seen: HashMap<String, IngestKey> = HashMap::new();
    for p in group {
        let Some(k) = &p.push.key else {
            writing.push(p);
            continue;
        };
        if let Some(recorded) = log.recorded(&k.key) {
            let answer = if recorded.conflicts_with(k) {
                Err(PushError::KeyReused(k.key.clone()))
            } else {
                Ok(Pushed {
                    rows: 0,
                    quarantined: 0,
                    version: log.version(),
                    duplicate: true,
                })
            };
            let _ = p.answer.send(answer);
        } else if let Some(first) = seen.get(&k.key) {
            if first.conflicts_with(k) {
                let _ = p.answer.send(Err(PushError::KeyReused(k.key.clone())));
            } else {
                followers.push(p);
            }
        } else {
            seen.insert(k.key.clone(), k.clone());
            writing.push(p);
        }
    }
    (writing, followers)
}

fn key_name(p: &Pending) -> Option<String> {
    p.push.key.as_ref().map(|k| k.key.clone())
}

/// Answers the requests of a commit (or of its failure), and their followers as duplicates.
fn answer_group(
    writing: Vec<Pending>,
    row_counts: Vec<u64>,
    followers: Vec<Pending>,
    result: &Result<Option<u64>, PushError>,
    quarantined: &HashMap<Option<String>, u64>,
) {
    let mut answers: HashMap<Option<String>, Result<Pushed, PushError>> = HashMap::new();
    for (p, rows) in writing.into_iter().zip(row_counts) {
        let answer = result.clone().map(|version| Pushed {
            rows,
            quarantined: quarantined.get(&key_name(&p)).copied().unwrap_or(0),
            version,
            duplicate: false,
        });
        if p.push.key.is_some() {
            answers.insert(key_name(&p), answer.clone());
        }
        let _ = p.answer.send(answer);
    }
    for p in followers {
        let answer = answers
            .get(&key_name(&p))
            .cloned()
            .unwrap_or_else(|| Err(PushError::Retry("retry".into())));
        let _ = p.answer.send(answer.map(|ack| Pushed {
            duplicate: true,
            ..ack
        }));
    }
}

/// The names of the senders of `requests` (for the audit; never their secrets).
fn senders(requests: &[Pending]) -> Vec<String> {
    let mut names: Vec<String> = requests
        .iter()
        .filter_map(|p| p.push.sender.clone())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Writes the quarantined rows of `writing` that the quarantine table does not hold yet (by
/// idempotency key) to it, creating it on first use; returns how many rows each key had
/// refused.
async fn commit_quarantine(
    inner: &Inner,
    q: &TableName,
    log: &mut Option<IngestTable>,
    writing: &[Pending],
) -> Result<HashMap<Option<String>, u64>, PushError> {
    let rows: Vec<&Pending> = writing
        .iter()
        .filter(|p| p.push.quarantine.as_ref().is_some_and(|b| b.num_rows() > 0))
        .collect();
    let quarantined = rows
        .iter()
        .map(|p| (key_name(p), rows_of(&p.push.quarantine)))
        .collect();
    let Some(schema) = inner.config.quarantine_schema.clone() else {
        return Ok(quarantined);
    };
    if rows.is_empty() {
        return Ok(quarantined);
    }
    let failed = |e: Error| {
        warn!(table = %q, error = %e, "quarantine commit failed");
        PushError::engine(e)
    };
    for _ in 0..MAX_ATTEMPTS {
        if log.is_none() {
            *log = Some(
                inner
                    .engine
                    .ingest_open(q, inner.config.key_commits, true)
                    .await
                    .map_err(failed)?,
            );
        }
        let Some(open) = log.as_mut() else {
            continue;
        };
        let fresh: Vec<&&Pending> = rows
            .iter()
            .filter(|p| p.push.key.as_ref().is_none_or(|k| !open.contains(&k.key)))
            .collect();
        if fresh.is_empty() {
            return Ok(quarantined);
        }
        let batches: Vec<RecordBatch> = fresh
            .iter()
            .filter_map(|p| p.push.quarantine.clone())
            .collect();
        let keys: Vec<IngestKey> = fresh.iter().filter_map(|p| p.push.key.clone()).collect();
        match inner
            .engine
            .ingest_append(
                open,
                schema.clone(),
                batches,
                &keys,
                &senders(writing),
                inner.config.door,
            )
            .await
        {
            Ok(Some(done)) => {
                inner.observer.quarantined(done.rows);
                return Ok(quarantined);
            }
            Ok(None) => {
                if let Err(e) = inner.engine.ingest_refresh(open).await {
                    *log = None;
                    return Err(failed(e));
                }
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Err(PushError::Retry(format!(
        "other writers kept committing to {q} first; retry"
    )))
}
