-- The same table in PostgreSQL under the same name (loaded with COPY FROM the CSV file).
CREATE SCHEMA gold;
CREATE TABLE gold.patient_daily_vitals (
    patient_id integer          NOT NULL,
    ward       text             NOT NULL,
    day        date             NOT NULL,
    metric     text             NOT NULL,
    readings   bigint           NOT NULL,
    minimum    double precision,
    average    double precision,
    maximum    double precision,
    alerts     integer          NOT NULL
);
