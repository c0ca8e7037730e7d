//! Power BI Desktop's PostgreSQL connector (Npgsql 4.0.x) replayed message by message: a raw
//! protocol client over TLS with SCRAM-SHA-256 sends exactly what Npgsql sends — its
//! type-loading batch (three Parse/Bind/Describe/Execute and one Sync, text results), `DISCARD
//! ALL` before reusing a pooled connection — then Power BI's navigation and preview queries.
//! The query texts under `tests/npgsql/` are Npgsql's (`PostgresDatabaseInfo.cs`, tags v4.0.12
//! and v8.0.6) with the server version filled in as Npgsql does for 16.x.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use common::{ALICE, start, users};
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

const NPGSQL_40: [&str; 3] = [
    include_str!("npgsql/v4.0.12-types.sql"),
    include_str!("npgsql/v4.0.12-composites.sql"),
    include_str!("npgsql/v4.0.12-enums.sql"),
];
const NPGSQL_8: &str = include_str!("npgsql/v8.0.6-batch.sql");

/// One result of a statement: its columns (name, type OID), rows in text, and command tag.
#[derive(Debug, Default)]
struct Result {
    columns: Vec<(String, u32)>,
    rows: Vec<Vec<Option<String>>>,
    tag: String,
}

/// An error response: SQLSTATE and message.
#[derive(Debug)]
struct Failure {
    code: String,
    message: String,
}

struct Raw {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    /// ParameterStatus messages of the startup.
    parameters: Vec<(String, String)>,
}

impl Raw {
    /// SSLRequest, TLS, StartupMessage as Npgsql 4.0 sends it, SCRAM-SHA-256.
    async fn connect(h: &common::Harness, user: &str, password: &str) -> Raw {
        let mut tcp = TcpStream::connect(h.addr).await.expect("connect");
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await.expect("SSLRequest");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.expect("SSL answer");
        assert_eq!(answer[0], b'S', "the server accepts TLS");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(h.ca.clone().expect("a TLS server"))
            .expect("the CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").expect("a name"),
                tcp,
            )
            .await
            .expect("TLS handshake");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            parameters: Vec::new(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("client_encoding", "UTF8"),
                ("database", "medlake"),
            ],
            &mut out,
        )
        .expect("startup message");
        raw.send(&out).await;
        let mut scram = None;
        loop {
            match raw.recv().await {
                Message::AuthenticationSasl(body) => {
                    let mechanisms: Vec<&str> = body.mechanisms().collect().expect("mechanisms");
                    assert!(mechanisms.contains(&SCRAM_SHA_256), "{mechanisms:?}");
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let mut out = BytesMut::new();
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                        .expect("SASLInitialResponse");
                    raw.send(&out).await;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().expect("SCRAM started");
                    s.update(body.data()).expect("server-first-message");
                    let mut out = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut out).expect("SASLResponse");
                    raw.send(&out).await;
                }
                Message::AuthenticationSaslFinal(body) => {
                    scram
                        .take()
                        .expect("SCRAM started")
                        .finish(body.data())
                        .expect("the server proves it knows the password");
                }
                Message::AuthenticationOk | Message::BackendKeyData(_) => {}
                Message::ParameterStatus(p) => raw.parameters.push((
                    p.name().expect("name").to_string(),
                    p.value().expect("value").to_string(),
                )),
                Message::ReadyForQuery(_) => return raw,
                Message::ErrorResponse(e) => panic!("login failed: {:?}", failure(&e)),
                _ => panic!("unexpected message during startup"),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    async fn recv(&mut self) -> Message {
        loop {
            if let Some(message) = Message::parse(&mut self.buf).expect("a valid backend message") {
                return message;
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "the server closed the connection");
        }
    }

    /// Sends each statement as Parse/Bind(text results)/Describe portal/Execute, then one
    /// Sync, as Npgsql batches a command; returns each statement's outcome up to the first
    /// error (the server skips the rest until Sync).
    async fn batch(&mut self, statements: &[&str]) -> Vec<std::result::Result<Result, Failure>> {
        let mut out = BytesMut::new();
        for sql in statements {
            frontend::parse("", sql, std::iter::empty(), &mut out).expect("Parse");
            frontend::bind(
                "",
                "",
                std::iter::empty::<i16>(),
                std::iter::empty::<Option<Vec<u8>>>(),
                |_: Option<Vec<u8>>, _: &mut BytesMut| Ok(IsNull::Yes),
                [0i16],
                &mut out,
            )
            .map_err(|_| "bind")
            .expect("Bind");
            frontend::describe(b'P', "", &mut out).expect("Describe");
            frontend::execute("", 0, &mut out).expect("Execute");
        }
        frontend::sync(&mut out);
        self.send(&out).await;
        self.results().await
    }

    /// A simple Query message.
    async fn simple(&mut self, sql: &str) -> Vec<std::result::Result<Result, Failure>> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).expect("Query");
        self.send(&out).await;
        self.results().await
    }

    async fn results(&mut self) -> Vec<std::result::Result<Result, Failure>> {
        let mut results = Vec::new();
        let mut current = Result::default();
        loop {
            match self.recv().await {
                Message::ParseComplete | Message::BindComplete | Message::NoData => {}
                Message::RowDescription(body) => {
                    current.columns = body
                        .fields()
                        .map(|f| Ok((f.name().to_string(), f.type_oid())))
                        .collect()
                        .expect("fields");
                    for (i, (name, _)) in current.columns.iter().enumerate() {
                        let format = body.fields().nth(i).expect("field").expect("field");
                        assert_eq!(format.format(), 0, "column {name} must be text");
                    }
                }
                Message::DataRow(body) => {
                    let ranges: Vec<_> = body.ranges().collect().expect("ranges");
                    current.rows.push(
                        ranges
                            .into_iter()
                            .map(|r| {
                                r.map(|r| {
                                    String::from_utf8(body.buffer()[r].to_vec()).expect("utf-8")
                                })
                            })
                            .collect(),
                    );
                }
                Message::CommandComplete(body) => {
                    current.tag = body.tag().expect("tag").to_string();
                    results.push(Ok(std::mem::take(&mut current)));
                }
                Message::EmptyQueryResponse => results.push(Ok(std::mem::take(&mut current))),
                Message::ErrorResponse(body) => results.push(Err(failure(&body))),
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => return results,
                _ => panic!("unexpected message"),
            }
        }
    }
}

