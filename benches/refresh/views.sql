CREATE MATERIALIZED VIEW silver.vitals{suffix}
    CONSTRAINT plausible EXPECT (value BETWEEN 0 AND 190) ON VIOLATION DROP ROW
AS SELECT patient_id, metric, value, taken_at, CAST(taken_at AS DATE) AS day
FROM bronze.vitals WHERE metric <> 'resp_rate';
CREATE MATERIALIZED VIEW gold.patient_daily{suffix} AS
SELECT patient_id, metric, day, count(*) AS readings, avg(value) AS average, min(value) AS minimum, max(value) AS maximum
FROM silver.vitals{suffix} GROUP BY patient_id, metric, day;
