"""The medallion benchmark's PySpark peer: the original design's bronze -> silver -> gold
transformations, literally, over bronze's Parquet files (the files medlake's Delta tables
hold), writing Parquet (Delta Lake for Spark needs the delta-spark jars from Maven).

    python pyspark_medallion.py --readings F... --devices F... --work DIR [--rounds 3]

Each round times silver (read, dropDuplicates, left join, write) and gold (read silver,
groupBy, write) inside one Spark session; starting the session (the JVM) is timed apart.
Prints one JSON line: {"spark": version, "session_start_s": s, "rounds": [{"silver_ms", "gold_ms"}]}.
"""

import argparse
import json
import time

from pyspark.sql import SparkSession
from pyspark.sql.functions import to_date


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", nargs="+", required=True, help="bronze.readings' Parquet files")
    parser.add_argument("--devices", nargs="+", required=True, help="bronze.devices' Parquet files")
    parser.add_argument("--work", required=True, help="where silver/ and gold/ are written")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="local[N]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    args = parser.parse_args()

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{args.threads}]")
        .appName("medlake-bench-medallion")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.sql.shuffle.partitions", args.shuffle_partitions)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    session_start_s = time.perf_counter() - started
    silver_path = f"{args.work}/silver"
    gold_path = f"{args.work}/gold"

    rounds = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        bronze_df = spark.read.parquet(*args.readings)
        # Deduplicate by patient_id and timestamp (taken_at here)
        silver_df = bronze_df.dropDuplicates(["patient_id", "taken_at"])
        # Enrich with device metadata
        device_meta_df = spark.read.parquet(*args.devices)
        silver_df = silver_df.join(device_meta_df, "device_id", "left")
        silver_df.write.format("parquet").mode("overwrite").save(silver_path)
        silver_ms = (time.perf_counter() - t) * 1000

        t = time.perf_counter()
        silver_df = spark.read.parquet(silver_path)
        # Aggregate by patient and day
        gold_df = (
            silver_df.groupBy("patient_id", to_date("taken_at").alias("date"))
            .agg({"reading": "avg", "event_id": "count"})
            .withColumnRenamed("avg(reading)", "avg_reading")
            .withColumnRenamed("count(event_id)", "event_count")
        )
        gold_df.write.format("parquet").mode("overwrite").save(gold_path)
        gold_ms = (time.perf_counter() - t) * 1000
        rounds.append({"silver_ms": silver_ms, "gold_ms": gold_ms})

    print(json.dumps({"spark": spark.version, "session_start_s": session_start_s, "rounds": rounds}))
    spark.stop()


if __name__ == "__main__":
    main()
