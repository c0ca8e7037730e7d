//! The Flight SQL door with arrow-flight's own `FlightSqlServiceClient` over TLS: handshake,
//! queries, prepared statements with parameters, updates, ingest, CancelFlightInfo, refused
//! credentials and tokens.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightInfo,
};
use futures::{StreamExt, TryStreamExt};
use medlake_auth::{Access, Method, Secret, User};
use medlake_flight::{Config, Server, Tls};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const PASSWORD: &str = "correct horse battery staple";

struct Harness {
    addr: std::net::SocketAddr,
    ca: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let engine = medlake_engine::Engine::open(dir.path().join("wh").to_str().expect("utf-8"))
        .await
        .expect("open");
    for output in engine
        .sql("CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, value DOUBLE);
              INSERT INTO bronze.readings VALUES ('pump-1', 72.0), ('pump-2', 88.0), ('pump-2', 91.0)")
        .await
        .expect("seed")
    {
        output.collect().await.expect("seed statement");
    }
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write");
    let server = Server::bind(
        engine,
        Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            tls: Some(Tls { cert, key }),
            access: Access::Users(vec![User {
                name: "alice".into(),
                password: Secret::new(PASSWORD),
                method: Method::ScramSha256,
                role: medlake_auth::Role::Writer,
                create_external: false,
                roles: Default::default(),
                secrets: Default::default(),
            }]),
            token_lifetime: Duration::from_secs(600),
            limits: medlake_flight::Limits::default(),
            logins: Default::default(),
        },
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        ca: certified.cert.pem(),
        _dir: dir,
        _stop: stop,
    }
}

async fn client(h: &Harness) -> FlightSqlServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&h.ca))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://localhost:{}", h.addr.port()))
        .expect("an endpoint")
        .tls_config(tls)
        .expect("TLS")
        .connect()
        .await
        .expect("connect");
    FlightSqlServiceClient::new(channel)
}

async fn rows(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("a ticket");
        let stream = client.do_get(ticket).await.expect("do_get");
        batches.extend(stream.try_collect::<Vec<_>>().await.expect("batches"));
    }
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_prepared_statements_updates_and_ingest() {
    let h = start().await;
    let mut c = client(&h).await;
    c.handshake("alice", PASSWORD).await.expect("handshake");

    let info = c
        .execute("SELECT device_id, sum(value) AS total FROM bronze.readings GROUP BY device_id ORDER BY device_id".into(), None)
        .await
        .expect("execute");
    let batches = rows(&mut c, info).await;
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    let devices = arrow::compute::cast(batch.column(0), &DataType::Utf8).expect("cast");
    assert_eq!(devices.as_string::<i32>().value(0), "pump-1");
    let totals: &Float64Array = batch.column(1).as_primitive();
    assert_eq!(totals.value(1), 179.0);

    // GetSchema of a query, without running it.
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(
        arrow_flight::sql::ProstMessageExt::as_any(&arrow_flight::sql::CommandStatementQuery {
            query: "SELECT device_id, value FROM bronze.readings".into(),
            transaction_id: None,
        })
        .encode_to_vec(),
    );
    let mut request = tonic::Request::new(descriptor);
    let bearer = format!("Bearer {}", c.token().expect("a token after the handshake"));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("a header value"));
    let result = c
        .inner_mut()
        .get_schema(request)
        .await
        .expect("get_schema")
        .into_inner();
    let schema = Schema::try_from(&result).expect("an IPC schema");
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["device_id", "value"]);

    // A prepared query with a parameter, bound twice.
    let mut prepared = c
        .prepare(
            "SELECT count(*) AS n FROM bronze.readings WHERE device_id = $1".into(),
            None,
        )
        .await
        .expect("prepare");
    assert_eq!(
        prepared.dataset_schema().expect("schema").field(0).name(),
        "n"
    );
    for (device, expected) in [("pump-1", 1i64), ("pump-2", 2)] {
        let parameters = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(vec![device]))],
        )
        .expect("parameters");
        prepared.set_parameters(parameters).expect("bind");
        let info = prepared.execute().await.expect("execute prepared");
        let batches = rows(&mut c, info).await;
        let n: &Int64Array = batches[0].column(0).as_primitive::<Int64Type>();
        assert_eq!(n.value(0), expected, "{device}");
    }
    prepared.close().await.expect("close");

    // Updates, DDL included.
    let written = c
        .execute_update(
            "INSERT INTO bronze.readings VALUES ('pump-3', 60.0)".into(),
            None,
        )
        .await
        .expect("insert");
    assert_eq!(written, 1);
    c.execute_update("CREATE MATERIALIZED VIEW gold.totals AS SELECT device_id, count(*) AS n FROM bronze.readings GROUP BY device_id".into(), None)
        .await
        .expect("create view");
    c.execute_update("REFRESH MATERIALIZED VIEW gold.totals".into(), None)
        .await
        .expect("refresh");

    // Bulk ingest: created from the batches' schema, then appended; schema enforced.
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..50_000).map(|i| format!("dev-{}", i % 7)),
            )),
            Arc::new(Float64Array::from_iter_values((0..50_000).map(f64::from))),
        ],
    )
    .expect("a batch");
    let ingest = |if_not_exist, if_exists| CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist,
            if_exists,
        }),
        table: "pushed".into(),
        schema: Some("bronze".into()),
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    // create: if_not_exist=CREATE(1), if_exists=FAIL(1); append: FAIL(2)/APPEND(2)
    let n = c
        .execute_ingest(
            ingest(1, 1),
            futures::stream::iter([Ok(batch.clone()), Ok(batch.clone())]),
        )
        .await
        .expect("ingest create");
    assert_eq!(n, 100_000);
    let n = c
        .execute_ingest(ingest(2, 2), futures::stream::iter([Ok(batch.clone())]))
        .await
        .expect("ingest append");
    assert_eq!(n, 50_000);
    let e = c
        .execute_ingest(ingest(1, 1), futures::stream::iter([Ok(batch.clone())]))
        .await
        .expect_err("create of an existing table fails");
    assert!(e.to_string().contains("already exists"), "{e}");
    let info = c
        .execute("SELECT count(*) FROM bronze.pushed".into(), None)
        .await
        .expect("count");
    let batches = rows(&mut c, info).await;
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        150_000
    );
}

