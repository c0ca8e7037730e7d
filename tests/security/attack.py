"""What the security tests share: a `medlake serve` configured with every kind of principal,
real clients for each door (psql, psycopg, ADBC Flight SQL, pyarrow.flight, HTTP), and a record
of everything the servers said (every error, every result, every log line) so that the last
test can check that no password, token or secret value ever appeared in any of it."""

import contextlib
import http.client
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interop"))

from helpers import MEDLAKE, MedlakeServe, run_medlake, write_tls_files  # noqa: E402


def _value(name):
    # Distinctive random values: a grep for them cannot match anything by chance.
    return f"Zq{name.replace('_', '')}x{secrets.token_hex(12)}"


# The environment of every server: login passwords (P_*), ingest tokens (T_*) and the one
# source secret (MEDLAKE_EHR_PASSWORD). None of these values may ever leave the server, except
# EHR_PASSWORD towards an allowed host.
SECRET_ENV = {name: _value(name) for name in
              ["P_READER", "P_WRITER", "P_ETL", "P_ADMIN", "T_GW", "T_GW2", "MEDLAKE_EHR_PASSWORD"]}

USERS = {
    "reader": ("reader", SECRET_ENV["P_READER"]),
    "writer": ("writer", SECRET_ENV["P_WRITER"]),
    "etl": ("etl", SECRET_ENV["P_ETL"]),
    "admin": ("admin", SECRET_ENV["P_ADMIN"]),
}

# Everything any server or client said during the run; checked by test_zz_no_secret_leaks.
CAPTURED = []
LOGS = []
SERVERS = []


def note(what, text):
    if text:
        CAPTURED.append(f"[{what}] {text}")
    return text


SEED = [
    """CREATE TABLE bronze.readings (
         device_id VARCHAR NOT NULL, patient_id BIGINT, metric VARCHAR NOT NULL,
         value DOUBLE, ts TIMESTAMP NOT NULL)""",
    """INSERT INTO bronze.readings VALUES
         ('pump-1', 1001, 'heart_rate', 72.0, TIMESTAMP '2026-11-23 10:00:00'),
         ('pump-1', 1001, 'spo2', 97.5, TIMESTAMP '2026-11-23 10:00:00'),
         ('pump-2', 1002, 'heart_rate', 88.0, TIMESTAMP '2026-11-23 10:01:00')""",
    "CREATE TABLE bronze.other (id BIGINT NOT NULL, note VARCHAR)",
    "INSERT INTO bronze.other VALUES (1, 'keep')",
    "CREATE SCHEMA victim",
    "CREATE TABLE victim.t (id INT NOT NULL)",
    "INSERT INTO victim.t VALUES (1), (2)",
    """CREATE MATERIALIZED VIEW gold.device_counts AS
         SELECT device_id, count(*) AS readings FROM bronze.readings GROUP BY device_id""",
]


def users_toml(extra_etl=""):
    return f"""
[[users]]
name = "reader"
password_env = "P_READER"
role = "reader"

[[users]]
name = "writer"
password_env = "P_WRITER"

[[users]]
name = "etl"
password_env = "P_ETL"
create_external = true
secrets = ["EHR_PASSWORD"]
{extra_etl}
[[users]]
name = "admin"
password_env = "P_ADMIN"
role = "admin"

[secrets]
EHR_PASSWORD = {{ env = "MEDLAKE_EHR_PASSWORD" }}
"""


