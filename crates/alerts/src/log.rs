//! `system.alert_events`: every rule change, evaluation, firing, delivery attempt and
//! acknowledgement, appended to one Delta table (the outbox deliveries resume from after a
//! restart). [`State`] is the table folded: the rules, what fired (for deduplication), how
//! far each rule has evaluated its view, and each firing's deliveries.
//!
//! An evaluation appends its firings and its `evaluated` mark in one commit, so a crash
//! either keeps both (the firings are then delivered on restart) or neither (the rows are
//! evaluated again): no firing is lost and none is recorded twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use datafusion::execution::context::{SessionContext, SessionState};
use futures::TryStreamExt;
use medlake_lake::{TableName, Warehouse};

use crate::error::{Error, Result};
use crate::rule::AlertRule;

/// The schema of medlake's own tables.
pub const SCHEMA: &str = "system";
/// The event log's table name.
pub const EVENTS: &str = "alert_events";

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RuleCreated,
    RuleDropped,
    /// The rule evaluated its view up to `version`.
    Evaluated,
    Fired,
    /// A delivery to `target` failed (`error`); another attempt may follow.
    Attempt,
    Delivered,
    /// The last attempt to `target` failed: no more are made.
    GaveUp,
    Acknowledged,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RuleCreated => "rule_created",
            Kind::RuleDropped => "rule_dropped",
            Kind::Evaluated => "evaluated",
            Kind::Fired => "fired",
            Kind::Attempt => "attempt",
            Kind::Delivered => "delivered",
            Kind::GaveUp => "gave_up",
            Kind::Acknowledged => "acknowledged",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        [
            Kind::RuleCreated,
            Kind::RuleDropped,
            Kind::Evaluated,
            Kind::Fired,
            Kind::Attempt,
            Kind::Delivered,
            Kind::GaveUp,
            Kind::Acknowledged,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One row of `system.alert_events`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub kind: Kind,
    /// The rule's name.
    pub rule: String,
    /// The rule's id (one creation of the rule).
    pub rule_id: String,
    pub firing: Option<String>,
    pub view: Option<String>,
    /// The key, a JSON object of column → value (as the rule's owner reads them).
    pub key: Option<String>,
    pub severity: Option<String>,
    /// The row that fired, a JSON object (as the rule's owner reads it).
    pub row: Option<String>,
    pub version: Option<u64>,
    pub target: Option<String>,
    pub attempt: Option<u32>,
    pub error: Option<String>,
    /// Who acknowledged.
    pub principal: Option<String>,
    /// `rule_created`: the rule, as JSON.
    pub definition: Option<String>,
}

impl Event {
    /// An event of `kind` about `rule`, every other field empty.
    pub fn new(kind: Kind, rule: &AlertRule) -> Self {
        Self {
            at: Utc::now(),
            kind,
            rule: rule.name.clone(),
            rule_id: rule.id.clone(),
            firing: None,
            view: Some(rule.view.clone()),
            key: None,
            severity: None,
            row: None,
            version: None,
            target: None,
            attempt: None,
            error: None,
            principal: None,
            definition: None,
        }
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(crate) fn schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("at", timestamp(), false),
        Field::new("event", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("rule_id", DataType::Utf8, false),
        text("firing"),
        text("view"),
        text("key"),
        text("severity"),
        text("row"),
        Field::new("version", DataType::Int64, true),
        text("target"),
        Field::new("attempt", DataType::Int64, true),
        text("error"),
        text("principal"),
        text("definition"),
    ]))
}

pub(crate) fn table() -> Result<TableName> {
    Ok(TableName::new(SCHEMA, EVENTS)?)
}

fn texts<'a>(events: &'a [Event], f: impl Fn(&'a Event) -> Option<&'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter(events.iter().map(f)))
}

fn ints(events: &[Event], f: impl Fn(&Event) -> Option<i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter(events.iter().map(f)))
}