fn failure(body: &postgres_protocol::message::backend::ErrorResponseBody) -> Failure {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Some(field) = fields.next().expect("error fields") {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    Failure { code, message }
}

fn ok(results: Vec<std::result::Result<Result, Failure>>, n: usize) -> Vec<Result> {
    let results: Vec<Result> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|f| panic!("{}: {}", f.code, f.message)))
        .collect();
    assert_eq!(results.len(), n);
    results
}

/// Every type a result of ours can carry, to check that Npgsql can load each of them.
const ALL_TYPES: &str = "SELECT
  CAST(1 AS SMALLINT) AS i2, CAST(1 AS INT) AS i4, CAST(1 AS BIGINT) AS i8,
  CAST(1 AS REAL) AS f4, CAST(1 AS DOUBLE) AS f8, CAST(1 AS DECIMAL(10, 2)) AS num,
  true AS b, 'x' AS t, arrow_cast('x', 'LargeUtf8') AS lt, arrow_cast('x', 'Binary') AS bin,
  DATE '2026-11-23' AS d, TIMESTAMP '2026-11-23 10:00:00' AS ts,
  arrow_cast(TIMESTAMP '2026-11-23 10:00:00', 'Timestamp(Microsecond, Some(\"UTC\"))') AS tstz,
  arrow_cast('10:00:00', 'Time64(Microsecond)') AS tm, INTERVAL '1 hour' AS iv,
  make_array(1, 2) AS ints, make_array('a') AS texts, make_array(1.5) AS floats,
  make_array(true) AS bools, make_array(DATE '2026-11-23') AS dates,
  make_array(TIMESTAMP '2026-11-23 10:00:00') AS stamps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npgsql_40_loads_types_then_power_bi_navigates() {
    let h = start(true, users()).await;
    let mut raw = Raw::connect(&h, ALICE.0, ALICE.1).await;
    for (name, value) in [
        ("server_version", "16.6"),
        ("integer_datetimes", "on"),
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO, MDY"),
    ] {
        assert!(
            raw.parameters.iter().any(|(n, v)| n == name && v == value),
            "ParameterStatus {name}={value} missing from {:?}",
            raw.parameters
        );
    }

    // The type-loading batch, exactly as Npgsql 4.0.12 sends it.
    let results = ok(raw.batch(&NPGSQL_40).await, 3);
    let types = &results[0];
    assert_eq!(
        types
            .columns
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        [
            "nspname",
            "typname",
            "oid",
            "typrelid",
            "typbasetype",
            "type",
            "elemoid",
            "ord"
        ]
    );
    let row = |typname: &str| {
        types
            .rows
            .iter()
            .find(|r| r[1].as_deref() == Some(typname))
            .unwrap_or_else(|| panic!("no pg_type row for {typname}"))
            .clone()
    };
    // Base types are 'b'; arrays are recognised by their receive function (array_recv).
    assert_eq!(row("int4")[5].as_deref(), Some("b"));
    assert_eq!(row("_int4")[5].as_deref(), Some("a"));
    assert_eq!(row("_int4")[6].as_deref(), Some("23"));
    assert_eq!(row("_int4")[7].as_deref(), Some("3"));
    let loaded: HashSet<u32> = types
        .rows
        .iter()
        .map(|r| r[2].as_deref().expect("oid").parse().expect("a number"))
        .collect();

    // Every column type our results use has its pg_type row, or Npgsql refuses the column.
    let all = ok(raw.batch(&[ALL_TYPES]).await, 1);
    for (name, oid) in &all[0].columns {
        assert!(
            loaded.contains(oid),
            "column {name}: type OID {oid} is not loaded by Npgsql"
        );
    }
    // Table columns too (views' and tables' RowDescriptions).
    let all = ok(
        raw.batch(&[
            "SELECT * FROM bronze.readings",
            "SELECT * FROM gold.device_counts",
        ])
        .await,
        2,
    );
    for result in &all {
        for (name, oid) in &result.columns {
            assert!(
                loaded.contains(oid),
                "column {name}: type OID {oid} is not loaded"
            );
        }
    }

    // A pooled connection is reset before reuse.
    let discard = ok(raw.batch(&["DISCARD ALL"]).await, 1);
    assert_eq!(discard[0].tag, "DISCARD ALL");

    // Power BI's navigator: schemas and tables, columns, keys, character set.
    let tables = ok(
        raw.batch(&["select TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE from INFORMATION_SCHEMA.tables where TABLE_SCHEMA not in ('information_schema', 'pg_catalog') order by TABLE_SCHEMA, TABLE_NAME"])
            .await,
        1,
    );
    let listed: Vec<Vec<Option<String>>> = tables[0].rows.clone();
    let find = |schema: &str, table: &str| {
        listed
            .iter()
            .find(|r| r[0].as_deref() == Some(schema) && r[1].as_deref() == Some(table))
            .map(|r| r[2].clone().expect("a type"))
    };
    assert_eq!(find("bronze", "readings").as_deref(), Some("BASE TABLE"));
    assert_eq!(find("gold", "device_counts").as_deref(), Some("VIEW"));
    assert!(listed.iter().all(|r| r[0].as_deref() != Some("pg_catalog")));

    let columns = ok(
        raw.batch(&["select COLUMN_NAME, ORDINAL_POSITION, IS_NULLABLE, DATA_TYPE from INFORMATION_SCHEMA.columns where TABLE_SCHEMA = 'bronze' and TABLE_NAME = 'readings' order by TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"])
            .await,
        1,
    );
    let described: Vec<Vec<String>> = columns[0]
        .rows
        .iter()
        .map(|r| r.iter().map(|v| v.clone().expect("a value")).collect())
        .collect();
    assert_eq!(
        described,
        [
            ["device_id", "1", "NO", "text"],
            ["patient_id", "2", "YES", "bigint"],
            ["metric", "3", "NO", "text"],
            ["value", "4", "YES", "double precision"],
            ["ts", "5", "NO", "timestamp without time zone"],
        ]
    );

    let keys = ok(
        raw.batch(&[
            "select i.CONSTRAINT_SCHEMA || '_' || i.CONSTRAINT_NAME as INDEX_NAME, ii.COLUMN_NAME, ii.ORDINAL_POSITION, case when i.CONSTRAINT_TYPE = 'PRIMARY KEY' then 'Y' else 'N' end as PRIMARY_KEY from INFORMATION_SCHEMA.table_constraints i inner join INFORMATION_SCHEMA.key_column_usage ii on i.CONSTRAINT_SCHEMA = ii.CONSTRAINT_SCHEMA and i.CONSTRAINT_NAME = ii.CONSTRAINT_NAME and i.TABLE_SCHEMA = ii.TABLE_SCHEMA and i.TABLE_NAME = ii.TABLE_NAME where i.TABLE_SCHEMA = 'bronze' and i.TABLE_NAME = 'readings' and i.CONSTRAINT_TYPE in ('PRIMARY KEY', 'UNIQUE') order by i.CONSTRAINT_SCHEMA || '_' || i.CONSTRAINT_NAME, ii.TABLE_SCHEMA, ii.TABLE_NAME, ii.ORDINAL_POSITION",
            "select pkcol.COLUMN_NAME as PK_COLUMN_NAME, fkcol.TABLE_SCHEMA AS FK_TABLE_SCHEMA, fkcol.TABLE_NAME AS FK_TABLE_NAME, fkcol.COLUMN_NAME as FK_COLUMN_NAME, fkcol.ORDINAL_POSITION as ORDINAL, fkcon.CONSTRAINT_SCHEMA || '_' || fkcol.TABLE_NAME || '_' || 'bronze' || '_' || 'readings' || '_' || fkcon.CONSTRAINT_NAME as FK_NAME from (select distinct constraint_catalog, constraint_schema, unique_constraint_schema, constraint_name, unique_constraint_name from INFORMATION_SCHEMA.REFERENTIAL_CONSTRAINTS) fkcon inner join INFORMATION_SCHEMA.KEY_COLUMN_USAGE fkcol on fkcon.CONSTRAINT_SCHEMA = fkcol.CONSTRAINT_SCHEMA and fkcon.CONSTRAINT_NAME = fkcol.CONSTRAINT_NAME inner join INFORMATION_SCHEMA.KEY_COLUMN_USAGE pkcol on fkcon.UNIQUE_CONSTRAINT_SCHEMA = pkcol.CONSTRAINT_SCHEMA and fkcon.UNIQUE_CONSTRAINT_NAME = pkcol.CONSTRAINT_NAME where pkcol.TABLE_SCHEMA = 'bronze' and pkcol.TABLE_NAME = 'readings' and pkcol.ORDINAL_POSITION = fkcol.ORDINAL_POSITION order by FK_NAME, fkcol.ORDINAL_POSITION",
            "select character_set_name from INFORMATION_SCHEMA.character_sets",
        ])
        .await,
        3,
    );
    assert!(
        keys[0].rows.is_empty() && keys[1].rows.is_empty(),
        "no keys yet"
    );
    assert_eq!(keys[2].rows, vec![vec![Some("UTF8".to_string())]]);

    // The preview.
    let preview = ok(
        raw.batch(&["select \"$Table\".\"device_id\" as \"device_id\", \"$Table\".\"readings\" as \"readings\" from \"gold\".\"device_counts\" \"$Table\" limit 1000"])
            .await,
        1,
    );
    let mut rows = preview[0].rows.clone();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            vec![Some("pump-1".to_string()), Some("2".to_string())],
            vec![Some("pump-2".to_string()), Some("2".to_string())],
        ]
    );
    assert_eq!(preview[0].tag, "SELECT 2");

    // An error in a batch skips the rest of it up to Sync, and the connection goes on.
    let results = raw
        .batch(&["SELECT 1", "SELECT * FROM gold.nope", "SELECT 2"])
        .await;
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    let failure = results[1].as_ref().expect_err("the missing table");
    assert_eq!(failure.code, "42P01", "{}", failure.message);
    ok(raw.batch(&["SELECT 3"]).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_npgsql_loads_types_in_one_query_string() {
    let h = start(true, users()).await;
    let mut raw = Raw::connect(&h, ALICE.0, ALICE.1).await;
    let results = ok(raw.simple(NPGSQL_8).await, 4);
    assert!(
        results[0].rows[0][0]
            .as_deref()
            .unwrap_or("")
            .starts_with("PostgreSQL 16.6")
    );
    let types = &results[1];
    let typtype = |name: &str| {
        types
            .rows
            .iter()
            .find(|r| r[2].as_deref() == Some(name))
            .and_then(|r| r[3].clone())
            .unwrap_or_else(|| panic!("no row for {name}"))
    };
    assert_eq!(typtype("int8"), "b");
    assert_eq!(typtype("_text"), "a");
    assert_eq!(typtype("timestamptz"), "b");
}
