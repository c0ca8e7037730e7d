//! Leases in the warehouse: one holder at a time, among every process that opens the same
//! warehouse, for work that must not run twice (the scheduler of `medlake serve`: scheduled and
//! on-change refreshes, alert evaluation and webhook deliveries, heartbeats).
//!
//! A lease is a small JSON record ([`LeaseRecord`]: holder, sequence, when acquired and
//! renewed, TTL) written only by conditional writes, so that of two processes writing on top
//! of the same record exactly one succeeds:
//!
//! - **Object stores with conditional updates** (Azure Blob Storage and Azurite, S3 with
//!   conditional puts, GCS): one object, `_medlake_leases/<name>.json`, created with
//!   `PutMode::Create` (If-None-Match: *) and replaced with `PutMode::Update` on the ETag it was
//!   read with (If-Match). [`Mechanism::ETag`].
//! - **Local folders** (`file://`): object_store's local store has no conditional update (it
//!   answers `NotImplemented`), but its `PutMode::Create` is atomic (a hard link of a fully
//!   written staging file, refused when the name exists). So each write is a new entry of a
//!   numbered log, `_medlake_leases/<name>/<sequence, 20 digits>.json`, created only if absent,
//!   exactly as Delta commits `_delta_log/N.json`: the record in force is the highest entry, and
//!   writing entry N+1 on top of entry N succeeds for one writer only. The writer of entry N
//!   lists the folder again afterwards and gives its win up if an entry above N exists: entries
//!   far below the highest are deleted (the newest [`KEEP`] are kept), and a writer that read
//!   long ago could otherwise recreate a deleted number. The highest entry is never deleted,
//!   so the highest number only grows and such a late writer always sees it.
//!   [`Mechanism::Log`].
//!
//! Expiry is measured on the clock of the process that waits, never by comparing two hosts'
//! wall clocks (as Kubernetes' leader election does): a contender takes the lease over only
//! once it has seen the same record, unchanged, for a whole TTL. The holder counts its lease
//! from the moment it *started* its last successful write and stops leading at 4/5 of the TTL
//! after that unless a renewal succeeded (it renews every third of the TTL); a contender starts
//! counting only after that write finished. A holder that stops cleanly writes a `released`
//! record, which the others take at once. So two processes never lead at once while their
//! monotonic clocks run at about the same rate, and after a holder dies another one leads
//! within about 1.4 TTL (the TTL plus two of the followers' polls, a fifth of the TTL each).
//!
//! The lease decides who *schedules* work; it is not a fence for the work itself. A refresh
//! the old holder started before it lost the lease still finishes; it commits through Delta's
//! optimistic concurrency like a manual `REFRESH` from any process does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::warehouse::Warehouse;

/// The lease `medlake serve` takes to run the scheduler.
pub const SCHEDULER: &str = "scheduler";

/// The folder of leases under the warehouse root (not a schema: it has no schema marker).
pub const FOLDER: &str = "_medlake_leases";

/// The default time to live of a lease.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// Log entries kept below the newest one ([`Mechanism::Log`]).
pub const KEEP: u64 = 16;

/// A lease as written in the warehouse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it: host, process id and a random suffix, unique per process.
    pub holder: String,
    /// Numbers every write (acquisition, renewal, release), from 1.
    pub sequence: u64,
    /// When this holder acquired it (its clock).
    pub acquired_at: DateTime<Utc>,
    /// When this holder last renewed it (its clock).
    pub renewed_at: DateTime<Utc>,
    pub ttl_ms: u64,
    /// Given up by its holder at a clean stop: anyone may take it at once.
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    /// When the lease lapses unless renewed, by the holder's clock.
    pub fn expires_at(&self) -> DateTime<Utc> {
        let ttl = chrono::TimeDelta::milliseconds(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX));
        self.renewed_at
            .checked_add_signed(ttl)
            .unwrap_or(self.renewed_at)
    }
}

/// How a lease's conditional writes are made (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// One object replaced with `PutMode::Update` on its ETag.
    ETag,
    /// A numbered log of entries, each created with `PutMode::Create`.
    Log,
}

impl Mechanism {
    /// What a warehouse at `url` uses: the log on local folders, ETags elsewhere.
    pub fn for_url(url: &url::Url) -> Self {
        if url.scheme() == "file" {
            Self::Log
        } else {
            Self::ETag
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ETag => "etag",
            Self::Log => "log",
        }
    }
}

/// What a conditional write goes on top of.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    ETag(UpdateVersion),
    Entry(u64),
}

