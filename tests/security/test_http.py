"""The HTTP ingest door before and after the token check: no body is read for an unknown token,
a token pushes only into its tables, unauthenticated or unknown targets cannot grow /metrics,
Idempotency-Keys cannot be used to drop someone else's rows, and hostile bodies (gzip bombs,
deep nesting, junk) get a 4xx without hurting the server."""

import gzip
import json
import secrets
import threading
import time

import pytest

from attack import (SECRET_ENV, admin_rows, http_request, note, raw_http_socket)

GW = SECRET_ENV["T_GW"]
GW2 = SECRET_ENV["T_GW2"]


def row(device, value=1.0):
    return {"device_id": device, "patient_id": 7, "metric": "heart_rate", "value": value,
            "ts": "2026-11-23T10:00:00Z"}


def ndjson(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def push(main, target, body, token=GW, key=None, extra=None):
    headers = {"Content-Type": "application/x-ndjson"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    headers.update(extra or {})
    return http_request(main, "POST", f"/v1/ingest/{target}", body, headers)


def count_device(main, device, table="bronze.readings"):
    return admin_rows(main, f"SELECT count(*) FROM {table} WHERE device_id = '{device}'")[0][0]


def status_line_within(main, head, seconds):
    """Sends `head` (headers only, announcing a body that never comes) and returns the status
    line the server answers within `seconds` (None if it waits for the body)."""
    sock = raw_http_socket(main, timeout=seconds)
    try:
        sock.sendall(head)
        started = time.time()
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, OSError):
            return None, time.time() - started
        note("http raw", data.decode(errors="replace"))
        return data.split(b"\r\n")[0].decode(), time.time() - started
    finally:
        sock.close()


def big_head(target, auth, length=16 << 20):
    lines = [f"POST /v1/ingest/{target} HTTP/1.1", "Host: localhost",
             "Content-Type: application/x-ndjson", f"Content-Length: {length}"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer ", f"Bearer {GW[:-1]}",
                                  f"Bearer {GW}x", "Basic cmVhZGVyOnJlYWRlcg==",
                                  f"Bearer {SECRET_ENV['P_ADMIN']}", f"bearer  {GW} extra"])
def test_unknown_token_gets_401_before_the_body(main, auth):
    status, seconds = status_line_within(main, big_head("bronze.readings", auth), 3)
    assert status is not None, "no answer within 3 s: the server waits for the 16 MiB body"
    assert " 401" in status, status
    assert seconds < 3, seconds


def test_token_for_another_table_gets_403_before_the_body(main):
    status, _ = status_line_within(main, big_head("bronze.other", f"Bearer {GW}"), 3)
    assert status is not None, "no answer within 3 s: the server waits for the 16 MiB body"
    assert " 403" in status, status


def test_unauthenticated_bodies_are_not_buffered(main):
    """Eight clients each send a whole 16 MiB body with a wrong token at once: the server's
    peak memory must not grow by their size (it answers 401 without reading them)."""
    body = b"x" * (16 << 20)
    main.reset_peak_memory()
    before = main.memory("VmHWM")

    def send():
        try:
            sock = raw_http_socket(main, timeout=20)
            sock.sendall(big_head("bronze.readings", "Bearer nope", len(body)))
            sock.sendall(body)
            sock.recv(100)
            sock.close()
        except OSError:
            pass  # closing the connection on a refused request is what we want

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    grown = main.memory("VmHWM") - before
    assert grown < 48 << 20, f"peak memory grew by {grown >> 20} MiB for unauthenticated bodies"


@pytest.mark.parametrize("target", ["bronze.other", "victim.t", "BRONZE.OTHER", "bronze.Other",
                                    "bronze.readings_quarantine", "gold.device_counts",
                                    "bronze.readings.other", "bronze%2Eother",
                                    "bronze.other%00", "%62ronze.other", "system.refreshes",
                                    "bronze.readings%2F..%2Fother", "information_schema.tables"])
def test_token_pushes_only_into_its_tables(main, target):
    device = "other-" + secrets.token_hex(4)
    before_other = admin_rows(main, "SELECT count(*) FROM bronze.other")
    before_victim = admin_rows(main, "SELECT count(*) FROM victim.t")
    status, _, body = push(main, target, ndjson([{"id": 9, "note": device}, row(device)]))
    assert status in (400, 403, 404), (status, body)
    assert admin_rows(main, "SELECT count(*) FROM bronze.other") == before_other
    assert admin_rows(main, "SELECT count(*) FROM victim.t") == before_victim
    assert count_device(main, device) == 0


def metric_series(main):
    status, _, body = http_request(main, "GET", "/metrics")
    assert status == 200
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


def test_unknown_targets_do_not_grow_metrics(main):
    push(main, "bronze.readings", ndjson([row("metrics-warmup")]))  # the real series exists
    before = metric_series(main)
    names = [f"bronze.t{secrets.token_hex(6)}" for _ in range(50)]
    for i, name in enumerate(names):
        token = [None, "wrong", GW][i % 3]
        status, _, _ = push(main, name, b"{}\n", token=token)
        assert status in (400, 401, 403, 404), status
    for i in range(20):  # unknown schemas, odd characters, long names
        push(main, f"{secrets.token_hex(8)}.x", b"{}\n", token="wrong")
        push(main, "bronze." + "y" * 2000 + str(i), b"{}\n", token=GW)
    after = metric_series(main)
    new = [s for s in after if s.split("{")[0] + s.split("}")[0] not in
           {b.split("{")[0] + b.split("}")[0] for b in before}]
    text = "\n".join(after)
    leaked = [n for n in names if n in text]
    assert not leaked, f"/metrics records unknown targets: {leaked[:3]}"
    assert len(new) <= 5, f"/metrics grew by {len(new)} series: {new[:10]}"
    assert len(after) <= len(before) + 5


