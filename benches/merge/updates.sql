-- Round {round}'s change set: {updates} rows, nine in ten an existing encounter anywhere in the
-- key space (a new score and ward), one in ten a new encounter above the table's keys.
CREATE TABLE bench.updates_{round} AS
SELECT CASE WHEN value % 10 = 0 THEN {rows} + {round} * {updates} + value
            ELSE ((value * 104729 + {round} * 15485863) % {rows}) + 1 END AS encounter_id,
       CAST(value % 20000 AS BIGINT) AS patient_id,
       concat('ward-', CAST((value + {round}) % 40 AS VARCHAR)) AS ward,
       CAST((value * 31 + {round}) % 1000 AS DOUBLE) / 10.0 AS score,
       to_timestamp_seconds(1764547200 + {round} * 100000 + value) AS updated_at
FROM generate_series(1, {updates}) AS t(value);
