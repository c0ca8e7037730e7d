"""Connection caps: with `[postgres] max_connections = 3` (and `[flight] max_connections = 3`),
a 4th concurrent connection is refused while three are open and works again once one closes."""

import contextlib
import time

import psycopg
import pyarrow.flight as flight
import pytest

from attack import USERS, Server, note, pg_connect, users_toml


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    config = users_toml() + """
[postgres]
max_connections = 3

[flight]
max_connections = 3
"""
    server = Server(tmp_path_factory.mktemp("caps"), config, seed=["CREATE SCHEMA capped"])
    try:
        yield server
    finally:
        server.stop()


def test_fourth_postgres_connection_is_refused_until_one_closes(capped):
    open_ = [pg_connect(capped, USERS["reader"]) for _ in range(3)]
    try:
        for conn in open_:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError) as refused:
            extra = pg_connect(capped, USERS["reader"])
            extra.execute("SELECT 1")
        note("pg cap", str(refused.value))
        assert "panic" not in str(refused.value).lower()
        open_.pop().close()
        deadline = time.time() + 10
        while True:
            try:
                with pg_connect(capped, USERS["reader"]) as again:
                    assert again.execute("SELECT 2").fetchone() == (2,)
                break
            except psycopg.OperationalError:
                assert time.time() < deadline, "the freed slot was never given back"
                time.sleep(0.2)
        # The connections kept open were never disturbed.
        for conn in open_:
            assert conn.execute("SELECT 3").fetchone() == (3,)
    finally:
        for conn in open_:
            with contextlib.suppress(Exception):
                conn.close()


def _client(server):
    # A subchannel of its own: gRPC would otherwise share one TCP connection between clients.
    return flight.FlightClient(f"grpc+tls://localhost:{server.flight_port}",
                               tls_root_certs=server.ca_pem.encode(),
                               generic_options=[("grpc.use_local_subchannel_pool", 1)])


def _ready(client):
    header = client.authenticate_basic_token(*USERS["reader"])
    client.list_actions(flight.FlightCallOptions(headers=[header], timeout=10))


def test_fourth_flight_connection_is_refused_until_one_closes(capped):
    clients = [_client(capped) for _ in range(3)]
    try:
        for client in clients:
            _ready(client)
        extra = _client(capped)
        with pytest.raises(flight.FlightError) as refused:
            _ready(extra)
        note("flight cap", str(refused.value))
        extra.close()
        clients.pop().close()
        deadline = time.time() + 10
        while True:
            again = _client(capped)
            try:
                _ready(again)
                again.close()
                break
            except flight.FlightError:
                again.close()
                assert time.time() < deadline, "the freed slot was never given back"
                time.sleep(0.3)
        for client in clients:
            _ready(client)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def test_server_survives_a_connection_storm(capped):
    """200 connection attempts against a cap of 3: refused quickly, the server stays up."""
    import socket
    socks = []
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", capped.pg_port), timeout=2))
    finally:
        for s in socks:
            s.close()
    deadline = time.time() + 15
    while True:
        try:
            with pg_connect(capped, USERS["reader"]) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            break
        except psycopg.OperationalError:
            assert time.time() < deadline, "the cap's slots leaked after the storm"
            time.sleep(0.3)
    assert capped.alive()
