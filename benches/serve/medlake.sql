-- The serve benchmark's table in medlake, loaded from DuckDB's Parquet file through a blob
-- external table (one streamed INSERT, one Delta commit).
CREATE SCHEMA landing;
CREATE EXTERNAL TABLE landing.readings STORED AS PARQUET LOCATION '{landing}';
CREATE TABLE bronze.readings (
    reading_id BIGINT    NOT NULL,
    device_id  VARCHAR   NOT NULL,
    patient_id INT       NOT NULL,
    metric     VARCHAR   NOT NULL,
    value      DOUBLE,
    taken_at   TIMESTAMP NOT NULL
);
INSERT INTO bronze.readings
SELECT reading_id, device_id, patient_id, metric, value, taken_at FROM landing.readings;
