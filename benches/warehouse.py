"""warehouse (P3): the reference warehouse (`medlake quickstart`'s sources and every view of
sql/) after one percent more in every source: a CASCADE refresh of every view (incremental
where medlake can) against a FULL CASCADE refresh of the same views over the same data.
Every view's incremental result is checked equal to its FULL result (floats to 6 decimals)
before any time is reported.

    python benches/run.py warehouse --bin target/release/medlake            # default scale
    python benches/run.py warehouse --bin ... --patients 10 --hours 3 --rate 0.2   # small

The views key their days by the hospital's local date (`local_date()`), so the share of the
quickstart's 24 hours that falls on "today" (what a --recent append touches) grows through the
day: about 40% at 09:00, 60% at 14:00 (session 41). Every medlake process of the run therefore
uses a fixed-offset clinical time zone (`MEDLAKE_TIME_ZONE=Etc/GMT...`) chosen so that the local
time at the start is --local-hour (12 by default: today holds about half of the 24 hours,
the average over a day), and runs at any hour compare.
"""

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import HERE, Medlake, build_of, load_average, sql_file, workload_parser, write_result

# The views of sql/alerts/operations.sql: their queries read now() (the CLI test
# every_view_refreshes_incrementally_after_one_percent_more_in_every_source skips them too).
CLOCK_VIEWS = {"gold.silent_devices", "gold.unacknowledged_alarms"}
FLOATS = {"double", "float", "real", "double precision", "float64", "float32"}


def run(args, what):
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{what} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return seconds


def one_percent_more_files(landing):
    """New landing files: a copy of the newest CSV and Parquet batch, a document, a DICOM."""
    for kind in ["csv", "parquet"]:
        folder = landing / "readings" / kind
        latest = sorted(p for p in folder.iterdir() if p.is_dir())[-1]
        nxt = folder / (latest.name[:-2] + "59")
        shutil.copytree(latest, nxt)
    documents = landing / "documents"
    document = sorted(documents.iterdir())[0]
    shutil.copy(document, documents / "MRN0009999_discharge_letter.pdf")
    pacs = landing / "pacs-export"
    study = sorted(p for p in pacs.iterdir() if p.is_dir())[0]
    image = sorted(study.iterdir())[0]
    (pacs / "second-export").mkdir()
    shutil.copy(image, pacs / "second-export" / "1.dcm")


def one_percent_more(args):
    """append.sql; with --recent, its time series from append_recent.sql instead: the newest
    1% of the quickstart's hours again, after everything the warehouse holds."""
    spread = sql_file("append.sql", "warehouse")
    if not args.recent:
        return spread
    shift = max(1, round((args.hours or 24.0) * 3600 / 100))
    recent = sql_file("append_recent.sql", "warehouse", shift=shift)
    series = set(re.findall(r"INSERT INTO (\S+)", recent))
    kept = [s for s in spread.split(";")
            if s.strip() and not set(re.findall(r"INSERT INTO (\S+)", s)) & series]
    return ";".join(kept) + ";\n" + recent


def view_columns(medlake, view):
    schema, name = view.split(".")
    rows = medlake.rows(
        "SELECT column_name, data_type FROM information_schema.columns "
        f"WHERE table_schema = '{schema}' AND table_name = '{name}' ORDER BY ordinal_position"
    )
    return [f"round({c}, 6)" if t.lower() in FLOATS else c for c, t in rows]


