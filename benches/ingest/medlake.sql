-- The ingest benchmark's target in medlake: the demo's bronze table (examples/demo.sql).
CREATE TABLE bronze.readings (
    device_id  VARCHAR   NOT NULL,
    patient_id INT       NOT NULL,
    metric     VARCHAR   NOT NULL,
    value      DOUBLE,
    unit       VARCHAR,
    taken_at   TIMESTAMP NOT NULL
);
