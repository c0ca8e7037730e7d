//! Heartbeats: a server that delivers alerts posts a signed heartbeat to each webhook that
//! asks for one (`[[webhooks]] heartbeat_seconds`), on that interval, while the pipeline is
//! healthy, so that a receiver notices when medlake goes silent (no heartbeat for a few
//! intervals: the server stopped, cannot read its warehouse, a source is past its FRESHNESS
//! ERROR AFTER, or a view's latest refresh failed). Alerts are secondary notifications; the
//! heartbeat is how their receiver knows they can still come.

use std::sync::{Arc, Weak};

use arrow::array::{Array, StringArray};
use medlake_alerts::Health;
use tracing::{debug, warn};

use crate::Shared;
use crate::error::Result;

/// Starts one heartbeat task per webhook that wants one; each ends with the engine.
pub(crate) fn spawn(shared: &Arc<Shared>) {
    for (webhook, every) in shared.alerts.heartbeats() {
        let shared = Arc::downgrade(shared);
        tokio::spawn(beat(shared, webhook, every));
    }
}

async fn beat(shared: Weak<Shared>, webhook: String, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    // Whether the last tick withheld its heartbeat (said once, not at every tick).
    let mut withheld = false;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.alerts.delivering() {
            // The server holding the scheduler lease sends them.
            continue;
        }
        match health(&shared).await {
            Ok(health) if health.healthy() => {
                sequence += 1;
                match shared
                    .alerts
                    .send_heartbeat(&webhook, sequence, &health)
                    .await
                {
                    Ok(()) => debug!(webhook = %webhook, sequence, "heartbeat delivered"),
                    Err(error) => {
                        warn!(webhook = %webhook, sequence, error = %error, "heartbeat not delivered")
                    }
                }
                withheld = false;
            }
            Ok(health) => {
                if !withheld {
                    warn!(
                        webhook = %webhook,
                        failed_sources = health.failed_sources,
                        failed_views = health.failed_views,
                        "heartbeats withheld: the pipeline is not healthy"
                    );
                }
                withheld = true;
            }
            Err(error) => {
                if !withheld {
                    warn!(webhook = %webhook, error = %error, "heartbeats withheld: the pipeline's state cannot be read");
                }
                withheld = true;
            }
        }
    }
}

/// The pipeline as a heartbeat reports it: refresh history of the views there are,
/// `system.sources`' freshness, pending deliveries.
pub(crate) async fn health(shared: &Shared) -> Result<Health> {
    let views: std::collections::HashSet<_> = shared
        .views
        .list()
        .await?
        .into_iter()
        .map(|v| v.name)
        .collect();
    let latest = medlake_views::system::latest_refreshes(&shared.warehouse, &shared.state).await?;
    let mut health = Health::default();
    for last in latest
        .iter()
        .filter(|(v, _)| views.contains(*v))
        .map(|(_, last)| last)
    {
        health.newest_refresh = health.newest_refresh.max(last.last_success);
        if last.status == "failed" {
            health.failed_views += 1;
        }
    }
    let sources = medlake_views::system::sources(&shared.views, &shared.state).await?;
    if let Some(freshness) = sources
        .column_by_name("freshness")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    {
        for i in 0..freshness.len() {
            match freshness.value(i) {
                "warn" => health.stale_sources += 1,
                "error" => health.failed_sources += 1,
                _ => {}
            }
        }
    }
    let state = shared.alerts.snapshot().await?;
    health.pending_deliveries = state
        .firings
        .values()
        .flat_map(|f| f.deliveries.values())
        .filter(|d| d.pending())
        .count() as u64;
    Ok(health)
}
