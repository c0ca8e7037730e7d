-- Quickstart stand-in for catalog/trials.sql (Azure SQL): Delta tables.
CREATE SCHEMA IF NOT EXISTS trials;
CREATE TABLE IF NOT EXISTS trials.trials (
    trial_id VARCHAR NOT NULL, title VARCHAR, phase VARCHAR, sponsor VARCHAR, status VARCHAR,
    start_date DATE, modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS trials.enrollments (
    enrollment_id BIGINT NOT NULL, trial_id VARCHAR NOT NULL, patient_id INT NOT NULL,
    arm VARCHAR, consented_at TIMESTAMP NOT NULL, withdrawn_at TIMESTAMP, modified_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS trials.research_logs (
    log_id BIGINT NOT NULL, trial_id VARCHAR NOT NULL, patient_id INT, logged_at TIMESTAMP NOT NULL,
    category VARCHAR, entry VARCHAR, modified_at TIMESTAMP);
