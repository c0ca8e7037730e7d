"""A warehouse on Azure Blob Storage (az://), against Azurite, the Azure Storage emulator.

tests/run.sh installs Azurite (npm) and sets AZURITE_BLOB to its `azurite-blob` program; each
test module starts its own Azurite on a free loopback port and stops it at the end.
"""

import os
import subprocess

import pytest
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable

from helpers import MEDLAKE, free_port, lines, loopback_server, run_medlake

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


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
        service.create_container("lake")
        yield endpoint, service


def medlake_az(endpoint, *sql, check=True):
    env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": endpoint}
    return run_medlake("az://lake/warehouse", *sql, env=env, check=check)


def test_a_warehouse_on_azure_blob_storage(azurite):
    endpoint, service = azurite
    medlake_az(
        endpoint,
        "CREATE SCHEMA ehr",
        "CREATE TABLE ehr.patients (id INT NOT NULL, ward VARCHAR)",
        "INSERT INTO ehr.patients VALUES (1, 'icu'), (2, 'er')",
        "INSERT INTO ehr.patients VALUES (3, 'icu')",
        "CREATE TABLE gold.ward_census AS SELECT ward, count(*) AS patients FROM ehr.patients GROUP BY ward",
    )
    # A new process finds everything again; time travel and history work on blobs.
    assert lines(medlake_az(endpoint, "SELECT count(*) FROM ehr.patients VERSION AS OF 1")) == ["count(*)", "2"]
    assert lines(medlake_az(endpoint, "SELECT ward, patients FROM gold.ward_census ORDER BY ward")) == [
        "ward,patients", "er,1", "icu,2"]
    assert lines(medlake_az(endpoint, "SELECT version, operation FROM table_history('ehr.patients') ORDER BY version")) == [
        "version,operation", "0,CREATE TABLE", "1,WRITE", "2,WRITE"]
    schemas = lines(medlake_az(endpoint, "SELECT schema_name FROM information_schema.schemata "
                                         "WHERE schema_name NOT IN ('information_schema', 'pg_catalog') ORDER BY 1"))
    assert schemas == ["schema_name", "bronze", "ehr", "gold", "public", "silver", "system"]

    # A refused write leaves the blobs' table as it was.
    refused = medlake_az(endpoint, "INSERT INTO ehr.patients VALUES (NULL, 'er')", check=False)
    assert refused.returncode == 1
    assert "[23502]" in refused.stderr and "NULL in NOT NULL column 'id'" in refused.stderr
    assert lines(medlake_az(endpoint, "SELECT count(*) FROM ehr.patients")) == ["count(*)", "3"]

    # The tables are plain Delta tables in the container, under <warehouse>/<schema>/<table>/.
    container = service.get_container_client("lake")
    names = [b.name for b in container.list_blobs(name_starts_with="warehouse/ehr/patients/_delta_log/")]
    assert "warehouse/ehr/patients/_delta_log/00000000000000000002.json" in names
    os.environ["AZURITE_BLOB_STORAGE_URL"] = endpoint
    table = DeltaTable(
        "az://lake/warehouse/ehr/patients",
        storage_options={"azure_storage_use_emulator": "true"},
    )
    assert sorted(table.to_pyarrow_dataset().to_table().column("id").to_pylist()) == [1, 2, 3]

    # DROP removes the table's blobs; OPTIMIZE and VACUUM work on blobs.
    medlake_az(endpoint, "DROP TABLE gold.ward_census", "OPTIMIZE ehr.patients",
               "VACUUM ehr.patients RETAIN 0 HOURS FORCE")
    assert list(container.list_blobs(name_starts_with="warehouse/gold/ward_census/")) == []
    data_files = [b.name for b in container.list_blobs(name_starts_with="warehouse/ehr/patients/")
                  if b.name.endswith(".parquet")]
    assert len(data_files) == 1
    assert lines(medlake_az(endpoint, "SELECT count(*) FROM ehr.patients")) == ["count(*)", "3"]


def test_materialized_views_on_azure_blob_storage(azurite):
    endpoint, service = azurite
    medlake_az(
        endpoint,
        "CREATE TABLE bronze.beats (device VARCHAR NOT NULL, hr INT)",
        "INSERT INTO bronze.beats VALUES ('pump-1', 70), ('pump-2', 400)",
        "CREATE MATERIALIZED VIEW silver.beats "
        "CONSTRAINT plausible EXPECT (hr BETWEEN 20 AND 250) ON VIOLATION QUARANTINE "
        "AS SELECT device, hr FROM bronze.beats",
        "CREATE MATERIALIZED VIEW gold.per_device AS "
        "SELECT device, count(*) AS n FROM silver.beats GROUP BY device",
    )
    # Another process appends; the next one refreshes incrementally from the blobs' logs.
    medlake_az(endpoint, "INSERT INTO bronze.beats VALUES ('pump-1', 72), ('pump-3', 500)")
    medlake_az(endpoint, "REFRESH MATERIALIZED VIEW gold.per_device CASCADE")
    assert lines(medlake_az(endpoint, "SELECT device, n FROM gold.per_device ORDER BY device")) == [
        "device,n", "pump-1,2"]
    assert lines(medlake_az(endpoint, "SELECT view, mode, status FROM system.refreshes "
                                      "WHERE trigger <> 'create' ORDER BY finished")) == [
        "view,mode,status", "silver.beats,incremental,succeeded", "gold.per_device,incremental,succeeded"]
    assert lines(medlake_az(endpoint, "SELECT device, hr, _medlake_rules FROM silver.beats_quarantine "
                                      "ORDER BY hr")) == [
        "device,hr,_medlake_rules", "pump-2,400,plausible", "pump-3,500,plausible"]
    # The view and its definition are in the container's Delta log, readable by other readers.
    os.environ["AZURITE_BLOB_STORAGE_URL"] = endpoint
    view = DeltaTable("az://lake/warehouse/silver/beats",
                      storage_options={"azure_storage_use_emulator": "true"})
    assert sorted(view.to_pyarrow_dataset().to_table().column("hr").to_pylist()) == [70, 72]
    assert view.history(1)[0]["medlake"]["view"]["query"] == "SELECT device, hr FROM bronze.beats"


def test_secrets_never_reach_errors_or_logs(azurite):
    endpoint, _ = azurite
    secret = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWstMTIzNDU2Nzg5MA=="
    env = dict(
        os.environ,
        AZURE_STORAGE_USE_EMULATOR="true",
        AZURITE_BLOB_STORAGE_URL=endpoint,
        AZURE_STORAGE_ACCOUNT_NAME=ACCOUNT,
        AZURE_STORAGE_ACCOUNT_KEY=secret,
        MEDLAKE_LOG="trace",
    )
    done = subprocess.run(
        [MEDLAKE, "sql", "--warehouse", "az://lake/other", "-c", "SELECT 1"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 1, done.stdout
    assert "error [" in done.stderr
    assert "403" in done.stderr or "uthoriz" in done.stderr, done.stderr[-2000:]
    for text in (done.stdout, done.stderr):
        assert secret not in text
        assert secret[:20] not in text
