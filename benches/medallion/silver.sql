-- Silver, the same text for medlake (a materialized view over bronze.readings and
-- bronze.devices) and DuckDB (over bronze's Parquet files): the seed's
-- dropDuplicates(["patient_id", "timestamp"]) and left join of the device metadata.
--
-- The deduplication keeps, of each (patient_id, taken_at), the reading with the smallest
-- event_id (event_id is unique in bronze): the same rows as DISTINCT ON (patient_id, taken_at)
-- ... ORDER BY event_id or row_number() OVER (PARTITION BY patient_id, taken_at ORDER BY
-- event_id) = 1, and on medlake the fastest of the three (benches/README.md).
SELECT r.event_id, r.device_id, r.patient_id, r.taken_at, r.metric, r.reading,
       d.model, d.manufacturer, d.ward, d.firmware
FROM {readings} AS r
JOIN (SELECT min(event_id) AS event_id FROM {readings} GROUP BY patient_id, taken_at) AS kept
    ON r.event_id = kept.event_id
LEFT JOIN {devices} AS d ON r.device_id = d.device_id
