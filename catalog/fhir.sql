-- The EHR's FHIR R4 API (the alternative EHR feed: the same patients and charted vital signs
-- as FHIR resources), read by Bulk Data $export with SMART Backend Services credentials. The
-- key's secret: FHIR_KEY (a PKCS#8 PEM, RS384 or ES384; its public half in the EHR's JWKS).
-- Each row keeps the resource's JSON text; sql/silver/fhir.sql flattens it with
-- SQL-on-FHIR ViewDefinitions.
CREATE SCHEMA IF NOT EXISTS fhir;

CREATE EXTERNAL TABLE IF NOT EXISTS fhir.patients
STORED AS FHIR LOCATION 'https://ehr-fhir.hospital.local/fhir'
OPTIONS ('resource' 'Patient', 'export' 'system', 'client_id' 'medlake',
         'private_key' '${FHIR_KEY}', 'key_id' 'medlake');

CREATE EXTERNAL TABLE IF NOT EXISTS fhir.observations
STORED AS FHIR LOCATION 'https://ehr-fhir.hospital.local/fhir'
OPTIONS ('resource' 'Observation', 'export' 'system', 'client_id' 'medlake',
         'private_key' '${FHIR_KEY}', 'key_id' 'medlake');
