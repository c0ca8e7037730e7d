//! The Cosmos DB connector end to end, against `@zeit/cosmosdb-server` started from
//! tests/cosmos/server.js (tests/run.sh installs the package; the script adapts it for the
//! Rust SDK). Documents are written with the Azure SDK itself; the connector reads them
//! through SQL exactly as users do, with the key from `${MEDLAKE_TEST_COSMOS_KEY}`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::ContainerProperties;
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, Region, ServerCertificateValidation,
};
use azure_data_cosmos::{AccountReference, CosmosClientBuilder, CosmosRuntime, RoutingStrategy};
use medlake_engine::Engine;
use serde_json::{Value, json};

use super::{count, scratch};

const KEY_ENV: &str = "MEDLAKE_TEST_COSMOS_KEY";

/// The test server on a free loopback port; it stops when this is dropped (its stdin
/// closes) or when the test process dies (`--parent-pid`).
struct Cosmos {
    child: Child,
    url: String,
}

impl Cosmos {
    fn start(args: &[&str]) -> Self {
        let script = std::env::var("COSMOS_SERVER_JS").unwrap_or_else(|_| {
            format!(
                "{}/../../tests/cosmos/server.js",
                env!("CARGO_MANIFEST_DIR")
            )
        });
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--port", "0", "--parent-pid"])
            .arg(std::process::id().to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {script}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's first line");
        let url = line
            .trim()
            .strip_prefix("cosmos listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "tests/cosmos/server.js did not start (is @zeit/cosmosdb-server installed? \
                     tests/run.sh installs it): {line:?}"
                )
            })
            .to_string();
        Self { child, url }
    }

    /// A client that writes test documents (JSON text: the emulator reads no binary JSON).
    async fn client(&self) -> azure_data_cosmos::CosmosClient {
        let pool = ConnectionPoolOptions::builder()
            .with_is_http2_allowed(false)
            .with_server_certificate_validation(ServerCertificateValidation::RequiredUnlessEmulator)
            .build()
            .unwrap();
        let runtime = CosmosRuntime::builder()
            .with_connection_pool(pool)
            .build()
            .await
            .unwrap();
        let key = std::env::var(KEY_ENV).expect("MEDLAKE_TEST_COSMOS_KEY (.cargo/config.toml)");
        let account = AccountReference::with_authentication_key(
            self.url.parse().unwrap(),
            azure_core::credentials::Secret::new(key),
        );
        CosmosClientBuilder::new()
            .with_runtime(runtime)
            .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
            .build(account, RoutingStrategy::ProximityTo(Region::EAST_US))
            .await
            .unwrap()
    }

    /// Creates `db/container` (partition key `/deviceId`) and writes `docs` into it.
    async fn container(&self, db: &str, container: &str, docs: &[Value]) -> ContainerClient {
        let client = self.client().await;
        let _ = client.create_database(db, None).await;
        let database = client.database_client(db);
        database
            .create_container(
                ContainerProperties::new(container.to_string(), "/deviceId".into()),
                None,
            )
            .await
            .unwrap();
        let c = database.container_client(container, None).await.unwrap();
        upsert(&c, docs).await;
        c
    }

    /// The OPTIONS of a table over `container`, plus `extra`.
    fn options(&self, container: &str, extra: &str) -> String {
        format!(
            "LOCATION '{}' OPTIONS ('database' 'iomt', 'container' '{container}', \
             'key' '${{{KEY_ENV}}}', 'emulator' 'true'{extra})",
            self.url
        )
    }
}

