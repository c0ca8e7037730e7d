"""Every statement kind a `reader` may not run, through every door (psql, psycopg's simple,
extended and server-side prepared protocols, ADBC's query/update/prepared paths and adbc_ingest,
raw pyarrow.flight GetFlightInfo and DoPut): each is refused with SQLSTATE 42501 and leaves the
warehouse exactly as it was (files on disk and the catalog). A `writer` may write but not create
external tables nor touch DataFusion's runtime settings."""

import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from attack import (ALL_DOORS, FLIGHT_DOORS, PG_DOORS, Canary, adbc_connect, admin_rows, diff,
                    fingerprint, note, run_probe)

ROW = "('evil', 666, 'heart_rate', 6.66, TIMESTAMP '2026-01-01 00:00:00')"

# Codes a door may answer when the statement cannot even be expressed there (a syntax error
# of the dialect, or "not supported"); the warehouse must still be unchanged.
UNEXPRESSIBLE = {"42501", "42601", "0A000"}
# Several statements in one Flight SQL request: refused as a whole (gRPC INVALID_ARGUMENT).
MULTI = UNEXPRESSIBLE | {"grpc:INVALID_ARGUMENT"}
SET_REFUSED = {"42501", "42704", "55P02"}


def reader_probes(main, tmp):
    """name -> (statements run in one session, accepted SQLSTATEs, accepted on Flight doors,
    paths that must not exist afterwards)."""
    out = tmp / "copied.csv"
    spill = tmp / "spill"
    p = {
        "insert": ([f"INSERT INTO bronze.readings VALUES {ROW}"], None, None, []),
        "insert_select": (["INSERT INTO bronze.readings SELECT * FROM bronze.readings"],
                          None, None, []),
        "insert_overwrite": (["INSERT OVERWRITE bronze.readings SELECT * FROM bronze.readings "
                              "WHERE value < 0"], None, None, []),
        "delete": (["DELETE FROM bronze.readings"], None, None, []),
        "delete_where": (["DELETE FROM bronze.readings WHERE value > 0"], None, None, []),
        "update": (["UPDATE bronze.readings SET value = 0"], None, None, []),
        "merge": (["MERGE INTO bronze.readings t USING (SELECT 'x' AS d) s ON t.device_id = s.d "
                   "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (device_id) VALUES (s.d)"],
                  None, None, []),
        "truncate": (["TRUNCATE bronze.readings"], UNEXPRESSIBLE, UNEXPRESSIBLE, []),
        "create_table": (["CREATE TABLE bronze.evil (a INT)"], None, None, []),
        "ctas": (["CREATE TABLE bronze.evil AS SELECT 1 AS a"], None, None, []),
        "select_into": (["SELECT 1 AS a INTO bronze.evil"], None, None, []),
        "select_into_unqualified": (["SELECT device_id INTO evil FROM bronze.readings"],
                                    None, None, []),
        "drop_table": (["DROP TABLE bronze.readings"], None, None, []),
        "drop_table_if_exists": (["DROP TABLE IF EXISTS victim.t"], None, None, []),
        "create_schema": (["CREATE SCHEMA evil"], None, None, []),
        "drop_schema": (["DROP SCHEMA victim CASCADE"], None, None, []),
        "create_view": (["CREATE VIEW bronze.evil_view AS SELECT 1 AS a"], None, None, []),
        "create_mv": (["CREATE MATERIALIZED VIEW gold.evil AS SELECT 1 AS a"], None, None, []),
        "refresh_mv": (["REFRESH MATERIALIZED VIEW gold.device_counts FULL"], None, None, []),
        "drop_mv": (["DROP MATERIALIZED VIEW gold.device_counts"], None, None, []),
        "optimize": (["OPTIMIZE bronze.readings"], None, None, []),
        "vacuum": (["VACUUM bronze.readings RETAIN 0 HOURS FORCE"], None, None, []),
        "copy_drop": (["COPY (DROP TABLE bronze.readings) TO STDOUT"], None, UNEXPRESSIBLE, []),
        "copy_insert": ([f"COPY (INSERT INTO bronze.readings VALUES {ROW}) TO STDOUT"],
                        None, UNEXPRESSIBLE, []),
        "copy_to_server_file": ([f"COPY (SELECT * FROM bronze.readings) TO '{out}'"],
                                UNEXPRESSIBLE, UNEXPRESSIBLE, [out]),
        "explain_analyze_insert": ([f"EXPLAIN ANALYZE INSERT INTO bronze.readings VALUES {ROW}"],
                                   None, None, []),
        "explain_analyze_ctas": (["EXPLAIN ANALYZE CREATE TABLE bronze.evil AS SELECT 1 AS a"],
                                 None, None, []),
        "prepare_insert": ([f"PREPARE evil_p AS INSERT INTO bronze.readings VALUES {ROW}",
                            "EXECUTE evil_p"], None, None, []),
        "create_external": ([f"CREATE EXTERNAL TABLE bronze.evil STORED AS PARQUET "
                             f"LOCATION '{main.landing}/labs/'"], None, None, []),
        "import_foreign_schema": (["IMPORT FOREIGN SCHEMA dbo FROM SQLSERVER "
                                   "'sqlserver://127.0.0.1:1/EHR' INTO victim"], None, None, []),
        "set_memory_limit": (["SET datafusion.runtime.memory_limit = '1G'"],
                             SET_REFUSED, SET_REFUSED, []),
        "set_temp_directory": ([f"SET datafusion.runtime.temp_directory = '{spill}'"],
                               SET_REFUSED, SET_REFUSED, [spill]),
        "cte_insert": ([f"WITH w AS (INSERT INTO bronze.readings VALUES {ROW} RETURNING *) "
                        "SELECT * FROM w"], UNEXPRESSIBLE, UNEXPRESSIBLE, []),
        "subquery_insert": ([f"SELECT * FROM (INSERT INTO bronze.readings VALUES {ROW}) AS x"],
                            UNEXPRESSIBLE, UNEXPRESSIBLE, []),
        "multi_statement_drop": (["SELECT 1; DROP TABLE bronze.readings"],
                                 UNEXPRESSIBLE, MULTI, []),
        "multi_statement_insert": ([f"SELECT 1; INSERT INTO bronze.readings VALUES {ROW}"],
                                   UNEXPRESSIBLE, MULTI, []),
    }
    return p


