"""The HL7 v2 door of `medlake serve --mllp` with independent HL7 libraries: messages built by
hl7apy (and escaped by python-hl7), sent by python-hl7's MLLP client, ACKs read by
python-hl7. Malformed messages, retries of one control id, and a SIGKILL of the server while
eight connections stream: every message ACKed before the kill is stored, and after a restart
and a resend of everything, every message is stored exactly once."""

import threading
import time

import hl7
import hl7.exceptions
import pytest
from hl7.client import MLLPClient
from hl7apy.core import Message

from helpers import MedlakeServe, free_port, lines, run_medlake


def oru(control_id, patient="P1001", spo2="97", name="O'Brien & Sons^Zoë"):
    """An IHE PCD-01 style ORU^R01 (SpO2 and heart rate from a bedside monitor), as ER7."""
    msg = Message("ORU_R01", version="2.6")
    msg.msh.msh_3 = "MON^0012ABCDEF123456^EUI-64"
    msg.msh.msh_4 = "ICU"
    msg.msh.msh_5 = "MEDLAKE"
    msg.msh.msh_7 = "20261123080000+0000"
    msg.msh.msh_9 = "ORU^R01^ORU_R01"
    msg.msh.msh_10 = control_id
    msg.msh.msh_11 = "P"
    msg.msh.msh_18 = "UNICODE UTF-8"
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient_group = result.add_group("ORU_R01_PATIENT")
    patient_group.pid.pid_3 = f"{patient}^^^HOSP^MR"
    # Escaped by another library: the family name's "&" is the subcomponent separator (hl7apy
    # escapes nothing but backslashes; non-ASCII text goes as UTF-8, MSH-18).
    family, given = name.split("^")
    escaper = hl7.parse("MSH|^~\\&|X|Y|||20260101||ACK|1|P|2.6")
    patient_group.pid.pid_5 = f"{escaper.escape(family)}^{given}"
    visit = patient_group.add_group("ORU_R01_VISIT")
    visit.pv1.pv1_2 = "I"
    visit.pv1.pv1_3 = "ICU^Bed 3^1"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{control_id}-1"
    order.obr.obr_4 = "182777000^monitoring of patient^SCT"
    order.obr.obr_7 = "20261123075959+0000"
    for set_id, code, value, unit in [
        ("1", "150456^MDC_PULS_OXIM_SAT_O2^MDC", spo2, "262688^MDC_DIM_PERCENT^MDC"),
        ("2", "147842^MDC_ECG_HEART_RATE^MDC", "72", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    ]:
        obs = order.add_group("ORU_R01_OBSERVATION")
        obs.obx.obx_1 = set_id
        obs.obx.obx_2 = "NM"
        obs.obx.obx_3 = code
        obs.obx.obx_5 = value
        obs.obx.obx_6 = unit
        obs.obx.obx_11 = "F"
        obs.obx.obx_14 = "20261123080000+0000"
        obs.obx.obx_18 = "0012ABCDEF123456^^0012ABCDEF123456^EUI-64"
    return msg.to_er7()


def msa(ack):
    """MSA-1 and MSA-3 of an ACK as python-hl7 reads it."""
    parsed = hl7.parse(ack)
    segment = parsed.segment("MSA")
    text = str(segment[3]) if len(segment) > 3 else ""
    return str(segment[1]), text


def serve(root, port):
    return MedlakeServe(root, ["--warehouse", str(root / "warehouse"), "--insecure-no-auth",
                               "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0",
                               "--http", "127.0.0.1:0", "--mllp", f"127.0.0.1:{port}"],
                        {}, "hl7 mllp on")


def query(root, sql):
    return lines(run_medlake(root / "warehouse", sql))


@pytest.fixture
def door(tmp_path):
    port = free_port()
    server = serve(tmp_path, port)
    try:
        yield tmp_path, port, server
    finally:
        server.stop()


def test_observations_escapes_retries_and_refusals(door):
    root, port, _ = door
    with MLLPClient("127.0.0.1", port) as client:
        code, text = msa(client.send_message(oru("T-1")))
        assert code == "AA", text
        # A lost ACK: the same message again is acknowledged and not stored twice.
        assert msa(client.send_message(oru("T-1")))[0] == "AA"
        # The same control id with another reading: refused, nothing stored.
        code, text = msa(client.send_message(oru("T-1", spo2="84")))
        assert code == "AE" and "T-1" in text, text
        # Not HL7, and a message without its observation identifier.
        assert msa(client.send_message("this is not an HL7 message"))[0] == "AR"
        broken = oru("T-2").replace("150456^MDC_PULS_OXIM_SAT_O2^MDC", "")
        code, text = msa(client.send_message(broken))
        assert code == "AE", text
    rows = query(root, "SELECT message_id, code, numeric_value, patient_name, units "
                       "FROM bronze.hl7_observations ORDER BY set_id")
    assert rows == ["message_id,code,numeric_value,patient_name,units",
                    "T-1,150456,97.0,O'Brien & Sons^Zoë,262688",
                    "T-1,147842,72.0,O'Brien & Sons^Zoë,264864"]
    kept = query(root, "SELECT ack_code, error_code FROM bronze.hl7_quarantine ORDER BY received_at")
    assert kept == ["ack_code,error_code", "AE,205", "AR,100", "AE,101"], kept


def send_all(port, thread, count, acked, failed, stop_after=None):
    """Sends messages K{thread}-{i} one after another on one connection, recording which were
    acknowledged AA; stops at the first error (the server was killed)."""
    try:
        with MLLPClient("127.0.0.1", port) as client:
            for i in range(count):
                control_id = f"K{thread}-{i}"
                code, text = msa(client.send_message(oru(control_id, patient=f"P{thread}")))
                if code != "AA":
                    failed.append((control_id, text))
                    return
                acked.append(control_id)
                if stop_after and stop_after.is_set():
                    return
    except (OSError, IndexError, hl7.exceptions.ParseException):
        # The server died mid-message: no (or a cut) ACK; this one was not acknowledged.
        return


def test_sigkill_mid_stream_loses_no_acknowledged_message_and_stores_none_twice(tmp_path):
    port = free_port()
    threads, per_thread = 8, 60
    server = serve(tmp_path, port)
    acked, failed = [], []
    workers = [threading.Thread(target=send_all, args=(port, t, per_thread, acked, failed))
               for t in range(threads)]
    for w in workers:
        w.start()
    deadline = time.time() + 120
    while len(acked) < threads * per_thread // 4 and time.time() < deadline:
        time.sleep(0.01)
    server.process.kill()  # SIGKILL, mid-stream
    server.process.wait()
    server.log.close()
    for w in workers:
        w.join(timeout=60)
    assert not failed, failed
    assert 0 < len(acked) < threads * per_thread, len(acked)
    # Every acknowledged message is there, once.
    stored = set(query(tmp_path, "SELECT DISTINCT message_id FROM bronze.hl7_observations")[1:])
    assert set(acked) <= stored, sorted(set(acked) - stored)[:5]
    # The senders send everything again (acknowledged or not) to a restarted server.
    server = serve(tmp_path, port)
    try:
        acked_again, failed = [], []
        workers = [threading.Thread(target=send_all,
                                    args=(port, t, per_thread, acked_again, failed))
                   for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
        assert not failed, failed
        assert len(acked_again) == threads * per_thread
        counts = query(tmp_path, "SELECT count(*) AS groups, count(DISTINCT message_id) AS messages, "
                                 "max(n) AS most FROM (SELECT message_id, count(*) AS n "
                                 "FROM bronze.hl7_observations GROUP BY message_id)")
        # Two observations per message, each message once.
        assert counts[1] == f"{threads * per_thread},{threads * per_thread},2", counts
    finally:
        server.stop()
