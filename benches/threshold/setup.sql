-- The threshold benchmark's warehouse: {rows} vital signs of 20,000 patients over 30 days,
-- clustered by patient (so recomputing a set of patients reads only their files' row
-- groups), and one grouped view (80,000 groups) twice: refreshed incrementally whatever the change
-- (REFRESH POLICY INCREMENTAL) and always recomputed (REFRESH POLICY FULL).
CREATE TABLE bronze.vitals (patient_id BIGINT NOT NULL, metric VARCHAR NOT NULL, value DOUBLE, taken_at TIMESTAMP NOT NULL)
CLUSTER BY (patient_id);
INSERT INTO bronze.vitals
SELECT value % 20000,
       CASE value % 4 WHEN 0 THEN 'heart_rate' WHEN 1 THEN 'spo2' WHEN 2 THEN 'resp_rate' ELSE 'temperature' END,
       CAST(value % 997 AS DOUBLE) / 5.0,
       to_timestamp_seconds(1790812800 + value % 2592000)  -- 2026-10-01 plus up to 30 days
FROM generate_series(1, {rows});
CREATE MATERIALIZED VIEW gold.patient_stats REFRESH POLICY INCREMENTAL AS
SELECT patient_id, metric, count(*) AS readings, min(value) AS minimum, max(value) AS maximum
FROM bronze.vitals GROUP BY patient_id, metric;
CREATE MATERIALIZED VIEW gold.patient_stats_full REFRESH POLICY FULL AS
SELECT patient_id, metric, count(*) AS readings, min(value) AS minimum, max(value) AS maximum
FROM bronze.vitals GROUP BY patient_id, metric;
