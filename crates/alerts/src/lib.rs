//! `medlake-alerts` owns clinical alert rules: their definitions (`CREATE ALERT ... ON view
//! WHEN ... [KEY (...)] [SEVERITY ...] NOTIFY ...`), the deduplicated firings and every
//! delivery attempt in `system.alert_events` (shown as `system.alerts` and
//! `system.alert_rules`), and delivery: webhooks with HMAC signatures, retries and backoff,
//! and notifications for the Postgres door's `LISTEN`.
//!
//! It does not evaluate rules: the engine does, after each refresh of a watched view, over
//! the rows that refresh added or changed, as the rule's owner (privileges, masks and row
//! filters applied in `Session::execute`), and hands the rows that met the condition to
//! [`Alerts::record_evaluation`], which keeps only keys and severities that have not fired.

pub mod deliver;
mod error;
pub mod log;
pub mod rule;
pub mod tables;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use datafusion::execution::context::SessionState;
use medlake_lake::Warehouse;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub use deliver::{Health, Notification, Retry, Webhook};
pub use error::{Error, Result};
pub use log::{Delivery, Event, Firing, Kind, State};
pub use medlake_auth::Secret;
pub use rule::{AlertRule, AlertStatement, CreateAlert, POSTGRES};
pub use tables::{ALERT_RULES, ALERTS, computed_tables};

/// How a server delivers alerts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `[[webhooks]]` of the server's configuration.
    pub webhooks: Vec<Webhook>,
    pub retry: Retry,
    /// The console's address, for the payload's link (empty: a path only).
    pub link_base: String,
    /// Which hosts webhooks may reach (`[sources] allowed_hosts`).
    pub policy: Arc<medlake_source::Policy>,
    /// Whether this process evaluates rules and delivers (`medlake serve`); other processes
    /// (the command line) only define rules and read the log.
    pub active: bool,
    /// An active server that shares its warehouse with others: it neither evaluates nor
    /// delivers until [`Alerts::set_leading`] says it holds the scheduler lease, and then
    /// reads the log again at each catch-up (rules another server created).
    pub standby: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            retry: Retry::default(),
            link_base: String::new(),
            policy: Arc::new(medlake_source::Policy::strict()),
            active: false,
            standby: false,
        }
    }
}

/// A row of a watched view that met a rule's condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The key, a JSON object (the whole row when the rule has no KEY).
    pub key: String,
    pub severity: String,
    /// The row, a JSON object.
    pub row: String,
}

