-- Rows {first}..{last}: {patients} patients (numbered from {patient_offset}), a reading of one
-- of four metrics about every 43 minutes of each patient's 30 days, scattered in time (the
-- input is not ordered by the grouping keys). The 2x step appends as many rows for as many new
-- patients, so rows and groups both double.
INSERT INTO bronze.vitals
SELECT {patient_offset} + value % {patients},
       CASE value % 4 WHEN 0 THEN 'heart_rate' WHEN 1 THEN 'spo2' WHEN 2 THEN 'resp_rate' ELSE 'temperature' END,
       CAST(value % 997 AS DOUBLE) / 5.0,
       to_timestamp_seconds(1790812800 + value * 7919 % 2592000)  -- 2026-10-01 plus up to 30 days
FROM generate_series({first}, {last});
