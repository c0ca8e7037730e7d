"""mllp: HL7 v2 messages acknowledged durably over MLLP against the HTTP door, on the same
readings. Each message is an ORU^R01 (IHE PCD-01) of one bedside monitor with four
observations (SpO2, heart rate, respiration rate, body temperature; IEEE 11073 MDC codes);
the HTTP leg posts the same four readings per request as NDJSON to
/v1/ingest/bronze.readings_push with the message's control id as its Idempotency-Key. Every
sender has one message in flight per connection (MLLP original mode: the next message waits
for the ACK; HTTP keep-alive: the next request waits for the 200). Legs: each door at 1 and at
`--connections` connections (default 64), each on a fresh warehouse and its own
`medlake serve`.

    python benches/run.py mllp --bin target/release/medlake [--messages 20000] [--concurrent-messages 200000]
        [--connections 1,64] [--fsync off|on|both] [--max-seconds 180]

The client is one Python thread driving every connection through epoll with pre-built frames
and requests (no HL7 or HTTP library on the hot path), so that Python's GIL does not cap 64
connections; its CPU time is measured and reported next to the server's.
"""

import csv
import heapq
import io
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from harness import HERE, Medlake, build_of, load_average, workload_parser, write_result

START = datetime(2026, 11, 23, 8, 0, 0, tzinfo=timezone.utc)
# (OBX-3 MDC code, its name, OBX-6 MDC unit, its name, readings_push metric, unit)
METRICS = [
    ("150456", "MDC_PULS_OXIM_SAT_O2", "262688", "MDC_DIM_PERCENT", "spo2", "%"),
    ("147842", "MDC_ECG_HEART_RATE", "264864", "MDC_DIM_BEAT_PER_MIN", "heart_rate", "bpm"),
    ("151562", "MDC_RESP_RATE", "264928", "MDC_DIM_RESP_PER_MIN", "respiration_rate", "/min"),
    ("150364", "MDC_TEMP_BODY", "268192", "MDC_DIM_DEGC", "temperature", "degC"),
]
INGEST_PATH = "/v1/ingest/bronze.readings_push"


# ---------------------------------------------------------------------------------------------
# the readings, as HL7 messages and as NDJSON requests


def values(i):
    """The four readings of message i, as text (the same text goes into both doors)."""
    return [str(90 + i % 10), str(60 + i % 41), str(12 + i % 9), f"{36.0 + (i % 20) / 10:.1f}"]


