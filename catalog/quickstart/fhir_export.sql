-- The quickstart's stand-in FHIR server content: run after the demo hospital filled its EHR
-- tables, it writes each patient as a FHIR Patient and each charted NEWS2 measurement as a
-- vital-signs Observation (LOINC coded, UCUM units), so that sql/silver/fhir.sql has an
-- alternative EHR feed to read. (Generated names hold no '"' or '\', so plain concatenation
-- makes valid JSON.)
INSERT INTO fhir.patients
SELECT 'Patient', CAST(patient_id AS VARCHAR), modified_at, false,
       '{"resourceType":"Patient","id":"' || CAST(patient_id AS VARCHAR)
       || '","meta":{"lastUpdated":"' || to_char(modified_at, '%Y-%m-%dT%H:%M:%S%.3fZ')
       || '"},"identifier":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"value":"'
       || coalesce(mrn, '') || '"}],"active":true,"name":[{"use":"official","family":"'
       || coalesce(family_name, '') || '","given":["' || coalesce(given_name, '')
       || '"]}],"gender":"' || CASE sex WHEN 'F' THEN 'female' WHEN 'M' THEN 'male' ELSE 'unknown' END
       || '","birthDate":"' || CAST(birth_date AS VARCHAR) || '"}',
       CAST(NULL AS TIMESTAMP)
FROM ehr.patients
WHERE modified_at IS NOT NULL AND birth_date IS NOT NULL;

INSERT INTO fhir.observations
SELECT 'Observation', id, modified_at, false,
       '{"resourceType":"Observation","id":"' || id
       || '","meta":{"lastUpdated":"' || to_char(modified_at, '%Y-%m-%dT%H:%M:%S%.3fZ')
       || '"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}]'
       || ',"code":{"coding":[{"system":"http://loinc.org","code":"' || loinc || '"}]}'
       || ',"subject":{"reference":"Patient/' || CAST(patient_id AS VARCHAR) || '"}'
       || ',"effectiveDateTime":"' || to_char(observed_at, '%Y-%m-%dT%H:%M:%SZ')
       || '","valueQuantity":{"value":' || CAST(value AS VARCHAR)
       || ',"system":"http://unitsofmeasure.org","code":"' || unit || '"}}',
       CAST(NULL AS TIMESTAMP)
FROM (
    SELECT CAST(observation_id AS VARCHAR) || '-hr' AS id, patient_id, observed_at, modified_at,
           '8867-4' AS loinc, heart_rate AS value, '/min' AS unit FROM ehr.observations
    UNION ALL
    SELECT CAST(observation_id AS VARCHAR) || '-spo2', patient_id, observed_at, modified_at,
           '59408-5', spo2, '%' FROM ehr.observations
    UNION ALL
    SELECT CAST(observation_id AS VARCHAR) || '-rr', patient_id, observed_at, modified_at,
           '9279-1', respiration_rate, '{breaths}/min' FROM ehr.observations
    UNION ALL
    SELECT CAST(observation_id AS VARCHAR) || '-temp', patient_id, observed_at, modified_at,
           '8310-5', temperature, 'Cel' FROM ehr.observations
    UNION ALL
    SELECT CAST(observation_id AS VARCHAR) || '-sbp', patient_id, observed_at, modified_at,
           '8480-6', systolic_bp, 'mm[Hg]' FROM ehr.observations
) AS measured
WHERE value IS NOT NULL AND modified_at IS NOT NULL;
