#!/usr/bin/env python3
"""Random kill -9 against one warehouse (issue 29, item 2).

Runs, concurrently against one `medlake serve`: HTTP ingest (NDJSON with Idempotency-Keys),
Flight SQL ingest (ADBC `adbc_ingest`), refreshes (a REFRESH ON CHANGE view and a REFRESH EVERY
view run by the scheduler, manual incremental and FULL refreshes over the Postgres wire),
MERGE and DELETE, OPTIMIZE and VACUUM. At a random moment it SIGKILLs the server, restarts it
on the same warehouse, and checks:

- every table and view is readable, at its latest version and by VERSION AS OF that version;
- every acknowledged HTTP batch is present exactly once, and so is every unacknowledged one
  after it was retried under its key; an acknowledged Flight batch is present exactly once,
  an unacknowledged one whole or not at all (ADBC ingest carries no key); no batch is partial;
- MERGE/DELETE left the table as the acknowledged operations say (or with the one in flight
  at the kill applied whole);
- each view holds exactly the rows its defining query gives over the input versions its
  refresh recorded (system.refreshes), read with VERSION AS OF;
- nothing left behind blocks the next refresh: a manual refresh of every view succeeds, and
  is explained the same way.

    MEDLAKE_BIN=~/.cache/medlake-target/debug/medlake \\
        ~/.cache/medlake-venv/bin/python tests/chaos/chaos.py --kills 10

Exit status 0 when every check held; the summary (JSON) says what ran and what was found.
"""

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg
import pyarrow as pa

SETUP = [
    "CREATE TABLE bronze.http_in (batch VARCHAR NOT NULL, seq INT NOT NULL, device VARCHAR NOT NULL, hr INT NOT NULL)",
    "CREATE TABLE bronze.flight_in (batch VARCHAR, seq INT, device VARCHAR, hr INT)",
    "CREATE TABLE bronze.dml (id INT NOT NULL, v INT NOT NULL)",
    "CREATE MATERIALIZED VIEW silver.http_ok REFRESH ON CHANGE AS "
    "SELECT batch, seq, device, hr FROM bronze.http_in WHERE hr > 0",
    "CREATE MATERIALIZED VIEW silver.flight_ok REFRESH EVERY '1 second' AS "
    "SELECT batch, seq, device, hr FROM bronze.flight_in WHERE hr > 0",
    "CREATE MATERIALIZED VIEW gold.per_device AS "
    "SELECT device, count(*) AS n, sum(hr) AS total FROM silver.http_ok GROUP BY device",
]

TABLES = ["bronze.http_in", "bronze.flight_in", "bronze.dml", "silver.http_ok", "silver.flight_ok",
          "gold.per_device"]

# Each view: its defining query over `{input}` (the input read at a version), and how its rows
# are ordered for comparison.
VIEWS = {
    "silver.http_ok": ("bronze.http_in",
                       "SELECT batch, seq, device, hr FROM {input} WHERE hr > 0 ORDER BY batch, seq"),
    "silver.flight_ok": ("bronze.flight_in",
                         "SELECT batch, seq, device, hr FROM {input} WHERE hr > 0 ORDER BY batch, seq"),
    "gold.per_device": ("silver.http_ok",
                        "SELECT device, count(*) AS n, sum(hr) AS total FROM {input} GROUP BY device ORDER BY device"),
}
VIEW_ORDER = {
    "silver.http_ok": "ORDER BY batch, seq",
    "silver.flight_ok": "ORDER BY batch, seq",
    "gold.per_device": "ORDER BY device",
}


class Failed(Exception):
    """A check that did not hold."""


