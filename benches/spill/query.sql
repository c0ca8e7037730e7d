-- The view's query, the same text for medlake (source: bronze.vitals) and DuckDB (source:
-- bronze's Parquet files).
SELECT patient_id, metric, date_trunc('hour', taken_at) AS hour, count(*) AS readings,
       avg(value) AS average, min(value) AS minimum, max(value) AS maximum
FROM {source}
GROUP BY patient_id, metric, date_trunc('hour', taken_at)
