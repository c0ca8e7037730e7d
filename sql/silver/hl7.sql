-- Silver: what HL7 v2 codes mean in this warehouse.
--
-- Observation codes as device gateways send them (OBX-3: IEEE 11073 MDC codes from IHE
-- PCD-01 bedside monitors, LOINC from interface engines), mapped to silver.readings' metric
-- names. The codes stay as sent in bronze.hl7_observations; a code missing here simply does
-- not reach silver.readings (see silver.hl7_unmapped_codes).
CREATE MATERIALIZED VIEW silver.hl7_metric_codes AS
SELECT CAST(coding_system AS VARCHAR) AS coding_system, CAST(code AS VARCHAR) AS code,
       CAST(metric AS VARCHAR) AS metric, CAST(description AS VARCHAR) AS description
FROM (VALUES
    ('MDC', '147842', 'heart_rate', 'MDC_ECG_HEART_RATE'),
    ('MDC', '149530', 'heart_rate', 'MDC_PULS_OXIM_PULS_RATE'),
    ('MDC', '150456', 'spo2', 'MDC_PULS_OXIM_SAT_O2'),
    ('MDC', '151562', 'respiration_rate', 'MDC_RESP_RATE'),
    ('MDC', '150364', 'temperature', 'MDC_TEMP_BODY'),
    ('MDC', '150021', 'systolic_bp', 'MDC_PRESS_BLD_NONINV_SYS'),
    ('MDC', '150022', 'diastolic_bp', 'MDC_PRESS_BLD_NONINV_DIA'),
    ('LN', '8867-4', 'heart_rate', 'Heart rate'),
    ('LN', '59408-5', 'spo2', 'Oxygen saturation in Arterial blood by Pulse oximetry'),
    ('LN', '9279-1', 'respiration_rate', 'Respiratory rate'),
    ('LN', '8310-5', 'temperature', 'Body temperature'),
    ('LN', '8480-6', 'systolic_bp', 'Systolic blood pressure'),
    ('LN', '8462-4', 'diastolic_bp', 'Diastolic blood pressure'),
    ('LN', '2339-0', 'glucose', 'Glucose [Mass/volume] in Blood'),
    ('LN', '15074-8', 'glucose', 'Glucose [Moles/volume] in Blood')
) AS codes (coding_system, code, metric, description);

-- Units (OBX-6) as the warehouse spells them before silver.readings standardises them:
-- MDC unit codes and UCUM. A unit missing here reaches silver.readings as sent, where the
-- standard_unit expectation quarantines it.
CREATE MATERIALIZED VIEW silver.hl7_unit_codes AS
SELECT CAST(units_system AS VARCHAR) AS units_system, CAST(units AS VARCHAR) AS units,
       CAST(unit AS VARCHAR) AS unit
FROM (VALUES
    ('MDC', '262688', '%'),
    ('MDC', '264864', 'bpm'),
    ('MDC', '264928', '/min'),
    ('MDC', '268192', 'degC'),
    ('MDC', '266560', 'degF'),
    ('MDC', '266016', 'mmHg'),
    ('UCUM', '%', '%'),
    ('UCUM', '/min', 'bpm'),
    ('UCUM', '{beats}/min', 'bpm'),
    ('UCUM', '{breaths}/min', '/min'),
    ('UCUM', 'Cel', 'degC'),
    ('UCUM', '[degF]', 'degF'),
    ('UCUM', 'mm[Hg]', 'mmHg'),
    ('UCUM', 'kPa', 'kPa'),
    ('UCUM', 'mg/dL', 'mg/dL'),
    ('UCUM', 'mmol/L', 'mmol/L')
) AS units (units_system, units, unit);

-- Device readings from HL7 v2 ORU^R01 (the fourth channel of silver.readings): final,
-- corrected and preliminary numeric observations (OBX-11 F, C, R; a W — wrong, withdrawn —
-- never) with a mapped code, the device from OBX-18 (the gateway's equipment id), the time of
-- measurement from OBX-14 (else OBR-7, else MSH-7). The patient is PID-3 as sent; one that
-- is not a number is the EHR's business, not a reading's (NULL here: the device's assignment
-- decides, as for any reading).
CREATE MATERIALIZED VIEW silver.hl7_readings REFRESH ON CHANGE AS
SELECT o.equipment AS device_id,
       TRY_CAST(o.patient_id AS INT) AS patient_id,
       c.metric,
       o.numeric_value AS value,
       coalesce(u.unit, o.units) AS unit,
       coalesce(o.observed_at, o.message_time) AS taken_at,
       o.message_id AS _batch,
       o.received_at AS _ingested_at
FROM bronze.hl7_observations AS o
JOIN silver.hl7_metric_codes AS c
    ON c.coding_system = o.coding_system AND c.code = o.code
LEFT JOIN silver.hl7_unit_codes AS u
    ON u.units_system = (CASE WHEN o.units_system = '' THEN 'UCUM' ELSE o.units_system END)
   AND u.units = o.units
WHERE o.status IN ('F', 'C', 'R')
  AND o.value_type IN ('NM', 'SN')
  AND o.numeric_value IS NOT NULL
  AND o.equipment <> ''
  AND coalesce(o.observed_at, o.message_time) IS NOT NULL;

-- Observation codes devices sent that silver.hl7_metric_codes does not map (to add there).
CREATE MATERIALIZED VIEW silver.hl7_unmapped_codes REFRESH EVERY '15 minutes' AS
SELECT o.coding_system, o.code, max(o.code_text) AS code_text, count(*) AS observations,
       max(o.received_at) AS last_received_at
FROM bronze.hl7_observations AS o
LEFT JOIN silver.hl7_metric_codes AS c
    ON c.coding_system = o.coding_system AND c.code = o.code
WHERE c.code IS NULL
GROUP BY o.coding_system, o.code;
