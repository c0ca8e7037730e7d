-- weight: 50
-- One patient's last 7 days, every metric: the patient page of a ward dashboard.
SELECT day, metric, readings, minimum, average, maximum, alerts
FROM gold.patient_daily_vitals
WHERE patient_id = {patient} AND day BETWEEN {week_start} AND {day}
ORDER BY day, metric
