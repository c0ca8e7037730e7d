"""History, time travel and copies of views, attacked on a real `medlake serve` (issue 24's
review): `table_history('t')` needs SELECT on `t` itself whatever the default schema, and is
refused where a row filter of `t` holds (its counts would tell hidden rows); `DESCRIBE HISTORY`
then shows no counts; a view's keyed refresh leaves no key values in its history; a redefined
view's earlier versions and its quarantine's past are not readable; no one clones a view;
`EXPLAIN REFRESH` needs REFRESH and shows counts to admins only."""

import contextlib
import secrets

import pytest

from attack import Server, adbc_connect, note

PASSWORDS = {name: f"Zq{name}x{secrets.token_hex(12)}" for name in ["adm", "ann", "nob"]}
USERS = {name: (name, password) for name, password in PASSWORDS.items()}

CONFIG = """
[[users]]
name = "adm"
password_env = "P_H_ADM"
role = "admin"

[[users]]
name = "ann"
password_env = "P_H_ANN"
role = "none"
roles = ["analyst"]

[[users]]
name = "nob"
password_env = "P_H_NOB"
role = "none"
"""

SEED = [
    "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, ward VARCHAR)",
    "INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'icu'), (2, 'MRN-0002', 'cardio'), "
    "(3, 'MRN-0003', 'icu')",
    "DELETE FROM silver.patients WHERE patient_id = 2",
    "CREATE ROLE analyst",
    "GRANT USAGE ON SCHEMA silver TO analyst",
    "GRANT SELECT ON TABLE silver.patients TO analyst",
    "GRANT SELECT ON SCHEMA gold TO analyst, nob",
    "ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK "
    "CASE WHEN is_member('admin') THEN mrn ELSE 'MRN-****' END",
    "ALTER TABLE silver.patients SET ROW FILTER is_member('admin') OR ward = 'icu' ON (ward)",
    # A keyed view refreshed incrementally (its commit overwrites the changed keys' rows).
    "CREATE MATERIALIZED VIEW gold.by_mrn AS "
    "SELECT mrn, ward, count(*) AS n FROM silver.patients GROUP BY mrn, ward",
    "INSERT INTO silver.patients VALUES (4, 'MRN-0004', 'icu')",
    "UPDATE silver.patients SET ward = 'cardio' WHERE patient_id = 3",
    "REFRESH MATERIALIZED VIEW gold.by_mrn",
    # A view redefined: version 0's id was an MRN, the current one is not masked.
    "CREATE MATERIALIZED VIEW gold.ids AS SELECT patient_id, ward, mrn AS id FROM silver.patients",
    "CREATE OR REPLACE MATERIALIZED VIEW gold.ids AS "
    "SELECT patient_id, ward, CAST(patient_id AS VARCHAR) AS id FROM silver.patients",
    "CREATE MATERIALIZED VIEW gold.checked CONSTRAINT low EXPECT (patient_id > 1) "
    "ON VIOLATION QUARANTINE AS SELECT patient_id, ward, mrn FROM silver.patients",
    "CREATE TABLE gold.plain (x INT)",
]

LEAK = "MRN-000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    env = {f"P_H_{name.upper()}": password for name, password in PASSWORDS.items()}
    srv = Server(root, CONFIG, seed=SEED, env=env)
    yield srv
    srv.stop()


