//! What the tests share: a warehouse in a temporary folder, events, reading system.audit.

use std::path::Path;
use std::time::Duration;

use arrow::array::{Array as _, RecordBatch};
use datafusion::prelude::SessionContext;
use medlake_audit::{Door, Event, Outcome, Settings, table_name};
use medlake_lake::Warehouse;

pub async fn warehouse(dir: &Path) -> Warehouse {
    Warehouse::open(dir.to_str().expect("utf-8 temp path"))
        .await
        .expect("warehouse opens")
}

/// Settings with a short flush interval.
pub fn settings() -> Settings {
    Settings {
        flush_interval: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// A read of patient `i`'s record: its MRN is a literal that must not reach the audit.
pub fn read(i: usize) -> Event {
    Event {
        roles: vec!["reader".into(), "clinician".into()],
        client: Some(format!("10.1.2.3:{}", 40000 + i)),
        session_id: Some("s-1".into()),
        objects_read: vec!["silver.readings".into(), "ehr.patients".into()],
        rows: Some(i as u64),
        duration: Duration::from_micros(1500 + i as u64),
        ..Event::new(
            format!("user{i}"),
            Door::Postgres,
            &format!(
                "SELECT * FROM silver.readings r JOIN ehr.patients p ON r.mrn = p.mrn WHERE p.mrn = 'MRN-{i:05}' AND r.hr > {i}"
            ),
        )
    }
}

/// A write by `user`.
pub fn write(i: usize) -> Event {
    Event {
        roles: vec!["writer".into()],
        objects_written: vec!["bronze.readings".into()],
        rows: Some(1),
        ..Event::new(
            "ingest",
            Door::Flight,
            &format!("INSERT INTO bronze.readings VALUES ('MRN-{i:05}', {i})"),
        )
    }
}

/// A refused statement.
pub fn denied(i: usize) -> Event {
    Event {
        outcome: Outcome::Denied,
        code: Some(medlake_common::Code::InsufficientPrivilege),
        break_glass: Some("code blue, bed 4".into()),
        ..Event::new(format!("user{i}"), Door::Http, "DROP TABLE silver.readings")
    }
}

/// The rows of system.audit, by seq.
pub async fn rows(warehouse: &Warehouse) -> Vec<RecordBatch> {
    let (provider, _) = warehouse
        .table_provider(&table_name(), None)
        .await
        .expect("system.audit opens");
    let ctx = SessionContext::new();
    ctx.register_table("audit", provider).expect("registered");
    ctx.sql("SELECT * FROM audit ORDER BY seq")
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs")
}

/// One column of `rows` as text, row by row (NULL as "NULL").
pub fn texts(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let array = batch.column_by_name(column).expect("column");
        let array = arrow::compute::cast(array, &arrow::datatypes::DataType::Utf8).expect("cast");
        let array = array
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("text");
        for i in 0..array.len() {
            out.push(if array.is_null(i) {
                "NULL".to_string()
            } else {
                array.value(i).to_string()
            });
        }
    }
    out
}

/// Polls `check` every 50 ms for up to 60 s.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 60 s");
}
