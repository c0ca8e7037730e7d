-- The quickstart's stand-in ADT history: run after the demo hospital filled ehr.encounters,
-- it writes what an ADT interface would have sent for those stays into bronze.hl7_adt (as the
-- MLLP door stores it): an A01 when a patient's first stay began, an A02 for each later stay,
-- an A03 when the last one ended. Location PV1-3 is ward^^bed, the visit number the first
-- stay's id. sql/silver/hl7.sql turns them back into stays (silver.hl7_encounters).
INSERT INTO bronze.hl7_adt
SELECT concat('adt-', CAST(encounter_id AS VARCHAR), '-', event) AS message_id,
       'EHR-ADT' AS sending_application, 'HOSPITAL' AS sending_facility,
       concat('ADT^', event) AS message_type, at AS message_time, at AS received_at,
       'quickstart' AS sender, event, at AS recorded_at, at AS occurred_at,
       CAST(patient_id AS VARCHAR) AS patient_id, 'HOSPITAL' AS patient_id_authority,
       '' AS patient_name, '' AS birth_date, '' AS sex, 'I' AS patient_class,
       concat(coalesce(ward, ''), '^^', coalesce(bed, '')) AS location, '' AS prior_location,
       '' AS attending, visit_number,
       CASE WHEN event = 'A03' THEN NULL ELSE at END AS admitted_at,
       CASE WHEN event = 'A03' THEN at END AS discharged_at,
       '' AS merged_patient_id, '' AS merged_patient_id_authority,
       concat('MSH|^~\&|EHR-ADT|HOSPITAL|||||ADT^', event) AS raw
FROM (
    SELECT encounter_id, patient_id, ward, bed, visit_number,
           CASE WHEN stay = 1 THEN 'A01' ELSE 'A02' END AS event, admitted_at AS at
    FROM (SELECT *, row_number() OVER (PARTITION BY patient_id ORDER BY admitted_at) AS stay,
                 concat('V', CAST(min(encounter_id) OVER (PARTITION BY patient_id) AS VARCHAR)) AS visit_number
          FROM ehr.encounters)
    UNION ALL
    SELECT encounter_id, patient_id, ward, bed, visit_number, 'A03', discharged_at
    FROM (SELECT *, row_number() OVER (PARTITION BY patient_id ORDER BY admitted_at DESC) AS last,
                 concat('V', CAST(min(encounter_id) OVER (PARTITION BY patient_id) AS VARCHAR)) AS visit_number
          FROM ehr.encounters)
    WHERE last = 1 AND discharged_at IS NOT NULL
) AS events;
