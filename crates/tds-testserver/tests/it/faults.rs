//! Streaming, packet sizes, concurrency and injected faults.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use futures::TryStreamExt;
use medlake_tds_testserver::{Column, Encryption, Fault, SqlType, TdsServer};
use tiberius::EncryptionLevel;

use crate::common::{config, connect, connect_with, server, within};

/// `dbo.Numbers(N bigint, Label nvarchar(40))` with `rows` rows in batches of 1000.
async fn numbers(encryption: Encryption, rows: i64) -> TdsServer {
    let server = server(encryption).await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("N", arrow::datatypes::DataType::Int64, false),
        Field::new("Label", arrow::datatypes::DataType::Utf8, true),
    ]));
    let batches = (0..rows)
        .step_by(1000)
        .map(|start| {
            let end = (start + 1000).min(rows);
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from((start..end).collect::<Vec<_>>())),
                Arc::new(StringArray::from(
                    (start..end)
                        .map(|i| (i % 7 != 0).then(|| format!("row number {i}")))
                        .collect::<Vec<_>>(),
                )),
            ];
            RecordBatch::try_new(schema.clone(), arrays).unwrap()
        })
        .collect();
    server.create_table(
        "dbo",
        "Numbers",
        vec![
            Column::new("N", SqlType::BigInt).not_null(),
            Column::new("Label", SqlType::NVarChar(Some(40))),
        ],
        batches,
    );
    server
}

#[tokio::test]
async fn large_results_stream_in_negotiated_packet_sizes() {
    for (encryption, level, packet_size) in [
        (Encryption::Off, EncryptionLevel::NotSupported, 512),
        (Encryption::Required, EncryptionLevel::Required, 32767),
        (Encryption::Off, EncryptionLevel::Off, 4096),
    ] {
        let server = numbers(encryption, 50_000).await;
        let mut cfg = config(&server, level);
        cfg.packet_size(packet_size);
        within("large result", async {
            let mut c = connect_with(cfg).await.unwrap();
            let mut stream = c
                .simple_query("SELECT N, Label FROM dbo.Numbers ORDER BY N")
                .await
                .unwrap()
                .into_row_stream();
            let mut expected = 0i64;
            while let Some(row) = stream.try_next().await.unwrap() {
                assert_eq!(row.try_get::<i64, _>(0).unwrap(), Some(expected));
                let label: Option<&str> = row.try_get(1).unwrap();
                assert_eq!(
                    label.map(str::to_string),
                    (expected % 7 != 0).then(|| format!("row number {expected}"))
                );
                expected += 1;
            }
            assert_eq!(expected, 50_000);
        })
        .await;
    }
}

#[tokio::test]
async fn parallel_readers_are_counted() {
    let server = numbers(Encryption::Off, 20).await;
    server.set_fault(Some(Fault::DelayPerRow(Duration::from_millis(20))));
    within("parallel reads", async {
        let reads = (0..4).map(|i| {
            let server = &server;
            async move {
                let mut c = connect(server).await;
                let sql = format!("SELECT N FROM dbo.Numbers WHERE N % 4 = {i}");
                c.simple_query(sql)
                    .await
                    .unwrap()
                    .into_first_result()
                    .await
                    .unwrap()
                    .len()
            }
        });
        let counts = futures::future::join_all(reads).await;
        assert_eq!(counts, vec![5, 5, 5, 5]);
    })
    .await;
    assert!(
        server.max_concurrent_queries() >= 2,
        "max concurrent queries: {}",
        server.max_concurrent_queries()
    );
    assert_eq!(server.connections_total(), 4);
}

#[tokio::test]
async fn dropped_connection_mid_result_is_an_error() {
    let server = numbers(Encryption::Off, 10_000).await;
    server.set_fault(Some(Fault::DropConnectionAfterRows(5)));
    within("dropped connection", async {
        let mut c = connect(&server).await;
        let mut stream = c
            .simple_query("SELECT * FROM dbo.Numbers")
            .await
            .unwrap()
            .into_row_stream();
        let mut rows = 0;
        let err = loop {
            match stream.try_next().await {
                Ok(Some(_)) => rows += 1,
                Ok(None) => panic!("the result ended cleanly after {rows} rows"),
                Err(e) => break e,
            }
        };
        assert_eq!(rows, 5, "error after {rows} rows: {err}");
    })
    .await;
    // The fault is per query: a new connection works once it is cleared.
    server.set_fault(None);
    let mut c = within("reconnect", connect(&server)).await;
    let rows = within("query", async {
        c.simple_query("SELECT COUNT(*) FROM dbo.Numbers")
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(rows.unwrap().try_get::<i32, _>(0).unwrap(), Some(10_000));
}

#[tokio::test]
async fn shutdown_while_a_client_reads_fails_the_read() {
    let server = numbers(Encryption::Required, 1000).await;
    server.set_fault(Some(Fault::DelayPerRow(Duration::from_millis(5))));
    let mut c = within("connect", connect(&server)).await;
    within("read then shutdown", async {
        let mut stream = c
            .simple_query("SELECT * FROM dbo.Numbers")
            .await
            .unwrap()
            .into_row_stream();
        assert!(stream.try_next().await.unwrap().is_some());
        server.shutdown().await;
        let outcome = loop {
            match stream.try_next().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert!(outcome.is_err(), "the read must fail, got {outcome:?}");
    })
    .await;
}

#[tokio::test]
async fn refused_logins_look_like_a_server_that_is_down() {
    let server = numbers(Encryption::Off, 1).await;
    server.set_fault(Some(Fault::RefuseLogins));
    let err = within(
        "refused",
        connect_with(config(&server, EncryptionLevel::Required)),
    )
    .await;
    assert!(err.is_err());
    assert_eq!(server.connections_total(), 1);
    assert!(server.logins().is_empty());
    server.set_fault(None);
    within("accepted", connect(&server)).await;
    assert_eq!(server.connections_total(), 2);
}

#[tokio::test]
async fn dropping_the_server_closes_connections() {
    let server = numbers(Encryption::Off, 100).await;
    let mut c = within("connect", connect(&server)).await;
    drop(server);
    let outcome = within("query after drop", async {
        match c.simple_query("SELECT 1").await {
            Err(e) => Err(e),
            Ok(s) => s.into_results().await.map(|_| ()),
        }
    })
    .await;
    assert!(outcome.is_err());
}