def test_idempotency_key_reused_with_another_body_is_409(main):
    key = "key-" + secrets.token_hex(8)
    a, b = "idem-a-" + secrets.token_hex(3), "idem-b-" + secrets.token_hex(3)
    body_a = ndjson([row(a, 1.0), row(a, 2.0)])
    status, _, first = push(main, "bronze.readings", body_a, key=key)
    assert status == 200, first
    status, _, second = push(main, "bronze.readings", ndjson([row(b, 5.0)] * 3), key=key)
    assert status == 409, (status, second)
    assert count_device(main, b) == 0, "the second body's rows were written"
    status, _, again = push(main, "bronze.readings", body_a, key=key)
    assert status == 200, again
    assert json.loads(again)["duplicate"] is True, again
    assert count_device(main, a) == 2, "the retried body landed twice"


def test_idempotency_key_of_another_token_is_refused(main):
    key = "key-" + secrets.token_hex(8)
    a = "idem-tok-" + secrets.token_hex(3)
    body = ndjson([row(a)])
    status, _, first = push(main, "bronze.readings", body, key=key, token=GW)
    assert status == 200, first
    status, _, second = push(main, "bronze.readings", body, key=key, token=GW2)
    assert status in (409, 422), (status, second)
    assert count_device(main, a) == 1


def test_concurrent_reuse_of_one_key_writes_one_body(main):
    """Two different bodies race with one key: exactly one lands, the other gets 409."""
    key = "key-" + secrets.token_hex(8)
    devices = ["race-a-" + secrets.token_hex(3), "race-b-" + secrets.token_hex(3)]
    statuses = {}

    def send(device):
        statuses[device] = push(main, "bronze.readings", ndjson([row(device)]), key=key)[0]

    threads = [threading.Thread(target=send, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    landed = [d for d in devices if count_device(main, d) > 0]
    assert len(landed) == 1, (landed, statuses)
    assert sorted(statuses.values()) == [200, 409], statuses


def test_gzip_bomb_is_refused(main):
    bomb = gzip.compress(b" " * (96 << 20), compresslevel=1)  # 96 MiB inflated, limit 16 MiB
    main.reset_peak_memory()
    before = main.memory("VmHWM")
    status, _, body = push(main, "bronze.readings", bomb, extra={"Content-Encoding": "gzip"})
    assert status == 413, (status, body[:300])
    grown = main.memory("VmHWM") - before
    assert grown < 64 << 20, f"peak memory grew by {grown >> 20} MiB inflating the bomb"


@pytest.mark.parametrize("name,body", [
    ("deep_array", b"[" * 200000 + b"]" * 200000),
    ("deep_object", b'{"a":' * 100000 + b"1" + b"}" * 100000),
    ("huge_number", b'{"device_id": "x", "metric": "m", "ts": "2026-11-23T10:00:00Z", "value": 1'
                    + b"0" * 100000 + b"}\n"),
    ("huge_exponent", b'{"device_id": "x", "metric": "m", "ts": "2026-11-23T10:00:00Z", '
                      b'"value": 1e999999999, "patient_id": 99999999999999999999999}\n'),
    ("junk", bytes(range(256)) * 100),
    ("nul_bytes", b"\x00" * 100000),
    ("bad_utf8", b'{"device_id": "\xff\xfe", "metric": "m", "ts": "2026-11-23T10:00:00Z"}\n'),
    ("bad_ts", b'{"device_id": "x", "metric": "m", "ts": "99999999-99-99T99:99:99Z"}\n'),
    ("ts_overflow", b'{"device_id": "x", "metric": "m", "ts": "+262143-12-31T23:59:59Z"}\n'),
    ("wide_row", json.dumps({f"c{i}": i for i in range(50000)}).encode() + b"\n"),
    ("many_refused", b'{"device_id": 1}\n' * 200000),
])
def test_hostile_bodies_get_a_4xx(main, name, body):
    status, _, answer = push(main, "bronze.readings", body)
    assert main.alive(), main.log()[-2000:]
    assert 400 <= status < 500, (status, answer[:300])
    assert len(answer) < 1 << 20, f"a {len(answer) >> 10} KiB error answer"
    assert http_request(main, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("key", ["x" * 201, "", "\x01", "é"])
def test_bad_idempotency_keys_are_400(main, key):
    sock = raw_http_socket(main)
    try:
        body = ndjson([row("badkey")])
        head = (f"POST /v1/ingest/bronze.readings HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {GW}\r\nContent-Type: application/x-ndjson\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + \
            b"Idempotency-Key: " + key.encode("latin-1", "replace") + b"\r\n\r\n"
        sock.sendall(head + body)
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert answer.split(b"\r\n")[0].split(b" ")[1] == b"400", answer[:200]
    assert count_device(main, "badkey") == 0


def test_many_headers_and_long_lines_are_refused(main):
    sock = raw_http_socket(main)
    try:
        head = "POST /v1/ingest/bronze.readings HTTP/1.1\r\nHost: x\r\n"
        head += "".join(f"X-H{i}: {'v' * 100}\r\n" for i in range(5000))
        try:
            sock.sendall(head.encode() + b"\r\n")
            answer = sock.recv(4096)
        except OSError:
            answer = b""
    finally:
        sock.close()
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    assert http_request(main, "GET", "/healthz")[0] == 200
