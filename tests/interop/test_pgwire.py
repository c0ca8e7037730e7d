"""`medlake serve`'s Postgres door with real clients: psql, psycopg 3 and pgjdbc, each
logging in with a password over TLS (verify-full against a test certificate authority)."""

import datetime
import decimal
import os
import shutil
import subprocess
import threading

import psycopg
import pytest

from helpers import MedlakeServe, run_medlake, write_tls_files

SEED = [
    """CREATE TABLE bronze.readings (
         device_id VARCHAR NOT NULL, patient_id BIGINT, metric VARCHAR NOT NULL,
         value DOUBLE, ts TIMESTAMP NOT NULL)""",
    """INSERT INTO bronze.readings VALUES
         ('pump-1', 1001, 'heart_rate', 72.0, TIMESTAMP '2026-11-23 10:00:00'),
         ('pump-1', 1001, 'spo2', 97.5, TIMESTAMP '2026-11-23 10:00:00'),
         ('pump-2', 1002, 'heart_rate', 88.0, TIMESTAMP '2026-11-23 10:01:00'),
         ('pump-2', NULL, 'heart_rate', NULL, TIMESTAMP '2026-11-23 10:02:00')""",
    """CREATE MATERIALIZED VIEW gold.device_counts AS
         SELECT device_id, count(*) AS readings FROM bronze.readings GROUP BY device_id""",
]

ALICE = ("alice", "correct horse battery staple")
BOB = ("bob", "an old client's password")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A TLS-only server with a SCRAM user (password from the environment) and an md5 user
    (password from a secret file)."""
    root = tmp_path_factory.mktemp("pgwire")
    warehouse = root / "warehouse"
    run_medlake(warehouse, *SEED)
    write_tls_files(root)
    (root / "bob.secret").write_text(BOB[1] + "\n")
    config = root / "medlake.toml"
    config.write_text(f"""
[[users]]
name = "alice"
password_env = "TEST_ALICE_PASSWORD"

[[users]]
name = "bob"
password_file = "{root / 'bob.secret'}"
method = "md5"

