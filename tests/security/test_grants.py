"""Roles, grants, masks, row filters, break glass and the audit trail (issue 23), attacked
through a real `medlake serve` on every door: a role the MRN mask holds for must not read an
MRN through psycopg (simple, extended, prepared), COPY, ADBC Flight SQL (query and prepared),
a gold view, a filter, a join or time travel; grants decide what each user reads; only the
auditor reads `system.audit`, which holds every statement without its literals, and whose
chain `medlake audit verify` checks."""

import contextlib
import secrets
import subprocess

import pyarrow as pa
import pytest

from attack import MEDLAKE, Server, adbc_connect, http_request, note, pg_connect, psql

PASSWORDS = {name: f"Zq{name}x{secrets.token_hex(12)}"
             for name in ["admin", "clin", "ann", "aud", "doc", "wri", "nob"]}
TOKEN = f"Zqtokenx{secrets.token_hex(16)}"
USERS = {name: (name, password) for name, password in PASSWORDS.items()}

CONFIG = """
[[users]]
name = "admin"
password_env = "P_G_ADMIN"
role = "admin"

[[users]]
name = "clin"
password_env = "P_G_CLIN"
role = "none"
roles = ["clinician"]

[[users]]
name = "ann"
password_env = "P_G_ANN"
role = "none"
roles = ["analyst"]

[[users]]
name = "aud"
password_env = "P_G_AUD"
role = "none"
roles = ["auditor"]

[[users]]
name = "doc"
password_env = "P_G_DOC"
role = "none"
roles = ["clinician_lite", "break_glass"]

[[users]]
name = "wri"
password_env = "P_G_WRI"
role = "none"

[[users]]
name = "nob"
password_env = "P_G_NOB"
role = "none"

[[ingest_tokens]]
name = "bedside-gw"
token_env = "T_G_GW"
tables = ["bronze.vitals"]
"""

SEED = [
    "CREATE TABLE bronze.vitals (patient_id BIGINT, hr DOUBLE)",
    "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, name VARCHAR, ward VARCHAR)",
    "INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'Ada Lovelace', 'icu'), "
    "(2, 'MRN-0002', 'Alan Turing', 'cardio'), (3, 'MRN-0003', 'Grace Hopper', 'icu')",
    "CREATE TABLE silver.readings (patient_id BIGINT, hr DOUBLE)",
    "INSERT INTO silver.readings VALUES (1, 80.0), (2, 90.0), (3, 100.0)",
    "CREATE TABLE silver.notes (patient_id BIGINT, note VARCHAR)",
    "INSERT INTO silver.notes VALUES (1, 'private')",
    "CREATE ROLE clinician",
    "CREATE ROLE analyst",
    "CREATE ROLE clinician_lite",
    "GRANT USAGE ON SCHEMA silver TO clinician, analyst, clinician_lite",
    "GRANT SELECT ON TABLE silver.patients TO clinician, analyst, clinician_lite",
    "GRANT SELECT ON TABLE silver.readings TO analyst",
    "GRANT SELECT ON SCHEMA gold TO analyst, clinician",
    "GRANT USAGE ON SCHEMA bronze TO wri",
    "GRANT INSERT ON TABLE bronze.vitals TO wri",
    "ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK "
    "CASE WHEN is_member('clinician') THEN mrn ELSE 'MRN-****' END",
    "CREATE MATERIALIZED VIEW gold.patient_hr AS SELECT p.mrn, upper(p.name) AS shout, "
    "avg(r.hr) AS hr FROM silver.patients p JOIN silver.readings r USING (patient_id) "
    "GROUP BY p.mrn, p.name",
]

LEAK = "MRN-000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("grants")
    env = {f"P_G_{name.upper()}": password for name, password in PASSWORDS.items()}
    env["T_G_GW"] = TOKEN
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


