"""alerting: reading acknowledged -> alert delivered. `medlake serve` takes live 1 Hz readings
from `--devices` bedside devices over the HTTP door (gateways posting NDJSON every second) into
a bronze table holding `--history` earlier readings; a silver view and a gold per-patient-hour
view are `REFRESH ON CHANGE`; an alert rule on gold (`lowest SpO2 < 88`) notifies a webhook
(a receiver in this process, HMAC-checked). Every `--probe-every` seconds one probe reading
(SpO2 80 for a new patient) is posted among the live load: its latency is from the HTTP door's
200 (the reading is committed) to the webhook's receipt of the alert for that patient.

    python benches/run.py alerting --bin target/release/medlake [--devices 400] [--seconds 120]
"""

import hashlib
import hmac
import http.client
import http.server
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import Medlake, build_of, load_average, workload_parser, write_result

SECRET = "bench-signing-key"
SETUP = [
    """CREATE TABLE bronze.readings_push (device_id VARCHAR NOT NULL, patient_id BIGINT NOT NULL,
         metric VARCHAR NOT NULL, value DOUBLE, unit VARCHAR, taken_at TIMESTAMP NOT NULL)""",
    """INSERT INTO bronze.readings_push
       SELECT 'device-' || CAST(value % {devices} AS VARCHAR), 1000 + value % {devices},
              CASE WHEN value % 2 = 0 THEN 'spo2' ELSE 'heart_rate' END,
              CASE WHEN value % 2 = 0 THEN 97.0 ELSE 72.0 END, NULL,
              to_timestamp_millis(1764547200000 + value * 100)
       FROM range(0, {history})""",
    """CREATE MATERIALIZED VIEW silver.vitals REFRESH ON CHANGE AS
       SELECT device_id, patient_id, metric, value, taken_at, date_trunc('hour', taken_at) AS hour
       FROM bronze.readings_push WHERE value IS NOT NULL""",
    """CREATE MATERIALIZED VIEW gold.spo2_hourly REFRESH ON CHANGE AS
       SELECT patient_id, hour, min(value) AS lowest, count(*) AS readings
       FROM silver.vitals WHERE metric = 'spo2' GROUP BY patient_id, hour""",
    """CREATE ALERT spo2_low ON gold.spo2_hourly WHEN lowest < 88 KEY (patient_id, hour)
       SEVERITY 'high' NOTIFY 'bench'""",
]


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records when the alert of each patient arrives (signature checked)."""

    arrived = {}
    bad = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        now = time.perf_counter()
        parts = dict(p.split("=", 1) for p in self.headers.get("x-medlake-signature", "").split(",") if "=" in p)
        expected = hmac.new(SECRET.encode(), f"{parts.get('t')}.{body}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(parts.get("v1", ""), expected):
            Receiver.bad += 1
        else:
            patient = json.loads(body)["key"]["patient_id"]
            Receiver.arrived.setdefault(str(patient), now)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def post(port, rows):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = "\n".join(json.dumps(r) for r in rows)
    conn.request("POST", "/v1/ingest/bronze.readings_push", body,
                 {"content-type": "application/x-ndjson"})
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"ingest answered {response.status}")


def reading(device, patient, metric, value):
    return {"device_id": device, "patient_id": patient, "metric": metric, "value": value,
            "unit": None, "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}


def live_load(port, devices, gateways, stop, errors):
    """Each gateway posts one reading per device it serves every second."""
    def gateway(g):
        mine = [d for d in range(devices) if d % gateways == g]
        while not stop.is_set():
            started = time.perf_counter()
            try:
                post(port, [reading(f"device-{d}", 1000 + d, "spo2" if d % 2 == 0 else "heart_rate",
                                    97.0 if d % 2 == 0 else 72.0) for d in mine])
            except Exception as e:  # counted, not fatal: the run reports it
                errors.append(str(e))
            stop.wait(max(0.0, 1.0 - (time.perf_counter() - started)))
    threads = [threading.Thread(target=gateway, args=(g,), daemon=True) for g in range(gateways)]
    for t in threads:
        t.start()
    return threads


def alerting(args):
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-alerting-"))
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    serve = None
    try:
        medlake = Medlake(args.bin, work / "warehouse")
        medlake.run(*[s.format(devices=args.devices, history=args.history) for s in SETUP])
        config = work / "medlake.toml"
        config.write_text(f"""
