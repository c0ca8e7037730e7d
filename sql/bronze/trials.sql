-- Bronze: clinical trials (Azure SQL), incrementally by modified_at.
CREATE MATERIALIZED VIEW bronze.trials REFRESH EVERY '1 hour'
    FRESHNESS WARN AFTER '3 hours' ERROR AFTER '12 hours' AS
SELECT *, 'trials.trials' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM trials.trials;

CREATE MATERIALIZED VIEW bronze.trial_enrollments REFRESH EVERY '15 minutes'
    FRESHNESS WARN AFTER '1 hour' ERROR AFTER '4 hours' AS
SELECT *, 'trials.enrollments' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM trials.enrollments;

CREATE MATERIALIZED VIEW bronze.research_logs REFRESH EVERY '15 minutes'
    FRESHNESS WARN AFTER '1 hour' ERROR AFTER '4 hours' AS
SELECT *, 'trials.research_logs' AS _source, CAST(modified_at AS VARCHAR) AS _batch,
       modified_at AS _ingested_at
FROM trials.research_logs;