fn batch(events: &[Event]) -> Result<RecordBatch> {
    let at = arrow::array::TimestampMicrosecondArray::from_iter_values(
        events.iter().map(|e| e.at.timestamp_micros()),
    )
    .with_timezone("UTC");
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(at),
            texts(events, |e| Some(e.kind.as_str())),
            texts(events, |e| Some(e.rule.as_str())),
            texts(events, |e| Some(e.rule_id.as_str())),
            texts(events, |e| e.firing.as_deref()),
            texts(events, |e| e.view.as_deref()),
            texts(events, |e| e.key.as_deref()),
            texts(events, |e| e.severity.as_deref()),
            texts(events, |e| e.row.as_deref()),
            ints(events, |e| {
                e.version.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
            }),
            texts(events, |e| e.target.as_deref()),
            ints(events, |e| e.attempt.map(i64::from)),
            texts(events, |e| e.error.as_deref()),
            texts(events, |e| e.principal.as_deref()),
            texts(events, |e| e.definition.as_deref()),
        ],
    )?)
}

/// Creates the event table when it is missing.
pub(crate) async fn prepare(warehouse: &Warehouse) -> Result<()> {
    let name = table()?;
    if !warehouse.table_exists(&name).await? {
        warehouse.create_table(&name, &schema(), true).await?;
    }
    Ok(())
}

/// Appends `events` in one commit.
pub(crate) async fn append(warehouse: &Warehouse, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    warehouse
        .append_batches(&table()?, vec![batch(events)?])
        .await?;
    Ok(())
}

/// Every event of the table, oldest first.
pub(crate) async fn load(warehouse: &Warehouse, state: &SessionState) -> Result<Vec<Event>> {
    let (provider, _) = warehouse.table_provider(&table()?, None).await?;
    let ctx = SessionContext::new_with_state(state.clone());
    let batches: Vec<RecordBatch> = ctx
        .read_table(provider)?
        .execute_stream()
        .await?
        .try_collect()
        .await?;
    let mut events = Vec::new();
    for batch in &batches {
        events.extend(events_of(batch)?);
    }
    events.sort_by_key(|e| e.at);
    Ok(events)
}

fn events_of(batch: &RecordBatch) -> Result<Vec<Event>> {
    let column = |name: &str| -> Result<ArrayRef> {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("system.alert_events has no column {name}")))
    };
    let strings = |name: &str| -> Result<StringArray> {
        let array = arrow::compute::cast(&column(name)?, &DataType::Utf8)?;
        Ok(array
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .unwrap_or_else(|| StringArray::new_null(batch.num_rows())))
    };
    let numbers = |name: &str, via: DataType| -> Result<Int64Array> {
        let array = arrow::compute::cast(&column(name)?, &via)?;
        let array = arrow::compute::cast(&array, &DataType::Int64)?;
        Ok(array
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .unwrap_or_else(|| Int64Array::new_null(batch.num_rows())))
    };
    let at = numbers("at", DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let (event, rule, rule_id) = (strings("event")?, strings("rule")?, strings("rule_id")?);
    let (firing, view, key, severity) = (
        strings("firing")?,
        strings("view")?,
        strings("key")?,
        strings("severity")?,
    );
    let (row, target, error, principal) = (
        strings("row")?,
        strings("target")?,
        strings("error")?,
        strings("principal")?,
    );
    let definition = strings("definition")?;
    let version = numbers("version", DataType::Int64)?;
    let attempt = numbers("attempt", DataType::Int64)?;
    let text = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let mut events = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let Some(kind) = event
            .is_valid(i)
            .then(|| Kind::parse(event.value(i)))
            .flatten()
        else {
            continue;
        };
        events.push(Event {
            at: DateTime::from_timestamp_micros(at.value(i)).unwrap_or_default(),
            kind,
            rule: rule.value(i).to_string(),
            rule_id: rule_id.value(i).to_string(),
            firing: text(&firing, i),
            view: text(&view, i),
            key: text(&key, i),
            severity: text(&severity, i),
            row: text(&row, i),
            version: version
                .is_valid(i)
                .then(|| u64::try_from(version.value(i)).unwrap_or(0)),
            target: text(&target, i),
            attempt: attempt
                .is_valid(i)
                .then(|| u32::try_from(attempt.value(i)).unwrap_or(u32::MAX)),
            error: text(&error, i),
            principal: text(&principal, i),
            definition: text(&definition, i),
        });
    }
    Ok(events)
}

