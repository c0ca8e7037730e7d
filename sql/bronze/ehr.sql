-- Bronze: raw copies of the EHR tables. Incremental: each refresh appends the rows whose
-- modified_at passed the last extraction (SQL Server watermark; Delta appends in the
-- quickstart), so bronze keeps every version of a changed row and silver picks the latest.
-- Ingestion metadata: _source (system and table), _batch (the change's watermark),
-- _ingested_at (when the source recorded the change). The extraction time of each row is its
-- bronze commit: DESCRIBE HISTORY / system.refreshes (a per-row now() would make every
-- refresh a full re-read of the source).
CREATE MATERIALIZED VIEW bronze.ehr_patients REFRESH EVERY '15 minutes'
    FRESHNESS WARN AFTER '1 hour' ERROR AFTER '4 hours' AS
SELECT *, 'ehr.patients' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM ehr.patients;

CREATE MATERIALIZED VIEW bronze.ehr_devices REFRESH EVERY '15 minutes'
    FRESHNESS WARN AFTER '1 hour' ERROR AFTER '4 hours' AS
SELECT *, 'ehr.devices' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM ehr.devices;

CREATE MATERIALIZED VIEW bronze.ehr_device_assignments REFRESH EVERY '5 minutes'
    FRESHNESS WARN AFTER '30 minutes' ERROR AFTER '2 hours' AS
SELECT *, 'ehr.device_assignments' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM ehr.device_assignments;

CREATE MATERIALIZED VIEW bronze.ehr_encounters REFRESH EVERY '5 minutes'
    FRESHNESS WARN AFTER '30 minutes' ERROR AFTER '2 hours' AS
SELECT *, 'ehr.encounters' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM ehr.encounters;

CREATE MATERIALIZED VIEW bronze.ehr_observations REFRESH EVERY '5 minutes'
    FRESHNESS WARN AFTER '30 minutes' ERROR AFTER '2 hours' AS
SELECT *, 'ehr.observations' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM ehr.observations;

CREATE MATERIALIZED VIEW bronze.ehr_spo2_targets REFRESH EVERY '5 minutes'
    FRESHNESS WARN AFTER '30 minutes' ERROR AFTER '2 hours' AS
SELECT *, 'ehr.spo2_targets' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM ehr.spo2_targets;
