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
    let ctx = writing_session();
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

/// A session that writes Delta tables (deltalake's planner).
fn writing_session() -> SessionContext {
    SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(medlake_lake::delta_query_planner())
            .build(),
    )
}

/// Rows of `ids` from..=to as a plan.
async fn ids(ctx: &SessionContext, from: i64, to: i64) -> datafusion::logical_expr::LogicalPlan {
    ctx.sql(&format!(
        "SELECT CAST(value AS BIGINT) AS id FROM generate_series({from}, {to})"
    ))
    .await
    .unwrap()
    .logical_plan()
    .clone()
}

/// (inserted, removed) rows of the change feed of versions `from` to `to`, counted.
async fn feed_counts(warehouse: &Warehouse, name: &TableName, from: u64, to: u64) -> (u64, u64) {
    let feed = warehouse.changes(name, from, to).await.unwrap();
    let batches = SessionContext::new()
        .read_table(feed)
        .unwrap()
        .collect()
        .await
        .unwrap();
    let (mut inserted, mut removed) = (0, 0);
    for batch in &batches {
        let kinds = arrow::compute::cast(
            batch
                .column_by_name(medlake_lake::changes::CHANGE_TYPE)
                .unwrap(),
            &DataType::Utf8,
        )
        .unwrap();
        let kinds = kinds
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for kind in kinds.iter().flatten() {
            if medlake_lake::changes::ADDED.contains(&kind) {
                inserted += 1;
            } else if medlake_lake::changes::REMOVED.contains(&kind) {
                removed += 1;
            }
        }
    }
    (inserted, removed)
}

/// The change volume REFRESH POLICY AUTO weighs is read from the log's row counts, and equals
/// what counting the change feed gives (appends, OPTIMIZE, an overwrite); a range with change
/// files (a DELETE) is left to counting.
#[tokio::test]
async fn change_volumes_from_the_log_equal_the_feeds_counts() {
    let dir = tempfile::tempdir().unwrap();
    let warehouse = Warehouse::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let name = TableName::new("bronze", "volumes").unwrap();
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
    warehouse.create_table(&name, &schema, false).await.unwrap();
    let ctx = writing_session();
    let session = || -> Arc<dyn Session> { Arc::new(ctx.state()) };
    let append = medlake_lake::WriteMode::Append;
    let overwrite = medlake_lake::WriteMode::Overwrite;
    warehouse
        .write(&name, ids(&ctx, 1, 100).await, session(), append)
        .await
        .unwrap(); // 1
    warehouse
        .write(&name, ids(&ctx, 101, 150).await, session(), append)
        .await
        .unwrap(); // 2
    warehouse
        .optimize(&name, Vec::new(), &[], None, session())
        .await
        .unwrap(); // 3: moves rows, changes none
    warehouse
        .write(&name, ids(&ctx, 1, 30).await, session(), overwrite)
        .await
        .unwrap(); // 4
    for (from, to, expected) in [
        (0, 2, (150, 0)),
        (2, 3, (0, 0)),
        (0, 4, (180, 150)),
        (3, 4, (30, 150)),
    ] {
        let logged = warehouse.change_volume(&name, from, to).await.unwrap();
        assert_eq!(logged, Some(expected), "versions {from} to {to}");
        assert_eq!(
            feed_counts(&warehouse, &name, from + 1, to).await,
            expected,
            "the feed of versions {} to {to}",
            from + 1
        );
    }
    let state = ctx.state();
    let predicate = state
        .create_logical_expr(
            "id <= 10",
            &datafusion::common::DFSchema::try_from(schema.clone()).unwrap(),
        )
        .unwrap();
    let hide: medlake_lake::Hide = Arc::new(|s: &str| s.to_string());
    warehouse
        .delete_rows(&name, Some(predicate), session(), hide)
        .await
        .unwrap(); // 5: change files
    assert_eq!(warehouse.change_volume(&name, 4, 5).await.unwrap(), None);
    assert_eq!(feed_counts(&warehouse, &name, 5, 5).await, (0, 10));
}