PROBE_NAMES = list(reader_probes(SimpleNamespace(landing="/x"), Path("/x")))


def check_refused(main, user, door, statements, codes, paths=(), canary=None):
    before = fingerprint(main, fresh=False)
    outcome = run_probe(main, user, door, statements)
    after = fingerprint(main)
    changed = diff(before, after)
    created = [str(p) for p in paths if p.exists()]
    alive = main.alive()
    if changed or not alive:
        main.reset()  # later tests start from the seeded warehouse again
    assert alive, f"the server died: {outcome!r}"
    assert not changed, f"{user} changed the warehouse through {door}: {changed}; {outcome!r}"
    assert not created, f"{user} created {created} through {door}"
    if canary is not None:
        assert canary.connections == 0, f"the server connected out: {canary.requests!r}"
    assert not outcome.ok, f"{user} ran {statements} through {door}"
    assert outcome.code in codes, f"expected SQLSTATE in {sorted(codes)}: {outcome!r}"
    if door in FLIGHT_DOORS and outcome.code == "42501":
        assert "(SQLSTATE 42501)" in outcome.message, outcome
    return outcome


@pytest.mark.parametrize("door", ALL_DOORS)
@pytest.mark.parametrize("probe", PROBE_NAMES)
def test_reader_is_refused(main, probe, door, tmp_path):
    statements, codes, flight_codes, paths = reader_probes(main, tmp_path)[probe]
    codes = codes or {"42501"}
    if door in FLIGHT_DOORS:
        codes = flight_codes or codes
    check_refused(main, "reader", door, statements, codes, paths)


