//! Alert rules: `CREATE ALERT ... ON view WHEN ... KEY (...) SEVERITY ... NOTIFY 'webhook'`
//! fire after a refresh over the rows it added or changed, once per key and severity, and
//! are delivered to a real HTTP receiver (here on loopback) with an HMAC signature, retried
//! while it fails, every attempt in `system.alerts`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, Int64Array, StringArray};
use axum::http::{HeaderMap, StatusCode};
use medlake_alerts::{Retry, Secret, Webhook};
use medlake_engine::{Engine, Principal, Role};

use crate::{location, outcome};

/// What the receiver got: (signature header, delivery header, body).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A webhook receiver on loopback that answers 500 to its first `failures` requests.
async fn receiver(failures: usize) -> (url::Url, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let mut seen = seen.lock().unwrap();
                seen.push((
                    header("x-medlake-signature"),
                    header("x-medlake-delivery"),
                    body,
                ));
                if seen.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (
        url::Url::parse(&format!("http://{addr}/hook")).unwrap(),
        received,
    )
}

async fn alerting_engine(dir: &tempfile::TempDir, url: url::Url, users: bool) -> Engine {
    let settings = medlake_alerts::Settings {
        webhooks: vec![Webhook {
            name: "pager".into(),
            url,
            secret: Some(Secret::new("pager-key")),
            timeout: Duration::from_secs(5),
            heartbeat: None,
        }],
        retry: Retry {
            max_attempts: 5,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
        link_base: "https://console.example".into(),
        active: true,
        ..Default::default()
    };
    let mut builder = Engine::builder(&location(dir))
        .policy(medlake_source::Policy::permissive())
        .alerts(settings);
    if users {
        builder = builder.users([
            Principal::user("olga", Role::None),
            Principal::user("rita", Role::None),
        ]);
    }
    builder.open().await.unwrap()
}

/// `system.alerts` rows of `alert`: (severity, key, status, attempts), oldest first.
async fn firings(engine: &Engine, alert: &str) -> Vec<(String, String, String, i64)> {
    let batches = engine
        .query(&format!(
            "SELECT severity, key, status, attempts FROM system.alerts \
             WHERE alert = '{alert}' ORDER BY firing"
        ))
        .await
        .unwrap();
    let mut out = Vec::new();
    for batch in &batches {
        let text = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
        };
        let ints = batch
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for row in 0..batch.num_rows() {
            out.push((
                text(0).value(row).to_string(),
                text(1).value(row).to_string(),
                text(2).value(row).to_string(),
                ints.value(row),
            ));
        }
    }
    out
}

