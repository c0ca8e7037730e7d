-- weight: 20
-- A ward's daily averages over two weeks: the ward trend chart.
SELECT day, metric, count(*) AS patients, sum(readings) AS readings,
       avg(average) AS average, max(maximum) AS maximum
FROM gold.patient_daily_vitals
WHERE ward = {ward} AND day BETWEEN {fortnight_start} AND {day}
GROUP BY day, metric
ORDER BY day, metric