[tls]
cert = "{root / 'server.crt'}"
key = "{root / 'server.key'}"
""")
    serve = MedlakeServe(root, ["--warehouse", str(warehouse), "--config", str(config),
                                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         {"TEST_ALICE_PASSWORD": ALICE[1]}, "postgres on")
    port = serve.port("postgres")
    try:
        yield {"port": port, "ca": str(root / "ca.crt"), "root": root, "log": serve.log_path}
    finally:
        serve.stop()


def conninfo(server, user=ALICE, **extra):
    params = dict(host="localhost", hostaddr="127.0.0.1", port=server["port"], dbname="medlake",
                  user=user[0], password=user[1], sslmode="verify-full",
                  sslrootcert=server["ca"], application_name="pytest")
    params.update(extra)
    return psycopg.conninfo.make_conninfo(**params)


def test_psycopg_logs_in_over_tls_and_sees_postgres(server):
    with psycopg.connect(conninfo(server)) as conn:
        assert conn.info.parameter_status("server_version") == "16.6"
        assert conn.info.parameter_status("integer_datetimes") == "on"
        assert conn.info.parameter_status("standard_conforming_strings") == "on"
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.parameter_status("DateStyle") == "ISO, MDY"
        assert conn.info.parameter_status("TimeZone") == "UTC"
        assert conn.pgconn.ssl_in_use
        assert conn.info.server_version == 160006
        rows = conn.execute(
            "SELECT device_id, readings FROM gold.device_counts ORDER BY device_id").fetchall()
        assert rows == [("pump-1", 2), ("pump-2", 2)]
    with psycopg.connect(conninfo(server, user=BOB)) as conn:
        assert conn.execute("SELECT count(*) FROM bronze.readings").fetchone() == (4,)


def test_wrong_password_and_plaintext_are_refused(server):
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(conninfo(server, user=(ALICE[0], "wrong")))
    assert "password authentication failed" in str(refused.value)
    assert ALICE[1] not in str(refused.value)
    with pytest.raises(psycopg.OperationalError) as plaintext:
        psycopg.connect(conninfo(server, sslmode="disable"))
    assert "TLS" in str(plaintext.value) or "SSL" in str(plaintext.value)
    assert ALICE[1] not in server["log"].read_text()


TYPES = """SELECT
  TIMESTAMP '2026-11-23 10:00:00.123456' AS ts,
  arrow_cast(TIMESTAMP '2026-11-23 10:00:00', 'Timestamp(Microsecond, Some("UTC"))') AS tstz,
  DATE '2026-11-23' AS d,
  CAST(-12.345 AS DECIMAL(10, 3)) AS dec,
  CAST(123456789012.5 AS DECIMAL(20, 2)) AS bigdec,
  true AS b,
  make_array(1, 2, 3) AS ints,
  make_array('a', NULL, 'c') AS texts,
  make_array(1.5, 2.5) AS floats,
  arrow_cast('a large string', 'LargeUtf8') AS big,
  arrow_cast('abc', 'Binary') AS bin,
  CAST(NULL AS INT) AS nothing"""

EXPECTED = (
    datetime.datetime(2026, 11, 23, 10, 0, 0, 123456),
    datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc),
    datetime.date(2026, 11, 23),
    decimal.Decimal("-12.345"),
    decimal.Decimal("123456789012.50"),
    True,
    [1, 2, 3],
    ["a", None, "c"],
    [1.5, 2.5],
    "a large string",
    b"abc",
    None,
)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_reads_every_type(server, binary):
    with psycopg.connect(conninfo(server)) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        with conn.cursor(binary=binary) as cur:
            cur.execute(TYPES)
            row = cur.fetchone()
            assert row == EXPECTED, row
            assert [c.name for c in cur.description][:3] == ["ts", "tstz", "d"]


def test_psycopg_parameters_copy_and_cancel(server):
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT device_id, value FROM bronze.readings WHERE metric = %s AND value > %s "
            "AND ts >= %s ORDER BY value",
            ("heart_rate", 70, datetime.datetime(2026, 11, 23, 10, 0))).fetchall()
        assert rows == [("pump-1", 72.0), ("pump-2", 88.0)]
        # A server-side prepared statement, reused.
        for metric, n in [("spo2", 1), ("heart_rate", 3)]:
            got = conn.execute("SELECT count(*) FROM bronze.readings WHERE metric = %s",
                               (metric,), prepare=True).fetchone()
            assert got == (n,)

        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT device_id, patient_id FROM bronze.readings "
                          "ORDER BY ts, metric) TO STDOUT (FORMAT csv, HEADER)") as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
        assert data.decode() == ("device_id,patient_id\npump-1,1001\npump-1,1001\n"
                                 "pump-2,1002\npump-2,\n")

        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM gold.nope")
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.execute("SELECT nope FROM gold.device_counts")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")

        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT sum(value % 7) FROM range(0, 100000000000) AS t(value)")
        finally:
            timer.cancel()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def psql(server, *commands, user=ALICE, extra_env=None):
    """Runs psql with `-c` commands, as a user typing them would, over verify-full TLS."""
    env = dict(os.environ, PGPASSWORD=user[1], PGSSLMODE="verify-full",
               PGSSLROOTCERT=server["ca"], PGHOSTADDR="127.0.0.1", **(extra_env or {}))
    args = [shutil.which("psql") or "/usr/bin/psql", "-X", "-v", "ON_ERROR_STOP=1",
            "-h", "localhost", "-p", str(server["port"]), "-U", user[0], "-d", "medlake"]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env,
                          cwd=server["root"])
    assert done.returncode == 0, f"psql {commands} failed:\n{done.stderr}"
    return done.stdout


def test_psql_describes_the_warehouse(server):
    tables = psql(server, r"\dt bronze.*")
    assert "bronze" in tables and "readings" in tables and "table" in tables
    described = psql(server, r"\d bronze.readings")
    for column, type_ in [("device_id", "text"), ("patient_id", "bigint"),
                          ("value", "double precision"),
                          ("ts", "timestamp without time zone")]:
        assert any(column in line and type_ in line for line in described.splitlines()), \
            described
    assert "not null" in described
    schemas = psql(server, r"\dn")
    for schema in ["bronze", "silver", "gold"]:
        assert schema in schemas, schemas
    databases = psql(server, r"\l")
    assert "medlake" in databases and "UTF8" in databases
    matviews = psql(server, r"\dm gold.*")
    assert "device_counts" in matviews and "materialized view" in matviews
    views = psql(server, r"\dv system.*")
    assert "materialized_views" in views and "view" in views


def test_psql_expanded_output_and_copy_to_a_file(server):
    expanded = psql(server, r"\x", "SELECT device_id, readings FROM gold.device_counts "
                                   "ORDER BY device_id")
    assert "-[ RECORD 1 ]" in expanded and "device_id | pump-1" in expanded
    out = server["root"] / "counts.csv"
    psql(server, rf"\copy (SELECT device_id, readings FROM gold.device_counts "
                 rf"ORDER BY device_id) to '{out}' csv header")
    assert out.read_text() == "device_id,readings\npump-1,2\npump-2,2\n"
    version = psql(server, "SELECT version()")
    assert "PostgreSQL 16.6" in version


def test_pgjdbc_metadata_as_dbeaver_reads_it(server):
    jar = "/usr/share/java/postgresql.jar"
    assert os.path.exists(jar), "tests/run.sh installs Debian's libpostgresql-jdbc-java"
    source = os.path.join(os.path.dirname(__file__), "jdbc", "Metadata.java")
    url = (f"jdbc:postgresql://localhost:{server['port']}/medlake?ssl=true&sslmode=verify-full"
           f"&sslrootcert={server['ca']}")
    done = subprocess.run(["java", "-cp", jar, source, url, ALICE[0]], capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, MEDLAKE_PASSWORD=ALICE[1]))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "product PostgreSQL 16.6" in out
    for schema in ["bronze", "silver", "gold"]:
        assert f"schema {schema}" in out, out
    assert "table bronze.readings TABLE" in out, out
    assert "table gold.device_counts MATERIALIZED VIEW" in out, out
    assert "column device_id text 12 nullable=NO position=1" in out, out
    assert "column patient_id int8 -5 nullable=YES position=2" in out, out
    assert "column ts timestamp 93 nullable=NO position=5" in out, out
    assert "row pump-1 2 2026-11-23 10:00:00.0" in out, out
    assert "row pump-2 1 2026-11-23 10:01:00.0" in out, out


def test_dml_command_tags_over_every_protocol(server):
    """DELETE, UPDATE and MERGE answer PostgreSQL's command tags with their row counts, over
    the simple and extended protocols, with parameters and server-side prepared statements."""
    with psycopg.connect(conninfo(server), autocommit=True) as conn:
        conn.execute("CREATE TABLE silver.dml_tags (id BIGINT NOT NULL, note VARCHAR)")
        conn.execute("INSERT INTO silver.dml_tags VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
        with conn.cursor() as cur:
            cur.execute("UPDATE silver.dml_tags SET note = upper(note) WHERE id <= 2")
            assert (cur.statusmessage, cur.rowcount) == ("UPDATE 2", 2)
            cur.execute("UPDATE silver.dml_tags SET note = %s WHERE id = %s", ("z", 3))
            assert (cur.statusmessage, cur.rowcount) == ("UPDATE 1", 1)
            cur.execute("DELETE FROM silver.dml_tags WHERE id = %s", (4,), prepare=True)
            assert (cur.statusmessage, cur.rowcount) == ("DELETE 1", 1)
            cur.execute("DELETE FROM silver.dml_tags WHERE id = %s", (4,), prepare=True)
            assert (cur.statusmessage, cur.rowcount) == ("DELETE 0", 0)
            cur.execute("MERGE INTO silver.dml_tags t USING (SELECT 1 AS id UNION ALL SELECT 5) s "
                        "ON t.id = s.id WHEN MATCHED THEN DELETE "
                        "WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, 'new')")
            assert (cur.statusmessage, cur.rowcount) == ("MERGE 2", 2)
            with pytest.raises(psycopg.errors.NotNullViolation):
                cur.execute("UPDATE silver.dml_tags SET id = NULL")
            with pytest.raises(psycopg.errors.WrongObjectType):
                cur.execute("DELETE FROM gold.device_counts")
        rows = conn.execute("SELECT id, note FROM silver.dml_tags ORDER BY id").fetchall()
        assert rows == [(2, "B"), (3, "z"), (5, "new")]
    out = psql(server, "DELETE FROM silver.dml_tags WHERE id = 5",
               "UPDATE silver.dml_tags SET note = 'p'")
    assert out.splitlines() == ["DELETE 1", "UPDATE 2"], out