/// One delivery of a firing to one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub attempts: u32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub gave_up: bool,
}

impl Delivery {
    /// Neither delivered nor given up.
    pub fn pending(&self) -> bool {
        self.delivered_at.is_none() && !self.gave_up
    }
}

/// One firing of a rule: a row of its view met the condition with a key and severity that
/// had not fired before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    pub id: String,
    pub rule: String,
    pub rule_id: String,
    pub view: String,
    pub key: String,
    pub severity: String,
    pub row: String,
    pub version: u64,
    pub fired_at: DateTime<Utc>,
    pub deliveries: BTreeMap<String, Delivery>,
    pub acknowledged: Option<(String, DateTime<Utc>)>,
}

/// The event log folded.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The rules that exist, by name.
    pub rules: BTreeMap<String, AlertRule>,
    /// Per rule id: the view version its evaluation reached.
    pub evaluated: HashMap<String, u64>,
    /// (rule id, key, severity) that fired.
    pub fired: HashSet<(String, String, String)>,
    /// Every firing, by id (ids sort by time).
    pub firings: BTreeMap<String, Firing>,
}

impl State {
    pub fn fold(events: impl IntoIterator<Item = Event>) -> Self {
        let mut state = State::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    /// Applies one event.
    pub fn apply(&mut self, event: Event) {
        match event.kind {
            Kind::RuleCreated => {
                let Some(rule) = event
                    .definition
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<AlertRule>(d).ok())
                else {
                    return;
                };
                self.rules.insert(rule.name.clone(), rule);
            }
            Kind::RuleDropped => {
                if self
                    .rules
                    .get(&event.rule)
                    .is_some_and(|r| r.id == event.rule_id)
                {
                    self.rules.remove(&event.rule);
                }
            }
            Kind::Evaluated => {
                if let Some(version) = event.version {
                    let reached = self.evaluated.entry(event.rule_id).or_default();
                    *reached = (*reached).max(version);
                }
            }
            Kind::Fired => self.apply_fired(event),
            Kind::Attempt | Kind::Delivered | Kind::GaveUp => self.apply_delivery(event),
            Kind::Acknowledged => {
                let firing = event.firing.as_ref().and_then(|f| self.firings.get_mut(f));
                if let Some(firing) = firing
                    && firing.acknowledged.is_none()
                {
                    firing.acknowledged = Some((event.principal.unwrap_or_default(), event.at));
                }
            }
        }
    }

    fn apply_fired(&mut self, event: Event) {
        let Some(id) = event.firing else { return };
        let key = event.key.unwrap_or_default();
        let severity = event.severity.unwrap_or_default();
        self.fired
            .insert((event.rule_id.clone(), key.clone(), severity.clone()));
        let targets = event.target.unwrap_or_default();
        let deliveries = targets
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|t| (t.to_string(), Delivery::default()))
            .collect();
        self.firings.insert(
            id.clone(),
            Firing {
                id,
                rule: event.rule,
                rule_id: event.rule_id,
                view: event.view.unwrap_or_default(),
                key,
                severity,
                row: event.row.unwrap_or_default(),
                version: event.version.unwrap_or_default(),
                fired_at: event.at,
                deliveries,
                acknowledged: None,
            },
        );
    }

    fn apply_delivery(&mut self, event: Event) {
        let Some(firing) = event.firing.as_ref().and_then(|f| self.firings.get_mut(f)) else {
            return;
        };
        let Some(delivery) = event
            .target
            .as_ref()
            .and_then(|t| firing.deliveries.get_mut(t))
        else {
            return;
        };
        delivery.attempts = delivery.attempts.max(event.attempt.unwrap_or(0));
        match event.kind {
            Kind::Delivered => delivery.delivered_at = Some(event.at),
            Kind::GaveUp => {
                delivery.gave_up = true;
                delivery.last_error = event.error;
            }
            _ => delivery.last_error = event.error,
        }
    }
}
