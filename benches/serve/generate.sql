-- The rows both sides serve, generated once by DuckDB (written to Parquet for medlake and to
-- CSV for PostgreSQL's COPY): {rows} readings of 5,000 devices (two per patient) at 1 Hz from
-- 2026-11-23 00:00:00, with sub-second times, five metrics and a NULL value now and then.
SELECT i AS reading_id,
       'dev-' || lpad(CAST(i % 5000 AS VARCHAR), 4, '0') AS device_id,
       CAST(i % 5000 // 2 AS INTEGER) AS patient_id,
       ['heart_rate', 'spo2', 'respiration_rate', 'temperature', 'systolic_bp'][i % 5 + 1] AS metric,
       CASE WHEN i % 101 = 0 THEN NULL ELSE 30 + CAST(i * 7919 % 15000 AS DOUBLE) / 100 END AS value,
       TIMESTAMP '2026-11-23 00:00:00' + to_microseconds(CAST(i // 5000 * 1000000 + i % 5000 * 173 AS BIGINT)) AS taken_at
FROM range({rows}) AS r(i)
