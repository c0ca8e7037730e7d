-- Bronze: device telemetry.
--
-- Push: gateways POST NDJSON to `medlake serve --http` (/v1/ingest/bronze.readings_push),
-- acknowledged once the Delta commit exists. The table is bronze itself; its ingestion
-- metadata is in its commits (each commit records the requests' Idempotency-Keys and time:
-- DESCRIBE HISTORY bronze.readings_push). Columns are those `medlake simulate` sends.
CREATE TABLE IF NOT EXISTS bronze.readings_push (
    device_id  VARCHAR   NOT NULL,
    patient_id INT       NOT NULL,
    metric     VARCHAR   NOT NULL,
    value      DOUBLE,
    unit       VARCHAR,
    taken_at   TIMESTAMP NOT NULL
);

-- Pull: the wearables vendor's API, incrementally by received_at (the API's arrival time).
CREATE MATERIALIZED VIEW bronze.readings_cloud REFRESH EVERY '1 minute'
    FRESHNESS WARN AFTER '10 minutes' ERROR AFTER '1 hour' AS
SELECT *, 'rest:device_cloud' AS _source, reading_id AS _batch, received_at AS _ingested_at
FROM telemetry.device_cloud;

-- Batch uploads (CSV and Parquet) in the landing zone: each refresh takes only the files that
-- appeared since the last one. The batch folder (batch=20261123T0800) names the upload and
-- its time.
CREATE MATERIALIZED VIEW bronze.readings_files REFRESH EVERY '5 minutes'
    FRESHNESS WARN AFTER '30 minutes' ERROR AFTER '2 hours' AS
SELECT device_id, patient_id, metric, value, unit, to_timestamp_micros(taken_at) AS taken_at,
       'blob:csv' AS _source, batch AS _batch,
       to_timestamp_micros(batch, '%Y%m%dT%H%M') AS _ingested_at
FROM landing.reading_batches_csv
UNION ALL
SELECT device_id, patient_id, metric, value, unit, to_timestamp_micros(taken_at) AS taken_at,
       'blob:parquet' AS _source, batch AS _batch,
       to_timestamp_micros(batch, '%Y%m%dT%H%M') AS _ingested_at
FROM landing.reading_batches_parquet;
