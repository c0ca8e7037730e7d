-- Device telemetry, pulled from the wearables vendor's cloud API (REST, cursor pagination).
-- Bedside devices push instead: their gateways POST to `medlake serve --http` into
-- bronze.readings_push (sql/bronze/telemetry.sql), which needs no declaration here.
-- Secret from the environment: DEVICE_CLOUD_TOKEN.
CREATE SCHEMA IF NOT EXISTS telemetry;

CREATE EXTERNAL TABLE IF NOT EXISTS telemetry.device_cloud (
    reading_id VARCHAR NOT NULL, device_id VARCHAR NOT NULL, patient_id INT,
    metric VARCHAR NOT NULL, value DOUBLE, unit VARCHAR, taken_at TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL)
STORED AS REST LOCATION 'https://devices.vendor.example/v2/readings?site=main-hospital'
OPTIONS ('records_pointer' '/data', 'pagination' 'cursor', 'cursor_pointer' '/meta/next_cursor',
         'limit_param' 'limit', 'page_size' '1000', 'bearer_token' '${DEVICE_CLOUD_TOKEN}',
         'filter.received_at.gt' 'since', 'watermark' 'received_at',
         'high_mark_query' 'sort=-received_at&limit=1');
