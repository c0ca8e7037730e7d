-- Bronze: the EHR's FHIR resources as exported (catalog/fhir.sql), every version and every
-- deletion, as JSON text. Each refresh after the first exports with _since = the last
-- refresh's mark.
CREATE MATERIALIZED VIEW bronze.fhir_patients REFRESH EVERY '1 hour'
    FRESHNESS WARN AFTER '3 hours' ERROR AFTER '1 day' AS
SELECT * FROM fhir.patients;

CREATE MATERIALIZED VIEW bronze.fhir_observations REFRESH EVERY '1 hour'
    FRESHNESS WARN AFTER '3 hours' ERROR AFTER '1 day' AS
SELECT * FROM fhir.observations;