/// Waits (at most 30 s) until `done` holds for the alert's firings.
async fn wait_for(
    engine: &Engine,
    alert: &str,
    done: impl Fn(&[(String, String, String, i64)]) -> bool,
) -> Vec<(String, String, String, i64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = firings(engine, alert).await;
        if done(&rows) || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SETUP: &str = "
    CREATE TABLE bronze.obs (patient_id VARCHAR NOT NULL, hour INT NOT NULL, score INT NOT NULL, name VARCHAR);
    CREATE MATERIALIZED VIEW gold.risk AS
      SELECT patient_id, hour, score, name,
             CASE WHEN score >= 7 THEN 'high' WHEN score >= 5 THEN 'medium' ELSE 'low' END AS risk
      FROM bronze.obs;
";

#[tokio::test]
async fn an_alert_fires_once_per_key_and_severity_and_is_retried_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = receiver(2).await;
    let engine = alerting_engine(&dir, url, false).await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "CREATE ALERT deterioration ON gold.risk WHEN risk IN ('medium', 'high') \
             KEY (patient_id, hour) SEVERITY risk NOTIFY 'pager'",
        )
        .await
        .unwrap();
    // A medium score and a low one: one firing, delivered on the third attempt.
    engine
        .sql(
            "INSERT INTO bronze.obs VALUES ('p-1', 10, 5, 'Ada Lovelace'), ('p-2', 10, 2, 'Bob');
             REFRESH MATERIALIZED VIEW gold.risk",
        )
        .await
        .unwrap();
    let rows = wait_for(&engine, "deterioration", |r| {
        r.len() == 1 && r[0].2 == "delivered"
    })
    .await;
    assert_eq!(
        rows,
        vec![(
            "medium".into(),
            r#"{"hour":"10","patient_id":"p-1"}"#.into(),
            "delivered".into(),
            3
        )]
    );
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 3, "two failures, then the delivery");
        let secret = Secret::new("pager-key");
        let now = chrono::Utc::now().timestamp();
        for (signature, delivery, body) in got.iter() {
            assert!(
                medlake_alerts::deliver::verify(&secret, signature, body, now, 300),
                "a valid signature on every attempt"
            );
            assert_eq!(delivery, &got[0].1, "the same delivery id on every retry");
            let payload: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(payload["alert"], "deterioration");
            assert_eq!(payload["severity"], "medium");
            assert_eq!(payload["key"]["patient_id"], "p-1");
            assert!(
                payload["link"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://console.example/console/alerts/")
            );
            assert!(!body.contains("Ada"), "no row in the payload: {body}");
        }
    }
    // The same key and severity again (a full refresh rewrites every row): no new firing.
    engine
        .sql("REFRESH MATERIALIZED VIEW gold.risk FULL")
        .await
        .unwrap();
    // Escalation of the same patient-hour to high fires again; another hour fires too.
    engine
        .sql(
            "UPDATE bronze.obs SET score = 8 WHERE patient_id = 'p-1';
             INSERT INTO bronze.obs VALUES ('p-2', 11, 6, 'Bob');
             REFRESH MATERIALIZED VIEW gold.risk",
        )
        .await
        .unwrap();
    let rows = wait_for(&engine, "deterioration", |r| {
        r.len() == 3 && r.iter().all(|f| f.2 == "delivered")
    })
    .await;
    let mut fired: Vec<(String, String)> =
        rows.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    fired.sort();
    assert_eq!(
        fired,
        vec![
            ("high".into(), r#"{"hour":"10","patient_id":"p-1"}"#.into()),
            (
                "medium".into(),
                r#"{"hour":"10","patient_id":"p-1"}"#.into()
            ),
            (
                "medium".into(),
                r#"{"hour":"11","patient_id":"p-2"}"#.into()
            ),
        ]
    );
    // Acknowledging one patient-hour closes both of its firings, not the other patient's.
    let acked = engine
        .sql("ACKNOWLEDGE ALERT deterioration KEY ('p-1', '10')")
        .await
        .unwrap();
    assert_eq!(
        format!("{:?}", acked[0]),
        "Command { tag: \"ACKNOWLEDGE ALERT\", rows: 2 }"
    );
    let open = engine
        .query("SELECT open, firings FROM system.alert_rules WHERE name = 'deterioration'")
        .await
        .unwrap();
    let ints = |i: usize| {
        open[0]
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!((ints(0), ints(1)), (1, 3));
}

#[tokio::test]
async fn firings_survive_a_restart_and_pending_deliveries_resume() {
    let dir = tempfile::tempdir().unwrap();
    // A receiver that never answers well: the delivery is still pending when the engine goes.
    let (down, _) = receiver(usize::MAX).await;
    {
        let engine = alerting_engine(&dir, down, false).await;
        engine.sql(SETUP).await.unwrap();
        engine
            .sql("CREATE ALERT any_high ON gold.risk WHEN risk = 'high' NOTIFY 'pager'")
            .await
            .unwrap();
        engine
            .sql(
                "INSERT INTO bronze.obs VALUES ('p-9', 1, 9, NULL);
                 REFRESH MATERIALIZED VIEW gold.risk",
            )
            .await
            .unwrap();
        let rows = wait_for(&engine, "any_high", |r| r.len() == 1 && r[0].3 >= 1).await;
        assert_eq!(rows.len(), 1);
    }
    // A new server (a new engine) with a working receiver delivers what was pending, once.
    let (up, received) = receiver(0).await;
    let engine = alerting_engine(&dir, up, false).await;
    let rows = wait_for(&engine, "any_high", |r| {
        r.len() == 1 && r[0].2 == "delivered"
    })
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].2, "delivered");
    assert_eq!(received.lock().unwrap().len(), 1);
    // Rows committed while no server evaluated are caught up at start (no KEY: the row).
    engine
        .sql("INSERT INTO bronze.obs VALUES ('p-8', 1, 7, NULL); REFRESH MATERIALIZED VIEW gold.risk")
        .await
        .unwrap();
    let rows = wait_for(&engine, "any_high", |r| {
        r.len() == 2 && r[1].2 == "delivered"
    })
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[1].1.contains("\"patient_id\":\"p-8\""), "{rows:?}");
}

