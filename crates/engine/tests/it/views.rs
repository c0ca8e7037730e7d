//! Materialized views end to end through the engine: incremental refresh against full
//! refresh, the scheduler on a controlled clock, refresh exclusion, optimistic commits.

use std::sync::Arc;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{Duration, Timelike, Utc};
use medlake_engine::{Code, Engine};

use crate::{count, location, row_groups_read, scratch};

/// A small deterministic generator (xorshift64*): the same rounds on every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every row of a table, as sorted text (floats to 6 decimals: sums over different splits
/// of the same rows may differ in the last bits).
pub(crate) async fn rows(engine: &Engine, table: &str) -> Vec<String> {
    let batches = engine
        .query(&format!("SELECT * FROM {table}"))
        .await
        .expect(table);
    let mut out = Vec::new();
    for batch in &batches {
        let options = FormatOptions::default().with_null("NULL");
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(column, formatter)| match column.data_type() {
                    DataType::Float64 if column.is_valid(row) => {
                        let v = column
                            .as_any()
                            .downcast_ref::<Float64Array>()
                            .unwrap()
                            .value(row);
                        format!("{v:.6}")
                    }
                    _ => formatter.value(row).to_string(),
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

pub(crate) fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(column), &DataType::Utf8).unwrap();
            let c = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Each view shape is defined twice: `<name>` refreshed as medlake chooses (incrementally
/// when it can), `<name>_full` always with FULL. After every round of random appends both
/// must hold exactly the same rows.
const VIEWS: &[(&str, &str)] = &[
    (
        "silver.clean",
        "CONSTRAINT plausible EXPECT (value BETWEEN 0 AND 300) ON VIOLATION DROP ROW \
         AS SELECT patient, metric, value * 1.0 AS value, ts, upper(metric) AS kind \
         FROM bronze.events WHERE metric <> 'noise'",
    ),
    (
        "gold.daily",
        "AS SELECT patient, metric, date_trunc('day', ts) AS day, count(*) AS n, count(value) AS measured, \
         avg(value) AS mean, min(value) AS low, max(value) AS high, count(DISTINCT value) AS distinct_values \
         FROM silver.clean GROUP BY patient, metric, date_trunc('day', ts)",
    ),
    (
        "gold.by_ward",
        "AS SELECT w.ward, e.metric, count(*) AS n, sum(e.value) AS total \
         FROM bronze.events e JOIN bronze.wards w ON e.patient = w.patient GROUP BY w.ward, e.metric",
    ),
    (
        "silver.enriched",
        "AS SELECT e.patient, w.ward, e.value FROM bronze.events e LEFT JOIN bronze.wards w ON e.patient = w.patient",
    ),
    (
        "gold.distinct_patients",
        "AS SELECT DISTINCT patient FROM bronze.events",
    ),
    (
        "silver.with_wards",
        "AS SELECT patient, value, 'event' AS source FROM bronze.events WHERE metric = 'hr' \
         UNION ALL SELECT patient, NULL, ward FROM bronze.wards",
    ),
    (
        "silver.ward_events",
        "AS SELECT e.patient, w.ward, e.value FROM bronze.events e JOIN bronze.wards w ON e.patient = w.patient",
    ),
    (
        "silver.latest",
        "AS SELECT patient, metric, value, ts FROM (SELECT *, row_number() OVER \
         (PARTITION BY patient, metric ORDER BY ts DESC, value DESC NULLS LAST) AS version_rank \
         FROM bronze.events) WHERE version_rank = 1",
    ),
    (
        "silver.gaps",
        "AS SELECT patient, ts, value - lag(value) OVER (PARTITION BY patient ORDER BY ts, value) AS step \
         FROM bronze.events",
    ),
    (
        "gold.busy",
        "AS SELECT patient, count(*) AS n, min(value) AS low, max(value) AS high \
         FROM bronze.events GROUP BY patient HAVING count(*) > 3",
    ),
    // Refreshed by regions (crates/views/src/lineage.rs): a window inside a join with a
    // changed dimension on the null-supplying side (and a quarantine), the same input read
    // twice, a window partitioned by an expression under a GROUP BY.
    (
        "silver.latest_ward",
        "CONSTRAINT has_ward EXPECT (ward IS NOT NULL) ON VIOLATION QUARANTINE \
         AS SELECT x.patient, x.metric, x.value, w.ward FROM (SELECT *, row_number() OVER \
         (PARTITION BY patient, metric ORDER BY ts DESC, value DESC NULLS LAST) AS rn FROM bronze.events) x \
         LEFT JOIN bronze.wards w ON w.patient = x.patient WHERE x.rn = 1",
    ),
    (
        "gold.twice",
        "AS SELECT a.patient, a.n, b.high FROM \
         (SELECT patient, count(*) AS n FROM bronze.events GROUP BY patient) a LEFT JOIN \
         (SELECT patient, max(value) AS high FROM bronze.events WHERE metric = 'hr' GROUP BY patient) b \
         ON a.patient = b.patient",
    ),
    (
        "gold.daily_steps",
        "AS SELECT patient, day, count(*) AS n, max(step) AS biggest FROM \
         (SELECT patient, CAST(ts AS DATE) AS day, value - lag(value) OVER \
         (PARTITION BY patient, CAST(ts AS DATE) ORDER BY ts, value) AS step FROM bronze.events) \
         GROUP BY patient, day",
    ),
    // A range join (crates/views/src/reach.rs): each hour with the hours up to 5 before it,
    // recomputed for the hours within reach of a change.
    (
        "gold.carried",
        "AS WITH hourly AS (SELECT patient, date_trunc('hour', ts) AS hour, max(value) AS value, \
         count(*) AS n FROM bronze.events GROUP BY patient, date_trunc('hour', ts)) \
         SELECT h.patient, h.hour, count(*) AS hours, sum(o.n) AS readings, max(o.value) AS top \
         FROM (SELECT DISTINCT patient, hour FROM hourly) h JOIN hourly o ON o.patient = h.patient \
         AND o.hour <= h.hour AND o.hour > h.hour - INTERVAL '5 hours' GROUP BY h.patient, h.hour",
    ),
];

#[tokio::test]
async fn incremental_refresh_yields_exactly_what_a_full_refresh_yields() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.events (patient VARCHAR, metric VARCHAR NOT NULL, value DOUBLE, ts TIMESTAMP NOT NULL, note VARCHAR); \
             CREATE TABLE bronze.wards (patient VARCHAR NOT NULL, ward VARCHAR NOT NULL); \
             INSERT INTO bronze.wards VALUES ('p0', 'icu'), ('p1', 'icu'), ('p2', 'cardio'), ('p3', 'neuro')",
        )
        .await
        .unwrap();
    for (name, body) in VIEWS {
        for suffix in ["", "_full"] {
            let body = body.replace("silver.clean", &format!("silver.clean{suffix}"));
            engine
                .sql(&format!("CREATE MATERIALIZED VIEW {name}{suffix} {body}"))
                .await
                .expect(name);
        }
    }
    let mut rng = Rng(0x006d_6564_6c61_6b65);
    let metrics = ["hr", "spo2", "noise", "temp"];
    for round in 0..14 {
        let n = 1 + rng.below(40);
        let values: Vec<String> = (0..n)
            .map(|_| {
                let patient = match rng.below(8) {
                    0 => "NULL".to_string(),
                    p => format!("'p{}'", p - 1),
                };
                let metric = metrics[rng.below(4) as usize];
                let value = match rng.below(10) {
                    0 => "NULL".to_string(),
                    1 => "999".to_string(),
                    _ => format!("{}", rng.below(200)),
                };
                let ts = format!(
                    "2026-11-{:02} {:02}:00:00",
                    20 + rng.below(5),
                    rng.below(24)
                );
                format!("({patient}, '{metric}', {value}, '{ts}', NULL)")
            })
            .collect();
        if round % 4 == 0 && round > 0 {
            // A change in a column no view reads: the views see no change at all.
            engine
                .sql(&format!(
                    "UPDATE bronze.events SET note = 'round {round}' WHERE patient = 'p{}'",
                    round % 7
                ))
                .await
                .unwrap();
        } else {
            engine
                .sql(&format!(
                    "INSERT INTO bronze.events VALUES {}",
                    values.join(", ")
                ))
                .await
                .unwrap();
        }
        // Removals and corrections: deletes, updates (pre and post images), a MERGE.
        let patient = rng.below(7);
        match round % 4 {
            1 => {
                let below = rng.below(120);
                engine
                    .sql(&format!(
                        "DELETE FROM bronze.events WHERE patient = 'p{patient}' AND value < {below}"
                    ))
                    .await
                    .unwrap();
            }
            2 => {
                engine
                    .sql(&format!(
                        "UPDATE bronze.events SET value = value + 7 WHERE patient = 'p{patient}' AND metric = 'spo2'"
                    ))
                    .await
                    .unwrap();
            }
            3 => {
                engine
                    .sql(&format!(
                        "DELETE FROM bronze.events WHERE patient IS NULL OR (patient = 'p{patient}' AND metric = 'hr')"
                    ))
                    .await
                    .unwrap();
            }
            _ => {}
        }
        if round % 7 == 6 {
            // A changed dimension: a new ward row, a moved patient.
            engine
                .sql(&format!(
                    "INSERT INTO bronze.wards VALUES ('p{}', 'ward{round}'); \
                     UPDATE bronze.wards SET ward = 'moved{round}' WHERE patient = 'p{}'",
                    4 + round / 7,
                    rng.below(4)
                ))
                .await
                .unwrap();
        }
        if round == 9 {
            engine
                .sql("DELETE FROM bronze.wards WHERE patient = 'p2'")
                .await
                .unwrap();
        }
        for (name, _) in VIEWS {
            engine
                .sql(&format!(
                    "REFRESH MATERIALIZED VIEW {name}; REFRESH MATERIALIZED VIEW {name}_full FULL"
                ))
                .await
                .expect(name);
            assert_eq!(
                rows(&engine, name).await,
                rows(&engine, &format!("{name}_full")).await,
                "{name} after round {round}"
            );
        }
        // The quarantine of a view refreshed by regions holds what a full refresh finds.
        let quarantined = |name: &str| {
            format!("(SELECT patient, metric, value, ward FROM {name}_quarantine) AS q")
        };
        assert_eq!(
            rows(&engine, &quarantined("silver.latest_ward")).await,
            rows(&engine, &quarantined("silver.latest_ward_full")).await,
            "quarantine after round {round}"
        );
    }
    // The incremental paths really ran (and the others said why not).
    let modes = engine
        .query(
            "SELECT view, mode, count(*) FROM system.refreshes WHERE trigger = 'manual' AND view NOT LIKE '%_full' \
             GROUP BY view, mode ORDER BY view, mode",
        )
        .await
        .unwrap();
    let summary: Vec<String> = strings(&modes, 0)
        .into_iter()
        .zip(strings(&modes, 1))
        .zip(strings(&modes, 2))
        .map(|((v, m), c)| format!("{v} {m} {c}"))
        .collect();
    // Every view refreshed incrementally every round but the three that changed only
    // `note`, which no view reads (a refresh that held an input back refreshes a second
    // time, so a view may count more than 11).
    let mut expected: Vec<&str> = VIEWS.iter().map(|(name, _)| *name).collect();
    expected.sort_unstable();
    let mut seen: Vec<&str> = summary
        .iter()
        .filter(|line| !line.contains(" none "))
        .map(|line| line.split(' ').next().unwrap())
        .collect();
    seen.dedup();
    assert_eq!(seen, expected, "{summary:?}");
    for line in &summary {
        let mut parts = line.split(' ');
        let (_, mode, count) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        match mode {
            "incremental" => assert!(count.parse::<u32>().unwrap() >= 11, "{summary:?}"),
            "none" => assert!(count.parse::<u32>().unwrap() <= 3, "{summary:?}"),
            _ => panic!("{summary:?}"),
        }
    }
    // The rounds that changed only `note` refreshed nothing, and said why (a view over a
    // view that did nothing has no changed input).
    let unseen = engine
        .query(
            "SELECT count(*) FROM system.refreshes WHERE trigger = 'manual' AND mode = 'none' \
             AND strpos(reason, 'only in columns the view does not read') > 0",
        )
        .await
        .unwrap();
    assert_ne!(strings(&unseen, 0), vec!["0".to_string()], "{summary:?}");
    let none = engine
        .query(
            "SELECT count(*) FROM system.refreshes WHERE trigger = 'manual' AND mode = 'none' \
             AND strpos(reason, 'only in columns the view does not read') = 0 \
             AND NOT (view = 'gold.daily' AND starts_with(reason, 'no input changed'))",
        )
        .await
        .unwrap();
    assert_eq!(strings(&none, 0), vec!["0".to_string()], "{summary:?}");
    // Removals really went through the change feed: rows rewritten by count, partitions
    // recomputed after deletes and updates.
    for (view, said) in [
        ("silver.ward_events", "view row(s) rewritten"),
        ("gold.busy", "bronze.events changed (versions"),
        ("silver.latest", "bronze.events changed (versions"),
    ] {
        let hits = engine
            .query(&format!(
                "SELECT count(*) FROM system.refreshes WHERE view = '{view}' AND mode = 'incremental' \
                 AND strpos(reason, '{said}') > 0"
            ))
            .await
            .unwrap();
        assert_ne!(strings(&hits, 0), vec!["0".to_string()], "{view}: {said}");
    }
    // A changed dimension on the null-supplying side of a LEFT JOIN (and the window views)
    // are recomputed where the change touches them, by key regions.
    for view in [
        "silver.enriched",
        "silver.latest_ward",
        "gold.daily_steps",
        "gold.carried",
    ] {
        let hits = engine
            .query(&format!(
                "SELECT count(*) FROM system.refreshes WHERE view = '{view}' AND mode = 'incremental' \
                 AND strpos(reason, 'recomputed the view where they touch it') > 0"
            ))
            .await
            .unwrap();
        assert_ne!(strings(&hits, 0), vec!["0".to_string()], "{view}: regions");
    }
}

async fn schedule_count(engine: &Engine, view: &str) -> i64 {
    crate::count(
        engine,
        &format!(
            "SELECT count(*) FROM system.refreshes WHERE view = '{view}' AND trigger = 'schedule'"
        ),
    )
    .await
}

#[tokio::test]
async fn scheduler_runs_due_views_upstream_first_once_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&location(&dir)).await.unwrap();
    let t0 = Utc::now();
    // A cron schedule that falls 30 minutes from now.
    let at = t0 + Duration::minutes(30);
    let cron = format!("{} {} * * *", at.minute(), at.hour());
    engine
        .sql(&format!(
            "CREATE TABLE bronze.t (v INT NOT NULL); INSERT INTO bronze.t VALUES (1); \
             CREATE MATERIALIZED VIEW silver.s REFRESH EVERY '10 minutes' AS SELECT v FROM bronze.t; \
             CREATE MATERIALIZED VIEW gold.total REFRESH EVERY '10 minutes' AS SELECT sum(v) AS s FROM silver.s; \
             CREATE MATERIALIZED VIEW gold.nightly REFRESH CRON '{cron}' AS SELECT count(*) AS n FROM bronze.t",
        ))
        .await
        .unwrap();
    let scheduler = engine.scheduler();
    assert!(
        scheduler
            .tick(t0 + Duration::minutes(1))
            .await
            .unwrap()
            .is_empty()
    );

    engine.sql("INSERT INTO bronze.t VALUES (2)").await.unwrap();
    let ran = scheduler.tick(t0 + Duration::minutes(11)).await.unwrap();
    let order: Vec<String> = ran.iter().map(|o| o.view.to_string()).collect();
    assert_eq!(order, vec!["silver.s", "gold.total"], "upstream first");
    assert!(
        ran.iter()
            .all(|o| o.status == medlake_engine::RefreshStatus::Succeeded)
    );
    // The same instant again: nothing is due (no double run).
    assert!(
        scheduler
            .tick(t0 + Duration::minutes(11))
            .await
            .unwrap()
            .is_empty()
    );
    // The cron view: not before its minute, then once.
    assert!(
        scheduler
            .tick(t0 + Duration::minutes(20))
            .await
            .unwrap()
            .is_empty()
    );
    engine.sql("INSERT INTO bronze.t VALUES (3)").await.unwrap();
    let ran = scheduler.tick(t0 + Duration::minutes(31)).await.unwrap();
    let order: Vec<String> = ran.iter().map(|o| o.view.to_string()).collect();
    let position = |v: &str| order.iter().position(|o| o == v).unwrap();
    assert_eq!(order.len(), 3, "{order:?}");
    assert!(position("silver.s") < position("gold.total"), "{order:?}");
    assert!(order.contains(&"gold.nightly".to_string()), "{order:?}");
    assert_eq!(schedule_count(&engine, "silver.s").await, 2);
    assert_eq!(schedule_count(&engine, "gold.nightly").await, 1);
    drop(scheduler);
    drop(engine);

    // A restarted server knows what already ran ...
    let engine = Engine::open(&location(&dir)).await.unwrap();
    let scheduler = engine.scheduler();
    assert!(
        scheduler
            .tick(t0 + Duration::minutes(32))
            .await
            .unwrap()
            .is_empty()
    );
    // ... and after a long outage catches up once per view, not once per missed interval.
    engine.sql("INSERT INTO bronze.t VALUES (4)").await.unwrap();
    let ran = scheduler.tick(t0 + Duration::hours(5)).await.unwrap();
    let order: Vec<String> = ran.iter().map(|o| o.view.to_string()).collect();
    assert_eq!(order, vec!["silver.s", "gold.total"]);
    assert_eq!(schedule_count(&engine, "silver.s").await, 3);
    assert_eq!(schedule_count(&engine, "gold.total").await, 3);
    assert_eq!(crate::count(&engine, "SELECT s FROM gold.total").await, 10);
    // A look that finds nothing to do is not recorded, and not repeated before it is due.
    assert_eq!(
        scheduler
            .tick(t0 + Duration::hours(5) + Duration::minutes(10))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        scheduler
            .tick(t0 + Duration::hours(5) + Duration::minutes(11))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(schedule_count(&engine, "silver.s").await, 3);
}

