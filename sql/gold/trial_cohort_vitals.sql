-- Gold: vital signs of each trial's cohort, per arm, day and metric, counting only readings
-- taken while the patient was enrolled (consented, not yet withdrawn). Days are the
-- hospital's (local_date(): the server's [clinical] time_zone, UTC by default).
CREATE MATERIALIZED VIEW gold.trial_cohort_vitals REFRESH EVERY '15 minutes' AS
SELECT en.trial_id, en.trial_title, en.arm,
       local_date(r.taken_at) AS day,
       r.metric, r.unit,
       count(DISTINCT r.patient_id) AS patients,
       count(*) AS readings,
       min(r.value) AS minimum,
       round(avg(r.value), 1) AS average,
       max(r.value) AS maximum
FROM silver.trial_enrollments AS en
JOIN silver.readings AS r
    ON r.patient_id = en.patient_id
   AND r.taken_at >= en.consented_at
   AND (en.withdrawn_at IS NULL OR r.taken_at < en.withdrawn_at)
GROUP BY en.trial_id, en.trial_title, en.arm, local_date(r.taken_at), r.metric, r.unit;