class Server:
    """One `medlake serve` over its own warehouse: started, stopped, restarted on the same
    warehouse, with the ports it printed and connections cached per (user, door)."""

    def __init__(self, root, config_text, seed=SEED, tls=True, env=None, args=()):
        self.root = Path(root)
        self.extra_args = list(args)
        self.warehouse = self.root / "warehouse"
        self.tls_dir = self.root / "tls"
        self.tls = tls
        self.ca_pem = None
        if tls:
            self.tls_dir.mkdir(exist_ok=True)
            self.ca_pem = write_tls_files(self.tls_dir)
            config_text += f"""
[tls]
cert = "{self.tls_dir / 'server.crt'}"
key = "{self.tls_dir / 'server.key'}"
"""
        self.config = self.root / "medlake.toml"
        self.config.write_text(config_text)
        self.seed = list(seed)
        self.env = dict(SECRET_ENV, **(env or {}))
        self.serve = None
        self.connections = {}
        self.generation = 0
        SERVERS.append(self)
        if self.seed:
            run_medlake(self.warehouse, *self.seed)
        self.start()

    @property
    def ca(self):
        return str(self.tls_dir / "ca.crt")

    def start(self):
        self.generation += 1
        log_root = self.root / f"run{self.generation}"
        log_root.mkdir()
        self.serve = MedlakeServe(
            log_root, ["--warehouse", str(self.warehouse), "--config", str(self.config),
                       "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0",
                       *self.extra_args],
            self.env, "medlake serve: http on")
        LOGS.append(self.serve.log_path)
        self.pg_port = self.serve.port("postgres")
        self.flight_port = self.serve.port("flight sql")
        self.http_port = self.serve.port("http")

    def stop(self):
        for conn in self.connections.values():
            with contextlib.suppress(Exception):
                conn.close()
        self.connections.clear()
        if self.serve:
            self.serve.stop()
            self.serve = None

    def restart(self):
        self.stop()
        self.start()

    def reset(self):
        """Back to the seeded warehouse (after a probe that did change it)."""
        self.stop()
        shutil.rmtree(self.warehouse)
        run_medlake(self.warehouse, *self.seed)
        self.start()

    def pid(self):
        return self.serve.process.pid

    def memory(self, field="VmHWM"):
        """The server's peak (VmHWM) or current (VmRSS) resident memory, in bytes."""
        for line in open(f"/proc/{self.pid()}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(field)

    def reset_peak_memory(self):
        with open(f"/proc/{self.pid()}/clear_refs", "w") as f:
            f.write("5")

    def alive(self):
        return self.serve is not None and self.serve.process.poll() is None

    def log(self):
        return self.serve.log_path.read_text() if self.serve else ""

    def cached(self, key, make):
        conn = self.connections.get(key)
        if conn is None or getattr(conn, "closed", False) or getattr(conn, "broken", False):
            conn = make()
            self.connections[key] = conn
        return conn

    def drop_cached(self, key):
        conn = self.connections.pop(key, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# ---------------------------------------------------------------------------------------------
# Postgres door


def pg_conninfo(server, user, **extra):
    import psycopg
    params = dict(host="localhost", hostaddr="127.0.0.1", port=server.pg_port, dbname="medlake",
                  user=user[0], password=user[1], application_name="security",
                  connect_timeout=10)
    if server.tls:
        params.update(sslmode="verify-full", sslrootcert=server.ca)
    else:
        params.update(sslmode="disable")
    params.update(extra)
    return psycopg.conninfo.make_conninfo(**params)


def pg_connect(server, user, **extra):
    import psycopg
    return psycopg.connect(pg_conninfo(server, user, **extra), autocommit=True)


def admin_pg(server):
    return server.cached(("admin", "pg"), lambda: pg_connect(server, USERS["admin"]))


def admin_rows(server, sql):
    conn = admin_pg(server)
    try:
        return conn.execute(sql).fetchall()
    except Exception:
        server.drop_cached(("admin", "pg"))
        raise


def psql(server, user, *commands, extra_env=None, options=None, timeout=60, stop_on_error=True):
    """psql -c ... as `user`; returns (returncode, stdout, stderr), errors in verbose form
    (`ERROR:  42501: ...`)."""
    exe = shutil.which("psql") or "/usr/bin/psql"
    if not os.path.exists(exe):
        pytest.fail("psql is missing: tests/run.sh installs postgresql-client")
    env = dict(os.environ, PGPASSWORD=user[1], PGHOSTADDR="127.0.0.1", PGCONNECT_TIMEOUT="10",
               **(extra_env or {}))
    if server.tls:
        env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=server.ca)
    else:
        env.update(PGSSLMODE="disable")
    if options is not None:
        env["PGOPTIONS"] = options
    args = [exe, "-X", "-v", f"ON_ERROR_STOP={int(stop_on_error)}", "-v", "VERBOSITY=verbose",
            "-h", "localhost",
            "-p", str(server.pg_port), "-U", user[0], "-d", "medlake"]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=server.root)
    note("psql stdout", done.stdout)
    note("psql stderr", done.stderr)
    return done.returncode, done.stdout, done.stderr


SQLSTATE_RE = re.compile(r"SQLSTATE[ :=]*\(?([0-9A-Z]{5})")
PSQL_ERROR_RE = re.compile(r"ERROR:\s+([0-9A-Z]{5}):")


class Outcome:
    """What one probe got: ok (every statement ran) or the first error, with its SQLSTATE
    when the door told it."""

    def __init__(self, door, ok, code=None, message="", kind=None):
        self.door, self.ok, self.code, self.message, self.kind = door, ok, code, message, kind
        note(f"{door} outcome", message)

    def __repr__(self):
        return f"<{self.door}: {'ok' if self.ok else f'{self.code} {self.kind}'}: {self.message[:400]!r}>"


