-- DuckDB recomputing gold from bronze's Parquet files (the peer's full refresh).
CREATE OR REPLACE TABLE patient_daily AS
SELECT patient_id, metric, CAST(taken_at AS DATE) AS day, count(*) AS readings, avg(value) AS average,
       min(value) AS minimum, max(value) AS maximum
FROM read_parquet('{files}')
WHERE metric <> 'resp_rate' AND value BETWEEN 0 AND 190
GROUP BY patient_id, metric, CAST(taken_at AS DATE);
