-- Who may see what in the reference warehouse (issue 23). `medlake apply` runs these
-- statements after the views exist; each is idempotent. Users come from the server's config
-- (`[[users]] ... roles = ["clinician"]`); see the README's "Security" section.
--
-- clinician      ward staff: vitals, NEWS2, alerts and devices; patient identifiers masked
-- care_team      may see identifiers (MRN, names, birth dates) where they are masked
-- data_engineer  runs the pipelines: reads every layer (identifiers masked), refreshes views
-- auditor        (built in) reads system.audit; break_glass (built in) may lift masks

CREATE ROLE IF NOT EXISTS clinician;
CREATE ROLE IF NOT EXISTS care_team;
CREATE ROLE IF NOT EXISTS data_engineer;

-- Identifiers are masked where they enter the warehouse; every view that carries them
-- (silver.patients, silver.trial_enrollments, silver.imaging_studies, ...) inherits the masks.
ALTER TABLE bronze.ehr_patients ALTER COLUMN mrn
    SET MASK CASE WHEN is_member('care_team') THEN mrn ELSE 'MRN-****' END;
ALTER TABLE bronze.ehr_patients ALTER COLUMN family_name
    SET MASK CASE WHEN is_member('care_team') THEN family_name ELSE NULL END;
ALTER TABLE bronze.ehr_patients ALTER COLUMN given_name
    SET MASK CASE WHEN is_member('care_team') THEN given_name ELSE NULL END;
ALTER TABLE bronze.ehr_patients ALTER COLUMN birth_date
    SET MASK CASE WHEN is_member('care_team') THEN birth_date
                  ELSE CAST(date_trunc('year', birth_date) AS DATE) END;

-- The standards feeds carry the same identifiers in their raw forms: the FHIR resources'
-- JSON (a Patient's identifiers, names and birth date; an Observation's subject display) and
-- the HL7 v2 messages (PID in `raw`, names and birth dates in the ADT columns). Everything
-- computed from them (silver.fhir_patients, silver.fhir_vital_signs, ...) inherits the masks.
-- The HL7 columns are NOT NULL: masked, they read as '' (a copy of masked rows stays
-- writable).
ALTER TABLE bronze.fhir_patients ALTER COLUMN resource
    SET MASK CASE WHEN is_member('care_team') THEN resource ELSE NULL END;
ALTER TABLE bronze.fhir_observations ALTER COLUMN resource
    SET MASK CASE WHEN is_member('care_team') THEN resource ELSE NULL END;
ALTER TABLE bronze.hl7_observations ALTER COLUMN patient_name
    SET MASK CASE WHEN is_member('care_team') THEN patient_name ELSE '' END;
ALTER TABLE bronze.hl7_observations ALTER COLUMN raw
    SET MASK CASE WHEN is_member('care_team') THEN raw ELSE '' END;
ALTER TABLE bronze.hl7_adt ALTER COLUMN patient_name
    SET MASK CASE WHEN is_member('care_team') THEN patient_name ELSE '' END;
ALTER TABLE bronze.hl7_adt ALTER COLUMN birth_date
    SET MASK CASE WHEN is_member('care_team') THEN birth_date ELSE '' END;
ALTER TABLE bronze.hl7_adt ALTER COLUMN raw
    SET MASK CASE WHEN is_member('care_team') THEN raw ELSE '' END;
ALTER TABLE bronze.hl7_quarantine ALTER COLUMN raw
    SET MASK CASE WHEN is_member('care_team') THEN raw ELSE '' END;

GRANT USAGE ON SCHEMA silver TO clinician, data_engineer;
GRANT USAGE ON SCHEMA gold TO clinician, data_engineer;
GRANT SELECT ON SCHEMA gold TO clinician;
GRANT SELECT ON TABLE silver.patients TO clinician;
GRANT SELECT ON TABLE silver.readings TO clinician;
GRANT SELECT ON TABLE silver.encounters TO clinician;
GRANT SELECT ON TABLE silver.alerts TO clinician;
GRANT SELECT ON TABLE silver.nursing_observations TO clinician;
GRANT SELECT ON TABLE silver.spo2_targets TO clinician;

GRANT USAGE ON SCHEMA bronze TO data_engineer;
GRANT SELECT, REFRESH ON SCHEMA bronze TO data_engineer;
GRANT SELECT, REFRESH ON SCHEMA silver TO data_engineer;
GRANT SELECT, REFRESH ON SCHEMA gold TO data_engineer;
