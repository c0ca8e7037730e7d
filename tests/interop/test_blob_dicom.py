"""DICOM files made by another implementation (pydicom's bundled test files) read by medlake's
DICOM blob source from Azurite, and compared with what pydicom reads from the same files.

tests/run.sh installs Azurite (npm) and sets AZURITE_BLOB; this module starts its own Azurite
on a free loopback port. The account key reaches medlake as a `${NAME}` reference.
"""

import os

import pydicom
import pytest
from azure.storage.blob import BlobServiceClient
from pydicom.data import get_testdata_file

from helpers import free_port, lines, loopback_server, run_medlake

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Bundled with pydicom (no download): CT and MR images, an RT plan without pixels, a JPEG 2000 NM.
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"]


@pytest.fixture(scope="module")
def azurite():
    program = os.environ.get("AZURITE_BLOB")
    if not program or not os.path.exists(program):
        pytest.fail(f"AZURITE_BLOB must point at azurite-blob (tests/run.sh installs it); got {program!r}")
    port = free_port()
    args = [program, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
            "--disableTelemetry", "--silent", "--skipApiVersionCheck"]
    with loopback_server(args, port, "Azurite") as endpoint:
        service = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={endpoint}/{ACCOUNT};"
        )
        service.create_container("pacs")
        yield endpoint, service


def text(value):
    return "" if value is None else str(value)


def test_pydicom_files_read_from_azure_blob_storage(azurite, tmp_path):
    endpoint, service = azurite
    container = service.get_container_client("pacs")
    expected = []
    for name in FILES:
        path = get_testdata_file(name)
        assert path, f"pydicom has no bundled {name}"
        with open(path, "rb") as f:
            container.upload_blob(f"export/site=x/{name}", f.read())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows = ds.get("Rows")
        date = text(ds.get("StudyDate"))
        expected.append(",".join([
            f"az://pacs/export/site=x/{name}",
            text(ds.get("PatientID")),
            text(ds.get("PatientName")),
            text(ds.get("Modality")),
            f"{date[:4]}-{date[4:6]}-{date[6:8]}" if date else "",
            text(ds.get("StudyInstanceUID")),
            text(ds.get("SOPInstanceUID")),
            text(rows),
            text(ds.file_meta.TransferSyntaxUID),
            text(ds.get("InstitutionName")),
        ]))
    container.upload_blob("export/site=x/truncated.dcm",
                          open(get_testdata_file("CT_small.dcm"), "rb").read()[:300])

    warehouse = tmp_path / "wh"
    env = {"MEDLAKE_TEST_AZURITE_KEY": KEY}
    options = (f"OPTIONS ('azure_storage_account_name' '{ACCOUNT}', "
               "'azure_storage_account_key' '${MEDLAKE_TEST_AZURITE_KEY}', "
               f"'azure_storage_endpoint' '{endpoint}/{ACCOUNT}', 'azure_allow_http' 'true', "
               "'tags' 'InstitutionName')")
    run_medlake(warehouse, "CREATE SCHEMA landing",
                f"CREATE EXTERNAL TABLE landing.images STORED AS DICOM LOCATION 'az://pacs/export/' {options}",
                env=env)
    found = lines(run_medlake(
        warehouse,
        "SELECT path, patient_id, patient_name, modality, study_date, study_instance_uid, "
        "sop_instance_uid, rows, transfer_syntax_uid, institution_name FROM landing.images "
        "WHERE error IS NULL ORDER BY path",
        env=env))
    assert found[0].startswith("path,patient_id")
    assert sorted(found[1:]) == sorted(expected)

    # A LOCATION naming one blob (no trailing `/`): the table is that file alone.
    run_medlake(warehouse,
                f"CREATE EXTERNAL TABLE landing.one STORED AS DICOM "
                f"LOCATION 'az://pacs/export/site=x/CT_small.dcm' {options}", env=env)
    one = lines(run_medlake(warehouse, "SELECT path, modality, error FROM landing.one", env=env))
    assert one == ["path,modality,error", "az://pacs/export/site=x/CT_small.dcm,CT,"]

    # The truncated file is listed with its error, not a failed scan.
    broken = lines(run_medlake(
        warehouse, "SELECT path, error IS NOT NULL AS failed, modality FROM landing.images "
                   "WHERE error IS NOT NULL", env=env))
    assert broken == ["path,failed,modality", "az://pacs/export/site=x/truncated.dcm,true,"]

    # A bronze view takes the images once; a new upload is taken by the next refresh only.
    run_medlake(warehouse, "CREATE MATERIALIZED VIEW bronze.images AS "
                           "SELECT path, modality, error FROM landing.images", env=env)
    container.upload_blob("export/site=x/second_ct.dcm",
                          open(get_testdata_file("CT_small.dcm"), "rb").read())
    run_medlake(warehouse, "REFRESH MATERIALIZED VIEW bronze.images", env=env)
    assert lines(run_medlake(warehouse, "SELECT count(*) FROM bronze.images", env=env)) == [
        "count(*)", str(len(FILES) + 2)]
    modes = lines(run_medlake(warehouse, "SELECT mode FROM system.refreshes "
                                         "WHERE view = 'bronze.images' ORDER BY finished", env=env))
    assert modes[-1] == "incremental", modes
