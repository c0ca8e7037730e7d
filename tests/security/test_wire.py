"""What an attacker tries below SQL or around it: malformed Postgres startup packets before any
login, guessed cancel keys, reading server files through DataFusion's URL tables, and settings
that would turn a query into a denial of service."""

import socket
import struct
import threading
import time

import psycopg
import pytest

from attack import USERS, note, pg_connect, run_probe


def raw_pg(main, payload, wait=2.0):
    """Sends `payload` on a fresh TCP connection to the Postgres door; returns what came back
    before the server closed or `wait` passed."""
    data = b""
    with socket.create_connection(("127.0.0.1", main.pg_port), timeout=wait) as sock:
        try:
            sock.sendall(payload)
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    return data


def logs_in(main):
    with pg_connect(main, USERS["reader"]) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


STARTUPS = {
    "length_0": struct.pack("!II", 0, 196608),
    "length_3": struct.pack("!II", 3, 196608),
    "length_7": struct.pack("!II", 7, 196608),
    "length_8_no_params": struct.pack("!II", 8, 196608),
    "length_negative": struct.pack("!Ii", 0xFFFFFFFF, 196608),
    "length_2gib": struct.pack("!II", 0x7FFFFFFF, 196608),
    "length_1gib_partial": struct.pack("!II", 1 << 30, 196608) + b"user\0" * 1000,
    "unterminated_params": struct.pack("!II", 30, 196608) + b"user\0reader\0database",
    "unknown_protocol": struct.pack("!II", 8, 0x00020000),
    "protocol_99": struct.pack("!II", 8, 0x00630000),
    "ssl_then_garbage": struct.pack("!II", 8, 80877103) + b"\x16\x03\x01" + b"\xff" * 5000,
    "gssenc": struct.pack("!II", 8, 80877104),
    "cancel_short": struct.pack("!II", 12, 80877102) + b"\0\0\0\1",
    "cancel_long_key": struct.pack("!II", 272, 80877102) + b"\x01" * 264,
    "huge_param": struct.pack("!II", 8 + 5 + 200000 + 2, 196608) + b"user\0" + b"u" * 200000 + b"\0\0",
    "many_params": (lambda body: struct.pack("!II", 8 + len(body), 196608) + body)(
        b"".join(f"p{i}\0v\0".encode() for i in range(20000)) + b"\0"),
    "options_huge_timeout": (lambda body: struct.pack("!II", 8 + len(body), 196608) + body)(
        b"user\0reader\0database\0medlake\0options\0-c statement_timeout=99999999999999999h\0\0"),
}


@pytest.mark.parametrize("name", list(STARTUPS))
def test_malformed_startup_packets_do_not_hurt(main, name):
    main.reset_peak_memory()
    before = main.memory("VmHWM")
    answer = raw_pg(main, STARTUPS[name], wait=1.0)
    note("startup", repr(answer[:300]))
    assert main.alive(), main.log()[-2000:]
    assert logs_in(main)
    grown = main.memory("VmHWM") - before
    assert grown < 64 << 20, f"peak memory grew by {grown >> 20} MiB for one startup packet"
    assert b"panicked" not in answer


def test_guessed_cancel_keys_cancel_nothing(main):
    """CancelRequests with the right backend pid and guessed secret keys (0, small numbers,
    the pid itself) must not cancel a running query; it ends by its own statement_timeout."""
    conn = pg_connect(main, USERS["reader"])
    pid = conn.info.backend_pid
    result = {}

    def run():
        try:
            conn.execute("SET statement_timeout = '2500ms'")
            conn.execute("SELECT sum(value % 7) FROM range(0, 100000000000) AS t(value)")
            result["error"] = None
        except psycopg.Error as e:
            result["error"] = str(e)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.8)
    for key in [0, 1, 2, 3, pid, pid + 1, -1, 0x7FFFFFFF] + list(range(4, 200)):
        raw_pg(main, struct.pack("!IIii", 16, 80877102, pid, key), wait=0.2)
    worker.join(timeout=30)
    conn.close()
    note("cancel", repr(result))
    assert result.get("error"), result
    assert "user request" not in result["error"], "a guessed cancel key cancelled the query"


@pytest.mark.parametrize("user", ["reader", "writer", "etl"])
@pytest.mark.parametrize("door", ["pg-simple", "flight-query"])
def test_url_tables_do_not_read_server_files(main, user, door):
    """DataFusion can read `SELECT * FROM '/path/file.csv'` when URL tables are enabled: no
    principal may read server files that way (nor with a table function)."""
    secret_file = main.tls_dir / "server.key"
    passwd_csv = main.root / "notes.csv"
    passwd_csv.write_text("who,what\nroot,private\n")
    for sql in [f"SELECT * FROM '{passwd_csv}'", f"SELECT * FROM 'file://{passwd_csv}'",
                "SELECT * FROM '/etc/passwd'", f"SELECT * FROM '{secret_file}'",
                f"SELECT * FROM read_csv('{passwd_csv}')",
                f"SELECT * FROM read_parquet('{main.warehouse}/bronze/readings/')"]:
        outcome = run_probe(main, user, door, [sql])
        assert not outcome.ok, f"{user} read a server file through {door}: {sql}"
        assert "private" not in outcome.message and "PRIVATE KEY" not in outcome.message


@pytest.mark.parametrize("door", ["pg-simple", "flight-update"])
@pytest.mark.parametrize("setting", [
    "datafusion.execution.batch_size = 0",
    "datafusion.execution.target_partitions = 0",
    "datafusion.execution.target_partitions = 1000000",
    "datafusion.execution.batch_size = 18446744073709551615",
    "datafusion.execution.planning_concurrency = 0",
    "datafusion.execution.sort_spill_reservation_bytes = 18446744073709551615",
    "datafusion.optimizer.max_passes = 4294967295",
    "datafusion.catalog.default_catalog = 'other'",
    "datafusion.catalog.location = '/etc'",
    "datafusion.execution.parquet.metadata_size_hint = 18446744073709551615",
])
def test_settings_cannot_break_the_server(main, setting, door):
    """A reader's SET of a DataFusion setting: refused, or harmless (a query still answers and
    the server stays up)."""
    outcome = run_probe(main, "reader", door, [
        f"SET {setting}", "SELECT count(*) FROM bronze.readings GROUP BY device_id"])
    note("setting", repr(outcome))
    assert main.alive(), main.log()[-2000:]
    assert logs_in(main)
    if not outcome.ok:
        assert outcome.code not in (None, "XX000"), outcome
