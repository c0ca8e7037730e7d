#!/usr/bin/env python3
"""medlake benchmarks. Each workload is a subcommand; results go to results/<workload>.json and
a Markdown table to stdout (and RESULTS.md with --write-md). Peers run in the same process,
on the same data, in the same run.

    python benches/run.py refresh --bin target/release/medlake [--rows 10000000] [--rounds 3]
    python benches/run.py ingest --bin target/release/medlake [--rows 200000] [--clients 4] [--batch 1000]

refresh: incremental vs full REFRESH MATERIALIZED VIEW after appending 1% to a bronze table,
with DuckDB recomputing the same gold table from bronze's Parquet files as the peer.

ingest: device readings pushed over HTTP (POST /v1/ingest, NDJSON, each batch acknowledged once
committed) by concurrent clients, with PostgreSQL 15's COPY FROM (fsync on) of the same rows
into the same table as the peer.
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

HERE = Path(__file__).resolve().parent


def sql_file(name, workload="refresh", **values):
    text = (HERE / workload / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


class Medlake:
    def __init__(self, binary, warehouse):
        self.binary = binary
        self.warehouse = warehouse

    def run(self, *statements, timing=False, csv=False):
        args = [self.binary, "sql", "--warehouse", str(self.warehouse)]
        if timing:
            args.append("--timing")
        if csv:
            args += ["--format", "csv"]
        for statement in statements:
            args.append(f"--command={statement}")
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"medlake failed: {done.stderr.strip()}\nstatements: {statements}")
        return done.stdout

    def timed(self, *statements):
        """Runs the statements in one process; returns each one's time in ms (as medlake
        measured it: planning, execution and commit, not process start)."""
        out = self.run(*statements, timing=True)
        times = [float(t) for t in re.findall(r"^Time: ([0-9.]+) ms", out, re.M)]
        if len(times) != len(statements):
            sys.exit(f"expected {len(statements)} timings, got {out}")
        return times

    def rows(self, query):
        return [line.split(",") for line in self.run(query, csv=True).splitlines()[1:]]


def refresh(args):
    import duckdb

    work = Path(tempfile.mkdtemp(prefix="medlake-bench-"))
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


WORKLOADS = ["refresh", "ingest"]


def write_results_md(workload, section):
    """Replaces the workload's section of RESULTS.md, keeping the others."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    header, *rest = re.split(r"(?m)^## ", text)
    sections = {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in rest}
    sections[workload] = f"## {workload}\n\n{section.rstrip()}\n"
    order = [w for w in WORKLOADS if w in sections] + sorted(set(sections) - set(WORKLOADS))
    path.write_text(header.rstrip() + "\n\n" + "\n".join(sections[w] for w in order))


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

    def __init__(self, binary, warehouse, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [
                binary, "serve", "--warehouse", str(warehouse), "--insecure-no-auth",
                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
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
    if given:
        return Path(given)
    for candidate in [Path("/usr/lib/postgresql/15/bin")]:
        if (candidate / "postgres").exists():
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    sys.exit("PostgreSQL 15 server binaries not found: install postgresql-15 or give --pg-bin DIR")


def ingest(args):
    import psycopg

    pg_bin = find_pg_bin(args.pg_bin)
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-ingest-"))
    pg_root = Path(tempfile.mkdtemp(prefix="medlake-bench-pg-"))
    try:
        ndjson, csv_lines = generate_readings(args.bin, args.rows, work)
        ndjson_batches = batches_of(ndjson, args.batch)
        csv_batches = batches_of(csv_lines, args.batch)
        all_csv = b"\n".join(csv_lines) + b"\n"
        rounds = [{} for _ in range(args.rounds)]

        # medlake: POST /v1/ingest/bronze.readings, NDJSON, one Idempotency-Key per batch.
        warehouse = work / "warehouse"
        Medlake(args.bin, warehouse).run(sql_file("medlake.sql", "ingest"))
        server = MedlakeServer(args.bin, warehouse, work / "serve.log")
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
                jobs = [(f"bench-{os.getpid()}-{r}-{i}", body, body.count(b"\n")) for i, body in enumerate(ndjson_batches)]
                seconds, latencies = run_clients(args.clients, jobs, connect, post)
                commits = server.metric("medlake_ingest_commits_total")
                result["medlake_http"] = {
                    "seconds": seconds,
                    "readings_per_s": args.rows / seconds,
                    "p50_ms": percentile(latencies, 0.5),
                    "p99_ms": percentile(latencies, 0.99),
                    "requests": len(latencies),
                    "commits": None if commits is None else commits - commits_before,
                }
                commits_before = commits or 0
                print(f"round {r + 1}/{args.rounds}: medlake {result['medlake_http']}", file=sys.stderr)
            busy = server.metric("medlake_ingest_rejected_busy_total")
        finally:
            server.stop()
        if acknowledged[0] != args.rows * args.rounds:
            sys.exit(f"medlake acknowledged {acknowledged[0]} rows, not {args.rows * args.rounds}")
        count = Medlake(args.bin, warehouse).rows("SELECT count(*) FROM bronze.readings")
        if count != [[str(args.rows * args.rounds)]]:
            sys.exit(f"bronze.readings holds {count} rows, not {args.rows * args.rounds}")
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()

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
                seconds, latencies = run_clients(args.clients, csv_batches, pg.connect, copy)
                result["postgres_copy_batches"] = {
                    "seconds": seconds,
                    "readings_per_s": args.rows / seconds,
                    "p50_ms": percentile(latencies, 0.5),
                    "p99_ms": percentile(latencies, 0.99),
                    "requests": len(latencies),
                    "commits": len(csv_batches),
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

    sides = ["medlake_http", "postgres_copy_batches", "postgres_copy_single"]
    median = {side: {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side] if rounds[0][side][k] is not None} for side in sides}
    build = "release" if "/release/" in str(Path(args.bin).resolve()) else "debug" if "/debug/" in str(Path(args.bin).resolve()) else "unknown"
    result = {
        "workload": "ingest",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "clients": args.clients,
        "batch": args.batch,
        "batches": len(ndjson_batches),
        "ndjson_bytes": sum(len(b) for b in ndjson_batches),
        "csv_bytes": len(all_csv),
        "rounds": rounds,
        "median": median,
        "ratios": {
            "medlake_over_postgres_copy_batches": median["medlake_http"]["readings_per_s"] / median["postgres_copy_batches"]["readings_per_s"],
            "medlake_over_postgres_copy_single": median["medlake_http"]["readings_per_s"] / median["postgres_copy_single"]["readings_per_s"],
        },
        "medlake": {"version": version, "build": build, "busy_answers": busy, "retries": retries[0]},
        "postgres": settings,
        "durability": "medlake answers 200 once the Delta commit holding the batch exists (files "
        "written and the commit file created through object_store's local file system, which "
        "does not fsync); PostgreSQL answers once the transaction's WAL is fsynced (fsync=on, "
        "synchronous_commit=on).",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "psycopg": psycopg.__version__},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(result, indent=2))

    def ms(side):
        m = median[side]
        return f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f}"

    pg_version = settings["server_version"].split()[0]
    table = "\n".join(
        [
            f"{args.rows:,} device readings ({len(all_csv) / args.rows:.0f} bytes a row as CSV) loaded by "
            f"{args.clients} concurrent clients in batches of {args.batch:,} rows, each batch "
            f"acknowledged once committed; median of {args.rounds} round{'s' if args.rounds > 1 else ''}:",
            "",
            "| system | load | readings/s | ms per batch, p50 / p99 | commits |",
            "|---|---|---:|---:|---:|",
            f"| medlake ({build} build) | HTTP `POST /v1/ingest/bronze.readings`, NDJSON | "
            f"{median['medlake_http']['readings_per_s']:,.0f} | {ms('medlake_http')} | "
            f"{median['medlake_http'].get('commits', float('nan')):.0f} |",
            f"| PostgreSQL {pg_version}, fsync on | `COPY readings FROM STDIN (FORMAT csv)`, a transaction per batch | "
            f"{median['postgres_copy_batches']['readings_per_s']:,.0f} | {ms('postgres_copy_batches')} | "
            f"{len(csv_batches)} |",
            f"| PostgreSQL {pg_version}, fsync on | one `COPY` of every row, one transaction | "
            f"{median['postgres_copy_single']['readings_per_s']:,.0f} | | 1 |",
            "",
            f"medlake / PostgreSQL batches = {result['ratios']['medlake_over_postgres_copy_batches']:.3f}; "
            f"medlake / PostgreSQL one COPY = {result['ratios']['medlake_over_postgres_copy_single']:.3f}. "
            "medlake groups the batches that arrive together into one Delta commit.",
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="workload", required=True)
    r = sub.add_parser("refresh", help="incremental vs full refresh after a 1%% append")
    r.add_argument("--bin", default="target/release/medlake", help="the medlake binary")
    r.add_argument("--rows", type=int, default=10_000_000)
    r.add_argument("--append-fraction", type=float, default=0.01)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="DuckDB threads")
    r.add_argument("--write-md", action="store_true", help="also write benches/RESULTS.md")
    r.add_argument("--out", default=str(HERE / "results"), help="where the JSON results go")
    i = sub.add_parser("ingest", help="HTTP push ingest vs PostgreSQL COPY of the same device readings")
    i.add_argument("--bin", default="target/release/medlake", help="the medlake binary")
    i.add_argument("--rows", type=int, default=200_000, help="readings loaded in each round")
    i.add_argument("--clients", type=int, default=4, help="concurrent clients on each side")
    i.add_argument("--batch", type=int, default=1000, help="rows per POST / per COPY")
    i.add_argument("--rounds", type=int, default=3)
    i.add_argument("--pg-bin", help="PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)")
    i.add_argument("--write-md", action="store_true", help="also write benches/RESULTS.md")
    i.add_argument("--out", default=str(HERE / "results"), help="where the JSON results go")
    args = parser.parse_args()
    {"refresh": refresh, "ingest": ingest}[args.workload](args)


if __name__ == "__main__":
    main()
