-- The result every method fetches, the same text on both sides. The check before the timed
-- rounds adds ORDER BY reading_id to compare the two results row by row.
SELECT reading_id, device_id, patient_id, metric, value, taken_at FROM bronze.readings
