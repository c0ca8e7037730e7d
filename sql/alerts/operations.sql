-- Operational alert rules: devices that stopped sending while attached to a patient, and
-- device alarms nobody acknowledged. Both need the clock, so their views are recomputed every
-- minute over a recent window (cheap: readings are pruned by time).

-- Continuous devices (sampling at least once a minute) attached to a patient now whose last
-- reading is more than 5 minutes old. silent_since starts the episode: each episode fires once.
CREATE MATERIALIZED VIEW gold.silent_devices REFRESH EVERY '1 minute' AS
WITH attached AS (
    SELECT a.device_id, a.patient_id, a.valid_from
    FROM silver.device_assignments AS a
    JOIN silver.devices AS d ON d.device_id = a.device_id
    WHERE d.sample_rate_hz >= 1.0 / 60
      AND a.valid_from <= now()
      AND (a.valid_to IS NULL OR a.valid_to > now())
),
recent AS (
    SELECT device_id, max(taken_at) AS last_reading
    FROM silver.readings
    WHERE taken_at > now() - INTERVAL '6 hours'
    GROUP BY device_id
)
SELECT t.device_id, t.patient_id, r.last_reading,
       CASE WHEN r.last_reading IS NULL OR r.last_reading < t.valid_from THEN t.valid_from
            ELSE r.last_reading END AS silent_since
FROM attached AS t
LEFT JOIN recent AS r ON r.device_id = t.device_id
WHERE coalesce(r.last_reading, t.valid_from) < now() - INTERVAL '5 minutes';

CREATE OR REPLACE ALERT device_silent ON gold.silent_devices
    WHEN true
    KEY (device_id, silent_since)
    SEVERITY 'medium'
    NOTIFY 'ward-pager';

-- Device alarms of the highest class ('high' in the device feed) still unacknowledged 10
-- minutes after they were raised (alarms of the last day).
CREATE MATERIALIZED VIEW gold.unacknowledged_alarms REFRESH EVERY '1 minute' AS
SELECT alert_id, device_id, patient_id, ward, bed, alert_type, severity, raised_at
FROM silver.alerts
WHERE severity = 'high'
  AND acknowledged_at IS NULL
  AND raised_at < now() - INTERVAL '10 minutes'
  AND raised_at > now() - INTERVAL '1 day';

CREATE OR REPLACE ALERT alarm_unacknowledged ON gold.unacknowledged_alarms
    WHEN true
    KEY (alert_id)
    SEVERITY 'high'
    NOTIFY 'ward-pager', 'postgres';

-- A source whose extraction (the bronze view that copies it) last succeeded longer ago than
-- its FRESHNESS ERROR AFTER (sql/bronze/): once per stale episode. system.sources is computed
-- when read: the server evaluates this rule every 10 seconds.
CREATE OR REPLACE ALERT source_stale ON system.sources
    WHEN freshness = 'error'
    KEY (view, last_success)
    SEVERITY 'high'
    NOTIFY 'ward-pager';
