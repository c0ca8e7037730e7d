//! Alert rules in the engine: their statements (privileges checked here for the statements
//! whose object is known only once the rule is looked up), and their evaluation.
//!
//! A rule is evaluated after each refresh that commits a new version of its view (the views'
//! [`RefreshListener`]), and every [`CATCH_UP`] for views that moved otherwise (a refresh by
//! another process, an INSERT into a watched table), over the rows the versions since its
//! last evaluation inserted or updated (`table_changes`). The query runs in a session of
//! the rule's owner (door `alerts`): privileges, masks and row filters hold as for any
//! statement of theirs, and the audit records it. When the changes cannot be read (the view
//! was replaced, or vacuumed past them), the view's rows at the new version are evaluated
//! instead: deduplication keeps what already fired from firing again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use medlake_alerts::rule::{quote_ident, quote_literal};
use medlake_alerts::{AlertRule, AlertStatement, Candidate, CreateAlert};
use medlake_audit::Door;
use medlake_auth::{Principal, Privilege};
use medlake_lake::TableName;
use medlake_views::RefreshListener;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::audit::Origin;
use crate::error::{Error, Result};
use crate::{Output, Session, Shared, privileges, statement};

/// How often rules look for versions of their views they have not evaluated.
pub const CATCH_UP: Duration = Duration::from_secs(10);

/// How often a server that does not hold the scheduler lease looks whether it took it.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// Channels one session may `LISTEN` to.
pub const MAX_LISTEN: usize = 1000;

const KEY_PREFIX: &str = "__medlake_key_";
const SEVERITY: &str = "__medlake_severity";

/// What a session listens to.
#[derive(Default)]
pub(crate) struct Listening {
    channels: std::sync::Mutex<std::collections::BTreeSet<String>>,
    receiver:
        tokio::sync::Mutex<Option<tokio::sync::broadcast::Receiver<medlake_alerts::Notification>>>,
}