class Server:
    """`medlake serve` on the warehouse, doors on free ports, output in `log`."""

    def __init__(self, binary, warehouse, root, env):
        self.log_path = os.path.join(root, "serve.log")
        config = os.path.join(root, "chaos.toml")
        with open(config, "w") as f:
            f.write("[scheduler]\nlease_seconds = 1\n")
        self.log = open(self.log_path, "a")
        self.log.write(f"\n==== start {time.strftime('%H:%M:%S')}\n")
        self.log.flush()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--warehouse", warehouse, "--insecure-no-auth", "--config", config,
             "--poll-seconds", "1", "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0",
             "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.doors = {}
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(120) or self.proc.poll() is not None:
            self.kill9()
            raise Failed(f"medlake serve did not start; see {self.log_path}")
        self.ready_after = time.monotonic() - self.started

    def _read(self, ready):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            m = re.match(r"medlake serve: (postgres|flight sql|http) on (\S+):(\d+)", line)
            if m:
                self.doors[m.group(1)] = (m.group(2), int(m.group(3)))
                if len(self.doors) == 3:
                    ready.set()

    def pg(self):
        host, port = self.doors["postgres"]
        return psycopg.connect(host=host, port=port, user="chaos", dbname="medlake", autocommit=True,
                               connect_timeout=10)

    def flight(self):
        host, port = self.doors["flight sql"]
        return flight_sql.connect(f"grpc://{host}:{port}", autocommit=True)

    def http_url(self, table):
        host, port = self.doors["http"]
        return f"http://{host}:{port}/v1/ingest/{table}"

    def kill9(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()


class State:
    """What the clients were told, across every kill."""

    def __init__(self):
        self.lock = threading.Lock()
        self.http_acked = {}        # key -> rows
        self.http_pending = {}      # key -> (body, rows): sent, no answer; retried after restart
        self.flight_acked = {}      # batch -> rows
        self.flight_unknown = {}    # batch -> rows: sent, no answer (never retried)
        self.flight_landed = set()  # unknown batches found whole after a restart
        self.dml_model = {}         # id -> v, as acknowledged
        self.dml_inflight = None    # ("merge", id, v) | ("delete", id) sent, no answer
        self.counts = collections.Counter()
        self.errors = collections.Counter()
        self.next = 0

    def number(self):
        with self.lock:
            self.next += 1
            return self.next


def rows_of(rng, batch, n):
    return [{"batch": batch, "seq": i, "device": f"dev-{rng.randrange(8)}", "hr": rng.choice([0, 60, 72, 95, 130])}
            for i in range(n)]


def post(url, key, body, timeout=30):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-ndjson", "Idempotency-Key": key})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read() or b"{}")


def http_worker(server, state, stop, rng):
    url = server.http_url("bronze.http_in")
    while not stop.is_set():
        key = f"h-{state.number()}"
        rows = rows_of(rng, key, rng.randint(1, 20))
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        with state.lock:
            state.http_pending[key] = (body, len(rows))
        try:
            status, _ = post(url, key, body)
        except urllib.error.HTTPError as e:
            if e.code in (429, 503):
                time.sleep(0.1)
                continue  # stays pending: retried under its key after the next restart
            raise Failed(f"HTTP ingest {key}: {e.code} {e.read()[:300]!r}")
        except (OSError, urllib.error.URLError):
            return
        with state.lock:
            state.http_pending.pop(key, None)
            state.http_acked[key] = len(rows)
            state.counts["http_batches_acked"] += 1


def flight_worker(server, state, stop, rng):
    try:
        conn = server.flight()
        cur = conn.cursor()
    except Exception:  # noqa: BLE001 - the server is being killed
        return
    schema = pa.schema([("batch", pa.string()), ("seq", pa.int32()), ("device", pa.string()), ("hr", pa.int32())])
    while not stop.is_set():
        batch = f"f-{state.number()}"
        rows = rows_of(rng, batch, rng.randint(1, 50))
        table = pa.Table.from_pylist(rows, schema=schema)
        with state.lock:
            state.flight_unknown[batch] = len(rows)
        try:
            cur.adbc_ingest("flight_in", table, mode="append", db_schema_name="bronze")
        except Exception:  # noqa: BLE001 - unknown outcome: checked after the restart
            return
        with state.lock:
            state.flight_unknown.pop(batch, None)
            state.flight_acked[batch] = len(rows)
            state.counts["flight_batches_acked"] += 1


MAINTENANCE = [
    ("refresh_incremental", "REFRESH MATERIALIZED VIEW gold.per_device"),
    ("refresh_full", "REFRESH MATERIALIZED VIEW gold.per_device FULL"),
    ("refresh_incremental", "REFRESH MATERIALIZED VIEW silver.http_ok"),
    ("refresh_full", "REFRESH MATERIALIZED VIEW silver.flight_ok FULL"),
    ("optimize", "OPTIMIZE bronze.http_in"),
    ("optimize", "OPTIMIZE bronze.flight_in"),
    ("vacuum", "VACUUM bronze.http_in"),
    ("vacuum", "VACUUM bronze.flight_in"),
]


def refresh_worker(server, state, stop, rng):
    maintenance_worker(server, state, stop, rng, [m for m in MAINTENANCE if m[0].startswith("refresh")])


def upkeep_worker(server, state, stop, rng):
    maintenance_worker(server, state, stop, rng, [m for m in MAINTENANCE if not m[0].startswith("refresh")])


def maintenance_worker(server, state, stop, rng, statements):
    try:
        conn = server.pg()
    except Exception:  # noqa: BLE001
        return
    while not stop.is_set():
        kind, sql = rng.choice(statements)
        with state.lock:
            state.counts[f"{kind}_started"] += 1
        try:
            conn.execute(sql)
            with state.lock:
                state.counts[kind] += 1
        except psycopg.Error as e:
            if lost_connection(conn, e):
                return
            # A refresh that meets another (55006) or loses to a concurrent commit (40001)
            # fails cleanly: counted.
            with state.lock:
                state.errors[f"{kind}: {e.sqlstate} {str(e).splitlines()[0][:100]}"] += 1
        time.sleep(rng.uniform(0, 0.3))


def dml_worker(server, state, stop, rng):
    try:
        conn = server.pg()
    except Exception:  # noqa: BLE001
        return
    while not stop.is_set():
        key = rng.randrange(40)
        if rng.random() < 0.7:
            op = ("merge", key, state.number())
            sql = (f"MERGE INTO bronze.dml t USING (SELECT {key} AS id, {op[2]} AS v) s ON t.id = s.id "
                   "WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)")
        else:
            op = ("delete", key)
            sql = f"DELETE FROM bronze.dml WHERE id = {key}"
        with state.lock:
            state.dml_inflight = op
        try:
            conn.execute(sql)
        except psycopg.Error as e:
            if lost_connection(conn, e):
                return
            with state.lock:
                state.dml_inflight = None
                state.errors[f"dml: {e.sqlstate} {str(e).splitlines()[0][:100]}"] += 1
            continue
        with state.lock:
            apply_dml(state.dml_model, op)
            state.dml_inflight = None
            state.counts["dml_acked"] += 1


def lost_connection(conn, error):
    """Whether `error` is the server going away (no SQLSTATE), not a statement's answer."""
    return conn.broken or conn.closed or error.sqlstate is None


def apply_dml(model, op):
    if op[0] == "merge":
        model[op[1]] = op[2]
    else:
        model.pop(op[1], None)


def query(conn, sql):
    return conn.execute(sql).fetchall()


def check(server, state, report, warehouse):
    """Every check after a restart; raises Failed on the first that does not hold."""
    conn = server.pg()
    # Readable, at the latest version and by VERSION AS OF it.
    for table in TABLES:
        latest = query(conn, f"DESCRIBE HISTORY {table}")[0][0]
        now = query(conn, f"SELECT count(*) FROM {table} VERSION AS OF {latest}")[0][0]
        query(conn, f"SELECT count(*) FROM {table}")
        report["rows"][table] = now
        if "://" not in warehouse:
            # Log entries a reader replays after the last checkpoint (the most seen).
            schema, name = table.split(".")
            try:
                with open(os.path.join(warehouse, schema, name, "_delta_log", "_last_checkpoint")) as f:
                    checkpoint = json.load(f)["version"]
            except FileNotFoundError:
                checkpoint = -1
            lag = report.setdefault("max_log_entries_after_last_checkpoint", {})
            lag[table] = max(lag.get(table, 0), latest - checkpoint)
    # HTTP: retry what was never answered, under its key; then every batch exactly once.
    url = server.http_url("bronze.http_in")
    for key, (body, rows) in sorted(state.http_pending.items()):
        status, answer = post(url, key, body)
        if status != 200:
            raise Failed(f"retry of {key}: {status} {answer}")
        state.counts["http_retried_duplicate" if answer.get("duplicate") else "http_retried_new"] += 1
        state.http_acked[key] = rows
    state.http_pending.clear()
    found = dict(query(conn, "SELECT batch, count(*) FROM bronze.http_in GROUP BY batch"))
    for key, rows in state.http_acked.items():
        if found.get(key) != rows:
            raise Failed(f"HTTP batch {key}: {found.get(key)} rows, {rows} acknowledged")
    extra = set(found) - set(state.http_acked)
    if extra:
        raise Failed(f"HTTP batches nobody sent: {sorted(extra)[:5]}")
    # Flight: acknowledged exactly once; unanswered whole or absent.
    found = dict(query(conn, "SELECT batch, count(*) FROM bronze.flight_in GROUP BY batch"))
    for batch, rows in state.flight_acked.items():
        if found.get(batch) != rows:
            raise Failed(f"Flight batch {batch}: {found.get(batch)} rows, {rows} acknowledged")
    for batch, rows in list(state.flight_unknown.items()):
        if found.get(batch) not in (None, rows):
            raise Failed(f"unanswered Flight batch {batch}: {found.get(batch)} of {rows} rows")
        if found.get(batch) == rows:
            state.flight_landed.add(batch)
            state.flight_acked[batch] = rows
        del state.flight_unknown[batch]
    extra = set(found) - set(state.flight_acked)
    if extra:
        raise Failed(f"Flight batches nobody sent: {sorted(extra)[:5]}")
    # MERGE/DELETE: the acknowledged state, or it with the operation in flight applied whole.
    table = dict(query(conn, "SELECT id, v FROM bronze.dml"))
    expected = dict(state.dml_model)
    if table != expected:
        with_inflight = dict(expected)
        if state.dml_inflight:
            apply_dml(with_inflight, state.dml_inflight)
        if table != with_inflight:
            raise Failed(f"bronze.dml differs from the acknowledged MERGE/DELETE: {table} vs {expected}")
        state.counts["dml_inflight_landed"] += 1
    state.dml_model = table
    state.dml_inflight = None
    # Views: explained by their recorded input versions; a manual refresh of each works.
    for view in VIEWS:
        explain_view(conn, view, state, warehouse)
    for view in VIEWS:
        refresh_now(conn, view)
        explain_view(conn, view, state, warehouse)
    conn.close()


def refresh_now(conn, view):
    """A manual refresh; again while the scheduler is refreshing the view (55006) or one
    committed first (40001): those are the documented answers to concurrent refreshes."""
    for _ in range(50):
        try:
            conn.execute(f"REFRESH MATERIALIZED VIEW {view}")
            return
        except (psycopg.errors.ObjectInUse, psycopg.errors.SerializationFailure):
            time.sleep(0.2)
    raise Failed(f"REFRESH MATERIALIZED VIEW {view} kept meeting another refresh")


def explain_view(conn, view, state, warehouse):
    """The view's rows at its latest version against its query over the input versions the
    refresh recorded: in the view's own commit (local warehouses read the log entry), else in
    system.refreshes (which must have a row for it)."""
    schema, name = view.split(".")
    version = query(conn, f"SELECT table_version FROM system.materialized_views "
                          f"WHERE schema = '{schema}' AND name = '{name}'")[0][0]
    # A refresh killed between the view's commit and its system.refreshes row is recorded by
    # the server that takes the scheduler lease (from the commit): wait for it.
    deadline = time.monotonic() + 20
    while True:
        recorded = query(conn, f"SELECT input_versions, reason FROM system.refreshes WHERE view = '{view}' "
                               f"AND table_version = {version} AND status = 'succeeded'")
        if recorded or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not recorded:
        raise Failed(f"{view} version {version}: no system.refreshes row, even after the new "
                     "scheduler leader's recovery")
    if any("recorded after a restart" in (reason or "") for _, reason in recorded):
        state.counts["refreshes_recorded_after_a_restart"] += 1
    inputs = json.loads(recorded[0][0]) if recorded[0][0] else None
    if "://" not in warehouse:
        entry = os.path.join(warehouse, schema, name, "_delta_log", f"{version:020}.json")
        with open(entry) as f:
            info = next(json.loads(line)["commitInfo"] for line in f if '"commitInfo"' in line)
        committed = info.get("medlake", {}).get("refresh", {}).get("inputs")
        if committed is None:
            raise Failed(f"{view} version {version}: its commit records no refresh inputs")
        if inputs is not None and inputs != committed:
            raise Failed(f"{view} version {version}: system.refreshes says {inputs}, its commit {committed}")
        inputs = committed
    if inputs is None:
        return
    source, sql = VIEWS[view]
    expected = query(conn, sql.format(input=f"{source} VERSION AS OF {inputs[source]}"))
    held = query(conn, f"SELECT * FROM {view} VERSION AS OF {version} {VIEW_ORDER[view]}")
    if held != expected:
        raise Failed(f"{view} at version {version} holds {len(held)} rows; its query over "
                     f"{source} at version {inputs[source]} gives {len(expected)}")
    state.counts["view_versions_explained"] += 1


def run_round(server, state, rng, report):
    stop = threading.Event()
    workers = [threading.Thread(target=w, args=(server, state, stop, random.Random(rng.random())), daemon=True)
               for w in (http_worker, http_worker, flight_worker, refresh_worker, upkeep_worker, dml_worker)]
    errors = []

    def guard(t):
        try:
            t()
        except Failed as e:
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(w.run,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0.5, 4.0))
    server.kill9()
    stop.set()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--bin", default=os.environ.get("MEDLAKE_BIN"))
    parser.add_argument("--dir", help="keep the warehouse and logs here (default: a temporary folder, removed on success)")
    parser.add_argument("--azurite", action="store_true",
                        help="the warehouse on Azurite (az://chaos/warehouse; AZURITE_BLOB names azurite-blob)")
    args = parser.parse_args()
    if not args.bin or not os.path.exists(args.bin):
        sys.exit("MEDLAKE_BIN (or --bin) must point at the medlake binary")
    root = args.dir or tempfile.mkdtemp(prefix="medlake-chaos-")
    os.makedirs(root, exist_ok=True)
    warehouse = os.path.join(root, "warehouse")
    env = dict(os.environ, MEDLAKE_LOG=os.environ.get("MEDLAKE_LOG", "warn"))
    azurite = None
    if args.azurite:
        azurite, endpoint = start_azurite(root)
        env.update(AZURE_STORAGE_USE_EMULATOR="true", AZURITE_BLOB_STORAGE_URL=endpoint)
        warehouse = "az://chaos/warehouse"
    try:
        run(args, root, warehouse, env)
    finally:
        if azurite is not None:
            azurite.kill()
            azurite.wait()


