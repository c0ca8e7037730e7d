//! Table snapshots kept between statements.
//!
//! Opening a Delta table lists its log, reads its last checkpoint and replays every commit
//! since; a dashboard query would pay that (milliseconds, growing with the commits since the
//! checkpoint) before planning even starts. A snapshot loaded once is kept here with the
//! metadata of the log entry it was loaded at, and handed out again after three HEADs (run
//! at once) show it is still the newest: no log entry after it, its own entry unchanged (a
//! table dropped and created again under the name has another entry there) and no DROP
//! marker. When someone committed since, the kept snapshot is brought forward by replaying
//! only the new commits. Nothing is ever served from memory without that check, so a commit
//! by this server, by another server on the same warehouse or by another engine is seen by
//! the next statement, exactly as when every statement opened the table itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use datafusion::catalog::TableProvider;
use deltalake::DeltaTable;
use object_store::{ObjectMeta, ObjectStoreExt as _};

use crate::error::{Error, Result};
use crate::warehouse::{DROPPED_MARKER, TableName, Warehouse};

/// How many tables' snapshots are kept; the least recently read goes first.
const CAPACITY: usize = 512;

/// How many commits a kept snapshot is brought forward by before it is loaded again from the
/// newest checkpoint instead. deltalake keeps the files of each replayed commit as record
/// batches of their own beside those it loaded (one small batch per commit, each with every
/// column of the add action: tens of KiB for one file), so a snapshot brought forward commit
/// by commit grows without bound under micro-batched ingest (the soak measured ~28 KiB per
/// commit); loaded again, the same files come back as a few large batches.
const REPLAYS_BEFORE_RELOAD: u64 = 100;

/// A table at its latest version as a statement reads it.
#[derive(Clone)]
pub struct Latest {
    /// The table's DataFusion provider at `version`.
    pub provider: Arc<dyn TableProvider>,
    /// The version read.
    pub version: u64,
    /// The table's Delta id (a table dropped and created again under its name has another).
    pub id: String,
}

impl std::fmt::Debug for Latest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latest")
            .field("version", &self.version)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

struct Kept {
    table: DeltaTable,
    latest: Latest,
    /// The log entry of `latest.version` when it was loaded.
    entry: ObjectMeta,
    used: Instant,
    /// The version it was loaded at (from the newest checkpoint and the commits since).
    loaded: u64,
}

/// One table's slot: an async lock so that concurrent statements load it once.
#[derive(Default)]
struct Slot(tokio::sync::Mutex<Option<Kept>>);

/// The kept snapshots of one warehouse (shared by its clones).
#[derive(Default)]
pub(crate) struct Snapshots {
    slots: Mutex<HashMap<TableName, Arc<Slot>>>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

/// What the HEADs said about a kept snapshot.
enum Check {
    /// Still the newest version.
    Newest,
    /// The same table, with commits after the kept version.
    Behind,
    /// Dropped, replaced or unreadable: open it from scratch.
    Gone,
}

fn same_entry(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.e_tag == b.e_tag && a.size == b.size && a.last_modified == b.last_modified
}

/// What the kept snapshots hold ([`Warehouse::kept_snapshots`]); snapshots being loaded or
/// checked at that moment are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptSnapshots {
    /// Tables with a kept snapshot.
    pub tables: u64,
    /// Data files those snapshots list.
    pub files: u64,
    /// Commits replayed onto them since each was loaded from its checkpoint.
    pub replayed: u64,
}

impl Snapshots {
    fn kept(&self) -> KeptSnapshots {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut kept = KeptSnapshots::default();
        for slot in slots {
            let Ok(guard) = slot.0.try_lock() else {
                continue;
            };
            let Some(k) = guard.as_ref() else {
                continue;
            };
            kept.tables += 1;
            kept.files += k
                .table
                .snapshot()
                .map_or(0, |s| s.log_data().num_files() as u64);
            kept.replayed += k.latest.version.saturating_sub(k.loaded);
        }
        kept
    }