impl Listening {
    fn channels(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tells the evaluator (in a server that evaluates alert rules) of each committed refresh,
/// and the metrics of every refresh.
pub(crate) struct Listener {
    pub tx: Option<mpsc::UnboundedSender<TableName>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl RefreshListener for Listener {
    fn committed(&self, view: &TableName, _version: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(view.clone());
        }
    }

    fn finished(&self, outcome: &medlake_views::RefreshOutcome) {
        self.metrics.refreshed(outcome);
    }
}

/// The series read when scraped: each view's staleness, alert firings and deliveries.
pub(crate) async fn metrics_text(shared: &Shared, out: &mut String) {
    use crate::metrics::label;
    use std::fmt::Write as _;
    if let Ok(latest) =
        medlake_views::system::latest_refreshes(&shared.warehouse, &shared.state).await
    {
        let _ = writeln!(
            out,
            "# HELP medlake_view_seconds_since_refresh Seconds since each view's last successful refresh.\n\
             # TYPE medlake_view_seconds_since_refresh gauge"
        );
        let _ = writeln!(
            out,
            "# HELP medlake_view_last_refresh_failed Whether each view's latest refresh failed (1) or not (0).\n\
             # TYPE medlake_view_last_refresh_failed gauge"
        );
        let now = chrono::Utc::now();
        let mut views: Vec<_> = latest.into_iter().collect();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        for (view, last) in views {
            let name = label(&view.to_string());
            if let Some(success) = last.last_success {
                let age = (now - success).num_milliseconds() as f64 / 1000.0;
                let _ = writeln!(
                    out,
                    "medlake_view_seconds_since_refresh{{view=\"{name}\"}} {age}"
                );
            }
            let failed = u8::from(last.status == "failed");
            let _ = writeln!(
                out,
                "medlake_view_last_refresh_failed{{view=\"{name}\"}} {failed}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP medlake_scheduler_leader Whether this server holds the scheduler lease (runs scheduled refreshes, alert evaluation and heartbeats).\n\
         # TYPE medlake_scheduler_leader gauge\n\
         medlake_scheduler_leader {}",
        u8::from(shared.alerts.delivering())
    );
    let Ok(state) = shared.alerts.snapshot().await else {
        return;
    };
    let mut firings: std::collections::BTreeMap<(String, String), u64> = Default::default();
    let mut deliveries: std::collections::BTreeMap<(String, String, &'static str), u64> =
        Default::default();
    for firing in state.firings.values() {
        *firings
            .entry((firing.rule.clone(), firing.severity.clone()))
            .or_default() += 1;
        for (target, delivery) in &firing.deliveries {
            let status = if delivery.delivered_at.is_some() {
                "delivered"
            } else if delivery.gave_up {
                "failed"
            } else {
                "pending"
            };
            *deliveries
                .entry((firing.rule.clone(), target.clone(), status))
                .or_default() += 1;
        }
    }
    let _ = writeln!(
        out,
        "# HELP medlake_alert_firings_total Alert firings by rule and severity.\n\
         # TYPE medlake_alert_firings_total counter"
    );
    for ((rule, severity), n) in firings {
        let _ = writeln!(
            out,
            "medlake_alert_firings_total{{alert=\"{}\",severity=\"{}\"}} {n}",
            label(&rule),
            label(&severity)
        );
    }
    let _ = writeln!(
        out,
        "# HELP medlake_alert_deliveries Alert deliveries by rule, target and status.\n\
         # TYPE medlake_alert_deliveries gauge"
    );
    for ((rule, target, status), n) in deliveries {
        let _ = writeln!(
            out,
            "medlake_alert_deliveries{{alert=\"{}\",target=\"{}\",status=\"{status}\"}} {n}",
            label(&rule),
            label(&target)
        );
    }
}

/// The engine's alert rules and metrics: opens the alert log, adds the computed alert tables
/// to the `system` schema, and hears every refresh (for metrics, and for evaluation in a
/// server that evaluates: the receiver is then returned for [`spawn_evaluator`]).
pub(crate) async fn open(
    warehouse: &medlake_lake::Warehouse,
    state: &datafusion::execution::context::SessionState,
    views: &medlake_views::Views,
    catalog: &crate::catalog::LakeCatalog,
    settings: medlake_alerts::Settings,
    policy: &Arc<medlake_source::Policy>,
) -> Result<(
    medlake_alerts::Alerts,
    Arc<crate::metrics::Metrics>,
    Option<mpsc::UnboundedReceiver<TableName>>,
)> {
    let alerts = medlake_alerts::Alerts::open(
        warehouse.clone(),
        state.clone(),
        medlake_alerts::Settings {
            policy: policy.clone(),
            ..settings
        },
    )
    .await?;
    let mut computed = medlake_views::system::computed_tables(views, state);
    computed.extend(medlake_alerts::computed_tables(&alerts));
    computed.push((
        crate::leadership::TABLE,
        Arc::new(crate::leadership::LeaseTable {
            warehouse: warehouse.clone(),
        }),
    ));
    catalog.set_computed_system_tables(computed);
    catalog.refresh().await?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let evaluations = alerts.active().then_some(rx);
    views.set_listener(Arc::new(Listener {
        tx: evaluations.is_some().then_some(tx),
        metrics: metrics.clone(),
    }));
    Ok((alerts, metrics, evaluations))
}

/// Evaluates rules as their views commit, and catches up every [`CATCH_UP`], until the
/// engine is gone.
pub(crate) fn spawn_evaluator(
    shared: Weak<Shared>,
    rx: Option<mpsc::UnboundedReceiver<TableName>>,
) {
    let Some(mut rx) = rx else {
        return;
    };
    tokio::spawn(async move {
        // At start: whatever committed while no server evaluated.
        let mut catch_up = true;
        loop {
            let mut views = Vec::new();
            if !catch_up {
                tokio::select! {
                    view = rx.recv() => match view {
                        Some(view) => views.push(view),
                        None => return,
                    },
                    () = tokio::time::sleep(CATCH_UP) => catch_up = true,
                }
            }
            while let Ok(view) = rx.try_recv() {
                if !views.contains(&view) {
                    views.push(view);
                }
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if !shared.alerts.delivering() {
                // Another server holds the scheduler lease and evaluates; whatever commits
                // meanwhile is caught up once this one takes it.
                drop(shared);
                catch_up = true;
                tokio::time::sleep(STANDBY_POLL).await;
                continue;
            }
            if catch_up
                && shared.alerts.standby()
                && let Err(e) = shared.alerts.reload().await
            {
                warn!(error = %e, "reading the alert log again failed");
            }
            let rules = shared.alerts.rules();
            for rule in rules {
                let watched = views.iter().any(|v| v.to_string() == rule.view);
                if catch_up || watched {
                    evaluate(&shared, &rule).await;
                }
            }
            catch_up = false;
        }
    });
}

impl crate::Engine {
    /// Where alert payloads link to (the HTTP door's console), unless `[alerts]
    /// console_url` said so already.
    pub fn set_alert_link_base(&self, base: &str) {
        self.shared.alerts.set_link_base(base);
    }

    /// Evaluates every alert rule up to its view's latest version now (not waiting for the
    /// evaluator), then waits at most `within` for the deliveries to settle. Returns the
    /// firings there are and the deliveries still pending. For `medlake quickstart --once`
    /// and tests, which end right after their refreshes.
    pub async fn settle_alerts(&self, within: Duration) -> Result<(usize, usize)> {
        for rule in self.shared.alerts.rules() {
            try_evaluate(&self.shared, &rule).await?;
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let state = self.shared.alerts.snapshot().await?;
            let pending = state
                .firings
                .values()
                .flat_map(|f| f.deliveries.values())
                .filter(|d| d.pending())
                .count();
            if pending == 0 || std::time::Instant::now() >= deadline {
                return Ok((state.firings.len(), pending));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Evaluates `rule` up to its view's latest version; failures are logged, and the rows are
/// evaluated again next time (nothing is marked evaluated).
async fn evaluate(shared: &Arc<Shared>, rule: &AlertRule) {
    if let Err(e) = try_evaluate(shared, rule).await {
        warn!(alert = %rule.name, view = %rule.view, error = %e, "alert rule evaluation failed");
    }
}

async fn try_evaluate(shared: &Arc<Shared>, rule: &AlertRule) -> Result<()> {
    let view = view_name(&rule.view)?;
    if is_computed(shared, &view) {
        // `system.sources` and the like have no versions: their rows as they are now, at
        // each evaluation (every catch-up); deduplication keeps each key and severity once.
        let session = owner_session(shared, rule).await?;
        let batches = session.query(&query(rule, None, None)).await?;
        let candidates = candidates(rule, &batches)?;
        shared.alerts.record_evaluation(rule, 0, candidates).await?;
        return Ok(());
    }
    let Some(latest) = shared.warehouse.versions(&view).await?.last().copied() else {
        return Ok(());
    };
    let from = shared.alerts.evaluated(rule) + 1;
    if from > latest {
        return Ok(());
    }
    let session = owner_session(shared, rule).await?;
    let batches = match session
        .query(&query(rule, Some((from, latest)), Some(latest)))
        .await
    {
        Ok(batches) => batches,
        Err(e) => {
            debug!(alert = %rule.name, error = %e, "the view's changes cannot be read; evaluating its rows");
            session.query(&query(rule, None, Some(latest))).await?
        }
    };
    let candidates = candidates(rule, &batches)?;
    shared
        .alerts
        .record_evaluation(rule, latest, candidates)
        .await?;
    Ok(())
}

fn arrow_error(e: arrow::error::ArrowError) -> Error {
    Error::Internal(format!("an alert's rows: {e}"))
}

/// Whether `view` is one of the `system` tables computed when read (no Delta versions).
fn is_computed(shared: &Shared, view: &TableName) -> bool {
    view.schema == medlake_views::system::SCHEMA
        && shared.catalog.is_computed_system_table(&view.table)
}

fn view_name(view: &str) -> Result<TableName> {
    let (schema, table) = view
        .split_once('.')
        .ok_or_else(|| Error::Internal(format!("alert view '{view}' has no schema")))?;
    Ok(TableName::new(schema, table)?)
}

/// A session of the rule's owner: the configured user (or role) of that name; the local
/// operator where the server has no users (the command line, `--insecure-no-auth`).
async fn owner_session(shared: &Arc<Shared>, rule: &AlertRule) -> Result<Session> {
    let principal = match &shared.users {
        None => Principal::local(rule.owner.clone()),
        Some(directory) => {
            let state = shared.access.store.current().await?;
            crate::access::owner::principal_of(&rule.owner, directory, &state).ok_or_else(|| {
                Error::PermissionDenied {
                    principal: rule.owner.clone(),
                    privilege: "SELECT",
                    object: format!(
                        "{} (the alert's owner is no longer a configured user or role)",
                        rule.view
                    ),
                }
            })?
        }
    };
    Ok(Session::at(
        shared.clone(),
        principal,
        Some(Origin::new(Door::Alerts, None)),
    ))
}

/// The rule's query: its key, severity and every column of the rows that met its condition,
/// among the rows versions `changes` (from, to) inserted or updated, or (None) among all rows
/// of version `at`.
fn query(rule: &AlertRule, changes: Option<(u64, u64)>, at: Option<u64>) -> String {
    let mut select: Vec<String> = rule
        .key
        .iter()
        .enumerate()
        .map(|(i, column)| {
            format!(
                "CAST({} AS VARCHAR) AS \"{KEY_PREFIX}{i}\"",
                quote_ident(column)
            )
        })
        .collect();
    select.push(format!(
        "CAST(({}) AS VARCHAR) AS \"{SEVERITY}\"",
        rule.severity
    ));
    select.push("*".into());
    let (from, changed) = match changes {
        Some((from, to)) => (
            format!("table_changes({}, {from}, {to})", quote_literal(&rule.view)),
            "\"_change_type\" IN ('insert', 'update_postimage') AND ",
        ),
        None => match at {
            Some(at) => (
                format!("{} VERSION AS OF {at}", quoted_view(&rule.view)),
                "",
            ),
            None => (quoted_view(&rule.view), ""),
        },
    };
    format!(
        "SELECT {} FROM {from} WHERE {changed}({})",
        select.join(", "),
        rule.condition
    )
}

fn quoted_view(view: &str) -> String {
    view.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The rows of the rule's query as candidates: key (a JSON object of KEY column → value, or
/// the whole row), severity, and the row without the query's own and the change columns.
fn candidates(rule: &AlertRule, batches: &[RecordBatch]) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        let schema = batch.schema();
        let row_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| {
                let name = schema.field(i).name();
                !name.starts_with("__medlake_")
                    && !matches!(
                        name.as_str(),
                        "_change_type" | "_commit_version" | "_commit_timestamp"
                    )
            })
            .collect();
        let rows = rows_as_json(&batch.project(&row_columns).map_err(arrow_error)?)?;
        let text = |name: &str| -> Result<StringArray> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("the alert query lost {name}")))?;
            let cast = arrow::compute::cast(column, &DataType::Utf8).map_err(arrow_error)?;
            Ok(cast
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .unwrap_or_else(|| StringArray::new_null(batch.num_rows())))
        };
        let severity = text(SEVERITY)?;
        let keys: Vec<StringArray> = (0..rule.key.len())
            .map(|i| text(&format!("{KEY_PREFIX}{i}")))
            .collect::<Result<_>>()?;
        for (i, row) in rows.into_iter().enumerate() {
            let key = if rule.key.is_empty() {
                row.clone()
            } else {
                let object: serde_json::Map<String, serde_json::Value> = rule
                    .key
                    .iter()
                    .zip(&keys)
                    .map(|(column, values)| {
                        let value = if values.is_valid(i) {
                            serde_json::Value::String(values.value(i).to_string())
                        } else {
                            serde_json::Value::Null
                        };
                        (column.clone(), value)
                    })
                    .collect();
                serde_json::Value::Object(object).to_string()
            };
            let severity = if severity.is_valid(i) {
                severity.value(i).to_string()
            } else {
                "unknown".to_string()
            };
            out.push(Candidate { key, severity, row });
        }
    }
    Ok(out)
}

/// Each row of `batch` as a JSON object.
fn rows_as_json(batch: &RecordBatch) -> Result<Vec<String>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(batch).map_err(arrow_error)?;
    writer.finish().map_err(arrow_error)?;
    let bytes = writer.into_inner();
    let values: Vec<serde_json::Value> = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("an alert row as JSON: {e}")))?
    };
    Ok(values.iter().map(serde_json::Value::to_string).collect())
}

impl Session {
    /// `CREATE ALERT`, `DROP ALERT`, `ACKNOWLEDGE ALERT`, `SHOW ALERTS`.
    pub(crate) async fn alert_statement(&self, statement: AlertStatement) -> Result<Output> {
        match statement {
            AlertStatement::Create(create) => self.create_alert(*create).await,
            AlertStatement::Drop { name, if_exists } => {
                if let Some(rule) = self.shared.alerts.rule(&name) {
                    self.check_on_rule(&rule, Privilege::Owner).await?;
                }
                self.shared.alerts.drop(&name, if_exists).await?;
                Ok(Output::command("DROP ALERT", 0))
            }
            AlertStatement::Acknowledge { name, key } => {
                let rule = self
                    .shared
                    .alerts
                    .rule(&name)
                    .ok_or(medlake_alerts::Error::NotFound { name: name.clone() })?;
                self.check_on_rule(&rule, Privilege::Select).await?;
                let n = self
                    .shared
                    .alerts
                    .acknowledge(&name, key.as_deref(), &self.principal.name)
                    .await?;
                Ok(Output::command("ACKNOWLEDGE ALERT", n))
            }
            AlertStatement::Listen { channel } => {
                let listened = self.listening.channels().len();
                if listened >= MAX_LISTEN && !self.listening.channels().contains(&channel) {
                    return Err(Error::LimitExceeded {
                        what: "LISTEN channels in one session",
                        limit: MAX_LISTEN,
                        hint: " (UNLISTEN some)",
                    });
                }
                let mut receiver = self.listening.receiver.lock().await;
                if receiver.is_none() {
                    *receiver = Some(self.shared.alerts.subscribe());
                }
                self.listening.channels().insert(channel);
                Ok(Output::command("LISTEN", 0))
            }
            AlertStatement::Unlisten { channel } => {
                match channel {
                    Some(channel) => {
                        self.listening.channels().remove(&channel);
                    }
                    None => self.listening.channels().clear(),
                }
                Ok(Output::command("UNLISTEN", 0))
            }
            AlertStatement::Show => {
                let sql = format!(
                    "SELECT * FROM {}.{} ORDER BY name",
                    medlake_views::system::SCHEMA,
                    medlake_alerts::ALERT_RULES
                );
                let statement = self
                    .parse(&sql)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Internal("SHOW ALERTS".into()))?;
                let Statement::Sql(sql) = statement else {
                    return Err(Error::Internal("SHOW ALERTS is not a query".into()));
                };
                let id = self
                    .shared
                    .statements
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.execute_sql(*sql, id, None).await
            }
        }
    }