/// `?` placeholders (ADBC's qmark paramstyle, JDBC) are numbered as `$1`, `$2`, ...: the
/// parameter schema is announced as for `$n`, values bind by position, `?` in strings and
/// comments is text, and mixing `?` with `$n` is a syntax error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_mark_parameters_bind_like_numbered_ones() {
    let h = start().await;
    let mut c = client(&h).await;
    c.handshake("alice", PASSWORD).await.expect("handshake");
    let mut prepared = c
        .prepare(
            "SELECT count(*) AS n, '?' AS q FROM bronze.readings -- how many?\n\
             WHERE device_id = ? AND value > ?"
                .into(),
            None,
        )
        .await
        .expect("prepare with ?");
    let announced = prepared
        .parameter_schema()
        .expect("parameter schema")
        .clone();
    let names: Vec<&str> = announced
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["$1", "$2"]);
    assert_eq!(announced.field(1).data_type(), &DataType::Float64);
    for (device, above, expected) in [
        ("pump-2", 0.0, 2i64),
        ("pump-2", 89.5, 1),
        ("pump-1", 1e9, 0),
    ] {
        let parameters = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("$1", DataType::Utf8, false),
                Field::new("$2", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![device])),
                Arc::new(Float64Array::from(vec![above])),
            ],
        )
        .expect("parameters");
        prepared.set_parameters(parameters).expect("bind");
        let info = prepared.execute().await.expect("execute prepared");
        let batches = rows(&mut c, info).await;
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            expected,
            "{device} > {above}"
        );
        assert_eq!(batches[0].column(1).as_string::<i32>().value(0), "?");
    }
    prepared.close().await.expect("close");

    // A prepared update with `?`, one run per bound row.
    let mut insert = c
        .prepare("INSERT INTO bronze.readings VALUES (?, ?)".into(), None)
        .await
        .expect("prepare insert");
    let parameters = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Utf8, false),
            Field::new("$2", DataType::Float64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["pump-9", "pump-9"])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
        ],
    )
    .expect("parameters");
    // arrow-flight's client sends no parameters with `execute_update` (only the descriptor):
    // the statement is refused for its unbound parameter, not as a broken stream.
    insert.set_parameters(parameters.clone()).expect("bind");
    let e = insert
        .execute_update()
        .await
        .expect_err("no parameters sent");
    assert!(
        e.to_string().contains("22023") && e.to_string().contains("$1"),
        "{e}"
    );
    // The parameters in the DoPut of the update, as ADBC sends them (on a statement prepared
    // by a raw action: arrow-flight's client keeps its handle to itself).
    let request = arrow_flight::sql::ActionCreatePreparedStatementRequest {
        query: "INSERT INTO bronze.readings VALUES (?, ?)".into(),
        transaction_id: None,
    };
    let action = Action::new(
        "CreatePreparedStatement",
        arrow_flight::sql::ProstMessageExt::as_any(&request).encode_to_vec(),
    );
    let created = c
        .do_action(action)
        .await
        .expect("create")
        .next()
        .await
        .expect("a result")
        .expect("created");
    let created: arrow_flight::sql::ActionCreatePreparedStatementResult =
        arrow_flight::sql::Any::decode(created.body)
            .expect("an Any")
            .unpack()
            .expect("a result")
            .expect("of that type");
    let handle = created.prepared_statement_handle;
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(
        arrow_flight::sql::ProstMessageExt::as_any(
            &arrow_flight::sql::CommandPreparedStatementUpdate {
                prepared_statement_handle: handle,
            },
        )
        .encode_to_vec(),
    );
    let data: Vec<arrow_flight::FlightData> = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor))
        .build(futures::stream::iter([Ok(parameters)]))
        .try_collect()
        .await
        .expect("encode");
    let mut results = c
        .do_put(futures::stream::iter(data))
        .await
        .expect("do_put update");
    let result = results
        .next()
        .await
        .expect("a result")
        .expect("the update ran");
    let written = arrow_flight::sql::DoPutUpdateResult::decode(result.app_metadata)
        .expect("an update result");
    assert_eq!(written.record_count, 2);
    let info = c
        .execute(
            "SELECT sum(value) FROM bronze.readings WHERE device_id = 'pump-9'".into(),
            None,
        )
        .await
        .expect("sum");
    let batches = rows(&mut c, info).await;
    let sum: &Float64Array = batches[0].column(0).as_primitive();
    assert_eq!(sum.value(0), 3.0);

    let e = c
        .prepare("SELECT $1, ?".into(), None)
        .await
        .expect_err("mixed placeholders");
    assert!(e.to_string().contains("42601"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flight_info_stops_a_running_query() {
    let h = start().await;
    let mut c = client(&h).await;
    c.handshake("alice", PASSWORD).await.expect("handshake");
    let info = c
        .execute(
            "SELECT sum(value % 7) AS s FROM range(0, 100000000000) AS t(value)".into(),
            None,
        )
        .await
        .expect("execute");
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    let mut stream = c.do_get(ticket).await.expect("do_get");
    let mut canceller = c.clone();
    let request = CancelFlightInfoRequest { info: Some(info) };
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let action = Action::new("CancelFlightInfo", request.encode_to_vec());
        let mut results = canceller.do_action(action).await.expect("cancel action");
        let result = results.next().await.expect("a result").expect("ok");
        CancelFlightInfoResult::decode(result.body).expect("a CancelFlightInfoResult")
    });
    let next = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("the cancel arrives long before the query could finish")
        .expect("an item");
    let error = next.expect_err("cancelled");
    assert!(error.to_string().contains("cancelled"), "{error}");
    let result = cancel.await.expect("join");
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_missing_tokens() {
    let h = start().await;
    let mut c = client(&h).await;
    let e = c
        .handshake("alice", "wrong")
        .await
        .expect_err("wrong password");
    assert!(
        e.to_string().contains("Unauthenticated")
            || e.to_string().contains("authentication failed"),
        "{e}"
    );
    assert!(!e.to_string().contains(PASSWORD));
    let e = c
        .execute("SELECT 1".into(), None)
        .await
        .expect_err("no token");
    assert!(e.to_string().contains("no bearer token"), "{e}");
    c.set_token("made-up".into());
    let e = c
        .execute("SELECT 1".into(), None)
        .await
        .expect_err("unknown token");
    assert!(e.to_string().contains("unknown bearer token"), "{e}");
    // Errors keep their meaning: a missing table is NOT_FOUND with the SQLSTATE.
    c.clear_token();
    c.handshake("alice", PASSWORD).await.expect("handshake");
    let e = c
        .execute("SELECT * FROM bronze.nope".into(), None)
        .await
        .expect_err("missing table");
    let text = e.to_string();
    assert!(
        text.contains("42P01") && text.contains("not found"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_handshakes_lock_the_address_out() {
    let h = start().await;
    let mut c = client(&h).await;
    // The default policy: ten failures for one name from one address.
    for _ in 0..10 {
        let e = c.handshake("alice", "guess").await.expect_err("wrong");
        assert!(e.to_string().contains("authentication failed"), "{e}");
    }
    // The right password is not even checked now, and the answer says why.
    let e = c
        .handshake("alice", PASSWORD)
        .await
        .expect_err("locked out");
    assert!(e.to_string().contains("too many failed logins"), "{e}");
    // A user name with no failures may still log in from this address.
    let e = c.handshake("nobody", "x").await.expect_err("unknown user");
    assert!(e.to_string().contains("authentication failed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_calls_answer_with_the_spec_schemas() {
    use arrow_flight::sql::{
        CommandGetCrossReference, CommandGetPrimaryKeys, CommandGetXdbcTypeInfo, SqlInfo,
    };
    let h = start().await;
    let mut c = client(&h).await;
    c.handshake("alice", PASSWORD).await.expect("handshake");
    let count = |batches: &[RecordBatch]| batches.iter().map(RecordBatch::num_rows).sum::<usize>();

    let info = c
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("bronze".into()),
            table: "readings".into(),
        })
        .await
        .expect("primary keys");
    let schema = info.clone().try_decode_schema().expect("a schema");
    assert_eq!(schema.field(2).name(), "table_name");
    let batches = rows(&mut c, info).await;
    assert_eq!(count(&batches), 0, "Delta tables have no keys");

    let info = c
        .get_cross_reference(CommandGetCrossReference {
            pk_catalog: None,
            pk_db_schema: Some("bronze".into()),
            pk_table: "readings".into(),
            fk_catalog: None,
            fk_db_schema: Some("bronze".into()),
            fk_table: "readings".into(),
        })
        .await
        .expect("cross reference");
    assert_eq!(count(&rows(&mut c, info).await), 0);

    let info = c
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .expect("type info");
    assert!(count(&rows(&mut c, info).await) >= 10);

    let info = c
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .expect("sql info");
    assert_eq!(count(&rows(&mut c, info).await), 2);

    let info = c.get_table_types().await.expect("table types");
    let batches = rows(&mut c, info).await;
    let kinds = arrow::compute::cast(batches[0].column(0), &DataType::Utf8).expect("cast");
    let kinds: Vec<&str> = kinds.as_string::<i32>().iter().flatten().collect();
    assert_eq!(kinds, ["TABLE", "VIEW"]);
}

/// Appends go through an appender the engine keeps open per table: concurrent ingests all
/// land (one commit each), and a table dropped and created again under the same name between
/// two ingests is noticed (its new schema enforced, its old rows gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingest_appends_and_a_replaced_table() {
    let h = start().await;
    let mut c = client(&h).await;
    c.handshake("alice", PASSWORD).await.expect("handshake");
    let schema = Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
    ]));
    let batch = |n: usize| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("pump-{}", i % 3)),
                )),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
            ],
        )
        .expect("a batch")
    };
    let append = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: 2, // FAIL
            if_exists: 2,    // APPEND
        }),
        table: "readings".into(),
        schema: Some("bronze".into()),
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let (clients, ingests, rows_each) = (4, 8, 500);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = c.clone();
        let (append, batch) = (append.clone(), batch(rows_each));
        tasks.push(tokio::spawn(async move {
            for _ in 0..ingests {
                let n = c
                    .execute_ingest(append.clone(), futures::stream::iter([Ok(batch.clone())]))
                    .await
                    .expect("ingest append");
                assert_eq!(n, rows_each as i64);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let count = async |c: &mut FlightSqlServiceClient<Channel>, sql: &str| {
        let info = c.execute(sql.into(), None).await.expect("count");
        let batches = rows(c, info).await;
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    };
    let expected = (3 + clients * ingests * rows_each) as i64;
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM bronze.readings").await,
        expected
    );
    // Concurrent ingests share commits (group commit); one client's ingests follow each other,
    // so there are at least as many commits as one client's ingests, at most one per ingest.
    let commits = count(
        &mut c,
        "SELECT count(*) FROM table_history('bronze.readings') WHERE operation = 'WRITE'",
    )
    .await;
    assert!(
        ((1 + ingests) as i64..=(1 + clients * ingests) as i64).contains(&commits),
        "{commits} commits after the seed for {} ingests",
        clients * ingests
    );

    for sql in [
        "DROP TABLE bronze.readings",
        "CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, value DOUBLE, unit VARCHAR NOT NULL)",
    ] {
        c.execute_update(sql.into(), None)
            .await
            .expect("replace the table");
    }
    let e = c
        .execute_ingest(append.clone(), futures::stream::iter([Ok(batch(10))]))
        .await
        .expect_err("the new table's NOT NULL unit is enforced");
    assert!(e.to_string().contains("unit"), "{e}");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM bronze.readings").await,
        0
    );
    c.execute_update("DROP TABLE bronze.readings".into(), None)
        .await
        .expect("drop");
    let e = c
        .execute_ingest(append.clone(), futures::stream::iter([Ok(batch(10))]))
        .await
        .expect_err("a dropped table is not appended to");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let create_or_append = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: 1, // CREATE
            if_exists: 2,    // APPEND
        }),
        ..append
    };
    for _ in 0..2 {
        c.execute_ingest(
            create_or_append.clone(),
            futures::stream::iter([Ok(batch(10))]),
        )
        .await
        .expect("created, then appended");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM bronze.readings").await,
        20
    );
}
