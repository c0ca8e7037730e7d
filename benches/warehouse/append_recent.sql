-- The time series of `append.sql` as they arrive in a live hospital: instead of a copy of every
-- hundredth row (spread over the whole history), the newest {shift} seconds of each series
-- (about one percent of the quickstart's hours) again, {shift} seconds later, after
-- everything the warehouse holds. Read by `python benches/run.py warehouse --recent`, which
-- runs these in place of append.sql's statements for the same tables ({shift} filled in).
INSERT INTO bronze.readings_push
SELECT device_id, patient_id, metric, value, unit, taken_at + INTERVAL '{shift} seconds'
FROM bronze.readings_push
WHERE taken_at > (SELECT max(taken_at) FROM bronze.readings_push) - INTERVAL '{shift} seconds';
INSERT INTO telemetry.device_cloud
SELECT concat(reading_id, '-2'), device_id, patient_id, metric, value, unit,
       taken_at + INTERVAL '{shift} seconds', received_at + INTERVAL '{shift} seconds'
FROM telemetry.device_cloud
WHERE taken_at > (SELECT max(taken_at) FROM telemetry.device_cloud) - INTERVAL '{shift} seconds';
INSERT INTO bronze.hl7_observations
SELECT concat(message_id, '-next'), sending_application, sending_facility, message_type,
       message_time + INTERVAL '{shift} seconds', received_at + INTERVAL '{shift} seconds', sender,
       patient_id, patient_id_authority, patient_name, location, visit_number, order_id,
       order_code, set_id, value_type, code, code_text, coding_system, sub_id, value,
       numeric_value, units, units_system, reference_range, abnormal_flags, status,
       observed_at + INTERVAL '{shift} seconds', equipment, raw
FROM bronze.hl7_observations
WHERE received_at > (SELECT max(received_at) FROM bronze.hl7_observations) - INTERVAL '{shift} seconds';
INSERT INTO ehr.observations
SELECT observation_id + 1000000000, patient_id, observed_at + INTERVAL '{shift} seconds', respiration_rate,
       spo2, on_oxygen, systolic_bp, heart_rate, consciousness, temperature, recorded_by,
       CAST(now() AS TIMESTAMP)
FROM ehr.observations
WHERE observed_at > (SELECT max(observed_at) FROM ehr.observations) - INTERVAL '{shift} seconds';
INSERT INTO events.device_events
SELECT concat(id, '-2'), device_id, event_type, battery_pct, detail,
       occurred_at + INTERVAL '{shift} seconds', _ts + 1000000
FROM events.device_events
WHERE occurred_at > (SELECT max(occurred_at) FROM events.device_events) - INTERVAL '{shift} seconds';
