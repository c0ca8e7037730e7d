-- Silver: alerts, one row per alert (the latest version of its Cosmos document: an alert is
-- written when raised and again when acknowledged), with the patient and their ward and bed as
-- of the moment it was raised, and the device's kind.
CREATE MATERIALIZED VIEW silver.alerts REFRESH EVERY '1 minute' AS
SELECT x.id AS alert_id, x.device_id, d.kind AS device_kind, x.patient_id, e.ward, e.bed,
       x.alert_type, x.severity, x.message, x.raised_at, x.acknowledged_at, x.acknowledged_by,
       CAST(date_part('epoch', x.acknowledged_at) - date_part('epoch', x.raised_at) AS DOUBLE)
           AS seconds_to_acknowledge
FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _ts DESC) AS version_rank
      FROM bronze.alerts) AS x
LEFT JOIN silver.devices AS d ON d.device_id = x.device_id
LEFT JOIN silver.encounters AS e
    ON e.patient_id = x.patient_id
   AND x.raised_at >= e.admitted_at
   AND (e.discharged_at IS NULL OR x.raised_at < e.discharged_at)
WHERE x.version_rank = 1;

-- Device events (connect, disconnect, battery, error), each once.
CREATE MATERIALIZED VIEW silver.device_events REFRESH EVERY '1 minute' AS
SELECT id AS event_id, device_id, event_type, battery_pct, detail, occurred_at
FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _ts DESC) AS version_rank
      FROM bronze.device_events)
WHERE version_rank = 1;
