-- Clinical trials and research logs on Azure SQL Database (TLS required, Azure AD token or a
-- SQL login). Secrets from the environment: TRIALS_USER, TRIALS_PASSWORD.
CREATE SCHEMA IF NOT EXISTS trials;

CREATE EXTERNAL TABLE IF NOT EXISTS trials.trials (
    trial_id VARCHAR NOT NULL, title VARCHAR, phase VARCHAR, sponsor VARCHAR, status VARCHAR,
    start_date DATE, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://hospital-research.database.windows.net:1433/Trials'
OPTIONS ('table' 'dbo.Trials', 'user' '${TRIALS_USER}', 'password' '${TRIALS_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

CREATE EXTERNAL TABLE IF NOT EXISTS trials.enrollments (
    enrollment_id BIGINT NOT NULL, trial_id VARCHAR NOT NULL, patient_id INT NOT NULL,
    arm VARCHAR, consented_at TIMESTAMP NOT NULL, withdrawn_at TIMESTAMP, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://hospital-research.database.windows.net:1433/Trials'
OPTIONS ('table' 'dbo.Enrollments', 'user' '${TRIALS_USER}', 'password' '${TRIALS_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');

CREATE EXTERNAL TABLE IF NOT EXISTS trials.research_logs (
    log_id BIGINT NOT NULL, trial_id VARCHAR NOT NULL, patient_id INT, logged_at TIMESTAMP NOT NULL,
    category VARCHAR, entry VARCHAR, modified_at TIMESTAMP)
STORED AS SQLSERVER LOCATION 'sqlserver://hospital-research.database.windows.net:1433/Trials'
OPTIONS ('table' 'dbo.ResearchLogs', 'user' '${TRIALS_USER}', 'password' '${TRIALS_PASSWORD}',
         'encrypt' 'true', 'watermark' 'modified_at');