# ---------------------------------------------------------------------------------------------
# Flight SQL door: ADBC and raw pyarrow.flight


def adbc_connect(server, user):
    try:
        import adbc_driver_flightsql.dbapi as flight_sql
    except ImportError as e:  # a missing client fails, never skips
        pytest.fail(f"adbc_driver_flightsql is missing: {e}")
    scheme = "grpc+tls" if server.tls else "grpc"
    kwargs = {"username": user[0], "password": user[1]}
    if server.tls:
        kwargs["adbc.flight.sql.client_option.tls_root_certs"] = server.ca_pem
    return flight_sql.connect(f"{scheme}://localhost:{server.flight_port}", db_kwargs=kwargs,
                              autocommit=True)


def flight_client(server):
    import pyarrow.flight as flight
    if server.tls:
        return flight.FlightClient(f"grpc+tls://localhost:{server.flight_port}",
                                   tls_root_certs=server.ca_pem.encode())
    return flight.FlightClient(f"grpc://localhost:{server.flight_port}")


class RawFlight:
    """pyarrow.flight with Flight SQL commands encoded by hand (protobuf Any)."""

    def __init__(self, server, user):
        import pyarrow.flight as flight
        self.client = flight_client(server)
        if user is None:
            self.options = flight.FlightCallOptions(timeout=60)
        else:
            header = self.client.authenticate_basic_token(user[0], user[1])
            self.options = flight.FlightCallOptions(headers=[header], timeout=60)

    def close(self):
        self.client.close()

    def query(self, sql):
        import pyarrow.flight as flight
        cmd = any_command("CommandStatementQuery", pb_bytes(1, sql.encode()))
        info = self.client.get_flight_info(flight.FlightDescriptor.for_command(cmd), self.options)
        tables = [self.client.do_get(e.ticket, self.options).read_all() for e in info.endpoints]
        return tables

    def update(self, sql):
        import pyarrow as pa
        import pyarrow.flight as flight
        cmd = any_command("CommandStatementUpdate", pb_bytes(1, sql.encode()))
        writer, reader = self.client.do_put(flight.FlightDescriptor.for_command(cmd),
                                            pa.schema([]), self.options)
        writer.done_writing()
        meta = reader.read()
        writer.close()
        return meta

    def action(self, type_name, body):
        import pyarrow.flight as flight
        results = self.client.do_action(flight.Action(type_name, body), self.options)
        return [r.body.to_pybytes() for r in results]

    def create_prepared(self, sql):
        """ActionCreatePreparedStatementRequest{query=1}; returns the handle (field 1 of the
        ActionCreatePreparedStatementResult packed in an Any)."""
        body = any_command("ActionCreatePreparedStatementRequest", pb_bytes(1, sql.encode()))
        results = self.action("CreatePreparedStatement", body)
        assert results, "CreatePreparedStatement returned nothing"
        fields = pb_fields(results[0])
        value = fields.get(2, [results[0]])[0]  # Any.value (or a bare message)
        return pb_fields(value)[1][0]

    def prepared_query(self, handle):
        import pyarrow.flight as flight
        cmd = any_command("CommandPreparedStatementQuery", pb_bytes(1, handle))
        info = self.client.get_flight_info(flight.FlightDescriptor.for_command(cmd), self.options)
        return [self.client.do_get(e.ticket, self.options).read_all() for e in info.endpoints]

    def prepared_update(self, handle):
        import pyarrow as pa
        import pyarrow.flight as flight
        cmd = any_command("CommandPreparedStatementUpdate", pb_bytes(1, handle))
        writer, reader = self.client.do_put(flight.FlightDescriptor.for_command(cmd),
                                            pa.schema([]), self.options)
        writer.done_writing()
        meta = reader.read()
        writer.close()
        return meta


def pb_varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def pb_bytes(number, data):
    return pb_varint((number << 3) | 2) + pb_varint(len(data)) + data


def pb_fields(data):
    """Length-delimited and varint fields of a protobuf message: {number: [values]}."""
    fields, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _read_varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _read_varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def any_command(type_name, payload):
    url = f"type.googleapis.com/arrow.flight.protocol.sql.{type_name}".encode()
    return pb_bytes(1, url) + pb_bytes(2, payload)


# ---------------------------------------------------------------------------------------------
# Running one probe (a list of statements, in one session) through one door.

