-- Gold: the National Early Warning Score 2 (Royal College of Physicians, 2017) per patient per
-- hour, with its clinical risk band.
--
-- Observations: validated device readings (silver.readings: respiration rate, SpO2, systolic
-- BP, pulse, temperature) and nursing observations (silver.nursing_observations: the same
-- vitals plus consciousness on the ACVPU scale and air or supplemental oxygen, which devices do
-- not report). Statistical outliers are not removed (see silver.reading_outliers).
--
-- Hours are the hospital's (local_hour(): the server's [clinical] time_zone, UTC by default),
-- given as the instant each local hour began.
--
-- Hourly aggregation: for each parameter, the latest observation at or before the end of the
-- hour — the hour's own latest if there is one, otherwise carried forward from earlier hours,
-- at most 4 hours back for the measured vitals and 12 hours back for consciousness and
-- oxygen (charted by nurses; 12-hourly is the RCP's minimum observation frequency). A row
-- exists for every hour in which the patient had any observation. The score is given only
-- when all seven parameters are known (complete = true); otherwise news2 and risk are NULL
-- and missing names what is absent.
--
-- Chart:
--   respiration rate  <=8: 3 | 9-11: 1 | 12-20: 0 | 21-24: 2 | >=25: 3
--   SpO2 scale 1      <=91: 3 | 92-93: 2 | 94-95: 1 | >=96: 0
--   SpO2 scale 2      <=83: 3 | 84-85: 2 | 86-87: 1 | 88-92: 0 | >=93 on air: 0
--                     | 93-94 on oxygen: 1 | 95-96 on oxygen: 2 | >=97 on oxygen: 3
--   air or oxygen     air: 0 | oxygen: 2
--   systolic BP       <=90: 3 | 91-100: 2 | 101-110: 1 | 111-219: 0 | >=220: 3
--   pulse             <=40: 3 | 41-50: 1 | 51-90: 0 | 91-110: 1 | 111-130: 2 | >=131: 3
--   consciousness     alert: 0 | new confusion, voice, pain, unresponsive: 3
--   temperature       <=35.0: 3 | 35.1-36.0: 1 | 36.1-38.0: 0 | 38.1-39.0: 1 | >=39.1: 2
-- Risk: 0-4 low, unless a single parameter scores 3 (low-medium); 5-6 medium; 7 or more high.
-- Values between the chart's whole numbers (a converted temperature, say) fall to the band
-- whose upper bound they do not exceed: 35.05 degC scores as 35.1-36.0.
--
-- SpO2 scale 2 (spo2_scale = 2) is used for a patient with a clinician's 88-92 % target in
-- force at the end of the hour (silver.spo2_targets: flagged_at before the hour's end,
-- ended_at NULL or not before it); every other patient is scored on scale 1, as the RCP
-- prescribes. On scale 2 a saturation of 93 % or more scores by air or oxygen; when that is
-- not known (no nursing chart in the last 12 hours) spo2_score is NULL, like air_or_oxygen's
-- own score, and the row is incomplete (missing names air_or_oxygen). Saturations of 92 % or
-- less score the same on air or oxygen, so spo2_score is given without it.
CREATE MATERIALIZED VIEW gold.news2_hourly REFRESH EVERY '5 minutes' AS
WITH observations AS (
    SELECT patient_id, metric AS parameter, value, taken_at AS observed_at
    FROM silver.readings
    WHERE metric IN ('respiration_rate', 'spo2', 'systolic_bp', 'heart_rate', 'temperature')
    UNION ALL
    SELECT patient_id, 'respiration_rate', respiration_rate, observed_at
    FROM silver.nursing_observations WHERE respiration_rate IS NOT NULL
    UNION ALL
    SELECT patient_id, 'spo2', spo2, observed_at
    FROM silver.nursing_observations WHERE spo2 IS NOT NULL
    UNION ALL
    SELECT patient_id, 'systolic_bp', systolic_bp, observed_at
    FROM silver.nursing_observations WHERE systolic_bp IS NOT NULL
    UNION ALL
    SELECT patient_id, 'heart_rate', heart_rate, observed_at
    FROM silver.nursing_observations WHERE heart_rate IS NOT NULL
    UNION ALL
    SELECT patient_id, 'temperature', temperature, observed_at
    FROM silver.nursing_observations WHERE temperature IS NOT NULL
    UNION ALL
    SELECT patient_id, 'air_or_oxygen', CASE WHEN on_oxygen THEN 1.0 ELSE 0.0 END, observed_at
    FROM silver.nursing_observations WHERE on_oxygen IS NOT NULL
    UNION ALL
    SELECT patient_id, 'consciousness', CASE WHEN consciousness = 'A' THEN 0.0 ELSE 1.0 END,
           observed_at
    FROM silver.nursing_observations WHERE consciousness IS NOT NULL
),
-- Two observations of a parameter at the same instant (a device and a nurse, or a device that
-- sent a reading twice with different values) resolve to the larger value: the score never
-- depends on the order in which rows happen to be read.
latest_in_hour AS (
    SELECT patient_id, parameter, local_hour(observed_at) AS hour,
           last_value(value ORDER BY observed_at, value) AS value
    FROM observations
    GROUP BY patient_id, parameter, local_hour(observed_at)
),
hours AS (
    SELECT DISTINCT patient_id, hour FROM latest_in_hour
),
scale_2 AS (
    SELECT DISTINCT h.patient_id, h.hour
    FROM hours AS h
    JOIN silver.spo2_targets AS t
        ON t.patient_id = h.patient_id
       AND t.flagged_at < h.hour + INTERVAL '1 hour'
       AND (t.ended_at IS NULL OR t.ended_at >= h.hour + INTERVAL '1 hour')
    WHERE t.spo2_scale = 2
),
carried AS (
    SELECT h.patient_id, h.hour, o.parameter, last_value(o.value ORDER BY o.hour) AS value
    FROM hours AS h
    JOIN latest_in_hour AS o
        ON o.patient_id = h.patient_id
       AND o.hour <= h.hour
       AND o.hour > h.hour - CASE WHEN o.parameter IN ('air_or_oxygen', 'consciousness')
                                  THEN INTERVAL '12 hours' ELSE INTERVAL '4 hours' END
    GROUP BY h.patient_id, h.hour, o.parameter
),
parameters AS (
    SELECT patient_id, hour,
           max(CASE WHEN parameter = 'respiration_rate' THEN value END) AS respiration_rate,
           max(CASE WHEN parameter = 'spo2' THEN value END) AS spo2,
           max(CASE WHEN parameter = 'air_or_oxygen' THEN value END) AS oxygen,
           max(CASE WHEN parameter = 'systolic_bp' THEN value END) AS systolic_bp,
           max(CASE WHEN parameter = 'heart_rate' THEN value END) AS pulse,
           max(CASE WHEN parameter = 'consciousness' THEN value END) AS not_alert,
           max(CASE WHEN parameter = 'temperature' THEN value END) AS temperature
    FROM carried
    GROUP BY patient_id, hour
),
scored AS (
    SELECT p.*,
        CASE WHEN s.patient_id IS NULL THEN 1 ELSE 2 END AS spo2_scale,
        CASE WHEN respiration_rate <= 8 THEN 3 WHEN respiration_rate <= 11 THEN 1
             WHEN respiration_rate <= 20 THEN 0 WHEN respiration_rate <= 24 THEN 2
             WHEN respiration_rate IS NOT NULL THEN 3 END AS respiration_score,
        CASE WHEN s.patient_id IS NULL THEN
                 CASE WHEN spo2 <= 91 THEN 3 WHEN spo2 <= 93 THEN 2 WHEN spo2 <= 95 THEN 1
                      WHEN spo2 IS NOT NULL THEN 0 END
             WHEN spo2 <= 83 THEN 3 WHEN spo2 <= 85 THEN 2 WHEN spo2 <= 87 THEN 1
             WHEN spo2 <= 92 THEN 0
             WHEN oxygen = 0 THEN 0
             WHEN oxygen = 1 AND spo2 <= 94 THEN 1 WHEN oxygen = 1 AND spo2 <= 96 THEN 2
             WHEN oxygen = 1 THEN 3 END AS spo2_score,
        CASE WHEN oxygen = 1 THEN 2 WHEN oxygen IS NOT NULL THEN 0 END AS oxygen_score,
        CASE WHEN systolic_bp <= 90 THEN 3 WHEN systolic_bp <= 100 THEN 2
             WHEN systolic_bp <= 110 THEN 1 WHEN systolic_bp <= 219 THEN 0
             WHEN systolic_bp IS NOT NULL THEN 3 END AS systolic_score,
        CASE WHEN pulse <= 40 THEN 3 WHEN pulse <= 50 THEN 1 WHEN pulse <= 90 THEN 0
             WHEN pulse <= 110 THEN 1 WHEN pulse <= 130 THEN 2
             WHEN pulse IS NOT NULL THEN 3 END AS pulse_score,
        CASE WHEN not_alert = 1 THEN 3 WHEN not_alert IS NOT NULL THEN 0 END
            AS consciousness_score,
        CASE WHEN temperature <= 35.0 THEN 3 WHEN temperature <= 36.0 THEN 1
             WHEN temperature <= 38.0 THEN 0 WHEN temperature <= 39.0 THEN 1
             WHEN temperature IS NOT NULL THEN 2 END AS temperature_score
    FROM parameters AS p
    LEFT JOIN scale_2 AS s ON s.patient_id = p.patient_id AND s.hour = p.hour
),
totals AS (
    SELECT *,
        respiration_score + spo2_score + oxygen_score + systolic_score + pulse_score
            + consciousness_score + temperature_score AS total,
        greatest(respiration_score, spo2_score, oxygen_score, systolic_score, pulse_score,
                 consciousness_score, temperature_score) AS highest_single
    FROM scored
)
SELECT t.patient_id, t.hour, e.ward, e.bed,
       t.respiration_rate, t.spo2, t.spo2_scale, t.oxygen = 1 AS on_oxygen, t.systolic_bp, t.pulse,
       CASE WHEN t.not_alert = 1 THEN 'CVPU' WHEN t.not_alert = 0 THEN 'A' END
           AS consciousness,
       t.temperature,
       t.respiration_score, t.spo2_score, t.oxygen_score, t.systolic_score, t.pulse_score,
       t.consciousness_score, t.temperature_score,
       t.total AS news2,
       CASE WHEN t.total IS NULL THEN NULL
            WHEN t.total >= 7 THEN 'high'
            WHEN t.total >= 5 THEN 'medium'
            WHEN t.highest_single = 3 THEN 'low-medium'
            ELSE 'low' END AS risk,
       t.total IS NOT NULL AS complete,
       concat_ws(', ',
           CASE WHEN t.respiration_rate IS NULL THEN 'respiration_rate' END,
           CASE WHEN t.spo2 IS NULL THEN 'spo2' END,
           CASE WHEN t.oxygen IS NULL THEN 'air_or_oxygen' END,
           CASE WHEN t.systolic_bp IS NULL THEN 'systolic_bp' END,
           CASE WHEN t.pulse IS NULL THEN 'pulse' END,
           CASE WHEN t.not_alert IS NULL THEN 'consciousness' END,
           CASE WHEN t.temperature IS NULL THEN 'temperature' END) AS missing
FROM totals AS t
LEFT JOIN silver.encounters AS e
    ON e.patient_id = t.patient_id
   AND t.hour + INTERVAL '1 hour' > e.admitted_at
   AND (e.discharged_at IS NULL OR t.hour + INTERVAL '1 hour' <= e.discharged_at);