#[tokio::test]
async fn a_second_refresh_of_a_running_view_is_refused() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.n (v BIGINT NOT NULL); \
             INSERT INTO bronze.n SELECT value FROM generate_series(1, 300000); \
             CREATE MATERIALIZED VIEW gold.heavy AS SELECT v % 1000 AS k, count(*) AS c FROM bronze.n GROUP BY v % 1000",
        )
        .await
        .unwrap();
    let (first, second) = tokio::join!(
        engine.sql("REFRESH MATERIALIZED VIEW gold.heavy FULL"),
        engine.sql("REFRESH MATERIALIZED VIEW gold.heavy FULL"),
    );
    // Whichever got there first ran; the other was refused.
    let err = match (first, second) {
        (Ok(_), Err(err)) | (Err(err), Ok(_)) => err,
        other => panic!("expected one refresh and one refusal, got {other:?}"),
    };
    assert_eq!(err.code(), Code::ObjectInUse);
    assert!(
        err.to_string()
            .contains("a refresh of 'gold.heavy' is already running"),
        "{err}"
    );
    // Only the first committed.
    assert_eq!(
        crate::count(&engine, "SELECT count(*) FROM table_history('gold.heavy')").await,
        2
    );
}

#[tokio::test]
async fn a_commit_on_top_of_a_stale_version_is_refused() {
    use datafusion::datasource::{MemTable, provider_as_source};
    use datafusion::logical_expr::LogicalPlanBuilder;

    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.t (v INT NOT NULL); INSERT INTO bronze.t VALUES (1)")
        .await
        .unwrap();
    let name = medlake_lake::TableName::new("bronze", "t").unwrap();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("v", DataType::Int32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::Int32Array::from(vec![7]))],
    )
    .unwrap();
    let input = || {
        let table = MemTable::try_new(schema.clone(), vec![vec![batch.clone()]]).unwrap();
        LogicalPlanBuilder::scan("rows", provider_as_source(Arc::new(table)), None)
            .unwrap()
            .build()
            .unwrap()
    };
    let state = Arc::new(
        datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_query_planner(medlake_lake::delta_query_planner())
            .build(),
    );
    let on_top_of = |version| medlake_lake::CommitOptions {
        base_version: Some(version),
        ..Default::default()
    };
    let warehouse = engine.warehouse();
    // On top of the latest version: fine.
    warehouse
        .write_with(
            &name,
            input(),
            state.clone(),
            medlake_lake::WriteMode::Append,
            &on_top_of(1),
        )
        .await
        .unwrap();
    // On top of version 1 again, after version 2 was committed: refused, nothing written.
    let err = warehouse
        .write_with(
            &name,
            input(),
            state,
            medlake_lake::WriteMode::Append,
            &on_top_of(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, medlake_lake::Error::Conflict { .. }),
        "{err:?}"
    );
    assert_eq!(
        crate::count(&engine, "SELECT count(*) FROM bronze.t").await,
        2
    );
}

