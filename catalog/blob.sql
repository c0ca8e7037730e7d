-- Azure Blob Storage (ADLS Gen2) landing zone: batch uploads of readings from devices that
-- cannot push (glucometer docking stations, thermometer exports), DICOM studies exported by
-- the PACS, scanned documents. Secret from the environment: LANDING_KEY.
-- Batch folders are Hive-style: .../batch=20261123T0800/readings.csv names the upload.
CREATE SCHEMA IF NOT EXISTS landing;

CREATE EXTERNAL TABLE IF NOT EXISTS landing.reading_batches_csv (
    device_id VARCHAR, patient_id INT, metric VARCHAR, value DOUBLE, unit VARCHAR,
    taken_at TIMESTAMP)
STORED AS CSV PARTITIONED BY (batch VARCHAR)
LOCATION 'abfss://landing@hospitallake.dfs.core.windows.net/readings/csv/'
OPTIONS ('has_header' 'true', 'azure_storage_account_key' '${LANDING_KEY}');

CREATE EXTERNAL TABLE IF NOT EXISTS landing.reading_batches_parquet (
    device_id VARCHAR, patient_id INT, metric VARCHAR, value DOUBLE, unit VARCHAR,
    taken_at TIMESTAMP)
STORED AS PARQUET PARTITIONED BY (batch VARCHAR)
LOCATION 'abfss://landing@hospitallake.dfs.core.windows.net/readings/parquet/'
OPTIONS ('azure_storage_account_key' '${LANDING_KEY}');

CREATE EXTERNAL TABLE IF NOT EXISTS landing.dicom_studies STORED AS DICOM
LOCATION 'abfss://pacs-export@hospitallake.dfs.core.windows.net/'
OPTIONS ('tags' 'AccessionNumber, InstitutionName', 'azure_storage_account_key' '${LANDING_KEY}');

CREATE EXTERNAL TABLE IF NOT EXISTS landing.documents STORED AS BINARYFILE
LOCATION 'abfss://landing@hospitallake.dfs.core.windows.net/documents/'
OPTIONS ('azure_storage_account_key' '${LANDING_KEY}');
