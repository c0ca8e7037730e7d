"""A warehouse on S3 (s3://), against moto's S3 server started on a free loopback port."""

import os
import sys

import boto3
import pytest
from deltalake import DeltaTable

from helpers import free_port, lines, loopback_server, run_medlake

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    with loopback_server([moto, "-H", "127.0.0.1", "-p", str(port)], port, "moto_server") as endpoint:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="lake")
        yield endpoint, client


def medlake_s3(endpoint, *sql, check=True):
    env = {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true", **CREDENTIALS}
    return run_medlake("s3://lake/warehouse", *sql, env=env, check=check)


def test_a_warehouse_on_s3(s3):
    endpoint, client = s3
    medlake_s3(
        endpoint,
        "CREATE TABLE bronze.alerts (id INT NOT NULL, severity VARCHAR)",
        "INSERT INTO bronze.alerts VALUES (1, 'low'), (2, 'high')",
        "INSERT INTO bronze.alerts VALUES (3, 'critical')",
    )
    assert lines(medlake_s3(endpoint, "SELECT id FROM bronze.alerts VERSION AS OF 1 ORDER BY id")) == ["id", "1", "2"]
    assert lines(medlake_s3(endpoint, "SELECT count(*) FROM bronze.alerts")) == ["count(*)", "3"]
    refused = medlake_s3(endpoint, "INSERT INTO bronze.alerts VALUES (NULL, 'x')", check=False)
    assert refused.returncode == 1 and "[23502]" in refused.stderr
    assert lines(medlake_s3(endpoint, "SELECT max(version) AS v FROM table_history('bronze.alerts')")) == [
        "v", "2"]

    keys = [o["Key"] for o in client.list_objects_v2(Bucket="lake", Prefix="warehouse/bronze/alerts/_delta_log/")["Contents"]]
    assert "warehouse/bronze/alerts/_delta_log/00000000000000000002.json" in keys
    table = DeltaTable(
        "s3://lake/warehouse/bronze/alerts",
        storage_options={"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", **CREDENTIALS},
    )
    assert sorted(table.to_pyarrow_dataset().to_table().column("id").to_pylist()) == [1, 2, 3]

    medlake_s3(endpoint, "DROP TABLE bronze.alerts")
    assert client.list_objects_v2(Bucket="lake", Prefix="warehouse/bronze/alerts/").get("KeyCount") == 0