def pg(server, user, sql, mode="simple", setup=()):
    """(sqlstate or 'ok', rows as text)."""
    import psycopg
    from attack import pg_connect
    with contextlib.closing(pg_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            try:
                for statement in setup:
                    cur.execute(statement)
                if mode == "extended":
                    cur.execute(sql, binary=True)
                else:
                    cur.execute(sql)
                return "ok", note("pg rows", repr(cur.fetchall()))
            except psycopg.Error as e:
                return e.sqlstate, note("pg error", str(e))


def flight_error(server, user, sql):
    with contextlib.closing(adbc_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            try:
                cur.execute(sql)
                return note("adbc rows", repr(cur.fetchall()))
            except Exception as e:  # the driver's error carries the SQLSTATE
                return note("adbc error", f"ERROR {e}")


HISTORY_OF_SILVER = [
    "SELECT * FROM table_history('silver.patients')",
    "SELECT count(*) FROM table_history('silver.patients', 2)",
    "SELECT * FROM gold.plain, table_history('silver.patients')",
    "WITH h AS (SELECT * FROM table_history('silver.patients')) SELECT max(version) FROM h",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM table_history('silver.patients'))",
    "DESCRIBE HISTORY silver.patients",
]


@pytest.mark.parametrize("sql", HISTORY_OF_SILVER)
@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_history_needs_select_on_the_table_it_names(server, sql, mode):
    code, text = pg(server, "nob", sql, mode, setup=["SET search_path = gold"])
    assert code == "42501", (code, text)
    assert "does not exist" not in text, text


def test_history_needs_select_on_flight_sql_too(server):
    message = flight_error(server, "nob", "SELECT * FROM table_history('silver.patients')")
    assert "42501" in message or "PERMISSION" in message.upper(), message


def test_own_history_stays_readable(server):
    code, text = pg(server, "nob", "SELECT * FROM table_history('gold.plain')")
    assert code == "ok", text


def test_filtered_history_tells_no_counts(server):
    code, text = pg(server, "ann", "SELECT * FROM table_history('silver.patients')")
    assert code == "42501", text
    code, text = pg(server, "ann", "DESCRIBE HISTORY silver.patients")
    assert code == "ok", text
    assert "num_deleted_rows" not in text and "num_added_rows" not in text, text
    # The filter's predicate decides whom it hides rows from: counts are left out for
    # everyone it holds for (admins too; the local operator sees them).
    code, text = pg(server, "adm", "DESCRIBE HISTORY gold.plain")
    assert code == "ok" and "CREATE TABLE" in text, text


@pytest.mark.parametrize("user", ["adm", "ann"])
def test_a_keyed_refresh_leaves_no_key_values_in_history(server, user):
    code, text = pg(server, user, "DESCRIBE HISTORY gold.by_mrn")
    assert code == "ok", text
    assert LEAK not in text, text
    code, text = pg(server, "adm", "SELECT mode FROM system.refreshes "
                                   "WHERE view = 'gold.by_mrn' AND trigger = 'manual'")
    assert "incremental" in text, text


def test_a_redefined_views_earlier_versions_are_not_read(server):
    for sql in ["SELECT id FROM gold.ids VERSION AS OF 0",
                "SELECT count(*) FROM gold.ids VERSION AS OF 0 WHERE id LIKE 'MRN-0%'",
                "SELECT id FROM table_changes('gold.ids', 0)"]:
        code, text = pg(server, "ann", sql)
        assert code in ("0A000", "22023"), (sql, code, text)
        assert LEAK not in text, text
    message = flight_error(server, "ann", "SELECT id FROM gold.ids VERSION AS OF 0")
    assert LEAK not in message and "0A000" in message, message
    code, text = pg(server, "ann", "SELECT id FROM gold.ids VERSION AS OF 1")
    assert code == "ok" and LEAK not in text, text


def test_a_quarantines_past_is_not_read(server):
    code, text = pg(server, "ann", "SELECT mrn FROM gold.checked_quarantine")
    assert code == "ok" and LEAK not in text, text
    for sql in ["SELECT mrn FROM gold.checked_quarantine VERSION AS OF 0",
                "SELECT mrn FROM table_changes('gold.checked_quarantine', 0)"]:
        code, text = pg(server, "ann", sql)
        assert code == "0A000", (sql, code, text)


@pytest.mark.parametrize("source", ["gold.ids", "gold.checked", "gold.checked_quarantine"])
def test_no_one_clones_a_view(server, source):
    code, text = pg(server, "adm", f"CREATE TABLE gold.copy SHALLOW CLONE {source}")
    assert code == "42809", (code, text)
    code, text = pg(server, "ann", f"CREATE TABLE gold.copy DEEP CLONE {source}")
    assert code == "42501", (code, text)


def test_explain_refresh_needs_refresh_and_counts_are_the_admins(server):
    code, text = pg(server, "ann", "EXPLAIN REFRESH MATERIALIZED VIEW gold.by_mrn")
    assert code == "42501", text
    code, text = pg(server, "nob", "EXPLAIN REFRESH MATERIALIZED VIEW gold.by_mrn")
    assert code == "42501", text
    code, text = pg(server, "adm", "EXPLAIN REFRESH MATERIALIZED VIEW gold.by_mrn")
    assert code == "ok" and "none" in text, text
