-- Bronze: HL7 v2 from device gateways and the ADT feed, over MLLP (`medlake serve --mllp`).
--
-- The door writes these tables itself (it creates them when missing, with exactly these
-- columns); they are declared here so the project applies without the door. A message is
-- acknowledged AA only once its rows are committed; a retry of the same message (same MSH-3,
-- MSH-4, MSH-10 and bytes) is acknowledged without being stored twice. Times are UTC
-- (offset-less HL7 times are read in [clinical] time_zone). `raw` keeps the message as sent
-- (decoded text, segments ended by CR).

-- One row per OBX of an ORU^R01 (IHE PCD-01 from bedside monitors: MDC codes; LOINC too),
-- with its patient (PID-3), visit (PV1) and order (OBR). Codes are kept as sent; the
-- warehouse's metric names come from silver.hl7_metric_codes.
CREATE TABLE IF NOT EXISTS bronze.hl7_observations (
    message_id           VARCHAR   NOT NULL,
    sending_application  VARCHAR   NOT NULL,
    sending_facility     VARCHAR   NOT NULL,
    message_type         VARCHAR   NOT NULL,
    message_time         TIMESTAMP,
    received_at          TIMESTAMP NOT NULL,
    sender               VARCHAR   NOT NULL,
    patient_id           VARCHAR   NOT NULL,
    patient_id_authority VARCHAR   NOT NULL,
    patient_name         VARCHAR   NOT NULL,
    location             VARCHAR   NOT NULL,
    visit_number         VARCHAR   NOT NULL,
    order_id             VARCHAR   NOT NULL,
    order_code           VARCHAR   NOT NULL,
    set_id               BIGINT,
    value_type           VARCHAR   NOT NULL,
    code                 VARCHAR   NOT NULL,
    code_text            VARCHAR   NOT NULL,
    coding_system        VARCHAR   NOT NULL,
    sub_id               VARCHAR   NOT NULL,
    value                VARCHAR   NOT NULL,
    numeric_value        DOUBLE,
    units                VARCHAR   NOT NULL,
    units_system         VARCHAR   NOT NULL,
    reference_range      VARCHAR   NOT NULL,
    abnormal_flags       VARCHAR   NOT NULL,
    status               VARCHAR   NOT NULL,
    observed_at          TIMESTAMP,
    equipment            VARCHAR   NOT NULL,
    raw                  VARCHAR   NOT NULL
);

-- One row per ADT message: admissions (A01), transfers (A02), discharges (A03),
-- registrations (A04), updates (A08), their cancellations (A11, A12, A13) and merges (A40).
CREATE TABLE IF NOT EXISTS bronze.hl7_adt (
    message_id                  VARCHAR   NOT NULL,
    sending_application         VARCHAR   NOT NULL,
    sending_facility            VARCHAR   NOT NULL,
    message_type                VARCHAR   NOT NULL,
    message_time                TIMESTAMP,
    received_at                 TIMESTAMP NOT NULL,
    sender                      VARCHAR   NOT NULL,
    event                       VARCHAR   NOT NULL,
    recorded_at                 TIMESTAMP,
    occurred_at                 TIMESTAMP,
    patient_id                  VARCHAR   NOT NULL,
    patient_id_authority        VARCHAR   NOT NULL,
    patient_name                VARCHAR   NOT NULL,
    birth_date                  VARCHAR   NOT NULL,
    sex                         VARCHAR   NOT NULL,
    patient_class               VARCHAR   NOT NULL,
    location                    VARCHAR   NOT NULL,
    prior_location              VARCHAR   NOT NULL,
    attending                   VARCHAR   NOT NULL,
    visit_number                VARCHAR   NOT NULL,
    admitted_at                 TIMESTAMP,
    discharged_at               TIMESTAMP,
    merged_patient_id           VARCHAR   NOT NULL,
    merged_patient_id_authority VARCHAR   NOT NULL,
    raw                         VARCHAR   NOT NULL
);

-- Messages answered AE or AR, with the reason the sender was given (HL7 table 0357 code).
CREATE TABLE IF NOT EXISTS bronze.hl7_quarantine (
    received_at         TIMESTAMP NOT NULL,
    sender              VARCHAR   NOT NULL,
    peer                VARCHAR   NOT NULL,
    sending_application VARCHAR   NOT NULL,
    sending_facility    VARCHAR   NOT NULL,
    message_id          VARCHAR   NOT NULL,
    message_type        VARCHAR   NOT NULL,
    ack_code            VARCHAR   NOT NULL,
    error_code          BIGINT    NOT NULL,
    reason              VARCHAR   NOT NULL,
    raw                 VARCHAR   NOT NULL
);
