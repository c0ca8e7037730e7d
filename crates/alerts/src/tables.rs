//! `system.alerts` (one row per firing and target: key, row, when it fired, attempts, when
//! it was delivered, the last error, who acknowledged) and `system.alert_rules`, computed
//! from the event log when read.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::Alerts;
use crate::log::State;

pub const ALERTS: &str = "alerts";
pub const ALERT_RULES: &str = "alert_rules";

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn alerts_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("alert", false),
        text("firing", false),
        text("view", false),
        text("key", true),
        text("severity", true),
        text("row", true),
        Field::new("version", DataType::Int64, false),
        Field::new("fired_at", timestamp(), false),
        text("target", false),
        text("status", false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("delivered_at", timestamp(), true),
        text("error", true),
        text("acknowledged_by", true),
        Field::new("acknowledged_at", timestamp(), true),
    ]))
}

pub fn rules_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("name", false),
        text("view", false),
        text("condition", false),
        text("key", true),
        text("severity", false),
        text("notify", false),
        text("owner", false),
        Field::new("created", timestamp(), false),
        Field::new("evaluated_version", DataType::Int64, false),
        Field::new("firings", DataType::Int64, false),
        Field::new("open", DataType::Int64, false),
        text("definition", false),
    ]))
}

fn ts(values: Vec<Option<DateTime<Utc>>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from(
            values
                .into_iter()
                .map(|v| v.map(|t| t.timestamp_micros()))
                .collect::<Vec<_>>(),
        )
        .with_timezone("UTC"),
    )
}

fn text(values: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn int(values: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(values))
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `system.alerts` of `state`.
pub fn alerts_batch(state: &State) -> DfResult<RecordBatch> {
    let mut c: [Vec<Option<String>>; 10] = Default::default();
    let (mut version, mut attempts) = (Vec::new(), Vec::new());
    let (mut fired, mut delivered, mut acked) = (Vec::new(), Vec::new(), Vec::new());
    for firing in state.firings.values() {
        for (target, delivery) in &firing.deliveries {
            let status = if delivery.delivered_at.is_some() {
                "delivered"
            } else if delivery.gave_up {
                "failed"
            } else {
                "pending"
            };
            let values = [
                Some(firing.rule.clone()),
                Some(firing.id.clone()),
                Some(firing.view.clone()),
                Some(firing.key.clone()),
                Some(firing.severity.clone()),
                Some(firing.row.clone()),
                Some(target.clone()),
                Some(status.to_string()),
                delivery.last_error.clone(),
                firing.acknowledged.as_ref().map(|(who, _)| who.clone()),
            ];
            for (column, value) in c.iter_mut().zip(values) {
                column.push(value);
            }
            version.push(as_i64(firing.version));
            attempts.push(i64::from(delivery.attempts));
            fired.push(Some(firing.fired_at));
            delivered.push(delivery.delivered_at);
            acked.push(firing.acknowledged.as_ref().map(|(_, at)| *at));
        }
    }
    let [
        alert,
        id,
        view,
        key,
        severity,
        row,
        target,
        status,
        error,
        acked_by,
    ] = c;
    Ok(RecordBatch::try_new(
        alerts_schema(),
        vec![
            text(alert),
            text(id),
            text(view),
            text(key),
            text(severity),
            text(row),
            int(version),
            ts(fired),
            text(target),
            text(status),
            int(attempts),
            ts(delivered),
            text(error),
            text(acked_by),
            ts(acked),
        ],
    )?)
}

/// `system.alert_rules` of `state`.
pub fn rules_batch(state: &State) -> DfResult<RecordBatch> {
    let mut c: [Vec<Option<String>>; 8] = Default::default();
    let (mut created, mut evaluated, mut firings, mut open) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rule in state.rules.values() {
        let values = [
            rule.name.clone(),
            rule.view.clone(),
            rule.condition.clone(),
            rule.key.join(", "),
            rule.severity.clone(),
            rule.notify.join(", "),
            rule.owner.clone(),
            rule.to_sql(),
        ];
        for (column, value) in c.iter_mut().zip(values) {
            column.push(Some(value));
        }
        created.push(Some(rule.created));
        let reached = state.evaluated.get(&rule.id).copied().unwrap_or(0);
        evaluated.push(as_i64(reached.max(rule.from_version)));
        let of_rule = state.firings.values().filter(|f| f.rule_id == rule.id);
        firings.push(of_rule.clone().count() as i64);
        open.push(of_rule.filter(|f| f.acknowledged.is_none()).count() as i64);
    }
    let [
        name,
        view,
        condition,
        key,
        severity,
        notify,
        owner,
        definition,
    ] = c;
    Ok(RecordBatch::try_new(
        rules_schema(),
        vec![
            text(name),
            text(view),
            text(condition),
            text(key),
            text(severity),
            text(notify),
            text(owner),
            ts(created),
            int(evaluated),
            int(firings),
            int(open),
            text(definition),
        ],
    )?)
}

/// A system table computed from the alert log when it is read.
#[derive(Debug)]
struct Computed {
    name: &'static str,
    alerts: Alerts,
}

/// The computed alert tables, by name (for the `system` schema).
pub fn computed_tables(alerts: &Alerts) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
    [ALERTS, ALERT_RULES]
        .into_iter()
        .map(|name| {
            let table: Arc<dyn TableProvider> = Arc::new(Computed {
                name,
                alerts: alerts.clone(),
            });
            (name, table)
        })
        .collect()
}

#[async_trait]
impl TableProvider for Computed {
    fn schema(&self) -> SchemaRef {
        if self.name == ALERTS {
            alerts_schema()
        } else {
            rules_schema()
        }
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = self
            .alerts
            .snapshot()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = if self.name == ALERTS {
            alerts_batch(&snapshot)?
        } else {
            rules_batch(&snapshot)?
        };
        let table = MemTable::try_new(self.schema(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}