/// Issue 20: `REFRESH EVERY '9223372036854775807 seconds'` panicked the scheduler, and again
/// at every restart since the definition is stored. Now it is refused (22023); and a view an
/// older medlake stored with such a schedule is reported and left unscheduled while the
/// other views keep their schedules.
#[tokio::test]
async fn out_of_range_schedules_are_refused_and_stored_ones_do_not_stop_the_scheduler() {
    use medlake_views::{CreateView, Schedule, Trigger, ViewDefinition};

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&location(&dir)).await.unwrap();
    engine
        .sql(
            "CREATE TABLE bronze.t (v INT NOT NULL); INSERT INTO bronze.t VALUES (1); \
             CREATE MATERIALIZED VIEW silver.ok REFRESH EVERY '10 minutes' AS SELECT v FROM bronze.t",
        )
        .await
        .unwrap();
    for sql in [
        "CREATE MATERIALIZED VIEW silver.huge REFRESH EVERY '9223372036854775807 seconds' AS SELECT 1 AS a",
        "CREATE MATERIALIZED VIEW silver.huge REFRESH EVERY '18446744073709551616 days' AS SELECT 1 AS a",
        "CREATE MATERIALIZED VIEW silver.huge REFRESH EVERY '367 days' AS SELECT 1 AS a",
        "CREATE MATERIALIZED VIEW silver.huge REFRESH CRON '*/4294967295 * * * 9' AS SELECT 1 AS a",
    ] {
        let e = engine.sql(sql).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidParameterValue, "{sql}: {e}");
    }

    // What an older medlake stored: the same definitions, written without today's checks.
    let stored = [
        (
            "huge",
            Schedule::Every {
                seconds: i64::MAX as u64,
            },
        ),
        ("larger", Schedule::Every { seconds: u64::MAX }),
        (
            "badcron",
            Schedule::Cron {
                expression: "*/0 * * * *".into(),
            },
        ),
    ];
    for (name, schedule) in &stored {
        let create = CreateView {
            name: vec![datafusion::sql::sqlparser::ast::Ident::new("silver")].into(),
            or_replace: false,
            if_not_exists: false,
            definition: ViewDefinition {
                query: "SELECT v FROM bronze.t".into(),
                schedule: Some(schedule.clone()),
                expectations: Vec::new(),
                default_schema: "bronze".into(),
                auto_cdc: None,
                fhir_view: None,
                policy: Default::default(),
                cluster_by: Vec::new(),
                freshness: None,
            },
        };
        engine
            .views()
            .create(
                &medlake_engine::TableName::new("silver", *name).unwrap(),
                create,
                Trigger::Create,
            )
            .await
            .unwrap();
    }
    drop(engine);

    // A restart: the stored definitions load, the scheduler runs the valid view and reports
    // the others.
    let engine = Engine::open(&location(&dir)).await.unwrap();
    engine.sql("INSERT INTO bronze.t VALUES (2)").await.unwrap();
    let scheduler = engine.scheduler();
    let t0 = Utc::now();
    let ran = scheduler.tick(t0 + Duration::minutes(11)).await.unwrap();
    let ran: Vec<String> = ran.iter().map(|o| o.view.to_string()).collect();
    assert_eq!(ran, vec!["silver.ok"]);
    let mut reported: Vec<String> = scheduler
        .unschedulable()
        .into_iter()
        .map(|(view, _)| view.to_string())
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        vec!["silver.badcron", "silver.huge", "silver.larger"]
    );
    let schedules = strings(
        &engine
            .query("SELECT schedule FROM system.materialized_views WHERE name = 'huge'")
            .await
            .unwrap(),
        0,
    );
    assert!(schedules[0].contains("not scheduled"), "{schedules:?}");
    // Refreshing by hand still works.
    engine
        .sql("REFRESH MATERIALIZED VIEW silver.huge")
        .await
        .unwrap();
}