#[tokio::test]
async fn alert_statements_need_the_views_privileges_and_name_known_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = receiver(0).await;
    let engine = alerting_engine(&dir, url, true).await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql(
            "GRANT USAGE ON SCHEMA bronze TO olga; GRANT SELECT ON TABLE bronze.obs TO olga;
             ALTER MATERIALIZED VIEW gold.risk OWNER TO olga;
             GRANT USAGE ON SCHEMA gold TO rita; GRANT SELECT ON TABLE gold.risk TO rita;
             CREATE ROLE ward; GRANT USAGE ON SCHEMA system TO ward;
             GRANT SELECT ON TABLE system.alerts TO ward;",
        )
        .await
        .unwrap();
    let ward = |name: &str| {
        let mut principal = Principal::user(name, Role::None);
        principal.roles.insert("ward".into());
        engine.session_for(principal)
    };
    let rita = ward("rita");
    let olga = ward("olga");
    let create = "CREATE ALERT h ON gold.risk WHEN risk = 'high' KEY (patient_id) NOTIFY 'pager'";
    // Reading a view is not enough to send what it finds to a webhook: its owner decides.
    assert_eq!(outcome(&rita, create).await, "42501");
    assert_eq!(
        outcome(
            &olga,
            "CREATE ALERT h ON gold.risk WHEN risk = 'high' NOTIFY 'nowhere'"
        )
        .await,
        "42704"
    );
    assert_eq!(
        outcome(
            &olga,
            "CREATE ALERT h ON gold.risk WHEN no_such_column = 1 NOTIFY 'pager'"
        )
        .await,
        "22023"
    );
    // A view that does not exist: refused like any object one does not own (42501), and
    // named as missing to an admin (42P01).
    let missing = "CREATE ALERT h ON gold.nothing WHEN x = 1 NOTIFY 'pager'";
    assert_eq!(outcome(&olga, missing).await, "42501");
    assert_eq!(outcome(&engine.local_session(), missing).await, "42P01");
    assert_eq!(outcome(&olga, create).await, "ok");
    assert_eq!(outcome(&olga, create).await, "42710");
    assert_eq!(
        outcome(&olga, &create.replace("CREATE", "CREATE OR REPLACE")).await,
        "ok"
    );
    engine
        .sql("INSERT INTO bronze.obs VALUES ('p-1', 1, 9, 'Ada'); REFRESH MATERIALIZED VIEW gold.risk")
        .await
        .unwrap();
    let rows = wait_for(&engine, "h", |r| r.len() == 1 && r[0].2 == "delivered").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    // A reader of the view sees that it fired, not whom it is about (the owner's reading).
    let seen = rita
        .query("SELECT severity, key, row FROM system.alerts WHERE alert = 'h'")
        .await
        .unwrap();
    assert_eq!(seen[0].num_rows(), 1);
    assert!(seen[0].column(1).is_null(0) && seen[0].column(2).is_null(0));
    let owner = olga
        .query("SELECT key FROM system.alerts WHERE alert = 'h'")
        .await
        .unwrap();
    assert!(!owner[0].column(0).is_null(0));
    // Readers may acknowledge; only the owner drops; nobody else sees the rule at all.
    assert_eq!(
        outcome(&rita, "ACKNOWLEDGE ALERT h KEY ('p-1')").await,
        "ok"
    );
    assert_eq!(
        outcome(&rita, "ACKNOWLEDGE ALERT h KEY ('p-1', 'x')").await,
        "42601"
    );
    assert_eq!(outcome(&rita, "DROP ALERT h").await, "42501");
    let stranger = ward("sam");
    assert_eq!(outcome(&stranger, "ACKNOWLEDGE ALERT h").await, "42501");
    let listed = stranger.query("SELECT * FROM system.alerts").await.unwrap();
    assert_eq!(listed.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    // The log behind system.alerts holds every firing's row: admins and auditors only, even
    // for a reader of everything.
    let reader = engine.session_for(Principal::user("rhea", Role::Reader));
    assert_eq!(
        outcome(&reader, "SELECT * FROM system.alert_events").await,
        "42501"
    );
    assert_eq!(
        outcome(&olga, "SELECT * FROM system.alert_events").await,
        "42501"
    );
    assert_eq!(outcome(&olga, "DROP ALERT h").await, "ok");
    assert_eq!(outcome(&olga, "DROP ALERT h").await, "42704");
    assert_eq!(outcome(&olga, "DROP ALERT IF EXISTS h").await, "ok");
}

