-- Silver: every device reading, from the four telemetry channels (HTTP push, the device cloud,
-- batch files, HL7 v2 over MLLP), validated and enriched.
--
-- * Units standardised: degF -> degC ((F - 32) * 5/9, 0.1 degC), mmol/L -> mg/dL (x 18.016,
--   glucose), kPa -> mmHg (x 7.50062, blood pressure). raw_value / raw_unit keep what the
--   device sent.
-- * Deduplicated by device, metric and time: a reading a gateway or device sent twice (a retry,
--   a resend, the same file uploaded twice) is kept once (SELECT DISTINCT; two different
--   values for the same device, metric and instant are a conflict, both are kept).
-- * Late and out-of-order readings (stored on a device during a dropout, forwarded minutes
--   later) are placed by taken_at, the time of measurement, never by arrival: every
--   downstream view buckets by taken_at, so an hour that receives a late reading is
--   recomputed at the next refresh.
-- * Enriched as of the reading's time: the patient the device was attached to then
--   (ehr.device_assignments: valid_from <= taken_at < valid_to) and that patient's ward and
--   bed then (ehr.encounters: admitted_at <= taken_at < discharged_at).
-- * hour: the hospital's local hour of the measurement (local_hour(): the server's
--   [clinical] time_zone, UTC by default), as the instant it began.
-- * Validated: physiological ranges per metric (after conversion), a value, a standard unit,
--   a device attached to a patient at that time, and the same patient as the device says.
--   Failing readings go to silver.readings_quarantine with the rules they broke.
--
-- Incremental: the query is a SELECT DISTINCT over unions and joins, so a refresh after new
-- readings appends only the new distinct rows; to leave out copies of rows it holds, it reads
-- its own rows only between the new readings' first and last taken_at. Clustered by taken_at
-- (every write sorted by it), so that read, and every view's recompute of a day or an hour,
-- skips the files and row groups of other times.
CREATE MATERIALIZED VIEW silver.readings REFRESH EVERY '1 minute' CLUSTER BY (taken_at)
    CONSTRAINT has_value EXPECT (value IS NOT NULL) ON VIOLATION QUARANTINE
    CONSTRAINT known_metric EXPECT (metric IN ('heart_rate', 'spo2', 'respiration_rate',
        'temperature', 'systolic_bp', 'diastolic_bp', 'glucose')) ON VIOLATION QUARANTINE
    CONSTRAINT standard_unit EXPECT (
           (metric = 'heart_rate' AND unit = 'bpm')
        OR (metric = 'spo2' AND unit = '%')
        OR (metric = 'respiration_rate' AND unit = '/min')
        OR (metric = 'temperature' AND unit = 'degC')
        OR (metric IN ('systolic_bp', 'diastolic_bp') AND unit = 'mmHg')
        OR (metric = 'glucose' AND unit = 'mg/dL')
        OR metric NOT IN ('heart_rate', 'spo2', 'respiration_rate', 'temperature',
                          'systolic_bp', 'diastolic_bp', 'glucose')) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_heart_rate
        EXPECT (metric <> 'heart_rate' OR value BETWEEN 20 AND 250) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_spo2
        EXPECT (metric <> 'spo2' OR value BETWEEN 50 AND 100) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_respiration_rate
        EXPECT (metric <> 'respiration_rate' OR value BETWEEN 4 AND 60) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_temperature
        EXPECT (metric <> 'temperature' OR value BETWEEN 30 AND 43) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_systolic_bp
        EXPECT (metric <> 'systolic_bp' OR value BETWEEN 50 AND 250) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_diastolic_bp
        EXPECT (metric <> 'diastolic_bp' OR value BETWEEN 25 AND 150) ON VIOLATION QUARANTINE
    CONSTRAINT plausible_glucose
        EXPECT (metric <> 'glucose' OR value BETWEEN 20 AND 600) ON VIOLATION QUARANTINE
    CONSTRAINT device_assigned EXPECT (assigned_patient_id IS NOT NULL) ON VIOLATION QUARANTINE
    CONSTRAINT patient_matches_assignment
        EXPECT (reported_patient_id IS NULL OR reported_patient_id = assigned_patient_id)
        ON VIOLATION QUARANTINE
AS
SELECT DISTINCT
    r.device_id,
    coalesce(a.patient_id, r.patient_id) AS patient_id,
    r.metric,
    CASE
        WHEN r.unit = 'degF' THEN round((r.value - 32) * 5 / 9, 1)
        WHEN r.unit = 'mmol/L' THEN round(r.value * 18.016, 1)
        WHEN r.unit = 'kPa' THEN round(r.value * 7.50062, 0)
        ELSE r.value
    END AS value,
    -- (CAST: the expectations compare this column with text literals.)
    CAST(CASE r.unit
        WHEN 'degF' THEN 'degC'
        WHEN 'mmol/L' THEN 'mg/dL'
        WHEN 'kPa' THEN 'mmHg'
        ELSE r.unit
    END AS VARCHAR) AS unit,
    r.taken_at,
    local_hour(r.taken_at) AS hour,
    r.value AS raw_value,
    r.unit AS raw_unit,
    r.source,
    r.patient_id AS reported_patient_id,
    a.patient_id AS assigned_patient_id,
    e.encounter_id,
    e.ward,
    e.bed
FROM (
    SELECT device_id, patient_id, metric, value, unit, taken_at, 'push' AS source
    FROM bronze.readings_push
    UNION ALL
    SELECT device_id, patient_id, metric, value, unit, taken_at, 'rest' AS source
    FROM bronze.readings_cloud
    UNION ALL
    SELECT device_id, patient_id, metric, value, unit, taken_at, 'file' AS source
    FROM bronze.readings_files
    UNION ALL
    SELECT device_id, patient_id, metric, value, unit, taken_at, 'hl7' AS source
    FROM silver.hl7_readings
) AS r
LEFT JOIN silver.device_assignments AS a
    ON a.device_id = r.device_id
   AND r.taken_at >= a.valid_from
   AND (a.valid_to IS NULL OR r.taken_at < a.valid_to)
LEFT JOIN silver.encounters AS e
    ON e.patient_id = a.patient_id
   AND r.taken_at >= e.admitted_at
   AND (e.discharged_at IS NULL OR r.taken_at < e.discharged_at);

-- Outliers per patient and metric: readings more than 3 standard deviations from the
-- patient's own mean for that metric (with at least 30 readings). They are flagged here, not
-- removed from silver.readings: a patient who deteriorates is an outlier against their own
-- history, and an early-warning score must see it.
CREATE MATERIALIZED VIEW silver.patient_metric_stats REFRESH EVERY '5 minutes' AS
SELECT patient_id, metric, count(*) AS readings, avg(value) AS mean, stddev_samp(value) AS sd
FROM silver.readings
GROUP BY patient_id, metric;

CREATE MATERIALIZED VIEW silver.reading_outliers REFRESH EVERY '5 minutes' AS
SELECT r.device_id, r.patient_id, r.metric, r.value, r.unit, r.taken_at, r.ward,
       round((r.value - s.mean) / s.sd, 2) AS z_score
FROM silver.readings AS r
JOIN silver.patient_metric_stats AS s ON s.patient_id = r.patient_id AND s.metric = r.metric
WHERE s.readings >= 30 AND s.sd > 0 AND abs(r.value - s.mean) > 3 * s.sd;
