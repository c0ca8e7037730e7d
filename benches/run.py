#!/usr/bin/env python3
"""medlake benchmarks. Each workload is a subcommand; results go to results/<workload>.json and
a Markdown table to stdout (and RESULTS.md with --write-md). Peers run in the same process,
on the same data, in the same run.

    python benches/run.py refresh --bin target/release/medlake [--rows 10000000] [--rounds 3]
    python benches/run.py medallion --bin target/release/medlake [--rows 10000000] [--rounds 3]
    python benches/run.py ingest --bin target/release/medlake [--rows 200000] [--clients 4] [--batch 1000]
    python benches/run.py serve --bin target/release/medlake [--rows 10000000] [--rounds 3]
    python benches/run.py dashboard --bin target/release/medlake [--rows 1000000] [--clients 32] [--seconds 30]
    python benches/run.py spill --bin target/release/medlake [--rows 50000000] [--memory-limit 256MB]
    python benches/run.py warehouse --bin target/release/medlake [--patients N --hours H --rate R]
    python benches/run.py merge --bin target/release/medlake [--rows 10000000] [--rounds 3]
    python benches/run.py alerting --bin target/release/medlake [--devices 400] [--seconds 120]
    python benches/run.py mllp --bin target/release/medlake [--messages 20000] [--concurrent-messages 200000]
    python benches/run.py cluster --bin target/release/medlake [--rows 10000000] [--executors 1 2 3]
    python benches/run.py threshold --bin target/release/medlake [--rows 10000000]

refresh: incremental vs full REFRESH MATERIALIZED VIEW after appending 1% to a bronze table,
with DuckDB recomputing the same gold table from bronze's Parquet files as the peer.

medallion (medallion.py): a full bronze -> silver -> gold refresh (deduplication, a left join,
a daily aggregate) against DuckDB running the same SQL and PySpark running the original
design's transformations over the same Parquet files; the three golds are checked equal.

ingest: device readings pushed over HTTP (POST /v1/ingest, NDJSON, each batch acknowledged once
committed) by concurrent clients, with PostgreSQL 15's COPY FROM (fsync on) of the same rows
into the same table as the peer.

serve: a large result fetched through medlake's Postgres door (COPY TO STDOUT, a streamed
SELECT) and Flight SQL door (ADBC) against PostgreSQL 15 serving the same rows (COPY, SELECT,
ADBC's PostgreSQL driver), after checking that both return the same rows.

dashboard: concurrent clients running a weighted mix of dashboard queries (dashboard/*.sql) on
a gold table over the Postgres wire, against PostgreSQL 15 with indexes; p50/p99 and queries/s.

spill: a FULL refresh whose aggregation is far larger than MEDLAKE_MEMORY_LIMIT, at 1x and 2x
the data, with and without the limit, against DuckDB under the same memory_limit.

warehouse (warehouse.py): the reference warehouse of `medlake quickstart` after one percent
more in every source: a CASCADE refresh of every view of sql/ (incremental) against a FULL
CASCADE refresh of the same views, results checked equal.

merge (merge.py): MERGE of 1% changed rows (scattered updates and inserts) into a 10M-row
table, against DuckDB's MERGE INTO on its own database file, tables checked equal each round.

alerting (alerting.py): live 1 Hz readings of 400 devices over the HTTP door into bronze ->
silver -> gold (REFRESH ON CHANGE) with an alert rule on gold; the distribution of reading
acknowledged -> webhook delivered for probe readings (no peer: a latency goal, <= 5 s p99).

mllp (mllp.py): HL7 v2 ORU^R01 messages (4 observations each) acknowledged after their Delta
commit over MLLP at 1 and 64 connections, against the HTTP door taking the same readings as
NDJSON requests with Idempotency-Keys; messages/s, p50/p99, commits, rows checked per leg.

cluster (cluster.py): the medallion's full refresh on the embedded engine and on a Ballista
cluster of 1, 2 and 3 executors started on this machine (mutual TLS), golds checked equal.

threshold (threshold.py): incremental vs FULL refresh of a grouped view as UPDATEs touch a
growing share of its input: the change fraction where incremental stops paying, which is what
REFRESH POLICY AUTO's AUTO_FULL_FRACTION should be.
"""

import argparse
import csv
import http.client
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from harness import (HERE, Medlake, build_of, load_average, query_text, sql_file,
                     workload_parser, write_result, write_results_md)

