#!/usr/bin/env python3
"""medlake benchmarks. Each workload is a subcommand; results go to results/<workload>.json and
a Markdown table to stdout (and RESULTS.md with --write-md). Peers run in the same process,
on the same data, in the same run.

    python benches/run.py refresh --bin target/release/medlake [--rows 10000000] [--rounds 3]

refresh: incremental vs full REFRESH MATERIALIZED VIEW after appending 1% to a bronze table,
with DuckDB recomputing the same gold table from bronze's Parquet files as the peer.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sql_file(name, **values):
    text = (HERE / "refresh" / name).read_text()
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
        (HERE / "RESULTS.md").write_text(
            "# Benchmark results\n\n## refresh\n\n"
            f"`{result['command']}` on {os.cpu_count()} cores, DuckDB {duckdb.__version__} "
            f"with {args.threads} threads.\n\n{table}\n"
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
    args = parser.parse_args()
    {"refresh": refresh}[args.workload](args)


if __name__ == "__main__":
    main()
