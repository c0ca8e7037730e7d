#!/usr/bin/env python3
"""Writes the light fuzz targets' seeds (fuzz/light/seeds/<target>/): valid inputs the
fuzzer starts from. HL7 messages are the samples of crates/hl7's tests; FHIRPath expressions
and ViewDefinitions come from the SQL-on-FHIR v2 test cases in crates/fhir/tests/spec/, each
with a resource of its file; DICOM files are written by pydicom (the one in the test venv)
in each transfer syntax the connector reads, plus the odd layouts crates/dicom's tests build.
Run it again after changing those; the output is deterministic.

    ~/.cache/medlake-venv/bin/python fuzz/light/seeds/generate.py
"""

import io
import json
import pathlib
import shutil
import struct

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SPEC = ROOT / "crates/fhir/tests/spec"


def msg(*segments):
    return ("\r".join(segments) + "\r").encode()


PCD01 = msg(
    r"MSH|^~\&|ACME_GW^0123456789ABCDEF^EUI-64|ICU_WEST|MEDLAKE|HOSP|20240315103005+0100||ORU^R01^ORU_R01|PCD00001|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
    r"PID|||12345678^^^HOSP^MR~987654^^^NATION^NI||Doe^John^^^^^L||19620315|M",
    r"PV1||I|ICU^12^1^WEST",
    r"OBR|1|ORD1^ACME_GW^0123456789ABCDEF^EUI-64|FILL1^ACME_GW^0123456789ABCDEF^EUI-64|182777000^monitoring of patient^SNOMED-CT|||20240315103000+0100",
    r"OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1|||||||X|||||||1122334455667788^^1122334455667788^EUI-64",
    r"OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100|N|||F|||20240315103000+0100||||1122334455667788^^1122334455667788^EUI-64",
    r"OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.2|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120|N|||F|||20240315103001+0100||||1122334455667788^^1122334455667788^EUI-64",
    r"OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|-0.5|266016^MDC_DIM_MMHG^MDC||L|||R||||||||",
)
LOINC = msg(
    r"MSH|^~\&|LAB|HOSP|MEDLAKE|HOSP|20240315120000||ORU^R01|LAB123|P|2.5.1",
    r"PID|1||MRN001^^^HOSP&1.2.3.4&ISO^MR||Smith^Anna||19800101|F",
    r"PV1|1|O|CLINIC^^^MAIN||||||||||||||||V777",
    r"OBR|1|PL1|FL1|85353-1^Vital signs panel^LN|||20240315115500",
    r"OBX|1|NM|8867-4^Heart rate^LN||88|/min^beats per minute^UCUM|60-100|N|||F",
    r"OBX|2|SN|2160-0^Creatinine^LN||=^1.1|mg/dL^^UCUM|0.6-1.2||||F|||20240315115000",
    r"OBX|3|SN|777-3^Platelets^LN||>^500|10*3/uL^^UCUM|||||F",
    r"OBX|4|ST|8601-7^EKG impression^LN||Normal\.br\sinus rhythm~second line||||||F",
    r"OBX|5|CWE|8302-2^Body height^LN||175^cm&centimetre^UCUM||||||F",
)
PID = r"PID|1||OTHER^^^X^XX~MRN001^^^HOSP&1.2.3&ISO^MR||Smith^Anna||19800101|F"


def adt(event, *rest):
    structure = "ADT_A39" if event == "A40" else "ADT_A01"
    return msg(
        rf"MSH|^~\&|ADT1|HOSP|MEDLAKE|HOSP|20240315083000||ADT^{event}^{structure}|ADT{event}|P|2.5",
        f"EVN|{event}|20240315082900|||NURSE1|20240315082500",
        PID,
        *rest,
    )


