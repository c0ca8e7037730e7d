-- Alert rules on patients (evaluated by `medlake serve` after each refresh of their view, over
-- the rows that refresh added or changed; each key and severity fires once; README
-- "Monitoring and alerting"). These are secondary notifications for the ward team, not a
-- medical alarm system: they do not replace the bedside devices' own alarms, and nothing
-- guarantees when (or that) one arrives; a webhook's heartbeat tells its receiver that they
-- still can.
--
-- 'ward-pager' is a webhook of the server's config ([[webhooks]]); 'postgres' notifies
-- clients that ran `LISTEN <rule>`.

-- NEWS2 medium (5-6: urgent review) or high (7+: emergency response), once per patient,
-- hour and risk: an escalation from medium to high within the hour fires again. Patients
-- with a clinician's 88-92 % SpO2 target are scored on SpO2 scale 2 (gold.news2_hourly), so
-- their prescribed saturations do not raise these alerts.
CREATE OR REPLACE ALERT news2_deterioration ON gold.news2_hourly
    WHEN risk IN ('medium', 'high')
    KEY (patient_id, hour)
    SEVERITY risk
    NOTIFY 'ward-pager', 'postgres';

-- A single parameter scoring 3 with a total below 5 (RCP: low-medium, urgent ward-based
-- response).
CREATE OR REPLACE ALERT news2_single_parameter ON gold.news2_hourly
    WHEN risk = 'low-medium'
    KEY (patient_id, hour)
    SEVERITY 'low-medium'
    NOTIFY 'ward-pager', 'postgres';

-- SpO2 below 88 % measured by a device (a validated silver reading, not a nursing entry),
-- once per patient and hour: below every prescribed target, scale 2's 88-92 % included.
CREATE OR REPLACE ALERT spo2_below_88 ON silver.readings
    WHEN metric = 'spo2' AND value < 88
    KEY (patient_id, hour)
    SEVERITY 'high'
    NOTIFY 'ward-pager', 'postgres';
