"""The Postgres door writes every value as PostgreSQL 15 does: the same query against medlake
and a real PostgreSQL 15 must give the same column types and the same bytes, in text and in
binary format (what psql shows, what drivers parse)."""

import psycopg
import pytest

from helpers import MedlakeServe, postgres15, run_medlake, write_tls_files

# One value per query, written the same way for both servers.
EXPRESSIONS = [
    "CAST(149 AS DOUBLE PRECISION)",
    "CAST(0.1 AS DOUBLE PRECISION)",
    "CAST('-2.5' AS DOUBLE PRECISION)",
    "CAST('1e15' AS DOUBLE PRECISION)",
    "CAST('1e14' AS DOUBLE PRECISION)",
    "CAST('123456789012345.6' AS DOUBLE PRECISION)",
    "CAST('0.0001' AS DOUBLE PRECISION)",
    "CAST('0.00001' AS DOUBLE PRECISION)",
    "CAST('1.5e300' AS DOUBLE PRECISION)",
    "CAST('0.30000000000000004' AS DOUBLE PRECISION)",
    "CAST('NaN' AS DOUBLE PRECISION)",
    "CAST('-Infinity' AS DOUBLE PRECISION)",
    "CAST('0.1' AS REAL)",
    "CAST('1e6' AS REAL)",
    "CAST('123456' AS REAL)",
    "CAST('3.14159' AS REAL)",
    "CAST('12.5' AS NUMERIC(10,2))",
    "CAST('-0.005' AS NUMERIC(10,3))",
    "CAST('12345678.9' AS NUMERIC(20,4))",
    "CAST('0' AS NUMERIC(5,2))",
    "CAST(42 AS SMALLINT)",
    "CAST(-7 AS INTEGER)",
    "CAST(9007199254740993 AS BIGINT)",
    "true",
    "false",
    "CAST('héllo, wörld' AS TEXT)",
    "DATE '2026-11-23'",
    "DATE '9999-12-31'",
    "TIMESTAMP '2026-11-23 10:00:00'",
    "TIMESTAMP '2026-11-23 10:00:00.5'",
    "TIMESTAMP '2026-11-23 10:00:00.123456'",
    # DataFusion 55 types `TIMESTAMP WITH TIME ZONE` by its session time zone, which medlake
    # leaves unset (setting it breaks to_timestamp_micros in Delta writes): medlake writes a
    # UTC timestamp as arrow_cast does.
    ("arrow_cast('2026-11-23T10:00:00Z', 'Timestamp(Microsecond, Some(\"UTC\"))')",
     "CAST('2026-11-23 10:00:00+00' AS TIMESTAMP WITH TIME ZONE)"),
    "TIME '12:34:56.5'",
    "TIME '00:00:00'",
    "INTERVAL '1 year 2 months 3 days 4 hours 5 minutes 6.5 seconds'",
    "INTERVAL '-1 year 2 days'",
    "INTERVAL '100 hours'",
    "INTERVAL '0 seconds'",
    "decode('0102ff', 'hex')",
    "ARRAY[CAST(1 AS INTEGER), CAST(NULL AS INTEGER), CAST(3 AS INTEGER)]",
    "ARRAY['a', 'b c', '', 'NULL', 'q\"uote', 'back\\slash']",
    "ARRAY[CAST(1.5 AS DOUBLE PRECISION), CAST(2 AS DOUBLE PRECISION)]",
    "CAST(NULL AS INTEGER)",
]

TIMESTAMPTZ = next(i for i, e in enumerate(EXPRESSIONS) if isinstance(e, tuple))

TABLE = """CREATE TABLE {schema}every_type (
    id INTEGER, b BOOLEAN, i2 SMALLINT, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION,
    n NUMERIC(12,3), s TEXT, d DATE, ts TIMESTAMP)"""
ROWS = [
    "(1, true, 1, 10000000000, 1.5, 149, 12.5, 'plain', DATE '2026-11-23', "
    "TIMESTAMP '2026-11-23 10:00:00')",
    "(2, false, -1, -5, 0.1, 0.1, -0.005, 'tab\there, \"quoted\"', DATE '1970-01-01', "
    "TIMESTAMP '1999-12-31 23:59:59.999999')",
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]