/// `medlake apply` with AUTO CDC views: one over a view of the same project (which does not
/// exist until the apply creates it) and a second apply that finds both unchanged; a source
/// that gains a column replaces the view that takes all of its columns.
#[tokio::test]
async fn auto_cdc_views_apply_from_a_project() {
    let (_dir, engine) = scratch().await;
    let project = tempfile::tempdir().unwrap();
    let sql = project.path().join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    std::fs::write(
        sql.join("a_bronze.sql"),
        "CREATE TABLE IF NOT EXISTS bronze.feed (id BIGINT, v VARCHAR, op VARCHAR, seq BIGINT);",
    )
    .unwrap();
    // File names put gold first: the order comes from the lineage.
    std::fs::write(
        sql.join("b_gold.sql"),
        "CREATE MATERIALIZED VIEW gold.latest AS AUTO CDC FROM silver.history KEYS (id)
           SEQUENCE BY __start_at COLUMNS id, v;",
    )
    .unwrap();
    std::fs::write(
        sql.join("c_silver.sql"),
        "CREATE MATERIALIZED VIEW silver.history AS AUTO CDC FROM bronze.feed KEYS (id)
           APPLY AS DELETE WHEN op = 'D' SEQUENCE BY seq COLUMNS * EXCEPT (op) STORED AS SCD TYPE 2;",
    )
    .unwrap();
    let actions = |applied: Vec<medlake_engine::Applied>| {
        applied
            .into_iter()
            .filter(|a| a.object.contains('.') && !a.object.ends_with(".sql"))
            .map(|a| format!("{} {}", a.object, a.action))
            .collect::<Vec<_>>()
    };
    let first = engine.apply_project(project.path()).await.unwrap();
    assert_eq!(
        actions(first),
        ["silver.history created", "gold.latest created"]
    );
    engine
        .sql("INSERT INTO bronze.feed VALUES (1, 'a', 'I', 1), (1, 'b', 'U', 2), (2, 'c', 'I', 1), (2, NULL, 'D', 3)")
        .await
        .unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW gold.latest CASCADE")
        .await
        .unwrap();
    assert_eq!(rows(&engine, "gold.latest").await, ["1|b", "2|c"]);
    let again = engine.apply_project(project.path()).await.unwrap();
    assert_eq!(
        actions(again),
        ["silver.history unchanged", "gold.latest unchanged"]
    );
    engine
        .sql("DROP TABLE bronze.feed; CREATE TABLE bronze.feed (id BIGINT, v VARCHAR, op VARCHAR, seq BIGINT, note VARCHAR)")
        .await
        .unwrap();
    let evolved = engine.apply_project(project.path()).await.unwrap();
    assert_eq!(
        actions(evolved),
        ["silver.history replaced", "gold.latest unchanged"]
    );
}