def refresh(args):
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-refresh-"))
    try:
        refresh_in(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def refresh_in(args, work):
    import duckdb

    warehouse = work / "warehouse"
    medlake = Medlake(args.bin, warehouse)
    append_rows = max(1, int(args.rows * args.append_fraction))
    started = time.perf_counter()
    medlake.run(sql_file("setup.sql", rows=args.rows))
    load_s = time.perf_counter() - started
    for suffix in ["", "_full"]:
        medlake.run(sql_file("views.sql", suffix=suffix))
    duck = duckdb.connect()
    duck.execute(f"SET threads = {args.threads}")
    rounds = []
    for r in range(args.rounds):
        medlake.run(sql_file("append.sql", rows=append_rows))
        times = medlake.timed(
            "REFRESH MATERIALIZED VIEW silver.vitals",
            "REFRESH MATERIALIZED VIEW gold.patient_daily",
            "REFRESH MATERIALIZED VIEW silver.vitals_full FULL",
            "REFRESH MATERIALIZED VIEW gold.patient_daily_full FULL",
        )
        modes = medlake.rows(
            "SELECT view, mode, reason FROM system.refreshes WHERE trigger = 'manual' "
            "ORDER BY finished DESC LIMIT 4"
        )
        incremental = {v: m for v, m, *_ in modes if not v.endswith("_full")}
        if set(incremental.values()) != {"incremental"}:
            sys.exit(f"round {r}: the incremental views did not refresh incrementally: {modes}")
        # Averages are compared to 6 decimals: sums over differently split rows differ in
        # their last bits (between two FULL refreshes too).
        columns = "patient_id, metric, day, readings, round(average, 6), minimum, maximum"
        differ = medlake.rows(
            f"SELECT count(*) FROM (SELECT {columns} FROM gold.patient_daily EXCEPT ALL "
            f"SELECT {columns} FROM gold.patient_daily_full)"
        )
        if differ != [["0"]]:
            sys.exit(f"round {r}: incremental and full gold differ in {differ} rows")
        files = str(warehouse / "bronze" / "vitals" / "*.parquet")
        t = time.perf_counter()
        duck.execute(sql_file("duckdb_gold.sql", files=files))
        duck_ms = (time.perf_counter() - t) * 1000
        rounds.append(
            {
                "silver_incremental_ms": times[0],
                "gold_incremental_ms": times[1],
                "silver_full_ms": times[2],
                "gold_full_ms": times[3],
                "duckdb_gold_full_ms": duck_ms,
            }
        )
        print(f"round {r + 1}/{args.rounds}: {rounds[-1]}", file=sys.stderr)
    median = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    incremental_ms = median["silver_incremental_ms"] + median["gold_incremental_ms"]
    full_ms = median["silver_full_ms"] + median["gold_full_ms"]
    result = {
        "workload": "refresh",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "append_rows": append_rows,
        "rounds": rounds,
        "median": median,
        "ratios": {
            "medlake_incremental_over_full": incremental_ms / full_ms,
            "medlake_incremental_over_duckdb_full": incremental_ms / median["duckdb_gold_full_ms"],
            "medlake_full_over_duckdb_full": full_ms / median["duckdb_gold_full_ms"],
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "duckdb": duckdb.__version__,
            "load_seconds": load_s,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "refresh.json").write_text(json.dumps(result, indent=2))
    table = "\n".join(
        [
            f"Refresh after appending {append_rows:,} rows to {args.rows:,} (median of {args.rounds} rounds, ms):",
            "",
            "| step | medlake incremental | medlake FULL | DuckDB full recompute |",
            "|---|---:|---:|---:|",
            f"| silver (filter + expectation) | {median['silver_incremental_ms']:.0f} | {median['silver_full_ms']:.0f} | |",
            f"| gold (group by patient, metric, day) | {median['gold_incremental_ms']:.0f} | {median['gold_full_ms']:.0f} | {median['duckdb_gold_full_ms']:.0f} |",
            f"| silver + gold | {incremental_ms:.0f} | {full_ms:.0f} | {median['duckdb_gold_full_ms']:.0f} (gold straight from bronze, no silver table) |",
            "",
            f"incremental / full = {result['ratios']['medlake_incremental_over_full']:.3f}; "
            f"incremental / DuckDB = {result['ratios']['medlake_incremental_over_duckdb_full']:.3f}; "
            f"full / DuckDB = {result['ratios']['medlake_full_over_duckdb_full']:.3f}",
        ]
    )
    print(table)
    if args.write_md:
        write_results_md(
            "refresh",
            f"`{result['command']}` on {os.cpu_count()} cores, DuckDB {duckdb.__version__} "
            f"with {args.threads} threads.\n\n{table}\n",
        )


# ---------------------------------------------------------------------------------------------
# ingest

START = "2026-11-23T08:00:00Z"
DEVICES = 100
INGEST_SQL = HERE / "ingest"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def generate_readings(binary, rows, work):
    """The rows both sides load: `medlake simulate`'s generator (100 devices at 1 Hz, seed 1, a
    fixed start; glitches, duplicates, late readings included), its first `rows` lines.
    Returns the NDJSON lines and the same rows as CSV lines for COPY (bytes, no newline)."""
    path = work / "readings.ndjson"
    command = [
        binary, "simulate", "--output", str(path), "--devices", str(DEVICES), "--rate", "1",
        "--duration", str(math.ceil(rows / DEVICES)), "--seed", "1", "--start", START,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"medlake simulate failed: {done.stderr.strip()}")
    ndjson = path.read_bytes().splitlines()[:rows]
    if len(ndjson) < rows:
        sys.exit(f"medlake simulate wrote {len(ndjson)} rows, fewer than {rows}")
    csv_lines = []
    for line in ndjson:
        r = json.loads(line)
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(
            [
                r["device_id"],
                r["patient_id"],
                r["metric"],
                "" if r["value"] is None else repr(float(r["value"])),  # unquoted empty = NULL
                r["unit"] if r["unit"] is not None else "",
                r["taken_at"].replace("T", " ").rstrip("Z"),
            ]
        )
        csv_lines.append(out.getvalue().encode())
    return ndjson, csv_lines


def batches_of(lines, size):
    return [b"\n".join(lines[i : i + size]) + b"\n" for i in range(0, len(lines), size)]


def run_clients(clients, jobs, connect, send):
    """Runs `jobs` through `clients` threads, each with its own connection (`connect()`); the
    clock starts once every client is connected. `send(conn, job)` returns the connection to
    go on with. Returns (seconds, per-job latencies in ms)."""
    lock = threading.Lock()
    pending = list(reversed(jobs))
    latencies, errors = [], []
    ready = threading.Barrier(clients + 1)

    def client():
        try:
            conn = connect()
        except Exception as e:  # reported below; the barrier must not wait for this client
            errors.append(f"connect: {e}")
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            return
        while True:
            with lock:
                if not pending or errors:
                    break
                job = pending.pop()
            t = time.perf_counter()
            try:
                conn = send(conn, job)
            except Exception as e:
                with lock:
                    errors.append(str(e))
                break
            with lock:
                latencies.append((time.perf_counter() - t) * 1000)
        close = getattr(conn, "close", None)
        if close:
            close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        sys.exit(f"load failed: {errors[0]}")
    return seconds, latencies


class MedlakeServer:
    """`medlake serve` on free loopback ports, without auth; stopped with SIGTERM."""

    def __init__(self, binary, warehouse, log, audit=True, env=None):
        self.log = open(log, "w")
        config = []
        if not audit:
            # `[audit] enabled = false`: the same server recording nothing in system.audit, to
            # measure what the audit costs.
            path = Path(str(log) + ".audit-off.toml")
            path.write_text("[audit]\nenabled = false\n")
            config = ["--config", str(path)]
        self.proc = subprocess.Popen(
            [
                binary, "serve", "--warehouse", str(warehouse), "--insecure-no-auth", *config,
                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        found = []
        reader = threading.Thread(target=self._read, args=(found,), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not found and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if not found:
            self.stop()
            sys.exit(f"medlake serve did not report its http address; see {log}")
        self.host, port = found[0].rsplit(":", 1)
        self.port = int(port)
        self.perf = None
        if os.environ.get("MEDLAKE_BENCH_PERF"):
            # Diagnosis only (the figures of a run under perf are not results): the server's
            # on-CPU profile with DWARF call graphs, for a build with symbols (`cargo build
            # --profile profiling`), into $MEDLAKE_BENCH_PERF/<log name>.perf.data.
            folder = Path(os.environ["MEDLAKE_BENCH_PERF"])
            folder.mkdir(parents=True, exist_ok=True)
            self.perf = subprocess.Popen(
                ["perf", "record", "-F", "499", "--call-graph", "dwarf,32768", "-p", str(self.proc.pid),
                 "-o", str(folder / (Path(log).name + ".perf.data"))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _read(self, found):
        for line in self.proc.stdout:
            m = re.match(r"medlake serve: http on (\S+)", line)
            if m:
                found.append(m.group(1))

    def metric(self, name):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        if getattr(self, "perf", None) is not None:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait(300)
            self.perf = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Postgres:
    """A throwaway PostgreSQL cluster in `root` on a free loopback port, fsync on; as the
    `postgres` user when run as root (PostgreSQL refuses to run as root)."""

    def __init__(self, bin_dir, root):
        self.bin = Path(bin_dir)
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.prefix = []
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                sys.exit("running as root needs a 'postgres' user to run PostgreSQL as (the postgresql-15 package creates it)")
            os.chown(root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={root} "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        )
        self.run("pg_ctl", "-D", str(self.data), "-l", str(root / "postgres.log"), "-w", "-t", "120", "-o", options, "start")

    def run(self, tool, *args):
        done = subprocess.run(self.prefix + [str(self.bin / tool), *args], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{tool} failed: {done.stdout.strip()}\n{done.stderr.strip()}")
        return done.stdout

    def connect(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True)

    def stop(self):
        subprocess.run(self.prefix + [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], capture_output=True)


def find_pg_bin(given):
    """PostgreSQL 15's server binaries: --pg-bin, Debian's folder, or initdb on PATH; installed
    from the Debian package postgresql-15 when none is there and apt-get can."""
    if given:
        return Path(given)
    for attempt in range(2):
        for candidate in [Path("/usr/lib/postgresql/15/bin")]:
            if (candidate / "postgres").exists():
                return candidate
        initdb = shutil.which("initdb")
        if initdb:
            return Path(initdb).resolve().parent
        if attempt == 0 and shutil.which("apt-get") and os.geteuid() == 0:
            print("installing postgresql-15 (Debian) for the PostgreSQL peer", file=sys.stderr)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql-15"], env=env, check=False)
    sys.exit("PostgreSQL 15 server binaries not found: install postgresql-15 or give --pg-bin DIR")


# The Python peers and clients the workloads import (module -> PyPI name), installed into this
# interpreter at the versions tests/interop/requirements.txt pins when missing.
PYTHON_PEERS = {
    "duckdb": "duckdb",
    "psycopg": "psycopg[binary]",
    "pyarrow": "pyarrow",
    "adbc_driver_manager": "adbc-driver-manager",
    "adbc_driver_flightsql": "adbc-driver-flightsql",
    "adbc_driver_postgresql": "adbc-driver-postgresql",
    "deltalake": "deltalake",
    "hl7": "hl7",  # python-hl7: reads back the mllp workload's hand-built ORU^R01
}


def ensure_python_peers():
    import importlib.util

    missing = [name for module, name in PYTHON_PEERS.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return
    pins = {}
    for line in (HERE.parent / "tests" / "interop" / "requirements.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if version and not name.startswith("#"):
            pins[name] = line.strip()
    wanted = [pins.get(name, name) for name in missing]
    print(f"installing {' '.join(wanted)} into {sys.prefix}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *wanted], check=True)


# The rows both medlake warehouses hold after the HTTP and Flight SQL legs, compared (exact
# integers: `value` in thousandths, so that the sum does not depend on the order of addition).
INGEST_FINGERPRINT = (
    "SELECT count(*), count(value), count(unit), count(DISTINCT device_id), sum(patient_id), "
    "sum(CAST(round(value * 1000) AS BIGINT)), min(taken_at), max(taken_at) FROM bronze.readings"
)


def readings_arrow(ndjson, size, schema):
    """The same rows as Arrow tables of `size` rows for ADBC ingest, typed like the table
    (`schema`: bronze.readings as the Flight SQL door declares it); `taken_at` in UTC without
    its `Z`, as the HTTP door stores it. Built before the clock starts, like COPY's CSV."""
    import pyarrow as pa

    rows = [json.loads(line) for line in ndjson]
    tables = []
    for i in range(0, len(rows), size):
        part = rows[i : i + size]
        columns = {name: [r[name] for r in part] for name in ["device_id", "patient_id", "metric", "value", "unit"]}
        columns["value"] = pa.array([None if v is None else float(v) for v in columns["value"]], pa.float64())
        columns["taken_at"] = pa.array([r["taken_at"].rstrip("Z") for r in part]).cast(pa.timestamp("us"))
        table = pa.table(columns)
        tables.append(table.select(schema.names).cast(schema))
    return tables


class FlightIngestClient:
    """One ADBC Flight SQL connection and its cursor, for `run_clients`."""

    def __init__(self, server):
        self.conn = server.flight_connect()
        self.cursor = self.conn.cursor()

    def close(self):
        self.cursor.close()
        self.conn.close()


def flight_history(conn, table="bronze.readings"):
    """`DESCRIBE HISTORY` of the table through the Flight SQL door: one dict per commit."""
    with conn.cursor() as cur:
        cur.execute(f"DESCRIBE HISTORY {table}")
        return cur.fetch_arrow_table().to_pylist()


def ingest(args):
    import adbc_driver_flightsql
    import psycopg

    pg_bin = find_pg_bin(args.pg_bin)
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-ingest-"))
    pg_root = Path(tempfile.mkdtemp(prefix="medlake-bench-pg-"))
    try:
        ndjson, csv_lines = generate_readings(args.bin, args.rows, work)
        load_before = [round(x, 2) for x in os.getloadavg()]
        ndjson_batches = batches_of(ndjson, args.batch)
        csv_batches = batches_of(csv_lines, args.batch)
        all_csv = b"\n".join(csv_lines) + b"\n"
        rounds = [{} for _ in range(args.rounds)]

        # medlake: POST /v1/ingest/bronze.readings, NDJSON, one Idempotency-Key per batch; then
        # the same into a fresh warehouse with `MEDLAKE_FSYNC=on` (every data file, log entry and
        # folder synced before the answer: PostgreSQL's fsync = on promise).
        http_warehouses = []
        for http_side, http_env in [("medlake_http", {}), ("medlake_http_fsync", {"MEDLAKE_FSYNC": "on"})]:
            warehouse = work / f"warehouse-{http_side}"
            http_warehouses.append(warehouse)
            Medlake(args.bin, warehouse).run(sql_file("medlake.sql", "ingest"))
            server = MedlakeServer(args.bin, warehouse, work / f"serve-{http_side}.log", env=http_env)
            try:
                path = "/v1/ingest/bronze.readings"
                counted = threading.Lock()
                acknowledged = [0]
                retries = [0]

                def connect():
                    return http.client.HTTPConnection(server.host, server.port, timeout=600)

                def post(conn, job):
                    key, body, rows = job
                    for attempt in range(30):
                        try:
                            conn.request("POST", path, body=body, headers={"Content-Type": "application/x-ndjson", "Idempotency-Key": key})
                            response = conn.getresponse()
                            answer = response.read()
                        except (OSError, http.client.HTTPException):
                            conn.close()
                            conn = connect()
                            wait = min(0.1 * 2**attempt, 5)
                        else:
                            if response.status == 200:
                                reply = json.loads(answer)
                                if reply.get("rows") != rows or reply.get("duplicate"):
                                    raise RuntimeError(f"unexpected acknowledgement of {rows} rows: {reply}")
                                with counted:
                                    acknowledged[0] += rows
                                return conn
                            if response.status not in (429, 503) and response.status < 500:
                                raise RuntimeError(f"medlake answered {response.status}: {answer[:300]!r}")
                            wait = float(response.getheader("Retry-After") or min(0.1 * 2**attempt, 5))
                        with counted:
                            retries[0] += 1
                        time.sleep(wait)
                    raise RuntimeError(f"batch {key} not acknowledged after 30 attempts")

                commits_before = server.metric("medlake_ingest_commits_total") or 0
                for r, result in enumerate(rounds):
                    jobs = [(f"bench-{os.getpid()}-{http_side}-{r}-{i}", body, body.count(b"\n")) for i, body in enumerate(ndjson_batches)]
                    load = round(os.getloadavg()[0], 2)
                    seconds, latencies = run_clients(args.clients, jobs, connect, post)
                    commits = server.metric("medlake_ingest_commits_total")
                    result[http_side] = {
                        "seconds": seconds,
                        "readings_per_s": args.rows / seconds,
                        "p50_ms": percentile(latencies, 0.5),
                        "p99_ms": percentile(latencies, 0.99),
                        "requests": len(latencies),
                        "commits": None if commits is None else commits - commits_before,
                        "load_1min_before": load,
                    }
                    commits_before = commits or 0
                    print(f"round {r + 1}/{args.rounds}: {http_side} {result[http_side]}", file=sys.stderr)
                busy = server.metric("medlake_ingest_rejected_busy_total")
            finally:
                server.stop()
            if acknowledged[0] != args.rows * args.rounds:
                sys.exit(f"medlake acknowledged {acknowledged[0]} rows, not {args.rows * args.rounds}")
            count = Medlake(args.bin, warehouse).rows("SELECT count(*) FROM bronze.readings")
            if count != [[str(args.rows * args.rounds)]]:
                sys.exit(f"bronze.readings holds {count} rows, not {args.rows * args.rounds}")
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()

        # medlake over Flight SQL: ADBC `adbc_ingest` (CommandStatementIngest, append) of the
        # same batches as Arrow tables into bronze.readings of a second, fresh warehouse (so
        # that neither leg commits on top of the other's files), from as many clients, each
        # with its own connection. ADBC ingest has no idempotency key, so nothing is retried:
        # a client whose answer is lost cannot tell whether its batch was committed.
        # The same leg again with `[audit] enabled = false` (a third warehouse): what recording
        # every ingest in system.audit before answering costs.
        ingested = [0]
        flight_warehouses = []
        for side, audit in [("medlake_flight", True), ("medlake_flight_audit_off", False)]:
            flight_warehouse = work / f"warehouse-{side}"
            Medlake(args.bin, flight_warehouse).run(sql_file("medlake.sql", "ingest"))
            server = MedlakeDoors(args.bin, flight_warehouse, work / f"serve-{side}.log", audit=audit)
            try:
                with server.flight_connect() as conn:
                    declared = conn.adbc_get_table_schema("readings", db_schema_filter="bronze")
                    history = flight_history(conn)
                arrow_batches = readings_arrow(ndjson, args.batch, declared)
                ingested[0] = 0

                def put(client, table):
                    rows = client.cursor.adbc_ingest("readings", table, mode="append", db_schema_name="bronze")
                    if rows != table.num_rows:
                        raise RuntimeError(f"ADBC ingest of {table.num_rows} rows answered {rows}")
                    with counted:
                        ingested[0] += rows
                    return client

                for r, result in enumerate(rounds):
                    before = max(h["version"] for h in history)
                    load = round(os.getloadavg()[0], 2)
                    seconds, latencies = run_clients(args.clients, arrow_batches, lambda: FlightIngestClient(server), put)
                    with server.flight_connect() as conn:
                        history = flight_history(conn)
                        with conn.cursor() as cur:
                            cur.execute("SELECT count(*) FROM bronze.readings")
                            held = cur.fetchone()[0]
                    if held != args.rows * (r + 1):
                        sys.exit(f"after round {r + 1} the Flight SQL warehouse's bronze.readings holds {held} rows, not {args.rows * (r + 1)}")
                    commits = [h for h in history if h["version"] > before]
                    result[side] = {
                        "seconds": seconds,
                        "readings_per_s": args.rows / seconds,
                        "p50_ms": percentile(latencies, 0.5),
                        "p99_ms": percentile(latencies, 0.99),
                        "requests": len(latencies),
                        "commits": len(commits),
                        # as the commits record them (deltalake's retries of a commit that found its
                        # version taken; medlake's blind appends record 0)
                        "commit_retries": sum(json.loads(h["metrics"] or "{}").get("num_retries", 0) for h in commits),
                        "load_1min_before": load,
                    }
                    print(f"round {r + 1}/{args.rounds}: {side} {result[side]}", file=sys.stderr)
            finally:
                server.stop()
            if ingested[0] != args.rows * args.rounds:
                sys.exit(f"medlake's Flight SQL door acknowledged {ingested[0]} rows, not {args.rows * args.rounds}")
            flight_warehouses.append(flight_warehouse)
        fingerprints = [Medlake(args.bin, w).rows(INGEST_FINGERPRINT) for w in [*http_warehouses, *flight_warehouses]]
        if any(f != fingerprints[0] for f in fingerprints[1:]):
            sys.exit(f"the HTTP and Flight SQL warehouses hold different rows: {fingerprints[0]} vs {fingerprints[1]}")

        # PostgreSQL: COPY FROM STDIN (CSV), the same batches from the same number of clients,
        # one transaction each; then one COPY of everything.
        pg = Postgres(pg_bin, pg_root)
        try:
            with pg.connect() as conn:
                for table in ["readings", "readings_bulk"]:
                    conn.execute(sql_file("postgres.sql", "ingest", table=table))
                settings = {
                    name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ["server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method"]
                }
            if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
                sys.exit(f"PostgreSQL is not durable here: {settings}")

            def copy(conn, body):
                with conn.cursor() as cur:
                    with cur.copy("COPY readings FROM STDIN (FORMAT csv)") as stream:
                        stream.write(body)
                return conn

            for r, result in enumerate(rounds):
                load = round(os.getloadavg()[0], 2)
                seconds, latencies = run_clients(args.clients, csv_batches, pg.connect, copy)
                result["postgres_copy_batches"] = {
                    "seconds": seconds,
                    "readings_per_s": args.rows / seconds,
                    "p50_ms": percentile(latencies, 0.5),
                    "p99_ms": percentile(latencies, 0.99),
                    "requests": len(latencies),
                    "commits": len(csv_batches),
                    "load_1min_before": load,
                }
                with pg.connect() as conn:
                    t = time.perf_counter()
                    with conn.cursor() as cur:
                        with cur.copy("COPY readings_bulk FROM STDIN (FORMAT csv)") as stream:
                            stream.write(all_csv)
                    seconds = time.perf_counter() - t
                result["postgres_copy_single"] = {"seconds": seconds, "readings_per_s": args.rows / seconds, "commits": 1}
                print(f"round {r + 1}/{args.rounds}: postgres {result['postgres_copy_batches']}, one COPY {result['postgres_copy_single']}", file=sys.stderr)
            with pg.connect() as conn:
                for table in ["readings", "readings_bulk"]:
                    n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    if n != args.rows * args.rounds:
                        sys.exit(f"PostgreSQL's {table} holds {n} rows, not {args.rows * args.rounds}")
        finally:
            pg.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pg_root, ignore_errors=True)

    sides = ["medlake_http", "medlake_http_fsync", "medlake_flight", "medlake_flight_audit_off", "postgres_copy_batches", "postgres_copy_single"]
    median = {side: {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side] if rounds[0][side][k] is not None} for side in sides}
    build = "release" if "/release/" in str(Path(args.bin).resolve()) else "debug" if "/debug/" in str(Path(args.bin).resolve()) else "unknown"
    per_s = {side: median[side]["readings_per_s"] for side in sides}
    result = {
        "workload": "ingest",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "clients": args.clients,
        "batch": args.batch,
        "batches": len(ndjson_batches),
        "ndjson_bytes": sum(len(b) for b in ndjson_batches),
        "csv_bytes": len(all_csv),
        "arrow_bytes": sum(t.nbytes for t in arrow_batches),
        "rounds": rounds,
        "median": median,
        "ratios": {
            f"{side}_over_{peer}": per_s[side] / per_s[peer]
            for side in ["medlake_http", "medlake_http_fsync", "medlake_flight"]
            for peer in ["postgres_copy_batches", "postgres_copy_single"]
        }
        | {"medlake_flight_audit_on_over_off": per_s["medlake_flight"] / per_s["medlake_flight_audit_off"]},
        "medlake": {
            "version": version,
            "build": build,
            "busy_answers": busy,
            "retries": retries[0],
            "same_rows_in_both_warehouses": fingerprints[0],
        },
        "postgres": settings,
        "durability": "medlake answers (HTTP 200, Flight SQL's DoPut result) once the Delta commit "
        "holding the batch exists (files written and the commit file created through "
        "object_store's local file system, which does not fsync), and in the medlake_http_fsync leg "
        "(MEDLAKE_FSYNC=on) once every data file, the log entry and their folders are fsynced; "
        "PostgreSQL answers once the transaction's WAL is fsynced (fsync=on, synchronous_commit=on).",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "psycopg": psycopg.__version__,
            "adbc_driver_flightsql": adbc_driver_flightsql.__version__,
            "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(result, indent=2))

    def ms(side):
        m = median[side]
        return f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f}"

    def ratios(side):
        return " | ".join(f"{per_s[side] / per_s[peer]:.3f}" for peer in ["postgres_copy_batches", "postgres_copy_single"])

    def by_round(side):
        return " / ".join(f"{r[side]['readings_per_s']:,.0f}" for r in rounds)

    pg_version = settings["server_version"].split()[0]
    table = "\n".join(
        [
            f"{args.rows:,} device readings ({len(all_csv) / args.rows:.0f} bytes a row as CSV) loaded by "
            f"{args.clients} concurrent clients in batches of {args.batch:,} rows, each batch "
            f"acknowledged once committed; median of {args.rounds} round{'s' if args.rounds > 1 else ''}:",
            "",
            "| system | load | readings/s | / PostgreSQL per-batch COPY | / PostgreSQL one COPY | ms per batch, p50 / p99 | commits a round |",
            "|---|---|---:|---:|---:|---:|---:|",
            f"| medlake ({build} build) | HTTP `POST /v1/ingest/bronze.readings`, NDJSON | "
            f"{per_s['medlake_http']:,.0f} | {ratios('medlake_http')} | {ms('medlake_http')} | "
            f"{median['medlake_http'].get('commits', float('nan')):.0f} |",
            f"| medlake ({build} build), `MEDLAKE_FSYNC=on` | the same HTTP ingest, every file, log entry and folder fsynced before the answer | "
            f"{per_s['medlake_http_fsync']:,.0f} | {ratios('medlake_http_fsync')} | {ms('medlake_http_fsync')} | "
            f"{median['medlake_http_fsync'].get('commits', float('nan')):.0f} |",
            f"| medlake ({build} build) | Flight SQL, ADBC `adbc_ingest(\"readings\", table, mode=\"append\", db_schema_name=\"bronze\")`, Arrow | "
            f"{per_s['medlake_flight']:,.0f} | {ratios('medlake_flight')} | {ms('medlake_flight')} | "
            f"{median['medlake_flight']['commits']:.0f} |",
            f"| medlake ({build} build), `[audit] enabled = false` | the same Flight SQL ingest, recording nothing in `system.audit` | "
            f"{per_s['medlake_flight_audit_off']:,.0f} | {ratios('medlake_flight_audit_off')} | {ms('medlake_flight_audit_off')} | "
            f"{median['medlake_flight_audit_off']['commits']:.0f} |",
            f"| PostgreSQL {pg_version}, fsync on | `COPY readings FROM STDIN (FORMAT csv)`, a transaction per batch | "
            f"{per_s['postgres_copy_batches']:,.0f} | 1 | {per_s['postgres_copy_batches'] / per_s['postgres_copy_single']:.3f} | "
            f"{ms('postgres_copy_batches')} | {len(csv_batches)} |",
            f"| PostgreSQL {pg_version}, fsync on | one `COPY` of every row, one transaction | "
            f"{per_s['postgres_copy_single']:,.0f} | {per_s['postgres_copy_single'] / per_s['postgres_copy_batches']:.3f} | 1 | | 1 |",
            "",
            "The HTTP door groups the batches that arrive together into one Delta commit; so does the "
            "engine for Flight SQL ingests (the requests that wait while a commit is written share the "
            "next one). ADBC ingest carries no idempotency key, so a Flight SQL ingest is "
            "never retried. Each medlake leg has a warehouse "
            "of its own, and each round appends to the same table, which grows by a round's commits: "
            f"HTTP by round {by_round('medlake_http')} readings/s, HTTP with fsync by round "
            f"{by_round('medlake_http_fsync')} readings/s, Flight SQL by round "
            f"{by_round('medlake_flight')} readings/s. Both warehouses hold the same rows afterwards "
            "(count, NULLs, sums, first and last `taken_at` compared). The audit's cost on Flight SQL "
            f"ingest (each ingest recorded in `system.audit` before it is answered): audit on / off "
            f"{per_s['medlake_flight'] / per_s['medlake_flight_audit_off']:.3f} of the readings/s.",
            "",
            f"Machine load average (1/5/15 min) before: {result['machine']['load_before']}, "
            f"after: {result['machine']['load_after']}; 1-minute load at the start of each round, "
            + "; ".join(f"{name} " + " / ".join(f"{r[side]['load_1min_before']:.2f}" for r in rounds) for name, side in [("HTTP", "medlake_http"), ("Flight SQL", "medlake_flight"), ("PostgreSQL batches", "postgres_copy_batches")])
            + ".",
        ]
    )
    if build != "release":
        table += f"\n\nThe medlake binary is a {build} build: its figures say little; build with --release to measure."
    print(table)
    if args.write_md:
        write_results_md(
            "ingest",
            f"`{result['command']}` on {os.cpu_count()} cores.\n\n{table}\n\nDurability: {result['durability']}\n",
        )


# ---------------------------------------------------------------------------------------------
# serve, dashboard, spill: shared helpers

def sql_statements(text):
    """The statements of a simple .sql file (no ';' inside strings), comments dropped."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def duckdb_generate(select_sql, parquet, csv_path):
    """Writes the rows of a DuckDB query once as Parquet (medlake loads it through a blob
    external table) and as CSV (PostgreSQL's COPY); DuckDB writes doubles in their shortest
    exact form, so both sides hold the same values."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"COPY ({select_sql}) TO '{parquet}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT * FROM read_parquet('{parquet}')) TO '{csv_path}' (FORMAT csv, HEADER false)")
    con.close()


def postgres_load(pg, create_sql, table, csv_path, after_sql):
    """CREATE, then COPY FROM STDIN of the CSV file in 1 MiB pieces, then `after_sql` (indexes,
    VACUUM ANALYZE; each statement on its own, outside a transaction)."""
    with pg.connect() as conn:
        for statement in sql_statements(create_sql):
            conn.execute(statement)
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy, open(csv_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
        for statement in sql_statements(after_sql):
            conn.execute(statement)
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0], conn.execute("SHOW server_version").fetchone()[0]


class MedlakeDoors(MedlakeServer):
    """`medlake serve` with its Postgres, Flight SQL and HTTP doors on free loopback ports."""

    def __init__(self, binary, warehouse, log, audit=True, env=None):
        self.doors = {}
        super().__init__(binary, warehouse, log, audit, env)
        deadline = time.monotonic() + 30
        while len(self.doors) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.doors) < 3:
            self.stop()
            sys.exit(f"medlake serve did not report its three doors ({self.doors}); see {log}")

    def _read(self, found):
        for line in self.proc.stdout:
            m = re.match(r"medlake serve: (postgres|flight sql|http) on (\S+)", line)
            if m:
                host, port = m.group(2).rsplit(":", 1)
                self.doors[m.group(1)] = (host, int(port))
                if m.group(1) == "http":
                    found.append(m.group(2))

    def pg_connect(self):
        import psycopg

        host, port = self.doors["postgres"]
        return psycopg.connect(host=host, port=port, user="bench", dbname="medlake", autocommit=True)

    def flight_connect(self):
        import adbc_driver_flightsql.dbapi as flight_sql

        host, port = self.doors["flight sql"]
        return flight_sql.connect(f"grpc://{host}:{port}", autocommit=True)


def pg_adbc_connect(pg):
    import adbc_driver_postgresql.dbapi as pg_adbc

    return pg_adbc.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True)


# ---------------------------------------------------------------------------------------------
# serve (P4): a large result out of medlake's Postgres and Flight SQL doors vs PostgreSQL 15

SERVE_METHODS = {
    "copy": "`COPY (SELECT ...) TO STDOUT` (text), psycopg `cursor.copy()`",
    "select": "`SELECT ...` streamed by psycopg `cursor.stream(size=10000)` (text rows into Python tuples)",
    "arrow": "ADBC `fetch_arrow_table()`: medlake over Flight SQL (`adbc_driver_flightsql`), PostgreSQL with `adbc_driver_postgresql` (libpq, binary COPY)",
}


# The check compares COPY's text in a canonical form too (and reports whether the raw bytes
# were equal): a timestamp's fractional seconds without trailing zeros and an integral double
# without `.0`, as PostgreSQL writes them.
COPY_FRACTION = re.compile(rb"(\d\d:\d\d:\d\d(?:\.\d*[1-9])?)(?:\.?0+)(?=[\t\n]|$)")
COPY_INTEGRAL = re.compile(rb"(?<![^\t\n])(-?\d+)\.0(?=[\t\n]|$)")


def copy_canonical(text):
    return COPY_INTEGRAL.sub(rb"\1", COPY_FRACTION.sub(rb"\1", text))


def serve_fetch(method, side, query, fetch_size, check=False):
    """Runs one fetch of `query`; returns (rows, seconds, what to compare) with the clock on
    the query and its transfer only (connecting is outside). With `check` (copy and arrow) the
    rows are ordered and kept for the comparison: SHA-256s of COPY's bytes, an Arrow table."""
    import hashlib

    if check:
        query += " ORDER BY reading_id"
    if method == "arrow":
        conn = side["adbc"]()
        try:
            with conn.cursor() as cur:
                t = time.perf_counter()
                cur.execute(query)
                table = cur.fetch_arrow_table()
                seconds = time.perf_counter() - t
        finally:
            conn.close()
        return table.num_rows, seconds, table if check else None
    conn = side["pg"]()
    try:
        with conn.cursor() as cur:
            if method == "copy":
                raw, canonical = hashlib.sha256(), hashlib.sha256()
                rows = 0
                head, chead = bytearray(), bytearray()
                rest = b""
                t = time.perf_counter()
                with cur.copy(f"COPY ({query}) TO STDOUT") as copy:
                    for data in copy:
                        data = bytes(data)
                        rows += data.count(b"\n")
                        if check:
                            raw.update(data)
                            if len(head) < 4096:
                                head += data[:4096]
                            # Whole lines only, so that the canonical form never splits a value.
                            lines, _, rest = (rest + data).rpartition(b"\n")
                            if lines:
                                lines = copy_canonical(lines + b"\n")
                                canonical.update(lines)
                                if len(chead) < 4096:
                                    chead += lines[:4096]
                seconds = time.perf_counter() - t
                if check:
                    canonical.update(copy_canonical(rest))
                    return rows, seconds, (raw.hexdigest(), canonical.hexdigest(), bytes(head[:4096]), bytes(chead[:4096]))
                return rows, seconds, None
            rows = 0
            t = time.perf_counter()
            for _ in cur.stream(query, size=fetch_size):
                rows += 1
            seconds = time.perf_counter() - t
            return rows, seconds, None
    finally:
        conn.close()


def serve_check_rows(sides, query, fetch_size, expected):
    """Streams both sides' rows in reading_id order side by side and compares them as psycopg
    parses them (constant memory); returns (what differs, None) or (None, how they matched)."""
    import itertools

    ours, theirs = sides["medlake"]["pg"](), sides["postgres"]["pg"]()
    try:
        with ours.cursor() as a, theirs.cursor() as b:
            ordered = query + " ORDER BY reading_id"
            rows = 0
            for x, y in itertools.zip_longest(a.stream(ordered, size=fetch_size), b.stream(ordered, size=fetch_size)):
                if x != y:
                    return f"row {rows}: medlake {x!r} vs PostgreSQL {y!r}", None
                rows += 1
    finally:
        ours.close()
        theirs.close()
    if rows != expected:
        return f"both returned {rows} rows, not {expected}", None
    return None, "the same Python values, row by row"


def serve_compare(method, medlake_kept, postgres_kept):
    """(None, how they matched) when both sides returned the same rows, else (what differs,
    None)."""
    if method == "copy":
        if medlake_kept[0] == postgres_kept[0]:
            return None, "byte for byte"
        first = next(
            (f"medlake {a!r} vs PostgreSQL {b!r}" for a, b in zip(medlake_kept[2].split(b"\n"), postgres_kept[2].split(b"\n")) if a != b),
            "beyond the first 4 KiB",
        )
        if medlake_kept[1] == postgres_kept[1]:
            return None, f"the same values; the text differs only in the form of timestamps' fractions and integral doubles: {first}"
        canonical = next(
            (f"medlake {a!r} vs PostgreSQL {b!r}" for a, b in zip(medlake_kept[3].split(b"\n"), postgres_kept[3].split(b"\n")) if a != b),
            "beyond the first 4 KiB",
        )
        return f"COPY text differs beyond the form of timestamps and integral doubles: {canonical}", None
    import pyarrow as pa

    target = pa.schema([("reading_id", pa.int64()), ("device_id", pa.string()), ("patient_id", pa.int32()),
                        ("metric", pa.string()), ("value", pa.float64()), ("taken_at", pa.timestamp("us"))])

    def common(table):
        return pa.table([table.column(i).cast(target.field(i).type) for i in range(len(target))], schema=target)

    try:
        ours, theirs = common(medlake_kept), common(postgres_kept)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        return f"Arrow schemas differ beyond casts: medlake {medlake_kept.schema} vs PostgreSQL {postgres_kept.schema} ({e})", None
    if ours.equals(theirs):
        same = medlake_kept.schema.equals(postgres_kept.schema)
        return None, "the same Arrow table" + ("" if same else f" after casts (medlake {medlake_kept.schema.types}, PostgreSQL {postgres_kept.schema.types})")
    for name in target.names:
        if not ours.column(name).equals(theirs.column(name)):
            return f"Arrow column {name} differs", None
    return "Arrow tables differ", None


def serve(args):
    import psycopg

    pg_bin = find_pg_bin(args.pg_bin)
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-serve-"))
    pg_root = Path(tempfile.mkdtemp(prefix="medlake-bench-pg-"))
    load_before = load_average()
    methods = [m.strip() for m in args.methods.split(",")]
    if "arrow" in methods:
        try:
            import adbc_driver_postgresql  # noqa: F401
        except ImportError:
            sys.exit("the arrow method needs adbc-driver-postgresql (pip install -r tests/interop/requirements.txt)")
    server = pg = None
    try:
        landing = work / "landing"
        landing.mkdir()
        t = time.perf_counter()
        duckdb_generate(sql_file("generate.sql", "serve", rows=args.rows), landing / "readings.parquet", work / "readings.csv")
        generate_s = time.perf_counter() - t
        csv_bytes = (work / "readings.csv").stat().st_size
        warehouse = work / "warehouse"
        medlake = Medlake(args.bin, warehouse)
        t = time.perf_counter()
        medlake.run(sql_file("medlake.sql", "serve", landing=f"{landing}/"))
        medlake_load_s = time.perf_counter() - t
        count = medlake.rows("SELECT count(*) FROM bronze.readings")
        if count != [[str(args.rows)]]:
            sys.exit(f"medlake's bronze.readings holds {count} rows, not {args.rows}")
        pg = Postgres(pg_bin, pg_root)
        t = time.perf_counter()
        n, pg_version = postgres_load(pg, sql_file("postgres.sql", "serve"), "bronze.readings", work / "readings.csv",
                                      sql_file("postgres_after.sql", "serve"))
        postgres_load_s = time.perf_counter() - t
        if n != args.rows:
            sys.exit(f"PostgreSQL's bronze.readings holds {n} rows, not {args.rows}")
        (work / "readings.csv").unlink()
        server = MedlakeDoors(args.bin, warehouse, work / "serve.log")
        sides = {
            "medlake": {"pg": server.pg_connect, "adbc": server.flight_connect},
            "postgres": {"pg": pg.connect, "adbc": lambda: pg_adbc_connect(pg)},
        }
        query = query_text("query.sql", "serve")

        # The check, untimed: the same rows, in reading_id order, from both sides, each method.
        checks = {}
        for method in methods:
            if method == "select":
                problem, how = serve_check_rows(sides, query, args.fetch_size, args.rows)
                if problem:
                    sys.exit(f"check select: medlake and PostgreSQL differ: {problem}")
                checks[method] = how
                print(f"check select: medlake and PostgreSQL returned the same {args.rows:,} rows: {how}", file=sys.stderr)
                continue
            kept = {}
            for name, side in sides.items():
                rows, seconds, kept[name] = serve_fetch(method, side, query, args.fetch_size, check=True)
                if rows != args.rows:
                    sys.exit(f"check {method}: {name} returned {rows} rows, not {args.rows}")
            problem, how = serve_compare(method, kept["medlake"], kept["postgres"])
            if problem:
                sys.exit(f"check {method}: medlake and PostgreSQL differ: {problem}")
            checks[method] = how
            kept.clear()
            print(f"check {method}: medlake and PostgreSQL returned the same {args.rows:,} rows: {how}", file=sys.stderr)

        rounds = []
        for r in range(args.rounds):
            result = {}
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for method in methods:
                for name in order:
                    rows, seconds, _ = serve_fetch(method, sides[name], query, args.fetch_size)
                    if rows != args.rows:
                        sys.exit(f"round {r + 1} {method}: {name} returned {rows} rows, not {args.rows}")
                    result[f"{name}_{method}_s"] = seconds
            rounds.append(result)
            print(f"round {r + 1}/{args.rounds}: {({k: round(v, 3) for k, v in result.items()})}", file=sys.stderr)
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    finally:
        if server:
            server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pg_root, ignore_errors=True)

    median = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    ratios = {m: (args.rows / median[f"medlake_{m}_s"]) / (args.rows / median[f"postgres_{m}_s"]) for m in methods}
    import adbc_driver_flightsql

    try:
        import adbc_driver_postgresql

        adbc_pg = adbc_driver_postgresql.__version__
    except ImportError:
        adbc_pg = None
    result = {
        "workload": "serve",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "csv_bytes": csv_bytes,
        "rounds": rounds,
        "median": median,
        "rows_per_s": {f"{side}_{m}": args.rows / median[f"{side}_{m}_s"] for side in sides for m in methods},
        "ratios_medlake_over_postgres": ratios,
        "checks": checks,
        "load_seconds": {"generate": generate_s, "medlake": medlake_load_s, "postgres": postgres_load_s},
        "medlake": {"version": version, "build": build_of(args.bin)},
        "postgres": {"server_version": pg_version},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "psycopg": psycopg.__version__,
            "libpq": psycopg.pq.version(),
            "adbc_driver_flightsql": adbc_driver_flightsql.__version__,
            "adbc_driver_postgresql": adbc_pg,
        },
    }
    pg_short = pg_version.split()[0]
    lines = [
        f"{args.rows:,} readings (6 columns, {csv_bytes / args.rows:.0f} bytes a row as CSV) fetched by one client; "
        f"median of {args.rounds} round{'s' if args.rounds > 1 else ''} after a check that both sides return the same rows:",
        "",
        f"| method | medlake rows/s | PostgreSQL {pg_short} rows/s | medlake / PostgreSQL |",
        "|---|---:|---:|---:|",
    ]
    for m in methods:
        lines.append(
            f"| {SERVE_METHODS[m]} | {args.rows / median[f'medlake_{m}_s']:,.0f} | "
            f"{args.rows / median[f'postgres_{m}_s']:,.0f} | {ratios[m]:.2f} |"
        )
    lines += ["", f"Machine load average (1/5/15 min) before: {load_before}, after: {result['machine']['load_average_after']}."]
    write_result(args, "serve", result, "\n".join(lines), f"`{result['command']}` on {os.cpu_count()} cores.")


# ---------------------------------------------------------------------------------------------
# dashboard (P5): concurrent dashboard queries over the Postgres wire vs PostgreSQL 15

DASHBOARD_DAYS = 100
DASHBOARD_START = "2026-08-01"


def dashboard_queries():
    """(name, weight, template) of every benches/dashboard/*.sql query (`-- weight: N`)."""
    queries = []
    for path in sorted((HERE / "dashboard").glob("*.sql")):
        text = path.read_text()
        m = re.search(r"^-- weight: (\d+)", text, re.M)
        if m:
            queries.append((path.stem, int(m.group(1)), query_text(path.name, "dashboard")))
    return queries


def dashboard_params(rng, patients):
    import datetime

    start = datetime.date.fromisoformat(DASHBOARD_START)
    day = start + datetime.timedelta(days=rng.randrange(13, DASHBOARD_DAYS))
    return {
        "patient": rng.randrange(patients),
        "ward": f"ward-{rng.randrange(20):02d}",
        "day": day,
        "week_start": day - datetime.timedelta(days=6),
        "fortnight_start": day - datetime.timedelta(days=13),
    }


def sql_literal(value):
    """`value` as a SQL literal: dates as DATE '...', text quoted, numbers as they are."""
    import datetime

    if isinstance(value, datetime.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def fill(template, params):
    """The query with its parameters written in as literals (what a BI tool sends)."""
    for key, value in params.items():
        template = template.replace("{" + key + "}", sql_literal(value))
    return template


def placeholders(template):
    """The query with psycopg's named placeholders, for a prepared statement (`$1`, ... on
    the wire; psycopg prepares it on the server from its fifth execution on a connection)."""
    return re.sub(r"\{(\w+)\}", r"%(\1)s", template)


def dashboard_execute(cur, template, params, prepared):
    if prepared:
        cur.execute(placeholders(template), params)
    else:
        cur.execute(fill(template, params))


def normalized(rows):
    """Rows comparable across servers: PostgreSQL's numeric sums as int, doubles to 9 significant
    digits (averages of doubles may differ in their last bits)."""
    import decimal

    def value(v):
        if isinstance(v, decimal.Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        if isinstance(v, float):
            return float(f"{v:.9g}")
        return v

    return [tuple(value(v) for v in row) for row in rows]


def dashboard_run(connect, clients, seconds, warmup, queries, patients, seed, prepared=False):
    """`clients` threads, each on its own connection, run weighted random queries back to back
    for `warmup` + `seconds`; returns {query: [latency ms]} of the queries started in the
    measured window, and the window's length."""
    import random

    names = [q[0] for q in queries]
    weights = [q[1] for q in queries]
    templates = {q[0]: q[2] for q in queries}
    ready = threading.Barrier(clients + 1)
    lock = threading.Lock()
    latencies = {name: [] for name in names}
    errors = []
    window = {}

    def client(i):
        rng = random.Random(seed * 1000 + i)
        try:
            conn = connect()
        except Exception as e:
            errors.append(f"connect: {e}")
            ready.abort()
            return
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            conn.close()
            return
        mine = []
        try:
            with conn.cursor() as cur:
                while not errors:
                    t = time.perf_counter()
                    if t >= window["end"]:
                        break
                    name = rng.choices(names, weights)[0]
                    dashboard_execute(cur, templates[name], dashboard_params(rng, patients), prepared)
                    cur.fetchall()
                    if t >= window["start"]:
                        mine.append((name, (time.perf_counter() - t) * 1000))
        except Exception as e:
            errors.append(str(e))
        finally:
            conn.close()
        with lock:
            for name, ms in mine:
                latencies[name].append(ms)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window["start"] = now + warmup
    window["end"] = now + warmup + seconds
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"dashboard load failed: {errors[0]}")
    return latencies


def dashboard_measure(name, latencies, seconds):
    every = [ms for values in latencies.values() for ms in values]
    measured = {
        "queries": len(every),
        "queries_per_s": len(every) / seconds,
        "p50_ms": percentile(every, 0.5),
        "p99_ms": percentile(every, 0.99),
        "by_query": {
            q: {"queries": len(v), "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99)}
            for q, v in latencies.items()
        },
    }
    print(f"{name}: {len(every)} queries, {measured['queries_per_s']:.1f}/s, "
          f"p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} ms", file=sys.stderr)
    return measured


def dashboard(args):
    import random

    import psycopg

    pg_bin = find_pg_bin(args.pg_bin)
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-dashboard-"))
    pg_root = Path(tempfile.mkdtemp(prefix="medlake-bench-pg-"))
    load_before = load_average()
    patients = max(20, args.rows // (DASHBOARD_DAYS * 5))
    rows = patients * DASHBOARD_DAYS * 5
    queries = dashboard_queries()
    server = pg = None
    try:
        landing = work / "landing"
        landing.mkdir()
        duckdb_generate(sql_file("generate.sql", "dashboard", patients=patients, days=DASHBOARD_DAYS),
                        landing / "patient_daily_vitals.parquet", work / "gold.csv")
        warehouse = work / "warehouse"
        medlake = Medlake(args.bin, warehouse)
        medlake.run(sql_file("medlake.sql", "dashboard", landing=f"{landing}/"))
        count = medlake.rows("SELECT count(*) FROM gold.patient_daily_vitals")
        if count != [[str(rows)]]:
            sys.exit(f"medlake's gold.patient_daily_vitals holds {count} rows, not {rows}")
        pg = Postgres(pg_bin, pg_root)
        n, pg_version = postgres_load(pg, sql_file("postgres.sql", "dashboard"), "gold.patient_daily_vitals",
                                      work / "gold.csv", sql_file("postgres_after.sql", "dashboard"))
        if n != rows:
            sys.exit(f"PostgreSQL's gold.patient_daily_vitals holds {n} rows, not {rows}")
        server = MedlakeDoors(args.bin, warehouse, work / "serve.log")
        sides = {"medlake": server.pg_connect, "postgres": pg.connect}

        # The check, untimed: every query with the same parameters on both sides, same rows.
        rng = random.Random(args.seed)
        checked = 0
        with sides["medlake"]() as ours, sides["postgres"]() as theirs:
            for name, _, template in queries:
                for _ in range(args.check_params):
                    params = dashboard_params(rng, patients)
                    sql = fill(template, params)
                    a = normalized(ours.execute(sql).fetchall())
                    b = normalized(theirs.execute(sql).fetchall())
                    if args.prepared:
                        # The prepared form gives the same rows on both sides too.
                        pa = normalized(ours.execute(placeholders(template), params).fetchall())
                        pb = normalized(theirs.execute(placeholders(template), params).fetchall())
                        if pa != a or pb != b:
                            sys.exit(f"check {name}: the prepared form of\n{sql}\ndiffers from the literal one")
                    if a != b:
                        sys.exit(f"check {name}: medlake and PostgreSQL differ on\n{sql}\nmedlake: {a[:5]}\nPostgreSQL: {b[:5]}")
                    if not a:
                        sys.exit(f"check {name}: no rows for\n{sql}")
                    checked += 1
        print(f"check: {checked} queries returned the same rows on both sides", file=sys.stderr)

        measured = {}
        for name, connect in sides.items():
            if name == "postgres":
                # medlake again without its result cache (every query planned and run).
                server.stop()
                server = MedlakeDoors(args.bin, warehouse, work / "serve-cache-off.log",
                                      env={"MEDLAKE_RESULT_CACHE": "0"})
                latencies = dashboard_run(server.pg_connect, args.clients, args.seconds, args.warmup, queries,
                                          patients, args.seed, args.prepared)
                measured["medlake_cache_off"] = dashboard_measure("medlake_cache_off", latencies, args.seconds)
                # medlake again, recording nothing in system.audit: what the audit costs.
                server.stop()
                server = MedlakeDoors(args.bin, warehouse, work / "serve-audit-off.log", audit=False)
                latencies = dashboard_run(server.pg_connect, args.clients, args.seconds, args.warmup, queries,
                                          patients, args.seed, args.prepared)
                measured["medlake_audit_off"] = dashboard_measure("medlake_audit_off", latencies, args.seconds)
                server.stop()
                server = None
            latencies = dashboard_run(connect, args.clients, args.seconds, args.warmup, queries, patients, args.seed,
                                      args.prepared)
            measured[name] = dashboard_measure(name, latencies, args.seconds)
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    finally:
        if server:
            server.stop()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pg_root, ignore_errors=True)

    ours, theirs, off = measured["medlake"], measured["postgres"], measured["medlake_audit_off"]
    uncached = measured["medlake_cache_off"]
    result = {
        "workload": "dashboard",
        "command": " ".join(sys.argv),
        "rows": rows,
        "patients": patients,
        "days": DASHBOARD_DAYS,
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "queries": {name: weight for name, weight, _ in queries},
        "prepared": args.prepared,
        "checked_queries": checked,
        "measured": measured,
        "ratios": {
            "medlake_over_postgres_queries_per_s": ours["queries_per_s"] / theirs["queries_per_s"],
            "medlake_over_postgres_p50": ours["p50_ms"] / theirs["p50_ms"],
            "medlake_over_postgres_p99": ours["p99_ms"] / theirs["p99_ms"],
            "cache_off_over_postgres_queries_per_s": uncached["queries_per_s"] / theirs["queries_per_s"],
            "cache_off_over_postgres_p99": uncached["p99_ms"] / theirs["p99_ms"],
            "audit_on_over_off_queries_per_s": ours["queries_per_s"] / off["queries_per_s"],
            "audit_on_over_off_p50": ours["p50_ms"] / off["p50_ms"],
            "audit_on_over_off_p99": ours["p99_ms"] / off["p99_ms"],
        },
        "medlake": {"version": version, "build": build_of(args.bin)},
        "postgres": {"server_version": pg_version, "indexes": "primary key (patient_id, day, metric), (ward, day), (day)"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "psycopg": psycopg.__version__,
        },
    }
    pg_short = pg_version.split()[0]
    lines = [
        f"{rows:,} gold rows ({patients:,} patients, {DASHBOARD_DAYS} days, 5 metrics); {args.clients} psycopg clients "
        f"(threads of one process, on the same 2 cores) run a weighted mix of `benches/dashboard/*.sql` back to back "
        f"for {args.seconds} s after {args.warmup} s of warm-up, each side alone; the answers were checked equal first; "
        + ("each query is a prepared statement with parameters (psycopg prepares it on the server from its fifth "
           "execution on a connection):" if args.prepared else "parameters are written into each query as literals:"),
        "",
        f"| query (weight) | medlake p50 / p99 ms | medlake, result cache off | PostgreSQL {pg_short} p50 / p99 ms |",
        "|---|---:|---:|---:|",
    ]

    def ms(x):
        return "–" if x["p50_ms"] is None else f"{x['p50_ms']:.1f} / {x['p99_ms']:.1f}"

    for name, weight, _ in queries:
        a, c, b = ours["by_query"][name], uncached["by_query"][name], theirs["by_query"][name]
        lines.append(f"| `{name}` ({weight}) | {ms(a)} | {ms(c)} | {ms(b)} |")
    lines += [
        f"| **all** | {ms(ours)} | {ms(uncached)} | {ms(theirs)} |",
        f"| **queries/s** | {ours['queries_per_s']:,.1f} | {uncached['queries_per_s']:,.1f} | {theirs['queries_per_s']:,.1f} |",
        "",
        f"Parameters are random per query (seeded; the same sequence for every side). Result cache off "
        f"(`MEDLAKE_RESULT_CACHE=0`) / PostgreSQL: queries/s {result['ratios']['cache_off_over_postgres_queries_per_s']:.3f}, "
        f"p99 {result['ratios']['cache_off_over_postgres_p99']:.2f}×.",
        "",
        f"medlake / PostgreSQL: queries/s {result['ratios']['medlake_over_postgres_queries_per_s']:.3f}, "
        f"p50 latency {result['ratios']['medlake_over_postgres_p50']:.2f}×, p99 latency {result['ratios']['medlake_over_postgres_p99']:.2f}×. "
        "PostgreSQL has the indexes these queries want (primary key (patient_id, day, metric), (ward, day), (day)); "
        "medlake reads the Delta table's Parquet files.",
        "",
        f"The audit's cost (every query recorded in `system.audit`, medlake's default): the same medlake with "
        f"`[audit] enabled = false` ran {off['queries_per_s']:,.1f} queries/s (p50 {off['p50_ms']:.1f} ms, "
        f"p99 {off['p99_ms']:.1f} ms); audit on / off: queries/s {result['ratios']['audit_on_over_off_queries_per_s']:.3f}, "
        f"p50 {result['ratios']['audit_on_over_off_p50']:.2f}×, p99 {result['ratios']['audit_on_over_off_p99']:.2f}×.",
        "",
        f"Machine load average (1/5/15 min) before: {load_before}, after: {result['machine']['load_average_after']}.",
    ]
    write_result(args, "dashboard", result, "\n".join(lines), f"`{result['command']}` on {os.cpu_count()} cores.")


# ---------------------------------------------------------------------------------------------
# spill (P6): a refresh whose aggregation is far larger than the memory limit

def run_measured(command, env_extra=None, watch=None):
    """Runs `command` to its end; returns (exit code, wall seconds, peak RSS bytes, stdout,
    stderr, peak bytes under `watch`), both peaks sampled every 100 ms. The RSS is the child's
    own high-water mark (VmHWM, reset by exec): rusage's ru_maxrss would count this Python
    process's memory at fork time."""
    env = dict(os.environ)
    env.pop("MEDLAKE_MEMORY_LIMIT", None)
    env.pop("MEDLAKE_SPILL_DIR", None)
    env.update(env_extra or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        peak = {"rss": 0, "spill": 0}
        done = threading.Event()

        def poll():
            while not done.is_set():
                try:
                    with open(f"/proc/{proc.pid}/status") as status:
                        for line in status:
                            if line.startswith("VmHWM:"):
                                peak["rss"] = max(peak["rss"], int(line.split()[1]) * 1024)
                except (OSError, ValueError):
                    pass
                if watch:
                    total = 0
                    for root, _, files in os.walk(watch):
                        for f in files:
                            try:
                                total += os.stat(os.path.join(root, f)).st_size
                            except OSError:
                                pass
                    peak["spill"] = max(peak["spill"], total)
                done.wait(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        proc.wait()
        seconds = time.perf_counter() - t
        done.set()
        poller.join()
        out.seek(0)
        err.seek(0)
        return proc.returncode, seconds, peak["rss"], out.read().decode(), err.read().decode(), peak["spill"]


SIZE_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1024, "M": 1e6, "MB": 1024**2, "G": 1e9, "GB": 1024**3, "TB": 1024**4}


def plan_metric(plan, name):
    """The sum of an EXPLAIN ANALYZE metric over every operator (`spill_count=3`,
    `spilled_bytes=1.5 MB`, `spilled_rows=2.10 M`)."""
    total = 0.0
    for number, unit in re.findall(rf"\b{name}=([0-9.]+)\s?([KMGT]?B?)\b", plan):
        total += float(number) * SIZE_UNITS.get(unit, 1)
    return total


def spill(args):
    import duckdb
    from deltalake import DeltaTable

    work = Path(tempfile.mkdtemp(prefix="medlake-bench-spill-"))
    load_before = load_average()
    patients = max(4, args.rows // 1000 // 4 * 4)
    limit = args.memory_limit
    try:
        warehouse = work / "warehouse"
        spill_dir = work / "spill"
        spill_dir.mkdir()
        medlake = Medlake(args.bin, warehouse)
        view_query = query_text("query.sql", "spill", source="bronze.vitals")
        medlake.run(sql_file("setup.sql", "spill", query=view_query))
        refresh_sql = "REFRESH MATERIALIZED VIEW gold.patient_hourly FULL"
        columns = "patient_id, metric, hour, readings, round(average, 6), minimum, maximum"
        steps = []
        loaded = 0
        for factor in range(1, args.factors + 1):
            target = args.rows * factor
            t = time.perf_counter()
            medlake.run(sql_file("append.sql", "spill", first=loaded + 1, last=target, patients=patients,
                                 patient_offset=patients * (factor - 1)))
            load_s = time.perf_counter() - t
            loaded = target
            bronze_files = DeltaTable(str(warehouse / "bronze" / "vitals")).file_uris()
            bronze_bytes = sum(os.stat(f.removeprefix("file://")).st_size for f in bronze_files)
            step = {"factor": factor, "rows": target, "bronze_parquet_bytes": bronze_bytes, "load_s": load_s}
            command = [args.bin, "sql", "--warehouse", str(warehouse), "--timing", f"--command={refresh_sql}"]

            def refresh(env, label):
                code, wall, rss, out, err, spilled = run_measured(command, env, watch=spill_dir if env else None)
                if code != 0:
                    sys.exit(f"{label} refresh failed (exit {code}): {err.strip()[-2000:]}")
                times = re.findall(r"^Time: ([0-9.]+) ms", out, re.M)
                return {"statement_ms": float(times[-1]) if times else None, "wall_s": wall, "peak_rss_bytes": rss,
                        "peak_spill_dir_bytes": spilled}

            if args.baseline:
                step["medlake_unbounded"] = refresh({}, "unbounded")
                print(f"{factor}x: medlake without a limit {step['medlake_unbounded']}", file=sys.stderr)
            bounded_env = {"MEDLAKE_MEMORY_LIMIT": limit, "MEDLAKE_SPILL_DIR": str(spill_dir)}
            step["medlake_bounded"] = refresh(bounded_env, "bounded")
            print(f"{factor}x: medlake with MEDLAKE_MEMORY_LIMIT={limit} {step['medlake_bounded']}", file=sys.stderr)
            if args.explain:
                code, wall, rss, out, err, _ = run_measured(
                    [args.bin, "sql", "--warehouse", str(warehouse), "--format", "csv", f"--command=EXPLAIN ANALYZE {view_query}"],
                    bounded_env,
                )
                if code != 0:
                    sys.exit(f"EXPLAIN ANALYZE under the limit failed: {err.strip()[-2000:]}")
                step["explain_analyze"] = {
                    "wall_s": wall,
                    "peak_rss_bytes": rss,
                    "spill_count": plan_metric(out, "spill_count"),
                    "spilled_bytes": plan_metric(out, "spilled_bytes"),
                    "spilled_rows": plan_metric(out, "spilled_rows"),
                }
                print(f"{factor}x: EXPLAIN ANALYZE {step['explain_analyze']}", file=sys.stderr)
                if not step["explain_analyze"]["spill_count"]:
                    sys.exit(f"{factor}x: nothing spilled under MEDLAKE_MEMORY_LIMIT={limit}: raise --rows or lower --memory-limit")

            # The peer: DuckDB with the same memory limit and threads as cores, the same query
            # over bronze's Parquet files, its result written as Parquet.
            duck_out = work / f"duckdb_{factor}x.parquet"
            duck_tmp = work / "duckdb_tmp"
            files = ", ".join(f"'{f.removeprefix('file://')}'" for f in bronze_files)
            duck_query = query_text("query.sql", "spill", source=f"read_parquet([{files}])")

            def duck_run(memory_limit):
                duck = duckdb.connect()
                if memory_limit:
                    duck.execute(f"SET memory_limit = '{memory_limit}'")
                duck.execute(f"SET temp_directory = '{duck_tmp}'")
                duck.execute(f"SET threads = {args.threads}")
                duck.execute("SET preserve_insertion_order = false")
                t = time.perf_counter()
                try:
                    duck.execute(f"COPY ({duck_query}) TO '{duck_out}' (FORMAT parquet)")
                except duckdb.OutOfMemoryException as e:
                    return f"out of memory: {str(e).splitlines()[0]}"
                finally:
                    duck.close()
                return time.perf_counter() - t

            step["duckdb_bounded_s"] = duck_run(limit)
            print(f"{factor}x: DuckDB with memory_limit {limit}: {step['duckdb_bounded_s']}", file=sys.stderr)
            if isinstance(step["duckdb_bounded_s"], str):
                # DuckDB could not do it in the limit: its result for the check comes unbounded.
                step["duckdb_unbounded_s"] = duck_run(None)
                if isinstance(step["duckdb_unbounded_s"], str):
                    sys.exit(f"{factor}x: DuckDB failed without a limit too: {step['duckdb_unbounded_s']}")

            # The check: medlake's view (as the bounded refresh wrote it) and DuckDB's result hold
            # the same rows (averages to 6 decimals).
            gold = ", ".join(f"'{f.removeprefix('file://')}'" for f in DeltaTable(str(warehouse / "gold" / "patient_hourly")).file_uris())
            check = duckdb.connect()
            ours = check.execute(f"SELECT count(*) FROM read_parquet([{gold}])").fetchone()[0]
            theirs = check.execute(f"SELECT count(*) FROM read_parquet('{duck_out}')").fetchone()[0]
            differ = check.execute(
                f"SELECT count(*) FROM (SELECT {columns} FROM read_parquet([{gold}]) "
                f"EXCEPT ALL SELECT {columns} FROM read_parquet('{duck_out}'))"
            ).fetchone()[0]
            check.close()
            if ours != theirs or differ:
                sys.exit(f"{factor}x: medlake's view ({ours} rows) and DuckDB's result ({theirs} rows) differ in {differ} rows")
            step["groups"] = ours
            duck_out.unlink()
            steps.append(step)
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "workload": "spill",
        "command": " ".join(sys.argv),
        "memory_limit": limit,
        "steps": steps,
        "ratios": {
            f"{s['factor']}x": {
                "medlake_bounded_over_duckdb_bounded": (
                    s["medlake_bounded"]["statement_ms"] / 1000 / s["duckdb_bounded_s"]
                    if not isinstance(s["duckdb_bounded_s"], str) else None
                ),
                **({"medlake_bounded_over_unbounded": s["medlake_bounded"]["statement_ms"] / s["medlake_unbounded"]["statement_ms"]}
                   if "medlake_unbounded" in s else {}),
            }
            for s in steps
        },
        "medlake": {"version": version, "build": build_of(args.bin)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "duckdb": duckdb.__version__,
        },
    }
    if len(steps) > 1:
        result["ratios"]["medlake_bounded_2x_over_1x"] = steps[1]["medlake_bounded"]["statement_ms"] / steps[0]["medlake_bounded"]["statement_ms"]

    def mb(n):
        return f"{n / 2**20:,.0f}"

    lines = [
        f"`REFRESH MATERIALIZED VIEW gold.patient_hourly FULL` (`benches/spill/query.sql`: group by patient, metric "
        f"and hour) with `MEDLAKE_MEMORY_LIMIT={limit}`, against DuckDB "
        f"{duckdb.__version__} with `memory_limit='{limit}'` and {args.threads} threads writing the same query's "
        "result to Parquet; both results checked equal:",
        "",
        "| data | bronze rows | groups | bronze Parquet MB | medlake bounded s | peak RSS MB | spill files / spilled MB (EXPLAIN ANALYZE) | peak spill folder MB | medlake unbounded s | unbounded peak RSS MB | DuckDB bounded s | medlake / DuckDB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        b = s["medlake_bounded"]
        u = s.get("medlake_unbounded")
        e = s.get("explain_analyze")
        spilled = f"{e['spill_count']:.0f} / {mb(e['spilled_bytes'])}" if e else "–"
        unbounded = f"{u['statement_ms'] / 1000:.1f} | {mb(u['peak_rss_bytes'])}" if u else "– | –"
        ratio = result["ratios"][f"{s['factor']}x"]["medlake_bounded_over_duckdb_bounded"]
        duck = (
            f"{s['duckdb_bounded_s']:.1f} | {ratio:.2f}" if ratio is not None
            else f"out of memory (unbounded: {s['duckdb_unbounded_s']:.1f}) | –"
        )
        lines.append(
            f"| {s['factor']}x | {s['rows']:,} | {s['groups']:,} | {mb(s['bronze_parquet_bytes'])} | "
            f"{b['statement_ms'] / 1000:.1f} | {mb(b['peak_rss_bytes'])} | {spilled} | {mb(b['peak_spill_dir_bytes'])} | "
            f"{unbounded} | {duck} |"
        )
    lines.append("")
    if "medlake_bounded_2x_over_1x" in result["ratios"]:
        lines.append(f"medlake bounded, 2x / 1x = {result['ratios']['medlake_bounded_2x_over_1x']:.2f}. ")
    lines.append(
        "Times are medlake's own for the statement (`--timing`: planning, execution, commit); peak RSS (VmHWM) and "
        "the spill folder's size are sampled every 100 ms; the memory limit bounds what DataFusion's operators account for, not the Delta writer's buffers "
        "or the allocator's slack."
    )
    lines += ["", f"Machine load average (1/5/15 min) before: {load_before}, after: {result['machine']['load_average_after']}."]
    write_result(args, "spill", result, "\n".join(lines), f"`{result['command']}` on {os.cpu_count()} cores.")


def add_serve_dashboard_spill_parsers(sub):
    s = workload_parser(sub, "serve", "a large result through the Postgres and Flight SQL doors vs PostgreSQL 15")
    s.add_argument("--rows", type=int, default=10_000_000, help="rows in the table and the result")
    s.add_argument("--rounds", type=int, default=3, help="timed rounds (after one untimed check)")
    s.add_argument("--methods", default="copy,select,arrow", help="of copy, select, arrow")
    s.add_argument("--fetch-size", type=int, default=10_000, help="rows per fetch of psycopg's stream()")
    s.add_argument("--pg-bin", help="PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)")
    d = workload_parser(sub, "dashboard", "concurrent dashboard queries over the Postgres wire vs PostgreSQL 15")
    d.add_argument("--rows", type=int, default=1_000_000, help="gold rows (patients x 100 days x 5 metrics)")
    d.add_argument("--clients", type=int, default=32, help="concurrent connections on each side")
    d.add_argument("--seconds", type=float, default=30, help="measured seconds on each side")
    d.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before")
    d.add_argument("--check-params", type=int, default=5, help="parameter sets per query in the check")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--prepared", action="store_true",
                   help="send each query as a prepared statement with parameters (as JDBC and app code do) "
                        "instead of with literals written in (as BI tools do)")
    d.add_argument("--pg-bin", help="PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)")
    p = workload_parser(sub, "spill", "a refresh far larger than MEDLAKE_MEMORY_LIMIT, at 1x and 2x data, vs DuckDB")
    p.add_argument("--rows", type=int, default=50_000_000, help="bronze rows at 1x")
    p.add_argument("--factors", type=int, default=2, help="1x, 2x, ... data")
    p.add_argument("--memory-limit", default="256MB", help="MEDLAKE_MEMORY_LIMIT and DuckDB's memory_limit")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="DuckDB threads")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the refresh without a limit")
    p.add_argument("--no-explain", dest="explain", action="store_false", help="skip EXPLAIN ANALYZE (the spill counts)")


def main():
    import alerting
    import cluster
    import medallion  # its own module; both share harness.py
    import merge
    import mllp
    import threshold
    import warehouse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="workload", required=True)
    r = workload_parser(sub, "refresh", "incremental vs full refresh after a 1%% append")
    r.add_argument("--rows", type=int, default=10_000_000)
    r.add_argument("--append-fraction", type=float, default=0.01)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="DuckDB threads")
    i = workload_parser(sub, "ingest", "HTTP and Flight SQL push ingest vs PostgreSQL COPY of the same device readings")
    i.add_argument("--rows", type=int, default=200_000, help="readings loaded in each round")
    i.add_argument("--clients", type=int, default=4, help="concurrent clients on each side")
    i.add_argument("--batch", type=int, default=1000, help="rows per POST / ADBC ingest / COPY")
    i.add_argument("--rounds", type=int, default=3)
    i.add_argument("--pg-bin", help="PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)")
    add_serve_dashboard_spill_parsers(sub)
    medallion.add_parser(sub)
    warehouse.add_parser(sub)
    merge.add_parser(sub)
    alerting.add_parser(sub)
    mllp.add_parser(sub)
    cluster.add_parser(sub)
    threshold.add_parser(sub)
    args = parser.parse_args()
    ensure_python_peers()
    {"refresh": refresh, "ingest": ingest, "serve": serve, "dashboard": dashboard, "spill": spill,
     "medallion": medallion.medallion, "warehouse": warehouse.warehouse,
     "merge": merge.merge, "alerting": alerting.alerting, "mllp": mllp.mllp,
     "cluster": cluster.cluster, "threshold": threshold.threshold}[args.workload](args)


if __name__ == "__main__":
    main()
