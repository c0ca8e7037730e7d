//! The HTTP door with a real HTTP client (reqwest) on loopback: formats, validation,
//! quarantine, idempotency, concurrency, limits, backpressure, auth, health and metrics.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use arrow::array::Int64Array;
use medlake_engine::Engine;
use medlake_http::{Auth, Config, InvalidRows, Server, Token};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "ward-3-token-0123456789";

struct Door {
    _dir: tempfile::TempDir,
    engine: Engine,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Door {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn door(configure: impl FnOnce(&mut Config)) -> Door {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, patient_id INT NOT NULL, \
             metric VARCHAR NOT NULL, value DOUBLE, unit VARCHAR, taken_at TIMESTAMP NOT NULL); \
             CREATE TABLE bronze.other (id INT)",
        )
        .await
        .unwrap();
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Auth::Tokens(vec![Token {
            name: "ward-3".into(),
            secret: TOKEN.into(),
            tables: vec!["bronze.readings".into()],
        }]),
    );
    configure(&mut config);
    let server = Server::bind(engine.clone(), config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Door {
        _dir: dir,
        engine,
        base,
        stop: Some(stop),
    }
}

fn reading(device: usize, i: usize) -> Value {
    json!({
        "device_id": format!("monitor-{device}"),
        "patient_id": 1000 + device,
        "metric": "heart_rate",
        "value": 60.0 + (i % 40) as f64,
        "unit": "bpm",
        "taken_at": format!("2026-11-23T08:{:02}:{:02}Z", (i / 60) % 60, i % 60),
    })
}

fn ndjson(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches = engine.query(sql).await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn post(client: &reqwest::Client, door: &Door, table: &str) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/v1/ingest/{table}", door.base))
        .bearer_auth(TOKEN)
}

#[tokio::test]
async fn ndjson_json_arrays_and_gzip_are_acknowledged_once_committed() {
    let door = door(|_| {}).await;
    let client = reqwest::Client::new();
    let rows: Vec<Value> = (0..100).map(|i| reading(1, i)).collect();
    let response = post(&client, &door, "bronze.readings")
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&rows))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["rows"], 100);
    assert_eq!(body["duplicate"], false);
    let version = body["version"].as_u64().unwrap();
    // Acknowledged means committed: the rows are there, at that version.
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        100
    );
    assert_eq!(
        count(
            &door.engine,
            &format!("SELECT count(*) FROM bronze.readings VERSION AS OF {version}")
        )
        .await,
        100
    );

    let response = post(&client, &door, "bronze.readings")
        .json(&rows[..10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ndjson(&rows[..25]).as_bytes()).unwrap();
    let response = post(&client, &door, "bronze.readings")
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        135
    );
    // Timestamps keep their instant.
    assert_eq!(
        count(
            &door.engine,
            "SELECT count(*) FROM bronze.readings WHERE taken_at = TIMESTAMP '2026-11-23 08:00:05'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn invalid_rows_are_refused_with_reasons_or_quarantined() {
    let door = door(|c| {
        c.invalid_rows
            .insert("bronze.other".into(), InvalidRows::Quarantine);
    })
    .await;
    let client = reqwest::Client::new();
    let mut rows: Vec<Value> = (0..5).map(|i| reading(1, i)).collect();
    rows[1]["patient_id"] = json!("not a number");
    rows[3].as_object_mut().unwrap().remove("taken_at");
    let response = post(&client, &door, "bronze.readings")
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&rows))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "2 of 5 rows were refused; nothing was written"
    );
    assert_eq!(body["rows"][0]["row"], 1);
    assert_eq!(
        body["rows"][0]["reason"],
        "column 'patient_id': expected an integer, got a string"
    );
    assert_eq!(body["rows"][1]["row"], 3);
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        0
    );

    // A table configured to quarantine keeps the good rows and the bad ones with reasons.
    let other = door.base.clone();
    let response = client
        .post(format!("{other}/v1/ingest/bronze.other"))
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", "q-1")
        .body("{\"id\": 1}\n{\"id\": \"two\"}\n{\"id\": 3}\n")
        .send()
        .await
        .unwrap();
    // bronze.other is not among the token's tables.
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let door = self::door(|c| {
        c.auth = Auth::InsecureNoAuth;
        c.invalid_rows
            .insert("bronze.other".into(), InvalidRows::Quarantine);
    })
    .await;
    for _ in 0..2 {
        let response = client
            .post(format!("{}/v1/ingest/bronze.other", door.base))
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "q-1")
            .body("{\"id\": 1}\n{\"id\": \"two\"}\n{\"id\": 3}\n")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.other").await,
        2
    );
    let quarantined = door
        .engine
        .query("SELECT raw, reason, idempotency_key FROM bronze.other_quarantine")
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&quarantined)
        .unwrap()
        .to_string();
    assert!(text.contains("{\"id\":\"two\"}"), "{text}");
    assert!(
        text.contains("row 1: column 'id': expected an integer, got a string"),
        "{text}"
    );
    assert_eq!(quarantined[0].num_rows(), 1, "{text}");
}