impl Drop for Cosmos {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn upsert(c: &ContainerClient, docs: &[Value]) {
    for doc in docs {
        let id = doc["id"].as_str().unwrap().to_string();
        let device = doc["deviceId"].as_str().unwrap().to_string();
        c.upsert_item(device, &id, doc, None).await.unwrap();
    }
}

/// Alert documents as a device platform writes them: mostly regular, some irregular.
fn alerts(n: usize, from: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            let mut doc = json!({
                "id": format!("a{i:03}"),
                "deviceId": format!("d{}", i % 3),
                "kind": if i % 2 == 0 { "spo2_low" } else { "hr_high" },
                "severity": (i % 4) as i64 + 1,
                "score": i as f64 / 4.0,
                "acknowledged": i % 5 == 0,
                "raisedAt": format!("2026-11-23T10:{:02}:00Z", i % 60),
                "device": {"model": format!("M{}", i % 2), "battery": 50 + (i % 50) as i64},
                "tags": ["icu", format!("bed-{i}")],
            });
            match i {
                // A missing field, a null, and a wrong type.
                3 => {
                    doc.as_object_mut().unwrap().remove("score");
                }
                4 => doc["acknowledged"] = Value::Null,
                7 => doc["severity"] = json!("high"),
                _ => {}
            }
            doc
        })
        .collect()
}

fn texts(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            out.push(
                (0..b.num_columns())
                    .map(|c| array_value_to_string(b.column(c), row).unwrap())
                    .collect(),
            );
        }
    }
    out
}

async fn explain(engine: &Engine, sql: &str) -> String {
    let batches = engine.query(&format!("EXPLAIN {sql}")).await.unwrap();
    texts(&batches)
        .into_iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

const DECLARED: &str = "(id VARCHAR NOT NULL, deviceid VARCHAR, kind VARCHAR, severity INT, \
                        score DOUBLE, acknowledged BOOLEAN, raisedat TIMESTAMP, _ts BIGINT)";

#[tokio::test]
async fn schema_inference_on_irregular_documents_and_paging() {
    let cosmos = Cosmos::start(&[]);
    cosmos.container("iomt", "alerts", &alerts(25, 0)).await;
    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA events").await.unwrap();
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.alerts STORED AS COSMOS {}",
            cosmos.options("alerts", ", 'page_size' '4'")
        ))
        .await
        .unwrap();
    let columns = engine
        .query(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_schema = 'events' AND table_name = 'alerts' ORDER BY column_name",
        )
        .await
        .unwrap();
    let columns: Vec<String> = texts(&columns).into_iter().map(|r| r.join(" ")).collect();
    let has = |c: &str, prefix: &str| {
        assert!(
            columns
                .iter()
                .any(|x| x.starts_with(&format!("{c} {prefix}"))),
            "{c}: {columns:#?}"
        )
    };
    has("_ts", "bigint");
    has("id", "text");
    has("deviceid", "text");
    has("acknowledged", "boolean");
    has("score", "double precision");
    has("raisedat", "timestamp with time zone");
    has("device", "record");
    has("tags", "ARRAY");
    // Numbers and one text value: the column keeps each value's JSON as text.
    has("severity", "text");
    assert!(
        !columns
            .iter()
            .any(|c| c.starts_with("_rid") || c.starts_with("_etag"))
    );

    // 25 documents over pages of 4 (continuation tokens).
    assert_eq!(
        count(&engine, "SELECT count(*) FROM events.alerts").await,
        25
    );
    let rows = engine
        .query(
            "SELECT id, score, acknowledged, severity, device['model'], tags[1] \
             FROM events.alerts WHERE id IN ('a003', 'a004', 'a007', 'a008') ORDER BY id",
        )
        .await
        .unwrap();
    assert_eq!(
        texts(&rows),
        vec![
            vec!["a003", "", "false", "4", "M1", "icu"],
            vec!["a004", "1.0", "", "1", "M0", "icu"],
            vec!["a007", "1.75", "false", "high", "M1", "icu"],
            vec!["a008", "2.0", "false", "1", "M0", "icu"],
        ]
    );
    // An empty container cannot be inferred: declare the columns.
    cosmos.container("iomt", "empty", &[]).await;
    let err = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.empty STORED AS COSMOS {}",
            cosmos.options("empty", "")
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV024", "{err}");
    assert!(err.to_string().contains("declare them"), "{err}");
}

