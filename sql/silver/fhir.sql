-- Silver: the EHR's FHIR feed, current and flat.
--
-- The current resources: the latest version of each, a deletion in the export's `deleted`
-- output removing it (AUTO CDC, SCD type 1).
CREATE MATERIALIZED VIEW silver.fhir_patient_resources REFRESH ON CHANGE AS
AUTO CDC FROM bronze.fhir_patients KEYS (resource_type, id)
    APPLY AS DELETE WHEN deleted SEQUENCE BY last_updated
    COLUMNS * EXCEPT (deleted, transaction_time);

CREATE MATERIALIZED VIEW silver.fhir_observation_resources REFRESH ON CHANGE AS
AUTO CDC FROM bronze.fhir_observations KEYS (resource_type, id)
    APPLY AS DELETE WHEN deleted SEQUENCE BY last_updated
    COLUMNS * EXCEPT (deleted, transaction_time);

-- Patients as silver.patients has them (SQL-on-FHIR v2 ViewDefinition): the medical record
-- number is the identifier typed MR; the first official name (else the first name).
CREATE MATERIALIZED VIEW silver.fhir_patients REFRESH ON CHANGE AS
FHIR VIEW '{
  "resourceType": "ViewDefinition", "name": "fhir_patients", "resource": "Patient",
  "select": [{"column": [
    {"name": "patient_key", "path": "getResourceKey()", "type": "id"},
    {"name": "mrn", "path": "identifier.where(type.coding.where(code = ''MR'').exists()).value.first()", "type": "string"},
    {"name": "family_name", "path": "iif(name.where(use = ''official'').exists(), name.where(use = ''official''), name).first().family", "type": "string"},
    {"name": "given_name", "path": "iif(name.where(use = ''official'').exists(), name.where(use = ''official''), name).first().given.first()", "type": "string"},
    {"name": "birth_date", "path": "birthDate", "type": "date"},
    {"name": "gender", "path": "gender", "type": "code"},
    {"name": "active", "path": "active", "type": "boolean"}
  ]}]
}' FROM silver.fhir_patient_resources;

-- Vital signs (category vital-signs), one row per LOINC coding of a final, amended or
-- corrected Observation with a quantity.
CREATE MATERIALIZED VIEW silver.fhir_vital_signs REFRESH ON CHANGE AS
FHIR VIEW '{
  "resourceType": "ViewDefinition", "name": "fhir_vital_signs", "resource": "Observation",
  "constant": [{"name": "loinc", "valueUri": "http://loinc.org"}],
  "where": [
    {"path": "category.coding.where(code = ''vital-signs'').exists()"},
    {"path": "status = ''final'' or status = ''amended'' or status = ''corrected''"},
    {"path": "value.ofType(Quantity).value.exists()"}
  ],
  "select": [
    {"column": [
      {"name": "observation_key", "path": "getResourceKey()", "type": "id"},
      {"name": "patient_key", "path": "subject.getReferenceKey(Patient)", "type": "id"},
      {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
      {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
      {"name": "unit", "path": "value.ofType(Quantity).code", "type": "code"},
      {"name": "status", "path": "status", "type": "code"}
    ]},
    {"forEach": "code.coding.where(system = %loinc)",
     "column": [{"name": "loinc_code", "path": "code", "type": "code"}]}
  ]
}' FROM silver.fhir_observation_resources;

-- The FHIR vitals in silver.readings' terms: metric names from the same LOINC table the HL7
-- route uses (silver.hl7_metric_codes), units as the warehouse spells them, the patient as
-- the EHR's number, the time in UTC (a partial dateTime, such as "2026-12", is no time of
-- measurement: NULL).
CREATE MATERIALIZED VIEW silver.fhir_readings REFRESH ON CHANGE AS
SELECT v.observation_key,
       TRY_CAST(v.patient_key AS INT) AS patient_id,
       c.metric,
       v.value,
       coalesce(u.unit, v.unit) AS unit,
       TRY_CAST(v.effective AS TIMESTAMP) AS taken_at
FROM silver.fhir_vital_signs AS v
JOIN silver.hl7_metric_codes AS c ON c.coding_system = 'LN' AND c.code = v.loinc_code
LEFT JOIN silver.hl7_unit_codes AS u ON u.units_system = 'UCUM' AND u.units = v.unit;
