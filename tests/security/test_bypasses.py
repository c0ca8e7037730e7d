"""Bypasses of roles, grants, masks and row filters that a review found (issue 23), each
tried through a real `medlake serve` on the Postgres door and Flight SQL: a materialized view
that reads what its creator may not (a bronze table, system.audit), another statement's pinned
time-travel table named directly, a row filter escaping through a self-join or a window,
INSERT OVERWRITE and ADBC replace-ingest with only INSERT, CREATE OR REPLACE of someone else's
view, grants to names nobody configured, and a refresh after its owner lost a grant."""

import contextlib
import secrets

import pyarrow as pa
import pytest

from attack import Server, adbc_connect, note, pg_connect

PASSWORDS = {name: f"Zq{name}x{secrets.token_hex(12)}" for name in ["admin", "ann", "clin", "low"]}
USERS = {name: (name, password) for name, password in PASSWORDS.items()}

CONFIG = """
[[users]]
name = "admin"
password_env = "P_B_ADMIN"
role = "admin"

[[users]]
name = "ann"
password_env = "P_B_ANN"
role = "none"
roles = ["analyst"]

[[users]]
name = "clin"
password_env = "P_B_CLIN"
role = "none"
roles = ["clinician"]

[[users]]
name = "low"
password_env = "P_B_LOW"
role = "none"
roles = ["loader"]
"""

