"""Passwords and tokens never travel in clear off loopback: `medlake serve` with users refuses to
open any door on a non-loopback address without `[tls]` (a clear message, a non-zero exit), and
with `[tls]` every door opens there and refuses clear-text clients."""

import re
import socket
import ssl

import psycopg
import pyarrow.flight as flight
import pytest

from attack import SECRET_ENV, USERS, note, serve_process, users_toml
from helpers import run_medlake, write_tls_files

TOKENS = """
[[ingest_tokens]]
name = "gw"
token_env = "T_GW"
tables = ["bronze.readings"]
"""

DOORS = {"pg": "postgres", "flight": "flight", "http": "http"}


def args(root, config, **addresses):
    out = ["--warehouse", str(root / "warehouse"), "--config", str(config)]
    for door in ("pg", "flight", "http"):
        out += [f"--{door}", addresses.get(door, "127.0.0.1:0")]
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("transport")
    run_medlake(root / "warehouse", "CREATE TABLE bronze.readings (device_id VARCHAR, value DOUBLE)")
    (root / "tls").mkdir()
    write_tls_files(root / "tls")
    (root / "clear.toml").write_text(users_toml() + TOKENS)
    (root / "tls.toml").write_text(users_toml() + TOKENS + f"""
[tls]
cert = "{root / 'tls' / 'server.crt'}"
key = "{root / 'tls' / 'server.key'}"
""")
    return root


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
@pytest.mark.parametrize("door", ["pg", "flight", "http"])
def test_users_without_tls_on_a_public_address_refuse_to_start(root, door, address):
    exited, output = serve_process(args(root, root / "clear.toml", **{door: address}),
                                   SECRET_ENV)
    assert exited, f"serve started its {door} door on {address} without TLS:\n{output}"
    assert re.search(r"tls", output, re.IGNORECASE), f"no clear message about TLS:\n{output}"
    assert "panicked" not in output, output
    for value in SECRET_ENV.values():
        assert value not in output


def test_tls_on_every_public_door_starts_and_refuses_clear_text(root):
    import subprocess
    import time

    from attack import MEDLAKE
    import os
    log = root / "public.log"
    with open(log, "w") as out:
        process = subprocess.Popen([MEDLAKE, "serve", *args(root, root / "tls.toml",
                                                            pg="0.0.0.0:0", flight="0.0.0.0:0",
                                                            http="0.0.0.0:0")],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, **SECRET_ENV))
    try:
        deadline = time.time() + 60
        while "medlake serve: http on" not in log.read_text():
            assert process.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        text = note("public serve", log.read_text())
        ports = {}
        for door, label in [("pg", "postgres"), ("flight", "flight sql"), ("http", "http")]:
            found = re.search(rf"medlake serve: {label} on 0\.0\.0\.0:(\d+)(.*)", text)
            assert found, text
            assert "TLS" in found.group(2), f"serve does not say {label} is TLS-protected: {text}"
            ports[door] = int(found.group(1))

        # Postgres: clear text refused, TLS works.
        base = dict(host="localhost", hostaddr="127.0.0.1", port=ports["pg"], dbname="medlake",
                    user="reader", password=SECRET_ENV["P_READER"], connect_timeout=10)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**base, sslmode="disable")
        with psycopg.connect(**base, sslmode="verify-full",
                             sslrootcert=str(root / "tls" / "ca.crt")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        # Flight: a clear-text client cannot even complete the handshake.
        clear = flight.FlightClient(f"grpc://127.0.0.1:{ports['flight']}")
        with pytest.raises(flight.FlightError):
            clear.authenticate_basic_token("reader", SECRET_ENV["P_READER"],
                                           flight.FlightCallOptions(timeout=10))
        clear.close()
        ca = (root / "tls" / "ca.crt").read_bytes()
        secure = flight.FlightClient(f"grpc+tls://localhost:{ports['flight']}", tls_root_certs=ca)
        secure.authenticate_basic_token("reader", SECRET_ENV["P_READER"])
        secure.close()

        # HTTP: a clear-text request gets no answer that carries anything.
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as sock:
            sock.sendall(b"POST /v1/ingest/bronze.readings HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + SECRET_ENV["T_GW"].encode() +
                         b"\r\nContent-Length: 2\r\n\r\n[]")
            try:
                answer = sock.recv(4096)
            except (ConnectionResetError, socket.timeout):
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 200"), answer
        ctx = ssl.create_default_context(cafile=str(root / "tls" / "ca.crt"))
        with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.parametrize("door", ["pg", "flight", "http"])
def test_no_auth_mode_never_binds_a_public_address(root, door):
    exited, output = serve_process(["--warehouse", str(root / "warehouse"), "--insecure-no-auth",
                                    *sum([[f"--{d}", "0.0.0.0:0" if d == door else "127.0.0.1:0"]
                                          for d in ("pg", "flight", "http")], [])], {})
    assert exited, f"--insecure-no-auth opened {door} on 0.0.0.0:\n{output}"


def test_clear_text_login_on_a_tls_loopback_server_is_refused(main):
    """TLS configured: even on loopback, a client that does not ask for TLS gets no login."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host="127.0.0.1", port=main.pg_port, dbname="medlake", user="reader",
                        password=USERS["reader"][1], sslmode="disable", connect_timeout=10)
    note("clear login", str(refused.value))
