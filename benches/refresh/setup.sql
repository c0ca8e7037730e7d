-- The refresh benchmark's warehouse: {rows} bronze vital signs over 30 days for 20,000
-- patients, and the same two views twice: one refreshed as medlake chooses (incrementally),
-- one always with FULL.
CREATE TABLE bronze.vitals (patient_id BIGINT NOT NULL, metric VARCHAR NOT NULL, value DOUBLE, taken_at TIMESTAMP NOT NULL);
INSERT INTO bronze.vitals
SELECT value % 20000,
       CASE value % 4 WHEN 0 THEN 'heart_rate' WHEN 1 THEN 'spo2' WHEN 2 THEN 'resp_rate' ELSE 'temperature' END,
       CAST(value % 997 AS DOUBLE) / 5.0,
       to_timestamp_seconds(1790812800 + value % 2592000)  -- 2026-10-01 plus up to 30 days
FROM generate_series(1, {rows});
