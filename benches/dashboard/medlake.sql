-- The dashboard benchmark's gold table in medlake, loaded from DuckDB's Parquet file.
CREATE SCHEMA landing;
CREATE EXTERNAL TABLE landing.patient_daily_vitals STORED AS PARQUET LOCATION '{landing}';
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
);
INSERT INTO gold.patient_daily_vitals
SELECT patient_id, ward, day, metric, readings, minimum, average, maximum, alerts
FROM landing.patient_daily_vitals;
-- What a DBA does for these dashboards on Delta (PostgreSQL gets its indexes): lay the rows out
-- along a Z-order curve of (patient_id, day), so that a patient's week and a day's rows each sit
-- in a few of the 64Ki-row row groups and the others are skipped by their statistics.
OPTIMIZE gold.patient_daily_vitals ZORDER BY (patient_id, day);
