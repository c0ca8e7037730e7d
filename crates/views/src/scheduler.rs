//! The scheduler `medlake serve` runs: refreshes views whose `REFRESH EVERY` / `REFRESH CRON`
//! schedule is due, upstream first, one refresh of a view at a time.
//!
//! When a view is due is computed from the warehouse alone (the start of its latest refresh
//! in `system.refreshes`, or of the refresh its last commit recorded), so a restarted server
//! neither repeats a run nor makes up for every missed one: a view that missed several runs
//! while the server was down is refreshed once, then follows its schedule again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use medlake_lake::TableName;
use tracing::{info, warn};

use crate::error::Result;
use crate::refresh::{RefreshOutcome, Trigger, Views, topological};
use crate::system;

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
}

impl Scheduler {
    pub fn new(views: Views, state: datafusion::execution::context::SessionState) -> Self {
        Self {
            views,
            state,
            checked: Arc::new(Mutex::new(HashMap::new())),
            unschedulable: Arc::new(Mutex::new(HashMap::new())),
        }
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
        Ok(outcomes.into_iter().map(|(o, _)| o).collect())
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
        tokio::pin!(shutdown);
        let mut compacted = std::time::Instant::now();
        loop {
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
