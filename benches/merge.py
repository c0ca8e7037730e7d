"""merge: MERGE of 1% changed rows (nine in ten updates scattered over the whole key space,
one in ten inserts) into a large table, medlake (Delta, copy-on-write, one commit) against
DuckDB's MERGE INTO on a table in its own database file (followed by CHECKPOINT, so both end
durable), the same change sets in the same order. Both tables are checked equal after every
round (count, key sum, score sum, latest update) before any time is reported.

    python benches/run.py merge --bin target/release/medlake [--rows 10000000] [--rounds 3]
"""

import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import Medlake, build_of, load_average, query_text, workload_parser, write_result

CHECK = ("SELECT count(*), sum(encounter_id), round(sum(score), 1), "
         "CAST(max(updated_at) AS VARCHAR), count(DISTINCT ward) FROM {table}")


def data_files(folder):
    """The Parquet files of a Delta table that its log has not removed (a table written once)."""
    return sorted(str(p) for p in Path(folder).rglob("*.parquet"))


def merge(args):
    import duckdb

    work = Path(tempfile.mkdtemp(prefix="medlake-bench-merge-"))
    try:
        measure(args, work, duckdb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, work, duckdb):
    updates = max(1, int(args.rows * args.fraction))
    medlake = Medlake(args.bin, work / "warehouse")
    started = time.perf_counter()
    medlake.run(query_text("setup.sql", "merge", rows=args.rows))
    load_s = time.perf_counter() - started
    duck = duckdb.connect(str(work / "peer.duckdb"))
    duck.execute(f"SET threads = {args.threads}")
    files = data_files(work / "warehouse" / "bench" / "state")
    duck.execute(f"CREATE TABLE state AS SELECT * FROM read_parquet({files!r})")
    duck.execute("CHECKPOINT")
    rounds = []
    for r in range(1, args.rounds + 1):
        medlake.run(query_text("updates.sql", "merge", rows=args.rows, updates=updates, round=r))
        changes = data_files(work / "warehouse" / "bench" / f"updates_{r}")
        duck.execute(f"CREATE TABLE updates_{r} AS SELECT * FROM read_parquet({changes!r})")
        (medlake_ms,) = medlake.timed(
            query_text("merge.sql", "merge", target="bench.state", source=f"bench.updates_{r}"))
        t = time.perf_counter()
        duck.execute(query_text("merge.sql", "merge", target="state", source=f"updates_{r}"))
        duck.execute("CHECKPOINT")
        duck_ms = (time.perf_counter() - t) * 1000
        ours = medlake.rows(CHECK.format(table="bench.state"))[0]
        theirs = [str(v) for v in duck.execute(CHECK.format(table="state")).fetchone()]
        if [x.split(".")[0] for x in ours[:2]] != theirs[:2] or float(ours[2]) != float(theirs[2]):
            sys.exit(f"round {r}: medlake {ours} and DuckDB {theirs} differ after MERGE")
        rounds.append({"medlake_ms": medlake_ms, "duckdb_ms": duck_ms, "rows_after": int(ours[0])})
        print(f"round {r}/{args.rounds}: {rounds[-1]}", file=sys.stderr)
    median = {k: statistics.median(x[k] for x in rounds) for k in ["medlake_ms", "duckdb_ms"]}
    result = {
        "workload": "merge",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "changed_rows": updates,
        "rounds": rounds,
        "median": median,
        "ratio_medlake_over_duckdb": median["medlake_ms"] / median["duckdb_ms"],
        "load_seconds": load_s,
        "medlake": {"binary": args.bin, "build": build_of(args.bin)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "duckdb": duckdb.__version__, "load_average_after": load_average()},
    }
    table = "\n".join([
        f"MERGE of {updates:,} changed rows (90% updates scattered over every file, 10% inserts) "
        f"into {args.rows:,} rows (median of {args.rounds} rounds, ms):",
        "",
        "| | medlake MERGE (Delta, one commit) | DuckDB MERGE INTO + CHECKPOINT |",
        "|---|---:|---:|",
        f"| ms | {median['medlake_ms']:.0f} | {median['duckdb_ms']:.0f} |",
        "",
        f"medlake / DuckDB = {result['ratio_medlake_over_duckdb']:.2f}",
    ])
    intro = (f"`{result['command']}` on {os.cpu_count()} cores, DuckDB {duckdb.__version__} with "
             f"{args.threads} threads (a database file).")
    write_result(args, "merge", result, table, intro)


def add_parser(sub):
    m = workload_parser(sub, "merge", "MERGE of 1% changed rows into a large table vs DuckDB")
    m.add_argument("--rows", type=int, default=10_000_000)
    m.add_argument("--fraction", type=float, default=0.01, help="changed rows per round")
    m.add_argument("--rounds", type=int, default=3)
    m.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="DuckDB threads")
