-- One round's new readings: {rows} rows from 200 patients on one day (a 1% append touches
-- few of gold's groups, as a day of device data does).
INSERT INTO bronze.vitals
SELECT value % 200,
       CASE value % 4 WHEN 0 THEN 'heart_rate' WHEN 1 THEN 'spo2' WHEN 2 THEN 'resp_rate' ELSE 'temperature' END,
       CAST(value % 997 AS DOUBLE) / 5.0,
       to_timestamp_seconds(1793318400 + value % 86400)  -- during 2026-10-30
FROM generate_series(1, {rows});
