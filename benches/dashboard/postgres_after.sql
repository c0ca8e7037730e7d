-- After the load, the indexes a DBA would give this table for these dashboards (medlake has
-- no index: its Delta files are Z-ordered and skipped by their statistics), statistics and the
-- visibility map.
ALTER TABLE gold.patient_daily_vitals ADD PRIMARY KEY (patient_id, day, metric);
CREATE INDEX ON gold.patient_daily_vitals (ward, day);
CREATE INDEX ON gold.patient_daily_vitals (day);
VACUUM ANALYZE gold.patient_daily_vitals;