PG_DOORS = ["psql", "pg-simple", "pg-extended", "pg-prepared"]
FLIGHT_DOORS = ["adbc-query", "adbc-update", "adbc-prepared", "flight-query", "flight-update"]
ALL_DOORS = PG_DOORS + FLIGHT_DOORS


def _pg_error(door, e):
    import psycopg
    code = getattr(e, "sqlstate", None)
    kind = type(e).__name__
    message = str(e)
    if isinstance(e, psycopg.Error) and e.diag is not None and e.diag.message_primary:
        message = f"{e.diag.message_primary} {e.diag.message_detail or ''}".strip()
    return Outcome(door, False, code, message, kind)


def _flight_error(door, e):
    message = str(e)
    found = SQLSTATE_RE.search(message)
    code = found.group(1) if found else getattr(e, "sqlstate", None)
    if code is None:
        # No SQLSTATE: the gRPC status (ADBC: "(InvalidArgument; ...)", pyarrow: its message).
        for status, words in [("INVALID_ARGUMENT", ["InvalidArgument", "invalid argument"]),
                              ("UNAUTHENTICATED", ["Unauthenticated", "unauthenticated"]),
                              ("PERMISSION_DENIED", ["PermissionDenied", "Unauthorized"])]:
            if any(w in message for w in words):
                code = f"grpc:{status}"
                break
    return Outcome(door, False, code, message, type(e).__name__)


def run_probe(server, user_key, door, statements):
    """Runs `statements` one after the other in one fresh session of `door` as `user_key`;
    stops at the first error."""
    if isinstance(statements, str):
        statements = [statements]
    user = USERS[user_key]
    if door == "psql":
        rc, out, err = psql(server, user, *statements)
        if rc == 0:
            return Outcome(door, True, message=out)
        found = PSQL_ERROR_RE.search(err)
        return Outcome(door, False, found.group(1) if found else None, err, "psql")
    if door.startswith("pg-"):
        import psycopg
        try:
            conn = pg_connect(server, user)
        except psycopg.Error as e:
            return _pg_error(door, e)
        try:
            for sql in statements:
                try:
                    _pg_run(conn, door, sql)
                except psycopg.Error as e:
                    return _pg_error(door, e)
            return Outcome(door, True)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    if door.startswith("adbc-"):
        try:
            conn = adbc_connect(server, user)
        except Exception as e:  # noqa: BLE001 - any driver error is an outcome
            return _flight_error(door, e)
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    try:
                        if door == "adbc-query":
                            cur.execute(sql)
                            with contextlib.suppress(Exception):
                                note("adbc rows", repr(cur.fetchall()))
                        elif door == "adbc-update":
                            cur.adbc_statement.set_sql_query(sql)
                            cur.adbc_statement.execute_update()
                        else:
                            # Explicitly: the DB-API's adbc_prepare swallows a refused Prepare.
                            import pyarrow as pa
                            stmt = cur.adbc_statement
                            stmt.set_sql_query(sql)
                            stmt.prepare()
                            handle, _ = stmt.execute_query()
                            rows = pa.RecordBatchReader._import_from_c(handle.address).read_all()
                            note("adbc rows", repr(rows.to_pylist()))
                    except Exception as e:  # noqa: BLE001
                        return _flight_error(door, e)
            return Outcome(door, True)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    if door.startswith("flight-"):
        try:
            client = RawFlight(server, user)
        except Exception as e:  # noqa: BLE001
            return _flight_error(door, e)
        try:
            for sql in statements:
                try:
                    if door == "flight-query":
                        note("flight rows", repr([t.to_pylist() for t in client.query(sql)]))
                    else:
                        client.update(sql)
                except Exception as e:  # noqa: BLE001
                    return _flight_error(door, e)
            return Outcome(door, True)
        finally:
            client.close()
    raise ValueError(door)


def _pg_run(conn, door, sql):
    is_copy = sql.lstrip().upper().startswith("COPY")
    with conn.cursor() as cur:
        if door == "pg-simple":
            if is_copy:
                with cur.copy(sql) as copy:
                    data = b"".join(bytes(chunk) for chunk in copy)
                note("copy out", data.decode(errors="replace"))
            else:
                cur.execute(sql)
        elif door == "pg-extended":
            cur.execute(sql, binary=True)  # Parse/Bind/Execute, unnamed statement
        else:
            cur.execute(sql, prepare=True)  # a named server-side prepared statement
        if cur.description is not None and not is_copy:
            with contextlib.suppress(Exception):
                note("pg rows", repr(cur.fetchall()))


# ---------------------------------------------------------------------------------------------
# State: what a refused probe must leave as it was.


