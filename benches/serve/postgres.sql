-- The same table in PostgreSQL, under the same name (loaded with COPY FROM the CSV file).
CREATE SCHEMA bronze;
CREATE TABLE bronze.readings (
    reading_id bigint           NOT NULL,
    device_id  text             NOT NULL,
    patient_id integer          NOT NULL,
    metric     text             NOT NULL,
    value      double precision,
    taken_at   timestamp        NOT NULL
);
