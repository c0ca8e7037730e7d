-- Silver: the EHR as it is now. Bronze keeps every version of a changed row; silver keeps the
-- latest version of each (by modified_at, then by when it arrived).
CREATE MATERIALIZED VIEW silver.patients REFRESH EVERY '15 minutes' AS
SELECT patient_id, mrn, family_name, given_name, birth_date, sex, modified_at
FROM (SELECT *, row_number() OVER (PARTITION BY patient_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.ehr_patients)
WHERE version_rank = 1;

CREATE MATERIALIZED VIEW silver.devices REFRESH EVERY '15 minutes' AS
SELECT device_id, kind, manufacturer, model, serial_number, sample_rate_hz, modified_at
FROM (SELECT *, row_number() OVER (PARTITION BY device_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.ehr_devices)
WHERE version_rank = 1;

CREATE MATERIALIZED VIEW silver.device_assignments REFRESH EVERY '5 minutes' AS
SELECT assignment_id, device_id, patient_id, valid_from, valid_to, modified_at
FROM (SELECT *, row_number() OVER (PARTITION BY assignment_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.ehr_device_assignments)
WHERE version_rank = 1;

-- Encounters from the EHR's tables. (A site whose stays come from its ADT feed instead reads
-- silver.hl7_encounters, in the same columns, here.)
CREATE MATERIALIZED VIEW silver.encounters REFRESH EVERY '5 minutes' AS
SELECT encounter_id, patient_id, ward, bed, admitted_at, discharged_at, modified_at
FROM (SELECT *, row_number() OVER (PARTITION BY encounter_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.ehr_encounters)
WHERE version_rank = 1;

-- Nursing observations (the NEWS2 set charted at the bedside), latest version of each, with
-- the same physiological ranges as device readings and a valid ACVPU code. Failing rows go to
-- silver.nursing_observations_quarantine with the rule they broke.
CREATE MATERIALIZED VIEW silver.nursing_observations REFRESH EVERY '5 minutes'
    CONSTRAINT obs_plausible_respiration_rate
        EXPECT (respiration_rate BETWEEN 4 AND 60) ON VIOLATION QUARANTINE
    CONSTRAINT obs_plausible_spo2 EXPECT (spo2 BETWEEN 50 AND 100) ON VIOLATION QUARANTINE
    CONSTRAINT obs_plausible_systolic_bp
        EXPECT (systolic_bp BETWEEN 50 AND 250) ON VIOLATION QUARANTINE
    CONSTRAINT obs_plausible_heart_rate
        EXPECT (heart_rate BETWEEN 20 AND 250) ON VIOLATION QUARANTINE
    CONSTRAINT obs_plausible_temperature
        EXPECT (temperature BETWEEN 30 AND 43) ON VIOLATION QUARANTINE
    CONSTRAINT obs_known_consciousness
        EXPECT (consciousness IN ('A', 'C', 'V', 'P', 'U')) ON VIOLATION QUARANTINE
AS
SELECT observation_id, patient_id, observed_at, respiration_rate, spo2, on_oxygen, systolic_bp,
       heart_rate, consciousness, temperature, recorded_by, modified_at
FROM (SELECT *, row_number() OVER (PARTITION BY observation_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.ehr_observations)
WHERE version_rank = 1;

-- SpO2 target ranges a clinician prescribed, latest version of each. A target of 88-92 %
-- (hypercapnic respiratory failure: COPD, obesity hypoventilation, neuromuscular disease)
-- puts the patient on NEWS2's SpO2 scale 2 (spo2_scale = 2) from flagged_at until ended_at
-- (NULL: still in force); any other target keeps scale 1, as the RCP chart says. A target
-- without a prescriber or with an impossible range is quarantined: the patient is then scored
-- on scale 1, which scores low saturations higher, never lower.
CREATE MATERIALIZED VIEW silver.spo2_targets REFRESH EVERY '5 minutes'
    CONSTRAINT target_range_plausible
        EXPECT (target_low >= 70 AND target_high <= 100 AND target_low < target_high)
        ON VIOLATION QUARANTINE
    CONSTRAINT target_prescribed_by EXPECT (flagged_by IS NOT NULL) ON VIOLATION QUARANTINE
AS
SELECT target_id, patient_id, target_low, target_high,
       CASE WHEN target_low = 88 AND target_high = 92 THEN 2 ELSE 1 END AS spo2_scale,
       reason, flagged_by, flagged_at, ended_at, modified_at
FROM (SELECT *, row_number() OVER (PARTITION BY target_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.ehr_spo2_targets)
WHERE version_rank = 1;
