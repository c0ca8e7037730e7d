"""Untrusted numbers: intervals, cron strings, timeouts, limits and versions from SQL or from a
login's startup options. Each one is refused with an error or accepted sanely; none panics a
connection or the server, and none is stored in a form that kills the server at its next start."""

import time

import psycopg
import pytest

from attack import USERS, Server, note, pg_connect, psql, run_probe, users_toml

SEED = [
    "CREATE TABLE bronze.readings (device_id VARCHAR NOT NULL, value DOUBLE)",
    "INSERT INTO bronze.readings VALUES ('pump-1', 1.0), ('pump-2', 2.0)",
]


@pytest.fixture(scope="module")
def numbers(tmp_path_factory):
    # The scheduler looks at the stored schedules every second (a bad one would kill it soon).
    server = Server(tmp_path_factory.mktemp("numbers"), users_toml(), seed=SEED,
                    args=["--poll-seconds", "1"])
    try:
        yield server
    finally:
        server.stop()


def still_serving(server, accepted=False):
    """The server is up and answers. After a schedule it accepted, the scheduler gets a tick
    first. A dead server is started again on a fresh warehouse (a stored definition that kills
    it would kill it at every start) so that the next tests are not blamed."""
    if accepted:
        deadline = time.time() + 1.5
        while time.time() < deadline and server.alive():
            time.sleep(0.1)
    if not server.alive():
        text = server.log()
        log = "\n".join(l for l in text.splitlines() if "panicked" in l) + "\n" + text[-1500:]
        server.reset()
        pytest.fail("medlake serve died:\n" + log)
    with pg_connect(server, USERS["reader"]) as conn:
        assert conn.execute("SELECT count(*) FROM bronze.readings").fetchone() == (2,)


BAD_INTERVALS = [
    "9223372036854775807 seconds", "9223372036854775808 seconds", "18446744073709551616 seconds",
    "-9223372036854775808 seconds", "-1 seconds", "0 seconds", "0.0000001 seconds",
    "1e300 seconds", "NaN seconds", "inf seconds", "99999999999 years",
    "9223372036854775807 minutes", "9223372036854775807 hours", "2147483648 days",
    "9223372036854775807 milliseconds 9223372036854775807 seconds", "5 fortnights", "",
    "seconds", "P1Y", "1 second; DROP TABLE bronze.readings",
]


@pytest.mark.parametrize("interval", BAD_INTERVALS)
def test_refresh_every_garbage_is_an_error(numbers, interval):
    name = "every_" + str(BAD_INTERVALS.index(interval))
    outcome = run_probe(numbers, "writer", "pg-simple", [
        f"CREATE MATERIALIZED VIEW gold.{name} REFRESH EVERY '{interval.replace(chr(39), '')}' "
        f"AS SELECT count(*) AS n FROM bronze.readings"])
    still_serving(numbers, accepted=outcome.ok)
    assert not outcome.ok, f"REFRESH EVERY '{interval}' was accepted"
    assert outcome.code not in (None, "XX000"), outcome


BAD_CRONS = [
    "* * * * * * *", "99 99 99 99 99", "*/0 * * * *", "0-99999999999999999999 * * * *",
    "*/9223372036854775807 * * * *", "*/18446744073709551616 * * * *", "-1 * * * *",
    "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 * 13 *", "0 0 * * 8", "5-1 * * * *",
    "", "     ", "a b c d e", "1,,2 * * * *", "0 0 32 * *",
]


@pytest.mark.parametrize("cron", BAD_CRONS)
def test_refresh_cron_garbage_is_an_error(numbers, cron):
    name = "cron_" + str(BAD_CRONS.index(cron))
    outcome = run_probe(numbers, "writer", "pg-simple", [
        f"CREATE MATERIALIZED VIEW gold.{name} REFRESH CRON '{cron}' "
        f"AS SELECT count(*) AS n FROM bronze.readings"])
    still_serving(numbers, accepted=outcome.ok)
    assert not outcome.ok, f"REFRESH CRON '{cron}' was accepted"
    assert outcome.code not in (None, "XX000"), outcome


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "59 23 31 12 *", "0 0 29 2 1"])
def test_cron_that_rarely_or_never_fires_does_not_hang(numbers, cron):
    """Valid syntax naming a day that never (Feb 30/31) or rarely comes: refused, or accepted
    without the scheduler spinning forever looking for it."""
    name = "rare_" + cron.replace(" ", "_").replace("*", "x")
    outcome = run_probe(numbers, "writer", "pg-simple", [
        f"CREATE MATERIALIZED VIEW gold.{name} REFRESH CRON '{cron}' "
        f"AS SELECT count(*) AS n FROM bronze.readings"])
    note("rare cron", repr(outcome))
    started = time.time()
    still_serving(numbers, accepted=outcome.ok)
    assert time.time() - started < 10
    assert outcome.ok or outcome.code not in (None, "XX000"), outcome


def test_the_scheduler_survives_what_was_stored(numbers):
    """Whatever the statements above stored, the scheduler's next ticks do not kill serve."""
    time.sleep(2.5)
    still_serving(numbers)


