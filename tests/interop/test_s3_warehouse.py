"""A warehouse on S3 (s3://), against moto's S3 server started on a free loopback port."""

import os
import socket
import subprocess
import sys
import time

import boto3
import pytest
from deltalake import DeltaTable

from test_delta_interop import MEDLAKE

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("moto_server did not start")
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="lake")
        yield endpoint, client
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def medlake_s3(endpoint, *sql, check=True):
    env = dict(os.environ, AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true", **CREDENTIALS)
    args = [MEDLAKE, "sql", "--warehouse", "s3://lake/warehouse", "--format", "csv"]
    for statement in sql:
        args += ["-c", statement]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert done.returncode == 0, f"medlake failed: {done.stderr}"
    return done


def lines(done):
    return done.stdout.strip().splitlines()


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
