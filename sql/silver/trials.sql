-- Silver: trial enrollments (latest version of each) with the trial and the patient.
CREATE MATERIALIZED VIEW silver.trial_enrollments REFRESH EVERY '15 minutes' AS
SELECT en.enrollment_id, en.trial_id, t.title AS trial_title, t.phase, en.patient_id,
       p.mrn, p.birth_date, p.sex, en.arm, en.consented_at, en.withdrawn_at
FROM (SELECT *, row_number() OVER (PARTITION BY enrollment_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.trial_enrollments) AS en
JOIN (SELECT *, row_number() OVER (PARTITION BY trial_id
                                   ORDER BY modified_at DESC, _ingested_at DESC) AS version_rank
      FROM bronze.trials) AS t
    ON t.trial_id = en.trial_id AND t.version_rank = 1
LEFT JOIN silver.patients AS p ON p.patient_id = en.patient_id
WHERE en.version_rank = 1;

-- DICOM studies with the patient they belong to (PatientID in the header is the MRN).
CREATE MATERIALIZED VIEW silver.imaging_studies REFRESH EVERY '15 minutes' AS
SELECT s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid, s.modality,
       s.study_date, s.study_description, s.body_part_examined, s.accession_number,
       s.patient_id AS dicom_patient_id, p.patient_id, s.path, s.size, s.error
FROM bronze.dicom_studies AS s
LEFT JOIN silver.patients AS p ON p.mrn = s.patient_id;
