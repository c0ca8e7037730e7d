-- After the load, the indexes a DBA would give this table for these dashboards (medlake has
-- no index: its Delta table is clustered by (day, patient_id) and skipped by its statistics), statistics and the
-- visibility map.
ALTER TABLE gold.patient_daily_vitals ADD PRIMARY KEY (patient_id, day, metric);
CREATE INDEX ON gold.patient_daily_vitals (ward, day);
CREATE INDEX ON gold.patient_daily_vitals (day);
VACUUM ANALYZE gold.patient_daily_vitals;