/// Rows of `bronze.scattered`: `day` jumps around (7919 is prime to 50), as an unordered
/// source delivers them.
fn scattered(from: u64, rows: u64) -> String {
    format!(
        "INSERT INTO bronze.scattered SELECT CAST(((value + {from}) * 7919) % 50 AS INT), \
         CAST((value + {from}) % 1000 AS INT), CAST(value AS DOUBLE) FROM range(0, {rows})"
    )
}

#[tokio::test]
async fn cluster_by_sorts_every_refresh_so_queries_skip_row_groups() {
    let (_dir, engine) = scratch().await;
    engine
        .sql("CREATE TABLE bronze.scattered (day INT, patient INT, v DOUBLE)")
        .await
        .unwrap();
    engine.sql(&scattered(0, 200_000)).await.unwrap();
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.clustered CLUSTER BY (day, patient) AS \
             SELECT day, patient, v FROM bronze.scattered WHERE v >= 0",
        )
        .await
        .unwrap();
    // 200,000 rows in row groups of 64Ki, sorted by day: day 7 lies in the first alone.
    let (matched, total) = row_groups_read(&engine, "gold.clustered", "day = 7").await;
    assert_eq!((matched, total), (1, 4));
    // An incremental refresh writes what the input gained sorted too (unsorted, each of its
    // row groups would span every day).
    engine.sql(&scattered(200_000, 140_000)).await.unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW gold.clustered")
        .await
        .unwrap();
    let incremental = "SELECT count(*) FROM system.refreshes \
                       WHERE view = 'gold.clustered' AND mode = 'incremental'";
    assert_eq!(count(&engine, incremental).await, 1);
    let (matched, total) = row_groups_read(&engine, "gold.clustered", "day = 7").await;
    assert_eq!((matched, total), (2, 7));
    // A full refresh rewrites the whole view in one sorted run.
    engine
        .sql("REFRESH MATERIALIZED VIEW gold.clustered FULL")
        .await
        .unwrap();
    let (matched, total) = row_groups_read(&engine, "gold.clustered", "day = 7").await;
    assert_eq!((matched, total), (1, 6));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM gold.clustered WHERE day = 7").await,
        6_800
    );
    // A grouped view rewrites its touched groups (an overwrite of those rows): sorted too.
    // (REFRESH POLICY INCREMENTAL: the new rows touch days in every file of the unclustered
    // bronze table, so AUTO would rightly recompute the view instead.)
    engine
        .sql(
            "CREATE MATERIALIZED VIEW gold.daily CLUSTER BY (day) REFRESH POLICY INCREMENTAL AS \
             SELECT day, count(*) AS n, sum(v) AS total FROM bronze.scattered GROUP BY day",
        )
        .await
        .unwrap();
    engine.sql(&scattered(340_000, 1_000)).await.unwrap();
    engine
        .sql("REFRESH MATERIALIZED VIEW gold.daily")
        .await
        .unwrap();
    let incremental = "SELECT count(*) FROM system.refreshes \
                       WHERE view = 'gold.daily' AND mode = 'incremental'";
    assert_eq!(count(&engine, incremental).await, 1);
    assert_eq!(
        count(&engine, "SELECT sum(n) FROM gold.daily").await,
        341_000
    );
    // The definition keeps the clause; a column the query does not have is refused.
    let shown = engine
        .query("SELECT definition FROM system.materialized_views WHERE name = 'clustered'")
        .await
        .unwrap();
    let shown = shown[0]
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert!(
        shown.value(0).contains("CLUSTER BY (day, patient)"),
        "{}",
        shown.value(0)
    );
    let refused = engine
        .sql("CREATE MATERIALIZED VIEW gold.bad CLUSTER BY (ward) AS SELECT day FROM bronze.scattered")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::UndefinedColumn, "{refused}");
}