SEED = [
    "CREATE TABLE bronze.raw (patient_id BIGINT, mrn VARCHAR)",
    "INSERT INTO bronze.raw VALUES (1, 'MRN-0001')",
    "CREATE TABLE bronze.inbox (id BIGINT, note VARCHAR)",
    "INSERT INTO bronze.inbox VALUES (1, 'keep')",
    "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, ward VARCHAR, birth DATE)",
    "INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'icu', DATE '1950-01-02'), "
    "(2, 'MRN-0002', 'cardio', DATE '1960-03-04'), (3, 'MRN-0003', 'icu', DATE '1970-05-06')",
    "CREATE TABLE silver.readings (patient_id BIGINT, hr DOUBLE)",
    "INSERT INTO silver.readings VALUES (1, 80.0), (2, 90.0)",
    "CREATE SCHEMA scratch",
    "CREATE ROLE analyst",
    "CREATE ROLE clinician",
    "CREATE ROLE loader",
    "GRANT USAGE ON SCHEMA silver TO analyst, clinician",
    "GRANT SELECT ON TABLE silver.patients TO analyst, clinician",
    "GRANT SELECT ON TABLE silver.readings TO analyst, clinician",
    "GRANT CREATE, USAGE, SELECT ON SCHEMA scratch TO analyst, clinician",
    "GRANT USAGE ON SCHEMA bronze TO loader",
    "GRANT INSERT ON TABLE bronze.inbox TO loader",
    "ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK "
    "CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END",
    "ALTER TABLE silver.patients SET ROW FILTER is_member('clinician') OR ward = 'icu' ON (ward)",
    "CREATE MATERIALIZED VIEW scratch.admins AS SELECT patient_id FROM silver.readings",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bypasses")
    env = {f"P_B_{name.upper()}": password for name, password in PASSWORDS.items()}
    srv = Server(root, CONFIG, seed=SEED, env=env)
    yield srv
    srv.stop()


def pg_code(server, user, sql):
    import psycopg
    try:
        with contextlib.closing(pg_connect(server, USERS[user])) as conn:
            with conn.cursor() as cur:
                cur.execute(sql)
                if cur.description:
                    note("pg rows", repr(cur.fetchall()))
        return "ok"
    except psycopg.Error as e:
        return e.sqlstate


def pg_rows(server, user, sql):
    with contextlib.closing(pg_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            return note("pg rows", repr(cur.fetchall()))


def flight_code(server, user, sql):
    import adbc_driver_manager
    try:
        with contextlib.closing(adbc_connect(server, USERS[user])) as conn:
            with conn.cursor() as cur:
                cur.execute(sql)
                try:
                    note("adbc rows", repr(cur.fetchall()))
                except adbc_driver_manager.Error as e:
                    # A refusal may come with the rows (DoGet); a command has none to fetch.
                    if denied(str(e)):
                        raise
        return "ok"
    except adbc_driver_manager.Error as e:
        note("adbc error", str(e))
        return "denied" if denied(str(e)) else "error"


def denied(message):
    return any(w in message for w in ["42501", "PERMISSION_DENIED", "PermissionDenied", "Unauthorized"])


STEALS = [
    "CREATE MATERIALIZED VIEW scratch.steal_{n} AS SELECT * FROM bronze.raw",
    "CREATE MATERIALIZED VIEW scratch.steal_{n} AS SELECT * FROM system.audit",
    "CREATE MATERIALIZED VIEW scratch.steal_{n} AS SELECT * FROM system.grants",
    "CREATE MATERIALIZED VIEW scratch.steal_{n} AS SELECT patient_id FROM silver.readings "
    "WHERE patient_id IN (SELECT patient_id FROM bronze.raw)",
]


@pytest.mark.parametrize("index", range(len(STEALS)))
def test_a_view_cannot_read_what_its_creator_may_not(server, index):
    assert pg_code(server, "ann", STEALS[index].format(n=f"pg{index}")) == "42501"
    assert flight_code(server, "ann", STEALS[index].format(n=f"fl{index}")) == "denied"


def test_replacing_a_view_is_its_owners(server):
    sql = "CREATE OR REPLACE MATERIALIZED VIEW scratch.admins AS SELECT 666 AS patient_id"
    assert pg_code(server, "ann", sql) == "42501"
    assert flight_code(server, "ann", sql) == "denied"
    assert pg_rows(server, "admin", "SELECT count(*) FROM scratch.admins WHERE patient_id = 666") == "[(0,)]"


def test_another_statements_pin_cannot_be_named(server):
    for sql in [
        'SELECT * FROM "__medlake_time_travel"."silver.patients@0#1"',
        'SELECT * FROM medlake."__medlake_time_travel"."silver.patients@0#2"',
    ]:
        assert pg_code(server, "ann", sql) == "42501", sql
        assert flight_code(server, "ann", sql) == "denied", sql
    # The statement's own time travel still works, masked.
    rows = pg_rows(server, "ann", "SELECT mrn FROM silver.patients VERSION AS OF 1")
    assert "MRN-000" not in rows


VIEWS = [
    ("self_join", "SELECT p.ward, q.patient_id, q.birth FROM silver.patients p "
     "CROSS JOIN silver.patients q", False),
    ("lagged", "SELECT ward, patient_id, lag(birth) OVER (ORDER BY patient_id) AS prev "
     "FROM silver.patients", False),
    ("counted", "SELECT ward, patient_id, count(*) OVER () AS n FROM silver.patients", False),
    ("per_ward", "SELECT ward, patient_id, count(*) OVER (PARTITION BY ward) AS n "
     "FROM silver.patients", True),
]


@pytest.mark.parametrize("name,query,readable", VIEWS)
def test_row_filters_follow_each_scan_and_refuse_windows_over_hidden_rows(server, name, query, readable):
    assert pg_code(server, "clin", f"CREATE MATERIALIZED VIEW scratch.{name} AS {query}") == "ok"
    pg = pg_code(server, "ann", f"SELECT * FROM scratch.{name}")
    flight = flight_code(server, "ann", f"SELECT * FROM scratch.{name}")
    if readable:
        assert (pg, flight) == ("ok", "ok")
        assert "cardio" not in pg_rows(server, "ann", f"SELECT * FROM scratch.{name}")
    else:
        assert (pg, flight) == ("42501", "denied")


def test_overwriting_needs_delete(server):
    assert pg_code(server, "low", "INSERT INTO bronze.inbox VALUES (2, 'new')") == "ok"
    assert pg_code(server, "low", "INSERT OVERWRITE bronze.inbox VALUES (9, 'wiped')") == "42501"
    import adbc_driver_manager
    table = pa.table({"id": pa.array([9], pa.int64()), "note": pa.array(["wiped"])})
    with contextlib.closing(adbc_connect(server, USERS["low"])) as conn:
        with conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as refused:
                cur.adbc_ingest("inbox", table, mode="replace", db_schema_name="bronze")
    assert denied(str(refused.value)), str(refused.value)
    assert pg_rows(server, "admin", "SELECT count(*) FROM bronze.inbox") == "[(2,)]"


def test_grants_name_configured_users_or_roles(server):
    assert pg_code(server, "admin", "GRANT SELECT ON TABLE silver.readings TO nosuch") == "42704"
    assert pg_code(server, "admin", "GRANT analyst TO nosuch") == "42704"
    assert pg_code(server, "admin", "GRANT SELECT ON TABLE silver.readings TO low") == "ok"


def test_a_refresh_runs_as_the_views_owner(server):
    assert pg_code(server, "ann", "CREATE MATERIALIZED VIEW scratch.ann_hr AS "
                   "SELECT patient_id, hr FROM silver.readings") == "ok"
    assert pg_code(server, "admin", "REVOKE SELECT ON TABLE silver.readings FROM analyst") == "ok"
    try:
        assert pg_code(server, "admin", "INSERT INTO silver.readings VALUES (5, 60.0)") == "ok"
        # Nobody's refresh reads for ann what ann may no longer read, an admin's included.
        assert pg_code(server, "admin", "REFRESH MATERIALIZED VIEW scratch.ann_hr") == "42501"
    finally:
        pg_code(server, "admin", "GRANT SELECT ON TABLE silver.readings TO analyst")
    assert pg_code(server, "admin", "REFRESH MATERIALIZED VIEW scratch.ann_hr") == "ok"
