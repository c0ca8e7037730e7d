//! Every table medlake creates for users records its changes (Delta's change data feed) as a
//! table feature at writer version 7, and still takes blind appends; `system` tables do not.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::Session;
use datafusion::prelude::SessionContext;
use medlake_lake::{CommitOptions, TableName, Warehouse};
use serde_json::Value;

/// The protocol and table properties of version 0 of `name`, from its log.
async fn created(warehouse: &Warehouse, name: &TableName) -> (Value, Value) {
    let actions = warehouse.commit_actions(name, 0).await.unwrap().unwrap();
    let protocol = actions.iter().find_map(|a| a.get("protocol")).unwrap();
    let metadata = actions.iter().find_map(|a| a.get("metaData")).unwrap();
    (protocol.clone(), metadata["configuration"].clone())
}

/// Writer version 7 with the `changeDataFeed` feature (deltalake lists writer version 2's
/// features too: appendOnly and invariants) and the property on; not the legacy writer 4.
fn records_changes(protocol: &Value, configuration: &Value) -> bool {
    let features = protocol["writerFeatures"].as_array().cloned();
    protocol["minWriterVersion"] == 7
        && features.is_some_and(|f| f.iter().any(|f| f == "changeDataFeed"))
        && configuration["delta.enableChangeDataFeed"] == "true"
}

async fn ctas(warehouse: &Warehouse, name: &TableName, options: &CommitOptions) {
    let ctx = SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(medlake_lake::delta_query_planner())
            .build(),
    );
    let plan = ctx
        .sql("SELECT CAST(1 AS BIGINT) AS id, 'a' AS who")
        .await
        .unwrap()
        .logical_plan()
        .clone();
    let session: Arc<dyn Session> = Arc::new(ctx.state());
    warehouse
        .create_table_as_with(name, plan, session, false, options)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn created_tables_record_changes_and_take_blind_appends() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let empty = TableName::new("bronze", "empty").unwrap();
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
    assert!(
        warehouse
            .create_table(&empty, &schema, false)
            .await
            .unwrap()
    );
    let selected = TableName::new("silver", "selected").unwrap();
    ctas(&warehouse, &selected, &CommitOptions::default()).await;
    // A materialized view's first commit: its options carry properties of their own.
    let view = TableName::new("gold", "view").unwrap();
    let view_options = CommitOptions {
        configuration: vec![("delta.enableExpiredLogCleanup".into(), "false".into())],
        ..CommitOptions::default()
    };
    ctas(&warehouse, &view, &view_options).await;
    for name in [&empty, &selected, &view] {
        let (protocol, configuration) = created(&warehouse, name).await;
        assert!(
            records_changes(&protocol, &configuration),
            "{name}: {protocol} {configuration}"
        );
        let appender = warehouse.open_appender(name).await.unwrap();
        assert!(appender.is_blind(), "{name} must take blind appends");
    }
    let (_, configuration) = created(&warehouse, &view).await;
    assert_eq!(configuration["delta.enableExpiredLogCleanup"], "false");
}

#[tokio::test]
async fn system_tables_and_explicit_choices_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let system = TableName::new("system", "own").unwrap();
    ctas(&warehouse, &system, &CommitOptions::default()).await;
    let off = TableName::new("bronze", "off").unwrap();
    let options = CommitOptions {
        configuration: vec![("delta.enableChangeDataFeed".into(), "false".into())],
        ..CommitOptions::default()
    };
    ctas(&warehouse, &off, &options).await;
    for name in [&system, &off] {
        let (protocol, configuration) = created(&warehouse, name).await;
        assert!(
            !records_changes(&protocol, &configuration),
            "{name}: {protocol} {configuration}"
        );
        assert_eq!(protocol["minWriterVersion"], 2, "{name}: {protocol}");
        assert!(warehouse.open_appender(name).await.unwrap().is_blind());
    }
}
