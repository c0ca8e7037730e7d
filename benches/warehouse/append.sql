-- One percent more in every stand-in source of the quickstart's reference warehouse (at least
-- one row each): new versions of existing rows where the source updates rows in place (the
-- EHR, the trial database, Cosmos documents), new rows where it appends (readings, logs).
-- Every hundredth row of each source is copied (row_number() % 100 = 1). Read by the
-- `warehouse` benchmark (benches/warehouse.py) and by the CLI test
-- every_view_refreshes_incrementally_after_one_percent_more_in_every_source.
INSERT INTO ehr.patients
SELECT patient_id, mrn, family_name, 'Corrected', birth_date, sex, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM ehr.patients) WHERE n % 100 = 1;
INSERT INTO ehr.devices
SELECT device_id, kind, manufacturer, model, serial_number, sample_rate_hz, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM ehr.devices) WHERE n % 100 = 1;
INSERT INTO ehr.device_assignments
SELECT assignment_id, device_id, patient_id, valid_from, valid_to, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER (ORDER BY assignment_id DESC) AS n FROM ehr.device_assignments) WHERE n % 100 = 1;
INSERT INTO ehr.encounters
SELECT encounter_id, patient_id, ward, bed, admitted_at, discharged_at, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER (ORDER BY encounter_id DESC) AS n FROM ehr.encounters) WHERE n % 100 = 1;
INSERT INTO ehr.observations
SELECT observation_id + 1000000000, patient_id, observed_at + INTERVAL '1 minute', respiration_rate, spo2,
       on_oxygen, systolic_bp, heart_rate, consciousness, temperature, recorded_by, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM ehr.observations) WHERE n % 100 = 1;
INSERT INTO events.alerts
SELECT id, device_id, patient_id, alert_type, severity, message, raised_at, raised_at + INTERVAL '2 minutes',
       'nurse.on.duty', _ts + 1000000
FROM (SELECT *, row_number() OVER () AS n FROM events.alerts) WHERE n % 100 = 1;
INSERT INTO events.device_events
SELECT concat(id, '-2'), device_id, event_type, battery_pct, detail, occurred_at + INTERVAL '1 minute', _ts + 1000000
FROM (SELECT *, row_number() OVER () AS n FROM events.device_events) WHERE n % 100 = 1;
INSERT INTO telemetry.device_cloud
SELECT concat(reading_id, '-2'), device_id, patient_id, metric, value, unit, taken_at + INTERVAL '1 second',
       CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER (ORDER BY received_at DESC) AS n FROM telemetry.device_cloud) WHERE n % 100 = 1;
INSERT INTO trials.trials
SELECT trial_id, title, phase, sponsor, status, start_date, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM trials.trials) WHERE n % 100 = 1;
INSERT INTO trials.enrollments
SELECT enrollment_id, trial_id, patient_id, arm, consented_at, withdrawn_at, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM trials.enrollments) WHERE n % 100 = 1;
INSERT INTO trials.research_logs
SELECT log_id + 1000000000, trial_id, patient_id, logged_at, category, entry, CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM trials.research_logs) WHERE n % 100 = 1;
INSERT INTO bronze.readings_push
SELECT device_id, patient_id, metric, value, unit, taken_at + INTERVAL '1 second'
FROM (SELECT *, row_number() OVER (ORDER BY taken_at DESC) AS n FROM bronze.readings_push) WHERE n % 100 = 1;
INSERT INTO bronze.hl7_observations
SELECT concat(message_id, '-next'), sending_application, sending_facility, message_type,
       message_time + INTERVAL '1 second', received_at + INTERVAL '1 second', sender, patient_id,
       patient_id_authority, patient_name, location, visit_number, order_id, order_code, set_id,
       value_type, code, code_text, coding_system, sub_id, value, numeric_value, units,
       units_system, reference_range, abnormal_flags, status, observed_at + INTERVAL '1 second',
       equipment, raw
FROM (SELECT *, row_number() OVER (ORDER BY received_at DESC) AS n FROM bronze.hl7_observations)
WHERE n % 100 = 1;
INSERT INTO ehr.spo2_targets
SELECT target_id, patient_id, target_low, target_high, reason, flagged_by, flagged_at, ended_at,
       CAST(now() AS TIMESTAMP)
FROM (SELECT *, row_number() OVER () AS n FROM ehr.spo2_targets) WHERE n % 100 = 1;
-- HL7 v2 ADT: every hundredth event sent again a second later (a new event of the same visit).
INSERT INTO bronze.hl7_adt
SELECT concat(message_id, '-next'), sending_application, sending_facility, message_type,
       message_time + INTERVAL '1 second', received_at + INTERVAL '1 second', sender, event,
       recorded_at + INTERVAL '1 second', occurred_at + INTERVAL '1 second', patient_id,
       patient_id_authority, patient_name, birth_date, sex, patient_class, location,
       prior_location, attending, visit_number, admitted_at, discharged_at, merged_patient_id,
       merged_patient_id_authority, raw
FROM (SELECT *, row_number() OVER (ORDER BY received_at DESC) AS n FROM bronze.hl7_adt)
WHERE n % 100 = 1;
-- FHIR: a new version of every hundredth Patient and Observation (lastUpdated a second later).
INSERT INTO fhir.patients
SELECT resource_type, id, last_updated + INTERVAL '1 second', deleted,
       replace(resource, '"active":true', '"active":false'), transaction_time
FROM (SELECT *, row_number() OVER (ORDER BY id) AS n FROM fhir.patients) WHERE n % 100 = 1;
INSERT INTO fhir.observations
SELECT resource_type, id, last_updated + INTERVAL '1 second', deleted,
       replace(resource, '"status":"final"', '"status":"amended"'), transaction_time
FROM (SELECT *, row_number() OVER (ORDER BY id) AS n FROM fhir.observations) WHERE n % 100 = 1;