BAD_TIMEOUTS = ["1e300", "-5", "NaN", "99999999999999999h", "inf", "-inf", "1e300ms",
                "9223372036854775807", "9223372036854775808", "2147483648",
                "9223372036854775807d", "18446744073709551615us", "1 fortnight", "", "5 s s",
                "-0.5", "1e-300"]


@pytest.mark.parametrize("door", ["pg-simple", "pg-extended", "psql"])
@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_statement_timeout_garbage_is_22023(numbers, value, door):
    if door == "psql":
        rc, out, err = psql(numbers, USERS["reader"], f"SET statement_timeout = '{value}'",
                            "SELECT 41 + 1")
        still_serving(numbers)
        assert rc != 0 and "22023" in err, (rc, out, err)
        return
    with pg_connect(numbers, USERS["reader"]) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"SET statement_timeout = '{value}'",
                         binary=door == "pg-extended")
        note("timeout", str(refused.value))
        assert refused.value.sqlstate == "22023", (refused.value.sqlstate, str(refused.value))
        # The connection still works, with the timeout it had.
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert conn.execute("SHOW statement_timeout").fetchone()[0] in ("0", "0ms", "0s")
    still_serving(numbers)


@pytest.mark.parametrize("value", ["0", "10s", "2147483647", "1min", "1500ms"])
def test_statement_timeout_sane_values_work(numbers, value):
    with pg_connect(numbers, USERS["reader"]) as conn:
        conn.execute(f"SET statement_timeout = '{value}'")
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("options", [
    "-c statement_timeout=1e300", "-c statement_timeout=99999999999999999h",
    "-c statement_timeout=-5", "-c statement_timeout=NaN",
    "-c statement_timeout=9223372036854775807", "-c datafusion.runtime.memory_limit=1G",
    "-c datafusion.runtime.temp_directory=/tmp/evil", "-c search_path=" + "x" * 100000,
    "-c " + "a" * 70000 + "=1", "-c extra_float_digits=99999999999999999999",
])
def test_startup_options_do_not_crash_the_server(numbers, options):
    commands = ["SELECT 41 + 1"]
    if "datafusion.runtime" in options:
        commands.append("SELECT name, value FROM information_schema.df_settings "
                        "WHERE name LIKE 'datafusion.runtime.%'")
    rc, out, err = psql(numbers, USERS["reader"], *commands, options=options)
    note("startup options", f"{rc} {out} {err}")
    still_serving(numbers)
    if "datafusion.runtime" in options:
        # Refused at login (as PostgreSQL does with a forbidden setting), or not applied.
        assert rc != 0 or ("/tmp/evil" not in out and "1G" not in out), out


@pytest.mark.parametrize("statement", [
    "DESCRIBE HISTORY bronze.readings LIMIT 18446744073709551615",
    "DESCRIBE HISTORY bronze.readings LIMIT 9223372036854775807",
    "DESCRIBE HISTORY bronze.readings LIMIT -1",
    "SELECT * FROM table_history('bronze.readings', -1)",
    "SELECT * FROM table_history('bronze.readings', 9223372036854775807)",
    "SELECT * FROM table_history('bronze.readings', 18446744073709551616)",
    "SELECT * FROM bronze.readings VERSION AS OF 9223372036854775807",
    "SELECT * FROM bronze.readings VERSION AS OF -1",
    "SELECT * FROM bronze.readings VERSION AS OF 18446744073709551616",
    "SELECT * FROM bronze.readings TIMESTAMP AS OF '99999-01-01 00:00:00'",
    "SELECT * FROM bronze.readings TIMESTAMP AS OF '-9999-01-01 00:00:00'",
    "VACUUM bronze.readings RETAIN 9223372036854775807 HOURS",
    "VACUUM bronze.readings RETAIN -1 HOURS",
    "VACUUM bronze.readings RETAIN 18446744073709551616 HOURS DRY RUN",
    "SELECT * FROM bronze.readings LIMIT 9223372036854775807",
    "SELECT * FROM bronze.readings OFFSET 9223372036854775807",
    "SELECT * FROM range(0, 9223372036854775807, 4611686018427387904)",
    "COPY (SELECT 1) TO STDOUT (FORMAT csv, DELIMITER '')",
    "COPY (SELECT 1) TO STDOUT (FORMAT csv, DELIMITER 'xx')",
    "COPY (SELECT 1) TO STDOUT (FORMAT csv, QUOTE '')",
    "COPY (SELECT 1) TO STDOUT (FORMAT binary)",
    "COPY (SELECT 1) TO STDOUT (FORMAT csv, ENCODING 'nope', FORCE_QUOTE *)",
])
def test_limits_and_versions_never_panic(numbers, statement):
    rc, out, err = psql(numbers, USERS["writer"], statement)
    still_serving(numbers)
    assert "XX000" not in err and "panic" not in err.lower(), err


def test_restart_on_the_same_warehouse_works(numbers):
    """Whatever the statements above stored, the server starts again on the warehouse and its
    scheduler survives a tick."""
    numbers.restart()
    time.sleep(2)
    still_serving(numbers)
    with pg_connect(numbers, USERS["admin"]) as conn:
        views = conn.execute("SELECT * FROM system.materialized_views").fetchall()
        note("stored views", repr(views))
