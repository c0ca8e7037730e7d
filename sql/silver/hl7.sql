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

-- Bed stays from HL7 v2 ADT, in silver.encounters' columns (the route for sites whose
-- encounters come from the ADT feed rather than the EHR's tables: point silver.encounters at
-- this view instead; both together would count each stay twice). One row per stay in a
-- location of a visit (PV1-19): an admission (A01, A04) or a transfer (A02) begins one, the
-- next transfer or the discharge (A03) ends it. A cancel removes the latest event of its
-- kind at or before it: A11 an admission (A01 or A04, whichever came last), A12 a transfer,
-- A13 a discharge (the stay is then open again); two cancels in a row both hit that latest
-- one (a limit: cancel, resend, cancel is how interfaces do it). A resent event (same visit,
-- event, time and location) counts once. The time of an
-- event is EVN-6 (when it happened), else EVN-2, else MSH-7; the location PV1-3 is
-- point of care^room^bed. encounter_id is negative, from the visit and the stay's start
-- (48 bits of their MD5), so it never meets an EHR id.
CREATE MATERIALIZED VIEW silver.hl7_encounters REFRESH ON CHANGE AS
WITH events AS (
    SELECT DISTINCT visit_number, patient_id, event, location,
           coalesce(occurred_at, recorded_at, message_time) AS at
    FROM bronze.hl7_adt
    WHERE visit_number <> ''
      AND event IN ('A01', 'A02', 'A03', 'A04', 'A11', 'A12', 'A13')
      AND coalesce(occurred_at, recorded_at, message_time) IS NOT NULL
),
classed AS (
    SELECT *, CASE WHEN event IN ('A01', 'A04', 'A11') THEN 'admit'
                   WHEN event IN ('A02', 'A12') THEN 'transfer'
                   ELSE 'discharge' END AS class,
           event IN ('A11', 'A12', 'A13') AS is_cancel
    FROM events
),
cancelled AS (
    SELECT c.visit_number, c.class, max(e.at) AS at
    FROM classed AS c
    JOIN classed AS e
      ON e.visit_number = c.visit_number AND e.class = c.class AND e.at <= c.at
     AND NOT e.is_cancel
    WHERE c.is_cancel
    GROUP BY c.visit_number, c.class, c.at
),
live AS (
    SELECT e.visit_number, e.patient_id, e.event, e.location, e.at
    FROM classed AS e
    LEFT JOIN cancelled AS x
      ON x.visit_number = e.visit_number AND x.class = e.class AND x.at = e.at
    WHERE x.visit_number IS NULL AND NOT e.is_cancel
),
stays AS (
    SELECT visit_number, patient_id, event, location, at AS admitted_at,
           lead(at) OVER (PARTITION BY visit_number ORDER BY at, event) AS discharged_at,
           md5(visit_number || '|' || CAST(at AS VARCHAR)) AS h
    FROM live
)
SELECT -1 - (
         (strpos('0123456789abcdef', substr(h, 1, 1)) - 1) * 17592186044416
       + (strpos('0123456789abcdef', substr(h, 2, 1)) - 1) * 1099511627776
       + (strpos('0123456789abcdef', substr(h, 3, 1)) - 1) * 68719476736
       + (strpos('0123456789abcdef', substr(h, 4, 1)) - 1) * 4294967296
       + (strpos('0123456789abcdef', substr(h, 5, 1)) - 1) * 268435456
       + (strpos('0123456789abcdef', substr(h, 6, 1)) - 1) * 16777216
       + (strpos('0123456789abcdef', substr(h, 7, 1)) - 1) * 1048576
       + (strpos('0123456789abcdef', substr(h, 8, 1)) - 1) * 65536
       + (strpos('0123456789abcdef', substr(h, 9, 1)) - 1) * 4096
       + (strpos('0123456789abcdef', substr(h, 10, 1)) - 1) * 256
       + (strpos('0123456789abcdef', substr(h, 11, 1)) - 1) * 16
       + (strpos('0123456789abcdef', substr(h, 12, 1)) - 1) * 1) AS encounter_id,
       TRY_CAST(patient_id AS INT) AS patient_id,
       nullif(split_part(location, '^', 1), '') AS ward,
       nullif(split_part(location, '^', 3), '') AS bed,
       admitted_at,
       discharged_at,
       visit_number
FROM stays
WHERE event <> 'A03';