/// Where a lease lives and how it is written: reading and conditional writing only.
#[derive(Clone)]
struct Place {
    store: Arc<dyn ObjectStore>,
    /// The object ([`Mechanism::ETag`]) or the folder of entries ([`Mechanism::Log`]).
    path: Path,
    mechanism: Mechanism,
}

impl Place {
    fn new(warehouse: &Warehouse, name: &str, mechanism: Mechanism) -> Self {
        let path = match mechanism {
            Mechanism::ETag => warehouse.path(&[FOLDER, &format!("{name}.json")]),
            Mechanism::Log => warehouse.path(&[FOLDER, name]),
        };
        Self {
            store: warehouse.object_store(),
            path,
            mechanism,
        }
    }

    /// The record in force and what a write on top of it names; `None` before the first.
    async fn read(&self) -> Result<Option<(LeaseRecord, Token)>> {
        match self.mechanism {
            Mechanism::ETag => {
                let got = match self.store.get(&self.path).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(Error::store(&self.path, e)),
                };
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await.map_err(|e| Error::store(&self.path, e))?;
                Ok(Some((parse(&self.path, &bytes)?, Token::ETag(version))))
            }
            Mechanism::Log => {
                // The highest entry is never deleted, so a read racing a deletion retries.
                for _ in 0..3 {
                    let Some(highest) = self.entries().await?.into_iter().max() else {
                        return Ok(None);
                    };
                    let path = self.entry(highest);
                    match self.store.get(&path).await {
                        Ok(got) => {
                            let bytes = got.bytes().await.map_err(|e| Error::store(&path, e))?;
                            return Ok(Some((parse(&path, &bytes)?, Token::Entry(highest))));
                        }
                        Err(object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(Error::store(&path, e)),
                    }
                }
                Err(Error::Internal(format!(
                    "the lease log {} changed under three reads in a row",
                    self.path
                )))
            }
        }
    }

    fn entry(&self, sequence: u64) -> Path {
        self.path.clone().join(format!("{sequence:020}.json"))
    }

    /// The numbers of the log's entries, unordered.
    async fn entries(&self) -> Result<Vec<u64>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.path))
            .try_collect()
            .await
            .map_err(|e| Error::store(&self.path, e))?;
        Ok(listed
            .iter()
            .filter_map(|meta| meta.location.filename())
            .filter_map(|file| file.strip_suffix(".json"))
            .filter(|digits| digits.len() == 20)
            .filter_map(|digits| digits.parse().ok())
            .collect())
    }

    /// Writes `record` on top of `on` (nothing: the first record). `Some` with the new token
    /// when this write won; `None` when another write came first.
    async fn write(&self, on: Option<&Token>, record: &LeaseRecord) -> Result<Option<Token>> {
        let body = serde_json::to_vec(record)
            .map_err(|e| Error::Internal(format!("a lease record as JSON: {e}")))?;
        match (self.mechanism, on) {
            (Mechanism::ETag, on) => {
                let mode = match on {
                    Some(Token::ETag(version)) => PutMode::Update(version.clone()),
                    None => PutMode::Create,
                    Some(Token::Entry(_)) => {
                        return Err(Error::Internal("a log token for an ETag lease".into()));
                    }
                };
                let put = self
                    .store
                    .put_opts(&self.path, PutPayload::from(body), PutOptions::from(mode))
                    .await;
                match put {
                    Ok(done) => Ok(Some(Token::ETag(UpdateVersion {
                        e_tag: done.e_tag,
                        version: done.version,
                    }))),
                    Err(e) if lost(&e) => Ok(None),
                    Err(e) => Err(Error::store(&self.path, e)),
                }
            }
            (Mechanism::Log, on) => {
                let sequence = match on {
                    Some(Token::Entry(n)) => n + 1,
                    None => 1,
                    Some(Token::ETag(_)) => {
                        return Err(Error::Internal("an ETag token for a log lease".into()));
                    }
                };
                let path = self.entry(sequence);
                let put = self
                    .store
                    .put_opts(
                        &path,
                        PutPayload::from(body),
                        PutOptions::from(PutMode::Create),
                    )
                    .await;
                match put {
                    Ok(_) => {}
                    Err(e) if lost(&e) => return Ok(None),
                    Err(e) => return Err(Error::store(&path, e)),
                }
                // A number deleted as old and created again by a late writer: the higher
                // entries that made it old are still there.
                let entries = self.entries().await?;
                if entries.iter().any(|n| *n > sequence) {
                    return Ok(None);
                }
                self.forget_below(&entries, sequence.saturating_sub(KEEP))
                    .await;
                Ok(Some(Token::Entry(sequence)))
            }
        }
    }

    /// Deletes log entries below `floor` (best effort: a leftover entry is harmless).
    async fn forget_below(&self, entries: &[u64], floor: u64) {
        for n in entries.iter().filter(|n| **n < floor) {
            let path = self.entry(*n);
            if let Err(e) = self.store.delete(&path).await {
                tracing::debug!(path = %path, error = %e, "an old lease entry was not deleted");
            }
        }
    }
}