ESCAPES = msg(
    r"MSH|^~\&#|SENDER|FAC|RCV|FAC|20240101||ADT^A08|ESC1|P|2.7",
    r"NTE|1||a\F\b\S\c\T\d\R\e\E\f\P\g\.br\h\X41C3A9\i\H\j\N\k\Zxx\l\X4\m\XZZ\n" + "\\",
    r"NTE|2||\E\\E\|C:\temp\new|\|trailing" + "\\",
    r"NTE|3||A&B&&~X^^",
)
ODD = msg(
    "MSH#$%&*#GW$EUI#F#R#F#20240315103000##ORU$R01$ORU_R01#ODD1#P#2.6",
    "PID###123$$$HOSP*1.2.3*ISO$MR%456$$$X$NI##Doe$Jane",
    "OBR#1##F1#CODE1",
    "OBX#1#NM#8867-4$Heart rate$LN##70#/min$$UCUM#####F",
    "OBX#2#ST#X$Note$L##a&F&b&S&c&T&d&R&e&E&f^|~\\##",
)
LATIN1 = (
    "\r".join(
        [
            r"MSH|^~\&|ADT1|HOSP|MEDLAKE|HOSP|20240315083000||ADT^A08^ADT_A01|L1|P|2.5||||||8859/1",
            "EVN|A08|20240315083000",
            "PID|||4711^^^HOSP^MR||M\u00fcller^J\u00f6rg||19700101|M",
            "PV1||I|STATION^3^1^S\u00fcd",
            r"NTE|1||\XFC" + "\\",
        ]
    )
    + "\r"
).encode("latin-1")

HL7 = {
    "oru_pcd01": PCD01,
    "oru_loinc": LOINC,
    "adt_a01": adt("A01", "PV1||I|ICU^12^1^WEST"),
    "adt_a02": adt("A02", "PV1||I|ICU^12^1^WEST|||ER^1^2^EAST"),
    "adt_a40": adt("A40", "MRG|MRN999^^^HOSP&1.2.3&ISO^MR"),
    "escapes": ESCAPES,
    "odd_delimiters": ODD,
    "latin1": LATIN1,
    "bom_crlf": b"\xef\xbb\xbf" + PCD01.replace(b"\r", b"\r\n"),
}


def frame(payload):
    return b"\x0b" + payload + b"\x1c\x0d"


MLLP = {
    # choice byte (frame limit), split byte (read sizes), then the stream.
    "two_frames": bytes([7, 0x55]) + frame(PCD01) + b"\r\n" + frame(LOINC),
    "garbage_between": bytes([6, 0xA3]) + b"junk\x1c" + frame(ESCAPES) + b"\x1cx" + frame(ODD),
    "too_large": bytes([4, 0x0F]) + frame(LOINC) + frame(b"MSH|^~\\&|small"),
    "interrupted": bytes([7, 0xF0]) + b"\x0bMSH|^~\\&|cut" + frame(LATIN1) + b"\x0bpartial",
    "end_split": bytes([3, 0x01]) + frame(b"a\x1cb") + frame(b"") + b"\x0b\x1c",
}


def write(target, name, data):
    d = HERE / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def paths(select):
    """Every FHIRPath text of a select (and its nested selects and union branches)."""
    for key in ("forEach", "forEachOrNull"):
        if isinstance(select.get(key), str):
            yield select[key]
    for p in select.get("repeat", []) or []:
        if isinstance(p, str):
            yield p
    for c in select.get("column", []) or []:
        if isinstance(c.get("path"), str):
            yield c["path"]
    for s in (select.get("select", []) or []) + (select.get("unionAll", []) or []):
        yield from paths(s)


def fhir():
    views, exprs = {}, {}
    for file in sorted(SPEC.glob("*.json")):
        spec = json.loads(file.read_text())
        resources = spec.get("resources", [])
        for i, test in enumerate(spec.get("tests", [])):
            view = test.get("view")
            if not isinstance(view, dict):
                continue
            typed = [r for r in resources if r.get("resourceType") == view.get("resource")]
            resource = typed[i % len(typed)] if typed else (resources[0] if resources else {})
            views[f"{file.stem}_{i:02}"] = compact(view) + b"\0" + compact(resource)
            for w in view.get("where", []) or []:
                if isinstance(w.get("path"), str):
                    exprs.setdefault(w["path"], resource)
            for s in view.get("select", []) or []:
                for p in paths(s):
                    exprs.setdefault(p, resource)
    # Constants the target defines (%five, %big, %text, %yes, %half) and operators the spec
    # cases use little.
    extra = [
        "iif(%five > 3, 'big', 'small')",
        "(%big + 1) * 2",
        "%text.length() + %half",
        "component.value.ofType(integer) div 0",
        "code.coding.where(system = 'http://loinc.org').code.join(',')",
        "extension('u').value.ofType(decimal) * 10",
        "component.select(code.text).distinct().count()",
        "valueQuantity.value.lowBoundary()",
        "effectiveDateTime.highBoundary()",
        "subject.getReferenceKey(Patient)",
        "getResourceKey() | id | 'x' | 1.5 | true | {}",
        "component.all(code.exists()) and component.code.text.allTrue().not()",
        "code.coding.skip(1).take(1).tail().first().last().empty()",
        "status.lower().upper().startsWith('F') or status.endsWith('l') xor status.contains('n')",
        "component[1].value is string implies component[2].value as boolean",
        "-%five mod 3 - 7.5 / 0.0",
    ]
    for e in extra:
        exprs.setdefault(e, None)
    observation = None
    for i, (expr, resource) in enumerate(sorted(exprs.items())):
        data = expr.encode() + b"\0" + (compact(resource) if resource is not None else b"")
        write("fhirpath", f"path_{i:03}", data)
    for name, data in sorted(views.items()):
        write("fhir_view", name, data)
    return len(exprs), len(views)


