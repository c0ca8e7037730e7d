-- Quickstart stand-in for catalog/ehr.sql: the same tables and columns, as Delta tables that
-- `medlake quickstart` fills with a demo hospital (instead of SQL Server).
CREATE SCHEMA IF NOT EXISTS ehr;
CREATE TABLE IF NOT EXISTS ehr.patients (
    patient_id INT NOT NULL, mrn VARCHAR, family_name VARCHAR, given_name VARCHAR,
    birth_date DATE, sex VARCHAR, modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ehr.devices (
    device_id VARCHAR NOT NULL, kind VARCHAR, manufacturer VARCHAR, model VARCHAR,
    serial_number VARCHAR, sample_rate_hz DOUBLE, modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ehr.device_assignments (
    assignment_id BIGINT NOT NULL, device_id VARCHAR NOT NULL, patient_id INT NOT NULL,
    valid_from TIMESTAMP NOT NULL, valid_to TIMESTAMP, modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ehr.encounters (
    encounter_id BIGINT NOT NULL, patient_id INT NOT NULL, ward VARCHAR, bed VARCHAR,
    admitted_at TIMESTAMP NOT NULL, discharged_at TIMESTAMP, modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ehr.observations (
    observation_id BIGINT NOT NULL, patient_id INT NOT NULL, observed_at TIMESTAMP NOT NULL,
    respiration_rate DOUBLE, spo2 DOUBLE, on_oxygen BOOLEAN, systolic_bp DOUBLE,
    heart_rate DOUBLE, consciousness VARCHAR, temperature DOUBLE, recorded_by VARCHAR,
    modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ehr.spo2_targets (
    target_id BIGINT NOT NULL, patient_id INT NOT NULL, target_low DOUBLE, target_high DOUBLE,
    reason VARCHAR, flagged_by VARCHAR, flagged_at TIMESTAMP NOT NULL, ended_at TIMESTAMP,
    modified_at TIMESTAMP);
