"""threshold: where an incremental refresh of a grouped view stops paying. A table of vital
signs clustered by patient, a view grouped by patient and metric twice (REFRESH POLICY
INCREMENTAL and REFRESH POLICY FULL); each round UPDATEs the readings of a growing share of
the patients and times both refreshes. The change fraction is what REFRESH POLICY AUTO weighs
(rows inserted plus removed by the input's commits, over its rows: an UPDATE's pre- and
post-images count twice); the crossover is the first fraction at which the incremental
refresh takes as long as the full one, which is what `AUTO_FULL_FRACTION`
(crates/views/src/refresh.rs) should be. Both views are checked equal every round.

    python benches/run.py threshold --bin target/release/medlake [--rows 10000000]
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

PATIENTS = 20_000
COLUMNS = "patient_id, metric, readings, minimum, maximum"


def threshold(args):
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-threshold-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def differ(medlake):
    signed = (f"SELECT {COLUMNS}, 1 AS side FROM gold.patient_stats UNION ALL "
              f"SELECT {COLUMNS}, -1 AS side FROM gold.patient_stats_full")
    return int(medlake.rows(f"SELECT count(*) FROM (SELECT {COLUMNS} FROM ({signed}) "
                            f"GROUP BY {COLUMNS} HAVING sum(side) <> 0)")[0][0])


def measure(args, work):
    medlake = Medlake(args.bin, work / "warehouse")
    started = time.perf_counter()
    medlake.run(query_text("setup.sql", "threshold", rows=args.rows))
    load_s = time.perf_counter() - started
    rows = int(medlake.rows("SELECT count(*) FROM bronze.vitals")[0][0])
    rounds = []
    for r, share in enumerate(args.shares):
        patients = max(1, int(PATIENTS * share))
        # A new value for every reading of the first `patients` patients (one commit).
        medlake.run(f"UPDATE bronze.vitals SET value = value + 1 WHERE patient_id < {patients}")
        plan = medlake.rows("EXPLAIN REFRESH MATERIALIZED VIEW gold.patient_stats")[0]
        inserted, removed = int(plan[7] or 0), int(plan[8] or 0)
        samples = []
        for _ in range(args.repeat):
            incremental_ms, full_ms = medlake.timed(
                "REFRESH MATERIALIZED VIEW gold.patient_stats",
                "REFRESH MATERIALIZED VIEW gold.patient_stats_full",
            )
            samples.append((incremental_ms, full_ms))
            # The next sample refreshes the same change again: restore the input's value.
            medlake.run(f"UPDATE bronze.vitals SET value = value - 1 WHERE patient_id < {patients}")
            medlake.run("REFRESH MATERIALIZED VIEW gold.patient_stats",
                        "REFRESH MATERIALIZED VIEW gold.patient_stats_full")
            medlake.run(f"UPDATE bronze.vitals SET value = value + 1 WHERE patient_id < {patients}")
        medlake.run("REFRESH MATERIALIZED VIEW gold.patient_stats",
                    "REFRESH MATERIALIZED VIEW gold.patient_stats_full")
        modes = medlake.rows(
            "SELECT mode, reason FROM system.refreshes WHERE view = 'gold.patient_stats' "
            "ORDER BY started DESC LIMIT 1")
        if modes[0][0] != "incremental":
            sys.exit(f"round {r}: gold.patient_stats was not refreshed incrementally: {modes}")
        if differ(medlake):
            sys.exit(f"round {r}: the incremental and the full view differ")
        incremental_ms = statistics.median(s[0] for s in samples)
        full_ms = statistics.median(s[1] for s in samples)
        rounds.append({
            "patients_updated": patients,
            "rows_updated": removed,
            "change_fraction": (inserted + removed) / rows,
            "incremental_ms": incremental_ms,
            "full_ms": full_ms,
            "ratio": incremental_ms / full_ms,
        })
        print(f"round {r + 1}/{len(args.shares)}: {rounds[-1]}", file=sys.stderr)
    crossover = next((x["change_fraction"] for x in rounds if x["ratio"] >= 1.0), None)
    result = {
        "workload": "threshold",
        "command": " ".join(sys.argv),
        "rows": rows,
        "rounds": rounds,
        "crossover_change_fraction": crossover,
        "load_seconds": load_s,
        "medlake": {"binary": args.bin, "build": build_of(args.bin)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_after": load_average()},
    }
    lines = [
        f"UPDATE of every reading of a share of 20,000 patients in {rows:,} rows clustered by patient, then "
        f"REFRESH of `GROUP BY patient_id, metric` (median of {args.repeat}, ms):",
        "",
        "| patients updated | change fraction (AUTO's) | incremental | FULL | incremental / FULL |",
        "|---:|---:|---:|---:|---:|",
    ]
    for x in rounds:
        lines.append(f"| {x['patients_updated']:,} | {x['change_fraction']:.1%} | {x['incremental_ms']:.0f} "
                     f"| {x['full_ms']:.0f} | {x['ratio']:.2f} |")
    lines.append("")
    lines.append("crossover (first change fraction where incremental ≥ FULL): "
                 + (f"{crossover:.1%}" if crossover is not None else "none up to the largest share"))
    intro = f"`{result['command']}` on {os.cpu_count()} cores."
    write_result(args, "threshold", result, "\n".join(lines), intro)


def add_parser(sub):
    t = workload_parser(sub, "threshold",
                        "incremental vs FULL refresh of a grouped view as the changed share grows")
    t.add_argument("--rows", type=int, default=10_000_000)
    t.add_argument("--shares", type=float, nargs="+",
                   default=[0.005, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5],
                   help="shares of the patients whose readings each round updates")
    t.add_argument("--repeat", type=int, default=1, help="samples per share (median)")
