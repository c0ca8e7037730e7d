"""medallion (P2): a full medallion refresh, bronze -> silver -> gold, in medlake (REFRESH
MATERIALIZED VIEW ... FULL), DuckDB (the same SQL over bronze's Parquet files, each layer
written to Parquet) and PySpark (the original design's transformations over the same files,
writing Parquet). The three golds are checked equal before any time is reported."""

import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import HERE, Medlake, build_of, load_average, query_text, sql_file, workload_parser, write_result

SQL = HERE / "medallion"
PYSPARK = "pyspark==4.3.0"
LAYERS = {"silver": "silver (dedup by patient, time + left join devices)", "gold": "gold (avg, count by patient, day)"}


def ensure_pyspark():
    """PySpark needs a JVM; pyspark itself is installed into this interpreter if missing."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        sys.exit("the PySpark peer needs Java 17 or newer: no java on PATH and no JAVA_HOME "
                 "(Debian: apt-get install default-jre-headless)")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        print(f"medallion: installing {PYSPARK} into {sys.prefix}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", PYSPARK], check=True)


def delta_files(table):
    """A Delta table's current data files (a FULL refresh leaves the old ones in the folder)."""
    from deltalake import DeltaTable

    return [uri.removeprefix("file://") for uri in DeltaTable(str(table)).file_uris()]


def parquet(files):
    return "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "])"


