-- Gold: data completeness per device, ward and day, for compliance reporting. Days are the
-- hospital's (local_date(): the server's [clinical] time_zone, UTC by default) and last from
-- local_day_start(day) to local_day_start(day + 1): 23 or 25 hours when the clocks change.
--   expected: the readings the device should have sent while attached to a patient in that
--     ward (assignment and ward stay overlapping) at its nominal sample rate
--     (ehr.devices.sample_rate_hz). A stay still open counts up to the day's data horizon:
--     the newest reading the warehouse holds for that day (the end of a past day; for today,
--     how far the feeds have reached). The clock is not used, so the view refreshes
--     incrementally (a view calling now() recomputes fully), and a late pipeline does not
--     show as missing readings;
--   received: the readings that reached the lake (validated + quarantined);
--   accepted: the validated ones; completeness_pct = accepted / expected.
CREATE MATERIALIZED VIEW gold.data_completeness REFRESH EVERY '15 minutes' AS
WITH stays AS (
    -- to_at NULL: still attached.
    SELECT a.device_id, e.ward,
           greatest(a.valid_from, e.admitted_at) AS from_at,
           CASE WHEN a.valid_to IS NULL THEN e.discharged_at
                WHEN e.discharged_at IS NULL THEN a.valid_to
                ELSE least(a.valid_to, e.discharged_at) END AS to_at
    FROM silver.device_assignments AS a
    JOIN silver.encounters AS e
        ON e.patient_id = a.patient_id
       AND (a.valid_to IS NULL OR e.admitted_at < a.valid_to)
       AND (e.discharged_at IS NULL OR e.discharged_at > a.valid_from)
),
days AS (
    SELECT local_date(taken_at) AS day, max(taken_at) AS horizon
    FROM silver.readings GROUP BY local_date(taken_at)
),
expected AS (
    SELECT s.device_id, s.ward, d.day,
           sum(date_part('epoch', least(coalesce(s.to_at, d.horizon),
                                        local_day_start(d.day + INTERVAL '1 day')))
               - date_part('epoch', greatest(s.from_at, local_day_start(d.day))))
               AS attached_seconds
    FROM stays AS s
    JOIN days AS d
        ON s.from_at < local_day_start(d.day + INTERVAL '1 day')
       AND coalesce(s.to_at, d.horizon) > local_day_start(d.day)
    GROUP BY s.device_id, s.ward, d.day
),
accepted AS (
    SELECT device_id, ward, local_date(taken_at) AS day, count(*) AS accepted
    FROM silver.readings GROUP BY device_id, ward, local_date(taken_at)
),
rejected AS (
    SELECT device_id, ward, local_date(taken_at) AS day, count(*) AS rejected
    FROM silver.readings_quarantine GROUP BY device_id, ward, local_date(taken_at)
)
SELECT x.device_id, dev.kind, x.ward, x.day,
       round(x.attached_seconds / 3600.0, 2) AS attached_hours,
       CAST(round(x.attached_seconds * coalesce(dev.sample_rate_hz, 1.0)) AS BIGINT) AS expected,
       coalesce(a.accepted, 0) + coalesce(r.rejected, 0) AS received,
       coalesce(a.accepted, 0) AS accepted,
       coalesce(r.rejected, 0) AS rejected,
       round(100.0 * coalesce(a.accepted, 0)
             / greatest(x.attached_seconds * coalesce(dev.sample_rate_hz, 1.0), 1), 2)
           AS completeness_pct
FROM expected AS x
LEFT JOIN silver.devices AS dev ON dev.device_id = x.device_id
LEFT JOIN accepted AS a ON a.device_id = x.device_id AND a.ward = x.ward AND a.day = x.day
LEFT JOIN rejected AS r ON r.device_id = x.device_id AND r.ward = x.ward AND r.day = x.day;
