//! The scheduler `medlake serve` runs: refreshes views whose `REFRESH EVERY` / `REFRESH CRON`
//! schedule is due, upstream first, one refresh of a view at a time.
//!
//! `REFRESH ON CHANGE` views are not due at a time: every [`CHANGE_POLL`] the scheduler
//! compares the latest version of each of their Delta inputs with the versions their rows
//! were computed from, and refreshes (incrementally where it can) those whose inputs moved,
//! upstream first, so a reading committed to bronze reaches gold in one pass.
//!
//! A failed automatic refresh is retried with backoff ([`Retries`]) instead of waiting for
//! its next interval; each retry is recorded in `system.refreshes` like any refresh.
//!
//! When a view is due is computed from the warehouse alone (the start of its latest refresh
//! in `system.refreshes`, or of the refresh its last commit recorded), so a restarted server
//! neither repeats a run nor makes up for every missed one: a view that missed several runs
//! while the server was down is refreshed once, then follows its schedule again.
//!
//! Servers that share a warehouse run one scheduler between them: given a leadership signal
//! ([`Scheduler::with_leadership`], the warehouse's scheduler lease), a scheduler refreshes
//! nothing while its server does not hold the lease. Manual refreshes are not its business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use medlake_lake::TableName;
use tracing::{info, warn};

use crate::definition::Schedule;
use crate::error::Result;
use crate::outcome::Status;
use crate::refresh::{RefreshOutcome, Trigger, Views, topological};
use crate::system;

/// How often `REFRESH ON CHANGE` views look at their inputs' versions.
pub const CHANGE_POLL: Duration = Duration::from_millis(500);

/// How often the list of `REFRESH ON CHANGE` views and their inputs is read again.
const WATCH_RELIST: Duration = Duration::from_secs(10);

/// How failed automatic refreshes are retried: after `first_backoff`, doubled after each
/// further failure up to `max_backoff`, at most `attempts` times; then the view waits for
/// its next scheduled run (or its inputs' next change).
#[derive(Clone, Copy, Debug)]
pub struct Retries {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 3,
            first_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(600),
        }
    }
}

