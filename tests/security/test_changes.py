"""The change data feed through `table_changes('schema.table', from [, to])` (issue 24),
attacked on a real `medlake serve`: the MRN mask holds on every change row (pre-images and
deletes too) on the Postgres door (simple, extended, prepared, COPY) and on Flight SQL (query
and prepared); the ward row filter hides change rows of rows the analyst could not see; a user
without SELECT is refused (42501) whatever the table, the name's spelling or the versions, and
learns nothing of the table (not its versions, not whether it exists)."""

import contextlib
import secrets

import pyarrow as pa
import pytest

from attack import Server, adbc_connect, note, pg_connect

PASSWORDS = {name: f"Zq{name}x{secrets.token_hex(12)}" for name in ["clin", "ann", "lou", "nob"]}
USERS = {name: (name, password) for name, password in PASSWORDS.items()}

CONFIG = """
[[users]]
name = "clin"
password_env = "P_C_CLIN"
role = "none"
roles = ["clinician"]

[[users]]
name = "ann"
password_env = "P_C_ANN"
role = "none"
roles = ["analyst"]

[[users]]
name = "lou"
password_env = "P_C_LOU"
role = "none"
roles = ["loader"]

[[users]]
name = "nob"
password_env = "P_C_NOB"
role = "none"
"""

# Version 1 inserts three patients; 2 moves patient 1 out of the ICU; 3 deletes patient 2
# (never in the ICU); 4 changes patient 3's MRN (in the ICU: both images hold an MRN).
SEED = [
    "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, name VARCHAR, ward VARCHAR)",
    "INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'Ada Lovelace', 'icu'), "
    "(2, 'MRN-0002', 'Alan Turing', 'cardio'), (3, 'MRN-0003', 'Grace Hopper', 'icu')",
    "UPDATE silver.patients SET ward = 'cardio' WHERE patient_id = 1",
    "DELETE FROM silver.patients WHERE patient_id = 2",
    "UPDATE silver.patients SET mrn = 'MRN-0004' WHERE patient_id = 3",
    "CREATE ROLE clinician",
    "CREATE ROLE analyst",
    "CREATE ROLE loader",
    "GRANT USAGE ON SCHEMA silver TO clinician, analyst, loader",
    "GRANT SELECT ON TABLE silver.patients TO clinician, analyst",
    "GRANT INSERT ON TABLE silver.patients TO loader",
    "ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK "
    "CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END",
    "ALTER TABLE silver.patients SET ROW FILTER "
    "is_member('admin') OR is_member('clinician') OR ward = 'icu' ON (ward)",
]

LEAK = "MRN-000"
CHANGES = "table_changes('silver.patients', 0)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("changes")
    env = {f"P_C_{name.upper()}": password for name, password in PASSWORDS.items()}
    srv = Server(root, CONFIG, seed=SEED, env=env)
    yield srv
    srv.stop()


