#!/usr/bin/env python3
"""Soak: the quickstart's live load plus dashboards, Flight SQL and refreshes for N minutes
(issue 29, item 3).

Starts `medlake quickstart` (live mode: its simulator keeps pushing 1 Hz readings through the
HTTP door, a quarter of the gateways as HL7 v2 over MLLP, and its scheduler refreshes the views
of sql/ on their REFRESH EVERY / ON CHANGE schedules) on loopback ports picked by the kernel,
and once its doors are open runs, for --minutes:

- 32 dashboard clients over the Postgres wire (psycopg), each on its own connection, running a
  weighted mix of dashboard queries on gold and silver views (a patient, a ward, a day, an hour
  picked at random from what the warehouse holds), pausing 0-10 s (--think 5) between two, as
  a dashboard refreshing its panels; half send literals, half bind parameters (psycopg
  prepares those on the server);
- Flight SQL readers (ADBC) running patient and export queries;
- Flight SQL writers (ADBC `adbc_ingest` appends of 1-50 rows into bronze.soak_flight);
- a Postgres-wire client running manual REFRESH MATERIALIZED VIEW (gold views the scheduler
  also refreshes, and silver.soak_flight_per_device over the Flight writers' table);
- a sampler that every --sample-seconds reads the server process's RSS (VmRSS), threads, open
  file descriptors (/proc/PID/fd), the size and entry count of every _delta_log under the
  warehouse, and the HTTP door's /metrics; one CSV row per sample (samples.csv).

Then stops the clients, checks, sends SIGTERM to the quickstart (its process only) and waits
for it to exit by itself. Checks (exit status 1 and the failed ones named when any fails):

- rss: after warm-up (the first 20% of the run or 120 s, whichever is longer, and at least
  until DataFusion's Parquet footer cache reaches 95% of its limit, at most half the run) the
  rest of the run is cut in three equal thirds by time; the highest RSS of the last third must be at most
  1.10 x the highest RSS of the first third;
- fds: the same thirds; the fewest open file descriptors of the last third (the floor the
  server holds between queries: listening sockets, client connections, its files) must be at
  most the fewest of the first third + 16 (a leak raises the floor; the peaks are the Parquet
  and log files that queries, refreshes and commits open for a moment, and are reported);
- errors: every error a client met is counted, grouped by client and message, and the total
  must be 0: Postgres and Flight queries, Flight ingest, manual refreshes (except 55006 and
  40001, the documented answers to a refresh that meets another one: counted apart), the
  quickstart simulator's batches it gave up on, HTTP ingest answers other than 200/429/503
  (from /metrics), failed refreshes in system.refreshes, ERROR lines and panics in the
  server's log, and a request still unanswered 120 s after the end of the run;
- load: every kind of client did work, the live load landed rows, the scheduler refreshed;
- flight ingest: every acknowledged Flight batch is in bronze.soak_flight exactly once;
- the server was alive throughout and exits 0 within 60 s of SIGTERM, without a panic.

Guards (the machine is shared): the run stops early, and fails, when the server's RSS passes
--max-rss-mib, the warehouse passes --max-disk-mib or the disk has less than
--min-free-disk-mib free.

    MEDLAKE_BIN=~/.cache/medlake-target/debug/medlake \\
        ~/.cache/medlake-venv/bin/python tests/soak/soak.py --minutes 5

Writes samples.csv, requests.csv (when each request finished, and how long it took),
delta_logs.csv (per table at the first and last sample) and summary.json into --out, and
prints the summary.
"""

import argparse
import collections
import csv
import datetime
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

RSS_FACTOR = 1.10
FD_SLACK = 16
STOP_SECONDS = 60

# Dashboard queries: (name, weight, SQL). {patient} {ward} {day} {week_start} {since} are
# filled in as literals or bound as parameters.
DASHBOARD = [
    ("patient_week", 30,
     "SELECT day, metric, unit, readings, minimum, average, maximum FROM gold.patient_daily_vitals "
     "WHERE patient_id = {patient} AND day BETWEEN {week_start} AND {day} ORDER BY day, metric"),
    ("ward_news2", 20,
     "SELECT patient_id, bed, hour, news2, risk, missing FROM gold.news2_hourly "
     "WHERE ward = {ward} AND hour >= {since} ORDER BY hour DESC, patient_id LIMIT 100"),
    ("deteriorating", 5,
     "SELECT patient_id, ward, bed, hour, news2, risk FROM gold.news2_hourly "
     "JOIN (SELECT max(hour) AS latest FROM gold.news2_hourly) AS l ON hour = l.latest "
     "WHERE complete AND risk IN ('medium', 'high') ORDER BY news2 DESC, patient_id"),
    ("ward_alerts", 10,
     "SELECT severity, sum(alerts) AS alerts, sum(open) AS still_open, "
     "max(p90_seconds_to_acknowledge) AS p90_s FROM gold.alert_response "
     "WHERE ward = {ward} AND day BETWEEN {week_start} AND {day} GROUP BY severity ORDER BY severity"),
    ("ward_completeness", 10,
     "SELECT device_id, kind, expected, accepted, rejected, completeness_pct FROM gold.data_completeness "
     "WHERE ward = {ward} AND day = {day} ORDER BY completeness_pct, device_id LIMIT 20"),
    ("device_day", 10,
     "SELECT device_id, kind, readings, rejected, gaps, uptime_pct, min_battery_pct "
     "FROM gold.device_performance WHERE day = {day} ORDER BY uptime_pct, device_id LIMIT 20"),
    ("patient_live", 15,
     "SELECT metric, count(*) AS n, round(avg(value), 1) AS mean, max(taken_at) AS latest "
     "FROM silver.readings WHERE patient_id = {patient} AND taken_at >= {since} GROUP BY metric ORDER BY metric"),
]

