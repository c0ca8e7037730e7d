-- Quickstart stand-in for catalog/blob.sql: the same blob connector over a local folder
-- (`medlake quickstart` writes {{landing}} as the absolute path of DIR/landing).
CREATE SCHEMA IF NOT EXISTS landing;
CREATE EXTERNAL TABLE IF NOT EXISTS landing.reading_batches_csv (
    device_id VARCHAR, patient_id INT, metric VARCHAR, value DOUBLE, unit VARCHAR,
    taken_at TIMESTAMP)
STORED AS CSV PARTITIONED BY (batch VARCHAR) LOCATION '{{landing}}/readings/csv/'
OPTIONS ('has_header' 'true');
CREATE EXTERNAL TABLE IF NOT EXISTS landing.reading_batches_parquet (
    device_id VARCHAR, patient_id INT, metric VARCHAR, value DOUBLE, unit VARCHAR,
    taken_at TIMESTAMP)
STORED AS PARQUET PARTITIONED BY (batch VARCHAR) LOCATION '{{landing}}/readings/parquet/';
CREATE EXTERNAL TABLE IF NOT EXISTS landing.dicom_studies STORED AS DICOM
LOCATION '{{landing}}/pacs-export/' OPTIONS ('tags' 'AccessionNumber, InstitutionName');
CREATE EXTERNAL TABLE IF NOT EXISTS landing.documents STORED AS BINARYFILE
LOCATION '{{landing}}/documents/';
