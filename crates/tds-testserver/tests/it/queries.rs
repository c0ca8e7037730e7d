//! The T-SQL the connector generates, really executed; SQL Server's errors; the
//! INFORMATION_SCHEMA views.

use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Decimal128Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use medlake_tds_testserver::{Column, Encryption, Fault, SqlType, TdsServer};
use tiberius::{ColumnType, Row};

use crate::common::{TdsClient, connect, server, within};

fn orders_columns() -> Vec<Column> {
    vec![
        Column::new("OrderId", SqlType::Int).not_null(),
        Column::new("Customer", SqlType::NVarChar(Some(50))),
        Column::new(
            "Amount",
            SqlType::Decimal {
                precision: 10,
                scale: 2,
            },
        ),
        Column::new("Placed", SqlType::Date),
        Column::new("Status", SqlType::VarChar(Some(10))),
    ]
}

fn orders_batch(ids: std::ops::Range<i32>) -> RecordBatch {
    let customers = ["Alice", "Bob", "Anna", "Carl", "Ann"];
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(ids.clone().collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            ids.clone()
                .map(|i| Some(customers[i as usize % customers.len()]))
                .collect::<Vec<_>>(),
        )),
        Arc::new(
            Decimal128Array::from(
                ids.clone()
                    .map(|i| i128::from(i) * 1050)
                    .collect::<Vec<_>>(),
            )
            .with_precision_and_scale(10, 2)
            .unwrap(),
        ),
        Arc::new(Date32Array::from(
            ids.clone().map(|i| 19_700 + i).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.map(|i| if i % 3 == 0 { None } else { Some("open") })
                .collect::<Vec<_>>(),
        )),
    ];
    let fields: Vec<Field> = orders_columns()
        .iter()
        .zip(&arrays)
        .map(|(c, a)| Field::new(&c.name, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

async fn orders() -> TdsServer {
    let server = server(Encryption::Off).await;
    server.create_table("dbo", "Orders", orders_columns(), vec![orders_batch(1..11)]);
    server
}

async fn query(c: &mut TdsClient, sql: &str) -> Vec<Row> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_first_result()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn ints(c: &mut TdsClient, sql: &str) -> Vec<i32> {
    query(c, sql)
        .await
        .iter()
        .map(|r| r.try_get::<i32, _>(0).unwrap().unwrap())
        .collect()
}

async fn error_of(c: &mut TdsClient, sql: &str) -> tiberius::error::Error {
    match c.simple_query(sql).await {
        Err(e) => e,
        Ok(stream) => stream
            .into_results()
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} should fail")),
    }
}

#[tokio::test]
async fn tsql_isms_are_rewritten_and_executed() {
    let server = orders().await;
    within("queries", async {
        let mut c = connect(&server).await;
        assert_eq!(
            ints(&mut c, "SELECT TOP (2) [OrderId] FROM [master].[dbo].[Orders] ORDER BY [OrderId] DESC").await,
            vec![10, 9]
        );
        assert_eq!(
            ints(&mut c, "SELECT TOP 3 OrderId FROM dbo.Orders WITH (NOLOCK) ORDER BY OrderId").await,
            vec![1, 2, 3]
        );
        assert_eq!(
            ints(
                &mut c,
                "SELECT OrderId FROM dbo.Orders ORDER BY OrderId OFFSET 4 ROWS FETCH NEXT 3 ROWS ONLY"
            )
            .await,
            vec![5, 6, 7]
        );
        assert_eq!(
            ints(&mut c, "SELECT \"OrderId\" FROM \"dbo\".\"Orders\" WHERE \"OrderId\" BETWEEN 3 AND 5").await,
            vec![3, 4, 5]
        );
        assert_eq!(
            ints(&mut c, "select orderid from DBO.ORDERS where CUSTOMER like N'A%' and orderid in (1, 2, 3, 5, 10) order by 1").await,
            vec![2, 5, 10]
        );
        assert_eq!(
            ints(&mut c, "SELECT OrderId FROM Orders WHERE Status IS NULL ORDER BY OrderId").await,
            vec![3, 6, 9]
        );
        assert_eq!(
            ints(
                &mut c,
                "SELECT OrderId FROM dbo.Orders WHERE NOT (Status IS NOT NULL) OR Customer = 'Bob' ORDER BY OrderId"
            )
            .await,
            vec![1, 3, 6, 9]
        );
        assert_eq!(
            ints(&mut c, "SELECT OrderId FROM dbo.Orders WHERE Customer LIKE '_nn%' ORDER BY OrderId").await,
            vec![2, 4, 7, 9]
        );

        // COUNT_BIG is bigint, COUNT is int, MIN/MAX keep the column type.
        let rows = query(
            &mut c,
            "SELECT COUNT_BIG(*), COUNT(*), MIN(Amount), MAX(Placed) FROM dbo.Orders WHERE Amount > 50",
        )
        .await;
        let r = &rows[0];
        assert_eq!(r.try_get::<i64, _>(0).unwrap(), Some(6));
        assert_eq!(r.try_get::<i32, _>(1).unwrap(), Some(6));
        assert_eq!(
            r.try_get::<tiberius::numeric::Numeric, _>(2).unwrap().unwrap().to_string(),
            "52.50"
        );
        assert_eq!(r.columns()[3].column_type(), ColumnType::Daten);
        assert!(r.columns().iter().all(|c| c.name().is_empty()));

        // CAST and CONVERT with T-SQL type names.
        let rows = query(
            &mut c,
            "SELECT CAST(Amount AS INT) AS a, CONVERT(NVARCHAR(20), OrderId) AS b, \
             CAST(1 AS BIT) AS c, CAST(OrderId AS TINYINT) AS d FROM dbo.Orders WHERE OrderId = 2",
        )
        .await;
        assert_eq!(rows[0].try_get::<i32, _>("a").unwrap(), Some(21));
        assert_eq!(rows[0].try_get::<&str, _>("b").unwrap(), Some("2"));
        assert_eq!(rows[0].try_get::<bool, _>("c").unwrap(), Some(true));
        assert_eq!(rows[0].try_get::<u8, _>("d").unwrap(), Some(2));

        // Names come back as written; `*` gives the declared names.
        let rows = query(&mut c, "SELECT orderid, CUSTOMER AS Who FROM dbo.orders WHERE OrderId = 1").await;
        let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
        assert_eq!(names, vec!["orderid", "Who"]);
        assert_eq!(rows[0].columns()[0].column_type(), ColumnType::Int4);
        let rows = query(&mut c, "SELECT * FROM dbo.Orders WHERE 1 = 0").await;
        assert!(rows.is_empty());
        let mut stream = c.simple_query("SELECT * FROM dbo.Orders WHERE 1 = 0").await.unwrap();
        let names: Vec<String> = stream
            .columns()
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        assert_eq!(names, vec!["OrderId", "Customer", "Amount", "Placed", "Status"]);
        drop(stream);

        // Several statements: one result each; SET is acknowledged without a result.
        let results = c
            .simple_query("SET NOCOUNT ON; SELECT 1 AS one; SELECT OrderId FROM dbo.Orders WHERE OrderId < 3")
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].len(), 1);
        assert_eq!(results[1].len(), 2);

        let rows = query(&mut c, "SELECT @@VERSION").await;
        let version: &str = rows[0].try_get(0).unwrap().unwrap();
        assert!(version.starts_with("Microsoft SQL Server"), "{version}");

        // Three-part names ignore the database part.
        assert_eq!(
            ints(&mut c, "SELECT COUNT(*) FROM anydb.dbo.Orders o WHERE o.OrderId >= 9").await,
            vec![2]
        );
    })
    .await;
}