#[tokio::test]
async fn filters_limits_and_partition_keys_become_the_cosmos_query() {
    let cosmos = Cosmos::start(&["--no-ssl"]);
    cosmos.container("iomt", "alerts", &alerts(30, 0)).await;
    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA events").await.unwrap();
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.alerts {DECLARED} STORED AS COSMOS {}",
            cosmos.options("alerts", ", 'page_size' '7'")
        ))
        .await
        .unwrap();

    let plan = explain(
        &engine,
        "SELECT id FROM events.alerts WHERE kind = 'spo2_low' AND score >= 2.5 AND NOT acknowledged",
    )
    .await;
    assert!(
        plan.contains(
            r#"WHERE (IS_STRING(c["kind"]) AND c["kind"] = @p0) AND (IS_NUMBER(c["score"]) AND c["score"] >= @p1) AND (IS_BOOL(c["acknowledged"]) AND c["acknowledged"] = false)"#
        ),
        "{plan}"
    );
    assert!(plan.contains(r#"@p0="spo2_low""#), "{plan}");
    // Every filter is exact: nothing is left for DataFusion to check.
    assert!(!plan.contains("FilterExec"), "{plan}");
    let ids = |sql: &str| {
        let engine = engine.clone();
        let sql = sql.to_string();
        async move {
            texts(&engine.query(&sql).await.unwrap())
                .into_iter()
                .map(|r| r[0].clone())
                .collect::<Vec<_>>()
        }
    };
    // The same answers as DataFusion computing them over every document.
    let reference = |filter: &str| {
        format!(
            "SELECT id FROM (SELECT * FROM events.alerts ORDER BY id LIMIT 1000) WHERE {filter} ORDER BY id"
        )
    };
    for filter in [
        "kind = 'spo2_low' AND score >= 2.5 AND NOT acknowledged",
        "NOT (severity > 2)",
        "severity IN (1, 4) OR score < 1",
        "acknowledged IS NULL OR score IS NULL",
        "NOT (kind = 'hr_high' OR acknowledged)",
        "severity IS NULL",
        "kind <> 'hr_high' AND deviceid = 'd2'",
    ] {
        let pushed = ids(&format!(
            "SELECT id FROM events.alerts WHERE {filter} ORDER BY id"
        ))
        .await;
        let local = ids(&reference(filter)).await;
        assert_eq!(pushed, local, "{filter}");
        assert!(!pushed.is_empty(), "{filter}");
    }
    // The wrong-typed severity ("high") is NULL, so `severity IS NULL` finds a007.
    assert_eq!(
        ids("SELECT id FROM events.alerts WHERE severity IS NULL").await,
        vec!["a007"]
    );

    // LIMIT becomes TOP when every filter is exact.
    let plan = explain(
        &engine,
        "SELECT id FROM events.alerts WHERE score > 1.0 LIMIT 3",
    )
    .await;
    assert!(
        plan.contains(r#"query=SELECT TOP 3 c["id"] FROM c WHERE"#),
        "{plan}"
    );
    assert_eq!(
        ids("SELECT id FROM events.alerts WHERE score > 1.0 LIMIT 3")
            .await
            .len(),
        3
    );
    let plan = explain(&engine, "SELECT count(*) FROM events.alerts").await;
    assert!(plan.contains("query=SELECT VALUE 1 FROM c"), "{plan}");
    assert_eq!(
        count(&engine, "SELECT count(*) FROM events.alerts").await,
        30
    );

    // A filter that fixes the partition key reads one partition.
    let plan = explain(
        &engine,
        "SELECT id FROM events.alerts WHERE deviceid = 'd1'",
    )
    .await;
    assert!(plan.contains(r#"partition="d1""#), "{plan}");
    let d1 = ids("SELECT id FROM events.alerts WHERE deviceid = 'd1' ORDER BY id").await;
    assert_eq!(d1.len(), 10);
    assert!(d1.iter().all(|id| {
        let n: usize = id[1..].parse().unwrap();
        n % 3 == 1
    }));
}

#[tokio::test]
async fn bronze_pulls_only_new_or_changed_documents_by_ts() {
    let cosmos = Cosmos::start(&[]);
    let container = cosmos.container("iomt", "alerts", &alerts(12, 0)).await;
    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA events").await.unwrap();
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.alerts {DECLARED} STORED AS COSMOS {}",
            cosmos.options(
                "alerts",
                ", 'watermark' '_ts', 'watermark_lag_seconds' '0', 'page_size' '5'"
            )
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.alerts AS SELECT * FROM events.alerts")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.alerts").await,
        12
    );
    // The wrong-typed severity of a007 was read as NULL and counted in the refresh's record.
    let counted = engine
        .query(
            "SELECT expectation, on_violation, rows_checked, violations FROM system.expectations \
             WHERE view = 'bronze.alerts'",
        )
        .await
        .unwrap();
    assert_eq!(
        texts(&counted),
        vec![vec![
            "source type: events.alerts.severity",
            "null",
            "12",
            "1"
        ]]
    );

    // Unchanged: skipped, nothing committed.
    let outcome = engine.refresh("bronze.alerts", false, false).await.unwrap();
    assert_eq!(outcome[0].status.as_str(), "skipped", "{:?}", outcome[0]);

    // _ts has whole seconds: write the changes in a later second than the stored mark.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut changed = alerts(1, 6);
    changed[0]["acknowledged"] = json!(true);
    upsert(&container, &changed).await;
    upsert(&container, &alerts(4, 12)).await;
    let outcome = engine.refresh("bronze.alerts", false, false).await.unwrap();
    let outcome = &outcome[0];
    assert_eq!(outcome.mode, "incremental", "{outcome:?}");
    assert_eq!(outcome.rows_written, 5, "{outcome:?}");
    assert!(
        outcome.reason.contains("watermark _ts"),
        "{}",
        outcome.reason
    );
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.alerts").await,
        17
    );
    // Bronze keeps both versions of the changed document.
    let a006 = engine
        .query("SELECT acknowledged FROM bronze.alerts WHERE id = 'a006' ORDER BY _ts")
        .await
        .unwrap();
    assert_eq!(texts(&a006), vec![vec!["false"], vec!["true"]]);
}

#[tokio::test]
async fn throttling_is_retried_and_a_server_that_dies_mid_query_leaves_bronze_unchanged() {
    // The first two queries answer 429 with x-ms-retry-after-ms; the server exits right
    // after serving its sixth page: the sample (1 page), the first full refresh (4 pages of
    // 3) and one page of the second refresh.
    let cosmos = Cosmos::start(&["--throttle-first", "2", "--die-after-pages", "6"]);
    cosmos.container("iomt", "alerts", &alerts(10, 0)).await;
    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA events").await.unwrap();
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.alerts {DECLARED} STORED AS COSMOS {}",
            cosmos.options("alerts", ", 'page_size' '3', 'retries' '2'")
        ))
        .await
        .unwrap();
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.alerts AS SELECT * FROM events.alerts")
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.alerts").await,
        10
    );
    let before = engine
        .query("SELECT max(version) FROM table_history('bronze.alerts')")
        .await
        .unwrap();
    let err = engine
        .refresh("bronze.alerts", true, false)
        .await
        .unwrap_err();
    assert_eq!(err.code().sqlstate(), "HV000", "{err}");
    assert!(err.to_string().contains("connection was lost"), "{err}");
    let after = engine
        .query("SELECT max(version) FROM table_history('bronze.alerts')")
        .await
        .unwrap();
    assert_eq!(texts(&before), texts(&after));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM bronze.alerts").await,
        10
    );
    let failed = engine
        .query(
            "SELECT error FROM system.refreshes WHERE view = 'bronze.alerts' AND status = 'failed'",
        )
        .await
        .unwrap();
    assert_eq!(texts(&failed).len(), 1);
}