/// A server killed between a view's commit and its `system.refreshes` row (issue 29's chaos
/// finding): the next scheduler leader records the refresh from the view's commit, once.
#[tokio::test]
async fn a_refresh_whose_history_row_was_lost_is_recorded_from_its_commit() {
    let (_dir, engine) = scratch().await;
    engine
        .sql(
            "CREATE TABLE bronze.t (v INT NOT NULL); INSERT INTO bronze.t VALUES (1), (2); \
             CREATE MATERIALIZED VIEW silver.s AS SELECT v FROM bronze.t; \
             INSERT INTO bronze.t VALUES (3); \
             REFRESH MATERIALIZED VIEW silver.s",
        )
        .await
        .unwrap();
    let history = "SELECT count(*) FROM system.refreshes WHERE view = 'silver.s'";
    assert_eq!(count(&engine, history).await, 2);
    let views = engine.views();
    assert!(
        views.recover_history().await.unwrap().is_empty(),
        "nothing lost"
    );
    let last = views
        .view(&medlake_lake::TableName::new("silver", "s").unwrap())
        .await
        .unwrap()
        .unwrap()
        .last;
    assert_eq!(last.trigger, "manual");
    // The row of the last refresh never made it.
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_default_features()
        .with_query_planner(medlake_lake::delta_query_planner())
        .build();
    let session: Arc<dyn datafusion::catalog::Session> = Arc::new(state);
    let hide: medlake_lake::Hide = Arc::new(|s: &str| s.to_string());
    engine
        .warehouse()
        .delete_rows(
            &medlake_lake::TableName::new("system", "refreshes").unwrap(),
            Some(
                datafusion::prelude::col("refresh_id")
                    .eq(datafusion::prelude::lit(last.id.clone())),
            ),
            session,
            hide,
        )
        .await
        .unwrap();
    assert_eq!(count(&engine, history).await, 1);
    // A refresh that committed, with its row, after the lost one (the restarted server's own,
    // before it took the scheduler lease) does not hide it.
    engine
        .sql("INSERT INTO bronze.t VALUES (4); REFRESH MATERIALIZED VIEW silver.s")
        .await
        .unwrap();
    assert_eq!(count(&engine, history).await, 2);
    let recovered = views.recover_history().await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(count(&engine, history).await, 3);
    assert!(views.recover_history().await.unwrap().is_empty(), "once");
    let batches = engine
        .query(&format!(
            "SELECT trigger, mode, status, input_versions, table_version, reason \
             FROM system.refreshes WHERE refresh_id = '{}'",
            last.id
        ))
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("| manual "), "{text}");
    assert!(text.contains("succeeded"), "{text}");
    assert!(text.contains("bronze.t"), "{text}");
    assert!(text.contains("recorded after a restart"), "{text}");
}