def pg_rows(server, user, sql, mode="simple"):
    with contextlib.closing(pg_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            if mode == "copy":
                with cur.copy(sql) as copy:
                    return note("copy", b"".join(bytes(c) for c in copy).decode())
            if mode == "extended":
                cur.execute(sql, binary=True)
            elif mode == "prepared":
                cur.execute(sql, prepare=True)
            else:
                cur.execute(sql)
            return note("pg rows", repr(cur.fetchall()))


def pg_code(server, user, sql, mode="simple"):
    import psycopg
    try:
        pg_rows(server, user, sql, mode)
        return "ok"
    except psycopg.Error as e:
        note("pg error", str(e))
        return e.sqlstate


def flight_rows(server, user, sql, prepared=False):
    with contextlib.closing(adbc_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            if prepared:
                stmt = cur.adbc_statement
                stmt.set_sql_query(sql)
                stmt.prepare()
                handle, _ = stmt.execute_query()
                table = pa.RecordBatchReader._import_from_c(handle.address).read_all()
                return note("adbc rows", repr(table.to_pylist()))
            cur.execute(sql)
            return note("adbc rows", repr(cur.fetchall()))


PATHS = [
    ("simple", f"SELECT mrn, _change_type FROM {CHANGES}"),
    ("extended", f"SELECT mrn, _change_type FROM {CHANGES}"),
    ("prepared", f"SELECT mrn, _change_type FROM {CHANGES}"),
    ("copy", f"COPY (SELECT mrn, _change_type FROM {CHANGES}) TO STDOUT"),
    ("simple", f"SELECT string_agg(mrn, ',') FROM {CHANGES}"),
    ("simple", f"WITH c AS (SELECT * FROM {CHANGES}) SELECT mrn FROM c"),
    ("simple", f"SELECT mrn FROM {CHANGES} WHERE _change_type = 'update_preimage'"),
    ("simple", "SELECT mrn FROM table_changes('\"silver\".\"patients\"', 4, 4)"),
]


@pytest.mark.parametrize("mode,sql", PATHS)
def test_the_mask_holds_on_every_change_row_on_the_postgres_door(server, mode, sql):
    rows = pg_rows(server, "ann", sql, mode)
    assert LEAK not in rows, rows
    assert "MRN-****" in rows, rows


@pytest.mark.parametrize("prepared", [False, True])
def test_the_mask_and_filter_hold_on_flight_sql(server, prepared):
    rows = flight_rows(server, "ann", f"SELECT mrn, name, ward FROM {CHANGES}", prepared)
    assert LEAK not in rows and "MRN-****" in rows, rows
    assert "cardio" not in rows and "Alan" not in rows, rows
    count = flight_rows(server, "ann",
                        f"SELECT count(*) AS n FROM {CHANGES} WHERE mrn LIKE 'MRN-0%'", prepared)
    assert count in ("[(0,)]", "[{'n': 0}]"), count


def test_a_filter_on_change_rows_cannot_probe_a_masked_value(server):
    for sql in [f"SELECT count(*) FROM {CHANGES} WHERE mrn = 'MRN-0004'",
                f"SELECT count(*) FROM {CHANGES} WHERE mrn LIKE 'MRN-0%'",
                f"SELECT count(*) FROM {CHANGES} WHERE starts_with(mrn, 'MRN-00')"]:
        assert pg_rows(server, "ann", sql) == "[(0,)]", sql


def test_the_row_filter_hides_changes_of_rows_one_cannot_see(server):
    rows = pg_rows(server, "ann",
                   f"SELECT patient_id, ward, _change_type FROM {CHANGES} "
                   "ORDER BY _commit_version, patient_id, _change_type")
    # Patient 2 was never in the ICU: neither its insert nor its delete shows; patient 1's
    # move out of the ICU shows its pre-image only.
    assert "cardio" not in rows and "(2," not in rows, rows
    assert rows.count("'icu'") == 5, rows
    assert pg_rows(server, "ann", f"SELECT count(*) FROM {CHANGES} "
                                  "WHERE _change_type = 'delete'") == "[(0,)]"


def test_the_clinician_sees_every_change(server):
    rows = pg_rows(server, "clin", f"SELECT mrn, _change_type FROM {CHANGES} ORDER BY 1, 2")
    for expected in ["MRN-0001", "MRN-0002", "MRN-0003", "MRN-0004", "delete",
                     "update_preimage", "update_postimage"]:
        assert expected in rows, (expected, rows)


REFUSED = [
    CHANGES,
    "table_changes('silver.patients', 1, 1)",
    "table_changes('silver.patients', 99)",
    "table_changes('silver.patients', 3, 1)",
    "table_changes('silver.patients', '2999-01-01')",
    "table_changes('silver.nothing', 0)",
    "table_changes('nowhere.nothing', 7)",
    "table_changes('\"silver\".\"patients\"', 0)",
    "table_changes('SILVER.PATIENTS', 0)",
    "table_changes('medlake.silver.patients', 0)",
    "table_changes('system.audit', 0)",
    "table_changes('system.grants', 0)",
]


@pytest.mark.parametrize("relation", REFUSED)
@pytest.mark.parametrize("user", ["nob", "lou"])
def test_without_select_changes_are_refused_and_tell_nothing(server, user, relation):
    for mode in ["simple", "extended"]:
        assert pg_code(server, user, f"SELECT * FROM {relation}", mode) == "42501", mode
    with pytest.raises(Exception) as refused:
        flight_rows(server, user, f"SELECT * FROM {relation}")
    message = str(refused.value)
    assert "42501" in message or "PERMISSION" in message.upper(), message
    assert "version" not in message.lower() and "does not exist" not in message, message


def test_nested_and_indirect_reads_are_refused_too(server):
    for sql in [f"SELECT count(*) FROM (SELECT 1) x WHERE EXISTS (SELECT 1 FROM {CHANGES})",
                f"WITH c AS (SELECT * FROM {CHANGES}) SELECT count(*) FROM c",
                f"EXPLAIN SELECT * FROM {CHANGES}",
                f"PREPARE p AS SELECT * FROM {CHANGES}"]:
        assert pg_code(server, "nob", sql) == "42501", sql
    assert pg_code(server, "nob", f"COPY (SELECT * FROM {CHANGES}) TO STDOUT", "copy") == "42501"


def test_bad_arguments_are_clean_errors(server):
    for sql, code in [
        ("SELECT * FROM table_changes('silver.patients', -1)", "22023"),
        ("SELECT * FROM table_changes('silver.patients', NULL)", "22023"),
        ("SELECT * FROM table_changes('silver.patients', 99999999999999999999999)", "22023"),
        ("SELECT * FROM table_changes('silver.patients; DROP TABLE x', 0)", "22023"),
        ("SELECT * FROM table_changes('../silver/patients', 0)", "22023"),
        ("SELECT * FROM table_changes('silver.patients', (SELECT 1))", "0A000"),
        ("SELECT * FROM table_changes('silver.patients', 9)", "22023"),
    ]:
        assert pg_code(server, "ann", sql) == code, sql
