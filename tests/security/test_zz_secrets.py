"""Secrets never leak. Runs last: every error, result and log line the suite captured, every
warehouse file, and everything a principal can list (system.*, information_schema, SHOW, the
Postgres catalog, /metrics) must be free of the values of the login passwords (P_*), ingest
tokens (T_*) and MEDLAKE_EHR_PASSWORD."""

import pytest

from attack import (CAPTURED, LOGS, SECRET_ENV, SERVERS, USERS, RawFlight, http_request, note,
                    psql, run_probe)

LISTINGS = [
    "SHOW ALL",
    "SHOW TABLES",
    "SHOW MATERIALIZED VIEWS",
    "SELECT * FROM information_schema.df_settings",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM information_schema.views",
    "SELECT * FROM information_schema.schemata",
    "SELECT * FROM information_schema.routines",
    "SELECT * FROM information_schema.parameters",
]
PG_LISTINGS = [
    "SELECT * FROM pg_catalog.pg_settings",
    "SELECT * FROM pg_catalog.pg_roles",
    "SELECT * FROM pg_catalog.pg_user",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT * FROM pg_catalog.pg_shadow",
    "SELECT * FROM pg_catalog.pg_stat_activity",
    "SELECT current_user, session_user, version()",
    r"\du",
    r"\dx",
]


def system_tables(server):
    from attack import admin_rows
    rows = admin_rows(server, "SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = 'system'")
    return [f"SELECT * FROM system.{name}" for (name,) in rows]


def grep(text, where):
    found = [name for name, value in SECRET_ENV.items() if value in text]
    assert not found, f"the value of {found} appears in {where}"


@pytest.mark.parametrize("user", ["reader", "writer", "etl", "admin"])
def test_listings_show_no_secret_values(main, user):
    statements = LISTINGS + system_tables(main)
    # Postgres door: everything in one psql session (errors do not stop it).
    rc, out, err = psql(main, USERS[user], *statements, *PG_LISTINGS, stop_on_error=False)
    grep(out + err, f"psql listings as {user}")
    # Flight door: the same listings through raw Flight SQL.
    client = RawFlight(main, USERS[user])
    try:
        for sql in statements:
            try:
                text = repr([t.to_pylist() for t in client.query(sql)])
            except Exception as e:  # noqa: BLE001
                text = str(e)
            grep(note("flight listing", text), f"flight {sql}")
    finally:
        client.close()


def test_logins_with_someone_elses_password_do_not_echo_it(main):
    for user in ("reader", "nobody"):
        for door in ("psql", "pg-simple", "adbc-query", "flight-query"):
            from attack import Outcome
            fake = {"reader": ("reader", SECRET_ENV["P_ADMIN"]),
                    "nobody": ("nobody", SECRET_ENV["P_WRITER"])}[user]
            USERS["_fake"] = fake
            try:
                outcome = run_probe(main, "_fake", door, ["SELECT 1"])
            finally:
                USERS.pop("_fake")
            assert not outcome.ok, f"{door} let {fake[0]} in with another user's password"
            assert isinstance(outcome, Outcome)
            grep(outcome.message, f"{door} login error")


def test_metrics_and_health_show_no_secret_values(main):
    for path in ("/metrics", "/healthz"):
        status, headers, body = http_request(main, "GET", path)
        grep(body.decode(errors="replace") + repr(headers), path)


def test_warehouse_files_hold_no_secret_values():
    for server in SERVERS:
        for path in server.warehouse.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for name, value in SECRET_ENV.items():
                    assert value.encode() not in data, f"{name}'s value is stored in {path}"


def test_nothing_captured_holds_a_secret_value():
    """Every error message, result and serve output line of the whole run (servers stopped
    earlier included)."""
    for server in SERVERS:
        if server.serve is not None:
            note("live log", server.log())
    texts = list(CAPTURED) + [p.read_text(errors="replace") for p in LOGS if p.exists()]
    assert texts, "nothing was captured: run the whole suite"
    for i, text in enumerate(texts):
        grep(text, f"captured output #{i}: {text[:200]!r}")