def pg_code(server, user, sql):
    import psycopg
    try:
        pg_rows(server, user, sql)
        return "ok"
    except psycopg.Error as e:
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
    ("simple", "SELECT mrn FROM silver.patients"),
    ("extended", "SELECT mrn FROM silver.patients"),
    ("prepared", "SELECT mrn FROM silver.patients"),
    ("copy", "COPY (SELECT mrn FROM silver.patients) TO STDOUT"),
    ("copy", "COPY silver.patients TO STDOUT"),
    ("simple", "SELECT mrn, shout FROM gold.patient_hr"),
    ("simple", "SELECT mrn FROM silver.patients VERSION AS OF 1"),
    ("simple", "SELECT string_agg(mrn, ',') FROM silver.patients"),
    ("simple", "SELECT r.hr, p.mrn FROM silver.readings r JOIN silver.patients p USING (patient_id)"),
]


@pytest.mark.parametrize("mode,sql", PATHS)
def test_the_mrn_mask_holds_on_the_postgres_door(server, mode, sql):
    rows = pg_rows(server, "ann", sql, mode)
    assert LEAK not in rows, rows
    assert "MRN-****" in rows or "Ada" not in rows


@pytest.mark.parametrize("prepared", [False, True])
def test_the_mrn_mask_holds_on_flight_sql(server, prepared):
    for sql in ["SELECT mrn FROM silver.patients", "SELECT mrn, shout FROM gold.patient_hr",
                "SELECT count(*) FROM silver.patients WHERE mrn = 'MRN-0001'"]:
        rows = flight_rows(server, "ann", sql, prepared)
        assert LEAK not in rows, (sql, rows)
        if "count" in sql:
            assert rows in ("[(0,)]", "[{'count(*)': 0}]"), rows


def test_a_filter_cannot_probe_a_masked_value(server):
    rows = pg_rows(server, "ann", "SELECT count(*) FROM silver.patients WHERE mrn LIKE 'MRN-0%'")
    assert rows == "[(0,)]", rows


def test_the_clinician_sees_real_values(server):
    rows = pg_rows(server, "clin", "SELECT mrn, shout FROM gold.patient_hr ORDER BY mrn")
    assert "MRN-0001" in rows and "ADA LOVELACE" in rows, rows
    rows = flight_rows(server, "clin", "SELECT mrn FROM silver.patients ORDER BY mrn")
    assert "MRN-0001" in rows, rows


def test_grants_decide_what_each_user_reads(server):
    assert pg_code(server, "ann", "SELECT * FROM silver.notes") == "42501"
    assert pg_code(server, "clin", "SELECT * FROM silver.readings") == "42501"
    assert pg_code(server, "ann", "INSERT INTO silver.readings VALUES (9, 1.0)") == "42501"
    assert pg_code(server, "ann", "ALTER TABLE silver.patients ALTER COLUMN mrn DROP MASK") == "42501"
    assert pg_code(server, "ann", "GRANT analyst TO ann") == "42501"
    assert pg_code(server, "ann", "GRANT SELECT ON TABLE silver.notes TO ann") == "42501"
    listed = pg_rows(server, "ann", "SELECT table_name FROM information_schema.tables "
                                    "WHERE table_schema = 'silver' ORDER BY 1")
    assert "patients" in listed and "readings" in listed and "notes" not in listed, listed
    with pytest.raises(Exception) as refused:
        flight_rows(server, "ann", "SELECT * FROM silver.notes")
    assert "42501" in str(refused.value) or "PERMISSION" in str(refused.value).upper()


def test_psql_dp_lists_privileges(server):
    # An admin sees every grant, in PostgreSQL's aclitem form (medlake records no grantor:
    # the owner, or `medlake` for the operator's tables).
    code, out, err = psql(server, USERS["admin"], r"\dp silver.*")
    assert code == 0, err
    assert "Access privileges" in out and "patients" in out and "notes" in out, out
    assert "analyst=r/medlake" in out and "clinician=r/medlake" in out, out
    assert "clinician_lite=r/medlake" in out, out
    # ann sees the tables she may use, and her own roles' grants only.
    code, out, err = psql(server, USERS["ann"], r"\dp")
    assert code == 0, err
    assert "patients" in out and "readings" in out and "patient_hr" in out, out
    assert "analyst=r/medlake" in out, out
    assert "notes" not in out and "clinician" not in out and "vitals" not in out, out
    code, out, err = psql(server, USERS["nob"], r"\dp silver.*")
    assert code == 0, err
    assert "(0 rows)" in out, out


