-- Gold: alerts by ward, severity and day, and how fast they were acknowledged (seconds from
-- raised to acknowledged; open alerts are counted, not timed). Days are the hospital's
-- (local_date(): the server's [clinical] time_zone, UTC by default). The percentiles are exact
-- (an approximate one, a t-digest, depends on the order it reads rows: two refreshes of the same
-- rows gave different p90s).
CREATE MATERIALIZED VIEW gold.alert_response REFRESH EVERY '5 minutes' AS
SELECT coalesce(ward, 'unknown') AS ward,
       severity,
       local_date(raised_at) AS day,
       count(*) AS alerts,
       count(acknowledged_at) AS acknowledged,
       count(*) - count(acknowledged_at) AS open,
       round(avg(seconds_to_acknowledge), 1) AS avg_seconds_to_acknowledge,
       round(median(seconds_to_acknowledge), 1) AS median_seconds_to_acknowledge,
       round(percentile_cont(0.9) WITHIN GROUP (ORDER BY seconds_to_acknowledge), 1)
           AS p90_seconds_to_acknowledge,
       round(max(seconds_to_acknowledge), 1) AS max_seconds_to_acknowledge
FROM silver.alerts
GROUP BY coalesce(ward, 'unknown'), severity, local_date(raised_at);