#[tokio::test]
async fn errors_name_the_problem_and_never_the_key() {
    let cosmos = Cosmos::start(&[]);
    cosmos.container("iomt", "alerts", &alerts(3, 0)).await;
    let key = std::env::var(KEY_ENV).unwrap();
    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA events").await.unwrap();
    let create = |name: &str, location: &str, options: &str| {
        format!(
            "CREATE EXTERNAL TABLE events.{name} {DECLARED} STORED AS COSMOS LOCATION '{location}' OPTIONS ({options})"
        )
    };
    let base = "'database' 'iomt', 'emulator' 'true'";
    let cases = [
        (
            create(
                "a",
                &cosmos.url,
                &format!("{base}, 'container' 'nope', 'key' '${{{KEY_ENV}}}'"),
            ),
            "HV00R",
            "iomt/nope",
        ),
        (
            create(
                "b",
                &cosmos.url,
                &format!(
                    "{base}, 'container' 'alerts', 'key' '${{MEDLAKE_TEST_UNSET_COSMOS_KEY}}'"
                ),
            ),
            // A secret the server does not provide is a refusal (the policy's), naming it.
            "42501",
            "MEDLAKE_TEST_UNSET_COSMOS_KEY",
        ),
        (
            create(
                "c",
                &cosmos.url,
                &format!("{base}, 'container' 'alerts', 'key' '{key}'"),
            ),
            "HV024",
            "never stored",
        ),
        (
            create(
                "d",
                "https://127.0.0.1:9",
                &format!(
                    "{base}, 'container' 'alerts', 'key' '${{{KEY_ENV}}}', 'retries' '1', 'timeout_seconds' '5'"
                ),
            ),
            "HV00N",
            "cannot connect to 127.0.0.1:9",
        ),
        (
            create(
                "e",
                &cosmos.url,
                &format!("{base}, 'container' 'alerts', 'key' '${{{KEY_ENV}}}', 'colour' 'blue'"),
            ),
            "HV024",
            "unknown option",
        ),
    ];
    for (sql, state, text) in cases {
        let err = engine.sql(&sql).await.unwrap_err();
        assert_eq!(err.code().sqlstate(), state, "{sql}: {err}");
        let message = format!("{err:#}");
        assert!(message.contains(text), "{sql}: {message}");
        assert!(!message.contains(&key), "the key leaked: {message}");
    }
    // An Entra ID token works as the other credential; the definition keeps the reference.
    engine
        .sql(&create(
            "by_token",
            &cosmos.url,
            &format!(
                "{base}, 'container' 'alerts', 'access_token' '${{MEDLAKE_TEST_COSMOS_TOKEN}}'"
            ),
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&engine, "SELECT count(*) FROM events.by_token").await,
        3
    );
}

