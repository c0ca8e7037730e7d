-- A gold table like sql/gold/patient_daily_vitals: per patient, day and metric the count,
-- minimum, average and maximum of the readings and the alerts raised; {patients} patients on 20
-- wards over {days} days from 2026-08-01, five metrics. Generated once by DuckDB, in the order a
-- daily refresh appends it (by day, then patient).
WITH metrics(metric, k, base, spread) AS (
    VALUES ('heart_rate', 0, 78.0, 40.0), ('spo2', 1, 96.0, 6.0), ('respiration_rate', 2, 16.0, 8.0),
           ('temperature', 3, 36.9, 1.5), ('systolic_bp', 4, 125.0, 40.0)
), cells AS (
    SELECT p, d, metric, base, spread, (p * 7919 + d * 104729 + k * 31) % 1000 AS x
    FROM range({patients}) AS a(p), range({days}) AS b(d), metrics
)
SELECT CAST(p AS INTEGER) AS patient_id,
       'ward-' || lpad(CAST(p % 20 AS VARCHAR), 2, '0') AS ward,
       DATE '2026-08-01' + CAST(d AS INTEGER) AS day,
       metric,
       CAST(600 + x * 7 % 900 AS BIGINT) AS readings,
       base + (x - 500) * spread / 1000 - (x % 37) * spread / 100 AS minimum,
       base + (x - 500) * spread / 1000 AS average,
       base + (x - 500) * spread / 1000 + (x % 41) * spread / 100 AS maximum,
       CAST(CASE WHEN x >= 950 THEN x % 5 + 1 ELSE 0 END AS INTEGER) AS alerts
FROM cells
ORDER BY d, p, metric
