-- Real-time alerts and device event streams in Azure Cosmos DB (NoSQL API). Documents change
-- as alerts are acknowledged; `_ts` (epoch seconds of the last write) is the watermark, so
-- bronze appends every new version and silver keeps the latest. Secret: COSMOS_KEY.
CREATE SCHEMA IF NOT EXISTS events;

CREATE EXTERNAL TABLE IF NOT EXISTS events.alerts (
    id VARCHAR NOT NULL, device_id VARCHAR, patient_id INT, alert_type VARCHAR,
    severity VARCHAR, message VARCHAR, raised_at TIMESTAMP NOT NULL, acknowledged_at TIMESTAMP,
    acknowledged_by VARCHAR, _ts BIGINT NOT NULL)
STORED AS COSMOS LOCATION 'https://hospital-events.documents.azure.com'
OPTIONS ('database' 'iomt', 'container' 'alerts', 'key' '${COSMOS_KEY}', 'watermark' '_ts');

CREATE EXTERNAL TABLE IF NOT EXISTS events.device_events (
    id VARCHAR NOT NULL, device_id VARCHAR NOT NULL, event_type VARCHAR, battery_pct DOUBLE,
    detail VARCHAR, occurred_at TIMESTAMP NOT NULL, _ts BIGINT NOT NULL)
STORED AS COSMOS LOCATION 'https://hospital-events.documents.azure.com'
OPTIONS ('database' 'iomt', 'container' 'device-events', 'key' '${COSMOS_KEY}', 'watermark' '_ts');