#[tokio::test]
async fn an_idempotency_key_lands_once_even_when_retried_concurrently() {
    let door = door(|_| {}).await;
    let client = reqwest::Client::new();
    let rows: Vec<Value> = (0..50).map(|i| reading(2, i)).collect();
    let body = ndjson(&rows);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let request = post(&client, &door, "bronze.readings")
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "gateway-7/batch-42")
            .body(body.clone());
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }));
    }
    let mut firsts = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        if answer["duplicate"] == false {
            firsts += 1;
            assert_eq!(answer["rows"], 50);
        }
    }
    assert_eq!(firsts, 1);
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        50
    );
    // Much later (another process could have restarted meanwhile): still a duplicate.
    let again: Value = post(&client, &door, "bronze.readings")
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", "gateway-7/batch-42")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        50
    );
}

#[tokio::test]
async fn many_concurrent_clients_land_every_row_in_few_commits() {
    let door = door(|c| c.queue_requests = 1024).await;
    let client = reqwest::Client::new();
    let (clients, requests, rows_each) = (24, 10, 40);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let url = format!("{}/v1/ingest/bronze.readings", door.base);
        tasks.push(tokio::spawn(async move {
            for r in 0..requests {
                let rows: Vec<Value> = (0..rows_each)
                    .map(|i| reading(c, r * rows_each + i))
                    .collect();
                let response = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/x-ndjson")
                    .header("idempotency-key", format!("c{c}-r{r}"))
                    .body(ndjson(&rows))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let expected = (clients * requests * rows_each) as i64;
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        expected
    );
    let commits = count(
        &door.engine,
        "SELECT count(*) FROM table_history('bronze.readings') WHERE operation = 'WRITE'",
    )
    .await;
    assert!(
        commits < (clients * requests) as i64,
        "{commits} commits for {} requests: no micro-batching",
        clients * requests
    );
    let metrics = reqwest::get(format!("{}/metrics", door.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "medlake_ingest_rows_total{{table=\"bronze.readings\"}} {expected}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "medlake_ingest_requests_total{table=\"bronze.readings\",status=\"200\"} 240"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_and_a_full_queue_gets_retry_after() {
    let door = door(|c| {
        c.max_body_bytes = 64 * 1024;
        c.queue_requests = 1;
        c.max_in_flight = 4;
    })
    .await;
    let client = reqwest::Client::new();
    let big: Vec<Value> = (0..2000).map(|i| reading(3, i)).collect();
    let response = post(&client, &door, "bronze.readings")
        .header("content-type", "application/x-ndjson")
        .body(ndjson(&big))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A small gzip body that inflates past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1 << 20]).unwrap();
    let response = post(&client, &door, "bronze.readings")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 40 clients at once against a queue of one: some are told to come back, with
    // Retry-After; retrying with the same key, every batch lands exactly once.
    let mut tasks = Vec::new();
    for c in 0..40 {
        let client = client.clone();
        let url = format!("{}/v1/ingest/bronze.readings", door.base);
        tasks.push(tokio::spawn(async move {
            let rows: Vec<Value> = (0..20).map(|i| reading(c, i)).collect();
            let mut busy = HashMap::new();
            loop {
                let response = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/x-ndjson")
                    .header("idempotency-key", format!("busy-{c}"))
                    .body(ndjson(&rows))
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::OK => return busy,
                    s @ (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                        let retry_after: u64 = response.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert!(retry_after >= 1);
                        *busy.entry(s.as_u16()).or_insert(0) += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
        }));
    }
    let mut busy = 0;
    for task in tasks {
        busy += task.await.unwrap().values().sum::<u32>();
    }
    assert!(busy > 0, "the bounded queue never pushed back");
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        800
    );
}

#[tokio::test]
async fn tokens_scope_tables_and_errors_say_what_is_wrong() {
    let door = door(|_| {}).await;
    let client = reqwest::Client::new();
    let body = ndjson(&[reading(1, 1)]);
    let url = format!("{}/v1/ingest/bronze.readings", door.base);
    let response = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let response = client
        .post(&url)
        .bearer_auth("wrong")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = post(&client, &door, "bronze.other")
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = response.text().await.unwrap();
    assert!(text.contains("may not push into bronze.other"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    let open = self::door(|c| c.auth = Auth::InsecureNoAuth).await;
    let response = client
        .post(format!("{}/v1/ingest/bronze.missing", open.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    open.engine
        .sql("CREATE MATERIALIZED VIEW silver.v AS SELECT * FROM bronze.other")
        .await
        .unwrap();
    let response = client
        .post(format!("{}/v1/ingest/silver.v", open.base))
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["sqlstate"], "42809", "{answer}");
    let response = client
        .post(format!("{}/v1/ingest/bronze.other", open.base))
        .body("{\"id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = client
        .post(format!("{}/v1/ingest/bronze.other", open.base))
        .header("content-encoding", "br")
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let health = reqwest::get(format!("{}/healthz", open.base))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_need_tls_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let config = Config::new(
        "0.0.0.0:0".parse().unwrap(),
        Auth::Tokens(vec![Token {
            name: "t".into(),
            secret: TOKEN.into(),
            tables: vec!["bronze.*".into()],
        }]),
    );
    let err = Server::bind(engine.clone(), config).await.err().unwrap();
    assert!(err.to_string().contains("needs [tls]"), "{err}");
    let config = Config::new("0.0.0.0:0".parse().unwrap(), Auth::InsecureNoAuth);
    let err = Server::bind(engine, config).await.err().unwrap();
    assert!(err.to_string().contains("loopback"), "{err}");
}

/// A second server on the same warehouse, as another process would be; stops when dropped.
async fn second_server(engine: Engine) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config::new("127.0.0.1:0".parse().unwrap(), Auth::InsecureNoAuth);
    let server = Server::bind(engine, config).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    (base, stop)
}

/// Posts `body` with `key` until the answer is not 503 (a writer that found its table
/// replaced asks for a retry); returns the final status and body.
async fn push_until_settled(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
) -> (StatusCode, Value) {
    for _ in 0..10 {
        let response = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return (status, answer);
        }
    }
    panic!("{key}: still 503 after 10 attempts");
}

#[tokio::test]
async fn commits_of_another_process_and_a_replaced_table_are_noticed() {
    let door = door(|c| c.auth = Auth::InsecureNoAuth).await;
    let other = Engine::open(door._dir.path().join("wh").to_str().unwrap())
        .await
        .unwrap();
    let (other_base, _stop) = second_server(other).await;
    let client = reqwest::Client::new();
    let here = format!("{}/v1/ingest/bronze.readings", door.base);
    let there = format!("{other_base}/v1/ingest/bronze.readings");
    let body = |from: usize| ndjson(&(from..from + 50).map(|i| reading(4, i)).collect::<Vec<_>>());
    let engine = &door.engine;
    let rows = || async move { count(engine, "SELECT count(*) FROM bronze.readings").await };

    let (status, first) = push_until_settled(&client, &here, "k1", &body(0)).await;
    assert_eq!(
        (status, first["duplicate"].clone()),
        (StatusCode::OK, json!(false))
    );
    // The other server commits k2 after this one's last commit...
    let (status, _) = push_until_settled(&client, &there, "k2", &body(50)).await;
    assert_eq!(status, StatusCode::OK);
    // ...so this one's commit on top of its version fails, it reads the newer commit, and
    // finds k2 there: a duplicate, written once.
    let (status, again) = push_until_settled(&client, &here, "k2", &body(50)).await;
    assert_eq!(
        (status, again["duplicate"].clone()),
        (StatusCode::OK, json!(true)),
        "{again}"
    );
    assert_eq!(rows().await, 100);
    // New keys land on both sides, each writer catching up with the other's commits.
    for (i, (url, key)) in [(&here, "k3"), (&there, "k4"), (&here, "k5")]
        .into_iter()
        .enumerate()
    {
        let (status, answer) = push_until_settled(&client, url, key, &body(100 + 50 * i)).await;
        assert_eq!(
            (status, answer["duplicate"].clone()),
            (StatusCode::OK, json!(false)),
            "{answer}"
        );
    }
    assert_eq!(rows().await, 250);
    let (status, answer) = push_until_settled(&client, &there, "k5", &body(200)).await;
    assert_eq!(
        (status, answer["duplicate"].clone()),
        (StatusCode::OK, json!(true)),
        "{answer}"
    );

    // The table is dropped and created again with other columns: the writer notices (its
    // version's log entry is not the one it read) and rows are checked against the new table.
    door.engine
        .sql("DROP TABLE bronze.readings; CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, n INT)")
        .await
        .unwrap();
    let (status, answer) =
        push_until_settled(&client, &here, "k6", "{\"device_id\": \"m-1\", \"n\": 1}\n").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = push_until_settled(&client, &here, "k7", &body(300)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(rows().await, 1);

    // Dropped for good: 404, and nothing is written anywhere.
    door.engine.sql("DROP TABLE bronze.readings").await.unwrap();
    let (status, answer) =
        push_until_settled(&client, &here, "k8", "{\"device_id\": \"m-1\", \"n\": 2}\n").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, _) =
        push_until_settled(&client, &here, "k8", "{\"device_id\": \"m-1\", \"n\": 2}\n").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Commits of the ingest writer are blind appends (data files plus one put-if-absent log
/// entry): they must still carry what deltalake's write would, and the table must stay
/// cheap to read: a checkpoint every 10 commits, column statistics in every `add`, the
/// operation metrics DESCRIBE HISTORY shows, and every version readable by time travel.
#[tokio::test]
async fn blind_appends_keep_statistics_history_and_checkpoints() {
    let door = door(|_| {}).await;
    // Version 1; no automatic compaction (its OPTIMIZE commits would take versions of
    // their own between the pushes: crates/lake/tests/it/compaction.rs tests it).
    door.engine
        .sql("ALTER TABLE bronze.readings SET TBLPROPERTIES ('medlake.autoCompact' = 'false')")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let commits = 101;
    for r in 0..commits {
        let rows: Vec<Value> = (0..3).map(|i| reading(r % 7, r * 3 + i)).collect();
        let response = post(&client, &door, "bronze.readings")
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", format!("seq-{r}"))
            .body(ndjson(&rows))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(
            reply["version"],
            json!(r + 2),
            "sequential pushes commit one by one"
        );
    }
    let engine = &door.engine;
    assert_eq!(
        count(engine, "SELECT count(*) FROM bronze.readings").await,
        3 * commits as i64
    );
    assert_eq!(
        count(
            engine,
            "SELECT count(*) FROM bronze.readings VERSION AS OF 51"
        )
        .await,
        150
    );
    assert_eq!(
        count(
            engine,
            "SELECT count(*) FROM table_history('bronze.readings') \
             WHERE operation = 'WRITE' AND rows_written = 3"
        )
        .await,
        commits as i64
    );
    let log = door._dir.path().join("wh/bronze/readings/_delta_log");
    // The checkpoint is written by a task of its own, after the commit of version 99.
    let checkpoint = log.join("00000000000000000099.checkpoint.parquet");
    let last_checkpoint = || -> Value {
        std::fs::read(log.join("_last_checkpoint"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(Value::Null)
    };
    for _ in 0..100 {
        if checkpoint.exists() && last_checkpoint()["version"] == json!(99) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checkpoint.exists(), "no checkpoint at version 99");
    assert_eq!(last_checkpoint()["version"], json!(99));
    let entry = std::fs::read_to_string(log.join("00000000000000000102.json")).unwrap();
    let actions: Vec<Value> = entry
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(info["operation"], json!("WRITE"));
    assert_eq!(info["readVersion"], json!(101));
    assert_eq!(info["medlake_ingest"]["keys"], json!(["seq-100"]), "{info}");
    let add = actions.iter().find_map(|a| a.get("add")).unwrap();
    let stats: Value = serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
    assert_eq!(stats["numRecords"], json!(3));
    assert!(stats["minValues"]["taken_at"].is_string(), "{stats}");
    assert_eq!(stats["nullCount"]["unit"], json!(0), "{stats}");
}

// ---- Pre-auth limits, bounded metrics and reasons, idempotency integrity (issue 20) ----

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A bound far above anything a test waits for: reached only when the server never answers
/// (the old behaviour these tests guard against).
const NEVER: Duration = Duration::from_secs(20);

fn addr(door: &Door) -> String {
    door.base.trim_start_matches("http://").to_string()
}

/// Reads what the server sends on `stream` until it closes the connection or a whole response
/// head has arrived; `None` if it sent nothing and closed (or reset) the connection.
async fn read_answer(stream: &mut TcpStream, what: &str) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(NEVER, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{what}: the server neither answered nor closed the connection"
    );
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

/// Sends the head of a POST announcing a 16 MB body, then only its first kilobyte, and
/// returns the answer's status line: the server must answer without waiting for the rest.
async fn post_without_finishing(door: &Door, target: &str, token: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr(door)).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST /v1/ingest/{target} HTTP/1.1\r\nHost: medlake\r\n{auth}\
         Content-Type: application/x-ndjson\r\nContent-Length: 16000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let answer = read_answer(&mut stream, target).await.expect("an answer");
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_token_and_the_target_are_checked_before_the_body_is_read() {
    let door = door(|c| {
        c.auth = Auth::Tokens(vec![Token {
            name: "ward-3".into(),
            secret: TOKEN.into(),
            tables: vec!["bronze.*".into()],
        }]);
    })
    .await;
    for (target, token, status) in [
        ("bronze.readings", None, "401"),
        ("bronze.readings", Some("wrong-token"), "401"),
        ("silver.readings", Some(TOKEN), "403"),
        ("bronze.missing", Some(TOKEN), "404"),
    ] {
        let line = post_without_finishing(&door, target, token).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status}")),
            "{target} {token:?}: {line}"
        );
    }
    // A declared length over the limit is refused before reading too.
    let door = self::door(|c| c.max_body_bytes = 1 << 20).await;
    let line = post_without_finishing(&door, "bronze.readings", Some(TOKEN)).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
}

#[tokio::test]
async fn metrics_have_series_only_for_tables_a_token_may_push_into() {
    let door = door(|_| {}).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        // Unauthenticated, unknown token, outside the token's scope, malformed.
        let anonymous = client
            .post(format!("{}/v1/ingest/bronze.probe_{i}", door.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let wrong = client
            .post(format!("{}/v1/ingest/bronze.wrong_{i}", door.base))
            .bearer_auth("wrong")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let outside = post(&client, &door, &format!("silver.outside_{i}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(outside.status(), StatusCode::FORBIDDEN);
    }
    let open = self::door(|c| c.auth = Auth::InsecureNoAuth).await;
    for i in 0..20 {
        let missing = client
            .post(format!("{}/v1/ingest/bronze.missing_{i}", open.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
    let ok = post(&client, &door, "bronze.readings")
        .body(ndjson(&[reading(1, 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    for (door, expected) in [(&door, 60), (&open, 20)] {
        let metrics = reqwest::get(format!("{}/metrics", door.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for probe in ["probe_", "wrong_", "outside_", "missing_"] {
            assert!(!metrics.contains(probe), "{metrics}");
        }
        let other: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("medlake_ingest_requests_total{table=\"_other\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(other, expected, "{metrics}");
    }
    let metrics = reqwest::get(format!("{}/metrics", door.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("medlake_ingest_requests_total{table=\"bronze.readings\",status=\"200\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let door = door(|c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.body_read_timeout = Duration::from_millis(500);
    })
    .await;
    // Headers that never end: the connection is closed without an answer.
    let mut stream = TcpStream::connect(addr(&door)).await.unwrap();
    stream
        .write_all(b"POST /v1/ingest/bronze.readings HTTP/1.1\r\nHost: medlake\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, "unfinished headers").await;
    assert!(
        answer
            .as_deref()
            .is_none_or(|a| a.starts_with("HTTP/1.1 408")),
        "{answer:?}"
    );
    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(addr(&door)).await.unwrap();
    assert!(
        read_answer(&mut silent, "silent")
            .await
            .is_none_or(|a| a.starts_with("HTTP/1.1 408"))
    );
    // A body that never ends: 408 once the body deadline passes.
    let mut stream = TcpStream::connect(addr(&door)).await.unwrap();
    let head = format!(
        "POST /v1/ingest/bronze.readings HTTP/1.1\r\nHost: medlake\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"device_id\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, "unfinished body")
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn tls_handshakes_have_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let door = door(|c| {
        c.tls = Some(medlake_auth::TlsFiles { cert, key });
        c.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    // A client that connects and never starts the handshake is disconnected.
    let mut stream = TcpStream::connect(addr(&door)).await.unwrap();
    assert_eq!(read_answer(&mut stream, "no handshake").await, None);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let door = door(|c| c.max_connections = 2).await;
    // Two kept-alive connections, each proven accepted by an answer.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr(&door)).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: medlake\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut stream, "held").await.expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let mut third = TcpStream::connect(addr(&door)).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: medlake\r\n\r\n")
        .await;
    assert_eq!(read_answer(&mut third, "beyond the cap").await, None);
    // Once a held connection closes, a new one is served again.
    drop(held.pop());
    let client = reqwest::Client::new();
    let served = tokio::time::timeout(NEVER, async {
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", door.base)).send().await {
                break r.status();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a connection slot frees up once a connection closes");
    assert_eq!(served, StatusCode::OK);
}

#[tokio::test]
async fn refused_row_reasons_are_bounded() {
    let door = door(|_| {}).await;
    let client = reqwest::Client::new();
    let long = "c".repeat(20_000);
    let body: String = (0..300).map(|_| format!("{{\"{long}\":1}}\n")).collect();
    let response = post(&client, &door, "bronze.readings")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = response.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "a {} byte answer", text.len());
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["error"],
        "300 of 300 rows were refused; nothing was written"
    );
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(answer["more_rows_refused"], 200);
    for row in rows {
        let reason = row["reason"].as_str().unwrap();
        assert!(reason.len() <= 256, "{reason}");
        assert!(reason.starts_with("unknown column 'ccc"), "{reason}");
    }
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_body_or_token_is_a_conflict() {
    const OTHER: &str = "ward-4-token-9876543210";
    let door = door(|c| {
        c.auth = Auth::Tokens(vec![
            Token {
                name: "ward-3".into(),
                secret: TOKEN.into(),
                tables: vec!["bronze.readings".into()],
            },
            Token {
                name: "ward-4".into(),
                secret: OTHER.into(),
                tables: vec!["bronze.readings".into()],
            },
        ]);
    })
    .await;
    let client = reqwest::Client::new();
    let first = ndjson(&[reading(1, 1), reading(1, 2)]);
    let send = |token: &'static str, key: &'static str, body: String| {
        client
            .post(format!("{}/v1/ingest/bronze.readings", door.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let response = send(TOKEN, "batch-1", first.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The same request again: a duplicate.
    let response = send(TOKEN, "batch-1", first.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["duplicate"], true);
    // Other rows under the same key: 409, nothing written.
    let response = send(TOKEN, "batch-1", ndjson(&[reading(9, 9)]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["sqlstate"], "23505", "{answer}");
    // The same body from another token: 409 too.
    let response = send(OTHER, "batch-1", first.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        2
    );
    // Two different bodies under one new key at once: one lands, the other is a conflict.
    let (a, b) = tokio::join!(
        send(TOKEN, "batch-2", ndjson(&[reading(2, 1)])),
        send(TOKEN, "batch-2", ndjson(&[reading(3, 1), reading(3, 2)])),
    );
    let mut statuses = [a.unwrap().status(), b.unwrap().status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let total = count(&door.engine, "SELECT count(*) FROM bronze.readings").await;
    assert!(total == 3 || total == 4, "{total}");
    // A key committed before bodies were hashed (no hash, no token): a duplicate, as before.
    let table = medlake_engine::Engine::ingest_name("bronze.readings").unwrap();
    let mut log = door.engine.ingest_open(&table, 100, false).await.unwrap();
    let (_, schema) = door.engine.ingest_target("bronze.readings").await.unwrap();
    let batch = arrow::record_batch::RecordBatch::new_empty(schema.clone());
    door.engine
        .ingest_append(
            &mut log,
            schema,
            vec![batch],
            &[medlake_engine::ingest::IngestKey::bare("legacy-1")],
            &[],
            medlake_engine::Door::Http,
        )
        .await
        .unwrap()
        .unwrap();
    let response = send(OTHER, "legacy-1", ndjson(&[reading(5, 5)]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(
        count(&door.engine, "SELECT count(*) FROM bronze.readings").await,
        total
    );
}

/// `/metrics` also carries the engine's series: refresh durations and rows by view, each
/// view's age and whether its last refresh failed, statements by door, open sessions.
#[tokio::test]
async fn metrics_carry_refreshes_statements_and_view_staleness() {
    let door = door(|_| {}).await;
    door.engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.per_metric AS \
             SELECT metric, count(*) AS n FROM bronze.readings GROUP BY metric; \
             CREATE MATERIALIZED VIEW gold.broken CONSTRAINT at_most_none EXPECT (n < 1) ON VIOLATION FAIL UPDATE \
             AS SELECT count(*) AS n FROM bronze.other",
        )
        .await
        .unwrap();
    door.engine
        .sql("INSERT INTO bronze.other VALUES (1)")
        .await
        .unwrap();
    assert!(
        door.engine
            .sql("REFRESH MATERIALIZED VIEW gold.broken")
            .await
            .is_err()
    );
    let metrics = reqwest::get(format!("{}/metrics", door.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "medlake_refresh_duration_seconds_count{view=\"gold.per_metric\",status=\"succeeded\"} 1",
        "medlake_refresh_duration_seconds_count{view=\"gold.broken\",status=\"failed\"} 1",
        "medlake_view_last_refresh_failed{view=\"gold.broken\"} 1",
        "medlake_view_last_refresh_failed{view=\"gold.per_metric\"} 0",
        "medlake_view_seconds_since_refresh{view=\"gold.per_metric\"}",
        "medlake_statement_duration_seconds_count{door=\"cli\",outcome=\"error\"} 1",
        "medlake_sessions{door=\"cli\"} 1",
        "# TYPE medlake_alert_deliveries gauge",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
}
