-- Bronze: Cosmos DB alerts and device events, incrementally by _ts (every new version of a
-- document is appended; silver keeps the latest).
CREATE MATERIALIZED VIEW bronze.alerts REFRESH EVERY '1 minute'
    FRESHNESS WARN AFTER '10 minutes' ERROR AFTER '1 hour' AS
SELECT *, 'cosmos:alerts' AS _source, CAST(_ts AS VARCHAR) AS _batch,
       to_timestamp_seconds(_ts) AS _ingested_at
FROM events.alerts;

CREATE MATERIALIZED VIEW bronze.device_events REFRESH EVERY '1 minute'
    FRESHNESS WARN AFTER '10 minutes' ERROR AFTER '1 hour' AS
SELECT *, 'cosmos:device-events' AS _source, CAST(_ts AS VARCHAR) AS _batch,
       to_timestamp_seconds(_ts) AS _ingested_at
FROM events.device_events;