/// The rows of `sql` as text, one string per row (columns joined by `|`).
async fn rows(engine: &Engine, sql: &str) -> Vec<String> {
    texts(&engine.query(sql).await.unwrap())
        .into_iter()
        .map(|r| r.join("|"))
        .collect()
}

/// A small alert document.
fn alert(id: &str, device: &str, severity: i64) -> Value {
    json!({"id": id, "deviceId": device, "kind": "spo2_low", "severity": severity})
}

const SILVER_CDC: &str = "CREATE MATERIALIZED VIEW silver.alerts AS AUTO CDC FROM bronze.alerts \
     KEYS (id) APPLY AS DELETE WHEN _change_operation = 'D' SEQUENCE BY _change_version \
     COLUMNS * EXCEPT (_change_operation)";

/// Refreshes bronze then silver; returns bronze's outcome (mode, reason).
async fn refresh_both(engine: &Engine) -> (String, String, u64) {
    let bronze = engine.refresh("bronze.alerts", false, false).await.unwrap();
    engine.refresh("silver.alerts", false, false).await.unwrap();
    let b = &bronze[0];
    (b.mode.to_string(), b.reason.clone(), b.rows_written)
}

#[tokio::test]
async fn the_change_feed_brings_creates_replaces_and_deletes_through_auto_cdc() {
    // The server keeps the last 6 changes of each container.
    let cosmos = Cosmos::start(&["--feed-retention", "6"]);
    let first: Vec<Value> = (0..4).map(|i| alert(&format!("a{i}"), "d1", 1)).collect();
    let container = cosmos.container("iomt", "alerts", &first).await;
    let (_dir, engine) = scratch().await;
    engine.sql("CREATE SCHEMA events").await.unwrap();
    // A watermark other than the change version is refused, naming the option.
    let e = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.bad STORED AS COSMOS {}",
            cosmos.options(
                "alerts",
                ", 'changes' 'all_versions_and_deletes', 'watermark' '_ts'"
            )
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("watermark") && e.contains("_change_version"),
        "{e}"
    );
    let e = engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.bad STORED AS COSMOS {}",
            cosmos.options("alerts", ", 'changes' 'latest'")
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("changes") && e.contains("all_versions_and_deletes"),
        "{e}"
    );
    engine
        .sql(&format!(
            "CREATE EXTERNAL TABLE events.alerts STORED AS COSMOS {}",
            cosmos.options(
                "alerts",
                ", 'changes' 'all_versions_and_deletes', 'page_size' '2'"
            )
        ))
        .await
        .unwrap();
    let columns = rows(
        &engine,
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'alerts' AND table_schema = 'events' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        columns[columns.len() - 2..],
        ["_change_operation|text", "_change_version|bigint"],
        "{columns:?}"
    );
    engine
        .sql("CREATE MATERIALIZED VIEW bronze.alerts AS SELECT * FROM events.alerts")
        .await
        .unwrap();
    engine.sql(SILVER_CDC).await.unwrap();
    // The first refresh snapshots: every document once, operation S, version 0.
    assert_eq!(
        rows(
            &engine,
            "SELECT _change_operation, _change_version, count(*) FROM bronze.alerts GROUP BY 1, 2"
        )
        .await,
        ["S|0|4"]
    );

    // Replace a1 twice, delete a2, create a9 (one in another partition).
    upsert(&container, &[alert("a1", "d1", 5), alert("a1", "d1", 7)]).await;
    container.delete_item("d1", "a2", None).await.unwrap();
    upsert(&container, &[alert("a9", "d2", 3)]).await;
    let (mode, reason, written) = refresh_both(&engine).await;
    assert_eq!((mode.as_str(), written), ("incremental", 4), "{reason}");
    assert_eq!(
        rows(
            &engine,
            "SELECT id, _change_operation, severity, deviceid FROM bronze.alerts \
             WHERE _change_operation <> 'S' ORDER BY _change_version"
        )
        .await,
        // The delete carries the previous image (the test server keeps pre-images).
        ["a1|U|5|d1", "a1|U|7|d1", "a2|D|1|d1", "a9|I|3|d2"]
    );
    assert_eq!(
        rows(
            &engine,
            "SELECT id, severity FROM silver.alerts ORDER BY id"
        )
        .await,
        ["a0|1", "a1|7", "a3|1", "a9|3"]
    );
    // Versions increase per document, from its snapshot row to its changes.
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.alerts a JOIN bronze.alerts b ON a.id = b.id \
             AND a._change_operation = 'S' AND b._change_operation <> 'S' \
             WHERE b._change_version <= a._change_version"
        )
        .await,
        0
    );

    // Nothing changed: nothing to do.
    let outcome = engine.refresh("bronze.alerts", false, false).await.unwrap();
    assert_eq!(outcome[0].status.as_str(), "skipped", "{:?}", outcome[0]);

    // More changes than the server keeps: the stored continuation expires, and the next
    // refresh takes a new snapshot.
    for s in 0..6 {
        upsert(&container, &[alert("a0", "d1", 10 + s)]).await;
    }
    container.delete_item("d1", "a3", None).await.unwrap();
    let (mode, reason, _) = refresh_both(&engine).await;
    assert_eq!(mode, "full", "{reason}");
    assert!(reason.contains("no longer keeps its changes"), "{reason}");
    assert_eq!(
        rows(
            &engine,
            "SELECT id, severity FROM silver.alerts ORDER BY id"
        )
        .await,
        ["a0|15", "a1|7", "a9|3"]
    );
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM bronze.alerts WHERE _change_operation <> 'S'"
        )
        .await,
        0
    );
    // ... and the feed goes on from the new snapshot.
    container.delete_item("d2", "a9", None).await.unwrap();
    let (mode, reason, _) = refresh_both(&engine).await;
    assert_eq!(mode, "incremental", "{reason}");
    assert_eq!(
        rows(
            &engine,
            "SELECT id, severity FROM silver.alerts ORDER BY id"
        )
        .await,
        ["a0|15", "a1|7"]
    );
    let modes = rows(
        &engine,
        "SELECT mode FROM system.refreshes WHERE view = 'bronze.alerts' ORDER BY started",
    )
    .await;
    // ("none": the refresh that found nothing changed.)
    assert_eq!(
        modes,
        ["full", "incremental", "none", "full", "incremental"],
        "{modes:?}"
    );
}
