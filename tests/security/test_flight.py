"""The Flight SQL door before the token check and around prepared statements: every RPC without
a valid bearer token is UNAUTHENTICATED (and does nothing), a prepared statement handle works
only for the user who created it, and prepared statements and bound parameters are capped."""

import secrets

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from attack import (SECRET_ENV, USERS, RawFlight, adbc_connect, admin_rows, any_command, diff,
                    fingerprint, flight_client, note, pb_bytes, pb_fields)


def refused(fn, *args):
    """Calls fn(*args), which must fail; returns the message. pyarrow raises FlightError
    subclasses for most RPCs but plain OSError/ArrowKeyError for some (GetSchema, NOT_FOUND)."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        return note("flight refused", f"{type(e).__name__}: {e}")
    raise AssertionError(f"{getattr(fn, '__name__', fn)} succeeded")


def is_unauthenticated(message):
    return "FlightUnauthenticatedError" in message or "unauthenticated error" in message \
        or "Unauthenticated" in message


def unauthenticated_options(kind):
    headers = {
        "none": [],
        "garbage": [(b"authorization", b"Bearer 1234")],
        "empty": [(b"authorization", b"Bearer ")],
        "password_as_token": [(b"authorization", f"Bearer {SECRET_ENV['P_ADMIN']}".encode())],
        "ingest_token": [(b"authorization", f"Bearer {SECRET_ENV['T_GW']}".encode())],
        "basic_wrong": [(b"authorization", b"Basic YWRtaW46d3Jvbmc=")],
        "long": [(b"authorization", b"Bearer " + b"A" * 8000)],
    }[kind]
    return flight.FlightCallOptions(headers=headers, timeout=30)


TOKENS = ["none", "garbage", "empty", "password_as_token", "ingest_token", "basic_wrong", "long"]


def ingest_descriptor(table="readings", schema="bronze"):
    # CommandStatementIngest{table_definition_options=1, table=2, schema=3}
    payload = pb_bytes(2, table.encode()) + pb_bytes(3, schema.encode())
    return flight.FlightDescriptor.for_command(any_command("CommandStatementIngest", payload))


def update_descriptor(sql):
    return flight.FlightDescriptor.for_command(
        any_command("CommandStatementUpdate", pb_bytes(1, sql.encode())))


def query_descriptor(sql):
    return flight.FlightDescriptor.for_command(
        any_command("CommandStatementQuery", pb_bytes(1, sql.encode())))


EVIL = pa.table({
    "device_id": pa.array(["evil"], pa.string()), "patient_id": pa.array([666], pa.int64()),
    "metric": pa.array(["heart_rate"], pa.string()), "value": pa.array([6.66]),
    "ts": pa.array([0], pa.timestamp("us")),
})


def call(client, rpc, options, ticket=None):
    if rpc == "get_flight_info":
        return client.get_flight_info(query_descriptor("SELECT * FROM bronze.readings"), options)
    if rpc == "get_schema":
        return client.get_schema(query_descriptor("SELECT * FROM bronze.readings"), options)
    if rpc == "do_get_garbage":
        return client.do_get(flight.Ticket(b"garbage"), options).read_all()
    if rpc == "do_get_replayed_ticket":
        return client.do_get(ticket, options).read_all()
    if rpc == "do_put_ingest":
        writer, reader = client.do_put(ingest_descriptor(), EVIL.schema, options)
        writer.write_table(EVIL)
        writer.done_writing()
        reader.read()
        writer.close()
        return None
    if rpc == "do_put_update":
        writer, reader = client.do_put(update_descriptor("DROP TABLE victim.t"), pa.schema([]),
                                       options)
        writer.done_writing()
        reader.read()
        writer.close()
        return None
    if rpc == "do_action_prepare":
        body = any_command("ActionCreatePreparedStatementRequest",
                           pb_bytes(1, b"SELECT * FROM bronze.readings"))
        return list(client.do_action(flight.Action("CreatePreparedStatement", body), options))
    if rpc == "list_flights":
        return list(client.list_flights(b"", options))
    if rpc == "list_actions":
        return client.list_actions(options)
    raise ValueError(rpc)


RPCS = ["get_flight_info", "get_schema", "do_get_garbage", "do_get_replayed_ticket",
        "do_put_ingest", "do_put_update", "do_action_prepare", "list_flights", "list_actions"]


@pytest.fixture(scope="module")
def real_ticket(main):
    owner = RawFlight(main, USERS["admin"])
    info = owner.client.get_flight_info(query_descriptor("SELECT * FROM bronze.readings"),
                                        owner.options)
    yield info.endpoints[0].ticket
    owner.close()


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("rpc", RPCS)
def test_rpcs_without_a_valid_token_are_unauthenticated(main, rpc, token, real_ticket):
    client = flight_client(main)
    before = fingerprint(main, fresh=False)
    try:
        message = refused(call, client, rpc, unauthenticated_options(token), real_ticket)
        assert is_unauthenticated(message), message
        for value in SECRET_ENV.values():
            assert value not in message
    finally:
        client.close()
    changed = diff(before, fingerprint(main))
    if changed:
        main.reset()
    assert not changed, changed


def test_unauthenticated_doput_is_not_buffered(main):
    """Three 40 MiB DoPut streams without a token: the server's peak memory must not grow by
    their size (the token is checked on the headers, before any message is read)."""
    big = pa.table({"device_id": pa.array(["x" * 1000] * 40_000, pa.string())})
    main.reset_peak_memory()
    before = main.memory("VmHWM")
    for _ in range(3):
        client = flight_client(main)
        try:
            writer, reader = client.do_put(ingest_descriptor("evil_big"), big.schema,
                                           unauthenticated_options("garbage"))
            writer.write_table(big)
            writer.done_writing()
            reader.read()
            writer.close()
        except flight.FlightError as e:
            note("big doput", str(e))
        finally:
            client.close()
    grown = main.memory("VmHWM") - before
    assert grown < 40 << 20, f"peak memory grew by {grown >> 20} MiB for unauthenticated DoPuts"
    assert admin_rows(main, "SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name = 'evil_big'") == [(0,)]


def test_expired_or_foreign_bearer_tokens(main):
    """A token issued to one user is not accepted with a tweak; the Basic handshake with a
    wrong password gives nothing."""
    client = flight_client(main)
    header = client.authenticate_basic_token(*USERS["reader"])
    name, value = header
    tweaked = value[:-2] + (b"AA" if not value.endswith(b"AA") else b"BB")
    assert is_unauthenticated(refused(client.get_flight_info, query_descriptor("SELECT 1"),
                                      flight.FlightCallOptions(headers=[(name, tweaked)])))
    assert is_unauthenticated(refused(client.authenticate_basic_token, "reader",
                                      SECRET_ENV["P_ADMIN"]))
    assert is_unauthenticated(refused(client.authenticate_basic_token, "nobody",
                                      SECRET_ENV["P_ADMIN"]))
    client.close()


def test_prepared_statement_handles_belong_to_their_user(main):
    writer = RawFlight(main, USERS["writer"])
    reader = RawFlight(main, USERS["reader"])
    try:
        insert = writer.create_prepared("INSERT INTO victim.t VALUES (99)")
        select = writer.create_prepared("SELECT * FROM victim.t")
        note("handles", repr((insert, select)))
        assert len(insert) >= 16 and len(select) >= 16, \
            f"prepared statement handles are guessable: {insert!r} {select!r}"
        assert insert != select
        before = fingerprint(main, fresh=False)
        refused(reader.prepared_update, insert)
        refused(reader.prepared_query, select)
        # Closing another user's statement does nothing either.
        body = any_command("ActionClosePreparedStatementRequest", pb_bytes(1, select))
        refused(reader.action, "ClosePreparedStatement", body)
        assert diff(before, fingerprint(main)) == []
        # The owner still has both.
        assert writer.prepared_query(select)[0].num_rows == 2
    finally:
        writer.close()
        reader.close()


def test_prepared_statements_are_capped_per_user(main):
    """max_prepared_per_user = 256: the 257th evicts the least recently used (so a client
    cannot grow the server's memory by preparing without end), the newest still work."""
    admin = RawFlight(main, USERS["admin"])
    try:
        first = admin.create_prepared("SELECT 0 AS a")
        handles = [admin.create_prepared(f"SELECT {i} AS a") for i in range(1, 260)]
        message = refused(admin.prepared_query, first)
        assert "prepared" in message.lower() or "not found" in message.lower(), message
        assert admin.prepared_query(handles[-1])[0].column("a").to_pylist() == [259]
        assert admin.prepared_query(handles[-256])[0].column("a").to_pylist() == [4]
    finally:
        admin.close()


def test_parameter_rows_are_capped(main):
    """max_parameter_rows = 10000: a bind of more rows is refused and nothing is written."""
    with adbc_connect(main, USERS["writer"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bronze.params (id BIGINT)")
        try:
            with pytest.raises(Exception) as error:
                cur.executemany("INSERT INTO bronze.params VALUES ($1)",
                                [(i,) for i in range(10_001)])
            note("params", str(error.value))
            cur.execute("SELECT count(*) FROM bronze.params")
            assert cur.fetchone() == (0,)
            cur.executemany("INSERT INTO bronze.params VALUES ($1)", [(i,) for i in range(3)])
            cur.execute("SELECT count(*) FROM bronze.params")
            assert cur.fetchone() == (3,)
        finally:
            cur.execute("DROP TABLE bronze.params")


def test_reader_get_schema_and_prepare_of_a_write_run_nothing(main):
    """GetSchema / CreatePreparedStatement of a write plan it (never run it)."""
    reader = RawFlight(main, USERS["reader"])
    before = fingerprint(main, fresh=False)
    try:
        for sql in ["DROP TABLE victim.t", "INSERT INTO victim.t VALUES (5)",
                    "CREATE TABLE bronze.evil AS SELECT 1 AS a", "SELECT 1 AS a INTO bronze.evil"]:
            try:
                reader.client.get_schema(query_descriptor(sql), reader.options)
            except Exception as e:  # noqa: BLE001
                note("get_schema", str(e))
            try:
                reader.create_prepared(sql)
            except Exception as e:  # noqa: BLE001
                note("prepare", str(e))
    finally:
        reader.close()
    changed = diff(before, fingerprint(main))
    if changed:
        main.reset()
    assert not changed, changed


def test_random_handles_are_not_found(main):
    reader = RawFlight(main, USERS["reader"])
    try:
        for _ in range(20):
            refused(reader.prepared_query, secrets.token_bytes(16))
    finally:
        reader.close()


def ticket(handle):
    # TicketStatementQuery{statement_handle=1} in an Any, as Flight SQL servers issue them.
    return flight.Ticket(any_command("TicketStatementQuery", pb_bytes(1, handle)))


def test_forged_and_replayed_tickets_run_no_write(main):
    """A ticket is what DoGet runs: a reader forging one around a write (made-up signature,
    another statement's signature, a ticket of the writer's) must not get it run."""
    writer = RawFlight(main, USERS["writer"])
    reader = RawFlight(main, USERS["reader"])
    try:
        info = writer.client.get_flight_info(query_descriptor("SELECT count(*) AS n FROM victim.t"),
                                             writer.options)
        real = info.endpoints[0].ticket.ticket
        fields = pb_fields(pb_fields(real)[2][0])
        handle = fields[1][0]
        note("ticket", repr(handle))
        signature = handle.split(b":", 1)[0] if b":" in handle else handle[:32]
        before = fingerprint(main, fresh=False)
        forged = [b"0" * 64 + b":DROP TABLE victim.t", signature + b":DROP TABLE victim.t",
                  signature + b":INSERT INTO victim.t VALUES (7)",
                  b"DROP TABLE victim.t", b"done:DROP TABLE victim.t",
                  handle + b"; DROP TABLE victim.t"]
        for h in forged:
            for client in (reader, writer):
                try:
                    client.client.do_get(ticket(h), client.options).read_all()
                except Exception as e:  # noqa: BLE001
                    note("forged ticket", str(e))
        changed = diff(before, fingerprint(main))
        if changed:
            main.reset()
        assert not changed, f"a forged ticket ran a write: {changed}"
    finally:
        writer.close()
        reader.close()