READS = [
    "SELECT count(*) FROM bronze.readings",
    "SELECT * FROM gold.device_counts",
    "SHOW TABLES",
    "DESCRIBE HISTORY bronze.readings",
    "SELECT table_schema, table_name FROM information_schema.tables",
    "SELECT column_name FROM information_schema.columns WHERE table_name = 'readings'",
    "SELECT * FROM table_history('bronze.readings')",
    "SELECT * FROM system.materialized_views",
    "SELECT count(*) FROM bronze.readings VERSION AS OF 0",
    "EXPLAIN SELECT * FROM bronze.readings",
    "EXPLAIN ANALYZE SELECT count(*) FROM bronze.readings",
    "WITH w AS (SELECT device_id FROM bronze.readings) SELECT count(*) FROM w",
]


@pytest.mark.parametrize("door", [d for d in ALL_DOORS if d not in ("adbc-update", "flight-update")])
def test_reader_reads_still_work(main, door):
    extra = []
    if door in ("psql", "pg-simple"):
        extra = ["COPY (SELECT device_id FROM bronze.readings) TO STDOUT (FORMAT csv)"]
    if door in PG_DOORS:
        extra += ["SET statement_timeout = '30s'", "SHOW statement_timeout"]
    before = fingerprint(main, fresh=False)
    outcome = run_probe(main, "reader", door, READS + extra)
    assert outcome.ok, outcome
    assert diff(before, fingerprint(main)) == []


def test_reader_catalog_listings_over_adbc(main):
    from attack import USERS
    with adbc_connect(main, USERS["reader"]) as conn:
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        note("objects", repr(objects))
        assert any(c["catalog_name"] == "medlake" for c in objects)
        schema = conn.adbc_get_table_schema("readings", db_schema_filter="bronze")
        assert "device_id" in schema.names


@pytest.mark.parametrize("mode,table", [("append", "readings"), ("create", "evil_ingest"),
                                        ("create_append", "evil_ingest2"),
                                        ("replace", "readings")])
def test_reader_adbc_ingest_is_refused(main, mode, table):
    from attack import USERS
    data = pa.table({
        "device_id": pa.array(["evil"], pa.string()), "patient_id": pa.array([666], pa.int64()),
        "metric": pa.array(["heart_rate"], pa.string()), "value": pa.array([6.66]),
        "ts": pa.array([0], pa.timestamp("us")),
    })
    before = fingerprint(main, fresh=False)
    error = None
    with adbc_connect(main, USERS["reader"]) as conn, conn.cursor() as cur:
        try:
            cur.adbc_ingest(table, data, mode=mode, db_schema_name="bronze")
        except Exception as e:  # noqa: BLE001
            error = note("adbc_ingest", str(e))
    changed = diff(before, fingerprint(main))
    if changed:
        main.reset()
    assert not changed, changed
    assert error is not None, "the reader's adbc_ingest was accepted"
    assert "42501" in error, error


# ---------------------------------------------------------------------------------------------
# writer

WRITER_DOORS = ["psql", "pg-simple", "pg-prepared", "adbc-query", "adbc-update", "flight-update"]


def external_statements(main, kind, canary):
    return {
        "parquet": f"CREATE EXTERNAL TABLE bronze.w_ext STORED AS PARQUET "
                   f"LOCATION '{main.landing}/labs/'",
        "csv": f"CREATE EXTERNAL TABLE bronze.w_ext STORED AS CSV LOCATION "
               f"'{main.landing}/csvdir/' OPTIONS ('has_header' 'true')",
        "binaryfile": f"CREATE EXTERNAL TABLE bronze.w_ext STORED AS BINARYFILE "
                      f"LOCATION '{main.landing}/'",
        "rest": f"CREATE EXTERNAL TABLE bronze.w_ext STORED AS REST "
                f"LOCATION 'http://127.0.0.1:{canary.port}/'",
    }[kind]


