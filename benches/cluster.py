"""cluster (issue 28): the medallion's full refresh (bronze -> silver -> gold, the medallion
workload's SQL and data) on the embedded engine and on a Ballista cluster of 1, 2 and 3
executors started by the runner on this machine (`medlake scheduler`, `medlake executor`,
mutual TLS), with `medlake sql --cluster`. Every run's gold is checked against the embedded
engine's before any time is reported, and the server's log must show that the refreshes'
queries ran on the cluster and that the executors wrote the data files."""

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Medlake, build_of, load_average, query_text, sql_file, workload_parser, write_result

REFRESHES = ("REFRESH MATERIALIZED VIEW silver.readings FULL",
             "REFRESH MATERIALIZED VIEW gold.patient_daily FULL")
GOLD_CHECK = ("SELECT count(*) AS n, sum(event_count) AS events, sum(avg_reading) AS readings "
              "FROM gold.patient_daily")


class Member:
    """A `medlake scheduler` or `medlake executor` process, its log in a file."""

    def __init__(self, binary, args, env, log, ready, timeout=60):
        self.log_path = log
        self.log = open(log, "w")
        self.process = subprocess.Popen([binary, *args], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while ready not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"{args[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Clustered(Medlake):
    """`medlake sql --cluster ADDRESS`, its log (info) kept to check where the work ran."""

    def __init__(self, binary, warehouse, address, env, log):
        super().__init__(binary, warehouse)
        self.address, self.env, self.log = address, env, log

    def run(self, *statements, timing=False, csv=False):
        args = [self.binary, "sql", "--warehouse", str(self.warehouse), "--cluster", self.address]
        if timing:
            args.append("--timing")
        if csv:
            args += ["--format", "csv"]
        args += [f"--command={s}" for s in statements]
        done = subprocess.run(args, capture_output=True, text=True, env=self.env)
        with open(self.log, "a") as log:
            log.write(done.stderr)
        if done.returncode != 0:
            sys.exit(f"medlake --cluster failed: {done.stderr.strip()[-3000:]}\nstatements: {statements}")
        return done.stdout


def certificates(folder):
    """A throwaway cluster CA and one member certificate (every member uses it)."""
    import trustme

    ca = trustme.CA()
    member = ca.issue_cert("localhost", "127.0.0.1")
    member.private_key_pem.write_to_path(str(folder / "member.key"))
    member.cert_chain_pems[0].write_to_path(str(folder / "member.crt"))
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    return {"MEDLAKE_CLUSTER_CA": str(folder / "ca.crt"), "MEDLAKE_CLUSTER_CERT": str(folder / "member.crt"),
            "MEDLAKE_CLUSTER_KEY": str(folder / "member.key")}


def gold_of(medlake):
    n, events, readings = medlake.rows(GOLD_CHECK)[0]
    return int(n), int(events), float(readings)


def same_gold(a, b):
    return a[:2] == b[:2] and abs(a[2] - b[2]) <= 1e-9 * max(1.0, abs(a[2]))


def on_cluster(args, work, warehouse, env, executors, expected):
    """The rounds on a fresh cluster of `executors` executors; their times in ms."""
    members = []
    log = work / f"server-{executors}.log"
    try:
        scheduler = Member(args.bin, ["scheduler", "--bind", "127.0.0.1:0"], env,
                           work / f"scheduler-{executors}.log", "scheduler listening on")
        members.append(scheduler)
        address = re.search(r"ballista://127\.0\.0\.1:\d+", scheduler.log_path.read_text()).group(0)
        for i in range(executors):
            folder = work / f"executor-{executors}-{i}"
            folder.mkdir()
            members.append(Member(args.bin, ["executor", "--scheduler", address, "--bind", "127.0.0.1:0",
                                             "--vcores", str(args.vcores), "--work-dir", str(folder),
                                             "--warehouse", str(warehouse)],
                                  env, work / f"executor-{executors}-{i}.log", "executor serving on"))
        medlake = Clustered(args.bin, warehouse, address, env, log)
        rounds = []
        for r in range(args.rounds):
            print(f"cluster: {executors} executor(s), round {r + 1}/{args.rounds}", file=sys.stderr)
            silver_ms, gold_ms = medlake.timed(*REFRESHES)
            rounds.append({"silver_ms": silver_ms, "gold_ms": gold_ms})
        text = log.read_text()
        for proof in ["a refresh query runs on the cluster", "the cluster wrote the refresh's data files"]:
            if text.count(proof) < 2 * args.rounds:
                sys.exit(f"the refreshes on {executors} executor(s) did not all say '{proof}':\n{text[-3000:]}")
        got = gold_of(Medlake(args.bin, warehouse))
        if not same_gold(got, expected):
            sys.exit(f"gold on {executors} executor(s) differs from the embedded engine's: {got} vs {expected}")
        return rounds
    finally:
        for member in reversed(members):
            member.stop()
        # Shuffle files of a stopped cluster: gigabytes at 100M rows.
        for i in range(executors):
            shutil.rmtree(work / f"executor-{executors}-{i}", ignore_errors=True)


def cluster(args):
    if args.rows // args.patients >= 2_592_000:
        sys.exit("at most 2,591,999 readings per patient: a patient's readings are seconds of 30 days")
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-cluster-"))
    load_before = load_average()
    try:
        warehouse = work / "warehouse"
        medlake = Medlake(args.bin, warehouse)
        t = time.perf_counter()
        medlake.run(sql_file("setup.sql", "medallion", rows=args.rows, patients=args.patients))
        generate_s = time.perf_counter() - t
        silver_sql = query_text("silver.sql", "medallion", readings="bronze.readings", devices="bronze.devices")
        gold_sql = query_text("gold.sql", "medallion", silver="silver.readings")
        medlake.run(f"CREATE MATERIALIZED VIEW silver.readings AS {silver_sql}",
                    f"CREATE MATERIALIZED VIEW gold.patient_daily AS {gold_sql}")
        expected = gold_of(medlake)
        runs = {"embedded": []}
        for r in range(args.rounds):
            print(f"cluster: embedded, round {r + 1}/{args.rounds}", file=sys.stderr)
            silver_ms, gold_ms = medlake.timed(*REFRESHES)
            runs["embedded"].append({"silver_ms": silver_ms, "gold_ms": gold_ms})
        if not same_gold(gold_of(medlake), expected):
            sys.exit("the embedded engine's gold changed between refreshes")
        (work / "tls").mkdir()
        env = dict(os.environ, **certificates(work / "tls"), MEDLAKE_LOG="info")
        for n in args.executors:
            # The earlier refreshes' files (a silver of 100M rows is gigabytes), not timed.
            medlake.run("VACUUM silver.readings RETAIN 0 HOURS FORCE",
                        "VACUUM gold.patient_daily RETAIN 0 HOURS FORCE")
            runs[f"{n} executor{'s' if n > 1 else ''}"] = on_cluster(args, work, warehouse, env, n, expected)
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cores = os.cpu_count() or 1
    median = {}
    for name, rounds in runs.items():
        m = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        m["total_ms"] = m["silver_ms"] + m["gold_ms"]
        # Bronze rows through silver and gold per second, and per core of this machine (every
        # configuration shares its cores).
        m["rows_per_s"] = args.rows / (m["total_ms"] / 1000)
        m["rows_per_s_per_core"] = m["rows_per_s"] / cores
        median[name] = m
    embedded = median["embedded"]["total_ms"]
    for m in median.values():
        m["over_embedded"] = m["total_ms"] / embedded
    per_core = min(m["rows_per_s_per_core"] for n, m in median.items() if n != "embedded")
    result = {
        "workload": "cluster",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "patients": args.patients,
        "executors": args.executors,
        "vcores_per_executor": args.vcores,
        "gold": {"rows": expected[0], "events": expected[1]},
        "runs": runs,
        "median": median,
        "setup_seconds": {"medlake_generate": generate_s},
        "medlake": {"version": version, "build": build_of(args.bin)},
        "machine": {"cpus": cores, "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": load_average()},
    }
    lines = [
        f"{args.rows:,} bronze readings ({args.patients:,} patients, 30 days, 2% re-sent) → silver → "
        f"{expected[0]:,} gold rows, `REFRESH MATERIALIZED VIEW ... FULL` of both, median of {args.rounds} "
        f"round{'s' if args.rounds > 1 else ''}; every cluster's gold checked equal to the embedded engine's:",
        "",
        "| where | silver ms | gold ms | total ms | / embedded | bronze rows/s | rows/s per core |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in median.items():
        lines.append(f"| {name} | {m['silver_ms']:,.0f} | {m['gold_ms']:,.0f} | {m['total_ms']:,.0f} | "
                     f"{m['over_embedded']:.2f} | {m['rows_per_s']:,.0f} | {m['rows_per_s_per_core']:,.0f} |")
    lines += [
        "",
        f"All on one machine of {cores} cores: the scheduler, every executor ({args.vcores} task slots each) and "
        "the coordinating `medlake sql --cluster` share them, so more executors add no cores here; the table "
        "shows the cluster's cost over the embedded engine (shuffles through files and Arrow Flight, TLS, "
        "a scheduler round trip per stage), not scaling. Capacity model: benches/README.md, from the slowest "
        f"cluster row's {per_core:,.0f} bronze rows/s per core.",
        "",
        f"Machine load average (1/5/15 min) before: {load_before}, after: {result['machine']['load_average_after']}.",
    ]
    write_result(args, "cluster", result, "\n".join(lines), f"`{result['command']}` on {cores} cores.")


def add_parser(sub):
    c = workload_parser(sub, "cluster", "the medallion's full refresh embedded and on 1, 2, 3 Ballista executors")
    c.add_argument("--rows", type=int, default=10_000_000, help="bronze readings (100M: --rows 100000000)")
    c.add_argument("--patients", type=int, default=10_000, help="patients the readings are spread over")
    c.add_argument("--rounds", type=int, default=1, help="timed rounds per configuration; the median is reported")
    c.add_argument("--executors", type=int, nargs="+", default=[1, 2, 3], help="cluster sizes to run")
    c.add_argument("--vcores", type=int, default=os.cpu_count() or 2, help="task slots per executor")
