"""Interoperability with another Delta Lake implementation (the `deltalake` Python package).

medlake's tables must be plain Delta tables: another reader sees exactly what medlake wrote,
and medlake reads what another writer wrote, including schema evolution, partitions,
overwrites and files removed by VACUUM.

Run by tests/run.sh with MEDLAKE_BIN pointing at the medlake binary.
"""

import csv
import datetime as dt
import decimal
import io

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from helpers import run_medlake


def medlake(warehouse, *sql):
    return run_medlake(warehouse, *sql).stdout


def rows(warehouse, query):
    return list(csv.reader(io.StringIO(medlake(warehouse, query))))[1:]


def test_another_reader_sees_what_medlake_wrote(tmp_path):
    wh = tmp_path / "wh"
    medlake(
        wh,
        "CREATE TABLE bronze.vitals (patient_id INT NOT NULL, metric VARCHAR NOT NULL, "
        "value DOUBLE, taken TIMESTAMP, day DATE, flagged BOOLEAN, dose DECIMAL(10, 2))",
        "INSERT INTO bronze.vitals VALUES "
        "(1, 'hr', 72.5, TIMESTAMP '2026-11-23 10:00:00', DATE '2026-11-23', false, 1.25), "
        "(2, 'spo2', NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO bronze.vitals VALUES "
        "(3, 'temp', 37.2, TIMESTAMP '2026-11-23 11:30:00', DATE '2026-11-23', true, 10.00)",
    )
    table = DeltaTable(str(wh / "bronze" / "vitals"))
    assert table.version() == 2
    schema = pa.schema(table.schema())
    assert not schema.field("patient_id").nullable
    assert schema.field("value").nullable

    data = pa.table(table.to_pyarrow_dataset().to_table()).sort_by("patient_id").to_pylist()
    assert [r["patient_id"] for r in data] == [1, 2, 3]
    assert data[0]["metric"] == "hr" and data[0]["value"] == 72.5
    assert data[0]["taken"].replace(tzinfo=None) == dt.datetime(2026, 11, 23, 10, 0)
    assert data[0]["day"] == dt.date(2026, 11, 23)
    assert data[0]["flagged"] is False
    assert data[0]["dose"] == decimal.Decimal("1.25")
    assert data[1]["value"] is None and data[1]["taken"] is None

    table.load_as_version(1)
    assert sorted(table.to_pyarrow_dataset().to_table().column("patient_id").to_pylist()) == [1, 2]
    history = DeltaTable(str(wh / "bronze" / "vitals")).history()
    assert [h["operation"] for h in history] == ["WRITE", "WRITE", "CREATE TABLE"]


def test_another_reader_sees_medlake_maintenance(tmp_path):
    wh = tmp_path / "wh"
    medlake(
        wh,
        "CREATE TABLE silver.events (id INT NOT NULL, kind VARCHAR)",
        "INSERT INTO silver.events VALUES (1, 'a')",
        "INSERT INTO silver.events VALUES (2, 'b')",
        "OPTIMIZE silver.events",
        "VACUUM silver.events RETAIN 0 HOURS FORCE",
        "CREATE TABLE gold.kinds AS SELECT kind, count(*) AS n FROM silver.events GROUP BY kind",
    )
    events = DeltaTable(str(wh / "silver" / "events"))
    assert len(events.file_uris()) == 1
    assert sorted(events.to_pyarrow_dataset().to_table().column("id").to_pylist()) == [1, 2]
    kinds = DeltaTable(str(wh / "gold" / "kinds")).to_pyarrow_dataset().to_table()
    assert sorted(kinds.column("kind").to_pylist()) == ["a", "b"]


def test_medlake_reads_what_another_writer_wrote(tmp_path):
    wh = tmp_path / "wh"
    medlake(wh, "SELECT 1")  # creates the warehouse and its schemas
    path = str(wh / "bronze" / "device_events")

    first = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "device": ["pump-1", "monitor-7"],
            "at": pa.array(
                [dt.datetime(2026, 11, 23, 9, 0), dt.datetime(2026, 11, 23, 9, 5)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    write_deltalake(path, first)  # version 0
    # Schema evolution: a new column.
    second = pa.table(
        {
            "id": pa.array([3], pa.int64()),
            "device": ["pump-1"],
            "at": pa.array([dt.datetime(2026, 11, 23, 9, 10)], pa.timestamp("us", tz="UTC")),
            "severity": ["high"],
        }
    )
    write_deltalake(path, second, mode="append", schema_mode="merge")  # version 1

    assert rows(wh, "SELECT id, device, severity FROM bronze.device_events ORDER BY id") == [
        ["1", "pump-1", ""],
        ["2", "monitor-7", ""],
        ["3", "pump-1", "high"],
    ]
    assert rows(wh, "SELECT count(*) FROM bronze.device_events VERSION AS OF 0") == [["2"]]
    assert rows(
        wh, "SELECT count(*) FROM bronze.device_events WHERE at >= TIMESTAMP '2026-11-23T09:04:00Z'"
    ) == [["2"]]

    # An overwrite, then VACUUM by the other writer removes the old files.
    write_deltalake(path, second, mode="overwrite", schema_mode="merge")  # version 2
    table = DeltaTable(path)
    removed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert len(removed) >= 2
    assert rows(wh, "SELECT id FROM bronze.device_events") == [["3"]]
    assert rows(wh, "SELECT version, operation FROM table_history('bronze.device_events', 3)") == [
        ["4", "VACUUM END"],
        ["3", "VACUUM START"],
        ["2", "WRITE"],
    ]

    # medlake appends to the table the other writer created, with the evolved schema.
    medlake(wh, "INSERT INTO bronze.device_events VALUES (4, 'vent-2', TIMESTAMP '2026-11-23 10:00:00', 'low')")
    latest = DeltaTable(path).to_pyarrow_dataset().to_table().sort_by("id").to_pylist()
    assert [(r["id"], r["severity"]) for r in latest] == [(3, "high"), (4, "low")]


def test_medlake_reads_partitioned_tables(tmp_path):
    wh = tmp_path / "wh"
    medlake(wh, "SELECT 1")
    path = str(wh / "bronze" / "uploads")
    data = pa.table(
        {
            "ward": ["icu", "icu", "er"],
            "patient": pa.array([1, 2, 3], pa.int32()),
            "hr": [80.0, 90.0, 100.0],
        }
    )
    write_deltalake(path, data, partition_by=["ward"])
    assert rows(wh, "SELECT ward, count(*), avg(hr) FROM bronze.uploads GROUP BY ward ORDER BY ward") == [
        ["er", "1", "100.0"],
        ["icu", "2", "85.0"],
    ]
    assert rows(wh, "SELECT patient FROM bronze.uploads WHERE ward = 'icu' ORDER BY 1") == [["1"], ["2"]]