COLUMNS = ("SELECT c.relname, a.attname FROM pg_catalog.pg_attribute a "
           "JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
           "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
           "WHERE n.nspname IN ('silver', 'bronze', 'gold') ORDER BY 1, 2")


def test_catalogs_show_columns_only_of_what_one_may_use(server):
    for sql in [COLUMNS,
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema IN ('silver', 'bronze', 'gold')",
                "SELECT relname FROM pg_catalog.pg_class WHERE relname IN "
                "('patients', 'notes', 'vitals', 'readings')"]:
        assert pg_rows(server, "nob", sql) == "[]", sql
        rows = pg_rows(server, "ann", sql)
        assert "patients" in rows and "readings" in rows, rows
        assert "notes" not in rows and "vitals" not in rows, rows
    assert "'note'" not in pg_rows(server, "ann", COLUMNS)
    # One may see the columns of what one may write.
    rows = pg_rows(server, "wri", COLUMNS)
    assert "('vitals', 'hr')" in rows and "patients" not in rows, rows
    assert pg_code(server, "nob", "DESCRIBE silver.notes") == "42501"
    assert pg_code(server, "ann", "DESCRIBE silver.notes") == "42501"
    assert pg_code(server, "ann", "DESCRIBE silver.patients") == "ok"
    assert pg_code(server, "wri", "DESCRIBE bronze.vitals") == "ok"
    rows = pg_rows(server, "ann", "SELECT has_table_privilege('silver.patients', 'SELECT'), "
                                  "has_table_privilege('silver.notes', 'SELECT')")
    assert rows == "[(True, False)]", rows


def objects(server, user):
    with contextlib.closing(adbc_connect(server, USERS[user])) as conn:
        found = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    note("adbc objects", repr(found))
    tables = {}
    for catalog in found:
        for schema in catalog["catalog_db_schemas"] or []:
            for table in schema["db_schema_tables"] or []:
                name = f"{schema['db_schema_name']}.{table['table_name']}"
                tables[name] = [c["column_name"] for c in table["table_columns"] or []]
    return tables


def test_adbc_get_objects_lists_what_one_may_use(server):
    # INSERT alone: the table and its columns, nothing else (and no PERMISSION_DENIED).
    tables = objects(server, "wri")
    assert tables.get("bronze.vitals") == ["patient_id", "hr"], tables
    assert not any(t.startswith(("silver.", "gold.")) for t in tables), tables
    tables = objects(server, "ann")
    assert "silver.patients" in tables and "mrn" in tables["silver.patients"], tables
    assert "silver.notes" not in tables and "bronze.vitals" not in tables, tables
    tables = objects(server, "nob")
    assert not any(t.startswith(("silver.", "bronze.", "gold.")) for t in tables), tables


def test_break_glass_is_for_its_members_on_their_connection_only(server):
    import psycopg
    with contextlib.closing(pg_connect(server, USERS["ann"])) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SET medlake.break_glass = 'looking around for fun'")
        assert refused.value.sqlstate == "42501"
    with contextlib.closing(pg_connect(server, USERS["doc"])) as conn, \
            contextlib.closing(pg_connect(server, USERS["doc"])) as other:
        assert LEAK not in repr(conn.execute("SELECT mrn FROM silver.patients").fetchall())
        conn.execute("SET medlake.break_glass = 'cardiac arrest in bay 4'")
        assert "MRN-0001" in repr(conn.execute("SELECT mrn FROM silver.patients").fetchall())
        assert LEAK not in repr(other.execute("SELECT mrn FROM silver.patients").fetchall())
        conn.execute("RESET medlake.break_glass")
        assert LEAK not in repr(conn.execute("SELECT mrn FROM silver.patients").fetchall())


