-- Bronze: imaging and documents from the landing zone (new files only at each refresh).
-- DICOM: the header's attributes (never the pixels); documents: the file list, content left
-- in the lake (select landing.documents.content to read one), with the MRN their name starts
-- with (`MRN0000042_discharge_letter.pdf`), so that an erasure finds them.
CREATE MATERIALIZED VIEW bronze.dicom_studies REFRESH EVERY '15 minutes'
    FRESHNESS WARN AFTER '1 hour' ERROR AFTER '4 hours' AS
SELECT *, 'blob:pacs-export' AS _source, path AS _batch, modified AS _ingested_at
FROM landing.dicom_studies;

CREATE MATERIALIZED VIEW bronze.documents REFRESH EVERY '15 minutes'
    FRESHNESS WARN AFTER '1 hour' ERROR AFTER '4 hours' AS
SELECT path, size, modified, content_type,
       regexp_match(path, '(MRN[0-9]+)_[^/]*$')[1] AS mrn,
       'blob:documents' AS _source, path AS _batch, modified AS _ingested_at
FROM landing.documents;
