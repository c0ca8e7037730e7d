-- Gold: how each device performed each day (the hospital's days: local_date(), the server's
-- [clinical] time_zone, UTC by default).
--   readings / rejected: validated readings, and readings that went to quarantine;
--   gaps: times the device was silent for more than 30 seconds (by the time of measurement:
--     readings a device held during a dropout and sent later fill their gap), and the longest;
--   uptime_pct: the share of the time between its first and last reading of the day that was
--     not inside a gap;
--   battery: the lowest and the last battery level the device reported that day (Cosmos device
--     events; of two at the same instant, the higher), and how many disconnects and errors it
--     reported.
--   (The day is a column of the window's input, not an expression in its PARTITION BY: a
--   filter on it, such as a refresh's recompute of the days that changed, then reaches the
--   scan of silver.readings, which skips the other days' files.)
CREATE MATERIALIZED VIEW gold.device_performance REFRESH EVERY '15 minutes' AS
WITH ordered AS (
    SELECT device_id, day, taken_at,
           lag(taken_at) OVER (PARTITION BY device_id, day ORDER BY taken_at) AS previous_at
    FROM (SELECT DISTINCT device_id, local_date(taken_at) AS day, taken_at
          FROM silver.readings) AS instants
),
spans AS (
    SELECT device_id, day, taken_at,
           date_part('epoch', taken_at) - date_part('epoch', previous_at) AS since_previous
    FROM ordered
),
per_day AS (
    SELECT device_id, day,
           min(taken_at) AS first_reading,
           max(taken_at) AS last_reading,
           sum(CASE WHEN since_previous > 30 THEN 1 ELSE 0 END) AS gaps,
           sum(CASE WHEN since_previous > 30 THEN since_previous ELSE 0 END) AS gap_seconds,
           round(max(since_previous), 1) AS longest_silence_seconds
    FROM spans
    GROUP BY device_id, day
),
accepted AS (
    SELECT device_id, local_date(taken_at) AS day, count(*) AS readings
    FROM silver.readings GROUP BY device_id, local_date(taken_at)
),
rejected AS (
    SELECT device_id, local_date(taken_at) AS day, count(*) AS rejected
    FROM silver.readings_quarantine GROUP BY device_id, local_date(taken_at)
),
battery AS (
    SELECT device_id, local_date(occurred_at) AS day,
           min(battery_pct) AS min_battery_pct,
           last_value(battery_pct ORDER BY occurred_at, battery_pct) AS last_battery_pct,
           sum(CASE WHEN event_type = 'disconnected' THEN 1 ELSE 0 END) AS disconnects,
           sum(CASE WHEN event_type = 'error' THEN 1 ELSE 0 END) AS errors
    FROM silver.device_events
    GROUP BY device_id, local_date(occurred_at)
)
SELECT p.device_id, d.kind, p.day, a.readings, coalesce(r.rejected, 0) AS rejected,
       p.first_reading, p.last_reading, p.gaps,
       p.longest_silence_seconds,
       round(100.0 * (1 - p.gap_seconds / greatest(date_part('epoch', p.last_reading)
                                                   - date_part('epoch', p.first_reading), 1)), 2)
           AS uptime_pct,
       b.min_battery_pct, b.last_battery_pct,
       coalesce(b.disconnects, 0) AS disconnects, coalesce(b.errors, 0) AS errors
FROM per_day AS p
JOIN accepted AS a ON a.device_id = p.device_id AND a.day = p.day
LEFT JOIN rejected AS r ON r.device_id = p.device_id AND r.day = p.day
LEFT JOIN battery AS b ON b.device_id = p.device_id AND b.day = p.day
LEFT JOIN silver.devices AS d ON d.device_id = p.device_id;
