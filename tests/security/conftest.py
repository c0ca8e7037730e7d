"""The shared server of the security suite: every principal of issue 20's model, TLS on every
door, one landing folder sources may read, two ingest tokens. One server for the whole session
(tests that must change its configuration start their own)."""

import os

import pytest

from attack import SECRET_ENV, Server, users_toml


def make_landing(root):
    """root/landing: Parquet files an external table may read, a symlink to /etc and a symlinked
    file to /etc/passwd (which no table may read); root/landing-evil: a sibling whose name starts
    with the allowed folder's."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    landing = root / "landing"
    (landing / "labs").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2, 3], "result": [1.5, 2.5, 3.5]}),
                   landing / "labs" / "part-0.parquet")
    os.symlink("/etc", landing / "etc_link")
    (landing / "csvdir").mkdir()
    (landing / "csvdir" / "ok.csv").write_text("name,count\nok,1\n")
    os.symlink("/etc/passwd", landing / "csvdir" / "passwd.csv")
    evil = root / "landing-evil"
    evil.mkdir()
    pq.write_table(pa.table({"id": [666]}), evil / "part-0.parquet")
    return landing


def main_config(root, landing, allowed_hosts="[]"):
    return users_toml() + f"""
[sources]
allowed_paths = ["{landing}"]
allowed_hosts = {allowed_hosts}

[[ingest_tokens]]
name = "gw"
token_env = "T_GW"
tables = ["bronze.readings"]

[[ingest_tokens]]
name = "gw2"
token_env = "T_GW2"
tables = ["bronze.readings"]

[flight]
max_parameter_rows = 10000
max_prepared_per_user = 256

[postgres]
max_connections = 512
"""


@pytest.fixture(scope="session")
def main(tmp_path_factory):
    root = tmp_path_factory.mktemp("main")
    landing = make_landing(root)
    server = Server(root, main_config(root, landing))
    server.landing = landing
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def secret_values():
    return dict(SECRET_ENV)
