-- Quickstart stand-in for catalog/cosmos.sql: alerts and device events as Delta tables.
CREATE SCHEMA IF NOT EXISTS events;
CREATE TABLE IF NOT EXISTS events.alerts (
    id VARCHAR NOT NULL, device_id VARCHAR, patient_id INT, alert_type VARCHAR,
    severity VARCHAR, message VARCHAR, raised_at TIMESTAMP NOT NULL, acknowledged_at TIMESTAMP,
    acknowledged_by VARCHAR, _ts BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS events.device_events (
    id VARCHAR NOT NULL, device_id VARCHAR NOT NULL, event_type VARCHAR, battery_pct DOUBLE,
    detail VARCHAR, occurred_at TIMESTAMP NOT NULL, _ts BIGINT NOT NULL);
