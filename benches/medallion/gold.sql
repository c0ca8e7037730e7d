-- Gold, the same text for medlake (a materialized view over silver.readings) and DuckDB (over
-- its silver Parquet file): the seed's groupBy("patient_id", to_date("timestamp").alias("date"))
-- .agg({"reading": "avg", "event_id": "count"}), renamed avg_reading and event_count.
SELECT patient_id, CAST(taken_at AS DATE) AS date, avg(reading) AS avg_reading, count(event_id) AS event_count
FROM {silver}
GROUP BY patient_id, CAST(taken_at AS DATE)