def start_azurite(root):
    """Azurite on a free loopback port (in memory), with the container `chaos`."""
    import socket

    from azure.storage.blob import BlobServiceClient

    program = os.environ.get("AZURITE_BLOB")
    if not program or not os.path.exists(program):
        sys.exit(f"AZURITE_BLOB must point at azurite-blob (tests/run.sh installs it); got {program!r}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([program, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "azurite.log"), "w"))
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("Azurite did not start")
            time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    # Azurite's well-known development account (public, documented by Microsoft).
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        f"BlobEndpoint={endpoint}/devstoreaccount1;").create_container("chaos")
    return proc, endpoint


def run(args, root, warehouse, env):
    setup = [args.bin, "sql", "--warehouse", warehouse]
    for sql in SETUP:
        setup += ["-c", sql]
    subprocess.run(setup, check=True, capture_output=True, env=env)
    rng = random.Random(args.seed)
    state = State()
    report = {"seed": args.seed, "kills": 0, "rows": {}, "restart_seconds_max": 0.0, "dir": root}
    started = time.monotonic()
    try:
        for i in range(args.kills):
            server = Server(args.bin, warehouse, root, env)
            if i:
                report["restart_seconds_max"] = max(report["restart_seconds_max"], round(server.ready_after, 2))
                check(server, state, report, warehouse)
            run_round(server, state, rng, report)
            report["kills"] += 1
            print(f"kill {i + 1}/{args.kills}: {dict(state.counts)} errors: {sum(state.errors.values())}",
                  flush=True)
        server = Server(args.bin, warehouse, root, env)
        check(server, state, report, warehouse)
        server.stop()
    except Failed as e:
        report.update(counts=dict(state.counts), errors=dict(state.errors), failed=str(e))
        print(json.dumps(report, indent=2))
        print(f"FAILED after {report['kills']} kills: {e}; warehouse and serve.log kept in {root}", file=sys.stderr)
        sys.exit(1)
    finally:
        for s in [locals().get("server")]:
            if s is not None and s.proc.poll() is None:
                s.kill9()
    report.update(counts=dict(state.counts), errors=dict(state.errors),
                  flight_unanswered_but_landed=len(state.flight_landed),
                  seconds=round(time.monotonic() - started, 1))
    print(json.dumps(report, indent=2))
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