[secrets]
BENCH_KEY = {{ env = "BENCH_WEBHOOK_KEY" }}
[sources]
allowed_hosts = ["127.0.0.1"]
[[webhooks]]
name = "bench"
url = "http://127.0.0.1:{receiver.server_address[1]}/alert"
secret = "BENCH_KEY"
""")
        log = open(work / "serve.log", "w+")
        serve = subprocess.Popen(
            [args.bin, "serve", "--warehouse", str(work / "warehouse"), "--config", str(config),
             "--insecure-no-auth", "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, BENCH_WEBHOOK_KEY=SECRET))
        port = None
        deadline = time.time() + 120
        while port is None:
            found = re.search(r"http on 127\.0\.0\.1:(\d+)", (work / "serve.log").read_text())
            if found:
                port = int(found.group(1))
            elif serve.poll() is not None or time.time() > deadline:
                sys.exit("medlake serve did not start:\n" + (work / "serve.log").read_text())
            else:
                time.sleep(0.2)
        stop, errors = threading.Event(), []
        threads = live_load(port, args.devices, args.gateways, stop, errors)
        time.sleep(args.warmup)
        acked = {}
        started = time.time()
        probe = 0
        while time.time() - started < args.seconds:
            patient = 900_000 + probe
            post(port, [reading(f"probe-{probe}", patient, "spo2", 80.0)])
            acked[str(patient)] = time.perf_counter()
            probe += 1
            time.sleep(args.probe_every)
        time.sleep(args.drain)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        latencies = sorted(Receiver.arrived[p] - t for p, t in acked.items() if p in Receiver.arrived)
        missing = len(acked) - len(latencies)
        report(args, latencies, missing, errors)
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
        receiver.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def quantile(values, q):
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def report(args, latencies, missing, errors):
    buckets = [0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, float("inf")]
    counts = [sum(1 for x in latencies if lo < x <= hi) for lo, hi in zip([0] + buckets, buckets)]
    summary = {"probes": len(latencies) + missing, "delivered": len(latencies), "missing": missing,
               "p50_s": quantile(latencies, 0.5), "p90_s": quantile(latencies, 0.9),
               "p99_s": quantile(latencies, 0.99), "max_s": latencies[-1] if latencies else None,
               "mean_s": statistics.mean(latencies) if latencies else None,
               "ingest_errors": len(errors), "bad_signatures": Receiver.bad}
    result = {"workload": "alerting", "command": " ".join(sys.argv), "devices": args.devices,
              "history_rows": args.history, "seconds": args.seconds, "summary": summary,
              "latencies_s": latencies,
              "medlake": {"binary": args.bin, "build": build_of(args.bin)},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_after": load_average()}}
    rows = ["| reading acknowledged -> webhook delivered | s |", "|---|---:|"]
    for name in ["p50_s", "p90_s", "p99_s", "max_s", "mean_s"]:
        value = summary[name]
        rows.append(f"| {name[:-2]} | {value:.2f} |" if value is not None else f"| {name[:-2]} | - |")
    histogram = ["", "| up to (s) | probes |", "|---:|---:|"]
    for bound, n in zip(buckets, counts):
        histogram.append(f"| {'more' if bound == float('inf') else bound} | {n} |")
    table = "\n".join([
        f"{summary['delivered']} of {summary['probes']} probe alerts delivered ({missing} missing), "
        f"{args.devices} devices pushing 1 Hz through {args.gateways} gateways over "
        f"{args.history:,} earlier readings; ingest errors {len(errors)}, bad signatures {Receiver.bad}:",
        "", *rows, *histogram])
    intro = (f"`{result['command']}` on {os.cpu_count()} cores: bronze (HTTP door) -> silver -> gold, "
             "both views REFRESH ON CHANGE, alert rule on gold, webhook on loopback.")
    write_result(args, "alerting", result, table, intro)


def add_parser(sub):
    a = workload_parser(sub, "alerting", "reading acknowledged -> alert webhook delivered, under live load")
    a.add_argument("--devices", type=int, default=400, help="devices pushing 1 reading a second")
    a.add_argument("--gateways", type=int, default=8, help="HTTP clients the devices post through")
    a.add_argument("--history", type=int, default=5_000_000, help="earlier readings in bronze")
    a.add_argument("--seconds", type=int, default=120, help="how long probes are sent")
    a.add_argument("--probe-every", type=float, default=2.0)
    a.add_argument("--warmup", type=float, default=10.0)
    a.add_argument("--drain", type=float, default=15.0, help="wait for the last probes' alerts")
