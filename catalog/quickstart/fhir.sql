-- Quickstart stand-in for catalog/fhir.sql (the EHR's FHIR Bulk Data export): Delta tables
-- with the FHIR source's columns, filled by the quickstart with FHIR resources made from its
-- EHR tables (Patients, and one vital-signs Observation per charted measurement).
CREATE SCHEMA IF NOT EXISTS fhir;
CREATE TABLE IF NOT EXISTS fhir.patients (
    resource_type VARCHAR NOT NULL, id VARCHAR NOT NULL, last_updated TIMESTAMP,
    deleted BOOLEAN NOT NULL, resource VARCHAR, transaction_time TIMESTAMP);
CREATE TABLE IF NOT EXISTS fhir.observations (
    resource_type VARCHAR NOT NULL, id VARCHAR NOT NULL, last_updated TIMESTAMP,
    deleted BOOLEAN NOT NULL, resource VARCHAR, transaction_time TIMESTAMP);
