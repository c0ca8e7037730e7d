-- The spill benchmark's warehouse: an empty bronze table of vital signs and a gold view over
-- it that groups by patient, metric and hour (0.3 to 0.7 groups per row depending on the size:
-- the hash table is far larger than the memory limit).
CREATE TABLE bronze.vitals (patient_id BIGINT NOT NULL, metric VARCHAR NOT NULL, value DOUBLE, taken_at TIMESTAMP NOT NULL);
CREATE MATERIALIZED VIEW gold.patient_hourly AS {query};