def pg_count(server, user, sql, params=None, prepare=False):
    """The row count a DML statement reports on the Postgres door (its command tag)."""
    with contextlib.closing(pg_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            cur.execute(sql, params, prepare=prepare)
            return note("pg command", f"{cur.statusmessage} {cur.rowcount}")


def test_dml_is_no_oracle_and_no_exfiltration_path_for_masked_values(server):
    """DELETE/UPDATE/MERGE by a role the MRN mask holds for read the masked value: row counts
    do not tell a guessed MRN, and MERGE copies only the masked value."""
    admin = "admin"
    for sql in ["GRANT UPDATE, DELETE ON TABLE silver.patients TO analyst",
                "GRANT SELECT, INSERT ON TABLE silver.notes TO analyst"]:
        pg_count(server, admin, sql)
    try:
        for sql, params, prepare in [
            ("DELETE FROM silver.patients WHERE mrn = 'MRN-0001'", None, False),
            ("DELETE FROM silver.patients WHERE mrn = %s", ("MRN-0001",), False),
            ("DELETE FROM silver.patients WHERE mrn = %s", ("MRN-0002",), True),
            ("UPDATE silver.patients SET ward = ward WHERE mrn LIKE 'MRN-0%%'", (), False),
            ("MERGE INTO silver.patients t USING (SELECT 'MRN-0003' AS m) s ON t.mrn = s.m "
             "WHEN MATCHED THEN DELETE", None, False),
        ]:
            assert pg_count(server, "ann", sql, params, prepare).endswith(" 0"), sql
        with contextlib.closing(adbc_connect(server, USERS["ann"])) as conn:
            with conn.cursor() as cur:
                cur.adbc_statement.set_sql_query(
                    "UPDATE silver.patients SET ward = ward WHERE mrn = 'MRN-0001'")
                assert cur.adbc_statement.execute_update() == 0
        copied = pg_count(server, "ann",
                          "MERGE INTO silver.notes n USING silver.patients p "
                          "ON n.patient_id = p.patient_id + 100 WHEN NOT MATCHED THEN "
                          "INSERT (patient_id, note) VALUES (p.patient_id + 100, p.mrn)")
        assert copied == "MERGE 3 3", copied
        notes = pg_rows(server, admin, "SELECT note FROM silver.notes WHERE patient_id > 100")
        assert LEAK not in notes and "MRN-****" in notes, notes
        assert pg_code(server, "clin", "DELETE FROM silver.patients") == "42501"
        rows = pg_rows(server, "clin", "SELECT mrn FROM silver.patients ORDER BY mrn")
        assert rows.count("MRN-000") == 3, rows
    finally:
        pg_count(server, admin, "DELETE FROM silver.notes WHERE patient_id > 100")
        pg_count(server, admin, "REVOKE UPDATE, DELETE ON TABLE silver.patients FROM analyst")
        pg_count(server, admin, "REVOKE SELECT, INSERT ON TABLE silver.notes FROM analyst")


def test_only_the_auditor_reads_the_audit_and_it_holds_no_literals(server):
    import time
    assert pg_code(server, "admin", "SELECT * FROM system.audit") == "42501"
    assert pg_code(server, "ann", "SELECT * FROM system.audit") == "42501"
    pg_rows(server, "ann", "SELECT count(*) FROM silver.patients WHERE mrn = 'MRN-0002'")
    rows = ""
    for _ in range(50):
        rows = pg_rows(server, "aud", "SELECT user_name, door, client_addr, statement, outcome, "
                                      "sqlstate, break_glass FROM system.audit ORDER BY seq")
        if "MRN-****" in rows or ("= ?" in rows and "cardiac arrest" in rows):
            break
        time.sleep(0.2)
    assert LEAK not in rows, "a literal reached the audit"
    assert "'ann', 'postgres', '127.0.0.1:" in rows, rows
    assert "'flight'" in rows and "'denied', '42501'" in rows, rows
    assert "cardiac arrest in bay 4" in rows, rows


def test_http_ingest_is_audited_before_it_is_acknowledged(server):
    status, _, body = http_request(server, "POST", "/v1/ingest/bronze.vitals",
                                   body=b'{"patient_id": 1, "hr": 71.5}\n',
                                   headers={"Authorization": f"Bearer {TOKEN}",
                                            "Content-Type": "application/x-ndjson"})
    assert status == 200, body
    rows = pg_rows(server, "aud", "SELECT user_name, door, kind, objects_written, row_count "
                                  "FROM system.audit WHERE door = 'http'")
    assert "('bedside-gw', 'http', 'INGEST', 'bronze.vitals', 1)" in rows, rows
    assert TOKEN not in rows


def test_refused_logins_requests_and_unparsable_sql_are_audited(server):
    """Probing leaves a trace: wrong passwords and unknown users on the Postgres and Flight
    doors, HTTP requests without a token (401) or outside its scope (403), and SQL that does
    not parse or tokenize, each with its SQLSTATE and client address, and no literal."""
    import time
    import psycopg
    for user in [("ann", "wrong-" + PASSWORDS["ann"]), ("mallory", "guess")]:
        with pytest.raises(psycopg.OperationalError):
            pg_connect(server, user).close()
    with pytest.raises(Exception):
        with contextlib.closing(adbc_connect(server, ("ann", "wrong"))) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
    status, _, _ = http_request(server, "POST", "/v1/ingest/bronze.vitals", body=b"{}\n")
    assert status == 401
    status, _, _ = http_request(server, "POST", "/v1/ingest/silver.patients",
                                body=b'{"patient_id": 1}\n',
                                headers={"Authorization": f"Bearer {TOKEN}",
                                         "Content-Type": "application/x-ndjson"})
    assert status == 403
    assert pg_code(server, "ann", "SELEC mrn FROM silver.patients WHERE mrn = 'MRN-0009'") == "42601"
    assert pg_code(server, "ann", "SELECT 'MRN-0009") == "42601"
    with pytest.raises(Exception):
        flight_rows(server, "ann", "SELEC * FROM silver.patients WHERE mrn = 'MRN-0009'")
    wanted = ["('ann', 'postgres', 'LOGIN', 'error', '28P01')",
              "('mallory', 'postgres', 'LOGIN', 'error', '28P01')",
              "('ann', 'flight', 'LOGIN', 'error', '28P01')",
              "('(no credentials)', 'http', 'LOGIN', 'error', '28000')",
              "('bedside-gw', 'http', 'INGEST', 'denied', '42501')"]
    rows = ""
    for _ in range(50):
        rows = pg_rows(server, "aud", "SELECT user_name, door, kind, outcome, sqlstate "
                                      "FROM system.audit ORDER BY seq")
        if all(w in rows for w in wanted) and rows.count("'42601'") >= 3:
            break
        time.sleep(0.2)
    for w in wanted:
        assert w in rows, (w, rows)
    assert rows.count("'42601'") >= 3, rows
    statements = pg_rows(server, "aud", "SELECT statement, client_addr FROM system.audit "
                                        "WHERE sqlstate IN ('42601', '28P01', '28000')")
    assert "MRN-0009" not in statements and "wrong" not in statements, statements
    assert "does not tokenize" in statements and "127.0.0.1:" in statements, statements


def test_the_audit_chain_verifies_after_the_server_stops(server):
    server.stop()
    done = subprocess.run([MEDLAKE, "audit", "verify", "--warehouse", str(server.warehouse)],
                          capture_output=True, text=True, timeout=120)
    note("audit verify", done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    server.start()
