-- medlake demo: device readings from bronze to gold as materialized views, then back in time.
-- Run:  cargo run -p medlake -- sql --warehouse target/demo-warehouse -f examples/demo.sql
-- It starts over each time it runs.

DROP MATERIALIZED VIEW IF EXISTS gold.patient_daily;
DROP MATERIALIZED VIEW IF EXISTS gold.device_activity;
DROP MATERIALIZED VIEW IF EXISTS silver.readings;
DROP TABLE IF EXISTS silver.readings_quarantine;
DROP TABLE IF EXISTS bronze.readings;

-- Bronze: readings as the devices sent them (version 0 is the empty table).
CREATE TABLE bronze.readings (
    device_id  VARCHAR   NOT NULL,
    patient_id INT       NOT NULL,
    metric     VARCHAR   NOT NULL,
    value      DOUBLE,
    unit       VARCHAR,
    taken_at   TIMESTAMP NOT NULL
);

-- First batch (version 1): a temperature in Fahrenheit and a sensor glitch.
INSERT INTO bronze.readings VALUES
    ('monitor-7', 1001, 'heart_rate',  72,    'bpm',   TIMESTAMP '2026-11-23 08:00:00'),
    ('monitor-7', 1001, 'spo2',        97,    '%',     TIMESTAMP '2026-11-23 08:00:00'),
    ('thermo-2',  1001, 'temperature', 99.5,  'degF',  TIMESTAMP '2026-11-23 08:05:00'),
    ('monitor-9', 1002, 'heart_rate',  310,   'bpm',   TIMESTAMP '2026-11-23 08:00:00'),
    ('monitor-9', 1002, 'heart_rate',  88,    'bpm',   TIMESTAMP '2026-11-23 08:01:00');

-- A reading without a patient is refused as a whole; bronze stays at version 1.
-- (Uncomment to see the error: write to 'bronze.readings' refused ... NULL in NOT NULL column 'patient_id')
-- INSERT INTO bronze.readings VALUES ('monitor-7', NULL, 'spo2', 96, '%', TIMESTAMP '2026-11-23 10:00:00');

-- Silver: deduplicated, units standardised (°F -> °C). Expectations: an impossible heart rate
-- goes to silver.readings_quarantine with the rule it broke; a missing value is dropped.
CREATE MATERIALIZED VIEW silver.readings
    CONSTRAINT plausible_heart_rate EXPECT (metric <> 'heart_rate' OR value BETWEEN 20 AND 250)
        ON VIOLATION QUARANTINE
    CONSTRAINT measured EXPECT (value IS NOT NULL) ON VIOLATION DROP ROW
AS SELECT DISTINCT
    device_id,
    patient_id,
    metric,
    CASE WHEN unit = 'degF' THEN round((value - 32) * 5 / 9, 1) ELSE value END AS value,
    CASE WHEN unit = 'degF' THEN 'degC' ELSE unit END AS unit,
    taken_at
FROM bronze.readings;

-- Gold: one row per patient, day and metric, refreshed every 5 minutes by `medlake serve`.
CREATE MATERIALIZED VIEW gold.patient_daily REFRESH EVERY '5 minutes' AS
SELECT patient_id,
       CAST(taken_at AS DATE) AS day,
       metric,
       count(*)              AS readings,
       round(avg(value), 1)  AS average,
       min(value)            AS minimum,
       max(value)            AS maximum
FROM silver.readings
GROUP BY patient_id, CAST(taken_at AS DATE), metric;

-- Gold: what each device sent, straight from bronze.
CREATE MATERIALIZED VIEW gold.device_activity AS
SELECT device_id, count(*) AS readings, max(taken_at) AS last_seen
FROM bronze.readings GROUP BY device_id;

-- Second batch (version 2): a gateway retry sends one reading twice.
INSERT INTO bronze.readings VALUES
    ('monitor-7', 1001, 'heart_rate',  76,    'bpm',   TIMESTAMP '2026-11-23 09:00:00'),
    ('monitor-7', 1001, 'heart_rate',  76,    'bpm',   TIMESTAMP '2026-11-23 09:00:00'),
    ('thermo-2',  1002, 'temperature', 38.4,  'degC',  TIMESTAMP '2026-11-23 09:02:00'),
    ('monitor-9', 1002, 'heart_rate',  92,    'bpm',   TIMESTAMP '2026-11-23 09:01:00');

-- Refresh gold and, first, what it reads. Each refresh says whether it was incremental, and why.
REFRESH MATERIALIZED VIEW gold.patient_daily CASCADE;
REFRESH MATERIALIZED VIEW gold.device_activity;

SELECT * FROM gold.patient_daily ORDER BY patient_id, metric;
SELECT patient_id, value, _medlake_rules FROM silver.readings_quarantine;
SELECT view, mode, reason FROM system.refreshes WHERE trigger <> 'create' ORDER BY finished;
SELECT schema, name, schedule, status, rows, staleness FROM system.materialized_views ORDER BY schema, name;

-- Time travel: bronze as it was after the first batch, gold before the refresh, and history.
SELECT count(*) AS readings_after_first_batch FROM bronze.readings VERSION AS OF 1;
SELECT count(*) AS readings_now FROM bronze.readings;
SELECT count(*) AS gold_rows_before_refresh FROM gold.patient_daily VERSION AS OF 0;
SELECT version, timestamp, operation, rows_written FROM table_history('bronze.readings') ORDER BY version;
