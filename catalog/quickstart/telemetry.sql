-- Quickstart stand-in for catalog/telemetry.sql: the vendor cloud's readings as a Delta table.
CREATE SCHEMA IF NOT EXISTS telemetry;
CREATE TABLE IF NOT EXISTS telemetry.device_cloud (
    reading_id VARCHAR NOT NULL, device_id VARCHAR NOT NULL, patient_id INT,
    metric VARCHAR NOT NULL, value DOUBLE, unit VARCHAR, taken_at TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL);
