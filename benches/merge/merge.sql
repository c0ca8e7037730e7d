MERGE INTO {target} AS t USING {source} AS u ON t.encounter_id = u.encounter_id
WHEN MATCHED THEN UPDATE SET ward = u.ward, score = u.score, updated_at = u.updated_at
WHEN NOT MATCHED THEN INSERT (encounter_id, patient_id, ward, score, updated_at)
    VALUES (u.encounter_id, u.patient_id, u.ward, u.score, u.updated_at)