    fn slot(&self, name: &TableName) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(name) {
            return slot.clone();
        }
        if slots.len() >= CAPACITY {
            Self::evict(&mut slots);
        }
        slots.entry(name.clone()).or_default().clone()
    }

    /// Drops the least recently read snapshot (slots being loaded count as just read).
    fn evict(slots: &mut HashMap<TableName, Arc<Slot>>) {
        let oldest = slots
            .iter()
            .map(|(name, slot)| {
                let used = slot
                    .0
                    .try_lock()
                    .ok()
                    .and_then(|kept| kept.as_ref().map(|k| k.used));
                (name, used)
            })
            .min_by_key(|(_, used)| used.map_or(Instant::now(), |u| u))
            .map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            slots.remove(&name);
        }
    }

    /// Forgets every kept snapshot (tests; a restore of the whole warehouse).
    pub(crate) fn clear(&self) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Warehouse {
    /// The table at its latest version, from the kept snapshot when the log shows it is still
    /// the newest (three HEADs), brought forward by the new commits when it is not, and opened
    /// from scratch otherwise. See the module documentation.
    pub async fn latest(&self, name: &TableName) -> Result<Latest> {
        let slot = self.snapshots.slot(name);
        let mut kept = slot.0.lock().await;
        if let Some(current) = kept.as_mut() {
            match self.check(name, current).await {
                Check::Newest => {
                    current.used = Instant::now();
                    return Ok(current.latest.clone());
                }
                Check::Behind
                    if current.latest.version < current.loaded + REPLAYS_BEFORE_RELOAD =>
                {
                    if self.bring_forward(name, current).await.is_ok() {
                        return Ok(current.latest.clone());
                    }
                }
                Check::Behind => {}
                Check::Gone => {}
            }
        }
        *kept = None;
        let fresh = self.load_kept(name).await?;
        let latest = fresh.latest.clone();
        *kept = Some(fresh);
        Ok(latest)
    }

    async fn check(&self, name: &TableName, kept: &Kept) -> Check {
        let version = kept.latest.version;
        let marker = self.path(&[&name.schema, &name.table]).join(DROPPED_MARKER);
        let (next, this, dropped) = tokio::join!(
            self.log_entry(name, version + 1),
            self.log_entry(name, version),
            self.store.head(&marker),
        );
        let unchanged = matches!(this, Ok(Some(ref entry)) if same_entry(entry, &kept.entry));
        let not_dropped = matches!(dropped, Err(object_store::Error::NotFound { .. }));
        match next {
            Ok(None) if unchanged && not_dropped => Check::Newest,
            Ok(Some(_)) if unchanged && not_dropped => Check::Behind,
            _ => Check::Gone,
        }
    }

    /// Replays the commits after the kept version onto the kept snapshot (its own log entry
    /// is unchanged, so they continue the same table).
    async fn bring_forward(&self, name: &TableName, kept: &mut Kept) -> Result<()> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        kept.table.update_incremental(None).await.map_err(delta)?;
        let version = kept.table.version().unwrap_or_default();
        let entry = self
            .log_entry(name, version)
            .await?
            .ok_or_else(|| Error::Internal(format!("{name}: log entry {version} vanished")))?;
        kept.latest = Self::latest_of(name, &kept.table).await?;
        kept.entry = entry;
        kept.used = Instant::now();
        Ok(())
    }

    async fn load_kept(&self, name: &TableName) -> Result<Kept> {
        let table = self.open_table(name).await?;
        let version = table.version().unwrap_or_default();
        // The entry is read after the snapshot: if another commit landed in between, the
        // next check sees the entry after `version` and brings the snapshot forward.
        let entry = self
            .log_entry(name, version)
            .await?
            .ok_or_else(|| Error::TableNotFound {
                schema: name.schema.clone(),
                table: name.table.clone(),
            })?;
        let latest = Self::latest_of(name, &table).await?;
        Ok(Kept {
            table,
            loaded: latest.version,
            latest,
            entry,
            used: Instant::now(),
        })
    }

    async fn latest_of(name: &TableName, table: &DeltaTable) -> Result<Latest> {
        let delta = |e| Error::delta(&name.schema, &name.table, e);
        let version = table.version().unwrap_or_default();
        let id = table.snapshot().map_err(delta)?.metadata().id().to_string();
        let provider = table.table_provider().await.map_err(Error::from)?;
        Ok(Latest {
            provider,
            version,
            id,
        })
    }

    /// What the kept snapshots hold now (for `/metrics`).
    pub fn kept_snapshots(&self) -> KeptSnapshots {
        self.snapshots.kept()
    }

    /// Forgets the kept snapshots, so the next statements open every table from scratch.
    pub fn forget_snapshots(&self) {
        self.snapshots.clear();
    }
}
