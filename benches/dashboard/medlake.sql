-- The dashboard benchmark's gold table in medlake, loaded from DuckDB's Parquet file.
CREATE SCHEMA landing;
CREATE EXTERNAL TABLE landing.patient_daily_vitals STORED AS PARQUET LOCATION '{landing}';
-- CLUSTER BY is what a DBA does for these dashboards on Delta (PostgreSQL gets its indexes):
-- every write is sorted by day, then patient, so a day's rows (the alert board, the ward
-- overview) sit in one 64Ki-row row group and a patient's rows of each day in one page of
-- 4Ki rows, and the others are skipped by their statistics and the page index.
CREATE TABLE gold.patient_daily_vitals (
    patient_id INT     NOT NULL,
    ward       VARCHAR NOT NULL,
    day        DATE    NOT NULL,
    metric     VARCHAR NOT NULL,
    readings   BIGINT  NOT NULL,
    minimum    DOUBLE,
    average    DOUBLE,
    maximum    DOUBLE,
    alerts     INT     NOT NULL
) CLUSTER BY (day, patient_id);
INSERT INTO gold.patient_daily_vitals
SELECT patient_id, ward, day, metric, readings, minimum, average, maximum, alerts
FROM landing.patient_daily_vitals;
