-- weight: 15
-- The 20 patient-metrics with the most alerts on a day: the hospital's alert board.
SELECT patient_id, ward, metric, alerts, maximum
FROM gold.patient_daily_vitals
WHERE day = {day} AND alerts > 0
ORDER BY alerts DESC, patient_id, metric
LIMIT 20