def compare(medlake, views, versions, buckets=8):
    """Rows that differ between each view's incremental result (the version before the FULL
    refresh) and its FULL result: an aggregation of signed row counts (NULLs group together,
    duplicates count), in `buckets` slices by a hash of the first column so that it fits in
    memory (EXCEPT ALL of silver.readings' 35M rows needed more than 24 GiB; with
    MEDLAKE_MEMORY_LIMIT this aggregation failed while spilling: "No field named device_id")."""
    differ = {}
    for view in views:
        columns = view_columns(medlake, view)
        named = ", ".join(f"{c} AS c{i}" for i, c in enumerate(columns))
        keys = ", ".join(f"c{i}" for i in range(len(columns)))
        rows = int(medlake.rows(f"SELECT count(*) FROM {view}")[0][0])
        slices = buckets if rows > 1_000_000 else 1
        n = 0
        for k in range(slices):
            where = (f"WHERE ascii(md5(coalesce(CAST({columns[0]} AS VARCHAR), ''))) % {slices} = {k}"
                     if slices > 1 else "")
            signed = (f"SELECT {named}, 1 AS side FROM {view} VERSION AS OF {versions[view]} {where} "
                      f"UNION ALL SELECT {named}, -1 AS side FROM {view} {where}")
            n += int(medlake.rows(
                f"SELECT count(*) FROM (SELECT {keys} FROM ({signed}) GROUP BY {keys} "
                "HAVING sum(side) <> 0)")[0][0])
        if n:
            differ[view] = n
    return differ


def refreshes(medlake, after):
    """The refreshes recorded after the first `after`: view, mode, seconds, reason."""
    return medlake.rows(
        "SELECT view, mode, date_part('epoch', finished) - date_part('epoch', started), reason FROM "
        "(SELECT *, row_number() OVER (ORDER BY started, refresh_id) AS n FROM system.refreshes) "
        f"WHERE n > {after} AND mode <> 'none' ORDER BY started"
    )


