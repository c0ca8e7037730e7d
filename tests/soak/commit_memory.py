#!/usr/bin/env python3
"""The soak's memory finding, reduced: `medlake serve` on an empty warehouse and one HTTP
client appending 5-row batches to one table back to back (each waits for its 200), the
server's anonymous RSS printed every 15 s against the batches committed. A server whose memory
does not depend on how many commits a table has had stays flat after its first seconds.

    MEDLAKE_BIN=~/.cache/medlake-target/debug/medlake \\
        ~/.cache/medlake-venv/bin/python tests/soak/commit_memory.py --seconds 180 [--no-audit] \\
        [--optimize-every 30]

--no-audit serves with `[audit] enabled = false` (no system.audit commit per batch);
--optimize-every N runs OPTIMIZE on the table every N s (conflicts with a concurrent append,
40001, are retried and counted). Loopback, port 0; the server is stopped with SIGTERM at the end.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=os.environ.get("MEDLAKE_BIN"))
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--optimize-every", type=float, default=0)
    args = parser.parse_args()
    if not args.bin or not os.path.exists(args.bin):
        sys.exit("MEDLAKE_BIN (or --bin) must point at the medlake binary")
    root = tempfile.mkdtemp(prefix="medlake-commit-memory-")
    warehouse = os.path.join(root, "warehouse")
    subprocess.run([args.bin, "sql", "--warehouse", warehouse, "-c",
                    "CREATE TABLE bronze.t (k VARCHAR NOT NULL, seq INT NOT NULL, v DOUBLE)"],
                   check=True, capture_output=True)
    config = os.path.join(root, "medlake.toml")
    with open(config, "w") as f:
        f.write("[audit]\nenabled = false\n" if args.no_audit else "")
    server = subprocess.Popen(
        [args.bin, "serve", "--warehouse", warehouse, "--config", config, "--insecure-no-auth",
         "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=open(os.path.join(root, "serve.log"), "w"), text=True)
    try:
        run(args, server)
    finally:
        died = server.poll()
        server.terminate()
        server.wait(60)
    if died is not None:
        sys.exit(f"medlake serve exited with {died} during the run; its log: {root}/serve.log")
    shutil.rmtree(root, ignore_errors=True)


def run(args, server):
    doors = {}
    for line in server.stdout:
        m = re.match(r"medlake serve: (postgres|flight sql|http) on (\S+):(\d+)", line)
        if m:
            doors[m.group(1)] = (m.group(2), int(m.group(3)))
        if len(doors) == 3:
            break
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    url = "http://%s:%d/v1/ingest/bronze.t" % doors["http"]
    stop = threading.Event()
    done = {"batches": 0, "optimized": 0, "optimize_conflicts": 0}

    def ingest():
        i = 0
        while not stop.is_set():
            i += 1
            body = "".join(json.dumps({"k": f"b{i}", "seq": j, "v": j * 1.5}) + "\n" for j in range(5)).encode()
            request = urllib.request.Request(url, data=body, method="POST", headers={
                "Content-Type": "application/x-ndjson", "Idempotency-Key": f"k{i}"})
            urllib.request.urlopen(request, timeout=120).read()
            done["batches"] += 1

    def optimize():
        host, port = doors["postgres"]
        conn = psycopg.connect(host=host, port=port, user="memory", dbname="medlake", autocommit=True)
        while not stop.wait(args.optimize_every):
            try:
                conn.execute("OPTIMIZE bronze.t")
                done["optimized"] += 1
            except psycopg.errors.SerializationFailure:
                done["optimize_conflicts"] += 1
            except psycopg.OperationalError:
                if stop.is_set():  # the server is being stopped with an OPTIMIZE running
                    return
                raise

    threading.Thread(target=ingest, daemon=True).start()
    if args.optimize_every:
        threading.Thread(target=optimize, daemon=True).start()
    started = time.monotonic()
    while server.poll() is None:
        with open(f"/proc/{server.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        elapsed = time.monotonic() - started
        print(f"{elapsed:6.0f} s  {done['batches']:6d} batches  rss_anon {int(status['RssAnon'].split()[0]) // 1024:5d} MiB"
              f"  threads {status['Threads'].strip()}"
              + (f"  optimized {done['optimized']} (conflicts {done['optimize_conflicts']})" if args.optimize_every else ""),
              flush=True)
        if elapsed >= args.seconds:
            break
        time.sleep(15)
    stop.set()


if __name__ == "__main__":
    main()