# Flight SQL readers: (name, SQL), literals only.
FLIGHT_READS = [
    ("patient_news2", "SELECT hour, news2, risk, pulse, spo2, temperature FROM gold.news2_hourly "
                      "WHERE patient_id = {patient} ORDER BY hour DESC LIMIT 24"),
    ("patient_export", "SELECT device_id, metric, value, unit, taken_at FROM silver.readings "
                       "WHERE patient_id = {patient} AND taken_at >= {since}"),
    ("soak_tail", "SELECT device_id, count(*) AS n, max(seq) AS top FROM bronze.soak_flight GROUP BY device_id"),
]

SETUP = [
    "CREATE TABLE bronze.soak_flight (batch VARCHAR, seq INT, device_id VARCHAR, value DOUBLE)",
    "CREATE MATERIALIZED VIEW silver.soak_flight_per_device AS "
    "SELECT device_id, count(*) AS n, avg(value) AS mean FROM bronze.soak_flight GROUP BY device_id",
]

MANUAL_REFRESHES = ["silver.soak_flight_per_device", "gold.patient_daily_vitals", "gold.alert_response",
                    "gold.news2_hourly"]

# The documented answers to a refresh that meets another: counted apart, not as errors.
REFRESH_CONFLICTS = ("55006", "40001")


class Failed(Exception):
    """The soak could not go on (the server died or never started)."""


class Reconnect(Exception):
    """The connection broke (the error was counted): open another."""