#[tokio::test]
async fn errors_carry_sql_server_numbers_and_the_connection_survives() {
    let server = orders().await;
    within("errors", async {
        let mut c = connect(&server).await;

        let e = error_of(&mut c, "SELECT * FROM dbo.Nope").await;
        assert_eq!(e.code(), Some(208));
        assert!(
            e.to_string().contains("Invalid object name 'dbo.Nope'."),
            "{e}"
        );

        let e = error_of(&mut c, "SELECT Nope FROM dbo.Orders").await;
        assert_eq!(e.code(), Some(207));
        assert!(e.to_string().contains("Invalid column name 'Nope'."), "{e}");

        let e = error_of(&mut c, "SELECT * FORM dbo.Orders").await;
        assert_eq!(e.code(), Some(102));
        assert!(e.to_string().contains("Incorrect syntax near"), "{e}");

        let e = error_of(&mut c, "SELECT 1 / 0").await;
        assert_eq!(e.code(), Some(8134));

        // A parametrized query fails the same way.
        let e = c
            .query("SELECT * FROM [dbo].[Missing] WHERE Id = @P1", &[&1i32])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(208));

        // Still usable.
        assert_eq!(
            ints(&mut c, "SELECT COUNT(*) FROM dbo.Orders").await,
            vec![10]
        );

        server.set_fault(Some(Fault::ErrorOnQuery {
            number: 1205,
            message: "Transaction (Process ID 51) was deadlocked".into(),
        }));
        let e = error_of(&mut c, "SELECT 1").await;
        assert_eq!(e.code(), Some(1205));
        server.set_fault(None);
        assert_eq!(ints(&mut c, "SELECT 1").await, vec![1]);
    })
    .await;
}