/// The alert rules of a warehouse and their deliveries.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    warehouse: Warehouse,
    session: SessionState,
    state: Mutex<State>,
    /// Serializes appends to the log with the state they change.
    writer: tokio::sync::Mutex<()>,
    webhooks: BTreeMap<String, Webhook>,
    client: reqwest::Client,
    retry: Retry,
    link_base: std::sync::RwLock<String>,
    notifications: broadcast::Sender<Notification>,
    active: bool,
    standby: bool,
    /// Whether this process holds the scheduler lease (always, without `standby`).
    leading: std::sync::atomic::AtomicBool,
    /// Which hosts webhooks may reach (names are vetted as they resolve, addresses here).
    policy: Arc<medlake_source::Policy>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("webhooks", &self.inner.webhooks.keys().collect::<Vec<_>>())
            .field("active", &self.inner.active)
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Opens (creating when missing) `system.alert_events` and folds it. An active instance
    /// then resumes the deliveries a previous process left pending.
    pub async fn open(
        warehouse: Warehouse,
        session: SessionState,
        settings: Settings,
    ) -> Result<Self> {
        log::prepare(&warehouse).await?;
        let state = State::fold(log::load(&warehouse, &session).await?);
        let policy = settings.policy.clone();
        let client = medlake_source::policy::vetted_client(&policy)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("the webhook client: {e}")))?;
        let mut webhooks = BTreeMap::new();
        for webhook in settings.webhooks {
            if !deliver::valid_webhook_name(&webhook.name) {
                return Err(Error::InvalidName { name: webhook.name });
            }
            webhooks.insert(webhook.name.clone(), webhook);
        }
        let (notifications, _) = broadcast::channel(1024);
        let alerts = Self {
            inner: Arc::new(Inner {
                warehouse,
                session,
                state: Mutex::new(state),
                writer: tokio::sync::Mutex::new(()),
                webhooks,
                client,
                retry: settings.retry,
                link_base: std::sync::RwLock::new(settings.link_base),
                notifications,
                active: settings.active,
                standby: settings.standby,
                leading: std::sync::atomic::AtomicBool::new(!settings.standby),
                policy,
            }),
        };
        if alerts.inner.active {
            for rule in alerts.rules() {
                for target in rule
                    .notify
                    .iter()
                    .filter(|t| *t != POSTGRES && !alerts.inner.webhooks.contains_key(t.as_str()))
                {
                    warn!(alert = %rule.name, webhook = %target, "an alert rule notifies a webhook this server does not declare in [[webhooks]]: its firings stay pending");
                }
            }
            if alerts.delivering() {
                alerts.resume();
            }
        }
        Ok(alerts)
    }

    /// The console's address for the payloads' links, when it is known only once the HTTP
    /// door is bound (a configured `console_url` is kept).
    pub fn set_link_base(&self, base: &str) {
        if let Ok(mut link) = self.inner.link_base.write()
            && link.is_empty()
        {
            *link = base.to_string();
        }
    }

    /// Whether this process evaluates rules and delivers their firings.
    pub fn active(&self) -> bool {
        self.inner.active
    }

    /// Whether this process evaluates and delivers now: it is active and, when it shares its
    /// warehouse (`standby`), holds the scheduler lease.
    pub fn delivering(&self) -> bool {
        self.inner.active && self.inner.leading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this process shares its warehouse with other servers (`standby`).
    pub fn standby(&self) -> bool {
        self.inner.standby
    }

    /// Says whether this process holds the scheduler lease. When it takes it, the log is read
    /// again (what the previous holder recorded) and the deliveries it left pending resume.
    pub async fn set_leading(&self, leading: bool) -> Result<()> {
        let was = self
            .inner
            .leading
            .swap(leading, std::sync::atomic::Ordering::SeqCst);
        if leading && !was && self.inner.active {
            self.reload().await?;
            self.resume();
        }
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log folded, as this process knows it (one that does not deliver now reads it
    /// again first).
    pub async fn snapshot(&self) -> Result<State> {
        if !self.delivering() {
            let _writer = self.inner.writer.lock().await;
            let fresh = State::fold(log::load(&self.inner.warehouse, &self.inner.session).await?);
            *self.state() = fresh;
        }
        Ok(self.state().clone())
    }

    /// Reads the log again (after an erasure rewrote it).
    pub async fn reload(&self) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        let fresh = State::fold(log::load(&self.inner.warehouse, &self.inner.session).await?);
        *self.state() = fresh;
        Ok(())
    }

    /// Refuses a `NOTIFY` list naming a webhook this server does not declare. A process that
    /// does not deliver (the command line: `medlake apply` without the server's config)
    /// accepts any name; the server warns of undeclared ones when it delivers.
    pub fn check_targets(&self, notify: &[String]) -> Result<()> {
        if !self.inner.active {
            return Ok(());
        }
        for target in notify {
            if target != POSTGRES && !self.inner.webhooks.contains_key(target) {
                return Err(Error::UnknownTarget {
                    name: target.clone(),
                });
            }
        }
        Ok(())
    }

    /// The rule `name`, if it exists.
    pub fn rule(&self, name: &str) -> Option<AlertRule> {
        self.state().rules.get(name).cloned()
    }

    /// Every rule.
    pub fn rules(&self) -> Vec<AlertRule> {
        self.state().rules.values().cloned().collect()
    }

    /// The rules watching `view` (`schema.table`).
    pub fn rules_on(&self, view: &str) -> Vec<AlertRule> {
        self.state()
            .rules
            .values()
            .filter(|r| r.view == view)
            .cloned()
            .collect()
    }

    /// The version of its view the rule has evaluated up to.
    pub fn evaluated(&self, rule: &AlertRule) -> u64 {
        self.state()
            .evaluated
            .get(&rule.id)
            .copied()
            .unwrap_or(rule.from_version)
            .max(rule.from_version)
    }

    /// Stores a new rule. `Ok(false)`: one of that name exists and `if_not_exists` (or
    /// `or_replace` with the same definition, which keeps it and what it fired) left it.
    pub async fn create(
        &self,
        rule: AlertRule,
        or_replace: bool,
        if_not_exists: bool,
    ) -> Result<bool> {
        self.check_targets(&rule.notify)?;
        let _writer = self.inner.writer.lock().await;
        let existing = self.state().rules.get(&rule.name).cloned();
        if let Some(existing) = existing {
            if if_not_exists || (or_replace && existing.same_definition(&rule)) {
                return Ok(false);
            }
            if !or_replace {
                return Err(Error::Exists { name: rule.name });
            }
        }
        let definition = serde_json::to_string(&rule)
            .map_err(|e| Error::Internal(format!("the rule as JSON: {e}")))?;
        let mut event = Event::new(Kind::RuleCreated, &rule);
        event.definition = Some(definition);
        event.version = Some(rule.from_version);
        log::append(&self.inner.warehouse, std::slice::from_ref(&event)).await?;
        self.state().apply(event);
        info!(alert = %rule.name, view = %rule.view, "alert rule created");
        Ok(true)
    }

    /// Drops the rule `name` (its firings stay in the log). `Ok(None)`: it did not exist
    /// and `if_exists`.
    pub async fn drop(&self, name: &str, if_exists: bool) -> Result<Option<AlertRule>> {
        let _writer = self.inner.writer.lock().await;
        let Some(rule) = self.state().rules.get(name).cloned() else {
            return if if_exists {
                Ok(None)
            } else {
                Err(Error::NotFound { name: name.into() })
            };
        };
        let event = Event::new(Kind::RuleDropped, &rule);
        log::append(&self.inner.warehouse, std::slice::from_ref(&event)).await?;
        self.state().apply(event);
        Ok(Some(rule))
    }

    /// Records that `rule` evaluated its view up to `version` and found `candidates`: the
    /// ones whose key and severity have not fired become firings, recorded with the mark in
    /// one commit, and are delivered (by an active instance). Returns the new firings.
    pub async fn record_evaluation(
        &self,
        rule: &AlertRule,
        version: u64,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Firing>> {
        let _writer = self.inner.writer.lock().await;
        let mut events = Vec::new();
        {
            let state = self.state();
            if state.rules.get(&rule.name).is_none_or(|r| r.id != rule.id) {
                // Dropped or replaced while it was evaluated.
                return Ok(Vec::new());
            }
            let mut seen = std::collections::HashSet::new();
            let targets = rule.notify.join(",");
            for candidate in candidates {
                let dedup = (
                    rule.id.clone(),
                    candidate.key.clone(),
                    candidate.severity.clone(),
                );
                if state.fired.contains(&dedup) || !seen.insert(dedup) {
                    continue;
                }
                let mut event = Event::new(Kind::Fired, rule);
                event.firing = Some(firing_id());
                event.key = Some(candidate.key);
                event.severity = Some(candidate.severity);
                event.row = Some(candidate.row);
                event.version = Some(version);
                event.target = Some(targets.clone());
                events.push(event);
            }
        }
        let mut mark = Event::new(Kind::Evaluated, rule);
        mark.version = Some(version);
        events.push(mark);
        log::append(&self.inner.warehouse, &events).await?;
        let mut fired = Vec::new();
        {
            let mut state = self.state();
            for event in events {
                let id = event.firing.clone();
                state.apply(event);
                if let Some(firing) = id.and_then(|id| state.firings.get(&id)) {
                    fired.push(firing.clone());
                }
            }
        }
        if !fired.is_empty() {
            info!(alert = %rule.name, firings = fired.len(), version, "alert fired");
        }
        if self.delivering() {
            for firing in &fired {
                self.deliver(firing);
            }
        }
        Ok(fired)
    }

    /// Starts delivering every pending delivery (at start: what a previous process left).
    fn resume(&self) {
        let pending: Vec<Firing> = self
            .state()
            .firings
            .values()
            .filter(|f| f.deliveries.values().any(Delivery::pending))
            .cloned()
            .collect();
        if !pending.is_empty() {
            info!(firings = pending.len(), "resuming alert deliveries");
        }
        for firing in &pending {
            self.deliver(firing);
        }
    }

    /// Delivers `firing` to each of its pending targets this server knows, in the background.
    fn deliver(&self, firing: &Firing) {
        for (target, delivery) in &firing.deliveries {
            if !delivery.pending() {
                continue;
            }
            if target != POSTGRES && !self.inner.webhooks.contains_key(target) {
                warn!(alert = %firing.rule, webhook = %target, "a firing's webhook is not declared in this server's [[webhooks]]: left pending");
                continue;
            }
            let alerts = self.clone();
            let firing = firing.clone();
            let target = target.clone();
            let from = delivery.attempts;
            tokio::spawn(async move { alerts.deliver_to(&firing, &target, from).await });
        }
    }

    async fn deliver_to(&self, firing: &Firing, target: &str, attempts_before: u32) {
        let link_base = self
            .inner
            .link_base
            .read()
            .map(|b| b.clone())
            .unwrap_or_default();
        let body = deliver::payload(firing, &link_base);
        if target == POSTGRES {
            // LISTEN is best effort, as in PostgreSQL: delivered to whoever listens now.
            let _ = self.inner.notifications.send(Notification {
                channel: firing.rule.clone(),
                payload: body,
            });
            self.record_delivery(firing, target, Kind::Delivered, attempts_before + 1, None)
                .await;
            return;
        }
        let Some(webhook) = self.inner.webhooks.get(target) else {
            return;
        };
        let delivery = format!("{}/{}", firing.id, target);
        if let Err(e) = self.inner.policy.check_literal_host(&webhook.url) {
            warn!(alert = %firing.rule, webhook = %target, error = %e, "alert delivery refused");
            let error = Some(format!("refused: {e}"));
            self.record_delivery(firing, target, Kind::GaveUp, attempts_before + 1, error)
                .await;
            return;
        }
        let mut attempt = attempts_before;
        loop {
            attempt += 1;
            let result = deliver::post(&self.inner.client, webhook, &delivery, &body).await;
            match result {
                Ok(()) => {
                    self.record_delivery(firing, target, Kind::Delivered, attempt, None)
                        .await;
                    return;
                }
                Err(error) if attempt >= self.inner.retry.max_attempts.max(1) => {
                    warn!(alert = %firing.rule, webhook = %target, attempt, error = %error, "alert delivery gave up");
                    self.record_delivery(firing, target, Kind::GaveUp, attempt, Some(error))
                        .await;
                    return;
                }
                Err(error) => {
                    warn!(alert = %firing.rule, webhook = %target, attempt, error = %error, "alert delivery failed; retrying");
                    self.record_delivery(firing, target, Kind::Attempt, attempt, Some(error))
                        .await;
                    tokio::time::sleep(self.inner.retry.backoff(attempt)).await;
                }
            }
        }
    }

    /// Appends a delivery event; a failure to record is logged (the delivery happened or not
    /// either way; an unrecorded success is delivered again after a restart: at least once).
    async fn record_delivery(
        &self,
        firing: &Firing,
        target: &str,
        kind: Kind,
        attempt: u32,
        error: Option<String>,
    ) {
        let _writer = self.inner.writer.lock().await;
        let event = Event {
            at: Utc::now(),
            kind,
            rule: firing.rule.clone(),
            rule_id: firing.rule_id.clone(),
            firing: Some(firing.id.clone()),
            view: Some(firing.view.clone()),
            key: None,
            severity: None,
            row: None,
            version: None,
            target: Some(target.to_string()),
            attempt: Some(attempt),
            error,
            principal: None,
            definition: None,
        };
        match log::append(&self.inner.warehouse, std::slice::from_ref(&event)).await {
            Ok(()) => self.state().apply(event),
            Err(e) => warn!(alert = %firing.rule, error = %e, "could not record an alert delivery"),
        }
    }

    /// `ACKNOWLEDGE ALERT name [KEY (...)]`: records `principal` as having acknowledged the
    /// rule's open firings (with that key). Returns how many.
    pub async fn acknowledge(
        &self,
        name: &str,
        key: Option<&[String]>,
        principal: &str,
    ) -> Result<u64> {
        let _writer = self.inner.writer.lock().await;
        let Some(rule) = self.state().rules.get(name).cloned() else {
            return Err(Error::NotFound { name: name.into() });
        };
        if let Some(values) = key
            && values.len() != rule.key.len()
        {
            return Err(Error::KeyArity {
                name: rule.name.clone(),
                expected: rule.key.len(),
                given: values.len(),
            });
        }
        let open: Vec<Firing> = self
            .state()
            .firings
            .values()
            .filter(|f| f.rule_id == rule.id && f.acknowledged.is_none())
            .filter(|f| key.is_none_or(|values| key_matches(&rule, &f.key, values)))
            .cloned()
            .collect();
        let events: Vec<Event> = open
            .iter()
            .map(|f| {
                let mut event = Event::new(Kind::Acknowledged, &rule);
                event.firing = Some(f.id.clone());
                event.principal = Some(principal.to_string());
                event
            })
            .collect();
        log::append(&self.inner.warehouse, &events).await?;
        let mut state = self.state();
        for event in events {
            state.apply(event);
        }
        Ok(open.len() as u64)
    }

    /// The webhooks of an active instance that want heartbeats, with their intervals.
    pub fn heartbeats(&self) -> Vec<(String, std::time::Duration)> {
        if !self.inner.active {
            return Vec::new();
        }
        self.inner
            .webhooks
            .values()
            .filter_map(|w| w.heartbeat.map(|every| (w.name.clone(), every)))
            .collect()
    }

    /// Sends heartbeat `sequence` to the webhook `name`: one signed POST (no retry: the next
    /// heartbeat follows). `Err` says why it was not delivered.
    pub async fn send_heartbeat(
        &self,
        name: &str,
        sequence: u64,
        health: &Health,
    ) -> std::result::Result<(), String> {
        let Some(webhook) = self.inner.webhooks.get(name) else {
            return Err(format!("no webhook '{name}'"));
        };
        self.inner
            .policy
            .check_literal_host(&webhook.url)
            .map_err(|e| format!("refused: {e}"))?;
        let body = deliver::heartbeat_payload(health, sequence, Utc::now());
        let delivery = format!("heartbeat-{sequence}/{name}");
        deliver::post(&self.inner.client, webhook, &delivery, &body).await
    }

    /// Notifications for the Postgres door's `LISTEN`.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.inner.notifications.subscribe()
    }
}

/// Whether a firing's key (a JSON object) holds `values` for the rule's KEY columns.
fn key_matches(rule: &AlertRule, key: &str, values: &[String]) -> bool {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str(key) else {
        return false;
    };
    rule.key
        .iter()
        .zip(values)
        .all(|(column, value)| match object.get(column) {
            Some(serde_json::Value::String(s)) => s == value,
            Some(serde_json::Value::Null) | None => false,
            Some(other) => {
                serde_json::from_str::<serde_json::Value>(value).is_ok_and(|v| &v == other)
            }
        })
}

/// A firing's id: its time (so ids sort as firings happened) and a random part.
fn firing_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%S%6f"), &uuid[..12])
}
