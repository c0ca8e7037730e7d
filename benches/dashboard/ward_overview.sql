-- weight: 15
-- Every ward on one day: patients, alerts, mean heart rate and SpO2 (the hospital overview).
SELECT ward, count(DISTINCT patient_id) AS patients, sum(alerts) AS alerts,
       avg(CASE WHEN metric = 'heart_rate' THEN average END) AS heart_rate,
       avg(CASE WHEN metric = 'spo2' THEN average END) AS spo2
FROM gold.patient_daily_vitals
WHERE day = {day}
GROUP BY ward
ORDER BY ward