impl Retries {
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// A view that failed: how often in a row, and when it may be tried again.
#[derive(Clone, Copy, Debug)]
struct Failing {
    failures: u32,
    retry_at: DateTime<Utc>,
}

/// A `REFRESH ON CHANGE` view, its Delta inputs, and the versions its rows were computed from.
#[derive(Clone, Debug)]
struct Watched {
    name: TableName,
    inputs: Vec<TableName>,
    recorded: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Watch {
    listed: Option<std::time::Instant>,
    /// Upstream first.
    views: Vec<Watched>,
}

/// Runs due refreshes. Time is passed in, so tests drive it with their own clock.
#[derive(Clone, Debug)]
pub struct Scheduler {
    views: Views,
    state: datafusion::execution::context::SessionState,
    /// Scheduled runs that found nothing to do (not recorded in `system.refreshes`).
    checked: Arc<Mutex<HashMap<TableName, DateTime<Utc>>>>,
    /// Views whose stored schedule cannot run (written by an older medlake, e.g. an interval
    /// of 2^63 seconds), with the reason; logged once each, then left unscheduled.
    unschedulable: Arc<Mutex<HashMap<TableName, String>>>,
    retries: Retries,
    /// Views whose last automatic refresh failed.
    failing: Arc<Mutex<HashMap<TableName, Failing>>>,
    watch: Arc<tokio::sync::Mutex<Watch>>,
    /// Whether this server holds the scheduler lease (`None`: no lease, always).
    leading: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Scheduler {
    pub fn new(views: Views, state: datafusion::execution::context::SessionState) -> Self {
        Self {
            views,
            state,
            checked: Arc::new(Mutex::new(HashMap::new())),
            unschedulable: Arc::new(Mutex::new(HashMap::new())),
            retries: Retries::default(),
            failing: Arc::new(Mutex::new(HashMap::new())),
            watch: Arc::new(tokio::sync::Mutex::new(Watch::default())),
            leading: None,
        }
    }

    /// Runs only while `leading` says `true` (the warehouse's scheduler lease is this
    /// server's): a refresh started before the lease was lost still finishes.
    pub fn with_leadership(mut self, leading: tokio::sync::watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    /// Whether this scheduler may refresh now.
    pub fn leads(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    /// Waits at most `at_most` for this server to lead (at once when it does).
    async fn until_leading(&self, at_most: Duration) {
        let Some(mut leading) = self.leading.clone() else {
            return;
        };
        let _ = tokio::time::timeout(at_most, leading.wait_for(|l| *l)).await;
    }

    /// How failed automatic refreshes are retried.
    pub fn with_retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    /// Notes how an automatic refresh of `view` ended: a failure schedules a retry (while
    /// attempts remain), anything else clears it.
    fn note(&self, outcome: &RefreshOutcome) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        if outcome.status != Status::Failed {
            failing.remove(&outcome.view);
            return;
        }
        let failures = failing.get(&outcome.view).map_or(0, |f| f.failures) + 1;
        let backoff = chrono::TimeDelta::from_std(self.retries.backoff(failures))
            .unwrap_or(chrono::TimeDelta::MAX);
        let retry_at = outcome
            .finished
            .checked_add_signed(backoff)
            .unwrap_or(outcome.finished);
        if failures <= self.retries.attempts {
            warn!(view = %outcome.view, failures, retry_at = %retry_at, "refresh failed; it is retried");
        }
        failing.insert(outcome.view.clone(), Failing { failures, retry_at });
    }

    /// When `view` is retried after failing, if it is.
    fn retry_at(&self, view: &TableName) -> Option<DateTime<Utc>> {
        let failing = self.failing.lock().ok()?;
        let f = failing.get(view)?;
        (f.failures <= self.retries.attempts).then_some(f.retry_at)
    }

    /// Whether `view` failed and waits for its backoff at `now` (retries exhausted: it
    /// waits for its next change like any view).
    fn backing_off(&self, view: &TableName, now: DateTime<Utc>) -> bool {
        self.failing
            .lock()
            .ok()
            .and_then(|f| f.get(view).copied())
            .is_some_and(|f| f.failures <= self.retries.attempts && now < f.retry_at)
    }

    /// Views that have a schedule which cannot run, and why. They are refreshed only by hand
    /// until `CREATE OR REPLACE` gives them a valid schedule; every other view keeps running.
    pub fn unschedulable(&self) -> Vec<(TableName, String)> {
        self.unschedulable
            .lock()
            .map(|u| u.iter().map(|(n, r)| (n.clone(), r.clone())).collect())
            .unwrap_or_default()
    }

    /// Records (and logs, the first time) a view whose schedule cannot run.
    fn report_unschedulable(&self, view: &TableName, reason: String) {
        let Ok(mut unschedulable) = self.unschedulable.lock() else {
            return;
        };
        if unschedulable.get(view) != Some(&reason) {
            warn!(view = %view, error = %reason, "the view's stored schedule cannot run; it is not scheduled (CREATE OR REPLACE it with a valid schedule)");
            unschedulable.insert(view.clone(), reason);
        }
    }

    /// Each scheduled view and when it is next due.
    pub async fn next_runs(&self) -> Result<Vec<(TableName, DateTime<Utc>)>> {
        let history = system::latest_refreshes(self.views.warehouse(), &self.state).await?;
        let checked = self.checked.lock().map(|c| c.clone()).unwrap_or_default();
        let mut runs = Vec::new();
        for view in self.views.list().await? {
            let Some(schedule) = &view.definition.schedule else {
                continue;
            };
            if *schedule == Schedule::OnChange {
                continue;
            }
            // A schedule stored by an older medlake may be out of today's bounds: that view
            // is reported and skipped, never allowed to stop the others.
            if let Err(e) = schedule.check() {
                self.report_unschedulable(&view.name, e.to_string());
                continue;
            }
            let last = history
                .get(&view.name)
                .map(|l| l.started)
                .into_iter()
                .chain(checked.get(&view.name).copied())
                .chain([view.last.started])
                .max()
                .unwrap_or(view.last.started);
            match schedule.next_after(last) {
                Some(next) => {
                    if let Ok(mut u) = self.unschedulable.lock() {
                        u.remove(&view.name);
                    }
                    // A failed run is retried before its next interval.
                    let next = self.retry_at(&view.name).map_or(next, |r| r.min(next));
                    runs.push((view.name.clone(), next));
                }
                None => self.report_unschedulable(
                    &view.name,
                    format!("no run of {schedule} follows the last refresh at {last}"),
                ),
            }
        }
        Ok(runs)
    }

    /// Refreshes every view due at `now`, in dependency order. Views downstream of a failure
    /// are recorded as stale.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Vec<RefreshOutcome>> {
        let due: Vec<TableName> = self
            .next_runs()
            .await?
            .into_iter()
            .filter(|(_, next)| *next <= now)
            .map(|(name, _)| name)
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let all = self.views.list().await?;
        let order: Vec<TableName> = topological(&self.views.graph(&all)?)?
            .into_iter()
            .filter(|v| due.contains(v))
            .collect();
        let outcomes = self
            .views
            .refresh_in_order(&order, false, |_| Trigger::Schedule, Some(now))
            .await?;
        // Every due view was looked at now, whether it ran, had nothing to do, or was being
        // refreshed by someone else: it is next due one interval from now.
        if let Ok(mut checked) = self.checked.lock() {
            for view in &order {
                checked.insert(view.clone(), now);
            }
        }
        for (outcome, _) in &outcomes {
            self.note(outcome);
            let interval = all.iter().find(|v| v.name == outcome.view).and_then(|v| {
                match v.definition.schedule {
                    Some(Schedule::Every { seconds }) => Some(seconds),
                    _ => None,
                }
            });
            let took = (outcome.finished - outcome.started).num_seconds();
            if let Some(interval) = interval
                && took > i64::try_from(interval).unwrap_or(i64::MAX)
            {
                warn!(view = %outcome.view, seconds = took, interval, "the refresh took longer than its schedule's interval: runs are skipped until it catches up");
            }
        }
        Ok(outcomes.into_iter().map(|(o, _)| o).collect())
    }

    /// Reads the `REFRESH ON CHANGE` views and their Delta inputs again when the list is
    /// older than [`WATCH_RELIST`].
    async fn relist(&self, watch: &mut Watch) -> Result<()> {
        if watch.listed.is_some_and(|at| at.elapsed() < WATCH_RELIST) {
            return Ok(());
        }
        let all = self.views.list().await?;
        let order = topological(&self.views.graph(&all)?)?;
        let mut views = Vec::new();
        for name in order {
            let Some(view) = all.iter().find(|v| v.name == name) else {
                continue;
            };
            if view.definition.schedule != Some(Schedule::OnChange) {
                continue;
            }
            views.push(Watched {
                name: view.name.clone(),
                inputs: self.views.references(&view.definition)?,
                recorded: view.last.inputs.clone(),
            });
        }
        watch.views = views;
        watch.listed = Some(std::time::Instant::now());
        Ok(())
    }

    /// Refreshes the `REFRESH ON CHANGE` views whose Delta inputs moved past the versions
    /// their rows were computed from, upstream first (a view refreshed here is seen as moved
    /// by the ones downstream in the same pass). External inputs never count as moved.
    pub async fn react(&self, now: DateTime<Utc>) -> Result<Vec<RefreshOutcome>> {
        let mut watch = self.watch.lock().await;
        self.relist(&mut watch).await?;
        let mut outcomes = Vec::new();
        let mut latest: HashMap<TableName, Option<u64>> = HashMap::new();
        for watched in &mut watch.views {
            if self.backing_off(&watched.name, now) {
                continue;
            }
            let mut moved = false;
            for input in &watched.inputs {
                let version = match latest.get(input) {
                    Some(v) => *v,
                    None => {
                        let v = self
                            .views
                            .warehouse()
                            .versions(input)
                            .await
                            .ok()
                            .and_then(|v| v.last().copied());
                        latest.insert(input.clone(), v);
                        v
                    }
                };
                let recorded = watched.recorded.get(&input.to_string()).copied();
                if matches!((version, recorded), (Some(v), Some(r)) if v > r)
                    || matches!((version, recorded), (Some(_), None))
                {
                    moved = true;
                }
            }
            if !moved {
                continue;
            }
            let done = self
                .views
                .refresh_in_order(
                    std::slice::from_ref(&watched.name),
                    false,
                    |_| Trigger::Change,
                    None,
                )
                .await?;
            for (outcome, _) in done {
                self.note(&outcome);
                if matches!(outcome.status, Status::Succeeded | Status::Skipped) {
                    watched.recorded = outcome.inputs.clone();
                    // What downstream views see of this one now.
                    latest.insert(watched.name.clone(), outcome.version);
                }
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }

    /// OPTIMIZE of `system.refreshes` and `system.expectations`; failures are logged.
    pub async fn compact_system_tables(&self) {
        for table in [system::REFRESHES, system::EXPECTATIONS] {
            let Ok(name) = TableName::new(system::SCHEMA, table) else {
                continue;
            };
            let session = Arc::new(self.state.clone());
            if let Err(e) = self
                .views
                .warehouse()
                .optimize(&name, Vec::new(), &[], None, session)
                .await
            {
                warn!(table = %name, error = %e, "compacting a system table failed");
            }
        }
    }

    /// Ticks until `shutdown` resolves, sleeping until the next due run (at most `poll`, so
    /// views created meanwhile are picked up).
    pub async fn run(self, poll: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let changes = self.clone();
        let reacting = tokio::spawn(async move {
            let mut stopped = stopped;
            loop {
                if !changes.leads() {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = changes.until_leading(CHANGE_POLL) => {}
                    }
                    continue;
                }
                match changes.react(Utc::now()).await {
                    Ok(outcomes) => {
                        for o in outcomes {
                            info!(view = %o.view, status = o.status.as_str(), mode = o.mode, rows = o.rows_written, "refresh on change");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "watching inputs of REFRESH ON CHANGE views failed")
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(CHANGE_POLL) => {}
                }
            }
        });
        self.run_schedules(poll, shutdown).await;
        let _ = stop.send(true);
        let _ = reacting.await;
    }

    async fn run_schedules(&self, poll: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut compacted = std::time::Instant::now();
        loop {
            if !self.leads() {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = self.until_leading(poll) => {}
                }
                continue;
            }
            // Every refresh appends one small commit to the system tables: compact them hourly
            // so that reading the history (every tick) stays fast.
            if compacted.elapsed() >= Duration::from_secs(3600) {
                compacted = std::time::Instant::now();
                self.compact_system_tables().await;
            }
            match self.tick(Utc::now()).await {
                Ok(outcomes) => {
                    for o in outcomes {
                        info!(view = %o.view, status = o.status.as_str(), mode = o.mode, rows = o.rows_written, "scheduled refresh");
                    }
                }
                Err(e) => warn!(error = %e, "scheduler tick failed"),
            }
            let wait = match self.next_runs().await {
                Ok(runs) => runs
                    .iter()
                    .map(|(_, next)| (*next - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                    .min()
                    .unwrap_or(poll)
                    .min(poll),
                Err(_) => poll,
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
            }
        }
    }
}
