//! Concurrent CREATE TABLE ... AS SELECT of one name: exactly one creator wins, the loser fails
//! with `TableExists`, and the winner's table stays readable with its rows (the loser never
//! deletes or overwrites the winner's files).

use std::sync::Arc;

use arrow::array::{Array, StringArray};
use datafusion::catalog::Session;
use datafusion::prelude::SessionContext;
use medlake_lake::{Error, TableName, Warehouse};

/// `rows` rows whose `who` column is `who`.
async fn ctas(
    warehouse: Warehouse,
    name: TableName,
    who: &'static str,
    rows: usize,
) -> Result<(), Error> {
    let ctx = SessionContext::new_with_state(
        datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(medlake_lake::delta_query_planner())
            .build(),
    );
    let values: Vec<String> = (0..rows).map(|i| format!("({i})")).collect();
    let plan = ctx
        .sql(&format!(
            "SELECT '{who}' AS who, CAST(v AS BIGINT) AS n FROM (VALUES {}) AS t(v)",
            values.join(", ")
        ))
        .await
        .unwrap()
        .logical_plan()
        .clone();
    let session: Arc<dyn Session> = Arc::new(ctx.state());
    warehouse
        .create_table_as(&name, plan, session, false)
        .await
        .map(|_| ())
}

/// The `who` values of the table's rows.
async fn whos(warehouse: &Warehouse, name: &TableName) -> Vec<String> {
    let (provider, _) = warehouse.table_provider(name, None).await.unwrap();
    let ctx = SessionContext::new();
    let batches = ctx.read_table(provider).unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for batch in batches {
        let column = batch.column_by_name("who").unwrap();
        let column = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8).unwrap();
        let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..strings.len() {
            out.push(strings.value(i).to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_leave_the_winners_table_intact() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("wh");
    let location = location.to_str().unwrap();
    // Two warehouses on one folder, as two servers would be.
    let one = Warehouse::open(location).await.unwrap();
    let two = Warehouse::open(location).await.unwrap();
    let name = TableName::new("bronze", "raced").unwrap();
    for round in 0..30 {
        let a = tokio::spawn(ctas(one.clone(), name.clone(), "a", 3));
        let b = tokio::spawn(ctas(two.clone(), name.clone(), "b", 5));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (winner, rows, loser) = match (&a, &b) {
            (Ok(()), Err(e)) => ("a", 3, e),
            (Err(e), Ok(())) => ("b", 5, e),
            _ => panic!("round {round}: exactly one CREATE must win: {a:?} / {b:?}"),
        };
        assert!(
            matches!(loser, Error::TableExists { .. }),
            "round {round}: the loser must see TableExists, got {loser:?}"
        );
        for warehouse in [&one, &two] {
            let whos = whos(warehouse, &name).await;
            assert_eq!(whos.len(), rows, "round {round}: {whos:?}");
            assert!(whos.iter().all(|w| w == winner), "round {round}: {whos:?}");
        }
        assert_eq!(one.versions(&name).await.unwrap(), vec![0], "round {round}");
        one.drop_table(&name, false).await.unwrap();
        assert!(!two.table_exists(&name).await.unwrap());
    }
}

#[tokio::test]
async fn a_create_after_an_interrupted_drop_clears_only_the_dropped_tables_files() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("wh");
    let warehouse = Warehouse::open(location.to_str().unwrap()).await.unwrap();
    let name = TableName::new("bronze", "again").unwrap();
    ctas(warehouse.clone(), name.clone(), "old", 4)
        .await
        .unwrap();
    // A DROP that crashed after its marker: the old log and files are still there.
    let folder = location.join("bronze").join("again");
    std::fs::write(folder.join("_medlake_dropped"), b"dropped").unwrap();
    assert!(!warehouse.table_exists(&name).await.unwrap());
    ctas(warehouse.clone(), name.clone(), "new", 2)
        .await
        .unwrap();
    assert_eq!(whos(&warehouse, &name).await, vec!["new", "new"]);
    assert_eq!(warehouse.versions(&name).await.unwrap(), vec![0]);
    assert!(!folder.join("_medlake_dropped").exists());
}