def reading_set(messages, devices):
    """Message i: device i % devices (patient 1000 + device), taken START + i // devices s.
    Returns per message (control id, device EUI-64, patient, datetime, values)."""
    out = []
    for i in range(messages):
        d = i % devices
        out.append((f"B{i:08d}", f"0012ABCDEF{d:06X}", 1000 + d,
                    START + timedelta(seconds=i // devices), values(i)))
    return out


def hl7_message(control_id, eui, patient, taken, vals):
    """An ORU^R01 as ER7 (segments ended by CR), as a PCD-01 device gateway sends it."""
    ts = taken.strftime("%Y%m%d%H%M%S+0000")
    segments = [
        f"MSH|^~\\&|MON^{eui}^EUI-64|ICU|MEDLAKE||{ts}||ORU^R01^ORU_R01|{control_id}|P|2.6",
        f"PID|||{patient}^^^HOSP^MR||Patient^{patient}",
        f"PV1||I|ICU^Bed {patient % 1000}^1",
        f"OBR|1||{control_id}-1|182777000^monitoring of patient^SCT|||{ts}",
    ]
    for k, ((code, name, unit, unit_name, _, _), value) in enumerate(zip(METRICS, vals), 1):
        segments.append(f"OBX|{k}|NM|{code}^{name}^MDC||{value}|{unit}^{unit_name}^MDC|||||F|||{ts}"
                        f"||||{eui}^^{eui}^EUI-64")
    return ("\r".join(segments) + "\r").encode()


def mllp_frame(message):
    return b"\x0b" + message + b"\x1c\r"


def ndjson_body(eui, patient, taken, vals):
    ts = taken.strftime("%Y-%m-%dT%H:%M:%SZ")
    return "".join(
        json.dumps({"device_id": eui, "patient_id": patient, "metric": metric, "value": float(v),
                    "unit": unit, "taken_at": ts}) + "\n"
        for (_, _, _, _, metric, unit), v in zip(METRICS, vals)).encode()


def http_request(host, port, control_id, body):
    return (f"POST {INGEST_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/x-ndjson\r\nIdempotency-Key: {control_id}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def check_hl7_with_library(message):
    """The hand-built ER7 read back by python-hl7 (an independent parser): MSH-10 and four
    OBX with their codes and values, so the frames the benchmark sends are real HL7."""
    import hl7

    parsed = hl7.parse(message.decode())
    obx = parsed.segments("OBX")
    got = [(str(s[3][0][0]), str(s[5])) for s in obx]
    if len(got) != 4 or [c for c, _ in got] != [m[0] for m in METRICS]:
        sys.exit(f"the benchmark's ORU^R01 does not read back as four OBX: {got}")
    if str(parsed.segment("OBX")[14]) == "" or str(parsed.segment("OBX")[18]) == "":
        sys.exit("OBX-14 or OBX-18 misplaced in the benchmark's ORU^R01")


# ---------------------------------------------------------------------------------------------
# the server


class Serve:
    """`medlake serve` with every door on loopback port 0 and no auth, on a fresh warehouse;
    stopped with SIGTERM (killed after 60 s)."""

    def __init__(self, binary, warehouse, log, env):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--insecure-no-auth", "--warehouse", str(warehouse),
             "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--mllp", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=dict(os.environ, **env))
        self.found = {}
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 120
        while len(self.found) < 2 and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if len(self.found) < 2:
            self.stop()
            sys.exit(f"medlake serve did not report its http and mllp addresses; see {log}")

    def _read(self):
        for line in self.proc.stdout:
            m = re.match(r"medlake serve: (http|hl7 mllp) on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.found[m.group(1)] = int(m.group(2))

    def cpu_seconds(self):
        """user + system CPU of the server process (every thread), from /proc."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# the client: one thread, every connection non-blocking under epoll


class LoadFailed(Exception):
    pass


class Conn:
    __slots__ = ("sock", "buf", "job", "t0", "attempts", "out")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.job = None
        self.t0 = 0.0
        self.attempts = 0
        self.out = None


def mllp_answer(buf, control_id, retried):
    """(consumed bytes, 'ok' | 'retry' | error text) once a whole ACK is in buf; None before.
    (A message sent again is answered AA whether or not its first send was stored.)"""
    end = buf.find(b"\x1c\r")
    if end < 0:
        return None
    ack = bytes(buf[buf.find(b"\x0b") + 1:end])
    msa = next((s for s in ack.split(b"\r") if s.startswith(b"MSA|")), None)
    if msa is None:
        return end + 2, f"no MSA in {ack[:200]!r}"
    fields = msa.split(b"|")
    code = fields[1]
    if len(fields) < 3 or fields[2] != control_id:
        return end + 2, f"ACK for {fields[2:3]} while waiting for {control_id}"
    if code == b"AA":
        return end + 2, "ok"
    if code == b"AR" and b"send it again" in ack:
        return end + 2, "retry"
    return end + 2, f"{code.decode()}: {ack[:400]!r}"


CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")


def http_answer(buf, rows, retried):
    """As mllp_answer: a request sent again may be answered as a duplicate of its first send
    (committed, then answered with an error): acknowledged, and counted."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    m = CONTENT_LENGTH.search(head)
    length = int(m.group(1)) if m else 0
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4:end + 4 + length])
    status = int(head[9:12])
    consumed = end + 4 + length
    if status == 200:
        reply = json.loads(body)
        if reply.get("duplicate") and retried:
            return consumed, "ok (duplicate)"
        if reply.get("rows") != rows or reply.get("duplicate"):
            return consumed, f"unexpected acknowledgement: {reply}"
        return consumed, "ok"
    if status in (429, 503):
        return consumed, "retry"
    return consumed, f"HTTP {status}: {body[:400]!r}"


def drive(port, connections, jobs, answer, max_seconds):
    """Sends `jobs` (per job: the bytes to send and what answer() needs to check the reply)
    through `connections` connections, one in flight on each. The clock starts once every
    connection is open. Stops taking new jobs after max_seconds (the run is then reported
    capped). Returns (seconds, latencies in s per acknowledged job, acknowledged job
    indexes, their acknowledgement times from the start, retries, retries answered as
    duplicates, client CPU seconds)."""
    socks = []
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks.append(s)
    except OSError as e:
        for s in socks:
            s.close()
        raise LoadFailed(f"connect: {e}")
    sel = selectors.EpollSelector()
    conns = [Conn(s) for s in socks]
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    latencies, acked, acked_at = [], [], []
    timers = []  # (when, seq, conn): a retry
    retries = duplicates = 0
    next_job = 0
    active = len(conns)
    perf = time.perf_counter

    def send(c, data):
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            c.out = memoryview(data)[sent:]
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def take(c):
        nonlocal next_job, active
        if next_job >= len(jobs) or perf() > deadline:
            c.job = None
            sel.unregister(c.sock)
            active -= 1
            return
        c.job = next_job
        next_job += 1
        c.attempts = 0
        c.t0 = perf()
        send(c, jobs[c.job][0])

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    started = perf()
    deadline = started + max_seconds
    for c in conns:
        take(c)
    while active:
        timeout = None
        if timers:
            timeout = max(0.0, timers[0][0] - perf())
        for key, mask in sel.select(timeout):
            c = key.data
            if mask & selectors.EVENT_WRITE and c.out is not None:
                try:
                    sent = c.sock.send(c.out)
                except BlockingIOError:
                    sent = 0
                c.out = c.out[sent:] if sent < len(c.out) else None
                if c.out is None:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                raise LoadFailed(f"job {c.job}: {e}")
            if not data:
                raise LoadFailed(f"the server closed a connection while job {c.job} was in flight")
            c.buf += data
            while c.job is not None:
                done = answer(c.buf, jobs[c.job][1], c.attempts > 0)
                if done is None:
                    break
                consumed, outcome = done
                del c.buf[:consumed]
                if outcome.startswith("ok"):
                    if outcome != "ok":
                        duplicates += 1
                    now = perf()
                    latencies.append(now - c.t0)
                    acked.append(c.job)
                    acked_at.append(now)
                    take(c)
                elif outcome == "retry":
                    retries += 1
                    c.attempts += 1
                    if c.attempts > 30:
                        raise LoadFailed(f"job {c.job} not acknowledged after 30 attempts")
                    heapq.heappush(timers, (perf() + min(0.05 * 2 ** c.attempts, 2), id(c), c))
                    break
                else:
                    raise LoadFailed(f"job {c.job}: {outcome}")
        now = perf()
        while timers and timers[0][0] <= now:
            _, _, c = heapq.heappop(timers)
            send(c, jobs[c.job][0])
    seconds = perf() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    sel.close()
    for s in socks:
        s.close()
    return seconds, latencies, acked, [t - started for t in acked_at], retries, duplicates, cpu


def tenths(acked_at):
    """Messages/s over the first and the last tenth of the acknowledgements: a cost that grows
    with the table (its commits and files) shows as a falling rate."""
    n = len(acked_at)
    k = max(1, n // 10)
    if n < 20:
        return None, None
    first = k / acked_at[k - 1]
    last = k / (acked_at[-1] - acked_at[-k - 1])
    return first, last


# ---------------------------------------------------------------------------------------------
# the legs


def readings_push_ddl():
    """The CREATE TABLE of bronze.readings_push from sql/bronze/telemetry.sql."""
    text = (HERE.parent / "sql" / "bronze" / "telemetry.sql").read_text()
    m = re.search(r"CREATE TABLE IF NOT EXISTS bronze\.readings_push \(.*?\);", text, re.S)
    if not m:
        sys.exit("sql/bronze/telemetry.sql has no CREATE TABLE bronze.readings_push")
    return m.group(0).rstrip(";")


def history(medlake, table):
    """(commits after the table's creation, rows they wrote) from DESCRIBE HISTORY: every
    version but 0 (the CREATE TABLE of readings_push; the MLLP door's empty first write of
    hl7_observations). `SELECT count(*) FROM (DESCRIBE HISTORY ...)` is not accepted."""
    out = medlake.run(f"DESCRIBE HISTORY {table}", csv=True)
    rows = list(csv.DictReader(io.StringIO(out)))
    writes = [r for r in rows if int(r["version"]) > 0]
    return len(writes), sum(int(r["rows_written"] or 0) for r in writes)


def verify(medlake, door, acked_messages, readings, count_ms):
    """The leg's table holds the acknowledged messages' readings, each once, and nothing else:
    row count, distinct messages (or readings), the values' sum and first/last time."""
    expected_rows = 4 * len(acked_messages)
    expected_sum = sum(float(v) for i in acked_messages for v in readings[i][4])
    if door == "mllp":
        query = ("SELECT count(*), count(DISTINCT message_id), sum(numeric_value), "
                 "count(DISTINCT message_id || '/' || CAST(set_id AS VARCHAR)) "
                 "FROM bronze.hl7_observations")
        quarantined = medlake.rows("SELECT count(*) FROM bronze.hl7_quarantine")[0][0]
        if quarantined != "0":
            sys.exit(f"mllp leg: {quarantined} messages quarantined")
    else:
        query = ("SELECT count(*), count(DISTINCT device_id || '/' || CAST(taken_at AS VARCHAR)), "
                 "sum(value), count(DISTINCT device_id || '/' || metric || '/' || "
                 "CAST(taken_at AS VARCHAR)) FROM bronze.readings_push")
    t = time.perf_counter()
    rows, messages, total, distinct = medlake.rows(query)[0]
    count_ms.append((time.perf_counter() - t) * 1000)
    if int(rows) != expected_rows or int(messages) != len(acked_messages) or int(distinct) != expected_rows:
        sys.exit(f"{door} leg stored {rows} rows of {messages} messages ({distinct} distinct "
                 f"readings); expected {expected_rows} of {len(acked_messages)}")
    if abs(float(total) - expected_sum) > 1e-6 * max(1.0, expected_sum):
        sys.exit(f"{door} leg: the stored values sum to {total}, expected {expected_sum}")
    return int(rows)


def leg(args, work, door, connections, fsync, readings, frames, bodies):
    """One door at one connection count: the first `--messages` messages of the set with one
    connection, the first `--concurrent-messages` with more."""
    count = args.messages if connections == 1 else args.concurrent_messages
    readings, frames, bodies = readings[:count], frames[:count], bodies[:count]
    name = f"{door}-{connections}{'-fsync' if fsync else ''}"
    warehouse = work / f"warehouse-{name}"
    free = shutil.disk_usage(work).free
    if free < args.min_free_gb * 2**30:
        sys.exit(f"{name}: only {free / 2**30:.1f} GiB free in {work} (--min-free-gb {args.min_free_gb})")
    medlake = Medlake(args.bin, warehouse)
    if door == "http":
        medlake.run("CREATE SCHEMA IF NOT EXISTS bronze", readings_push_ddl())
    env = {"MEDLAKE_FSYNC": "on"} if fsync else {"MEDLAKE_FSYNC": "off"}
    server = Serve(args.bin, warehouse, work / f"serve-{name}.log", env)
    load_before = load_average()
    try:
        if door == "mllp":
            jobs = [(frames[i], readings[i][0].encode()) for i in range(len(readings))]
            answer, port = mllp_answer, server.found["hl7 mllp"]
        else:
            port = server.found["http"]
            jobs = [(http_request("127.0.0.1", port, readings[i][0], bodies[i]), 4)
                    for i in range(len(readings))]
            answer = http_answer
        server_cpu0 = server.cpu_seconds()
        try:
            seconds, latencies, acked, acked_at, retries, duplicates, client_cpu = drive(
                port, connections, jobs, answer, args.max_seconds)
        except LoadFailed as e:
            server.stop()
            tail = (work / f"serve-{name}.log").read_text(errors="replace").splitlines()[-20:]
            sys.exit(f"{name}: {e}\nthe server's log ends:\n" + "\n".join(tail))
        server_cpu = server.cpu_seconds() - server_cpu0
    finally:
        server.stop()
    table = "bronze.hl7_observations" if door == "mllp" else "bronze.readings_push"
    count_ms = []
    stored = verify(medlake, door, acked, readings, count_ms)
    commits, rows_written = history(medlake, table)
    if rows_written != stored:
        sys.exit(f"{name}: DESCRIBE HISTORY counts {rows_written} rows written, the table holds {stored}")
    size = sum(f.stat().st_size for f in warehouse.rglob("*") if f.is_file())
    # Nothing of a leg is kept once checked: a 1-connection leg leaves ~20,000 commits (and as
    # many audit commits) behind, which a small disk notices.
    shutil.rmtree(warehouse, ignore_errors=True)
    first, last = tenths(acked_at)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    result = {
        "leg": name, "door": door, "connections": connections, "fsync": fsync,
        "messages": len(acked), "capped": len(acked) < len(readings),
        "seconds": seconds, "messages_per_s": len(acked) / seconds,
        "readings_per_s": 4 * len(acked) / seconds,
        "messages_per_s_first_tenth": first, "messages_per_s_last_tenth": last,
        "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": latencies[-1] * 1000,
        "retries": retries, "retries_answered_duplicate": duplicates,
        "warehouse_bytes": size, "commits": commits, "messages_per_commit": len(acked) / max(1, commits),
        "rows_stored": stored,
        "client_cpu_s": client_cpu, "client_cpu_pct_of_a_core": 100 * client_cpu / seconds,
        "server_cpu_s": server_cpu, "server_cpu_cores": server_cpu / seconds,
        "load_average_before": load_before, "load_average_after": load_average(),
    }
    print(f"{name}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})}",
          file=sys.stderr)
    return result


def mllp(args):
    connection_counts = [int(c) for c in args.connections.split(",")]
    fsync_modes = {"off": [False], "on": [True], "both": [False, True]}[args.fsync]
    readings = reading_set(max(args.messages, args.concurrent_messages), args.devices)
    t = time.perf_counter()
    messages = [hl7_message(*r) for r in readings]
    check_hl7_with_library(messages[0])
    frames = [mllp_frame(m) for m in messages]
    bodies = [ndjson_body(*r[1:]) for r in readings]
    print(f"built {len(frames)} ORU^R01 frames (mean {sum(map(len, frames)) / len(frames):.0f} B) and "
          f"NDJSON bodies (mean {sum(map(len, bodies)) / len(bodies):.0f} B) in "
          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-mllp-"))
    legs = []
    try:
        for fsync in fsync_modes:
            for connections in connection_counts:
                for door in ["mllp", "http"]:
                    legs.append(leg(args, work, door, connections, fsync, readings, frames, bodies))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, legs)


def rate(x):
    return "-" if x is None else f"{x:,.0f}"


def report(args, legs):
    result = {
        "workload": "mllp", "command": " ".join(sys.argv), "messages": args.messages,
        "concurrent_messages": args.concurrent_messages,
        "devices": args.devices, "readings_per_message": 4, "legs": legs,
        "medlake": {"binary": args.bin, "build": build_of(args.bin)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    rows = ["| door | connections | fsync | messages | messages/s | p50 ms | p99 ms | commits | "
            "messages/commit | retries | server CPU (cores) | client CPU (% of a core) | "
            "messages/s first → last tenth | warehouse MiB |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for x in legs:
        rows.append(
            f"| {'MLLP (ORU^R01)' if x['door'] == 'mllp' else 'HTTP (NDJSON)'} | {x['connections']} | "
            f"{'on' if x['fsync'] else 'off'} | {x['messages']:,}{' (capped)' if x['capped'] else ''} | "
            f"{x['messages_per_s']:,.0f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['commits']:,} | "
            f"{x['messages_per_commit']:.1f} | {x['retries']}"
            f"{' (%d dup.)' % x['retries_answered_duplicate'] if x['retries_answered_duplicate'] else ''} | {x['server_cpu_cores']:.2f} | "
            f"{x['client_cpu_pct_of_a_core']:.0f} | {rate(x['messages_per_s_first_tenth'])} → "
            f"{rate(x['messages_per_s_last_tenth'])} | {x['warehouse_bytes'] / 2**20:,.0f} |")
    ratios = []
    for x in legs:
        if x["door"] == "mllp":
            peer = next((y for y in legs if y["door"] == "http" and y["connections"] == x["connections"]
                         and y["fsync"] == x["fsync"]), None)
            if peer:
                ratios.append(f"MLLP / HTTP at {x['connections']} connection(s), fsync "
                              f"{'on' if x['fsync'] else 'off'}: "
                              f"{x['messages_per_s'] / peer['messages_per_s']:.2f}x messages/s")
    table = "\n".join([
        f"One message = one ORU^R01 with 4 OBX (MLLP) = one POST of the same 4 readings as NDJSON "
        f"with an Idempotency-Key (HTTP); one message in flight per connection; acknowledged = "
        f"ACK AA / HTTP 200, each after its Delta commit. Every leg's table checked afterwards: "
        f"4 rows per acknowledged message, each once, values' sum equal.",
        "", *rows, "", *[f"- {r}" for r in ratios]])
    intro = (f"`{result['command']}` on {os.cpu_count()} cores (client and server share them): "
             f"{args.messages:,} messages per 1-connection leg, {args.concurrent_messages:,} per "
             f"leg with more, from {args.devices} monitors; fsync {args.fsync}; a leg stops taking "
             f"messages after {args.max_seconds:g} s (capped); a fresh warehouse and "
             f"`medlake serve` per leg.")
    write_result(args, "mllp", result, table, intro)


def add_parser(sub):
    p = workload_parser(sub, "mllp", "HL7 v2 over MLLP vs the HTTP door: messages/s acknowledged durably")
    p.add_argument("--messages", type=int, default=20_000,
                   help="messages (4 readings each) per leg with one connection")
    p.add_argument("--concurrent-messages", type=int, default=200_000,
                   help="messages per leg with more than one connection")
    p.add_argument("--connections", default="1,64", help="comma-separated connection counts")
    p.add_argument("--devices", type=int, default=200, help="monitors the messages come from")
    p.add_argument("--fsync", choices=["off", "on", "both"], default="both",
                   help="MEDLAKE_FSYNC for the server (both: every leg twice)")
    p.add_argument("--min-free-gb", type=float, default=5,
                   help="a leg does not start with less free disk than this")
    p.add_argument("--max-seconds", type=float, default=180,
                   help="a leg stops taking new messages after this long (reported as capped)")