/// `FRESHNESS` on a view that extracts a source: `system.sources` says how old its last
/// success is, how many refreshes failed since and why, and a rule on it alerts once per
/// stale episode.
#[tokio::test]
async fn a_stale_source_shows_in_system_sources_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = receiver(0).await;
    let engine = alerting_engine(&dir, url, false).await;
    engine
        .sql(
            "CREATE TABLE bronze.raw (n INT NOT NULL);
             CREATE MATERIALIZED VIEW bronze.feed FRESHNESS WARN AFTER '1 second' ERROR AFTER '2 seconds'
               CONSTRAINT small EXPECT (n < 10) ON VIOLATION FAIL UPDATE
               AS SELECT n FROM bronze.raw;
             CREATE ALERT stale_source ON system.sources WHEN freshness = 'error'
               KEY (view, last_success) SEVERITY 'high' NOTIFY 'pager'",
        )
        .await
        .unwrap();
    let status = |engine: &Engine| {
        let engine = engine.clone();
        async move {
            let batches = engine
                .query(
                    "SELECT freshness, consecutive_failures, last_error, warn_after_seconds \
                     FROM system.sources WHERE view = 'bronze.feed'",
                )
                .await
                .unwrap();
            let text = |i: usize| {
                let a = batches[0]
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                (!a.is_null(0)).then(|| a.value(0).to_string())
            };
            let ints = |i: usize| {
                batches[0]
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            };
            (text(0).unwrap(), ints(1), text(2), ints(3))
        }
    };
    assert_eq!(status(&engine).await, ("fresh".into(), 0, None, 1));
    engine
        .sql("INSERT INTO bronze.raw VALUES (99)")
        .await
        .unwrap();
    assert!(
        engine
            .sql("REFRESH MATERIALIZED VIEW bronze.feed")
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (freshness, failures, error, _) = status(&engine).await;
    assert_eq!((freshness.as_str(), failures), ("error", 1));
    assert!(
        error.unwrap().contains("small"),
        "the failed refresh's reason"
    );
    let (firings, pending) = engine.settle_alerts(Duration::from_secs(20)).await.unwrap();
    assert_eq!((firings, pending), (1, 0));
    // The same stale episode does not fire again.
    let (firings, _) = engine.settle_alerts(Duration::from_secs(5)).await.unwrap();
    assert_eq!(firings, 1);
    let got = received.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].2.contains("\"view\":\"bronze.feed\""),
        "{}",
        got[0].2
    );
}

