//! The Postgres door with tokio-postgres, a real client: TLS and passwords, types in text and
//! binary, parameters, SQLSTATEs, COPY, cancellation, settings and transactions.

mod common;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use common::{ALICE, BOB_MD5, READER, sqlstate, start, users};
use futures::{StreamExt, TryStreamExt};
use medlake_pgwire::{Access, Config, Server, Tls};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

fn text_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_md5_logins_over_tls() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .expect("version()")
        .get(0);
    assert!(version.starts_with("PostgreSQL 16.6 (medlake"), "{version}");

    let bob = h
        .try_connect(BOB_MD5.0, BOB_MD5.1)
        .await
        .expect("an md5 user logs in");
    let rows = bob
        .query(
            "SELECT device_id, readings FROM gold.device_counts ORDER BY device_id",
            &[],
        )
        .await
        .expect("read gold");
    let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(counts, vec![("pump-1".into(), 2), ("pump-2".into(), 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_say_why() {
    let h = start(true, users()).await;
    let wrong = h
        .try_connect(ALICE.0, "wrong")
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&wrong), "28P01");
    assert!(!wrong.to_string().contains(ALICE.1));
    let wrong_md5 = h
        .try_connect(BOB_MD5.0, "wrong")
        .await
        .expect_err("wrong md5 password");
    assert_eq!(sqlstate(&wrong_md5), "28P01");
    // An unknown user fails exactly like a wrong password.
    let unknown = h
        .try_connect("mallory", "x")
        .await
        .expect_err("unknown user");
    assert_eq!(sqlstate(&unknown), "28P01");
    let message = unknown
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );

    let mut other_db = h.config(ALICE.0, ALICE.1);
    other_db.dbname("postgres");
    let e = h
        .try_connect_with(&other_db)
        .await
        .expect_err("unknown database");
    assert_eq!(sqlstate(&e), "3D000");

    // TLS is required: a plaintext login is refused before any password is asked.
    let mut plain = h.config(ALICE.0, ALICE.1);
    plain.ssl_mode(SslMode::Disable);
    let e = h
        .try_connect_with(&plain)
        .await
        .expect_err("plaintext refused");
    assert_eq!(sqlstate(&e), "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_lock_the_address_out() {
    let logins = medlake_pgwire::Logins::new(medlake_auth::LoginPolicy {
        max_failures_per_user: 5,
        lockout: Duration::from_secs(30),
        ..Default::default()
    });
    let h = common::start_configured(true, users(), |c| c.logins = logins.clone()).await;
    // A success clears earlier failures of that user.
    for _ in 0..4 {
        h.try_connect(ALICE.0, "guess").await.expect_err("wrong");
    }
    h.connect().await;
    for _ in 0..5 {
        let e = h.try_connect(ALICE.0, "guess").await.expect_err("wrong");
        assert_eq!(sqlstate(&e), "28P01");
    }
    // Locked out: even the right password is not checked, and the answer says why.
    let e = h
        .try_connect(ALICE.0, ALICE.1)
        .await
        .expect_err("locked out");
    assert_eq!(sqlstate(&e), "28000", "{e}");
    let message = e.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("too many failed logins")),
        "{message:?}"
    );
    // Other users from this address are not locked out by alice's failures...
    h.try_connect(BOB_MD5.0, BOB_MD5.1)
        .await
        .expect("bob still logs in");
    // ...and the record is the server's: the other doors share it (same Logins).
    assert!(logins.check([127, 0, 0, 1].into(), ALICE.0).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_per_connection_are_bounded() {
    let h = common::start_configured(false, Access::InsecureNoAuth, |c| {
        c.max_prepared_statements = 3
    })
    .await;
    let client = h.connect().await;
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(
            client
                .prepare(&format!("SELECT {n} + $1::BIGINT"))
                .await
                .expect("within the bound"),
        );
    }
    let e = client
        .prepare("SELECT 4")
        .await
        .expect_err("beyond the bound");
    assert_eq!(sqlstate(&e), "54000", "{e}");
    // The connection is still usable, and closing a statement makes room.
    drop(held.pop());
    let again = client.prepare("SELECT 5").await.expect("room again");
    let five: i64 = client.query_one(&again, &[]).await.expect("run").get(0);
    assert_eq!(five, 5);
    drop(again);
    // Statements closed after use (tokio-postgres's one-shot queries) never accumulate.
    for _ in 0..10 {
        client.query("SELECT 1", &[]).await.expect("one-shot");
        client.simple_query("SELECT 1").await.expect("simple");
    }
    assert_eq!(held.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_refuse_unsafe_setups() {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let engine = medlake_engine::Engine::open(dir.path().join("w").to_str().expect("utf-8"))
        .await
        .expect("open");
    let bind = |listen: &str, tls: Option<Tls>, access: Access| {
        let engine = engine.clone();
        let listen = listen.parse().expect("an address");
        async move {
            Server::bind(
                engine,
                Config {
                    listen,
                    tls,
                    access,
                    max_connections: 4,
                    max_prepared_statements: 4,
                    logins: Default::default(),
                },
            )
            .await
        }
    };
    let e = bind("0.0.0.0:0", None, Access::InsecureNoAuth)
        .await
        .err()
        .expect("no-auth beyond loopback is refused");
    assert!(e.to_string().contains("loopback"), "{e}");
    let e = bind("127.0.0.1:0", None, Access::Users(Vec::new()))
        .await
        .err()
        .expect("no users is refused");
    assert!(e.to_string().contains("no users"), "{e}");
    // Passwords are never taken in clear off the machine.
    let e = bind("0.0.0.0:0", None, common::users())
        .await
        .err()
        .expect("a password door without TLS beyond loopback is refused");
    assert!(e.to_string().contains("[tls]"), "{e}");

    // TLS configured but unusable: the server does not start (no plaintext fallback).
    let missing = Tls {
        cert: dir.path().join("missing.crt"),
        key: dir.path().join("missing.key"),
    };
    assert!(bind("127.0.0.1:0", Some(missing), users()).await.is_err());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let bad = Tls {
        cert: garbage.clone(),
        key: garbage,
    };
    let e = bind("127.0.0.1:0", Some(bad), users())
        .await
        .err()
        .expect("garbage TLS files are refused");
    assert!(e.to_string().contains("TLS"), "{e}");
}

const TYPES: &str = "SELECT
  TIMESTAMP '2026-11-23 10:00:00.123456' AS ts,
  arrow_cast(TIMESTAMP '2026-11-23 10:00:00', 'Timestamp(Microsecond, Some(\"UTC\"))') AS tstz,
  DATE '2026-11-23' AS d,
  CAST(12.345 AS DECIMAL(10, 3)) AS dec,
  true AS b,
  make_array(1, 2, 3) AS ints,
  make_array('a', 'b') AS texts,
  arrow_cast('a large string', 'LargeUtf8') AS big,
  arrow_cast('abc', 'Binary') AS bin,
  CAST(7 AS SMALLINT) AS small,
  CAST(2.5 AS REAL) AS real,
  CAST(NULL AS INT) AS nothing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_in_binary_and_text() {
    let h = start(true, users()).await;
    let client = h.connect().await;

    // Extended protocol: tokio-postgres asks for binary results.
    let row = client.query_one(TYPES, &[]).await.expect("binary results");
    let types: Vec<Type> = row.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        vec![
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::DATE,
            Type::NUMERIC,
            Type::BOOL,
            Type::INT8_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT,
            Type::BYTEA,
            Type::INT2,
            Type::FLOAT4,
            Type::INT4,
        ]
    );
    let ts: NaiveDateTime = row.get("ts");
    assert_eq!(ts.to_string(), "2026-11-23 10:00:00.123456");
    let tstz: DateTime<Utc> = row.get("tstz");
    assert_eq!(tstz.to_rfc3339(), "2026-11-23T10:00:00+00:00");
    let d: NaiveDate = row.get("d");
    assert_eq!(d, NaiveDate::from_ymd_opt(2026, 11, 23).expect("a date"));
    assert!(row.get::<_, bool>("b"));
    assert_eq!(row.get::<_, Vec<i64>>("ints"), vec![1, 2, 3]);
    assert_eq!(row.get::<_, Vec<String>>("texts"), vec!["a", "b"]);
    assert_eq!(row.get::<_, String>("big"), "a large string");
    assert_eq!(row.get::<_, Vec<u8>>("bin"), b"abc");
    assert_eq!(row.get::<_, i16>("small"), 7);
    assert_eq!(row.get::<_, f32>("real"), 2.5);
    assert_eq!(row.get::<_, Option<i32>>("nothing"), None);

    // Simple protocol: text results as Postgres prints them.
    let messages = client.simple_query(TYPES).await.expect("text results");
    let rows = text_rows(&messages);
    let expected: Vec<Option<String>> = [
        Some("2026-11-23 10:00:00.123456"),
        // PostgreSQL's text: no zero fraction.
        Some("2026-11-23 10:00:00+00"),
        Some("2026-11-23"),
        Some("12.345"),
        Some("t"),
        Some("{1,2,3}"),
        Some("{a,b}"),
        Some("a large string"),
        Some("\\x616263"),
        Some("7"),
        Some("2.5"),
        None,
    ]
    .into_iter()
    .map(|v| v.map(str::to_owned))
    .collect();
    assert_eq!(rows, vec![expected]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_typed_values_never_sql() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    let rows = client
        .query(
            "SELECT device_id, value FROM bronze.readings WHERE device_id = $1 AND value > $2 ORDER BY value",
            &[&"pump-1", &70.0f64],
        )
        .await
        .expect("a parameterised query");
    let got: Vec<(String, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("pump-1".into(), 72.0), ("pump-1".into(), 97.5)]);

    // A value that looks like SQL stays a value.
    let rows = client
        .query(
            "SELECT count(*) FROM bronze.readings WHERE device_id = $1",
            &[&"x' OR '1'='1"],
        )
        .await
        .expect("an injection attempt is just a string");
    assert_eq!(rows[0].get::<_, i64>(0), 0);

    // Types as the client declares them.
    let statement = client
        .prepare_typed(
            "SELECT count(*) FROM bronze.readings WHERE ts >= $1 AND patient_id = $2",
            &[Type::TIMESTAMP, Type::INT8],
        )
        .await
        .expect("prepare with declared types");
    assert_eq!(statement.params(), &[Type::TIMESTAMP, Type::INT8]);
    let since = NaiveDate::from_ymd_opt(2026, 11, 23)
        .and_then(|d| d.and_hms_opt(10, 1, 0))
        .expect("a time");
    let row = client
        .query_one(&statement, &[&since, &1002i64])
        .await
        .expect("run with bound values");
    assert_eq!(row.get::<_, i64>(0), 1);

    // Parameters of writes, and a NULL.
    let n = client
        .execute(
            "INSERT INTO bronze.readings VALUES ($1, $2, $3, $4, $5)",
            &[&"pump-3", &None::<i64>, &"spo2", &Some(95.5f64), &since],
        )
        .await
        .expect("insert with parameters");
    assert_eq!(n, 1);
    let row = client
        .query_one(
            "SELECT patient_id, value FROM bronze.readings WHERE device_id = 'pump-3'",
            &[],
        )
        .await
        .expect("read it back");
    assert_eq!(row.get::<_, Option<i64>>(0), None);
    assert_eq!(row.get::<_, f64>(1), 95.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_their_sqlstate() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    for (sql, code) in [
        ("SELECT * FROM bronze.nope", "42P01"),
        ("SELECT nope FROM bronze.readings", "42703"),
        ("SELEC 1", "42601"),
        // `?` is not a parameter in PostgreSQL (ADBC/JDBC's qmark style is for Flight SQL).
        (
            "SELECT count(*) FROM bronze.readings WHERE value > ?",
            "42601",
        ),
        ("COPY bronze.readings FROM STDIN", "0A000"),
        ("SELECT 1 / 0", "22012"),
        ("SET no_such_setting = 1", "42704"),
        ("CREATE TABLE bronze.readings (id INT)", "42P07"),
        (
            "INSERT INTO bronze.readings VALUES ('d', 1, NULL, 1.0, TIMESTAMP '2026-11-23 10:00:00')",
            "23502",
        ),
    ] {
        let simple = client.simple_query(sql).await.expect_err(sql);
        assert_eq!(
            sqlstate(&simple),
            code,
            "simple protocol: {sql}: {simple:?}"
        );
        if !sql.starts_with("COPY") && !sql.starts_with("SET") {
            let extended = client.query(sql, &[]).await.expect_err(sql);
            assert_eq!(
                sqlstate(&extended),
                code,
                "extended protocol: {sql}: {extended:?}"
            );
        }
    }
    // The connection is still good, and the refused write left the table as it was.
    let row = client
        .query_one("SELECT count(*) FROM bronze.readings", &[])
        .await
        .expect("still usable");
    assert_eq!(row.get::<_, i64>(0), 4);

    // In one query string, statements before the failing one keep their effect.
    let e = client
        .batch_execute(
            "INSERT INTO bronze.readings VALUES ('pump-9', 9, 'spo2', 99.0, TIMESTAMP '2026-11-23 11:00:00'); SELECT * FROM nowhere",
        )
        .await
        .expect_err("the second statement fails");
    assert_eq!(sqlstate(&e), "42P01");
    let row = client
        .query_one("SELECT count(*) FROM bronze.readings", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_in_text_and_csv() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    client
        .batch_execute(
            "INSERT INTO bronze.readings VALUES ('tab\there, \"quoted\"', 7, 'note', 1.5, TIMESTAMP '2026-11-24 00:00:00')",
        )
        .await
        .expect("insert an awkward value");
    let collect = |sql: &'static str| {
        let client = &client;
        async move {
            let stream = client.copy_out(sql).await.expect(sql);
            let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("copy data");
            String::from_utf8(chunks.concat()).expect("utf-8")
        }
    };
    let csv = collect(
        "COPY (SELECT device_id, patient_id, value FROM bronze.readings ORDER BY ts, device_id) TO STDOUT WITH (FORMAT csv, HEADER)",
    )
    .await;
    assert_eq!(
        csv,
        "device_id,patient_id,value\n\
         pump-1,1001,72\n\
         pump-1,1001,97.5\n\
         pump-2,1002,88\n\
         pump-2,,\n\
         \"tab\there, \"\"quoted\"\"\",7,1.5\n"
    );
    let text = collect("COPY (SELECT device_id, patient_id FROM bronze.readings WHERE patient_id IS NULL OR patient_id = 7 ORDER BY ts) TO STDOUT").await;
    assert_eq!(text, "pump-2\t\\N\ntab\\there, \"quoted\"\t7\n");
    let table = collect("COPY gold.device_counts TO STDOUT (FORMAT csv)").await;
    let mut lines: Vec<&str> = table.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["pump-1,2", "pump-2,2"]);
}

/// A query that runs for minutes unless stopped.
const LONG: &str = "SELECT sum(value % 7) FROM range(0, 100000000000) AS t(value)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    let token = client.cancel_token();
    let tls = h.tls();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tls).await
    });
    let e = tokio::time::timeout(Duration::from_secs(120), client.simple_query(LONG))
        .await
        .expect("the cancel arrives long before the query could finish")
        .expect_err("cancelled");
    assert_eq!(sqlstate(&e), "57014");
    canceller
        .await
        .expect("join")
        .expect("the cancel request was sent");
    // The connection goes on.
    let row = client
        .query_one("SELECT 1::INT", &[])
        .await
        .expect("after cancel");
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_stops_long_queries() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    client
        .batch_execute("SET statement_timeout = 300")
        .await
        .expect("set statement_timeout");
    let shown = client
        .simple_query("SHOW statement_timeout")
        .await
        .expect("show");
    assert_eq!(text_rows(&shown), vec![vec![Some("300ms".to_string())]]);
    let e = tokio::time::timeout(Duration::from_secs(120), client.query(LONG, &[]))
        .await
        .expect("the timeout fires")
        .expect_err("timed out");
    assert_eq!(sqlstate(&e), "57014");
    let message = e
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("statement timeout"), "{message}");
    client
        .batch_execute("RESET statement_timeout")
        .await
        .expect("reset");
    let shown = client
        .simple_query("SHOW statement_timeout")
        .await
        .expect("show");
    assert_eq!(text_rows(&shown), vec![vec![Some("0".to_string())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_row_by_row() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    let rows = client
        .query_raw(
            "SELECT value FROM range(0, 2000000) AS t(value)",
            Vec::<i64>::new(),
        )
        .await
        .expect("a large result");
    tokio::pin!(rows);
    let mut count = 0u64;
    let mut sum = 0i64;
    while let Some(row) = rows.next().await {
        let row = row.expect("a row");
        sum += row.get::<_, i64>(0);
        count += 1;
    }
    assert_eq!(count, 2_000_000);
    assert_eq!(sum, 1_999_999 * 2_000_000 / 2);
}

/// An Execute without a row limit (tokio-postgres' `query_raw`, like psycopg, pgjdbc and
/// Npgsql) streams: the first rows of a result that would take hours to produce arrive at
/// once, where pgwire's default collected the whole result in memory first. Leaving it
/// closes the connection and stops the query; the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_results_stream_without_being_held_whole() {
    let h = start(true, users()).await;
    let client = h.connect().await;
    let endless = "SELECT value FROM range(0, 1000000000000) AS t(value)";
    let first = async {
        let rows = client
            .query_raw(endless, Vec::<i64>::new())
            .await
            .expect("an endless result");
        tokio::pin!(rows);
        let mut seen = Vec::new();
        while seen.len() < 10_000 {
            let row = rows.next().await.expect("more rows").expect("a row");
            seen.push(row.get::<_, i64>(0));
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(120), first)
        .await
        .expect("the first rows arrive while the result is still being produced");
    let distinct: std::collections::HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 10_000);
    drop(client);
    let again = h.connect().await;
    let one = again.query_one("SELECT 1::BIGINT", &[]).await.unwrap();
    assert_eq!(one.get::<_, i64>(0), 1);
}

/// An Execute with a row limit (a portal's pages, JDBC's `setFetchSize`) answers that many
/// rows and PortalSuspended, keeps the rest in the portal, and the last page ends with the
/// command tag; a page of an endless result comes back at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_are_read_in_pages() {
    let h = start(true, users()).await;
    let mut client = h.connect().await;
    let transaction = client.transaction().await.unwrap();
    let statement = transaction
        .prepare("SELECT value FROM range(0, 100) AS t(value) WHERE value < $1 ORDER BY value")
        .await
        .unwrap();
    let portal = transaction.bind(&statement, &[&10i64]).await.unwrap();
    let mut pages = Vec::new();
    loop {
        let page = transaction.query_portal(&portal, 3).await.unwrap();
        let values: Vec<i64> = page.iter().map(|r| r.get(0)).collect();
        if values.is_empty() {
            break;
        }
        pages.push(values);
        assert!(pages.len() <= 4, "{pages:?}");
    }
    assert_eq!(
        pages,
        vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
    );
    let endless = transaction
        .prepare("SELECT value FROM range(0, 1000000000000) AS t(value)")
        .await
        .unwrap();
    let portal = transaction.bind(&endless, &[]).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let rows = tokio::time::timeout(
            Duration::from_secs(120),
            transaction.query_portal(&portal, 1000),
        )
        .await
        .expect("a page of an endless result")
        .unwrap();
        assert_eq!(rows.len(), 1000);
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(seen.len(), 3000, "each page goes on where the last stopped");
    transaction.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_transactions_as_tools_send_them() {
    let h = start(true, users()).await;
    let config = h.config(ALICE.0, ALICE.1);
    let (client, mut connection) = config.connect(h.tls()).await.expect("connect");
    let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(notice) = message {
                let _ = notices_tx.send(notice);
            }
        }
    });

    let show = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = text_rows(&client.simple_query(sql).await.expect(sql));
            rows[0][0].clone().expect("a value")
        }
    };
    assert_eq!(show("SHOW server_version").await, "16.6");
    assert_eq!(show("SHOW DateStyle").await, "ISO, MDY");
    assert_eq!(show("SHOW integer_datetimes").await, "on");
    assert_eq!(show("SHOW application_name").await, "medlake-tests");
    client
        .batch_execute(
            "SET application_name = 'dashboard'; SET TIME ZONE 'UTC'; SET extra_float_digits = 3",
        )
        .await
        .expect("SETs as drivers send them");
    assert_eq!(show("SHOW application_name").await, "dashboard");
    assert_eq!(
        show("SHOW transaction isolation level").await,
        "read committed"
    );

    // search_path picks the schema of unqualified names.
    client
        .batch_execute("SET search_path TO gold")
        .await
        .expect("search_path");
    let row = client
        .query_one("SELECT count(*) FROM device_counts", &[])
        .await
        .expect("unqualified name in gold");
    assert_eq!(row.get::<_, i64>(0), 2);

    // Autocommit semantics: a write inside BEGIN stays, and ROLLBACK says so.
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .batch_execute("INSERT INTO bronze.readings VALUES ('pump-4', 4, 'spo2', 96.0, TIMESTAMP '2026-11-23 12:00:00')")
        .await
        .expect("insert in a block");
    client
        .batch_execute("ROLLBACK")
        .await
        .expect("rollback is accepted");
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a notice")
        .expect("the warning");
    assert_eq!(notice.code().code(), "01000");
    assert!(
        notice.message().contains("does not undo"),
        "{}",
        notice.message()
    );

    // DISCARD ALL, as connection pools send it, resets the session.
    client
        .batch_execute("DISCARD ALL")
        .await
        .expect("discard all");
    assert_eq!(show("SHOW application_name").await, "medlake-tests");
    let e = client
        .query_one("SELECT count(*) FROM device_counts", &[])
        .await
        .expect_err("search_path is back to the default");
    assert_eq!(sqlstate(&e), "42P01");

    // Transactions as drivers wrap them.
    let mut client = client;
    let transaction = client.transaction().await.expect("begin");
    let row = transaction
        .query_one("SELECT count(*) FROM bronze.readings", &[])
        .await
        .expect("read in a transaction");
    assert_eq!(row.get::<_, i64>(0), 5);
    transaction.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_users_query_but_never_write() {
    let h = start(true, users()).await;
    let reader = h
        .try_connect(READER.0, READER.1)
        .await
        .expect("the reader logs in");
    let row = reader
        .query_one("SELECT sum(readings) FROM gold.device_counts", &[])
        .await
        .expect("a query");
    assert_eq!(row.get::<_, Option<i64>>(0), Some(4));
    reader
        .simple_query("SHOW TABLES")
        .await
        .expect("listings are reads");
    let shown = reader
        .simple_query("SHOW default_transaction_read_only")
        .await
        .expect("show");
    assert_eq!(text_rows(&shown), vec![vec![Some("on".to_string())]]);
    for write in [
        "INSERT INTO bronze.readings VALUES ('x', 1, 'spo2', 1.0, TIMESTAMP '2026-11-23 10:00:00')",
        "CREATE TABLE bronze.mine (id INT)",
        "DROP TABLE bronze.readings",
        "REFRESH MATERIALIZED VIEW gold.device_counts",
        "OPTIMIZE bronze.readings",
        // Writes nested in reads: they ran before the old per-door check saw them.
        "COPY (DROP TABLE bronze.readings) TO STDOUT",
        "COPY (CREATE TABLE bronze.copied AS SELECT 1 AS x) TO STDOUT",
        "SELECT * INTO bronze.copied FROM bronze.readings",
        "EXPLAIN ANALYZE INSERT INTO bronze.readings SELECT * FROM bronze.readings",
        "SET datafusion.runtime.memory_limit = '1G'",
    ] {
        let e = reader.simple_query(write).await.expect_err(write);
        assert_eq!(sqlstate(&e), "42501", "{write}");
        let e = reader.execute(write, &[]).await.expect_err(write);
        assert_eq!(sqlstate(&e), "42501", "{write}");
    }
    let row = reader
        .query_one("SELECT count(*) FROM bronze.readings", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 4, "nothing was written");
    let copied = reader
        .simple_query("SELECT * FROM information_schema.tables WHERE table_name = 'copied'")
        .await
        .expect("listing");
    assert!(text_rows(&copied).is_empty(), "no table was created");
}