class Quickstart:
    """`medlake quickstart` in live mode on port-0 loopback doors; output in quickstart.log."""

    DOOR = re.compile(r"medlake quickstart: (postgres|flight sql|http|hl7 mllp) on (\S+):(\d+)")
    PANIC = re.compile(r"thread '.*' (?:\(\d+\) )?panicked at (\S+?):\d+:\d+:")

    def __init__(self, args, root, env):
        self.log_path = os.path.join(root, "quickstart.log")
        self.log = open(self.log_path, "w")
        self.lines = collections.Counter()  # grouped ERROR/WARN/simulator lines
        self.samples = {}                   # group -> first line seen
        self.doors = {}
        self.terminating = False  # SIGTERM sent
        self.lock = threading.Lock()
        cmd = [args.bin, "quickstart", "--dir", os.path.join(root, "quickstart"),
               "--patients", str(args.patients), "--hours", str(args.hours), "--rate", str(args.rate),
               "--poll-seconds", str(args.poll_seconds),
               "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0", "--mllp", "127.0.0.1:0"]
        self.log.write("$ " + " ".join(cmd) + "\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.pid = self.proc.pid
        self.warehouse = os.path.join(root, "quickstart", "warehouse")
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.ready.wait(1):
            if self.proc.poll() is not None:
                raise Failed(f"medlake quickstart exited with {self.proc.returncode} before its doors "
                             f"opened; see {self.log_path}")
            if time.monotonic() > deadline:
                raise Failed(f"medlake quickstart did not open its doors within {timeout} s; see {self.log_path}")

    def _read(self):
        panic = None
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            m = self.DOOR.search(line)
            if m:
                self.doors[m.group(1)] = (m.group(2), int(m.group(3)))
                if len(self.doors) == 4:
                    self.ready.set()
                continue
            if panic:
                # The line after "thread '...' panicked at FILE:LINE:COL:" is the message.
                group = f"{panic}: {shape(line)}"
                panic = None
            else:
                m = self.PANIC.match(line)
                if m:
                    when = "while stopping" if self.terminating else "while serving"
                    where = re.sub(r"^.*/registry/src/[^/]+/", "", m.group(1))  # crate-relative
                    panic = f"server panic {when} at {where}"
                    continue
                group = classify(line)
            if group:
                with self.lock:
                    self.lines[group] += 1
                    self.samples.setdefault(group, line.strip()[:400])

    def pg(self, user):
        host, port = self.doors["postgres"]
        return psycopg.connect(host=host, port=port, user=user, dbname="medlake", autocommit=True,
                               connect_timeout=30)

    def flight(self):
        host, port = self.doors["flight sql"]
        return flight_sql.connect(f"grpc://{host}:{port}", autocommit=True)

    def metrics(self):
        host, port = self.doors["http"]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as resp:
            return resp.read().decode()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM, then at most STOP_SECONDS for it to exit by itself (SIGKILL after that).
        Returns (exit code, seconds, stopped by itself)."""
        started = time.monotonic()
        self.terminating = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_SECONDS)
            by_itself = True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            by_itself = False
        return code, round(time.monotonic() - started, 1), by_itself


def classify(line):
    """The group of a quickstart output line worth counting, or None. Tracing lines are JSON
    (MEDLAKE_LOG_FORMAT=json); the simulator's are `warning: ...` / `error: ...`."""
    line = line.strip()
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        level = event.get("level", "")
        if level not in ("ERROR", "WARN"):
            return None
        fields = event.get("fields", {})
        message = " ".join(str(fields[k]) for k in ("message", "error") if k in fields)
        return f"server {level} {event.get('target', '')}: {shape(message)}"
    for prefix in ("warning:", "error:"):
        if line.startswith(prefix):
            return f"simulator {prefix} {shape(line[len(prefix):])}"
    return None


def shape(text):
    """A message with its numbers, keys and addresses blanked, to group repeats."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27,}", "<id>", text)
    return re.sub(r"\d+", "#", text.strip())[:160]


class Tally:
    """What the clients did and met, shared by every thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.errors = collections.Counter()
        self.error_samples = {}
        self.conflicts = collections.Counter()
        self.closing = False  # the server is being stopped: what clients meet now is not counted
        self.after_stop = collections.Counter()
        self.requests = None
        self.latency_ms = collections.defaultdict(list)
        self.flight_acked = {}    # batch -> rows
        self.flight_unknown = {}  # batch -> rows: failed ingest (an error), whole or absent

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def error(self, client, e):
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        sqlstate = getattr(e, "sqlstate", None)
        key = f"{client}: {type(e).__name__}{f' {sqlstate}' if sqlstate else ''} {shape(message)}"
        with self.lock:
            if self.closing:
                self.after_stop[key] += 1
                return
            self.errors[key] += 1
            # The whole text (a server error's cause is often on its later lines): the one
            # 58030 of the session-36 hour kept only "Delta table 'bronze.hl7_observations'".
            self.error_samples.setdefault(key, str(e).strip()[:2000] or message)

    def log_requests(self, path, t0):
        """From now on every finished request is also a line of `path` (requests.csv)."""
        self.requests = open(path, "w")
        self.requests.write("t_s,request,ms\n")
        self.t0 = t0

    def latency(self, name, ms):
        with self.lock:
            self.latency_ms[name].append(ms)
            if self.requests is not None:
                self.requests.write(f"{time.monotonic() - self.t0:.1f},{name},{ms:.1f}\n")


class Params:
    """Random dashboard parameters from what the warehouse holds."""

    def __init__(self, conn):
        self.patients = [r[0] for r in conn.execute(
            "SELECT DISTINCT patient_id FROM gold.patient_daily_vitals ORDER BY 1").fetchall()]
        self.days = [r[0] for r in conn.execute(
            "SELECT DISTINCT day FROM gold.patient_daily_vitals ORDER BY 1").fetchall()]
        self.wards = [r[0] for r in conn.execute(
            "SELECT DISTINCT ward FROM gold.news2_hourly WHERE ward IS NOT NULL ORDER BY 1").fetchall()]
        self.newest = conn.execute("SELECT max(taken_at) FROM silver.readings").fetchone()[0]
        if not (self.patients and self.days and self.wards and self.newest):
            raise Failed(f"the quickstart warehouse has no patients, days or wards to query: {self.__dict__}")

    def pick(self, rng, hours):
        day = rng.choice(self.days)
        return {
            "patient": rng.choice(self.patients),
            "ward": rng.choice(self.wards),
            "day": day,
            "week_start": day - datetime.timedelta(days=6),
            "since": (self.newest - datetime.timedelta(seconds=rng.uniform(0, hours * 3600))).replace(microsecond=0),
        }


def literal(value):
    if isinstance(value, datetime.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, datetime.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def with_literals(template, params):
    return re.sub(r"\{(\w+)\}", lambda m: literal(params[m.group(1)]), template)


def with_placeholders(template):
    return re.sub(r"\{(\w+)\}", r"%(\1)s", template)


def lost(conn):
    return conn.closed or conn.broken


def pg_client(server, tally, stop, rng, name, body):
    """Runs body(conn) until stop; a broken connection is counted (by body) and reopened."""
    conn = None
    while not stop.is_set():
        try:
            if conn is None or lost(conn):
                conn = server.pg(name)
            body(conn)
        except (psycopg.Error, Reconnect) as e:
            if not isinstance(e, Reconnect):
                tally.error(f"pg {name.rstrip('0123456789')}", e)
            if conn is not None and lost(conn):
                conn = None
            stop.wait(1)
    if conn is not None:
        conn.close()


def dashboard_client(server, tally, stop, rng, index, params, args):
    prepared = index % 2 == 0
    names = [q[0] for q in DASHBOARD]
    weights = [q[1] for q in DASHBOARD]
    sql = {q[0]: q[2] for q in DASHBOARD}

    def body(conn):
        while not stop.is_set():
            name = rng.choices(names, weights)[0]
            values = params.pick(rng, args.hours)
            started = time.perf_counter()
            try:
                if prepared:
                    used = {k: values[k] for k in re.findall(r"\{(\w+)\}", sql[name])}
                    rows = conn.execute(with_placeholders(sql[name]), used).fetchall()
                else:
                    rows = conn.execute(with_literals(sql[name], values)).fetchall()
            except psycopg.Error as e:
                tally.error(f"pg dashboard {name}", e)
                if lost(conn):
                    raise Reconnect() from e
                continue
            tally.latency(name, (time.perf_counter() - started) * 1000)
            tally.count("pg_dashboard_queries")
            tally.count("pg_dashboard_rows", len(rows))
            stop.wait(rng.uniform(0, 2 * args.think))

    pg_client(server, tally, stop, rng, f"dashboard{index}", body)


def refresh_client(server, tally, stop, rng, args):
    def body(conn):
        while not stop.wait(rng.uniform(0.5, 1.5) * args.refresh_every):
            view = rng.choice(MANUAL_REFRESHES)
            started = time.perf_counter()
            try:
                conn.execute(f"REFRESH MATERIALIZED VIEW {view}")
            except psycopg.Error as e:
                if e.sqlstate in REFRESH_CONFLICTS:
                    with tally.lock:
                        tally.conflicts[f"{view}: {e.sqlstate}"] += 1
                    continue
                tally.error(f"pg refresh {view}", e)
                if lost(conn):
                    raise Reconnect() from e
                continue
            tally.latency(f"refresh {view}", (time.perf_counter() - started) * 1000)
            tally.count("manual_refreshes")

    pg_client(server, tally, stop, rng, "refresher", body)


def flight_client(server, tally, stop, rng, work, label):
    """work(cursor) in a loop on one ADBC connection; an error is counted and the connection
    reopened."""
    conn = cur = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = server.flight()
                cur = conn.cursor()
            work(cur)
        except Exception as e:  # noqa: BLE001 - every error is counted
            tally.error(label, e)
            close_flight(conn, cur)
            conn = cur = None
            stop.wait(1)
    close_flight(conn, cur)


def close_flight(conn, cur):
    """The cursor, then its connection (the other order makes the cursor's close fail)."""
    for thing in (cur, conn):
        if thing is not None:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - a broken connection cannot be closed cleanly
                pass


def flight_reader(server, tally, stop, rng, params, args):
    def work(cur):
        name, sql = rng.choice(FLIGHT_READS)
        started = time.perf_counter()
        cur.execute(with_literals(sql, params.pick(rng, args.hours)))
        table = cur.fetch_arrow_table()
        tally.latency(f"flight {name}", (time.perf_counter() - started) * 1000)
        tally.count("flight_reads")
        tally.count("flight_rows_read", table.num_rows)
        stop.wait(rng.uniform(0, 2 * args.think))

    flight_client(server, tally, stop, rng, work, "flight reader")


FLIGHT_SCHEMA = pa.schema([("batch", pa.string()), ("seq", pa.int32()), ("device_id", pa.string()),
                           ("value", pa.float64())])


def flight_writer(server, tally, stop, rng, index, args):
    serial = iter(range(1, 1 << 62))

    def work(cur):
        batch = f"w{index}-{next(serial)}"
        n = rng.randint(1, 50)
        rows = [{"batch": batch, "seq": i, "device_id": f"soak-{rng.randrange(16)}", "value": rng.uniform(30, 180)}
                for i in range(n)]
        with tally.lock:
            tally.flight_unknown[batch] = n
        started = time.perf_counter()
        cur.adbc_ingest("soak_flight", pa.Table.from_pylist(rows, schema=FLIGHT_SCHEMA), mode="append",
                        db_schema_name="bronze")
        tally.latency("flight ingest", (time.perf_counter() - started) * 1000)
        with tally.lock:
            del tally.flight_unknown[batch]
            tally.flight_acked[batch] = n
            tally.counts["flight_batches"] += 1
            tally.counts["flight_rows_written"] += n
        stop.wait(rng.uniform(0.5, 1.5) * args.write_every)

    flight_client(server, tally, stop, rng, work, "flight writer")


# ---------------------------------------------------------------------------------------------
# Sampling

def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    kb = lambda key: int(fields[key].split()[0])  # noqa: E731
    return {"rss_kb": kb("VmRSS"), "rss_anon_kb": kb("RssAnon"), "rss_file_kb": kb("RssFile"),
            "hwm_kb": kb("VmHWM"), "threads": int(fields["Threads"])}


def delta_logs(warehouse):
    """{table path: (bytes, entries)} of every _delta_log under the warehouse."""
    logs = {}
    for top, dirs, _ in os.walk(warehouse):
        if "_delta_log" in dirs:
            path = os.path.join(top, "_delta_log")
            size = entries = 0
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        try:
                            size += entry.stat().st_size
                            entries += 1
                        except FileNotFoundError:  # a log file cleaned up meanwhile
                            pass
            except FileNotFoundError:
                continue
            logs[os.path.relpath(top, warehouse)] = (size, entries)
            dirs.remove("_delta_log")
    return logs


def warehouse_bytes(warehouse):
    total = 0
    for top, _, files in os.walk(warehouse):
        for name in files:
            try:
                total += os.stat(os.path.join(top, name)).st_size
            except FileNotFoundError:
                pass
    return total


def metric_values(text):
    """{series with labels: value} of a Prometheus text."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


COLUMNS = ["t_s", "rss_kb", "rss_anon_kb", "rss_file_kb", "hwm_kb", "threads", "fds", "delta_log_bytes", "delta_log_entries", "delta_logs",
           "warehouse_bytes", "pg_dashboard_queries", "flight_reads", "flight_batches", "manual_refreshes",
           "client_errors", "ingest_rows_total", "ingest_requests_total", "result_cache_bytes",
           "result_cache_entries", "plan_cache_entries", "sessions", "mem_allocated_kb", "mem_resident_kb", "mem_retained_kb",
           "table_snapshots", "table_snapshot_files", "table_snapshot_replayed", "parquet_metadata_cache_kb",
           "parquet_metadata_cache_limit_kb",
           "local_io_waits", "local_io_operations"]


class Sampler:
    def __init__(self, server, tally, out):
        self.server = server
        self.tally = tally
        self.rows = []
        self.first_logs = None
        self.last_logs = None
        self.metrics = {}  # the last /metrics read
        self.file = open(os.path.join(out, "samples.csv"), "w", newline="")
        self.csv = csv.DictWriter(self.file, COLUMNS)
        self.csv.writeheader()

    def sample(self, t):
        pid = self.server.pid
        status = proc_status(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        logs = delta_logs(self.server.warehouse)
        if self.first_logs is None:
            self.first_logs = logs
        self.last_logs = logs
        try:
            m = metric_values(self.server.metrics())
        except (OSError, urllib.error.URLError) as e:
            self.tally.error("http /metrics", e)
            m = {}
        with self.tally.lock:
            counts = dict(self.tally.counts)
            errors = sum(self.tally.errors.values())
        row = {
            "t_s": round(t, 1), **status, "fds": fds,
            "delta_log_bytes": sum(v[0] for v in logs.values()),
            "delta_log_entries": sum(v[1] for v in logs.values()),
            "delta_logs": len(logs),
            "warehouse_bytes": warehouse_bytes(self.server.warehouse),
            "pg_dashboard_queries": counts.get("pg_dashboard_queries", 0),
            "flight_reads": counts.get("flight_reads", 0),
            "flight_batches": counts.get("flight_batches", 0),
            "manual_refreshes": counts.get("manual_refreshes", 0),
            "client_errors": errors,
            "ingest_rows_total": int(sum(v for k, v in m.items() if k.startswith("medlake_ingest_rows_total"))),
            "ingest_requests_total": int(sum(v for k, v in m.items() if k.startswith("medlake_ingest_requests_total"))),
            "result_cache_bytes": int(m.get("medlake_result_cache_bytes", 0)),
            "result_cache_entries": int(m.get("medlake_result_cache_entries", 0)),
            "plan_cache_entries": int(m.get("medlake_plan_cache_entries", 0)),
            "sessions": int(sum(v for k, v in m.items() if k.startswith("medlake_sessions"))),
            # What the allocator says the server's objects hold, against what RSS shows.
            "mem_allocated_kb": int(m.get('medlake_memory_bytes{kind="allocated"}', 0) // 1024),
            "mem_resident_kb": int(m.get('medlake_memory_bytes{kind="resident"}', 0) // 1024),
            "mem_retained_kb": int(m.get('medlake_memory_bytes{kind="retained"}', 0) // 1024),
            "table_snapshots": int(m.get("medlake_table_snapshots", 0)),
            "table_snapshot_files": int(m.get("medlake_table_snapshot_files", 0)),
            "table_snapshot_replayed": int(m.get("medlake_table_snapshot_replayed_commits", 0)),
            "parquet_metadata_cache_kb": int(m.get("medlake_parquet_metadata_cache_bytes", 0) // 1024),
            "parquet_metadata_cache_limit_kb": int(m.get("medlake_parquet_metadata_cache_limit_bytes", 0) // 1024),
            # Local file operations, and how many found the process's bound reached.
            "local_io_waits": int(m.get("medlake_local_io_waits_total", 0)),
            "local_io_operations": int(m.get("medlake_local_io_operations_total", 0)),
        }
        self.rows.append(row)
        self.csv.writerow(row)
        self.file.flush()
        with self.tally.lock:
            if self.tally.requests is not None:
                self.tally.requests.flush()
        if m:
            self.metrics = m
        return row


# ---------------------------------------------------------------------------------------------
# Checks

def warm_up(rows, ran):
    """Seconds of warm-up, not judged: the first 20% of the run or 120 s (the kept snapshots
    fill by then), and at least until DataFusion's Parquet footer cache has filled to its limit
    (a cache reaching its cap is warm-up, not a leak: ~100 s of this load on an idle machine,
    ~210 s on a busy one), but never more than half the run."""
    base = max(0.2 * ran, 120.0)
    full = next((r["t_s"] for r in rows if r["parquet_metadata_cache_limit_kb"]
                 and r["parquet_metadata_cache_kb"] >= 0.95 * r["parquet_metadata_cache_limit_kb"]), None)
    if full is None:
        return base
    return max(base, min(full, 0.5 * ran))


def thirds(rows, warmup, duration):
    """The samples of the first and the last third of the run after warm-up."""
    third = (duration - warmup) / 3
    first = [r for r in rows if warmup <= r["t_s"] < warmup + third]
    last = [r for r in rows if r["t_s"] >= duration - third]
    return first, last


def slope_per_hour(rows, key):
    """Least-squares slope of `key` against time, per hour."""
    if len(rows) < 2:
        return 0.0
    xs = [r["t_s"] for r in rows]
    ys = [r[key] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 3600


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))], 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5, help="length of the soak, from the doors opening")
    parser.add_argument("--bin", default=os.environ.get("MEDLAKE_BIN"))
    parser.add_argument("--out", help="samples.csv, delta_logs.csv, summary.json (default: the work folder)")
    parser.add_argument("--dir", help="work folder, kept (default: a temporary one, removed when every check held)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dashboards", type=int, default=32, help="Postgres-wire dashboard clients")
    parser.add_argument("--flight-readers", type=int, default=2)
    parser.add_argument("--flight-writers", type=int, default=2)
    parser.add_argument("--think", type=float, default=5.0,
                        help="mean pause of a dashboard client or Flight reader between queries, s "
                             "(uniform between 0 and twice it: a dashboard refreshing its panels)")
    parser.add_argument("--write-every", type=float, default=1.0, help="mean pause of a Flight writer, s")
    parser.add_argument("--refreshers", type=int, default=1, help="Postgres-wire clients running manual refreshes")
    parser.add_argument("--refresh-every", type=float, default=10.0, help="mean pause between manual refreshes, s")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--hours", type=float, default=2)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--poll-seconds", type=int, default=10)
    parser.add_argument("--max-rss-mib", type=int, default=6144,
                        help="stop (and fail) when the server's RSS passes this (protects the machine)")
    parser.add_argument("--max-disk-mib", type=int, default=8192,
                        help="stop (and fail) when the warehouse passes this size")
    parser.add_argument("--min-free-disk-mib", type=int, default=5120,
                        help="stop (and fail) when the disk holding --out has less free space")
    parser.add_argument("--setup-timeout", type=float, default=1200,
                        help="seconds the quickstart may take to generate, apply and open its doors")
    args = parser.parse_args()
    if not args.bin or not os.path.exists(args.bin):
        sys.exit("MEDLAKE_BIN (or --bin) must point at the medlake binary")
    root = args.dir or tempfile.mkdtemp(prefix="medlake-soak-")
    os.makedirs(root, exist_ok=True)
    out = args.out or root
    os.makedirs(out, exist_ok=True)
    # The quickstart's own log filter (warnings; the Delta kernel's lines off), as JSON lines.
    env = dict(os.environ, MEDLAKE_LOG_FORMAT="json")
    server = Quickstart(args, root, env)
    try:
        ok = soak(args, server, out)
    except Failed as e:
        print(f"FAILED {e}", file=sys.stderr)
        ok = False
    finally:
        if server.alive():
            server.proc.kill()
            server.proc.wait()
    if ok and not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a client thread still blocked in a driver call (counted as an error) would
    # hold up the interpreter's exit or fail noisily in its cursor's finalizer.
    os._exit(0 if ok else 1)


def soak(args, server, out):
    began = time.monotonic()
    server.wait_ready(args.setup_timeout)
    setup_seconds = round(time.monotonic() - began, 1)
    print(f"quickstart ready after {setup_seconds} s: {server.doors} (pid {server.pid}); "
          f"soaking {args.minutes} min", flush=True)
    admin = server.pg("soak")
    for sql in SETUP:
        admin.execute(sql)
    params = Params(admin)
    start_utc = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    push_rows_before = admin.execute("SELECT count(*) FROM bronze.readings_push").fetchone()[0]

    tally = Tally()
    sampler = Sampler(server, tally, out)
    stop = threading.Event()
    rng = random.Random(args.seed)
    seeds = lambda: random.Random(rng.random())  # noqa: E731
    workers = [(dashboard_client, (server, tally, stop, seeds(), i, params, args)) for i in range(args.dashboards)]
    workers += [(flight_reader, (server, tally, stop, seeds(), params, args)) for _ in range(args.flight_readers)]
    workers += [(flight_writer, (server, tally, stop, seeds(), i, args)) for i in range(args.flight_writers)]
    workers += [(refresh_client, (server, tally, stop, seeds(), args)) for _ in range(args.refreshers)]
    crashed = []

    def guard(target, a):
        try:
            target(*a)
        except Exception as e:  # noqa: BLE001 - a harness bug is reported, not hidden
            crashed.append(f"{target.__name__}: {type(e).__name__}: {e}")
            tally.error(f"harness {target.__name__}", e)

    threads = [threading.Thread(target=guard, args=w, daemon=True) for w in workers]
    duration = args.minutes * 60
    t0 = time.monotonic()
    tally.log_requests(os.path.join(out, "requests.csv"), t0)
    for t in threads:
        t.start()
    died_at = None
    guard_tripped = None
    next_sample = 0.0
    while True:
        now = time.monotonic() - t0
        if not server.alive():
            died_at = now
            break
        if now >= next_sample:
            row = sampler.sample(now)
            print(f"[{now:7.0f} s] rss {row['rss_kb'] / 1024:.0f} MiB (allocated {row['mem_allocated_kb'] / 1024:.0f}, "
                  f"{row['table_snapshot_files']} files in {row['table_snapshots']} snapshots), "
                  f"{row['threads']} threads ({row['local_io_waits']} waits of {row['local_io_operations']} local I/O), {row['fds']} fds, "
                  f"delta logs {row['delta_log_entries']} entries {row['delta_log_bytes'] / 1e6:.1f} MB, "
                  f"{row['pg_dashboard_queries']} pg queries, {row['flight_reads']} flight reads, "
                  f"{row['flight_batches']} flight batches, {row['manual_refreshes']} refreshes, "
                  f"{row['client_errors']} errors", flush=True)
            next_sample += args.sample_seconds
            if next_sample > duration and now < duration:
                next_sample = duration
            guard_tripped = guards(args, row, out)
            if guard_tripped:
                break
        if now >= duration:
            break
        time.sleep(min(1.0, max(0.0, next_sample - (time.monotonic() - t0))))
    stop.set()
    hung = []
    deadline = time.monotonic() + 120
    for t, w in zip(threads, workers):
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            hung.append(w[0].__name__)

    failures = []
    if died_at is not None:
        failures.append(f"server: medlake quickstart exited ({server.proc.returncode}) at {died_at:.0f} s of the soak")
    if guard_tripped:
        failures.append(f"guard: {guard_tripped}; stopped at {rows_t(sampler)} s of {duration:.0f}")
    for name in hung:
        tally.errors[f"harness {name}: its last request did not finish within 120 s of the end"] += 1

    # Checks that ask the server (while it still runs).
    refreshes = {}
    live_rows = None
    if died_at is None:
        try:
            conn = server.pg("soak-check")
            since = literal(start_utc)
            for trigger, status, n in conn.execute(
                    f"SELECT trigger, status, count(*) FROM system.refreshes WHERE started >= {since} "
                    "GROUP BY trigger, status ORDER BY 1, 2").fetchall():
                refreshes[f"{trigger} {status}"] = n
            for view, error, n in conn.execute(
                    f"SELECT view, error, count(*) FROM system.refreshes WHERE started >= {since} "
                    "AND status NOT IN ('succeeded', 'skipped') GROUP BY view, error").fetchall():
                tally.errors[f"refresh of {view} failed: {shape(error or '')}"] += n
                tally.error_samples.setdefault(f"refresh of {view} failed: {shape(error or '')}", error)
            live_rows = conn.execute("SELECT count(*) FROM bronze.readings_push").fetchone()[0] - push_rows_before
            found = dict(conn.execute("SELECT batch, count(*) FROM bronze.soak_flight GROUP BY batch").fetchall())
            bad = [b for b, n in tally.flight_acked.items() if found.get(b) != n]
            bad += [b for b, n in tally.flight_unknown.items() if found.get(b) not in (None, n)]
            extra = set(found) - set(tally.flight_acked) - set(tally.flight_unknown)
            if bad or extra:
                failures.append(f"flight ingest: {len(bad)} batches not there exactly once (e.g. {bad[:3]}), "
                                f"{len(extra)} nobody sent")
            conn.close()
        except psycopg.Error as e:
            failures.append(f"server: the final queries failed: {e}")
    admin.close()

    # HTTP ingest answers of the live load (the quickstart's simulator), from /metrics.
    statuses = collections.Counter()
    for key, value in sampler.metrics.items():
        m = re.match(r'medlake_ingest_requests_total\{table="([^"]+)",status="(\d+)"\}', key)
        if m:
            statuses[f"{m.group(1)} {m.group(2)}"] += int(value)
    for key, n in statuses.items():
        if key.split()[1] not in ("200", "429", "503"):
            tally.errors[f"http ingest (quickstart simulator): answered {key}"] += n
    with server.lock:
        log_lines = dict(server.lines)
        log_samples = dict(server.samples)
    for group, n in log_lines.items():
        if group.startswith(("simulator", "server ERROR", "server panic")):
            tally.errors[group] += n
            tally.error_samples.setdefault(group, log_samples[group])

    with tally.lock:
        tally.closing = True
    code, stop_seconds, by_itself = server.stop()
    time.sleep(0.5)  # the reader thread takes the last lines
    with server.lock:
        for group, n in server.lines.items():
            if group.startswith("server panic while stopping"):
                failures.append(f"stop: {n} x {group}")
                log_lines[group] = n
    if died_at is None:
        if not by_itself:
            failures.append(f"stop: medlake quickstart did not exit within {STOP_SECONDS} s of SIGTERM (killed)")
        elif code != 0:
            failures.append(f"stop: medlake quickstart exited with {code} after SIGTERM")

    # Judging the samples.
    rows = sampler.rows
    ran = rows_t(sampler) if (guard_tripped or died_at is not None) else duration
    warmup = warm_up(rows, ran)
    first, last = thirds(rows, warmup, ran)
    post = [r for r in rows if r["t_s"] >= warmup]
    judged = {}
    if len(first) < 3 or len(last) < 3:
        failures.append(f"rss/fds: too few samples after the {warmup:.0f} s warm-up to judge "
                        f"({len(first)} and {len(last)}); run longer")
    else:
        rss_first = max(r["rss_kb"] for r in first)
        rss_last = max(r["rss_kb"] for r in last)
        fd_first = min(r["fds"] for r in first)
        fd_last = min(r["fds"] for r in last)
        judged = {"rss_max_first_third_kb": rss_first, "rss_max_last_third_kb": rss_last,
                  "rss_ratio": round(rss_last / rss_first, 3),
                  "fds_min_first_third": fd_first, "fds_min_last_third": fd_last,
                  "fds_max_first_third": max(r["fds"] for r in first),
                  "fds_max_last_third": max(r["fds"] for r in last),
                  "threads_max_first_third": max(r["threads"] for r in first),
                  "threads_max_last_third": max(r["threads"] for r in last)}
        if rss_last > RSS_FACTOR * rss_first:
            failures.append(f"rss: the last third's highest RSS {rss_last / 1024:.0f} MiB is over "
                            f"{RSS_FACTOR:.2f} x the first third's {rss_first / 1024:.0f} MiB "
                            f"({rss_last / rss_first:.3f})")
        if fd_last > fd_first + FD_SLACK:
            failures.append(f"fds: the last third's fewest open files {fd_last} is over the first third's "
                            f"{fd_first} + {FD_SLACK}")

    total_errors = sum(tally.errors.values())
    if total_errors:
        failures.append(f"errors: {total_errors} client errors (grouped below)")
    counts = dict(tally.counts)
    for what in ("pg_dashboard_queries", "flight_reads", "flight_batches", "manual_refreshes"):
        if args_wants(args, what) and not counts.get(what):
            failures.append(f"load: no {what} succeeded")
    if died_at is None:
        if not live_rows:
            failures.append("load: the quickstart's live load landed no rows in bronze.readings_push")
        if not any(k.startswith("schedule ") and k.endswith("succeeded") for k in refreshes):
            failures.append(f"load: the scheduler refreshed nothing ({refreshes})")

    seconds = max(1.0, rows[-1]["t_s"] if rows else 1.0)
    curve_every = max(1, int(round(300 / args.sample_seconds)))
    summary = {
        "seed": args.seed,
        "minutes": args.minutes,
        "binary": os.path.realpath(args.bin),
        "binary_built": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(os.path.getmtime(args.bin))),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "scale": {"patients": args.patients, "hours": args.hours, "rate": args.rate},
        "clients": {"dashboards": args.dashboards, "flight_readers": args.flight_readers,
                    "flight_writers": args.flight_writers, "refreshers": args.refreshers},
        "setup_seconds": setup_seconds,
        "warmup_seconds": warmup,
        "samples": len(rows),
        "judged": judged,
        "rss_mib": {"first": round(rows[0]["rss_kb"] / 1024, 1) if rows else None,
                    "last": round(rows[-1]["rss_kb"] / 1024, 1) if rows else None,
                    "max": round(max(r["rss_kb"] for r in rows) / 1024, 1) if rows else None,
                    "slope_after_warmup_mib_per_hour": round(slope_per_hour(post, "rss_kb") / 1024, 1)},
        "rss_curve_mib": [[r["t_s"], round(r["rss_kb"] / 1024, 1)] for r in rows[::curve_every]],
        "fds": {"min": min(r["fds"] for r in rows), "max": max(r["fds"] for r in rows)} if rows else {},
        "threads": {"min": min(r["threads"] for r in rows), "max": max(r["threads"] for r in rows)} if rows else {},
        "delta_log": {k: [rows[0][k], rows[-1][k]] for k in ("delta_log_entries", "delta_log_bytes", "delta_logs")}
        if rows else {},
        "delta_log_growth_top": log_growth(sampler.first_logs or {}, sampler.last_logs or {})[:8],
        "warehouse_bytes": [rows[0]["warehouse_bytes"], rows[-1]["warehouse_bytes"]] if rows else None,
        "counts": counts,
        "per_second": {k: round(counts.get(k, 0) / seconds, 2)
                       for k in ("pg_dashboard_queries", "flight_reads", "flight_batches", "manual_refreshes")},
        "live_rows_landed": live_rows,
        "http_ingest_statuses": dict(statuses),
        "refreshes": refreshes,
        "refresh_conflicts": dict(tally.conflicts),
        "latency_ms": {k: {"n": len(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95),
                           "max": round(max(v), 1)} for k, v in sorted(tally.latency_ms.items())},
        "server_log": log_lines,
        "errors": dict(tally.errors),
        "errors_after_sigterm_not_counted": dict(tally.after_stop),
        "error_samples": {k: tally.error_samples.get(k) for k in tally.errors},
        "harness_crashes": crashed,
        "stop": {"exit_code": code, "seconds": stop_seconds, "by_itself": by_itself},
        "failed": failures,
        "out": out,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    write_log_table(out, sampler.first_logs or {}, sampler.last_logs or {})
    print(json.dumps(summary, indent=2, default=str))
    if tally.errors:
        print("client errors, grouped:", file=sys.stderr)
        for key, n in tally.errors.most_common():
            print(f"  {n:6d}  {key}", file=sys.stderr)
    if failures:
        for f in failures:
            print(f"FAILED {f}", file=sys.stderr)
        print(f"samples and summary in {out}; quickstart.log in {os.path.dirname(server.log_path)}", file=sys.stderr)
        return False
    print(f"soak passed: {args.minutes} min, rss x{judged.get('rss_ratio')}, fd floor {judged.get('fds_min_first_third')}"
          f" -> {judged.get('fds_min_last_third')}, 0 client errors", flush=True)
    return True


def rows_t(sampler):
    return sampler.rows[-1]["t_s"] if sampler.rows else 0.0


def guards(args, row, out):
    """Why the soak must stop now to protect the machine it shares (a server that grows
    without bound would take its memory or disk), or None."""
    if row["rss_kb"] > args.max_rss_mib * 1024:
        return f"the server's RSS {row['rss_kb'] // 1024} MiB passed --max-rss-mib {args.max_rss_mib}"
    if row["warehouse_bytes"] > args.max_disk_mib * 2**20:
        return f"the warehouse's {row['warehouse_bytes'] >> 20} MiB passed --max-disk-mib {args.max_disk_mib}"
    free = shutil.disk_usage(out).free
    if free < args.min_free_disk_mib * 2**20:
        return f"only {free >> 20} MiB of disk left (--min-free-disk-mib {args.min_free_disk_mib})"
    return None


def args_wants(args, what):
    return {"pg_dashboard_queries": args.dashboards, "flight_reads": args.flight_readers,
            "flight_batches": args.flight_writers, "manual_refreshes": args.refreshers}[what] > 0


def log_growth(first, last):
    growth = [(t, last[t][1] - first.get(t, (0, 0))[1], last[t][0] - first.get(t, (0, 0))[0]) for t in last]
    return [{"table": t, "entries_added": e, "bytes_added": b} for t, e, b in sorted(growth, key=lambda g: -g[2])]


def write_log_table(out, first, last):
    with open(os.path.join(out, "delta_logs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "first_bytes", "first_entries", "last_bytes", "last_entries"])
        for table in sorted(set(first) | set(last)):
            a, b = first.get(table, (0, 0)), last.get(table, (0, 0))
            w.writerow([table, a[0], a[1], b[0], b[1]])


if __name__ == "__main__":
    main()
