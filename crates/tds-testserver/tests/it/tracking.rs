//! Change Tracking: the version functions and `CHANGETABLE(CHANGES ...)` with SQL Server's net
//! semantics, as the connector's change extraction sends them.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use medlake_tds_testserver::{Column, Encryption, SqlType};
use tiberius::Row;

use crate::common::{TdsClient, connect, server, within};

fn rows(ids: &[i32], names: &[&str]) -> RecordBatch {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(ids.to_vec())),
        Arc::new(StringArray::from(names.to_vec())),
    ];
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("name", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(Arc::new(schema), arrays).unwrap()
}

fn keys(ids: &[i32]) -> RecordBatch {
    let schema = Schema::new(vec![Field::new("id", DataType::Int32, false)]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(Int32Array::from(ids.to_vec())) as ArrayRef],
    )
    .unwrap()
}

async fn query(client: &mut TdsClient, sql: &str, since: i64) -> Vec<Row> {
    client
        .query(sql, &[&since])
        .await
        .expect("query runs")
        .into_first_result()
        .await
        .expect("rows")
}

async fn scalar(client: &mut TdsClient, sql: &str) -> Option<i64> {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    rows[0].get::<i64, _>(0)
}

const CHANGES: &str = "SELECT ct.SYS_CHANGE_VERSION, ct.SYS_CHANGE_OPERATION, ct.[id], t.[name] \
     FROM CHANGETABLE(CHANGES [dbo].[people], @P1) AS ct \
     LEFT OUTER JOIN [dbo].[people] AS t ON t.[id] = ct.[id] ORDER BY ct.[id]";

fn summary(rows: &[Row]) -> Vec<(i64, String, i32, Option<String>)> {
    rows.iter()
        .map(|r| {
            (
                r.get::<i64, _>(0).unwrap(),
                r.get::<&str, _>(1).unwrap().to_string(),
                r.get::<i32, _>(2).unwrap(),
                r.get::<&str, _>(3).map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn changetable_returns_the_net_change_of_each_key_since_a_version() {
    let server = server(Encryption::On).await;
    let columns = vec![
        Column::new("Id", SqlType::Int).not_null(),
        Column::new("Name", SqlType::NVarChar(Some(40))),
    ];
    server.create_table(
        "dbo",
        "people",
        columns,
        vec![rows(&[1, 2], &["ann", "bob"])],
    );
    server.enable_change_tracking("dbo", "people", &["Id"]);
    let mut client = within("connect", connect(&server)).await;

    let current = "SELECT CHANGE_TRACKING_CURRENT_VERSION()";
    let min_valid = "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(N'[dbo].[people]'))";
    assert_eq!(scalar(&mut client, current).await, Some(0));
    assert_eq!(scalar(&mut client, min_valid).await, Some(0));
    let untracked = "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID('dbo.other'))";
    assert_eq!(scalar(&mut client, untracked).await, None);

    server.append_rows("dbo", "people", vec![rows(&[3, 4], &["cy", "dee"])]); // 1
    server.update_rows("dbo", "people", rows(&[1], &["anne"])); // 2
    server.delete_rows("dbo", "people", keys(&[2])); // 3
    server.update_rows("dbo", "people", rows(&[3], &["cyd"])); // 4
    server.delete_rows("dbo", "people", keys(&[4])); // 5
    assert_eq!(scalar(&mut client, current).await, Some(5));

    let all = summary(&query(&mut client, CHANGES, 0).await);
    assert_eq!(
        all,
        vec![
            (2, "U".into(), 1, Some("anne".into())),
            (3, "D".into(), 2, None),
            (4, "I".into(), 3, Some("cyd".into())),
            (5, "D".into(), 4, None),
        ]
    );
    let since_three = summary(&query(&mut client, CHANGES, 3).await);
    assert_eq!(
        since_three,
        vec![
            (4, "U".into(), 3, Some("cyd".into())),
            (5, "D".into(), 4, None)
        ]
    );
    let table = client
        .simple_query("SELECT id, name FROM dbo.people ORDER BY id")
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let ids: Vec<i32> = table.iter().map(|r| r.get::<i32, _>(0).unwrap()).collect();
    assert_eq!(ids, vec![1, 3]);

    // The primary key, as the connector finds it.
    let pk = client
        .simple_query(
            "SELECT k.COLUMN_NAME FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS AS c \
             JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE AS k \
             ON k.CONSTRAINT_NAME = c.CONSTRAINT_NAME AND k.TABLE_SCHEMA = c.TABLE_SCHEMA \
             AND k.TABLE_NAME = c.TABLE_NAME \
             WHERE c.CONSTRAINT_TYPE = 'PRIMARY KEY' AND c.TABLE_NAME = 'people' \
             ORDER BY k.ORDINAL_POSITION",
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    assert_eq!(pk[0].get::<&str, _>(0), Some("Id"));

    // Retention: the log is forgotten and the minimum valid version moves.
    server.forget_changes("dbo", "people");
    assert_eq!(scalar(&mut client, min_valid).await, Some(5));
    assert!(query(&mut client, CHANGES, 0).await.is_empty());

    let err = client
        .simple_query("SELECT * FROM CHANGETABLE(CHANGES dbo.missing, 0) AS ct")
        .await;
    let message = match err {
        Err(e) => e.to_string(),
        Ok(stream) => match stream.into_first_result().await {
            Err(e) => e.to_string(),
            Ok(rows) => panic!("an untracked table answered {} rows", rows.len()),
        },
    };
    assert!(
        message.contains("Change tracking is not enabled"),
        "{message}"
    );
}
