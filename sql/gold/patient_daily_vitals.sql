-- Gold: per patient, day and metric, the validated readings' count, minimum, average and
-- maximum (standard units). Days are the hospital's (local_date(): the server's [clinical]
-- time_zone, UTC by default). Incremental: a refresh recomputes only the days that received
-- readings, late ones included.
CREATE MATERIALIZED VIEW gold.patient_daily_vitals REFRESH EVERY '5 minutes' AS
SELECT patient_id,
       local_date(taken_at) AS day,
       metric,
       unit,
       count(*) AS readings,
       min(value) AS minimum,
       round(avg(value), 1) AS average,
       max(value) AS maximum
FROM silver.readings
GROUP BY patient_id, local_date(taken_at), metric, unit;