def run_pyspark(args, readings, devices, work):
    """The PySpark script in its own process; returns its JSON report (times in its session)."""
    log = work / "pyspark.log"
    command = [
        sys.executable, str(SQL / "pyspark_medallion.py"), "--readings", *readings, "--devices", *devices,
        "--work", str(work / "spark"), "--rounds", str(args.rounds), "--threads", str(args.threads),
        "--driver-memory", args.driver_memory, "--shuffle-partitions", str(args.shuffle_partitions),
    ]
    with open(log, "w") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True,
                              env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    if done.returncode != 0:
        sys.exit(f"the PySpark peer failed:\n{log.read_text()[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def golds_differ(con, a, b):
    """Rows of two golds that do not match: the same (patient_id, date), event_count and
    avg_reading within 1e-6 (not round(avg, 6): engines sum in different orders, and a last-bit
    difference flips round() at a half-unit)."""
    return con.execute(
        f"SELECT count(*) FROM {a} AS a FULL JOIN {b} AS b USING (patient_id, date) "
        "WHERE a.event_count IS DISTINCT FROM b.event_count "
        "OR (a.avg_reading IS NULL) <> (b.avg_reading IS NULL) "
        "OR abs(a.avg_reading - b.avg_reading) > 1e-6"
    ).fetchone()[0]


def medallion(args):
    import duckdb

    if args.rows // args.patients >= 2_592_000:
        sys.exit("at most 2,591,999 readings per patient: a patient's readings are seconds of 30 days")
    ensure_pyspark()
    args.shuffle_partitions = args.shuffle_partitions or max(4 * args.threads, args.rows // 2_000_000)
    work = Path(tempfile.mkdtemp(prefix="medlake-bench-medallion-"))
    load_before = load_average()
    try:
        warehouse = work / "warehouse"
        medlake = Medlake(args.bin, warehouse)
        t = time.perf_counter()
        medlake.run(sql_file("setup.sql", "medallion", rows=args.rows, patients=args.patients))
        generate_s = time.perf_counter() - t
        silver_sql = query_text("silver.sql", "medallion", readings="bronze.readings", devices="bronze.devices")
        gold_sql = query_text("gold.sql", "medallion", silver="silver.readings")
        t = time.perf_counter()
        medlake.run(f"CREATE MATERIALIZED VIEW silver.readings AS {silver_sql}",
                    f"CREATE MATERIALIZED VIEW gold.patient_daily AS {gold_sql}")
        create_s = time.perf_counter() - t
        readings = sorted(glob.glob(str(warehouse / "bronze" / "readings" / "*.parquet")))
        devices = sorted(glob.glob(str(warehouse / "bronze" / "devices" / "*.parquet")))
        bronze_bytes = sum(os.path.getsize(f) for f in readings)

        duck_dir = work / "duckdb"
        duck_dir.mkdir()
        duck_silver, duck_gold = duck_dir / "silver.parquet", duck_dir / "gold.parquet"
        duck_silver_sql = query_text("silver.sql", "medallion", readings=parquet(readings), devices=parquet(devices))
        duck_gold_sql = query_text("gold.sql", "medallion", silver=parquet([duck_silver]))
        duck = duckdb.connect()
        duck.execute(f"SET threads = {args.threads}")
        rounds = []
        for r in range(args.rounds):
            print(f"medallion: round {r + 1}/{args.rounds}, medlake and DuckDB", file=sys.stderr)
            silver_ms, gold_ms = medlake.timed("REFRESH MATERIALIZED VIEW silver.readings FULL",
                                               "REFRESH MATERIALIZED VIEW gold.patient_daily FULL")
            t = time.perf_counter()
            duck.execute(f"COPY ({duck_silver_sql}) TO '{duck_silver}' (FORMAT parquet)")
            duck_silver_ms = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            duck.execute(f"COPY ({duck_gold_sql}) TO '{duck_gold}' (FORMAT parquet)")
            duck_gold_ms = (time.perf_counter() - t) * 1000
            rounds.append({"medlake_silver_ms": silver_ms, "medlake_gold_ms": gold_ms,
                           "duckdb_silver_ms": duck_silver_ms, "duckdb_gold_ms": duck_gold_ms})
        duck.close()

        print(f"medallion: {args.rounds} rounds of PySpark in one session", file=sys.stderr)
        t = time.perf_counter()
        spark = run_pyspark(args, readings, devices, work)
        spark_process_s = time.perf_counter() - t
        for r, spark_round in zip(rounds, spark["rounds"]):
            r["pyspark_silver_ms"], r["pyspark_gold_ms"] = spark_round["silver_ms"], spark_round["gold_ms"]

        # The check, before any time is reported: the same silver row count everywhere (the
        # bronze rows less the 2% re-sends) and the same gold rows.
        con = duckdb.connect()
        silvers = {
            "medlake": parquet(delta_files(warehouse / "silver" / "readings")),
            "duckdb": parquet([duck_silver]),
            "pyspark": f"read_parquet('{work}/spark/silver/*.parquet')",
        }
        golds = {
            "medlake": parquet(delta_files(warehouse / "gold" / "patient_daily")),
            "duckdb": parquet([duck_gold]),
            "pyspark": f"read_parquet('{work}/spark/gold/*.parquet')",
        }
        silver_rows = {side: con.execute(f"SELECT count(*) FROM {s}").fetchone()[0] for side, s in silvers.items()}
        expected = args.rows - args.rows // 50
        if set(silver_rows.values()) != {expected}:
            sys.exit(f"silver row counts differ (expected {expected:,}): {silver_rows}")
        gold_rows = {side: con.execute(f"SELECT count(*) FROM {g}").fetchone()[0] for side, g in golds.items()}
        if len(set(gold_rows.values())) != 1:
            sys.exit(f"gold row counts differ: {gold_rows}")
        for side in ["duckdb", "pyspark"]:
            differ = golds_differ(con, golds["medlake"], golds[side])
            if differ:
                sys.exit(f"medlake's gold and {side}'s differ in {differ} rows")
        con.close()
        version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip()
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    for side in ["medlake", "duckdb", "pyspark"]:
        median[f"{side}_total_ms"] = median[f"{side}_silver_ms"] + median[f"{side}_gold_ms"]
    ratios = {
        f"medlake_over_{peer}_{layer}": median[f"medlake_{layer}_ms"] / median[f"{peer}_{layer}_ms"]
        for peer in ["duckdb", "pyspark"] for layer in [*LAYERS, "total"]
    }
    result = {
        "workload": "medallion",
        "command": " ".join(sys.argv),
        "rows": args.rows,
        "patients": args.patients,
        "silver_rows": expected,
        "gold_rows": gold_rows["medlake"],
        "bronze_parquet_bytes": bronze_bytes,
        "rounds": rounds,
        "median": median,
        "ratios": ratios,
        "setup_seconds": {"medlake_generate": generate_s, "medlake_create_views": create_s,
                          "pyspark_session_start": spark["session_start_s"], "pyspark_process": spark_process_s},
        "medlake": {"version": version, "build": build_of(args.bin)},
        "pyspark": {"version": spark["spark"], "java": java, "master": f"local[{args.threads}]",
                    "driver_memory": args.driver_memory, "shuffle_partitions": args.shuffle_partitions},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "duckdb": duckdb.__version__,
        },
    }
    lines = [
        f"{args.rows:,} bronze readings ({bronze_bytes / 2**20:,.0f} MB of Parquet, {args.patients:,} patients, 30 days, "
        f"2% re-sent) → {expected:,} silver rows → {gold_rows['medlake']:,} gold rows; median of {args.rounds} "
        f"round{'s' if args.rounds > 1 else ''}, ms, after checking that the three golds are equal:",
        "",
        f"| layer | medlake `REFRESH ... FULL` | DuckDB {duckdb.__version__} | PySpark {spark['spark']} | medlake / DuckDB | medlake / PySpark |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for layer, name in [*LAYERS.items(), ("total", "silver + gold")]:
        lines.append(
            f"| {name} | {median[f'medlake_{layer}_ms']:,.0f} | {median[f'duckdb_{layer}_ms']:,.0f} | "
            f"{median[f'pyspark_{layer}_ms']:,.0f} | {ratios[f'medlake_over_duckdb_{layer}']:.2f} | "
            f"{ratios[f'medlake_over_pyspark_{layer}']:.2f} |"
        )
    lines += [
        "",
        "Ratios are of times (above 1: medlake is slower). medlake: its own time per statement (`--timing`: planning, "
        f"execution, Delta commit), silver and gold Delta tables; DuckDB: `COPY (...) TO` Parquet, {args.threads} threads; "
        f"PySpark: `local[{args.threads}]`, driver memory {args.driver_memory}, `spark.sql.shuffle.partitions` "
        f"{args.shuffle_partitions} (adaptive execution on), Parquet out, timed inside the session; starting the "
        f"session (JVM) took {spark['session_start_s']:.1f} s more. Generating bronze in medlake took {generate_s:.1f} s.",
        "",
        f"Machine load average (1/5/15 min) before: {load_before}, after: {result['machine']['load_average_after']}.",
    ]
    write_result(args, "medallion", result, "\n".join(lines), f"`{result['command']}` on {os.cpu_count()} cores.")


def add_parser(sub):
    m = workload_parser(sub, "medallion", "a full bronze -> silver -> gold refresh vs DuckDB and PySpark")
    m.add_argument("--rows", type=int, default=10_000_000, help="bronze readings (100M: --rows 100000000)")
    m.add_argument("--patients", type=int, default=10_000, help="patients the readings are spread over")
    m.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
    m.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="DuckDB threads, PySpark local[N]")
    m.add_argument("--driver-memory", default="4g", help="PySpark's spark.driver.memory")
    m.add_argument("--shuffle-partitions", type=int,
                   help="PySpark's spark.sql.shuffle.partitions (default: 4 per thread, at least one per 2M rows)")