/// A refresh with expectations on a cluster: the executors check the rows while they write
/// them (DROP ROW and counting rules, QUARANTINE rows into the quarantine table's files) and
/// this server commits the quarantine, then the view; rows, quarantine and counts are those of
/// the same view refreshed on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expectations_hold_when_the_executors_write_a_refresh() {
    let functions = medlake_cluster::Functions::new(medlake_engine::cluster_functions());
    let members = medlake_cluster::testing::LocalCluster::start(2, functions.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let clustered = Engine::builder(dir.path().join("a").to_str().unwrap())
        .cluster(members.client(functions))
        .open()
        .await
        .unwrap();
    let alone = Engine::open(dir.path().join("b").to_str().unwrap())
        .await
        .unwrap();
    let rows = |from: u32, to: u32| {
        format!(
            "INSERT INTO bronze.r SELECT v, CAST(v % 300 AS DOUBLE), \
             CASE WHEN v % 7 = 0 THEN NULL ELSE 'icu' END FROM generate_series({from}, {to}) AS s(v)"
        )
    };
    let steps = [
        "CREATE TABLE bronze.r (id BIGINT, hr DOUBLE, ward VARCHAR)".to_string(),
        rows(1, 5000),
        "CREATE MATERIALIZED VIEW silver.r \
           CONSTRAINT plausible EXPECT (hr BETWEEN 20 AND 250) ON VIOLATION DROP ROW \
           CONSTRAINT has_ward EXPECT (ward IS NOT NULL) ON VIOLATION QUARANTINE \
           CONSTRAINT even EXPECT (id % 2 = 0) \
         AS SELECT id, hr, ward FROM bronze.r"
            .to_string(),
        rows(5001, 9000),
        "REFRESH MATERIALIZED VIEW silver.r".to_string(),
        rows(9001, 9500),
        "REFRESH MATERIALIZED VIEW silver.r FULL".to_string(),
    ];
    let checks = [
        "SELECT count(*), sum(id), sum(hr) FROM silver.r",
        "SELECT count(*), sum(id), min(_medlake_rules), max(_medlake_rules) FROM silver.r_quarantine",
        "SELECT count(DISTINCT _medlake_refresh_id) FROM silver.r_quarantine",
        "SELECT r.mode, e.expectation, e.on_violation, e.rows_checked, e.violations \
         FROM system.expectations e JOIN system.refreshes r ON r.refresh_id = e.refresh_id \
         WHERE e.view = 'silver.r' ORDER BY r.started, e.expectation",
    ];
    let table = |batches: Vec<RecordBatch>| {
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    };
    for (i, step) in steps.iter().enumerate() {
        clustered.sql(step).await.unwrap();
        alone.sql(step).await.unwrap();
        // From the view's creation on.
        for check in checks.iter().filter(|_| i >= 2) {
            let there = table(clustered.query(check).await.unwrap());
            let here = table(alone.query(check).await.unwrap());
            assert_eq!(there, here, "after {step}: {check}");
        }
    }
    // The last refresh replaced the quarantine: its rows are the full refresh's.
    assert_eq!(count(&clustered, checks[2]).await, 1);
    assert_eq!(
        count(&clustered, "SELECT count(*) FROM silver.r_quarantine").await,
        9500 / 7
    );
}