def warehouse_files(server):
    out = []
    for path in sorted(server.warehouse.rglob("*")):
        rel = path.relative_to(server.warehouse).as_posix()
        # Checkpoints are written by a background task after ingest; not a statement's doing.
        if "checkpoint" in rel:
            continue
        # The audit trail records every statement, refused ones too: that is its job.
        if rel.startswith("system/audit"):
            continue
        # The scheduler lease is renewed by the server on its own clock (a new entry every
        # third of its TTL on file://): no statement's doing.
        if rel.startswith("_medlake_leases/"):
            continue
        out.append(rel)
    return out


# Everything medlake persists (tables, views and their definitions, schemas, system.refreshes,
# external table definitions) is a file under the warehouse: the listing is the main check, the
# catalog as the admin sees it (in-memory objects shared between sessions) the second.
FINGERPRINT_SQL = """SELECT table_schema, table_name, table_type FROM information_schema.tables
                     WHERE table_schema NOT IN ('information_schema', 'pg_catalog')
                     ORDER BY 1, 2"""


def fingerprint(server, fresh=True):
    """The warehouse's files and the catalog as the admin sees it. `fresh=False` reuses the
    catalog read last time when no file changed since (the `before` of a probe)."""
    files = warehouse_files(server)
    cached = getattr(server, "_catalog", None)
    if not fresh and cached and cached[0] == (server.generation, files):
        return {"files": files, "tables": cached[1]}
    try:
        tables = admin_rows(server, FINGERPRINT_SQL)
    except Exception as e:  # noqa: BLE001 - an error is a difference too
        tables = f"error: {e}"
    server._catalog = ((server.generation, files), tables)
    return {"files": files, "tables": tables}


def diff(before, after):
    out = []
    for key in before:
        if before[key] != after.get(key):
            if key == "files":
                added = sorted(set(after[key]) - set(before[key]))
                removed = sorted(set(before[key]) - set(after[key]))
                out.append(f"files: added {added[:10]} removed {removed[:10]}")
            else:
                out.append(f"{key}: {before[key]!r} -> {after.get(key)!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Listeners: a TCP server that records every connection (SSRF canary), optionally answering
# HTTP.


class Canary:
    """Listens on `host`; records every accepted connection and the request bytes; answers
    each with `response(request_bytes)` (default: a JSON array)."""

    def __init__(self, host="127.0.0.1", response=None, family=socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" listens on IPv4 too (every loopback spelling reaches it).
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self.response = response or (lambda req: http_response(200, b"[]"))
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @property
    def connections(self):
        return len(self.requests)

    def _loop(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                self.requests.append(data)
                with contextlib.suppress(OSError):
                    conn.sendall(self.response(data))

    def close(self):
        self.running = False
        self.sock.close()
        self.thread.join(timeout=5)


def http_response(status, body, headers=None, reason="X"):
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if not headers or "Content-Type" not in headers:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + body


# ---------------------------------------------------------------------------------------------
# HTTP door


def ssl_context(server):
    ctx = ssl.create_default_context(cafile=server.ca)
    return ctx


def http_conn(server, timeout=30):
    if server.tls:
        return http.client.HTTPSConnection("localhost", server.http_port, timeout=timeout,
                                           context=ssl_context(server))
    return http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout)


def http_request(server, method, path, body=None, headers=None, timeout=30):
    conn = http_conn(server, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        note(f"http {method} {path}", data.decode(errors="replace"))
        return response.status, dict(response.getheaders()), data
    finally:
        conn.close()


def raw_http_socket(server, timeout=10):
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout)
    if server.tls:
        sock = ssl_context(server).wrap_socket(sock, server_hostname="localhost")
    return sock


def wait_until(predicate, seconds=10, step=0.1):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def serve_process(args, env, timeout=30):
    """Runs `medlake serve ARGS` expecting it to exit (a refused configuration) or to print its
    doors; returns (exited: bool, output)."""
    if not MEDLAKE or not os.path.exists(MEDLAKE):
        pytest.fail(f"MEDLAKE_BIN must point at the medlake binary (got {MEDLAKE!r})")
    process = subprocess.Popen([MEDLAKE, "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=dict(os.environ, **env))
    chunks = []

    def pump():
        for line in iter(process.stdout.readline, b""):
            chunks.append(line.decode(errors="replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                reader.join(timeout=5)
                return True, note("serve output", "".join(chunks))
            if "medlake serve: http on" in "".join(chunks):
                return False, note("serve output", "".join(chunks))
            time.sleep(0.1)
        return False, note("serve output", "".join(chunks))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        reader.join(timeout=5)