/// Whether a conditional write failed because another write came first.
fn lost(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

fn parse(path: &Path, bytes: &[u8]) -> Result<LeaseRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("the lease record {path} is not valid: {e}")))
}

/// The lease `name` as written in `warehouse` now (for `system.scheduler_lease`), with how it
/// is written there.
pub async fn current(
    warehouse: &Warehouse,
    name: &str,
) -> Result<Option<(LeaseRecord, Mechanism)>> {
    let mechanism = Mechanism::for_url(warehouse.url());
    let place = Place::new(warehouse, name, mechanism);
    Ok(place.read().await?.map(|(record, _)| (record, mechanism)))
}

/// Where a process stands after a [`Lease::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// It holds the lease until `until` (its clock) unless it renews.
    Leading { until: Instant, sequence: u64 },
    /// Another process holds it (`None`: nobody has written it, or it could not be read).
    Following { holder: Option<String> },
}

/// This process's side of a lease: what it last wrote and what it last saw.
struct Local {
    /// Our last successful write, and when it started.
    held: Option<(Token, LeaseRecord, Instant)>,
    /// The record others hold, and since when we have seen it unchanged.
    observed: Option<(Token, Instant)>,
}

/// One process's handle on a lease.
pub struct Lease {
    place: Place,
    holder: String,
    ttl: Duration,
    local: tokio::sync::Mutex<Local>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("path", &self.place.path.to_string())
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A holder id unique to this process: host, pid and a random suffix.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

impl Lease {
    /// The lease `name` of `warehouse` for `holder`, lapsing `ttl` after each write.
    pub fn new(warehouse: &Warehouse, name: &str, holder: String, ttl: Duration) -> Self {
        Self::with_mechanism(
            warehouse,
            name,
            holder,
            ttl,
            Mechanism::for_url(warehouse.url()),
        )
    }

    /// As [`Lease::new`], written with `mechanism`.
    pub fn with_mechanism(
        warehouse: &Warehouse,
        name: &str,
        holder: String,
        ttl: Duration,
        mechanism: Mechanism,
    ) -> Self {
        Self::at(Place::new(warehouse, name, mechanism), holder, ttl)
    }

    fn at(place: Place, holder: String, ttl: Duration) -> Self {
        Self {
            place,
            holder,
            ttl: ttl.max(Duration::from_millis(100)),
            local: tokio::sync::Mutex::new(Local {
                held: None,
                observed: None,
            }),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn mechanism(&self) -> Mechanism {
        self.place.mechanism
    }

    /// How long the holder leads after a write starts: 4/5 of the TTL, the rest a margin for
    /// the two processes' clocks.
    fn lead_time(&self) -> Duration {
        self.ttl.mul_f64(0.8)
    }

    /// Renews the lease if this process holds it, takes it if it is free, released, or
    /// unchanged for a whole TTL since this process first saw it; otherwise follows.
    pub async fn step(&self) -> Result<Standing> {
        let mut local = self.local.lock().await;
        let current = self.place.read().await?;
        let now = Instant::now();
        let Some((record, token)) = current else {
            local.held = None;
            return self.take(&mut local, None, None).await;
        };
        let ours = local.held.as_ref().is_some_and(|(t, _, _)| *t == token);
        if ours || (record.holder == self.holder && !record.released) {
            // Ours (a write whose answer was lost counts too: the holder id is this process's).
            return self.take(&mut local, Some(token), Some(record)).await;
        }
        local.held = None;
        let unchanged_since = match &local.observed {
            Some((seen, since)) if *seen == token => *since,
            _ => {
                local.observed = Some((token.clone(), now));
                now
            }
        };
        if record.released || now.duration_since(unchanged_since) >= self.ttl {
            return self.take(&mut local, Some(token), Some(record)).await;
        }
        Ok(Standing::Following {
            holder: Some(record.holder),
        })
    }

    /// Writes this process's record on top of `on`: a renewal when `previous` is ours, else
    /// an acquisition.
    async fn take(
        &self,
        local: &mut Local,
        on: Option<Token>,
        previous: Option<LeaseRecord>,
    ) -> Result<Standing> {
        let started = Instant::now();
        let now = Utc::now();
        let renewal = previous
            .as_ref()
            .filter(|p| p.holder == self.holder && !p.released);
        let record = LeaseRecord {
            holder: self.holder.clone(),
            sequence: previous.as_ref().map_or(0, |p| p.sequence) + 1,
            acquired_at: renewal.map_or(now, |p| p.acquired_at),
            renewed_at: now,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            released: false,
        };
        match self.place.write(on.as_ref(), &record).await? {
            Some(token) => {
                let sequence = record.sequence;
                local.held = Some((token, record, started));
                local.observed = None;
                Ok(Standing::Leading {
                    until: started + self.lead_time(),
                    sequence,
                })
            }
            None => {
                local.held = None;
                Ok(Standing::Following {
                    holder: previous.map(|p| p.holder),
                })
            }
        }
    }

    /// Gives the lease up (a clean stop): the next contender takes it at once.
    pub async fn release(&self) -> Result<bool> {
        let mut local = self.local.lock().await;
        let Some((token, record, _)) = local.held.take() else {
            return Ok(false);
        };
        let released = LeaseRecord {
            sequence: record.sequence + 1,
            renewed_at: Utc::now(),
            released: true,
            ..record
        };
        Ok(self.place.write(Some(&token), &released).await?.is_some())
    }

    /// Keeps the lease in a task until `shutdown` says `true` or is dropped (then releases
    /// it): renews it
    /// every third of the TTL while leading, tries to take it every fifth while following.
    /// The receiver says whether this process leads now; each change is logged. The task
    /// ends once the lease is released.
    pub fn keep(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut said: Option<Standing> = None;
            let mut until: Option<Instant> = None;
            loop {
                let wait = self.keep_once(&tx, &mut said, &mut until).await;
                let gone = tokio::select! {
                    changed = shutdown.changed() => changed.is_err(),
                    () = tokio::time::sleep(wait) => false,
                };
                if gone || *shutdown.borrow() {
                    break;
                }
            }
            tx.send_replace(false);
            match self.release().await {
                Ok(true) => info!(holder = %self.holder, "scheduler lease released"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "releasing the scheduler lease failed; it lapses"),
            }
        });
        (rx, task)
    }