/// An incremental refresh on a cluster: the rows the inputs' new commits added are read by
/// the executors (a Delta scan limited to the added files, also across a compaction that
/// removed some of them since; the change feed after a DELETE and an UPDATE), and the views
/// hold the rows of the same views refreshed on one server, each refresh incremental in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_refreshes_run_on_the_cluster() {
    let functions = medlake_cluster::Functions::new(medlake_engine::cluster_functions());
    let members = medlake_cluster::testing::LocalCluster::start(2, functions.clone()).await;
    let client = members.client(functions);
    let dir = tempfile::tempdir().unwrap();
    let clustered = Engine::builder(dir.path().join("a").to_str().unwrap())
        .cluster(client.clone())
        .open()
        .await
        .unwrap();
    let alone = Engine::open(dir.path().join("b").to_str().unwrap())
        .await
        .unwrap();
    let rows = |from: u32, to: u32| {
        format!(
            "INSERT INTO bronze.r SELECT v, CAST(v % 300 AS DOUBLE), \
             CASE WHEN v % 3 = 0 THEN 'icu' ELSE 'ward' END FROM generate_series({from}, {to}) AS s(v)"
        )
    };
    for step in [
        "CREATE TABLE bronze.r (id BIGINT, hr DOUBLE, ward VARCHAR)".to_string(),
        rows(1, 4000),
        "CREATE MATERIALIZED VIEW silver.r AS SELECT id, hr * 2 AS hr2, ward FROM bronze.r \
         WHERE hr > 10"
            .to_string(),
        "CREATE MATERIALIZED VIEW gold.w AS SELECT ward, count(*) AS n, sum(hr) AS s, \
         max(hr) AS peak FROM bronze.r GROUP BY ward"
            .to_string(),
    ] {
        clustered.sql(&step).await.unwrap();
        alone.sql(&step).await.unwrap();
    }
    let checks = [
        "SELECT count(*), sum(id), sum(hr2), count(DISTINCT ward) FROM silver.r",
        "SELECT ward, n, s, peak FROM gold.w ORDER BY ward",
    ];
    let table = |batches: Vec<RecordBatch>| {
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    };
    // Appends; appends a compaction removes before the refresh reads them; a DELETE and an
    // UPDATE (read from the change feed, on the executors too).
    let rounds: [&[String]; 3] = [
        &[rows(4001, 6000), rows(6001, 6500)],
        &[
            rows(6501, 7000),
            rows(7001, 9000),
            "OPTIMIZE bronze.r".to_string(),
        ],
        &[
            "DELETE FROM bronze.r WHERE id % 50 = 0".to_string(),
            "UPDATE bronze.r SET hr = hr + 0.5, ward = 'hdu' WHERE id < 100".to_string(),
        ],
    ];
    for (round, steps) in rounds.iter().enumerate() {
        for step in steps.iter() {
            clustered.sql(step).await.unwrap();
            alone.sql(step).await.unwrap();
        }
        for view in ["silver.r", "gold.w"] {
            let before = client.jobs_submitted();
            let refresh = format!("REFRESH MATERIALIZED VIEW {view}");
            clustered.sql(&refresh).await.unwrap();
            alone.sql(&refresh).await.unwrap();
            assert!(
                client.jobs_submitted() > before,
                "round {round}: the incremental refresh of {view} did not run on the cluster"
            );
            let mode = format!(
                "SELECT mode, reason FROM system.refreshes WHERE view = '{view}' \
                 ORDER BY started DESC LIMIT 1"
            );
            let there = table(clustered.query(&mode).await.unwrap());
            assert!(
                there.contains("incremental"),
                "round {round}, {view}: {there}"
            );
            // (The same mode; the reasons differ for gold.w: alone it merges appends into its
            // aggregate state, on the cluster it recomputes the touched groups there.)
            let here = table(alone.query(&mode).await.unwrap());
            assert!(
                here.contains("incremental"),
                "round {round}, {view}: {here}"
            );
            if view == "gold.w" && round < 2 {
                assert!(here.contains("aggregate state"), "{here}");
                assert!(
                    there.contains("recomputed the GROUP BY partitions"),
                    "{there}"
                );
            } else if view == "silver.r" {
                assert_eq!(there, here);
            }
        }
        for check in checks {
            let there = table(clustered.query(check).await.unwrap());
            let here = table(alone.query(check).await.unwrap());
            assert_eq!(there, here, "round {round}: {check}");
        }
    }
    // Of 9000 rows, 330 had hr <= 10 (id 10 no longer: 10.5 after the UPDATE) and 150
    // others were deleted.
    assert_eq!(
        count(&clustered, "SELECT count(*) FROM silver.r").await,
        8521
    );
}