/// An erased patient leaves no firing behind: the alert log's key and row are searched like
/// a quarantine's raw rows, and its history purged.
#[tokio::test]
async fn erasing_a_patient_removes_their_firings() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = receiver(0).await;
    let engine = alerting_engine(&dir, url, false).await;
    engine.sql(SETUP).await.unwrap();
    engine
        .sql("CREATE ALERT h ON gold.risk WHEN risk = 'high' KEY (patient_id) NOTIFY 'pager'")
        .await
        .unwrap();
    engine
        .sql(
            "INSERT INTO bronze.obs VALUES ('p-1', 1, 9, 'Ada'), ('p-2', 1, 9, 'Bob');
             REFRESH MATERIALIZED VIEW gold.risk",
        )
        .await
        .unwrap();
    let (firings, _) = engine.settle_alerts(Duration::from_secs(20)).await.unwrap();
    assert_eq!(firings, 2);
    engine.sql("ERASE PATIENT 'p-1'").await.unwrap();
    let left = firings_of(&engine).await;
    assert_eq!(left, vec![r#"{"patient_id":"p-2"}"#.to_string()]);
    assert_eq!(
        crate::count(
            &engine,
            "SELECT count(*) FROM system.alert_events WHERE key LIKE '%p-1%' OR \"row\" LIKE '%Ada%'"
        )
        .await,
        0
    );
}

async fn firings_of(engine: &Engine) -> Vec<String> {
    let batches = engine
        .query("SELECT DISTINCT key FROM system.alerts ORDER BY key")
        .await
        .unwrap();
    let mut keys = Vec::new();
    for batch in &batches {
        let a = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        keys.extend((0..a.len()).map(|i| a.value(i).to_string()));
    }
    keys
}

/// `[[webhooks]] heartbeat_seconds`: signed heartbeats on the interval while the pipeline is
/// healthy, none while a view's latest refresh failed or a source is past its FRESHNESS
/// ERROR AFTER, and again once it recovers.
#[tokio::test]
async fn heartbeats_are_signed_and_stop_while_the_pipeline_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = receiver(0).await;
    let settings = medlake_alerts::Settings {
        webhooks: vec![Webhook {
            name: "pager".into(),
            url,
            secret: Some(Secret::new("pager-key")),
            timeout: Duration::from_secs(5),
            heartbeat: Some(Duration::from_millis(200)),
        }],
        active: true,
        ..Default::default()
    };
    let engine = Engine::builder(&location(&dir))
        .policy(medlake_source::Policy::permissive())
        .alerts(settings)
        .open()
        .await
        .unwrap();
    engine
        .sql(
            "CREATE TABLE bronze.raw (n INT NOT NULL);
             CREATE MATERIALIZED VIEW bronze.feed FRESHNESS WARN AFTER '2 seconds' ERROR AFTER '4 seconds'
               CONSTRAINT small EXPECT (n < 10) ON VIOLATION FAIL UPDATE
               AS SELECT n FROM bronze.raw",
        )
        .await
        .unwrap();
    // The first heartbeat goes out as the server starts, the next ones every 200 ms.
    let created = received.lock().unwrap().len();
    assert!(
        heard_more_than(&received, created + 1).await >= created + 2,
        "two heartbeats since the view was created"
    );
    let now = chrono::Utc::now().timestamp();
    for (i, (signature, delivery, body)) in received.lock().unwrap().iter().enumerate() {
        assert!(
            medlake_alerts::deliver::verify(&Secret::new("pager-key"), signature, body, now, 60),
            "heartbeat {i} is signed: {signature}"
        );
        assert_eq!(delivery, &format!("heartbeat-{}/pager", i + 1));
        let payload: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(payload["heartbeat"], i + 1, "{body}");
        assert_eq!(payload["status"], "ok", "{body}");
        if i >= created {
            assert!(payload["newest_refresh"].is_string(), "{body}");
        }
        assert_eq!(
            (&payload["failed_views"], &payload["failed_sources"]),
            (&serde_json::json!(0), &serde_json::json!(0)),
            "{body}"
        );
    }
    // A failed refresh: no heartbeat until a refresh succeeds again.
    engine
        .sql("INSERT INTO bronze.raw VALUES (99)")
        .await
        .unwrap();
    assert!(
        engine
            .sql("REFRESH MATERIALIZED VIEW bronze.feed")
            .await
            .is_err()
    );
    let (before, after) = silent(&received).await;
    assert_eq!(
        before, after,
        "no heartbeat while the view's refresh failed"
    );
    engine
        .sql("DELETE FROM bronze.raw WHERE n = 99")
        .await
        .unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW bronze.feed FULL")
        .await
        .unwrap();
    let refreshed = std::time::Instant::now();
    assert!(
        heard_more_than(&received, after).await > after,
        "heartbeats resume"
    );
    // The source goes past ERROR AFTER (4 s without a successful extraction, counted in whole
    // seconds): silence.
    tokio::time::sleep(Duration::from_millis(5200).saturating_sub(refreshed.elapsed())).await;
    let (before, after) = silent(&received).await;
    assert_eq!(
        before, after,
        "no heartbeat while a source is past ERROR AFTER"
    );
    // Every heartbeat numbered in order, none lost or repeated.
    let numbers: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, delivery, _)| delivery.clone())
        .collect();
    let expected: Vec<String> = (1..=numbers.len())
        .map(|i| format!("heartbeat-{i}/pager"))
        .collect();
    assert_eq!(numbers, expected);
}

/// Waits (at most 20 s) until the receiver got more than `n` requests; returns how many.
async fn heard_more_than(received: &Received, n: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().len() <= n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    received.lock().unwrap().len()
}

/// What the receiver counted before and after a second of listening (after 600 ms for the
/// requests in flight to land).
async fn silent(received: &Received) -> (usize, usize) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = received.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    (before, received.lock().unwrap().len())
}