    /// One step of [`Lease::keep`]: publishes whether this process leads, logs changes, and
    /// says how long to wait before the next step.
    async fn keep_once(
        &self,
        tx: &watch::Sender<bool>,
        said: &mut Option<Standing>,
        until: &mut Option<Instant>,
    ) -> Duration {
        // A step that hangs on the store must not keep a lapsed lease leading.
        let budget = until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .unwrap_or(self.ttl);
        let step = tokio::time::timeout(budget, self.step()).await;
        let standing = match step {
            Ok(Ok(standing)) => Some(standing),
            Ok(Err(e)) => {
                warn!(error = %e, "the scheduler lease could not be read or written");
                None
            }
            Err(_) => {
                warn!("the scheduler lease's store did not answer in time");
                None
            }
        };
        match &standing {
            Some(Standing::Leading { until: u, .. }) => *until = Some(*u),
            // Another server wrote on top of this one's record: it leads no longer.
            Some(Standing::Following { .. }) => *until = None,
            // Unknown (the store failed): leading until the last renewal's time runs out.
            None => {}
        }
        let leading = until.is_some_and(|u| Instant::now() < u);
        if !leading {
            *until = None;
        }
        self.log_change(said, standing.as_ref(), leading);
        tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
        if leading { self.ttl / 3 } else { self.ttl / 5 }
    }

    fn log_change(&self, said: &mut Option<Standing>, standing: Option<&Standing>, leading: bool) {
        let was_leading = matches!(said, Some(Standing::Leading { .. }));
        match standing {
            Some(Standing::Leading { sequence, .. }) if !was_leading => {
                info!(holder = %self.holder, sequence, ttl_ms = self.ttl.as_millis() as u64, mechanism = self.place.mechanism.as_str(), "scheduler lease acquired: this server runs scheduled refreshes, alert evaluation and heartbeats");
            }
            Some(Standing::Following { holder }) => {
                let changed = match said {
                    Some(Standing::Following { holder: h }) => h != holder,
                    _ => true,
                };
                if changed {
                    let by = holder.as_deref().unwrap_or("nobody");
                    info!(holder = %by, this = %self.holder, "scheduler lease held by another server: this server does not run scheduled refreshes (manual REFRESH works)");
                }
            }
            None if was_leading && !leading => {
                warn!(holder = %self.holder, "scheduler lease lost: this server stops running scheduled refreshes");
            }
            _ => {}
        }
        if let Some(s) = standing {
            *said = Some(s.clone());
        } else if !leading && was_leading {
            *said = None;
        }
    }
}

#[cfg(test)]
mod tests;