ALICE = ("alice", "correct horse battery staple")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg_output")
    warehouse = root / "warehouse"
    run_medlake(warehouse, TABLE.format(schema="bronze."),
                f"INSERT INTO bronze.every_type VALUES {', '.join(ROWS)}")
    write_tls_files(root)
    config = root / "medlake.toml"
    config.write_text(f"""
[[users]]
name = "alice"
password_env = "TEST_ALICE_PASSWORD"

[tls]
cert = "{root / 'server.crt'}"
key = "{root / 'server.key'}"
""")
    serve = MedlakeServe(root, ["--warehouse", str(warehouse), "--config", str(config),
                                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         {"TEST_ALICE_PASSWORD": ALICE[1]}, "postgres on")
    medlake = psycopg.connect(host="127.0.0.1", port=serve.port("postgres"), dbname="medlake",
                              user=ALICE[0], password=ALICE[1], sslmode="require", autocommit=True)
    try:
        with postgres15() as port:
            postgres = psycopg.connect(host="127.0.0.1", port=port, dbname="postgres", user="postgres",
                                       autocommit=True)
            postgres.execute(TABLE.format(schema=""))
            postgres.execute(f"INSERT INTO every_type VALUES {', '.join(ROWS)}")
            yield medlake, postgres
            postgres.close()
    finally:
        medlake.close()
        serve.stop()


def raw(conn, query, binary):
    """The column type OIDs and the raw bytes of every value (None for NULL)."""
    cur = conn.cursor(binary=binary)
    cur.execute(query)
    result = cur.pgresult
    types = [result.ftype(c) for c in range(result.nfields)]
    values = [[result.get_value(r, c) for c in range(result.nfields)] for r in range(result.ntuples)]
    return types, values


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_every_value_is_written_as_postgresql_writes_it(servers, binary):
    medlake, postgres = servers
    differences = []
    for expression in EXPRESSIONS:
        ours_sql, theirs_sql = expression if isinstance(expression, tuple) else (expression, expression)
        ours = raw(medlake, f"SELECT {ours_sql} AS v", binary)
        theirs = raw(postgres, f"SELECT {theirs_sql} AS v", binary)
        if ours != theirs:
            differences.append(f"{expression}: medlake {ours}, PostgreSQL {theirs}")
    assert not differences, "\n".join(differences)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_a_stored_table_reads_back_as_in_postgresql(servers, binary):
    medlake, postgres = servers
    ours = raw(medlake, "SELECT * FROM bronze.every_type ORDER BY id", binary)
    theirs = raw(postgres, "SELECT * FROM every_type ORDER BY id", binary)
    assert ours[0] == theirs[0], "column types"
    for row, (a, b) in enumerate(zip(ours[1], theirs[1])):
        assert a == b, f"row {row + 1}"


def test_the_session_time_zone_shapes_timestamptz_text(servers):
    medlake, postgres = servers
    ours_sql, theirs_sql = EXPRESSIONS[TIMESTAMPTZ]
    for zone, expected in [("Asia/Kolkata", b"2026-11-23 15:30:00+05:30"),
                           ("America/New_York", b"2026-11-23 05:00:00-05")]:
        for conn, sql in ((medlake, ours_sql), (postgres, theirs_sql)):
            conn.execute(f"SET TIME ZONE '{zone}'")
            assert raw(conn, f"SELECT {sql} AS v", False)[1] == [[expected]], zone
    for conn in (medlake, postgres):
        conn.execute("SET TIME ZONE 'UTC'")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        medlake.execute("SET TIME ZONE 'Mars/Olympus_Mons'")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        medlake.execute("SET DateStyle = 'German'")


def test_copy_to_stdout_writes_the_same_lines(servers):
    medlake, postgres = servers

    def copy(conn, table, options):
        with conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT {options}") as c:
                return b"".join(bytes(block) for block in c)

    for options in ["", "WITH (FORMAT csv, HEADER true)"]:
        assert copy(medlake, "bronze.every_type", options) == copy(postgres, "every_type", options), options
