"""`medlake serve`'s Arrow Flight SQL door with real clients: the ADBC Flight SQL driver (Go,
from PyPI) and raw `pyarrow.flight`, over TLS with the users of the Postgres door."""

import time

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from helpers import MedlakeServe, run_medlake, write_tls_files

SEED = [
    """CREATE TABLE bronze.readings (
         device_id VARCHAR NOT NULL, patient_id BIGINT, metric VARCHAR NOT NULL,
         value DOUBLE, ts TIMESTAMP NOT NULL)""",
    """INSERT INTO bronze.readings VALUES
         ('pump-1', 1001, 'heart_rate', 72.0, TIMESTAMP '2026-11-23 10:00:00'),
         ('pump-1', 1001, 'spo2', 97.5, TIMESTAMP '2026-11-23 10:00:00'),
         ('pump-2', 1002, 'heart_rate', 88.0, TIMESTAMP '2026-11-23 10:01:00')""",
    """CREATE MATERIALIZED VIEW gold.device_counts AS
         SELECT device_id, count(*) AS readings FROM bronze.readings GROUP BY device_id""",
]

ALICE = ("alice", "correct horse battery staple")
READER = ("dashboard", "reads gold only")


def start(root, lifetime):
    """A TLS-only server; returns (the running server, flight port, CA PEM text)."""
    warehouse = root / "warehouse"
    run_medlake(warehouse, *SEED)
    ca = write_tls_files(root)
    (root / "reader.secret").write_text(READER[1])
    config = root / "medlake.toml"
    config.write_text(f"""
[[users]]
name = "alice"
password_env = "TEST_ALICE_PASSWORD"

[[users]]
name = "dashboard"
password_file = "{root / 'reader.secret'}"
read_only = true

[flight]
token_lifetime_seconds = {lifetime}

[tls]
cert = "{root / 'server.crt'}"
key = "{root / 'server.key'}"
""")
    serve = MedlakeServe(root, ["--warehouse", str(warehouse), "--config", str(config),
                                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         {"TEST_ALICE_PASSWORD": ALICE[1]}, "flight sql on")
    return serve, serve.port("flight sql"), ca


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("flightsql")
    serve, port, ca = start(root, 3600)
    try:
        yield {"port": port, "ca": ca, "root": root}
    finally:
        serve.stop()


def connect(server, user=ALICE):
    return flight_sql.connect(
        f"grpc+tls://localhost:{server['port']}",
        db_kwargs={
            "username": user[0],
            "password": user[1],
            "adbc.flight.sql.client_option.tls_root_certs": server["ca"],
        },
        autocommit=True,
    )


def test_adbc_queries_metadata_and_parameters(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT device_id, readings FROM gold.device_counts ORDER BY device_id")
        assert cur.fetchall() == [("pump-1", 2), ("pump-2", 1)]

        cur.execute("SELECT device_id, value FROM bronze.readings "
                    "WHERE metric = $1 AND value > $2 ORDER BY value",
                    parameters=("heart_rate", 70.0))
        assert cur.fetchall() == [("pump-1", 72.0), ("pump-2", 88.0)]

        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        catalogs = {c["catalog_name"]: c for c in objects}
        assert "medlake" in catalogs
        schemas = {s["db_schema_name"]: s for s in catalogs["medlake"]["catalog_db_schemas"]}
        assert {"bronze", "silver", "gold", "system"} <= set(schemas)
        tables = {t["table_name"]: t for t in schemas["bronze"]["db_schema_tables"]}
        assert tables["readings"]["table_type"] == "TABLE"
        assert [c["column_name"] for c in tables["readings"]["table_columns"]] == [
            "device_id", "patient_id", "metric", "value", "ts"]

        schema = conn.adbc_get_table_schema("readings", db_schema_filter="bronze")
        assert schema.field("device_id").type == pa.string()
        assert not schema.field("device_id").nullable
        assert schema.field("ts").type == pa.timestamp("us")

        assert "TABLE" in conn.adbc_get_table_types()
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "medlake"


def test_adbc_question_mark_parameters_default_paramstyle(server):
    # The DB-API paramstyle of the ADBC driver is qmark; JDBC writes `?` too.
    assert flight_sql.paramstyle == "qmark"
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM bronze.readings WHERE metric = ? AND value > ?",
                    parameters=("heart_rate", 80.0))
        assert cur.fetchall() == [(1,)]
        # `?` in a string or a comment is text, not a parameter.
        cur.execute("SELECT '?' AS q, device_id FROM bronze.readings -- which device?\n"
                    "WHERE value = ?", parameters=(72.0,))
        assert cur.fetchall() == [("?", "pump-1")]
        # The same prepared statement, run again with other values.
        query = ("SELECT device_id FROM bronze.readings "
                 "WHERE value > ? AND patient_id IN (1001, 1002) ORDER BY value")
        cur.execute(query, parameters=(90.0,))
        assert cur.fetchall() == [("pump-1",)]
        cur.execute(query, parameters=(0.0,))
        assert [r[0] for r in cur.fetchall()] == ["pump-1", "pump-2", "pump-1"]
        # A prepared update with `?`: ADBC sends the parameters in the update's DoPut.
        cur.execute("CREATE TABLE bronze.qmark (id BIGINT, note VARCHAR)")
        cur.execute("INSERT INTO bronze.qmark VALUES (?, ?)", parameters=(7, "it's ?"))
        cur.execute("SELECT id, note FROM bronze.qmark WHERE id = ?", parameters=(7,))
        assert cur.fetchall() == [(7, "it's ?")]
        # A statement mixing both styles is a syntax error, with its SQLSTATE.
        with pytest.raises(Exception) as refused:
            cur.execute("SELECT ? + $1", parameters=(1, 2))
        assert "42601" in str(refused.value)


def test_adbc_ddl_dml_and_refresh_through_execute(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bronze.notes (id INT NOT NULL, body VARCHAR)")
        cur.execute("INSERT INTO bronze.notes VALUES (1, 'a'), (2, 'b')")
        cur.execute("INSERT INTO bronze.readings VALUES "
                    "('pump-3', 1003, 'spo2', 99.0, TIMESTAMP '2026-11-23 11:00:00')")
        cur.execute("REFRESH MATERIALIZED VIEW gold.device_counts")
        cur.execute("SELECT count(*) FROM gold.device_counts")
        assert cur.fetchone() == (3,)
        cur.execute("SELECT id, body FROM bronze.notes ORDER BY id")
        assert cur.fetchall() == [(1, "a"), (2, "b")]
        with pytest.raises(Exception) as missing:
            cur.execute("SELECT * FROM bronze.nope")
        assert "does not exist" in str(missing.value)


def test_adbc_ingest_appends_one_commit_per_request(server):
    rows = 1_000_000
    table = pa.table({
        "device_id": pa.array([f"dev-{i % 500}" for i in range(rows)], pa.string()),
        "value": pa.array([float(i % 200) for i in range(rows)], pa.float64()),
    })
    with connect(server) as conn, conn.cursor() as cur:
        # One request of 10 batches of 100,000 rows (gRPC messages stay under 16 MiB).
        batches = pa.RecordBatchReader.from_batches(
            table.schema, table.to_batches(max_chunksize=100_000))
        assert cur.adbc_ingest("vitals_batch", batches, mode="create",
                               db_schema_name="bronze") == rows
        assert cur.adbc_ingest("vitals_batch", table.slice(0, 1000), mode="append",
                               db_schema_name="bronze") == 1000
        cur.execute("SELECT count(*), sum(value) FROM bronze.vitals_batch")
        count, total = cur.fetchone()
        assert count == rows + 1000
        cur.execute("SELECT count(*) FROM table_history('bronze.vitals_batch')")
        assert cur.fetchone() == (2,), "one commit per ingest request"

        # Schema enforced: a batch of another shape is refused and nothing is written.
        wrong = pa.table({"device_id": pa.array([1, 2], pa.int64())})
        with pytest.raises(Exception):
            cur.adbc_ingest("vitals_batch", wrong, mode="append", db_schema_name="bronze")
        with pytest.raises(Exception):
            cur.adbc_ingest("vitals_batch", table.slice(0, 10), mode="create",
                            db_schema_name="bronze")
        cur.execute("SELECT count(*) FROM bronze.vitals_batch")
        assert cur.fetchone() == (rows + 1000,)


def test_adbc_reads_ten_million_rows_as_a_stream(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT value, value * 2 AS twice FROM range(0, 10000000) AS t(value)")
        reader = cur.fetch_record_batch()
        count = 0
        batches = 0
        for batch in reader:
            count += batch.num_rows
            batches += 1
        assert count == 10_000_000
        assert batches > 1, "the result arrives in many batches"


def test_read_only_users_and_bad_credentials(server):
    with connect(server, READER) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM gold.device_counts")
        assert cur.fetchone()[0] >= 2
        with pytest.raises(Exception) as denied:
            cur.execute("DROP TABLE bronze.readings")
        assert "42501" in str(denied.value) and "privilege" in str(denied.value)
        with pytest.raises(Exception) as denied:
            cur.adbc_ingest("nope", pa.table({"a": [1]}), mode="create", db_schema_name="bronze")
        assert "42501" in str(denied.value) and "privilege" in str(denied.value)
    with pytest.raises(Exception) as refused:
        connect(server, (ALICE[0], "wrong"))
    assert "authentication failed" in str(refused.value).lower() or \
        "unauthenticated" in str(refused.value).lower()
    assert ALICE[1] not in str(refused.value)


def any_command(type_name, payload):
    """A Flight SQL command as pyarrow.flight sends it: protobuf Any{type_url, value}."""
    def field(number, data):
        key = bytes([(number << 3) | 2])
        n, length = len(data), b""
        while True:
            byte = n & 0x7F
            n >>= 7
            length += bytes([byte | (0x80 if n else 0)])
            if not n:
                break
        return key + length + data
    url = f"type.googleapis.com/arrow.flight.protocol.sql.{type_name}".encode()
    return field(1, url) + field(2, payload)


def test_raw_pyarrow_flight_calls(server):
    client = flight.FlightClient(f"grpc+tls://localhost:{server['port']}",
                                 tls_root_certs=server["ca"].encode())
    header = client.authenticate_basic_token(ALICE[0], ALICE[1])
    options = flight.FlightCallOptions(headers=[header])
    query = any_command("CommandStatementQuery",
                        b"\x0a" + bytes([len(b"SELECT 41 + 1 AS answer")]) + b"SELECT 41 + 1 AS answer")
    info = client.get_flight_info(flight.FlightDescriptor.for_command(query), options)
    assert info.schema.names == ["answer"]
    table = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert table.column("answer").to_pylist() == [42]

    # Without a token, or with a made-up one: unauthenticated.
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(flight.FlightDescriptor.for_command(query))
    bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer 1234")])
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(flight.FlightDescriptor.for_command(query), bad)
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token(ALICE[0], "wrong")


def protobuf_fields(data):
    """The length-delimited fields of a protobuf message: {number: bytes} (last one wins)."""
    fields, i = {}, 0
    while i < len(data):
        key, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        number, wire = key >> 3, key & 7
        assert wire == 2, f"unexpected wire type {wire}"
        length, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields[number] = data[i:i + length]
        i += length
    return fields


def test_pyarrow_flight_prepared_question_marks_bound_by_do_put(server):
    client = flight.FlightClient(f"grpc+tls://localhost:{server['port']}",
                                 tls_root_certs=server["ca"].encode())
    options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(*ALICE)])
    sql = b"SELECT device_id, value FROM bronze.readings WHERE metric = ? AND value >= ? ORDER BY value"
    request = any_command("ActionCreatePreparedStatementRequest", b"\x0a" + bytes([len(sql)]) + sql)
    [result] = list(client.do_action(flight.Action("CreatePreparedStatement", request), options))
    created = protobuf_fields(protobuf_fields(result.body.to_pybytes())[2])
    handle = created[1]
    parameters = pa.ipc.read_schema(pa.py_buffer(created[3]))
    assert parameters.names == ["$1", "$2"]
    assert parameters.field("$2").type == pa.float64()
    assert pa.ipc.read_schema(pa.py_buffer(created[2])).names == ["device_id", "value"]

    command = any_command("CommandPreparedStatementQuery", b"\x0a" + bytes([len(handle)]) + handle)
    descriptor = flight.FlightDescriptor.for_command(command)
    for metric, least, expected in [("heart_rate", 80.0, [("pump-2", 88.0)]),
                                    ("heart_rate", 0.0, [("pump-1", 72.0), ("pump-2", 88.0)])]:
        batch = pa.record_batch([pa.array([metric]), pa.array([least])], schema=parameters)
        writer, reader = client.do_put(descriptor, parameters, options)
        writer.write_batch(batch)
        writer.done_writing()
        reader.read()
        writer.close()
        info = client.get_flight_info(descriptor, options)
        table = client.do_get(info.endpoints[0].ticket, options).read_all()
        assert list(zip(table.column("device_id").to_pylist(),
                        table.column("value").to_pylist())) == expected

    # A plain query with `?` and nothing bound: the parameter has no value (22023).
    sql = b"SELECT ? AS x"
    query = any_command("CommandStatementQuery", b"\x0a" + bytes([len(sql)]) + sql)
    with pytest.raises(pa.ArrowInvalid) as unbound:
        client.get_flight_info(flight.FlightDescriptor.for_command(query), options)
    assert "parameter $1: no value was bound" in str(unbound.value)
    assert "22023" in str(unbound.value)


def test_expired_tokens_are_refused(tmp_path):
    serve, port, ca = start(tmp_path, 1)
    try:
        client = flight.FlightClient(f"grpc+tls://localhost:{port}", tls_root_certs=ca.encode())
        header = client.authenticate_basic_token(ALICE[0], ALICE[1])
        options = flight.FlightCallOptions(headers=[header])
        query = any_command("CommandStatementQuery", b"\x0a\x08SELECT 1")
        client.get_flight_info(flight.FlightDescriptor.for_command(query), options)
        time.sleep(2.5)
        with pytest.raises(flight.FlightUnauthenticatedError) as expired:
            client.get_flight_info(flight.FlightDescriptor.for_command(query), options)
        assert "expired" in str(expired.value)
    finally:
        serve.stop()


def test_adbc_dml_row_counts_through_execute_update(server):
    """DoPutUpdate (CommandStatementUpdate) answers DELETE, UPDATE and MERGE with their rows."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bronze.dml_counts (id BIGINT NOT NULL, v VARCHAR)")
        cur.execute("INSERT INTO bronze.dml_counts VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        stmt = cur.adbc_statement
        counts = []
        for sql in ["UPDATE bronze.dml_counts SET v = 'x' WHERE id >= 2",
                    "DELETE FROM bronze.dml_counts WHERE id = 1",
                    "MERGE INTO bronze.dml_counts t USING (SELECT 2 AS id UNION ALL SELECT 9) s "
                    "ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 'm' "
                    "WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, 'n')"]:
            stmt.set_sql_query(sql)
            counts.append(stmt.execute_update())
        assert counts == [2, 1, 2]
        # A prepared statement with bound parameters.
        cur.execute("UPDATE bronze.dml_counts SET v = ? WHERE id = ?", ("p", 3))
        cur.execute("SELECT id, v FROM bronze.dml_counts ORDER BY id")
        assert cur.fetchall() == [(2, "m"), (3, "p"), (9, "n")]
