"""medlake's DICOM source against pydicom on every file of pydicom's offline test set.

Every file that `pydicom.dcmread(f, stop_before_pixels=True)` reads without `force` must be read
by medlake with the same value in every attribute column medlake has; every other file must
come back with an `error` (and no failed scan). The files are copied, folders and all, into a
local folder that one `STORED AS DICOM` external table lists; one LOCATION naming a single file
is checked too.
"""

import csv
import io
import os
import shutil
import warnings

import pydicom
import pydicom.data
import pytest

from helpers import run_medlake

COLUMNS = [
    ("patient_id", "PatientID"),
    ("patient_name", "PatientName"),
    ("study_instance_uid", "StudyInstanceUID"),
    ("series_instance_uid", "SeriesInstanceUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("modality", "Modality"),
    ("study_date", "StudyDate"),
    ("study_time", "StudyTime"),
    ("study_description", "StudyDescription"),
    ("series_description", "SeriesDescription"),
    ("body_part_examined", "BodyPartExamined"),
    ("manufacturer", "Manufacturer"),
    ("manufacturer_model_name", "ManufacturerModelName"),
    ("rows", "Rows"),
    ("columns", "Columns"),
    ("number_of_frames", "NumberOfFrames"),
    ("institution_name", "InstitutionName"),
]


# Files of the test set that end in the middle of their data set: pydicom returns what comes
# before the cut without a word; medlake returns the same values and says where the file ends.
CUT_SHORT = {"rtplan_truncated.dcm"}


def text(value):
    """pydicom's value as medlake's text column holds it: values joined by `\\`, each trimmed."""
    if value is None:
        return ""
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    parts = [str(v).strip("\0 \t\r\n") for v in values]
    return "" if all(not p for p in parts) else "\\".join(parts)


def date(value):
    digits = "".join(c for c in text(value) if c.isdigit())[:8]
    if len(digits) < 8:
        return ""
    import datetime
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])).isoformat()
    except ValueError:
        return ""


def time(value):
    """TM `HHMMSS.FFFFFF` as `HH:MM:SS.FFFFFF` (medlake's study_time)."""
    value = text(value)
    if not value:
        return ""
    main, _, fraction = value.partition(".")
    if ":" in main or not main.isdigit() or len(main) % 2:
        return value
    out = ":".join(main[i:i + 2] for i in range(0, len(main), 2))
    return f"{out}.{fraction}" if fraction else out


def number(value):
    value = text(value).split("\\")[0].strip()
    try:
        return str(int(value))
    except ValueError:
        return ""


def expected_row(path):
    """The columns as medlake should read them, or None when pydicom refuses the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any refusal: medlake must give an error instead
        return None
    row = {}
    for column, keyword in COLUMNS:
        value = ds.get(keyword)
        if column == "study_date":
            row[column] = date(value)
        elif column == "study_time":
            row[column] = time(value)
        elif column in ("rows", "columns", "number_of_frames"):
            row[column] = number(value)
        else:
            row[column] = text(value)
    if not row["sop_instance_uid"]:
        # medlake falls back on the file meta group's Media Storage SOP Instance UID.
        row["sop_instance_uid"] = text(ds.file_meta.get("MediaStorageSOPInstanceUID"))
    row["transfer_syntax_uid"] = text(ds.file_meta.get("TransferSyntaxUID"))
    return row


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = os.path.dirname(pydicom.data.get_testdata_file("CT_small.dcm"))
    folder = tmp_path_factory.mktemp("pydicom") / "files"
    copied = {}
    for path in pydicom.data.get_testdata_files():
        if os.path.isdir(path):
            continue
        relative = os.path.relpath(path, root)
        assert not any(p.startswith((".", "_")) for p in relative.split(os.sep)), relative
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied[relative] = path
    assert len(copied) > 150, "pydicom's offline test set should have more than 150 files"
    return folder, copied


def read_table(warehouse, location):
    names = ["path", "error", "transfer_syntax_uid"] + [c for c, _ in COLUMNS]
    run_medlake(warehouse, "CREATE SCHEMA IF NOT EXISTS landing",
                "DROP TABLE IF EXISTS landing.pydicom",
                f"CREATE EXTERNAL TABLE landing.pydicom STORED AS DICOM LOCATION '{location}' "
                "OPTIONS ('tags' 'InstitutionName')")
    done = run_medlake(warehouse, f"SELECT {', '.join(names)} FROM landing.pydicom ORDER BY path")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and list(rows[0]) == names
    return rows


def test_every_file_pydicom_reads_is_read_with_the_same_values(files, tmp_path):
    folder, copied = files
    rows = read_table(tmp_path / "wh", f"{folder}/")
    prefix = f"file://{os.path.realpath(folder)}/"
    found = {r["path"][len(prefix):]: r for r in rows}
    assert set(found) == set(copied), "one row per file"

    readable = mismatches = 0
    problems = []
    for relative, path in sorted(copied.items()):
        row = found[relative]
        expected = expected_row(path)
        if expected is None:
            # pydicom refuses it (no File Meta Information, not DICOM at all): a clear error.
            if not row["error"]:
                problems.append(f"{relative}: pydicom refuses it but medlake reads it")
            continue
        readable += 1
        if relative in CUT_SHORT:
            # Read up to the cut, as pydicom does; medlake says so in `error`.
            if not row["error"].startswith("the file is cut short; read up to the cut"):
                problems.append(f"{relative}: expected a cut-short error, got {row['error']!r}")
        elif row["error"]:
            problems.append(f"{relative}: pydicom reads it, medlake says: {row['error']}")
        for column, value in expected.items():
            if row[column] != value:
                mismatches += 1
                problems.append(f"{relative}: {column}: medlake {row[column]!r}, pydicom {value!r}")
    assert readable > 150
    assert CUT_SHORT <= set(copied)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
    assert mismatches == 0


@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm", "rtplan.dcm"])
def test_a_location_naming_one_file(files, tmp_path, name):
    folder, copied = files
    rows = read_table(tmp_path / "wh", str(folder / name))
    assert len(rows) == 1
    row = rows[0]
    assert row["path"] == f"file://{os.path.realpath(folder / name)}"
    assert row["error"] == ""
    expected = expected_row(copied[name])
    assert {c: row[c] for c in expected} == expected
