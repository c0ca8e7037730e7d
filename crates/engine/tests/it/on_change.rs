//! `REFRESH ON CHANGE` views refresh when their inputs commit (upstream first, in one pass),
//! and failed automatic refreshes are retried with backoff before their next interval.

use chrono::{Duration, Utc};
use medlake_engine::RefreshStatus;
use medlake_views::scheduler::Retries;

use crate::{count, scratch};

#[tokio::test]
async fn on_change_views_follow_their_inputs_upstream_first() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.r (p VARCHAR NOT NULL, v INT NOT NULL);
             CREATE MATERIALIZED VIEW silver.r REFRESH ON CHANGE AS SELECT p, v FROM bronze.r WHERE v > 0;
             CREATE MATERIALIZED VIEW gold.r REFRESH ON CHANGE AS SELECT p, sum(v) AS total FROM silver.r GROUP BY p;
             SHOW MATERIALIZED VIEWS",
        )
        .await
        .unwrap();
    let scheduler = engine.scheduler();
    // Nothing moved since the views were created.
    assert!(scheduler.react(Utc::now()).await.unwrap().is_empty());
    engine
        .sql("INSERT INTO bronze.r VALUES ('a', 1), ('a', 2), ('b', -1)")
        .await
        .unwrap();
    let ran = scheduler.react(Utc::now()).await.unwrap();
    let order: Vec<(String, &str, &str)> = ran
        .iter()
        .map(|o| (o.view.to_string(), o.trigger.as_str(), o.status.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            ("silver.r".into(), "change", "succeeded"),
            ("gold.r".into(), "change", "succeeded")
        ],
        "one pass reaches gold"
    );
    assert_eq!(
        count(&engine, "SELECT total FROM gold.r WHERE p = 'a'").await,
        3
    );
    assert!(ran.iter().all(|o| o.mode == "incremental"), "{ran:?}");
    // Settled: the next look finds nothing to do, and records nothing.
    assert!(scheduler.react(Utc::now()).await.unwrap().is_empty());
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM system.refreshes WHERE \"trigger\" = 'change'"
        )
        .await,
        2
    );
    // The schedule reads back as written.
    let shown = engine
        .query("SELECT schedule FROM system.materialized_views WHERE name = 'r' ORDER BY schema")
        .await
        .unwrap();
    let schedules = shown[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(schedules.value(0), "ON CHANGE");
}

#[tokio::test]
async fn a_failed_scheduled_refresh_is_retried_before_its_next_interval() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.f (v INT NOT NULL);
             CREATE MATERIALIZED VIEW silver.f REFRESH EVERY '1 hour'
               CONSTRAINT positive EXPECT (v > 0) ON VIOLATION FAIL UPDATE
               AS SELECT v FROM bronze.f",
        )
        .await
        .unwrap();
    let scheduler = engine.scheduler().with_retries(Retries {
        attempts: 2,
        first_backoff: std::time::Duration::from_secs(60),
        max_backoff: std::time::Duration::from_secs(600),
    });
    engine
        .sql("INSERT INTO bronze.f VALUES (-1)")
        .await
        .unwrap();
    let t0 = Utc::now() + Duration::hours(1) + Duration::seconds(5);
    let ran = scheduler.tick(t0).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].status, RefreshStatus::Failed);
    // The retry is due one backoff after the failure, long before the next hour.
    let next = scheduler.next_runs().await.unwrap();
    let retry = next
        .iter()
        .find(|(v, _)| v.to_string() == "silver.f")
        .unwrap()
        .1;
    assert!(retry <= Utc::now() + Duration::seconds(61), "{retry}");
    engine
        .sql("DELETE FROM bronze.f WHERE v < 0; INSERT INTO bronze.f VALUES (4)")
        .await
        .unwrap();
    assert!(
        scheduler.tick(Utc::now()).await.unwrap().is_empty(),
        "not before the backoff"
    );
    let ran = scheduler
        .tick(Utc::now() + Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].status, RefreshStatus::Succeeded, "{:?}", ran[0]);
    assert_eq!(count(&engine, "SELECT sum(v) FROM silver.f").await, 4);
    // Once it succeeded, it is due at its interval again.
    let next = scheduler.next_runs().await.unwrap();
    let due = next
        .iter()
        .find(|(v, _)| v.to_string() == "silver.f")
        .unwrap()
        .1;
    assert!(due > Utc::now() + Duration::minutes(59), "{due}");
}