#[tokio::test]
async fn tables_can_change_between_queries() {
    let server = orders().await;
    within("table changes", async {
        let mut c = connect(&server).await;
        server.append_rows("dbo", "orders", vec![orders_batch(11..16)]);
        assert_eq!(
            ints(&mut c, "SELECT MAX(OrderId) FROM dbo.Orders").await,
            vec![15]
        );
        server.drop_table("DBO", "Orders");
        assert_eq!(
            error_of(&mut c, "SELECT 1 FROM dbo.Orders").await.code(),
            Some(208)
        );
    })
    .await;
}

#[tokio::test]
async fn information_schema_describes_declared_tables() {
    let server = orders().await;
    server.create_table(
        "sales",
        "Wide",
        vec![
            Column::new("V", SqlType::VarChar(None)),
            Column::new("N", SqlType::NChar(8)).not_null(),
            Column::new("B", SqlType::VarBinary(Some(16))),
            Column::new("F", SqlType::Float),
            Column::new("T", SqlType::DateTime2 { scale: 3 }),
            Column::new("R", SqlType::RowVersion),
            Column::new("M", SqlType::Money),
            Column::new("X", SqlType::Bit),
        ],
        vec![],
    );
    within("information_schema", async {
        let mut c = connect(&server).await;
        let rows = query(
            &mut c,
            "SELECT TABLE_CATALOG, TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM INFORMATION_SCHEMA.TABLES \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await;
        let tables: Vec<(String, String, String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get::<&str, _>(0).unwrap().unwrap().to_string(),
                    r.try_get::<&str, _>(1).unwrap().unwrap().to_string(),
                    r.try_get::<&str, _>(2).unwrap().unwrap().to_string(),
                    r.try_get::<&str, _>(3).unwrap().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            tables,
            vec![
                ("master".into(), "dbo".into(), "Orders".into(), "BASE TABLE".into()),
                ("master".into(), "sales".into(), "Wide".into(), "BASE TABLE".into()),
            ]
        );

        let rows = c
            .query(
                "SELECT COLUMN_NAME, ORDINAL_POSITION, IS_NULLABLE, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, \
                 NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION \
                 FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2 \
                 ORDER BY ORDINAL_POSITION",
                &[&"sales", &"Wide"],
            )
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        type Described = (String, i32, String, String, Option<i32>, Option<u8>, Option<i32>, Option<i16>);
        let got: Vec<Described> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get::<&str, _>(0).unwrap().unwrap().to_string(),
                    r.try_get::<i32, _>(1).unwrap().unwrap(),
                    r.try_get::<&str, _>(2).unwrap().unwrap().to_string(),
                    r.try_get::<&str, _>(3).unwrap().unwrap().to_string(),
                    r.try_get::<i32, _>(4).unwrap(),
                    r.try_get::<u8, _>(5).unwrap(),
                    r.try_get::<i32, _>(6).unwrap(),
                    r.try_get::<i16, _>(7).unwrap(),
                )
            })
            .collect();
        let row = |n: &str, p: i32, null: &str, t: &str, len, prec, scale, dtp| {
            (n.to_string(), p, null.to_string(), t.to_string(), len, prec, scale, dtp)
        };
        assert_eq!(
            got,
            vec![
                row("V", 1, "YES", "varchar", Some(-1), None, None, None),
                row("N", 2, "NO", "nchar", Some(8), None, None, None),
                row("B", 3, "YES", "varbinary", Some(16), None, None, None),
                row("F", 4, "YES", "float", None, Some(53), None, None),
                row("T", 5, "YES", "datetime2", None, None, None, Some(3)),
                row("R", 6, "NO", "timestamp", None, None, None, None),
                row("M", 7, "YES", "money", None, Some(19), Some(4), None),
                row("X", 8, "YES", "bit", None, None, None, None),
            ]
        );
        // The view's own column types are SQL Server's.
        let types: Vec<ColumnType> = rows[0].columns().iter().map(|c| c.column_type()).collect();
        assert_eq!(
            types,
            vec![
                ColumnType::NVarchar,
                ColumnType::Int4,
                ColumnType::BigVarChar,
                ColumnType::NVarchar,
                ColumnType::Int4,
                ColumnType::Int1,
                ColumnType::Int4,
                ColumnType::Int2,
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn bracketed_names_with_escaped_brackets() {
    let server = server(Encryption::NotSupported).await;
    let hostile = "x]; DROP TABLE dbo.Orders; --";
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", arrow::datatypes::DataType::Int32, false),
        Field::new("v", arrow::datatypes::DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![
                "'; DROP TABLE dbo.Orders; --",
                "ok",
            ])),
        ],
    )
    .unwrap();
    server.create_table(
        "dbo",
        "Odd]Name",
        vec![
            Column::new("id", SqlType::Int).not_null(),
            Column::new(hostile, SqlType::NVarChar(Some(50))),
        ],
        vec![batch],
    );
    within("hostile names", async {
        let mut c = crate::common::connect_with(crate::common::config(
            &server,
            tiberius::EncryptionLevel::NotSupported,
        ))
        .await
        .unwrap();
        let rows = c
            .query(
                "SELECT [id], [x]]; DROP TABLE dbo.Orders; --] FROM [dbo].[Odd]]Name] \
                 WHERE [x]]; DROP TABLE dbo.Orders; --] = @P1",
                &[&"'; DROP TABLE dbo.Orders; --"],
            )
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].try_get::<i32, _>(0).unwrap(), Some(1));
        assert_eq!(rows[0].columns()[1].name(), hostile);
    })
    .await;
}

