//! Bounded memory: with a memory limit far below what a query's groups take, aggregations
//! spill to disk and still give the right answer, in queries and in refreshes.

use arrow::util::pretty::pretty_format_batches;
use medlake_engine::Engine;
use medlake_engine::runtime::RuntimeSettings;

use super::{count, location};

const ROWS: i64 = 600_000;
const GROUPS: i64 = 240_000;

async fn bounded(dir: &tempfile::TempDir) -> Engine {
    let spill = dir.path().join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let settings = RuntimeSettings {
        memory_limit: Some(24 << 20),
        spill_dir: Some(spill),
    };
    Engine::open_with(&location(dir), settings).await.unwrap()
}

/// The sum of an EXPLAIN ANALYZE's `spill_count=` metrics.
fn spills(plan: &str) -> u64 {
    plan.split("spill_count=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test]
async fn a_grouped_query_and_a_refresh_spill_under_a_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = bounded(&dir).await;
    engine
        .sql(&format!(
            "CREATE TABLE bronze.big AS SELECT value AS id, 'metric-' || CAST(value % 8 AS VARCHAR) AS metric, \
             CAST(value AS DOUBLE) / 3 AS reading FROM generate_series(1, {ROWS})"
        ))
        .await
        .unwrap();
    let query = format!(
        "SELECT id % {GROUPS} AS g, metric, count(*) AS n, avg(reading) AS average FROM bronze.big GROUP BY 1, 2"
    );

    let analyzed = engine
        .query(&format!("EXPLAIN ANALYZE {query}"))
        .await
        .unwrap();
    let plan = pretty_format_batches(&analyzed).unwrap().to_string();
    assert!(
        spills(&plan) > 0,
        "the aggregation should have spilled:\n{plan}"
    );

    // A view over the same query refreshes under the same limit, and its rows are right.
    engine
        .sql(&format!("CREATE MATERIALIZED VIEW gold.g AS {query}"))
        .await
        .unwrap();
    assert_eq!(count(&engine, "SELECT count(*) FROM gold.g").await, GROUPS);
    assert_eq!(
        count(&engine, "SELECT CAST(sum(n) AS BIGINT) FROM gold.g").await,
        ROWS
    );
    // Group g > 0 holds the ids g, g + GROUPS, ...: no group was lost or split across spill
    // files if every average is the mean of its ids, divided by 3.
    let wrong = count(
        &engine,
        &format!(
            "SELECT count(*) FROM gold.g WHERE g > 0 AND abs(average - (g + {GROUPS}.0 * (n - 1) / 2) / 3) > 1e-6"
        ),
    )
    .await;
    assert_eq!(wrong, 0);
}
