-- EHR on the hospital's on-premise SQL Server (reached through the integration network).
-- Secrets come from the environment: EHR_USER, EHR_PASSWORD. Host and database: edit below.
-- Each table has a modified-at column kept by the EHR's triggers: bronze extracts incrementally.
CREATE SCHEMA IF NOT EXISTS ehr;

CREATE EXTERNAL TABLE IF NOT EXISTS ehr.patients (
    patient_id INT NOT NULL, mrn VARCHAR, family_name VARCHAR, given_name VARCHAR,
    birth_date DATE, sex VARCHAR, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
OPTIONS ('table' 'dbo.Patients', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

-- The medical-device register (biomedical engineering), with each model's nominal sample rate.
CREATE EXTERNAL TABLE IF NOT EXISTS ehr.devices (
    device_id VARCHAR NOT NULL, kind VARCHAR, manufacturer VARCHAR, model VARCHAR,
    serial_number VARCHAR, sample_rate_hz DOUBLE, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
OPTIONS ('table' 'dbo.Devices', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

-- Which patient a device was attached to, from valid_from until valid_to (NULL: still attached).
CREATE EXTERNAL TABLE IF NOT EXISTS ehr.device_assignments (
    assignment_id BIGINT NOT NULL, device_id VARCHAR NOT NULL, patient_id INT NOT NULL,
    valid_from TIMESTAMP NOT NULL, valid_to TIMESTAMP, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
OPTIONS ('table' 'dbo.DeviceAssignments', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

-- ADT location segments: one row per stay in a ward and bed (a transfer opens a new segment).
CREATE EXTERNAL TABLE IF NOT EXISTS ehr.encounters (
    encounter_id BIGINT NOT NULL, patient_id INT NOT NULL, ward VARCHAR, bed VARCHAR,
    admitted_at TIMESTAMP NOT NULL, discharged_at TIMESTAMP, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
OPTIONS ('table' 'dbo.Encounters', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

-- Nursing observations charted at the bedside (the NEWS2 observation set): the only source
-- of consciousness (ACVPU) and of air or supplemental oxygen. Temperature in degrees Celsius.
CREATE EXTERNAL TABLE IF NOT EXISTS ehr.observations (
    observation_id BIGINT NOT NULL, patient_id INT NOT NULL, observed_at TIMESTAMP NOT NULL,
    respiration_rate DOUBLE, spo2 DOUBLE, on_oxygen BOOLEAN, systolic_bp DOUBLE,
    heart_rate DOUBLE, consciousness VARCHAR, temperature DOUBLE, recorded_by VARCHAR,
    modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
OPTIONS ('table' 'dbo.NursingObservations', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

-- SpO2 target ranges prescribed by a clinician (the oxygen prescription): a target of 88-92 %
-- (hypercapnic respiratory failure) puts the patient on NEWS2's SpO2 scale 2 from flagged_at
-- until ended_at (NULL: still in force). Ending or changing a target updates its row.
CREATE EXTERNAL TABLE IF NOT EXISTS ehr.spo2_targets (
    target_id BIGINT NOT NULL, patient_id INT NOT NULL, target_low DOUBLE, target_high DOUBLE,
    reason VARCHAR, flagged_by VARCHAR, flagged_at TIMESTAMP NOT NULL, ended_at TIMESTAMP,
    modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://ehr-db.hospital.local:1433/EHR'
OPTIONS ('table' 'dbo.OxygenTargets', 'user' '${EHR_USER}', 'password' '${EHR_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');