#[tokio::test]
async fn joins_ctes_and_t_sql_functions() {
    let server = orders().await;
    within("more t-sql", async {
        let mut c = connect(&server).await;
        // Join, table aliases, schema.table.column, HAVING, DISTINCT.
        assert_eq!(
            ints(
                &mut c,
                "SELECT a.OrderId FROM dbo.Orders a JOIN [dbo].[Orders] AS b ON a.OrderId = b.OrderId + 1 \
                 ORDER BY a.OrderId DESC OFFSET 0 ROWS FETCH NEXT 2 ROWS ONLY"
            )
            .await,
            vec![10, 9]
        );
        assert_eq!(
            ints(
                &mut c,
                "SELECT dbo.Orders.OrderId FROM dbo.Orders WHERE dbo.Orders.OrderId = 2"
            )
            .await,
            vec![2]
        );
        let rows = query(
            &mut c,
            "SELECT Customer, COUNT(*) AS n FROM dbo.Orders GROUP BY Customer HAVING COUNT(*) > 1 ORDER BY Customer",
        )
        .await;
        let groups: Vec<(String, i32)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get::<&str, _>(0).unwrap().unwrap().to_string(),
                    r.try_get::<i32, _>(1).unwrap().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            vec![
                ("Alice".to_string(), 2),
                ("Ann".to_string(), 2),
                ("Anna".to_string(), 2),
                ("Bob".to_string(), 2),
                ("Carl".to_string(), 2)
            ]
        );
        assert_eq!(query(&mut c, "SELECT DISTINCT Status FROM dbo.Orders").await.len(), 2);

        // CTE, derived table, UNION ALL, db..table.
        assert_eq!(
            ints(
                &mut c,
                "WITH big AS (SELECT OrderId FROM master..Orders WHERE Amount > 90) \
                 SELECT OrderId FROM big UNION ALL SELECT x.OrderId FROM (SELECT OrderId FROM dbo.Orders) x \
                 WHERE x.OrderId = 1 ORDER BY 1"
            )
            .await,
            vec![1, 9, 10]
        );

        // T-SQL functions and system values.
        let rows = query(
            &mut c,
            "SELECT ISNULL(Status, 'none') AS s, LEN('ab  ') AS l, DATALENGTH(N'ab') AS d, \
             'id-' + CONVERT(VARCHAR(10), OrderId) AS label, TRY_CONVERT(INT, 'x') AS bad, \
             CAST(SERVERPROPERTY('ProductMajorVersion') AS INT) AS major, @@SPID AS spid, \
             GETDATE() AS now \
             FROM dbo.Orders WHERE OrderId = 3",
        )
        .await;
        let r = &rows[0];
        assert_eq!(r.try_get::<&str, _>("s").unwrap(), Some("none"));
        assert_eq!(r.try_get::<i32, _>("l").unwrap(), Some(2));
        assert_eq!(r.try_get::<&str, _>("label").unwrap(), Some("id-3"));
        assert_eq!(r.try_get::<i32, _>("bad").unwrap(), None);
        assert_eq!(r.try_get::<i32, _>("major").unwrap(), Some(16));
        assert!(r.try_get::<i16, _>("spid").unwrap().unwrap() >= 51);
        assert!(r.try_get::<chrono::NaiveDateTime, _>("now").unwrap().is_some());

        // USE switches database (the only one is master); another name is 911.
        let results = c
            .simple_query("USE master; SELECT DB_NAME()")
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(error_of(&mut c, "USE nowhere").await.code(), Some(911));
    })
    .await;
}