def explicit(group, element, vr, value):
    """An explicit VR little endian element."""
    head = struct.pack("<HH", group, element) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def dicom():
    """DICOM files, each after a 16-bit split point (the bytes read first)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEGBaseline8Bit,
        generate_uid,
    )

    files = {}
    for n, ts in enumerate(
        [
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
            JPEGBaseline8Bit,
        ]
    ):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{n}"
        meta.TransferSyntaxUID = ts
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = f"MRN{n:04}"
        ds.PatientName = "Doe^Jane"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.100"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.101"
        ds.Modality = ["CT", "MR", "US", "CR", "XA"][n]
        ds.StudyDate = "20240315"
        ds.StudyTime = "103000.123"
        ds.StudyDescription = "Chest \u00e9"
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.AccessionNumber = "ACC1"
        ds.Rows, ds.Columns = 2, 2
        ds.NumberOfFrames = "1"
        ds.PixelSpacing = ["0.5", "0.5"]
        ds.WindowCenter = "40"
        seq = Dataset()
        seq.PatientID = "nested"
        ds.ReferencedStudySequence = [seq]
        if ts == JPEGBaseline8Bit:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
            ds["PixelData"].VR = "OB"
        else:
            ds.BitsAllocated = 8
            ds.PixelData = b"\0\1\2\3"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, little_endian=ts != ExplicitVRBigEndian,
                   implicit_vr=ts == ImplicitVRLittleEndian)
        files[f"ts{n}_{ts.name.split()[0].lower()}"] = buffer.getvalue()
    # No meta group length, no transfer syntax, a private UN sequence of undefined length
    # (implicit VR items), a Patient ID stored as UN (crates/dicom's test file).
    data = explicit(0x0008, 0x0018, b"UI", b"1.2.3.4\0")
    data += bytes([0x09, 0x00, 0x10, 0x10]) + b"UN\0\0" + struct.pack("<I", 0xFFFFFFFF)
    data += bytes([0xFE, 0xFF, 0x00, 0xE0]) + struct.pack("<I", 0xFFFFFFFF)
    data += bytes([0x08, 0x00, 0x18, 0x00, 8, 0, 0, 0]) + b"9.9.9.9\0"
    data += bytes([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0])
    data += explicit(0x0010, 0x0020, b"UN", b"id11111 ")
    data += explicit(0x0028, 0x0010, b"UN", struct.pack("<H", 512))
    data += explicit(0x0028, 0x0011, b"US", struct.pack("<H", 256))
    data += explicit(0x7FE0, 0x0010, b"OW", bytes(16))
    files["un_sequence"] = bytes(128) + b"DICM" + explicit(0x0002, 0x0003, b"UI", b"1.2.3.4\0") + data
    # "DICM" at the start (no preamble), the file cut short inside an element.
    files["no_preamble_cut"] = b"DICM" + explicit(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0") + data[:60]
    out = {}
    for name, file in files.items():
        for split in (132, len(file) // 2, 65535):
            out[f"{name}_{split}"] = struct.pack("<H", min(split, 65535)) + file
    return out


def main():
    for target in ("hl7_message", "hl7_mllp", "fhirpath", "fhir_view", "dicom_header"):
        shutil.rmtree(HERE / target, ignore_errors=True)
    for name, data in HL7.items():
        write("hl7_message", name, data)
    for name, data in MLLP.items():
        write("hl7_mllp", name, data)
    n_paths, n_views = fhir()
    dicoms = dicom()
    for name, data in dicoms.items():
        write("dicom_header", name, data)
    print(
        f"hl7_message {len(HL7)}, hl7_mllp {len(MLLP)}, fhirpath {n_paths}, "
        f"fhir_view {n_views}, dicom_header {len(dicoms)}"
    )


if __name__ == "__main__":
    main()
