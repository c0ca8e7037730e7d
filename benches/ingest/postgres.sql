-- The same table in PostgreSQL: no index, no constraint beyond NOT NULL, like a Delta bronze
-- table. {table} is readings (batched COPYs) or readings_bulk (one COPY of everything).
CREATE TABLE {table} (
    device_id  varchar          NOT NULL,
    patient_id integer          NOT NULL,
    metric     varchar          NOT NULL,
    value      double precision,
    unit       varchar,
    taken_at   timestamp        NOT NULL
);