def warehouse(args):
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-warehouse-"))
    try:
        measure(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def zone_at_local_hour(hour, utc=None):
    """The IANA fixed-offset zone (`Etc/GMT-3` is UTC+3) whose local hour is `hour` now."""
    import datetime

    utc = utc or datetime.datetime.now(datetime.timezone.utc)
    offset = math.floor(hour - (utc.hour + utc.minute / 60) + 0.5) % 24
    if offset > 14:
        offset -= 24
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def measure(args, work):
    if args.local_hour >= 0:
        # Inherited by every medlake process below (quickstart, refreshes, queries).
        os.environ["MEDLAKE_TIME_ZONE"] = zone_at_local_hour(args.local_hour)
    zone = os.environ.get("MEDLAKE_TIME_ZONE", "UTC")
    print(f"warehouse: clinical time zone {zone}", file=sys.stderr)
    qs = work / "qs"
    command = [args.bin, "quickstart", "--dir", str(qs), "--once", "--live-seconds", "3",
               "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    for flag in ["patients", "hours", "rate"]:
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    print(f"warehouse: {' '.join(command)}", file=sys.stderr)
    build_s = run(command, "quickstart")
    wh = qs / "warehouse"
    medlake = Medlake(args.bin, wh)
    readings = int(medlake.rows("SELECT count(*) FROM silver.readings")[0][0])
    views = [v for (v,) in medlake.rows(
        "SELECT schema || '.' || name FROM system.materialized_views ORDER BY 1")]
    one_percent_more_files(qs / "landing")
    started = time.perf_counter()
    medlake.run(one_percent_more(args))
    append_s = time.perf_counter() - started
    before = int(medlake.rows("SELECT count(*) FROM system.refreshes")[0][0])
    refresh = [args.bin, "refresh", "--cascade", "--warehouse", str(wh)]
    incremental_s = run(refresh + views, "incremental refresh")
    incremental = refreshes(medlake, before)
    # REFRESH POLICY AUTO recomputes a view whose incremental plan would read most of its
    # inputs (crates/views/src/cost.rs), and then the views over it, whose inputs changed
    # everywhere: counted apart, not a failure.
    auto_full = sorted({v for v, m, _, why in incremental
                        if m != "incremental" and "so REFRESH POLICY AUTO recomputes the view" in why})
    # A view whose query reads the clock (now(): sql/alerts/operations.sql) is recomputed at
    # every refresh, and a FULL refresh a moment later may rightly hold other rows: neither
    # counted as not incremental nor compared.
    clock = sorted({v for v, _, _, why in incremental if "changes over time" in why
                    or v in CLOCK_VIEWS})
    # A view whose inputs changed only in columns it does not read is current as it is.
    unseen = sorted({v for v, m, _, why in incremental
                     if m == "none" and "only in columns the view does not read" in why})
    full_views = sorted({v for v, m, _, _ in incremental if m != "incremental"}
                        - set(auto_full) - set(clock) - set(unseen))
    versions = dict(medlake.rows(
        "SELECT schema || '.' || name, table_version FROM system.materialized_views"))
    after = int(medlake.rows("SELECT count(*) FROM system.refreshes")[0][0])
    full_s = run(refresh + ["--full"] + views, "FULL refresh")
    full = refreshes(medlake, after)
    differ = compare(medlake, [v for v in views if v not in clock], versions)
    if differ:
        sys.exit(f"incremental and FULL results differ (rows): {differ}")

    def slowest(rows):
        return sorted(((v, m, float(s)) for v, m, s, _ in rows), key=lambda r: -r[2])[:5]

    result = {
        "workload": "warehouse",
        "command": " ".join(sys.argv),
        "append": "recent" if args.recent else "spread",
        "clinical_time_zone": zone,
        "readings": readings,
        "views": len(views),
        "quickstart_seconds": build_s,
        "append_seconds": append_s,
        "incremental_seconds": incremental_s,
        "full_seconds": full_s,
        "ratio_incremental_over_full": incremental_s / full_s,
        "not_incremental": full_views,
        "auto_full_by_read_estimate": auto_full,
        "unchanged_in_columns_read": unseen,
        "clock_dependent_not_compared": clock,
        "slowest_incremental": slowest(incremental),
        "slowest_full": slowest(full),
        "medlake": {"binary": args.bin, "build": build_of(args.bin)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_after": load_average()},
    }
    if full_views:
        sys.exit(f"views not refreshed incrementally: {full_views}\n{json.dumps(result, indent=2)}")
    table = "\n".join([
        f"The reference warehouse ({readings:,} readings in silver.readings, {len(views)} views), "
        "after one percent more in every source (`benches/warehouse/append.sql` and new landing files):",
        "",
        "| CASCADE refresh of every view | seconds |",
        "|---|---:|",
        f"| incremental (AUTO: {len(auto_full)} view(s) recomputed by its cost rules) | {incremental_s:.1f} |",
        f"| FULL | {full_s:.1f} |",
        "",
        f"incremental / FULL = {incremental_s / full_s:.3f} (goal ≤ 0.05). Slowest incremental views: "
        + ", ".join(f"{v} {s:.1f} s" for v, _, s in result["slowest_incremental"]) + ".",
    ])
    intro = (f"`{result['command']}` on {os.cpu_count()} cores (quickstart build {build_s:.0f} s, "
             f"the 1% append {append_s:.1f} s, clinical time zone {zone}).")
    write_result(args, "warehouse", result, table, intro)


def add_parser(sub):
    w = workload_parser(sub, "warehouse", "the reference warehouse: CASCADE refresh after 1% more in every source, incremental vs FULL")
    w.add_argument("--patients", type=int, help="quickstart --patients (default: the quickstart's)")
    w.add_argument("--hours", type=float, help="quickstart --hours")
    w.add_argument("--rate", type=float, help="quickstart --rate (readings per second per device)")
    w.add_argument("--keep", action="store_true", help="keep the work folder")
    w.add_argument("--local-hour", type=float, default=12,
                   help="the clinical time zone puts the local time at this hour at the start "
                        "(default 12); a negative value keeps the environment's MEDLAKE_TIME_ZONE")
    w.add_argument("--recent", action="store_true",
                   help="the time series gain their newest 1%% again, later (append_recent.sql), "
                        "instead of a copy of every hundredth row spread over their history")