@pytest.mark.parametrize("door", WRITER_DOORS)
@pytest.mark.parametrize("kind", ["parquet", "csv", "binaryfile", "rest"])
def test_writer_cannot_create_external_tables(main, kind, door):
    canary = Canary()
    try:
        check_refused(main, "writer", door, [external_statements(main, kind, canary)],
                      {"42501"}, canary=canary)
    finally:
        canary.close()


def test_writer_cannot_import_foreign_schema(main):
    canary = Canary()
    try:
        check_refused(main, "writer", "pg-simple",
                      [f"IMPORT FOREIGN SCHEMA dbo FROM SQLSERVER "
                       f"'sqlserver://127.0.0.1:{canary.port}/EHR' INTO victim"],
                      {"42501"}, canary=canary)
    finally:
        canary.close()


@pytest.mark.parametrize("door", ALL_DOORS)
@pytest.mark.parametrize("setting", ["memory_limit = '1G'", "temp_directory = '/tmp/medlake-evil'",
                                     "max_temp_directory_size = '1000G'"])
def test_writer_cannot_set_runtime(main, setting, door):
    check_refused(main, "writer", door, [f"SET datafusion.runtime.{setting}"], SET_REFUSED)


@pytest.mark.parametrize("door", ["psql", "pg-simple", "adbc-query", "flight-update"])
def test_writer_cannot_copy_to_a_server_file(main, door, tmp_path):
    out = tmp_path / "exfil.csv"
    check_refused(main, "writer", door,
                  [f"COPY (SELECT * FROM bronze.readings) TO '{out}' STORED AS CSV"],
                  UNEXPRESSIBLE, [out])


@pytest.mark.parametrize("door", ["psql", "pg-simple", "pg-prepared", "adbc-query", "flight-update"])
def test_writer_writes_work(main, door):
    t = "w_" + door.replace("-", "_")
    statements = [
        f"CREATE SCHEMA {t}",
        f"CREATE TABLE {t}.a (id INT NOT NULL, v VARCHAR)",
        f"INSERT INTO {t}.a VALUES (1, 'x'), (2, 'y')",
        f"CREATE TABLE {t}.b AS SELECT id FROM {t}.a",
        f"CREATE MATERIALIZED VIEW {t}.mv AS SELECT count(*) AS n FROM {t}.a",
        f"INSERT INTO {t}.a VALUES (3, 'z')",
        f"REFRESH MATERIALIZED VIEW {t}.mv",
        f"OPTIMIZE {t}.a",
        f"VACUUM {t}.a",
        f"DROP MATERIALIZED VIEW {t}.mv",
        f"DROP TABLE {t}.b",
        f"DROP TABLE {t}.a",
        f"DROP SCHEMA {t}",
    ]
    outcome = run_probe(main, "writer", door, statements)
    assert outcome.ok, outcome


def test_writer_adbc_ingest_works(main):
    from attack import USERS
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64())})
    with adbc_connect(main, USERS["writer"]) as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("w_ingest", data, mode="create", db_schema_name="bronze") == 3
        assert cur.adbc_ingest("w_ingest", data, mode="append", db_schema_name="bronze") == 3
        cur.execute("SELECT count(*) FROM bronze.w_ingest")
        assert cur.fetchone() == (6,)
        cur.execute("DROP TABLE bronze.w_ingest")
    assert admin_rows(main, "SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name = 'w_ingest'") == [(0,)]


def test_refusals_are_in_the_audit_log(main):
    marker = f"audit_{secrets.token_hex(4)}"
    outcome = run_probe(main, "reader", "pg-simple", [f"CREATE TABLE bronze.{marker} (a INT)"])
    assert not outcome.ok
    time.sleep(0.3)
    lines = [l for l in main.log().splitlines() if "medlake::audit" in l and marker in l]
    assert lines, "the refusal is not in the audit log (medlake::audit)"
    assert "reader" in lines[-1] and "permission denied" in lines[-1], lines[-1]