    /// The next firing on a channel this session `LISTEN`s to whose view its principal may
    /// read, as (channel, payload); the payload's key is left out unless the principal
    /// maintains the view (as `system.alerts` shows it). Waits as long as it takes (forever
    /// when nothing is listened to); cancel-safe, for a door's connection loop.
    pub async fn next_notification(&self) -> (String, String) {
        loop {
            let received = {
                let mut receiver = self.listening.receiver.lock().await;
                match receiver.as_mut() {
                    Some(receiver) => receiver.recv().await,
                    None => {
                        drop(receiver);
                        std::future::pending::<()>().await;
                        continue;
                    }
                }
            };
            let notification = match received {
                Ok(n) => n,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "a listening session fell behind; alert notifications were dropped (system.alerts has them)"
                    );
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                    continue;
                }
            };
            if !self.listening.channels().contains(&notification.channel) {
                continue;
            }
            if let Some(payload) = self.visible_payload(&notification).await {
                return (notification.channel, payload);
            }
        }
    }

    /// Forgets every channel this session listens to (`DISCARD ALL`, as in PostgreSQL).
    pub fn unlisten_all(&self) {
        self.listening.channels().clear();
    }

    /// The payload as this session's principal may see it: `None` without SELECT on the
    /// rule's view, the key removed without MAINTAIN.
    async fn visible_payload(&self, notification: &medlake_alerts::Notification) -> Option<String> {
        let rule = self.shared.alerts.rule(&notification.channel)?;
        if self.check_on_rule(&rule, Privilege::Select).await.is_err() {
            return None;
        }
        if self.check_on_rule(&rule, Privilege::Maintain).await.is_ok() {
            return Some(notification.payload.clone());
        }
        let mut payload: serde_json::Value = serde_json::from_str(&notification.payload).ok()?;
        payload["key"] = serde_json::Value::Null;
        payload["key_hidden"] = serde_json::Value::Bool(true);
        Some(payload.to_string())
    }

    /// The privilege `privilege` on the view `rule` watches (42501 otherwise).
    async fn check_on_rule(&self, rule: &AlertRule, privilege: Privilege) -> Result<()> {
        let view = view_name(&rule.view)?;
        let state = self.access_state().await?;
        privileges::check(
            &self.principal,
            &state,
            &[privileges::Need::new(privilege, crate::table_object(&view))],
        )
    }

    async fn create_alert(&self, create: CreateAlert) -> Result<Output> {
        let view = self.table_name(&statement::name_parts(&create.on)?)?;
        let computed = is_computed(&self.shared, &view);
        if !computed && !self.shared.warehouse.table_exists(&view).await? {
            return Err(Error::Lake(medlake_lake::Error::TableNotFound {
                schema: view.schema,
                table: view.table,
            }));
        }
        self.shared.alerts.check_targets(&create.notify)?;
        let from_version = if computed {
            0
        } else {
            self.shared
                .warehouse
                .versions(&view)
                .await?
                .last()
                .copied()
                .unwrap_or(0)
        };
        let rule = AlertRule {
            id: AlertRule::new_id(),
            name: create.name,
            view: view.to_string(),
            condition: create.condition.to_string(),
            key: create.key,
            severity: create
                .severity
                .map(|s| s.to_string())
                .unwrap_or_else(|| medlake_alerts::rule::DEFAULT_SEVERITY.to_string()),
            notify: create.notify,
            owner: self.principal.name.clone(),
            created: chrono::Utc::now(),
            from_version,
        };
        // The rule must plan over its view as its creator reads it (columns, types, the
        // condition a boolean): evaluated now over no rows.
        let probe = format!(
            "{} LIMIT 0",
            query(&rule, None, (!computed).then_some(from_version))
        );
        self.query(&probe).await.map_err(|e| match e {
            Error::PermissionDenied { .. } => e,
            other => Error::InvalidValue {
                what: format!("alert {}", rule.name),
                reason: format!("its WHEN, KEY or SEVERITY does not run over {view}: {other}"),
            },
        })?;
        self.shared
            .alerts
            .create(rule, create.or_replace, create.if_not_exists)
            .await?;
        Ok(Output::command("CREATE ALERT", 0))
    }
}

use crate::Statement;
